"""The average pattern of a scan and its Williamson-Hall analysis (science.md section 5).

Workers sum the regrouped windows of the frames they analyse (:class:`AverageAccumulator`);
at the end of a series the sums are merged, the average windows are fitted like any frame,
L and g come from the Williamson-Hall fit of the radial widths, and the per-frame g_q and
delta_psi maps are (re)computed with that L fixed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from analysis.map_state import MapState
from analysis.peak_fits import WAXS_PEAKS, PeakFits
from analysis.peak_window_fits import PeakWindowFitter
from analysis.regroup_kernel import RegroupBuffers
from analysis.status import Status
from analysis.williamson_hall import WilliamsonHallFit, fit_williamson_hall_peaks, frame_broadening


class AverageAccumulator:
    """Running sums of the regrouped windows of many frames.

    Attributes
    ----------
    signal_sum : ndarray of float64, shape (n_windows, n_q, n_chi)
        Background-subtracted counts summed over frames and pixels.
    raw_sum : ndarray of float64, same shape
        Raw counts summed (for the Poisson variance).
    n_valid : ndarray of int64, same shape
        Pixel-frames summed.
    n_frames : int
    """

    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.signal_sum = np.zeros(shape)
        self.raw_sum = np.zeros(shape)
        self.n_valid = np.zeros(shape, dtype=np.int64)
        self.n_frames = 0

    @staticmethod
    def warm_up() -> None:
        """Compile the accumulation kernel (before serving)."""
        sums = (np.zeros((1, 1, 1)), np.zeros((1, 1, 1)), np.zeros((1, 1, 1), np.int64))
        accumulate_kernel(*sums, np.zeros((1, 1, 1)), np.zeros((1, 1, 1)), np.ones((1, 1, 1), np.int32))

    def reset(self) -> None:
        self.signal_sum[:] = 0
        self.raw_sum[:] = 0
        self.n_valid[:] = 0
        self.n_frames = 0

    def add(self, buffers: RegroupBuffers) -> None:
        """Add one frame's regrouped windows (shapes as the sums'; else ``ValueError``)."""
        for name in ("mean_counts", "sum_counts", "n_valid"):
            if getattr(buffers, name).shape != self.signal_sum.shape:
                raise ValueError(f"regrouped {name} of shape {getattr(buffers, name).shape} cannot be added to "
                                 f"an average pattern of shape {self.signal_sum.shape}")
        accumulate_kernel(self.signal_sum, self.raw_sum, self.n_valid, buffers.mean_counts, buffers.sum_counts,
                          buffers.n_valid)
        self.n_frames += 1

    def merge(self, signal_sum: np.ndarray, raw_sum: np.ndarray, n_valid: np.ndarray, n_frames: int) -> None:
        """Add another accumulator's sums (e.g. another worker's)."""
        if signal_sum.shape != self.signal_sum.shape:
            raise ValueError(f"average pattern of shape {signal_sum.shape} cannot be merged into "
                             f"{self.signal_sum.shape}")
        self.signal_sum += signal_sum
        self.raw_sum += raw_sum
        self.n_valid += n_valid
        self.n_frames += int(n_frames)

    def mean_and_variance(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean background-subtracted counts per pixel per frame, and its Poisson variance."""
        with np.errstate(invalid="ignore", divide="ignore"):
            n = self.n_valid.astype(np.float64)
            mean = np.where(n > 0, self.signal_sum / n, np.nan)
            variance = np.where(n > 0, np.maximum(self.raw_sum, 1.0) / n**2, np.nan)
        return mean, variance


@numba.njit(cache=True)
def accumulate_kernel(signal_sum, raw_sum, n_valid_sum, mean_counts, sum_counts, n_valid):
    """Add one frame's windows to the running sums, in place (all arrays of one 3D shape).

    ``signal_sum += mean_counts * n_valid`` where ``n_valid > 0`` (``mean_counts`` is NaN
    elsewhere), ``raw_sum += sum_counts``, ``n_valid_sum += n_valid``. float64 sums and inputs,
    integer counts. About 10x the boolean-mask NumPy version (25 600 bins: ~0.1 ms), which the
    tests keep as the reference.
    """
    n_windows, n_q, n_chi = signal_sum.shape
    for w in range(n_windows):
        for i in range(n_q):
            for j in range(n_chi):
                n = n_valid[w, i, j]
                signal_sum[w, i, j] += mean_counts[w, i, j] * n if n > 0 else 0.0
                raw_sum[w, i, j] += sum_counts[w, i, j]
                n_valid_sum[w, i, j] += n


@dataclass(frozen=True, eq=False)
class AveragePatternResult:
    """Fits of the average pattern and its Williamson-Hall analysis.

    Attributes
    ----------
    fits : PeakFits
        One entry per window (frame shape ()); I0 in photons per frame.
    williamson_hall : WilliamsonHallFit
        ``L_nm``, ``g`` (fraction), errors and status from the radial widths.
    K : float
    n_frames : int
        Frames summed.
    """

    fits: PeakFits
    williamson_hall: WilliamsonHallFit
    K: float
    n_frames: int


def fit_average_pattern(fitter: PeakWindowFitter, accumulator: AverageAccumulator, K: float) -> AveragePatternResult:
    """Fit every window of the average pattern and the Williamson-Hall line through the WAXS widths."""
    mean, variance = accumulator.mean_and_variance()
    fits = fitter.fit(mean, variance, n_valid=accumulator.n_valid, sum_counts=accumulator.raw_sum)
    return AveragePatternResult(fits, fit_williamson_hall_peaks(fits, K), K, accumulator.n_frames)


def peak_fits_from_maps(maps: MapState, peak_names: tuple[str, ...]) -> PeakFits:
    """The per-peak maps as :class:`PeakFits` of frame shape (rows, columns)."""
    def stack(quantity: str) -> np.ndarray:
        return np.stack([maps.values[f"{peak}.{quantity}"] for peak in peak_names], axis=-1)

    status = np.stack([maps.statuses[f"{peak}.q0_nm"] for peak in peak_names], axis=-1)
    return PeakFits(names=peak_names, i0=stack("i0"), q0_nm=stack("q0_nm"), chi0_deg=stack("chi0_deg"),
                    fwhm_q_nm=stack("fwhm_q_nm"), fwhm_chi_deg=stack("fwhm_chi_deg"), status=status)


def apply_broadening(maps: MapState, L_nm: float, K: float, peak_names: tuple[str, ...]) -> None:
    """(Re)compute the g_q and delta_psi maps from the per-peak widths with L fixed.

    Measured pixels only; unmeasured ones keep NOT_MEASURED.
    """
    waxs = tuple(p for p in peak_names if p in WAXS_PEAKS)
    if not waxs or "g_q" not in maps.values:
        return
    broadening = frame_broadening(peak_fits_from_maps(maps, waxs), L_nm, K, peaks=waxs)
    values, statuses = broadening.map_values()
    measured = maps.measured_count > 0
    for name in ("g_q", "delta_psi_deg", "orientational_disorder_deg"):
        ok = measured & (statuses[name] == Status.OK)
        maps.values[name][:] = np.where(ok, values[name], np.nan)
        maps.statuses[name][:] = np.where(measured, statuses[name], Status.NOT_MEASURED)
