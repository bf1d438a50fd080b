"""Polar regrouping tables: binning checked pixel by pixel and against pyFAI integrate2d."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import pytest

from analysis.errors import GeometryError
from analysis.geometry import DetectorGeometry, pixel_q_chi
from analysis.peak_model import PeakModel, PeakWindow
from analysis.polar_table import build_polar_table
from analysis.regroup_kernel import regroup_frame
from analysis.status import Status
from stream.config_files import load_geometry, load_peak_model

CONFIG = Path(__file__).resolve().parents[1] / "config"
NODATA_U32 = 2**32 - 1


def small_geometry() -> DetectorGeometry:
    """A 60 x 72 px generic detector, 50 mm from the sample, beam near the centre (q up to ~5 nm^-1)."""
    return DetectorGeometry(distance_m=0.05, poni1_m=31.3 * 75e-6, poni2_m=35.7 * 75e-6, rot1_rad=0.02,
                            rot2_rad=-0.01, rot3_rad=0.0, wavelength_m=8.984e-11, pixel1_m=75e-6,
                            pixel2_m=75e-6, shape=(60, 72))


def small_model() -> PeakModel:
    """Windows that cross +-180, cross 0, differ in size; q below 1 nm^-1 is the SAXS region."""
    return PeakModel(peaks=(
        PeakWindow("waxs_100", "waxs", (1.0, 3.0), (135.0, 215.0), 10, 16, hkl=(1, 0, 0)),
        PeakWindow("waxs_010", "waxs", (1.5, 4.0), (-30.0, 40.0), 12, 9, hkl=(0, 1, 0)),
        PeakWindow("waxs_001", "waxs", (2.0, 4.5), (50.0, 120.0), 7, 20, hkl=(0, 0, 1)),
    ), saxs_integration_q_max_nm=1.0)


def reference_bins(geometry, model, excluded):
    """Per-pixel loop: (flat pixel, window, i_q, i_chi) of every valid pixel, straight from the definition."""
    q_nm, chi_deg = pixel_q_chi(geometry)
    entries = []
    for p, (q, chi) in enumerate(zip(q_nm.ravel(), chi_deg.ravel())):
        if excluded.ravel()[p]:
            continue
        for w, window in enumerate(model.peaks):
            start, end = window.chi_range_deg
            chi_unwrapped = chi if chi >= start else chi + 360.0
            if window.q_range_nm[0] <= q < window.q_range_nm[1] and chi_unwrapped < end:
                i_q = math.floor((q - window.q_range_nm[0]) / window.q_width_nm * window.n_q)
                i_chi = math.floor((chi_unwrapped - start) / window.chi_width_deg * window.n_chi)
                entries.append((p, w, i_q, i_chi))
    return entries


def pyfai_window(geometry, window, frame, excluded, q_nm, chi_deg, dummy=None):
    """pyFAI integrate2d_ng ("no", "histogram", "cython") of one window, as (n_q, n_chi) arrays in
    our chi order: (sum_signal, count, intensity, q centres, chi centres)."""
    integrator = geometry.integrator()
    start, end = window.chi_range_deg
    low, high = -end, -start              # our chi = -pyFAI chi: [a, b] -> [-b, -a]
    if low >= -180.0:
        integrator.setChiDiscAtPi()
    else:                                 # crosses +-180 in our convention: use pyFAI's [0, 360)
        low, high = low + 360.0, high + 360.0
        integrator.setChiDiscAtZero()
    # pyFAI's histogram truncates (x - min) / delta towards zero, so pixels up to one bin below
    # the lower range bound land in the first bin: mask what is outside the window ourselves.
    outside = ((q_nm < window.q_range_nm[0]) | (q_nm >= window.q_range_nm[1])
               | (np.mod(chi_deg - start, 360.0) >= end - start))
    result = integrator.integrate2d_ng(
        frame, window.n_q, window.n_chi, radial_range=window.q_range_nm, azimuth_range=(low, high),
        unit="q_nm^-1", method=("no", "histogram", "cython"), correctSolidAngle=False,
        polarization_factor=None, mask=(excluded | outside).astype(np.int8), dummy=dummy)
    flip = lambda a: np.asarray(a, dtype=np.float64)[::-1, :].T  # (n_chi, n_q) descending chi -> (n_q, n_chi)
    chi_centres = -np.asarray(result.azimuthal)[::-1] + (0.0 if low == -end else 360.0)
    return flip(result.sum_signal), flip(result.count), flip(result.intensity), np.asarray(result.radial), chi_centres


def compare_with_pyfai(table, geometry, model, frame, excluded, dummy=None, invalid_value=None):
    """Per-window comparison statistics; asserts exact agreement apart from bin-edge pixels."""
    q_nm, chi_deg = pixel_q_chi(geometry)
    ours = regroup_frame(frame, table, invalid_value=invalid_value)
    report = {}
    for w, window in enumerate(model.peaks):
        q_bins, chi_bins = table.window_bins(w)
        sums, counts, intensity, q_centres, chi_centres = pyfai_window(
            geometry, window, frame, excluded, q_nm, chi_deg, dummy=dummy)
        our_sums = ours.sum_counts[w][q_bins, chi_bins]
        our_counts = ours.n_valid[w][q_bins, chi_bins]
        np.testing.assert_allclose(table.q_centres_nm[w][q_bins], q_centres, rtol=1e-6)
        np.testing.assert_allclose(table.chi_centres_deg[w][chi_bins], chi_centres, atol=1e-3)
        differs = (our_counts != counts) | ~np.isclose(our_sums, sums, rtol=1e-9, atol=0)
        moved_pixels = np.abs(our_counts - counts).sum() / 2
        total = counts.sum()
        report[window.name] = (int(differs.sum()), differs.size, moved_pixels, total)
        # every bin with the same pixels has the same mean counts (pyFAI: signal / normalisation)
        same = ~differs & (counts > 0)
        np.testing.assert_allclose(ours.mean_counts[w][q_bins, chi_bins][same], intensity[same], rtol=1e-6)
        assert differs.sum() <= max(2, 0.01 * differs.size), (window.name, report[window.name])
        assert moved_pixels <= max(2, 1e-4 * total), (window.name, report[window.name])
        assert abs(int(our_counts.sum()) - int(total)) <= max(1, 1e-5 * total)
    return report


# -- small synthetic geometry -------------------------------------------------------------------
def test_table_bins_every_pixel_as_defined():
    geometry, model = small_geometry(), small_model()
    rng = np.random.default_rng(3)
    mask = (rng.random(geometry.shape) < 0.05).astype(np.uint32) * 8
    table = build_polar_table(geometry, model, pixel_mask=mask)
    n_q, n_chi = table.n_q, table.n_chi
    expected = sorted((p, (w * n_q + i_q) * n_chi + i_chi)
                      for p, w, i_q, i_chi in reference_bins(geometry, model, mask != 0))
    got = list(zip(table.pixel_index.tolist(), table.bin_index.tolist()))
    assert got == expected
    assert table.pixel_index.dtype == np.int64 and table.bin_index.dtype == np.int32
    assert np.all(np.diff(table.pixel_index) >= 0)
    assert table.bins_shape == (3, 12, 20)
    # padding bins of smaller windows hold nothing and have NaN centres
    assert table.pixel_count_geometric[2, 7:].sum() == 0 and np.isnan(table.q_centres_nm[2, 7:]).all()
    assert np.isnan(table.chi_centres_deg[1, 9:]).all()
    # counts before / after the static mask
    unmasked = build_polar_table(geometry, model, pixel_mask=np.zeros(geometry.shape, np.uint32))
    np.testing.assert_array_equal(table.pixel_count_geometric, unmasked.pixel_count_valid)
    assert table.pixel_count_valid.sum() == table.n_entries < unmasked.n_entries
    assert np.all(table.pixel_count_valid <= table.pixel_count_geometric)
    # SAXS region: valid pixels with q < 1 nm^-1, and its geometric count
    q_nm, _ = pixel_q_chi(geometry)
    np.testing.assert_array_equal(table.saxs_pixel_index, np.flatnonzero((q_nm < 1.0) & (mask == 0)))
    assert table.saxs_pixel_count_geometric == np.count_nonzero(q_nm < 1.0)


def test_window_across_180_is_continuous():
    geometry, model = small_geometry(), small_model()
    table = build_polar_table(geometry, model)
    chi_centres = table.window_centres(0)[1]
    assert chi_centres[0] == pytest.approx(135 + 2.5) and chi_centres[-1] == pytest.approx(215 - 2.5)
    assert np.all(np.diff(chi_centres) > 0)
    _, chi_deg = pixel_q_chi(geometry)
    window_image = table.pixel_window_image().ravel()
    in_window = table.pixel_index[table.bin_index // table.n_bins_per_window == 0]
    chi = chi_deg.ravel()[in_window]
    assert (chi < -150).any() and (chi > 150).any()        # pixels on both sides of +-180
    assert np.all(window_image[in_window] == 0)
    i_chi = table.bin_index[table.bin_index // table.n_bins_per_window == 0] % table.n_chi
    unwrapped = np.where(chi < 0, chi + 360, chi)
    edges = table.chi_edges_deg[0]
    assert np.all((edges[i_chi] <= unwrapped) & (unwrapped < edges[i_chi + 1]))


def test_small_geometry_matches_pyfai_integrate2d():
    geometry, model = small_geometry(), small_model()
    rng = np.random.default_rng(11)
    mask = rng.random(geometry.shape) < 0.03
    table = build_polar_table(geometry, model, pixel_mask=mask)
    frame = rng.integers(0, 1000, geometry.shape).astype(np.uint32)
    frame[rng.random(geometry.shape) < 0.02] = NODATA_U32
    report = compare_with_pyfai(table, geometry, model, frame, mask, dummy=NODATA_U32, invalid_value=NODATA_U32)
    assert set(report) == {"waxs_100", "waxs_010", "waxs_001"}


def test_mask_of_wrong_shape_is_rejected():
    with pytest.raises(GeometryError, match=r"pixel mask shape \(3, 3\)"):
        build_polar_table(small_geometry(), small_model(), pixel_mask=np.zeros((3, 3)))


# -- real P10 geometry ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lapkin():
    geometry = load_geometry(CONFIG / "p10_lapkin_eiger4m.poni")
    model = load_peak_model(CONFIG / "peaks_cspbbr2cl_lapkin.yaml")
    rng = np.random.default_rng(5)
    mask = np.zeros(geometry.shape, np.uint32)
    mask[rng.random(geometry.shape) < 0.01] = 2          # scattered dead pixels
    mask[514:551, :] = 1                                  # one horizontal module gap
    started = time.perf_counter()
    table = build_polar_table(geometry, model, pixel_mask=mask)
    build_s = time.perf_counter() - started
    return geometry, model, mask, table, build_s


def test_p10_table_builds_in_seconds_with_every_default_window_on_the_detector(lapkin):
    geometry, model, mask, table, build_s = lapkin
    print(f"P10 EIGER X 4M polar table: {table.n_entries} entries, built in {build_s:.2f} s")
    assert build_s < 30.0                 # ~2.5 s on a loaded 2-core machine
    assert list(table.window_status) == [Status.OK] * 8
    assert np.all(table.window_coverage[:6] == 1.0)
    # on this geometry the detector edge cuts the 110 and -110 windows (column 2069 at chi ~79 deg)
    assert 0.4 < table.window_coverage[table.window_index("waxs_110")] < 1.0
    assert table.saxs_pixel_count_geometric > 70_000


def test_p10_geometry_matches_pyfai_integrate2d(lapkin):
    geometry, model, mask, table, _ = lapkin
    rng = np.random.default_rng(7)
    frame = rng.integers(0, 200, geometry.shape).astype(np.uint32)
    frame[rng.random(geometry.shape) < 0.001] = NODATA_U32
    report = compare_with_pyfai(table, geometry, model, frame, mask != 0, dummy=NODATA_U32,
                                invalid_value=NODATA_U32)
    for name, (n_differ, n_bins, moved, total) in report.items():
        print(f"{name}: {n_differ}/{n_bins} bins differ from pyFAI, {moved:g} of {total:g} pixels on a bin edge")
    assert sum(r[3] for r in report.values()) > 1_000_000


def test_windows_off_the_detector_or_in_a_gap_are_reported(caplog):
    geometry = load_geometry(CONFIG / "p10_lapkin_eiger4m.poni")
    q_nm, _ = pixel_q_chi(geometry)
    # rows 515..549 of column 1835 are inside the gap between module rows (pyFAI's Eiger4M mask)
    gap_q = (float(q_nm[548, 1835]), float(q_nm[516, 1835]))
    model = PeakModel(peaks=(
        PeakWindow("waxs_100", "waxs", (35.0, 40.0), (0.0, 60.0), 10, 10, hkl=(1, 0, 0)),      # q beyond the detector
        PeakWindow("waxs_010", "waxs", gap_q, (88.0, 92.0), 5, 4, hkl=(0, 1, 0)),               # in the gap
        PeakWindow("waxs_001", "waxs", (10.0, 12.0), (100.0, 160.0), 10, 20, hkl=(0, 0, 1)),     # fine
    ))
    with caplog.at_level(logging.WARNING, logger="analysis.polar_table"):
        table = build_polar_table(geometry, model)        # no pixel mask: module gaps from pyFAI
    assert list(table.window_status) == [Status.OUTSIDE_DETECTOR, Status.OUTSIDE_DETECTOR, Status.OK]
    assert table.pixel_count_geometric[0].sum() == 0
    assert table.pixel_count_geometric[1].sum() > 0 and table.pixel_count_valid[1].sum() == 0
    warned = " ".join(record.getMessage() for record in caplog.records)
    assert "'waxs_100'" in warned and "'waxs_010'" in warned and "'waxs_001'" not in warned
    frame = np.ones(geometry.shape, np.uint16)
    result = regroup_frame(frame, table)
    assert np.isnan(result.mean_counts[0]).all() and (result.n_valid[1] == 0).all()


def test_hiller_default_windows_are_on_the_detector():
    geometry = load_geometry(CONFIG / "p10_hiller_eiger4m.poni")
    table = build_polar_table(geometry, load_peak_model(CONFIG / "peaks_cspbbr3_hiller.yaml"))
    assert list(table.window_status) == [Status.OK] * 8
