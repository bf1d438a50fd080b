"""The 2D Gaussian peak model on a polar (q, chi) window, its Jacobian and the normal equations.

Model (science.md section 2, plus a linear background in q)::

    I(q, chi) = I0 / (2 pi s_q s_chi) * exp(-(q - q0)^2 / (2 s_q^2) - (chi - chi0)^2 / (2 s_chi^2))
                + b0 + b1 * (q - q_mid)

Parameter vector ``p`` (float64, length 7), in this order: ``I0`` integrated intensity in
(data units) x nm^-1 x deg, ``q0_nm`` centre in nm^-1, ``chi0_deg`` centre in degrees,
``sigma_q_nm`` and ``sigma_chi_deg`` rms widths, ``b0`` background at ``q_mid`` in data units,
``b1`` background slope in data units per nm^-1. ``q_mid`` is the centre of the window's q
range, ``(q[0] + q[-1]) / 2``. The model is sampled at the bin centres (not integrated over
bins), which adds about bin^2 / 12 to the fitted variance of a width; irrelevant for bins
smaller than a third of a width.

Two layers here:

* the NumPy reference (``gauss2d_model``, ``gauss2d_jacobian``, ``chi2_normal_equations``)
  and a SciPy reference fit (``fit_window_curve_fit``) that the Numba fitter is tested
  against;
* ``normal_equations_kernel``, the Numba routine the Levenberg-Marquardt kernel calls: it
  uses that the Gaussian is separable in q and chi, so one evaluation costs n_q + n_chi
  exponentials instead of n_q * n_chi.
"""

from __future__ import annotations

import math

import numba
import numpy as np

N_PARAMS = 7
PARAM_NAMES = ("I0", "q0_nm", "chi0_deg", "sigma_q_nm", "sigma_chi_deg", "b0", "b1")
I_I0, I_Q0, I_CHI0, I_SQ, I_SCHI, I_B0, I_B1 = range(N_PARAMS)
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
"""FWHM / sigma of a Gaussian, 2 sqrt(2 ln 2) = 2.3548..."""

_INV_TWO_PI = 1.0 / (2.0 * math.pi)


def fwhm_from_sigma(sigma):
    """Full width at half maximum of a Gaussian of rms width ``sigma`` (same units).

    Accepts a float (returns a float) or an array (returns a float64 array; NaN stays NaN).
    """
    fwhm = FWHM_PER_SIGMA * np.asarray(sigma, dtype=np.float64)
    return float(fwhm) if fwhm.ndim == 0 else fwhm


def sigma_from_fwhm(fwhm):
    """Rms width of a Gaussian of full width at half maximum ``fwhm`` (float or array)."""
    sigma = np.asarray(fwhm, dtype=np.float64) / FWHM_PER_SIGMA
    return float(sigma) if sigma.ndim == 0 else sigma


def q_mid_of(q_centres_nm: np.ndarray) -> float:
    """Centre of a window's q range, ``(q[0] + q[-1]) / 2`` (nm^-1), the background pivot."""
    return 0.5 * (float(q_centres_nm[0]) + float(q_centres_nm[-1]))


def model_at(params, q_nm, chi_deg, q_mid_nm) -> np.ndarray:
    """NumPy reference: the model at points; ``q_nm`` and ``chi_deg`` broadcast together.

    Parameters
    ----------
    params : array_like, shape (7,)
        ``[I0, q0_nm, chi0_deg, sigma_q_nm, sigma_chi_deg, b0, b1]``.
    q_nm, chi_deg : array_like, float64
        Coordinates in nm^-1 and degrees (a continuous chi axis, e.g. 135 .. 215).
    q_mid_nm : float
        Background pivot.

    Returns
    -------
    ndarray, float64, the broadcast shape of ``q_nm`` and ``chi_deg``
        Model intensity in data units.
    """
    i0, q0, chi0, s_q, s_chi, b0, b1 = (float(v) for v in params)
    q = np.asarray(q_nm, dtype=np.float64)
    chi = np.asarray(chi_deg, dtype=np.float64)
    gauss = np.exp(-((q - q0) ** 2) / (2 * s_q**2) - ((chi - chi0) ** 2) / (2 * s_chi**2))
    return i0 / (2 * np.pi * s_q * s_chi) * gauss + b0 + b1 * (q - q_mid_nm)


