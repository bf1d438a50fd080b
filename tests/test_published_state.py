"""Published map state over a real PUB socket on 127.0.0.1: the newest message is repeated
while nothing new is published, so a subscriber that missed the final snapshot of a series
(dropped at the high-water mark, or connected after the scan) still gets it; full snapshots of
large maps are spaced by their cost, pixel updates are not."""

from __future__ import annotations

import queue
import time
from types import SimpleNamespace

import numpy as np
import zmq

from analysis.map_state import MapState
from analysis.scan_grid import ScanGrid
from analysis.status import Status
from stream import wire
from stream.accounting import SeriesAccounting
from stream.collector import Collector
from stream.analysis_setup import AnalysisSetup
from stream.published_state import FULL_SNAPSHOT_CPU_SHARE, MapPublisher, MapSubscriber, snapshot_of

PARAMETERS = ("saxs_intensity", "a_mean_nm")


def _state(grid: ScanGrid) -> SimpleNamespace:
    return SimpleNamespace(maps=MapState(grid.shape, PARAMETERS), grid=grid, results=0)


def _measure(state, k: int) -> None:
    row, column = state.grid.position(k)
    state.maps.update(row, column, [100.0 + k, np.nan], [Status.OK, Status.MISSING_PEAK])
    state.results += 1


def _receive(subscriber: MapSubscriber, publisher: MapPublisher | None, timeout_s: float, until) -> list:
    """Snapshots received within ``timeout_s`` (driving ``publisher.maybe_publish({})`` as the
    collector's loop does once its series are finished) until ``until(received)``."""
    received = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not until(received):
        if publisher is not None:
            publisher.maybe_publish({})
        snapshot = subscriber.latest(20)
        if snapshot is not None:
            received.append(snapshot)
    return received


def test_a_subscriber_connecting_after_the_series_finished_gets_the_final_snapshot():
    grid = ScanGrid((3, 4), snake=True)
    state = _state(grid)
    publisher = MapPublisher("tcp://127.0.0.1:0", max_rate_hz=50.0, repeat_interval_s=0.2)
    subscriber = None
    try:
        for k in range(grid.n_points):
            _measure(state, k)
            publisher.maybe_publish({5: state})
            time.sleep(0.005)
        publisher.publish_now(5, state, final=True)
        expected = snapshot_of(5, 0, PARAMETERS, grid, state.maps, final=True)
        subscriber = MapSubscriber(publisher.endpoint)  # after the scan
        received = _receive(subscriber, publisher, 5.0, lambda got: len(got) >= 3)
        assert len(received) >= 3, f"{len(received)} snapshots in 5 s, {publisher.repeats} repeats sent"
        final = received[0]
        assert final.final and final.series_id == 5 and final.measured == grid.n_points
        np.testing.assert_array_equal(final.values, expected.values)
        np.testing.assert_array_equal(final.statuses, expected.statuses)
        assert final.map("saxs_intensity")[1, 0] == 100.0 + grid.frame_index(1, 0)
        # every repeat is the same message: same series, same version
        assert {(s.series_id, s.version, s.final) for s in received} == {(5, final.version, True)}
        assert publisher.repeats >= len(received)
    finally:
        publisher.close()
        if subscriber is not None:
            subscriber.close()


def test_nothing_is_repeated_while_new_snapshots_are_published():
    grid = ScanGrid((10, 10))
    state = _state(grid)
    publisher = MapPublisher("tcp://127.0.0.1:0", max_rate_hz=50.0, repeat_interval_s=0.2)
    try:
        publisher.maybe_publish({})
        assert publisher.repeats == 0  # nothing published yet: nothing to repeat
        for k in range(60):  # 0.6 s of a live series, 100 points/s
            _measure(state, k)
            publisher.maybe_publish({1: state})
            time.sleep(0.01)
        time.sleep(0.03)
        publisher.maybe_publish({1: state})  # the last results, held back by the rate limit
        assert publisher.repeats == 0
        time.sleep(0.25)
        publisher.maybe_publish({1: state})  # no new result for 0.25 s: the newest goes again
        assert publisher.repeats == 1
        publisher.maybe_publish({1: state})
        assert publisher.repeats == 1  # not before another repeat interval
    finally:
        publisher.close()


