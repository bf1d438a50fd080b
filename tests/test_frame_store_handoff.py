"""Workers on the ingest's host read payloads from the frame store instead of receiving them:
the reader gets exactly the stored bytes, or an error when the store moved on (never another
frame's bytes); the ingest sends locations only to workers that announced they read the store;
a worker analyses a stored frame as it would the same frame received, counts one it cannot read
as undecodable, and falls back to receiving payloads when it cannot open the store's files.

Real files, real ZeroMQ sockets on 127.0.0.1; the worker runs in a thread on the small detector.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from analysis.errors import ProtocolError
from analysis.status import Status
from stream import wire
from stream.codecs import compress
from stream.frame_store import (FrameStore, FrameStoreUnreadable, StoredLocation, StoredPayloadGone,
                                StoredPayloadReader)
from stream.messages import ImageFrame
from stream.protocol_v1 import encode_v1_end, encode_v1_image, encode_v1_start
from tests.small_detector import flat_frame
from tests.test_ingest import Harness, image_message, receive, start_message
from tests.worker_sockets import receive_ready, worker_on_sockets


def _frame(series_id: int, index: int, payload: bytes) -> ImageFrame:
    return ImageFrame(series_id, index, (2, 3), "uint16", "none", payload, 2)


def _payload(series_id: int, index: int) -> bytes:
    return np.random.default_rng(1000 * series_id + index).bytes(500 + 37 * index)


def test_files_left_by_a_killed_process_are_deleted_and_no_others(tmp_path):
    import subprocess
    import sys

    writer = subprocess.Popen([sys.executable, "-c", (
        "import os, signal, sys; sys.path.insert(0, os.getcwd())\n"
        "from stream.frame_store import FrameStore\n"
        "from stream.messages import ImageFrame\n"
        f"store = FrameStore(directory={str(tmp_path)!r})\n"
        "store.add(ImageFrame(1, 0, (2, 3), 'uint16', 'none', b'x' * 4000, 2))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n")], cwd=os.getcwd(), stderr=subprocess.PIPE, text=True)
    _, errors = writer.communicate(timeout=120)
    assert writer.returncode == -9, errors
    left = [name for name in os.listdir(tmp_path) if name.startswith("braggmap-frames-")]
    assert len(left) == 1 and f"-{writer.pid}-" in left[0], left
    live = FrameStore(directory=str(tmp_path))
    live.add(_frame(1, 0, _payload(1, 0)))
    (live_name,) = [name for name in os.listdir(tmp_path) if name not in left]
    kept = {live_name, "braggmap-frames-other_host-1-abc.bin", "braggmap-frames-notes.txt", "results.h5"}
    for name in kept - {live_name}:
        (tmp_path / name).write_bytes(b"keep")
    other = FrameStore(directory=str(tmp_path))  # a second service on the same directory
    assert set(os.listdir(tmp_path)) == kept
    assert live.add(_frame(1, 1, _payload(1, 1))) is not None  # the live store's file is untouched
    other.close()
    live.close()
    assert live_name not in os.listdir(tmp_path)


# -- the store's files, read from another process's point of view --------------------------------
def test_reader_gets_exactly_the_stored_payloads(tmp_path):
    store = FrameStore(directory=str(tmp_path))
    locations = {k: store.add(_frame(1, k, _payload(1, k))) for k in range(6)}
    reader = StoredPayloadReader()
    for k in (3, 0, 5, 1):
        view = reader.read(locations[k])
        assert bytes(view) == _payload(1, k) and locations[k].n_bytes == len(view)
    assert StoredLocation.from_dict(locations[2].as_dict()) == locations[2]
    reader.close()
    store.close()


def test_a_payload_of_a_series_the_store_moved_past_is_an_error_not_other_bytes(tmp_path):
    store = FrameStore(directory=str(tmp_path))  # keeps 2 series: the third overwrites the first's file
    first = store.add(_frame(1, 0, _payload(1, 0)))
    store.add(_frame(2, 0, _payload(2, 0)))
    reader = StoredPayloadReader()
    assert bytes(reader.read(first)) == _payload(1, 0)
    third = store.add(_frame(3, 0, _payload(3, 0)))
    assert third.path == first.path and third.offset == first.offset
    with pytest.raises(StoredPayloadGone, match="overwritten"):
        reader.read(first)
    assert bytes(reader.read(third)) == _payload(3, 0)
    store.close()


def test_a_payload_overwritten_while_it_is_read_is_an_error(tmp_path, monkeypatch):
    store = FrameStore(directory=str(tmp_path))
    first = store.add(_frame(1, 0, _payload(1, 0)))
    store.add(_frame(2, 0, _payload(2, 0)))
    reader = StoredPayloadReader()
    read_range = reader._read_range

    def store_moves_on_meanwhile(fd, location):
        store.add(_frame(3, 0, _payload(3, 0)))  # takes over the first series' file
        return read_range(fd, location)

    monkeypatch.setattr(reader, "_read_range", store_moves_on_meanwhile)
    with pytest.raises(StoredPayloadGone, match="overwritten"):
        reader.read(first)
    store.close()


def test_a_series_id_used_again_is_a_new_series_and_the_old_frames_stay_readable(tmp_path):
    """A detector restarted numbers its series from 1 again: the store no longer serves the
    earlier series' frames under that id, yet keeps them for workers still reading them."""
    store = FrameStore(directory=str(tmp_path))
    store.add(_frame(1, 0, _payload(1, 0)))
    earlier = store.add(_frame(2, 0, _payload(2, 0)))
    store.begin_series(2)
    assert store.series_ids() == [1] and store.get(2, 0) is None and store.frame_indices(2) == []
    later = store.add(_frame(2, 0, b"the new series 2"))
    assert store.series_ids() == [2] and store.get(2, 0)[1] == b"the new series 2"
    assert later.path != earlier.path  # the oldest file (series 1) was the one recycled
    reader = StoredPayloadReader()
    assert bytes(reader.read(earlier)) == _payload(2, 0) and bytes(reader.read(later)) == b"the new series 2"
    assert len(store.paths()) == 2
    store.add(_frame(3, 0, b"three"))  # now the earlier series 2 is the oldest: its file is recycled
    with pytest.raises(StoredPayloadGone):
        reader.read(earlier)
    store.close()
    assert list(tmp_path.iterdir()) == []


