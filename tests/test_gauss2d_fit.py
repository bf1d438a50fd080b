"""The Numba 2D-Gaussian fitter against its NumPy/SciPy references, the truth, and bad input.

Simulated windows follow the two layouts of the product requirement (SAXS: q 0.45-0.95 nm^-1
x 80 deg in 40 x 90 bins, q0 0.7, FWHM 0.1 nm^-1 / 6 deg; WAXS: q 9.3-12.6 nm^-1 x 80 deg,
q0 10.95, FWHM 0.8 nm^-1 / 17 deg). Counts per bin are Poisson; the window holds the mean
counts per pixel (``pixels_per_bin`` pixels) and their variance ``max(counts, 1) / n_pix^2``.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis.errors import ConfigurationError
from analysis.gauss2d_fit import FitSettings, default_bounds, fit_windows, fit_windows_into, warm_up
from analysis.gauss2d_lm import cholesky_factor, cholesky_solve
from analysis.gauss2d_model import (FWHM_PER_SIGMA, N_PARAMS, chi2_normal_equations,
                                    fit_window_curve_fit, fwhm_from_sigma, gauss2d_jacobian,
                                    gauss2d_model, normal_equations_kernel, q_mid_of,
                                    sigma_from_fwhm)
from analysis.peak_guess import guess_peak, guess_peak_reference
from analysis.status import Status

SAXS = dict(q_range=(0.45, 0.95), q0=0.7, fwhm_q=0.1, fwhm_chi=6.0, pixels_per_bin=1.0)
WAXS = dict(q_range=(9.3, 12.6), q0=10.95, fwhm_q=0.8, fwhm_chi=17.0, pixels_per_bin=50.0)
N_Q, N_CHI, CHI_RANGE = 40, 90, (135.0, 215.0)


def axes(layout):
    q_lo, q_hi = layout["q_range"]
    q = q_lo + (np.arange(N_Q) + 0.5) * (q_hi - q_lo) / N_Q
    chi = CHI_RANGE[0] + (np.arange(N_CHI) + 0.5) * (CHI_RANGE[1] - CHI_RANGE[0]) / N_CHI
    return q, chi


def true_params(layout, peak_max_counts, background_counts=2.0, q0=None, chi0=None,
                fwhm_q=None, fwhm_chi=None):
    """Parameters (data units: mean counts per pixel) of a peak with the given height."""
    s_q = sigma_from_fwhm(layout["fwhm_q"] if fwhm_q is None else fwhm_q)
    s_chi = sigma_from_fwhm(layout["fwhm_chi"] if fwhm_chi is None else fwhm_chi)
    n_pix = layout["pixels_per_bin"]
    return np.array([peak_max_counts * 2 * np.pi * s_q * s_chi / n_pix,
                     layout["q0"] if q0 is None else q0, 175.0 if chi0 is None else chi0,
                     s_q, s_chi, background_counts / n_pix, 0.0])


def simulate(rng, layout, params, n_windows=1):
    """Poisson windows: (mean_counts, variance) of shape (n_windows, N_Q, N_CHI), and axes."""
    q, chi = axes(layout)
    n_pix = layout["pixels_per_bin"]
    expected = np.clip(gauss2d_model(params, q, chi), 0, None) * n_pix
    counts = rng.poisson(expected, size=(n_windows,) + expected.shape).astype(np.float64)
    return counts / n_pix, np.maximum(counts, 1.0) / n_pix**2, q, chi


# --- model, Jacobian, normal equations, linear algebra ------------------------------------


def test_status_codes_of_the_kernel_are_those_of_the_enum():
    from analysis import gauss2d_lm as lm
    assert (lm._OK, lm._NOT_SIGNIFICANT, lm._NOT_CONVERGED, lm._TOO_FEW_POINTS,
            lm._CENTRE_AT_EDGE, lm._INVALID_INPUT, lm._SINGULAR) == (
        Status.OK, Status.NOT_SIGNIFICANT, Status.NOT_CONVERGED, Status.TOO_FEW_POINTS,
        Status.CENTRE_AT_EDGE, Status.INVALID_INPUT, Status.SINGULAR)


def test_fwhm_from_sigma():
    assert fwhm_from_sigma(1.0) == pytest.approx(2.354820045)
    np.testing.assert_allclose(fwhm_from_sigma(np.array([1.0, 2.0, np.nan])),
                               [FWHM_PER_SIGMA, 2 * FWHM_PER_SIGMA, np.nan])
    assert sigma_from_fwhm(fwhm_from_sigma(0.3)) == pytest.approx(0.3)


def test_model_integrates_to_i0_and_jacobian_matches_finite_differences():
    q = np.linspace(0.3, 1.1, 400)
    chi = np.linspace(120.0, 230.0, 500)
    p = np.array([5.0, 0.71, 176.0, 0.04, 2.6, 0.0, 0.0])
    integral = gauss2d_model(p, q, chi).sum() * (q[1] - q[0]) * (chi[1] - chi[0])
    assert integral == pytest.approx(5.0, rel=1e-6)
    q_w, chi_w = axes(SAXS)
    p = np.array([3.0, 0.69, 172.0, 0.05, 3.0, 0.4, 0.7])
    jac = gauss2d_jacobian(p, q_w, chi_w)
    for k in range(N_PARAMS):
        h = 1e-6 * max(abs(p[k]), 1e-2)
        up, down = p.copy(), p.copy()
        up[k] += h
        down[k] -= h
        numeric = (gauss2d_model(up, q_w, chi_w) - gauss2d_model(down, q_w, chi_w)) / (2 * h)
        np.testing.assert_allclose(jac[..., k], numeric, rtol=1e-5,
                                   atol=1e-7 * np.abs(numeric).max())


def test_normal_equations_kernel_matches_numpy():
    rng = np.random.default_rng(3)
    p = true_params(SAXS, 200.0) * [1.1, 1.0, 1.0, 0.9, 1.2, 1.0, 1.0]
    y, v, q, chi = simulate(rng, SAXS, true_params(SAXS, 200.0))
    y, v = y[0], v[0]
    y[3:7, 10:30] = np.nan
    v[20, 40:45] = 0.0
    v[21, 40:45] = np.inf
    matrix, gradient = np.empty((7, 7)), np.empty(7)
    chi2 = normal_equations_kernel(p, y, v, q, chi, q_mid_of(q), np.empty(N_Q),
                                   np.empty((3, N_CHI)),
                                   np.empty(7), matrix, gradient)
    chi2_ref, matrix_ref, gradient_ref = chi2_normal_equations(p, y, v, q, chi)
    assert chi2 == pytest.approx(chi2_ref, rel=1e-12)
    np.testing.assert_allclose(matrix, matrix_ref, rtol=1e-10,
                               atol=1e-12 * np.abs(matrix_ref).max())
    np.testing.assert_allclose(gradient, gradient_ref, rtol=1e-9,
                               atol=1e-10 * np.abs(gradient_ref).max())


def test_cholesky_matches_numpy_and_detects_singular_matrices():
    rng = np.random.default_rng(4)
    for _ in range(20):
        a = rng.normal(size=(7, 12))
        matrix = a @ a.T + 0.1 * np.eye(7)
        b = rng.normal(size=7)
        factor, x = np.zeros((7, 7)), np.empty(7)
        assert cholesky_factor(matrix, factor)
        cholesky_solve(factor, b, x)
        np.testing.assert_allclose(x, np.linalg.solve(matrix, b), rtol=1e-9)
    a = rng.normal(size=(7, 5))
    assert not cholesky_factor(a @ a.T, np.zeros((7, 7)))


# --- initial guesses -------------------------------------------------------------------

def _guess_cases():
    rng = np.random.default_rng(11)
    cases = {}
    for name, layout, params in (
            ("saxs", SAXS, true_params(SAXS, 300.0)),
            ("saxs_off_centre", SAXS, true_params(SAXS, 1000.0, q0=0.55, chi0=150.0)),
            ("waxs", WAXS, true_params(WAXS, 300.0, background_counts=40.0)),
            ("low_background", SAXS, true_params(SAXS, 100.0, background_counts=0.3))):
        y, v, q, chi = simulate(rng, layout, params)
        cases[name] = (y[0], v[0], q, chi)
    y, v, q, chi = cases["waxs"]
    masked = y.copy()
    masked[12:16, :] = np.nan
    masked[:, 40:43] = np.nan
    cases["masked"] = (masked, v, q, chi)
    q, chi = axes(SAXS)
    zeros = np.zeros((N_Q, N_CHI))
    cases["all_zero"] = (zeros, zeros + 1.0, q, chi)
    cases["all_zero_no_variance"] = (zeros, zeros, q, chi)
    cases["all_nan"] = (zeros + np.nan, zeros + np.nan, q, chi)
    cases["peak_less"] = simulate(rng, SAXS, true_params(SAXS, 0.0))
    cases["peak_less"] = (cases["peak_less"][0][0], cases["peak_less"][1][0], q, chi)
    cases["tiny"] = (np.ones((2, 3)), np.ones((2, 3)), np.array([1.0, 1.1]),
                     np.array([0.0, 1.0, 2.0]))
    return cases


GUESS_CASES = _guess_cases()


@pytest.mark.parametrize("name", sorted(GUESS_CASES))
def test_guess_kernel_matches_numpy_reference_and_is_finite(name):
    y, v, q, chi = GUESS_CASES[name]
    guess = guess_peak(y, v, q, chi)
    np.testing.assert_allclose(guess, guess_peak_reference(y, v, q, chi), rtol=1e-9, atol=1e-12)
    assert np.all(np.isfinite(guess))
    assert guess[0] > 0 and guess[3] > 0 and guess[4] > 0
    assert q[0] <= guess[1] <= q[-1] and chi[0] <= guess[2] <= chi[-1]


def test_guess_lands_near_the_peak():
    y, v, q, chi = GUESS_CASES["saxs_off_centre"]
    guess = guess_peak(y, v, q, chi)
    assert abs(guess[1] - 0.55) < 0.02 and abs(guess[2] - 150.0) < 2.0
    assert guess[5] == pytest.approx(2.0, rel=0.15)


# --- the fit against scipy.optimize.curve_fit ---------------------------------------------

REFERENCE_CASES = {
    "saxs_centred_300": (SAXS, dict(peak_max_counts=300.0)),
    "saxs_off_centre_1000": (SAXS, dict(peak_max_counts=1000.0, q0=0.58, chi0=152.0)),
    "saxs_narrow_500": (SAXS, dict(peak_max_counts=500.0, fwhm_q=0.05, fwhm_chi=3.0)),
    "waxs_centred_300": (WAXS, dict(peak_max_counts=300.0, background_counts=20.0)),
    "waxs_wide_2000": (WAXS, dict(peak_max_counts=2000.0, fwhm_chi=28.0, chi0=180.0)),
    "waxs_masked_1000": (WAXS, dict(peak_max_counts=1000.0, q0=11.3)),
}


@pytest.mark.parametrize("name", sorted(REFERENCE_CASES))
def test_fit_matches_curve_fit(name):
    layout, kwargs = REFERENCE_CASES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    y, v, q, chi = simulate(rng, layout, true_params(layout, **kwargs))
    if "masked" in name:
        y[0, 14:18, :] = np.nan                    # a detector gap across the window
        y[0][rng.random((N_Q, N_CHI)) < 0.05] = np.nan
    result = fit_windows(y, v, q, chi)
    assert result.status[0] == Status.OK
    popt, perr, chi2_red = fit_window_curve_fit(y[0], v[0], q, chi, result.initial[0],
                                                result.lower[0], result.upper[0])
    perr = perr * max(1.0, np.sqrt(chi2_red))
    np.testing.assert_array_less(np.abs(result.params[0] - popt),
                                 1e-3 * np.abs(popt) + 1e-3 * perr)
    np.testing.assert_allclose(result.errors[0], perr, rtol=0.1)
    assert result.chi2_reduced[0] == pytest.approx(chi2_red, rel=1e-6)


def test_fixed_parameter_stays_put_and_matches_curve_fit():
    rng = np.random.default_rng(21)
    y, v, q, chi = simulate(rng, SAXS, true_params(SAXS, 500.0))
    lower, upper = default_bounds(q[None], chi[None])
    lower[0, 6] = upper[0, 6] = 0.0                      # flat background
    result = fit_windows(y, v, q, chi, lower, upper)
    assert result.status[0] == Status.OK
    assert result.params[0, 6] == 0.0 and result.errors[0, 6] == 0.0
    upper_scipy = upper[0].copy()
    upper_scipy[6] = 1e-12                               # curve_fit needs lower < upper
    popt, _, _ = fit_window_curve_fit(y[0], v[0], q, chi, result.initial[0], lower[0],
                                      upper_scipy)
    np.testing.assert_allclose(result.params[0, :6], popt[:6], rtol=1e-4)


# --- accuracy against the truth ---------------------------------------------------------

@pytest.mark.parametrize("layout", [SAXS, WAXS], ids=["saxs", "waxs"])
def test_centre_accuracy_requirement_at_a_few_hundred_counts(layout):
    """q0 within 0.2 % and chi0 within 0.3 deg in >= 95 % of fits.

    "A few hundred counts" is read as the peak height in counts per bin: with a few hundred
    counts *integrated* the Cramer-Rao bound alone (sigma_q / sqrt(N) = 0.6 % of q0 for the
    SAXS peak at N = 300) rules the requirement out; ``test_reported_errors_...`` covers
    that regime.
    """
    rng = np.random.default_rng(2024)
    params = true_params(layout, 200.0, background_counts=5.0)
    y, v, q, chi = simulate(rng, layout, params, n_windows=200)
    result = fit_windows(y, v, q, chi)
    ok = result.status == Status.OK
    within = (ok & (np.abs(result.params[:, 1] / params[1] - 1) <= 0.002)
              & (np.abs(result.params[:, 2] - params[2]) <= 0.3))
    assert within.mean() >= 0.95, (ok.mean(), within.mean())
    off_centre = true_params(layout, 200.0, background_counts=5.0,
                             q0=q[0] + 0.25 * (q[-1] - q[0]), chi0=160.0)
    y, v, q, chi = simulate(rng, layout, off_centre, n_windows=100)
    result = fit_windows(y, v, q, chi)
    within = ((result.status == Status.OK)
              & (np.abs(result.params[:, 1] / off_centre[1] - 1) <= 0.002)
              & (np.abs(result.params[:, 2] - off_centre[2]) <= 0.3))
    assert within.mean() >= 0.95


@pytest.mark.parametrize("layout", [SAXS, WAXS], ids=["saxs", "waxs"])
def test_reported_errors_describe_the_scatter_at_low_counts(layout):
    """3000 counts in the peak, 2 counts per bin of background.

    With variances from the expected counts the centre pulls have rms ~1 and I0 is unbiased.
    With variances from the observed counts (Neyman's chi2, what a window builder gets from
    the raw counts) the errors come out up to ~1.5x too small and I0 biased low at such
    counts: the looser band documents that.
    """
    rng = np.random.default_rng(99)
    q, chi = axes(layout)
    n_pix = layout["pixels_per_bin"]
    params = true_params(layout, 1.0)
    params[0] = 3000.0 * (q[1] - q[0]) * (chi[1] - chi[0]) / n_pix   # 3000 counts in the peak
    y, v_observed, q, chi = simulate(rng, layout, params, n_windows=200)
    v_expected = np.broadcast_to(gauss2d_model(params, q, chi) / n_pix**2, y.shape)
    for variance, pull_band, i0_band in ((v_expected, (0.85, 1.2), 0.03),
                                         (v_observed, (0.8, 1.6), 0.2)):
        result = fit_windows(y, variance, q, chi)
        ok = result.status == Status.OK
        assert ok.mean() >= 0.95
        for k in (1, 2):
            pulls = (result.params[ok, k] - params[k]) / result.errors[ok, k]
            assert abs(pulls.mean()) < 0.25
            assert pull_band[0] < pulls.std() < pull_band[1], (k, pulls.std())
        assert result.params[ok, 0].mean() == pytest.approx(params[0], rel=i0_band)


# --- robustness ---------------------------------------------------------------------------

def _fit_one(y, v, q, chi, **kwargs):
    return fit_windows(np.asarray(y)[None], np.asarray(v)[None], q, chi, **kwargs)


def test_bad_and_empty_windows_get_status_codes_and_nan():
    q, chi = axes(SAXS)
    rng = np.random.default_rng(5)
    y_peak, v_peak, _, _ = simulate(rng, SAXS, true_params(SAXS, 300.0))
    zeros = np.zeros((N_Q, N_CHI))
    cases = {
        "empty": (zeros + np.nan, zeros + np.inf, q, chi, Status.TOO_FEW_POINTS),
        "all_zero_variance_zero": (zeros, zeros, q, chi, Status.TOO_FEW_POINTS),
        "all_zero": (zeros, zeros + 1.0, q, chi, Status.NOT_SIGNIFICANT),
        "nan_axis": (y_peak[0], v_peak[0], np.where(np.arange(N_Q) == 3, np.nan, q), chi,
                     Status.INVALID_INPUT),
        "axis_not_increasing": (y_peak[0], v_peak[0], q, chi[::-1], Status.INVALID_INPUT),
        "negative_variance": (y_peak[0], np.where(np.arange(N_CHI) == 7, -1.0, v_peak[0]), q,
                              chi, Status.INVALID_INPUT),
        "infinite_count": (np.where(np.arange(N_CHI) == 7, np.inf, y_peak[0]), v_peak[0], q,
                           chi, Status.INVALID_INPUT),
    }
    few = np.full((N_Q, N_CHI), np.nan)
    few[18:21, 40:45] = y_peak[0, 18:21, 40:45]           # 15 valid bins < 3 x 7
    cases["too_few_points"] = (few, v_peak[0], q, chi, Status.TOO_FEW_POINTS)
    for name, (y, v, q_w, chi_w, expected) in cases.items():
        result = _fit_one(y, v, q_w, chi_w)
        assert result.status[0] == expected, name
        assert np.all(np.isnan(result.params[0])) and np.all(np.isnan(result.errors[0])), name
        assert np.all(np.isfinite(result.initial[0])) or expected == Status.INVALID_INPUT, name


def test_peak_less_windows_are_not_significant():
    rng = np.random.default_rng(8)
    for layout in (SAXS, WAXS):
        y, v, q, chi = simulate(rng, layout, true_params(layout, 0.0, background_counts=3.0),
                                n_windows=100)
        result = fit_windows(y, v, q, chi)
        assert np.mean(result.status == Status.NOT_SIGNIFICANT) >= 0.9
        assert np.mean(result.status == Status.OK) <= 0.075      # false positives at 3 sigma
        assert np.all(np.isfinite(result.raw_params[result.status == Status.NOT_SIGNIFICANT]))


@pytest.mark.parametrize("centre", [(0.45, 175.0), (0.95, 175.0), (0.7, 135.0), (0.7, 216.0)])
def test_peak_at_the_window_edge(centre):
    rng = np.random.default_rng(13)
    y, v, q, chi = simulate(rng, SAXS, true_params(SAXS, 1000.0, q0=centre[0], chi0=centre[1]))
    result = fit_windows(y, v, q, chi)
    assert result.status[0] == Status.CENTRE_AT_EDGE
    assert np.all(np.isnan(result.params[0]))
    assert np.all(np.isfinite(result.raw_params[0]))


def test_iteration_cap_gives_not_converged():
    rng = np.random.default_rng(17)
    y, v, q, chi = simulate(rng, WAXS, true_params(WAXS, 500.0))
    result = fit_windows(y, v, q, chi, settings=FitSettings(max_iterations=1))
    assert result.status[0] == Status.NOT_CONVERGED and result.n_iterations[0] == 1
    result = fit_windows(y, v, q, chi)
    assert result.status[0] == Status.OK and 1 < result.n_iterations[0] < 30


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_q=st.integers(2, 9), n_chi=st.integers(2, 9), seed=st.integers(0, 2**31),
       special=st.sampled_from([0.0, np.nan, np.inf, -np.inf, -1.0, 1e300]),
       fraction=st.floats(0.0, 1.0))
def test_kernel_never_raises_on_garbage(n_q, n_chi, seed, special, fraction):
    rng = np.random.default_rng(seed)
    y = rng.normal(5.0, 3.0, size=(3, n_q, n_chi))
    v = rng.uniform(0.0, 4.0, size=y.shape)
    y[rng.random(y.shape) < fraction] = special
    v[rng.random(v.shape) < fraction / 2] = special
    q = np.linspace(1.0, 2.0, n_q)
    chi = np.linspace(-10.0, 10.0, n_chi)
    result = fit_windows(y, v, q, chi, settings=FitSettings(min_valid_bins=0))
    assert set(result.status.tolist()) <= {int(s) for s in Status}
    ok = result.status == Status.OK
    assert np.all(np.isfinite(result.params[ok])) and np.all(np.isnan(result.params[~ok]))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shift_q=st.floats(-0.15, 0.15), shift_chi=st.floats(-25.0, 25.0),
       offset_chi=st.floats(-360.0, 360.0))
def test_a_shifted_peak_gives_a_shifted_centre(shift_q, shift_chi, offset_chi):
    """Noise-free peak moved inside the window: the fit follows it exactly; the same noisy
    window on a chi axis offset by any angle gives a centre offset by that angle."""
    q, chi = axes(SAXS)
    params = true_params(SAXS, 300.0, q0=0.7 + shift_q, chi0=175.0 + shift_chi)
    y = gauss2d_model(params, q, chi)
    result = fit_windows(y[None], np.maximum(y, 1.0)[None], q, chi)
    assert result.status[0] == Status.OK
    np.testing.assert_allclose(result.params[0, 1:3], params[1:3], atol=1e-7)
    rng = np.random.default_rng(1)
    y, v, _, _ = simulate(rng, SAXS, params)
    base = fit_windows(y, v, q, chi)
    moved = fit_windows(y, v, q, chi + offset_chi)
    assert moved.status[0] == base.status[0]
    if base.status[0] == Status.OK:
        assert moved.params[0, 2] - offset_chi == pytest.approx(base.params[0, 2], abs=1e-6)
        np.testing.assert_allclose(moved.params[0, [0, 1, 3, 4]], base.params[0, [0, 1, 3, 4]],
                                   rtol=1e-6)


# --- batch plumbing and validation -------------------------------------------------------

def test_parallel_kernel_equals_serial_and_batch_equals_single():
    rng = np.random.default_rng(31)
    y, v, q, chi = simulate(rng, WAXS, true_params(WAXS, 300.0), n_windows=6)
    y[2] = np.nan
    serial = fit_windows(y, v, q, chi)
    parallel = fit_windows(y, v, q, chi, parallel=True)
    for field in ("params", "errors", "status", "chi2_reduced", "n_iterations", "raw_params"):
        np.testing.assert_array_equal(getattr(serial, field), getattr(parallel, field))
    single = fit_windows(y[4], v[4], q, chi)
    np.testing.assert_array_equal(single.params[0], serial.params[4])


def test_fit_windows_into_writes_caller_owned_arrays_and_validates():
    rng = np.random.default_rng(41)
    y, v, q, chi = simulate(rng, SAXS, true_params(SAXS, 300.0), n_windows=2)
    out = dict(params=np.empty((2, 7)), errors=np.empty((2, 7)), status=np.empty(2, np.int32),
               chi2_reduced=np.empty(2), n_iterations=np.empty(2, np.int32))
    fit_windows_into(y, v, np.stack([q, q]), np.stack([chi, chi]), **out)
    assert np.all(out["status"] == Status.OK)
    with pytest.raises(ValueError, match="status"):
        fit_windows_into(y, v, q, chi, **{**out, "status": np.empty(2, np.int64)})
    with pytest.raises(ValueError, match="variance"):
        fit_windows_into(y, v[:, :-1], q, chi, **out)
    with pytest.raises(ValueError, match="mean_counts"):
        fit_windows_into(y[0, 0], v, q, chi, **out)
    with pytest.raises(ValueError, match="q_centres_nm"):
        fit_windows_into(y, v, q[:-1], chi, **out)
    with pytest.raises(ValueError, match="dtype"):
        fit_windows_into(y.astype(complex), v, q, chi, **out)
    lower = np.full(7, np.nan)
    lower[1] = 0.9
    upper = np.full(7, np.nan)
    upper[1] = 0.8
    with pytest.raises(ValueError, match="q0_nm"):
        fit_windows_into(y, v, q, chi, lower=lower, upper=upper, **out)
    with pytest.raises(ConfigurationError, match="min_significance"):
        FitSettings(min_significance=-1.0)


def test_warm_up_runs():
    warm_up()