def test_the_collector_keeps_offering_the_final_map_to_a_viewer_that_comes_late():
    """The collector publishes a series' final snapshot once; a viewer subscribing after the
    series finished still receives it (the publisher repeats it from the collector's loop)."""
    context = zmq.Context.instance()
    outcomes: queue.Queue = queue.Queue()
    collector = Collector("tcp://127.0.0.1:0", PARAMETERS, outcomes.put, publish_endpoint="tcp://127.0.0.1:0",
                          context=context)
    collector.start()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(collector.endpoint)
    subscriber = None
    try:
        n_frames = 6
        info = wire.SeriesInfo(11, "v2", n_frames, (4, 4), "uint32", None, None, None, None, None)
        push.send_multipart(wire.encode_series(info, None))
        for k in range(n_frames):
            push.send_multipart(wire.encode_result({"series_id": 11, "frame_index": k},
                                                   np.array([10.0 * k, 1.5]), np.zeros(2, np.int32)))
        accounting = SeriesAccounting(11, n_frames)
        for k in range(n_frames):
            accounting.record_frame(k)
        push.send_multipart([wire.SUMMARY, wire.dumps(dict(accounting.summary("end").as_dict(),
                                                           forwarded=n_frames, workers=[]))])
        outcome = outcomes.get(timeout=10)
        subscriber = MapSubscriber(collector.publisher.endpoint)
        received = _receive(subscriber, None, 6.0, lambda got: bool(got) and got[-1].final)
        assert received and received[-1].final, "no final snapshot reached the late subscriber"
        final = received[-1]
        assert final.series_id == 11 and final.measured == n_frames
        np.testing.assert_array_equal(final.map("saxs_intensity"), outcome.maps.values["saxs_intensity"])
        np.testing.assert_array_equal(final.map("a_mean_nm"), outcome.maps.values["a_mean_nm"])
    finally:
        collector.stop()
        push.close(linger=0)
        if subscriber is not None:
            subscriber.close()


def _subscribed(publisher: MapPublisher, series_id: int, state) -> MapSubscriber:
    """A subscriber that has received a first full snapshot (PUB/SUB joins take a moment)."""
    subscriber = MapSubscriber(publisher.endpoint)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        publisher.publish_now(series_id, state, final=False)
        if subscriber.latest(50) is not None:
            return subscriber
    raise AssertionError("the subscriber never received a snapshot")


def test_pixel_updates_keep_the_subscribers_map_equal_to_the_collectors_between_snapshots():
    grid = ScanGrid((6, 7), snake=True)
    state = _state(grid)
    publisher = MapPublisher("tcp://127.0.0.1:0", max_rate_hz=0.5, pixel_rate_hz=200.0)
    subscriber = _subscribed(publisher, 3, state)
    try:
        seen = None
        for k in range(grid.n_points):
            _measure(state, k)
            time.sleep(0.006)
            publisher.maybe_publish({3: state})
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and (seen is None or seen.measured < k + 1):
                seen = subscriber.latest(20) or seen
            assert seen.measured == k + 1, f"point {k} did not reach the subscriber"
            np.testing.assert_array_equal(seen.map("saxs_intensity"),
                                          state.maps.values["saxs_intensity"].astype(np.float32))
            np.testing.assert_array_equal(seen.statuses[1], state.maps.statuses["a_mean_nm"])
        assert subscriber.applied_updates >= grid.n_points - 2  # (a full snapshot may be due)
        assert publisher.pixel_updates == subscriber.applied_updates and subscriber.missed_updates == 0
        assert not seen.final
    finally:
        publisher.close()
        subscriber.close()


