"""The live viewer: maps as they grow, histogram, profile vs distance to the crystal edge,
detail of a clicked scan point, and a finer-scan request drawn on the map.

Run ``python -m viewer --maps tcp://HOST:5557 --detail tcp://HOST:5558`` (or ``braggmap view``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections import deque

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtWidgets

from analysis.status import reason
from stream.frame_detail import DetailError
from stream.published_state import MapSnapshot
from viewer.detail_fetch import DetailFetcher
from viewer.detail_panel import DetailPanel
from viewer.histogram_panel import HistogramPanel
from viewer.map_feed import MAX_RATE_HZ, SnapshotFeed
from viewer.map_panel import MapPanel
from viewer.parameter_selector import ParameterSelector, label_of
from viewer.profile_panel import INTENSITY_PARAMETER, ProfilePanel
from viewer.region_panel import RegionPanel

log = logging.getLogger(__name__)

DEFAULT_MAPS_ENDPOINT = "tcp://127.0.0.1:5557"
DEFAULT_DETAIL_ENDPOINT = "tcp://127.0.0.1:5558"


class ViewerWindow(QtWidgets.QMainWindow):
    """Main window. Snapshots arrive through :attr:`feed` (a timer, at most ``rate_hz``
    redraws a second); :meth:`show_snapshot` can also be called directly.

    Attributes
    ----------
    snapshot : MapSnapshot or None
        The snapshot drawn.
    redraws : int
        Map redraws so far; :attr:`redraw_times` holds their monotonic times.
    """

    def __init__(self, maps_endpoint: str | None, detail_endpoint: str | None = None,
                 rate_hz: float = MAX_RATE_HZ, start: bool = True, steering_endpoint: str | None = None) -> None:
        super().__init__()
        self.setWindowTitle(f"braggmap viewer — {maps_endpoint or 'no map endpoint'}")
        self.resize(1700, 950)
        self.snapshot: MapSnapshot | None = None
        self.redraws = 0
        self.redraw_times: deque[float] = deque(maxlen=1000)
        self._arrived: float | None = None
        self.selected: tuple[int, int, int] | None = None  # series, row, column
        self.selector = ParameterSelector()
        self.auto_range = QtWidgets.QCheckBox("auto colour range (2-98 %)")
        self.auto_range.setChecked(True)
        self.map_panel = MapPanel()
        self.hover_label = QtWidgets.QLabel(" ")
        self.region_panel = RegionPanel(steering_endpoint=steering_endpoint)
        self.histogram = HistogramPanel()
        self.profile = ProfilePanel()
        self.detail = DetailPanel()
        self._layout()
        self.status = QtWidgets.QLabel("waiting for map snapshots")
        self.statusBar().addWidget(self.status, 1)

        self._taking_snapshot = False
        self.selector.parameter_changed.connect(self._on_parameter)
        self.auto_range.toggled.connect(lambda _on: self.redraw())
        self.map_panel.pixel_clicked.connect(self.select_pixel)
        self.map_panel.levels_edited.connect(self._levels_edited)
        self.map_panel.pixel_hovered.connect(self._hover)
        self.map_panel.region_changed.connect(self.region_panel.set_region)
        self.region_panel.drawing_toggled.connect(self.map_panel.set_drawing)
        self.region_panel.clear_requested.connect(self.map_panel.clear_region)
        self.fetcher = DetailFetcher(detail_endpoint, parent=self)
        self.fetcher.finished.connect(self._on_detail)
        self.feed = SnapshotFeed(maps_endpoint, rate_hz, self) if maps_endpoint else None
        if self.feed is not None:
            self.feed.snapshot.connect(self.show_snapshot)
            if start:
                self.feed.start()

    def _layout(self) -> None:
        left = QtWidgets.QWidget()
        top = QtWidgets.QHBoxLayout()
        top.addWidget(QtWidgets.QLabel("map"))
        top.addWidget(self.selector, 1)
        top.addWidget(self.auto_range)
        column = QtWidgets.QVBoxLayout(left)
        column.addLayout(top)
        column.addWidget(self.map_panel, 1)
        column.addWidget(self.hover_label)
        column.addWidget(self.region_panel)
        middle = QtWidgets.QSplitter(QtCore.Qt.Orientation.Vertical)
        middle.addWidget(self.histogram)
        middle.addWidget(self.profile)
        splitter = QtWidgets.QSplitter(QtCore.Qt.Orientation.Horizontal)
        splitter.addWidget(left)
        splitter.addWidget(middle)
        splitter.addWidget(self.detail)
        splitter.setSizes([650, 380, 670])
        self.setCentralWidget(splitter)

    # -- maps ------------------------------------------------------------------------------------
    def show_snapshot(self, snapshot: MapSnapshot) -> None:
        self._arrived = time.monotonic()  # the feed caps arrivals: the redraw below is timed from here
        new_series = self.snapshot is None or self.snapshot.series_id != snapshot.series_id
        self.snapshot = snapshot
        self._taking_snapshot = True  # one redraw per snapshot, not one more for a new parameter list
        try:
            self.selector.set_parameters(snapshot.parameters)
        finally:
            self._taking_snapshot = False
        self.region_panel.set_grid(snapshot.grid, snapshot.series_id)
        if new_series:
            self.selected = None
            self.map_panel.mark_pixel(None, None)
        try:
            self.redraw()
        finally:
            self._arrived = None

    def _on_parameter(self, _name: str) -> None:
        if self._taking_snapshot:
            return
        # another parameter, another unit: a colour range set by hand no longer applies
        self.auto_range.blockSignals(True)
        self.auto_range.setChecked(True)
        self.auto_range.blockSignals(False)
        self.redraw()

    def redraw(self) -> None:
        snapshot, name = self.snapshot, self.selector.current()
        if snapshot is None or name is None:
            return
        # when the redraw starts, or when the snapshot it draws arrived (the feed caps arrivals)
        self.redraw_times.append(self._arrived if self._arrived is not None else time.monotonic())
        values = snapshot.map(name)
        info = self.selector.info[name]
        if self.auto_range.isChecked() or self.map_panel.levels is None:
            levels = info.colour_range.limits(values)
        else:
            levels = self.map_panel.levels
        label = label_of(info)
        title = f"{name} — series {snapshot.series_id}, {snapshot.measured}/{snapshot.grid.n_points} points"
        self.map_panel.show_map(values, snapshot.grid, title + (" (final)" if snapshot.final else ""), label, levels)
        self.histogram.show_values(values, label, levels)
        saxs = snapshot.map(INTENSITY_PARAMETER) if INTENSITY_PARAMETER in snapshot.parameters else None
        self.profile.show_profile(values, saxs, snapshot.grid, label)
        self.redraws += 1
        skipped = self.feed.skipped if self.feed is not None else 0
        self.status.setText(f"series {snapshot.series_id} snapshot {snapshot.version}: {snapshot.measured} of "
                            f"{snapshot.grid.n_points} points{' (final)' if snapshot.final else ''}; "
                            f"{skipped} snapshots skipped")

    def _levels_edited(self, low: float, high: float) -> None:
        """The user set the colour range on the bar: keep it for the next snapshots."""
        self.auto_range.blockSignals(True)
        self.auto_range.setChecked(False)
        self.auto_range.blockSignals(False)
        self.redraw()

    def _hover(self, row: int, column: int) -> None:
        snapshot, name = self.snapshot, self.selector.current()
        if snapshot is None or name is None or row < 0:
            self.hover_label.setText(" ")
            return
        index = snapshot.parameters.index(name)
        value = float(snapshot.values[index, row, column])
        status = int(snapshot.statuses[index, row, column])
        rows_um, columns_um = snapshot.grid.axes_um()
        shown = f"{value:.6g} {self.selector.info[name].unit}" if np.isfinite(value) else reason(status)
        self.hover_label.setText(f"x {columns_um[column]:.3f} um, y {rows_um[row]:.3f} um (row {row}, column "
                                 f"{column}, frame {snapshot.grid.frame_index(row, column)}): {shown}")

    # -- detail ----------------------------------------------------------------------------------
    def select_pixel(self, row: int, column: int) -> None:
        """Ask the service for the frame of map pixel (row, column)."""
        if self.snapshot is None:
            return
        frame_index = self.snapshot.grid.frame_index(row, column)
        self.selected = (self.snapshot.series_id, row, column)
        self.map_panel.mark_pixel(row, column)
        self.detail.show_message(f"asking for frame {frame_index} of series {self.snapshot.series_id}…")
        self.fetcher.request(self.snapshot.series_id, frame_index)

    def _on_detail(self, result) -> None:
        if isinstance(result, DetailError):
            self.detail.show_message(f"no frame detail: {result.message}")
        else:
            self.detail.show_detail(result)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt name)
        self.close_connections()
        super().closeEvent(event)

    def close_connections(self) -> None:
        if self.feed is not None:
            self.feed.close()
        self.fetcher.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m viewer", description="braggmap live viewer")
    parser.add_argument("--maps", default=DEFAULT_MAPS_ENDPOINT, help="map snapshot PUB endpoint of the service")
    parser.add_argument("--detail", default=DEFAULT_DETAIL_ENDPOINT, help="frame-detail endpoint of the service")
    parser.add_argument("--steering", default=None,
                        help="the service's steering endpoint (serve --steering): drawn regions can be sent there")
    parser.add_argument("--rate", type=float, default=MAX_RATE_HZ, help=f"redraws per second at most (<= {MAX_RATE_HZ:g})")
    parser.add_argument("--quit-after", type=float, default=None, metavar="S", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 < args.rate <= MAX_RATE_HZ:
        print(f"viewer: error: --rate {args.rate} must be in (0, {MAX_RATE_HZ:g}]", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    app = pg.mkQApp("braggmap viewer")
    window = ViewerWindow(args.maps, args.detail, args.rate, steering_endpoint=args.steering)
    window.show()
    if args.quit_after is not None:
        QtCore.QTimer.singleShot(int(args.quit_after * 1000), app.quit)
    status = app.exec()
    window.close_connections()
    # delete the window's C++ objects while the application still exists (letting Python's
    # garbage collector do it at exit, in any order, can crash Qt)
    window.deleteLater()
    QtCore.QCoreApplication.sendPostedEvents(None, QtCore.QEvent.Type.DeferredDelete)
    del window
    return status
