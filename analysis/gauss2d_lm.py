"""Numba kernels of the batch Levenberg-Marquardt fit of the 2D Gaussian peak model.

The Python entry point, with input validation and default bounds, is
:func:`analysis.gauss2d_fit.fit_windows`. One call fits ``n_win`` windows of identical bin
layout ``(n_q, n_chi)``; the model, parameter order and units are those of
:mod:`analysis.gauss2d_model`. Weighted least squares with
weights ``1 / variance`` (chi-square; the variance comes from the raw counts), over the valid
bins only (finite value, finite variance > 0; NaN marks an empty bin and is skipped).

Algorithm (``fit_window_kernel``)
---------------------------------
* Start from :func:`analysis.peak_guess.guess_peak_kernel`, moved inside the bounds.
* Each iteration solves the damped normal equations ``(J^T W J + lambda D) delta = J^T W r``
  (7 x 7, hand-written Cholesky) with Marquardt's scaling ``D`` = running maximum of
  ``diag(J^T W J)``. ``lambda`` starts at 1e-3, is divided by 10 after an accepted step and
  multiplied by 10 after a rejected one.
* Bounds by projection: a parameter at a bound whose gradient points outward is held for that
  step (its row and column are removed from the system), the trial point is clipped into the
  box. ``lower == upper`` fixes a parameter. Unlike a smooth transform this leaves the
  covariance at an interior optimum exactly that of the unconstrained problem.
* Converged when an accepted step lowers chi2 by at most ``ftol`` relative, or moves the
  parameters by at most ``xtol`` in units of their standard errors
  (``sqrt(sum delta_k^2 D_k)``), or when a rejected step was predicted to gain at most
  ``ftol`` relative (the minimum is reached to rounding). ``max_iterations`` bounds the
  number of attempted steps.
* Errors: ``sqrt(diag((J^T W J)^-1))`` at the optimum, multiplied by ``sqrt(chi2_reduced)``
  when that is above 1 (model or variance too optimistic: errors are widened, never narrowed
  below the Poisson ones). With ``chi2_reduced <= 1`` they equal ``curve_fit``'s with
  ``absolute_sigma=True``.

Status (``analysis.status.Status``), first match wins: INVALID_INPUT (non-finite axes, axes
not increasing, inf counts, negative variance, inconsistent bounds), TOO_FEW_POINTS (fewer
than ``min_valid_bins`` valid bins, default 3 x 7), NOT_SIGNIFICANT (I0 at its lower bound or
<= 0), SINGULAR (normal matrix not invertible at the end; NOT_CONVERGED if also not
converged), NOT_SIGNIFICANT (I0 / sigma(I0) < ``min_significance``, default 3), NOT_CONVERGED,
CENTRE_AT_EDGE (centre within ``edge_margin_bins`` of the window edge, default 1 bin, or on a
centre bound), OK. Only OK windows get numbers in ``params`` / ``errors``; the last
parameters of every fitted window stay in ``raw_params`` and its chi2_reduced in
``chi2_reduced`` (diagnostics, NaN where no fit ran).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from analysis.gauss2d_model import N_PARAMS, normal_equations_kernel
from analysis.peak_guess import guess_peak_kernel

LAMBDA_START = 1e-3
LAMBDA_MIN = 1e-12
LAMBDA_MAX = 1e16
PIVOT_RELATIVE_TOLERANCE = 1e-13
# Status codes as plain ints for Numba (values of analysis.status.Status; a test checks them).
_OK, _NOT_SIGNIFICANT, _NOT_CONVERGED, _TOO_FEW_POINTS = 0, 1, 2, 3
_CENTRE_AT_EDGE, _INVALID_INPUT, _SINGULAR = 4, 5, 6
# Rows of the matrix scratch and of the vector scratch.
_A, _A_TRIAL, _M, _L = range(4)
_G, _G_TRIAL, _P, _TRIAL, _DELTA, _D, _ROW, _HELD = range(8)
N_MATRIX_SCRATCH = 4
N_VECTOR_SCRATCH = 8


@numba.njit(cache=True, error_model="numpy")
def cholesky_factor(matrix, factor):
    """Lower Cholesky factor of a symmetric positive definite 7 x 7 (or n x n) matrix.

    Returns False (factor incomplete) when a pivot is not above ``PIVOT_RELATIVE_TOLERANCE``
    times the matrix's diagonal element, i.e. the matrix is singular to working precision.
    """
    n = matrix.shape[0]
    for j in range(n):
        total = matrix[j, j]
        for k in range(j):
            total -= factor[j, k] * factor[j, k]
        if not total > PIVOT_RELATIVE_TOLERANCE * abs(matrix[j, j]) or not math.isfinite(total):
            return False
        pivot = math.sqrt(total)
        factor[j, j] = pivot
        for i in range(j + 1, n):
            total = matrix[i, j]
            for k in range(j):
                total -= factor[i, k] * factor[j, k]
            factor[i, j] = total / pivot
        for i in range(j):
            factor[i, j] = 0.0
    return True


@numba.njit(cache=True, error_model="numpy")
def cholesky_solve(factor, rhs, solution):
    """Solve ``L L^T x = rhs`` for x, given the lower factor ``L`` (``solution`` may be ``rhs``)."""
    n = factor.shape[0]
    for i in range(n):
        total = rhs[i]
        for k in range(i):
            total -= factor[i, k] * solution[k]
        solution[i] = total / factor[i, i]
    for i in range(n - 1, -1, -1):
        total = solution[i]
        for k in range(i + 1, n):
            total -= factor[k, i] * solution[k]
        solution[i] = total / factor[i, i]


@numba.njit(cache=True, error_model="numpy")
def _axis_valid(axis):
    """True for finite, strictly increasing bin centres."""
    for i in range(axis.shape[0]):
        if not math.isfinite(axis[i]) or (i > 0 and not axis[i] > axis[i - 1]):
            return False
    return True


@numba.njit(cache=True, error_model="numpy")
def _inputs_valid(mean_counts, variance, q_nm, chi_deg, lower, upper):
    """False for data that are wrong rather than missing (see the module docstring)."""
    if not (_axis_valid(q_nm) and _axis_valid(chi_deg)):
        return False
    for k in range(N_PARAMS):
        if math.isnan(lower[k]) or math.isnan(upper[k]) or lower[k] > upper[k]:
            return False
    if not (lower[3] > 0.0 and lower[4] > 0.0):
        return False
    for i in range(mean_counts.shape[0]):
        for j in range(mean_counts.shape[1]):
            if math.isinf(mean_counts[i, j]) or variance[i, j] < 0.0:
                return False
    return True


@numba.njit(cache=True, error_model="numpy")
def _count_valid(mean_counts, variance):
    n = 0
    for i in range(mean_counts.shape[0]):
        for j in range(mean_counts.shape[1]):
            y = mean_counts[i, j]
            v = variance[i, j]
            if math.isfinite(y) and math.isfinite(v) and v > 0.0:
                n += 1
    return n


@numba.njit(cache=True, error_model="numpy")
def _move_inside(p, lower, upper):
    """Project a start point into the bounds, strictly inside where both bounds are finite."""
    for k in range(N_PARAMS):
        low = lower[k]
        high = upper[k]
        if math.isfinite(low) and math.isfinite(high):
            inset = 1e-6 * (high - low)
            p[k] = min(max(p[k], low + inset), high - inset)
        elif p[k] < low:
            p[k] = low
        elif p[k] > high:
            p[k] = high


@numba.njit(cache=True, error_model="numpy")
def _errors_from_normal_matrix(normal_matrix, lower, upper, scaled, factor, column, errors):
    """1-sigma errors ``sqrt(diag(A^-1))`` of the free parameters (fixed ones: 0).

    ``A`` is scaled to unit diagonal before the Cholesky factorisation so that the
    singularity test does not depend on parameter units. Returns False if singular.
    """
    for a in range(N_PARAMS):
        fixed_a = lower[a] == upper[a]
        for b in range(N_PARAMS):
            fixed_b = lower[b] == upper[b]
            if fixed_a or fixed_b:
                scaled[a, b] = 1.0 if a == b else 0.0
            elif not (normal_matrix[a, a] > 0.0 and normal_matrix[b, b] > 0.0):
                return False
            else:
                # sqrt of each diagonal separately: their product can underflow to 0
                norm = math.sqrt(normal_matrix[a, a]) * math.sqrt(normal_matrix[b, b])
                if not norm > 0.0:
                    return False
                scaled[a, b] = normal_matrix[a, b] / norm
    if not cholesky_factor(scaled, factor):
        return False
    for k in range(N_PARAMS):
        for i in range(N_PARAMS):
            column[i] = 1.0 if i == k else 0.0
        cholesky_solve(factor, column, column)
        if lower[k] == upper[k]:
            errors[k] = 0.0
        elif not column[k] > 0.0:
            return False
        else:
            errors[k] = math.sqrt(column[k] / normal_matrix[k, k])
    return True


@numba.njit(cache=True, error_model="numpy")
def fit_window_kernel(mean_counts, variance, q_nm, chi_deg, lower, upper, max_iterations, ftol,
                      xtol, min_significance, edge_margin_bins, min_valid_bins, params_out,
                      errors_out, raw_out, initial_out, exp_q, exp_chi, sort_buffer, mats, vecs):
    """Fit one window (Levenberg-Marquardt; algorithm and status in the module docstring).

    Parameters
    ----------
    mean_counts, variance : float64 (n_q, n_chi)
    q_nm : float64 (n_q,), chi_deg : float64 (n_chi,)
        Strictly increasing, evenly spaced bin centres, n_q and n_chi >= 2.
    lower, upper : float64 (7,)
        Bounds (+-inf allowed; ``lower == upper`` fixes a parameter).
    max_iterations, min_valid_bins : int
    ftol, xtol, min_significance, edge_margin_bins : float
    params_out, errors_out, raw_out, initial_out : float64 (7,)
        Outputs (NaN unless OK / unless a fit ran / unless a guess was made).
    exp_q : float64 (n_q,), exp_chi : float64 (3, n_chi), sort_buffer : float64 (n_q * n_chi,)
    mats : float64 (4, 7, 7), vecs : float64 (8, 7)
        Scratch.

    Returns
    -------
    status : int, chi2_reduced : float, n_iterations : int
    """
    for k in range(N_PARAMS):
        params_out[k] = np.nan
        errors_out[k] = np.nan
        raw_out[k] = np.nan
        initial_out[k] = np.nan
    if not _inputs_valid(mean_counts, variance, q_nm, chi_deg, lower, upper):
        return _INVALID_INPUT, np.nan, 0
    n_valid = _count_valid(mean_counts, variance)
    p = vecs[_P]
    guess_peak_kernel(mean_counts, variance, q_nm, chi_deg, p, sort_buffer)
    _move_inside(p, lower, upper)
    initial_out[:] = p
    if n_valid < max(min_valid_bins, N_PARAMS + 1):
        return _TOO_FEW_POINTS, np.nan, 0

    n_q = q_nm.shape[0]
    n_chi = chi_deg.shape[0]
    q_mid = 0.5 * (q_nm[0] + q_nm[n_q - 1])
    a_mat = mats[_A]
    a_trial = mats[_A_TRIAL]
    damped = mats[_M]
    factor = mats[_L]
    g = vecs[_G]
    g_trial = vecs[_G_TRIAL]
    trial = vecs[_TRIAL]
    delta = vecs[_DELTA]
    scale = vecs[_D]
    row = vecs[_ROW]
    held = vecs[_HELD]
    chi2 = normal_equations_kernel(p, mean_counts, variance, q_nm, chi_deg, q_mid, exp_q,
                                   exp_chi, row, a_mat, g)
    if not math.isfinite(chi2):
        return _INVALID_INPUT, np.nan, 0
    for k in range(N_PARAMS):
        scale[k] = a_mat[k, k]
    lam = LAMBDA_START
    converged = False
    n_iterations = 0
    while n_iterations < max_iterations:
        n_iterations += 1
        for k in range(N_PARAMS):
            outward = ((p[k] <= lower[k] and g[k] <= 0.0) or (p[k] >= upper[k] and g[k] >= 0.0))
            held[k] = 1.0 if (lower[k] == upper[k] or outward or not scale[k] > 0.0) else 0.0
        for a in range(N_PARAMS):
            for b in range(N_PARAMS):
                if held[a] > 0.0 or held[b] > 0.0:
                    damped[a, b] = 1.0 if a == b else 0.0
                elif a == b:
                    damped[a, b] = a_mat[a, a] + lam * scale[a]
                else:
                    damped[a, b] = a_mat[a, b]
            delta[a] = 0.0 if held[a] > 0.0 else g[a]
        if not cholesky_factor(damped, factor):
            lam *= 10.0
            if lam > LAMBDA_MAX:
                break
            continue
        cholesky_solve(factor, delta, delta)
        step2 = 0.0
        for k in range(N_PARAMS):
            trial[k] = min(max(p[k] + delta[k], lower[k]), upper[k])
            delta[k] = trial[k] - p[k]
            step2 += delta[k] * delta[k] * scale[k]
        predicted = 0.0
        for a in range(N_PARAMS):
            predicted += 2.0 * delta[a] * g[a]
            for b in range(N_PARAMS):
                predicted -= delta[a] * a_mat[a, b] * delta[b]
        chi2_trial = normal_equations_kernel(trial, mean_counts, variance, q_nm, chi_deg, q_mid,
                                             exp_q, exp_chi, row, a_trial, g_trial)
        if math.isfinite(chi2_trial) and chi2_trial <= chi2:
            gain = chi2 - chi2_trial
            p[:] = trial
            g[:] = g_trial
            a_mat[:, :] = a_trial
            for k in range(N_PARAMS):
                scale[k] = max(scale[k], a_mat[k, k])
            chi2 = chi2_trial
            lam = max(lam * 0.1, LAMBDA_MIN)
            if gain <= ftol * chi2 or math.sqrt(step2) <= xtol:
                converged = True
                break
        else:
            lam *= 10.0
            if predicted <= ftol * chi2:
                converged = True
                break
            if lam > LAMBDA_MAX:
                break

    raw_out[:] = p
    chi2_reduced = chi2 / (n_valid - N_PARAMS)
    if not (p[0] > lower[0] and p[0] > 0.0):
        return _NOT_SIGNIFICANT, chi2_reduced, n_iterations
    if not _errors_from_normal_matrix(a_mat, lower, upper, damped, factor, row, errors_out):
        for k in range(N_PARAMS):
            errors_out[k] = np.nan
        return (_SINGULAR if converged else _NOT_CONVERGED), chi2_reduced, n_iterations
    inflation = math.sqrt(chi2_reduced) if chi2_reduced > 1.0 else 1.0
    for k in range(N_PARAMS):
        errors_out[k] *= inflation
    status = _OK
    dq = (q_nm[n_q - 1] - q_nm[0]) / (n_q - 1)
    dchi = (chi_deg[n_chi - 1] - chi_deg[0]) / (n_chi - 1)
    margin_q = (edge_margin_bins - 0.5) * dq
    margin_chi = (edge_margin_bins - 0.5) * dchi
    if not p[0] >= min_significance * errors_out[0]:
        status = _NOT_SIGNIFICANT
    elif not converged:
        status = _NOT_CONVERGED
    elif (p[1] <= lower[1] or p[1] >= upper[1] or p[2] <= lower[2] or p[2] >= upper[2]
          or p[1] < q_nm[0] + margin_q or p[1] > q_nm[n_q - 1] - margin_q
          or p[2] < chi_deg[0] + margin_chi or p[2] > chi_deg[n_chi - 1] - margin_chi):
        status = _CENTRE_AT_EDGE
    if status == _OK:
        params_out[:] = p
    else:
        for k in range(N_PARAMS):
            errors_out[k] = np.nan
    return status, chi2_reduced, n_iterations


@numba.njit(cache=True, error_model="numpy")
def fit_batch_serial(mean_counts, variance, q_nm, chi_deg, lower, upper, max_iterations, ftol,
                     xtol, min_significance, edge_margin_bins, min_valid_bins, params, errors,
                     status, chi2_reduced, n_iterations, raw_params, initial, exp_q, exp_chi,
                     sort_buffer, mats, vecs):
    """Fit every window of a batch in turn; arrays carry a leading ``n_win`` axis.

    Scratch (``exp_q`` (n_q,), ``exp_chi`` (3, n_chi), ``sort_buffer`` (n_q * n_chi,), ``mats``
    (4, 7, 7), ``vecs`` (8, 7)) is shared by all windows; nothing is allocated per window.
    """
    for w in range(mean_counts.shape[0]):
        code, chi2_red, n_iter = fit_window_kernel(
            mean_counts[w], variance[w], q_nm[w], chi_deg[w], lower[w], upper[w], max_iterations,
            ftol, xtol, min_significance, edge_margin_bins, min_valid_bins, params[w], errors[w],
            raw_params[w], initial[w], exp_q, exp_chi, sort_buffer, mats, vecs)
        status[w] = code
        chi2_reduced[w] = chi2_red
        n_iterations[w] = n_iter


@numba.njit(parallel=True, error_model="numpy")
def fit_batch_parallel(mean_counts, variance, q_nm, chi_deg, lower, upper, max_iterations, ftol,
                       xtol, min_significance, edge_margin_bins, min_valid_bins, params, errors,
                       status, chi2_reduced, n_iterations, raw_params, initial, exp_q, exp_chi,
                       sort_buffer, mats, vecs):
    """Parallel variant of :func:`fit_batch_serial`: scratch has a leading ``n_chunks`` axis.

    Chunk ``c`` fits windows ``c, c + n_chunks, ...`` with its own scratch (round robin, so
    that slow windows spread over the threads). Results equal the serial ones bit for bit.
    """
    n_chunks = exp_q.shape[0]
    n_win = mean_counts.shape[0]
    for c in numba.prange(n_chunks):
        for w in range(c, n_win, n_chunks):
            code, chi2_red, n_iter = fit_window_kernel(
                mean_counts[w], variance[w], q_nm[w], chi_deg[w], lower[w], upper[w],
                max_iterations, ftol, xtol, min_significance, edge_margin_bins, min_valid_bins,
                params[w], errors[w], raw_params[w], initial[w], exp_q[c], exp_chi[c],
                sort_buffer[c], mats[c], vecs[c])
            status[w] = code
            chi2_reduced[w] = chi2_red
            n_iterations[w] = n_iter
