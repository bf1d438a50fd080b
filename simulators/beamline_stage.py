"""The simulated sample stage: two motors (slow y, fast x, micrometres) as ophyd.sim axes or
EPICS motors, and what the simulated detector needs to know of them (where the sample was at
any time, when the fast axis crossed a position).

:class:`TimedAxis` is an ``ophyd.sim.SynAxis`` that moves at its ``velocity`` (um/s; 0 moves at
once) on an exact time law, posting timestamped readbacks every ``tick_s`` as it goes, so a fly
scan with ophyd.sim axes behaves like one with real motors. :func:`sim_stage` makes the pair;
:func:`epics_stage` connects ``EpicsMotor`` s to :mod:`simulators.motor_ioc`.
"""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass

from ophyd.sim import SynAxis

from analysis.errors import ConfigurationError


class TimedAxis(SynAxis):
    """A SynAxis moving at ``velocity`` um/s (0: at once) with readbacks every ``tick_s``."""

    def __init__(self, *, name: str, value: float = 0.0, velocity: float = 0.0, tick_s: float = 0.005,
                 **kwargs) -> None:
        super().__init__(name=name, value=value, egu="um", **kwargs)
        self.velocity.put(float(velocity))
        self.tick_s = float(tick_s)
        self._motion_lock = threading.Lock()
        self._motion_id = 0

    def describe(self):
        description = super().describe()
        description[self.name]["units"] = "um"
        return description

    def _post(self, position: float, timestamp: float) -> None:
        old = self.sim_state["readback"]
        self.sim_state["readback"], self.sim_state["readback_ts"] = position, timestamp
        self.readback._run_subs(sub_type=self.readback.SUB_VALUE, old_value=old, value=position, timestamp=timestamp)
        self._run_subs(sub_type=self.SUB_READBACK, old_value=old, value=position, timestamp=timestamp)

    def set(self, value: float):
        value = float(value)
        old_setpoint = self.sim_state["setpoint"]
        self.sim_state["setpoint"], self.sim_state["setpoint_ts"] = value, time.time()
        self.setpoint._run_subs(sub_type=self.setpoint.SUB_VALUE, old_value=old_setpoint, value=value,
                                timestamp=self.sim_state["setpoint_ts"])
        status = self._make_status(target=value)
        with self._motion_lock:
            self._motion_id += 1
            motion_id = self._motion_id
        start, velocity, t_move = float(self.sim_state["readback"]), float(self.velocity.get()), time.time()
        duration = abs(value - start) / velocity if velocity > 0 else 0.0

        def move() -> None:
            while True:
                now = time.time()
                fraction = 1.0 if duration <= 0 else min((now - t_move) / duration, 1.0)
                if motion_id != self._motion_id:
                    status.set_exception(RuntimeError(f"{self.name}: move to {value} superseded"))
                    return
                self._post(start + (value - start) * fraction, now)
                if fraction >= 1.0:
                    status.set_finished()
                    return
                time.sleep(self.tick_s)

        threading.Thread(target=move, name=f"{self.name}-move", daemon=True).start()
        return status

    def stop(self, *, success: bool = False) -> None:
        with self._motion_lock:
            self._motion_id += 1


def sim_stage(velocity_um_s: float = 0.0, tick_s: float = 0.005, names=("sample_y", "sample_x")):
    """(slow, fast) = (y, x) ophyd.sim axes, micrometres."""
    return (TimedAxis(name=names[0], velocity=velocity_um_s, tick_s=tick_s),
            TimedAxis(name=names[1], velocity=velocity_um_s, tick_s=tick_s))


def epics_stage(prefix: str, names=("sample_y", "sample_x"), timeout_s: float = 30.0):
    """(slow, fast) = (y, x) ``EpicsMotor`` s of :mod:`simulators.motor_ioc` (``<prefix>y``, ``<prefix>x``).

    Uses ophyd's caproto control layer; the Channel Access environment must point at the IOC.
    """
    import ophyd

    ophyd.set_cl("caproto")
    from ophyd import EpicsMotor

    slow, fast = EpicsMotor(f"{prefix}y", name=names[0]), EpicsMotor(f"{prefix}x", name=names[1])
    for motor in (slow, fast):
        motor.wait_for_connection(timeout=timeout_s)
    return slow, fast


def readback_of(motor):
    """The readback signal of an ophyd.sim axis or an EpicsMotor."""
    return getattr(motor, "user_readback", None) or motor.readback


class PositionHistory:
    """Timestamped readbacks of one motor (subscribed), interpolated at any time."""

    def __init__(self, motor) -> None:
        self.signal = readback_of(motor)
        self.times: list[float] = []
        self.values: list[float] = []
        self._changed = threading.Condition()
        self._token = self.signal.subscribe(self._on_value, run=True)

    def _on_value(self, value=None, timestamp=None, **_kwargs) -> None:
        if value is None:
            return
        with self._changed:
            stamp = float(timestamp if timestamp is not None else time.time())
            index = bisect.bisect_right(self.times, stamp)
            self.times.insert(index, stamp)
            self.values.insert(index, float(value))
            self._changed.notify_all()

    def close(self) -> None:
        self.signal.unsubscribe(self._token)

    def value_at(self, time_s: float, wait_s: float = 0.0) -> float:
        """Position at ``time_s`` (linear between readbacks; the last one holds afterwards).

        Waits up to ``wait_s`` for a readback at or after ``time_s`` (a moving motor posts one).
        """
        with self._changed:
            self._changed.wait_for(lambda: self.times and self.times[-1] >= time_s, timeout=wait_s)
            if not self.times:
                raise ConfigurationError(f"no readback of {self.signal.name} yet")
            index = bisect.bisect_left(self.times, time_s)
            if index == 0:
                return self.values[0]
            if index >= len(self.times):
                return self.values[-1]
            t0, t1 = self.times[index - 1], self.times[index]
            v0, v1 = self.values[index - 1], self.values[index]
            return v1 if t1 == t0 else v0 + (v1 - v0) * (time_s - t0) / (t1 - t0)

    def crossing_time(self, position: float, after_s: float, timeout_s: float) -> float | None:
        """When the motor crossed ``position`` after ``after_s`` (interpolated between the two
        readbacks around it, as a position-compare unit latches it); None on time-out."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                for index in range(max(bisect.bisect_left(self.times, after_s), 1), len(self.times)):
                    v0, v1 = self.values[index - 1], self.values[index]
                    if v0 != v1 and min(v0, v1) <= position <= max(v0, v1):
                        t0, t1 = self.times[index - 1], self.times[index]
                        return t0 + (t1 - t0) * (position - v0) / (v1 - v0)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(timeout=left)


@dataclass
class SampleStage:
    """Where the sample is: the (slow, fast) motors and their readback histories."""

    slow: object
    fast: object

    def __post_init__(self) -> None:
        self.histories = (PositionHistory(self.slow), PositionHistory(self.fast))

    def position_now(self) -> tuple[float, float]:
        """(slow, fast) readbacks now, motor units (micrometres)."""
        return float(readback_of(self.slow).get()), float(readback_of(self.fast).get())

    def position_at(self, time_s: float, wait_s: float = 1.0) -> tuple[float, float]:
        """(slow, fast) at ``time_s``; waits up to ``wait_s`` for the moving fast axis' readback."""
        return self.histories[0].value_at(time_s), self.histories[1].value_at(time_s, wait_s)

    def close(self) -> None:
        for history in self.histories:
            history.close()
