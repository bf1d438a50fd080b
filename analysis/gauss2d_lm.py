"""Numba kernels of the batch Levenberg-Marquardt fit of the 2D Gaussian peak model.

The Python entry point, with input validation and default bounds, is
:func:`analysis.gauss2d_fit.fit_windows`. One call fits ``n_win`` windows of identical bin
layout ``(n_q, n_chi)``; the model, parameter order and units are those of
:mod:`analysis.gauss2d_model`. Two weightings, over the valid bins only (finite value,
finite variance > 0; NaN marks an empty bin and is skipped):

* **Poisson** (``poisson=True``, what the analysis uses): bin i holds
  ``N_i = e_i (y_i + o_i)`` photons, ``e`` the exposure (photons per data unit, e.g. pixels
  per bin times the pixel's (q, chi) area) and ``o`` the known background already subtracted
  from ``y``; N_i is Poisson with mean ``mu_i = e_i (m_i + o_i)``. The fit minimises the
  Poisson deviance ``2 sum [mu - N + N ln(N / mu)]``: maximum likelihood. Its gradient is
  the score ``J^T W r`` with the weights ``W = e / (m + o)`` of the *current model*; the
  steps use the Fisher information ``J^T W J`` with the observed information
  ``J^T diag(e N / mu^2) J`` in the background rows and columns (exact there, the background
  being linear; the Fisher matrix alone, i.e. iterative reweighting, converges slowly at ~1
  photon per bin). That matrix is positive definite but converges only linearly in the peak
  parameters (by a factor ~0.4 per step on faint WAXS peaks), so at the bin centres, once a
  step is at most ``NEWTON_STEP`` standard errors, the next steps are Newton's, with the whole
  Hessian ``J^T diag(e N / mu^2) J - sum w r d2m / dp dp`` (quadratic convergence; far from
  the optimum, e.g. at the moment guess, it is often indefinite). The errors come from the
  Fisher information ``J^T W J`` at the optimum. Weights from the observed counts (Neyman's
  chi2) would bias I0 low by ~20 % and make the errors ~1.5x too small at the ~1 photon per
  bin of a SAXS window; with the model's they are unbiased and honest. Bins with exposure 0
  (or NaN) are skipped; a step to a model with ``m + o <= 0`` in some bin is rejected (a
  Poisson mean must be positive), and a start point that has one gets its background raised
  until the lowest bin expects half a photon.
* **Fixed variance** (``poisson=False``): chi2 with weights ``1 / variance`` (for data
  whose variance is known and does not follow the model).

Algorithm (``fit_window_kernel``)
---------------------------------
* Start from :func:`analysis.peak_guess.guess_peak_kernel` (which uses ``variance``), moved
  inside the bounds.
* Each iteration solves the damped normal equations ``(J^T W J + lambda D) delta = J^T W r``
  (7 x 7, hand-written Cholesky) with Marquardt's scaling ``D`` = running maximum of
  ``diag(J^T W J)``. ``lambda`` starts at 0.1 (at 1e-3 the first two steps from the moment guess were
  rejected on most WAXS windows), is divided by 10 after an accepted step
  (one that does not raise the merit) and multiplied by 10 after a rejected one.
* Bounds by projection: a parameter at a bound whose gradient points outward is held for that
  step (its row and column are removed from the system), the trial point is clipped into the
  box. ``lower == upper`` fixes a parameter. Unlike a smooth transform this leaves the
  covariance at an interior optimum exactly that of the unconstrained problem.
* Converged when an accepted step lowers the merit by at most ``ftol`` relative, or moves the
  parameters by at most ``xtol`` in units of their standard errors
  (``sqrt(sum delta_k^2 D_k)``; for Poisson such a step is taken without evaluating the
  deviance there, since it changes it by ~xtol^2: the Fisher information for the errors is
  evaluated at that point, and the step is undone if the model is not feasible there), or
  when a rejected step was predicted to gain at most ``ftol`` relative (the minimum is reached to rounding; a step that clipping at a bound
  made predict a loss only raises ``lambda``). ``max_iterations`` bounds the
  number of attempted steps.
* Errors: ``sqrt(diag((J^T W J)^-1))`` at the optimum (the inverse Fisher information for
  Poisson), multiplied by ``sqrt(chi2_reduced)`` when that is above 1 (model too
  optimistic: errors are widened, never narrowed). ``chi2_reduced`` is chi2 / (n_valid - 7),
  with the model's variances (Pearson's chi2) for Poisson. For fixed variances the errors
  equal ``curve_fit``'s with ``absolute_sigma=True`` when ``chi2_reduced <= 1``.

Status (``analysis.status.Status``), first match wins: INVALID_INPUT (non-finite axes, axes
not increasing, inf counts, negative variance or exposure, infinite offset, inconsistent
bounds), TOO_FEW_POINTS (fewer
than ``min_valid_bins`` valid bins, default 3 x 7), NOT_SIGNIFICANT (I0 at its lower bound or
<= 0), SINGULAR (normal matrix not invertible at the end; NOT_CONVERGED if also not
converged), NOT_SIGNIFICANT (I0 / sigma(I0) < ``min_significance``, default 3), NOT_CONVERGED
(also: no Poisson start point within the background bounds), CENTRE_AT_EDGE (centre within
``edge_margin_bins`` of the window edge, default 1 bin, or on a centre bound), OK. Only OK
windows get numbers in ``params`` / ``errors``; the last parameters of every fitted window
stay in ``raw_params`` and its chi2_reduced in ``chi2_reduced`` (diagnostics, NaN where no
fit ran).

Model points: by default the model is evaluated at the bin centres, separably (n_q + n_chi
exponentials per evaluation); with ``at_points`` at a given point per bin (the mean position
of its pixels), one exponential per bin.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from analysis.gauss2d_model import (N_PARAMS, normal_equations_kernel,
                                    points_normal_equations_kernel,
                                    poisson_normal_equations_kernel)
from analysis.peak_guess import guess_peak_kernel

LAMBDA_START = 0.1
LAMBDA_MIN = 1e-12
LAMBDA_MAX = 1e16
PIVOT_RELATIVE_TOLERANCE = 1e-13
NEWTON_STEP = 1.0
"""Poisson fits at the bin centres take Newton steps (the whole Hessian of the deviance) once
a step moves the parameters by at most this many standard errors; before that the steps use
the observed information without the model's curvature, which is positive definite."""
START_MIN_PHOTONS = 0.5
"""Photons (at the mean exposure) the lowest bin expects at a Poisson start point that had to
be made feasible."""
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
def _poisson_inputs_valid(exposure, offset):
    """False for a negative exposure or an infinite offset (wrong, not missing, data)."""
    for i in range(exposure.shape[0]):
        for j in range(exposure.shape[1]):
            if exposure[i, j] < 0.0 or math.isinf(exposure[i, j]) or math.isinf(offset[i, j]):
                return False
    return True


