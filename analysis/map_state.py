"""The maps of one scan while it is measured: one owner (the collector) updates them per frame.

Values are float64 (NaN = missing), statuses int32 :class:`analysis.status.Status` codes
(``NOT_MEASURED`` until a frame arrives). The invariant of every map holds after each update:
a value goes with status OK, every other status goes with NaN (a non-finite value sent with OK
becomes ``INVALID_INPUT``). A per-pixel ``measured_count`` shows points measured more than once
(the newest frame wins; ``n_repeated`` counts such updates).

Not thread-safe: one owner updates it; readers get copies from :meth:`MapState.snapshot`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from analysis.crystal_region import CrystalRegion, DistanceProfile, crystal_region, profile_vs_distance
from analysis.errors import ConfigurationError
from analysis.status import Status

log = logging.getLogger(__name__)

SAXS_INTENSITY = "saxs_intensity"
_OK = int(Status.OK)
_INVALID_INPUT = int(Status.INVALID_INPUT)


class MapState:
    """Maps of ``parameters`` over a scan grid of ``grid_shape`` = (ny, nx).

    Attributes
    ----------
    shape : tuple of int
        (ny, nx) = (rows, columns).
    parameters : tuple of str
    values : dict of str to ndarray of float64, shape (ny, nx)
        Views of one stacked array; read them, update through :meth:`update`.
    statuses : dict of str to ndarray of int32, shape (ny, nx)
    measured_count : ndarray of int32, shape (ny, nx)
        Frames placed on each point.
    version : int
        Increases with every update.
    n_repeated : int
        Updates of points that had already been measured.
    """

    def __init__(self, grid_shape: Sequence[int], parameters: Sequence[str]) -> None:
        shape = tuple(int(n) for n in grid_shape)
        if len(shape) != 2 or min(shape) < 1:
            raise ConfigurationError(f"map grid shape {tuple(grid_shape)!r} must be two positive integers")
        names = tuple(str(p) for p in parameters)
        if len(set(names)) != len(names):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            raise ConfigurationError(f"map parameters {duplicates} are listed more than once")
        self.shape = shape
        self.parameters = names
        self._index = {name: i for i, name in enumerate(names)}
        self._values = np.full((len(names), *shape), np.nan, dtype=np.float64)
        self._statuses = np.full((len(names), *shape), int(Status.NOT_MEASURED), dtype=np.int32)
        self.values = {name: self._values[i] for i, name in enumerate(names)}
        self.statuses = {name: self._statuses[i] for i, name in enumerate(names)}
        self.measured_count = np.zeros(shape, dtype=np.int32)
        self.version = 0
        self.n_repeated = 0

    @property
    def n_measured(self) -> int:
        """Scan points with at least one frame."""
        return int(np.count_nonzero(self.measured_count))

    def _check_position(self, row: int, col: int) -> tuple[int, int]:
        row, col = int(row), int(col)
        if not (0 <= row < self.shape[0] and 0 <= col < self.shape[1]):
            raise ConfigurationError(f"map position (row {row}, column {col}) is outside the grid {self.shape}")
        return row, col

    def _vector(self, data, fill, dtype, what: str) -> np.ndarray:
        if isinstance(data, Mapping):
            unknown = [name for name in data if name not in self._index]
            if unknown:
                raise ConfigurationError(f"{what} for unknown map parameter(s) {unknown}")
            vector = np.full(len(self.parameters), fill, dtype=dtype)
            for name, value in data.items():
                vector[self._index[name]] = value
            return vector
        vector = np.asarray(data, dtype=dtype).reshape(-1)
        if vector.size != len(self.parameters):
            raise ConfigurationError(f"{what} vector has {vector.size} entries, expected "
                                     f"{len(self.parameters)} (one per map parameter)")
        return vector

    def stacked(self) -> tuple[np.ndarray, np.ndarray]:
        """All maps at once, in :attr:`parameters` order, as read-only views.

        Returns
        -------
        values : ndarray of float64, shape (n_parameters, ny, nx)
        statuses : ndarray of int32, shape (n_parameters, ny, nx)
        """
        values, statuses = self._values.view(), self._statuses.view()
        values.flags.writeable = statuses.flags.writeable = False
        return values, statuses

    def update(self, row: int, col: int, values, statuses=None) -> None:
        """Place one frame's results on point (row, col).

        Parameters
        ----------
        row, col : int
            Map point (0-based; negative indices are rejected).
        values : mapping of str to float, or sequence of float (n_parameters,)
            A mapping may hold a subset of the parameters: the others become NaN with status
            ``MISSING_PEAK`` (nothing was computed for them in this frame).
        statuses : mapping or sequence of int, optional
            Status codes (default: OK where the value is finite, else ``INVALID_INPUT``).
        """
        row, col = self._check_position(row, col)
        value_vector = self._vector(values, np.nan, np.float64, "values")
        if statuses is None:
            status_vector = np.where(np.isfinite(value_vector), _OK, _INVALID_INPUT)
        else:
            status_vector = self._vector(statuses, int(Status.MISSING_PEAK), np.int64, "statuses")
        if isinstance(values, Mapping):
            absent = np.ones(len(self.parameters), dtype=bool)
            absent[[self._index[name] for name in values]] = False
            status_vector = np.where(absent, int(Status.MISSING_PEAK), status_vector)
        status_vector = status_vector.astype(np.int32)  # a copy: the caller's vector stays as it was
        ok = status_vector == _OK
        good = np.isfinite(value_vector)
        good &= ok
        status_vector[ok ^ good] = _INVALID_INPUT  # sent as OK but not finite
        if self.measured_count[row, col] > 0:
            self.n_repeated += 1
        column = self._values[:, row, col]
        column[...] = value_vector
        column[~good] = np.nan  # every status but OK goes with NaN
        self._statuses[:, row, col] = status_vector
        self.measured_count[row, col] += 1
        self.version += 1

    def snapshot(self) -> dict:
        """A copy of the state as plain types and arrays (safe to serialise or hand to a thread).

        Returns
        -------
        dict
            ``shape`` (list of 2 int), ``parameters`` (list of str), ``version`` (int),
            ``n_measured`` / ``n_repeated`` (int), ``values`` float64 (n_parameters, ny, nx),
            ``statuses`` int32 (n_parameters, ny, nx), ``measured_count`` int32 (ny, nx).
        """
        return {
            "shape": list(self.shape),
            "parameters": list(self.parameters),
            "version": self.version,
            "n_measured": self.n_measured,
            "n_repeated": self.n_repeated,
            "values": self._values.copy(),
            "statuses": self._statuses.copy(),
            "measured_count": self.measured_count.copy(),
        }

    @classmethod
    def from_snapshot(cls, snapshot: Mapping) -> "MapState":
        """Rebuild a state from :meth:`snapshot` output (e.g. in a viewer or after a restart)."""
        state = cls(snapshot["shape"], snapshot["parameters"])
        expected = (len(state.parameters), *state.shape)
        values = np.asarray(snapshot["values"], dtype=np.float64)
        statuses = np.asarray(snapshot["statuses"], dtype=np.int32)
        if values.shape != expected or statuses.shape != expected:
            raise ConfigurationError(f"map snapshot arrays {values.shape} / {statuses.shape} do not fit {expected}")
        state._values[...] = values
        state._statuses[...] = statuses
        state.measured_count[...] = np.asarray(snapshot["measured_count"], dtype=np.int32)
        state.version = int(snapshot["version"])
        state.n_repeated = int(snapshot.get("n_repeated", 0))
        return state

    # Derived maps (computed on demand; never stored).

    def _intensity(self, intensity_parameter: str) -> np.ndarray:
        if intensity_parameter not in self._index:
            raise ConfigurationError(f"map parameter {intensity_parameter!r} (for the supercrystal mask) is not "
                                     f"among {self.parameters}")
        return self.values[intensity_parameter]

    def crystal_region(self, step_um=(1.0, 1.0), intensity_parameter: str = SAXS_INTENSITY,
                       threshold_fraction: float = 0.5, scan_border_outside: bool = False) -> CrystalRegion:
        """Supercrystal mask, outside points and distance to edge (um) from the intensity map."""
        return crystal_region(self._intensity(intensity_parameter), step_um, threshold_fraction,
                              scan_border_outside)

    def sc_mask(self, intensity_parameter: str = SAXS_INTENSITY, threshold_fraction: float = 0.5) -> np.ndarray:
        """Bool (ny, nx): intensity above ``threshold_fraction`` of its maximum (NaN = outside)."""
        return self.crystal_region((1.0, 1.0), intensity_parameter, threshold_fraction).inside

    def distance_to_edge_um(self, step_um=(1.0, 1.0), intensity_parameter: str = SAXS_INTENSITY,
                            scan_border_outside: bool = False) -> np.ndarray:
        """Float64 (ny, nx): distance of inside points to the nearest outside point, um."""
        return self.crystal_region(step_um, intensity_parameter,
                                   scan_border_outside=scan_border_outside).distance_um

    def profile(self, parameter: str, step_um=(1.0, 1.0), bin_width_um: float | None = None,
                intensity_parameter: str = SAXS_INTENSITY) -> DistanceProfile:
        """Profile of map ``parameter`` against distance to the supercrystal edge."""
        if parameter not in self._index:
            raise ConfigurationError(f"no map parameter {parameter!r} for a profile; known: {self.parameters}")
        region = self.crystal_region(step_um, intensity_parameter)
        return profile_vs_distance(self.values[parameter], region.distance_um, region.inside, bin_width_um)
