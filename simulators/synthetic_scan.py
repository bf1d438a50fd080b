"""The synthetic supercrystal scan: generate its frames, write it as EIGER files, cache it.

Frame ``k`` is grid point ``(k // nx, k % nx)`` (with ``snake`` the odd rows run backwards, as
:class:`analysis.scan_grid.ScanGrid` places them). Every frame has its own random stream
``default_rng((seed, 1, k))``, so a frame does not depend on which others were drawn.

Speed: the Kapton background is not drawn afresh for each of the 4.5 M pixels of every frame.
A small pool of ``n_background_realisations`` Poisson realisations of the background is drawn
once (``default_rng((seed, 0, j))``); each frame starts from one of them, chosen at random,
and fresh Poisson photons of the diffuse SAXS and of the Bragg peaks are added on top (sums of
independent Poisson variables are Poisson). Frames outside the supercrystal *are* pool frames,
so their noise repeats every few frames. Their compressed chunks are made once and reused.
Chunks are compressed by the HDF5 bitshuffle-LZ4 filter (hdf5plugin, single-threaded): the
OpenMP build of ``bitshuffle.compress_lz4`` stalls for seconds per frame on a loaded 2-core
machine. The chunks are byte-identical to ``stream.codecs.compress(frame, "bslz4")``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import h5py
import hdf5plugin
import numpy as np

from analysis.errors import ConfigurationError, DataFileError
from analysis.geometry import DetectorGeometry
from analysis.scan_grid import ScanGrid
from simulators.eiger4m_detector import eiger4m_pixel_mask, saturation_value
from simulators.eiger_files import EigerMetadata, write_eiger_scan
from simulators.pattern_renderer import Beamstop, DiffuseSaxs, KaptonBackground, PatternRenderer
from simulators.supercrystal import PointParameters, SupercrystalModel, SupercrystalTruth, make_truth
from stream.bundled_config import default_config_dir

logger = logging.getLogger(__name__)

GENERATOR_VERSION = "1"
"""Bumped whenever the generated pixels change for the same configuration (cache key)."""
SAXS_Q_MAX_NM = 2.0


def default_poni_path() -> str:
    return str(default_config_dir() / "p10_lapkin_eiger4m.poni")


@dataclass(frozen=True)
class SyntheticScanConfig:
    """Everything that defines a synthetic scan (hashed for the cache).

    Attributes
    ----------
    grid_shape : (ny, nx) raster points; step_um : raster step, um (both axes)
    poni_path : pyFAI PONI file of the detector geometry (an EIGER X 4M)
    seed : random seed of the noise; snake : odd rows scanned backwards
    crystal, background, diffuse, beamstop : component models
    n_background_realisations : size of the background noise pool (see module docstring)
    count_time_s : exposure per frame; nimages_per_file : frames per EIGER data file
    name : file stem, ``<name>_master.h5``
    """

    grid_shape: tuple[int, int] = (25, 25)
    step_um: float = 0.5
    poni_path: str = field(default_factory=default_poni_path)
    seed: int = 20250607
    snake: bool = False
    crystal: SupercrystalModel = SupercrystalModel()
    background: KaptonBackground = KaptonBackground()
    diffuse: DiffuseSaxs = DiffuseSaxs()
    beamstop: Beamstop = Beamstop()
    n_background_realisations: int = 8
    count_time_s: float = 0.5
    nimages_per_file: int = 100
    name: str = "supercrystal"

    def __post_init__(self) -> None:
        if len(self.grid_shape) != 2 or min(self.grid_shape) < 1:
            raise ConfigurationError(f"grid_shape {self.grid_shape!r} must be two positive integers")
        object.__setattr__(self, "grid_shape", (int(self.grid_shape[0]), int(self.grid_shape[1])))
        if not self.step_um > 0 or not self.count_time_s > 0:
            raise ConfigurationError(f"step_um={self.step_um!r} and count_time_s={self.count_time_s!r} must be > 0")
        if self.n_background_realisations < 1:
            raise ConfigurationError(f"n_background_realisations={self.n_background_realisations} must be >= 1")
        if not self.name or "/" in self.name:
            raise ConfigurationError(f"scan name {self.name!r} must be a plain file stem")

    @property
    def scan_grid(self) -> ScanGrid:
        return ScanGrid(shape=tuple(self.grid_shape), snake=self.snake, step_um=(self.step_um, self.step_um))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SyntheticScanConfig":
        data = json.loads(text)
        nested = {"crystal": SupercrystalModel, "background": KaptonBackground, "diffuse": DiffuseSaxs,
                  "beamstop": Beamstop}
        try:
            for key, model in nested.items():
                if key in data:
                    data[key] = model(**{k: tuple(v) if isinstance(v, list) else v for k, v in data[key].items()})
            data["grid_shape"] = tuple(data.get("grid_shape", (25, 25)))
            return cls(**data)
        except TypeError as exc:
            raise ConfigurationError(f"synthetic scan configuration {text[:200]!r} is malformed: {exc}") from exc


def load_geometry(poni_path: str | os.PathLike) -> DetectorGeometry:
    """DetectorGeometry of a PONI file (pyFAI reads it)."""
    from pyFAI.io.ponifile import PoniFile

    if not Path(poni_path).is_file():
        raise ConfigurationError(f"PONI file {poni_path} does not exist")
    return DetectorGeometry.from_pyfai_config(PoniFile(str(poni_path)).as_dict())


class SyntheticScan:
    """The tables, truth and background pool of one configuration; renders its frames."""

    def __init__(self, config: SyntheticScanConfig):
        self.config = config
        self.geometry = load_geometry(config.poni_path)
        self.pixel_mask = eiger4m_pixel_mask()
        self.renderer = PatternRenderer(self.geometry, self.pixel_mask, config.background, config.diffuse,
                                        config.beamstop)
        self.truth: SupercrystalTruth = make_truth(config)
        self.grid = config.scan_grid
        self._pool: list[np.ndarray] | None = None

    def with_crystal(self, crystal: SupercrystalModel) -> "SyntheticScan":
        """The same scan (geometry, renderer, background pool and frame seeds shared) with
        another supercrystal model: only the truth, hence the Bragg peaks, differ."""
        variant = object.__new__(SyntheticScan)
        variant.__dict__.update(self.__dict__)
        variant.config = dataclasses.replace(self.config, crystal=crystal)
        variant.truth = make_truth(variant.config)
        variant._pool = self.background_pool()
        return variant

    @property
    def n_frames(self) -> int:
        return self.grid.n_points

    def background_pool(self) -> list[np.ndarray]:
        """The Poisson background realisations (uint32, masked = 2**32 - 1), drawn on first use."""
        if self._pool is None:
            seed = self.config.seed
            self._pool = [self.renderer.background_counts(np.random.default_rng((seed, 0, j)))
                          for j in range(self.config.n_background_realisations)]
        return self._pool

    def frame_plan(self, k: int):
        """(grid row, grid column, point parameters, pool index, frame rng) of frame k."""
        position = self.grid.position(k)
        if position is None:
            raise IndexError(f"frame {k} is outside the {self.n_frames} frames of the scan")
        row, column = position
        rng = np.random.default_rng((self.config.seed, 1, k))
        return row, column, self.truth.point(row, column), int(rng.integers(self.config.n_background_realisations)), rng

    def frame(self, k: int) -> np.ndarray:
        """Frame k: uint32 (rows, columns), masked pixels = 2**32 - 1."""
        _, _, point, pool_index, rng = self.frame_plan(k)
        background = self.background_pool()[pool_index]
        if not point.inside:
            return background.copy()
        return self.renderer.render_counts(point, rng, background)

    def frames(self) -> Iterator[np.ndarray]:
        for k in range(self.n_frames):
            yield self.frame(k)

    def truth_maps(self) -> dict[str, np.ndarray]:
        """The truth maps plus ``saxs_intensity_expected`` (noise-free counts in unmasked pixels
        with q < 2 nm^-1, Kapton included) and ``saxs_intensity_sample_expected`` (without it)."""
        ny, nx = self.grid.shape
        total, sample = np.empty((ny, nx)), np.empty((ny, nx))
        for row in range(ny):
            for column in range(nx):
                point = self.truth.point(row, column)
                sample[row, column] = self.renderer.expected_counts_below_q(point, SAXS_Q_MAX_NM, False)
        total[:] = sample + self.renderer.expected_counts_below_q(PointParameters(False), SAXS_Q_MAX_NM, True)
        return {**self.truth.maps, "saxs_intensity_expected": total, "saxs_intensity_sample_expected": sample}


def generate_frames(config: SyntheticScanConfig) -> Iterator[np.ndarray]:
    """The frames of a synthetic scan in acquisition order (uint32, (rows, columns))."""
    return SyntheticScan(config).frames()


def bslz4_chunk(frame: np.ndarray) -> bytes:
    """HDF5 bitshuffle-LZ4 chunk of one frame, made by the hdf5plugin filter in memory."""
    with h5py.File(f"bslz4-{id(frame)}", "w", driver="core", backing_store=False) as handle:
        dataset = handle.create_dataset("frame", data=frame, chunks=frame.shape, **hdf5plugin.Bitshuffle(cname="lz4"))
        filter_mask, chunk = dataset.id.read_direct_chunk((0,) * frame.ndim)
    return bytes(chunk)


def truth_path(master_path: str | os.PathLike) -> Path:
    """``<name>_truth.h5`` beside ``<name>_master.h5``."""
    master_path = Path(master_path)
    return master_path.with_name(master_path.name.removesuffix("_master.h5") + "_truth.h5")


def _metadata(scan: SyntheticScan) -> EigerMetadata:
    config, geometry = scan.config, scan.geometry
    row0, col0 = geometry.beam_centre_px
    extra = {"grid_shape": tuple(config.grid_shape), "step_um": (config.step_um, config.step_um),
             "start_um": (0.0, 0.0), "snake": bool(config.snake), "axis_names": "y,x",
             "scan_grid_json": json.dumps(scan.grid.as_dict()), "synthetic": True,
             "truth_file": truth_path(Path(f"{config.name}_master.h5")).name,
             "generator_version": GENERATOR_VERSION}
    pixel_y = geometry.pixel1_m if geometry.pixel1_m != geometry.pixel2_m else None
    return EigerMetadata(
        shape=tuple(geometry.shape), dtype="uint32", wavelength_m=geometry.wavelength_m,
        pixel_size_m=geometry.pixel2_m, pixel_size_y_m=pixel_y, detector_distance_m=geometry.distance_m,
        beam_centre_px=(col0, row0), count_time_s=config.count_time_s, frame_time_s=config.count_time_s,
        pixel_mask=scan.pixel_mask, saturation_value=saturation_value(config.count_time_s),
        description="Dectris EIGER X 4M (braggmap synthetic scan)", pixel_mask_applied=True, extra=extra)


def _chunks(scan: SyntheticScan) -> Iterator[np.ndarray | bytes]:
    pool_chunks: dict[int, bytes] = {}
    for k in range(scan.n_frames):
        _, _, point, pool_index, rng = scan.frame_plan(k)
        if point.inside:
            yield scan.renderer.render_counts(point, rng, scan.background_pool()[pool_index])
        else:
            if pool_index not in pool_chunks:
                pool_chunks[pool_index] = bslz4_chunk(scan.background_pool()[pool_index])
            yield pool_chunks[pool_index]


def write_truth_file(path: Path, scan: SyntheticScan) -> Path:
    """``<name>_truth.h5``: truth maps (attrs ``units``), background frame, configuration JSON."""
    with h5py.File(path, "w") as handle:
        handle.attrs["config_json"] = scan.config.to_json()
        handle.attrs["generator_version"] = GENERATOR_VERSION
        handle.attrs["grid_shape"] = np.asarray(scan.grid.shape)
        handle.attrs["step_um"] = scan.config.step_um
        handle.attrs["snake"] = bool(scan.config.snake)
        maps = handle.create_group("maps")
        units = {**scan.truth.units, "saxs_intensity_expected": "counts per exposure (q < 2 nm^-1, Kapton included)",
                 "saxs_intensity_sample_expected": "counts per exposure (q < 2 nm^-1, Kapton excluded)"}
        for name, values in scan.truth_maps().items():
            maps.create_dataset(name, data=values).attrs["units"] = units[name]
        background = handle.create_dataset("background", data=scan.renderer.background_expected,
                                           compression="gzip", compression_opts=1)
        background.attrs["units"] = "expected counts per pixel per exposure (Kapton only)"
    return path


def read_truth_file(path: str | os.PathLike) -> tuple[SupercrystalTruth, np.ndarray, SyntheticScanConfig]:
    """Truth maps, Kapton background frame (float32) and configuration of a written scan."""
    try:
        with h5py.File(path, "r") as handle:
            config = SyntheticScanConfig.from_json(handle.attrs["config_json"])
            maps = {name: dataset[()] for name, dataset in handle["maps"].items()}
            units = {name: str(dataset.attrs["units"]) for name, dataset in handle["maps"].items()}
            background = handle["background"][()]
    except (OSError, KeyError) as exc:
        raise DataFileError(f"synthetic-scan truth file {path} cannot be read: {exc}") from exc
    return SupercrystalTruth(tuple(config.grid_shape), config.step_um, maps, units), background, config


def write_synthetic_scan(directory: str | os.PathLike, config: SyntheticScanConfig = SyntheticScanConfig()) -> Path:
    """Write the scan as EIGER master + data files (bitshuffle-LZ4) and ``<name>_truth.h5``.

    Returns
    -------
    Path
        ``directory / <name>_master.h5``.
    """
    started = time.perf_counter()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    scan = SyntheticScan(config)
    master = directory / f"{config.name}_master.h5"
    write_eiger_scan(master, _chunks(scan), metadata=_metadata(scan), nimages_per_file=config.nimages_per_file,
                     compression="bslz4")
    write_truth_file(truth_path(master), scan)
    logger.info("wrote the %d x %d synthetic scan to %s in %.1f s", *scan.grid.shape, master,
                time.perf_counter() - started)
    return master


def cache_key(config: SyntheticScanConfig) -> str:
    """Hash of the configuration, the PONI file's content and :data:`GENERATOR_VERSION`."""
    digest = hashlib.sha256(config.to_json().encode())
    digest.update(GENERATOR_VERSION.encode())
    poni = Path(config.poni_path)
    digest.update(poni.read_bytes() if poni.is_file() else b"missing")
    return digest.hexdigest()[:16]


