"""Shared helpers of the regroup tests: two RegroupBuffers bit for bit the same; a table whose
pixels repeat."""

from __future__ import annotations

import dataclasses

import numpy as np

from analysis.polar_table import PolarTable
from analysis.regroup_kernel import RegroupBuffers


def assert_same_buffers(a: RegroupBuffers, b: RegroupBuffers) -> None:
    """Every array (same dtype, shape, bytes: NaN in the same places) and every SAXS scalar equal."""
    for name in ("sum_counts", "n_valid", "mean_counts", "variance", "n_saturated", "n_invalid"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert x.tobytes() == y.tobytes(), (name, np.flatnonzero(x.ravel() != y.ravel())[:10])
    assert (a.saxs_n_valid, a.saxs_n_invalid, a.saxs_n_saturated) == (b.saxs_n_valid, b.saxs_n_invalid,
                                                                      b.saxs_n_saturated)
    assert np.float64(a.saxs_sum).tobytes() == np.float64(b.saxs_sum).tobytes()
    assert np.float64(a.saxs_intensity).tobytes() == np.float64(b.saxs_intensity).tobytes()


def with_repeated_pixels(table: PolarTable, rng: np.random.Generator, n: int) -> PolarTable:
    """``table`` with ``n`` random pixels also in a second bin (the next window's same bin)."""
    twice = np.sort(rng.choice(table.n_entries, n, replace=False))
    pixel_index = np.insert(table.pixel_index, twice + 1, table.pixel_index[twice])
    other_bin = (table.bin_index[twice] + table.n_bins_per_window) % int(np.prod(table.bins_shape))
    bin_index = np.insert(table.bin_index, twice + 1, other_bin).astype(np.int32)
    return dataclasses.replace(table, pixel_index=pixel_index, bin_index=bin_index)
