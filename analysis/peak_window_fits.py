"""Fit the regrouped polar windows of one frame (or of the average pattern) and express the
results as :class:`analysis.peak_fits.PeakFits` in physical units.

Windows of a peak model may differ in bin counts (SAXS 32 x 40, WAXS 40 x 80...); windows of
equal size are fitted together in one batch call of the Numba fitter.

What is fitted is the intensity *density* in the (q, chi) plane, photons per (nm^-1 x deg):
mean counts per pixel divided by the pixel's area in that plane
(:attr:`PolarTable.pixel_area_per_bin`). Fitting counts per pixel instead would multiply the
peak by the pixel area, which falls like 1/q near the beam and drags small-angle peaks to low q
by about s_q^2 / q (0.7 % for a first-order SAXS peak). With densities, the fitted I0 is the
peak's photon count.

A pixel goes whole to the bin holding its centre, and a bin's value averages its pixels,
each of which integrates the intensity over its area. With the geometry known the fit models
exactly that (:func:`bin_pixel_moments`): every bin's peak is broadened by the spread of its
pixels and their footprint (else the fitted widths come out too wide, by bin^2 / 12 in
variance: +4 % in the FWHM of a first-order SAXS peak two bins wide, +3 % in g_q), and in
windows with few pixels per bin (:data:`CENTROID_MAX_PIXELS_PER_BIN`) it is evaluated at the
mean position of the bin's pixels rather than at its centre: with 2 x 2 pixels per bin
(first-order SAXS) they sit on average up to a tenth of a bin off it, which shifts a peak two
bins wide by up to 0.3 % of q0. With a hundred pixels per bin (WAXS) the offsets average out
and the faster separable model at the bin centres is used (the few bins cut by a detector edge
or gap, whose pixels sit to one side, are kept: leaving them out loses more than it gains).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numba
import numpy as np

from analysis.gauss2d_fit import FitSettings, PreparedFit
from analysis.geometry import DetectorGeometry, pixel_q_chi
from analysis.gauss2d_model import (I_CHI0, I_I0, I_Q0, I_SCHI, I_SQ, N_PARAMS, fwhm_from_sigma,
                                    model_and_jacobian)
from analysis.peak_fits import PeakFits
from analysis.polar_table import PolarTable
from analysis.status import Status


CENTROID_MAX_PIXELS_PER_BIN = 16
"""Windows whose median bin holds fewer valid pixels than this are fitted at the bins' pixel
centroids (when the geometry is known)."""



@numba.njit(cache=True, error_model="numpy")
def poisson_fit_inputs(mean_counts, variance, n_valid, sum_counts, area, windows, density,
                       density_variance, exposure, offset):
    """What the Poisson fits of one group of equally sized windows read, gathered from the
    frames' padded window arrays into the group's fit order in one pass (the NumPy expressions
    of :meth:`PeakWindowFitter.fit` for the least-squares case give the same numbers for the
    first two).

    Parameters
    ----------
    mean_counts, variance : float64 (n_frames, n_windows, n_q_max, n_chi_max)
    n_valid : int32 (n_frames, n_windows, n_q_max, n_chi_max)
    sum_counts : float64 (n_frames, n_windows, n_q_max, n_chi_max)
    area : float64 (n_windows, n_q_max, n_chi_max)
        Pixel area per bin in the (q, chi) plane (NaN where a bin has no pixel).
    windows : int64 (n_group,)
        The group's windows; only their first ``n_q`` x ``n_chi`` bins are read.
    density, density_variance, exposure, offset : float64 (n_frames * n_group, n_q, n_chi)
        Outputs, frame-major: ``mean_counts / area``, ``variance / area^2``,
        ``n_valid * area`` and ``(sum_counts / n_valid - mean_counts) / area`` (the subtracted
        background per pixel), the last two 0 where ``n_valid`` is 0 or they are not finite.
    """
    n_group = windows.shape[0]
    n_q = density.shape[1]
    n_chi = density.shape[2]
    for f in range(mean_counts.shape[0]):
        for g in range(n_group):
            w = windows[g]
            out = f * n_group + g
            for i in range(n_q):
                for j in range(n_chi):
                    a = area[w, i, j]
                    m = mean_counts[f, w, i, j]
                    density[out, i, j] = m / a
                    density_variance[out, i, j] = variance[f, w, i, j] / (a * a)
                    pixels = np.float64(n_valid[f, w, i, j])
                    e = 0.0
                    o = 0.0
                    if pixels > 0.0:
                        e = pixels * a
                        o = (sum_counts[f, w, i, j] / max(pixels, 1.0) - m) / a
                    exposure[out, i, j] = e if math.isfinite(e) else 0.0
                    offset[out, i, j] = o if math.isfinite(o) else 0.0


def _central_differences(image: np.ndarray, axis: int, period: float | None = None) -> np.ndarray:
    """d image / d index along ``axis`` (central inside, one-sided at the border); differences
    wrapped into (-period / 2, period / 2] when ``period`` is given (chi at the +-180 seam)."""
    forward = np.diff(image, axis=axis)
    if period is not None:
        forward = np.mod(forward + period / 2, period) - period / 2
    pad_before = [(0, 0)] * image.ndim
    pad_after = [(0, 0)] * image.ndim
    pad_before[axis] = (1, 0)
    pad_after[axis] = (0, 1)
    before = np.pad(forward, pad_before, mode="edge")
    after = np.pad(forward, pad_after, mode="edge")
    return 0.5 * (before + after)


def bin_pixel_moments(table: PolarTable, geometry: DetectorGeometry):
    """Mean position and broadening of the statically valid pixels of every bin.

    A bin's value is the mean over its pixels of the intensity each integrates over its
    area, so it samples the (q, chi) plane over the spread of its pixel centres convolved with
    a pixel's footprint (a parallelogram: variance ``(dq/drow^2 + dq/dcol^2) / 12`` in q,
    likewise in chi). For a Gaussian peak that is, to second order, the peak evaluated at the
    pixels' mean position with the widths ``sqrt(sigma^2 + var)`` (the covariance of q and chi
    is left out).

    Returns
    -------
    q_mean_nm, chi_mean_deg, q_var_nm2, chi_var_deg2 : ndarray of float64, shape (n_windows, n_q, n_chi)
        chi on each window's continuous axis (that of ``table.chi_centres_deg``); NaN in bins
        without pixels.
    """
    q_image, chi_image = pixel_q_chi(geometry)
    footprint_q = (_central_differences(q_image, 0) ** 2 + _central_differences(q_image, 1) ** 2) / 12.0
    footprint_chi = (_central_differences(chi_image, 0, 360.0) ** 2
                     + _central_differences(chi_image, 1, 360.0) ** 2) / 12.0
    pixels = table.pixel_index
    n_bins = table.n_windows * table.n_bins_per_window
    window = table.bin_index // table.n_bins_per_window
    chi_width = table.chi_centres_deg[:, 1] - table.chi_centres_deg[:, 0]
    chi_low = (table.chi_centres_deg[:, 0] - 0.5 * chi_width)[window]
    q = q_image.reshape(-1)[pixels]
    chi = chi_low + np.mod(chi_image.reshape(-1)[pixels] - chi_low, 360.0)
    counts = np.bincount(table.bin_index, minlength=n_bins).astype(np.float64)

    def mean(values):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.bincount(table.bin_index, weights=values, minlength=n_bins) / counts

    q_mean, chi_mean = mean(q), mean(chi)
    q_var = mean((q - q_mean[table.bin_index]) ** 2) + mean(footprint_q.reshape(-1)[pixels])
    chi_var = mean((chi - chi_mean[table.bin_index]) ** 2) + mean(footprint_chi.reshape(-1)[pixels])
    return tuple(a.reshape(table.bins_shape) for a in (q_mean, chi_mean, q_var, chi_var))


@dataclass(eq=False)
class _Group:
    """Windows of one size, fitted together (their static inputs in table order)."""

    windows: np.ndarray  # int64 window indices
    n_q: int
    n_chi: int
    q_centres_nm: np.ndarray  # (n, n_q)
    chi_centres_deg: np.ndarray  # (n, n_chi)
    points: tuple[np.ndarray, np.ndarray] | None  # (q, chi) per bin, (n, n_q, n_chi)
    broadening: tuple[np.ndarray, np.ndarray] | None  # (var_q, var_chi) per bin
    prepared: dict = field(default_factory=dict)  # (n_frames, poisson) -> (PreparedFit, outputs, inputs)

    def batch(self, n_frames: int, settings: FitSettings, poisson: bool = True):
        """The prepared fit of ``n_frames`` frames' windows (frame-major), its outputs and, for
        Poisson fits, the buffers of its inputs (density, its variance, exposure, offset)."""
        key = (n_frames, poisson)
        if key not in self.prepared:
            n = n_frames * self.windows.size

            def tiled(array):
                return np.tile(array, (n_frames,) + (1,) * (array.ndim - 1))

            prepared = PreparedFit(
                (n, self.n_q, self.n_chi), tiled(self.q_centres_nm), tiled(self.chi_centres_deg),
                poisson=poisson, points=None if self.points is None else tuple(map(tiled, self.points)),
                broadening=None if self.broadening is None else tuple(map(tiled, self.broadening)),
                settings=settings)
            outputs = (np.empty((n, N_PARAMS)), np.empty((n, N_PARAMS)), np.empty(n, np.int32),
                       np.empty(n), np.empty(n, np.int32))
            inputs = tuple(np.empty((n, self.n_q, self.n_chi)) for _ in range(4)) if poisson else None
            self.prepared[key] = prepared, outputs, inputs
        return self.prepared[key]


class PeakWindowFitter:
    """Preallocated batch fitting of every window of a polar table.

    Parameters
    ----------
    table : PolarTable
    settings : FitSettings, optional
        ``min_significance`` defaults to the peak model's significance threshold.
    geometry : DetectorGeometry, optional
        The table's geometry: every bin's model peak is then broadened by its pixels' spread
        and footprint, and windows with fewer than :data:`CENTROID_MAX_PIXELS_PER_BIN` pixels
        per bin are modelled at their bins' pixel centroids (:func:`bin_pixel_moments`);
        without it at the bin centres, unbroadened.

    Attributes
    ----------
    last_params : ndarray of float64, shape (n_windows, 7)
        Fitter parameters of the last frame of the last :meth:`fit` (NaN unless OK).
    """

    def __init__(self, table: PolarTable, settings: FitSettings | None = None,
                 geometry: DetectorGeometry | None = None) -> None:
        self.table = table
        self.settings = settings or FitSettings()
        moments = None if geometry is None else bin_pixel_moments(table, geometry)
        sizes = {}
        for window in range(table.n_windows):
            key = (int(table.n_q_per_window[window]), int(table.n_chi_per_window[window]))
            sizes.setdefault(key, []).append(window)
        self.groups = []
        for (n_q, n_chi), windows in sizes.items():
            index = np.asarray(windows, dtype=np.int64)
            pixels = table.pixel_count_valid[index, :n_q, :n_chi]
            few = any(np.median(p[p > 0]) < CENTROID_MAX_PIXELS_PER_BIN for p in pixels if (p > 0).any())
            points = broadening = None
            if moments is not None:
                part = [np.ascontiguousarray(m[index, :n_q, :n_chi]) for m in moments]
                points = (part[0], part[1]) if few else None
                broadening = (part[2], part[3])
            self.groups.append(_Group(
                windows=index, n_q=n_q, n_chi=n_chi,
                q_centres_nm=np.ascontiguousarray(table.q_centres_nm[index, :n_q]),
                chi_centres_deg=np.ascontiguousarray(table.chi_centres_deg[index, :n_chi]),
                points=points, broadening=broadening,
            ))
        self.pixel_area = table.pixel_area_per_bin
        self.last_params = np.full((table.n_windows, N_PARAMS), np.nan)

    def fit(self, mean_counts: np.ndarray, variance: np.ndarray, n_saturated: np.ndarray | None = None,
            max_saturated_pixels: int = 0, *, n_valid: np.ndarray | None = None,
            sum_counts: np.ndarray | None = None) -> PeakFits:
        """Fit every window of one frame or of a batch of frames (one kernel call per window size).

        Parameters
        ----------
        mean_counts, variance : ndarray of float64, shape (..., n_windows, n_q, n_chi)
            Background-subtracted mean counts per pixel and their variance (regroup output);
            divided by the pixel areas here. Leading axes: frames.
        n_saturated : ndarray of int32, shape (..., n_windows), optional
            Saturated pixels per window; more than ``max_saturated_pixels`` gives SATURATED.
        n_valid, sum_counts : ndarray, shape (..., n_windows, n_q, n_chi), optional
            Pixels (or pixel-frames) summed in each bin and their raw counts (regroup output).
            Given: Poisson maximum-likelihood fits (the photons of bin i are ``sum_counts``,
            the subtracted background ``sum_counts / n_valid - mean_counts`` per pixel). Not
            given: least squares with ``variance`` (observed-count weights, biased at low
            counts; kept for callers without raw counts).

        Returns
        -------
        PeakFits
            Arrays of shape (..., n_windows) in table order; I0 in photons.
        """
        mean_counts = np.asarray(mean_counts)
        lead = mean_counts.shape[:-3]
        n_frames = int(np.prod(lead, dtype=np.int64))
        bins = self.table.bins_shape
        n = self.table.n_windows
        poisson = n_valid is not None
        if poisson != (sum_counts is not None):
            raise ValueError("n_valid and sum_counts go together (both or neither)")
        if poisson:
            def frames_of_windows(array, dtype):
                return np.ascontiguousarray(np.broadcast_to(np.asarray(array, dtype=dtype),
                                                            mean_counts.shape)).reshape((n_frames,) + bins)

            counts = frames_of_windows(mean_counts, np.float64)
            counts_variance = frames_of_windows(variance, np.float64)
            pixels = frames_of_windows(n_valid, np.int32)
            photons = frames_of_windows(sum_counts, np.float64)
            area = np.ascontiguousarray(self.pixel_area, dtype=np.float64).reshape(bins)
        else:
            density = (mean_counts / self.pixel_area).reshape((n_frames,) + bins)
            density_variance = (np.asarray(variance) / self.pixel_area**2).reshape((n_frames,) + bins)
        params = np.full((n_frames, n, N_PARAMS), np.nan)
        errors = np.full((n_frames, n, N_PARAMS), np.nan)
        status = np.empty((n_frames, n), np.int32)
        for group in self.groups:
            prepared, (g_params, g_errors, g_status, g_chi2, g_iterations), inputs = group.batch(
                n_frames, self.settings, poisson)
            if poisson:
                poisson_fit_inputs(counts, counts_variance, pixels, photons, area, group.windows, *inputs)
                g_density, g_density_variance, g_exposure, g_offset = inputs
                prepared.run(g_density, g_density_variance, g_params, g_errors, g_status, g_chi2,
                             g_iterations, exposure=g_exposure, offset=g_offset)
            else:  # least squares (callers without raw counts) weights by density_variance alone
                def part(array):
                    return array[:, group.windows, :group.n_q, :group.n_chi].reshape(-1, group.n_q, group.n_chi)

                prepared.run(part(density), part(density_variance), g_params, g_errors, g_status,
                             g_chi2, g_iterations)
            shape = (n_frames, group.windows.size)
            params[:, group.windows] = g_params.reshape(shape + (N_PARAMS,))
            errors[:, group.windows] = g_errors.reshape(shape + (N_PARAMS,))
            status[:, group.windows] = g_status.reshape(shape)
        if n_frames:
            self.last_params[...] = params[-1]
        outside = self.table.window_status != Status.OK
        status[:, outside] = self.table.window_status[outside]
        if n_saturated is not None:
            # a window with overloads cannot be trusted whatever its fit says
            saturated = np.asarray(n_saturated).reshape(n_frames, n) > max_saturated_pixels
            status[saturated & ~outside] = Status.SATURATED
        return self._peak_fits(params.reshape(lead + (n, N_PARAMS)), errors.reshape(lead + (n, N_PARAMS)),
                               status.reshape(lead + (n,)))

    def window_model(self, window: int, params) -> np.ndarray:
        """The fitted model of one window as the fit saw it (at the bins' points, with their
        broadening), in density units, shape (n_q_w, n_chi_w)."""
        for group in self.groups:
            hits = np.flatnonzero(group.windows == window)
            if hits.size:
                i = int(hits[0])
                points = None if group.points is None else (group.points[0][i], group.points[1][i])
                broadening = (None if group.broadening is None
                              else (group.broadening[0][i], group.broadening[1][i]))
                if broadening is not None and points is None:
                    broadening = tuple(np.nanmean(b) for b in broadening)  # as the fit: window mean
                model, _ = model_and_jacobian(params, group.q_centres_nm[i], group.chi_centres_deg[i],
                                              points=points, broadening=broadening)
                return np.asarray(model)
        raise IndexError(f"window {window} is not in the table")

    def _peak_fits(self, params: np.ndarray, errors: np.ndarray, status: np.ndarray) -> PeakFits:
        ok = status == Status.OK
        params = np.where(ok[..., None], params, np.nan)
        errors = np.where(ok[..., None], errors, np.nan)
        return PeakFits(
            names=self.table.peak_names,
            i0=params[..., I_I0],
            q0_nm=params[..., I_Q0],
            chi0_deg=params[..., I_CHI0],
            fwhm_q_nm=fwhm_from_sigma(params[..., I_SQ]),
            fwhm_chi_deg=fwhm_from_sigma(params[..., I_SCHI]),
            status=status,
            i0_err=errors[..., I_I0],
            q0_err_nm=errors[..., I_Q0],
            chi0_err_deg=errors[..., I_CHI0],
            fwhm_q_err_nm=fwhm_from_sigma(errors[..., I_SQ]),
            fwhm_chi_err_deg=fwhm_from_sigma(errors[..., I_SCHI]),
        )
