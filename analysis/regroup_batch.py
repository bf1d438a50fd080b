"""Regroup buffers for a batch of frames: one stacked array per quantity, one view per frame.

The fits and the derived physics run once per batch on arrays with a leading frames axis,
which spreads their fixed per-call cost over the batch; each frame is regrouped into its own
slot (a :class:`~analysis.regroup_kernel.RegroupBuffers` whose arrays are views of the stacks).
"""

from __future__ import annotations

import numpy as np

from analysis.polar_table import PolarTable
from analysis.regroup_kernel import RegroupBuffers


class RegroupBatch:
    """Preallocated regroup buffers of up to ``capacity`` frames.

    Parameters
    ----------
    table : PolarTable
    capacity : int
        Most frames in one batch (>= 1).

    Attributes
    ----------
    sum_counts, mean_counts, variance : ndarray of float64, shape (capacity, n_windows, n_q, n_chi)
    n_valid : ndarray of int32, shape (capacity, n_windows, n_q, n_chi)
    n_saturated, n_invalid : ndarray of int32, shape (capacity, n_windows)
    slots : list of RegroupBuffers, length capacity
        Frame ``k``'s buffers: views of row ``k`` of the stacks (its SAXS scalars are its own).
    """

    def __init__(self, table: PolarTable, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"batch capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        stacked = RegroupBuffers.for_table(table, (capacity,))
        self.sum_counts, self.n_valid = stacked.sum_counts, stacked.n_valid
        self.mean_counts, self.variance = stacked.mean_counts, stacked.variance
        self.n_saturated, self.n_invalid = stacked.n_saturated, stacked.n_invalid
        self.slots = [RegroupBuffers(sum_counts=self.sum_counts[k], n_valid=self.n_valid[k],
                                     mean_counts=self.mean_counts[k], variance=self.variance[k],
                                     n_saturated=self.n_saturated[k], n_invalid=self.n_invalid[k])
                      for k in range(capacity)]

    def saxs_intensity(self, first: int, n: int) -> np.ndarray:
        """Integrated SAXS intensity of slots ``first .. first + n - 1``, float64 (n,) (NaN: no
        valid pixel)."""
        return np.array([slot.saxs_intensity for slot in self.slots[first:first + n]], dtype=np.float64)
