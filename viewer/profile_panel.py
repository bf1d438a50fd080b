"""The selected parameter against the distance to the supercrystal edge (Lapkin Fig. 6b): mean
+-1 sigma per distance bin, the crystal being where the SAXS intensity exceeds half its maximum."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6 import QtWidgets

from analysis.crystal_region import DistanceProfile, crystal_region, profile_vs_distance
from analysis.scan_grid import ScanGrid

INTENSITY_PARAMETER = "saxs_intensity"


def edge_profile(values: np.ndarray, saxs_intensity: np.ndarray, grid: ScanGrid) -> DistanceProfile | None:
    """Profile of ``values`` vs distance to the edge (bins one scan step wide), None when the
    map has no crystal with an edge yet."""
    region = crystal_region(saxs_intensity, step_um=grid.step_um)
    if not region.inside.any() or not region.outside.any():
        return None
    step = min(abs(grid.step_um[0]) or 1.0, abs(grid.step_um[1]) or 1.0)
    return profile_vs_distance(values, region.distance_um, inside=region.inside, bin_width_um=step)


class ProfilePanel(QtWidgets.QWidget):
    """Mean and +-1 sigma of a map per distance bin; :attr:`profile` holds what is drawn."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot = pg.PlotWidget()
        self.plot_item = self.plot.getPlotItem()
        self.plot_item.setLabel("bottom", "distance to the supercrystal edge (um)")
        self.curve = pg.PlotDataItem(symbol="o", symbolSize=6, pen=pg.mkPen((240, 160, 60), width=2))
        self.error_bars = pg.ErrorBarItem(pen=pg.mkPen((240, 160, 60)), beam=0.1)
        self.plot_item.addItem(self.error_bars)
        self.plot_item.addItem(self.curve)
        self.profile: DistanceProfile | None = None
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot)

    def show_profile(self, values: np.ndarray, saxs_intensity: np.ndarray | None, grid: ScanGrid, label: str) -> None:
        self.profile = None if saxs_intensity is None else edge_profile(values, saxs_intensity, grid)
        self.plot_item.setLabel("left", label)
        if self.profile is None:
            self.curve.setData([], [])
            self.error_bars.setData(x=np.zeros(0), y=np.zeros(0), height=np.zeros(0))
            self.plot_item.setTitle("no supercrystal edge on the map yet")
            return
        keep = self.profile.count > 0
        x, mean = self.profile.bin_centres_um[keep], self.profile.mean[keep]
        std = np.nan_to_num(self.profile.std[keep])
        self.curve.setData(x, mean)
        self.error_bars.setData(x=x, y=mean, height=2 * std)
        self.plot_item.setTitle(f"{int(self.profile.count.sum())} points inside the crystal")
