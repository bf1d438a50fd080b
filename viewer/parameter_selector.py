"""Which map is shown: a combo box of the published parameters, the headline maps first, with
unit and description from :mod:`analysis.map_parameters`."""

from __future__ import annotations

from PySide6 import QtCore, QtWidgets

from analysis.map_parameters import ROBUST, MapParameter, registry

HEADLINE = ("saxs_intensity", "a_mean_nm", "a_ratio", "gamma_deg", "phi_deg", "i_al", "psi_deg",
            "delta_psi_deg", "g_q")
"""Shown first, in this order (the maps of the papers)."""


def parameter_info(parameters) -> dict[str, MapParameter]:
    """Unit, description and colour rule of each parameter; unknown ones get no unit and the
    robust 2-98 % colour range."""
    peak_names = sorted({name.split(".", 1)[0] for name in parameters if "." in name})
    known = registry(peak_names)
    return {name: known.get(name, MapParameter(name, "", name, ROBUST)) for name in parameters}


def display_order(parameters) -> list[str]:
    """Headline maps first, then the others in published order."""
    first = [name for name in HEADLINE if name in parameters]
    return first + [name for name in parameters if name not in first]


def label_of(info: MapParameter) -> str:
    return f"{info.name} [{info.unit}]" if info.unit else info.name


class ParameterSelector(QtWidgets.QComboBox):
    """Combo box of map parameters; :attr:`parameter_changed` carries the selected name."""

    parameter_changed = QtCore.Signal(str)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumContentsLength(24)
        self.setSizeAdjustPolicy(QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self._parameters: tuple[str, ...] = ()
        self.info: dict[str, MapParameter] = {}
        self.currentIndexChanged.connect(self._emit)

    def set_parameters(self, parameters) -> None:
        """Offer ``parameters`` (keeps the selection when it is still there)."""
        parameters = tuple(parameters)
        if parameters == self._parameters:
            return
        current = self.current()
        self._parameters = parameters
        self.info = parameter_info(parameters)
        self.blockSignals(True)
        self.clear()
        for name in display_order(parameters):
            self.addItem(label_of(self.info[name]), name)
            self.setItemData(self.count() - 1, self.info[name].description, QtCore.Qt.ItemDataRole.ToolTipRole)
        index = self.findData(current) if current else -1
        self.setCurrentIndex(index if index >= 0 else 0)
        self.blockSignals(False)
        self._emit()

    def current(self) -> str | None:
        data = self.currentData()
        return str(data) if data is not None else None

    def select(self, name: str) -> None:
        index = self.findData(name)
        if index < 0:
            raise KeyError(f"parameter {name!r} is not published (known: {list(self._parameters)[:10]}...)")
        self.setCurrentIndex(index)

    def _emit(self, *_args) -> None:
        name = self.current()
        if name is not None:
            self.parameter_changed.emit(name)
