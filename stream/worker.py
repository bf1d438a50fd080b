"""An analysis worker: decompresses frames handed out by the ingest, analyses them, and
pushes one result per frame to the collector.

Runs as its own process (``braggmap worker`` on any host, or spawned by ``braggmap serve``),
connected only over ZeroMQ, so adding workers is a matter of configuration. Every frame gives a
result: an analysed one, or one whose statuses say why it could not be analysed.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass

import numpy as np
import zmq

from analysis.errors import BraggmapError
from analysis.status import Status
from stream import wire
from stream.analysis_setup import AnalysisSetup
from stream.codecs import decompress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker process needs (plain values: it crosses a process boundary)."""

    work_endpoint: str
    collector_endpoint: str
    setup: AnalysisSetup
    credits: int = 3
    name: str = ""


class Worker:
    """The worker's loop; one instance owns its two sockets."""

    def __init__(self, config: WorkerConfig, context: zmq.Context | None = None,
                 stop: threading.Event | None = None) -> None:
        self.config = config
        self.name = config.name or f"{socket.gethostname()}-{os.getpid()}"
        self._context = context or zmq.Context.instance()
        self._stop = stop or threading.Event()
        self.analyzers = config.setup.analyzer_cache()
        self.analyzer = None
        self.series_problem: str | None = None
        self.saturation_value: float | None = None
        self.frames_done = 0

    def run(self) -> None:
        self.analyzer = self.analyzers.default()
        self.analyzer.warm_up()
        dealer = self._context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.IDENTITY, self.name.encode())
        dealer.connect(self.config.work_endpoint)
        results = self._context.socket(zmq.PUSH)
        results.setsockopt(zmq.LINGER, 2000)
        results.connect(self.config.collector_endpoint)
        dealer.send_multipart([wire.READY, wire.dumps({"credits": self.config.credits, "worker": self.name})])
        log.info("worker %s ready", self.name)
        try:
            while not self._stop.is_set():
                if not dealer.poll(100, zmq.POLLIN):
                    continue
                parts = dealer.recv_multipart(copy=False)
                kind = bytes(parts[0].buffer)
                if kind == wire.SERIES:
                    self._on_series(parts, results)
                elif kind == wire.SERIES_END:
                    results.send_multipart(self._average(parts))
                elif kind == wire.FRAME:
                    results.send_multipart(self._on_frame(parts))
                    dealer.send_multipart([wire.CREDIT])
                else:
                    log.warning("worker %s: ignoring message of kind %r", self.name, kind)
        finally:
            dealer.close(linger=0)
            results.close()

    def _on_series(self, parts, results) -> None:
        try:
            info, mask = wire.decode_series([p.buffer for p in parts])
            self.analyzer = self.analyzers.for_series(info, mask)
            self.analyzer.average.reset()
            self.saturation_value = info.saturation_value
            self.series_problem = None
        except BraggmapError as exc:
            self.series_problem = str(exc)
            self.analyzer = None
            results.send_multipart([wire.PROBLEM, wire.dumps({"series_id": _series_id(parts), "message": str(exc)})])
            log.info("series rejected: %s", exc)  # reported to the collector, which owns the outcome

    def _average(self, parts) -> list[bytes]:
        """This worker's share of the series' average pattern, then reset."""
        meta = {"series_id": wire.loads(parts[1].buffer)["series_id"], "worker": self.name, "n_frames": 0}
        if self.analyzer is None:
            empty = np.zeros((0, 0, 0))
            return wire.encode_average(meta, empty, empty, empty.astype(np.int64))
        average = self.analyzer.average
        meta["n_frames"] = average.n_frames
        parts = wire.encode_average(meta, average.signal_sum, average.raw_sum, average.n_valid)
        average.reset()
        return parts

    def _on_frame(self, parts) -> list[bytes]:
        """Analyse one frame; the result's ``error`` says why it failed, and ``undecodable``
        whether its payload could not be decompressed (a frame the accounting must count)."""
        started_ns = time.time_ns()
        meta: dict = {}
        error = None
        undecodable = False
        n_params = len(self.analyzers.parameter_names)
        values = np.full(n_params, np.nan)
        statuses = np.full(n_params, int(Status.INVALID_INPUT), dtype=np.int32)
        try:
            meta, payload = wire.decode_frame(parts)
            if self.analyzer is None:
                raise BraggmapError(self.series_problem or "no analyzer for this series")
            try:
                # no out=: bitshuffle cannot write into a caller's buffer, so out= costs a copy
                frame = decompress(payload, meta["compression"], meta["dtype"], meta["shape"])
            except BraggmapError:
                statuses[:] = Status.UNDECODABLE
                undecodable = True  # the collector counts it in the series' frame accounting
                raise
            self.analyzer.analyse(frame, values, statuses, saturation_value=self.saturation_value)
        except BraggmapError as exc:
            error = str(exc)
        except Exception as exc:  # never let one frame kill the worker
            log.exception("worker %s: frame analysis failed", self.name)
            error = f"{type(exc).__name__}: {exc}"
        self.frames_done += 1
        out = {
            "series_id": meta.get("series_id"),
            "frame_index": meta.get("frame_index"),
            "received_ns": meta.get("received_ns"),
            "started_ns": started_ns,
            "done_ns": time.time_ns(),
            "worker": self.name,
            "error": error,
            "undecodable": undecodable,
        }
        return wire.encode_result(out, values, statuses)


def _series_id(parts) -> int | None:
    try:
        return int(wire.loads(parts[1].buffer)["series_id"])
    except Exception:
        return None


def run_worker_process(config: WorkerConfig) -> None:
    """Process entry point: run a worker until SIGTERM / SIGINT."""
    logging.basicConfig(level=os.environ.get("BRAGGMAP_LOG", "WARNING"))
    if "BRAGGMAP_LOG" not in os.environ:
        for name in ("silx", "pyFAI"):
            logging.getLogger(name).setLevel(logging.ERROR)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    Worker(config, stop=stop).run()
