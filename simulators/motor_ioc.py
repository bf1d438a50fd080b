"""An EPICS IOC (caproto) with the sample stage's two motor records, ``<prefix>x`` and ``<prefix>y``.

The motor records move at their ``VELO`` (micrometres per second, ``EGU`` ``um``) on an exact
time law: the readback at time t is ``start + velocity * (t - t_move)`` and is posted with
timestamp t every ``tick_s``, so timestamped readbacks describe the true trajectory (as an
encoder read-out would). ``VELO`` 0 moves at once. ophyd's ``EpicsMotor`` talks to it over
Channel Access like to a real motor record.

Run on loopback with a free port::

    EPICS_CA_SERVER_PORT=5077 EPICS_CAS_INTF_ADDR_LIST=127.0.0.1 ... \\
        python -m simulators.motor_ioc --prefix test: [--tick-s 0.01]

:func:`start_motor_ioc` does that as a subprocess (loopback-only environment, free port).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from caproto.server import PVGroup, SubGroup, ioc_arg_parser, pvproperty, run

LOOPBACK_ENV = {
    "EPICS_CA_AUTO_ADDR_LIST": "NO",
    "EPICS_CA_ADDR_LIST": "127.0.0.1",
    "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
    "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
    "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
}


class TimedMotor(PVGroup):
    """One motor record moving on an exact time law."""

    motor = pvproperty(value=0.0, name="", record="motor", precision=4)

    def __init__(self, *args, velocity: float = 0.0, tick_s: float = 0.01, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.initial_velocity = velocity
        self.tick_s = tick_s

    @motor.startup
    async def motor(self, instance, async_lib):
        fields = instance.field_inst
        sleep = async_lib.library.sleep
        new_target = False

        async def value_write_hook(*_args) -> None:
            nonlocal new_target
            new_target = True

        fields.value_write_hook = value_write_hook
        await fields.velocity.write(self.initial_velocity)
        await fields.user_low_limit.write(-1e6)
        await fields.user_high_limit.write(1e6)
        await fields.engineering_units.write("um")
        await fields.user_readback_value.write_metadata(units="um")
        await fields.done_moving_to_value.write(1)
        while True:
            if not new_target:
                await sleep(self.tick_s)
                continue
            new_target = False
            start, target = fields.user_readback_value.value, instance.value
            velocity, t_move = float(fields.velocity.value), time.time()
            distance = target - start
            duration = abs(distance) / velocity if velocity > 0 else 0.0
            if fields.stop.value:  # STOP is momentary: one written while idle does not stop this move
                await fields.stop.write(0)
            await fields.done_moving_to_value.write(0)
            await fields.motor_is_moving.write(1)
            while True:
                now = time.time()
                fraction = 1.0 if duration <= 0 else min((now - t_move) / duration, 1.0)
                await fields.user_readback_value.write(start + distance * fraction, timestamp=now)
                if fraction >= 1.0 or new_target:
                    break
                if fields.stop.value:
                    await fields.stop.write(0)
                    await instance.write(fields.user_readback_value.value)
                    new_target = False
                    break
                await sleep(self.tick_s)
            if not new_target:
                await fields.motor_is_moving.write(0)
                await fields.done_moving_to_value.write(1)


class StageIOC(PVGroup):
    """The sample stage: motors ``x`` (fast axis) and ``y`` (slow axis), micrometres."""

    x = SubGroup(TimedMotor, prefix="x")
    y = SubGroup(TimedMotor, prefix="y")


def free_tcp_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for ``EPICS_CA_SERVER_PORT``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_motor_ioc(prefix: str, port: int | None = None) -> tuple[subprocess.Popen, int]:
    """Start the stage IOC as a subprocess on loopback; returns it and its CA server port.

    The caller's Channel Access client must search ``127.0.0.1:<port>``
    (``EPICS_CA_ADDR_LIST=127.0.0.1:<port>`` or ``EPICS_CA_SERVER_PORT=<port>``) and
    terminate the process when done.
    """
    port = port or free_tcp_port()
    env = dict(os.environ, **LOOPBACK_ENV, EPICS_CA_SERVER_PORT=str(port))
    process = subprocess.Popen([sys.executable, "-m", "simulators.motor_ioc", "--prefix", prefix, "--quiet"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return process, port


def main() -> None:
    options, run_options = ioc_arg_parser(default_prefix="braggmap:stage:", desc=StageIOC.__doc__)
    ioc = StageIOC(**options)
    run(ioc.pvdb, **run_options)


if __name__ == "__main__":
    main()
