"""The document path over real loopback sockets: the document log serves late and restarted
followers every document of the current runs (start and descriptors included), survives a
restart of its own, ignores and counts garbage; the collector places frames from documents in
any order (before/after frames, several runs, aborted run, series without a run)."""

from __future__ import annotations

import json
import queue
import time

import bluesky.plans as bp
import numpy as np
import pytest
import zmq
from bluesky import RunEngine
from ophyd.sim import SynAxis, det

from analysis.status import Status
from stream import wire
from stream.accounting import SeriesAccounting
from stream.collector import Collector
from stream.document_log import DOCS, MAGIC, DocumentLog, encode_document
from stream.documents import DOCUMENT, DocumentReceiver
from stream.run_placement import DocumentPlacement

pytestmark = pytest.mark.timeout(60)


def scan_documents(series_id: int | None, shape=(3, 4), abort_after: int | None = None, **md):
    """Documents of a real RunEngine snake grid_scan over ophyd.sim axes (frame = seq_num - 1)."""
    y, x = SynAxis(name="sample_y", egu="um"), SynAxis(name="sample_x", egu="um")
    documents = []
    engine = RunEngine({})
    engine.subscribe(lambda name, doc: documents.append((name, doc)))
    if series_id is not None:
        md["braggmap_detector_series"] = series_id
    points = [0]

    def per_step(detectors, step, pos_cache):
        from bluesky.plan_stubs import one_nd_step

        if abort_after is not None and points[0] >= abort_after:
            raise RuntimeError("beam lost")
        points[0] += 1
        return (yield from one_nd_step(detectors, step, pos_cache))

    plan = bp.grid_scan([det], y, 0.0, 2.0 * (shape[0] - 1), shape[0], x, 0.0, 1.0 * (shape[1] - 1), shape[1],
                        snake_axes=True, md=md, per_step=per_step)
    try:
        engine(plan)
    except RuntimeError:
        pass
    return documents


def pull_socket(context):
    pull = context.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    return pull, f"tcp://127.0.0.1:{port}"


def receive_documents(pull, n: int, timeout_s: float = 10.0) -> list[tuple[str, dict]]:
    got, deadline = [], time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        if pull.poll(100):
            kind, name, body = pull.recv_multipart()
            assert kind == DOCUMENT
            got.append((name.decode(), json.loads(body)))
    return got


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def test_late_and_restarted_followers_get_the_start_and_descriptors(context):
    documents = scan_documents(series_id=1)
    log = DocumentLog("tcp://127.0.0.1:0", heartbeat_s=0.2, context=context)
    pull, pull_endpoint = pull_socket(context)
    try:
        for name, doc in documents:  # the whole run is published before anyone follows it
            log(name, doc)
        first = DocumentReceiver(log.endpoint, pull_endpoint, context=context).start()
        got = receive_documents(pull, len(documents))
        first.stop()
        assert [name for name, _ in got] == [name for name, _ in documents]
        assert got[0][1]["uid"] == documents[0][1]["uid"] and got[1][0] == "descriptor"
        assert first.forwarded == len(documents) and first.duplicates == 0 and not first.garbage
        # a restarted follower (new socket, no state) again gets everything, once
        second = DocumentReceiver(log.endpoint, pull_endpoint, context=context).start()
        more = scan_documents(series_id=2)
        for name, doc in more[:3]:
            log(name, doc)
        got = receive_documents(pull, len(documents) + 3)
        assert [doc["uid"] for _, doc in got] == [doc["uid"] for _, doc in documents + more[:3]]
        assert not pull.poll(500), "every document arrives exactly once"
        second.stop()
    finally:
        log.close()
        pull.close(linger=0)