def test_a_reused_path_is_reopened(tmp_path):
    """A descriptor kept open on a file the store deleted, whose path a new store's file took."""
    old = FrameStore(directory=str(tmp_path))
    reader = StoredPayloadReader()
    location = old.add(_frame(1, 0, b"old store"))
    assert bytes(reader.read(location)) == b"old store"
    old.close()
    new = FrameStore(directory=str(tmp_path))
    fresh = new.add(_frame(1, 0, b"new store, same path"))
    os.rename(fresh.path, location.path)  # the new file under the old name
    moved = StoredLocation(location.path, fresh.generation, fresh.offset, fresh.n_bytes)
    assert bytes(reader.read(moved)) == b"new store, same path"
    reader.close()
    new.close()


def test_unreadable_files_and_bad_locations_are_errors(tmp_path):
    store = FrameStore(directory=str(tmp_path))
    location = store.add(_frame(1, 0, b"twelve bytes"))
    reader = StoredPayloadReader()
    with pytest.raises(FrameStoreUnreadable, match="cannot open"):
        reader.read(StoredLocation(str(tmp_path / "missing.bin"), 1, 4096, 10))
    not_a_store = tmp_path / "other.bin"
    not_a_store.write_bytes(b"x" * 5000)
    with pytest.raises(StoredPayloadGone, match="not a frame store file"):
        reader.read(StoredLocation(str(not_a_store), 1, 4096, 10))
    with pytest.raises(StoredPayloadGone, match="ends before"):
        reader.read(StoredLocation(location.path, location.generation, location.offset, 5000))
    for bad in (None, {"path": "x"}, {"path": 3, "generation": 1, "offset": 0, "n_bytes": 1},
                {"path": "x", "generation": -1, "offset": 0, "n_bytes": 1},
                {"path": "x", "generation": True, "offset": 0, "n_bytes": 1}):
        with pytest.raises(ProtocolError):
            StoredLocation.from_dict(bad)
    store.close()


# -- the ingest -----------------------------------------------------------------------------------------
@pytest.fixture
def ingest_with_store(tmp_path):
    store = FrameStore(directory=str(tmp_path))
    harness = Harness(frame_store=store)
    yield harness, store
    harness.close()
    store.close()


def test_ingest_sends_locations_only_to_workers_that_read_the_store(ingest_with_store):
    harness, store = ingest_with_store
    reading = harness.add_worker(credits=1, reads_frame_store=True)
    plain = harness.add_worker(credits=1)
    harness.send(encode_v1_start(start_message(n_images=2)))
    for index in range(2):
        harness.send(encode_v1_image(image_message(index)))
    harness.send(encode_v1_end_for(7))
    seen = {}
    for dealer, name in ((reading, "reading"), (plain, "plain")):
        assert receive(dealer)[0] == wire.SERIES
        parts = receive(dealer)
        meta, payload = wire.decode_frame(parts)
        seen[name] = meta, bytes(payload)
    # Credits only once both hold a frame: a credit back earlier could take frame 1 to the same
    # worker. Block mode reads the series end once a worker has credit.
    for dealer in (reading, plain):
        dealer.send_multipart([wire.CREDIT])
    reader = StoredPayloadReader()
    meta, payload = seen["reading"]
    assert payload == b"" and set(meta["stored"]) == {"path", "generation", "offset", "n_bytes"}
    assert bytes(reader.read(StoredLocation.from_dict(meta["stored"]))) == image_message(meta["frame_index"]).payload
    meta, payload = seen["plain"]
    assert "stored" not in meta and payload == image_message(meta["frame_index"]).payload
    summary = wire.loads(harness.collect(wire.SUMMARY)[1])
    assert summary["received"] == 2 and summary["forwarded"] == 2


