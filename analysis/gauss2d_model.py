"""The 2D Gaussian peak model on a polar (q, chi) window, its Jacobian and the normal equations.

Model (science.md section 2, plus a linear background in q)::

    I(q, chi) = I0 / (2 pi s_q s_chi) * exp(-(q - q0)^2 / (2 s_q^2) - (chi - chi0)^2 / (2 s_chi^2))
                + b0 + b1 * (q - q_mid)

Parameter vector ``p`` (float64, length 7), in this order: ``I0`` integrated intensity in
(data units) x nm^-1 x deg, ``q0_nm`` centre in nm^-1, ``chi0_deg`` centre in degrees,
``sigma_q_nm`` and ``sigma_chi_deg`` rms widths, ``b0`` background at ``q_mid`` in data units,
``b1`` background slope in data units per nm^-1. ``q_mid`` is the centre of the window's q
range, ``(q[0] + q[-1]) / 2``. The model is sampled at one point per bin (not integrated
over the bin), which adds about bin^2 / 12 to the fitted variance of a width; irrelevant for
bins smaller than a third of a width. That point is the bin centre, or (``points``) the mean
position of the pixels in the bin, which for bins of a few pixels lies up to a tenth of a bin
off the centre and would otherwise shift narrow peaks.

Two layers here:

* the NumPy reference (``model_and_jacobian``, ``chi2_normal_equations``,
  ``poisson_deviance_terms``) and two SciPy reference fits that the Numba fitter is tested
  against: ``fit_window_curve_fit`` (least squares with fixed variances) and
  ``fit_window_poisson_reference`` (``scipy.optimize.minimize`` of the Poisson deviance);
* the Numba routines the Levenberg-Marquardt kernel calls: ``normal_equations_kernel`` and
  ``poisson_normal_equations_kernel`` use that the Gaussian is separable in q and chi at the
  bin centres, so one evaluation costs n_q + n_chi exponentials instead of n_q * n_chi;
  ``points_normal_equations_kernel`` evaluates it at a point per bin. The two Poisson kernels'
  per-bin loops have no branch, so that LLVM vectorizes them (``VECTOR_MATH``,
  :mod:`analysis.vector_math`).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from analysis.vector_math import vector_exp, vector_log

N_PARAMS = 7
PARAM_NAMES = ("I0", "q0_nm", "chi0_deg", "sigma_q_nm", "sigma_chi_deg", "b0", "b1")
I_I0, I_Q0, I_CHI0, I_SQ, I_SCHI, I_B0, I_B1 = range(N_PARAMS)
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
"""FWHM / sigma of a Gaussian, 2 sqrt(2 ln 2) = 2.3548..."""

_INV_TWO_PI = 1.0 / (2.0 * math.pi)
TAIL_EXPONENT = 40.0
"""Where ``(dq/s_q)^2 / 2 + (dchi/s_chi)^2 / 2`` exceeds this (exp < 5e-18) the point kernel
treats a bin as background only."""


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


def model_at(params, q_nm, chi_deg, q_mid_nm, var_q=0.0, var_chi=0.0) -> np.ndarray:
    """NumPy reference: the model at points; ``q_nm`` and ``chi_deg`` broadcast together.

    Parameters
    ----------
    params : array_like, shape (7,)
        ``[I0, q0_nm, chi0_deg, sigma_q_nm, sigma_chi_deg, b0, b1]``.
    q_nm, chi_deg : array_like, float64
        Coordinates in nm^-1 and degrees (a continuous chi axis, e.g. 135 .. 215).
    q_mid_nm : float
        Background pivot.
    var_q, var_chi : array_like, float64, optional
        Broadening of each point (nm^-2, deg^2), broadcast with the coordinates: the peak is
        evaluated with the rms widths ``sqrt(sigma^2 + var)`` (a bin averages the density over
        its pixels and each pixel over its area; see :mod:`analysis.peak_window_fits`).
        ``sigma_q_nm`` and ``sigma_chi_deg`` are the intrinsic widths. Default 0.

    Returns
    -------
    ndarray, float64, the broadcast shape of ``q_nm`` and ``chi_deg``
        Model intensity in data units.
    """
    i0, q0, chi0, s_q, s_chi, b0, b1 = (float(v) for v in params)
    q = np.asarray(q_nm, dtype=np.float64)
    chi = np.asarray(chi_deg, dtype=np.float64)
    var_q_eff = s_q**2 + np.asarray(var_q, dtype=np.float64)
    var_chi_eff = s_chi**2 + np.asarray(var_chi, dtype=np.float64)
    gauss = np.exp(-((q - q0) ** 2) / (2 * var_q_eff) - ((chi - chi0) ** 2) / (2 * var_chi_eff))
    return i0 / (2 * np.pi * np.sqrt(var_q_eff * var_chi_eff)) * gauss + b0 + b1 * (q - q_mid_nm)


def jacobian_at(params, q_nm, chi_deg, q_mid_nm, var_q=0.0, var_chi=0.0) -> np.ndarray:
    """NumPy reference: analytic derivatives of :func:`model_at` with respect to the parameters.

    Returns
    -------
    ndarray, shape (broadcast shape of q_nm and chi_deg) + (7,), float64
        ``d model / d p_k`` in the parameter order of ``PARAM_NAMES``.
    """
    i0, q0, chi0, s_q, s_chi, _b0, _b1 = (float(v) for v in params)
    q = np.asarray(q_nm, dtype=np.float64)
    chi = np.asarray(chi_deg, dtype=np.float64)
    dq, dchi, var_q_eff, var_chi_eff = np.broadcast_arrays(
        q - q0, chi - chi0, s_q**2 + np.asarray(var_q, dtype=np.float64),
        s_chi**2 + np.asarray(var_chi, dtype=np.float64))
    shape = (np.exp(-(dq**2) / (2 * var_q_eff) - (dchi**2) / (2 * var_chi_eff))
             / (2 * np.pi * np.sqrt(var_q_eff * var_chi_eff)))
    peak = i0 * shape
    jac = np.empty(dq.shape + (N_PARAMS,))
    jac[..., I_I0] = shape
    jac[..., I_Q0] = peak * dq / var_q_eff
    jac[..., I_CHI0] = peak * dchi / var_chi_eff
    # d/d sigma = d/d sigma_eff * sigma / sigma_eff
    jac[..., I_SQ] = peak * (dq**2 / var_q_eff - 1) * s_q / var_q_eff
    jac[..., I_SCHI] = peak * (dchi**2 / var_chi_eff - 1) * s_chi / var_chi_eff
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


def model_and_jacobian(params, q_centres_nm, chi_centres_deg, points=None, broadening=None):
    """NumPy reference: model and Jacobian of one window, shapes (n_q, n_chi) and (n_q, n_chi, 7).

    ``points``, optional ``(q_points_nm, chi_points_deg)`` of shape (n_q, n_chi): where to
    evaluate the model in each bin instead of the bin centres (e.g. the mean position of the
    bin's pixels); the background pivot stays ``q_mid_of(q_centres_nm)``. A bin whose point is
    NaN gets NaN (and is then not valid). ``broadening``, optional ``(var_q, var_chi)``
    broadcastable to (n_q, n_chi): see :func:`model_at`.
    """
    q = np.asarray(q_centres_nm, dtype=np.float64)
    if points is None:
        points = (q[:, None], np.asarray(chi_centres_deg, dtype=np.float64)[None, :])
    broadening = (0.0, 0.0) if broadening is None else broadening
    q_mid = q_mid_of(q)
    model = model_at(params, points[0], points[1], q_mid, *broadening)
    jac = jacobian_at(params, points[0], points[1], q_mid, *broadening)
    shape = (q.size, np.asarray(chi_centres_deg).size)
    return np.broadcast_to(model, shape), np.broadcast_to(jac, shape + (N_PARAMS,))


def valid_bins(mean_counts: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """Bins that enter a fit: finite value and finite, strictly positive variance (bool mask)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(mean_counts) & np.isfinite(variance) & (variance > 0)


def chi2_normal_equations(params, mean_counts, variance, q_centres_nm, chi_centres_deg,
                          points=None, broadening=None):
    """NumPy reference of :func:`normal_equations_kernel` (``points``: see
    :func:`model_and_jacobian`; then of :func:`points_normal_equations_kernel`).

    Returns
    -------
    chi2 : float
        Sum over valid bins of (data - model)^2 / variance.
    normal_matrix : ndarray, shape (7, 7)
        ``J^T W J`` with ``W = 1 / variance``.
    gradient : ndarray, shape (7,)
        ``J^T W (data - model)`` (minus half the chi2 gradient).
    """
    model, jac = model_and_jacobian(params, q_centres_nm, chi_centres_deg, points, broadening)
    ok = valid_bins(mean_counts, variance) & np.isfinite(model)
    model, jac = model[ok], jac[ok]
    weight = 1.0 / variance[ok]
    resid = mean_counts[ok] - model
    return (float(np.sum(weight * resid**2)), jac.T @ (weight[:, None] * jac),
            jac.T @ (weight * resid))


# Which chi function each Jacobian column carries (see normal_equations_kernel):
# 0 = U (Gaussian in chi), 1 = T (U x dchi / s_chi^2), 2 = S (U x (dchi^2 / s_chi^2 - 1) / s_chi),
# 3 = constant 1.
_CHI_FACTOR = (0, 0, 1, 0, 2, 3, 3)


LOG_SERIES_RANGE = 0.01
"""Relative changes of a Poisson mean below which ``ln(mu / mu_ref)`` is taken from its series."""


@numba.njit(cache=True, inline="always")
def _log_ratio_series(x):
    """ln(1 + x) by its 6-term series: error < 2e-14 for ``|x| < LOG_SERIES_RANGE`` (Estrin's
    scheme, for a short dependency chain)."""
    x2 = x * x
    x4 = x2 * x2
    return (x * (1.0 - 0.5 * x) + x2 * x * (1.0 / 3.0 - 0.25 * x)
            + x4 * x * (0.2 - x * (1.0 / 6.0)))


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


@numba.njit(cache=True, inline="always")
def _separable_factors(p, q_nm, chi_deg, var_q, var_chi, exp_q, chi_work, normal_matrix, gradient,
                       curvature=False):
    """The separable parts of the model at bin centres, shared by the two kernels below: fills
    ``exp_q`` (n_q,) and ``chi_work`` rows 0-2 (the chi factor and its chi0 and s_chi
    derivatives; with ``curvature`` also rows 3-5, its second derivatives chi0 chi0,
    chi0 s_chi and s_chi s_chi), zeroes the normal matrix and gradient; returns
    (1 / s_q,eff^2, norm)."""
    chi0 = p[2]
    s_q = p[3]
    s_chi = p[4]
    # effective widths of the bins (intrinsic width and broadening in quadrature)
    inv_sq2 = 1.0 / (s_q * s_q + var_q)
    inv_schi2 = 1.0 / (s_chi * s_chi + var_chi)
    norm = _INV_TWO_PI * math.sqrt(inv_sq2 * inv_schi2)
    for i in range(q_nm.shape[0]):
        d = q_nm[i] - p[1]
        exp_q[i] = math.exp(-0.5 * d * d * inv_sq2)
    for j in range(chi_deg.shape[0]):
        dchi = chi_deg[j] - chi0
        u = math.exp(-0.5 * dchi * dchi * inv_schi2)
        chi_work[0, j] = u
        chi_work[1, j] = u * dchi * inv_schi2
        # d / d sigma = d / d sigma_eff * sigma / sigma_eff
        chi_work[2, j] = u * (dchi * dchi * inv_schi2 - 1.0) * s_chi * inv_schi2
        if curvature:
            l1, l3, l11, l13, l33 = _log_gaussian_derivatives(dchi, s_chi, inv_schi2)
            chi_work[3, j] = u * (l11 + l1 * l1)
            chi_work[4, j] = u * (l13 + l1 * l3)
            chi_work[5, j] = u * (l33 + l3 * l3)
    for a in range(7):
        gradient[a] = 0.0
        for b in range(7):
            normal_matrix[a, b] = 0.0
    return inv_sq2, norm


@numba.njit(cache=True, inline="always")
def _log_gaussian_derivatives(d, s, inv_var):
    """First and second derivatives of ``ln(exp(-d^2 / (2 V)) / sqrt(V))``, ``V = s^2 + v``
    (``inv_var`` = 1 / V), with respect to the centre c (``d = x - c``) and the width s:
    (d/dc, d/ds, d2/dc2, d2/dc ds, d2/ds2)."""
    z = d * d * inv_var * inv_var - inv_var
    return (d * inv_var, s * z, -inv_var, -2.0 * d * s * inv_var * inv_var,
            z + s * s * (2.0 * inv_var * inv_var - 4.0 * d * d * inv_var * inv_var * inv_var))


@numba.njit(cache=True, inline="always")
def _subtract_row_curvature(normal_matrix, i0, row_shape, dq, s_q, inv_sq2, r0, r1, r2, r4, r5, r6):
    """Subtract one q row's ``sum w r d2m / dp dp`` (lower triangle of the peak block) from the
    normal matrix: ``r0``, ``r1``, ``r2`` are the row's sums of ``w r`` times the chi factor and
    its first derivatives, ``r4``, ``r5``, ``r6`` times its second derivatives."""
    l1, l3, l11, l13, l33 = _log_gaussian_derivatives(dq, s_q, inv_sq2)
    q1 = row_shape * l1
    q3 = row_shape * l3
    peak = i0 * row_shape
    normal_matrix[1, 0] -= q1 * r0
    normal_matrix[2, 0] -= row_shape * r1
    normal_matrix[3, 0] -= q3 * r0
    normal_matrix[4, 0] -= row_shape * r2
    normal_matrix[1, 1] -= peak * (l11 + l1 * l1) * r0
    normal_matrix[2, 1] -= i0 * q1 * r1
    normal_matrix[3, 1] -= peak * (l13 + l1 * l3) * r0
    normal_matrix[4, 1] -= i0 * q1 * r2
    normal_matrix[2, 2] -= peak * r4
    normal_matrix[3, 2] -= i0 * q3 * r1
    normal_matrix[4, 2] -= peak * r5
    normal_matrix[3, 3] -= peak * (l33 + l3 * l3) * r0
    normal_matrix[4, 3] -= i0 * q3 * r2
    normal_matrix[4, 4] -= peak * r6


@numba.njit(cache=True, inline="always")
def _add_row(alpha, row_shape, row_peak, dq, dq_mid, inv_sq2, s_q, r0, r1, r2, r3,
             s00, s01, s02, s03, s11, s12, s13, s22, s23, s33, normal_matrix, gradient):
    """Add one q row's sums to the lower triangle of the normal matrix and to the gradient."""
    alpha[0] = row_shape
    alpha[1] = row_peak * dq * inv_sq2
    alpha[2] = row_peak
    alpha[3] = row_peak * (dq * dq * inv_sq2 - 1.0) * s_q * inv_sq2
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


@numba.njit(cache=True, inline="always")
def _mirror(normal_matrix):
    for a in range(7):
        for b in range(a):
            normal_matrix[b, a] = normal_matrix[a, b]


@numba.njit(cache=True, error_model="numpy")
def normal_equations_kernel(p, mean_counts, variance, q_nm, chi_deg, q_mid_nm,
                            exp_q, chi_work, alpha, normal_matrix, gradient, var_q, var_chi):
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
    var_q, var_chi : float
        Broadening of every bin (see :func:`model_at`; 0: none).

    Returns
    -------
    float
        chi2 (inf or NaN if the model overflowed).
    """
    i0, q0, s_q, b0, b1 = p[0], p[1], p[3], p[5], p[6]
    inv_sq2, norm = _separable_factors(p, q_nm, chi_deg, var_q, var_chi, exp_q, chi_work, normal_matrix, gradient)
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
        _add_row(alpha, row_shape, row_peak, dq, dq_mid, inv_sq2, s_q, r0, r1, r2, r3,
                 s00, s01, s02, s03, s11, s12, s13, s22, s23, s33, normal_matrix, gradient)
    _mirror(normal_matrix)
    return chi2


def poisson_valid_bins(mean_counts, variance, exposure, offset) -> np.ndarray:
    """Bins that enter a Poisson fit: :func:`valid_bins` and finite exposure > 0, finite offset."""
    with np.errstate(invalid="ignore"):
        return (valid_bins(mean_counts, variance) & np.isfinite(exposure) & (exposure > 0)
                & np.isfinite(offset))


def poisson_deviance_terms(params, mean_counts, variance, exposure, offset, q_centres_nm,
                           chi_centres_deg, points=None, observed_information=False,
                           broadening=None):
    """NumPy reference of :func:`poisson_normal_equations_kernel` (``points``: see
    :func:`model_and_jacobian`; then of :func:`points_normal_equations_kernel`).

    Counts model: bin i holds ``N_i = e_i (y_i + o_i)`` photons (``e`` = ``exposure``, counts
    per data unit; ``o`` = ``offset``, the known background already subtracted from ``y``),
    Poisson with mean ``mu_i = e_i (m_i + o_i)``, ``m`` the model.

    Returns
    -------
    deviance : float
        ``2 sum_i [mu_i - N_i + N_i ln(N_i / mu_i)]`` (inf if some ``m_i + o_i <= 0``).
    pearson : float
        ``sum_i (N_i - mu_i)^2 / mu_i``, chi2 with the model's variance.
    fisher : ndarray (7, 7)
        ``J^T W J`` with ``W = e / (m + o)`` (the Fisher information); with
        ``observed_information`` the background rows and columns with ``W = e N / mu^2``
        (see :func:`poisson_normal_equations_kernel`).
    score : ndarray (7,)
        ``J^T W (y - m)`` (minus half the deviance gradient).
    """
    model, jac = model_and_jacobian(params, q_centres_nm, chi_centres_deg, points, broadening)
    ok = poisson_valid_bins(mean_counts, variance, exposure, offset) & np.isfinite(model)
    model, jac = model[ok], jac[ok]
    e = exposure[ok]
    o = offset[ok]
    mu = model + o
    if not np.all(mu > 0):
        return np.inf, np.inf, np.full((N_PARAMS, N_PARAMS), np.nan), np.full(N_PARAMS, np.nan)
    observed = np.maximum(mean_counts[ok] + o, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_term = np.where(observed > 0, observed * np.log(observed / mu), 0.0)
    deviance = 2.0 * float(np.sum(e * (mu - observed + log_term)))
    weight = e / mu
    resid = mean_counts[ok] - model
    matrix = jac.T @ (weight[:, None] * jac)
    if observed_information:
        background = np.zeros(N_PARAMS, dtype=bool)
        background[[I_B0, I_B1]] = True
        observed_matrix = jac.T @ ((e * observed / mu**2)[:, None] * jac)
        mixed = background[:, None] | background[None, :]
        matrix = np.where(mixed, observed_matrix, matrix)
    return deviance, float(np.sum(weight * resid**2)), matrix, jac.T @ (weight * resid)


VECTOR_MATH = {"reassoc", "contract", "nsz"}
"""Fast-math flags of the kernels whose per-bin loops LLVM should vectorize: reassociation lets
it split the sums into SIMD lanes (and fuse multiply-adds); no ``nnan`` / ``ninf``, the kernels
test for non-finite values."""


@numba.njit(cache=True, error_model="numpy", fastmath=VECTOR_MATH, inline="always")
def _row_means(exposure, offset, chi_work, i, base, row_peak, background, out):
    """Poisson means ``mu`` of q row ``i`` and ``1 / mu`` into ``out`` (rows 0, 1 from bin
    ``base``): in its own loop so that the sums' loop only reads memory and vectorizes. A bin
    that does not enter the fit (exposure 0) or has ``mu <= 0`` gets ``mu = 1``. Returns the
    summed exposure of the bins that enter it with ``mu <= 0`` (or NaN): > 0 makes the point
    infeasible."""
    infeasible = 0.0
    for j in range(exposure.shape[1]):
        e = exposure[i, j]
        o = offset[i, j] if e > 0.0 else 0.0
        mu = row_peak * chi_work[0, j] + background + o
        good = np.float64(mu > 0.0)
        infeasible += e - e * good
        mu = mu * good + (1.0 - good)   # a select without a branch, which would stop vectorizing
        k = np.uint64(base + j)         # unsigned: no negative-index wraparound, an affine store
        out[0, k] = mu
        out[1, k] = 1.0 / mu
    return infeasible


@numba.njit(cache=True, error_model="numpy", fastmath=VECTOR_MATH)
def poisson_normal_equations_kernel(p, mean_counts, exposure, offset, q_nm, chi_deg,
                                    q_mid_nm, exp_q, chi_work, alpha, normal_matrix, gradient,
                                    observed, use_ref, ref, out, var_q, var_chi, newton=False):
    """Poisson deviance, Pearson chi2, information matrix and score of the model at ``p``.

    The Poisson counterpart of :func:`normal_equations_kernel` (same separable sums, same
    arguments plus ``exposure`` and ``offset``, see :func:`poisson_deviance_terms`). The score
    is ``J^T W r`` with ``W = e / (m + o)``, the inverse variance of ``y`` *predicted by the
    model* (minus half the deviance gradient). The matrix is the Fisher information
    ``J^T W J`` (``observed`` False); with ``observed`` its background rows and columns are
    the observed information ``J^T diag(e N / mu^2) J`` instead (N, mu the bin's photons and
    their expectation), the exact Hessian there since the background is linear: with the
    Fisher matrix alone the background converges slowly at ~1 photon per bin, with the
    observed information (without the model's curvature) also in the peak block the peak
    converges slowly at ~20 photons per bin (``chi_work``: 6 rows, read always). With ``newton``
    the matrix is the whole Hessian of half the deviance, ``J^T diag(e N / mu^2) J - sum w r
    d2m / dp dp``: Newton's matrix, which converges quadratically near the optimum but need not
    be positive definite far from it.

    ``exposure`` must be 0 in every bin that does not enter the fit (the bins failing
    :func:`poisson_valid_bins`: ``np.where(poisson_valid_bins(...), exposure, 0)``, what the
    fitter's ``_count_valid`` makes); only ``exposure > 0`` is tested, and ``mean_counts`` and
    ``offset`` are not used elsewhere. The per-bin loops have no branch, so that LLVM
    vectorizes them (about 3x faster than one bin at a time; the logarithms are
    :func:`analysis.vector_math.vector_log`).

    ``out`` (float64 (2, n_q * n_chi), row-major bins) receives each bin's model mean and its
    inverse. With ``use_ref`` the deviance is returned as its change from the state ``ref``
    (the same layout, e.g. the current iterate's ``out``; not the same array as ``out``),
    computed without a logarithm where the means changed by less than 1 %.

    Returns
    -------
    deviance, pearson : float
        ``2 sum [mu - N + N ln(N / mu)]`` (or its change from ``ref``) and
        ``sum (N - mu)^2 / mu``; both inf when the model plus offset is not positive in some
        valid bin (a Poisson mean must be > 0), and then the other outputs are incomplete.
    """
    i0, q0, s_q, b0, b1 = p[0], p[1], p[3], p[5], p[6]
    inv_sq2, norm = _separable_factors(p, q_nm, chi_deg, var_q, var_chi, exp_q, chi_work, normal_matrix,
                                       gradient, newton)
    observed = observed or newton
    # 0 / 1 factors instead of branches in the bins' loop
    observed_factor = 1.0 if observed else 0.0
    newton_factor = 1.0 if newton else 0.0
    deviance = 0.0
    pearson = 0.0
    n_chi = chi_deg.shape[0]
    for i in range(q_nm.shape[0]):
        dq = q_nm[i] - q0
        dq_mid = q_nm[i] - q_mid_nm
        background = b0 + b1 * dq_mid
        row_shape = norm * exp_q[i]
        row_peak = i0 * row_shape
        base = i * n_chi
        if _row_means(exposure, offset, chi_work, i, base, row_peak, background, out) > 0.0:
            return np.inf, np.inf
        s00 = s01 = s02 = s03 = s11 = s12 = s13 = s22 = s23 = s33 = 0.0
        r0 = r1 = r2 = r3 = r4 = r5 = r6 = 0.0
        row_exposure = 0.0
        far = 0.0
        row_deviance = 0.0
        for j in range(n_chi):
            e = exposure[i, j]
            valid = e > 0.0
            y = mean_counts[i, j] if valid else 0.0
            o = offset[i, j] if valid else 0.0
            u = chi_work[0, j]
            model = row_peak * u + background
            mu = out[0, base + j]
            inv_mu = out[1, base + j]
            row_exposure += e
            observed_y = y + o
            observed_y *= np.float64(observed_y > 0.0)
            # the change from ref by the series wherever it is accurate (the other bins: below)
            mu_ref = ref[0, base + j]
            x = (mu - mu_ref) * ref[1, base + j]
            far += e * np.float64(abs(x) >= LOG_SERIES_RANGE)
            row_deviance += e * ((mu - mu_ref) - observed_y * _log_ratio_series(x))
            w = e * inv_mu
            r = y - model
            wr = w * r
            pearson += wr * r
            # rows and columns of the (linear) background: observed information
            wb = w + observed_factor * (w * observed_y * inv_mu - w)
            # Newton: the observed information in the peak block too
            wp = w + newton_factor * (wb - w)
            t = chi_work[1, j]
            s = chi_work[2, j]
            wu = wp * u
            wt = wp * t
            s00 += wu * u
            s01 += wu * t
            s02 += wu * s
            s11 += wt * t
            s12 += wt * s
            s22 += wp * s * s
            s03 += wb * u
            s13 += wb * t
            s23 += wb * s
            s33 += wb
            r0 += wr * u
            r1 += wr * t
            r2 += wr * s
            r3 += wr
            # (rows 3-5 of chi_work are only filled, and these sums only used, for Newton)
            r4 += wr * chi_work[3, j]
            r5 += wr * chi_work[4, j]
            r6 += wr * chi_work[5, j]
        if not use_ref:
            row_deviance = _row_deviance(mean_counts, exposure, offset, out, i, base)
        elif far > 0.0:
            row_deviance += _far_log_corrections(mean_counts, exposure, offset, ref, out, i, base)
        deviance += row_deviance
        if row_exposure == 0.0:
            continue
        _add_row(alpha, row_shape, row_peak, dq, dq_mid, inv_sq2, s_q, r0, r1, r2, r3,
                 s00, s01, s02, s03, s11, s12, s13, s22, s23, s33, normal_matrix, gradient)
        if newton:
            _subtract_row_curvature(normal_matrix, i0, row_shape, dq, s_q, inv_sq2, r0, r1, r2, r4,
                                    r5, r6)
    _mirror(normal_matrix)
    return 2.0 * deviance, pearson


@numba.njit(cache=True, error_model="numpy", fastmath=VECTOR_MATH, inline="always")
def _observed(mean_counts, offset, i, j, e):
    """A bin's observed photons per exposure unit, ``max(y + o, 0)``, and 0 where the exposure
    ``e`` is 0 (its value may be NaN there), without a branch."""
    observed_y = (mean_counts[i, j] + offset[i, j]) if e > 0.0 else 0.0
    return observed_y * np.float64(observed_y > 0.0)


@numba.njit(cache=True, error_model="numpy", fastmath=VECTOR_MATH, inline="always")
def _row_deviance(mean_counts, exposure, offset, out, i, base):
    """Half the deviance of q row ``i``, ``sum e (mu - N + N ln(N / mu))`` over the bins with
    exposure ``e`` > 0 (``N``: :func:`_observed`), from the means in ``out``, without a branch."""
    total = 0.0
    for j in range(exposure.shape[1]):
        e = exposure[i, j]
        observed_y = _observed(mean_counts, offset, i, j, e)
        counted = np.float64(observed_y > 0.0)
        k = base + j
        total += e * (out[0, k] + observed_y * (vector_log(observed_y * out[1, k] + (1.0 - counted)) - 1.0))
    return total


@numba.njit(cache=True, error_model="numpy", fastmath=VECTOR_MATH, inline="always")
def _far_log_corrections(mean_counts, exposure, offset, ref, out, i, base):
    """What replacing the series by the logarithm changes in half the deviance change of q row
    ``i``, in the bins whose mean moved by ``LOG_SERIES_RANGE`` or more from ``ref``
    (branch-free)."""
    total = 0.0
    for j in range(exposure.shape[1]):
        e = exposure[i, j]
        observed_y = _observed(mean_counts, offset, i, j, e)
        k = base + j
        x = (out[0, k] - ref[0, k]) * ref[1, k]
        far = np.float64(abs(x) >= LOG_SERIES_RANGE)
        total += far * e * observed_y * (_log_ratio_series(x) - vector_log(out[0, k] * ref[1, k]))
    return total


POINT_ROWS = 3
"""Rows of a point kernel's per-bin state (``out``, ``ref``): the mean, its inverse, the peak shape."""


@numba.njit(cache=True, error_model="numpy", fastmath=VECTOR_MATH, inline="always")
def _point_bin(usable, offset, points, i, j, q0, chi0, s_q2, s_chi2, q_mid_nm):
    """One bin of a point kernel with its inputs made harmless where it does not enter the fit
    (the window's centre, no broadening, no offset): (valid, offset, dq, dchi, dq_mid,
    1 / s_q,eff^2, 1 / s_chi,eff^2, norm)."""
    valid = usable[i, j] > 0.0
    # every load unconditional, then a select: LLVM vectorizes selects, not conditional loads
    o = offset[i, j]
    qp = points[0, i, j]
    cp = points[1, i, j]
    vq = points[2, i, j]
    vc = points[3, i, j]
    o = o if valid else 0.0
    qp = qp if valid else q0
    dq = qp - q0
    dchi = (cp if valid else chi0) - chi0
    dq_mid = qp - q_mid_nm
    var_q_eff = s_q2 + (vq if valid else 0.0)
    var_chi_eff = s_chi2 + (vc if valid else 0.0)
    inv_both = 1.0 / (var_q_eff * var_chi_eff)
    return (valid, o, dq, dchi, dq_mid, var_chi_eff * inv_both, var_q_eff * inv_both,
            _INV_TWO_PI * math.sqrt(inv_both))


@numba.njit(cache=True, error_model="numpy", fastmath=VECTOR_MATH, inline="always")
def _point_row_means(poisson, p, usable, offset, points, i, base, q_mid_nm, out):
    """The model's peak shape (``out`` row 2) and mean with its inverse (rows 0, 1; 1 where a
    Poisson mean is not positive) in q row ``i``, in a loop of its own that LLVM vectorizes.
    Returns the summed weight of the Poisson bins with a mean <= 0 (> 0: infeasible)."""
    i0, q0, chi0, s_q, s_chi, b0, b1 = p[0], p[1], p[2], p[3], p[4], p[5], p[6]
    poisson_factor = 1.0 if poisson else 0.0
    infeasible = 0.0
    for j in range(usable.shape[1]):
        valid, o, dq, dchi, dq_mid, inv_sq2, inv_schi2, norm = _point_bin(
            usable, offset, points, i, j, q0, chi0, s_q * s_q, s_chi * s_chi, q_mid_nm)
        exponent = 0.5 * (dq * dq * inv_sq2 + dchi * dchi * inv_schi2)
        # beyond ~9 sigma the Gaussian is below 1e-17 of its maximum: background only
        inside = np.float64(exponent <= TAIL_EXPONENT)
        shape = inside * norm * vector_exp(-(inside * exponent))
        mu = i0 * shape + b0 + b1 * dq_mid + o
        good = np.float64(mu > 0.0)
        e = usable[i, j]
        infeasible += poisson_factor * (e - e * good)
        mu = mu * good + (1.0 - good)
        k = np.uint64(base + j)   # as in _row_means
        out[0, k] = mu
        out[1, k] = 1.0 / mu
        out[2, k] = shape
    return infeasible


@numba.njit(cache=True, error_model="numpy", fastmath=VECTOR_MATH)
def points_normal_equations_kernel(poisson, p, mean_counts, usable, offset, points, q_mid_nm,
                                   normal_matrix, gradient, observed, use_ref, ref, out):
    """Merit, chi2, normal matrix and gradient with the model evaluated at a point per bin.

    The non-separable counterpart of :func:`normal_equations_kernel` (``poisson`` False) and
    :func:`poisson_normal_equations_kernel` (True): bin (i, j) is modelled at
    ``(points[0, i, j], points[1, i, j])``, the mean position of its pixels, instead of the bin
    centre (pixels of 2 x 2 per bin sit up to a tenth of a bin off it: 0.3 % of q0 for a
    first-order SAXS peak), with its broadening. ``points`` (float64 (4, n_q, n_chi)) holds
    per bin q, chi, and the broadening variances in q and chi (see :func:`model_at`), in one
    array so that LLVM can vectorize the loop that reads them and writes ``out`` (it checks at
    run time that the arrays do not overlap, for a few arrays only). Exact Jacobian per bin;
    one exponential and 28 multiply-adds per bin.

    ``usable`` (n_q, n_chi) is 0 in every bin that does not enter the fit (and only there);
    elsewhere it is the bin's exposure (Poisson) or its weight ``1 / variance`` (least
    squares). The ``points``, ``mean_counts`` and ``offset`` (read for least squares
    too: zeros there) of the other bins are not used. ``observed``, ``use_ref``, ``ref``,
    ``out``: as in :func:`poisson_normal_equations_kernel`, but with ``POINT_ROWS`` rows
    (the third holds each bin's peak shape). As there, the per-bin loops have no branch and
    LLVM vectorizes them (the exponentials: :func:`analysis.vector_math.vector_exp`).

    Returns
    -------
    merit, chi2 : float
        Poisson: deviance (or its change from ``ref``) and Pearson chi2; else chi2 twice. inf
        when a Poisson mean is <= 0.
    """
    i0, q0, chi0, s_q, s_chi, b0, b1 = p[0], p[1], p[2], p[3], p[4], p[5], p[6]
    s_q2 = s_q * s_q
    s_chi2 = s_chi * s_chi
    poisson_factor = 1.0 if poisson else 0.0
    observed_factor = 1.0 if (poisson and observed) else 0.0
    g0 = g1 = g2 = g3 = g4 = g5 = g6 = 0.0
    m00 = m10 = m11 = m20 = m21 = m22 = m30 = m31 = m32 = m33 = 0.0
    m40 = m41 = m42 = m43 = m44 = m50 = m51 = m52 = m53 = m54 = m55 = 0.0
    m60 = m61 = m62 = m63 = m64 = m65 = m66 = 0.0
    deviance = 0.0
    chi2 = 0.0
    n_chi = mean_counts.shape[1]
    for i in range(mean_counts.shape[0]):
        base = i * n_chi
        if _point_row_means(poisson, p, usable, offset, points, i, base, q_mid_nm, out) > 0.0:
            return np.inf, np.inf
        far = 0.0
        row_change = 0.0
        for j in range(n_chi):
            valid, o, dq, dchi, dq_mid, inv_sq2, inv_schi2, _ = _point_bin(
                usable, offset, points, i, j, q0, chi0, s_q2, s_chi2, q_mid_nm)
            e = usable[i, j]
            y = mean_counts[i, j] if valid else 0.0
            k = base + j
            mu = out[0, k]
            inv_mu = out[1, k]
            shape = out[2, k]
            peak = i0 * shape
            r = y - (peak + b0 + b1 * dq_mid)
            observed_y = y + o
            observed_y *= np.float64(observed_y > 0.0)
            # Poisson deviance change from ref by the series (the other bins: below)
            mu_ref = ref[0, k]
            x = (mu - mu_ref) * ref[1, k]
            far += e * np.float64(abs(x) >= LOG_SERIES_RANGE)
            row_change += e * ((mu - mu_ref) - observed_y * _log_ratio_series(x))
            w = e * (1.0 + poisson_factor * (inv_mu - 1.0))
            wr = w * r
            wb = w + observed_factor * (w * observed_y * inv_mu - w)
            chi2 += wr * r
            w6 = wb * dq_mid
            g5 += wr
            g6 += wr * dq_mid
            m55 += wb
            m65 += w6
            m66 += w6 * dq_mid
            j0 = shape
            j1 = peak * dq * inv_sq2
            j2 = peak * dchi * inv_schi2
            j3 = peak * (dq * dq * inv_sq2 - 1.0) * s_q * inv_sq2
            j4 = peak * (dchi * dchi * inv_schi2 - 1.0) * s_chi * inv_schi2
            g0 += wr * j0
            g1 += wr * j1
            g2 += wr * j2
            g3 += wr * j3
            g4 += wr * j4
            w0 = w * j0
            w1 = w * j1
            w2 = w * j2
            w3 = w * j3
            w4 = w * j4
            m00 += w0 * j0
            m10 += w1 * j0
            m11 += w1 * j1
            m20 += w2 * j0
            m21 += w2 * j1
            m22 += w2 * j2
            m30 += w3 * j0
            m31 += w3 * j1
            m32 += w3 * j2
            m33 += w3 * j3
            m40 += w4 * j0
            m41 += w4 * j1
            m42 += w4 * j2
            m43 += w4 * j3
            m44 += w4 * j4
            m50 += wb * j0
            m51 += wb * j1
            m52 += wb * j2
            m53 += wb * j3
            m54 += wb * j4
            m60 += w6 * j0
            m61 += w6 * j1
            m62 += w6 * j2
            m63 += w6 * j3
            m64 += w6 * j4
        if poisson:
            if not use_ref:
                deviance += _row_deviance(mean_counts, usable, offset, out, i, base)
            else:
                deviance += row_change
                if far > 0.0:
                    deviance += _far_log_corrections(mean_counts, usable, offset, ref, out, i, base)
    gradient[0] = g0
    gradient[1] = g1
    gradient[2] = g2
    gradient[3] = g3
    gradient[4] = g4
    gradient[5] = g5
    gradient[6] = g6
    lower = (m00, m10, m11, m20, m21, m22, m30, m31, m32, m33, m40, m41, m42, m43, m44,
             m50, m51, m52, m53, m54, m55, m60, m61, m62, m63, m64, m65, m66)
    k = 0
    for a in range(7):
        for b in range(a + 1):
            normal_matrix[a, b] = lower[k]
            normal_matrix[b, a] = lower[k]
            k += 1
    if not poisson:
        return chi2, chi2
    return 2.0 * deviance, chi2


def fit_window_curve_fit(mean_counts, variance, q_centres_nm, chi_centres_deg, p0, lower, upper,
                         tolerance=1e-12, points=None, broadening=None):
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
    points : tuple of two ndarray (n_q, n_chi), optional
        Evaluation point of each bin (see :func:`model_and_jacobian`).
    broadening : tuple of two array_like broadcastable to (n_q, n_chi), optional
        ``(var_q, var_chi)`` of :func:`model_at`.

    Returns
    -------
    params : ndarray (7,)
    errors : ndarray (7,)
        ``sqrt(diag(pcov))``, unscaled (absolute sigma).
    chi2_reduced : float
    """
    from scipy.optimize import curve_fit

    if points is None:
        q_grid, chi_grid = np.meshgrid(np.asarray(q_centres_nm, np.float64),
                                       np.asarray(chi_centres_deg, np.float64), indexing="ij")
    else:
        q_grid, chi_grid = (np.asarray(a, np.float64) for a in points)
    ok = valid_bins(mean_counts, variance) & np.isfinite(q_grid) & np.isfinite(chi_grid)
    q_mid = q_mid_of(q_centres_nm)
    coords = np.stack([q_grid[ok], chi_grid[ok]])
    var_q, var_chi = ((np.broadcast_to(np.asarray(a, np.float64), q_grid.shape)[ok] for a in broadening)
                      if broadening is not None else (0.0, 0.0))

    def model(xy, *p):
        return model_at(p, xy[0], xy[1], q_mid, var_q, var_chi)

    def jac(xy, *p):
        return jacobian_at(p, xy[0], xy[1], q_mid, var_q, var_chi)

    sigma = np.sqrt(variance[ok])
    popt, pcov = curve_fit(model, coords, mean_counts[ok], p0=np.asarray(p0, np.float64),
                           sigma=sigma, absolute_sigma=True, bounds=(lower, upper), jac=jac,
                           ftol=tolerance, xtol=tolerance, gtol=tolerance, max_nfev=10_000)
    resid = (mean_counts[ok] - model(coords, *popt)) / sigma
    chi2_reduced = float(np.sum(resid**2) / max(int(ok.sum()) - N_PARAMS, 1))
    return popt, np.sqrt(np.diag(pcov)), chi2_reduced


def fit_window_poisson_reference(mean_counts, variance, exposure, offset, q_centres_nm,
                                 chi_centres_deg, p0, lower, upper, tolerance=1e-13, points=None,
                                 broadening=None):
    """SciPy reference Poisson fit of one window: ``scipy.optimize.minimize`` of the deviance.

    The Poisson deviance of :func:`poisson_deviance_terms` and its analytic gradient, L-BFGS-B
    with the bounds, in parameters scaled by their errors at ``p0`` (so that the quasi-Newton
    steps are well conditioned). An algorithm independent of the Numba Fisher-scoring
    Levenberg-Marquardt: both must land on the same maximum of the likelihood. Errors are
    ``sqrt(diag(F^-1))`` of the NumPy Fisher matrix at the optimum, times
    ``sqrt(pearson / (n - 7))`` when that is above 1 (the Numba rule).

    Parameters
    ----------
    mean_counts, variance, exposure, offset : ndarray, shape (n_q, n_chi), float64
    q_centres_nm : ndarray (n_q,), chi_centres_deg : ndarray (n_chi,)
    p0, lower, upper : array_like, shape (7,)
        Start point (with ``m + o > 0`` everywhere) and bounds (``lower == upper`` fixes).
    tolerance : float
        ``ftol`` and ``gtol`` of L-BFGS-B.
    points : tuple of two ndarray (n_q, n_chi), optional
        Evaluation point of each bin (see :func:`model_and_jacobian`).
    broadening : tuple of two array_like broadcastable to (n_q, n_chi), optional
        ``(var_q, var_chi)`` of :func:`model_at`.

    Returns
    -------
    params : ndarray (7,), errors : ndarray (7,), chi2_reduced : float (Pearson)
    """
    from scipy.optimize import minimize

    p0 = np.asarray(p0, np.float64)
    lower = np.asarray(lower, np.float64)
    upper = np.asarray(upper, np.float64)
    free = lower < upper
    terms = (mean_counts, variance, exposure, offset, q_centres_nm, chi_centres_deg, points)
    extra = dict(broadening=broadening)
    _, _, fisher, _ = poisson_deviance_terms(p0, *terms, **extra)
    scale = np.ones(N_PARAMS)
    scale[free] = np.sqrt(np.diag(np.linalg.inv(fisher[np.ix_(free, free)])))

    def unpack(x):
        p = p0.copy()
        p[free] = p0[free] + x * scale[free]
        return p

    def objective(x):
        deviance, _, _, score = poisson_deviance_terms(unpack(x), *terms, **extra)
        if not np.isfinite(deviance):
            return np.inf, np.zeros(x.size)
        return deviance, -2.0 * score[free] * scale[free]

    bounds = list(zip((lower[free] - p0[free]) / scale[free],
                      (upper[free] - p0[free]) / scale[free]))
    solution = minimize(objective, np.zeros(int(free.sum())), jac=True, method="L-BFGS-B",
                        bounds=bounds, options=dict(ftol=tolerance, gtol=tolerance,
                                                    maxiter=20_000, maxcor=30))
    params = unpack(solution.x)
    _, pearson, fisher, _ = poisson_deviance_terms(params, *terms, **extra)
    valid = poisson_valid_bins(mean_counts, variance, exposure, offset)
    if points is not None:
        valid &= np.isfinite(points[0]) & np.isfinite(points[1])
    n_valid = int(valid.sum())
    chi2_reduced = pearson / max(n_valid - N_PARAMS, 1)
    errors = np.zeros(N_PARAMS)
    errors[free] = np.sqrt(np.diag(np.linalg.inv(fisher[np.ix_(free, free)])))
    return params, errors * max(1.0, np.sqrt(chi2_reduced)), float(chi2_reduced)
