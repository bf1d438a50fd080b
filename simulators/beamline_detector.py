"""The EIGER as an ophyd device in bluesky plans, streaming through the detector simulator.

* ``stage()`` arms the detector: a new series id (``series_id`` reading), the global header for
  ``n_images`` frames on the stream; ``unstage()`` sends the series end (also after an abort).
* **Step scans**: ``trigger()`` takes one frame of the sample where the stage is now.
* **Fly scans** (``kickoff`` / ``complete`` / ``collect``): each kickoff arms a burst of
  ``frames_per_trigger`` frames at ``frame_rate_hz``, started when the fast axis crosses
  ``compare_position`` (a position-compare trigger); each frame shows the sample where the
  stage was at the frame's time, and ``collect()`` gives one event per frame with that time.

Readings carry the detector ``series_id`` and ``frame_index`` so the analysis can tie frames
to events. ``frame_at(slow_um, fast_um) -> (compression, payload)`` makes the frames.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from typing import Callable

from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.status import DeviceStatus

from analysis.errors import ProtocolError
from simulators.beamline_stage import SampleStage
from simulators.eiger_files import EigerMetadata
from simulators.eiger_server import EigerStreamServer, convert_payload, new_series_unique_id, wire_compression
from stream import protocol_v1, protocol_v2
from stream.messages import ImageFrame, SeriesEnd

log = logging.getLogger(__name__)

FrameAt = Callable[[float, float], "tuple[str, bytes]"]


class SimEiger(Device):
    """A simulated EIGER driven by bluesky (see the module docstring).

    Parameters
    ----------
    server : EigerStreamServer
        The stream simulator (bound PUSH) the frames go out on.
    stage : SampleStage
        Where the sample is.
    frame_at : callable
        ``frame_at(slow_um, fast_um) -> (compression, payload)`` of the sample at that position.
    metadata : EigerMetadata
        Detector description for the global header (shape, dtype, geometry...).
    first_series_id : int
    """

    series_id = Cpt(Signal, value=0, kind="normal")
    frame_index = Cpt(Signal, value=-1, kind="normal")
    n_images = Cpt(Signal, value=1, kind="config")
    frames_per_trigger = Cpt(Signal, value=1, kind="config")
    frame_rate_hz = Cpt(Signal, value=10.0, kind="config")
    compare_position = Cpt(Signal, value=0.0, kind="config")

    def __init__(self, *, name: str, server: EigerStreamServer, stage: SampleStage, frame_at: FrameAt,
                 metadata: EigerMetadata, first_series_id: int = 1, peer_timeout_s: float = 30.0,
                 compare_timeout_s: float = 30.0, **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.server, self.sample_stage, self.frame_at, self.metadata = server, stage, frame_at, metadata
        self.peer_timeout_s, self.compare_timeout_s = peer_timeout_s, compare_timeout_s
        self._next_series = int(first_series_id)
        self._armed = False
        self._frames_sent = 0
        self._arm_time = 0.0
        self._arm_date = None
        self._unique_id = None
        self._send_lock = threading.Lock()
        self._burst: threading.Thread | None = None
        self._burst_status: DeviceStatus | None = None
        self._abort = threading.Event()
        self._collected: list[tuple[int, float]] = []

    # -- stream ---------------------------------------------------------------------------------
    def _send(self, message) -> None:
        protocol = self.server.protocol
        if protocol == "v1":
            encode = {ImageFrame: protocol_v1.encode_v1_image, SeriesEnd: protocol_v1.encode_v1_end}
            parts = encode.get(type(message), protocol_v1.encode_v1_start)(message)
        elif isinstance(message, ImageFrame):
            parts = protocol_v2.encode_v2_image(message, series_date=self._arm_date)
        else:
            parts = (protocol_v2.encode_v2_end if isinstance(message, SeriesEnd) else protocol_v2.encode_v2_start)(message)
        with self._send_lock:
            self.server.send_raw(parts)

    def _send_frame(self, slow_um: float, fast_um: float, time_s: float) -> int:
        compression, payload = self.frame_at(slow_um, fast_um)
        target = wire_compression(self.server.protocol, self.server.encoding)
        index = self._frames_sent
        period_ns = round(1e9 / float(self.frame_rate_hz.get()))
        start_ns = max(round((time_s - self._arm_time) * 1e9), 0)
        frame = ImageFrame(series_id=self._series, frame_index=index, shape=self.metadata.shape,
                           dtype=self.metadata.dtype, compression=target,
                           payload=convert_payload(payload, compression, target, self.metadata),
                           elem_size=self.metadata.itemsize, start_time_ns=start_ns,
                           stop_time_ns=start_ns + period_ns, real_time_ns=period_ns,
                           series_unique_id=self._unique_id)
        self._send(frame)
        self._frames_sent += 1
        self.frame_index.put(index)
        return index

    # -- bluesky: stage / trigger ------------------------------------------------------------------
    def stage(self):
        staged = super().stage()
        if not self.server.wait_for_peers(self.peer_timeout_s):
            super().unstage()
            raise ProtocolError(f"no analysis service took the detector stream at {self.server.endpoint}")
        self._series, self._next_series = self._next_series, self._next_series + 1
        self._frames_sent, self._collected = 0, []
        self._arm_time = time.time()
        self._arm_date = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        self._unique_id = new_series_unique_id() if self.server.protocol == "v2" else None
        self._abort.clear()
        rate = float(self.frame_rate_hz.get())
        start = self.server.series_start(self.metadata, series_id=self._series, n_images=int(self.n_images.get()),
                                         frame_time_s=1.0 / rate, count_time_s=0.9 / rate,
                                         series_unique_id=self._unique_id, arm_date=self._arm_date)
        self._send(start)
        self.series_id.put(self._series)
        self.frame_index.put(-1)
        self._armed = True
        log.info("%s armed: series %d, %d images", self.name, self._series, self.n_images.get())
        return staged

    def unstage(self):
        if self._armed:
            self._abort.set()
            if self._burst is not None:
                self._burst.join(10)
            self._send(SeriesEnd(series_id=self._series, series_unique_id=self._unique_id))
            self._armed = False
        return super().unstage()

    def trigger(self) -> DeviceStatus:
        status = DeviceStatus(self)
        if not self._armed:
            status.set_exception(ProtocolError(f"{self.name} triggered while not armed (not staged)"))
            return status
        slow_um, fast_um = self.sample_stage.position_now()
        self._send_frame(slow_um, fast_um, time.time())
        status.set_finished()
        return status

    # -- bluesky: fly ------------------------------------------------------------------------------
    def kickoff(self) -> DeviceStatus:
        kicked = DeviceStatus(self)
        if not self._armed:
            kicked.set_exception(ProtocolError(f"{self.name} kicked off while not armed (not staged)"))
            return kicked
        self._burst_status = DeviceStatus(self)
        self._burst = threading.Thread(target=self._run_burst, args=(time.time(), self._burst_status),
                                       name=f"{self.name}-burst", daemon=True)
        self._burst.start()
        kicked.set_finished()
        return kicked

    def _run_burst(self, after_s: float, status: DeviceStatus) -> None:
        try:
            n_frames, rate = int(self.frames_per_trigger.get()), float(self.frame_rate_hz.get())
            position = float(self.compare_position.get())
            t_first = self.sample_stage.histories[1].crossing_time(position, after_s, self.compare_timeout_s)
            if t_first is None:
                raise ProtocolError(f"{self.name}: the fast axis never crossed the compare position {position}")
            for j in range(n_frames):
                if self._abort.is_set():
                    raise ProtocolError(f"{self.name}: burst stopped after {j} of {n_frames} frames")
                frame_time = t_first + j / rate
                delay = frame_time - time.time()
                if delay > 0:
                    time.sleep(delay)
                slow_um, fast_um = self.sample_stage.position_at(frame_time)
                self._collected.append((self._send_frame(slow_um, fast_um, frame_time), frame_time))
            status.set_finished()
        except Exception as exc:
            log.warning("%s burst failed: %s", self.name, exc)
            status.set_exception(exc)

    def complete(self) -> DeviceStatus:
        if self._burst_status is None:
            status = DeviceStatus(self)
            status.set_finished()
            return status
        return self._burst_status

    def describe_collect(self):
        keys = {f"{self.name}_series_id": {"source": "SIM:series_id", "dtype": "integer", "shape": []},
                f"{self.name}_frame_index": {"source": "SIM:frame_index", "dtype": "integer", "shape": []}}
        return {f"{self.name}_frames": keys}

    def collect(self):
        collected, self._collected = self._collected, []
        for index, frame_time in collected:
            yield {"time": frame_time,
                   "data": {f"{self.name}_series_id": self._series, f"{self.name}_frame_index": index},
                   "timestamps": {f"{self.name}_series_id": frame_time, f"{self.name}_frame_index": frame_time}}

    def stop(self, *, success: bool = False) -> None:
        self._abort.set()
