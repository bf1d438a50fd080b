"""One frame in, one vector of map values out: regroup, fit every peak, derive the physics.

A :class:`FrameAnalyzer` is built once per geometry, peak model and pixel mask (the tables and
every buffer are allocated then) and then analyses frames without allocating large arrays.
The output order is :func:`analysis.map_parameters.parameter_names` of the peak model, which
the collector uses for its maps.
"""

from __future__ import annotations

import logging

import numpy as np

from analysis.atomic_lattice import atomic_lattice_parameters
from analysis.average_pattern import AverageAccumulator
from analysis.background import regroup_background
from analysis.errors import GeometryError
from analysis.gauss2d_fit import FitSettings
from analysis.gauss2d_fit import warm_up as warm_up_fits
from analysis.geometry import DetectorGeometry
from analysis.map_parameters import map_vectors, parameter_names, peak_map_values, registry
from analysis.peak_model import PeakModel
from analysis.peak_window_fits import PeakWindowFitter
from analysis.polar_table import build_polar_table
from analysis.regroup_batch import RegroupBatch
from analysis.regroup_kernel import RegroupBuffers, regroup_frame
from analysis.status import Status
from analysis.superlattice import superlattice_parameters
from analysis.williamson_hall import frame_broadening

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 16
"""Frames analysed together at most (fits and physics once per batch)."""

FRAME_FIT_XTOL = 0.1
"""Per-frame fits at bin centres (Newton steps near the optimum) stop at a step of at most 10 %
of the standard errors (taken, not evaluated): their values then differ from fully converged
ones by at most ~1.5 % of their errors (tested at 3 %), for fewer iterations."""

FRAME_FIT_XTOL_AT_POINTS = 1e-2
"""Per-frame fits at per-bin points (the SAXS windows; no Newton steps, linear convergence)
stop at a step of 1 % of the standard errors: values within ~0.1 % of their errors of fully
converged ones (10 % gave up to 5 %)."""

INVALID_VALUES = {np.dtype(np.uint8): 2**8 - 1, np.dtype(np.uint16): 2**16 - 1, np.dtype(np.uint32): 2**32 - 1}
"""EIGER NODATA value (gap / masked pixel) of each image dtype: 2^bits - 1."""


