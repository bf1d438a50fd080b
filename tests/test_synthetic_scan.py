"""The synthetic supercrystal scan: truth, detector mask, rendering, files and cache."""

from __future__ import annotations

import dataclasses
import json

import h5py
import hdf5plugin  # noqa: F401  (registers the bitshuffle-LZ4 filter)
import numpy as np
import pytest

from analysis.geometry import wrap_degrees
from simulators import synthetic_scan
from simulators.eiger4m_detector import (EIGER_X_4M_SHAPE, MASK_DEAD, MASK_GAP, MASK_HOT, NODATA_UINT32,
                                         eiger4m_pixel_mask)
from simulators.eiger_files import open_eiger_scan
from simulators.pattern_renderer import PatternRenderer, gaussian_peak_reference
from simulators.supercrystal import PEAK_NAMES, PeakSpec, PointParameters, make_truth, williamson_hall_fwhm
from simulators.synthetic_scan import (SyntheticScan, SyntheticScanConfig, ensure_cached_scan, generate_frames,
                                       load_geometry, read_truth_file, truth_path, write_synthetic_scan)

# 5 x 4 points 3 um apart: the raster (12 x 9 um) holds the whole SC and some empty points.
SMALL = SyntheticScanConfig(grid_shape=(5, 4), step_um=3.0, n_background_realisations=2, nimages_per_file=8)


def circular_mean_deg(*angles_deg):
    radians = np.radians(np.stack(angles_deg))
    return np.degrees(np.arctan2(np.sin(radians).mean(axis=0), np.cos(radians).mean(axis=0)))


@pytest.fixture(scope="module")
def renderer() -> PatternRenderer:
    return PatternRenderer(load_geometry(SyntheticScanConfig().poni_path), eiger4m_pixel_mask())


@pytest.fixture(scope="module")
def default_truth():
    return make_truth(SyntheticScanConfig())


def centre_point(truth) -> tuple[int, int]:
    return np.unravel_index(np.nanargmax(truth.maps["distance_to_edge_um"]), truth.grid_shape)


# -- truth -----------------------------------------------------------------------------------------
def test_truth_covers_part_of_the_raster_with_published_ranges(default_truth):
    m = default_truth.maps
    inside = m["sc_mask"] == 1
    assert 0.2 < inside.mean() < 0.6
    assert np.all(np.isnan(m["a1_nm"][~inside])) and np.all(m["saxs_1.i0"][~inside] == 0)
    assert np.all(np.isfinite(m["a1_nm"][inside]))
    ranges = {"a_mean_nm": (7.8, 10.7), "a_ratio": (0.85, 1.15), "gamma_deg": (80, 100), "phi_deg": (75, 95),
              "g": (0.01, 0.02), "delta_psi_deg": (9.9, 24.0)}
    for name, (low, high) in ranges.items():
        values = m[name][inside]
        assert low - 1e-9 <= values.min() and values.max() <= high + 1e-9, name
        assert values.max() - values.min() > 0.5 * (high - low), f"{name} hardly varies"
    # centre values deep inside, edge values at the edge; intensities fall towards the edge
    centre, edge = centre_point(default_truth), np.unravel_index(np.nanargmin(m["distance_to_edge_um"]), inside.shape)
    assert m["a_mean_nm"][centre] > 10.3 and m["a_mean_nm"][edge] < 8.3
    assert m["waxs_010.i0"][centre] > 2 * m["waxs_010.i0"][edge]
    assert np.all(np.abs(m["psi_deg"] - m["phi_deg"] - 45.0)[inside] <= 1.5 + 1e-9)
    assert set(default_truth.units) == set(m) and default_truth.units["a1_nm"] == "nm"


