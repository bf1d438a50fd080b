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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.gauss2d_fit import FitSettings, fit_windows_into
from analysis.gauss2d_model import I_CHI0, I_I0, I_Q0, I_SCHI, I_SQ, N_PARAMS, fwhm_from_sigma
from analysis.peak_fits import PeakFits
from analysis.polar_table import PolarTable
from analysis.status import Status


@dataclass(frozen=True, eq=False)
class _Group:
    windows: np.ndarray  # int64 window indices
    n_q: int
    n_chi: int
    q_centres_nm: np.ndarray  # (n, n_q)
    chi_centres_deg: np.ndarray  # (n, n_chi)
    params: np.ndarray
    errors: np.ndarray
    status: np.ndarray
    chi2_reduced: np.ndarray
    n_iterations: np.ndarray


class PeakWindowFitter:
    """Preallocated batch fitting of every window of a polar table.

    Parameters
    ----------
    table : PolarTable
    settings : FitSettings, optional
        ``min_significance`` defaults to the peak model's significance threshold.
    """

    def __init__(self, table: PolarTable, settings: FitSettings | None = None) -> None:
        self.table = table
        self.settings = settings or FitSettings()
        sizes = {}
        for window in range(table.n_windows):
            key = (int(table.n_q_per_window[window]), int(table.n_chi_per_window[window]))
            sizes.setdefault(key, []).append(window)
        self.groups = []
        for (n_q, n_chi), windows in sizes.items():
            index = np.asarray(windows, dtype=np.int64)
            n = len(index)
            self.groups.append(_Group(
                windows=index, n_q=n_q, n_chi=n_chi,
                q_centres_nm=np.ascontiguousarray(table.q_centres_nm[index, :n_q]),
                chi_centres_deg=np.ascontiguousarray(table.chi_centres_deg[index, :n_chi]),
                params=np.empty((n, N_PARAMS)), errors=np.empty((n, N_PARAMS)),
                status=np.empty(n, np.int32), chi2_reduced=np.empty(n), n_iterations=np.empty(n, np.int32),
            ))
        self.pixel_area = table.pixel_area_per_bin

    def fit(self, mean_counts: np.ndarray, variance: np.ndarray, n_saturated: np.ndarray | None = None,
            max_saturated_pixels: int = 0) -> PeakFits:
        """Fit every window.

        Parameters
        ----------
        mean_counts, variance : ndarray of float64, shape (n_windows, n_q, n_chi)
            Background-subtracted mean counts per pixel and their variance (regroup output);
            divided by the pixel areas here.
        n_saturated : ndarray of int32, shape (n_windows,), optional
            Saturated pixels per window; more than ``max_saturated_pixels`` gives SATURATED.

        Returns
        -------
        PeakFits
            One entry per window in table order; I0 in photons.
        """
        n = self.table.n_windows
        density = mean_counts / self.pixel_area
        density_variance = variance / self.pixel_area**2
        params = np.full((n, N_PARAMS), np.nan)
        errors = np.full((n, N_PARAMS), np.nan)
        status = np.empty(n, np.int32)
        for group in self.groups:
            counts = np.ascontiguousarray(density[group.windows, :group.n_q, :group.n_chi])
            var = np.ascontiguousarray(density_variance[group.windows, :group.n_q, :group.n_chi])
            fit_windows_into(counts, var, group.q_centres_nm, group.chi_centres_deg, group.params,
                             group.errors, group.status, group.chi2_reduced, group.n_iterations,
                             settings=self.settings)
            params[group.windows] = group.params
            errors[group.windows] = group.errors
            status[group.windows] = group.status
        outside = self.table.window_status != Status.OK
        status[outside] = self.table.window_status[outside]
        if n_saturated is not None:
            # a window with overloads cannot be trusted whatever its fit says
            status[(n_saturated > max_saturated_pixels) & ~outside] = Status.SATURATED
        return self._peak_fits(params, errors, status)

    def _peak_fits(self, params: np.ndarray, errors: np.ndarray, status: np.ndarray) -> PeakFits:
        ok = status == Status.OK
        params = np.where(ok[:, None], params, np.nan)
        errors = np.where(ok[:, None], errors, np.nan)
        return PeakFits(
            names=self.table.peak_names,
            i0=params[:, I_I0],
            q0_nm=params[:, I_Q0],
            chi0_deg=params[:, I_CHI0],
            fwhm_q_nm=fwhm_from_sigma(params[:, I_SQ]),
            fwhm_chi_deg=fwhm_from_sigma(params[:, I_SCHI]),
            status=status,
            i0_err=errors[:, I_I0],
            q0_err_nm=errors[:, I_Q0],
            chi0_err_deg=errors[:, I_CHI0],
            fwhm_q_err_nm=fwhm_from_sigma(errors[:, I_SQ]),
            fwhm_chi_err_deg=fwhm_from_sigma(errors[:, I_SCHI]),
        )
