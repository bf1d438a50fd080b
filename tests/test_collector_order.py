"""The collector's messages come from several processes over several connections, in no
guaranteed order: results and problems of a series that arrive before its series message are
held and placed once it opens; those of a series that never opens are dropped after the results
time-out and counted; late results of a finished series are not held, and by their series
instance they are never placed on a newer series of the same detector series id.

A real collector thread and PUSH sockets on 127.0.0.1 (one for the ingest, one for a worker).
"""

from __future__ import annotations

import queue
import time

import numpy as np
import pytest
import zmq

from stream import wire
from stream.accounting import SeriesAccounting
from stream.collector import Collector

PARAMETERS = ("saxs_intensity", "a_mean_nm")


@pytest.fixture
def collector_and_pushes():
    context = zmq.Context()
    outcomes: queue.Queue = queue.Queue()
    collector = Collector("tcp://127.0.0.1:0", PARAMETERS, outcomes.put, context=context, results_timeout_s=1.0)
    collector.start()
    pushes = []
    for _ in range(2):
        push = context.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.connect(collector.endpoint)
        pushes.append(push)
    yield collector, outcomes, pushes
    collector.stop()
    for push in pushes:
        push.close(linger=0)
    context.term()


def _result(series_id: int, index: int, instance: int | None = None, value: float | None = None) -> list:
    value = 10.0 * index + 1 if value is None else value
    return wire.encode_result({"series_id": series_id, "frame_index": index, "series_instance": instance},
                              np.array([value, 2.5]), np.zeros(2, np.int32))


def _series_and_summary(series_id: int, n_frames: int, instance: int | None = None) -> tuple[list, list]:
    info = wire.SeriesInfo(series_id, "v2", n_frames, (4, 4), "uint32", None, None, None, None, None,
                           instance=instance)
    accounting = SeriesAccounting(series_id, n_frames)
    for k in range(n_frames):
        accounting.record_frame(k)
    summary = [wire.SUMMARY, wire.dumps(dict(accounting.summary("end").as_dict(), forwarded=n_frames, workers=[]))]
    return wire.encode_series(info, None), summary


def _wait_held(collector: Collector, n: int) -> None:
    deadline = time.monotonic() + 5
    while collector._n_held < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert collector._n_held == n


def test_results_that_overtake_their_series_message_are_placed(collector_and_pushes):
    collector, outcomes, (ingest, worker) = collector_and_pushes
    for k in range(4):
        worker.send_multipart(_result(3, k))
    worker.send_multipart([wire.PROBLEM, wire.dumps({"series_id": 3, "message": "a worker's problem"})])
    _wait_held(collector, 5)
    series, summary = _series_and_summary(3, 4)
    ingest.send_multipart(series)
    ingest.send_multipart(summary)
    outcome = outcomes.get(timeout=10)
    assert outcome.complete and outcome.results == 4 and outcome.problems == ["a worker's problem"]
    np.testing.assert_array_equal(outcome.maps.values["saxs_intensity"].ravel()[:4], [1.0, 11.0, 21.0, 31.0])
    assert collector._n_held == 0 and collector.orphaned == 0 and collector.malformed == 0


def test_results_of_a_series_that_never_begins_are_dropped_and_counted(collector_and_pushes):
    collector, outcomes, (ingest, worker) = collector_and_pushes
    worker.send_multipart(_result(8, 0))
    worker.send_multipart(_result(8, 1))
    _wait_held(collector, 2)
    deadline = time.monotonic() + 5
    while collector.orphaned < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert collector.orphaned == 2 and collector._n_held == 0


def test_late_results_of_a_finished_series_are_not_held(collector_and_pushes):
    collector, outcomes, (ingest, worker) = collector_and_pushes
    series, summary = _series_and_summary(5, 1)
    ingest.send_multipart(series)
    worker.send_multipart(_result(5, 0))
    ingest.send_multipart(summary)
    assert outcomes.get(timeout=10).results == 1
    worker.send_multipart(_result(5, 0))  # a repeat, after the series finished
    worker.send_multipart(_result(6, 0))  # the next series, early: held
    _wait_held(collector, 1)
    assert 6 in collector._held and 5 not in collector._held and collector.orphaned == 1


