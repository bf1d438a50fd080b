"""The fitted Bragg peaks of one or many frames, as one object for the derived quantities.

The fitter produces, for every peak window, the 2D-Gaussian parameters, their 1-sigma errors
and a :class:`analysis.status.Status`. :class:`PeakFits` holds them as arrays of shape
``(..., n_peaks)`` (any leading "frames" shape, ``()`` for one frame) with the peak names along
the last axis. A peak is *present* in a frame when its status is OK and its intensity, q0 and
chi0 are finite with q0 > 0; everything else counts as missing.

Peak names (science.md sections 3 and 4): SAXS first order ``saxs_1`` .. ``saxs_4`` (1 and 3 are
(100)_SL and its Friedel mate, 2 and 4 are (010)_SL and its mate, listed counter-clockwise);
WAXS ``waxs_010``, ``waxs_020``, ``waxs_110``, ``waxs_m110`` (pseudo-cubic indexing).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from analysis.errors import ConfigurationError
from analysis.status import Status

SAXS_FIRST_ORDER = ("saxs_1", "saxs_2", "saxs_3", "saxs_4")
WAXS_PEAKS = ("waxs_010", "waxs_020", "waxs_110", "waxs_m110")
WAXS_MILLER: dict[str, tuple[int, int, int]] = {
    "waxs_010": (0, 1, 0),
    "waxs_020": (0, 2, 0),
    "waxs_110": (1, 1, 0),
    "waxs_m110": (-1, 1, 0),
}
"""Pseudo-cubic Miller indices of the WAXS peaks."""

PEAK_QUANTITIES = ("i0", "q0_nm", "chi0_deg", "fwhm_q_nm", "fwhm_chi_deg")
"""Fitted quantities per peak: integrated intensity (photons), centre q (nm^-1), centre
azimuth (deg, counter-clockwise on the image), radial FWHM (nm^-1), azimuthal FWHM (deg)."""

PEAK_ERRORS = ("i0_err", "q0_err_nm", "chi0_err_deg", "fwhm_q_err_nm", "fwhm_chi_err_deg")
"""1-sigma errors of :data:`PEAK_QUANTITIES`, same order and units."""


def _float_array(value, shape, name):
    array = np.asarray(value, dtype=np.float64)
    if array.shape != shape:
        raise ConfigurationError(f"PeakFits.{name} has shape {array.shape}, expected {shape}")
    return array


def _check_quantity(quantity: str) -> None:
    if quantity not in PEAK_QUANTITIES and quantity not in PEAK_ERRORS:
        raise ConfigurationError(f"unknown peak quantity {quantity!r}; known: {PEAK_QUANTITIES + PEAK_ERRORS}")


_COLUMN_INDEX: dict[tuple, tuple[np.ndarray, bool]] = {}
"""(peak names of a PeakFits, names asked for) -> (their column indices, -1 where absent; all present)."""


@dataclass(frozen=True, eq=False)
class PeakFits:
    """Fitted peaks of one or many frames.

    Attributes
    ----------
    names : tuple of str, length n_peaks
        Peak names along the last axis.
    i0, q0_nm, chi0_deg, fwhm_q_nm, fwhm_chi_deg : ndarray of float64, shape (..., n_peaks)
        Integrated intensity (photons), centre (nm^-1, deg in any 360-degree branch), radial FWHM
        (nm^-1) and azimuthal FWHM (deg). NaN = missing.
    status : ndarray of int32, shape (..., n_peaks)
        :class:`analysis.status.Status` of each fit.
    i0_err, q0_err_nm, chi0_err_deg, fwhm_q_err_nm, fwhm_chi_err_deg : ndarray of float64
        1-sigma errors, same shape; all NaN when not given.
    """

    names: tuple[str, ...]
    i0: np.ndarray
    q0_nm: np.ndarray
    chi0_deg: np.ndarray
    fwhm_q_nm: np.ndarray
    fwhm_chi_deg: np.ndarray
    status: np.ndarray
    i0_err: np.ndarray | None = None
    q0_err_nm: np.ndarray | None = None
    chi0_err_deg: np.ndarray | None = None
    fwhm_q_err_nm: np.ndarray | None = None
    fwhm_chi_err_deg: np.ndarray | None = None
    _index: dict = field(init=False, repr=False, compare=False)
    _present: np.ndarray = field(init=False, repr=False, compare=False)
    _value_status: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.names)
        if len(set(names)) != len(names):
            raise ConfigurationError(f"PeakFits peak names are not unique: {names}")
        object.__setattr__(self, "names", names)
        shape = np.shape(self.q0_nm)
        if len(shape) == 0 or shape[-1] != len(names):
            raise ConfigurationError(
                f"PeakFits.q0_nm has shape {shape}; its last axis must hold the {len(names)} peaks {names}")
        for name in PEAK_QUANTITIES:
            object.__setattr__(self, name, _float_array(getattr(self, name), shape, name))
        for name in PEAK_ERRORS:
            value = getattr(self, name)
            value = np.full(shape, np.nan) if value is None else _float_array(value, shape, name)
            object.__setattr__(self, name, value)
        status = np.asarray(self.status)
        if status.shape != shape:
            raise ConfigurationError(f"PeakFits.status has shape {status.shape}, expected {shape}")
        object.__setattr__(self, "status", status.astype(np.int32))
        object.__setattr__(self, "_index", {n: i for i, n in enumerate(names)})
        # every peak at once: the derived quantities ask for these many times per frame
        with np.errstate(invalid="ignore"):
            present = ((self.status == Status.OK) & np.isfinite(self.i0) & np.isfinite(self.q0_nm)
                       & np.isfinite(self.chi0_deg) & (self.q0_nm > 0))
        value_status = np.where(present, int(Status.OK),
                                np.where(self.status == Status.OK, int(Status.INVALID_INPUT), self.status))
        object.__setattr__(self, "_present", present)
        object.__setattr__(self, "_value_status", value_status.astype(np.int32))

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """Leading ("frames") shape ``...``."""
        return self.q0_nm.shape[:-1]

    def has(self, name: str) -> bool:
        """Whether the peak model contains peak ``name``."""
        return name in self._index

    def get(self, quantity: str, name: str) -> np.ndarray:
        """One quantity of one peak, shape (...); all NaN when the model lacks the peak.

        Parameters
        ----------
        quantity : str
            One of :data:`PEAK_QUANTITIES` or :data:`PEAK_ERRORS`.
        name : str
            Peak name.
        """
        _check_quantity(quantity)
        if name not in self._index:
            return np.full(self.frame_shape, np.nan)
        return getattr(self, quantity)[..., self._index[name]]

    def columns(self, quantity: str, names) -> np.ndarray:
        """:meth:`get` of several peaks on a last axis, float64 (..., len(names)); a copy.

        One indexing instead of a stack of ``len(names)`` views (the derived quantities ask for
        such stacks ~30 times per frame).
        """
        _check_quantity(quantity)
        return self._columns(getattr(self, quantity), names, np.nan)

    def present_columns(self, names) -> np.ndarray:
        """:meth:`present` of several peaks on a last axis, bool (..., len(names)); a copy."""
        return self._columns(self._present, names, False)

    def _columns(self, array: np.ndarray, names, missing) -> np.ndarray:
        key = (self.names, tuple(names))
        cached = _COLUMN_INDEX.get(key)
        if cached is None:
            if len(_COLUMN_INDEX) > 1024:  # bounded: a peak model asks for a few dozen
                _COLUMN_INDEX.clear()
            index = np.array([self._index.get(name, -1) for name in key[1]], dtype=np.intp)
            cached = _COLUMN_INDEX[key] = (index, bool((index >= 0).all()))
        index, complete = cached
        if complete:
            return array[..., index]
        out = np.full(self.frame_shape + (index.size,), missing, dtype=array.dtype)
        for k, i in enumerate(index):
            if i >= 0:
                out[..., k] = array[..., i]
        return out

    def peak_status(self, name: str) -> np.ndarray:
        """Status of peak ``name``, int32 shape (...); MISSING_PEAK when the model lacks it."""
        if name not in self._index:
            return np.full(self.frame_shape, int(Status.MISSING_PEAK), dtype=np.int32)
        return self.status[..., self._index[name]]

    def present(self, name: str) -> np.ndarray:
        """Bool (...): status OK, i0, q0 and chi0 finite and q0 > 0."""
        if name not in self._index:
            return np.zeros(self.frame_shape, dtype=bool)
        return self._present[..., self._index[name]].copy()

    def value_status(self, name: str) -> np.ndarray:
        """Status (int32, (...)) of a value computed from peak ``name`` alone: OK where present,
        else the fit's own status (INVALID_INPUT when the fit said OK but its numbers are not
        usable: non-finite, or q0 <= 0)."""
        if name not in self._index:
            return self.peak_status(name)
        return self._value_status[..., self._index[name]].copy()

    def value_statuses(self) -> np.ndarray:
        """:meth:`value_status` of every peak, int32 (..., n_peaks)."""
        return self._value_status.copy()

    @classmethod
    def from_peaks(cls, peaks: dict[str, dict]) -> "PeakFits":
        """Build from ``{name: {quantity: array (...), "status": array (...)}}``.

        Missing quantities are NaN, a missing ``status`` is OK. Convenient for tests and for
        callers holding one record per peak.
        """
        names = tuple(peaks)
        if not names:
            raise ConfigurationError("PeakFits.from_peaks needs at least one peak")
        shapes = {np.shape(v) for record in peaks.values() for v in record.values()}
        frame_shape = np.broadcast_shapes(*shapes) if shapes else ()
        columns = {}
        for quantity in PEAK_QUANTITIES + PEAK_ERRORS:
            columns[quantity] = np.stack(
                [np.broadcast_to(np.asarray(peaks[n].get(quantity, np.nan), dtype=np.float64), frame_shape)
                 for n in names], axis=-1)
        status = np.stack([np.broadcast_to(np.asarray(peaks[n].get("status", int(Status.OK))), frame_shape)
                           for n in names], axis=-1).astype(np.int32)
        return cls(names=names, status=status, **columns)
