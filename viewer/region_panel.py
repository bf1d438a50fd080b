"""The finer-scan request: draw a rectangle on the map, pick the steps, read, copy or export
the plan arguments (JSON), or send the rectangle to the service's steering endpoint (strategy
``user``), off the GUI thread."""

from __future__ import annotations

import threading
from pathlib import Path

from PySide6 import QtCore, QtGui, QtWidgets

from analysis.errors import ConfigurationError
from analysis.scan_grid import ScanGrid
from analysis.scan_request import ScanRequest, finer_steps, scan_request
from stream.steering_client import SteeringClient, SteeringError

SEND_TIMEOUT_S = 5.0


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
    sent(str)
        What the steering endpoint answered to "send" (in the GUI thread).
    """

    drawing_toggled = QtCore.Signal(bool)
    clear_requested = QtCore.Signal()
    sent = QtCore.Signal(str)

    def __init__(self, parent: QtWidgets.QWidget | None = None, steering_endpoint: str | None = None) -> None:
        super().__init__("finer scan of a region", parent)
        self.steering_endpoint = steering_endpoint
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
        self.send_button = QtWidgets.QPushButton("send to steering")
        self.send_button.setToolTip(f"hand the rectangle to the service's steering endpoint "
                                    f"({steering_endpoint or 'none given: --steering'})")
        self.send_button.clicked.connect(self.send)
        self.sent.connect(self._on_sent)
        self.sent_label = QtWidgets.QLabel(" ")
        self.copy_button.clicked.connect(self.copy)
        self.export_button.clicked.connect(self._export_dialog)
        self.clear_button.clicked.connect(self.clear)
        steps = QtWidgets.QHBoxLayout()
        steps.addWidget(QtWidgets.QLabel("step slow"))
        steps.addWidget(self.slow_step)
        steps.addWidget(QtWidgets.QLabel("fast"))
        steps.addWidget(self.fast_step)
        buttons = QtWidgets.QHBoxLayout()
        for button in (self.draw_button, self.copy_button, self.export_button, self.send_button, self.clear_button):
            buttons.addWidget(button)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(buttons)
        layout.addLayout(steps)
        layout.addWidget(self.text)
        layout.addWidget(self.sent_label)
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
        self.send_button.setEnabled(self.request is not None and self.steering_endpoint is not None)

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

    def send(self) -> threading.Thread | None:
        """Send the drawn rectangle to the steering endpoint (a background thread; the answer
        arrives as :attr:`sent`)."""
        if self.request is None or self.steering_endpoint is None:
            return None
        request, endpoint = self.request, self.steering_endpoint
        self.sent_label.setText("sending…")

        def post() -> None:
            try:
                with SteeringClient(endpoint, timeout_s=SEND_TIMEOUT_S) as client:
                    regions = client.add_region((request.fast.start_um, request.fast.stop_um),
                                                (request.slow.start_um, request.slow.stop_um), request.series_id)
                self.sent.emit(f"sent to steering: {len(regions)} region{'s' if len(regions) != 1 else ''} waiting")
            except SteeringError as exc:
                self.sent.emit(f"steering: {exc}")

        thread = threading.Thread(target=post, name="viewer-steering", daemon=True)
        thread.start()
        return thread

    def _on_sent(self, message: str) -> None:
        self.sent_label.setText(message)
