"""The steering endpoint on its own sockets: maps from the collector's publisher while a series
runs, final maps that a snapshot never replaces, waiting for a series, a rectangle sent from the
viewer's region panel, garbage on the socket."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from analysis.map_state import MapState
from analysis.scan_grid import ScanGrid
from analysis.status import Status
from stream.published_state import MapPublisher
from stream.steering_client import SteeringClient, SteeringError
from stream.steering_server import MapBook, SteeringServer
from analysis.steering_maps import SteeringMaps

pytestmark = pytest.mark.timeout(60)

GRID = ScanGrid((9, 11), snake=True, start_um=(0.0, 0.0), step_um=(2.0, 2.0), axis_names=("sample_y", "sample_x"))


class _Series:
    """What MapPublisher reads of a collector's series."""

    def __init__(self, maps: MapState) -> None:
        self.maps, self.grid, self.results = maps, GRID, 0


def crystal_state(rows_done: int) -> MapState:
    state = MapState(GRID.shape, ["saxs_intensity"])
    rows, cols = GRID.axes_um()
    for r in range(rows_done):
        for c in range(GRID.shape[1]):
            inside = (rows[r] - 8.0) ** 2 + (cols[c] - 10.0) ** 2 <= 25.0
            state.update(r, c, {"saxs_intensity": 900.0 if inside else 5.0})
    return state


@pytest.fixture
def server():
    publisher = MapPublisher("tcp://127.0.0.1:0", max_rate_hz=50.0)
    steering = SteeringServer("tcp://127.0.0.1:0", publisher.endpoint).start()
    yield steering, publisher
    steering.stop()
    publisher.close()


