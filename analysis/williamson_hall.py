"""Williamson-Hall analysis of the WAXS peak widths (science.md section 5).

Model (FWHMs added in quadrature)::

    w(q)^2 = (2 pi K / L)^2 + (g q)^2

K the shape factor (0.86 for cubes; 0.85 in some texts), L the NC size (coherent domain, nm),
g the lattice distortion (FWHM of delta a / a, a fraction). On the average pattern L and g come
from a straight-line least-squares fit of w^2 against q^2 (:func:`fit_williamson_hall`). Per
frame, with L fixed::

    g_q       = mean_i sqrt(w_q,i^2 - (2 pi K / L)^2) / q_i
    delta_psi = mean_i sqrt((w_chi,i q_i)^2 - (2 pi K / L)^2) / q_i     (w_chi in rad)

A peak whose radicand is negative (width below the size broadening) is left out of the mean;
when every present peak is left out the value is NaN with ``NEGATIVE_RADICAND``; with no peak
present it is NaN with ``MISSING_PEAK``.

Hiller SI S4-S8 split the measured azimuthal FWHM into orientational disorder, size and
microstrain in quadrature (:func:`orientational_disorder_deg`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from analysis.errors import ConfigurationError
from analysis.peak_fits import WAXS_PEAKS, PeakFits
from analysis.status import Status

K_CUBE = 0.86
"""Scherrer-type shape factor for cubes used by Lapkin."""


def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"Williamson-Hall {name} must be a positive number, got {value!r}")
    return value


def size_broadening_nm(L_nm: float, K: float = K_CUBE) -> float:
    """FWHM (nm^-1) of a peak broadened only by the finite size L (nm): 2 pi K / L."""
    return 2.0 * math.pi * _check_positive("K", K) / _check_positive("L_nm", L_nm)


class WilliamsonHallErrors(NamedTuple):
    """1-sigma errors of a Williamson-Hall fit: ``L_nm`` (nm) and ``g`` (fraction)."""

    L_nm: np.ndarray
    g: np.ndarray


class WilliamsonHallFit(NamedTuple):
    """Result of :func:`fit_williamson_hall`; unpacks as ``(L_nm, g, errors, status)``."""

    L_nm: np.ndarray
    g: np.ndarray
    errors: WilliamsonHallErrors
    status: np.ndarray


def fit_williamson_hall(q_nm, fwhm_nm, K: float = K_CUBE, fwhm_err_nm=None) -> WilliamsonHallFit:
    """Fit w^2 = (2 pi K / L)^2 + (g q)^2 by linear least squares of w^2 against q^2.

    Parameters
    ----------
    q_nm : array_like of float, shape (..., n_peaks)
        Peak centres, nm^-1. NaN = peak missing.
    fwhm_nm : array_like of float, shape (..., n_peaks)
        Radial FWHMs, nm^-1. NaN = peak missing.
    K : float
        Shape factor.
    fwhm_err_nm : array_like of float, shape (..., n_peaks), optional
        1-sigma errors of the FWHMs: the fit is then weighted (sigma(w^2) = 2 w sigma(w)) and the
        errors are the absolute ones. Without them the points are weighted equally and the
        errors come from the scatter about the line (NaN with only two peaks).

    Returns
    -------
    WilliamsonHallFit
        ``L_nm`` (nm) and ``g`` (fraction), float64 of shape (...); ``errors`` the same shape;
        ``status`` int32: OK, MISSING_PEAK (fewer than two peaks), SINGULAR (all at one q) or
        NEGATIVE_RADICAND (intercept <= 0 or negative slope: both values NaN).
    """
    K = _check_positive("K", K)
    q = np.asarray(q_nm, dtype=np.float64)
    w = np.asarray(fwhm_nm, dtype=np.float64)
    if q.shape != w.shape or q.ndim == 0:
        raise ConfigurationError(f"Williamson-Hall q_nm shape {q.shape} and fwhm_nm shape {w.shape} "
                                 "must be equal, with the peaks on the last axis")
    x, y = q * q, w * w
    use = np.isfinite(x) & np.isfinite(y) & (q > 0)
    weighted = fwhm_err_nm is not None
    if weighted:
        sigma_y = 2.0 * w * np.asarray(fwhm_err_nm, dtype=np.float64)
        use &= np.isfinite(sigma_y) & (sigma_y > 0)
        weight = np.where(use, 1.0 / np.where(use, sigma_y, 1.0) ** 2, 0.0)
    else:
        weight = use.astype(np.float64)
    x = np.where(use, x, 0.0)
    y = np.where(use, y, 0.0)
    n = use.sum(axis=-1)
    s, sx, sy = weight.sum(-1), (weight * x).sum(-1), (weight * y).sum(-1)
    sxx, sxy = (weight * x * x).sum(-1), (weight * x * y).sum(-1)
    det = s * sxx - sx * sx
    scale = np.maximum(np.abs(s * sxx), np.finfo(np.float64).tiny)
    regular = (n >= 2) & (np.abs(det) > 1e-12 * scale)
    safe_det = np.where(regular, det, 1.0)
    slope = (s * sxy - sx * sy) / safe_det            # g^2
    intercept = (sxx * sy - sx * sxy) / safe_det       # (2 pi K / L)^2
    var_intercept, var_slope = sxx / safe_det, s / safe_det
    if not weighted:
        residual = np.where(use, y - intercept[..., None] - slope[..., None] * x, 0.0)
        dof = n - 2
        with np.errstate(invalid="ignore", divide="ignore"):
            s2 = np.where(dof > 0, (residual ** 2).sum(-1) / np.maximum(dof, 1), np.nan)
        var_intercept, var_slope = var_intercept * s2, var_slope * s2
    physical = regular & (intercept > 0) & (slope >= 0)
    status = np.where(n < 2, int(Status.MISSING_PEAK),
                      np.where(~regular, int(Status.SINGULAR),
                               np.where(physical, int(Status.OK), int(Status.NEGATIVE_RADICAND)))).astype(np.int32)
    with np.errstate(invalid="ignore", divide="ignore"):
        L_nm = np.where(physical, 2.0 * np.pi * K / np.sqrt(np.where(physical, intercept, 1.0)), np.nan)
        g = np.where(physical, np.sqrt(np.where(physical, slope, 0.0)), np.nan)
        L_err = np.where(physical, L_nm * np.sqrt(var_intercept) / (2.0 * intercept), np.nan)
        g_err = np.where(physical & (g > 0), np.sqrt(var_slope) / (2.0 * g), np.nan)
    return WilliamsonHallFit(L_nm=L_nm, g=g, errors=WilliamsonHallErrors(L_err, g_err), status=status)


def _mean_excess_width(q_nm: np.ndarray, width_nm: np.ndarray, present: np.ndarray, size_fwhm_nm: float):
    """mean_i sqrt(width_i^2 - size^2) / q_i over usable peaks (last axis); value, status, n_used."""
    usable = present & np.isfinite(width_nm) & np.isfinite(q_nm) & (q_nm > 0)
    radicand = width_nm * width_nm - size_fwhm_nm * size_fwhm_nm
    with np.errstate(invalid="ignore"):
        used = usable & (radicand >= 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        terms = np.where(used, np.sqrt(np.where(used, radicand, 0.0)) / np.where(used, q_nm, 1.0), 0.0)
    n_used = used.sum(axis=-1)
    n_usable = usable.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(n_used > 0, terms.sum(axis=-1) / np.maximum(n_used, 1), np.nan)
    status = np.where(n_used > 0, int(Status.OK),
                      np.where(n_usable > 0, int(Status.NEGATIVE_RADICAND), int(Status.MISSING_PEAK)))
    return value, status.astype(np.int32), n_used.astype(np.int32)


def radial_distortion(q_nm, fwhm_q_nm, present, L_nm: float, K: float = K_CUBE):
    """Per-frame lattice distortion g_q from radial FWHMs with L fixed.

    Parameters
    ----------
    q_nm, fwhm_q_nm : array_like of float, shape (..., n_peaks)
        Peak centres and radial FWHMs, nm^-1.
    present : array_like of bool, shape (..., n_peaks)
        Which peaks were fitted.
    L_nm, K : float
        NC size (nm, from the average pattern) and shape factor.

    Returns
    -------
    g_q : ndarray of float64, shape (...)
        Fraction (multiply by 100 for %).
    status : ndarray of int32, shape (...)
    n_used : ndarray of int32, shape (...)
        Peaks that entered the mean.
    """
    return _mean_excess_width(np.asarray(q_nm, dtype=np.float64), np.asarray(fwhm_q_nm, dtype=np.float64),
                              np.asarray(present, dtype=bool), size_broadening_nm(L_nm, K))


def orientation_spread_deg(q_nm, fwhm_chi_deg, present, L_nm: float, K: float = K_CUBE):
    """Per-frame orientational spread delta_psi from azimuthal FWHMs with L fixed.

    Parameters
    ----------
    q_nm : array_like of float, shape (..., n_peaks)
        Peak centres, nm^-1.
    fwhm_chi_deg : array_like of float, shape (..., n_peaks)
        Azimuthal FWHMs, degrees (converted to an arc length w_chi q in nm^-1).
    present : array_like of bool, shape (..., n_peaks)
    L_nm, K : float

    Returns
    -------
    delta_psi_deg : ndarray of float64, shape (...)
        Degrees.
    status, n_used : ndarray of int32, shape (...)
    """
    q = np.asarray(q_nm, dtype=np.float64)
    arc_nm = np.radians(np.asarray(fwhm_chi_deg, dtype=np.float64)) * q
    value_rad, status, n_used = _mean_excess_width(q, arc_nm, np.asarray(present, dtype=bool),
                                                   size_broadening_nm(L_nm, K))
    return np.degrees(value_rad), status, n_used


@dataclass(frozen=True, eq=False)
class FrameBroadening:
    """Per-frame Williamson-Hall values (arrays of shape (...)).

    Attributes
    ----------
    g_q : float64
        Lattice distortion (fraction).
    delta_psi_deg : float64
        Orientational spread, degrees.
    g_q_status, delta_psi_status : int32
    g_q_n_peaks, delta_psi_n_peaks : int32
        Peaks used in each mean.
    orientational_disorder_deg : float64
        Hiller SI S4-S8: mean over the peaks of the azimuthal FWHM left after removing the size
        (2 pi K / (L q0)) and microstrain (g_q) terms in quadrature, degrees.
    orientational_disorder_status : int32
    """

    g_q: np.ndarray
    delta_psi_deg: np.ndarray
    g_q_status: np.ndarray
    delta_psi_status: np.ndarray
    g_q_n_peaks: np.ndarray
    delta_psi_n_peaks: np.ndarray
    orientational_disorder_deg: np.ndarray
    orientational_disorder_status: np.ndarray

    def map_values(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Values and statuses keyed by map parameter name."""
        return ({"g_q": self.g_q, "delta_psi_deg": self.delta_psi_deg,
                 "orientational_disorder_deg": self.orientational_disorder_deg},
                {"g_q": self.g_q_status, "delta_psi_deg": self.delta_psi_status,
                 "orientational_disorder_deg": self.orientational_disorder_status})


