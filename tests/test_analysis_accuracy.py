"""Accuracy of the whole per-frame analysis against the synthetic supercrystal's truth.

Frames of the default synthetic scan (EIGER X 4M at the Lapkin P10 geometry, first-order SAXS
peaks of a few hundred to a few thousand photons, Poisson noise, Kapton background) go through
the real :class:`FrameAnalyzer` (polar tables, Numba regroup, Numba Poisson LM fits, physics);
the recovered values are compared with the generator's truth maps.

What the statistics allow is computed, not assumed: for every frame and peak the Cramer-Rao
bound of the fitted parameters follows from the truth (peak photons, widths, the Kapton and
diffuse background under it, the pixels per bin), as the inverse Fisher information of the
fitted model (Gaussian + linear background, Poisson counts) on the window's bins
(:func:`cramer_rao_bounds`). A tolerance can only be asked of frames whose bound allows it;
elsewhere the test asks that the fitter does as well as a perfect (efficient) estimator would.
Derived quantities (delta_psi, g_q) get their resolution by propagating those bounds.

The scan is built with 64 background realisations instead of the generator's default 8: the
frames share their Kapton noise within a realisation, and with 8 of them the WAXS pulls
(background-dominated) of ~200 frames come from only 8 noise fields.

Run with ``-s`` to see the numbers (attainable and observed fractions, resolutions).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy.special import erf

from analysis.average_pattern import fit_average_pattern
from analysis.frame_analysis import FrameAnalyzer
from analysis.gauss2d_model import FWHM_PER_SIGMA, model_and_jacobian, sigma_from_fwhm
from analysis.peak_window_fits import bin_pixel_moments
from analysis.regroup_kernel import regroup_frame
from analysis.status import Status
from analysis.williamson_hall import size_broadening_nm
from simulators.synthetic_scan import SyntheticScan, SyntheticScanConfig
from stream.analysis_setup import AnalysisSetup
from stream.config_files import load_geometry, load_peak_model

SAXS = ("saxs_1", "saxs_2", "saxs_3", "saxs_4")
WAXS = ("waxs_010", "waxs_020", "waxs_110", "waxs_m110")
Q_TOLERANCE = 0.002       # relative, the issue's 0.2 %
CHI_TOLERANCE_DEG = 0.3   # the issue's 0.3 deg
FRACTION = 0.95           # "for at least 95 % of the frames"
EFFICIENCY_MARGIN = 0.05  # observed fraction within tolerance >= attainable - this


@pytest.fixture(scope="module")
def scan():
    return SyntheticScan(SyntheticScanConfig(n_background_realisations=64))


@pytest.fixture(scope="module")
def analyzer(scan):
    setup = AnalysisSetup.default()
    return FrameAnalyzer(load_geometry(setup.poni_path), load_peak_model(setup.peaks_path),
                         pixel_mask=scan.pixel_mask, background=scan.renderer.background_expected,
                         williamson_hall_L_nm=float(np.nanmedian(scan.truth.maps["L_nm"])))


def analyse_frames(scan, analyzer, frames, accumulate=True):
    names = analyzer.parameter_names
    values = np.full((len(frames), len(names)), np.nan)
    statuses = np.zeros((len(frames), len(names)), np.int32)
    for row, k in enumerate(frames):
        analyzer.analyse(scan.frame(k), values[row], statuses[row], accumulate=accumulate)
    positions = [scan.grid.position(k) for k in frames]
    inside = scan.truth.maps["sc_mask"] > 0
    truth = {name: np.array([scan.truth.maps[name][p] for p in positions]) for name in scan.truth.maps}
    return {"names": names, "values": values, "statuses": statuses, "truth": truth,
            "inside": np.array([inside[p] for p in positions]), "analyzer": analyzer}


@pytest.fixture(scope="module")
def analysed(scan, analyzer):
    """Every frame inside the crystal and every 5th outside, analysed; truth maps alongside."""
    inside = scan.truth.maps["sc_mask"] > 0
    frames = [k for k in range(scan.n_frames) if inside[scan.grid.position(k)] or k % 5 == 0]
    return analyse_frames(scan, analyzer, frames)


def column(result, name):
    index = result["names"].index(name)
    return result["values"][:, index], result["statuses"][:, index]


# --- Cramer-Rao bounds from the truth ---------------------------------------------------

@pytest.fixture(scope="module")
def background_density(scan, analyzer):
    """Per window and bin: the expected background in the fitted unit (photons per pixel per
    (q, chi) area), as the Kapton frame and the diffuse SAXS of one photon (scaled per frame),
    and where and how wide each bin samples the (q, chi) plane (its pixels' mean position and
    spread plus their footprint, :func:`bin_pixel_moments`)."""
    table = analyzer.table
    unit = np.zeros(scan.geometry.shape)
    unit.reshape(-1)[scan.renderer.diffuse_index] = scan.renderer.diffuse_profile
    diffuse = regroup_frame(unit, table).mean_counts.copy()
    area = table.pixel_area_per_bin
    return (analyzer.background.mean_per_pixel / area, np.nan_to_num(diffuse) / area,
            bin_pixel_moments(table, scan.geometry))


def cramer_rao_bounds(result, background_density):
    """Per peak: (n_frames, 7) Cramer-Rao 1-sigma bounds of the fit parameters at the truth.

    Fisher information of Poisson bins, ``F = J^T diag(e / mu) J``, with ``mu`` the expected
    density (truth peak + Kapton + diffuse SAXS) of each bin as its pixels sample it (at their
    mean position, the peak broadened by their spread and footprint), ``e`` the pixels per bin
    times their area (photons per density unit) and ``J`` the Jacobian with respect to the
    intrinsic parameters at the truth; bounds ``sqrt(diag(F^-1))``, background level and slope
    free as in the fit. This is the bound for the binned pixel data, not for an ideal detector:
    the pixels' extent makes the peaks effectively wider. NaN outside the crystal.
    """
    table = result["analyzer"].table
    kapton, diffuse_unit, (q_mean, chi_mean, q_var, chi_var) = background_density
    truth = result["truth"]
    bounds = {}
    for peak in SAXS + WAXS:
        w = table.window_index(peak)
        q, chi = table.window_centres(w)
        rows, cols = len(q), len(chi)
        n = table.pixel_count_valid[w, :rows, :cols].astype(np.float64)
        area = table.pixel_area_per_bin[w, :rows, :cols]
        used = (n > 0) & np.isfinite(area)
        exposure = np.where(used, n * area, 0.0)[used]
        chi_low = chi[0] - 0.5 * (chi[1] - chi[0])
        sigma = np.full((len(truth["sc_mask"]), 7), np.nan)
        for frame in np.flatnonzero(result["inside"]):
            chi0 = chi_low + (truth[f"{peak}.chi0_deg"][frame] - chi_low) % 360.0
            params = [truth[f"{peak}.i0"][frame], truth[f"{peak}.q0_nm"][frame], chi0,
                      sigma_from_fwhm(truth[f"{peak}.fwhm_q_nm"][frame]),
                      sigma_from_fwhm(truth[f"{peak}.fwhm_chi_deg"][frame]), 0.0, 0.0]
            background = (kapton[w, :rows, :cols]
                          + truth["diffuse_saxs_photons"][frame] * diffuse_unit[w, :rows, :cols])
            model, jac = model_and_jacobian(
                params, q, chi, points=(q_mean[w, :rows, :cols], chi_mean[w, :rows, :cols]),
                broadening=(q_var[w, :rows, :cols], chi_var[w, :rows, :cols]))
            mu = (model + background)[used]
            jac = jac[used]
            fisher = jac.T @ ((exposure / mu)[:, None] * jac)
            sigma[frame] = np.sqrt(np.diag(np.linalg.inv(fisher)))
        bounds[peak] = sigma
    return bounds


@pytest.fixture(scope="module")
def bounds(analysed, background_density):
    return cramer_rao_bounds(analysed, background_density)


def centre_errors(result, peak):
    """Relative q0 error, its reported 1-sigma, chi0 error (deg), its 1-sigma, status."""
    q, status = column(result, f"{peak}.q0_nm")
    q_err, _ = column(result, f"{peak}.q0_err_nm")
    chi, _ = column(result, f"{peak}.chi0_deg")
    chi_err, _ = column(result, f"{peak}.chi0_err_deg")
    q_true, chi_true = result["truth"][f"{peak}.q0_nm"], result["truth"][f"{peak}.chi0_deg"]
    chi_error = (chi - chi_true + 180.0) % 360.0 - 180.0
    return q / q_true - 1, q_err / q_true, chi_error, chi_err, status


def within_tolerance_fractions(result, bound_sets, peak, min_significance=0.0):
    """Per centre coordinate: (name, tolerance, frames, attainable, observed, bound, good).

    ``frames``: the crystal frames where the peak's significance bound I0 / sigma_CRB(I0) is at
    least ``min_significance``; attainable: the mean over them of P(|N(0, bound)| < tolerance),
    the fraction a perfect (efficient) estimator reaches; observed: the fraction of them
    fitted OK and within the tolerance; ``bound`` (per frame, relative for q0) and ``good``
    (OK and within, per frame) for further selections.
    """
    relative, _, chi_error, _, status = centre_errors(result, peak)
    bound = bound_sets[peak]
    with np.errstate(invalid="ignore", divide="ignore"):
        frames = result["inside"] & (result["truth"][f"{peak}.i0"] / bound[:, 0] >= min_significance)
    out = []
    for name, error, sigma, tolerance in (
            ("q0", relative, bound[:, 1] / result["truth"][f"{peak}.q0_nm"], Q_TOLERANCE),
            ("chi0", chi_error, bound[:, 2], CHI_TOLERANCE_DEG)):
        good = (status == Status.OK) & (np.abs(error) < tolerance)
        attainable = float(np.mean(erf(tolerance / (math.sqrt(2.0) * sigma[frames]))))
        out.append((name, tolerance, frames, attainable, float(good[frames].mean()), sigma, good))
    return out


# --- peak centres -------------------------------------------------------------------------

@pytest.mark.parametrize("peak", SAXS + WAXS)
def test_peak_centres_unbiased_with_honest_errors(analysed, peak):
    """No bias in q0 or chi0, and the reported errors are the real scatter (pull width ~1).

    SAXS (peak-dominated noise, ~216 frames): 0.85-1.15. A single WAXS peak's pulls are
    dominated by the Kapton noise, of which the scan has 64 realisations for ~130-210 frames,
    so one peak's pull width scatters by ~0.1: 0.75-1.3 per peak, and 0.85-1.15 for the four
    WAXS peaks pooled (independent pixels, ~700 fits).
    """
    relative, relative_err, chi_error, chi_err, status = centre_errors(analysed, peak)
    ok = analysed["inside"] & (status == Status.OK)
    assert ok.sum() >= 100, f"{peak}: only {ok.sum()} fits inside the crystal"
    # WAXS arcs cut by a detector edge or gap (020, -110) keep a bias below the 0.2 % tolerance
    max_bias = 0.0005 if peak in SAXS else 0.0015
    assert abs(np.median(relative[ok])) < max_bias, f"{peak}: q0 biased by {np.median(relative[ok]):.3%}"
    assert abs(np.median(chi_error[ok])) < 0.5, f"{peak}: chi0 biased by {np.median(chi_error[ok]):.2f} deg"
    band = (0.85, 1.15) if peak in SAXS else (0.75, 1.3)
    for name, pulls in (("q0", relative[ok] / relative_err[ok]), ("chi0", chi_error[ok] / chi_err[ok])):
        print(f"{peak} {name}: pull width {np.std(pulls):.2f} over {ok.sum()} frames")
        assert band[0] < np.std(pulls) < band[1], f"{peak}: {name} pull width {np.std(pulls):.2f}"


def test_waxs_centre_pulls_pooled(analysed):
    for coordinate in ("q0", "chi0"):
        pulls = []
        for peak in WAXS:
            relative, relative_err, chi_error, chi_err, status = centre_errors(analysed, peak)
            ok = analysed["inside"] & (status == Status.OK)
            pulls.append(relative[ok] / relative_err[ok] if coordinate == "q0" else chi_error[ok] / chi_err[ok])
        pulls = np.concatenate(pulls)
        print(f"WAXS {coordinate}: pooled pull width {np.std(pulls):.3f} over {pulls.size} fits")
        assert pulls.size > 500 and 0.85 < np.std(pulls) < 1.15


STRONG = 10.0
"""Significance bound (I0 / sigma_CRB(I0)) above which a peak is clearly there: twice the peak
model's reporting threshold of 5, so an efficient fit reports it essentially always."""


