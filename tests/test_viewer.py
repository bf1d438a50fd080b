"""The live viewer, headless: map snapshots go through a real PUB socket on 127.0.0.1 into the
viewer; what is drawn (image, axes, colour range, histogram, profile, region request) is checked
and screenshots are saved under test-artifacts/."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import zmq
from PySide6 import QtCore, QtGui, QtWidgets

from analysis.crystal_region import crystal_region, profile_vs_distance
from analysis.errors import ConfigurationError
from analysis.map_parameters import parameter_names
from analysis.map_state import MapState
from analysis.scan_grid import ScanGrid
from stream.published_state import MapPublisher, MapSnapshot, encode_snapshot
from viewer.app import ViewerWindow
from viewer.map_coordinates import image_placement, pixel_at, position_um
from analysis.scan_request import motor_range, scan_request

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
PEAKS = ("saxs_1", "saxs_2", "saxs_3", "saxs_4", "waxs_010", "waxs_020", "waxs_110", "waxs_m110")
PARAMETERS = parameter_names(PEAKS)
GRID = ScanGrid((21, 25), start_um=(10.0, -3.0), step_um=(0.5, 0.25), axis_names=("piezo_y", "piezo_x"))


def crystal_snapshot(grid: ScanGrid = GRID, version: int = 1, measured_rows: int | None = None,
                     series_id: int = 3, parameters=PARAMETERS) -> MapSnapshot:
    """A round supercrystal: intensity high inside radius 0.35 of the map, each parameter a
    different linear function of the radius inside, NaN outside (intensity low outside)."""
    ny, nx = grid.shape
    rows, columns = np.mgrid[0:ny, 0:nx]
    radius = np.hypot((rows - (ny - 1) / 2) / ny, (columns - (nx - 1) / 2) / nx)
    inside = radius < 0.35
    values = np.empty((len(parameters), ny, nx), np.float32)
    for i, name in enumerate(parameters):
        values[i] = np.where(inside, 10.0 + i - (3.0 + 0.1 * i) * radius, np.nan)
    values[parameters.index("saxs_intensity")] = np.where(inside, 1000.0 - 500 * radius, 40.0)
    values[parameters.index("n_waxs_peaks")] = np.where(inside, 4.0, 0.0)
    statuses = np.where(np.isfinite(values), 0, 7).astype(np.uint8)
    measured_rows = ny if measured_rows is None else measured_rows
    values[:, measured_rows:, :] = np.nan
    statuses[:, measured_rows:, :] = 255
    return MapSnapshot(series_id, version, tuple(parameters), grid, values, statuses, measured_rows * nx,
                       final=measured_rows == ny)


@pytest.fixture
def pub():
    socket = zmq.Context.instance().socket(zmq.PUB)
    socket.setsockopt(zmq.LINGER, 0)
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    yield socket, f"tcp://127.0.0.1:{port}"
    socket.close()


@pytest.fixture
def window_on(qtbot):
    windows = []

    def make(endpoint, **kwargs):
        window = ViewerWindow(endpoint, **kwargs)
        qtbot.addWidget(window)
        window.show()
        qtbot.waitExposed(window)
        windows.append(window)
        return window

    yield make
    for window in windows:
        window.close()


def publish_until_drawn(qtbot, socket, window, snapshot, timeout_s=10.0):
    """Publish ``snapshot`` until the viewer draws it (a SUB socket joins after a moment)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        socket.send_multipart(encode_snapshot(snapshot))
        qtbot.wait(60)
        shown = window.snapshot
        if shown is not None and (shown.series_id, shown.version) == (snapshot.series_id, snapshot.version):
            qtbot.wait(50)  # let the view apply its new range and layout
            return
    raise AssertionError(f"the viewer never drew snapshot {snapshot.version}")


