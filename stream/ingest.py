"""The ingest: one per detector stream. Owns the series header and the frame accounting, and
fans compressed frames out to the analysis workers.

A worker on the ingest's host that reads the frame store (it says so when it announces itself)
gets a stored frame's location instead of its payload: one trip of the payload over loopback
less for both processes.

Topology (see README): detector PUSH -> ingest PULL; ingest ROUTER <- worker DEALERs (load
balancing by credits: a worker asks for frames, so a slow worker is never flooded and a new
worker gets the current series header first); ingest and workers PUSH -> collector PULL.

Overflow policy when every worker is busy:
* ``"block"`` (replay, demo): stop reading the detector socket; ZeroMQ back-pressure slows the
  sender, nothing is dropped. Frames still queued when a series closes (after a worker was lost)
  wait for the other workers as long as they keep taking frames.
* ``"drop"`` (live detector, whose own buffer must not fill): keep up to ``max_queue`` frames,
  drop and *count* the rest; dropped frames appear in the series summary.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass

import zmq

from analysis.errors import ProtocolError
from stream.loop_thread import LoopThread, waiting_messages
from stream import wire
from stream.accounting import SeriesAccounting
from stream.frame_store import StoredLocation
from stream.messages import ImageFrame, SeriesEnd, SeriesStart
from stream.receiver import DetectorReceiver, Malformed, Received

log = logging.getLogger(__name__)

FRAMES_PER_MESSAGE = 8
"""Frames of one burst sent to a worker in one message at most (a worker batches up to
:data:`stream.worker.DEFAULT_MAX_BATCH`); fewer leave at the end of the burst."""


class Ingest(LoopThread):
    """Receive one detector stream and distribute it.

    Parameters
    ----------
    detector_endpoint : str
        Endpoint the detector binds (this side connects).
    work_endpoint : str
        Endpoint this ingest binds (ROUTER) for workers; ``tcp://127.0.0.1:0`` picks a free port
        (see :attr:`work_endpoint` after :meth:`bind`).
    collector_endpoint : str
        Endpoint the collector binds.
    protocol : {"auto", "v1", "v2"}
    overflow : {"block", "drop"}
    max_queue : int
        Frames held while all workers are busy (``"drop"`` policy).
    series_timeout_s : float
        A series with no message for this long is closed with ``ended_by="timeout"``.
    frame_store : stream.frame_store.FrameStore, optional
        Keeps every accepted frame's compressed payload (for the frame-detail endpoint, and
        for workers that read payloads from it).
    drain_timeout_s : float
        When a series closes with frames still queued: in ``"block"`` mode they wait for the
        workers as long as a frame was handed out within this time; in ``"drop"`` mode they
        wait this long in all. Frames left then are counted as dropped.
    """

    thread_name = "braggmap-ingest"

    def __init__(self, detector_endpoint: str, work_endpoint: str, collector_endpoint: str,
                 protocol: str = "auto", overflow: str = "block", max_queue: int = 64,
                 series_timeout_s: float = 30.0, context: zmq.Context | None = None,
                 frame_store=None, drain_timeout_s: float = 5.0) -> None:
        if overflow not in ("block", "drop"):
            raise ValueError(f"overflow policy {overflow!r} is not 'block' or 'drop'")
        self._context = context or zmq.Context.instance()
        # "block" relies on ZeroMQ back-pressure: keep the receive queue short so a backlog
        # waits in the sender, not in this process (64 frames of ~1 MB, not 2000).
        self.receiver = DetectorReceiver(detector_endpoint, protocol, self._context,
                                         rcvhwm=64 if overflow == "block" else 2000)
        self.router = self._context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.bind(_bindable(work_endpoint))
        self.work_endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.to_collector = self._context.socket(zmq.PUSH)
        self.to_collector.setsockopt(zmq.LINGER, 2000)
        self.to_collector.connect(collector_endpoint)
        self.overflow = overflow
        self.max_queue = max_queue
        self.series_timeout_s = series_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.credits: dict[bytes, int] = {}
        self.queue: deque[_OutgoingFrame] = deque()
        self.accounting: SeriesAccounting | None = None
        self.series_parts: list[bytes] | None = None
        self.forwarded = 0
        self.series_workers: set[bytes] = set()
        self.orphans: Counter[str] = Counter()
        self._last_message = time.monotonic()
        self._pending_end: str | None = None
        self.series_closed = 0
        self.frame_store = frame_store  # keeps compressed frames for the frame-detail endpoint
        self._masks = wire.MaskEncoder()
        self._worker_masks: dict[bytes, str | None] = {}  # worker -> digest of the mask it holds
        self._series_lean_parts: list[bytes] | None = None
        self._series_digest: str | None = None
        self._store_readers: set[bytes] = set()  # workers that read payloads from the frame store
        # frames given to a worker (its credits taken) and sent to it as one message at the end of
        # the detector burst: one message per worker and burst, not one per frame
        self._assigned: dict[bytes, list[_OutgoingFrame]] = {}
        self.series_instance: int | None = None  # SeriesInfo.instance of the last series opened

    # -- life cycle -------------------------------------------------------------------------


    @property
    def n_workers(self) -> int:
        return len(self.credits)

    @property
    def n_store_readers(self) -> int:
        """Workers that get stored frames' locations instead of their payloads."""
        return len(self._store_readers)

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        detector_registered = False
        try:
            while not self._stop.is_set():
                want_detector = self.overflow == "drop" or self._has_capacity()
                if want_detector != detector_registered:
                    if want_detector:
                        poller.register(self.receiver.socket, zmq.POLLIN)
                    else:
                        poller.unregister(self.receiver.socket)
                    detector_registered = want_detector
                events = dict(poller.poll(100))
                if self.router in events:
                    self._handle_workers()
                if detector_registered and self.receiver.socket in events:
                    self._handle_detector_burst()
                self._check_timeout()
        finally:
            self._close_series("shutdown")  # hands out what is still queued first
            self.receiver.close()
            self.router.close(linger=0)
            self.to_collector.close()

    # -- workers ---------------------------------------------------------------------------
    def _handle_workers(self) -> None:
        self._read_workers()
        self._flush_queue()
        self._maybe_send_pending_end()

    def _read_workers(self) -> None:
        """Apply every waiting worker message (ready, credit)."""
        for parts in waiting_messages(self.router):
            identity, kind = parts[0], parts[1] if len(parts) > 1 else b""
            if kind == wire.READY:
                try:
                    announced = wire.loads(parts[2])
                    credits = int(announced.get("credits", 1))
                    reads_store = announced.get("reads_frame_store") is True
                except Exception:
                    credits, reads_store = 1, False
                new = identity not in self.credits
                self.credits[identity] = self.credits.get(identity, 0) + credits
                self._worker_masks.pop(identity, None)  # a (re)started worker holds no mask yet
                if reads_store:
                    self._store_readers.add(identity)
                else:  # also a worker that found it cannot read the store after all
                    self._store_readers.discard(identity)
                if new and self.series_parts is not None:
                    self._send_series(identity)
                log.info("worker %r ready (%d credits)", identity, credits)
            elif kind == wire.CREDIT:
                try:
                    granted = wire.decode_credit(parts[1:])
                except ProtocolError as exc:
                    log.warning("worker %r: %s; ignored", identity, exc)
                    continue
                self.credits[identity] = self.credits.get(identity, 0) + granted
            else:
                log.warning("ignoring worker message of kind %r", kind)

    def _has_capacity(self) -> bool:
        return any(c > 0 for c in self.credits.values())

    def _send_to_worker(self, identity: bytes, parts: list) -> bool:
        try:
            self.router.send_multipart([identity, *parts], copy=False)
            return True
        except zmq.ZMQError as exc:  # worker vanished (ROUTER_MANDATORY)
            log.warning("worker %r unreachable (%s); forgetting it", identity, exc)
            self.queue.extendleft(reversed(self._assigned.pop(identity, [])))  # for the other workers
            self.credits.pop(identity, None)
            self._worker_masks.pop(identity, None)
            self._store_readers.discard(identity)
            return False

    def _dispatch(self, frame: "_OutgoingFrame") -> bool:
        """Give one frame to the worker with most credits; False when none has any. It leaves
        with the others of its burst (:meth:`_send_assigned`), at the latest when the worker
        has :data:`FRAMES_PER_MESSAGE` of them."""
        if not self.credits:
            return False
        identity = max(self.credits, key=self.credits.__getitem__)
        if self.credits[identity] <= 0:
            return False
        self.credits[identity] -= 1
        assigned = self._assigned.setdefault(identity, [])
        assigned.append(frame)
        if len(assigned) >= FRAMES_PER_MESSAGE:
            self._send_assigned_to(identity)
        return True

    def _send_assigned_to(self, identity: bytes) -> None:
        """Send a worker the frames given to it, as one message; if it is gone,
        :meth:`_send_to_worker` puts them back at the front of the queue for the other workers."""
        frames = self._assigned.get(identity)
        if not frames:
            return
        reads_store = identity in self._store_readers
        message = wire.encode_frames([frame.meta_and_payload(reads_store) for frame in frames])
        if self._send_to_worker(identity, message):
            del self._assigned[identity]
            self.forwarded += len(frames)
            self.series_workers.add(identity)

    def _send_assigned(self) -> None:
        """Send every worker the frames given to it (end of a burst, and before any other
        message to the workers, so that they get everything in order)."""
        for identity in list(self._assigned):
            self._send_assigned_to(identity)

    def _flush_queue(self) -> None:
        """Hand queued frames to the workers with credits and send them."""
        while True:
            while self.queue and self._dispatch(self.queue[0]):
                self.queue.popleft()
            self._send_assigned()
            if not self.queue or not self._has_capacity():
                return  # else frames of a worker that was gone came back: to the others

    def _drain_queue(self) -> None:
        """Hand the queued frames out to workers as they ask, then count the rest as dropped.

        In ``"block"`` mode nothing decodable may be lost: wait as long as workers keep taking
        frames, giving up only after :attr:`drain_timeout_s` without one handed out. In
        ``"drop"`` mode (a live detector, not read meanwhile) wait that long in all.
        """
        started = last_progress = time.monotonic()
        while self.queue:
            since = last_progress if self.overflow == "block" else started
            if time.monotonic() - since >= self.drain_timeout_s:
                break
            queued = len(self.queue)
            if self.router.poll(100, zmq.POLLIN):
                self._read_workers()
                self._flush_queue()
            if len(self.queue) < queued:
                last_progress = time.monotonic()
        self._drop_queued()

    def _drop_queued(self) -> None:
        """Count every frame still queued as dropped and forget it."""
        for frame in self.queue:
            if self.accounting is not None:
                self.accounting.record_dropped(frame.frame.frame_index)
        self.queue.clear()

    # -- detector --------------------------------------------------------------------------
    def _handle_detector_burst(self) -> None:
        try:
            for _ in range(64):  # bounded so worker credits are served between bursts
                if self.overflow == "block" and not self._has_capacity():
                    return
                item = self.receiver.receive(0)
                if item is None:
                    return
                self._last_message = time.monotonic()
                if isinstance(item, Malformed):
                    self._on_malformed(item)
                else:
                    self._on_message(item)
        finally:
            self._flush_queue()

    def _on_message(self, item: Received) -> None:
        message = item.message
        if isinstance(message, SeriesStart):
            if self.accounting is not None:
                self._close_series("next_series")
            self._open_series(wire.SeriesInfo.from_start(message), message.pixel_mask)
        elif isinstance(message, ImageFrame):
            if self.accounting is None or message.series_id != self.accounting.series_id:
                if self.accounting is not None:
                    self._close_series("next_series")
                log.warning("frames of series %d arrived without its header", message.series_id)
                self._open_series(wire.SeriesInfo.headerless(message), None)
            if not self.accounting.record_frame(message.frame_index):
                return
            stored = self.frame_store.add(message) if self.frame_store is not None else None
            frame = _OutgoingFrame(message, item.received_ns, stored, self.series_instance)
            if not self._dispatch(frame):
                if self.overflow == "drop" and len(self.queue) >= self.max_queue:
                    self.accounting.record_dropped(message.frame_index)
                else:
                    self.queue.append(frame)
        elif isinstance(message, SeriesEnd):
            if self.accounting is None or message.series_id != self.accounting.series_id:
                self.orphans[f"series end for unknown series {message.series_id}"] += 1
                return
            self._pending_end = "end"
            self._maybe_send_pending_end()

    def _on_malformed(self, item: Malformed) -> None:
        log.debug("malformed detector message: %s", item.reason)
        if self.accounting is None:
            self.orphans[item.reason] += 1
        elif item.frame_index is not None and item.series_id in (None, self.accounting.series_id):
            self.accounting.record_undecodable(item.frame_index, item.reason)
        else:
            self.accounting.record_malformed(item.reason)

    def _open_series(self, info: wire.SeriesInfo, mask) -> None:
        self.series_instance = max((self.series_instance or 0) + 1, time.time_ns())
        info = dataclasses.replace(info, instance=self.series_instance)
        if self.frame_store is not None:
            self.frame_store.begin_series(info.series_id)
        self.accounting = SeriesAccounting(info.series_id, info.n_images)
        for reason, count in self.orphans.items():
            self.accounting.malformed += count
            self.accounting.reasons[reason] += count
        self.orphans.clear()
        self.forwarded = 0
        self.series_workers = set()
        self._pending_end = None
        self.series_parts = wire.encode_series(info, mask, self._masks)
        self._series_lean_parts = wire.series_with_mask_as_before(self.series_parts)
        self._series_digest = wire.loads(self.series_parts[1]).get("pixel_mask_digest")
        self.to_collector.send_multipart(self.series_parts, copy=False)  # the mask is large: no copy
        for identity in list(self.credits):
            self._send_series(identity)

    def _send_series(self, identity: bytes) -> None:
        """The current series message to a worker: without the mask when the worker got the
        same mask (by digest) with its last series."""
        digest = self._series_digest
        if digest is not None and self._worker_masks.get(identity) == digest:
            self._send_to_worker(identity, self._series_lean_parts)
        elif self._send_to_worker(identity, self.series_parts):
            self._worker_masks[identity] = digest

    def _maybe_send_pending_end(self) -> None:
        if self._pending_end is not None and not self.queue:
            self._close_series(self._pending_end)

    def _close_series(self, ended_by: str) -> None:
        """Send the series' summary to the collector and the series end to its workers.

        Parameters
        ----------
        ended_by : str
            Why it closes; a series end (or time-out) already received while frames were
            still queued takes precedence.
        """
        if self.accounting is None:
            return
        self._send_assigned()  # the series' frames before its end
        if self.queue:
            self._drain_queue()
        ended_by = self._pending_end or ended_by
        summary = self.accounting.summary(ended_by).as_dict()
        summary["forwarded"] = self.forwarded
        summary["workers"] = sorted(name.decode(errors="replace") for name in self.series_workers)
        # Workers answer with their share of the average pattern (after their last result).
        end = [wire.SERIES_END, wire.dumps({"series_id": self.accounting.series_id,
                                            "series_instance": self.series_instance})]
        for identity in list(self.series_workers):
            self._send_to_worker(identity, end)
        self.to_collector.send_multipart([wire.SUMMARY, wire.dumps(summary)])
        log.info("series %d closed: forwarded %d", self.accounting.series_id, self.forwarded)
        self.accounting = None
        self.series_parts = None
        self._pending_end = None
        self.series_closed += 1

    def _check_timeout(self) -> None:
        if self.accounting is not None and self._pending_end is None:
            if time.monotonic() - self._last_message > self.series_timeout_s:
                log.warning("series %d: no message for %.0f s, closing it",
                            self.accounting.series_id, self.series_timeout_s)
                self._pending_end = "timeout"
                self._maybe_send_pending_end()


@dataclass(frozen=True)
class _OutgoingFrame:
    """A frame on its way to a worker: the message, and where the frame store keeps its payload."""

    frame: ImageFrame
    received_ns: int
    stored: StoredLocation | None
    series_instance: int | None

    def meta_and_payload(self, reads_store: bool) -> tuple[dict, object]:
        """The frame for :func:`stream.wire.encode_frames`, to a worker that reads the frame
        store (the payload's location, no payload), or not."""
        if reads_store and self.stored is not None:
            return wire.frame_meta(self.frame, self.received_ns, self.series_instance, self.stored.as_dict()), b""
        return wire.frame_meta(self.frame, self.received_ns, self.series_instance), self.frame.payload


def _bindable(endpoint: str) -> str:
    """``tcp://host:0`` asks the OS for a free port (ZeroMQ spells it ``*``)."""
    if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
        return endpoint[:-2] + ":*"
    return endpoint
