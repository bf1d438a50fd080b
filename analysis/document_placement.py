"""Where a frame goes on the map, from a bluesky run's documents (pure logic, no I/O).

A raster run's start document says the grid (``shape``, ``extents``, ``snaking``, ``motors``,
as ``bluesky.plans.grid_scan`` writes them) and which detector series it drives
(``braggmap_detector_series``). Its events then tie detector frames to scan points:

* **step** scans (``grid_scan``, ``rel_grid_scan``): each ``primary`` event reads the detector,
  whose ``<det>_frame_index`` field names the frame; the event's ``seq_num - 1`` is the scan
  point, placed by shape and snaking. Without a detector field the frame is ``seq_num - 1``.
* **fly** scans (``braggmap_scan_mode: "fly"``): the detector's own events give each frame's
  time; the motors' timestamped readings (monitor streams, row readings) are interpolated at that
  time and the frame goes to the nearest grid point. A frame waits until every motor was read at
  or after its time (a motor read with no newer readback had not moved since its last one).

Positions are in the motors' units; descriptors' ``units`` (``um``, ``mm``, ``nm``) convert the
grid to micrometres (no unit: micrometres assumed). Relative scans get their origin from the
first event's motor readings.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from analysis.errors import ConfigurationError
from analysis.frame_rows import FrameRows, GrowingRows
from analysis.scan_grid import ScanGrid

log = logging.getLogger(__name__)

UNIT_TO_UM = {"um": 1.0, "µm": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0,
              "mm": 1e3, "millimeter": 1e3, "nm": 1e-3, "m": 1e6}
"""Motor engineering units -> micrometres."""

OUTSIDE = (-1, -1)
"""Pixel of a frame that lies off the grid (known, but not placeable)."""

SCAN_MODES = ("step", "fly")


@dataclass(frozen=True)
class RunLayout:
    """The raster of one run, from its start document (positions in motor units).

    Attributes
    ----------
    run_uid, plan_name : str
    mode : {"step", "fly"}
    shape : (int, int)
        (rows, columns) = (slow motor points, fast motor points).
    snake : bool
        Odd rows run backwards along the fast motor.
    extents : ((float, float), (float, float))
        (first, last) position of the slow and the fast motor (relative for ``rel_*`` plans).
    motors : (str, str)
        Names of the (slow, fast) motors, also their reading keys in events.
    detector_series : int or None
        ``braggmap_detector_series`` of the start document.
    detector_name : str or None
        ``braggmap_detector``: prefix of the ``<name>_frame_index`` / ``<name>_series_id`` fields.
    relative : bool
    """

    run_uid: str
    plan_name: str
    mode: str
    shape: tuple[int, int]
    snake: bool
    extents: tuple[tuple[float, float], tuple[float, float]]
    motors: tuple[str, str]
    detector_series: int | None = None
    detector_name: str | None = None
    relative: bool = False

    @property
    def step(self) -> tuple[float, float]:
        """(slow, fast) distance between neighbouring points in motor units (0 for one point)."""
        return tuple((stop - start) / (n - 1) if n > 1 else 0.0
                     for (start, stop), n in zip(self.extents, self.shape))

    @property
    def n_points(self) -> int:
        return self.shape[0] * self.shape[1]

    def index_grid(self) -> ScanGrid:
        """The grid in point units (for placing by point index)."""
        return ScanGrid(shape=self.shape, snake=self.snake, axis_names=self.motors)

    def point_pixel(self, point_index: int) -> tuple[int, int]:
        """(row, column) of the ``point_index``-th point of the run (``seq_num - 1``), or OUTSIDE."""
        return self.index_grid().position(int(point_index)) or OUTSIDE

    def nominal_position(self, point_index: int) -> tuple[float, float] | None:
        """(slow, fast) motor position of a point in the start document's frame, or None."""
        pixel = self.index_grid().position(int(point_index))
        if pixel is None:
            return None
        step = self.step
        return tuple(start + step[axis] * pixel[axis] for axis, (start, _) in enumerate(self.extents))

    def position_pixel(self, slow: float, fast: float, origin=(0.0, 0.0)) -> tuple[int, int]:
        """Nearest grid point of a motor position; OUTSIDE when half a step or more off the grid."""
        pixel = []
        for axis, value in enumerate((slow, fast)):
            start = self.extents[axis][0] + origin[axis]
            step = self.step[axis]
            if not math.isfinite(value):
                return OUTSIDE
            index = 0 if step == 0 else int(math.floor((value - start) / step + 0.5))
            if step == 0 and abs(value - start) > 1e-9 * max(1.0, abs(start)):
                return OUTSIDE
            if not 0 <= index < self.shape[axis]:
                return OUTSIDE
            pixel.append(index)
        return pixel[0], pixel[1]


