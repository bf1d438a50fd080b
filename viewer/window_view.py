"""The polar (q, chi) windows of one frame: measured mean counts, fitted model and residual,
one row per peak."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtWidgets

from stream.frame_detail import FrameDetail, WindowDetail

COLUMNS = ("data", "fit", "residual")


def data_levels(window: WindowDetail) -> tuple[float, float]:
    """Common levels of data and fit: 1st to 99.5th percentile of the finite data."""
    finite = window.mean_counts[np.isfinite(window.mean_counts)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(finite, [1.0, 99.5])
    return float(low), float(high) if high > low else float(low) + 1.0


def residual_levels(window: WindowDetail) -> tuple[float, float]:
    """Symmetric levels of the residual: +- its 99th percentile of |residual|."""
    finite = np.abs(window.residual[np.isfinite(window.residual)])
    limit = float(np.percentile(finite, 99.0)) if finite.size else 1.0
    limit = limit if limit > 0 else 1.0
    return -limit, limit


def _window_rect(window: WindowDetail) -> QtCore.QRectF:
    q, chi = window.q_centres_nm, window.chi_centres_deg
    dq = (q[-1] - q[0]) / max(len(q) - 1, 1) if len(q) > 1 else 1.0
    dchi = (chi[-1] - chi[0]) / max(len(chi) - 1, 1) if len(chi) > 1 else 1.0
    return QtCore.QRectF(chi[0] - dchi / 2, q[0] - dq / 2, dchi * len(chi), dq * len(q))


class WindowView(QtWidgets.QWidget):
    """Grid of small images: one row per peak window, columns data / fit / residual
    (chi along x, q along y). :attr:`images` maps (peak, column) to its ImageItem."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.layout_widget = pg.GraphicsLayoutWidget()
        self.images: dict[tuple[str, str], pg.ImageItem] = {}
        self._names: tuple[str, ...] = ()
        scroll = QtWidgets.QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.layout_widget)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(scroll)

    def _build(self, names: tuple[str, ...]) -> None:
        self.layout_widget.clear()
        self.images = {}
        for row, name in enumerate(names):
            for column, kind in enumerate(COLUMNS):
                plot = self.layout_widget.addPlot(row=row, col=column)
                plot.setTitle(f"{name}: {kind}", size="8pt")
                plot.setLabel("bottom", "chi (deg)")
                plot.setLabel("left", "q (nm^-1)")
                image = pg.ImageItem(axisOrder="row-major")
                image.setColorMap(pg.colormap.get("RdBu_r" if kind == "residual" else "viridis",
                                                  source="matplotlib" if kind == "residual" else None))
                plot.addItem(image)
                self.images[(name, kind)] = image
        self.layout_widget.setMinimumHeight(170 * max(len(names), 1))
        self._names = names

    def show_detail(self, detail: FrameDetail) -> None:
        names = tuple(w.name for w in detail.windows)
        if names != self._names:
            self._build(names)
        for window in detail.windows:
            rect = _window_rect(window)
            levels = data_levels(window)
            for kind, data, kind_levels in (("data", window.mean_counts, levels), ("fit", window.model, levels),
                                            ("residual", window.residual, residual_levels(window))):
                image = self.images[(window.name, kind)]
                image.setImage(np.ascontiguousarray(data), levels=kind_levels, autoLevels=False)
                image.setRect(rect)
