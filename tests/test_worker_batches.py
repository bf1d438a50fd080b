"""A worker analyses the frames already queued for it as one batch: same results as one by one,
one result and one credit per frame in order; an undecodable frame or one of the wrong shape
fails before the batch, and a frame whose analysis raises fails alone (the others are retried
one by one).

The worker runs in a thread against real ZeroMQ sockets on 127.0.0.1 (a ROUTER standing in for
the ingest, a PULL for the collector) on the small test detector.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from analysis.errors import ProtocolError
from analysis.status import Status
from stream import wire
from stream.codecs import compress
from stream.messages import ImageFrame
from tests.small_detector import SHAPE, counts_of, flat_frame, write_setup
from tests.worker_sockets import TIMEOUT_MS, receive_ready, worker_on_sockets


def frame_message(index: int, frame: np.ndarray | None = None, payload: bytes | None = None) -> list:
    frame = flat_frame(index) if frame is None else frame
    payload = compress(frame, "bslz4") if payload is None else payload
    image = ImageFrame(series_id=1, frame_index=index, shape=frame.shape, dtype="uint32",
                       compression="bslz4", payload=payload, elem_size=4)
    return wire.encode_frame(image, received_ns=0)


@pytest.fixture
def worker_sockets(tmp_path):
    with worker_on_sockets(tmp_path, credits=8, max_batch=4, name="batch-test") as sockets:
        yield sockets


def test_queued_frames_are_batched_and_a_bad_frame_fails_alone(worker_sockets):
    worker, router, pull, stop = worker_sockets
    analyzer = worker.analyzers.default()
    reference = analyzer  # same cached object the worker analyses with
    n_params = len(analyzer.parameter_names)
    expected = {}
    for index in (0, 1, 2, 6):
        values, statuses = np.empty(n_params), np.empty(n_params, np.int32)
        reference.analyse(flat_frame(index), values, statuses, accumulate=False)
        expected[index] = values, statuses
    reference.average.reset()

    batch_sizes = []
    armed, release = threading.Event(), threading.Event()  # armed once the warm-up is over
    original = analyzer.analyse_regrouped
    exploding = counts_of(4)  # frame 4 makes any analysis that includes it raise

    sockets = {}
    original_handle = worker._handle

    def handle(messages, dealer, results):
        sockets["dealer"] = dealer
        return original_handle(messages, dealer, results)

    def recording(n_frames, values, statuses, accumulate=True, first=0):
        if armed.is_set():
            batch_sizes.append(n_frames)
            if len(batch_sizes) == 1:  # hold the first batch until the other frames are queued here
                release.wait(TIMEOUT_MS / 1000)
                # (this thread owns the socket) the next frame has arrived, and the rest of the
                # burst, sent before it, with it or right after (a margin for a loaded machine)
                assert sockets["dealer"].poll(TIMEOUT_MS, zmq.POLLIN)
                time.sleep(0.2)
            slots = analyzer.batch.slots[first:first + n_frames]
            if any(slot.saxs_n_valid and slot.saxs_sum == exploding * slot.saxs_n_valid for slot in slots):
                raise RuntimeError("fit exploded")
        return original(n_frames, values, statuses, accumulate=accumulate, first=first)

    analyzer.analyse_regrouped = recording
    worker._handle = handle
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    identity, kind, ready = receive_ready(router)
    assert kind == wire.READY and wire.loads(ready)["credits"] == 8
    fused_payloads = []
    for fused in worker._fused.values():  # built and warmed up before READY
        def counting(payload, *args, _regroup=fused.regroup, **kwargs):
            fused_payloads.append(len(payload))
            return _regroup(payload, *args, **kwargs)
        fused.regroup = counting
    armed.set()

    truncated = compress(flat_frame(3), "bslz4")[:-40]
    wrong_shape = np.full((SHAPE[0], SHAPE[1] - 2), 5, np.uint32)
    messages = [frame_message(0), frame_message(1), frame_message(2), frame_message(3, payload=truncated),
                frame_message(4), frame_message(5, frame=wrong_shape), frame_message(6)]
    for parts in messages:
        router.send_multipart([identity, *parts])
    release.set()

    results, credits, batches = [], [], []
    while len(results) < len(messages):  # one results message and one credit message per batch
        batch = wire.decode_results(pull.recv_multipart())
        results += batch
        batches.append(len(batch))
        identity_back, *credit = router.recv_multipart()
        assert identity_back == identity and credit[0] == wire.CREDIT
        credits.append(wire.decode_credit(credit))
    stop.set()
    thread.join(10)

    assert [meta["frame_index"] for meta, _, _ in results] == list(range(7))
    assert credits == batches and sum(credits) == len(messages)  # every frame's credit came back
    assert max(batches) > 1  # frames that waited came back in one message
    assert max(batch_sizes) > 1 and sum(batch_sizes) >= 6  # frames waited and went together
    for meta, values, statuses in results:
        index = meta["frame_index"]
        if index in expected:
            assert meta["error"] is None
            assert np.array_equal(values, expected[index][0], equal_nan=True)
            assert np.array_equal(statuses, expected[index][1])
    meta, values, statuses = results[3]
    assert meta["undecodable"] and "bslz4" in meta["error"]
    assert np.all(statuses == Status.UNDECODABLE) and np.all(np.isnan(values))
    meta, values, statuses = results[4]
    assert not meta["undecodable"] and meta["error"] == "RuntimeError: fit exploded"
    assert np.all(statuses == Status.INVALID_INPUT) and np.all(np.isnan(values))
    meta, values, statuses = results[5]
    assert not meta["undecodable"] and "shape" in meta["error"]
    assert np.all(statuses == Status.INVALID_INPUT) and np.all(np.isnan(values))
    assert worker.frames_done == len(messages)
    # the bitshuffle-LZ4 frames of the detector's shape went through the fused decode + regroup
    assert len(fused_payloads) == 6  # frames 0-4 and 6 (5 has the wrong shape for it)


def test_a_frames_message_is_analysed_frame_by_frame_and_a_bad_one_returns_its_credits(worker_sockets):
    """The ingest's ``frames`` message (a burst for this worker): each frame gets its own result,
    as if it had come alone; a malformed one is logged and its frames' credits come back, so the
    ingest does not count them in flight forever."""
    worker, router, pull, stop = worker_sockets
    analyzer = worker.analyzers.default()
    n_params = len(analyzer.parameter_names)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    identity = receive_ready(router)[0]
    alone = {}
    for index in (0, 1):  # each frame alone first, for the expected results
        router.send_multipart([identity, *frame_message(index)])
        (meta, values, statuses), = wire.decode_results(pull.recv_multipart())
        alone[index] = values, statuses
        router.recv_multipart()  # its credit
    frames = [wire.decode_frame(frame_message(index)) for index in (1, 0, 2)]
    frames[2][0]["shape"] = [SHAPE[0], SHAPE[1] + 1]  # frame 2: a shape its payload does not have
    router.send_multipart([identity, *wire.encode_frames(frames)])
    results = wire.decode_results(pull.recv_multipart())
    assert [meta["frame_index"] for meta, _, _ in results] == [1, 0, 2]
    for meta, values, statuses in results[:2]:
        assert meta["error"] is None
        assert np.array_equal(values, alone[meta["frame_index"]][0], equal_nan=True)
        assert np.array_equal(statuses, alone[meta["frame_index"]][1])
    assert results[2][0]["error"] and np.all(np.isnan(results[2][1])) and results[2][1].size == n_params
    assert wire.decode_credit(router.recv_multipart()[1:]) == 3
    bad = wire.encode_frames(frames)[:-1]  # three metadata, two payloads
    router.send_multipart([identity, *bad])
    assert wire.decode_credit(router.recv_multipart()[1:]) == 2
    assert not pull.poll(300), "no result for a message that could not be read"
    stop.set()
    thread.join(10)


def test_frame_metadata_without_a_shape_is_a_protocol_error_in_both_frame_messages():
    kind, meta, payload = frame_message(0)
    for bad in (b"[1]", b'{"frame_index": 0}', b'{"shape": 5}'):
        with pytest.raises(ProtocolError, match="without a shape"):
            wire.decode_frame([kind, bad, payload])
    frames = [wire.decode_frame(frame_message(index)) for index in (0, 1)]
    assert frames[0][0]["shape"] == SHAPE and bytes(frames[0][1]) == bytes(payload)
    del frames[1][0]["shape"]
    with pytest.raises(ProtocolError, match="without a shape"):
        wire.decode_frames(wire.encode_frames(frames))


def test_mask_encoder_reuses_the_bytes_of_a_mask_equal_to_its_last_one():
    masks = wire.MaskEncoder()
    mask = np.zeros(SHAPE, np.uint32)
    mask[3, 4:9] = 1
    first, digest = masks.encode(mask)
    assert first == mask.astype("<u4").tobytes() and digest == wire.pixel_mask_digest(mask)
    again, same_digest = masks.encode(mask.copy())  # an equal mask of the next series
    assert again is first and same_digest == digest
    changed = mask.copy()
    changed[0, 0] = 1
    other, other_digest = masks.encode(changed)
    assert other == changed.astype("<u4").tobytes() and other_digest == wire.pixel_mask_digest(changed) != digest
    assert masks.encode(changed.astype(np.int64))[0] is other  # compared as uint32 values
    assert masks.encode(None) == (b"", None)
    assert masks.encode(np.zeros((2, 3), np.uint32))[0] == bytes(24)  # another shape: encoded anew
    info = wire.SeriesInfo(4, "v1", 2, SHAPE, "uint32", None, None, None, None, None)
    decoded, decoded_mask = wire.decode_series(wire.encode_series(info, changed, masks))
    assert decoded.pixel_mask_digest == other_digest
    np.testing.assert_array_equal(decoded_mask, changed)


def test_series_message_carries_the_mask_digest_and_a_view_of_the_mask(tmp_path):
    """The series message names its pixel mask by digest, so that a worker finds the analyzer
    of a mask seen before without hashing it, and hands the mask over without a copy."""
    from stream.analysis_setup import AnalyzerCache

    mask = np.zeros(SHAPE, np.uint32)
    mask[3, 4:9] = 1
    info = wire.SeriesInfo(4, "v1", 2, SHAPE, "uint32", None, None, None, None, None)
    parts = wire.encode_series(info, mask)
    decoded, decoded_mask = wire.decode_series(parts)
    assert decoded.pixel_mask_digest == wire.pixel_mask_digest(mask)
    np.testing.assert_array_equal(decoded_mask, mask)
    assert not decoded_mask.flags.writeable and not decoded_mask.flags.owndata
    assert wire.decode_series(wire.encode_series(info, None))[0].pixel_mask_digest is None
    with pytest.raises(wire.ProtocolError, match="digest without a mask"):
        wire.decode_series([parts[0], parts[1], b""])
    cache = AnalyzerCache(write_setup(tmp_path))
    by_digest = cache.for_series(decoded, decoded_mask)
    assert cache.for_series(info, mask.copy()) is by_digest  # hashed here: the same key
    other = mask.copy()
    other[0, 0] = 1
    assert cache.for_series(info, other) is not by_digest