@pytest.mark.parametrize("peak", SAXS + WAXS)
def test_strong_peaks_are_reported(analysed, bounds, peak):
    """A peak whose significance bound is >= 10 is fitted OK in >= 99 % of the crystal frames
    (not lost to a bad start point, e.g. a window cut by the detector edge)."""
    _, status = column(analysed, f"{peak}.q0_nm")
    strong = analysed["inside"] & (analysed["truth"][f"{peak}.i0"] / bounds[peak][:, 0] >= STRONG)
    print(f"{peak}: significance bound >= {STRONG:g} on {strong.sum()} frames, "
          f"{np.mean(status[strong] == Status.OK):.1%} of them reported")
    assert strong.sum() >= 80 and np.mean(status[strong] == Status.OK) >= 0.99


ALLOWED_BOUND_FRACTION = 1 / 2.5
"""Where the bound is at most this fraction of the tolerance, an efficient unbiased estimator
lands within the tolerance in >= 98.8 % of the fits, so ">= 95 %" can be asked of a few dozen
fits. (At half the tolerance it would be 95.4 %: a perfect fitter would fail a 95 % test on
~100 such fits about a third of the time.)"""
FAMILY_MIN_ALLOWED = {("saxs", "q0"): 15, ("saxs", "chi0"): 600, ("waxs", "q0"): 30, ("waxs", "chi0"): 0}
"""Fits (over the family's peaks) where the bound allows the tolerance, at least: the check is
never skipped silently. No WAXS azimuth gets there (arcs 10-25 deg FWHM over the Kapton halo)."""