def test_log_restart_and_garbage_on_both_sockets(context):
    log = DocumentLog("tcp://127.0.0.1:0", heartbeat_s=0.2, context=context)
    endpoint = log.endpoint
    pull, pull_endpoint = pull_socket(context)
    stranger = context.socket(zmq.DEALER)
    stranger.setsockopt(zmq.LINGER, 0)
    receiver = DocumentReceiver(endpoint, pull_endpoint, request_timeout_s=0.5, context=context).start()
    try:
        stranger.connect(endpoint)
        for junk in ([b"\x00\xff"], [MAGIC, b"since", b"{not json"], [b"GET / HTTP/1.1"], [MAGIC, b"since", b"[]"]):
            stranger.send_multipart(junk)
        run1, run2 = scan_documents(series_id=1), scan_documents(series_id=2)
        for name, doc in run1:
            log(name, doc)
        assert len(receive_documents(pull, len(run1))) == len(run1)
        deadline = time.monotonic() + 5
        while sum(log.garbage.values()) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sum(log.garbage.values()) == 4
        log.close()
        log = DocumentLog(endpoint, heartbeat_s=0.2, context=context)  # the beamline restarts: same endpoint
        for name, doc in run2:
            log(name, doc)
        got = receive_documents(pull, len(run2))
        assert [doc["uid"] for _, doc in got] == [doc["uid"] for _, doc in run2]
        assert receiver.resets == 1 and not pull.poll(300)
    finally:
        receiver.stop()
        log.close()
        stranger.close(linger=0)
        pull.close(linger=0)


def test_log_keeps_only_its_last_runs_for_late_followers(context):
    log = DocumentLog("tcp://127.0.0.1:0", heartbeat_s=0.2, keep_runs=1, context=context)
    pull, pull_endpoint = pull_socket(context)
    run1, run2 = scan_documents(series_id=1), scan_documents(series_id=2)
    try:
        for name, doc in run1 + run2:
            log(name, doc)
        deadline = time.monotonic() + 5
        while log.latest_seq < len(run1 + run2) and time.monotonic() < deadline:
            time.sleep(0.02)
        receiver = DocumentReceiver(log.endpoint, pull_endpoint, context=context).start()
        got = receive_documents(pull, len(run2))
        assert log.wait_delivered(5.0), "the follower confirmed having every document"
        receiver.stop()
        assert [doc["uid"] for _, doc in got] == [doc["uid"] for _, doc in run2]
    finally:
        log.close()
        pull.close(linger=0)


def test_receiver_counts_and_ignores_foreign_replies(context):
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    pull, pull_endpoint = pull_socket(context)
    receiver = DocumentReceiver(f"tcp://127.0.0.1:{port}", pull_endpoint, context=context).start()
    try:
        assert router.poll(5000)
        identity, *_request = router.recv_multipart()
        good = [MAGIC, DOCS, json.dumps({"publisher": "p", "seqs": [1], "names": ["start"], "latest": 1,
                                         "gap": 0}).encode(), encode_document({"uid": "u1", "time": 1.0})]
        for junk in ([b"hello"], [MAGIC, DOCS, b"{}"], [MAGIC, DOCS, json.dumps({"publisher": "p", "seqs": [1],
                                                                                  "names": []}).encode()]):
            router.send_multipart([identity, *junk])
        router.send_multipart([identity, *good])
        got = receive_documents(pull, 1)
        assert got == [("start", {"uid": "u1", "time": 1.0})]
        assert sum(receiver.garbage.values()) == 3 and receiver.forwarded == 1
    finally:
        receiver.stop()
        router.close(linger=0)
        pull.close(linger=0)


# -- the collector with document placement -------------------------------------------------------
class CollectorHarness:
    PARAMETERS = ("saxs_intensity", "other")

    def __init__(self, context, settle_s: float = 1.0) -> None:
        self.outcomes: queue.Queue = queue.Queue()
        self.placement = DocumentPlacement(self.PARAMETERS, settle_s=settle_s)
        self.collector = Collector("tcp://127.0.0.1:0", self.PARAMETERS, self.outcomes.put, context=context,
                                   placement=self.placement)
        self.collector.start()
        self.push = context.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.connect(self.collector.endpoint)

    def series(self, series_id: int, n_images: int) -> None:
        info = wire.SeriesInfo(series_id, "v1", n_images, (4, 4), "uint32", None, None, None, None, None)
        self.push.send_multipart(wire.encode_series(info, None))

    def result(self, series_id: int, frame_index: int) -> None:
        values = np.array([1000.0 * series_id + frame_index, np.nan])
        statuses = np.array([Status.OK, Status.MISSING_PEAK], dtype=np.int32)
        self.push.send_multipart(wire.encode_result({"series_id": series_id, "frame_index": frame_index},
                                                    values, statuses))

    def summary(self, series_id: int, n_frames: int) -> None:
        accounting = SeriesAccounting(series_id, n_frames)
        for k in range(n_frames):
            accounting.record_frame(k)
        summary = dict(accounting.summary("end").as_dict(), forwarded=n_frames, workers=[])
        self.push.send_multipart([wire.SUMMARY, wire.dumps(summary)])

    def documents(self, documents) -> None:
        for name, doc in documents:
            self.push.send_multipart([DOCUMENT, name.encode(), encode_document(doc)])

    def outcome(self, timeout_s: float = 10.0):
        return self.outcomes.get(timeout=timeout_s)

    def close(self) -> None:
        self.collector.stop()
        self.push.close(linger=0)


