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


def peak_errors(analysed, peak):
    """Relative q0 error, its reported 1-sigma, chi0 error (deg), its 1-sigma, status."""
    q, status = column(analysed, f"{peak}.q0_nm")
    q_err, _ = column(analysed, f"{peak}.q0_err_nm")
    chi, _ = column(analysed, f"{peak}.chi0_deg")
    chi_err, _ = column(analysed, f"{peak}.chi0_err_deg")
    q_true, chi_true = analysed["truth"][f"{peak}.q0_nm"], analysed["truth"][f"{peak}.chi0_deg"]
    chi_error = (chi - chi_true + 180.0) % 360.0 - 180.0
    return q / q_true - 1, q_err / q_true, chi_error, chi_err, status


@pytest.mark.parametrize("peak", SAXS + WAXS)
def test_peak_centres_unbiased_with_honest_errors(analysed, peak):
    """No bias in q0 or chi0, and the reported errors are the real scatter (pull width ~1)."""
    relative, relative_err, chi_error, chi_err, status = peak_errors(analysed, peak)
    ok = analysed["inside"] & (status == Status.OK)
    assert ok.sum() >= 100, f"{peak}: only {ok.sum()} fits inside the crystal"
    # WAXS arcs cut by a detector edge or gap (020, -110) keep a bias below the 0.2 % tolerance
    max_bias = 0.0005 if peak in SAXS else 0.0015
    assert abs(np.median(relative[ok])) < max_bias, f"{peak}: q0 biased by {np.median(relative[ok]):.3%}"
    assert abs(np.median(chi_error[ok])) < 0.5, f"{peak}: chi0 biased by {np.median(chi_error[ok]):.2f} deg"
    for name, pulls in (("q0", relative[ok] / relative_err[ok]), ("chi0", chi_error[ok] / chi_err[ok])):
        assert 0.6 < np.std(pulls) < 1.6, f"{peak}: {name} pull width {np.std(pulls):.2f}"


@pytest.mark.parametrize("peak", SAXS + WAXS)
def test_peak_centres_within_0p2_percent_and_0p3_deg_where_statistics_allow(analysed, peak):
    """The product tolerance (0.2 % in q, 0.3 deg in chi) for >= 95 % of the crystal frames
    whose photon statistics make it reachable.

    The Cramer-Rao bound of a Gaussian centre is s / sqrt(N): for a first-order SAXS peak of
    FWHM 0.12 nm^-1 and 2000 photons it is 0.19 % of q0 = 0.6 nm^-1, so 0.2 % at 95 % is out
    of reach for the broader, weaker peaks whatever the fitter. Frames whose own 1-sigma error
    is below tolerance / 2.5 must meet it; the first-order SAXS azimuths meet 0.3 deg in all.
    """
    relative, relative_err, chi_error, chi_err, status = peak_errors(analysed, peak)
    ok = analysed["inside"] & (status == Status.OK)
    for name, error, sigma, tolerance in (("q0", relative, relative_err, 0.002),
                                          ("chi0", chi_error, chi_err, 0.3)):
        reachable = ok & (sigma < tolerance / 2.5)
        if reachable.sum() < 10:
            continue  # this peak's statistics never reach the tolerance (broad WAXS arcs in chi)
        good = np.abs(error) < tolerance
        assert good[reachable].mean() >= 0.95, f"{peak} {name}: {good[reachable].mean():.1%} within {tolerance}"


@pytest.mark.parametrize("name, tolerance, relative", [
    ("a1_nm", 0.01, True), ("a2_nm", 0.01, True), ("gamma_deg", 1.0, False), ("phi_deg", 1.0, False),
])
def test_superlattice_parameters_within_tolerance(analysed, name, tolerance, relative):
    value, status = column(analysed, name)
    truth = analysed["truth"][name]
    inside = analysed["inside"]
    error = np.abs(value / truth - 1) if relative else np.abs(value - truth)
    good = (status == Status.OK) & (error < tolerance)
    assert good[inside].mean() >= 0.95, f"{name}: {good[inside].mean():.1%} within {tolerance}"


def test_psi_within_one_degree(analysed):
    """psi (science.md: plain mean of the four WAXS estimates) within 1 deg for >= 95 % of the
    frames with at least three WAXS peaks; where fewer are left its reported error says so."""
    psi, status = column(analysed, "psi_deg")
    psi_err, _ = column(analysed, "psi_err_deg")
    n_peaks, _ = column(analysed, "n_waxs_peaks")
    error = np.abs((psi - analysed["truth"]["psi_deg"] + 180.0) % 360.0 - 180.0)
    ok = analysed["inside"] & (status == Status.OK)
    assert ok.mean() >= 0.95 * analysed["inside"].mean()
    three = ok & (n_peaks >= 3)
    assert three.sum() > 0.7 * ok.sum() and (error[three] < 1.0).mean() >= 0.95
    assert np.std(error[ok & (n_peaks < 3)] / psi_err[ok & (n_peaks < 3)]) < 1.6


def test_delta_psi_within_ten_percent(analysed):
    value, status = column(analysed, "delta_psi_deg")
    truth = analysed["truth"]["delta_psi_deg"]
    ok = analysed["inside"] & (status == Status.OK)
    relative_error = np.abs(value / truth - 1)[ok]
    assert ok.sum() > 150 and np.median(relative_error) < 0.10
    assert (relative_error < 0.10).mean() > 0.75


def test_g_q_is_below_the_resolution_at_realistic_counts(analysed):
    """g (1-2 %) adds only g q = 0.1-0.4 nm^-1 in quadrature to the 2 pi K / L = 0.8 nm^-1
    size width: at the scan's photon counts g_q scatters widely (it is reported, with the same
    statistics as the widths); its estimator is checked on noise-free frames below."""
    value, status = column(analysed, "g_q")
    ok = analysed["inside"] & (status == Status.OK)
    assert ok.sum() > 100 and 0.005 < np.median(value[ok]) < 0.03


def test_g_q_within_ten_percent_where_above_the_resolution(analysed):
    """Noise-free frames (expected counts): the widths are exact, g is far above the resolution,
    and g_q must be within 10 % of the truth."""
    scan = SyntheticScan(SyntheticScanConfig())
    analyzer = analysed["analyzer"]
    names = analyzer.parameter_names
    inside = scan.truth.maps["sc_mask"] > 0
    points = [tuple(p) for p in np.argwhere(inside)[::12]]
    values, statuses = np.empty(len(names)), np.empty(len(names), np.int32)
    errors = []
    for row, column_index in points:
        frame = scan.renderer.render_expected(scan.truth.point(row, column_index))
        analyzer.analyse(np.asarray(frame, dtype=np.float64), values, statuses, accumulate=False)
        index = names.index("g_q")
        assert statuses[index] == Status.OK
        errors.append(values[index] / scan.truth.maps["g"][row, column_index] - 1)
    errors = np.abs(np.array(errors))
    assert len(errors) >= 15 and (errors < 0.10).mean() >= 0.9, errors


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
