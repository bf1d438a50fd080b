"""Which analysis a service runs: geometry (PONI), peak model and background files, and the
per-series analyzers built from them.

Files are read here, at the edge; :mod:`analysis` receives plain arrays and dataclasses.
Analyzers (with their geometry tables) are built once per pixel mask and reused.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analysis.errors import GeometryError
from analysis.frame_analysis import FrameAnalyzer
from stream import wire
from stream.background_file import load_background
from stream.bundled_config import default_config_dir
from stream.config_files import load_geometry, load_peak_model

log = logging.getLogger(__name__)

DEFAULT_PONI = "p10_lapkin_eiger4m.poni"
DEFAULT_PEAKS = "peaks_cspbbr2cl_lapkin.yaml"


@dataclass(frozen=True)
class AnalysisSetup:
    """Paths of the analysis configuration (plain values: it is handed to worker processes).

    Attributes
    ----------
    poni_path : str
        pyFAI PONI geometry file.
    peaks_path : str
        Peak model YAML file.
    background_path : str or None
        Kapton-only background frame (``.npy``, or HDF5 with a ``background`` dataset).
    williamson_hall_L_nm : float or None
        NC size L fixed for per-frame g_q / delta_psi (None: the peak model's value).
    """

    poni_path: str
    peaks_path: str
    background_path: str | None = None
    williamson_hall_L_nm: float | None = None

    @classmethod
    def default(cls, **overrides) -> "AnalysisSetup":
        config_dir = default_config_dir()
        values = {
            "poni_path": str(config_dir / DEFAULT_PONI),
            "peaks_path": str(config_dir / DEFAULT_PEAKS),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def analyzer_cache(self) -> "AnalyzerCache":
        return AnalyzerCache(self)

    def parameter_names(self) -> tuple[str, ...]:
        return FrameAnalyzer.parameter_names_for(load_peak_model(self.peaks_path))

    def parameter_units(self) -> dict[str, str]:
        return FrameAnalyzer.parameter_units_for(load_peak_model(self.peaks_path))


class AnalyzerCache:
    """Loads the configuration once and builds one :class:`FrameAnalyzer` per pixel mask."""

    def __init__(self, setup: AnalysisSetup) -> None:
        self.setup = setup
        self.geometry = load_geometry(setup.poni_path)
        self.peak_model = load_peak_model(setup.peaks_path)
        self.background = (
            load_background(setup.background_path, self.geometry.shape) if setup.background_path else None
        )
        self.parameter_names = FrameAnalyzer.parameter_names_for(self.peak_model)
        self._by_mask: dict[str, FrameAnalyzer] = {}

    def _build(self, pixel_mask: np.ndarray | None, digest: str | None = None) -> FrameAnalyzer:
        """The analyzer of a mask (``digest``: its :func:`stream.wire.pixel_mask_digest`, when known)."""
        key = "none" if pixel_mask is None else (digest or wire.pixel_mask_digest(pixel_mask))
        if key not in self._by_mask:
            log.info("building geometry tables for mask %s", key[:8])
            self._by_mask[key] = FrameAnalyzer(
                self.geometry, self.peak_model, pixel_mask=pixel_mask, background=self.background,
                williamson_hall_L_nm=self.setup.williamson_hall_L_nm,
            )
        return self._by_mask[key]

    def default(self) -> FrameAnalyzer:
        """The analyzer used before any series header (no pixel mask: NODATA pixels still skipped)."""
        return self._build(None)

    def for_series(self, info, pixel_mask: np.ndarray | None) -> FrameAnalyzer:
        """The analyzer for a series; raises :class:`GeometryError` when the detector data do not
        fit the configured geometry (shape, pixel size, wavelength)."""
        if info.image_shape is not None:
            self.geometry.check_matches(
                tuple(info.image_shape), pixel_size_m=info.pixel_size_m, wavelength_m=info.wavelength_m
            )
        if pixel_mask is not None and pixel_mask.shape != self.geometry.shape:
            raise GeometryError(f"pixel mask shape {pixel_mask.shape} does not match the geometry "
                                f"{self.geometry.shape}")
        return self._build(pixel_mask, info.pixel_mask_digest)


def resolve_config_path(name: str | None, default: str) -> str:
    """A user path, or a file name inside the bundled ``config/`` folder."""
    if name is None:
        return str(default_config_dir() / default)
    path = Path(name)
    if not path.exists() and (default_config_dir() / name).exists():
        return str(default_config_dir() / name)
    return str(path)


class AverageAnalysis:
    """The collector's analysis of a series' average pattern.

    Its analyzer's tables cost a few seconds and are needed only at the end of a series. Built
    there, they held up the collector thread, and with it the maps of the next series, for
    those seconds: :meth:`prepare_in_background` builds them in a thread of their own when the
    service starts, and :meth:`analyse` waits for it (or builds them itself without it)."""

    def __init__(self, setup: AnalysisSetup) -> None:
        self.setup = setup
        self._analyzer: FrameAnalyzer | None = None
        self._failure: Exception | None = None
        self._preparing: threading.Thread | None = None

    def _build(self) -> None:
        try:
            self._analyzer = AnalyzerCache(self.setup).default()
        except Exception as exc:  # re-raised by analyzer(), in the collector's thread
            self._failure = exc

    def prepare_in_background(self) -> "AverageAnalysis":
        """Start building the analyzer in a daemon thread (once)."""
        if self._preparing is None and self._analyzer is None:
            self._preparing = threading.Thread(target=self._build, name="braggmap-average-tables", daemon=True)
            self._preparing.start()
        return self

    def analyzer(self) -> FrameAnalyzer:
        """The analyzer of the average pattern, once built (raises what building it raised)."""
        if self._preparing is not None:
            self._preparing.join()
        elif self._analyzer is None and self._failure is None:
            self._build()
        if self._failure is not None:
            raise self._failure
        return self._analyzer

    def analyse(self, maps, signal_sum, raw_sum, n_valid, n_frames):
        """Fit the merged average pattern; when no NC size L is configured, fill the g_q and
        delta_psi maps with the L of its Williamson-Hall fit."""
        from analysis.average_pattern import AverageAccumulator, apply_broadening, fit_average_pattern
        from analysis.status import Status

        analyzer = self.analyzer()
        accumulator = AverageAccumulator(analyzer.table.bins_shape)
        accumulator.merge(signal_sum, raw_sum, n_valid, n_frames)
        result = fit_average_pattern(analyzer.fitter, accumulator, analyzer.K)
        wh = result.williamson_hall
        if analyzer.L_nm is None:
            if wh.status == Status.OK:
                apply_broadening(maps, float(wh.L_nm), analyzer.K, analyzer.peak_model.peak_names)
            else:
                for name in ("g_q", "delta_psi_deg", "orientational_disorder_deg"):
                    if name in maps.statuses:
                        pending = maps.statuses[name] == Status.PENDING_AVERAGE
                        maps.statuses[name][pending] = wh.status
        return result
