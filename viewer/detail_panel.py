"""Everything about one scan point: raw frame with the fitted peaks, polar windows with fit and
residual, and the fitted numbers with uncertainties and status."""

from __future__ import annotations

import math

from PySide6 import QtWidgets

from analysis.map_parameters import error_name
from analysis.peak_fits import PEAK_QUANTITIES
from analysis.status import Status
from stream.frame_detail import FrameDetail
from viewer.frame_view import FrameView
from viewer.window_view import WindowView

PEAK_COLUMNS = ("peak", "status") + PEAK_QUANTITIES
PEAK_HEADERS = ("peak", "status", "I0 (photons)", "q0 (nm^-1)", "chi0 (deg)", "FWHM q (nm^-1)", "FWHM chi (deg)")


def format_value(value: float, error: float | None = None) -> str:
    """``value +- error`` with the value rounded to two significant digits of the error."""
    if value is None or not math.isfinite(value):
        return "—"
    if error is None or not math.isfinite(error) or error <= 0:
        return f"{value:.6g}"
    decimals = max(0, 1 - int(math.floor(math.log10(error))))
    if decimals > 8 or abs(value) >= 1e6:
        return f"{value:.4g} ± {error:.2g}"
    return f"{value:.{decimals}f} ± {error:.{decimals}f}"


def derived_rows(parameters: dict) -> list[tuple[str, str, str, str]]:
    """(name, value +- error, unit, status) of the frame's map values, per-peak ones and error
    entries left out (errors go with their value)."""
    error_names = {error_name(name) for name in parameters}
    rows = []
    for name, entry in parameters.items():
        if "." in name or name in error_names:
            continue
        error = parameters.get(error_name(name), {}).get("value")
        status = "ok" if entry["status"] == Status.OK else entry["reason"]
        rows.append((name, format_value(entry["value"], error), entry.get("unit", ""), status))
    return rows


def _table(headers) -> QtWidgets.QTableWidget:
    table = QtWidgets.QTableWidget(0, len(headers))
    table.setHorizontalHeaderLabels(list(headers))
    table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
    table.verticalHeader().setVisible(False)
    table.horizontalHeader().setStretchLastSection(True)
    return table


def _fill(table: QtWidgets.QTableWidget, rows) -> None:
    table.setRowCount(len(rows))
    for r, row in enumerate(rows):
        for c, text in enumerate(row):
            table.setItem(r, c, QtWidgets.QTableWidgetItem(str(text)))
    table.resizeColumnsToContents()


def table_text(table: QtWidgets.QTableWidget) -> list[list[str]]:
    """Cell texts row by row (for tests and copying)."""
    return [[table.item(r, c).text() if table.item(r, c) else "" for c in range(table.columnCount())]
            for r in range(table.rowCount())]


class DetailPanel(QtWidgets.QWidget):
    """Tabs: frame, windows, numbers; a line on top says which frame or what went wrong."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.header = QtWidgets.QLabel("click a map pixel to see its frame")
        self.header.setWordWrap(True)
        self.frame_view = FrameView()
        self.window_view = WindowView()
        self.peak_table = _table(PEAK_HEADERS)
        self.derived_table = _table(("parameter", "value", "unit", "status"))
        numbers = QtWidgets.QSplitter()
        numbers.setOrientation(numbers.orientation().Vertical)
        numbers.addWidget(self.peak_table)
        numbers.addWidget(self.derived_table)
        self.tabs = QtWidgets.QTabWidget()
        self.tabs.addTab(self.frame_view, "frame")
        self.tabs.addTab(self.window_view, "windows")
        self.tabs.addTab(numbers, "numbers")
        self.detail: FrameDetail | None = None
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.header)
        layout.addWidget(self.tabs)

    def show_message(self, text: str) -> None:
        self.header.setText(text)

    def show_detail(self, detail: FrameDetail) -> None:
        self.detail = detail
        n_ok = sum(peak.status == Status.OK for peak in detail.peaks)
        self.header.setText(f"series {detail.series_id}, frame {detail.frame_index}: {n_ok} of "
                            f"{len(detail.peaks)} peaks fitted (analysed in {detail.analysis_ms:.0f} ms)")
        self.frame_view.show_detail(detail)
        self.window_view.show_detail(detail)
        rows = []
        for peak in detail.peaks:
            status = "ok" if peak.status == Status.OK else peak.reason
            rows.append([peak.name, status] + [format_value(peak.values[q], peak.errors[q]) for q in PEAK_QUANTITIES])
        _fill(self.peak_table, rows)
        _fill(self.derived_table, derived_rows(detail.parameters))