def frame_broadening(fits: PeakFits, L_nm: float, K: float = K_CUBE,
                     peaks: tuple[str, ...] = WAXS_PEAKS) -> FrameBroadening:
    """g_q and delta_psi of every frame from the fitted WAXS peaks, L fixed.

    Parameters
    ----------
    fits : PeakFits
        Fitted peaks, leading shape (...).
    L_nm, K : float
        NC size from the average pattern (nm) and shape factor; invalid values raise
        :class:`analysis.errors.ConfigurationError`.
    peaks : tuple of str
        Peaks entering the means.
    """
    present = fits.present_columns(peaks)
    q = fits.columns("q0_nm", peaks)
    w_q = fits.columns("fwhm_q_nm", peaks)
    w_chi = fits.columns("fwhm_chi_deg", peaks)
    g_q, g_status, g_n = radial_distortion(q, w_q, present, L_nm, K)
    dpsi, d_status, d_n = orientation_spread_deg(q, w_chi, present, L_nm, K)
    disorder, disorder_status = _mean_orientational_disorder(w_chi, q, present, g_q, g_status, L_nm, K)
    return FrameBroadening(g_q, dpsi, g_status, d_status, g_n, d_n, disorder, disorder_status)


def _mean_orientational_disorder(w_chi_deg, q_nm, present, g_q, g_status, L_nm: float, K: float):
    """Hiller's orientational disorder of each present peak (s = L, eps = g_q), averaged."""
    strain = np.where(g_status == Status.OK, g_q, np.nan)[..., None]
    per_peak, per_status = orientational_disorder_deg(np.where(present, w_chi_deg, np.nan), L_nm, q_nm, strain, K)
    ok = per_status == Status.OK
    count = ok.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(count > 0, np.where(ok, per_peak, 0.0).sum(axis=-1) / np.maximum(count, 1), np.nan)
    # no usable peak: NEGATIVE_RADICAND if some peak had one, else MISSING_PEAK
    negative = ((per_status == Status.NEGATIVE_RADICAND) & present).any(axis=-1)
    status = np.where(count > 0, int(Status.OK),
                      np.where(negative, int(Status.NEGATIVE_RADICAND), int(Status.MISSING_PEAK)))
    return value, status.astype(np.int32)