@numba.njit(cache=True, error_model="numpy")
def _count_valid(mean_counts, variance, exposure, offset, poisson, points, at_points, usable):
    """Number of bins that enter the fit, and ``usable`` (n_q, n_chi): 0 in the others, in
    those the exposure (Poisson) or the weight ``1 / variance`` (least squares)."""
    n = 0
    for i in range(mean_counts.shape[0]):
        for j in range(mean_counts.shape[1]):
            usable[i, j] = 0.0
            y = mean_counts[i, j]
            v = variance[i, j]
            if not (math.isfinite(y) and math.isfinite(v) and v > 0.0):
                continue
            if poisson and not (exposure[i, j] > 0.0 and math.isfinite(offset[i, j])):
                continue
            if at_points and not (math.isfinite(points[0, i, j])
                                  and math.isfinite(points[1, i, j])):
                continue
            usable[i, j] = exposure[i, j] if poisson else 1.0 / v
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
def _evaluate(poisson, p, mean_counts, variance, offset, points, var_q, var_chi, at_points, q_nm,
              chi_deg, q_mid, exp_q, exp_chi, row, normal_matrix, gradient, observed, use_ref, ref,
              out, newton, usable):
    """(merit, chi2) and the normal equations at ``p``: for Poisson the deviance (its change
    from the state ``ref`` with ``use_ref``), Pearson's chi2 and the observed (``observed``)
    or Fisher information, the bins' means going to ``out``; for fixed variances chi2 twice.
    The model at the bins' points with their broadening (``points``, see
    :func:`analysis.gauss2d_model.points_normal_equations_kernel`) when
    ``at_points``, else at the bin centres with the window's broadening ``var_q``,
    ``var_chi`` (separable); ``newton``: Newton's matrix (the whole Hessian) there, for
    Poisson at the bin centres only. ``usable``: 0 in every bin that does not enter the fit,
    else its exposure (Poisson) or weight (least squares; from :func:`_count_valid`): the
    kernels test one number per bin."""
    if at_points:
        return points_normal_equations_kernel(poisson, p, mean_counts, usable, offset, points,
                                              q_mid, normal_matrix, gradient, observed, use_ref,
                                              ref, out)
    if poisson:
        return poisson_normal_equations_kernel(p, mean_counts, usable, offset, q_nm, chi_deg,
                                               q_mid, exp_q, exp_chi, row, normal_matrix,
                                               gradient, observed, use_ref, ref, out, var_q,
                                               var_chi, newton)
    chi2 = normal_equations_kernel(p, mean_counts, variance, q_nm, chi_deg, q_mid, exp_q,
                                   exp_chi, row, normal_matrix, gradient, var_q, var_chi)
    return chi2, chi2


