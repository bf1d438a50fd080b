"""The Numba regroup kernel against its NumPy reference, NODATA/NaN/saturation, background."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from analysis.background import RegroupedBackground, regroup_background
from analysis.errors import GeometryError
from analysis.geometry import DetectorGeometry
from analysis.peak_model import PeakModel, PeakWindow
from analysis import regroup_kernel
from analysis.polar_table import MAX_SEGMENT_LENGTH, build_polar_table, run_length_encode
from analysis.regroup_kernel import RegroupBuffers, regroup_frame, regroup_frame_reference
from regroup_checks import assert_same_buffers as _assert_same
from regroup_checks import with_repeated_pixels

SHAPE = (48, 56)


@pytest.fixture(scope="module")
def table():
    geometry = DetectorGeometry(distance_m=0.05, poni1_m=22.4 * 75e-6, poni2_m=30.1 * 75e-6, rot1_rad=0.0,
                                rot2_rad=0.0, rot3_rad=0.0, wavelength_m=8.984e-11, pixel1_m=75e-6,
                                pixel2_m=75e-6, shape=SHAPE)
    model = PeakModel(peaks=(
        PeakWindow("waxs_100", "waxs", (1.0, 3.0), (135.0, 215.0), 8, 12, hkl=(1, 0, 0)),
        PeakWindow("waxs_010", "waxs", (1.5, 4.0), (-40.0, 40.0), 10, 9, hkl=(0, 1, 0)),
        PeakWindow("waxs_001", "waxs", (2.0, 4.0), (50.0, 120.0), 6, 14, hkl=(0, 0, 1)),
    ), saxs_integration_q_max_nm=1.2)
    mask = np.zeros(SHAPE, np.uint32)
    mask[::7, ::5] = 1
    return build_polar_table(geometry, model, pixel_mask=mask)


def _random_frame(rng, dtype):
    if np.dtype(dtype).kind == "u":
        top = min(np.iinfo(dtype).max - 1, 5000)
        frame = rng.integers(0, top, SHAPE).astype(dtype)
        frame[rng.random(SHAPE) < 0.03] = np.iinfo(dtype).max            # NODATA
    else:
        frame = (rng.random(SHAPE) * 5000 - 50).astype(dtype)
        frame[rng.random(SHAPE) < 0.03] = np.nan
    return frame


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.float32, np.float64])
@pytest.mark.parametrize("with_background", [False, True])
def test_kernel_matches_reference_on_random_frames(table, dtype, with_background):
    rng = np.random.default_rng(int(np.dtype(dtype).itemsize) * 10 + with_background)
    background = None
    if with_background:
        background = regroup_background(rng.random(SHAPE).astype(np.float32) * 20, table).scaled(1.7)
    out = RegroupBuffers.for_table(table)
    for _ in range(3):                      # buffers are reused: every call overwrites them
        frame = _random_frame(rng, dtype)
        saturation = 200 if dtype == np.uint8 else 4000
        fast = regroup_frame(frame, table, None, saturation, background=background, out=out)
        assert fast is out
        reference = regroup_frame_reference(frame, table, None, saturation, background=background)
        _assert_same(fast, reference)
        assert fast.n_invalid.sum() > 0 and fast.n_saturated.sum() > 0
        assert np.isnan(fast.mean_counts[table.pixel_count_valid == 0]).all()


def _sparse_defects(rng, frame, table, n_defects=6):
    """A few NODATA/NaN, overloaded and (float) infinite pixels among the table's pixels: most
    runs stay clean (the kernel's fast path), a few take the pixel-by-pixel path."""
    flat = frame.reshape(-1)
    pixels = rng.choice(np.concatenate([table.pixel_index, table.saxs_pixel_index]), 3 * n_defects, replace=False)
    bad, hot, extra = np.split(pixels, 3)
    flat[bad] = np.nan if frame.dtype.kind == "f" else np.iinfo(frame.dtype).max
    flat[hot] = 250 if frame.dtype == np.uint8 else 60000
    if frame.dtype.kind == "f":
        flat[extra[:1]] = np.inf
        flat[extra[1:]] = 65535                                         # an explicit invalid value
    return frame


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.float32, np.float64])
@pytest.mark.parametrize("with_background", [False, True])
@pytest.mark.parametrize("integer_sums", [True, False])
def test_kernel_is_bit_identical_to_reference_on_mostly_clean_frames(table, monkeypatch, dtype, with_background,
                                                                     integer_sums):
    """Clean runs (integer fast path) and defective runs mixed, both summation paths of the kernel."""
    if not integer_sums:
        monkeypatch.setattr(regroup_kernel, "_integer_sums_exact", lambda *args: False)
    rng = np.random.default_rng(int(np.dtype(dtype).itemsize) * 100 + 10 * with_background + integer_sums)
    background = None
    if with_background:
        background = regroup_background(rng.random(SHAPE).astype(np.float32) * 20, table).scaled(0.3)
    top = 200 if dtype == np.uint8 else 5000
    out = RegroupBuffers.for_table(table)
    for saturation, invalid in ((None, None), (top, None), (top, 65535 if np.dtype(dtype).kind == "f" else None)):
        frame = rng.integers(0, top, SHAPE).astype(dtype)
        if np.dtype(dtype).kind == "f":
            frame += rng.random(SHAPE).astype(dtype)                     # sums that round
        _sparse_defects(rng, frame, table)
        fast = regroup_frame(frame, table, invalid, saturation, background=background, out=out)
        _assert_same(fast, regroup_frame_reference(frame, table, invalid, saturation, background=background))
        assert fast.n_invalid.sum() + fast.saxs_n_invalid > 0
        if saturation is not None:
            assert fast.n_saturated.sum() + fast.saxs_n_saturated > 0
    clean = rng.integers(0, top, SHAPE).astype(dtype)                   # no defect at all
    _assert_same(regroup_frame(clean, table, None, top, background=background, out=out),
                 regroup_frame_reference(clean, table, None, top, background=background))