def fit_williamson_hall_peaks(fits: PeakFits, K: float = K_CUBE,
                              peaks: tuple[str, ...] = ("waxs_010", "waxs_110", "waxs_020")) -> WilliamsonHallFit:
    """:func:`fit_williamson_hall` on the radial widths of fitted peaks (e.g. the average pattern).

    Peaks absent or not OK are left out; the fit is weighted when the FWHM errors are known for
    every peak used.
    """
    present = fits.present_columns(peaks)
    q = np.where(present, fits.columns("q0_nm", peaks), np.nan)
    w = np.where(present, fits.columns("fwhm_q_nm", peaks), np.nan)
    err = fits.columns("fwhm_q_err_nm", peaks)
    known = np.all(~present | (np.isfinite(err) & (err > 0)))
    return fit_williamson_hall(q, w, K, fwhm_err_nm=err if known else None)


def orientational_disorder_deg(dphi_measured_deg, s_nm, q0_nm, eps, K: float = K_CUBE):
    """Hiller SI S4-S8: dphi_do = sqrt(dphi_m^2 - dphi_s^2 - dphi_eps^2).

    Parameters
    ----------
    dphi_measured_deg : array_like of float, shape (...)
        Measured azimuthal FWHM, degrees. NaN = missing.
    s_nm : array_like of float, broadcastable
        NC size, nm (dphi_s = 2 pi K / (s q0), radians).
    q0_nm : array_like of float, broadcastable
        Peak position, nm^-1.
    eps : array_like of float, broadcastable
        Microstrain (dimensionless; dphi_eps = eps, radians).
    K : float

    Returns
    -------
    dphi_do_deg : ndarray of float64
        Orientational disorder, degrees.
    status : ndarray of int32
        OK, MISSING_PEAK (any input NaN) or NEGATIVE_RADICAND.
    """
    K = _check_positive("K", K)
    measured, s, q0, strain = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64)
                                                    for v in (dphi_measured_deg, s_nm, q0_nm, eps)))
    known = np.isfinite(measured) & np.isfinite(s) & np.isfinite(q0) & np.isfinite(strain) & (s > 0) & (q0 > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        size_rad = 2.0 * np.pi * K / (s * q0)
        radicand = np.radians(measured) ** 2 - size_rad ** 2 - strain ** 2
    ok = known & (radicand >= 0)
    value = np.where(ok, np.degrees(np.sqrt(np.where(ok, radicand, 0.0))), np.nan)
    status = np.where(ok, int(Status.OK),
                      np.where(known, int(Status.NEGATIVE_RADICAND), int(Status.MISSING_PEAK)))
    return value, status.astype(np.int32)
