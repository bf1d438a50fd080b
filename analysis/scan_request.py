"""A rectangle on a map, turned into the arguments of a finer raster scan.

Used by the viewer (a rectangle drawn by hand) and by steering (regions it suggests): the
arguments of bluesky's ``grid_scan(detectors, slow, start, stop, num, fast, start, stop, num,
snake_axes=...)`` with the motors by name, plus the same numbers per motor with the step.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from analysis.errors import ConfigurationError
from analysis.scan_grid import ScanGrid

PLAN_NAME = "grid_scan"


@dataclass(frozen=True)
class MotorRange:
    """One axis of a requested scan: ``num`` points from ``start_um`` to ``stop_um`` (inclusive)
    every ``step_um``."""

    name: str
    start_um: float
    stop_um: float
    num: int
    step_um: float

    def as_dict(self) -> dict:
        return {"name": self.name, "start_um": self.start_um, "stop_um": self.stop_um, "num": self.num,
                "step_um": self.step_um}


def motor_range(name: str, low_um: float, high_um: float, step_um: float, snap: bool = True) -> MotorRange:
    """Points every ``step_um`` from ``low_um`` covering ``[low_um, high_um]`` (the last point
    at or just below ``high_um``; at least one point). With ``snap`` both ends first move to
    the nearest multiple of the step (a rectangle drawn by hand has arbitrary corners)."""
    step = abs(float(step_um))
    if not (math.isfinite(step) and step > 0):
        raise ConfigurationError(f"scan step {step_um!r} um for motor {name} must be a positive number")
    low, high = sorted((float(low_um), float(high_um)))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigurationError(f"scan range [{low_um}, {high_um}] um for motor {name} is not finite")
    if snap:
        low, high = round(low / step) * step, round(high / step) * step
    num = int(math.floor((high - low) / step + 1e-9)) + 1
    return MotorRange(name, round(low, 6), round(low + (num - 1) * step, 6), num, round(step, 6))


@dataclass(frozen=True)
class ScanRequest:
    """A finer raster scan over a region of a map.

    Attributes
    ----------
    slow, fast : MotorRange
        Rows (slow axis, y on the map) and columns (fast axis, x).
    snake : bool
    series_id : int or None
        The series whose map the region was drawn on.
    """

    slow: MotorRange
    fast: MotorRange
    snake: bool = False
    series_id: int | None = None

    @property
    def n_points(self) -> int:
        return self.slow.num * self.fast.num

    def plan_args(self) -> list:
        """Positional arguments of ``grid_scan`` after the detectors, motors by name."""
        return [self.slow.name, self.slow.start_um, self.slow.stop_um, self.slow.num,
                self.fast.name, self.fast.start_um, self.fast.stop_um, self.fast.num]

    def as_dict(self) -> dict:
        return {
            "plan": PLAN_NAME,
            "args": self.plan_args(),
            "kwargs": {"snake_axes": self.snake},
            "motors": [self.slow.as_dict(), self.fast.as_dict()],
            "units": "um",
            "n_points": self.n_points,
            "series_id": self.series_id,
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def export(self, path: str | Path) -> Path:
        """Write :meth:`to_json` to ``path``."""
        path = Path(path)
        path.write_text(self.to_json() + "\n")
        return path


def scan_request(grid: ScanGrid, x_range_um: tuple[float, float], y_range_um: tuple[float, float],
                 step_um: tuple[float, float], series_id: int | None = None) -> ScanRequest:
    """The request for the rectangle ``x_range_um`` x ``y_range_um`` drawn on a map of ``grid``.

    Parameters
    ----------
    grid : ScanGrid
        Grid of the map (motor names, snake).
    x_range_um, y_range_um : (float, float)
        Rectangle along the fast (x) and slow (y) motors, um, any order.
    step_um : (float, float)
        Requested (slow, fast) steps, um.
    """
    slow_name, fast_name = grid.axis_names
    return ScanRequest(slow=motor_range(slow_name, *y_range_um, step_um[0]),
                       fast=motor_range(fast_name, *x_range_um, step_um[1]),
                       snake=grid.snake, series_id=series_id)


def finer_steps(grid: ScanGrid, factor: float = 2.0) -> tuple[float, float]:
    """Default steps of a finer scan: the map's steps divided by ``factor`` (positive, um)."""
    return abs(grid.step_um[0]) / factor, abs(grid.step_um[1]) / factor
