"""Where a frame goes on the map: the raster scan grid.

A raster of ``shape = (n_rows, n_columns)`` points, the fast motor along columns. With
``snake`` the odd rows run backwards, as bluesky's ``grid_scan(snake_axes=True)`` does. Axes are
in micrometres so maps sit on the real motor positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.errors import ConfigurationError


@dataclass(frozen=True)
class ScanGrid:
    """A raster scan grid.

    Attributes
    ----------
    shape : tuple of int
        (n_rows, n_columns) = (slow axis points, fast axis points).
    snake : bool
        Odd rows are scanned in reverse column order.
    start_um : tuple of float
        Motor positions (slow, fast) of grid point (0, 0), micrometres.
    step_um : tuple of float
        Step sizes (slow, fast) between neighbouring points, micrometres (may be negative).
    axis_names : tuple of str
        Names of the (slow, fast) motors.
    by_frame_index : bool
        True when no scan description was available and frames are simply laid out by index
        (the map is flagged as such).
    """

    shape: tuple[int, int]
    snake: bool = False
    start_um: tuple[float, float] = (0.0, 0.0)
    step_um: tuple[float, float] = (1.0, 1.0)
    axis_names: tuple[str, str] = ("y", "x")
    by_frame_index: bool = False

    def __post_init__(self) -> None:
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise ConfigurationError(f"scan grid shape {self.shape!r} must be two positive integers")

    @classmethod
    def by_index(cls, n_frames: int, n_columns: int | None = None) -> "ScanGrid":
        """A grid for frames without a scan description: one row (or rows of ``n_columns``)."""
        n_frames = max(int(n_frames), 1)
        n_columns = n_columns or n_frames
        n_rows = -(-n_frames // n_columns)
        return cls(shape=(n_rows, n_columns), by_frame_index=True)

    @property
    def n_points(self) -> int:
        return self.shape[0] * self.shape[1]

    def position(self, frame_index: int) -> tuple[int, int] | None:
        """Map pixel (row, column) of a frame, or None when the frame is beyond the grid."""
        if frame_index < 0 or frame_index >= self.n_points:
            return None
        row, column = divmod(int(frame_index), self.shape[1])
        if self.snake and row % 2 == 1:
            column = self.shape[1] - 1 - column
        return row, column

    def frame_index(self, row: int, column: int) -> int:
        """Inverse of :meth:`position`."""
        if self.snake and row % 2 == 1:
            column = self.shape[1] - 1 - column
        return row * self.shape[1] + column

    def axes_um(self) -> tuple[np.ndarray, np.ndarray]:
        """Motor positions of the grid rows and columns, micrometres (float64 1-D arrays)."""
        rows = self.start_um[0] + self.step_um[0] * np.arange(self.shape[0], dtype=np.float64)
        columns = self.start_um[1] + self.step_um[1] * np.arange(self.shape[1], dtype=np.float64)
        return rows, columns

    def as_dict(self) -> dict:
        return {
            "shape": list(self.shape),
            "snake": self.snake,
            "start_um": list(self.start_um),
            "step_um": list(self.step_um),
            "axis_names": list(self.axis_names),
            "by_frame_index": self.by_frame_index,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ScanGrid":
        try:
            return cls(
                shape=(int(data["shape"][0]), int(data["shape"][1])),
                snake=bool(data.get("snake", False)),
                start_um=tuple(float(v) for v in data.get("start_um", (0.0, 0.0))),
                step_um=tuple(float(v) for v in data.get("step_um", (1.0, 1.0))),
                axis_names=tuple(str(v) for v in data.get("axis_names", ("y", "x"))),
                by_frame_index=bool(data.get("by_frame_index", False)),
            )
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"scan grid description {data!r} is malformed: {exc}") from exc