@pytest.mark.parametrize("family", ["saxs", "waxs"])
def test_peak_centres_reach_what_the_cramer_rao_bound_allows(analysed, bounds, family):
    """0.2 % in q and 0.3 deg in chi: as often as a perfect estimator would, and in >= 95 % of
    the fits whose bound allows it.

    The bound of a first-order SAXS peak of FWHM 0.12 nm^-1 and 2000 photons is about 0.2 % of
    q0 already without background, so at the scan's broad edge peaks (FWHM up to 0.2 nm^-1,
    750 photons) 0.2 % for 95 % of all crystal frames is out of reach whatever the fitter:
    the attainable fraction is printed. Per peak, over the frames where it is clearly there
    (significance bound >= 10), the observed fraction within tolerance must be at least the
    attainable one less 5 %. Over the family's peaks, the fits whose bound is at most
    :data:`ALLOWED_BOUND_FRACTION` of the tolerance must be within it in >= 95 %, and there must
    be at least :data:`FAMILY_MIN_ALLOWED` of them.
    """
    peaks = SAXS if family == "saxs" else WAXS
    for index, name in enumerate(("q0", "chi0")):
        allowed_good, half_good = [], []
        for peak in peaks:
            _, tolerance, frames, attainable, observed, sigma, good = within_tolerance_fractions(
                analysed, bounds, peak, STRONG)[index]
            print(f"{peak} {name} within {tolerance:g} on {frames.sum()} frames with the peak clearly "
                  f"there: attainable {attainable:.1%}, observed {observed:.1%}")
            assert observed >= attainable - EFFICIENCY_MARGIN, f"{peak} {name}: {observed:.1%} < {attainable:.1%}"
            allowed_good.append(good[analysed["inside"] & (sigma <= ALLOWED_BOUND_FRACTION * tolerance)])
            half_good.append(good[analysed["inside"] & (sigma <= tolerance / 2)])
        allowed_good, half_good = np.concatenate(allowed_good), np.concatenate(half_good)
        print(f"{family} {name}: bound <= tolerance / 2.5 for {allowed_good.size} fits, "
              f"{allowed_good.mean() if allowed_good.size else float('nan'):.1%} within the tolerance "
              f"(bound <= tolerance / 2: {half_good.size} fits, "
              f"{half_good.mean() if half_good.size else float('nan'):.1%})")
        assert allowed_good.size >= FAMILY_MIN_ALLOWED[family, name], (family, name, allowed_good.size)
        if FAMILY_MIN_ALLOWED[family, name]:
            assert allowed_good.mean() >= FRACTION, f"{family} {name}: {allowed_good.mean():.1%}"