def test_a_lost_pixel_update_holds_the_map_until_the_next_full_snapshot():
    """An update that does not follow the state held (one was lost before it), an older
    snapshot repeated late, and a malformed update change nothing; the next full snapshot
    brings the subscriber up to date."""
    from stream.published_state import encode_pixels, encode_snapshot

    grid = ScanGrid((3, 3))
    maps = MapState(grid.shape, PARAMETERS)
    context = zmq.Context.instance()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    subscriber = MapSubscriber(f"tcp://127.0.0.1:{port}")

    def full(version):
        return encode_snapshot(snapshot_of(2, version, PARAMETERS, grid, maps, publisher="p1"))

    def receive():
        deadline, newest = time.monotonic() + 2, None
        while time.monotonic() < deadline:
            newest = subscriber.latest(50) or newest
            if newest is not None and not subscriber.socket.poll(50):
                return newest
        return newest

    try:
        maps.update(0, 0, [1.0, 2.0])
        first = None
        deadline = time.monotonic() + 5
        while first is None and time.monotonic() < deadline:
            pub.send_multipart(full(1))
            first = subscriber.latest(50)
        assert first is not None and first.version == 1
        maps.update(0, 1, [3.0, 4.0])
        maps.update(2, 2, [5.0, 6.0])
        pub.send_multipart(encode_pixels(2, 3, 2, maps, np.array([1, 8]), "p1"))  # version 2 was lost
        bad = encode_pixels(2, 2, 1, maps, np.array([1]), "p1")
        pub.send_multipart(bad[:4])  # malformed: a part missing
        pub.send_multipart([bad[0], bad[1], np.array([99], "<i8").tobytes(), bad[3], bad[4]])  # off the grid
        assert receive() is None
        assert subscriber.missed_updates == 1 and subscriber.dropped_bad == 2
        assert np.isnan(first.map("saxs_intensity")[0, 1]), "nothing was applied"
        pub.send_multipart(full(4))
        pub.send_multipart(full(1))  # an older snapshot, repeated late
        pub.send_multipart(encode_pixels(2, 5, 4, maps, np.array([8]), "p1"))
        pub.send_multipart(encode_pixels(2, 6, 5, maps, np.array([8]), "other publisher"))
        latest = receive()
        assert latest.version == 5 and subscriber.applied_updates == 1 and subscriber.missed_updates == 2
        np.testing.assert_array_equal(latest.map("saxs_intensity"), maps.values["saxs_intensity"])
    finally:
        pub.close(linger=0)
        subscriber.close()