def test_run_length_form_decodes_to_the_table(table):
    """Runs of consecutive pixels, cut into segments of one bin, give back every entry in order."""
    assert table.n_segments < table.n_entries
    assert table.segment_bin.dtype == np.int16 and table.segment_length.dtype == np.int16
    assert table.run_start.dtype == np.int32 and table.run_first_segment[-1] == table.n_segments
    pixels, bins = [], []
    for r in range(table.run_start.size):
        segments = slice(table.run_first_segment[r], table.run_first_segment[r + 1])
        lengths = table.segment_length[segments].astype(np.int64)
        assert lengths.sum() == table.run_length[r] and np.all(lengths > 0)
        pixels.append(table.run_start[r] + np.arange(lengths.sum()))
        bins.append(np.repeat(table.segment_bin[segments], lengths))
    np.testing.assert_array_equal(np.concatenate(pixels), table.pixel_index)
    np.testing.assert_array_equal(np.concatenate(bins), table.bin_index)
    saxs = np.concatenate([start + np.arange(length) for start, length in
                           zip(table.saxs_run_start.tolist(), table.saxs_run_length.tolist())])
    np.testing.assert_array_equal(saxs, table.saxs_pixel_index)
    assert table.max_pixels_per_sum == max(table.pixel_count_valid.max(), table.saxs_pixel_index.size)


def test_run_length_encoding_splits_long_segments_and_widens_dtypes():
    n = 2 * MAX_SEGMENT_LENGTH + 5
    pixel_index = np.concatenate([np.arange(n), np.arange(n + 10, n + 13), [n + 13, n + 13]]).astype(np.int64)
    bin_index = np.concatenate([np.zeros(n), [40000, 40000, 7], [7, 9]]).astype(np.int32)
    encoded = run_length_encode(pixel_index, bin_index, n_pixels=n + 20, n_bins=40001)
    assert encoded["segment_bin"].dtype == np.int32                    # 40001 bins do not fit int16
    np.testing.assert_array_equal(encoded["segment_length"], [MAX_SEGMENT_LENGTH, MAX_SEGMENT_LENGTH, 5, 2, 2, 1])
    np.testing.assert_array_equal(encoded["segment_bin"], [0, 0, 0, 40000, 7, 9])
    np.testing.assert_array_equal(encoded["run_start"], [0, n + 10, n + 13])     # a repeated pixel starts a run
    np.testing.assert_array_equal(encoded["run_length"], [n, 4, 1])
    np.testing.assert_array_equal(encoded["run_first_segment"], [0, 3, 5, 6])
    small = run_length_encode(pixel_index, bin_index % 100, n_pixels=n + 20, n_bins=100)
    assert small["segment_bin"].dtype == np.int16 and small["run_start"].dtype == np.int32
    empty = run_length_encode(np.zeros(0, np.int64), np.zeros(0, np.int32), n_pixels=10, n_bins=10)
    assert all(array.size == 0 for name, array in empty.items() if name != "run_first_segment")
    np.testing.assert_array_equal(empty["run_first_segment"], [0])


