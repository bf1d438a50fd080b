"""What steering reads of a scan (its maps on the motor axes), and the finer grid it plans on.

:class:`SteeringMaps` is one scan's maps with their :class:`analysis.scan_grid.ScanGrid`
(micrometres on the real motors), whatever they came from (a finished series, a published
snapshot). :class:`FineGrid` is the grid of candidate points of the next scans: it covers the
scanned area (each point's cell, half a step beyond the outermost points) at a finer step and
contains the coarse points where the steps divide, so a fine scan revisits them exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from analysis.errors import ConfigurationError
from analysis.scan_grid import ScanGrid
from analysis.status import Status


@dataclass(frozen=True, eq=False)
class SteeringMaps:
    """One scan's maps.

    Attributes
    ----------
    series_id : int
    grid : ScanGrid
        Rows = slow motor, columns = fast motor, micrometres.
    parameters : tuple of str
    values : ndarray of float, shape (n_parameters, rows, columns)
        NaN where missing.
    statuses : ndarray of int, same shape
        :class:`analysis.status.Status` codes (``NOT_MEASURED`` where no frame came).
    final : bool
        The series is finished (else: the maps so far).
    count_time_s : float or None
        Exposure per frame of the series, when its header said.
    """

    series_id: int
    grid: ScanGrid
    parameters: tuple[str, ...]
    values: np.ndarray
    statuses: np.ndarray
    final: bool = True
    count_time_s: float | None = None

    def __post_init__(self) -> None:
        expected = (len(self.parameters), *self.grid.shape)
        if self.values.shape != expected or self.statuses.shape != expected:
            raise ConfigurationError(f"maps of series {self.series_id}: arrays {self.values.shape} / "
                                     f"{self.statuses.shape} do not fit {expected}")

    def map(self, name: str) -> np.ndarray:
        """Float64 (rows, columns) map of parameter ``name``."""
        if name not in self.parameters:
            raise ConfigurationError(f"no map {name!r} in series {self.series_id}; known: {', '.join(self.parameters)}")
        return np.asarray(self.values[self.parameters.index(name)], dtype=np.float64)

    def status(self, name: str) -> np.ndarray:
        self.map(name)
        return np.asarray(self.statuses[self.parameters.index(name)], dtype=np.int64)

    @property
    def measured(self) -> np.ndarray:
        """Bool (rows, columns): a frame was placed there."""
        return np.any(self.statuses != int(Status.NOT_MEASURED), axis=0)

    @property
    def abs_step_um(self) -> tuple[float, float]:
        return abs(self.grid.step_um[0]), abs(self.grid.step_um[1])


@dataclass(frozen=True)
class FineGrid:
    """Candidate points of the next scans: ``shape`` points from ``start_um`` every ``step_um``.

    Attributes
    ----------
    start_um : (float, float)
        (slow, fast) position of point (0, 0), micrometres.
    step_um : (float, float)
        Positive (slow, fast) steps, micrometres.
    shape : (int, int)
    axis_names : (str, str)
        (slow, fast) motor names.
    """

    start_um: tuple[float, float]
    step_um: tuple[float, float]
    shape: tuple[int, int]
    axis_names: tuple[str, str]

    def axes_um(self) -> tuple[np.ndarray, np.ndarray]:
        """Positions of the rows (slow) and columns (fast), float64 1-D arrays, micrometres."""
        return tuple(self.start_um[a] + self.step_um[a] * np.arange(self.shape[a], dtype=np.float64)
                     for a in (0, 1))

    def index_of(self, positions_um: np.ndarray, axis: int) -> np.ndarray:
        """Nearest row (axis 0) or column (axis 1) index of positions, int64 (may be outside)."""
        return np.floor((np.asarray(positions_um) - self.start_um[axis]) / self.step_um[axis] + 0.5).astype(np.int64)

    def as_dict(self) -> dict:
        return {"start_um": list(self.start_um), "step_um": list(self.step_um), "shape": list(self.shape),
                "axis_names": list(self.axis_names)}


def fine_grid_over(grid: ScanGrid, step_um: tuple[float, float]) -> FineGrid:
    """The fine grid over the cells of ``grid``'s points at ``step_um`` (slow, fast).

    Points lie on ``grid``'s own points plus multiples of the fine step, out to half a coarse
    step beyond the outermost points (the area a coarse point stands for).
    """
    starts, steps, shape = [], [], []
    for axis, (positions, fine) in enumerate(zip(grid.axes_um(), step_um)):
        fine = float(fine)
        if not (math.isfinite(fine) and fine > 0):
            raise ConfigurationError(f"fine step {step_um[axis]!r} um along {grid.axis_names[axis]} must be a "
                                     "positive number")
        coarse = abs(grid.step_um[axis]) if grid.shape[axis] > 1 else fine
        low, high = float(positions.min()), float(positions.max())
        extra = int(math.floor(0.5 * coarse / fine + 1e-9))
        starts.append(low - extra * fine)
        steps.append(fine)
        shape.append(int(math.floor((high - low) / fine + 1e-9)) + 1 + 2 * extra)
    return FineGrid((starts[0], starts[1]), (steps[0], steps[1]), (shape[0], shape[1]), tuple(grid.axis_names))


def measured_on_fine(scan: SteeringMaps, fine: FineGrid, points=None):
    """Where the points of ``scan`` fall on the fine grid, for a scan at the fine step or finer
    on the same motors (else None).

    Parameters
    ----------
    points : ndarray of bool, shape ``scan.grid.shape``, optional
        The points to place (default: the measured ones).

    Returns
    -------
    (rows, columns, fine_rows, fine_columns) : 4 ndarrays of int64, or None
        Scan indices of the points that land on the fine grid, and their fine indices.
    """
    if tuple(scan.grid.axis_names) != tuple(fine.axis_names):
        return None
    steps = scan.abs_step_um
    if any(scan.grid.shape[a] > 1 and steps[a] > fine.step_um[a] * (1 + 1e-6) for a in (0, 1)):
        return None
    rows_um, cols_um = scan.grid.axes_um()
    r, c = np.nonzero(scan.measured if points is None else points)
    fr, fc = fine.index_of(rows_um[r], 0), fine.index_of(cols_um[c], 1)
    keep = (fr >= 0) & (fr < fine.shape[0]) & (fc >= 0) & (fc < fine.shape[1])
    return r[keep], c[keep], fr[keep], fc[keep]


def coarse_index_on_fine(maps: SteeringMaps, fine: FineGrid) -> tuple[np.ndarray, np.ndarray]:
    """For every fine row / column, the nearest coarse row / column of ``maps`` (int64 1-D)."""
    result = []
    for axis, positions in enumerate(fine.axes_um()):
        start, step, n = maps.grid.start_um[axis], maps.grid.step_um[axis], maps.grid.shape[axis]
        index = np.zeros(positions.size, dtype=np.int64) if n == 1 else np.floor((positions - start) / step + 0.5)
        result.append(np.clip(index, 0, n - 1).astype(np.int64))
    return result[0], result[1]


def interpolate_to_fine(coarse: np.ndarray, maps: SteeringMaps, fine: FineGrid) -> np.ndarray:
    """Bilinear interpolation of a coarse map onto the fine grid, NaN-aware.

    Missing (NaN) coarse points take no part (the weights of the others are renormalised); a
    fine point whose four neighbours are all missing is NaN. Beyond the outermost coarse points
    the map is continued flat.

    Returns
    -------
    ndarray of float64, shape ``fine.shape``
    """
    data = np.asarray(coarse, dtype=np.float64)
    finite = np.isfinite(data)
    filled = np.where(finite, data, 0.0)
    weights = []
    for axis, positions in enumerate(fine.axes_um()):
        n = maps.grid.shape[axis]
        if n == 1:
            weights.append((np.zeros(positions.size, np.int64), np.zeros(positions.size, np.int64),
                            np.zeros(positions.size)))
            continue
        u = np.clip((positions - maps.grid.start_um[axis]) / maps.grid.step_um[axis], 0.0, n - 1.0)
        i0 = np.minimum(np.floor(u).astype(np.int64), n - 2)
        weights.append((i0, i0 + 1, u - i0))
    (r0, r1, fr), (c0, c1) = weights[0], weights[1][:2]
    fc = weights[1][2]
    total = np.zeros(fine.shape)
    norm = np.zeros(fine.shape)
    for rows, wr in ((r0, 1.0 - fr), (r1, fr)):
        for cols, wc in ((c0, 1.0 - fc), (c1, fc)):
            w = np.outer(wr, wc) * finite[np.ix_(rows, cols)]
            total += w * filled[np.ix_(rows, cols)]
            norm += w
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 1e-12, total / np.maximum(norm, 1e-300), np.nan)
