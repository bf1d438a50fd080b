"""The map: one parameter as an image in motor coordinates (um), with a colour bar, NaN blank,
click/hover on a pixel, and a rectangle to draw for a finer scan."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtWidgets

from analysis.scan_grid import ScanGrid
from viewer.map_coordinates import ImagePlacement, image_placement, pixel_at

COLOUR_MAP = "viridis"


class _MapViewBox(pg.ViewBox):
    """ViewBox that draws a rectangle with the left button while :attr:`drawing` is on."""

    rectangle_drawn = QtCore.Signal(object)  # QRectF in view (um) coordinates

    def __init__(self) -> None:
        super().__init__()
        self.drawing = False
        self._band = QtWidgets.QGraphicsRectItem()
        self._band.setPen(pg.mkPen("w", width=1, style=QtCore.Qt.PenStyle.DashLine))
        self._band.setBrush(pg.mkBrush(255, 255, 255, 40))
        self._band.setZValue(1e9)
        self._band.hide()
        self.addItem(self._band, ignoreBounds=True)

    def mouseDragEvent(self, ev, axis=None):
        if not (self.drawing and ev.button() == QtCore.Qt.MouseButton.LeftButton):
            super().mouseDragEvent(ev, axis)
            return
        ev.accept()
        start = self.mapSceneToView(ev.buttonDownScenePos())
        end = self.mapSceneToView(ev.scenePos())
        rect = QtCore.QRectF(start, end).normalized()
        if ev.isFinish():
            self._band.hide()
            self.rectangle_drawn.emit(rect)
        else:
            self._band.setRect(rect)
            self._band.show()


class MapPanel(QtWidgets.QWidget):
    """One map with its colour bar.

    Signals
    -------
    pixel_clicked(row, column), pixel_hovered(row, column)
        Map pixel under the mouse (hover sends (-1, -1) outside the map).
    region_changed(x_low, x_high, y_low, y_high)
        The drawn (or adjusted) rectangle, um.
    levels_edited(low, high)
        The user dragged the colour bar's handles.
    """

    levels_edited = QtCore.Signal(float, float)
    pixel_clicked = QtCore.Signal(int, int)
    pixel_hovered = QtCore.Signal(int, int)
    region_changed = QtCore.Signal(float, float, float, float)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.view_box = _MapViewBox()
        self.plot = pg.PlotWidget(viewBox=self.view_box)
        self.plot_item = self.plot.getPlotItem()
        self.view_box.setAspectLocked(True)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.plot_item.addItem(self.image)
        self.colour_bar = pg.ColorBarItem(colorMap=COLOUR_MAP, interactive=True, width=18)
        self.colour_bar.setImageItem(self.image, insert_in=self.plot_item)
        self.colour_bar.sigLevelsChangeFinished.connect(self._on_colour_bar)
        self.marker = pg.ScatterPlotItem(size=12, symbol="s", pen=pg.mkPen("r", width=2), brush=None)
        self.plot_item.addItem(self.marker)
        self.region_roi: pg.RectROI | None = None
        self.grid: ScanGrid | None = None
        self.placement: ImagePlacement | None = None
        self.values: np.ndarray | None = None
        self.levels: tuple[float, float] | None = None
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot)
        self.plot.scene().sigMouseClicked.connect(self._on_click)
        self.plot.scene().sigMouseMoved.connect(self._on_move)
        self.view_box.rectangle_drawn.connect(self._on_rectangle)

    # -- drawing -------------------------------------------------------------------------------
    def show_map(self, values: np.ndarray, grid: ScanGrid, title: str, colour_label: str,
                 levels: tuple[float, float] | None) -> None:
        """Draw ``values`` (float, (rows, columns), NaN = blank) on ``grid``."""
        new_grid = grid != self.grid
        self.grid, self.values = grid, np.asarray(values, dtype=np.float32)
        self.placement = image_placement(grid)
        drawn = np.ascontiguousarray(self.placement.oriented(self.values))
        self.levels = levels
        shown_levels = levels if levels is not None else (0.0, 1.0)
        self.image.setImage(drawn, levels=shown_levels, autoLevels=False)
        self.image.setRect(QtCore.QRectF(self.placement.x0_um, self.placement.y0_um,
                                         self.placement.width_um, self.placement.height_um))
        self._set_bar_levels(shown_levels)
        self.colour_bar.getAxis("left").setLabel(colour_label)
        self.plot_item.setTitle(title)
        if new_grid:
            self.plot_item.setLabel("bottom", f"{grid.axis_names[1]} (um)")
            self.plot_item.setLabel("left", f"{grid.axis_names[0]} (um)")
            self.view_box.setRange(xRange=self.placement.x_range_um, yRange=self.placement.y_range_um, padding=0.02)

    def set_levels(self, levels: tuple[float, float]) -> None:
        self.levels = levels
        self.image.setLevels(levels)
        self._set_bar_levels(levels)

    def _set_bar_levels(self, levels: tuple[float, float]) -> None:
        # dragging the handles moves the levels in steps of `rounding`: a small part of the range
        self.colour_bar.rounding = max(abs(levels[1] - levels[0]) / 500.0, 1e-12)
        self.colour_bar.setLevels(levels)

    def _on_colour_bar(self, *_args) -> None:
        low, high = (float(v) for v in self.colour_bar.levels())
        self.levels = (low, high)
        self.levels_edited.emit(low, high)

    def mark_pixel(self, row: int | None, column: int | None) -> None:
        """Outline the selected pixel (None clears)."""
        if row is None or self.grid is None:
            self.marker.setData([], [])
            return
        rows_um, columns_um = self.grid.axes_um()
        self.marker.setData([columns_um[column]], [rows_um[row]])

    # -- mouse -----------------------------------------------------------------------------------
    def _pixel_of_scene(self, scene_pos) -> tuple[int, int] | None:
        if self.grid is None or not self.view_box.sceneBoundingRect().contains(scene_pos):
            return None
        point = self.view_box.mapSceneToView(scene_pos)
        return pixel_at(self.grid, point.x(), point.y())

    def _on_click(self, event) -> None:
        if event.button() != QtCore.Qt.MouseButton.LeftButton or self.view_box.drawing:
            return
        pixel = self._pixel_of_scene(event.scenePos())
        if pixel is not None:
            self.pixel_clicked.emit(*pixel)

    def _on_move(self, scene_pos) -> None:
        pixel = self._pixel_of_scene(scene_pos)
        self.pixel_hovered.emit(*(pixel if pixel is not None else (-1, -1)))

    def widget_point_of(self, x_um: float, y_um: float) -> QtCore.QPoint:
        """Widget (viewport) coordinates of a motor position (for tests and tools)."""
        scene = self.view_box.mapViewToScene(QtCore.QPointF(x_um, y_um))
        return self.plot.mapFromScene(scene)

    # -- region ----------------------------------------------------------------------------------
    def set_drawing(self, on: bool) -> None:
        """While on, a left-button drag draws the region rectangle instead of panning."""
        self.view_box.drawing = bool(on)

    def _on_rectangle(self, rect: QtCore.QRectF) -> None:
        self.set_region(rect.left(), rect.right(), rect.top(), rect.bottom())

    def set_region(self, x_low: float, x_high: float, y_low: float, y_high: float) -> None:
        """Show an adjustable rectangle (um) and emit :attr:`region_changed`."""
        x_low, x_high = sorted((x_low, x_high))
        y_low, y_high = sorted((y_low, y_high))
        if self.region_roi is None:
            self.region_roi = pg.RectROI([x_low, y_low], [x_high - x_low, y_high - y_low],
                                         pen=pg.mkPen("m", width=2), removable=False)
            self.region_roi.sigRegionChangeFinished.connect(self._on_roi_changed)
            self.plot_item.addItem(self.region_roi)
        else:
            self.region_roi.setPos([x_low, y_low], finish=False)
            self.region_roi.setSize([x_high - x_low, y_high - y_low], finish=False)
        self.region_changed.emit(x_low, x_high, y_low, y_high)

    def region(self) -> tuple[float, float, float, float] | None:
        if self.region_roi is None:
            return None
        pos, size = self.region_roi.pos(), self.region_roi.size()
        return pos.x(), pos.x() + size.x(), pos.y(), pos.y() + size.y()

    def clear_region(self) -> None:
        if self.region_roi is not None:
            self.plot_item.removeItem(self.region_roi)
            self.region_roi = None

    def _on_roi_changed(self, *_args) -> None:
        region = self.region()
        if region is not None:
            self.region_changed.emit(*region)