def _pair(value: Any, what: str) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise ConfigurationError(f"start document {what} {value!r} is not a list")
    return tuple(value)


def layout_from_start(start: Mapping) -> RunLayout:
    """The :class:`RunLayout` of a raster run's start document.

    Raises
    ------
    ConfigurationError
        The document describes no 1-D or 2-D raster (no ``shape``, more than two motors, bad
        extents); the message names the offending value.
    """
    uid = start.get("uid")
    if not isinstance(uid, str) or not uid:
        raise ConfigurationError(f"start document without a uid: {str(dict(start))[:200]}")
    if "shape" not in start:
        raise ConfigurationError(f"run {uid[:8]} ({start.get('plan_name', '?')}) has no 'shape': not a raster scan")
    shape = _pair(start["shape"], "shape")
    motors = _pair(start.get("motors", ()), "motors")
    if len(shape) not in (1, 2) or len(motors) not in (0, len(shape)):
        raise ConfigurationError(f"run {uid[:8]}: shape {list(shape)} with motors {list(motors)} is not a 1-D or "
                                 f"2-D raster")
    try:
        shape = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        raise ConfigurationError(f"run {uid[:8]}: shape {list(shape)} is not integers") from None
    if min(shape) < 1:
        raise ConfigurationError(f"run {uid[:8]}: shape {list(shape)} has an empty axis")
    extents = start.get("extents")
    if extents is None:
        extents = [(0.0, float(n - 1)) for n in shape]
    extents = _pair(extents, "extents")
    try:
        extents = tuple((float(a), float(b)) for a, b in extents)
    except (TypeError, ValueError):
        raise ConfigurationError(f"run {uid[:8]}: extents {list(extents)} are not (start, stop) pairs") from None
    if len(extents) != len(shape) or not all(math.isfinite(v) for pair in extents for v in pair):
        raise ConfigurationError(f"run {uid[:8]}: extents {list(extents)} do not fit shape {list(shape)}")
    snaking = start.get("snaking") or (False,) * len(shape)
    snaking = _pair(snaking, "snaking")
    motors = tuple(str(m) for m in motors) or tuple(f"axis{i}" for i in range(len(shape)))
    if len(shape) == 1:  # a line: one row along the only motor
        shape, extents, motors, snaking = (1, shape[0]), ((0.0, 0.0), extents[0]), ("", motors[0]), (False, False)
    mode = str(start.get("braggmap_scan_mode", "step"))
    if mode not in SCAN_MODES:
        raise ConfigurationError(f"run {uid[:8]}: braggmap_scan_mode {mode!r} is not one of {SCAN_MODES}")
    series = start.get("braggmap_detector_series")
    try:
        series = None if series is None else int(series)
    except (TypeError, ValueError):
        raise ConfigurationError(f"run {uid[:8]}: braggmap_detector_series {series!r} is not an integer") from None
    plan_name = str(start.get("plan_name", ""))
    detector = start.get("braggmap_detector")
    return RunLayout(run_uid=uid, plan_name=plan_name, mode=mode, shape=shape,
                     snake=bool(snaking[-1]) if len(snaking) > 1 else False, extents=extents, motors=motors,
                     detector_series=series, detector_name=None if detector is None else str(detector),
                     relative=plan_name.startswith("rel_"))


@dataclass
class _Stream:
    name: str
    data_keys: dict
    frame_key: str | None
    series_key: str | None


def _detector_keys(data_keys: Mapping, detector_name: str | None) -> tuple[str | None, str | None]:
    """(``<det>_frame_index``, ``<det>_series_id``) keys of a descriptor, if it reads the detector."""
    candidates = [detector_name] if detector_name else [k[:-len("_frame_index")] for k in data_keys
                                                         if k.endswith("_frame_index")]
    for prefix in candidates:
        frame_key, series_key = f"{prefix}_frame_index", f"{prefix}_series_id"
        if frame_key in data_keys:
            return frame_key, series_key if series_key in data_keys else None
    return None, None


