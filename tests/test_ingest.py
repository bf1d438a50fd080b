"""The ingest over real loopback sockets: header ownership, credit-based fan-out to workers,
frame accounting of good, bad and missing messages, overflow and time-outs.

The detector side is a PUSH socket sending bytes from our encoders (and garbage); the workers
and the collector are plain sockets held by the test, so the ingest is tested on its own.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import numpy as np
import pytest
import zmq

from stream import wire
from stream.codecs import compress
from stream.ingest import Ingest
from stream.messages import ImageFrame, SeriesEnd, SeriesStart
from stream.protocol_v1 import encode_v1_end, encode_v1_image, encode_v1_start
from stream.protocol_v2 import encode_v2_end, encode_v2_image, encode_v2_start
from stream.receiver import Received

SHAPE = (6, 5)
CONFIG = {
    "nimages": 1, "ntrigger": 4, "trigger_mode": "ints", "x_pixels_in_detector": SHAPE[1],
    "y_pixels_in_detector": SHAPE[0], "bit_depth_image": 32, "wavelength": 0.8984,
    "x_pixel_size": 7.5e-05, "y_pixel_size": 7.5e-05, "countrate_correction_count_cutoff": 100000,
}


def start_message(series_id: int = 7, n_images: int = 4) -> SeriesStart:
    config = dict(CONFIG, ntrigger=n_images)
    return SeriesStart(series_id=series_id, protocol="v1", header_detail="basic", config=config,
                       n_images=n_images, image_shape=SHAPE, image_dtype="uint32")


def image_message(index: int, series_id: int = 7) -> ImageFrame:
    pixels = np.full(SHAPE, index, dtype=np.uint32)
    return ImageFrame(series_id=series_id, frame_index=index, shape=SHAPE, dtype="uint32",
                      compression="bslz4", payload=compress(pixels, "bslz4"), elem_size=4)


class Harness:
    """Detector PUSH, collector PULL and a way to add worker DEALERs, around one Ingest."""

    def __init__(self, **ingest_options) -> None:
        self.context = zmq.Context()
        self.detector = self.context.socket(zmq.PUSH)
        self.detector.setsockopt(zmq.LINGER, 0)
        port = self.detector.bind_to_random_port("tcp://127.0.0.1")
        self.collector = self.context.socket(zmq.PULL)
        self.collector.setsockopt(zmq.LINGER, 0)
        collector_port = self.collector.bind_to_random_port("tcp://127.0.0.1")
        self.ingest = Ingest(f"tcp://127.0.0.1:{port}", "tcp://127.0.0.1:0",
                             f"tcp://127.0.0.1:{collector_port}", context=self.context, **ingest_options)
        self.ingest.start()
        self.workers: list[zmq.Socket] = []

    def add_worker(self, credits: int, **announced) -> zmq.Socket:
        dealer = self.context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(self.ingest.work_endpoint)
        dealer.send_multipart([wire.READY, wire.dumps({"credits": credits, **announced})])
        self.workers.append(dealer)
        deadline = time.monotonic() + 5
        while self.ingest.n_workers < len(self.workers) and time.monotonic() < deadline:
            time.sleep(0.01)
        return dealer

    def send(self, parts) -> None:
        self.detector.send_multipart(parts)

    def collect(self, kind: bytes, timeout_s: float = 5.0) -> list[bytes]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.collector.poll(100):
                parts = self.collector.recv_multipart()
                if parts[0] == kind:
                    return parts
        raise AssertionError(f"no {kind!r} message reached the collector")

    def close(self) -> None:
        self.ingest.stop()
        for socket in [self.detector, self.collector, *self.workers]:
            socket.close(linger=0)
        self.context.term()


@pytest.fixture
def harness_factory():
    made = []

    def make(**options) -> Harness:
        made.append(Harness(**options))
        return made[-1]

    yield make
    for harness in made:
        harness.close()


def receive(dealer: zmq.Socket, timeout_ms: int = 5000) -> list[bytes]:
    assert dealer.poll(timeout_ms), "worker received nothing"
    return dealer.recv_multipart()


def receive_frames(dealer: zmq.Socket, n: int) -> list[tuple[dict, memoryview]]:
    """(metadata, payload) of the next ``n`` frames, from ``frame`` and ``frames`` messages."""
    frames = []
    while len(frames) < n:
        parts = receive(dealer)
        assert parts[0] in (wire.FRAME, wire.FRAMES), f"expected frames, got a {parts[0]!r} message"
        frames.extend(wire.decode_frames(parts))
    assert len(frames) == n, f"{len(frames)} frames, expected {n}"
    return frames


def test_series_flows_to_worker_and_accounting_reaches_collector(harness_factory):
    harness = harness_factory()
    worker = harness.add_worker(credits=10)
    harness.send(encode_v1_start(start_message()))
    for index in (0, 1, 3):
        harness.send(encode_v1_image(image_message(index)))
    harness.send([b"{not json", b"x"])
    harness.send(encode_v1_image(image_message(1)))  # duplicate
    harness.send(encode_v1_end(SeriesEnd(series_id=7)))

    kind, info_json, mask = receive(worker)
    assert kind == wire.SERIES
    info = wire.SeriesInfo.from_dict(wire.loads(info_json))
    assert info.series_id == 7 and info.n_images == 4 and info.image_shape == SHAPE
    indices = []
    for meta, payload in receive_frames(worker, 3):
        indices.append(meta["frame_index"])
        assert meta["compression"] == "bslz4" and bytes(payload) == image_message(meta["frame_index"]).payload
    assert indices == [0, 1, 3]
    kind, end = receive(worker)  # the duplicate is not analysed: next comes the series end
    assert kind == wire.SERIES_END and wire.loads(end)["series_id"] == 7

    assert harness.collect(wire.SERIES)[0] == wire.SERIES
    summary = wire.loads(harness.collect(wire.SUMMARY)[1])
    assert summary["received"] == 3 and summary["expected"] == 4 and summary["forwarded"] == 3
    assert summary["missing"] == [2] and summary["duplicates"] == 1 and summary["malformed"] == 1
    assert summary["ended_by"] == "end" and len(summary["workers"]) == 1
    assert any("JSON" in reason for reason in summary["reasons"]), summary["reasons"]


def test_every_message_of_a_series_names_its_instance(harness_factory):
    """Frames and the series end carry the instance of their series message; each series the
    ingest opens has a larger one (a detector series id can come back after a restart)."""
    harness = harness_factory()
    worker = harness.add_worker(credits=10)
    instances = []
    for _ in range(2):  # the same detector series id twice
        harness.send(encode_v1_start(start_message(n_images=1)))
        harness.send(encode_v1_image(image_message(0)))
        harness.send(encode_v1_end(SeriesEnd(series_id=7)))
        info = wire.SeriesInfo.from_dict(wire.loads(receive(worker)[1]))
        meta, _ = receive_frames(worker, 1)[0]
        kind, end = receive(worker)
        assert kind == wire.SERIES_END and wire.loads(end)["series_instance"] == info.instance
        assert meta["series_instance"] == info.instance
        worker.send_multipart([wire.CREDIT])
        instances.append(info.instance)
        assert harness.collect(wire.SERIES)[0] == wire.SERIES
    assert isinstance(instances[0], int) and instances[1] > instances[0]


def _worker_with_frame_0(harness, n_images: int):
    """A worker of one credit, a series of ``n_images`` frames sent: the worker has the series
    message and frame 0, the other frames wait in the ingest."""
    worker = harness.add_worker(credits=1)
    harness.send(encode_v1_start(start_message(n_images=n_images)))
    for index in range(n_images):
        harness.send(encode_v1_image(image_message(index)))
    assert receive(worker)[0] == wire.SERIES
    assert receive_frames(worker, 1)[0][0]["frame_index"] == 0
    return worker


def test_frames_go_only_to_workers_with_credit_and_late_worker_gets_header(harness_factory):
    harness = harness_factory()
    first = _worker_with_frame_0(harness, 3)
    assert not first.poll(300), "a worker without credit must not get frames"
    late = harness.add_worker(credits=5)
    assert receive(late)[0] == wire.SERIES, "a new worker gets the current header first"
    got = sorted(meta["frame_index"] for meta, _ in receive_frames(late, 2))
    assert got == [1, 2]


def test_one_credit_message_can_grant_several_frames_and_a_bad_one_grants_none(harness_factory):
    """A worker returns a batch's credits in one message ``[CREDIT, b"n"]``; a count that is not
    1 .. MAX_CREDITS_PER_MESSAGE is ignored (logged), and the ingest goes on."""
    harness = harness_factory()
    worker = _worker_with_frame_0(harness, 5)
    worker.send_multipart([wire.CREDIT, b"-3"])
    worker.send_multipart([wire.CREDIT, b"many"])
    assert not worker.poll(300), "a malformed credit must not grant frames"
    worker.send_multipart(wire.encode_credit(3))
    assert [meta["frame_index"] for meta, _ in receive_frames(worker, 3)] == [1, 2, 3]
    assert not worker.poll(300), "three credits, three frames"
    worker.send_multipart([wire.CREDIT])
    assert receive_frames(worker, 1)[0][0]["frame_index"] == 4


def test_a_burst_of_frames_goes_to_a_worker_as_one_message(harness_factory):
    """Frames waiting when a worker grants credits leave together in one ``frames`` message
    (one send and one wake-up of the worker per burst, not per frame), payloads in order."""
    harness = harness_factory()
    worker = _worker_with_frame_0(harness, 4)
    time.sleep(0.3)  # frames 1-3 wait in the ingest's detector socket
    worker.send_multipart(wire.encode_credit(3))
    parts = receive(worker)
    assert parts[0] == wire.FRAMES and len(parts) == 2 + 3
    frames = wire.decode_frames(parts)
    assert [meta["frame_index"] for meta, _ in frames] == [1, 2, 3]
    assert all(bytes(payload) == image_message(meta["frame_index"]).payload for meta, payload in frames)
    assert all(meta["shape"] == SHAPE for meta, _ in frames)


def test_frames_given_to_a_worker_that_is_gone_go_to_another(harness_factory):
    """The worker with most credits leaves after the series header: the frames given to it
    come back when their send fails and go, in order, to the other worker; none is lost."""
    harness = harness_factory()
    leaving = harness.add_worker(credits=5)
    staying = harness.add_worker(credits=1)
    harness.send(encode_v1_start(start_message(n_images=3)))
    for dealer in (leaving, staying):
        assert receive(dealer)[0] == wire.SERIES
    leaving.close(linger=0)
    time.sleep(0.5)  # the ingest's ROUTER drops its pipe: sends to it fail from now on
    for index in range(3):
        harness.send(encode_v1_image(image_message(index)))
    got = []
    while len(got) < 3:
        got += [meta["frame_index"] for meta, _ in receive_frames(staying, 1)]
        staying.send_multipart([wire.CREDIT])
    assert got == [0, 1, 2]
    harness.send(encode_v1_end(SeriesEnd(series_id=7)))
    summary = wire.loads(harness.collect(wire.SUMMARY)[1])
    assert summary["forwarded"] == 3 and summary["dropped"] == 0 and summary["received"] == 3
    assert harness.ingest.n_workers == 1


def test_drop_policy_counts_every_dropped_frame(harness_factory):
    harness = harness_factory(overflow="drop", max_queue=2)
    worker = harness.add_worker(credits=1)
    harness.send(encode_v1_start(start_message(n_images=6)))
    for index in range(6):
        harness.send(encode_v1_image(image_message(index)))
    harness.send(encode_v1_end(SeriesEnd(series_id=7)))
    receive(worker)  # series
    receive(worker)  # frame 0, no credit returned yet
    time.sleep(0.5)
    worker.send_multipart([wire.CREDIT])
    worker.send_multipart([wire.CREDIT])
    summary = wire.loads(harness.collect(wire.SUMMARY)[1])
    assert summary["dropped"] == 3  # 1 in flight, 2 queued, 3 dropped
    assert summary["received"] == 3 and summary["lost"] == 3
    assert summary["forwarded"] == 3


def test_series_without_end_times_out(harness_factory):
    harness = harness_factory(series_timeout_s=0.5)
    harness.add_worker(credits=5)
    harness.send(encode_v1_start(start_message(n_images=4)))
    harness.send(encode_v1_image(image_message(0)))
    summary = wire.loads(harness.collect(wire.SUMMARY, timeout_s=5)[1])
    assert summary["ended_by"] == "timeout" and summary["missing"] == [1, 2, 3]


def test_frames_without_header_open_a_headerless_series(harness_factory):
    harness = harness_factory(series_timeout_s=0.5)
    worker = harness.add_worker(credits=5)
    harness.send(encode_v1_image(image_message(0, series_id=9)))
    kind, info_json, _ = receive(worker)
    info = wire.SeriesInfo.from_dict(wire.loads(info_json))
    assert kind == wire.SERIES and not info.header_seen and info.image_shape == SHAPE
    assert receive_frames(worker, 1)[0][0]["frame_index"] == 0
    summary = wire.loads(harness.collect(wire.SUMMARY)[1])
    assert summary["received"] == 1 and summary["expected"] is None


def _with_detail(parts: list[bytes], **changes) -> list[bytes]:
    """An image message whose ``dimage_d-1.0`` part has ``changes`` applied."""
    detail = dict(json.loads(parts[1]), **changes)
    return [parts[0], json.dumps(detail).encode(), *parts[2:]]


def _truncated(parts: list[bytes]) -> list[bytes]:
    """The blob cut to 8 bytes (shorter than its 12-byte header), ``size`` adjusted to match."""
    return _with_detail([parts[0], parts[1], parts[2][:8], *parts[3:]], size=8)


V1_BAD_FRAME_1 = {  # message sent in place of frame 1 -> (counted as, text in its reason)
    "bad JSON": (lambda parts: [b"{not json", b"x"], "malformed", "bad JSON in first part"),
    "wrong part count": (lambda parts: parts[:3], "undecodable",
                         "wrong part count: an image message needs 4 or 5 parts, got 3"),
    "truncated blob": (_truncated, "undecodable", "truncated blob: 8 bytes"),
    "wrong size": (lambda parts: _with_detail(parts, size=999), "undecodable",
                   "size mismatch: dimage_d-1.0 says size 999"),
    "unknown encoding": (lambda parts: _with_detail(parts, encoding="bs32-zstd<"), "undecodable",
                         "unknown encoding 'bs32-zstd<'"),
    "unknown htype": (lambda parts: [b'{"htype":"dfoo-1.0","series":7}'], "malformed",
                      "unknown htype 'dfoo-1.0'"),
}
V2_BAD_FRAME_1 = {
    "CBOR garbage": (lambda parts: [b"\xd9\xd9\xf7\xff\xff\x00"], "malformed", "CBOR garbage"),
}


def _v1_messages() -> tuple[list, list, list, list]:
    """Start, image messages 0-2 and end of a three-frame v1 series."""
    return (encode_v1_start(start_message(n_images=3)), *(encode_v1_image(image_message(i)) for i in range(3)),
            encode_v1_end(SeriesEnd(series_id=7)))


def _v2_messages() -> tuple[list, list, list, list]:
    """The same series as v2 (CBOR) messages."""
    start = dataclasses.replace(start_message(n_images=3), protocol="v2")
    return ([encode_v2_start(start)], *([encode_v2_image(image_message(i))] for i in range(3)),
            [encode_v2_end(SeriesEnd(series_id=7))])


@pytest.mark.parametrize("case", [*V1_BAD_FRAME_1, *V2_BAD_FRAME_1])
def test_each_kind_of_malformed_message_is_counted_with_its_reason(harness_factory, case):
    """Frame 1 replaced by a bad message: counted once with a readable reason; frame 2, sent
    after it, is still received and forwarded, and nothing else is lost."""
    make_bad, counted_as, reason_text = {**V1_BAD_FRAME_1, **V2_BAD_FRAME_1}[case]
    start, frame0, frame1, frame2, end = _v2_messages() if case in V2_BAD_FRAME_1 else _v1_messages()
    harness = harness_factory()
    worker = harness.add_worker(credits=10)
    for parts in (start, frame0, make_bad(frame1), frame2, end):
        harness.send(parts)

    assert receive(worker)[0] == wire.SERIES
    forwarded = [meta["frame_index"] for meta, _ in receive_frames(worker, 2)]
    assert forwarded == [0, 2]
    summary = wire.loads(harness.collect(wire.SUMMARY)[1])
    other = {"malformed": "undecodable", "undecodable": "malformed"}[counted_as]
    assert summary[counted_as] == 1 and summary[other] == 0, summary
    assert summary["received"] == 2 and summary["forwarded"] == 2 and summary["lost"] == 1
    assert summary["missing"] == ([1] if counted_as == "malformed" else [])
    assert summary["ended_by"] == "end" and summary["duplicates"] == 0
    (reason,) = summary["reasons"]
    assert reason_text in reason, reason
    if counted_as == "undecodable":
        assert "frame 1" in reason, reason


class SlowWorker(threading.Thread):
    """A worker with one credit that takes ``seconds_per_frame`` over each frame (None: it
    never finishes one), on its own DEALER socket."""

    def __init__(self, context: zmq.Context, endpoint: str, seconds_per_frame: float | None) -> None:
        super().__init__(daemon=True)
        self.dealer = context.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.connect(endpoint)
        self.dealer.send_multipart([wire.READY, wire.dumps({"credits": 1})])
        self.seconds_per_frame = seconds_per_frame
        self.frames: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            if not self.dealer.poll(50):
                continue
            parts = self.dealer.recv_multipart()
            if parts[0] not in (wire.FRAME, wire.FRAMES):
                continue
            self.frames.extend(meta["frame_index"] for meta, _ in wire.decode_frames(parts))
            if self.seconds_per_frame is not None:
                time.sleep(self.seconds_per_frame)
                self.dealer.send_multipart([wire.CREDIT])

    def close(self) -> None:
        self.done.set()
        self.join(5)
        self.dealer.close(linger=0)


@pytest.fixture
def idle_ingest():
    """A block-mode ingest on real sockets whose loop the test drives itself (no thread), so
    frames can be left queued at a series close, as after a lost worker; and its collector."""
    context = zmq.Context()
    collector = context.socket(zmq.PULL)
    collector.setsockopt(zmq.LINGER, 0)
    port = collector.bind_to_random_port("tcp://127.0.0.1")
    detector = context.socket(zmq.PUSH)  # never sends: the test hands the ingest its messages
    detector.setsockopt(zmq.LINGER, 0)
    detector_port = detector.bind_to_random_port("tcp://127.0.0.1")
    ingest = Ingest(f"tcp://127.0.0.1:{detector_port}", "tcp://127.0.0.1:0", f"tcp://127.0.0.1:{port}",
                    context=context, overflow="block", drain_timeout_s=0.5)
    workers: list[SlowWorker] = []

    def add_worker(seconds_per_frame: float | None) -> SlowWorker:
        workers.append(SlowWorker(context, ingest.work_endpoint, seconds_per_frame))
        deadline = time.monotonic() + 5
        while ingest.n_workers < len(workers) and time.monotonic() < deadline:
            ingest._handle_workers()
            time.sleep(0.01)
        workers[-1].start()
        return workers[-1]

    yield ingest, add_worker, collector
    for worker in workers:
        worker.close()
    ingest.receiver.close()
    ingest.router.close(linger=0)
    ingest.to_collector.close(linger=0)
    collector.close(linger=0)
    detector.close(linger=0)
    context.term()


def queue_series(ingest: Ingest, n_frames: int) -> None:
    """Open a series and take ``n_frames`` frames, as the detector socket would give them."""
    ingest._on_message(Received(start_message(n_images=n_frames), time.time_ns()))
    for index in range(n_frames):
        ingest._on_message(Received(image_message(index), time.time_ns()))


def summary_of(collector: zmq.Socket) -> dict:
    while collector.poll(5000):
        parts = collector.recv_multipart()
        if parts[0] == wire.SUMMARY:
            return wire.loads(parts[1])
    raise AssertionError("no summary reached the collector")


def test_block_mode_close_waits_while_a_slow_worker_keeps_taking_frames(idle_ingest):
    ingest, add_worker, collector = idle_ingest
    worker = add_worker(seconds_per_frame=0.2)  # 6 frames: over twice the 0.5 s drain time-out
    queue_series(ingest, 6)
    assert len(ingest.queue) == 5, "one frame in flight, the rest queued"
    ingest._close_series("shutdown")
    summary = summary_of(collector)
    assert summary["dropped"] == 0 and summary["received"] == 6 and summary["lost"] == 0, summary
    assert summary["forwarded"] == 6 and summary["ended_by"] == "shutdown"
    deadline = time.monotonic() + 5
    while len(worker.frames) < 6 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert worker.frames == list(range(6))


def test_block_mode_close_counts_queued_frames_dropped_once_workers_stall(idle_ingest):
    ingest, add_worker, collector = idle_ingest
    add_worker(seconds_per_frame=None)  # takes frame 0 and never asks for another
    queue_series(ingest, 4)
    started = time.monotonic()
    ingest._close_series("timeout")
    assert time.monotonic() - started < 5, "a stalled worker does not hold the close for ever"
    summary = summary_of(collector)
    assert summary["dropped"] == 3 and summary["received"] == 1 and summary["forwarded"] == 1, summary
    assert summary["lost"] == 3 and summary["ended_by"] == "timeout"


def _masked_start(series_id: int, mask: np.ndarray) -> SeriesStart:
    return dataclasses.replace(start_message(series_id, n_images=1), header_detail="all", pixel_mask=mask,
                               flatfield=np.ones(SHAPE, np.float32), countrate_table=np.zeros((2, 3), np.float32))


def test_a_worker_gets_a_mask_it_holds_by_digest_only(harness_factory):
    """A worker that got a mask with its last series gets the next series with the same mask as
    its digest only (a 4M mask is 18 MB per worker); a changed mask, or a worker that announced
    itself again, gets the whole mask; the collector always does."""
    harness = harness_factory()
    worker = harness.add_worker(credits=10)
    mask = np.zeros(SHAPE, np.uint32)
    mask[2, 1:4] = 1
    changed = mask.copy()
    changed[0, 0] = 4
    received = []
    for series_id, series_mask in ((1, mask), (2, mask.copy()), (3, changed), (4, changed)):
        harness.send(encode_v1_start(_masked_start(series_id, series_mask)))
        harness.send(encode_v1_image(image_message(0, series_id)))
        harness.send(encode_v1_end(SeriesEnd(series_id=series_id)))
        parts = receive(worker)
        assert parts[0] == wire.SERIES
        received.append(parts)
        assert harness.collect(wire.SERIES)[2] == series_mask.tobytes()  # the collector: always whole
        while receive(worker)[0] != wire.SERIES_END:
            pass
    last = None
    for parts, expected, whole in zip(received, (mask, mask, changed, changed), (True, False, True, False)):
        assert (parts[2] != b"") == whole
        info, decoded = wire.decode_series(parts, last)
        np.testing.assert_array_equal(decoded, expected)
        assert info.pixel_mask_digest == wire.pixel_mask_digest(expected)
        last = (info.pixel_mask_digest, decoded)
    worker.send_multipart([wire.READY, wire.dumps({"credits": 1})])  # as after a restart
    time.sleep(0.2)
    harness.send(encode_v1_start(_masked_start(5, changed)))
    parts = receive(worker)
    assert parts[0] == wire.SERIES and parts[2] == changed.tobytes()


def test_a_mask_as_before_that_the_receiver_lacks_is_a_protocol_error():
    info = wire.SeriesInfo(4, "v1", 2, SHAPE, "uint32", None, None, None, None, None)
    mask = np.zeros(SHAPE, np.uint32)
    lean = wire.series_with_mask_as_before(wire.encode_series(info, mask))
    assert lean[2] == b"" and wire.loads(lean[1])["pixel_mask_as_before"] is True
    digest = wire.pixel_mask_digest(mask)
    assert wire.decode_series(lean, (digest, mask))[1] is mask
    for held in (None, ("another digest", mask)):
        with pytest.raises(wire.ProtocolError, match="not the one this receiver holds"):
            wire.decode_series(lean, held)
    with pytest.raises(wire.ProtocolError, match="does not fit shape"):
        wire.decode_series(lean, (digest, np.zeros((2, 2), np.uint32)))
    with pytest.raises(wire.ProtocolError, match="needs a digest and no mask bytes"):
        wire.decode_series([lean[0], lean[1], b"\0" * 4], (digest, mask))
    no_mask = wire.encode_series(info, None)
    assert wire.series_with_mask_as_before(no_mask) is no_mask


def test_a_series_message_with_malformed_meta_is_a_protocol_error():
    info = wire.SeriesInfo(4, "v1", 2, SHAPE, "uint32", None, None, None, None, None)
    parts = wire.encode_series(info, None)
    for meta, reason in ((b"[1, 2]", "not an object"), (wire.dumps({"series_id": 4}), "does not describe a series"),
                         (wire.dumps(dict(wire.loads(parts[1]), extra=1)), "does not describe a series")):
        with pytest.raises(wire.ProtocolError, match=reason):
            wire.decode_series([parts[0], meta, b""])