def test_ingest_starts_a_new_stored_series_when_a_series_id_comes_again(ingest_with_store):
    harness, store = ingest_with_store
    worker = harness.add_worker(credits=10)
    for _ in range(2):
        harness.send(encode_v1_start(start_message(n_images=1)))
        harness.send(encode_v1_image(image_message(0)))
        harness.send(encode_v1_end_for(7))
        harness.collect(wire.SUMMARY)
    assert store.series_ids() == [7] and len(store.paths()) == 2  # the earlier series 7 kept apart
    assert receive(worker)[0] == wire.SERIES


def encode_v1_end_for(series_id: int) -> list:
    from stream.messages import SeriesEnd
    return encode_v1_end(SeriesEnd(series_id=series_id))


# -- the worker ------------------------------------------------------------------------------------------
@pytest.fixture
def reading_worker(tmp_path):
    with worker_on_sockets(tmp_path, credits=4, max_batch=1, name="store-reader", read_frame_store=True) as sockets:
        worker, router, pull, stop = sockets
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        identity, kind, ready = receive_ready(router)
        assert kind == wire.READY and wire.loads(ready) == {"credits": 4, "worker": "store-reader",
                                                            "reads_frame_store": True}
        store = FrameStore(directory=str(tmp_path))
        yield worker, identity, router, pull, store
        stop.set()
        thread.join(10)
        store.close()


def _image(index: int) -> ImageFrame:
    frame = flat_frame(index)
    return ImageFrame(series_id=1, frame_index=index, shape=frame.shape, dtype="uint32",
                      compression="bslz4", payload=compress(frame, "bslz4"), elem_size=4)


def _result(router, pull):
    (meta, values, statuses), = wire.decode_results(pull.recv_multipart())  # a batch of one (max_batch=1)
    assert router.recv_multipart()[1:] == [wire.CREDIT]
    return meta, values, statuses


def test_worker_analyses_a_stored_frame_as_the_same_frame_received(reading_worker):
    worker, identity, router, pull, store = reading_worker
    image = _image(2)
    router.send_multipart([identity, *wire.encode_frame(image, received_ns=0, series_instance=41)])
    received = _result(router, pull)
    location = store.add(image)
    router.send_multipart([identity, *wire.encode_stored_frame(image, 0, location.as_dict(), series_instance=42)])
    stored = _result(router, pull)
    assert received[0]["error"] is None and stored[0]["error"] is None
    assert (received[0]["series_instance"], stored[0]["series_instance"]) == (41, 42)
    assert np.array_equal(received[1], stored[1], equal_nan=True) and np.array_equal(received[2], stored[2])
    assert np.isfinite(stored[1]).any()


def test_worker_counts_a_stored_frame_it_cannot_read_and_then_receives_payloads(reading_worker, tmp_path):
    worker, identity, router, pull, store = reading_worker
    first, second = _image(0), _image(1)
    location = store.add(first)
    store.add(ImageFrame(2, 0, first.shape, "uint32", "bslz4", first.payload, 4))
    store.add(ImageFrame(3, 0, first.shape, "uint32", "bslz4", first.payload, 4))  # overwrites series 1
    router.send_multipart([identity, *wire.encode_stored_frame(first, 0, location.as_dict())])
    meta, values, statuses = _result(router, pull)
    assert meta["undecodable"] and "overwritten" in meta["error"]
    assert np.all(statuses == Status.UNDECODABLE) and np.all(np.isnan(values))
    assert not router.poll(200), "a payload overwritten is no reason to stop reading the store"

    elsewhere = StoredLocation(str(tmp_path / "on-another-host.bin"), 1, 4096, len(second.payload))
    router.send_multipart([identity, *wire.encode_stored_frame(second, 0, elsewhere.as_dict())])
    meta, values, statuses = _result(router, pull)
    assert meta["undecodable"] and "cannot open" in meta["error"]
    _, kind, announced = router.recv_multipart()  # it tells the ingest: payloads from now on
    assert kind == wire.READY and wire.loads(announced) == {"credits": 0, "worker": "store-reader",
                                                            "reads_frame_store": False}
    router.send_multipart([identity, *wire.encode_stored_frame(second, 0, store.add(second).as_dict())])
    meta, _, statuses = _result(router, pull)
    assert meta["undecodable"] and "does not read" in meta["error"]
    router.send_multipart([identity, *wire.encode_frame(second, received_ns=0)])
    meta, values, _ = _result(router, pull)
    assert meta["error"] is None and np.isfinite(values).any()
