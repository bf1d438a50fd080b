"""Williamson-Hall fit and per-frame broadening (science.md 5)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.errors import ConfigurationError
from analysis.peak_fits import PeakFits
from analysis.status import Status
from analysis.williamson_hall import (
    fit_williamson_hall, fit_williamson_hall_peaks, frame_broadening, orientation_spread_deg,
    orientational_disorder_deg, radial_distortion, size_broadening_nm,
)

AVERAGE_Q_NM = [10.930, 15.442, 21.900]
AVERAGE_FWHM_NM = [0.736, 0.784, 0.856]


def test_average_pattern_values_from_science_md():
    """g about 2.3 % as published; L from the formula is 7.77 nm (K 0.86), not the paper's 6.8."""
    fit86 = fit_williamson_hall(AVERAGE_Q_NM, AVERAGE_FWHM_NM, K=0.86)
    fit85 = fit_williamson_hall(AVERAGE_Q_NM, AVERAGE_FWHM_NM, K=0.85)
    assert fit86.status == Status.OK and fit85.status == Status.OK
    assert fit86.g == pytest.approx(0.023, abs=0.001)
    assert fit86.L_nm == pytest.approx(7.77, abs=0.01)
    assert fit85.L_nm == pytest.approx(7.68, abs=0.01)
    assert fit86.g == pytest.approx(fit85.g)
    # reference: NumPy straight line through (q^2, w^2)
    slope, intercept = np.polyfit(np.square(AVERAGE_Q_NM), np.square(AVERAGE_FWHM_NM), 1)
    assert fit86.L_nm == pytest.approx(2 * math.pi * 0.86 / math.sqrt(intercept))
    assert fit86.g == pytest.approx(math.sqrt(slope))
    # one residual degree of freedom: the scatter gives finite, small errors
    assert 0 < fit86.errors.L_nm < 0.5 and 0 < fit86.errors.g < 0.005
    L_nm, g, errors, status = fit86  # unpacks as documented
    assert (L_nm, g, errors.L_nm, status) == (fit86.L_nm, fit86.g, fit86.errors.L_nm, Status.OK)


def test_exact_synthetic_data_recovered():
    L_nm, g, K = 8.0, 0.02, 0.86
    q = np.array([10.9, 15.4, 21.9, 24.4])
    w = np.sqrt((2 * math.pi * K / L_nm) ** 2 + (g * q) ** 2)
    fit = fit_williamson_hall(q, w, K)
    assert fit.L_nm == pytest.approx(L_nm) and fit.g == pytest.approx(g)
    assert fit.errors.L_nm == pytest.approx(0.0, abs=1e-6)


def test_weighted_fit_matches_numpy_polyfit():
    q = np.array([10.93, 15.44, 21.90])
    w = np.array([0.736, 0.784, 0.856])
    w_err = np.array([0.01, 0.02, 0.015])
    fit = fit_williamson_hall(q, w, 0.86, fwhm_err_nm=w_err)
    sigma_y = 2 * w * w_err
    (slope, intercept), cov = np.polyfit(q ** 2, w ** 2, 1, w=1 / sigma_y, cov="unscaled")
    assert fit.L_nm == pytest.approx(2 * math.pi * 0.86 / math.sqrt(intercept))
    assert fit.g == pytest.approx(math.sqrt(slope))
    assert fit.errors.L_nm == pytest.approx(fit.L_nm * math.sqrt(cov[1, 1]) / (2 * intercept))
    assert fit.errors.g == pytest.approx(math.sqrt(cov[0, 0]) / (2 * math.sqrt(slope)))


def test_vectorised_fit_statuses():
    q = np.array([
        AVERAGE_Q_NM,
        [10.93, np.nan, np.nan],          # one peak: nothing to fit
        [15.0, 15.0, 15.0],               # one q: slope undetermined
        [10.93, 15.44, 21.90],            # widths shrink with q: negative g^2
        [10.93, 15.44, 21.90],            # intercept negative: no real L
        [10.93, np.nan, 21.90],           # two peaks: exact line, errors unknown
    ])
    w = np.array([
        AVERAGE_FWHM_NM,
        [0.7, np.nan, np.nan],
        [0.7, 0.8, 0.9],
        [0.9, 0.8, 0.7],
        [0.1, 0.4, 0.6],
        [0.736, np.nan, 0.856],
    ])
    fit = fit_williamson_hall(q, w)
    assert fit.status.tolist() == [Status.OK, Status.MISSING_PEAK, Status.SINGULAR,
                                   Status.NEGATIVE_RADICAND, Status.NEGATIVE_RADICAND, Status.OK]
    assert np.isnan(fit.L_nm[1:5]).all() and np.isnan(fit.g[1:5]).all()
    assert np.isfinite(fit.L_nm[5]) and np.isnan(fit.errors.L_nm[5])
    assert fit.L_nm[0] == pytest.approx(7.773, abs=1e-3)


