"""EIGER HDF5 "master + data" files (legacy DECTRIS NXmx layout): write them and read them back.

The writer produces ``<name>_master.h5`` with the detector metadata and ``/entry/data/data_NNNNNN``
external links to ``<name>_data_NNNNNN.h5:/entry/data/data`` (shape (n, rows, cols), chunks
(1, rows, cols), bitshuffle-LZ4 filter 32008 or LZ4 filter 32004, 1-based ``image_nr_low/high``).
The reader opens such a master (ours or one written by a DECTRIS detector), follows the links
itself and hands out each frame's HDF5 chunk verbatim (``read_direct_chunk``), which is exactly
the payload a detector puts on the stream (see ``shared/docs/eiger-stream.md`` sections 3 and 5).
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import h5py
import hdf5plugin
import numpy as np

from analysis.errors import ConfigurationError, DataFileError, GeometryError
from stream.codecs import compress

log = logging.getLogger(__name__)

BSLZ4_FILTER_ID = hdf5plugin.BSHUF_ID  # 32008
LZ4_FILTER_ID = hdf5plugin.LZ4_ID  # 32004
HC_KEV_ANGSTROM = 12.398419843320026  # photon energy (keV) * wavelength (Angstrom)
_DETECTOR = "/entry/instrument/detector"
_SPECIFIC = _DETECTOR + "/detectorSpecific"
_EXTRA = "/entry/braggmap"
_LENGTH_UNITS_M = {"m": 1.0, "mm": 1e-3, "um": 1e-6, "µm": 1e-6, "micron": 1e-6, "microns": 1e-6, "nm": 1e-9}
_TIME_UNITS_S = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_WAVELENGTH_UNITS_M = {"angstrom": 1e-10, "a": 1e-10, "å": 1e-10, "nm": 1e-9, "m": 1.0}
_FILE_COMPRESSIONS = ("bslz4", "lz4-hdf5", "none")


@dataclass(frozen=True, eq=False)
class EigerMetadata:
    """What a master file (and a stream header) says about the detector and the series.

    Attributes
    ----------
    shape : tuple of int
        (rows, cols) = (y, x) of one frame.
    dtype : str
        ``"uint8"``, ``"uint16"`` or ``"uint32"``.
    wavelength_m : float or None
    pixel_size_m : float or None
        Pixel width (x); ``pixel_size_y_m`` when the height differs.
    detector_distance_m : float or None
    beam_centre_px : tuple of float or None
        (x, y) = (column, row) in pixels, as the detector reports it.
    count_time_s, frame_time_s : float or None
    pixel_mask : ndarray of uint32, shape (rows, cols), or None
        NXmx bits, nonzero = do not use.
    flatfield : ndarray of float32, shape (rows, cols), or None
    saturation_value : int or None
        Largest valid count (``countrate_correction_count_cutoff``).
    description : str
        Detector model, e.g. ``"Dectris EIGER X 4M"``.
    sensor : str
        Sensor material (``"Si"``, ``"CdTe"``).
    sensor_thickness_m : float or None
    threshold_energy_ev : float or None
        None: half the photon energy when the wavelength is known.
    bit_depth_readout : int or None
    pixel_size_y_m : float or None
        Pixel height, None when equal to ``pixel_size_m``.
    trigger_mode : str
        ``"ints"``, ``"inte"``, ``"exts"`` or ``"exte"``.
    pixel_mask_applied : bool
        True when masked pixels already hold 2**bits - 1 in the frames.
    extra : dict
        Free-form scalars (or short numeric sequences) about the scan, stored as attributes of
        ``/entry/braggmap`` (grid shape, snake, step sizes...).
    """

    shape: tuple[int, int]
    dtype: str
    wavelength_m: float | None = None
    pixel_size_m: float | None = 75e-6
    detector_distance_m: float | None = None
    beam_centre_px: tuple[float, float] | None = None
    count_time_s: float | None = None
    frame_time_s: float | None = None
    pixel_mask: np.ndarray | None = field(default=None, repr=False)
    flatfield: np.ndarray | None = field(default=None, repr=False)
    saturation_value: int | None = None
    description: str = "Dectris EIGER X 4M"
    sensor: str = "Si"
    sensor_thickness_m: float | None = 450e-6
    threshold_energy_ev: float | None = None
    bit_depth_readout: int | None = None
    pixel_size_y_m: float | None = None
    trigger_mode: str = "ints"
    pixel_mask_applied: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "shape", (int(self.shape[0]), int(self.shape[1])))
        dtype = np.dtype(self.dtype)
        if dtype not in (np.uint8, np.uint16, np.uint32):
            raise ConfigurationError(f"EIGER frames are uint8/uint16/uint32, not dtype {self.dtype!r}")
        object.__setattr__(self, "dtype", dtype.name)
        for name, expected in (("pixel_mask", np.uint32), ("flatfield", np.float32)):
            array = getattr(self, name)
            if array is None:
                continue
            array = np.asarray(array)
            if array.shape != self.shape:
                raise GeometryError(f"{name} has shape {array.shape}, frames have {self.shape}")
            object.__setattr__(self, name, array.astype(expected, copy=False))

    @property
    def itemsize(self) -> int:
        """Bytes per pixel."""
        return np.dtype(self.dtype).itemsize

    @property
    def photon_energy_ev(self) -> float | None:
        if self.wavelength_m is None:
            return None
        return HC_KEV_ANGSTROM * 1e3 / (self.wavelength_m * 1e10)


def bslz4_declared_size(chunk: bytes) -> int:
    """Uncompressed byte count in the 12-byte header of an HDF5 bitshuffle/LZ4 chunk."""
    if len(chunk) < 12:
        raise DataFileError(f"compressed chunk of {len(chunk)} bytes is shorter than its 12-byte header")
    return struct.unpack(">Q", bytes(chunk[:8]))[0]


# -- writing ----------------------------------------------------------------------------------------
def data_file_path(master_path: Path, file_number: int) -> Path:
    """``<name>_data_NNNNNN.h5`` beside ``<name>_master.h5`` (1-based file number)."""
    master_path = Path(master_path)
    stem = master_path.name[: -len("_master.h5")] if master_path.name.endswith("_master.h5") else master_path.stem
    return master_path.with_name(f"{stem}_data_{file_number:06d}.h5")


def _filter_kwargs(compression: str) -> dict:
    if compression == "bslz4":
        return dict(hdf5plugin.Bitshuffle(cname="lz4"))
    if compression == "lz4-hdf5":
        return dict(hdf5plugin.LZ4())
    return {}


def _new_data_dataset(group: h5py.Group, metadata: EigerMetadata, compression: str) -> h5py.Dataset:
    rows, cols = metadata.shape
    return group.create_dataset("data", shape=(0, rows, cols), maxshape=(None, rows, cols),
                                chunks=(1, rows, cols), dtype=metadata.dtype, **_filter_kwargs(compression))


def _append_frame(dataset: h5py.Dataset, frame, metadata: EigerMetadata, compression: str, index0: int):
    position = dataset.shape[0]
    dataset.resize(position + 1, axis=0)
    if isinstance(frame, (bytes, bytearray, memoryview)):
        expected = metadata.shape[0] * metadata.shape[1] * metadata.itemsize
        declared = len(frame) if compression == "none" else bslz4_declared_size(frame)
        if declared != expected:
            raise GeometryError(f"frame {index0}: chunk holds {declared} bytes decoded, "
                                f"a {metadata.shape} {metadata.dtype} frame has {expected}")
        dataset.id.write_direct_chunk((position, 0, 0), bytes(frame))
        return
    array = np.asarray(frame)
    if array.shape != metadata.shape:
        raise GeometryError(f"frame {index0} has shape {array.shape}, the metadata says {metadata.shape}")
    if array.dtype != np.dtype(metadata.dtype):
        raise GeometryError(f"frame {index0} has dtype {array.dtype}, the metadata says {metadata.dtype}")
    dataset[position] = array


def _write_scalar(group: h5py.Group, name: str, value, units: str | None = None):
    if value is None:
        return
    if isinstance(value, str):
        value = np.bytes_(value.encode())
    dataset = group.create_dataset(name, data=value)
    if units:
        dataset.attrs["units"] = np.bytes_(units.encode())


def _write_master_metadata(master: h5py.File, metadata: EigerMetadata, n_frames: int, compression: str):
    master.attrs["default"] = np.bytes_(b"entry")
    entry = master.require_group("entry")
    entry.attrs["NX_class"] = np.bytes_(b"NXentry")
    detector = master.require_group(_DETECTOR)
    detector.attrs["NX_class"] = np.bytes_(b"NXdetector")
    specific = master.require_group(_SPECIFIC)
    bits = 8 * metadata.itemsize
    energy_ev = metadata.photon_energy_ev
    threshold = metadata.threshold_energy_ev
    if threshold is None and energy_ev is not None:
        threshold = energy_ev / 2
    pixel_y = metadata.pixel_size_y_m if metadata.pixel_size_y_m is not None else metadata.pixel_size_m
    beam_x, beam_y = metadata.beam_centre_px if metadata.beam_centre_px is not None else (None, None)
    for name, value, units in (
            ("x_pixel_size", metadata.pixel_size_m, "m"), ("y_pixel_size", pixel_y, "m"),
            ("detector_distance", metadata.detector_distance_m, "m"),
            ("beam_center_x", beam_x, "pixel"), ("beam_center_y", beam_y, "pixel"),
            ("count_time", metadata.count_time_s, "s"), ("frame_time", metadata.frame_time_s, "s"),
            ("bit_depth_image", np.uint32(bits), None),
            ("bit_depth_readout", np.uint32(metadata.bit_depth_readout or min(bits, 16)), None),
            ("saturation_value", metadata.saturation_value, None),
            ("sensor_material", metadata.sensor, None), ("sensor_thickness", metadata.sensor_thickness_m, "m"),
            ("threshold_energy", threshold, "eV"), ("description", metadata.description, None),
            ("detector_number", "braggmap-simulator", None),
            ("countrate_correction_applied", False, None), ("flatfield_correction_applied", False, None),
            ("pixel_mask_applied", bool(metadata.pixel_mask_applied), None),
            ("virtual_pixel_correction_applied", False, None)):
        _write_scalar(detector, name, value, units)
    if metadata.detector_distance_m is not None:
        detector["distance"] = detector["detector_distance"]  # NXmx name, same dataset
    rows, cols = metadata.shape
    for name, value, units in (
            ("nimages", np.uint64(n_frames), None), ("ntrigger", np.uint64(1), None),
            ("trigger_mode", metadata.trigger_mode, None),
            ("x_pixels_in_detector", np.uint32(cols), None), ("y_pixels_in_detector", np.uint32(rows), None),
            ("photon_energy", energy_ev, "eV"),
            ("countrate_correction_count_cutoff", metadata.saturation_value, None),
            ("saturation_value", metadata.saturation_value, None),
            ("compression", {"bslz4": "bslz4", "lz4-hdf5": "lz4", "none": "none"}[compression], None),
            ("software_version", "braggmap simulator", None), ("roi_mode", "disabled", None)):
        _write_scalar(specific, name, value, units)
    if metadata.pixel_mask is not None:
        specific.create_dataset("pixel_mask", data=metadata.pixel_mask, compression="gzip", compression_opts=1)
    if metadata.flatfield is not None:
        specific.create_dataset("flatfield", data=metadata.flatfield, compression="gzip", compression_opts=1)
    if metadata.wavelength_m is not None:
        beam = master.require_group("/entry/instrument/beam")
        _write_scalar(beam, "incident_wavelength", metadata.wavelength_m * 1e10, "angstrom")
    extra = master.require_group(_EXTRA)
    for key, value in metadata.extra.items():
        if isinstance(value, str):
            extra.attrs[key] = value
        elif value is None:
            raise ConfigurationError(f"metadata.extra[{key!r}] is None; HDF5 attributes cannot hold None")
        else:
            extra.attrs[key] = np.asarray(value)


def write_eiger_scan(master_path, frames: Iterable, *, metadata: EigerMetadata, nimages_per_file: int = 100,
                     compression: str = "bslz4") -> list[Path]:
    """Write frames as an EIGER master file plus data files.

    Parameters
    ----------
    master_path : path-like
        ``<name>_master.h5``; the data files become ``<name>_data_000001.h5``...
    frames : iterable of ndarray (rows, cols) or of bytes
        Arrays of ``metadata.dtype`` (compressed by the HDF5 filter), or chunks already
        compressed as ``compression`` says (written with ``write_direct_chunk``).
    metadata : EigerMetadata
    nimages_per_file : int
        Frames per data file; 0 puts ``/entry/data/data`` in the master itself.
    compression : {"bslz4", "lz4-hdf5", "none"}
        HDF5 filter 32008 (bitshuffle-LZ4), 32004 (LZ4) or none.

    Returns
    -------
    list of Path
        The master first, then the data files.
    """
    if compression not in _FILE_COMPRESSIONS:
        raise ConfigurationError(f"EIGER files are compressed with one of {_FILE_COMPRESSIONS}, not {compression!r}")
    if nimages_per_file < 0:
        raise ConfigurationError(f"nimages_per_file must be >= 0, not {nimages_per_file}")
    master_path = Path(master_path)
    written = [master_path]
    n_frames = 0
    with h5py.File(master_path, "w", libver=("v108", "latest")) as master:
        data_group = master.require_group("/entry/data")
        data_group.attrs["NX_class"] = np.bytes_(b"NXdata")
        data_file = None
        dataset = _new_data_dataset(data_group, metadata, compression) if nimages_per_file == 0 else None
        try:
            for frame in frames:
                if nimages_per_file and n_frames % nimages_per_file == 0:
                    if data_file is not None:
                        data_file.close()
                    path = data_file_path(master_path, n_frames // nimages_per_file + 1)
                    data_file = h5py.File(path, "w")
                    written.append(path)
                    dataset = _new_data_dataset(data_file.require_group("/entry/data"), metadata, compression)
                    dataset.attrs["image_nr_low"] = np.uint64(n_frames + 1)
                    data_group[path.stem[-len("data_000001"):]] = h5py.ExternalLink(path.name, "/entry/data/data")
                _append_frame(dataset, frame, metadata, compression, n_frames)
                n_frames += 1
                dataset.attrs["image_nr_high"] = np.uint64(n_frames)
        finally:
            if data_file is not None:
                data_file.close()
        if dataset is not None and nimages_per_file == 0:
            dataset.attrs["image_nr_low"] = np.uint64(1)
            dataset.attrs["image_nr_high"] = np.uint64(n_frames)
        _write_master_metadata(master, metadata, n_frames, compression)
    log.info("wrote %d frames to %s and %d data files", n_frames, master_path, len(written) - 1)
    return written


# -- reading ----------------------------------------------------------------------------------------
def _text(value) -> str:
    if isinstance(value, np.ndarray):
        value = value.item() if value.size == 1 else value.tolist()
    return value.decode(errors="replace").strip("\0 ") if isinstance(value, bytes) else str(value)


def _read_value(file: h5py.File, path: str, units_table: dict | None = None):
    """A scalar at ``path`` (None when absent); converted to SI when ``units_table`` is given."""
    item = file.get(path)
    if not isinstance(item, h5py.Dataset) or item.shape not in ((), (1,)):
        return None
    value = item[()]
    value = value.item() if isinstance(value, np.ndarray) else value
    if isinstance(value, bytes):
        return _text(value)
    if isinstance(value, np.generic):
        value = value.item()
    if units_table is not None:
        units = _text(item.attrs.get("units", b"")).lower()
        value = float(value) * units_table.get(units, next(iter(units_table.values())))
    return value


def _read_extra(file: h5py.File) -> dict[str, Any]:
    group = file.get(_EXTRA)
    if not isinstance(group, h5py.Group):
        return {}
    extra = {}
    for key, value in group.attrs.items():
        if isinstance(value, np.ndarray) and value.ndim > 0:
            value = tuple(value.tolist())
        elif isinstance(value, (np.generic, np.ndarray)):
            value = value.item()
        extra[key] = _text(value) if isinstance(value, bytes) else value
    return extra


def _read_metadata(master: h5py.File, shape: tuple[int, int], dtype: np.dtype) -> EigerMetadata:
    det, spec = _DETECTOR + "/", _SPECIFIC + "/"
    wavelength_m = None
    for path in ("/entry/instrument/beam/incident_wavelength", "/entry/sample/beam/incident_wavelength"):
        wavelength_m = wavelength_m or _read_value(master, path, _WAVELENGTH_UNITS_M)
    energy_ev = _read_value(master, spec + "photon_energy")
    if wavelength_m is None and energy_ev:
        wavelength_m = HC_KEV_ANGSTROM * 1e3 / float(energy_ev) * 1e-10
    beam = (_read_value(master, det + "beam_center_x"), _read_value(master, det + "beam_center_y"))
    pixel_x = _read_value(master, det + "x_pixel_size", _LENGTH_UNITS_M)
    pixel_y = _read_value(master, det + "y_pixel_size", _LENGTH_UNITS_M)
    saturation = _read_value(master, det + "saturation_value")
    if saturation is None:
        saturation = _read_value(master, spec + "saturation_value")
    if saturation is None:
        saturation = _read_value(master, spec + "countrate_correction_count_cutoff")
    arrays = {}
    for name in ("pixel_mask", "flatfield"):
        item = master.get(spec + name)
        arrays[name] = item[()] if isinstance(item, h5py.Dataset) and item.shape == shape else None
    optional_text = {name: _read_value(master, det + name) for name in ("description", "sensor_material")}
    applied = _read_value(master, det + "pixel_mask_applied")
    return EigerMetadata(
        shape=shape, dtype=dtype.name, wavelength_m=wavelength_m, pixel_size_m=pixel_x,
        detector_distance_m=_read_value(master, det + "detector_distance", _LENGTH_UNITS_M),
        beam_centre_px=None if None in beam else (float(beam[0]), float(beam[1])),
        count_time_s=_read_value(master, det + "count_time", _TIME_UNITS_S),
        frame_time_s=_read_value(master, det + "frame_time", _TIME_UNITS_S),
        pixel_mask=arrays["pixel_mask"], flatfield=arrays["flatfield"],
        saturation_value=None if saturation is None else int(saturation),
        description=optional_text["description"] or "Dectris EIGER",
        sensor=optional_text["sensor_material"] or "Si",
        sensor_thickness_m=_read_value(master, det + "sensor_thickness", _LENGTH_UNITS_M),
        threshold_energy_ev=_read_value(master, det + "threshold_energy"),
        bit_depth_readout=_read_value(master, det + "bit_depth_readout"),
        pixel_size_y_m=pixel_y if pixel_y is not None and pixel_y != pixel_x else None,
        trigger_mode=_read_value(master, spec + "trigger_mode") or "ints",
        pixel_mask_applied=bool(applied) if applied is not None else False,
        extra=_read_extra(master))


def _chunk_compression(dataset: h5py.Dataset) -> str | None:
    """"bslz4"/"lz4-hdf5" when every frame is one chunk that can go on the stream as is, else None."""
    if dataset.chunks != (1,) + dataset.shape[1:]:
        return None
    plist = dataset.id.get_create_plist()
    filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
    if len(filters) != 1:
        return None
    filter_id, _flags, values, _name = filters[0]
    if filter_id == BSLZ4_FILTER_ID and (len(values) < 5 or values[4] == 2):
        return "bslz4"
    if filter_id == LZ4_FILTER_ID:
        return "lz4-hdf5"
    return None


@dataclass
class _Block:
    """One ``(n, rows, cols)`` dataset holding frames ``first_index0 ...``."""

    path: Path
    dataset: h5py.Dataset
    first_index0: int
    compression: str | None


class EigerScan:
    """An opened EIGER master file: metadata and the frames of all its data files.

    Use :func:`open_eiger_scan`; close with :meth:`close` or a ``with`` block.

    Attributes
    ----------
    master_path : Path
    metadata : EigerMetadata
    n_frames : int
    data_files : list of Path
        Files holding frames (the master itself when frames are stored in it).
    """

    def __init__(self, master_path: Path, master: h5py.File, blocks: list[_Block], files: list[h5py.File]):
        self.master_path = master_path
        self._master = master
        self._blocks = blocks
        self._files = files
        first = blocks[0].dataset
        self.metadata = _read_metadata(master, tuple(first.shape[1:]), first.dtype)
        self.n_frames = sum(block.dataset.shape[0] for block in blocks)
        self.data_files = [block.path for block in blocks]

    def __enter__(self) -> "EigerScan":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        for file in self._files:
            file.close()
        self._files = []

    def _locate(self, position: int) -> tuple[_Block, int]:
        if not 0 <= position < self.n_frames:
            raise IndexError(f"frame position {position} outside 0..{self.n_frames - 1} of {self.master_path}")
        for block in self._blocks:
            if position < block.dataset.shape[0]:
                return block, position
            position -= block.dataset.shape[0]
        raise AssertionError("unreachable")

    def read_chunk(self, position: int) -> tuple[int, str, bytes]:
        """Frame ``position`` (0-based, in file order) as ``(frame_index0, compression, payload)``.

        Filtered chunks are returned verbatim (``"bslz4"`` for filter 32008, ``"lz4-hdf5"`` for
        32004); frames stored otherwise are read by HDF5 and compressed to ``"bslz4"``.
        """
        block, local = self._locate(position)
        index0 = block.first_index0 + local
        try:
            if block.compression is not None:
                filter_mask, chunk = block.dataset.id.read_direct_chunk((local, 0, 0))
                if filter_mask == 0:
                    return index0, block.compression, chunk
            frame = block.dataset[local]
        except (OSError, KeyError, ValueError) as exc:
            raise DataFileError(f"{block.path}: cannot read frame {local} of /entry/data ({exc})") from exc
        return index0, "bslz4", compress(np.ascontiguousarray(frame), "bslz4")

    def iter_chunks(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, str, bytes]]:
        """``(frame_index0, compression, payload)`` for frames ``start`` to ``stop`` (file order)."""
        stop = self.n_frames if stop is None else min(stop, self.n_frames)
        for position in range(start, stop):
            yield self.read_chunk(position)

    def iter_frames(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(frame_index0, decoded frame (rows, cols))`` decoded by HDF5 and hdf5plugin."""
        for block in self._blocks:
            for local in range(block.dataset.shape[0]):
                try:
                    frame = block.dataset[local]
                except (OSError, ValueError) as exc:
                    raise DataFileError(f"{block.path}: cannot decode frame {local} ({exc})") from exc
                yield block.first_index0 + local, frame


