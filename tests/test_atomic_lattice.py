"""Atomic lattice parameters (science.md 4): psi, Delta, <I_AL>, a_AL, Hiller a/b."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.atomic_lattice import atomic_lattice_parameters, hiller_cell
from analysis.peak_fits import PeakFits
from analysis.status import Status


def cubic_peaks(a_nm=0.574, psi_deg=130.0, intensities=(400.0, 100.0, 300.0, 200.0)):
    """WAXS peaks of a cubic cell with [010] at psi ([100] at psi - 90, counter-clockwise)."""
    q100 = 2 * math.pi / a_nm
    return {
        "waxs_010": {"i0": intensities[0], "q0_nm": q100, "chi0_deg": psi_deg, "q0_err_nm": 0.01},
        "waxs_020": {"i0": intensities[1], "q0_nm": 2 * q100, "chi0_deg": psi_deg, "q0_err_nm": 0.01},
        "waxs_110": {"i0": intensities[2], "q0_nm": math.sqrt(2) * q100, "chi0_deg": psi_deg - 45, "q0_err_nm": 0.01},
        "waxs_m110": {"i0": intensities[3], "q0_nm": math.sqrt(2) * q100, "chi0_deg": psi_deg + 45, "q0_err_nm": 0.01},
    }


def test_perfect_cubic_cell():
    result = atomic_lattice_parameters(PeakFits.from_peaks(cubic_peaks()), phi_deg=85.0,
                                       phi_status=int(Status.OK))
    assert result["psi_deg"] == pytest.approx(130.0)
    assert result["psi_minus_phi_deg"] == pytest.approx(45.0)
    assert result["i_al"] == pytest.approx(250.0)
    assert result["a_al_nm"] == pytest.approx(0.574)
    for peak in ("waxs_010", "waxs_020", "waxs_110", "waxs_m110"):
        assert result[f"{peak}.a_al_nm"] == pytest.approx(0.574)
        assert result.statuses[f"{peak}.a_al_nm"] == Status.OK
    assert result["a_nm"] == pytest.approx(0.574) and result["b_nm"] == pytest.approx(0.574)
    assert all(int(s) == Status.OK for s in result.statuses.values())


def test_published_average_pattern_lattice_constants():
    """Lapkin: q100 10.930, q110 15.442, q200 21.900 -> a_AL = 0.574 nm; Hiller CsPbBr3 -> 0.584."""
    for (q100, q110, q200), published in (((10.930, 15.442, 21.900), 0.574), ((10.8, 15.2, 21.6), 0.584)):
        peaks = {"waxs_010": {"i0": 1.0, "q0_nm": q100, "chi0_deg": 0.0},
                 "waxs_110": {"i0": 1.0, "q0_nm": q110, "chi0_deg": -45.0},
                 "waxs_020": {"i0": 1.0, "q0_nm": q200, "chi0_deg": 0.0}}
        result = atomic_lattice_parameters(PeakFits.from_peaks(peaks))
        assert result["a_al_nm"] == pytest.approx(published, abs=0.002)
        assert result["waxs_010.a_al_nm"] == pytest.approx(2 * math.pi / q100)
        assert result["waxs_020.a_al_nm"] == pytest.approx(4 * math.pi / q200)
        assert result["waxs_110.a_al_nm"] == pytest.approx(2 * math.pi * math.sqrt(2) / q110)
        assert result.statuses["waxs_m110.a_al_nm"] == Status.MISSING_PEAK
        assert result["n_waxs_peaks"] == 3


def test_psi_branch_independent_near_180():
    reference = atomic_lattice_parameters(PeakFits.from_peaks(cubic_peaks(psi_deg=178.0)))
    assert reference["psi_deg"] == pytest.approx(178.0)
    peaks = cubic_peaks(psi_deg=178.0)
    peaks["waxs_m110"]["chi0_deg"] -= 360.0          # 223 reported as -137
    peaks["waxs_020"]["chi0_deg"] += 360.0
    result = atomic_lattice_parameters(PeakFits.from_peaks(peaks))
    assert result["psi_deg"] == pytest.approx(178.0)
    # a psi just past 180 stays continuous in the default [0, 360) branch
    result = atomic_lattice_parameters(PeakFits.from_peaks(cubic_peaks(psi_deg=-178.0)))
    assert result["psi_deg"] == pytest.approx(182.0)


def test_psi_is_the_circular_mean_of_the_peaks_present():
    peaks = cubic_peaks(psi_deg=120.0)
    peaks["waxs_010"]["chi0_deg"] = 122.0
    peaks["waxs_110"]["chi0_deg"] = 120.0 - 45 - 4.0
    peaks["waxs_020"]["status"] = int(Status.NOT_SIGNIFICANT)
    result = atomic_lattice_parameters(PeakFits.from_peaks(peaks))
    expected = math.degrees(math.atan2(sum(math.sin(math.radians(x)) for x in (122.0, 116.0, 120.0)),
                                       sum(math.cos(math.radians(x)) for x in (122.0, 116.0, 120.0))))
    assert result["psi_deg"] == pytest.approx(expected)
    assert result["i_al"] == pytest.approx((400.0 + 300.0 + 200.0) / 3)


def test_delta_treats_phi_as_an_axis_and_passes_its_status():
    fits = PeakFits.from_peaks(cubic_peaks(psi_deg=130.0))
    for phi in (85.0, 265.0, -95.0):
        assert atomic_lattice_parameters(fits, phi_deg=phi)["psi_minus_phi_deg"] == pytest.approx(45.0)
    missing = atomic_lattice_parameters(fits, phi_deg=np.nan, phi_status=int(Status.MISSING_PEAK))
    assert np.isnan(missing["psi_minus_phi_deg"])
    assert missing.statuses["psi_minus_phi_deg"] == Status.MISSING_PEAK
    singular = atomic_lattice_parameters(fits, phi_deg=np.nan, phi_status=int(Status.SINGULAR))
    assert singular.statuses["psi_minus_phi_deg"] == Status.SINGULAR
    assert atomic_lattice_parameters(fits).statuses["psi_minus_phi_deg"] == Status.MISSING_PEAK


def test_hiller_rectangular_cell_and_negative_radicand():
    a, b = 0.574, 0.590
    q100 = 2 * math.pi / a
    q110 = 2 * math.pi * math.sqrt(1 / a ** 2 + 1 / b ** 2)
    peaks = {"waxs_010": {"i0": 1.0, "q0_nm": q100, "chi0_deg": 0.0},
             "waxs_m110": {"i0": 1.0, "q0_nm": q110, "chi0_deg": 45.0}}
    a_nm, b_nm, a_status, b_status = hiller_cell(PeakFits.from_peaks(peaks))
    assert a_nm == pytest.approx(a) and b_nm == pytest.approx(b)
    assert a_status == Status.OK and b_status == Status.OK
    # (110) below (100): no real b
    peaks["waxs_m110"]["q0_nm"] = 0.9 * q100
    _, b_nm, _, b_status = hiller_cell(PeakFits.from_peaks(peaks))
    assert np.isnan(b_nm) and b_status == Status.NEGATIVE_RADICAND
    # no (110)-type peak
    del peaks["waxs_m110"]
    _, b_nm, a_status, b_status = hiller_cell(PeakFits.from_peaks(peaks))
    assert np.isnan(b_nm) and b_status == Status.MISSING_PEAK and a_status == Status.OK


def test_no_waxs_peak_present():
    peaks = cubic_peaks()
    for record in peaks.values():
        record["status"] = int(Status.NOT_SIGNIFICANT)
    result = atomic_lattice_parameters(PeakFits.from_peaks(peaks), phi_deg=85.0)
    for name in ("psi_deg", "psi_minus_phi_deg", "i_al", "a_al_nm", "a_nm", "b_nm"):
        assert np.isnan(result[name]) and result.statuses[name] == Status.MISSING_PEAK, name
    assert result.statuses["waxs_010.a_al_nm"] == Status.NOT_SIGNIFICANT


def test_vectorised_frames():
    psis = np.array([[100.0, 130.0], [170.0, -175.0]])
    frames = {name: {key: np.array([[cubic_peaks(psi_deg=p)[name][key] for p in row] for row in psis])
                     for key in ("i0", "q0_nm", "chi0_deg")}
              for name in ("waxs_010", "waxs_020", "waxs_110", "waxs_m110")}
    result = atomic_lattice_parameters(PeakFits.from_peaks(frames), phi_deg=psis - 45.0)
    np.testing.assert_allclose(result["psi_deg"], np.mod(psis, 360.0))
    np.testing.assert_allclose(result["psi_minus_phi_deg"], 45.0)
    assert result.statuses["psi_deg"].dtype == np.int32 and result.statuses["psi_deg"].shape == (2, 2)
