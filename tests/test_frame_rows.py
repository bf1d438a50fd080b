"""Per-frame records kept as numpy rows (``analysis.frame_rows``), against a dict and a list, and
what the service keeps per frame of a long scan: the frame store's index, the placement's
per-frame results and motor readings, the collector's latencies. Memory is measured with
tracemalloc (allocated bytes, never a timing)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.document_placement import RunDocuments, layout_from_start
from analysis.frame_placement import FrameMap
from analysis.frame_rows import INITIAL_ROWS, FrameRows, GrowingRows
from analysis.scan_grid import ScanGrid
from stream import wire
from stream.collector import Collector
from stream.frame_store import FrameStore
from stream.messages import ImageFrame

N_FRAMES = 16 * INITIAL_ROWS  # the arrays are exactly full: no room to grow is counted
RECORD = np.dtype([("value", "<f8"), ("code", "<i2")])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.integers(0, 40), st.integers(0, 5000), st.integers(10**6, 10**12)),
                          st.floats(allow_nan=False)), max_size=80),
       st.integers(1, 64))
def test_frame_rows_hold_what_a_dict_holds(puts, min_dense):
    rows, model = FrameRows(RECORD, min_dense=min_dense), {}
    for index, value in puts:
        rows.put(index, (value, index % 7))
        model[index] = (value, index % 7)
        assert len(rows) == len(model)
    assert rows.indices().tolist() == sorted(model)
    for index, (value, code) in model.items():
        assert index in rows and rows.get(index)["value"] == value and rows.get(index)["code"] == code
    for absent in (-1, 41, 10**13, "x", None):
        if absent not in model:
            assert absent not in rows and rows.get(absent) is None


def test_frame_rows_keep_counting_frames_dense_and_far_indices_in_a_dict():
    rows = FrameRows(np.int64, min_dense=16)
    for k in reversed(range(100)):  # a series' frames in any order are kept densely
        rows.put(k, k * 3)
    rows.put(10**15, 1)  # a corrupt frame number costs one dict entry, not a huge array
    assert rows._rows.size == INITIAL_ROWS and list(rows._far) == [10**15]
    assert rows.indices().tolist() == [*range(100), 10**15] and int(rows.get(42)) == 126


def test_frame_rows_reject_a_negative_index_or_a_record_that_does_not_fit():
    rows = FrameRows([("values", "<f8", (3,))])
    rows.put(0, (np.arange(3.0),))
    with pytest.raises(ValueError):
        rows.put(-1, (np.arange(3.0),))
    with pytest.raises(ValueError):
        rows.put(1, (np.arange(2.0),))
    assert len(rows) == 1 and rows.indices().tolist() == [0]


def test_frame_rows_hand_out_copies():
    rows = FrameRows([("values", "<f8", (2,))])
    rows.put(3, ([1.0, 2.0],))
    got = rows.get(3)
    got["values"][0] = 99.0
    assert rows.get(3)["values"].tolist() == [1.0, 2.0]


def test_growing_rows_append_like_a_list():
    rows, model = GrowingRows(np.float64, (3,)), []
    for k in range(3 * INITIAL_ROWS + 5):
        rows.append((k, -k, 0.5 * k))
        model.append((k, -k, 0.5 * k))
    assert len(rows) == len(model) and np.array_equal(rows.rows, np.array(model))
    with pytest.raises(ValueError):
        rows.rows[0, 0] = 1.0  # a read-only view


def _bytes_per_frame(add, n_frames: int = N_FRAMES) -> float:
    """Allocated bytes kept per call of ``add(k)``, k = 1 .. n_frames - 1 (after ``add(0)``).

    Threads that earlier tests left running (ophyd's Channel Access client, idle RunEngine loops)
    allocate now and then too. An allocation is left out only when its whole stack was recorded
    and does not pass through this file, i.e. when it is provably not made by ``add``.
    """
    add(0)
    tracemalloc.start(_TRACEBACK_FRAMES)
    try:
        before = tracemalloc.take_snapshot()
        for k in range(1, n_frames):
            add(k)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    return (_bytes_made_here(after) - _bytes_made_here(before)) / (n_frames - 1)


_TRACEBACK_FRAMES = 12
"""Frames recorded per allocation: more than a background thread's stack (4-9 frames measured),
fewer than this file's calls under pytest (34 and more), whose traces are thus always counted."""


def _bytes_made_here(snapshot: tracemalloc.Snapshot) -> int:
    """Bytes of ``snapshot``'s traces that may have been allocated under this file's frames."""
    def foreign(trace: tracemalloc.Trace) -> bool:
        frames = trace.traceback
        whole = frames.total_nframe is None or frames.total_nframe <= len(frames)
        return (whole and all(frame.filename != __file__ for frame in frames)
                or any(frame.filename == tracemalloc.__file__ for frame in frames))

    return sum(trace.size for trace in snapshot.traces if not foreign(trace))


def test_the_frame_store_keeps_about_18_bytes_of_index_per_frame(tmp_path):
    payload = bytes(100)
    with FrameStore(str(tmp_path)) as store:
        kept = _bytes_per_frame(lambda k: store.add(ImageFrame(1, k, (10, 10), "uint8", "none", payload, 1)))
        assert store.frame_indices(1) == list(range(N_FRAMES))
        meta, data = store.get(1, N_FRAMES - 1)
        assert data == payload and (meta.shape, meta.dtype, meta.compression, meta.n_bytes) == ((10, 10), "uint8",
                                                                                                "none", 100)
    assert kept <= 20  # offset, size, kind and a present flag (a dict of tuples: ~280)


def test_frame_placement_keeps_the_results_and_little_else_per_frame():
    n_parameters = 40
    frames = FrameMap(ScanGrid((200, 200)), [f"p{k}" for k in range(n_parameters)])
    values, statuses = np.linspace(0.0, 1.0, n_parameters), np.zeros(n_parameters, np.int32)
    kept = _bytes_per_frame(lambda k: frames.add(k, values, statuses))
    assert kept <= n_parameters * 12 + 4  # float64 + int32 per parameter (a dict of two arrays: ~815)
    assert frames.maps.n_measured == N_FRAMES


def test_document_placement_keeps_a_few_numbers_per_event():
    layout = layout_from_start({"uid": "r1", "shape": [200, 200], "extents": [[0, 199], [0, 199]],
                                "snaking": [False, True], "motors": ["y", "x"], "plan_name": "grid_scan"})
    run = RunDocuments(layout)
    run.add("descriptor", {"uid": "d1", "run_start": "r1", "name": "primary",
                           "data_keys": {"eiger_frame_index": {}, "y": {}, "x": {}}})

    def event(k):
        run.add("event", {"descriptor": "d1", "seq_num": k + 1, "time": 10.0 + k,
                          "data": {"eiger_frame_index": k, "y": float(k // 200), "x": float(k % 200)},
                          "timestamps": {"y": 9.5 + k, "x": 9.5 + k}})

    kept = _bytes_per_frame(event)
    # two motors x (timestamp, value) + two held readings x 3 + the frame's point, and the tuples the
    # allocator keeps on its free lists (lists of tuples: ~490)
    assert kept <= 2 * 16 + 2 * 24 + 8 + 1 + 24
    assert run.pixel(201) == (1, 198) and run.problems == {}


def test_the_collector_keeps_its_latencies_as_numbers():
    context = zmq.Context()
    collector = Collector("tcp://127.0.0.1:0", ("saxs_intensity", "a_mean_nm"), lambda outcome: None,
                          context=context)
    try:
        info = wire.SeriesInfo(1, "v2", N_FRAMES, (4, 4), "uint32", None, None, None, None, None)
        collector.handle(wire.encode_series(info, None))
        clocks = {"received_ns": 1_000_000, "started_ns": 2_000_000, "done_ns": 3_000_000}

        def result(k):
            collector.handle(wire.encode_result(dict(clocks, series_id=1, frame_index=k), np.array([1.0, 2.0]),
                                                np.zeros(2, np.int32)))

        kept = _bytes_per_frame(result)
        assert collector.malformed == 0 and collector.series[1].results == N_FRAMES
        assert kept <= 8 + 24 + 4  # one latency and its three parts (lists of floats and tuples: ~170)
    finally:
        collector.socket.close(linger=0)
        context.term()
