"""Histogram of the selected map's finite values, with the colour range marked."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6 import QtWidgets

MAX_BINS = 60


def map_histogram(values: np.ndarray, max_bins: int = MAX_BINS) -> tuple[np.ndarray, np.ndarray]:
    """(counts int64 (n,), edges float64 (n + 1,)) of the finite values; empty when none.

    The number of bins grows as the square root of the number of values (at least 5, at most
    ``max_bins``); a constant map gets one bin of width 1 around its value.
    """
    data = np.asarray(values, dtype=np.float64)
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    low, high = float(finite.min()), float(finite.max())
    if low == high:
        low, high = low - 0.5, high + 0.5
    n_bins = int(np.clip(np.sqrt(finite.size), 5, max_bins))
    counts, edges = np.histogram(finite, bins=n_bins, range=(low, high))
    return counts.astype(np.int64), edges


class HistogramPanel(QtWidgets.QWidget):
    """Step histogram of one map; :attr:`counts` and :attr:`edges` hold what is drawn."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot = pg.PlotWidget()
        self.plot_item = self.plot.getPlotItem()
        self.plot_item.setLabel("left", "map pixels")
        self.curve = pg.PlotDataItem(stepMode="center", fillLevel=0, brush=(80, 140, 220, 150),
                                     pen=pg.mkPen((80, 140, 220), width=1))
        self.plot_item.addItem(self.curve)
        self.level_lines = [pg.InfiniteLine(angle=90, pen=pg.mkPen("y", style=pg.QtCore.Qt.PenStyle.DashLine))
                            for _ in range(2)]
        for line in self.level_lines:
            self.plot_item.addItem(line)
        self.counts = np.zeros(0, dtype=np.int64)
        self.edges = np.zeros(0)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot)

    def show_values(self, values: np.ndarray, label: str, levels: tuple[float, float] | None) -> None:
        self.counts, self.edges = map_histogram(values)
        if self.counts.size:
            self.curve.setData(self.edges, self.counts)
        else:
            self.curve.setData([], [])
        self.plot_item.setLabel("bottom", label)
        self.plot_item.setTitle(f"{int(self.counts.sum())} values")
        for line, level in zip(self.level_lines, levels or (None, None)):
            line.setVisible(level is not None)
            if level is not None:
                line.setValue(level)
