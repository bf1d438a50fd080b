"""Cover the wanted points of a grid with few, well-filled rectangles (one raster scan each).

A raster scan is a rectangle, a crystal is not: the bounding box of a disc wastes a fifth of
its points, a band along a crystal's edge almost all of them. :func:`tile_mask` walks the grid
row by row and grows one rectangle per run of wanted points downwards as long as the
rectangle stays at least ``min_fill`` full (wanted points / all its points); when it would
fall below, the rectangle is closed and the run starts a new one. Rectangles never overlap, and
every wanted point is in exactly one. ``min_fill = 0`` gives one rectangle per connected run
of rows (bounding boxes), ``min_fill = 1`` exact row strips.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.errors import ConfigurationError


@dataclass(frozen=True)
class Rectangle:
    """Rows ``row0..row1`` and columns ``col0..col1`` of a grid, inclusive.

    Attributes
    ----------
    row0, row1, col0, col1 : int
    n_wanted : int
        Wanted points inside.
    """

    row0: int
    row1: int
    col0: int
    col1: int
    n_wanted: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.row1 - self.row0 + 1, self.col1 - self.col0 + 1

    @property
    def n_points(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def fill(self) -> float:
        return self.n_wanted / self.n_points

    def slices(self) -> tuple[slice, slice]:
        return slice(self.row0, self.row1 + 1), slice(self.col0, self.col1 + 1)


def row_runs(row: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) column of every run of True in a 1-D bool array, inclusive."""
    padded = np.concatenate(([False], np.asarray(row, dtype=bool), [False]))
    changes = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(a), int(b) - 1) for a, b in zip(changes[::2], changes[1::2])]


def tile_mask(wanted, min_fill: float = 0.75) -> list[Rectangle]:
    """Rectangles covering every True point of ``wanted``.

    Parameters
    ----------
    wanted : array_like of bool, shape (rows, columns)
    min_fill : float
        Smallest accepted fraction of wanted points in a rectangle, 0..1.

    Returns
    -------
    list of Rectangle
        Disjoint, in order of their first row then column; together they hold every wanted
        point once.
    """
    mask = np.asarray(wanted, dtype=bool)
    if mask.ndim != 2:
        raise ConfigurationError(f"the mask to tile must be 2-D, got shape {mask.shape}")
    if not 0.0 <= float(min_fill) <= 1.0:
        raise ConfigurationError(f"min_fill {min_fill!r} must lie between 0 and 1")
    owner = np.full(mask.shape, -1, dtype=np.int64)  # rectangle holding each point
    boxes: list[list[int]] = []  # [row0, row1, col0, col1] of every rectangle so far
    growing: list[int] = []  # rectangles that reached the previous row
    for r in range(mask.shape[0]):
        grown: list[int] = []
        while True:
            free = row_runs(mask[r] & (owner[r] < 0))  # again after each widening in this row
            if not free:
                break
            first, last = free[0]
            chosen = None
            for i in growing:
                row0, _, col0, col1 = boxes[i]
                if i in grown or last < col0 or first > col1:
                    continue
                c0, c1 = min(col0, first), max(col1, last)
                box = owner[row0:r + 1, c0:c1 + 1]
                if np.any((box >= 0) & (box != i)):
                    continue  # widening would overlap another rectangle
                n_wanted = int(mask[row0:r + 1, c0:c1 + 1].sum())
                if n_wanted >= min_fill * (r - row0 + 1) * (c1 - c0 + 1):
                    chosen = i
                    boxes[i] = [row0, r, c0, c1]
                    owner[row0:r + 1, c0:c1 + 1] = i
                    break
            if chosen is None:
                chosen = len(boxes)
                boxes.append([r, r, first, last])
                owner[r, first:last + 1] = chosen
            grown.append(chosen)
        growing = grown
    rectangles = [Rectangle(r0, r1, c0, c1, int(mask[r0:r1 + 1, c0:c1 + 1].sum())) for r0, r1, c0, c1 in boxes]
    return sorted(rectangles, key=lambda rect: (rect.row0, rect.col0))
