"""The average pattern's running sums: the Numba accumulation kernel against its NumPy
reference (boolean-mask sums), on windows with empty bins, and a shape mismatch refused."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.average_pattern import AverageAccumulator
from analysis.regroup_kernel import RegroupBuffers


def _reference_add(signal_sum, raw_sum, n_valid_sum, buffers):
    used = buffers.n_valid > 0
    signal_sum[used] += buffers.mean_counts[used] * buffers.n_valid[used]
    raw_sum += buffers.sum_counts
    n_valid_sum += buffers.n_valid


def _frame(rng, shape) -> RegroupBuffers:
    n_valid = rng.integers(0, 5, shape).astype(np.int32)  # a fifth of the bins empty
    sum_counts = rng.poisson(3.0, shape).astype(np.float64) * (n_valid > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n_valid > 0, (sum_counts - 0.7 * n_valid) / n_valid, np.nan)
        variance = np.where(n_valid > 0, np.maximum(sum_counts, 1) / n_valid**2, np.nan)
    return RegroupBuffers(sum_counts, n_valid, mean, variance, np.zeros(shape[0], np.int32),
                          np.zeros(shape[0], np.int32))


def test_accumulation_kernel_matches_the_numpy_reference():
    rng = np.random.default_rng(4)
    shape = (3, 7, 11)
    accumulator = AverageAccumulator(shape)
    reference = (np.zeros(shape), np.zeros(shape), np.zeros(shape, np.int64))
    for _ in range(5):
        frame = _frame(rng, shape)
        accumulator.add(frame)
        _reference_add(*reference, frame)
    assert accumulator.n_frames == 5 and np.isfinite(accumulator.signal_sum).all()
    np.testing.assert_array_equal(accumulator.signal_sum, reference[0])
    np.testing.assert_array_equal(accumulator.raw_sum, reference[1])
    np.testing.assert_array_equal(accumulator.n_valid, reference[2])
    assert accumulator.n_valid.sum() > 0 and (accumulator.n_valid == 0).sum() < accumulator.n_valid.size


def test_windows_of_another_shape_are_refused():
    accumulator = AverageAccumulator((2, 4, 5))
    with pytest.raises(ValueError, match="shape"):
        accumulator.add(_frame(np.random.default_rng(0), (2, 4, 6)))
    assert accumulator.n_frames == 0 and not accumulator.raw_sum.any()