def test_saxs_peak_azimuths_within_0p3_deg_in_95_percent_of_crystal_frames(analysed):
    inside = analysed["inside"]
    for peak in SAXS:
        _, _, chi_error, _, status = centre_errors(analysed, peak)
        good = (np.abs(chi_error) < CHI_TOLERANCE_DEG) & (status == Status.OK)
        assert good[inside].mean() >= FRACTION, f"{peak}: only {good[inside].mean():.1%} within 0.3 deg"


@pytest.fixture(scope="module")
def issue_count_scan(scan):
    """The scan with the narrow published SAXS widths (FWHM 0.05 nm^-1 everywhere) at the
    issue's count levels (first-order SAXS peaks of 600-3000 photons: 3000 in the centre, a
    quarter of it at the edge, 0.8 of that for (010)), and WAXS peaks 25 times brighter
    (10^5 photons in the centre's 010) for the g_q test below."""
    crystal = dataclasses.replace(scan.config.crystal, saxs_fwhm_q_centre_nm=0.05, saxs_fwhm_q_edge_nm=0.05,
                                  waxs_i0_centre=1.0e5)
    return scan.with_crystal(crystal)


@pytest.fixture(scope="module")
def issue_counts(issue_count_scan, analyzer, background_density):
    inside = issue_count_scan.truth.maps["sc_mask"] > 0
    frames = [k for k in range(issue_count_scan.n_frames) if inside[issue_count_scan.grid.position(k)]]
    result = analyse_frames(issue_count_scan, analyzer, frames, accumulate=False)
    result["bounds"] = cramer_rao_bounds(result, background_density)
    return result


