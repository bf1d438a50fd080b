"""Accuracy of the whole per-frame analysis against the synthetic supercrystal's truth.

Frames of the default synthetic scan (EIGER X 4M at the Lapkin P10 geometry, first-order SAXS
peaks of a few hundred to a few thousand photons, Poisson noise, Kapton background) go through
the real :class:`FrameAnalyzer` (polar tables, Numba regroup, Numba LM fits, physics); the
recovered values are compared with the generator's truth maps.
"""

from __future__ import annotations

import numpy as np
import pytest

from analysis.average_pattern import fit_average_pattern
from analysis.frame_analysis import FrameAnalyzer
from analysis.status import Status
from simulators.synthetic_scan import SyntheticScan, SyntheticScanConfig
from stream.analysis_setup import AnalysisSetup
from stream.config_files import load_geometry, load_peak_model

SAXS = ("saxs_1", "saxs_2", "saxs_3", "saxs_4")
WAXS = ("waxs_010", "waxs_020", "waxs_110", "waxs_m110")


@pytest.fixture(scope="module")
def analysed():
    """Every frame inside the crystal and every 5th outside, analysed; truth maps alongside."""
    scan = SyntheticScan(SyntheticScanConfig())
    setup = AnalysisSetup.default()
    analyzer = FrameAnalyzer(load_geometry(setup.poni_path), load_peak_model(setup.peaks_path),
                             pixel_mask=scan.pixel_mask, background=scan.renderer.background_expected,
                             williamson_hall_L_nm=float(np.nanmedian(scan.truth.maps["L_nm"])))
    names = analyzer.parameter_names
    inside = scan.truth.maps["sc_mask"] > 0
    frames = [k for k in range(scan.n_frames) if inside[scan.grid.position(k)] or k % 5 == 0]
    values = np.full((len(frames), len(names)), np.nan)
    statuses = np.zeros((len(frames), len(names)), np.int32)
    for row, k in enumerate(frames):
        analyzer.analyse(scan.frame(k), values[row], statuses[row])
    positions = [scan.grid.position(k) for k in frames]
    truth = {name: np.array([scan.truth.maps[name][p] for p in positions]) for name in scan.truth.maps}
    was_inside = np.array([inside[p] for p in positions])
    return {"names": names, "values": values, "statuses": statuses, "truth": truth, "inside": was_inside,
            "analyzer": analyzer}


def column(result, name):
    index = result["names"].index(name)
    return result["values"][:, index], result["statuses"][:, index]


def saxs_errors(analysed, peak):
    q, status = column(analysed, f"{peak}.q0_nm")
    q_err, _ = column(analysed, f"{peak}.q0_err_nm")
    chi, _ = column(analysed, f"{peak}.chi0_deg")
    q_true, chi_true = analysed["truth"][f"{peak}.q0_nm"], analysed["truth"][f"{peak}.chi0_deg"]
    chi_error = np.abs((chi - chi_true + 180.0) % 360.0 - 180.0)
    return q / q_true - 1, q_err / q_true, chi_error, status


def test_saxs_peak_azimuths_within_0p3_deg_in_95_percent_of_crystal_frames(analysed):
    inside = analysed["inside"]
    for peak in SAXS:
        _, _, chi_error, status = saxs_errors(analysed, peak)
        good = (chi_error < 0.3) & (status == Status.OK)
        assert good[inside].mean() >= 0.95, f"{peak}: only {good[inside].mean():.1%} within 0.3 deg"


def test_saxs_peak_q_unbiased_with_honest_errors(analysed):
    """q0 has no bias and its reported error is the real scatter (pulls of unit width)."""
    inside = analysed["inside"]
    for peak in SAXS:
        relative, relative_err, _, status = saxs_errors(analysed, peak)
        ok = inside & (status == Status.OK)
        assert ok.mean() >= 0.95 * inside.mean(), peak
        assert abs(np.median(relative[ok])) < 0.0005, f"{peak}: q0 biased by {np.median(relative[ok]):.3%}"
        pulls = relative[ok] / relative_err[ok]
        assert 0.7 < np.std(pulls) < 1.5, f"{peak}: pull width {np.std(pulls):.2f}"