def test_truth_peaks_follow_the_superlattice_and_atomic_lattice_relations(default_truth):
    m = default_truth.maps
    inside = m["sc_mask"] == 1
    # forward: q1 = 2 pi / (a1 sin gamma), omega1 = phi + gamma/2 - 90, omega2 = phi - gamma/2 + 90
    gamma = np.radians(m["gamma_deg"])
    np.testing.assert_allclose(m["saxs_1.q0_nm"][inside], (2 * np.pi / (m["a1_nm"] * np.sin(gamma)))[inside])
    np.testing.assert_allclose(m["saxs_4.q0_nm"][inside], (2 * np.pi / (m["a2_nm"] * np.sin(gamma)))[inside])
    omega1 = m["phi_deg"] + m["gamma_deg"] / 2 - 90
    np.testing.assert_allclose(m["saxs_1.chi0_deg"][inside], wrap_degrees(omega1)[inside])
    np.testing.assert_allclose(np.abs(wrap_degrees(m["saxs_3.chi0_deg"] - m["saxs_1.chi0_deg"]))[inside], 180.0)
    # backward, as science.md section 3 reads the peaks
    w1 = m["saxs_1.chi0_deg"]
    w2 = m["saxs_2.chi0_deg"]
    phi1, phi2 = w2 - 90.0, w1 + 90.0
    np.testing.assert_allclose((phi2 - phi1)[inside], m["gamma_deg"][inside])
    np.testing.assert_allclose(((phi1 + phi2) / 2)[inside], m["phi_deg"][inside])
    np.testing.assert_allclose((2 * np.pi / (m["saxs_2.q0_nm"] * np.sin(np.radians(phi2 - phi1))))[inside],
                               m["a2_nm"][inside])
    # WAXS: psi = mean(chi_010, chi_020, chi_110 + 45, chi_-110 - 45); a_AL from q0 and indices
    psi = circular_mean_deg(m["waxs_010.chi0_deg"], m["waxs_020.chi0_deg"], m["waxs_110.chi0_deg"] + 45,
                            m["waxs_m110.chi0_deg"] - 45)
    np.testing.assert_allclose(wrap_degrees(psi - m["psi_deg"])[inside], 0.0, atol=1e-9)
    np.testing.assert_allclose((2 * np.pi * np.sqrt(2) / m["waxs_110.q0_nm"])[inside], m["a_al_nm"][inside])
    np.testing.assert_allclose((4 * np.pi / m["waxs_020.q0_nm"])[inside], m["a_al_nm"][inside])
    # Williamson-Hall inverted as science.md section 5 does it recovers g and delta_psi
    size_term = 2 * np.pi * 0.86 / m["L_nm"]
    for name in ("waxs_010", "waxs_020", "waxs_110"):
        q = m[f"{name}.q0_nm"]
        g = np.sqrt(m[f"{name}.fwhm_q_nm"] ** 2 - size_term**2) / q
        delta_psi = np.sqrt((np.radians(m[f"{name}.fwhm_chi_deg"]) * q) ** 2 - size_term**2) / q
        np.testing.assert_allclose(g[inside], m["g"][inside])
        np.testing.assert_allclose(np.degrees(delta_psi)[inside], m["delta_psi_deg"][inside])
    fwhm_q, fwhm_chi = williamson_hall_fwhm(10.93, 6.8, 0.0, 0.0, 0.86)
    assert fwhm_q == pytest.approx(2 * np.pi * 0.86 / 6.8) and fwhm_chi == pytest.approx(np.degrees(fwhm_q / 10.93))


# -- detector ----------------------------------------------------------------------------------------
def test_pixel_mask_has_the_eiger4m_gaps_and_a_few_defects():
    from pyFAI.detectors import detector_factory

    mask = eiger4m_pixel_mask()
    assert mask.shape == EIGER_X_4M_SHAPE == (2167, 2070) and mask.dtype == np.uint32
    gaps = (mask & MASK_GAP) != 0
    np.testing.assert_array_equal(gaps, detector_factory("Eiger4M").calc_mask().astype(bool))
    assert gaps[514:551].all() and gaps[1065:1102].all() and gaps[1616:1653].all() and gaps[:, 1030:1040].all()
    assert not gaps[513, :1030].any() and not gaps[551, :1030].any() and not gaps[:514, 1029].any()
    assert 10 <= np.count_nonzero(mask & MASK_DEAD) <= 30 and 3 <= np.count_nonzero(mask & MASK_HOT) <= 10
    assert set(np.unique(mask)) <= {0, 1, 2, 8}
    np.testing.assert_array_equal(mask, eiger4m_pixel_mask())  # defects stay where they are


# -- rendering ---------------------------------------------------------------------------------------
def test_inverse_geometry_round_trips_pixel_centres(renderer):
    tables = renderer.tables
    rows, cols = np.meshgrid(np.arange(0, 2167, 13), np.arange(0, 2070, 11), indexing="ij")
    back_rows, back_cols = tables.plane.pixel_of(tables.q_nm[rows, cols], tables.chi_deg[rows, cols])
    np.testing.assert_allclose(back_rows, rows, atol=1e-6)
    np.testing.assert_allclose(back_cols, cols, atol=1e-6)


