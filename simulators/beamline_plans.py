"""Bluesky plans of a nanodiffraction raster: step grid scans and a fly raster.

Both put the detector's series id into the start document (``braggmap_detector_series``, read
when the run opens, i.e. after the detector was armed by staging) and describe the raster as
``bluesky.plans.grid_scan`` does (``shape``, ``extents``, ``snaking``, ``motors``), so the
analysis service places every frame on the real motor axes.
"""

from __future__ import annotations

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
from bluesky import Msg

from analysis.errors import ConfigurationError
from simulators.beamline_stage import readback_of


def with_detector_series(plan, detector):
    """``plan`` with the detector's armed series id (and name) added to its start document."""

    def add_series(msg: Msg) -> Msg:
        if msg.command != "open_run":
            return msg
        kwargs = dict(msg.kwargs, braggmap_detector_series=int(detector.series_id.get()),
                      braggmap_detector=detector.name)
        return msg._replace(kwargs=kwargs)

    return (yield from bpp.msg_mutator(plan, add_series))


def step_grid(detector, slow, slow_start: float, slow_stop: float, n_rows: int, fast, fast_start: float,
              fast_stop: float, n_columns: int, *, snake: bool = True, relative: bool = False, md=None):
    """``grid_scan`` (or ``rel_grid_scan``) with one detector frame per point."""
    yield from bps.mv(detector.n_images, n_rows * n_columns, detector.frames_per_trigger, 1)
    scan = bp.rel_grid_scan if relative else bp.grid_scan
    plan = scan([detector], slow, slow_start, slow_stop, n_rows, fast, fast_start, fast_stop, n_columns,
                snake_axes=snake, md=md)
    return (yield from with_detector_series(plan, detector))


def fly_raster(detector, slow, slow_start: float, slow_stop: float, n_rows: int, fast, fast_start: float,
               fast_stop: float, n_columns: int, *, rate_hz: float, snake: bool = True,
               reposition_velocity: float = 0.0, md=None):
    """Fly raster: the fast axis moves at ``|step| * rate_hz`` across each row while the detector
    takes ``n_columns`` frames at ``rate_hz``, started by position compare at the row's first point.

    The fast and slow readbacks are monitored (timestamped readings in the documents), so each
    frame's position follows from its time. ``reposition_velocity`` (0: at once) moves between rows.
    """
    if n_columns < 2 or n_rows < 1 or rate_hz <= 0:
        raise ConfigurationError(f"fly raster needs >= 2 columns, >= 1 row and a rate > 0, not "
                                 f"{n_rows} x {n_columns} at {rate_hz} Hz")
    step = (fast_stop - fast_start) / (n_columns - 1)
    fly_velocity = abs(step) * rate_hz
    run_up = abs(step)
    slow_positions = [slow_start + (slow_stop - slow_start) * (i / (n_rows - 1) if n_rows > 1 else 0.0)
                      for i in range(n_rows)]
    _md = {
        "shape": (n_rows, n_columns), "extents": ([slow_start, slow_stop], [fast_start, fast_stop]),
        "snaking": (False, snake), "motors": (slow.name, fast.name), "num_points": n_rows * n_columns,
        "plan_name": "fly_raster", "braggmap_scan_mode": "fly", "detectors": [detector.name],
        "plan_args": {"rate_hz": rate_hz, "snake": snake},
        "hints": {"dimensions": [([slow.name], "primary"), ([fast.name], "primary")], "gridding": "rectilinear"},
    }
    _md.update(md or {})
    monitored = [readback_of(slow), readback_of(fast)]

    def rows():
        for row, slow_position in enumerate(slow_positions):
            forward = not (snake and row % 2 == 1)
            first, last = (fast_start, fast_stop) if forward else (fast_stop, fast_start)
            direction = 1.0 if last >= first else -1.0
            yield from bps.mv(fast.velocity, reposition_velocity)
            yield from bps.mv(slow, slow_position, fast, first - direction * run_up)
            yield from bps.mv(detector.compare_position, first, fast.velocity, fly_velocity)
            yield from bps.kickoff(detector, wait=True)
            yield from bps.abs_set(fast, last + direction * run_up, group="row")
            yield from bps.complete(detector, wait=True)
            yield from bps.wait(group="row")
            yield from bps.collect(detector)
            yield from bps.trigger_and_read([slow, fast], name="row_end")

    plan = bpp.stage_wrapper(bpp.monitor_during_wrapper(bpp.run_wrapper(rows(), md=_md), monitored), [detector])
    yield from bps.mv(detector.n_images, n_rows * n_columns, detector.frames_per_trigger, n_columns,
                      detector.frame_rate_hz, rate_hz)
    return (yield from with_detector_series(plan, detector))
