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
from dataclasses import dataclass, field

import numpy as np
import zmq

from analysis.errors import BraggmapError, ProtocolError
from analysis.status import Status
from stream import wire
from stream.analysis_setup import AnalysisSetup
from stream.bslz4_regroup import FUSED_DTYPES, FusedRegroup
from stream.codecs import decompress
from stream.frame_store import FrameStoreUnreadable, StoredLocation, StoredPayloadReader
from stream.gc_tuning import freeze_startup_objects

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 8
"""Frames a worker analyses together at most: only frames already waiting are batched (a
lone frame is analysed at once), so batches form only when the worker falls behind, where
fitting and deriving once per batch raises its rate; a frame's latency grows by at most the
batch's analysis time."""


def credits_for(max_batch: int) -> int:
    """The default frames in flight to a worker with batches of ``max_batch``: two batches, so
    that the next batch already waits in the worker when it finishes one (the ingest sends a
    burst's frames in one message once it has read them all: with one batch in flight the
    worker would wait for that)."""
    return 2 * max_batch


DEFAULT_CREDITS = credits_for(DEFAULT_MAX_BATCH)
"""Frames in flight to one worker, for the default batches."""


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker process needs (plain values: it crosses a process boundary)."""

    work_endpoint: str
    collector_endpoint: str
    setup: AnalysisSetup
    credits: int = DEFAULT_CREDITS
    name: str = ""
    max_batch: int = DEFAULT_MAX_BATCH
    read_frame_store: bool = False
    """Read payloads from the ingest's frame store (only for a worker on the ingest's host)
    instead of receiving them; the worker falls back to receiving them if it cannot open a file."""
    parent_pid: int | None = None
    """Pid of the service that started this worker process: the worker stops once its parent
    is no longer that process (the service was killed), so no worker outlives its service.
    None for a worker started on its own (``braggmap worker``) or run in a thread."""


class Worker:
    """The worker's loop; one instance owns its two sockets."""

    def __init__(self, config: WorkerConfig, context: zmq.Context | None = None,
                 stop: threading.Event | None = None, *, freeze_gc: bool = False) -> None:
        self.config = config
        self.freeze_gc = freeze_gc  # only where the worker owns its process (see stream.gc_tuning)
        self.name = config.name or f"{socket.gethostname()}-{os.getpid()}"
        self._context = context or zmq.Context.instance()
        self._stop = stop or threading.Event()
        self.analyzers = config.setup.analyzer_cache()
        self.analyzer = None
        self.series_problem: str | None = None
        self.saturation_value: float | None = None
        self.frames_done = 0
        self._fused: dict = {}  # (polar table, dtype) -> FusedRegroup
        self._last_mask: tuple[str, np.ndarray] | None = None  # (digest, mask) of the last series
        self._stored = StoredPayloadReader() if config.read_frame_store else None
        self._store_unreadable = False  # set when a store file could not be opened: say so to the ingest

    def run(self) -> None:
        self.analyzer = self.analyzers.default()
        self.analyzer.warm_up()
        self._warm_up_fused()
        if self.freeze_gc:
            freeze_startup_objects()  # full collections would otherwise stall frames by ~0.1 s
        dealer = self._context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.IDENTITY, self.name.encode())
        dealer.connect(self.config.work_endpoint)
        results = self._context.socket(zmq.PUSH)
        results.setsockopt(zmq.LINGER, 2000)
        results.connect(self.config.collector_endpoint)
        dealer.send_multipart([wire.READY, self._announcement(self.config.credits)])
        log.info("worker %s ready", self.name)
        try:
            while not self._stop.is_set():
                if not dealer.poll(100, zmq.POLLIN):
                    if self._service_gone():
                        log.warning("worker %s: its service (pid %d) is gone; stopping", self.name,
                                    self.config.parent_pid)
                        break
                    continue
                waiting = [dealer.recv_multipart(copy=False)]
                # batch what is already queued (never wait for more), up to max_batch frames
                n_frames = _frames_in(waiting[-1])
                while 0 < n_frames < max(1, self.config.max_batch) and dealer.poll(0, zmq.POLLIN):
                    waiting.append(dealer.recv_multipart(copy=False))
                    more = _frames_in(waiting[-1])
                    n_frames = n_frames + more if more else 0  # any other message ends the batch
                self._handle(waiting, dealer, results)
        finally:
            dealer.close(linger=0)
            results.close()
            if self._stored is not None:
                self._stored.close()

    def _service_gone(self) -> bool:
        """Whether the process that started this worker has ended (its parent pid changed)."""
        return self.config.parent_pid is not None and os.getppid() != self.config.parent_pid

    def _announcement(self, credits: int) -> bytes:
        return wire.dumps({"credits": credits, "worker": self.name, "reads_frame_store": self._stored is not None})

    def _handle(self, messages, dealer, results) -> None:
        """Handle received messages in order; consecutive frames are analysed as one batch."""
        frames = []
        for parts in messages:
            kind = bytes(parts[0].buffer)
            if kind == wire.FRAME:
                frames.append(parts)
                continue
            if kind == wire.FRAMES:
                try:
                    frames.extend(wire.decode_frames([part.buffer for part in parts]))
                except ProtocolError as exc:  # lost frames: the collector misses their results
                    log.warning("worker %s: ignoring a bad frames message: %s", self.name, exc)
                    in_flight = _frames_in(parts)  # the ingest still counts them in flight
                    if in_flight:
                        dealer.send_multipart(wire.encode_credit(in_flight))
                continue
            self._flush(frames, dealer, results)
            frames = []
            if kind == wire.SERIES:
                self._on_series(parts, results)
            elif kind == wire.SERIES_END:
                results.send_multipart(self._average(parts))
            else:
                log.warning("worker %s: ignoring message of kind %r", self.name, kind)
        self._flush(frames, dealer, results)

    def _flush(self, frames, dealer, results) -> None:
        """Analyse a batch of frame messages; send their results in one message, then one credit
        message for all of them (two messages per batch, not two per frame: fewer wake-ups of
        the ingest and collector threads that share the cores with the workers)."""
        if not frames:
            return
        results.send_multipart(self._on_frames(frames))
        dealer.send_multipart(wire.encode_credit(len(frames)))
        if self._store_unreadable and self._stored is not None:
            log.warning("worker %s: cannot read the frame store; receiving payloads from now on", self.name)
            self._stored.close()
            self._stored = None
            dealer.send_multipart([wire.READY, self._announcement(0)])  # no more credits, no store

    def _warm_up_fused(self) -> None:
        """Make (and so warm up) the fused decode + regroup of the analyzer's table for both
        EIGER pixel types, before the first frame needs it; nothing to do for a table seen before."""
        for dtype in FUSED_DTYPES:
            self._fused_regroup({"compression": "bslz4", "dtype": dtype.name, "shape": self.analyzer.geometry.shape})

    def _on_series(self, parts, results) -> None:
        try:
            info, mask = wire.decode_series([p.buffer for p in parts], self._last_mask)
            if mask is not None and info.pixel_mask_digest is not None:
                self._last_mask = (info.pixel_mask_digest, mask)  # a view: keeps its message alive
            self.analyzer = self.analyzers.for_series(info, mask)
            self.analyzer.average.reset()
            self._warm_up_fused()
            self.saturation_value = info.saturation_value
            self.series_problem = None
        except BraggmapError as exc:
            self.series_problem = str(exc)
            self.analyzer = None
            series_id, instance = _series_keys(parts)
            results.send_multipart([wire.PROBLEM, wire.dumps({"series_id": series_id, "series_instance": instance,
                                                              "message": str(exc)})])
            log.info("series rejected: %s", exc)  # reported to the collector, which owns the outcome

    def _average(self, parts) -> list[bytes]:
        """This worker's share of the series' average pattern, then reset."""
        end = wire.loads(parts[1].buffer)
        meta = {"series_id": end["series_id"], "series_instance": end.get("series_instance"), "worker": self.name,
                "n_frames": 0}
        if self.analyzer is None:
            empty = np.zeros((0, 0, 0))
            return wire.encode_average(meta, empty, empty, empty.astype(np.int64))
        average = self.analyzer.average
        meta["n_frames"] = average.n_frames
        parts = wire.encode_average(meta, average.signal_sum, average.raw_sum, average.n_valid)
        average.reset()
        return parts

    def _on_frames(self, batch) -> list[bytes]:
        """Analyse frames into one ``results`` message (:func:`stream.wire.encode_results`), a
        result per frame in their order; a result's ``error`` says why its frame failed,
        and ``undecodable`` whether its payload could not be decompressed (a frame the
        accounting must count). Frames that decode are analysed together; one that breaks the
        batch is retried alone, so it fails without taking the others with it."""
        records = [self._received(parts) for parts in batch]
        ready = [r for r in records if r.error is None]  # only when there is an analyzer
        capacity = self.analyzer.batch.capacity if ready else 1
        for start in range(0, len(ready), capacity):
            regrouped = []
            for record in ready[start:start + capacity]:
                if self._regroup(record, slot=len(regrouped)):
                    regrouped.append(record)
            self._analyse(regrouped)
        self.frames_done += len(records)
        return wire.encode_results([self._result_meta(record) for record in records],
                                   np.stack([record.values for record in records]),
                                   np.stack([record.statuses for record in records]))

    def _received(self, frame) -> "_FrameRecord":
        """A record of one frame: the parts of a ``frame`` message, or (metadata, payload) of
        one frame of a ``frames`` message."""
        n_params = len(self.analyzers.parameter_names)
        record = _FrameRecord(started_ns=time.time_ns(), values=np.full(n_params, np.nan),
                              statuses=np.full(n_params, int(Status.INVALID_INPUT), dtype=np.int32))
        try:
            record.meta, record.payload = frame if isinstance(frame, tuple) else wire.decode_frame(frame)
            stored = record.meta.pop("stored", None)
            if stored is not None:
                record.stored = StoredLocation.from_dict(stored)
            if self.analyzer is None:
                raise BraggmapError(self.series_problem or "no analyzer for this series")
        except Exception as exc:
            record.fail(exc, self.name)
        return record

    def _regroup(self, record: "_FrameRecord", slot: int) -> bool:
        """Decode and regroup one frame into batch slot ``slot``; False (and the record says
        why) when it cannot be. EIGER's bitshuffle-LZ4 frames of the configured shape are
        regrouped straight from the payload (``stream.bslz4_regroup``), others decoded first."""
        analyzer, meta = self.analyzer, record.meta
        try:
            fused = self._fused_regroup(meta)
            try:
                payload = record.payload if record.stored is None else self._read_stored(record.stored)
                if fused is not None:
                    fused.regroup(payload, saturation_value=analyzer.saturation_for(self.saturation_value),
                                  background=analyzer.background, out=analyzer.batch.slots[slot])
                    return True
                # no out=: bitshuffle cannot write into a caller's buffer, so out= costs a copy
                frame = decompress(payload, meta["compression"], meta["dtype"], meta["shape"])
            except ProtocolError:
                record.statuses[:] = Status.UNDECODABLE
                record.undecodable = True  # the collector counts it in the series' frame accounting
                raise
            analyzer.regroup_into(slot, frame, self.saturation_value)
            return True
        except Exception as exc:
            record.fail(exc, self.name)
            return False

    def _read_stored(self, location: StoredLocation) -> memoryview:
        if self._stored is None:
            raise ProtocolError("the frame's payload is in the frame store, which this worker does not read")
        try:
            return self._stored.read(location)
        except FrameStoreUnreadable:
            self._store_unreadable = True
            raise

    def _fused_regroup(self, meta: dict) -> FusedRegroup | None:
        """The fused decode + regroup of this frame's kind, or None where it does not apply."""
        try:
            dtype = np.dtype(meta["dtype"])
        except TypeError:
            return None
        if (meta.get("compression") != "bslz4" or dtype not in FUSED_DTYPES
                or tuple(meta["shape"]) != tuple(self.analyzer.geometry.shape)):
            return None
        key = (self.analyzer.table, dtype)  # tables compare by identity
        fused = self._fused.get(key)
        if fused is None:
            fused = self._fused[key] = FusedRegroup(self.analyzer.table, dtype)
            if fused.uses_fused_kernel:
                fused.warm_up()  # compile and build the block schedule before a frame needs them
        return fused if fused.uses_fused_kernel else None

    def _analyse(self, records) -> None:
        """Fit and derive the frames regrouped into slots 0 .. len(records) - 1."""
        if not records:
            return
        n_params = records[0].values.size
        values = np.empty((len(records), n_params))
        statuses = np.empty((len(records), n_params), np.int32)
        try:
            self.analyzer.analyse_regrouped(len(records), values, statuses)
        except Exception as exc:
            if len(records) == 1:
                records[0].fail(exc, self.name)
                return
            for slot, record in enumerate(records):  # find the frame at fault: each alone
                try:
                    self.analyzer.analyse_regrouped(1, values[slot:slot + 1], statuses[slot:slot + 1], first=slot)
                except Exception as exc:
                    record.fail(exc, self.name)
                    continue
                record.values[:], record.statuses[:] = values[slot], statuses[slot]
            return
        for record, v, s in zip(records, values, statuses):
            record.values[:] = v
            record.statuses[:] = s

    def _result_meta(self, record: "_FrameRecord") -> dict:
        meta = record.meta
        return {
            "series_id": meta.get("series_id"),
            "series_instance": meta.get("series_instance"),
            "frame_index": meta.get("frame_index"),
            "received_ns": meta.get("received_ns"),
            "started_ns": record.started_ns,
            "done_ns": time.time_ns(),
            "worker": self.name,
            "error": record.error,
            "undecodable": record.undecodable,
        }


