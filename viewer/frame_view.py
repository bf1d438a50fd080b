"""The raw frame of a scan point: log-scale counts, masked pixels overlaid, and every fitted
peak drawn where the service placed it (centre, FWHM ellipse, window outline)."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6 import QtWidgets

from analysis.status import Status
from stream.frame_detail import FrameDetail

MASK_RGBA = (255, 40, 40, 140)
OK_COLOUR = (60, 230, 90)
FAILED_COLOUR = (255, 160, 40)


def log_counts(frame: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """float32 log10(counts + 1); NaN (drawn blank) at excluded pixels."""
    image = np.log10(np.maximum(frame.astype(np.float32), 0.0) + 1.0)
    image[excluded] = np.nan
    return image


def log_levels(image: np.ndarray) -> tuple[float, float]:
    """Display range of a log image: 0 to the 99.95th percentile of its finite values (the
    Bragg peaks cover a tiny fraction of the detector; drag the colour bar for more)."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    high = float(np.percentile(finite, 99.95))
    return 0.0, high if high > 0 else 1.0


def mask_overlay(excluded: np.ndarray) -> np.ndarray:
    """uint8 RGBA (rows, columns, 4): :data:`MASK_RGBA` at excluded pixels, transparent elsewhere."""
    overlay = np.zeros((*excluded.shape, 4), dtype=np.uint8)
    overlay[excluded] = MASK_RGBA
    return overlay


class FrameView(QtWidgets.QWidget):
    """Detector image (row 0 on top) with mask and peak overlays.

    Attributes
    ----------
    image_data : ndarray or None
        The log image drawn.
    peak_items : dict
        Peak name -> (centre scatter, ellipse curve, outline curve, label).
    """

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot = pg.PlotWidget()
        self.plot_item = self.plot.getPlotItem()
        self.plot_item.invertY(True)
        self.plot_item.setAspectLocked(True)
        self.plot_item.setLabel("bottom", "column (pixel)")
        self.plot_item.setLabel("left", "row (pixel)")
        self.image = pg.ImageItem(axisOrder="row-major", autoDownsample=True)
        self.mask = pg.ImageItem(axisOrder="row-major", autoDownsample=True)
        self.plot_item.addItem(self.image)
        self.plot_item.addItem(self.mask)
        self.colour_bar = pg.ColorBarItem(colorMap="inferno", interactive=True, width=14, label="log10(counts + 1)")
        self.colour_bar.setImageItem(self.image, insert_in=self.plot_item)
        self.image_data: np.ndarray | None = None
        self.peak_items: dict[str, tuple] = {}
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot)

    def clear_peaks(self) -> None:
        for items in self.peak_items.values():
            for item in items:
                self.plot_item.removeItem(item)
        self.peak_items = {}

    def show_detail(self, detail: FrameDetail) -> None:
        first = self.image_data is None or self.image_data.shape != detail.frame.shape
        self.image_data = log_counts(detail.frame, detail.excluded)
        levels = log_levels(self.image_data)
        self.image.setImage(self.image_data, levels=levels, autoLevels=False)
        self.colour_bar.setLevels(levels)
        self.mask.setImage(mask_overlay(detail.excluded), autoLevels=False, levels=(0, 255))
        self.clear_peaks()
        for peak in detail.peaks:
            colour = OK_COLOUR if peak.status == Status.OK else FAILED_COLOUR
            rows, cols = peak.window_outline_px
            outline = pg.PlotDataItem(cols + 0.5, rows + 0.5, connect="finite",
                                      pen=pg.mkPen(colour, width=1, style=pg.QtCore.Qt.PenStyle.DotLine))
            centre = pg.ScatterPlotItem(symbol="+", size=14, pen=pg.mkPen(colour, width=2))
            ellipse = pg.PlotDataItem(pen=pg.mkPen(colour, width=2), connect="finite")
            if peak.centre_px is not None:
                centre.setData([peak.centre_px[1] + 0.5], [peak.centre_px[0] + 0.5])
            if peak.ellipse_px is not None:
                ellipse.setData(peak.ellipse_px[1] + 0.5, peak.ellipse_px[0] + 0.5)
            label = pg.TextItem(peak.name, color=colour, anchor=(0, 1))
            finite = np.isfinite(rows) & np.isfinite(cols)
            if finite.any():
                label.setPos(float(cols[finite][0]) + 0.5, float(rows[finite][0]) + 0.5)
            for item in (outline, ellipse, centre, label):
                self.plot_item.addItem(item)
            self.peak_items[peak.name] = (centre, ellipse, outline, label)
        self.plot_item.setTitle(f"series {detail.series_id}, frame {detail.frame_index}")
        if first:
            rows, columns = detail.frame.shape
            self.plot_item.getViewBox().setRange(xRange=(0, columns), yRange=(0, rows), padding=0.01)
