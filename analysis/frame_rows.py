"""Per-frame records of a series, kept as numpy rows: no Python object per frame.

A long scan (a 1000 x 1000 raster is a million frames) must not cost more memory than its maps.
A dict of tuples of numpy arrays costs several hundred bytes per frame on top of the numbers it
holds; these containers cost the numbers and at most as many bytes again of room to grow.
"""

from __future__ import annotations

import math

import numpy as np

INITIAL_ROWS = 1024
"""Rows allocated at the first record (then doubled each time they are full)."""


class GrowingRows:
    """Records appended one at a time to an array that doubles when it is full.

    Parameters
    ----------
    dtype : numpy dtype (plain or structured)
        Of one record.
    shape : tuple of int
        Of one record (``(3,)``: three values per record); ``()`` for scalars.
    """

    def __init__(self, dtype, shape: tuple[int, ...] = ()) -> None:
        self._buffer = np.zeros((0, *shape), dtype=dtype)
        self._n = 0

    def append(self, record) -> None:
        """Add one record (a value, a sequence of ``shape``, or a tuple of the structured fields)."""
        if self._n == self._buffer.shape[0]:
            grown = np.zeros((max(INITIAL_ROWS, 2 * self._n), *self._buffer.shape[1:]), dtype=self._buffer.dtype)
            grown[:self._n] = self._buffer[:self._n]
            self._buffer = grown
        self._buffer[self._n] = record
        self._n += 1

    def __len__(self) -> int:
        return self._n

    @property
    def rows(self) -> np.ndarray:
        """The records so far, shape (n, *shape): a read-only view (copy it to keep it)."""
        view = self._buffer[:self._n]
        view.flags.writeable = False
        return view


class FrameRows:
    """One fixed-size record per frame index, a later record of an index replacing the earlier.

    The records of indices ``0 .. capacity - 1`` lie in one array, indexed by frame; the array
    grows (at least doubling) to take an index below twice the number of records held plus
    ``min_dense``, so a series counting up its frames, in any order, is kept densely. An index
    far beyond that (a corrupt or restarted frame number) is kept in a dict instead, and moved
    into the array once enough records are held (frames arriving from the last one down).

    Parameters
    ----------
    dtype : numpy dtype
        Of one record; structured dtypes may hold sub-arrays (e.g. ``("values", "f8", (40,))``).
    min_dense : int
        Indices below this always go into the array.
    """

    def __init__(self, dtype, min_dense: int = 4096) -> None:
        self.dtype = np.dtype(dtype)
        self.min_dense = int(min_dense)
        self._rows = np.zeros(0, dtype=self.dtype)
        self._present = np.zeros(0, dtype=bool)
        self._far: dict[int, object] = {}  # numpy records; every key >= len(self._rows)
        self._far_min: float = math.inf
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, frame_index: int) -> bool:
        frame_index = _index_or_none(frame_index)
        if frame_index is None:
            return False
        if 0 <= frame_index < self._rows.size:
            return bool(self._present[frame_index])
        return frame_index in self._far

    def put(self, frame_index: int, record) -> None:
        """Keep ``record`` (a tuple of the fields, or a value of a plain dtype) for ``frame_index`` (>= 0).

        Raises
        ------
        ValueError
            A negative index, or a record that does not fit the dtype; nothing is kept then.
        """
        frame_index = int(frame_index)
        if frame_index < 0:
            raise ValueError(f"frame index {frame_index} is negative")
        row = np.array(record, dtype=self.dtype)[()]  # checked before anything changes
        if frame_index >= self._rows.size:
            if frame_index >= self._dense_limit(1):
                if frame_index not in self._far:
                    self._count += 1
                    self._far_min = min(self._far_min, frame_index)
                self._far[frame_index] = row
                return
            self._grow(max(frame_index + 1, 2 * self._rows.size, INITIAL_ROWS))
        if not self._present[frame_index]:
            self._present[frame_index] = True
            self._count += 1
            if self._far_min < self._dense_limit(0):  # far frames are within reach now
                self._grow(max(self._far_min + 1, 2 * self._rows.size))
        self._rows[frame_index] = row

    def get(self, frame_index: int):
        """A copy of the record of ``frame_index`` (a numpy record, or scalar for a plain dtype),
        or None when there is none."""
        if frame_index not in self:
            return None
        frame_index = int(frame_index)
        row = self._rows[frame_index] if frame_index < self._rows.size else self._far[frame_index]
        return row.copy()

    def indices(self) -> np.ndarray:
        """The frame indices held, ascending (int64)."""
        far = np.fromiter(sorted(self._far), dtype=np.int64, count=len(self._far))
        return np.concatenate((np.flatnonzero(self._present).astype(np.int64), far))

    def _dense_limit(self, extra: int) -> int:
        return 2 * (self._count + extra + self.min_dense)

    def _grow(self, capacity: int) -> None:
        rows = np.zeros(capacity, dtype=self.dtype)
        present = np.zeros(capacity, dtype=bool)
        rows[:self._rows.size] = self._rows
        present[:self._present.size] = self._present
        self._rows, self._present = rows, present
        for frame_index in [k for k in self._far if k < capacity]:
            rows[frame_index] = self._far.pop(frame_index)
            present[frame_index] = True
        self._far_min = min(self._far, default=math.inf)


def _index_or_none(frame_index) -> int | None:
    try:
        return int(frame_index)
    except (TypeError, ValueError):
        return None
