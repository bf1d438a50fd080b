"""End to end: detector simulator -> running Service -> viewer subscribed to its maps; the map
grows while the scan runs, and a click shows the frame detail served by the same service."""

from __future__ import annotations

import queue
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PySide6 import QtCore

from analysis.status import Status
from stream.analysis_setup import AnalysisSetup
from stream.service import Service, ServiceConfig

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
GRID = (4, 4)


@pytest.fixture(scope="module")
def scan_master(tmp_path_factory):
    from simulators.synthetic_scan import SyntheticScanConfig, write_synthetic_scan

    return write_synthetic_scan(tmp_path_factory.mktemp("scan"), SyntheticScanConfig(grid_shape=GRID))


def start_simulator(master: Path, rate_hz: float) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "simulators", "serve", str(master), "--endpoint", "tcp://127.0.0.1:0",
         "--protocol", "v2", "--header-detail", "all", "--rate", str(rate_hz), "--wait-for-peers", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    assert line.startswith("endpoint "), process.stderr.read()
    return process, line.split()[1]


@pytest.mark.slow
def test_viewer_follows_a_running_service_and_shows_frame_details(scan_master, qtbot):
    from viewer.app import ViewerWindow

    # Frames sent during the worker's start-up and its build of the series' analyzer wait in the
    # ingest; in batches they would all land between two snapshots (5 per second). One frame at a
    # time they land over several snapshots, so the map is seen growing.
    simulator, endpoint = start_simulator(scan_master, rate_hz=2.0)
    service = Service(ServiceConfig(setup=AnalysisSetup.default(), detector_endpoint=endpoint, protocol="v2",
                                    n_workers=1, overflow="block", series_timeout_s=30.0, worker_max_batch=1))
    window = None
    try:
        service.start()
        window = ViewerWindow(service.publish_endpoint, service.detail_endpoint)
        qtbot.addWidget(window)
        window.show()
        measured_seen = []
        outcome = None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and (outcome is None or window.snapshot is None or not window.snapshot.final):
            qtbot.wait(50)
            if window.snapshot is not None and (not measured_seen or measured_seen[-1] != window.snapshot.measured):
                measured_seen.append(window.snapshot.measured)
            if outcome is None:
                try:
                    outcome = service.wait_for_series(0)
                except queue.Empty:
                    pass
        assert outcome is not None, "the series never finished"
        n_points = GRID[0] * GRID[1]
        assert window.snapshot.final and window.snapshot.measured == n_points
        growing = [m for m in measured_seen if 0 < m < n_points]
        assert growing and growing == sorted(growing), measured_seen  # seen partly measured, then complete
        assert measured_seen[-1] == n_points
        np.testing.assert_allclose(window.map_panel.image.image, outcome.maps.values["saxs_intensity"],
                                   rtol=1e-6, equal_nan=True)
        window.selector.select("a_mean_nm")
        a_mean = outcome.maps.values["a_mean_nm"]
        row, column = (int(v) for v in np.argwhere(np.isfinite(a_mean))[0])
        x_um, y_um = outcome.grid.axes_um()[1][column], outcome.grid.axes_um()[0][row]
        qtbot.mouseClick(window.map_panel.plot.viewport(), QtCore.Qt.MouseButton.LeftButton,
                         pos=window.map_panel.widget_point_of(x_um, y_um))
        qtbot.waitUntil(lambda: window.detail.detail is not None, timeout=60000)
        detail = window.detail.detail
        assert detail.frame_index == outcome.grid.frame_index(row, column)
        assert detail.parameters["a_mean_nm"]["status"] == Status.OK
        assert detail.parameters["a_mean_nm"]["value"] == pytest.approx(a_mean[row, column], rel=1e-9)
        assert service.frame_store.header(outcome.info.series_id) is not None  # mask known from the header
        assert detail.excluded.any() and detail.frame.shape == (2167, 2070)
        ARTIFACTS.mkdir(exist_ok=True)
        window.grab().save(str(ARTIFACTS / "viewer_service_end_to_end.png"))
    finally:
        if window is not None:
            window.close()
        service.stop()
        if simulator.poll() is None:
            simulator.terminate()
        simulator.wait(10)
        simulator.stdout.close()
        simulator.stderr.close()