def test_saxs_centres_at_the_issue_count_levels_with_narrow_peaks(issue_counts):
    """The issue's numbers where its premises hold: first-order SAXS peaks of a few hundred to a
    few thousand photons with the narrow published width (0.05 nm^-1): over the four
    first-order peaks of the crystal frames (864 fits), q0 within 0.2 % and chi0 within 0.3 deg
    in >= 95 %. Each peak alone (216 frames, binomial scatter +-1.5 %) must reach what an
    efficient estimator would, less the margin."""
    inside = issue_counts["inside"]
    pooled = {"q0": [], "chi0": []}
    for peak in SAXS:
        i0 = issue_counts["truth"][f"{peak}.i0"][inside]
        fractions = within_tolerance_fractions(issue_counts, issue_counts["bounds"], peak)
        for name, tolerance, _, attainable, observed, _, good in fractions:
            print(f"{peak} ({i0.min():.0f}-{i0.max():.0f} photons, FWHM 0.05 nm^-1) {name} within {tolerance:g}: "
                  f"attainable {attainable:.1%}, observed {observed:.1%}")
            assert observed >= attainable - EFFICIENCY_MARGIN, f"{peak} {name}: {observed:.1%}"
            pooled[name].append(good[inside])
    for name, good in pooled.items():
        fraction = np.concatenate(good).mean()
        print(f"first-order SAXS {name}, issue count levels: {fraction:.1%} of {np.concatenate(good).size} fits "
              "within the issue's tolerance")
        assert fraction >= FRACTION, f"{name}: {fraction:.1%}"


