"""Where to scan next: regions suggested from the current maps, as plain plan arguments.

A request (:class:`SteeringRequest`, from JSON) names the strategies to combine
(:mod:`analysis.steering_strategies`), the scan whose maps to read (the *basis*), the fine
step, motor limits and a time budget. :func:`suggest`:

1. lays a fine grid over the basis scan (:func:`analysis.steering_maps.fine_grid_over`);
2. runs every strategy and joins what they want (a point wanted by two strategies is scanned
   once, and says so);
3. leaves out points outside the motor limits and points already measured at the fine step
   or finer by any scan it was given (so asking again after the fine scans gives nothing new);
4. covers the rest with few well-filled rectangles (:func:`analysis.region_tiling.tile_mask`);
   a rectangle drawn by the user stays as drawn;
5. ranks them by score and keeps what fits the time budget (the rest is returned as deferred,
   with the reason).

Each suggestion is the argument list of ``bluesky.plans.grid_scan`` with motors by name
(:class:`analysis.scan_request.ScanRequest`) plus why it was made (strategies, score, reason)
and its estimated time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from analysis.errors import ConfigurationError
from analysis.region_tiling import Rectangle, tile_mask
from analysis.scan_request import MotorRange, ScanRequest
from analysis.steering_maps import FineGrid, SteeringMaps, fine_grid_over, measured_on_fine
from analysis.steering_strategies import STRATEGIES, StrategyResult, finite_pair, run_strategy

DEFAULT_DWELL_S = 0.5


@dataclass(frozen=True)
class StrategySpec:
    """One strategy of a request and its options."""

    name: str
    options: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"name": self.name, **self.options}


def _positive(value, what: str, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or (value == 0 and not allow_zero):
        raise ConfigurationError(f"{what}={value!r} must be a {'non-negative' if allow_zero else 'positive'} number")
    return float(value)


def _strategy_specs(value) -> tuple[StrategySpec, ...]:
    if isinstance(value, (str, dict)):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigurationError(f"strategies={value!r} must be a non-empty list of names or "
                                 "{'name': ..., options} objects")
    specs = []
    for item in value:
        if isinstance(item, str):
            name, options = item, {}
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            name, options = item["name"], {k: v for k, v in item.items() if k != "name"}
        else:
            raise ConfigurationError(f"strategy {item!r} is neither a name nor an object with a 'name'")
        if name not in STRATEGIES:
            raise ConfigurationError(f"unknown steering strategy {name!r}; known: {', '.join(STRATEGIES)}")
        specs.append(StrategySpec(name, options))
    return tuple(specs)


@dataclass(frozen=True)
class SteeringRequest:
    """What a client asks for (all lengths in micrometres, times in seconds).

    Attributes
    ----------
    strategies : tuple of StrategySpec
    series_id : int or None
        Basis scan (default: the newest one with measured points).
    fine_step_um : (float, float) or None
        (slow, fast) step of the suggested scans; default the basis steps / ``refine``.
    refine : float
    limits_um : dict of str to (float, float)
        Allowed range per motor name.
    time_budget_s : float or None
    dwell_s : float or None
        Time per point (default the series' count time, else 0.5 s).
    overhead_per_point_s, overhead_per_scan_s : float
        Moves and settling per point, set-up per scan.
    max_suggestions : int
    min_fill : float
        Smallest fraction of wanted points in a suggested rectangle.
    snake : bool
    include_measured : bool
        Suggest points already measured at the fine step too.
    wait_s : float
        How long the service may wait for the basis series to finish.
    """

    strategies: tuple[StrategySpec, ...]
    series_id: int | None = None
    fine_step_um: tuple[float, float] | None = None
    refine: float = 4.0
    limits_um: dict = field(default_factory=dict)
    time_budget_s: float | None = None
    dwell_s: float | None = None
    overhead_per_point_s: float = 0.05
    overhead_per_scan_s: float = 2.0
    max_suggestions: int = 20
    min_fill: float = 0.9
    snake: bool = True
    include_measured: bool = False
    wait_s: float = 0.0

    @classmethod
    def from_dict(cls, data) -> "SteeringRequest":
        """Validate a JSON request; :class:`ConfigurationError` names the first bad field."""
        if not isinstance(data, dict):
            raise ConfigurationError(f"a steering request must be a JSON object, got {str(data)[:80]!r}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known - {"command"})
        if unknown:
            raise ConfigurationError(f"unknown request field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if "strategies" not in data:
            raise ConfigurationError(f"a steering request needs 'strategies' (any of {', '.join(STRATEGIES)})")
        kwargs: dict = {"strategies": _strategy_specs(data["strategies"])}
        series_id = data.get("series_id")
        if series_id is not None and (isinstance(series_id, bool) or not isinstance(series_id, int) or series_id < 0):
            raise ConfigurationError(f"series_id={series_id!r} must be a non-negative integer")
        kwargs["series_id"] = series_id
        step = data.get("fine_step_um")
        if step is not None:
            step = [step, step] if isinstance(step, (int, float)) and not isinstance(step, bool) else step
            if not isinstance(step, (list, tuple)) or len(step) != 2:
                raise ConfigurationError(f"fine_step_um={data['fine_step_um']!r} must be a number or (slow, fast)")
            kwargs["fine_step_um"] = tuple(_positive(s, "fine_step_um") for s in step)
        limits = data.get("limits_um", {})
        if not isinstance(limits, dict):
            raise ConfigurationError(f"limits_um={limits!r} must map motor names to [low, high]")
        checked = {}
        for motor, pair in limits.items():
            low_high = finite_pair(pair)
            if low_high is None:
                raise ConfigurationError(f"limits of motor {motor!r}: {pair!r} must be [low, high] in um")
            if not low_high[0] < low_high[1]:
                raise ConfigurationError(f"limits of motor {motor!r}: low {pair[0]} must be below high {pair[1]}")
            checked[str(motor)] = low_high
        kwargs["limits_um"] = checked
        for key in ("refine", "overhead_per_point_s", "overhead_per_scan_s", "wait_s", "min_fill"):
            if key in data:
                kwargs[key] = _positive(data[key], key, allow_zero=key != "refine")
        if kwargs.get("min_fill", 0.0) > 1.0:
            raise ConfigurationError(f"min_fill={data['min_fill']!r} must lie between 0 and 1")
        for key in ("time_budget_s", "dwell_s"):
            if data.get(key) is not None:
                kwargs[key] = _positive(data[key], key, allow_zero=key == "dwell_s")
        if "max_suggestions" in data:
            value = data["max_suggestions"]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"max_suggestions={value!r} must be a positive integer")
            kwargs["max_suggestions"] = value
        for key in ("snake", "include_measured"):
            if key in data:
                if not isinstance(data[key], bool):
                    raise ConfigurationError(f"{key}={data[key]!r} must be true or false")
                kwargs[key] = data[key]
        return cls(**kwargs)


@dataclass(frozen=True)
class Suggestion:
    """One suggested scan.

    Attributes
    ----------
    id : str
    request : ScanRequest
        The ``grid_scan`` arguments (motors by name, um).
    strategies : tuple of str
        Strategies that wanted its points, most points first.
    score : float
        0..1: mean over its points of the best strategy score.
    reason : str
    estimated_time_s : float
    n_wanted : int
        Points of it that a strategy asked for.
    """

    id: str
    request: ScanRequest
    strategies: tuple[str, ...]
    score: float
    reason: str
    estimated_time_s: float
    n_wanted: int

    @property
    def n_points(self) -> int:
        return self.request.n_points

    def as_dict(self) -> dict:
        return {**self.request.as_dict(), "id": self.id, "strategies": list(self.strategies),
                "score": round(self.score, 4), "reason": self.reason,
                "estimated_time_s": round(self.estimated_time_s, 3), "n_wanted": self.n_wanted,
                "fill": round(self.n_wanted / self.n_points, 4)}


@dataclass(frozen=True)
class SteeringResult:
    """The answer to a request: suggestions to run, in order, and what was left out."""

    basis_series_id: int
    fine: FineGrid
    suggestions: tuple[Suggestion, ...]
    deferred: tuple[tuple[Suggestion, str], ...]
    notes: tuple[str, ...]
    time_budget_s: float | None

    @property
    def total_time_s(self) -> float:
        return float(sum(s.estimated_time_s for s in self.suggestions))

    def as_dict(self) -> dict:
        return {
            "basis_series_id": self.basis_series_id,
            "fine_grid": self.fine.as_dict(),
            "suggestions": [s.as_dict() for s in self.suggestions],
            "deferred": [{**s.as_dict(), "deferred_because": why} for s, why in self.deferred],
            "notes": list(self.notes),
            "n_points": int(sum(s.n_points for s in self.suggestions)),
            "estimated_time_s": round(self.total_time_s, 3),
            "time_budget_s": self.time_budget_s,
        }


def allowed_points(fine: FineGrid, limits_um: dict) -> np.ndarray:
    """Bool ``fine.shape``: points inside every motor's limits; errors for unknown motors or
    limits that exclude the whole area."""
    allowed = np.ones(fine.shape, dtype=bool)
    axes = fine.axes_um()
    for motor, (low, high) in limits_um.items():
        if motor not in fine.axis_names:
            raise ConfigurationError(f"limits name motor {motor!r}, but the map's motors are "
                                     f"{', '.join(fine.axis_names)}")
        axis = fine.axis_names.index(motor)
        inside = (axes[axis] >= low - 1e-9) & (axes[axis] <= high + 1e-9)
        if not inside.any():
            raise ConfigurationError(f"limits {low:g}..{high:g} um of motor {motor} leave no point of the mapped "
                                     f"area ({axes[axis][0]:g}..{axes[axis][-1]:g} um)")
        allowed &= inside[:, None] if axis == 0 else inside[None, :]
    return allowed


def measured_at_step(fine: FineGrid, scans: list[SteeringMaps]) -> np.ndarray:
    """Bool ``fine.shape``: fine points that a scan at the fine step or finer already measured."""
    done = np.zeros(fine.shape, dtype=bool)
    for maps in scans:
        placed = measured_on_fine(maps, fine)
        if placed is not None:
            done[placed[2], placed[3]] = True
    return done


def _scan_request(fine: FineGrid, rect: Rectangle, snake: bool, series_id: int) -> ScanRequest:
    rows, cols = fine.axes_um()
    ranges = []
    for axis, (first, last, positions) in enumerate(((rect.row0, rect.row1, rows), (rect.col0, rect.col1, cols))):
        ranges.append(MotorRange(fine.axis_names[axis], round(float(positions[first]), 6),
                                 round(float(positions[last]), 6), last - first + 1, round(fine.step_um[axis], 6)))
    return ScanRequest(ranges[0], ranges[1], snake=snake, series_id=series_id)


def _describe(rect: Rectangle, counts: list[tuple[str, int]], basis: SteeringMaps) -> str:
    wanted = ", ".join(f"{name} {n}" for name, n in counts)
    return (f"{rect.n_wanted} of its {rect.n_points} points wanted ({wanted}) from the maps of series "
            f"{basis.series_id}")


def suggest(request: SteeringRequest, basis: SteeringMaps, scans: list[SteeringMaps] = ()) -> SteeringResult:
    """Suggested scans from the maps of ``basis``.

    Parameters
    ----------
    request : SteeringRequest
    basis : SteeringMaps
        The scan whose maps the strategies read.
    scans : list of SteeringMaps
        Every scan known (the basis may be among them): points they measured at the fine step
        or finer are not suggested again (unless ``include_measured``).
    """
    if not basis.measured.any():
        raise ConfigurationError(f"series {basis.series_id} has no measured point yet: nothing to steer from")
    step = request.fine_step_um or tuple(s / request.refine if s > 0 else 1.0 for s in basis.abs_step_um)
    fine = fine_grid_over(basis.grid, step)
    allowed = allowed_points(fine, request.limits_um)
    results: list[StrategyResult] = [run_strategy(s.name, s.options, basis, fine, [basis, *scans]) for s in request.strategies]
    done = np.zeros(fine.shape, bool) if request.include_measured else measured_at_step(fine, [basis, *scans])
    user_results = [r for r in results if r.name == "user"]
    others = [r for r in results if r.name != "user"]
    user_wanted = np.zeros(fine.shape, bool)
    for r in user_results:
        user_wanted |= r.wanted & allowed
    wanted = np.zeros(fine.shape, bool)
    score = np.zeros(fine.shape)
    for r in others:
        wanted |= r.wanted
        score = np.maximum(score, np.where(r.wanted, r.score, 0.0))
    wanted &= allowed & ~done & ~user_wanted
    dwell = request.dwell_s if request.dwell_s is not None else (basis.count_time_s or DEFAULT_DWELL_S)
    per_point = dwell + request.overhead_per_point_s

    candidates: list[tuple[Rectangle, tuple[str, ...], float, str]] = []
    for r in user_results:
        box = r.wanted & allowed
        if box.any():
            rows, cols = np.nonzero(box)
            rect = Rectangle(int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max()), int(box.sum()))
            candidates.append((rect, ("user",), 1.0, "drawn by the user; " + r.note.removeprefix("user: ")))
    for rect in tile_mask(wanted, request.min_fill):
        sl = rect.slices()
        counts = sorted(((r.name, int((r.wanted[sl] & wanted[sl]).sum())) for r in others), key=lambda c: -c[1])
        counts = [c for c in counts if c[1] > 0]
        candidates.append((rect, tuple(n for n, _ in counts), float(score[sl].mean()), _describe(rect, counts, basis)))
    suggestions = []
    for k, (rect, names, value, reason) in enumerate(sorted(candidates, key=lambda c: (-c[2], -c[0].n_wanted))):
        scan = _scan_request(fine, rect, request.snake, basis.series_id)
        time_s = scan.n_points * per_point + request.overhead_per_scan_s
        suggestions.append(Suggestion(f"{basis.series_id}.{k + 1}", scan, names, value, reason, time_s, rect.n_wanted))
    kept, deferred, used = [], [], 0.0
    for s in suggestions:
        if len(kept) >= request.max_suggestions:
            deferred.append((s, f"beyond max_suggestions={request.max_suggestions}"))
        elif request.time_budget_s is not None and used + s.estimated_time_s > request.time_budget_s:
            deferred.append((s, f"needs {s.estimated_time_s:.1f} s, {request.time_budget_s - used:.1f} s of the "
                                f"{request.time_budget_s:g} s budget left"))
        else:
            kept.append(s)
            used += s.estimated_time_s
    notes = [r.note for r in results]
    if done.any() and not request.include_measured:
        notes.append(f"{int((done & allowed).sum())} fine points already measured at this step are left out")
    if not candidates:
        notes.append("nothing new to scan")
    return SteeringResult(basis.series_id, fine, tuple(kept), tuple(deferred), tuple(notes), request.time_budget_s)