def _mouse(viewport, kind, point, buttons):
    """Send a real mouse event (QTest's mouseMove carries no buttons, so pyqtgraph sees no drag)."""
    button = QtCore.Qt.MouseButton.NoButton if kind == QtCore.QEvent.Type.MouseMove else QtCore.Qt.MouseButton.LeftButton
    event = QtGui.QMouseEvent(kind, QtCore.QPointF(point), QtCore.QPointF(viewport.mapToGlobal(point)),
                              button, buttons, QtCore.Qt.KeyboardModifier.NoModifier)
    QtWidgets.QApplication.sendEvent(viewport, event)


def save(window, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    assert window.grab().save(str(ARTIFACTS / name))


def image_rect(panel) -> QtCore.QRectF:
    return panel.image.mapRectToParent(panel.image.boundingRect())


# -- the map -----------------------------------------------------------------------------------------
def test_map_is_the_snapshot_with_nan_blank_um_axes_and_robust_colours(qtbot, pub, window_on):
    socket, endpoint = pub
    window = window_on(endpoint)
    snapshot = crystal_snapshot(measured_rows=15)
    publish_until_drawn(qtbot, socket, window, snapshot)
    assert window.selector.current() == "saxs_intensity"  # headline maps first
    window.selector.select("a_mean_nm")
    panel, values = window.map_panel, snapshot.map("a_mean_nm")
    np.testing.assert_array_equal(panel.image.image, values)  # NaN where missing
    rect = image_rect(panel)
    assert (rect.left(), rect.right()) == pytest.approx((-3.0 - 0.125, -3.0 + 25 * 0.25 - 0.125))
    assert (rect.top(), rect.bottom()) == pytest.approx((10.0 - 0.25, 10.0 + 21 * 0.5 - 0.25))
    assert panel.plot_item.getAxis("bottom").labelText == "piezo_x (um)"
    assert panel.plot_item.getAxis("left").labelText == "piezo_y (um)"
    finite = values[np.isfinite(values)]
    expected_levels = tuple(np.percentile(finite.astype(np.float64), [2, 98]))
    assert panel.levels == pytest.approx(expected_levels)
    assert tuple(panel.image.getLevels()) == pytest.approx(expected_levels)
    assert tuple(panel.colour_bar.levels()) == pytest.approx(expected_levels)
    assert "nm" in panel.colour_bar.getAxis("left").labelText
    panel.image.render()
    qimage = panel.image.qimage
    assert qimage.pixelColor(12, 10).alpha() == 255  # inside the crystal
    assert qimage.pixelColor(0, 0).alpha() == 0  # outside: NaN, blank
    assert qimage.pixelColor(12, 18).alpha() == 0  # not measured yet
    assert "15 of 525" not in window.status.text() and "375 of 525" in window.status.text()
    save(window, "viewer_map_a_mean.png")


def test_fixed_colour_ranges_and_manual_levels(qtbot, pub, window_on):
    socket, endpoint = pub
    window = window_on(endpoint)
    publish_until_drawn(qtbot, socket, window, crystal_snapshot())
    window.selector.select("n_waxs_peaks")
    assert window.map_panel.levels == (0.0, 4.0)  # the registry's fixed range
    bar = window.map_panel.colour_bar
    bar.setLevels((1.0, 2.0))  # as the user's drag of the handles does, then releases them:
    bar.sigLevelsChangeFinished.emit(bar)
    assert not window.auto_range.isChecked()
    publish_until_drawn(qtbot, socket, window, crystal_snapshot(version=2))
    assert window.map_panel.levels == (1.0, 2.0) and tuple(window.map_panel.image.getLevels()) == (1.0, 2.0)
    window.selector.select("gamma_deg")  # another unit: back to the automatic range
    assert window.auto_range.isChecked()
    finite = window.snapshot.map("gamma_deg")
    finite = finite[np.isfinite(finite)].astype(np.float64)
    assert window.map_panel.levels == pytest.approx(tuple(np.percentile(finite, [2, 98])))


def test_parameter_switch_updates_map_and_histogram(qtbot, pub, window_on):
    socket, endpoint = pub
    window = window_on(endpoint)
    snapshot = crystal_snapshot()
    publish_until_drawn(qtbot, socket, window, snapshot)
    offered = [window.selector.itemData(i) for i in range(window.selector.count())]
    assert sorted(offered) == sorted(PARAMETERS)
    assert offered[:9] == ["saxs_intensity", "a_mean_nm", "a_ratio", "gamma_deg", "phi_deg", "i_al", "psi_deg",
                           "delta_psi_deg", "g_q"]
    for name in ("gamma_deg", "waxs_010.q0_nm", "saxs_intensity"):
        window.selector.select(name)
        values = snapshot.map(name)
        np.testing.assert_array_equal(window.map_panel.image.image, values)
        finite = values[np.isfinite(values)].astype(np.float64)
        counts, edges = window.histogram.counts, window.histogram.edges
        assert counts.sum() == finite.size
        expected, expected_edges = np.histogram(finite, bins=counts.size, range=(finite.min(), finite.max()))
        np.testing.assert_array_equal(counts, expected)
        np.testing.assert_allclose(edges, expected_edges)
        x, y = window.histogram.curve.getData()
        np.testing.assert_array_equal(y, counts)
        assert window.histogram.level_lines[0].value() == pytest.approx(window.map_panel.levels[0])
    save(window, "viewer_map_saxs_intensity.png")


def test_profile_against_distance_to_the_crystal_edge(qtbot, pub, window_on):
    socket, endpoint = pub
    window = window_on(endpoint)
    snapshot = crystal_snapshot()
    publish_until_drawn(qtbot, socket, window, snapshot)
    window.selector.select("a_mean_nm")
    profile = window.profile.profile
    region = crystal_region(snapshot.map("saxs_intensity"), step_um=GRID.step_um)
    expected = profile_vs_distance(snapshot.map("a_mean_nm"), region.distance_um, inside=region.inside,
                                   bin_width_um=0.25)
    np.testing.assert_allclose(profile.bin_centres_um, expected.bin_centres_um)
    np.testing.assert_allclose(profile.mean, expected.mean, equal_nan=True)
    np.testing.assert_array_equal(profile.count, expected.count)
    assert profile.count.sum() == region.inside.sum()
    # a_mean falls with the radius: it grows with the distance to the edge
    mean = profile.mean[profile.count > 0]
    assert mean[-1] > mean[0]
    x, y = window.profile.curve.getData()
    np.testing.assert_allclose(x, profile.bin_centres_um[profile.count > 0])
    np.testing.assert_allclose(y, mean)
    save(window, "viewer_profile.png")


def test_negative_steps_and_snake_clicks_and_hover_find_the_right_frame(qtbot, pub, window_on):
    socket, endpoint = pub
    grid = ScanGrid((6, 8), snake=True, start_um=(5.0, 2.0), step_um=(-0.5, 1.0))
    window = window_on(endpoint, detail_endpoint=None)
    snapshot = crystal_snapshot(grid)
    publish_until_drawn(qtbot, socket, window, snapshot)
    np.testing.assert_array_equal(window.map_panel.image.image, snapshot.map("saxs_intensity")[::-1])
    rect = image_rect(window.map_panel)
    assert (rect.top(), rect.bottom()) == pytest.approx((5.0 - 5 * 0.5 - 0.25, 5.0 + 0.25))
    viewport = window.map_panel.plot.viewport()
    for row, column in ((0, 0), (1, 0), (5, 7), (3, 2)):
        point = window.map_panel.widget_point_of(*position_um(grid, row, column))
        _mouse(viewport, QtCore.QEvent.Type.MouseMove, point, QtCore.Qt.MouseButton.NoButton)
        qtbot.wait(100)
        assert f"frame {grid.frame_index(row, column)})" in window.hover_label.text(), (row, column, point, window.hover_label.text(), window.map_panel.view_box.viewRange())
        qtbot.mouseClick(viewport, QtCore.Qt.MouseButton.LeftButton, pos=point)
        assert window.selected == (snapshot.series_id, row, column)
    qtbot.waitUntil(lambda: "no frame-detail endpoint" in window.detail.header.text(), timeout=3000)


@pytest.mark.parametrize("grid", [GRID, ScanGrid((4, 3), snake=True, step_um=(-2.0, 0.1)),
                                  ScanGrid((1, 7), start_um=(-1.0, 3.0), step_um=(1.0, -0.3))])
def test_map_coordinates_round_trip(grid):
    placement = image_placement(grid)
    for row in range(grid.shape[0]):
        for column in range(grid.shape[1]):
            x, y = position_um(grid, row, column)
            assert placement.x0_um < x < placement.x0_um + placement.width_um
            assert placement.y0_um < y < placement.y0_um + placement.height_um
            assert pixel_at(grid, x, y) == (row, column)
            assert pixel_at(grid, x + 0.45 * grid.step_um[1], y - 0.45 * grid.step_um[0]) == (row, column)
    assert pixel_at(grid, placement.x0_um - 0.01, placement.y0_um) is None


# -- rate and dropping ---------------------------------------------------------------------------
def test_only_the_newest_snapshot_is_drawn_and_redraws_are_capped(qtbot, pub, window_on):
    socket, endpoint = pub
    window = window_on(endpoint)
    publish_until_drawn(qtbot, socket, window, crystal_snapshot(version=1))
    redraws_before, started = window.redraws, time.monotonic()
    n = 300
    for version in range(2, n + 1):
        socket.send_multipart(encode_snapshot(crystal_snapshot(version=version, measured_rows=version % 21)))
        if version % 20 == 0:
            QtWidgets.QApplication.processEvents()
    publish_until_drawn(qtbot, socket, window, crystal_snapshot(version=n + 1))
    elapsed = time.monotonic() - started
    redraws = window.redraws - redraws_before
    assert redraws <= 20 * elapsed * 1.25 + 2, (redraws, elapsed)
    assert redraws < n / 2
    assert window.feed.skipped > n / 2
    times = np.diff(list(window.redraw_times))
    assert times.min() >= 0.049  # 20 Hz at most
    np.testing.assert_array_equal(window.map_panel.image.image, crystal_snapshot(version=n + 1).map("saxs_intensity"))


def test_a_slow_viewer_never_blocks_the_publisher(qtbot, window_on):
    grid = ScanGrid((61, 61))
    maps = MapState(grid.shape, list(PARAMETERS))
    state = SimpleNamespace(maps=maps, grid=grid, results=0)
    publisher = MapPublisher("tcp://127.0.0.1:0", repeat_interval_s=0.3)
    try:
        window = window_on(publisher.endpoint, start=False)  # subscribed, never reading
        qtbot.wait(300)
        started = time.monotonic()
        for k in range(200):
            maps.update(k // 61, k % 61, np.full(len(PARAMETERS), float(k)), np.zeros(len(PARAMETERS), np.int32))
            state.results = k + 1
            publisher.publish_now(1, state, final=False)
        assert time.monotonic() - started < 5.0
        maps.update(5, 5, np.full(len(PARAMETERS), -1.0), np.zeros(len(PARAMETERS), np.int32))
        publisher.publish_now(1, state, final=True)  # once, as the collector does (may be dropped at the HWM)
        window.feed.start()
        # the collector's loop goes on calling maybe_publish (its finished series are gone)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (window.snapshot is None or not window.snapshot.final):
            publisher.maybe_publish({})
            qtbot.wait(20)
        assert window.snapshot is not None and window.snapshot.final, "the final snapshot never arrived"
        assert window.snapshot.version == 201 and window.snapshot.map("saxs_intensity")[5, 5] == -1.0
        # the repeats of the final snapshot go on, and redraw nothing
        redraws, received, repeats = window.redraws, window.feed.received, publisher.repeats
        until = time.monotonic() + 1.5
        while time.monotonic() < until:
            publisher.maybe_publish({})
            qtbot.wait(20)
        assert publisher.repeats >= repeats + 3
        assert (window.redraws, window.feed.received) == (redraws, received)
    finally:
        publisher.close()


def test_61_by_61_scan_at_200_frames_per_second_stays_responsive(qtbot, pub, window_on):
    socket, endpoint = pub
    window = window_on(endpoint)
    grid = ScanGrid((61, 61), step_um=(0.1, 0.1))
    full = crystal_snapshot(grid, measured_rows=61)
    ticks: list[float] = []
    probe = QtCore.QTimer()
    probe.setInterval(20)
    probe.timeout.connect(lambda: ticks.append(time.monotonic()))
    stop = threading.Event()
    published = []

    def service():  # the last 4 s of the scan: 200 frames/s, snapshots at 20 Hz (4 x the collector's rate)
        values, statuses = full.values.copy(), full.statuses.copy()
        version, measured = 0, grid.n_points - 800
        while not stop.is_set() and measured < grid.n_points:
            measured = min(measured + 10, grid.n_points)
            version += 1
            shown = values.copy().reshape(len(PARAMETERS), -1)
            shown[:, measured:] = np.nan
            snapshot = MapSnapshot(9, version, full.parameters, grid, shown.reshape(values.shape), statuses,
                                   measured, measured == grid.n_points)
            socket.send_multipart(encode_snapshot(snapshot))
            published.append(snapshot)
            time.sleep(0.05)

    publish_until_drawn(qtbot, socket, window, crystal_snapshot(grid, version=0, series_id=9, measured_rows=0))
    thread = threading.Thread(target=service)
    probe.start()
    started, redraws_before = time.monotonic(), window.redraws
    thread.start()
    try:
        qtbot.waitUntil(lambda: not thread.is_alive(), timeout=60000)
    finally:
        stop.set()
        thread.join()
    publish_until_drawn(qtbot, socket, window, published[-1])
    probe.stop()
    elapsed = time.monotonic() - started
    gaps = np.diff(ticks)
    assert gaps.max() < 0.5, f"the event loop stalled for {gaps.max():.2f} s"
    assert window.redraws - redraws_before <= 20 * elapsed * 1.25 + 2
    assert window.snapshot.final and window.snapshot.measured == grid.n_points
    save(window, "viewer_61x61.png")


# -- region request -------------------------------------------------------------------------------
def test_rectangle_drawn_on_the_map_becomes_plan_arguments(qtbot, pub, window_on, tmp_path):
    socket, endpoint = pub
    window = window_on(endpoint)
    publish_until_drawn(qtbot, socket, window, crystal_snapshot())
    panel, requests = window.map_panel, window.region_panel
    requests.draw_button.click()
    assert panel.view_box.drawing
    viewport = panel.plot.viewport()
    start, end = panel.widget_point_of(-2.0, 11.0), panel.widget_point_of(1.0, 17.0)
    left = QtCore.Qt.MouseButton.LeftButton
    _mouse(viewport, QtCore.QEvent.Type.MouseButtonPress, start, left)
    for step in range(1, 11):
        point = start + (end - start) * (step / 10)
        _mouse(viewport, QtCore.QEvent.Type.MouseMove, point, left)
    _mouse(viewport, QtCore.QEvent.Type.MouseButtonRelease, end, QtCore.Qt.MouseButton.NoButton)
    region = panel.region()
    assert region is not None, "no rectangle was drawn"
    pixel_um = 7.0 / panel.plot.height() * 2  # a couple of screen pixels
    assert region == pytest.approx((-2.0, 1.0, 11.0, 17.0), abs=max(pixel_um, 0.05))
    assert not requests.draw_button.isChecked() and not panel.view_box.drawing
    request = requests.request
    assert request.fast.name == "piezo_x" and request.slow.name == "piezo_y"
    assert request.fast.step_um == 0.125 and request.slow.step_um == 0.25  # half the map's steps
    assert request.fast.start_um == pytest.approx(-2.0) and request.fast.stop_um == pytest.approx(1.0)
    assert request.slow.start_um == pytest.approx(11.0) and request.slow.stop_um == pytest.approx(17.0)
    assert (request.fast.num, request.slow.num) == (25, 25)
    assert json.loads(requests.text.toPlainText()) == request.as_dict()
    requests.slow_step.setValue(1.0)
    assert requests.request.slow.step_um == 1.0 and requests.request.slow.num == 7
    exported = requests.export_to(tmp_path / "request.json")
    data = json.loads(exported.read_text())
    assert data["plan"] == "grid_scan" and data["series_id"] == 3
    assert data["args"] == ["piezo_y", request.slow.start_um, data["motors"][0]["stop_um"],
                            data["motors"][0]["num"], "piezo_x", request.fast.start_um, request.fast.stop_um,
                            request.fast.num]
    requests.copy()
    assert json.loads(QtGui.QGuiApplication.clipboard().text()) == data
    save(window, "viewer_region.png")
    panel.set_region(0.01, 1.04, 12.0, 13.0)  # e.g. after dragging the handles
    assert requests.request.fast.num == 9 and requests.request.fast.stop_um == 1.0
    requests.clear_button.click()
    assert panel.region_roi is None and requests.request is None


def test_motor_ranges_and_bad_steps():
    assert motor_range("x", 3.0, 1.0, 0.5) == motor_range("x", 1.0, 3.0, -0.5)
    r = motor_range("x", 1.0, 3.0, 0.5)
    assert (r.start_um, r.stop_um, r.num, r.step_um) == (1.0, 3.0, 5, 0.5)
    r = motor_range("x", 0.0, 1.0, 0.3, snap=False)
    assert (r.num, r.stop_um) == (4, 0.9)
    r = motor_range("x", 0.04, 1.06, 0.1)
    assert (r.start_um, r.stop_um, r.num) == (0.0, 1.1, 12)
    assert motor_range("x", 2.0, 2.0, 0.1).num == 1
    for step in (0.0, float("nan"), float("inf")):
        with pytest.raises(ConfigurationError, match="step"):
            motor_range("x", 0.0, 1.0, step)
    request = scan_request(GRID, (0.0, 1.0), (10.0, 12.0), (0.5, 0.25), series_id=4)
    assert request.n_points == 5 * 5 and request.plan_args()[0] == "piezo_y"


# -- entry points ------------------------------------------------------------------------------------
def test_python_m_viewer_runs_and_checks_its_options(pub):
    import os
    import subprocess
    import sys

    socket, endpoint = pub
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    run = subprocess.run([sys.executable, "-m", "viewer", "--maps", endpoint, "--detail", "tcp://127.0.0.1:1",
                          "--quit-after", "0.5"], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr
    bad = subprocess.run([sys.executable, "-m", "viewer", "--rate", "50"], capture_output=True, text=True,
                         timeout=120, env=env)
    assert bad.returncode == 2 and "--rate" in bad.stderr


def test_braggmap_view_starts_the_viewer_module(monkeypatch):
    import subprocess
    import sys

    from stream import cli

    calls = []
    monkeypatch.setattr(subprocess, "call", lambda command: calls.append(command) or 0)
    assert cli.main(["view", "--maps", "tcp://127.0.0.1:6001", "--detail", "tcp://127.0.0.1:6002"]) == 0
    assert calls == [[sys.executable, "-m", "viewer", "--maps", "tcp://127.0.0.1:6001",
                      "--detail", "tcp://127.0.0.1:6002"]]
    args = cli.build_parser().parse_args(["serve"])
    assert (args.publish, args.detail) == ("tcp://127.0.0.1:5557", "tcp://127.0.0.1:5558")
    assert cli.build_parser().parse_args(["view"]).maps == args.publish
    assert cli.build_parser().parse_args(["demo", "--no-viewer"]).no_viewer
