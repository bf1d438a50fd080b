"""The maps of one detector series whose frames may be placed, moved or held (pure logic).

Results are kept per frame so that the layout can change while the series runs: frames first
go on a provisional grid (e.g. by frame index), and move when the scan's documents arrive; a
frame whose place is not known yet is held and placed as soon as it is.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from analysis.document_placement import OUTSIDE
from analysis.frame_rows import FrameRows
from analysis.map_state import MapState
from analysis.scan_grid import ScanGrid

PixelOf = Callable[[int], "tuple[int, int] | None"]
"""``pixel_of(frame_index)``: (row, column), :data:`OUTSIDE`, or None when not known yet."""


def grid_pixels(grid: ScanGrid) -> PixelOf:
    """Placement by frame index on ``grid`` (frames beyond it are OUTSIDE)."""
    return lambda frame_index: grid.position(frame_index) or OUTSIDE


class FrameMap:
    """Per-frame results of one series and the map they make under the current layout.

    Parameters
    ----------
    grid : ScanGrid
        Initial layout; frames are placed by index on it until :meth:`set_layout`.
    parameters : sequence of str
        Names of the values of every result vector.

    Attributes
    ----------
    maps : MapState
        Replaced (not updated) when the layout changes.
    grid : ScanGrid
    """

    def __init__(self, grid: ScanGrid, parameters: Sequence[str]) -> None:
        self.parameters = tuple(parameters)
        n = len(self.parameters)
        self.frames = FrameRows([("values", "<f8", (n,)), ("statuses", "<i4", (n,))])
        self.pending: set[int] = set()
        self.outside: set[int] = set()
        self.grid = grid
        self.pixel_of: PixelOf = grid_pixels(grid)
        self.maps = MapState(grid.shape, self.parameters)

    @property
    def n_pending(self) -> int:
        return len(self.pending)

    @property
    def n_outside(self) -> int:
        return len(self.outside)

    def _place(self, frame_index: int) -> bool:
        pixel = self.pixel_of(frame_index)
        if pixel is None:
            self.pending.add(frame_index)
            return False
        self.pending.discard(frame_index)
        if pixel == OUTSIDE:
            self.outside.add(frame_index)
            return False
        self.outside.discard(frame_index)
        row = self.frames.get(frame_index)
        self.maps.update(pixel[0], pixel[1], row["values"], row["statuses"])
        return True

    def add(self, frame_index: int, values: np.ndarray, statuses: np.ndarray) -> bool:
        """Keep one frame's result and place it; False when it is held or off the grid.

        Parameters
        ----------
        frame_index : int
        values : ndarray of float64, shape (n_parameters,)
        statuses : ndarray of int32, shape (n_parameters,)
        """
        frame_index = int(frame_index)
        self.frames.put(frame_index, (values, statuses))
        return self._place(frame_index)

    def set_layout(self, grid: ScanGrid, pixel_of: PixelOf) -> None:
        """Lay every kept frame out again on ``grid`` (a new :attr:`maps`), in frame order."""
        self.grid, self.pixel_of = grid, pixel_of
        self.maps = MapState(grid.shape, self.parameters)
        self.pending.clear()
        self.outside.clear()
        for frame_index in self.frames.indices().tolist():
            self._place(frame_index)

    def retry(self) -> int:
        """Place the held frames whose place is known now; returns how many were placed."""
        return sum(self._place(frame_index) for frame_index in sorted(self.pending))

    def place_pending_with(self, pixel_of: PixelOf) -> int:
        """Place the held frames with another rule (e.g. by index at the end); returns how many."""
        placed = 0
        for frame_index in sorted(self.pending):
            pixel = pixel_of(frame_index)
            if pixel is None or pixel == OUTSIDE:
                continue
            self.pending.discard(frame_index)
            row = self.frames.get(frame_index)
            self.maps.update(pixel[0], pixel[1], row["values"], row["statuses"])
            placed += 1
        return placed
