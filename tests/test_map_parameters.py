"""The map-parameter registry and the per-frame result vectors built from the derived values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.atomic_lattice import atomic_lattice_parameters
from analysis.errors import ConfigurationError
from analysis.map_parameters import (
    ColourRangeRule, error_name, map_parameters, map_vectors, parameter_names, peak_map_values, registry,
)
from analysis.map_state import MapState
from analysis.peak_fits import PeakFits, SAXS_FIRST_ORDER, WAXS_PEAKS
from analysis.status import Status
from analysis.superlattice import superlattice_parameters
from analysis.williamson_hall import frame_broadening

LAPKIN_PEAKS = SAXS_FIRST_ORDER + WAXS_PEAKS
HEADLINE = ("saxs_intensity", "a1_nm", "a2_nm", "gamma_deg", "phi_deg", "a_mean_nm", "a_ratio", "a_sc_nm",
            "gamma_hiller_deg", "psi_deg", "psi_minus_phi_deg", "i_al", "a_al_nm", "a_nm", "b_nm", "g_q",
            "delta_psi_deg")


def test_registry_holds_every_requested_map_with_units():
    params = registry(LAPKIN_PEAKS)
    for name in HEADLINE:
        assert name in params, name
    assert params["saxs_intensity"].unit == "counts" and params["i_al"].unit == "photons"
    assert params["a_mean_nm"].unit == "nm" and params["gamma_deg"].unit == "deg"
    for peak in LAPKIN_PEAKS:
        for quantity, unit in (("i0", "photons"), ("q0_nm", "nm^-1"), ("chi0_deg", "deg"),
                               ("fwhm_q_nm", "nm^-1"), ("fwhm_chi_deg", "deg")):
            assert params[f"{peak}.{quantity}"].unit == unit
            assert error_name(f"{peak}.{quantity}") in params
    for peak in WAXS_PEAKS:
        assert f"{peak}.a_al_nm" in params
    assert all(p.description for p in params.values())
    assert len(parameter_names(LAPKIN_PEAKS)) == len(params) == len(map_parameters(LAPKIN_PEAKS))


def test_registry_follows_the_peak_model():
    saxs_only = parameter_names(SAXS_FIRST_ORDER)
    assert "a_mean_nm" in saxs_only and "psi_deg" not in saxs_only and "g_q" not in saxs_only
    waxs_only = parameter_names(("waxs_010", "waxs_020"))
    assert "psi_deg" in waxs_only and "a_nm" in waxs_only and "b_nm" not in waxs_only
    assert "a_mean_nm" not in waxs_only and "psi_minus_phi_deg" not in waxs_only


def test_error_names():
    assert error_name("a1_nm") == "a1_err_nm"
    assert error_name("waxs_010.q0_nm") == "waxs_010.q0_err_nm"
    assert error_name("waxs_010.i0") == "waxs_010.i0_err"
    assert error_name("a_ratio") == "a_ratio_err"
    assert error_name("phi_deg") == "phi_err_deg"


def test_colour_range_rule():
    values = np.arange(101, dtype=float)
    values[5] = np.nan
    low, high = ColourRangeRule().limits(values)
    finite = values[np.isfinite(values)]
    assert low == pytest.approx(np.percentile(finite, 2)) and high == pytest.approx(np.percentile(finite, 98))
    assert ColourRangeRule().limits(np.full(4, np.nan)) is None
    assert ColourRangeRule().limits(np.full(4, 3.0)) == (1.5, 4.5)
    assert ColourRangeRule(fixed=(0, 2)).limits(values) == (0.0, 2.0)


def _lapkin_frame():
    a, gamma_deg, phi1 = 10.0, 90.0, 40.0
    q_sl = 2 * math.pi / a
    peaks = {}
    for name, chi in zip(SAXS_FIRST_ORDER, (phi1 + gamma_deg - 90, phi1 + 90, phi1 + gamma_deg + 90, phi1 - 90)):
        peaks[name] = {"i0": 500.0, "q0_nm": q_sl, "chi0_deg": chi, "fwhm_q_nm": 0.1, "fwhm_chi_deg": 5.0,
                       "q0_err_nm": 0.001, "chi0_err_deg": 0.2}
    q100 = 2 * math.pi / 0.574
    psi = 130.0
    for name, q, chi in (("waxs_010", q100, psi), ("waxs_020", 2 * q100, psi),
                         ("waxs_110", math.sqrt(2) * q100, psi - 45), ("waxs_m110", math.sqrt(2) * q100, psi + 45)):
        peaks[name] = {"i0": 100.0, "q0_nm": q, "chi0_deg": chi, "fwhm_q_nm": 0.8, "fwhm_chi_deg": 15.0}
    peaks["waxs_020"]["status"] = int(Status.NOT_SIGNIFICANT)
    return PeakFits.from_peaks(peaks)


def test_vectors_from_derived_values_fill_a_map_state():
    names = parameter_names(LAPKIN_PEAKS)
    fits = _lapkin_frame()
    sl = superlattice_parameters(fits)
    al = atomic_lattice_parameters(fits, phi_deg=sl.phi_deg, phi_status=sl.status)
    wh = frame_broadening(fits, L_nm=7.77)
    saxs = ({"saxs_intensity": np.float64(1234.0)}, {"saxs_intensity": np.int32(Status.OK)})
    values, statuses = map_vectors(names, saxs, sl.map_values(), al.map_values(), wh.map_values(),
                                   peak_map_values(fits))
    assert values.shape == (len(names),) and statuses.dtype == np.int32
    by_name = dict(zip(names, values))
    status_of = dict(zip(names, statuses))
    assert by_name["a_mean_nm"] == pytest.approx(10.0) and by_name["phi_deg"] == pytest.approx(85.0)
    assert by_name["psi_minus_phi_deg"] == pytest.approx(45.0)
    assert by_name["a_al_nm"] == pytest.approx(0.574)
    assert np.isnan(by_name["waxs_020.q0_nm"]) and status_of["waxs_020.q0_nm"] == Status.NOT_SIGNIFICANT
    assert by_name["saxs_1.q0_err_nm"] == pytest.approx(0.001)
    assert by_name["g_q"] > 0 and status_of["g_q"] == Status.OK
    # invariant: OK goes with a number, everything else with NaN
    assert np.all(np.isfinite(values) == (statuses == Status.OK))

    state = MapState((2, 2), names)
    state.update(1, 0, values, statuses)
    assert state.values["a_mean_nm"][1, 0] == pytest.approx(10.0)
    assert state.statuses["waxs_020.q0_nm"][1, 0] == Status.NOT_SIGNIFICANT

    with pytest.raises(ConfigurationError, match="saxs_intensity"):
        map_vectors(names, sl.map_values(), al.map_values(), wh.map_values(), peak_map_values(fits))


def test_peak_presence_and_value_status_of_every_kind_of_fit():
    """A peak is present where its fit is OK with finite i0, q0, chi0 and q0 > 0; the status of
    a value computed from it is OK there, the fit's own status where the fit failed, and
    INVALID_INPUT where the fit said OK but its numbers are unusable. Per-peak answers are
    copies, and the per-peak maps are NaN wherever the status is not OK."""
    ok, failed = int(Status.OK), int(Status.NOT_CONVERGED)
    fits = PeakFits(
        names=("a", "b"),
        i0=[[10.0, 5.0], [np.nan, 5.0], [3.0, 4.0], [3.0, 4.0]],
        q0_nm=[[1.0, 2.0], [1.0, 2.0], [-1.0, 2.0], [1.0, 2.0]],
        chi0_deg=[[0.0, 90.0], [0.0, 90.0], [0.0, np.inf], [0.0, 90.0]],
        fwhm_q_nm=np.full((4, 2), 0.1), fwhm_chi_deg=np.full((4, 2), 5.0),
        status=[[ok, ok], [ok, ok], [ok, ok], [failed, ok]])
    np.testing.assert_array_equal(fits.present("a"), [True, False, False, False])
    np.testing.assert_array_equal(fits.present("b"), [True, True, False, True])
    expected = np.array([[ok, ok], [int(Status.INVALID_INPUT), ok], [int(Status.INVALID_INPUT)] * 2,
                         [failed, ok]])
    np.testing.assert_array_equal(fits.value_statuses(), expected)
    np.testing.assert_array_equal(fits.value_status("a"), expected[:, 0])
    assert (fits.value_status("missing") == Status.MISSING_PEAK).all() and not fits.present("missing").any()
    fits.present("a")[:] = False
    fits.value_status("a")[:] = 0
    np.testing.assert_array_equal(fits.present("a"), [True, False, False, False])
    # several peaks at once: the same as one by one, stacked (a missing peak: NaN, absent)
    for names in (("b", "a"), ("a", "missing", "b")):
        for quantity in ("q0_nm", "chi0_deg", "i0_err"):
            np.testing.assert_array_equal(fits.columns(quantity, names),
                                          np.stack([fits.get(quantity, n) for n in names], axis=-1))
        np.testing.assert_array_equal(fits.present_columns(names),
                                      np.stack([fits.present(n) for n in names], axis=-1))
    fits.columns("q0_nm", ("a", "b"))[:] = 0.0
    fits.present_columns(("a", "b"))[:] = False
    assert fits.present("a")[0] and fits.get("q0_nm", "a")[0] == 1.0
    with pytest.raises(ConfigurationError, match="unknown peak quantity"):
        fits.columns("q0", ("a",))
    values, statuses = peak_map_values(fits)
    np.testing.assert_array_equal(values["b.q0_nm"], [2.0, 2.0, np.nan, 2.0])
    np.testing.assert_array_equal(values["a.i0"], [10.0, np.nan, np.nan, np.nan])
    np.testing.assert_array_equal(statuses["a.i0"], expected[:, 0])