def test_running_series_is_steered_from_its_published_snapshot(server):
    steering, publisher = server
    series = _Series(crystal_state(6))
    series.results = 66
    client = SteeringClient(steering.endpoint, timeout_s=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not steering.book.all():
        publisher.publish_now(7, series, final=False)
        time.sleep(0.05)
    status = client.status()
    assert [(s["series_id"], s["final"], s["measured"]) for s in status["series"]] == [(7, False, 66)]
    reply = client.suggest(strategies=["crystal"], fine_step_um=1.0)
    assert reply["basis_series_id"] == 7 and reply["basis_final"] is False and reply["suggestions"]
    # waiting for the series to end: the final maps arrive while the request waits
    done = crystal_state(9)

    class Outcome:
        class info:
            series_id, count_time_s = 7, 0.25
        grid, maps = GRID, done

    threading.Timer(0.5, steering.add_outcome, args=(Outcome,)).start()
    started = time.monotonic()
    final = client.suggest(strategies=["crystal"], fine_step_um=1.0, series_id=7, wait_s=10)
    assert final["basis_final"] is True and 0.3 < time.monotonic() - started < 10
    # the series' count time sets the dwell of the time estimate
    first = final["suggestions"][0]
    assert first["estimated_time_s"] == pytest.approx(first["n_points"] * (0.25 + 0.05) + 2.0)
    # a late snapshot never replaces final maps
    publisher.publish_now(7, _Series(crystal_state(2)), final=False)
    time.sleep(0.3)
    assert client.status()["series"][0]["final"] is True and client.status()["series"][0]["measured"] == 99


def test_waiting_for_a_series_that_never_comes_is_a_clear_error(server):
    steering, _ = server
    client = SteeringClient(steering.endpoint, timeout_s=10)
    with pytest.raises(SteeringError, match="no maps to steer from"):
        client.suggest(strategies=["crystal"])
    with pytest.raises(SteeringError, match="no maps of series 5"):
        client.suggest(strategies=["crystal"], series_id=5, wait_s=0.3)
    with pytest.raises(SteeringError, match="must be a list of series ids"):
        client.suggest(strategies=["crystal"], wait_for_series="all")


def test_garbage_requests_get_error_replies_and_the_server_goes_on(server):
    steering, _ = server
    socket = zmq.Context.instance().socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(steering.endpoint)
    replies = []
    for parts in ([b"\x00\x01garbage"], [b"[1, 2, 3]"], [b"{}", b"{}"], [b'{"command": "suggest"}']):
        socket.send_multipart(parts)
        assert socket.poll(5000)
        replies.append(socket.recv().decode())
    socket.close()
    assert "not JSON" in replies[0] and "not a JSON object" in replies[1] and "2 parts" in replies[2]
    assert "needs 'strategies'" in replies[3]
    assert all('"ok":false' in r for r in replies)
    assert SteeringClient(steering.endpoint).status()["errors"] == 4


def test_no_reply_is_a_steering_error_not_a_hang():
    socket = zmq.Context.instance().socket(zmq.ROUTER)  # accepts, never answers
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    try:
        with pytest.raises(SteeringError, match="no reply"):
            SteeringClient(f"tcp://127.0.0.1:{port}", timeout_s=0.3).status()
    finally:
        socket.close(linger=0)


def test_book_keeps_final_maps_and_forgets_the_oldest():
    book = MapBook(max_series=3)
    values = np.zeros((1, *GRID.shape))
    statuses = np.full((1, *GRID.shape), int(Status.OK))
    for k in range(5):
        book.add(SteeringMaps(k, GRID, ("saxs_intensity",), values, statuses, final=True))
    assert [m.series_id for m in book.all()] == [2, 3, 4]
    book.add(SteeringMaps(4, GRID, ("saxs_intensity",), values + 1, statuses, final=False))
    assert book.get(4).final and book.get(4).values.max() == 0


def test_rectangle_sent_from_the_viewer_becomes_a_user_suggestion(server, qtbot):
    from viewer.region_panel import RegionPanel

    steering, _ = server
    steering.add_outcome(type("Outcome", (), {"info": type("Info", (), {"series_id": 3, "count_time_s": None}),
                                              "grid": GRID, "maps": crystal_state(9)}))
    panel = RegionPanel(steering_endpoint=steering.endpoint)
    qtbot.addWidget(panel)
    panel.set_grid(GRID, 3)
    panel.set_region(4.0, 8.0, 2.0, 6.0)
    assert panel.send_button.isEnabled()
    with qtbot.waitSignal(panel.sent, timeout=10000) as sent:
        panel.send_button.click()
    assert sent.args[0] == "sent to steering: 1 region waiting" and panel.sent_label.text() == sent.args[0]
    assert steering.regions == [{"x_range_um": [4.0, 8.0], "y_range_um": [2.0, 6.0], "series_id": 3}]
    reply = SteeringClient(steering.endpoint).suggest(strategies=["user", "crystal"], fine_step_um=1.0)
    user = [s for s in reply["suggestions"] if s["strategies"] == ["user"]]
    assert len(user) == 1 and user[0]["args"] == ["sample_y", 2.0, 6.0, 5, "sample_x", 4.0, 8.0, 5]
    assert reply["suggestions"][0] is not None and reply["suggestions"][0]["strategies"] == ["user"]
    crystal_points = [s for s in reply["suggestions"] if s["strategies"] != ["user"]]
    assert crystal_points, "the crystal strategy still suggests its own regions beside the user's"
    # without an endpoint the button is off; a dead endpoint is reported, not hung on
    assert not RegionPanel().send_button.isEnabled()
    dead = RegionPanel(steering_endpoint="tcp://127.0.0.1:9")
    qtbot.addWidget(dead)
    dead.set_grid(GRID, 3)
    dead.set_region(4.0, 8.0, 2.0, 6.0)
    import viewer.region_panel as module

    module.SEND_TIMEOUT_S, saved = 0.3, module.SEND_TIMEOUT_S
    try:
        with qtbot.waitSignal(dead.sent, timeout=10000) as failed:
            dead.send()
    finally:
        module.SEND_TIMEOUT_S = saved
    assert failed.args[0].startswith("steering: no reply")


@pytest.mark.timeout(240)
def test_serve_command_answers_on_its_steering_endpoint(tmp_path):
    import re
    import subprocess
    import sys

    command = [sys.executable, "-m", "stream.cli", "serve", "--detector", "tcp://127.0.0.1:9", "--publish",
               "tcp://127.0.0.1:0", "--detail", "tcp://127.0.0.1:0", "--steering", "tcp://127.0.0.1:0",
               "--output", str(tmp_path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ready = ""
        for line in process.stdout:
            if "braggmap: ready" in line:
                ready = line
                break
        match = re.search(r"steering on (tcp://127\.0\.0\.1:\d+)", ready)
        assert match, ready or "serve ended before it was ready"
        with SteeringClient(match.group(1), timeout_s=20) as client:
            assert client.status()["series"] == []
            with pytest.raises(SteeringError, match="no maps to steer from"):
                client.suggest(strategies=["crystal"])
    finally:
        process.terminate()
        process.wait(20)