def jacobian_at(params, q_nm, chi_deg, q_mid_nm) -> np.ndarray:
    """NumPy reference: analytic derivatives of :func:`model_at` with respect to the parameters.

    Returns
    -------
    ndarray, shape (broadcast shape of q_nm and chi_deg) + (7,), float64
        ``d model / d p_k`` in the parameter order of ``PARAM_NAMES``.
    """
    i0, q0, chi0, s_q, s_chi, _b0, _b1 = (float(v) for v in params)
    q = np.asarray(q_nm, dtype=np.float64)
    chi = np.asarray(chi_deg, dtype=np.float64)
    dq, dchi = np.broadcast_arrays(q - q0, chi - chi0)
    shape = np.exp(-(dq**2) / (2 * s_q**2) - (dchi**2) / (2 * s_chi**2)) / (2 * np.pi * s_q * s_chi)
    peak = i0 * shape
    jac = np.empty(dq.shape + (N_PARAMS,))
    jac[..., I_I0] = shape
    jac[..., I_Q0] = peak * dq / s_q**2
    jac[..., I_CHI0] = peak * dchi / s_chi**2
    jac[..., I_SQ] = peak * (dq**2 / s_q**3 - 1 / s_q)
    jac[..., I_SCHI] = peak * (dchi**2 / s_chi**3 - 1 / s_chi)
    jac[..., I_B0] = 1.0
    jac[..., I_B1] = dq + (q0 - q_mid_nm)
    return jac


def gauss2d_model(params, q_centres_nm, chi_centres_deg) -> np.ndarray:
    """NumPy reference: the model on the (q, chi) grid of one window.

    Parameters
    ----------
    params : array_like, shape (7,)
    q_centres_nm : ndarray, shape (n_q,), float64
        Bin centres in q, nm^-1; the background pivot is ``q_mid_of(q_centres_nm)``.
    chi_centres_deg : ndarray, shape (n_chi,), float64
        Bin centres in chi, degrees.

    Returns
    -------
    ndarray, shape (n_q, n_chi), float64
    """
    q = np.asarray(q_centres_nm, dtype=np.float64)
    return model_at(params, q[:, None], np.asarray(chi_centres_deg, np.float64)[None, :],
                    q_mid_of(q))


def gauss2d_jacobian(params, q_centres_nm, chi_centres_deg) -> np.ndarray:
    """NumPy reference: the Jacobian on the grid of one window, shape (n_q, n_chi, 7)."""
    q = np.asarray(q_centres_nm, dtype=np.float64)
    return jacobian_at(params, q[:, None], np.asarray(chi_centres_deg, np.float64)[None, :],
                       q_mid_of(q))