def test_peak_kernel_matches_numpy_reference(renderer, default_truth):
    point = default_truth.point(*centre_point(default_truth))
    wrapping = PeakSpec("wraps_at_180", 2000.0, 12.0, 178.0, 0.9, 30.0)  # chi window crosses +-180
    tables, weight = renderer.tables, renderer.tables.area_q_chi * renderer.transmission
    for peak in (point.peaks[0], point.peaks[4], point.peaks[7], wrapping):
        index, expected = renderer.peak_pixels(peak)
        frame = np.zeros(tables.q_nm.size)
        frame[index] = expected
        reference = gaussian_peak_reference(tables.q_nm, tables.chi_deg, weight, peak, renderer.n_sigma)
        np.testing.assert_allclose(frame.reshape(reference.shape), reference, rtol=1e-12, atol=1e-300)
        assert index.size == np.count_nonzero(reference)


@pytest.mark.parametrize("peak_index", [0, 1, 4])  # saxs_1, saxs_2, waxs_010
def test_peak_photons_and_centre(renderer, default_truth, peak_index):
    peak = default_truth.point(*centre_point(default_truth)).peaks[peak_index]
    alone = PointParameters(True, (peak,), 0.0)
    # noise-free: the pixel sums integrate the Gaussian (pixel area in (q, chi) space)
    index, expected = renderer.peak_pixels(peak)
    assert expected.sum() == pytest.approx(peak.i0, rel=1e-3)
    noise_free = renderer.render_expected(alone, include_background=False)
    region = np.isfinite(noise_free) & (noise_free > 0)
    weights = noise_free[region]
    q_mean = np.average(renderer.tables.q_nm[region], weights=weights)
    chi_mean = peak.chi0_deg + np.average(wrap_degrees(renderer.tables.chi_deg[region] - peak.chi0_deg),
                                          weights=weights)
    tolerance = 0.05 if peak.name.startswith("waxs") else 0.01  # a gap edge pulls the WAXS centroid a little
    assert q_mean == pytest.approx(peak.q0_nm, abs=tolerance * peak.sigma_q_nm)
    assert chi_mean == pytest.approx(peak.chi0_deg, abs=tolerance * peak.sigma_chi_deg)
    # counts: photons on unmasked pixels match the noise-free total within Poisson error
    empty = np.zeros(renderer.geometry.shape, dtype=np.uint32)
    counts = renderer.render_counts(alone, np.random.default_rng(7), empty)
    good = ~renderer.masked
    total = int(counts[good].sum(dtype=np.int64))
    assert abs(total - np.nansum(noise_free)) < 4.5 * np.sqrt(peak.i0)
    if region.sum() == np.count_nonzero(expected):  # wholly on sensitive pixels: the total is I0
        assert abs(total - peak.i0) < 4.5 * np.sqrt(peak.i0)
    hits = counts > 0
    q_counts = np.average(renderer.tables.q_nm[hits], weights=counts[hits])
    assert q_counts == pytest.approx(peak.q0_nm, abs=0.1 * peak.sigma_q_nm + 5 * peak.sigma_q_nm / np.sqrt(total))


def test_counts_are_masked_and_the_beamstop_shadow_is_dark(renderer, default_truth):
    point = default_truth.point(*centre_point(default_truth))
    frame = renderer.render_counts(point, np.random.default_rng(3))
    assert frame.dtype == np.uint32 and frame.shape == (2167, 2070)
    assert np.all(frame[renderer.masked] == NODATA_UINT32) and np.all(frame[~renderer.masked] < 100000)
    assert np.all(np.isnan(renderer.render_expected(point)[renderer.masked]))
    row0, col0 = renderer.geometry.beam_centre_px
    shadow = frame[int(row0) - 6:int(row0) + 7, int(col0) - 6:int(col0) + 7]
    assert shadow.max() <= 5
    ring = frame[int(row0) + 14:int(row0) + 20, int(col0) - 3:int(col0) + 3]
    assert ring.mean() > 5  # diffuse SAXS just outside the beamstop
    assert np.mean(frame[~renderer.masked] <= 1) > 0.9  # mostly 0 or 1 counts: compresses well