class FrameAnalyzer:
    """Analyse frames of one detector geometry.

    Parameters
    ----------
    geometry : DetectorGeometry
    peak_model : PeakModel
    pixel_mask : ndarray of uint32, shape (rows, columns), optional
        EIGER pixel mask (nonzero = excluded).
    background : ndarray of float32, shape (rows, columns), optional
        Kapton-only background frame (counts per exposure), subtracted bin by bin.
    williamson_hall_L_nm : float, optional
        NC size fixed for the per-frame g_q and delta_psi. Default: the peak model's value; when
        neither gives one, those two maps wait for the average-pattern fit at the end of the
        series (status PENDING_AVERAGE).
    max_batch : int
        Most frames :meth:`analyse_batch` / :meth:`analyse_regrouped` take at once (their
        buffers are allocated here).
    """

    def __init__(self, geometry: DetectorGeometry, peak_model: PeakModel, pixel_mask: np.ndarray | None = None,
                 background: np.ndarray | None = None, williamson_hall_L_nm: float | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH) -> None:
        if pixel_mask is not None and pixel_mask.shape != geometry.shape:
            raise GeometryError(f"pixel mask shape {pixel_mask.shape} does not match the geometry {geometry.shape}")
        self.geometry = geometry
        self.peak_model = peak_model
        self.table = build_polar_table(geometry, peak_model, pixel_mask)
        self.batch = RegroupBatch(self.table, max_batch)
        self.buffers = self.batch.slots[0]
        self.background = None if background is None else regroup_background(background, self.table)
        self.fitter = PeakWindowFitter(self.table, FitSettings(min_significance=peak_model.significance_threshold,
                                                               xtol=FRAME_FIT_XTOL,
                                                               xtol_at_points=FRAME_FIT_XTOL_AT_POINTS),
                                       geometry=geometry)
        self.parameter_names = self.parameter_names_for(peak_model)
        self.L_nm = williamson_hall_L_nm if williamson_hall_L_nm is not None else peak_model.williamson_hall_L_nm
        self.K = peak_model.williamson_hall_K
        self.max_saturated_pixels = peak_model.overload.max_saturated_pixels
        self.saturation_override = peak_model.overload.saturation_value
        self.average = AverageAccumulator(self.table.bins_shape)

    # -- names and units -----------------------------------------------------------------------
    @staticmethod
    def parameter_names_for(peak_model: PeakModel) -> tuple[str, ...]:
        return parameter_names(peak_model.peak_names)

    @staticmethod
    def parameter_units_for(peak_model: PeakModel) -> dict[str, str]:
        return {name: p.unit for name, p in registry(peak_model.peak_names).items()}

    @staticmethod
    def parameter_descriptions_for(peak_model: PeakModel) -> dict[str, str]:
        return {name: p.description for name, p in registry(peak_model.peak_names).items()}

    # -- per frame -----------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Compile every kernel on the real tables with dummy frames before serving (one frame
        and a batch of two, uint32 and uint16)."""
        warm_up_fits()
        self.average.warm_up()
        n_params = len(self.parameter_names)
        for dtype in (np.uint32, np.uint16):
            frame = np.zeros(self.geometry.shape, dtype=dtype)
            self.analyse(frame, np.empty(n_params), np.empty(n_params, np.int32), accumulate=False)
            n = min(2, self.batch.capacity)
            self.analyse_batch([frame] * n, np.empty((n, n_params)), np.empty((n, n_params), np.int32),
                               accumulate=False)

    def analyse(self, frame: np.ndarray, values: np.ndarray, statuses: np.ndarray,
                saturation_value: float | None = None, accumulate: bool = True) -> None:
        """Analyse one frame into caller-owned vectors.

        Parameters
        ----------
        frame : ndarray, shape (rows, columns)
            uint8/16/32 counts (NODATA = 2^bits - 1) or float (NaN = invalid).
        values : ndarray of float64, shape (n_parameters,)
            Filled with the map values (NaN where missing).
        statuses : ndarray of int32, shape (n_parameters,)
            Filled with :class:`analysis.status.Status` codes.
        saturation_value : float, optional
            Largest valid count from the series header (the peak model may override it).
        accumulate : bool
            Add the frame's windows to the running average pattern.
        """
        self.regroup_into(0, frame, saturation_value)
        self.analyse_regrouped(1, values[None], statuses[None], accumulate=accumulate)

    def analyse_batch(self, frames, values: np.ndarray, statuses: np.ndarray,
                      saturation_value: float | None = None, accumulate: bool = True) -> None:
        """Analyse several frames at once (same results as :meth:`analyse` frame by frame).

        Parameters
        ----------
        frames : sequence of ndarray, shape (rows, columns), at most ``max_batch``
        values : ndarray of float64, shape (n_frames, n_parameters)
        statuses : ndarray of int32, shape (n_frames, n_parameters)
        saturation_value, accumulate
            As in :meth:`analyse`.
        """
        for k, frame in enumerate(frames):
            self.regroup_into(k, frame, saturation_value)
        self.analyse_regrouped(len(frames), values, statuses, accumulate=accumulate)

    def regroup_into(self, slot: int, frame: np.ndarray, saturation_value: float | None = None) -> RegroupBuffers:
        """Regroup one frame into batch slot ``slot`` (0 <= slot < max_batch) and return its buffers."""
        if frame.shape != self.geometry.shape:
            raise GeometryError(f"frame shape {frame.shape} does not match the geometry {self.geometry.shape}")
        return regroup_frame(frame, self.table, invalid_value=INVALID_VALUES.get(frame.dtype),
                             saturation_value=self.saturation_for(saturation_value), background=self.background,
                             out=self.batch.slots[slot])

    def saturation_for(self, saturation_value: float | None) -> float | None:
        """The saturation value in force: the peak model's override, else the series header's."""
        return self.saturation_override if self.saturation_override is not None else saturation_value

    def analyse_regrouped(self, n_frames: int, values: np.ndarray, statuses: np.ndarray,
                          accumulate: bool = True, first: int = 0) -> None:
        """Fit and derive the regrouped slots ``first .. first + n_frames - 1`` into ``values`` /
        ``statuses`` of shape (n_frames, n_parameters) (float64 / int32, caller-owned); the
        slots go into the average pattern only once they are analysed."""
        if not (1 <= n_frames and 0 <= first and first + n_frames <= self.batch.capacity):
            raise ValueError(f"a batch holds 1 to {self.batch.capacity} frames, got slots {first} to "
                             f"{first + n_frames - 1}")
        batch = self.batch
        used = slice(first, first + n_frames)
        fits = self.fitter.fit(batch.mean_counts[used], batch.variance[used], batch.n_saturated[used],
                               self.max_saturated_pixels, n_valid=batch.n_valid[used],
                               sum_counts=batch.sum_counts[used])
        saxs_intensity = batch.saxs_intensity(first, n_frames)
        saxs_status = np.where(np.isfinite(saxs_intensity), int(Status.OK), int(Status.TOO_FEW_POINTS))
        saxs = ({"saxs_intensity": saxs_intensity}, {"saxs_intensity": saxs_status.astype(np.int32)})
        vector, status = map_vectors(self.parameter_names, saxs, *self.derive(fits))
        values[:n_frames] = vector
        statuses[:n_frames] = status
        if accumulate:
            for k in range(first, first + n_frames):
                self.average.add(batch.slots[k])

    def fit_regrouped(self, buffers: RegroupBuffers):
        """Poisson maximum-likelihood fits of every window of a regrouped frame (PeakFits)."""
        return self.fitter.fit(buffers.mean_counts, buffers.variance, buffers.n_saturated,
                               self.max_saturated_pixels, n_valid=buffers.n_valid,
                               sum_counts=buffers.sum_counts)

    def derive(self, fits) -> list[tuple[dict, dict]]:
        """Every derived quantity of the fitted peaks, as (values, statuses) dict pairs."""
        parts = [peak_map_values(fits)]
        superlattice = None
        if self.peak_model.has_saxs:
            superlattice = superlattice_parameters(fits)
            parts.append(superlattice.map_values())
        if self.peak_model.has_waxs:
            parts.append(atomic_lattice_parameters(
                fits, phi_deg=None if superlattice is None else superlattice.phi_deg,
                phi_status=None if superlattice is None else superlattice.status).map_values())
            parts.append(self.broadening(fits))
        return parts

    def broadening(self, fits) -> tuple[dict, dict]:
        """g_q and delta_psi with L fixed, or PENDING_AVERAGE when L is not known yet."""
        if self.L_nm is None:
            shape = fits.frame_shape
            pending = np.full(shape, int(Status.PENDING_AVERAGE), dtype=np.int32)
            names = ("g_q", "delta_psi_deg", "orientational_disorder_deg")
            return {n: np.full(shape, np.nan) for n in names}, {n: pending for n in names}
        return frame_broadening(fits, self.L_nm, self.K).map_values()