def test_pixels_in_two_bins_and_long_segments(table):
    """A table whose pixels repeat (one pixel in two bins) and whose segments exceed int16."""
    rng = np.random.default_rng(5)
    doubled = with_repeated_pixels(table, rng, 40)
    assert doubled.n_entries == table.n_entries + 40 and doubled.run_start.size > table.run_start.size
    frame = rng.integers(0, 3000, SHAPE).astype(np.uint16)
    _sparse_defects(rng, frame, table, n_defects=3)
    for candidate in (frame, frame.astype(np.float32) + 0.1):
        _assert_same(regroup_frame(candidate, doubled, saturation_value=50000),
                     regroup_frame_reference(candidate, doubled, saturation_value=50000))
    # one bin holding a whole row-major block: segments longer than MAX_SEGMENT_LENGTH, split
    shape = (300, 250)
    block = dataclasses.replace(table, detector_shape=shape, pixel_index=np.arange(70000, dtype=np.int64),
                                bin_index=np.full(70000, 3, np.int32),
                                saxs_pixel_index=np.arange(70000, 75000, dtype=np.int64))
    assert block.n_segments == 3 and block.max_pixels_per_sum == 70000
    big = rng.integers(0, 2**32 - 2, shape, dtype=np.uint32)
    big.ravel()[[12, 40000]] = 2**32 - 1
    for candidate in (big, big.astype(np.float64) + 0.5):
        _assert_same(regroup_frame(candidate, block, saturation_value=4e9),
                     regroup_frame_reference(candidate, block, saturation_value=4e9))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frame=arrays(np.uint16, SHAPE, elements=st.integers(0, 65534)))
def test_regrouping_conserves_intensity(table, frame):
    out = regroup_frame(frame, table)
    flat = frame.ravel().astype(np.float64)
    assert out.sum_counts.sum() == flat[table.pixel_index].sum()
    assert out.n_valid.sum() == table.n_entries
    assert out.saxs_sum == flat[table.saxs_pixel_index].sum()
    np.testing.assert_array_equal(out.n_valid, table.pixel_count_valid)


def test_nodata_nan_and_saturated_pixels(table):
    frame = np.full(SHAPE, 10, np.uint16)
    p_nodata, p_hot = table.pixel_index[5], table.pixel_index[-3]
    frame.ravel()[p_nodata] = 65535
    frame.ravel()[p_hot] = 60000
    out = regroup_frame(frame, table, saturation_value=50000)
    w_nodata = table.bin_index[5] // table.n_bins_per_window
    w_hot = table.bin_index[-3] // table.n_bins_per_window
    assert out.n_invalid[w_nodata] == 1 and out.n_invalid.sum() == 1
    assert out.n_saturated[w_hot] == 1 and out.n_saturated.sum() == 1
    assert out.n_valid.sum() == table.n_entries - 1
    assert out.sum_counts.sum() == 10 * (table.n_entries - 2) + 60000     # saturated pixels stay in
    hot_bin = np.unravel_index(table.bin_index[-3], table.bins_shape)
    n = table.pixel_count_valid[hot_bin]
    assert out.mean_counts[hot_bin] == pytest.approx((10 * (n - 1) + 60000) / n)
    assert out.variance[hot_bin] == pytest.approx((10 * (n - 1) + 60000) / n**2)
    # an explicit invalid value for a float frame; NaN always invalid
    as_float = frame.astype(np.float32)
    as_float.ravel()[table.pixel_index[7]] = np.nan
    float_out = regroup_frame(as_float, table, invalid_value=65535)
    assert float_out.n_invalid.sum() == 2
    # whole SAXS region NODATA: its intensity is missing, not zero
    frame.ravel()[table.saxs_pixel_index] = 65535
    out = regroup_frame(frame, table)
    assert out.saxs_n_valid == 0 and np.isnan(out.saxs_intensity)
    assert out.saxs_n_invalid == table.saxs_pixel_index.size