# --- derived quantities -------------------------------------------------------------------

@pytest.mark.parametrize("name, tolerance, relative", [
    ("a1_nm", 0.01, True), ("a2_nm", 0.01, True), ("gamma_deg", 1.0, False), ("phi_deg", 1.0, False),
])
def test_superlattice_parameters_within_tolerance(analysed, name, tolerance, relative):
    value, status = column(analysed, name)
    truth = analysed["truth"][name]
    inside = analysed["inside"]
    error = np.abs(value / truth - 1) if relative else np.abs(value - truth)
    good = (status == Status.OK) & (error < tolerance)
    assert good[inside].mean() >= FRACTION, f"{name}: {good[inside].mean():.1%} within {tolerance}"


def test_psi_within_one_degree_where_reported(analysed):
    """psi within 1 deg for >= 95 % of the frames where it is reported. It is reported where
    its propagated error is at most 0.5 deg (then 1 deg is 2 sigma); frames whose WAXS
    statistics do not allow that (weak or missing peaks at the crystal edge) carry
    TOO_UNCERTAIN instead of a number. Most crystal frames are reported, and the flagged
    ones are the frames with fewer peaks."""
    psi, status = column(analysed, "psi_deg")
    n_peaks, _ = column(analysed, "n_waxs_peaks")
    error = np.abs((psi - analysed["truth"]["psi_deg"] + 180.0) % 360.0 - 180.0)
    inside = analysed["inside"]
    reported = inside & (status == Status.OK)
    flagged = inside & (status == Status.TOO_UNCERTAIN)
    print(f"psi: reported on {reported.sum()} of {inside.sum()} crystal frames, "
          f"{(error[reported] < 1.0).mean():.1%} of them within 1 deg; {flagged.sum()} too uncertain")
    assert reported.sum() >= 0.6 * inside.sum()
    assert (error[reported] < 1.0).mean() >= FRACTION
    assert np.all(np.isnan(psi[flagged]))
    assert (reported | flagged | (status == Status.MISSING_PEAK))[inside].all()
    assert np.mean(n_peaks[reported]) > np.mean(n_peaks[flagged])


def broadening_resolution(result, bound_sets, quantity):
    """Per frame: the propagated Cramer-Rao 1-sigma of g_q (fraction) or delta_psi (deg), at
    the truth, over the WAXS peaks the frame's fit used (NaN where none).

    g_i = sqrt(w_q,i^2 - S^2) / q_i gives sigma(g_i) = w_q,i sigma(w_q,i) / (q_i^2 g);
    delta_i = sqrt(w_chi,i^2 - S^2 / q_i^2) gives sigma(delta_i) = w_chi,i sigma(w_chi,i) / delta;
    the per-frame value is the mean over the peaks used: sigma = sqrt(sum sigma_i^2) / n.
    """
    analyzer = result["analyzer"]
    truth = result["truth"]
    size = size_broadening_nm(analyzer.L_nm, analyzer.K)
    total = np.zeros(len(truth["sc_mask"]))
    count = np.zeros(len(truth["sc_mask"]))
    for peak in WAXS:
        _, status = column(result, f"{peak}.q0_nm")
        used = status == Status.OK
        q = truth[f"{peak}.q0_nm"]
        if quantity == "g_q":
            width = truth[f"{peak}.fwhm_q_nm"]
            sigma_width = FWHM_PER_SIGMA * bound_sets[peak][:, 3]
            with np.errstate(invalid="ignore"):
                value = np.sqrt(width**2 - size**2) / q
                sigma = width * sigma_width / (q**2 * value)
        else:
            width = np.radians(truth[f"{peak}.fwhm_chi_deg"])
            sigma_width = np.radians(FWHM_PER_SIGMA * bound_sets[peak][:, 4])
            with np.errstate(invalid="ignore"):
                value = np.sqrt(width**2 - (size / q) ** 2)
                sigma = np.degrees(width * sigma_width / value)
        total += np.where(used, sigma**2, 0.0)
        count += used
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.sqrt(total) / count, np.nan)