def test_per_frame_g_q_by_hand():
    L_nm, K = 7.77, 0.86
    s = 2 * math.pi * K / L_nm
    q = np.array([10.93, 15.44, 21.90, 15.44])
    w = np.array([0.80, 0.85, 0.95, s * 0.9])     # last one below the size broadening
    present = np.array([True, True, True, True])
    g_q, status, n_used = radial_distortion(q, w, present, L_nm, K)
    expected = np.mean([math.sqrt(w[i] ** 2 - s ** 2) / q[i] for i in range(3)])
    assert g_q == pytest.approx(expected) and status == Status.OK and n_used == 3
    # all below: NaN with the reason; nothing present: missing
    g_q, status, n_used = radial_distortion(q, np.full(4, 0.5 * s), present, L_nm, K)
    assert np.isnan(g_q) and status == Status.NEGATIVE_RADICAND and n_used == 0
    g_q, status, _ = radial_distortion(q, w, np.zeros(4, bool), L_nm, K)
    assert np.isnan(g_q) and status == Status.MISSING_PEAK


def test_per_frame_delta_psi_round_trip():
    """Azimuthal widths built for a known orientational spread give it back (Lapkin 16.1 deg)."""
    L_nm, K = 6.8, 0.86
    s = size_broadening_nm(L_nm, K)
    spread_rad = math.radians(16.1)
    q = np.array([10.93, 21.90, 15.44, 15.44])
    w_chi_deg = np.degrees(np.sqrt(s ** 2 + (spread_rad * q) ** 2) / q)
    delta_psi, status, n_used = orientation_spread_deg(q, w_chi_deg, np.ones(4, bool), L_nm, K)
    assert delta_psi == pytest.approx(16.1) and status == Status.OK and n_used == 4


def test_frame_broadening_from_peak_fits_with_missing_peak():
    L_nm, K = 7.77, 0.86
    s = 2 * math.pi * K / L_nm
    peaks = {
        "waxs_010": {"i0": 1.0, "q0_nm": 10.93, "chi0_deg": 130.0, "fwhm_q_nm": 0.8, "fwhm_chi_deg": 12.0},
        "waxs_020": {"i0": 1.0, "q0_nm": 21.90, "chi0_deg": 130.0, "fwhm_q_nm": 0.9, "fwhm_chi_deg": 10.0},
        "waxs_110": {"status": int(Status.NOT_CONVERGED)},
        "waxs_m110": {"i0": 1.0, "q0_nm": 15.44, "chi0_deg": 175.0, "fwhm_q_nm": 0.5 * s, "fwhm_chi_deg": 11.0},
    }
    result = frame_broadening(PeakFits.from_peaks(peaks), L_nm, K)
    expected_g = np.mean([math.sqrt(0.8 ** 2 - s ** 2) / 10.93, math.sqrt(0.9 ** 2 - s ** 2) / 21.90])
    assert result.g_q == pytest.approx(expected_g) and result.g_q_n_peaks == 2
    expected_dpsi = np.mean([math.sqrt((math.radians(w) * q) ** 2 - s ** 2) / q
                             for w, q in ((12.0, 10.93), (10.0, 21.90), (11.0, 15.44))])
    assert result.delta_psi_deg == pytest.approx(math.degrees(expected_dpsi)) and result.delta_psi_n_peaks == 3
    values, statuses = result.map_values()
    assert set(values) == {"g_q", "delta_psi_deg", "orientational_disorder_deg"} and statuses["g_q"] == Status.OK
    # Hiller S4-S8 per present peak with s = L and eps = g_q, then the mean
    expected_disorder = np.mean([math.degrees(math.sqrt(math.radians(w) ** 2 - (2 * math.pi * K / (L_nm * q)) ** 2
                                                         - expected_g ** 2))
                                 for w, q in ((12.0, 10.93), (10.0, 21.90), (11.0, 15.44))])
    assert result.orientational_disorder_deg == pytest.approx(expected_disorder)
    assert statuses["orientational_disorder_deg"] == Status.OK


def test_fit_from_peak_fits_average_pattern():
    peaks = {name: {"i0": 1.0, "q0_nm": q, "chi0_deg": 0.0, "fwhm_q_nm": w}
             for name, q, w in zip(("waxs_010", "waxs_110", "waxs_020"), AVERAGE_Q_NM, AVERAGE_FWHM_NM)}
    fit = fit_williamson_hall_peaks(PeakFits.from_peaks(peaks))
    assert fit.L_nm == pytest.approx(7.773, abs=1e-3) and fit.status == Status.OK


def test_hiller_orientational_disorder():
    dphi, status = orientational_disorder_deg(20.0, 8.0, 10.93, 0.01, K=0.86)
    size = 2 * math.pi * 0.86 / (8.0 * 10.93)
    expected = math.degrees(math.sqrt(math.radians(20.0) ** 2 - size ** 2 - 0.01 ** 2))
    assert dphi == pytest.approx(expected) and status == Status.OK
    dphi, status = orientational_disorder_deg([1.0, np.nan], 8.0, 10.93, 0.01)
    assert np.isnan(dphi).all()
    assert status.tolist() == [Status.NEGATIVE_RADICAND, Status.MISSING_PEAK]


def test_bad_configuration_raises():
    with pytest.raises(ConfigurationError, match="L_nm"):
        radial_distortion([10.0], [1.0], [True], L_nm=0.0)
    with pytest.raises(ConfigurationError, match="K"):
        fit_williamson_hall(AVERAGE_Q_NM, AVERAGE_FWHM_NM, K=-1)
    with pytest.raises(ConfigurationError, match="shape"):
        fit_williamson_hall([1.0, 2.0], [1.0])