@dataclass
class RunDocuments:
    """What one run's documents say about where its detector frames go.

    Feed every document of the run to :meth:`add`; ask :meth:`pixel` for a frame. Never raises for
    malformed document contents: they are counted in :attr:`problems`.
    """

    layout: RunLayout
    detector_series: int | None = None
    streams: dict[str, _Stream] = field(default_factory=dict)
    point_of_frame: FrameRows = field(default_factory=lambda: FrameRows(np.int64))
    time_of_frame: FrameRows = field(default_factory=lambda: FrameRows(np.float64))
    readings: dict[str, GrowingRows] = field(default_factory=dict)  # (timestamp, value) per motor
    observed_until: dict[str, float] = field(default_factory=dict)
    held: dict[str, GrowingRows] = field(default_factory=dict)  # (timestamp, read at, value) per motor
    unit_to_um: list[float] = field(default_factory=lambda: [1.0, 1.0])
    origin: tuple[float, float] | None = None
    stopped: bool = False
    exit_status: str | None = None
    reason: str = ""
    n_events: int = 0
    n_position_mismatch: int = 0
    problems: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.detector_series is None:
            self.detector_series = self.layout.detector_series
        if not self.layout.relative:
            self.origin = (0.0, 0.0)
        self.readings = {m: GrowingRows(np.float64, (2,)) for m in self.layout.motors if m}
        self.held = {m: GrowingRows(np.float64, (3,)) for m in self.readings}
        self._sorted: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    # -- documents ------------------------------------------------------------------------------
    def _problem(self, text: str) -> None:
        self.problems[text] = self.problems.get(text, 0) + 1

    def add(self, name: str, doc: Mapping) -> None:
        """Apply one document of this run (``descriptor``, ``event``, ``event_page``, ``stop``)."""
        try:
            if name == "descriptor":
                self._descriptor(doc)
            elif name == "event":
                self._event(doc)
            elif name == "event_page":
                for event in _unpack_event_page(doc):
                    self._event(event)
            elif name == "stop":
                self.stopped = True
                self.exit_status = str(doc.get("exit_status", "?"))
                self.reason = str(doc.get("reason", "") or "")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self._problem(f"malformed {name} document ({type(exc).__name__}: {exc})")

    def _descriptor(self, doc: Mapping) -> None:
        data_keys = dict(doc["data_keys"])
        frame_key, series_key = _detector_keys(data_keys, self.layout.detector_name)
        self.streams[str(doc["uid"])] = _Stream(str(doc.get("name", "primary")), data_keys, frame_key, series_key)
        for axis, motor in enumerate(self.layout.motors):
            units = (data_keys.get(motor) or {}).get("units") if motor else None
            if units:
                scale = UNIT_TO_UM.get(str(units).strip())
                if scale is None:
                    self._problem(f"motor {motor} has units {units!r} (not a length): micrometres assumed")
                else:
                    self.unit_to_um[axis] = scale

    def _event(self, doc: Mapping) -> None:
        stream = self.streams.get(str(doc["descriptor"]))
        if stream is None:
            self._problem("event of an unknown descriptor")
            return
        self.n_events += 1
        data, timestamps = doc["data"], doc.get("timestamps", {})
        event_time = float(doc["time"])
        for motor in self.readings:
            if motor in data:
                stamp, value = float(timestamps.get(motor, event_time)), float(data[motor])
                self.readings[motor].append((stamp, value))
                if event_time > stamp:  # still at that value when read, unless another readback says otherwise
                    self.held[motor].append((stamp, event_time, value))
                self.observed_until[motor] = max(self.observed_until.get(motor, stamp), stamp, event_time)
                self._sorted.pop(motor, None)
        if stream.series_key and stream.series_key in data and self.detector_series is None:
            self.detector_series = int(data[stream.series_key])
        frame = int(data[stream.frame_key]) if stream.frame_key and stream.frame_key in data else None
        if self.layout.mode == "step":
            if stream.name != "primary":
                return
            point = int(doc["seq_num"]) - 1
            self.point_of_frame.put(point if frame is None else frame, point)
            self._check_position(point, data)
        elif frame is not None:
            self.time_of_frame.put(frame, float(timestamps.get(stream.frame_key, event_time)))

    def _check_position(self, point: int, data: Mapping) -> None:
        """Set the origin of a relative scan; count readings more than half a step off their point."""
        nominal = self.layout.nominal_position(point)
        motors = self.layout.motors
        if nominal is None or not all(m == "" or m in data for m in motors):
            return
        reading = tuple(float(data[m]) if m else nominal[axis] for axis, m in enumerate(motors))
        if self.origin is None:
            self.origin = (reading[0] - nominal[0], reading[1] - nominal[1])
        for axis in range(2):
            step = abs(self.layout.step[axis])
            tolerance = step / 2 if step else 1e-6 * max(1.0, abs(nominal[axis]))
            if abs(reading[axis] - nominal[axis] - self.origin[axis]) > tolerance:
                self.n_position_mismatch += 1
                return

    # -- placement ------------------------------------------------------------------------------
    def _motor_at(self, motor: str, time_s: float) -> float | None:
        if motor not in self._sorted:
            samples = self.readings[motor]
            if not len(samples):
                return None
            array = samples.rows
            order = np.argsort(array[:, 0], kind="stable")
            times, values = array[order, 0], array[order, 1]
            # a reading made after its readback's timestamp holds the value until the read, unless a
            # readback in between (the motor moving) says otherwise
            extra = []
            for stamp, read_at, value in self.held[motor].rows:
                between = values[np.searchsorted(times, stamp, "right"):np.searchsorted(times, read_at, "right")]
                if np.all(between == value):
                    extra.append((read_at, value))
            if extra:
                array = np.concatenate([np.stack([times, values], axis=1), np.asarray(extra)])
                order = np.argsort(array[:, 0], kind="stable")
                times, values = array[order, 0], array[order, 1]
            self._sorted[motor] = (times, values)
        times, values = self._sorted[motor]
        if self.observed_until[motor] < time_s and not self.stopped:
            return None  # the motor may have moved since: wait for a later reading
        return float(np.interp(time_s, times, values))

    def pixel(self, frame_index: int) -> tuple[int, int] | None:
        """(row, column) of a detector frame; OUTSIDE when off the grid; None when not known yet."""
        if self.layout.mode == "step":
            point = self.point_of_frame.get(frame_index)
            return None if point is None else self.layout.point_pixel(int(point))
        time_s = self.time_of_frame.get(frame_index)
        if time_s is None:
            return None
        time_s = float(time_s)
        position = []
        for axis, motor in enumerate(self.layout.motors):
            if not motor:
                position.append(self.layout.extents[axis][0])
                continue
            value = self._motor_at(motor, time_s)
            if value is None:
                if self.stopped:
                    self._problem(f"no reading of motor {motor} to place fly frames")
                    return OUTSIDE
                return None
            position.append(value)
        return self.layout.position_pixel(position[0], position[1], self.origin or (0.0, 0.0))

    def fallback_pixel(self, frame_index: int) -> tuple[int, int]:
        """Placement of a step-scan frame that never got an event: its index as the point index."""
        return self.layout.point_pixel(int(frame_index))

    def scan_grid(self) -> ScanGrid:
        """The run's grid in micrometres on the real motor axes."""
        origin = self.origin or (0.0, 0.0)
        step = self.layout.step
        start = [(self.layout.extents[axis][0] + origin[axis]) * self.unit_to_um[axis] for axis in range(2)]
        step_um = [step[axis] * self.unit_to_um[axis] if step[axis] else 1.0 for axis in range(2)]
        return ScanGrid(shape=self.layout.shape, snake=self.layout.snake, start_um=tuple(start),
                        step_um=tuple(step_um), axis_names=tuple(m or "none" for m in self.layout.motors))

    @property
    def aborted(self) -> bool:
        return self.stopped and self.exit_status != "success"


def _unpack_event_page(page: Mapping) -> list[dict]:
    """The events of an ``event_page`` document (column-major data and timestamps)."""
    data, timestamps = page["data"], page["timestamps"]
    events = []
    for i, (seq_num, time_s, uid) in enumerate(zip(page["seq_num"], page["time"], page["uid"])):
        events.append({"descriptor": page["descriptor"], "seq_num": seq_num, "time": time_s, "uid": uid,
                       "data": {k: v[i] for k, v in data.items()},
                       "timestamps": {k: v[i] for k, v in timestamps.items()}})
    return events