# -- scans -------------------------------------------------------------------------------------------
def test_frames_are_reproducible_and_sit_at_their_raster_points(renderer):
    frames = list(generate_frames(SMALL))
    again = list(generate_frames(SMALL))
    assert len(frames) == 20 and all(np.array_equal(a, b) for a, b in zip(frames, again))
    other = next(iter(generate_frames(dataclasses.replace(SMALL, seed=SMALL.seed + 1))))
    assert not np.array_equal(frames[0], other)
    snake = SyntheticScan(dataclasses.replace(SMALL, snake=True))
    saxs_map = snake.truth_maps()["saxs_intensity_expected"]
    inside = snake.truth.maps["sc_mask"]
    assert 0 < inside.sum() < inside.size
    region = ~renderer.masked & (renderer.tables.q_nm < 2.0)
    for k, frame in enumerate(snake.frames()):
        row, column = snake.grid.position(k)
        assert (row, column) == ((k // 4), (k % 4 if row % 2 == 0 else 3 - k % 4))
        measured = frame[region].sum(dtype=np.int64)
        assert abs(measured - saxs_map[row, column]) < 5 * np.sqrt(saxs_map[row, column]), (k, row, column)


def test_written_scan_reads_back_with_identical_pixels_and_truth(tmp_path):
    master = write_synthetic_scan(tmp_path / "scan", SMALL)
    assert master.name == "supercrystal_master.h5" and truth_path(master).is_file()
    frames = list(generate_frames(SMALL))
    with h5py.File(master, "r") as handle:
        assert set(handle["entry/data"]) == {"data_000001", "data_000002", "data_000003"}
        stored = np.concatenate([handle[f"entry/data/{name}"][()] for name in sorted(handle["entry/data"])])
        assert handle["entry/instrument/detector/detectorSpecific/compression"][()] == b"bslz4"
    assert stored.dtype == np.uint32 and stored.shape == (20, 2167, 2070)
    for k, frame in enumerate(frames):
        np.testing.assert_array_equal(stored[k], frame)
    with open_eiger_scan(master) as scan:
        metadata = scan.metadata
        assert metadata.extra["grid_shape"] == (5, 4) and metadata.extra["snake"] is False
        assert json.loads(metadata.extra["scan_grid_json"])["step_um"] == [3.0, 3.0]
        assert metadata.pixel_mask_applied and np.array_equal(metadata.pixel_mask, eiger4m_pixel_mask())
        assert metadata.beam_centre_px == pytest.approx((1835.0, 1884.0))
        assert scan.read_chunk(0)[1] == "bslz4"
    truth, background, config = read_truth_file(truth_path(master))
    assert config == SMALL
    assert background.dtype == np.float32 and background.shape == (2167, 2070)
    expected_truth = make_truth(SMALL)
    for name in ("sc_mask", "a1_nm", "psi_deg", *(f"{peak}.i0" for peak in PEAK_NAMES)):
        np.testing.assert_array_equal(truth.maps[name], expected_truth.maps[name])
    assert truth.units["saxs_1.q0_nm"] == "nm^-1" and "saxs_intensity_expected" in truth.maps
    with h5py.File(truth_path(master), "r") as handle:
        assert handle["maps/gamma_deg"].attrs["units"] == "deg"


def test_cache_generates_once_and_never_leaves_half_a_scan(tmp_path, monkeypatch):
    config = dataclasses.replace(SMALL, grid_shape=(2, 2), step_um=4.0)
    calls = []
    real_write = synthetic_scan.write_synthetic_scan

    def counting_write(directory, cfg):
        calls.append(directory)
        return real_write(directory, cfg)

    monkeypatch.setattr(synthetic_scan, "write_synthetic_scan", counting_write)
    master = ensure_cached_scan(tmp_path, config)
    assert master.is_file() and len(calls) == 1
    assert ensure_cached_scan(tmp_path, config) == master and len(calls) == 1
    assert [p.name for p in tmp_path.iterdir()] == [master.parent.name]

    def interrupted_write(directory, cfg):
        (directory / "supercrystal_master.h5").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic_scan, "write_synthetic_scan", interrupted_write)
    other = dataclasses.replace(config, seed=config.seed + 1)
    assert synthetic_scan.cache_key(other) != synthetic_scan.cache_key(config)
    with pytest.raises(KeyboardInterrupt):
        ensure_cached_scan(tmp_path, other)
    assert [p.name for p in tmp_path.iterdir()] == [master.parent.name]