@numba.njit(cache=True, error_model="numpy")
def _make_feasible(p, usable, offset, points, at_points, q_nm, chi_deg, q_mid, lower, upper):
    """Make a Poisson start point feasible: if the background plus offset is not positive in
    every valid bin (then the model is: the peak term is not negative), raise the background
    ``b0`` until its lowest bin expects ``START_MIN_PHOTONS`` photons at the window's mean
    exposure; if ``b0``'s upper bound does not allow it, also set the slope ``b1`` to 0 and
    try again.

    A Poisson mean must be positive; the guess from a background-subtracted window with few
    photons can have a background below zero. ``usable``: the exposure of the bins that enter
    the fit, 0 in the others (from :func:`_count_valid`). Returns False when no such start
    exists.
    """
    for attempt in range(2):
        if attempt == 1:
            if not (lower[6] <= 0.0 <= upper[6]):
                return False
            p[6] = 0.0
        # the peak term is >= 0 (I0 >= 0): the background plus offset bounds the mean below
        lowest = np.inf
        exposure_sum = 0.0
        n = 0
        for i in range(q_nm.shape[0]):
            for j in range(chi_deg.shape[0]):
                e = usable[i, j]
                if not e > 0.0:
                    continue
                qp = points[0, i, j] if at_points else q_nm[i]
                lowest = min(lowest, p[5] + p[6] * (qp - q_mid) + offset[i, j])
                exposure_sum += e
                n += 1
        if n == 0 or lowest > 0.0:
            return True
        raise_by = START_MIN_PHOTONS * n / exposure_sum - lowest
        if p[5] + raise_by <= upper[5]:
            p[5] += raise_by
            return True
    return False