def _open_h5(path: Path, role: str) -> h5py.File:
    if not path.is_file():
        raise DataFileError(f"{role} {path} does not exist")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataFileError(f"{role} {path} is not a readable HDF5 file ({exc})") from exc


def _frames_dataset(item, path: Path, name: str) -> h5py.Dataset:
    if not isinstance(item, h5py.Dataset) or item.ndim != 3 or item.dtype not in (np.uint8, np.uint16, np.uint32):
        raise DataFileError(f"{path}: {name} is not an (n, rows, cols) uint8/16/32 frame dataset")
    return item


def _image_nr_low(dataset: h5py.Dataset, default: int) -> int:
    value = dataset.attrs.get("image_nr_low")
    return default if value is None else int(np.asarray(value).reshape(-1)[0])


def open_eiger_scan(master_path) -> EigerScan:
    """Open ``<name>_master.h5`` (or a lone data file) and its linked data files.

    Raises
    ------
    DataFileError
        Missing or unreadable master or data file, or no frame dataset under ``/entry/data``.
    """
    master_path = Path(master_path)
    master = _open_h5(master_path, "EIGER master file")
    files = [master]
    try:
        group = master.get("/entry/data")
        if not isinstance(group, h5py.Group):
            raise DataFileError(f"{master_path}: unknown layout, no /entry/data group")
        blocks: list[_Block] = []
        next_index0 = 0
        for name in sorted(group):
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                path = master_path.parent / link.filename
                data_file = _open_h5(path, f"data file linked as /entry/data/{name} in {master_path.name}:")
                files.append(data_file)
                dataset = _frames_dataset(data_file.get(link.path), path, link.path)
            elif name == "data" or name.startswith("data_"):
                path = master_path
                dataset = _frames_dataset(group.get(name), path, f"/entry/data/{name}")
            else:
                continue
            first_index0 = _image_nr_low(dataset, next_index0 + 1) - 1
            blocks.append(_Block(path, dataset, first_index0, _chunk_compression(dataset)))
            next_index0 = first_index0 + dataset.shape[0]
        if not blocks:
            raise DataFileError(f"{master_path}: unknown layout, no data_NNNNNN links or data dataset in /entry/data")
        shapes = {(block.dataset.shape[1:], block.dataset.dtype) for block in blocks}
        if len(shapes) != 1:
            raise DataFileError(f"{master_path}: data files disagree on frame shape/dtype {sorted(map(str, shapes))}")
        return EigerScan(master_path, master, blocks, files)
    except BaseException:
        for file in files:
            file.close()
        raise