def test_a_reused_series_id_is_told_apart_by_the_series_instance(collector_and_pushes):
    """A detector restarted numbers its series from 1 again: the ingest's series instance says
    which series a result belongs to."""
    collector, outcomes, (ingest, worker) = collector_and_pushes
    series, summary = _series_and_summary(5, 2, instance=100)
    ingest.send_multipart(series)
    worker.send_multipart(_result(5, 0, instance=100, value=1.0))
    worker.send_multipart(_result(5, 1, instance=200, value=2.0))  # the next series 5, early
    _wait_held(collector, 1)
    worker.send_multipart(_result(5, 1, instance=100, value=3.0))  # the first one's, on time
    ingest.send_multipart(summary)
    first = outcomes.get(timeout=10)
    assert first.results == 2 and first.info.instance == 100
    np.testing.assert_array_equal(first.maps.values["saxs_intensity"].ravel()[:2], [1.0, 3.0])
    worker.send_multipart(_result(5, 0, instance=100, value=4.0))  # late: dropped, counted
    deadline = time.monotonic() + 5
    while collector.orphaned < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert collector.orphaned == 1 and collector._n_held == 1
    series, summary = _series_and_summary(5, 2, instance=200)
    ingest.send_multipart(series)
    worker.send_multipart(_result(5, 0, instance=200, value=5.0))
    worker.send_multipart(_result(5, 0, instance=100, value=6.0))  # late again, while the new one is open
    ingest.send_multipart(summary)
    second = outcomes.get(timeout=10)
    assert second.results == 2 and second.info.instance == 200 and collector.orphaned == 2
    np.testing.assert_array_equal(second.maps.values["saxs_intensity"].ravel()[:2], [5.0, 2.0])


def _results(series_id: int, indices, instance: int | None = None) -> list:
    """One ``results`` message for a batch of frames (value 10 k + 1 for frame k)."""
    metas = [{"series_id": series_id, "frame_index": k, "series_instance": instance} for k in indices]
    values = np.array([[10.0 * k + 1, 2.5] for k in indices])
    return wire.encode_results(metas, values, np.zeros(values.shape, np.int32))


def test_a_batch_of_results_is_placed_and_a_bad_frame_in_it_loses_no_other(collector_and_pushes):
    """A worker sends a batch's results in one message; a frame of it that cannot be placed (no
    frame index) is counted as malformed, the others are placed; a batch that overtakes its
    series message is held frame by frame."""
    collector, outcomes, (ingest, worker) = collector_and_pushes
    worker.send_multipart(_results(4, [0, 1]))  # before its series: held
    _wait_held(collector, 2)
    series, summary = _series_and_summary(4, 5)
    ingest.send_multipart(series)
    batch = _results(4, [2, 3, 4])
    metas = wire.loads(batch[1])
    del metas[1]["frame_index"]
    batch[1] = wire.dumps(metas)
    worker.send_multipart(batch)
    worker.send_multipart(_results(4, [3]))  # frame 3 again, whole
    ingest.send_multipart(summary)
    outcome = outcomes.get(timeout=10)
    np.testing.assert_array_equal(outcome.maps.values["saxs_intensity"].ravel()[:5], [1.0, 11.0, 21.0, 31.0, 41.0])
    assert collector.malformed == 1 and collector._n_held == 0 and collector.orphaned == 0


def test_malformed_results_messages_are_protocol_errors():
    from analysis.errors import ProtocolError

    good = _results(1, [0, 1])
    assert [meta["frame_index"] for meta, _, _ in wire.decode_results(good)] == [0, 1]
    for bad in ([wire.RESULTS, good[1], good[2]],  # a part missing
                [wire.RESULTS, wire.dumps([]), b"", b""],  # no frame
                [wire.RESULTS, wire.dumps({"frame_index": 0}), good[2], good[3]],  # not a list
                [wire.RESULTS, good[1], good[2][:-8], good[3]],  # 3 values for 2 frames x 2
                [wire.RESULTS, b"{not json", good[2], good[3]]):
        with pytest.raises(ProtocolError):
            wire.decode_results(bad)
    assert wire.decode_credit([wire.CREDIT]) == 1 and wire.decode_credit(wire.encode_credit(6)) == 6
    for bad in (b"0", b"-2", b"x", b"1e3", str(wire.MAX_CREDITS_PER_MESSAGE + 1).encode()):
        with pytest.raises(ProtocolError):
            wire.decode_credit([wire.CREDIT, bad])