def resolved_within_ten_percent(result, bound_sets, quantity, truth_name):
    """Frames where the truth is above the 10 % resolution (2 sigma_CRB <= 10 % of it, so an
    efficient estimator lands within 10 % in >= 95 %) and whether each is within 10 %."""
    value, status = column(result, quantity)
    truth = result["truth"][truth_name]
    sigma = broadening_resolution(result, bound_sets, quantity)
    resolved = result["inside"] & (2.0 * sigma <= 0.10 * truth)
    with np.errstate(invalid="ignore"):
        good = (status == Status.OK) & (np.abs(value / truth - 1) < 0.10)
    return resolved, good, sigma / truth


def test_delta_psi_within_ten_percent_where_above_the_resolution(analysed, bounds):
    resolved, good, relative_sigma = resolved_within_ten_percent(analysed, bounds, "delta_psi_deg", "delta_psi_deg")
    inside = analysed["inside"]
    print(f"delta_psi: 1-sigma resolution {np.nanmin(relative_sigma[inside]):.1%} to "
          f"{np.nanmax(relative_sigma[inside]):.1%} of the truth; above the 10 % resolution "
          f"(2 sigma <= 10 %) on {resolved.sum()} of {inside.sum()} crystal frames, "
          f"{good[resolved].mean():.1%} of those within 10 % ({good[inside].mean():.1%} of all)")
    assert resolved.sum() >= 100
    assert good[resolved].mean() >= FRACTION


def test_g_q_is_below_the_resolution_at_the_scan_counts(analysed, bounds):
    """g (1-2 %) adds only g q = 0.1-0.4 nm^-1 in quadrature to the 2 pi K / L = 0.8 nm^-1 size
    width: with the scan's 10^3 photons per WAXS peak no frame is above the 10 % resolution of
    g_q (the value is reported, with the widths' statistics)."""
    resolved, _, relative_sigma = resolved_within_ten_percent(analysed, bounds, "g_q", "g")
    inside = analysed["inside"]
    print(f"g_q at the scan counts: 1-sigma resolution {np.nanmin(relative_sigma[inside]):.0%} to "
          f"{np.nanmax(relative_sigma[inside]):.0%} of g; above the 10 % resolution on {resolved.sum()} frames")
    assert resolved.sum() == 0
    value, status = column(analysed, "g_q")
    ok = inside & (status == Status.OK)
    assert ok.sum() > 100 and 0.005 < np.median(value[ok]) < 0.03


def test_g_q_within_ten_percent_where_above_the_resolution(issue_counts):
    """With WAXS peaks of 2.5 x 10^4 to 10^5 photons (the bright scan) the 020 and 110 widths
    resolve g: g_q within 10 % of the truth for >= 95 % of the frames above the 10 % resolution."""
    resolved, good, relative_sigma = resolved_within_ten_percent(issue_counts, issue_counts["bounds"], "g_q", "g")
    inside = issue_counts["inside"]
    print(f"g_q, bright WAXS: 1-sigma resolution {np.nanmin(relative_sigma[inside]):.1%} to "
          f"{np.nanmax(relative_sigma[inside]):.1%} of g; above the 10 % resolution on {resolved.sum()} "
          f"of {inside.sum()} frames, {good[resolved].mean():.1%} of those within 10 %")
    assert resolved.sum() >= 40
    assert good[resolved].mean() >= FRACTION


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
