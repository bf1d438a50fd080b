"""The finer-scan request: draw a rectangle on the map, pick the steps, read, copy or export
the plan arguments (JSON). Sent to the steering endpoint once the service has one."""

from __future__ import annotations

from pathlib import Path

from PySide6 import QtCore, QtGui, QtWidgets

from analysis.errors import ConfigurationError
from analysis.scan_grid import ScanGrid
from analysis.scan_request import ScanRequest, finer_steps, scan_request


def _step_box() -> QtWidgets.QDoubleSpinBox:
    box = QtWidgets.QDoubleSpinBox()
    box.setDecimals(3)
    box.setRange(0.001, 1000.0)
    box.setSingleStep(0.05)
    box.setSuffix(" um")
    return box


class RegionPanel(QtWidgets.QGroupBox):
    """Controls of the region request.

    Signals
    -------
    drawing_toggled(bool)
        The "draw region" button (the map panel draws instead of panning while it is on).
    clear_requested()
    """

    drawing_toggled = QtCore.Signal(bool)
    clear_requested = QtCore.Signal()

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__("finer scan of a region", parent)
        self.draw_button = QtWidgets.QPushButton("draw region")
        self.draw_button.setCheckable(True)
        self.draw_button.toggled.connect(self.drawing_toggled)
        self.slow_step = _step_box()
        self.fast_step = _step_box()
        self.slow_step.valueChanged.connect(self._update)
        self.fast_step.valueChanged.connect(self._update)
        self.text = QtWidgets.QPlainTextEdit()
        self.text.setReadOnly(True)
        self.text.setPlaceholderText("draw a rectangle on the map")
        self.text.setMaximumHeight(170)
        self.copy_button = QtWidgets.QPushButton("copy")
        self.export_button = QtWidgets.QPushButton("export…")
        self.clear_button = QtWidgets.QPushButton("clear")
        self.copy_button.clicked.connect(self.copy)
        self.export_button.clicked.connect(self._export_dialog)
        self.clear_button.clicked.connect(self.clear)
        steps = QtWidgets.QHBoxLayout()
        steps.addWidget(QtWidgets.QLabel("step slow"))
        steps.addWidget(self.slow_step)
        steps.addWidget(QtWidgets.QLabel("fast"))
        steps.addWidget(self.fast_step)
        buttons = QtWidgets.QHBoxLayout()
        for button in (self.draw_button, self.copy_button, self.export_button, self.clear_button):
            buttons.addWidget(button)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(buttons)
        layout.addLayout(steps)
        layout.addWidget(self.text)
        self.grid: ScanGrid | None = None
        self.series_id: int | None = None
        self.region: tuple[float, float, float, float] | None = None
        self.request: ScanRequest | None = None
        self._set_enabled()

    def set_grid(self, grid: ScanGrid, series_id: int) -> None:
        """A new map grid: default steps are half the map's."""
        if grid == self.grid and series_id == self.series_id:
            return
        self.grid, self.series_id = grid, series_id
        slow, fast = finer_steps(grid)
        for box, value in ((self.slow_step, slow), (self.fast_step, fast)):
            box.blockSignals(True)
            box.setValue(value)
            box.blockSignals(False)
        self._update()

    def set_region(self, x_low: float, x_high: float, y_low: float, y_high: float) -> None:
        self.region = (x_low, x_high, y_low, y_high)
        self.draw_button.setChecked(False)
        self._update()

    def clear(self) -> None:
        self.region = None
        self.request = None
        self.text.setPlainText("")
        self._set_enabled()
        self.clear_requested.emit()

    def _update(self, *_args) -> None:
        if self.region is None or self.grid is None:
            return
        x_low, x_high, y_low, y_high = self.region
        try:
            self.request = scan_request(self.grid, (x_low, x_high), (y_low, y_high),
                                        (self.slow_step.value(), self.fast_step.value()), self.series_id)
            self.text.setPlainText(self.request.to_json())
        except ConfigurationError as exc:
            self.request = None
            self.text.setPlainText(f"error: {exc}")
        self._set_enabled()

    def _set_enabled(self) -> None:
        for button in (self.copy_button, self.export_button, self.clear_button):
            button.setEnabled(self.request is not None)

    def copy(self) -> None:
        if self.request is not None:
            QtGui.QGuiApplication.clipboard().setText(self.request.to_json())

    def export_to(self, path: str | Path) -> Path | None:
        return None if self.request is None else self.request.export(path)

    def _export_dialog(self) -> None:
        if self.request is None:
            return
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "export the scan request",
                                                        f"scan_request_series{self.series_id}.json", "JSON (*.json)")
        if path:
            self.export_to(path)