def test_a_subscriber_holds_the_newest_states_of_a_few_series_only():
    """Only the MAX_HELD_SERIES most recently updated series are held: an update of one that
    was let go waits for its next full snapshot, the others apply."""
    from stream.published_state import MAX_HELD_SERIES, encode_pixels, encode_snapshot

    grid = ScanGrid((2, 2))
    maps = MapState(grid.shape, PARAMETERS)
    maps.update(0, 0, [1.0, 2.0])
    context = zmq.Context.instance()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    subscriber = MapSubscriber(f"tcp://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 5
        while subscriber.latest(50) is None and time.monotonic() < deadline:
            pub.send_multipart(encode_snapshot(snapshot_of(1, 1, PARAMETERS, grid, maps, publisher="p")))
        for series_id in range(2, MAX_HELD_SERIES + 2):  # series 1 is now the least recent
            pub.send_multipart(encode_snapshot(snapshot_of(series_id, 1, PARAMETERS, grid, maps, publisher="p")))
        maps.update(1, 1, [3.0, 4.0])
        for series_id in (1, MAX_HELD_SERIES + 1):
            pub.send_multipart(encode_pixels(series_id, 2, 1, maps, np.array([3]), "p"))
        deadline = time.monotonic() + 3
        while subscriber.applied_updates + subscriber.missed_updates < 2 and time.monotonic() < deadline:
            subscriber.latest(50)
        assert (subscriber.applied_updates, subscriber.missed_updates) == (1, 1)
    finally:
        pub.close(linger=0)
        subscriber.close()


def _result(series_id: int, k: int) -> list[bytes]:
    return wire.encode_result({"series_id": series_id, "frame_index": k}, np.array([10.0 * k, 1.5]),
                              np.zeros(2, np.int32))


def test_the_collector_waits_no_longer_than_the_held_back_points_need():
    """Results that arrive within a pixel interval of the previous message are held back; the
    collector's idle wait then ends when they fall due, not after its full 100 ms."""
    collector = Collector("tcp://127.0.0.1:0", PARAMETERS, lambda outcome: None,
                          publish_endpoint="tcp://127.0.0.1:0")
    try:
        collector.publisher.pixel_interval_s = 0.05
        info = wire.SeriesInfo(4, "v2", 8, (4, 4), "uint32", None, None, None, None, None)
        assert collector._poll_timeout_ms() == 100  # no series
        collector.handle(wire.encode_series(info, None))
        assert collector._poll_timeout_ms() == 0  # its empty map is published at once
        collector.publisher.maybe_publish(collector.series)
        assert collector._poll_timeout_ms() == 100  # nothing new
        time.sleep(0.06)
        collector.handle(_result(4, 0))
        assert collector.publisher.seconds_until_due(collector.series) == 0.0
        collector.publisher.maybe_publish(collector.series)
        assert collector.publisher.seconds_until_due(collector.series) is None
        collector.handle(_result(4, 1))  # within the interval: held back
        assert 0 < collector._poll_timeout_ms() <= 50
        time.sleep(0.06)
        assert collector._poll_timeout_ms() == 0
        collector.publisher.maybe_publish(collector.series)
        assert collector._poll_timeout_ms() == 100
    finally:
        collector.stop()


def test_a_point_held_back_by_the_pixel_interval_reaches_the_subscriber_when_the_interval_ends():
    """End to end, a running collector: each second point follows the first within the pixel
    interval (20 ms); it reaches the subscriber about when the interval ends (it waited for
    the collector's next 100 ms idle wake-up before)."""
    context = zmq.Context.instance()
    collector = Collector("tcp://127.0.0.1:0", PARAMETERS, lambda outcome: None,
                          publish_endpoint="tcp://127.0.0.1:0", context=context)
    collector.publisher.pixel_interval_s = 0.02
    collector.start()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(collector.endpoint)
    subscriber = MapSubscriber(collector.publisher.endpoint)

    def seen_within(measured: int, timeout_s: float) -> float:
        start = time.monotonic()
        seen = None
        while time.monotonic() - start < timeout_s and (seen is None or seen.measured < measured):
            seen = subscriber.latest(2) or seen
        assert seen is not None and seen.measured >= measured, f"point {measured - 1} never arrived"
        return time.monotonic() - start

    try:
        info = wire.SeriesInfo(5, "v2", 12, (4, 4), "uint32", None, None, None, None, None)
        push.send_multipart(wire.encode_series(info, None))
        push.send_multipart(_result(5, 0))
        seen_within(1, 5.0)  # (full snapshots are repeated each second: the join is not lost)
        lags = []
        for k in range(1, 11, 2):
            time.sleep(0.03)  # the previous message is older than the interval: k goes out at once
            push.send_multipart(_result(5, k))
            seen_within(k + 1, 2.0)
            push.send_multipart(_result(5, k + 1))  # within the interval of k's message: held back
            lags.append(seen_within(k + 2, 2.0))
        assert sorted(lags)[len(lags) // 2] < 0.06, f"held-back points took {lags} s"
    finally:
        collector.stop()
        push.close(linger=0)
        subscriber.close()


def test_published_arrays_are_the_maps_in_the_order_asked_for():
    """Snapshots and pixel updates take the stacked maps (read-only views) in one go; a
    snapshot of some parameters, in another order, has the same values."""
    grid = ScanGrid((3, 5))
    state = _state(grid)
    for k in (0, 4, 7):
        _measure(state, k)
    values, statuses = state.maps.stacked()
    assert not values.flags.writeable and not statuses.flags.writeable
    np.testing.assert_array_equal(values[0], state.maps.values["saxs_intensity"])
    full = snapshot_of(1, 1, PARAMETERS, grid, state.maps)
    reordered = snapshot_of(1, 1, PARAMETERS[::-1], grid, state.maps)
    np.testing.assert_array_equal(reordered.values, full.values[::-1])
    np.testing.assert_array_equal(reordered.statuses, full.statuses[::-1])
    assert full.values.dtype == np.float32 and full.statuses.dtype == np.uint8
    np.testing.assert_array_equal(full.values[0], state.maps.values["saxs_intensity"].astype(np.float32))
    np.testing.assert_array_equal(full.statuses[1], state.maps.statuses["a_mean_nm"])


def test_a_result_after_a_quiet_interval_is_published_at_once():
    """The pixel interval counts from the last message sent, not from the owner's last call:
    calls that publish nothing (the collector's loop calls after every message it handles)
    do not hold back the next result."""
    grid = ScanGrid((2, 3))
    state = _state(grid)
    publisher = MapPublisher("tcp://127.0.0.1:0", pixel_rate_hz=20.0)
    try:
        _measure(state, 0)
        publisher.maybe_publish({3: state})  # a full snapshot (nothing to build on yet)
        assert publisher.seconds_until_due({3: state}) is None
        time.sleep(0.06)
        publisher.maybe_publish({3: state})  # nothing new: nothing sent
        _measure(state, 1)
        assert publisher.seconds_until_due({3: state}) == 0.0
        publisher.maybe_publish({3: state})
        assert publisher.pixel_updates == 1 and publisher.seconds_until_due({3: state}) is None
        _measure(state, 2)  # within the interval of that message: held back
        assert 0.0 < publisher.seconds_until_due({3: state}) <= 0.05
        publisher.maybe_publish({3: state})
        assert publisher.pixel_updates == 1
    finally:
        publisher.close()


def test_full_snapshots_of_large_maps_are_spaced_by_their_cost_and_pixel_updates_go_on():
    """A full snapshot costs CPU in proportion to the maps: they are spaced so that they take at
    most FULL_SNAPSHOT_CPU_SHARE of the collector's thread, while the new points still go out
    as pixel updates; the cost is the thread time of the last full snapshot."""
    big = ScanGrid((200, 200))
    parameters = AnalysisSetup.default().parameter_names()
    publisher = MapPublisher("tcp://127.0.0.1:0", max_rate_hz=20.0, pixel_rate_hz=1000.0)
    try:
        publisher.publish_now(1, SimpleNamespace(maps=MapState(big.shape, parameters), grid=big, results=0),
                              final=False)
        assert publisher._full_cost_s > 0.0  # 24 MB of float32 and uint8 maps were made and encoded
        assert publisher.full_interval_s == max(0.05, publisher._full_cost_s / FULL_SNAPSHOT_CPU_SHARE)

        grid = ScanGrid((2, 3))
        state = _state(grid)
        _measure(state, 0)
        publisher.maybe_publish({3: state})  # a full snapshot: nothing to build on yet
        first_full = publisher._last_full
        publisher._full_cost_s = 0.1  # as for a 300 x 300 map: one full snapshot per 5 s
        assert publisher.full_interval_s == 0.1 / FULL_SNAPSHOT_CPU_SHARE
        for k in (1, 2):
            time.sleep(0.1)  # past 1 / max_rate_hz, long before the spaced interval
            _measure(state, k)
            publisher.maybe_publish({3: state})
        assert publisher._last_full == first_full and publisher.pixel_updates == 2

        publisher._full_cost_s = 0.0  # a cheap snapshot again: 1 / max_rate_hz
        time.sleep(0.06)
        _measure(state, 3)
        publisher.maybe_publish({3: state})
        assert publisher._last_full > first_full and publisher.pixel_updates == 2
    finally:
        publisher.close()


def test_a_subscriber_joining_a_running_scan_gets_a_full_snapshot_at_once():
    """Full snapshots of large maps are spaced by seconds; a subscriber that joins in between
    could not apply the pixel updates, so its subscription (seen on the XPUB socket) brings a
    full snapshot at once, and it then follows the pixel updates."""
    grid = ScanGrid((3, 4))
    state = _state(grid)
    publisher = MapPublisher("tcp://127.0.0.1:0", max_rate_hz=20.0, pixel_rate_hz=1000.0, repeat_interval_s=60.0)
    subscriber = None
    try:
        _measure(state, 0)
        publisher.maybe_publish({5: state})  # the first full snapshot, before anyone listens
        publisher._full_cost_s = 1.0  # as for a very large map: the next full one in 50 s
        time.sleep(0.1)
        _measure(state, 1)
        publisher.maybe_publish({5: state})  # a pixel update nobody receives: the series is behind
        assert publisher.pixel_updates == 1
        subscriber = MapSubscriber(publisher.endpoint)
        deadline = time.monotonic() + 5.0
        got = None
        while time.monotonic() < deadline and got is None:
            publisher.maybe_publish({5: state})
            got = subscriber.latest(20)
        assert publisher.joins == 1 and got is not None and got.measured == 2 and not got.final
        assert got.map("saxs_intensity")[0, 1] == 101.0
        time.sleep(0.01)
        _measure(state, 2)  # then it follows the pixel updates
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and (got is None or got.measured < 3):
            publisher.maybe_publish({5: state})
            got = subscriber.latest(20) or got
        assert got.measured == 3 and got.map("saxs_intensity")[0, 2] == 102.0 and subscriber.missed_updates == 0
    finally:
        publisher.close()
        if subscriber is not None:
            subscriber.close()


def test_a_subscriber_joining_when_nothing_changed_gets_the_newest_snapshot_again():
    grid = ScanGrid((2, 2))
    state = _state(grid)
    publisher = MapPublisher("tcp://127.0.0.1:0", max_rate_hz=20.0, repeat_interval_s=60.0)
    subscriber = None
    try:
        _measure(state, 0)
        publisher.publish_now(5, state, final=True)
        time.sleep(0.06)
        subscriber = MapSubscriber(publisher.endpoint)
        deadline = time.monotonic() + 5.0
        got = None
        while time.monotonic() < deadline and got is None:
            publisher.maybe_publish({})
            got = subscriber.latest(20)
        assert got is not None and got.final and got.measured == 1 and publisher.repeats == 1
    finally:
        publisher.close()
        if subscriber is not None:
            subscriber.close()


def test_maps_laid_out_anew_go_out_whole_not_as_pixel_updates():
    """When the scan's documents move frames, the collector's series gets new maps: a point may
    hold another frame with the same count, so the change goes out as a full snapshot (with the
    new grid), not as the points whose count changed."""
    grid = ScanGrid((2, 2))
    state = _state(grid)
    publisher = MapPublisher("tcp://127.0.0.1:0", max_rate_hz=0.1, pixel_rate_hz=1000.0)
    subscriber = MapSubscriber(publisher.endpoint)
    try:
        time.sleep(0.2)  # the subscription reaches the publisher first
        _measure(state, 0)
        _measure(state, 1)
        publisher.maybe_publish({4: state})  # the first full snapshot
        moved = ScanGrid((2, 2), start_um=(10.0, 20.0))
        state.grid, state.maps = moved, MapState(moved.shape, PARAMETERS)
        for k, frame in ((0, 1), (1, 0)):  # the two frames swap places: counts stay 1 and 1
            row, column = moved.position(k)
            state.maps.update(row, column, [100.0 + frame, np.nan], [Status.OK, Status.MISSING_PEAK])
        state.results += 1
        time.sleep(0.01)
        publisher.maybe_publish({4: state})
        assert publisher.pixel_updates == 0
        deadline, got = time.monotonic() + 5.0, None
        while time.monotonic() < deadline and (got is None or got.grid.start_um != (10.0, 20.0)):
            publisher.maybe_publish({4: state})
            got = subscriber.latest(20) or got
        assert got.grid.start_um == (10.0, 20.0) and got.map("saxs_intensity")[0, 0] == 101.0
    finally:
        publisher.close()
        subscriber.close()


def test_a_grid_placed_on_the_motor_axes_goes_out_whole():
    """The scan's documents may give the same maps their grid in micrometres: pixel updates do
    not carry the grid, so that change goes out as a full snapshot."""
    grid = ScanGrid((2, 2))
    state = _state(grid)
    publisher = MapPublisher("tcp://127.0.0.1:0", max_rate_hz=0.1, pixel_rate_hz=1000.0)
    try:
        _measure(state, 0)
        publisher.maybe_publish({4: state})
        first_full = publisher._last_full
        state.grid = ScanGrid((2, 2), start_um=(1.0, 2.0))
        _measure(state, 1)
        time.sleep(0.01)
        publisher.maybe_publish({4: state})
        assert publisher.pixel_updates == 0 and publisher._last_full > first_full
    finally:
        publisher.close()
