"""Bad and awkward frames give missing values with a reason, never an exception or a number:
a missing peak, a peak at the window edge, saturated, masked and NaN pixels, wrong shapes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from analysis.errors import GeometryError
from analysis.frame_analysis import FrameAnalyzer
from analysis.status import Status
from simulators.synthetic_scan import SyntheticScan, SyntheticScanConfig
from stream.analysis_setup import AnalysisSetup
from stream.config_files import load_geometry, load_peak_model

NODATA = np.uint32(2**32 - 1)


@pytest.fixture(scope="module")
def setup():
    scan = SyntheticScan(SyntheticScanConfig())
    paths = AnalysisSetup.default()
    geometry, model = load_geometry(paths.poni_path), load_peak_model(paths.peaks_path)
    analyzer = FrameAnalyzer(geometry, model, pixel_mask=scan.pixel_mask,
                             background=scan.renderer.background_expected, williamson_hall_L_nm=6.8)
    centre = tuple(np.argwhere(scan.truth.maps["distance_to_edge_um"] >= 2.0)[0])
    frame = scan.frame(scan.grid.frame_index(*centre))
    return {"scan": scan, "geometry": geometry, "model": model, "analyzer": analyzer, "frame": frame}


def analyse(analyzer, frame, saturation_value=None):
    values = np.empty(len(analyzer.parameter_names))
    statuses = np.empty(len(analyzer.parameter_names), np.int32)
    analyzer.analyse(frame, values, statuses, saturation_value=saturation_value, accumulate=False)
    return dict(zip(analyzer.parameter_names, values)), dict(zip(analyzer.parameter_names, statuses))


def window_pixels(analyzer, peak: str) -> np.ndarray:
    table = analyzer.table
    window = table.window_index(peak)
    in_window = table.bin_index // (table.n_q * table.n_chi) == window
    return table.pixel_index[in_window]


def assert_missing(values, statuses, name, *reasons):
    assert np.isnan(values[name]), f"{name} = {values[name]} should be missing"
    assert statuses[name] in reasons, f"{name}: status {Status(statuses[name]).name}, expected {reasons}"


def test_reference_frame_is_fully_analysed(setup):
    values, statuses = analyse(setup["analyzer"], setup["frame"])
    for name in ("a1_nm", "a2_nm", "gamma_deg", "psi_deg", "saxs_1.q0_nm", "waxs_010.q0_nm", "saxs_intensity"):
        assert statuses[name] == Status.OK and np.isfinite(values[name]), name


def test_missing_peak_and_missing_friedel_pair(setup):
    analyzer, frame = setup["analyzer"], setup["frame"].copy()
    frame.reshape(-1)[window_pixels(analyzer, "saxs_1")] = NODATA
    values, statuses = analyse(analyzer, frame)
    assert_missing(values, statuses, "saxs_1.q0_nm", Status.TOO_FEW_POINTS)
    # its Friedel mate still gives (100)_SL: a1 stays, flagged by the pair count
    assert statuses["a1_nm"] == Status.OK and values["saxs_pair1_n_peaks"] == 1
    frame.reshape(-1)[window_pixels(analyzer, "saxs_3")] = NODATA
    values, statuses = analyse(analyzer, frame)
    for name in ("a1_nm", "a2_nm", "gamma_deg", "phi_deg", "a_mean_nm"):
        assert_missing(values, statuses, name, Status.MISSING_PEAK)
    assert statuses["psi_deg"] == Status.OK  # the WAXS side is untouched


def test_peak_without_signal_is_not_significant(setup):
    analyzer = setup["analyzer"]
    background_only = setup["scan"].background_pool()[0]
    values, statuses = analyse(analyzer, background_only)
    for peak in ("saxs_1", "saxs_2", "waxs_010", "waxs_020"):
        assert_missing(values, statuses, f"{peak}.q0_nm", Status.NOT_SIGNIFICANT, Status.TOO_FEW_POINTS)
    assert statuses["saxs_intensity"] == Status.OK  # the integrated intensity is a measurement


@pytest.mark.parametrize("edge", ["chi", "q"])
def test_peak_at_the_window_edge(setup, edge):
    """A clearly significant peak (I0 / sigma > 20 in its own window) whose centre lies within
    a bin of the window edge is CENTRE_AT_EDGE, never a number and not NOT_SIGNIFICANT."""
    model = setup["model"]
    values, statuses = analyse(setup["analyzer"], setup["frame"])
    assert statuses["saxs_1.q0_nm"] == Status.OK
    assert values["saxs_1.i0"] / values["saxs_1.i0_err"] > 20
    chi0, q0 = values["saxs_1.chi0_deg"], values["saxs_1.q0_nm"]
    peak = model.peak("saxs_1")
    if edge == "chi":
        moved = dataclasses.replace(peak, chi_range_deg=(chi0 - 1.0, chi0 + 49.0))
    else:
        width = peak.q_range_nm[1] - peak.q_range_nm[0]
        moved = dataclasses.replace(peak, q_range_nm=(q0 - 0.005, q0 - 0.005 + width))
    edge_model = dataclasses.replace(model, peaks=tuple(moved if p.name == "saxs_1" else p for p in model.peaks))
    analyzer = FrameAnalyzer(setup["geometry"], edge_model, pixel_mask=setup["scan"].pixel_mask,
                             background=setup["scan"].renderer.background_expected, williamson_hall_L_nm=6.8)
    values, statuses = analyse(analyzer, setup["frame"])
    assert_missing(values, statuses, "saxs_1.q0_nm", Status.CENTRE_AT_EDGE)


def test_saturated_pixels_in_a_peak(setup):
    analyzer, frame = setup["analyzer"], setup["frame"].copy()
    pixels = window_pixels(analyzer, "waxs_010")
    frame.reshape(-1)[pixels[len(pixels) // 2]] = 500_000
    values, statuses = analyse(analyzer, frame, saturation_value=100_000)
    assert_missing(values, statuses, "waxs_010.q0_nm", Status.SATURATED)
    assert statuses["waxs_020.q0_nm"] == Status.OK


def test_masked_pixels_inside_a_peak_are_skipped(setup):
    analyzer, frame = setup["analyzer"], setup["frame"].copy()
    reference, _ = analyse(analyzer, frame)
    pixels = window_pixels(analyzer, "waxs_010")
    frame.reshape(-1)[pixels[::3]] = NODATA  # a third of the window's pixels
    values, statuses = analyse(analyzer, frame)
    assert statuses["waxs_010.q0_nm"] == Status.OK
    assert abs(values["waxs_010.q0_nm"] / reference["waxs_010.q0_nm"] - 1) < 0.003


def test_nan_pixels_in_float_frames(setup):
    analyzer = setup["analyzer"]
    frame = setup["frame"].astype(np.float64)
    frame[frame == float(NODATA)] = np.nan
    values, statuses = analyse(analyzer, frame)
    assert statuses["a1_nm"] == Status.OK
    all_nan = np.full(frame.shape, np.nan)
    values, statuses = analyse(analyzer, all_nan)
    assert_missing(values, statuses, "saxs_intensity", Status.TOO_FEW_POINTS)
    for name in ("saxs_1.q0_nm", "waxs_010.q0_nm"):
        assert_missing(values, statuses, name, Status.TOO_FEW_POINTS)
    assert all(np.isnan(v) for n, v in values.items() if statuses[n] != Status.OK)


def test_wrong_frame_shape_is_a_geometry_error(setup):
    with pytest.raises(GeometryError, match="frame shape"):
        analyse(setup["analyzer"], np.zeros((100, 100), np.uint32))


def test_a_batch_gives_exactly_the_results_of_frame_by_frame_analysis(setup):
    """Fits and physics run once per batch; every frame still gets its own numbers and statuses
    bit for bit, bad frames included (all NODATA, a saturated peak), and the average pattern
    receives every frame once."""
    analyzer, frame = setup["analyzer"], setup["frame"]
    scan = setup["scan"]
    dark = np.full_like(frame, NODATA)
    saturated = frame.copy()
    saturated.reshape(-1)[window_pixels(analyzer, "waxs_010")[:50]] = 10**6
    outside = scan.frame(0)
    frames = [frame, dark, saturated, outside, frame]
    n, n_params = len(frames), len(analyzer.parameter_names)
    one_by_one = np.empty((n, n_params)), np.empty((n, n_params), np.int32)
    analyzer.average.reset()
    for k, f in enumerate(frames):
        analyzer.analyse(f, one_by_one[0][k], one_by_one[1][k], saturation_value=10**5)
    single_average = analyzer.average.signal_sum.copy(), analyzer.average.n_frames
    analyzer.average.reset()
    batched = np.full((n, n_params), -1.0), np.full((n, n_params), -1, np.int32)
    analyzer.analyse_batch(frames, *batched, saturation_value=10**5)
    assert np.array_equal(batched[0], one_by_one[0], equal_nan=True)
    assert np.array_equal(batched[1], one_by_one[1])
    statuses = dict(zip(analyzer.parameter_names, batched[1][2]))
    assert statuses["waxs_010.q0_nm"] == Status.SATURATED
    dark_statuses = dict(zip(analyzer.parameter_names, batched[1][1]))
    assert all(dark_statuses[name] != Status.OK for name in ("saxs_intensity", "saxs_1.q0_nm", "a1_nm"))
    assert analyzer.average.n_frames == single_average[1] == n
    assert np.array_equal(analyzer.average.signal_sum, single_average[0], equal_nan=True)
    analyzer.average.reset()
    with pytest.raises(ValueError, match="batch holds"):
        analyzer.analyse_regrouped(analyzer.batch.capacity + 1, *batched)


def test_poisson_fit_inputs_equal_their_numpy_expressions():
    """The one-pass kernel that prepares a window group's Poisson fit inputs gives bit for bit
    the NumPy expressions it replaced, gathered from the padded windows into the group's order
    (frame-major, the group's windows, their first n_q x n_chi bins), with empty bins, bins
    without geometric pixels (area NaN), NaN counts and an infinite sum."""
    from analysis.peak_window_fits import poisson_fit_inputs

    rng = np.random.default_rng(8)
    n_frames, bins = 3, (4, 6, 9)  # padded windows of up to 6 x 9 bins
    area = rng.uniform(0.5, 2.0, bins)
    area[2, 0, :7] = np.nan
    n_valid = rng.integers(0, 5, (n_frames,) + bins).astype(np.int32)
    sum_counts = rng.poisson(3.0, (n_frames,) + bins).astype(np.float64)
    mean_counts = sum_counts / np.maximum(n_valid, 1) - rng.uniform(0, 1, (n_frames,) + bins)
    mean_counts[0, 2, 1, 1:6] = np.nan
    sum_counts[1, 3, 2, 2] = np.inf
    variance = rng.uniform(0.1, 2.0, (n_frames,) + bins)
    windows, n_q, n_chi = np.array([3, 0, 2]), 5, 7  # a group of 5 x 7 windows, out of order
    outputs = [np.full((n_frames * windows.size, n_q, n_chi), -1.0) for _ in range(4)]
    poisson_fit_inputs(mean_counts, variance, n_valid, sum_counts, area, windows, *outputs)
    pixels = n_valid.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        exposure = np.where(pixels > 0, pixels * area, 0.0)
        offset = np.where(pixels > 0, (sum_counts / np.maximum(pixels, 1.0) - mean_counts) / area, 0.0)
    expected = [mean_counts / area, variance / area**2, np.where(np.isfinite(exposure), exposure, 0.0),
                np.where(np.isfinite(offset), offset, 0.0)]
    for got, want in zip(outputs, expected):
        np.testing.assert_array_equal(got, want[:, windows, :n_q, :n_chi].reshape(-1, n_q, n_chi))
    infinite = 1 * windows.size + 0  # frame 1, window 3 (first of the group), bin (2, 2)
    assert outputs[2][infinite, 2, 2] != 0 and outputs[3][infinite, 2, 2] == 0.0  # no offset
    assert np.isnan(outputs[0][2 * 0 + 2, 0, 1:6]).all()  # frame 0, window 2: area NaN