def valid_bins(mean_counts: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """Bins that enter a fit: finite value and finite, strictly positive variance (bool mask)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(mean_counts) & np.isfinite(variance) & (variance > 0)


def chi2_normal_equations(params, mean_counts, variance, q_centres_nm, chi_centres_deg):
    """NumPy reference of :func:`normal_equations_kernel`.

    Returns
    -------
    chi2 : float
        Sum over valid bins of (data - model)^2 / variance.
    normal_matrix : ndarray, shape (7, 7)
        ``J^T W J`` with ``W = 1 / variance``.
    gradient : ndarray, shape (7,)
        ``J^T W (data - model)`` (minus half the chi2 gradient).
    """
    ok = valid_bins(mean_counts, variance)
    model = gauss2d_model(params, q_centres_nm, chi_centres_deg)[ok]
    jac = gauss2d_jacobian(params, q_centres_nm, chi_centres_deg)[ok]
    weight = 1.0 / variance[ok]
    resid = mean_counts[ok] - model
    return (float(np.sum(weight * resid**2)), jac.T @ (weight[:, None] * jac),
            jac.T @ (weight * resid))


# Which chi function each Jacobian column carries (see normal_equations_kernel):
# 0 = U (Gaussian in chi), 1 = T (U x dchi / s_chi^2), 2 = S (U x (dchi^2 / s_chi^2 - 1) / s_chi),
# 3 = constant 1.
_CHI_FACTOR = (0, 0, 1, 0, 2, 3, 3)


@numba.njit(cache=True, inline="always")
def _pair_sum(k, l, s00, s01, s02, s03, s11, s12, s13, s22, s23, s33):
    """Element (k, l) of the symmetric 4 x 4 table of weighted chi-function products."""
    if k > l:
        k, l = l, k
    if k == 0:
        return s00 if l == 0 else (s01 if l == 1 else (s02 if l == 2 else s03))
    if k == 1:
        return s11 if l == 1 else (s12 if l == 2 else s13)
    if k == 2:
        return s22 if l == 2 else s23
    return s33


@numba.njit(cache=True, error_model="numpy")
def normal_equations_kernel(p, mean_counts, variance, q_nm, chi_deg, q_mid_nm,
                            exp_q, chi_work, alpha, normal_matrix, gradient):
    """Chi-square, ``J^T W J`` and ``J^T W r`` of the model at ``p`` over the valid bins.

    Every Jacobian column is a q-only factor ``alpha_a(q_i)`` times one of four chi-only
    functions F (``_CHI_FACTOR``): the Gaussian in chi ``U``, ``T = U dchi / s_chi^2``,
    ``S = U (dchi^2 / s_chi^2 - 1) / s_chi`` and 1. Per q row the kernel sums the 10 weighted
    products ``w F_k F_l`` and the 4 ``w F_k r`` over chi, then adds ``alpha_a alpha_b``
    times them into the matrix: about 16 multiply-adds per bin instead of 35.

    Parameters
    ----------
    p : float64 (7,)
        Parameters; ``p[3]`` and ``p[4]`` must be > 0 (the caller's bounds ensure it).
    mean_counts, variance : float64 (n_q, n_chi)
        Data and their variances; bins failing the ``valid_bins`` test are skipped.
    q_nm : float64 (n_q,), chi_deg : float64 (n_chi,)
        Bin centres.
    q_mid_nm : float
        Background pivot.
    exp_q : float64 (n_q,), chi_work : float64 (3, n_chi), alpha : float64 (7,)
        Scratch, overwritten.
    normal_matrix : float64 (7, 7), gradient : float64 (7,)
        Outputs, overwritten (full symmetric matrix).

    Returns
    -------
    float
        chi2 (inf or NaN if the model overflowed).
    """
    i0 = p[0]
    q0 = p[1]
    chi0 = p[2]
    s_q = p[3]
    s_chi = p[4]
    b0 = p[5]
    b1 = p[6]
    norm = _INV_TWO_PI / (s_q * s_chi)
    inv_sq2 = 1.0 / (s_q * s_q)
    inv_schi2 = 1.0 / (s_chi * s_chi)
    for i in range(q_nm.shape[0]):
        d = (q_nm[i] - q0) / s_q
        exp_q[i] = math.exp(-0.5 * d * d)
    for j in range(chi_deg.shape[0]):
        dchi = chi_deg[j] - chi0
        u = math.exp(-0.5 * dchi * dchi * inv_schi2)
        chi_work[0, j] = u
        chi_work[1, j] = u * dchi * inv_schi2
        chi_work[2, j] = u * (dchi * dchi * inv_schi2 - 1.0) / s_chi
    for a in range(7):
        gradient[a] = 0.0
        for b in range(7):
            normal_matrix[a, b] = 0.0
    chi2 = 0.0
    for i in range(q_nm.shape[0]):
        dq = q_nm[i] - q0
        dq_mid = q_nm[i] - q_mid_nm
        background = b0 + b1 * dq_mid
        row_shape = norm * exp_q[i]
        row_peak = i0 * row_shape
        s00 = s01 = s02 = s03 = s11 = s12 = s13 = s22 = s23 = s33 = 0.0
        r0 = r1 = r2 = r3 = 0.0
        for j in range(chi_deg.shape[0]):
            y = mean_counts[i, j]
            v = variance[i, j]
            if not (math.isfinite(y) and math.isfinite(v) and v > 0.0):
                continue
            w = 1.0 / v
            u = chi_work[0, j]
            t = chi_work[1, j]
            s = chi_work[2, j]
            r = y - (row_peak * u + background)
            wu = w * u
            wt = w * t
            wr = w * r
            chi2 += wr * r
            s00 += wu * u
            s01 += wu * t
            s02 += wu * s
            s03 += wu
            s11 += wt * t
            s12 += wt * s
            s13 += wt
            s22 += w * s * s
            s23 += w * s
            s33 += w
            r0 += wr * u
            r1 += wr * t
            r2 += wr * s
            r3 += wr
        if s33 == 0.0:
            continue
        alpha[0] = row_shape
        alpha[1] = row_peak * dq * inv_sq2
        alpha[2] = row_peak
        alpha[3] = row_peak * (dq * dq * inv_sq2 - 1.0) / s_q
        alpha[4] = row_peak
        alpha[5] = 1.0
        alpha[6] = dq_mid
        for a in range(7):
            k = _CHI_FACTOR[a]
            r_k = r0 if k == 0 else (r1 if k == 1 else (r2 if k == 2 else r3))
            gradient[a] += alpha[a] * r_k
            for b in range(a + 1):
                normal_matrix[a, b] += alpha[a] * alpha[b] * _pair_sum(
                    k, _CHI_FACTOR[b], s00, s01, s02, s03, s11, s12, s13, s22, s23, s33)
    for a in range(7):
        for b in range(a):
            normal_matrix[b, a] = normal_matrix[a, b]
    return chi2


def fit_window_curve_fit(mean_counts, variance, q_centres_nm, chi_centres_deg, p0, lower, upper,
                         tolerance=1e-12):
    """SciPy reference fit of one window: ``scipy.optimize.curve_fit`` with the same model.

    ``sigma = sqrt(variance)``, ``absolute_sigma=True``, analytic Jacobian, bounds (so the
    'trf' method), valid bins only. Used to test the Numba fitter and in ``bench/bench_fit.py``.

    Parameters
    ----------
    mean_counts, variance : ndarray, shape (n_q, n_chi), float64
    q_centres_nm : ndarray (n_q,), chi_centres_deg : ndarray (n_chi,)
    p0, lower, upper : array_like, shape (7,)
        Start point and bounds (``p0`` strictly inside).
    tolerance : float
        ``ftol = xtol = gtol`` handed to ``least_squares``.

    Returns
    -------
    params : ndarray (7,)
    errors : ndarray (7,)
        ``sqrt(diag(pcov))``, unscaled (absolute sigma).
    chi2_reduced : float
    """
    from scipy.optimize import curve_fit

    ok = valid_bins(mean_counts, variance)
    q_grid, chi_grid = np.meshgrid(np.asarray(q_centres_nm, np.float64),
                                   np.asarray(chi_centres_deg, np.float64), indexing="ij")
    q_mid = q_mid_of(q_centres_nm)
    coords = np.stack([q_grid[ok], chi_grid[ok]])

    def model(xy, *p):
        return model_at(p, xy[0], xy[1], q_mid)

    def jac(xy, *p):
        return jacobian_at(p, xy[0], xy[1], q_mid)

    sigma = np.sqrt(variance[ok])
    popt, pcov = curve_fit(model, coords, mean_counts[ok], p0=np.asarray(p0, np.float64),
                           sigma=sigma, absolute_sigma=True, bounds=(lower, upper), jac=jac,
                           ftol=tolerance, xtol=tolerance, gtol=tolerance, max_nfev=10_000)
    resid = (mean_counts[ok] - model(coords, *popt)) / sigma
    chi2_reduced = float(np.sum(resid**2) / max(int(ok.sum()) - N_PARAMS, 1))
    return popt, np.sqrt(np.diag(pcov)), chi2_reduced
