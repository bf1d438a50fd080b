"""The running service (ingest, two worker processes, collector) on real loopback sockets,
fed by a raw detector PUSH socket on an OS-assigned port, its workers receiving the payloads or
reading them from the frame store: every frame lands on its scan pixel, the accounting is exact, and a frame whose compressed payload is corrupt (but whose framing
looks fine to the ingest) is counted undecodable with its reason, not received.

The small test detector keeps the real analysis fast (see ``small_detector.py``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import zmq

from analysis.scan_grid import ScanGrid
from analysis.status import Status
from small_detector import SHAPE, counts_of, flat_frame, saxs_pixel_count, write_setup
from stream.codecs import compress
from stream.messages import ImageFrame, SeriesEnd, SeriesStart
from stream.protocol_v1 import encode_v1_end, encode_v1_image, encode_v1_start
from stream.service import Service, ServiceConfig

pytestmark = pytest.mark.timeout(120)

GRID = ScanGrid(shape=(3, 4), snake=True)
N_FRAMES = GRID.n_points


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return write_setup(tmp_path_factory.mktemp("small_detector"))


@pytest.fixture(scope="module")
def detector():
    """The detector side: a PUSH socket bound on 127.0.0.1 (the ingest connects to it)."""
    context = zmq.Context()
    socket = context.socket(zmq.PUSH)
    socket.setsockopt(zmq.LINGER, 0)
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    yield socket, f"tcp://127.0.0.1:{port}"
    socket.close(linger=0)
    context.term()


@pytest.fixture(scope="module", params=["payloads sent", "payloads read from the frame store"])
def service(request, setup, detector):
    """Without the frame detail (no frame store: the workers receive the payloads), and with it
    (the workers, on the ingest's host, read them from the store)."""
    from_store = request.param == "payloads read from the frame store"
    config = ServiceConfig(setup=setup, detector_endpoint=detector[1], protocol="v1", n_workers=2,
                           grid=GRID, publish_endpoint=None,
                           detail_endpoint="tcp://127.0.0.1:0" if from_store else None,
                           series_timeout_s=20.0, results_timeout_s=20.0)
    with Service(config) as running:
        assert running.ingest.n_store_readers == (2 if from_store else 0)
        yield running


def test_a_service_started_in_a_callers_process_freezes_none_of_its_objects(service):
    """Only ``braggmap serve`` and worker processes freeze their start-up objects out of the
    garbage collector (stream.gc_tuning); a Service started in a user's session must not."""
    import gc
    assert gc.get_freeze_count() == 0


def series_start(series_id: int) -> SeriesStart:
    config = {"nimages": 1, "ntrigger": N_FRAMES, "x_pixels_in_detector": SHAPE[1],
              "y_pixels_in_detector": SHAPE[0], "bit_depth_image": 32, "wavelength": 0.8984,
              "x_pixel_size": 7.5e-05, "y_pixel_size": 7.5e-05}
    return SeriesStart(series_id=series_id, protocol="v1", header_detail="basic", config=config,
                       n_images=N_FRAMES, image_shape=SHAPE, image_dtype="uint32")


def image_parts(series_id: int, index: int) -> list[bytes]:
    frame = ImageFrame(series_id=series_id, frame_index=index, shape=SHAPE, dtype="uint32",
                       compression="bslz4", payload=compress(flat_frame(index), "bslz4"), elem_size=4)
    return encode_v1_image(frame)


def cut_blob_in_half(parts: list[bytes]) -> list[bytes]:
    """The blob's second half gone and ``size`` adjusted: the 12-byte header still says a
    whole frame, so only decompression finds out."""
    blob = parts[2][: len(parts[2]) // 2]
    detail = dict(json.loads(parts[1]), size=len(blob))
    return [parts[0], json.dumps(detail).encode(), blob, *parts[3:]]


def send_series(detector, series_id: int, corrupt: frozenset[int] = frozenset()) -> None:
    socket = detector[0]
    socket.send_multipart(encode_v1_start(series_start(series_id)))
    for index in range(N_FRAMES):
        parts = image_parts(series_id, index)
        socket.send_multipart(cut_blob_in_half(parts) if index in corrupt else parts)
    socket.send_multipart(encode_v1_end(SeriesEnd(series_id=series_id)))


def expected_saxs_map(saxs_pixels: float, skip: frozenset[int] = frozenset()) -> np.ndarray:
    expected = np.full(GRID.shape, np.nan)
    for index in range(N_FRAMES):
        if index not in skip:
            expected[GRID.position(index)] = counts_of(index) * saxs_pixels
    return expected


def test_two_workers_place_every_frame_and_account_for_it_exactly(service, detector, setup):
    send_series(detector, series_id=21)
    outcome = service.wait_for_series(60)
    assert outcome.info.series_id == 21 and outcome.complete
    summary = outcome.summary
    assert summary.line() == f"frames: expected {N_FRAMES}, received {N_FRAMES}, lost 0"
    assert summary.missing == () and summary.duplicates == 0 and summary.reasons == {}
    assert outcome.results == N_FRAMES and outcome.analysis_errors == {} and outcome.problems == []
    assert len(service.ingest.series_workers) == 2, "both workers analysed frames of the series"
    assert outcome.maps.n_repeated == 0 and (outcome.maps.measured_count == 1).all()
    np.testing.assert_allclose(outcome.maps.values["saxs_intensity"], expected_saxs_map(saxs_pixel_count(setup)),
                               rtol=1e-12)
    # every result's latency, split into waiting, analysis and delivery (one host: one clock)
    parts = np.asarray(outcome.latency_parts_ms)
    assert parts.shape == (N_FRAMES, 3) and len(outcome.latencies_ms) == N_FRAMES
    assert (parts >= 0).all() and (parts[:, 1] > 0).all()
    np.testing.assert_allclose(parts.sum(axis=1), outcome.latencies_ms, atol=1e-3)


def test_corrupt_blob_is_counted_undecodable_with_its_reason(service, detector, setup):
    send_series(detector, series_id=22, corrupt=frozenset({5}))
    outcome = service.wait_for_series(60)
    assert outcome.info.series_id == 22
    summary = outcome.summary
    assert summary.line() == f"frames: expected {N_FRAMES}, received {N_FRAMES - 1}, lost 1 (undecodable 1)"
    assert summary.undecodable == 1 and summary.missing == ()
    (reason,) = summary.reasons
    assert reason.startswith("truncated blob") and "frame 5" in reason, reason
    assert outcome.analysis_errors == {}, "an undecodable frame is accounted for, not an analysis error"
    statuses = outcome.maps.statuses["saxs_intensity"]
    row, column = GRID.position(5)
    assert statuses[row, column] == Status.UNDECODABLE
    assert all(outcome.maps.statuses[name][row, column] == Status.UNDECODABLE for name in outcome.maps.statuses)
    np.testing.assert_allclose(outcome.maps.values["saxs_intensity"],
                               expected_saxs_map(saxs_pixel_count(setup), skip=frozenset({5})), rtol=1e-12)
