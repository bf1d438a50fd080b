"""Where map pixels sit in motor coordinates (micrometres), and back (no Qt here).

A map of shape (rows, columns) = (slow, fast) is drawn with the fast motor along x and the slow
motor along y, each pixel centred on its grid point. Negative steps are drawn with the image
flipped so that the axes always increase to the right and upwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.scan_grid import ScanGrid


@dataclass(frozen=True)
class ImagePlacement:
    """How to draw a map: flip flags and the rectangle (x0, y0, width, height) in um."""

    flip_rows: bool
    flip_columns: bool
    x0_um: float
    y0_um: float
    width_um: float
    height_um: float

    def oriented(self, values: np.ndarray) -> np.ndarray:
        """The map as drawn (rows along increasing y, columns along increasing x)."""
        if self.flip_rows:
            values = values[::-1, :]
        if self.flip_columns:
            values = values[:, ::-1]
        return values

    @property
    def x_range_um(self) -> tuple[float, float]:
        return self.x0_um, self.x0_um + self.width_um

    @property
    def y_range_um(self) -> tuple[float, float]:
        return self.y0_um, self.y0_um + self.height_um


def _step(value: float) -> float:
    return value if value != 0 else 1.0


def image_placement(grid: ScanGrid) -> ImagePlacement:
    """Placement of a map of ``grid``; each pixel spans one step around its grid point."""
    rows_um, columns_um = grid.axes_um()
    dy, dx = _step(grid.step_um[0]), _step(grid.step_um[1])
    y_low = min(rows_um[0], rows_um[-1]) - abs(dy) / 2
    x_low = min(columns_um[0], columns_um[-1]) - abs(dx) / 2
    return ImagePlacement(flip_rows=dy < 0, flip_columns=dx < 0, x0_um=float(x_low), y0_um=float(y_low),
                          width_um=float(abs(dx) * grid.shape[1]), height_um=float(abs(dy) * grid.shape[0]))


def pixel_at(grid: ScanGrid, x_um: float, y_um: float) -> tuple[int, int] | None:
    """Map pixel (row, column) under the motor position (x = fast, y = slow), None outside."""
    dy, dx = _step(grid.step_um[0]), _step(grid.step_um[1])
    row = int(np.floor((y_um - grid.start_um[0]) / dy + 0.5))
    column = int(np.floor((x_um - grid.start_um[1]) / dx + 0.5))
    if 0 <= row < grid.shape[0] and 0 <= column < grid.shape[1]:
        return row, column
    return None


def position_um(grid: ScanGrid, row: int, column: int) -> tuple[float, float]:
    """Motor position (x = fast, y = slow) of map pixel (row, column), um."""
    rows_um, columns_um = grid.axes_um()
    return float(columns_um[column]), float(rows_um[row])
