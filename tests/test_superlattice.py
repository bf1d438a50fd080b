"""Superlattice parameters (science.md 3) against lattices built from real-space vectors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from analysis.angles import circular_mean_deg, wrap_deg
from analysis.peak_fits import PeakFits
from analysis.status import Status
from analysis.superlattice import average_friedel_pair, superlattice_parameters


def reciprocal_peaks(a1_nm, a2_nm, phi1_deg, phi2_deg):
    """The four first-order peaks (q, chi) of a 2D lattice with basis a1, a2 at phi1, phi2.

    Direct computation: b_i . a_j = 2 pi delta_ij; peaks 1..4 = b1, b2, -b1, -b2.
    """
    a1 = a1_nm * np.array([math.cos(math.radians(phi1_deg)), math.sin(math.radians(phi1_deg))])
    a2 = a2_nm * np.array([math.cos(math.radians(phi2_deg)), math.sin(math.radians(phi2_deg))])
    det = a1[0] * a2[1] - a1[1] * a2[0]
    b1 = 2 * math.pi * np.array([a2[1], -a2[0]]) / det
    b2 = 2 * math.pi * np.array([-a1[1], a1[0]]) / det
    assert np.isclose(b1 @ a1, 2 * math.pi) and np.isclose(b1 @ a2, 0)
    assert np.isclose(b2 @ a2, 2 * math.pi) and np.isclose(b2 @ a1, 0)
    out = {}
    for name, vector in (("saxs_1", b1), ("saxs_2", b2), ("saxs_3", -b1), ("saxs_4", -b2)):
        out[name] = {"i0": 1000.0, "q0_nm": float(np.hypot(*vector)),
                     "chi0_deg": math.degrees(math.atan2(vector[1], vector[0])),
                     "fwhm_q_nm": 0.1, "fwhm_chi_deg": 5.0}
    return out


def fits_of(peaks):
    return PeakFits.from_peaks(peaks)


def test_square_lattice_10nm():
    result = superlattice_parameters(fits_of(reciprocal_peaks(10.0, 10.0, 0.0, 90.0)))
    assert result.status == Status.OK
    assert result.a1_nm == pytest.approx(10.0) and result.a2_nm == pytest.approx(10.0)
    assert result.gamma_deg == pytest.approx(90.0)
    assert result.phi_deg == pytest.approx(45.0)
    assert result.phi1_deg == pytest.approx(0.0, abs=1e-9) and result.phi2_deg == pytest.approx(90.0)
    assert result.a_mean_nm == pytest.approx(10.0) and result.a_ratio == pytest.approx(1.0)
    # Hiller S11/S12 agrees for the perfect lattice
    assert result.gamma_hiller_deg == pytest.approx(90.0)
    assert result.a_sc_nm == pytest.approx(10.0)
    assert result.pair1.n_peaks == 2 and result.pair2.n_peaks == 2


def test_oblique_lattice_gamma_80_from_real_space_vectors():
    a1, a2, phi1, gamma = 9.0, 11.0, 30.0, 80.0
    peaks = reciprocal_peaks(a1, a2, phi1, phi1 + gamma)
    result = superlattice_parameters(fits_of(peaks))
    assert result.status == Status.OK
    assert result.a1_nm == pytest.approx(a1) and result.a2_nm == pytest.approx(a2)
    assert result.gamma_deg == pytest.approx(gamma)
    assert result.phi1_deg == pytest.approx(phi1) and result.phi2_deg == pytest.approx(phi1 + gamma)
    assert result.phi_deg == pytest.approx(phi1 + gamma / 2)
    assert result.a_mean_nm == pytest.approx(10.0) and result.a_ratio == pytest.approx(a2 / a1)
    # Lapkin's omega: reciprocal vector azimuths
    assert result.pair1.omega_deg == pytest.approx(phi1 + gamma - 90)
    assert result.pair2.omega_deg == pytest.approx(phi1 + 90)
    # Hiller's gamma is the angle between the reciprocal vectors: 180 - gamma for an oblique cell
    assert result.gamma_hiller_deg == pytest.approx(180.0 - gamma)
    q_mean = np.mean([p["q0_nm"] for p in peaks.values()])
    assert result.a_sc_nm == pytest.approx(2 * math.pi / (q_mean * math.sin(math.radians(gamma))))


@pytest.mark.parametrize("seed", range(6))
def test_random_lattices_either_handedness(seed):
    rng = np.random.default_rng(seed)
    a1, a2 = rng.uniform(7, 13, 2)
    phi1 = rng.uniform(-180, 180)
    gamma = rng.uniform(60, 120) * (1 if seed % 2 == 0 else -1)  # odd seeds: left-handed basis
    result = superlattice_parameters(fits_of(reciprocal_peaks(a1, a2, phi1, phi1 + gamma)))
    assert result.status == Status.OK
    assert result.a1_nm == pytest.approx(a1) and result.a2_nm == pytest.approx(a2)
    assert result.gamma_deg == pytest.approx(abs(gamma))
    # phi is the mean line (an axis): compare modulo 180, reported in [0, 180)
    assert 0.0 <= result.phi_deg < 180.0
    assert wrap_deg(result.phi_deg - (phi1 + gamma / 2), 0, 180) == pytest.approx(0.0, abs=1e-9)
    assert wrap_deg(result.phi1_deg - phi1) == pytest.approx(0.0, abs=1e-9)


def test_result_does_not_depend_on_angle_branch():
    peaks = reciprocal_peaks(9.5, 10.5, 40.0, 130.0)
    reference = superlattice_parameters(fits_of(peaks))
    rng = np.random.default_rng(1)
    for _ in range(10):
        shifted = {name: dict(p, chi0_deg=p["chi0_deg"] + 360.0 * rng.integers(-2, 3)) for name, p in peaks.items()}
        result = superlattice_parameters(fits_of(shifted))
        for field in ("a1_nm", "a2_nm", "gamma_deg", "phi_deg", "a_sc_nm", "gamma_hiller_deg", "phi1_deg"):
            assert getattr(result, field) == pytest.approx(getattr(reference, field)), field


def test_window_style_branches_220_vs_minus_140():
    """A peak model window crossing +-180 reports saxs_3 at 220 instead of -140."""
    peaks = reciprocal_peaks(10.0, 10.0, 40.0, 130.0)
    low = superlattice_parameters(fits_of(peaks))
    assert peaks["saxs_3"]["chi0_deg"] < 0
    high = dict(peaks, saxs_3=dict(peaks["saxs_3"], chi0_deg=peaks["saxs_3"]["chi0_deg"] + 360))
    result = superlattice_parameters(fits_of(high))
    assert result.phi_deg == pytest.approx(low.phi_deg) and result.gamma_deg == pytest.approx(low.gamma_deg)
    assert result.a_sc_nm == pytest.approx(low.a_sc_nm)


def test_friedel_pair_average_across_180():
    peaks = {
        "saxs_1": {"i0": 100.0, "q0_nm": 0.60, "chi0_deg": 179.0, "fwhm_q_nm": 0.10, "fwhm_chi_deg": 4.0},
        "saxs_3": {"i0": 300.0, "q0_nm": 0.62, "chi0_deg": 0.0, "fwhm_q_nm": 0.14, "fwhm_chi_deg": 6.0},
    }
    pair = average_friedel_pair(fits_of(peaks), "saxs_1", "saxs_3")
    assert pair.i0 == pytest.approx(200.0) and pair.q0_nm == pytest.approx(0.61)
    assert pair.omega_deg == pytest.approx(179.5)  # the naive half sum would give -0.5
    assert pair.fwhm_q_nm == pytest.approx(0.12) and pair.fwhm_chi_deg == pytest.approx(5.0)
    assert pair.n_peaks == 2 and pair.status == Status.OK


def test_one_peak_of_a_pair_missing_uses_the_other():
    peaks = reciprocal_peaks(9.0, 11.0, 30.0, 110.0)
    reference = superlattice_parameters(fits_of(peaks))
    peaks["saxs_3"] = {"status": int(Status.NOT_SIGNIFICANT)}
    result = superlattice_parameters(fits_of(peaks))
    assert result.status == Status.OK
    assert result.pair1.n_peaks == 1 and result.pair2.n_peaks == 2
    assert result.a1_nm == pytest.approx(reference.a1_nm) and result.gamma_deg == pytest.approx(80.0)
    values, statuses = result.map_values()
    assert values["saxs_pair1_n_peaks"] == 1 and statuses["saxs_pair1_n_peaks"] == Status.OK


def test_both_peaks_of_a_pair_missing_gives_missing_peak():
    peaks = reciprocal_peaks(10.0, 10.0, 0.0, 90.0)
    peaks["saxs_2"] = dict(peaks["saxs_2"], status=int(Status.NOT_CONVERGED))
    peaks["saxs_4"] = dict(peaks["saxs_4"], q0_nm=math.nan)  # status OK but unusable numbers
    result = superlattice_parameters(fits_of(peaks))
    assert result.status == Status.MISSING_PEAK and result.hiller_status == Status.MISSING_PEAK
    for field in ("a1_nm", "a2_nm", "gamma_deg", "phi_deg", "a_sc_nm", "gamma_hiller_deg"):
        assert np.isnan(getattr(result, field))
    assert result.pair1.status == Status.OK and result.pair2.status == Status.MISSING_PEAK
    assert result.pair1.q0_nm == pytest.approx(2 * math.pi / 10.0)


def test_model_without_saxs_peaks():
    fits = PeakFits.from_peaks({"waxs_010": {"q0_nm": 10.9, "chi0_deg": 130.0, "i0": 5.0}})
    result = superlattice_parameters(fits)
    assert result.status == Status.MISSING_PEAK and np.isnan(result.a_mean_nm)


def test_degenerate_basis_is_singular():
    peaks = {name: {"i0": 1.0, "q0_nm": 0.6, "chi0_deg": chi}
             for name, chi in (("saxs_1", 0.0), ("saxs_2", 180.0), ("saxs_3", 180.0), ("saxs_4", 0.0))}
    result = superlattice_parameters(fits_of(peaks))
    assert result.status == Status.SINGULAR and np.isnan(result.a1_nm)


def test_vectorised_over_frames_matches_single_frames():
    lattices = [(10.0, 10.0, 0.0, 90.0), (9.0, 11.0, 30.0, 110.0), (8.0, 8.5, 100.0, 195.0),
                (12.0, 12.0, -20.0, 75.0), (7.8, 10.7, 45.0, 140.0), (9.9, 9.9, 60.0, 150.0)]
    singles = [reciprocal_peaks(*lat) for lat in lattices]
    singles[4]["saxs_2"] = {"status": int(Status.NOT_SIGNIFICANT)}
    singles[4]["saxs_4"] = {"status": int(Status.TOO_FEW_POINTS)}
    stacked = {name: {key: np.array([s[name].get(key, np.nan if key != "status" else 0) for s in singles]).reshape(3, 2)
                      for key in ("i0", "q0_nm", "chi0_deg", "fwhm_q_nm", "fwhm_chi_deg", "status")}
               for name in ("saxs_1", "saxs_2", "saxs_3", "saxs_4")}
    result = superlattice_parameters(PeakFits.from_peaks(stacked))
    assert result.a1_nm.shape == (3, 2) and result.status.dtype == np.int32
    for index, single in enumerate(singles):
        one = superlattice_parameters(fits_of(single))
        row, col = divmod(index, 2)
        assert result.status[row, col] == one.status
        np.testing.assert_allclose(result.a1_nm[row, col], one.a1_nm)
        np.testing.assert_allclose(result.phi_deg[row, col], one.phi_deg)
    assert result.status[2, 0] == Status.MISSING_PEAK


@pytest.mark.parametrize("q_nm, a_published_nm", [(0.37, 17.0), (0.51, 12.3), (0.85, 7.39)])
def test_hiller_published_square_lattice_magnitudes(q_nm, a_published_nm):
    a = 2 * math.pi / q_nm
    result = superlattice_parameters(fits_of(reciprocal_peaks(a, a, 10.0, 100.0)))
    assert result.a_sc_nm == pytest.approx(a_published_nm, abs=0.05)


def test_error_propagation_against_finite_differences():
    peaks = reciprocal_peaks(9.0, 11.0, 30.0, 110.0)
    for name in peaks:
        peaks[name].update(q0_err_nm=0.002, chi0_err_deg=0.5)
    result = superlattice_parameters(fits_of(peaks))
    # a1 = 2 pi / (q1 sin gamma); pair means of two independent peaks: sigma / sqrt(2)
    q1 = result.pair1.q0_nm
    sigma_q1 = 0.002 / math.sqrt(2)
    sigma_gamma = math.radians(math.hypot(0.5 / math.sqrt(2), 0.5 / math.sqrt(2)))
    gamma = math.radians(80.0)
    d_a1_dq = -2 * math.pi / (q1 ** 2 * math.sin(gamma))
    d_a1_dgamma = -2 * math.pi * math.cos(gamma) / (q1 * math.sin(gamma) ** 2)
    expected = math.hypot(d_a1_dq * sigma_q1, d_a1_dgamma * sigma_gamma)
    assert result.errors["a1_nm"] == pytest.approx(expected, rel=1e-6)
    assert result.errors["gamma_deg"] == pytest.approx(math.degrees(sigma_gamma))
    values, _ = result.map_values()
    assert values["a1_err_nm"] == pytest.approx(expected, rel=1e-6)


def test_circular_mean_helpers():
    assert circular_mean_deg([350.0, 10.0]) == pytest.approx(0.0, abs=1e-9)
    assert circular_mean_deg([np.nan, 200.0]) == pytest.approx(-160.0)
    assert np.isnan(circular_mean_deg([np.nan, np.nan]))
    assert np.isnan(circular_mean_deg([0.0, 180.0]))
    assert circular_mean_deg([175.0, 5.0], period_deg=180.0) == pytest.approx(0.0, abs=1e-9)
    assert wrap_deg(-140.0, 180.0) == pytest.approx(220.0)
    assert wrap_deg(265.0, 90.0, 180.0) == pytest.approx(85.0)


@settings(max_examples=60, deadline=None)
@given(a1=st.floats(5.0, 20.0), a2=st.floats(5.0, 20.0), phi1=st.floats(-720.0, 720.0),
       gamma=st.one_of(st.floats(20.0, 160.0), st.floats(-160.0, -20.0)),
       shifts=st.lists(st.integers(-2, 2), min_size=4, max_size=4))
def test_property_any_lattice_any_branch(a1, a2, phi1, gamma, shifts):
    peaks = reciprocal_peaks(a1, a2, phi1, phi1 + gamma)
    for name, shift in zip(("saxs_1", "saxs_2", "saxs_3", "saxs_4"), shifts):
        peaks[name]["chi0_deg"] += 360.0 * shift
    result = superlattice_parameters(fits_of(peaks))
    assert result.status == Status.OK
    assert result.a1_nm == pytest.approx(a1, rel=1e-9) and result.a2_nm == pytest.approx(a2, rel=1e-9)
    assert result.gamma_deg == pytest.approx(abs(gamma), abs=1e-9)
    assert wrap_deg(result.phi_deg - (phi1 + gamma / 2), 0, 180) == pytest.approx(0.0, abs=1e-8)
    assert result.gamma_hiller_deg == pytest.approx(180.0 - abs(gamma), abs=1e-9)
    assert result.a_sc_nm == pytest.approx(
        2 * math.pi / (np.mean([p["q0_nm"] for p in peaks.values()]) * math.sin(math.radians(abs(gamma)))))
