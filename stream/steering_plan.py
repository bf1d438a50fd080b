"""``coarse_to_fine``: a Bluesky plan that runs a coarse raster, asks the service where to look
closer, runs the finer scans it suggests, and asks again until nothing new is suggested, the
time budget is spent or ``max_rounds`` is reached.

Every run's start document records why it was made (``braggmap_steering``: the role, the
round, the suggestion with its strategies, score and reason), so the decisions stay with the
data. An ``approve`` callable (e.g. :func:`ask_on_terminal`) lets a person accept, trim or
refuse each round's suggestions before anything moves.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import bluesky.plans as bp

from analysis.errors import ConfigurationError
from stream.steering_client import SteeringClient


def grid_raster(detectors):
    """The default raster: ``bluesky.plans.grid_scan`` of ``detectors``."""

    def raster(slow, slow_start, slow_stop, n_rows, fast, fast_start, fast_stop, n_columns, *, snake, md):
        return (yield from bp.grid_scan(detectors, slow, slow_start, slow_stop, n_rows, fast, fast_start,
                                        fast_stop, n_columns, snake_axes=snake, md=md))

    return raster


def ask_on_terminal(suggestions: list[dict]) -> list[dict]:
    """Print the suggestions and read which to run: ``y`` all, ``n`` none, or numbers ``1,3``."""
    for k, s in enumerate(suggestions, 1):
        slow, fast = s["motors"]
        print(f"{k}: {slow['name']} {slow['start_um']:g}..{slow['stop_um']:g} ({slow['num']}) x {fast['name']} "
              f"{fast['start_um']:g}..{fast['stop_um']:g} ({fast['num']}), {s['estimated_time_s']:.0f} s, "
              f"score {s['score']:.2f}: {', '.join(s['strategies'])}")
    answer = input("run which suggested scans? [y = all, n = none, or 1,2,...] ").strip().lower()
    if answer in ("y", "yes", "all", ""):
        return list(suggestions)
    if answer in ("n", "no", "none"):
        return []
    try:
        chosen = sorted({int(part) for part in answer.replace(" ", "").split(",") if part})
    except ValueError:
        raise ConfigurationError(f"answer {answer!r} is neither y, n nor a list of numbers") from None
    return [suggestions[k - 1] for k in chosen if 1 <= k <= len(suggestions)]


def motor_limits_um(*motors) -> dict:
    """The soft limits of ``motors`` by name (ophyd ``limits``; (0, 0) means none)."""
    limits = {}
    for motor in motors:
        try:
            low, high = (float(v) for v in getattr(motor, "limits", (0.0, 0.0)))
        except (TypeError, ValueError):
            continue
        if low < high:
            limits[motor.name] = [low, high]
    return limits


def _key(suggestion: dict) -> tuple:
    return tuple((m["name"], m["start_um"], m["stop_um"], m["num"]) for m in suggestion["motors"])


def coarse_to_fine(slow, fast, coarse_extents_um, coarse_shape: Sequence[int], steering: SteeringClient, *,
                   raster: Callable | None = None, detectors=(), strategies=("crystal",),
                   fine_step_um=None, time_budget_s: float | None = None, max_rounds: int = 4,
                   limits_um: dict | None = None, snake: bool = True,
                   approve: Callable[[list[dict]], list[dict]] | None = None,
                   series_of: Callable[[], int] | None = None, wait_s: float = 120.0,
                   request_options: dict | None = None, md: dict | None = None):
    """Coarse raster, then the finer scans the service suggests, round after round.

    Parameters
    ----------
    slow, fast : ophyd positioners
        Slow (rows, y) and fast (columns, x) motors, micrometres; their names must be the ones
        the service's maps use.
    coarse_extents_um : ((float, float), (float, float))
        (slow start, stop), (fast start, stop) of the coarse raster.
    coarse_shape : (int, int)
        Coarse points (rows, columns).
    steering : SteeringClient
    raster : callable, optional
        ``raster(slow, start, stop, num, fast, start, stop, num, snake=, md=)`` plan making one
        frame per point (default :func:`grid_raster` of ``detectors``).
    strategies, fine_step_um, limits_um, request_options
        What to ask for (:class:`analysis.steering.SteeringRequest` fields). The motors' own
        soft limits are always sent; ``limits_um`` adds to or narrows them.
    time_budget_s : float, optional
        Wall time for the fine scans; each round asks only for what still fits.
    max_rounds : int
    approve : callable, optional
        ``approve(suggestions) -> suggestions to run`` (e.g. :func:`ask_on_terminal`); an empty
        answer ends the plan.
    series_of : callable, optional
        The detector series id of the run just made (e.g. ``lambda: det.series_id.get()``): the
        service then waits for exactly those maps. Without it the newest maps are used.
    wait_s : float
        Longest wait for the service to finish analysing a scan.

    Returns
    -------
    dict
        ``coarse_series``, ``rounds`` (list of the suggestions run per round), ``stopped`` (why),
        ``elapsed_s`` of the fine scans.
    """
    if raster is None:
        if not detectors:
            raise ConfigurationError("coarse_to_fine needs detectors or a raster plan")
        raster = grid_raster(list(detectors))
    (y0, y1), (x0, x1) = coarse_extents_um
    names = {slow.name: slow, fast.name: fast}
    request = {"strategies": list(strategies), **(request_options or {})}
    if fine_step_um is not None:
        request["fine_step_um"] = fine_step_um
    limits = motor_limits_um(slow, fast)
    limits.update(limits_um or {})
    if limits:
        request["limits_um"] = limits
    base_md = dict(md or {})
    coarse_md = {**base_md, "braggmap_steering": {"role": "coarse", "strategies": request["strategies"]}}
    yield from raster(slow, y0, y1, int(coarse_shape[0]), fast, x0, x1, int(coarse_shape[1]), snake=snake,
                      md=coarse_md)
    basis = int(series_of()) if series_of is not None else None
    pending = [] if basis is None else [basis]
    done_keys: set = set()
    rounds: list[list[dict]] = []
    elapsed = 0.0
    stopped = f"max_rounds={max_rounds} reached"
    for round_number in range(1, max_rounds + 1):
        ask = dict(request, wait_s=wait_s, wait_for_series=pending)
        if basis is not None:
            ask["series_id"] = basis
        if time_budget_s is not None:
            left = time_budget_s - elapsed
            if left <= 0:
                stopped = f"time budget of {time_budget_s:g} s spent"
                break
            ask["time_budget_s"] = left
        reply = steering.suggest(**ask)
        if basis is None:
            basis = reply["basis_series_id"]
        suggestions = [s for s in reply["suggestions"] if _key(s) not in done_keys]
        if not suggestions:
            stopped = "nothing new suggested" if not reply["deferred"] else "what is left does not fit the time budget"
            break
        if approve is not None:
            suggestions = list(approve(suggestions))
            if not suggestions:
                stopped = "no suggestion approved"
                break
        pending = []
        for suggestion in suggestions:
            slow_range, fast_range = suggestion["motors"]
            if slow_range["name"] not in names or fast_range["name"] not in names:
                raise ConfigurationError(f"suggestion {suggestion['id']} moves {slow_range['name']} and "
                                         f"{fast_range['name']}, but the plan has {', '.join(names)}")
            done_keys.add(_key(suggestion))
            record = {**base_md, "braggmap_steering": {"role": "fine", "round": round_number,
                                                        "basis_series_id": reply["basis_series_id"], **suggestion}}
            started = time.monotonic()
            yield from raster(names[slow_range["name"]], slow_range["start_um"], slow_range["stop_um"],
                              slow_range["num"], names[fast_range["name"]], fast_range["start_um"],
                              fast_range["stop_um"], fast_range["num"], snake=suggestion["kwargs"]["snake_axes"],
                              md=record)
            elapsed += time.monotonic() - started
            if series_of is not None:
                pending.append(int(series_of()))
        rounds.append(suggestions)
    return {"coarse_series": basis, "rounds": rounds, "stopped": stopped, "elapsed_s": elapsed}