def test_variance_floor_for_empty_bins(table):
    out = regroup_frame(np.zeros(SHAPE, np.uint32), table)
    used = table.pixel_count_valid > 0
    np.testing.assert_allclose(out.variance[used], 1.0 / table.pixel_count_valid[used] ** 2)
    assert (out.mean_counts[used] == 0).all()


def test_background_subtraction_per_valid_pixel(table):
    rng = np.random.default_rng(2)
    background_frame = rng.random(SHAPE).astype(np.float32) * 30
    background = regroup_background(background_frame, table)
    frame = rng.poisson(50, SHAPE).astype(np.uint32)
    frame.ravel()[table.pixel_index[::9]] = 2**32 - 1                      # this frame's NODATA
    out = regroup_frame(frame, table, background=background.scaled(0.5))
    # independent computation, bin by bin
    flat, bg = frame.ravel(), background_frame.ravel().astype(np.float64)
    w, iq, ic = 1, 4, 4
    in_bin = table.pixel_index[table.bin_index == (w * table.n_q + iq) * table.n_chi + ic]
    used = in_bin[flat[in_bin] != 2**32 - 1]
    expected = (flat[used].sum() - 0.5 * bg[in_bin].mean() * used.size) / used.size
    assert out.mean_counts[w, iq, ic] == pytest.approx(expected, rel=1e-12)
    saxs_used = table.saxs_pixel_index[flat[table.saxs_pixel_index] != 2**32 - 1]
    expected_saxs = ((flat[saxs_used].sum() - 0.5 * bg[saxs_used].sum()) / saxs_used.size
                     * table.saxs_pixel_count_geometric)
    assert out.saxs_intensity == pytest.approx(expected_saxs, rel=1e-12)
    # a frame equal to the background leaves zero everywhere
    same = regroup_frame(background_frame, table, background=background)
    used_bins = table.pixel_count_valid > 0
    np.testing.assert_allclose(same.mean_counts[used_bins], 0.0, atol=1e-4)
    assert same.saxs_intensity == pytest.approx(0.0, abs=1e-2)


def test_unusable_background_pixels_are_left_out(table):
    background_frame = np.full(SHAPE, 4.0, np.float32)
    background_frame.ravel()[table.pixel_index[:20]] = np.nan
    background_frame.ravel()[table.saxs_pixel_index[:3]] = -1
    background = regroup_background(background_frame, table)
    used = background.n_pixels > 0
    np.testing.assert_allclose(background.mean_per_pixel[used], 4.0)
    np.testing.assert_allclose(background.saxs_per_pixel, 4.0)
    assert background.n_pixels.sum() == table.n_entries - 20


def test_wrong_inputs_raise_readable_errors(table):
    with pytest.raises(GeometryError, match=r"frame shape \(10, 10\)"):
        regroup_frame(np.zeros((10, 10), np.uint16), table)
    with pytest.raises(GeometryError, match="frame dtype int64"):
        regroup_frame(np.zeros(SHAPE, np.int64), table)
    bad = RegroupBuffers.for_table(table)
    bad.sum_counts = np.zeros((1, 2, 3))
    with pytest.raises(GeometryError, match="buffer sum_counts"):
        regroup_frame(np.zeros(SHAPE, np.uint16), table, out=bad)
    other = RegroupedBackground(mean_per_pixel=np.zeros((1, 1, 1)), n_pixels=np.zeros((1, 1, 1), np.int32),
                                saxs_per_pixel=np.zeros(1))
    with pytest.raises(GeometryError, match="background regrouped into bins"):
        regroup_frame(np.zeros(SHAPE, np.uint16), table, background=other)
    with pytest.raises(GeometryError, match=r"background frame shape \(3, 3\)"):
        regroup_background(np.zeros((3, 3)), table)