def expected_map(series_id: int, shape=(3, 4)) -> np.ndarray:
    """Frame k of a snake raster sits at row k // nx, reversed on odd rows."""
    values = np.full(shape, np.nan)
    for k in range(shape[0] * shape[1]):
        row, column = divmod(k, shape[1])
        values[row, shape[1] - 1 - column if row % 2 else column] = 1000.0 * series_id + k
    return values


@pytest.fixture
def harness(context):
    made = CollectorHarness(context)
    yield made
    made.close()


def test_documents_before_frames_and_several_runs_in_a_row(harness):
    for series_id in (1, 2):
        harness.documents(scan_documents(series_id))
        harness.series(series_id, 12)
        for k in range(12):
            harness.result(series_id, k)
        harness.summary(series_id, 12)
        outcome = harness.outcome()
        assert outcome.info.series_id == series_id and outcome.problems == []
        np.testing.assert_array_equal(outcome.maps.values["saxs_intensity"], expected_map(series_id))
        assert outcome.grid.axis_names == ("sample_y", "sample_x") and outcome.grid.step_um == (2.0, 1.0)
        assert not outcome.grid.by_frame_index


def test_frames_before_documents_move_onto_the_run_grid(harness):
    harness.series(3, 12)
    for k in range(12):
        harness.result(3, k)
    harness.summary(3, 12)
    time.sleep(0.3)  # the frames sit by index on a 1 x 12 map meanwhile
    harness.documents(scan_documents(series_id=None, braggmap_detector_series=3))
    outcome = harness.outcome()
    assert outcome.maps.shape == (3, 4) and outcome.problems == []
    np.testing.assert_array_equal(outcome.maps.values["saxs_intensity"], expected_map(3))


def test_aborted_run_keeps_the_partial_map_and_marks_it(harness):
    documents = scan_documents(series_id=4, abort_after=5)
    harness.documents(documents[:2])  # start + descriptor first, events after the frames
    harness.series(4, 12)
    for k in range(5):
        harness.result(4, k)
    harness.documents(documents[2:])
    harness.summary(4, 5)
    outcome = harness.outcome()
    expected = expected_map(4)
    expected[expected >= 4005] = np.nan
    np.testing.assert_array_equal(outcome.maps.values["saxs_intensity"], expected)
    assert any("exit_status 'fail'" in p and "partial" in p for p in outcome.problems), outcome.problems
    assert outcome.maps.statuses["saxs_intensity"][2, 3] == Status.NOT_MEASURED


def test_series_without_run_is_by_frame_index_and_garbage_documents_are_counted(harness):
    harness.push.send_multipart([DOCUMENT, b"start", b"\xff not json"])
    harness.push.send_multipart([DOCUMENT, b"event", encode_document({"descriptor": "unknown"})])
    harness.push.send_multipart([DOCUMENT, b"gossip", encode_document({"hello": 1})])
    harness.push.send_multipart([DOCUMENT, b"start", encode_document([1, 2])])
    harness.series(5, 3)
    for k in range(3):
        harness.result(5, k)
    harness.summary(5, 3)
    started = time.monotonic()
    outcome = harness.outcome()
    assert time.monotonic() - started >= 0.5, "waits a while for documents before giving up"
    assert outcome.grid.by_frame_index and outcome.maps.shape == (1, 3)
    assert any("no bluesky run" in p for p in outcome.problems)
    assert sum(harness.placement.ignored.values()) == 4, harness.placement.ignored
    assert harness.collector.malformed == 0