def ensure_cached_scan(cache_dir: str | os.PathLike, config: SyntheticScanConfig = SyntheticScanConfig()) -> Path:
    """Master file of the scan in ``cache_dir``, generated once per configuration.

    The scan is written into a temporary folder inside ``cache_dir`` and renamed into place,
    so an interrupted run leaves no half cache (only a stray ``.tmp-*`` folder at worst) and
    two processes racing both end up with the one complete copy.
    """
    cache_dir = Path(cache_dir)
    final = cache_dir / f"{config.name}-{cache_key(config)}"
    master = final / f"{config.name}_master.h5"
    if master.is_file():
        logger.info("synthetic scan found in the cache: %s", master)
        return master
    cache_dir.mkdir(parents=True, exist_ok=True)
    if final.exists():  # damaged by hand (our own writes are atomic): start afresh
        logger.warning("cached scan %s lacks its master file; generating it again", final)
        shutil.rmtree(final)
    temporary = Path(tempfile.mkdtemp(prefix=f".tmp-{config.name}-", dir=cache_dir))
    try:
        write_synthetic_scan(temporary, config)
        os.chmod(temporary, 0o755)  # mkdtemp made it private; the cache is for everyone
        try:
            os.rename(temporary, final)
        except OSError:
            if not master.is_file():
                raise
            logger.info("another process cached %s first", final)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
    return master