@numba.njit(cache=True, error_model="numpy")
def _levenberg_marquardt(poisson, p, mean_counts, variance, offset, points, var_q, var_chi,
                         at_points, q_nm, chi_deg, q_mid, lower, upper, max_iterations, ftol, xtol,
                         exp_q, exp_chi, mats, vecs, means, usable):
    """Damped Gauss-Newton (fixed variances) or Newton (Poisson deviance, observed
    information) iterations from ``p`` (updated in place).

    ``mats[_A]`` holds the normal matrix at the final ``p`` (for Poisson the observed
    information: the caller evaluates the Fisher matrix for the errors). ``means`` (2,
    POINT_ROWS, n_bins) scratch holds the bins' state (Poisson means, their inverses, at
    points the peak shape) of the current iterate (``means[current]``) and of the trial
    point. Returns (converged, merit, chi2, n_iterations, current, step_pending); merit and
    chi2 are inf if ``p`` could not be evaluated. ``step_pending`` (Poisson only): the last
    step, at most ``xtol`` standard errors, was not evaluated; its point is in
    ``vecs[_TRIAL]`` and ``p`` is still the point before it (merit and chi2 are p's).
    """
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
    current = 0
    merit, chi2 = _evaluate(poisson, p, mean_counts, variance, offset, points, var_q, var_chi,
                            at_points, q_nm, chi_deg, q_mid, exp_q, exp_chi, row, a_mat, g, True,
                            False, means[1], means[0], False, usable)
    if not math.isfinite(merit):
        return False, merit, chi2, 0, current, False
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
        if poisson and math.sqrt(step2) <= xtol:
            # changes the deviance by ~xtol^2: the caller evaluates the Fisher information at
            # ``trial`` anyway, which tells whether the model is feasible there
            return True, merit, chi2, n_iterations, current, True
        predicted = 0.0
        for a in range(N_PARAMS):
            predicted += 2.0 * delta[a] * g[a]
            for b in range(N_PARAMS):
                predicted -= delta[a] * a_mat[a, b] * delta[b]
        # close to the optimum, Newton's matrix at the trial point for the step after it
        newton = poisson and not at_points and math.sqrt(step2) <= NEWTON_STEP
        merit_trial, chi2_trial = _evaluate(poisson, trial, mean_counts, variance, offset,
                                            points, var_q, var_chi, at_points, q_nm, chi_deg,
                                            q_mid, exp_q, exp_chi, row, a_trial, g_trial, True,
                                            True, means[current], means[1 - current], newton,
                                            usable)
        # Poisson: the kernel returned the deviance change itself (accurate to rounding)
        change = merit_trial if poisson else merit_trial - merit
        if math.isfinite(change) and change <= 0.0:
            gain = -change
            merit_trial = merit + change
            current = 1 - current
            p[:] = trial
            g[:] = g_trial
            a_mat[:, :] = a_trial
            for k in range(N_PARAMS):
                scale[k] = max(scale[k], a_mat[k, k])
            merit = merit_trial
            chi2 = chi2_trial
            lam = max(lam * 0.1, LAMBDA_MIN)
            if gain <= ftol * merit or math.sqrt(step2) <= xtol:
                converged = True
                break
        else:
            lam *= 10.0
            # a step clipped at a bound can predict a loss (< 0): damp it more, do not stop
            if 0.0 <= predicted <= ftol * merit:
                converged = True
                break
            if lam > LAMBDA_MAX:
                break
    return converged, merit, chi2, n_iterations, current, False


@numba.njit(cache=True, error_model="numpy")
def _fisher_at_optimum(p, step_pending, mean_counts, variance, offset, points, var_q, var_chi,
                       at_points, q_nm, chi_deg, q_mid, exp_q, exp_chi, mats, vecs, means,
                       current, usable):
    """Poisson: the Fisher information (into ``mats[_A]``, the score into ``vecs[_G]``) and
    Pearson's chi2 (returned) at the optimum. With ``step_pending`` (the last LM step, in
    ``vecs[_TRIAL]``, was not evaluated) that is the step's point, which then goes to ``p``,
    when the model is feasible there; else ``p`` stays as it is and they are evaluated at
    ``p``. ``means[current]`` is the state at ``p`` (the deviance's reference)."""
    chi2 = np.inf
    if step_pending:
        _, chi2 = _evaluate(True, vecs[_TRIAL], mean_counts, variance, offset, points, var_q,
                            var_chi, at_points, q_nm, chi_deg, q_mid, exp_q, exp_chi, vecs[_ROW],
                            mats[_A], vecs[_G], False, True, means[current], means[1 - current],
                            False, usable)
        if math.isfinite(chi2):
            p[:] = vecs[_TRIAL]
    if not math.isfinite(chi2):
        _, chi2 = _evaluate(True, p, mean_counts, variance, offset, points, var_q, var_chi,
                            at_points, q_nm, chi_deg, q_mid, exp_q, exp_chi, vecs[_ROW], mats[_A],
                            vecs[_G], False, True, means[current], means[1 - current], False,
                            usable)
    return chi2