def test_saxs_peak_q_within_0p2_percent_where_poisson_statistics_allow(analysed):
    """0.2 % in q for >= 95 % of the frames whose photon count makes it possible at all.

    The Cramer-Rao bound of a Gaussian centre is s_q / sqrt(N): at FWHM 0.12 nm^-1 and 2000
    photons it is 0.19 % of q0 = 0.6 nm^-1, so 0.2 % at 95 % needs about 4x more photons than
    the broader, weaker peaks of the scan have. Frames whose own error estimate is below 0.1 %
    (2 sigma < 0.2 %) must meet the requirement.
    """
    inside = analysed["inside"]
    for peak in SAXS:
        relative, relative_err, _, status = saxs_errors(analysed, peak)
        possible = inside & (status == Status.OK) & (relative_err < 0.001)
        assert possible.sum() >= 20, f"{peak}: only {possible.sum()} frames with enough photons"
        good = np.abs(relative) < 0.002
        assert good[possible].mean() >= 0.95, f"{peak}: {good[possible].mean():.1%} within 0.2 %"


def test_waxs_peak_centres_within_tolerance_where_fitted(analysed):
    inside = analysed["inside"]
    for peak in WAXS:
        q, status = column(analysed, f"{peak}.q0_nm")
        chi, _ = column(analysed, f"{peak}.chi0_deg")
        ok = inside & (status == Status.OK)
        q_true, chi_true = analysed["truth"][f"{peak}.q0_nm"], analysed["truth"][f"{peak}.chi0_deg"]
        chi_error = np.abs((chi - chi_true + 180.0) % 360.0 - 180.0)
        good = (np.abs(q / q_true - 1) < 0.002) & (chi_error < 0.3 * 5)  # WAXS arcs are ~10x wider in chi
        assert good[ok].mean() >= 0.95, f"{peak}: {good[ok].mean():.1%} of {ok.sum()} fits within tolerance"
    for peak in ("waxs_010", "waxs_020"):
        _, status = column(analysed, f"{peak}.q0_nm")
        assert (status[inside] == Status.OK).mean() > 0.8, peak


@pytest.mark.parametrize("name, tolerance, relative", [
    ("a1_nm", 0.01, True), ("a2_nm", 0.01, True), ("gamma_deg", 1.0, False), ("phi_deg", 1.0, False),
    ("psi_deg", 1.0, False),
])
def test_lattice_parameters_within_tolerance(analysed, name, tolerance, relative):
    value, status = column(analysed, name)
    truth = analysed["truth"][name]
    inside = analysed["inside"]
    error = np.abs(value / truth - 1) if relative else np.abs(value - truth)
    good = (status == Status.OK) & (error < tolerance)
    assert good[inside].mean() >= 0.95, f"{name}: {good[inside].mean():.1%} within {tolerance}"


@pytest.mark.parametrize("name, truth_name", [("g_q", "g"), ("delta_psi_deg", "delta_psi_deg")])
def test_broadening_within_ten_percent_where_above_resolution(analysed, name, truth_name):
    value, status = column(analysed, name)
    truth = analysed["truth"][truth_name]
    inside = analysed["inside"] & (status == Status.OK)
    relative_error = np.abs(value / truth - 1)[inside]
    assert inside.sum() > 150
    assert np.median(relative_error) < 0.10, f"{name}: median relative error {np.median(relative_error):.1%}"


def test_no_value_outside_the_crystal(analysed):
    """Outside the sample there are no Bragg peaks: every fit is missing, with a reason."""
    outside = ~analysed["inside"]
    assert outside.sum() > 50
    for peak in SAXS + WAXS:
        value, status = column(analysed, f"{peak}.q0_nm")
        assert np.isnan(value[outside]).all(), peak
        assert set(status[outside]) <= {Status.NOT_SIGNIFICANT, Status.TOO_FEW_POINTS, Status.CENTRE_AT_EDGE,
                                         Status.NOT_CONVERGED, Status.SINGULAR}, peak
    for name in ("a1_nm", "gamma_deg", "psi_deg", "g_q"):
        value, status = column(analysed, name)
        assert np.isnan(value[outside]).all() and (status[outside] != Status.OK).all(), name


def test_average_pattern_williamson_hall_recovers_size(analysed):
    analyzer = analysed["analyzer"]
    result = fit_average_pattern(analyzer.fitter, analyzer.average, analyzer.K)
    L_true = float(np.nanmedian(analysed["truth"]["L_nm"]))
    assert result.williamson_hall.status == Status.OK
    assert abs(result.williamson_hall.L_nm / L_true - 1) < 0.1
    assert 0.005 < result.williamson_hall.g < 0.03  # truth: 1 % (centre) to 2 % (edge)