def _frames_in(parts) -> int:
    """Frames a message from the ingest carries: 1 for ``frame``, n for ``frames``, else 0."""
    kind = bytes(parts[0].buffer)
    if kind == wire.FRAME:
        return 1
    return max(0, len(parts) - 2) if kind == wire.FRAMES else 0


@dataclass(eq=False)
class _FrameRecord:
    """One frame of a batch on its way through the worker."""

    started_ns: int
    values: np.ndarray
    statuses: np.ndarray
    meta: dict = field(default_factory=dict)
    payload: memoryview | None = None
    stored: StoredLocation | None = None  # where the payload is when it came without one
    error: str | None = None
    undecodable: bool = False

    def fail(self, exc: Exception, worker: str) -> None:
        """Record why the frame failed (its statuses already say how)."""
        if isinstance(exc, BraggmapError):
            self.error = str(exc)
        else:  # never let one frame kill the worker
            log.error("worker %s: frame analysis failed", worker, exc_info=exc)
            self.error = f"{type(exc).__name__}: {exc}"


def _series_keys(parts) -> tuple[int | None, int | None]:
    """(series id, series instance) of a series message, None for what it does not tell."""
    try:
        info = wire.loads(parts[1].buffer)
        instance = info.get("instance")
        return int(info["series_id"]), instance if isinstance(instance, int) else None
    except Exception:
        return None, None


def run_worker_process(config: WorkerConfig) -> None:
    """Process entry point: run a worker until SIGTERM / SIGINT."""
    logging.basicConfig(level=os.environ.get("BRAGGMAP_LOG", "WARNING"))
    if "BRAGGMAP_LOG" not in os.environ:
        for name in ("silx", "pyFAI"):
            logging.getLogger(name).setLevel(logging.ERROR)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    Worker(config, stop=stop, freeze_gc=True).run()