@numba.njit(cache=True, error_model="numpy")
def fit_window_kernel(mean_counts, variance, exposure, offset, poisson, points, var_q, var_chi,
                      at_points, q_nm, chi_deg, lower, upper,
                      max_iterations, ftol, xtol, min_significance, edge_margin_bins,
                      min_valid_bins, params_out, errors_out, raw_out, initial_out, exp_q, exp_chi,
                      sort_buffer, mats, vecs, means, usable):
    """Fit one window (Levenberg-Marquardt; algorithm and status in the module docstring).

    Parameters
    ----------
    mean_counts, variance : float64 (n_q, n_chi)
    exposure, offset : float64 (n_q, n_chi)
        Photons per data unit and the subtracted known background (data units) of each bin;
        read only when ``poisson``.
    poisson : bool
        Poisson maximum likelihood (True) or least squares with the fixed ``variance``.
    points : float64 (4, n_q, n_chi)
        Per bin, where to evaluate the model, q and chi (the mean pixel position; a
        non-finite point skips the bin), and its broadening in q and chi (nm^-2, deg^2; see
        :func:`analysis.gauss2d_model.model_at`); read only when ``at_points``, else the bin
        centres are used.
    var_q, var_chi : float
        Broadening of every bin at the bin centres (when not ``at_points``).
    at_points : bool
    q_nm : float64 (n_q,), chi_deg : float64 (n_chi,)
        Strictly increasing, evenly spaced bin centres, n_q and n_chi >= 2.
    lower, upper : float64 (7,)
        Bounds (+-inf allowed; ``lower == upper`` fixes a parameter).
    max_iterations, min_valid_bins : int
    ftol, xtol, min_significance, edge_margin_bins : float
    params_out, errors_out, raw_out, initial_out : float64 (7,)
        Outputs (NaN unless OK / unless a fit ran / unless a guess was made).
    exp_q : float64 (n_q,), exp_chi : float64 (6, n_chi), sort_buffer : float64 (n_q * n_chi,)
    mats : float64 (4, 7, 7), vecs : float64 (8, 7), means : float64 (2, 3, n_q * n_chi)
    usable : float64 (n_q, n_chi)
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
    if poisson and not _poisson_inputs_valid(exposure, offset):
        return _INVALID_INPUT, np.nan, 0
    n_valid = _count_valid(mean_counts, variance, exposure, offset, poisson, points, at_points,
                           usable)
    p = vecs[_P]
    guess_peak_kernel(mean_counts, variance, q_nm, chi_deg, p, sort_buffer, exp_chi)  # exp_chi: free until the LM
    _move_inside(p, lower, upper)
    initial_out[:] = p
    if n_valid < max(min_valid_bins, N_PARAMS + 1):
        return _TOO_FEW_POINTS, np.nan, 0

    n_q = q_nm.shape[0]
    n_chi = chi_deg.shape[0]
    q_mid = 0.5 * (q_nm[0] + q_nm[n_q - 1])
    if poisson and not _make_feasible(p, usable, offset, points, at_points, q_nm, chi_deg, q_mid,
                                      lower, upper):
        raw_out[:] = p
        return _NOT_CONVERGED, np.nan, 0
    converged, merit, chi2, n_iterations, current, step_pending = _levenberg_marquardt(
        poisson, p, mean_counts, variance, offset, points, var_q, var_chi, at_points, q_nm,
        chi_deg, q_mid, lower, upper, max_iterations, ftol, xtol, exp_q, exp_chi, mats, vecs,
        means, usable)
    if not math.isfinite(merit):
        return _INVALID_INPUT, np.nan, 0
    if poisson:
        chi2 = _fisher_at_optimum(p, step_pending, mean_counts, variance, offset, points, var_q,
                                  var_chi, at_points, q_nm, chi_deg, q_mid, exp_q, exp_chi, mats,
                                  vecs, means, current, usable)

    a_mat = mats[_A]
    damped = mats[_M]
    factor = mats[_L]
    row = vecs[_ROW]
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
def fit_batch_serial(mean_counts, variance, exposure, offset, poisson, points, var_q, var_chi,
                     at_points, q_nm, chi_deg, lower, upper,
                     max_iterations, ftol, xtol, min_significance, edge_margin_bins, min_valid_bins,
                     params, errors, status, chi2_reduced, n_iterations, raw_params, initial, exp_q,
                     exp_chi, sort_buffer, mats, vecs, means, usable):
    """Fit every window of a batch in turn; arrays carry a leading ``n_win`` axis.

    Scratch (``exp_q`` (n_q,), ``exp_chi`` (6, n_chi), ``sort_buffer`` (n_q * n_chi,), ``mats``
    (4, 7, 7), ``vecs`` (8, 7), ``means`` (2, 3, n_q * n_chi), ``usable`` (n_q, n_chi)) is
    shared by all windows;
    nothing is allocated per window.
    """
    for w in range(mean_counts.shape[0]):
        code, chi2_red, n_iter = fit_window_kernel(
            mean_counts[w], variance[w], exposure[w], offset[w], poisson, points[w], var_q[w],
            var_chi[w], at_points, q_nm[w],
            chi_deg[w], lower[w], upper[w], max_iterations, ftol, xtol, min_significance,
            edge_margin_bins, min_valid_bins, params[w], errors[w], raw_params[w], initial[w],
            exp_q, exp_chi, sort_buffer, mats, vecs, means, usable)
        status[w] = code
        chi2_reduced[w] = chi2_red
        n_iterations[w] = n_iter


@numba.njit(parallel=True, error_model="numpy")
def fit_batch_parallel(mean_counts, variance, exposure, offset, poisson, points, var_q, var_chi,
                       at_points, q_nm, chi_deg, lower, upper,
                       max_iterations, ftol, xtol, min_significance, edge_margin_bins,
                       min_valid_bins, params, errors, status, chi2_reduced, n_iterations,
                       raw_params, initial, exp_q, exp_chi, sort_buffer, mats, vecs, means,
                       usable):
    """Parallel variant of :func:`fit_batch_serial`: scratch has a leading ``n_chunks`` axis.

    Chunk ``c`` fits windows ``c, c + n_chunks, ...`` with its own scratch (round robin, so
    that slow windows spread over the threads). Results equal the serial ones bit for bit.
    """
    n_chunks = exp_q.shape[0]
    n_win = mean_counts.shape[0]
    for c in numba.prange(n_chunks):
        for w in range(c, n_win, n_chunks):
            code, chi2_red, n_iter = fit_window_kernel(
                mean_counts[w], variance[w], exposure[w], offset[w], poisson, points[w], var_q[w],
                var_chi[w], at_points, q_nm[w],
                chi_deg[w], lower[w], upper[w], max_iterations, ftol, xtol, min_significance,
                edge_margin_bins, min_valid_bins, params[w], errors[w], raw_params[w],
                initial[w], exp_q[c], exp_chi[c], sort_buffer[c], mats[c], vecs[c], means[c],
                usable[c])
            status[w] = code
            chi2_reduced[w] = chi2_red
            n_iterations[w] = n_iter
