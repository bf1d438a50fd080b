"""The registry of map parameters: every map the service produces for a given peak model.

Each parameter has a name (physics and unit in the name where it could be doubted), a unit, a
one-line description and a default colour-range rule (robust 2-98 % percentiles of the finite
values unless stated otherwise). Per-peak maps are named ``<peak>.<quantity>`` (for example
``waxs_010.q0_nm``); 1-sigma error maps insert ``_err`` before the unit suffix
(``a1_err_nm``, ``waxs_010.q0_err_nm``; see :func:`error_name`).

:func:`map_vectors` turns the per-frame value dictionaries of the derived-quantity modules
into the ordered ``(values, statuses)`` vectors the service sends per frame.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from analysis.errors import ConfigurationError
from analysis.peak_fits import PEAK_ERRORS, PEAK_QUANTITIES, SAXS_FIRST_ORDER, WAXS_MILLER, PeakFits
from analysis.status import Status

_UNIT_SUFFIXES = ("_nm", "_deg", "_um")


@functools.lru_cache(maxsize=4096)  # asked for ~100 times per analysed frame
def error_name(name: str) -> str:
    """Name of the 1-sigma error map of parameter ``name``: ``a1_nm`` -> ``a1_err_nm``,
    ``waxs_010.i0`` -> ``waxs_010.i0_err``, ``a_ratio`` -> ``a_ratio_err``."""
    for suffix in _UNIT_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)] + "_err" + suffix
    return name + "_err"


@dataclass(frozen=True)
class ColourRangeRule:
    """Default display range of a map.

    Attributes
    ----------
    low_percentile, high_percentile : float
        Robust range from percentiles of the finite values (default 2 and 98 %).
    fixed : tuple of float or None
        A fixed (vmin, vmax) instead (e.g. peak counts).
    """

    low_percentile: float = 2.0
    high_percentile: float = 98.0
    fixed: tuple[float, float] | None = None

    def limits(self, values) -> tuple[float, float] | None:
        """(vmin, vmax) for ``values`` (any shape, NaN ignored); None when nothing is finite.
        A constant map gets a range of +-0.5 (or +-50 %) around its value."""
        if self.fixed is not None:
            return float(self.fixed[0]), float(self.fixed[1])
        data = np.asarray(values, dtype=np.float64)
        finite = data[np.isfinite(data)]
        if finite.size == 0:
            return None
        vmin, vmax = np.percentile(finite, [self.low_percentile, self.high_percentile])
        if vmin == vmax:
            half = 0.5 * abs(vmin) if vmin != 0 else 0.5
            vmin, vmax = vmin - half, vmax + half
        return float(vmin), float(vmax)


ROBUST = ColourRangeRule()


@dataclass(frozen=True)
class MapParameter:
    """One map: ``name``, ``unit``, one-line ``description``, default ``colour_range``."""

    name: str
    unit: str
    description: str
    colour_range: ColourRangeRule = ROBUST


def _p(name, unit, description, colour_range=ROBUST, with_error=False):
    out = [MapParameter(name, unit, description, colour_range)]
    if with_error:
        out.append(MapParameter(error_name(name), unit, f"1-sigma error of {name}"))
    return out


_PEAK_UNITS = {"i0": "photons", "q0_nm": "nm^-1", "chi0_deg": "deg", "fwhm_q_nm": "nm^-1",
               "fwhm_chi_deg": "deg"}
_PEAK_DESCRIPTIONS = {
    "i0": "integrated intensity of the fitted 2D Gaussian",
    "q0_nm": "peak centre q",
    "chi0_deg": "peak centre azimuth (counter-clockwise on the image)",
    "fwhm_q_nm": "radial FWHM",
    "fwhm_chi_deg": "azimuthal FWHM",
}


def map_parameters(peak_names: Iterable[str]) -> tuple[MapParameter, ...]:
    """Every map produced for a peak model holding ``peak_names``, in a fixed order.

    Parameters
    ----------
    peak_names : iterable of str
        Peak names of the model (``saxs_1`` .. ``saxs_4``, ``waxs_*``; others get per-peak maps only).
    """
    names = list(dict.fromkeys(peak_names))
    has_saxs = all(p in names for p in SAXS_FIRST_ORDER)
    waxs = [p for p in names if p in WAXS_MILLER]
    pairs = ColourRangeRule(fixed=(0.0, 2.0))
    out = _p("saxs_intensity", "counts", "integrated background-subtracted SAXS intensity (q < q_max): "
             "the X-ray microscopy map")
    if has_saxs:
        out += _p("a1_nm", "nm", "superlattice basis vector a1 = 2 pi / (q1 sin gamma)", with_error=True)
        out += _p("a2_nm", "nm", "superlattice basis vector a2 = 2 pi / (q2 sin gamma)", with_error=True)
        out += _p("a_mean_nm", "nm", "mean superlattice parameter <a> = (a1 + a2) / 2", with_error=True)
        out += _p("a_ratio", "1", "superlattice anisotropy a2 / a1", with_error=True)
        out += _p("gamma_deg", "deg", "angle between a1 and a2 (Lapkin S5)", with_error=True)
        out += _p("phi_deg", "deg", "azimuth of the mean line between a1 and a2 (mod 180)", with_error=True)
        out += _p("a_sc_nm", "nm", "Hiller <a_SC> = 2 pi / (<q0> sin gamma_H) from the 4 first-order q0",
                  with_error=True)
        out += _p("gamma_hiller_deg", "deg", "Hiller gamma_H from the 4 first-order azimuths "
                  "(angle between reciprocal vectors)", with_error=True)
        out += _p("saxs_pair1_n_peaks", "peaks", "first-order peaks present in the (100)_SL Friedel pair", pairs)
        out += _p("saxs_pair2_n_peaks", "peaks", "first-order peaks present in the (010)_SL Friedel pair", pairs)
    if waxs:
        out += _p("psi_deg", "deg", "azimuth psi of [010]_AL (circular mean over the WAXS peaks)",
                  with_error=True)
        if has_saxs:
            out += _p("psi_minus_phi_deg", "deg", "atomic vs superlattice orientation Delta = psi - phi")
        out += _p("i_al", "photons", "mean integrated intensity <I_AL> of the WAXS peaks present")
        out += _p("a_al_nm", "nm", "atomic lattice constant a_AL, mean over the WAXS peaks present",
                  with_error=True)
        for peak in waxs:
            out += _p(f"{peak}.a_al_nm", "nm", f"atomic lattice constant 2 pi |hkl| / q0 from {peak}",
                      with_error=True)
        out += _p("n_waxs_peaks", "peaks", "WAXS peaks present", ColourRangeRule(fixed=(0.0, float(len(waxs)))))
        if "waxs_010" in waxs:
            out += _p("a_nm", "nm", "Hiller a = 2 pi / q0(100) (pseudo-cubic 010 peak)")
            if "waxs_110" in waxs or "waxs_m110" in waxs:
                out += _p("b_nm", "nm", "Hiller b = 2 pi a / sqrt(a^2 q0(110)^2 - 4 pi^2)")
        out += _p("g_q", "1", "lattice distortion g_q from radial widths, L fixed (fraction)")
        out += _p("delta_psi_deg", "deg", "orientational spread delta_psi from azimuthal widths, L fixed")
        out += _p("orientational_disorder_deg", "deg", "Hiller S4-S8 orientational disorder: azimuthal FWHM "
                  "without the size (L) and microstrain (g_q) terms, mean over the WAXS peaks")
    for peak in names:
        for quantity in PEAK_QUANTITIES:
            out += _p(f"{peak}.{quantity}", _PEAK_UNITS[quantity], f"{peak}: {_PEAK_DESCRIPTIONS[quantity]}",
                      with_error=True)
    return tuple(out)


def parameter_names(peak_names: Iterable[str]) -> tuple[str, ...]:
    """Names of :func:`map_parameters`, in order."""
    return tuple(p.name for p in map_parameters(peak_names))


def registry(peak_names: Iterable[str]) -> dict[str, MapParameter]:
    """:func:`map_parameters` keyed by name."""
    return {p.name: p for p in map_parameters(peak_names)}


def peak_map_values(fits: PeakFits) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-peak maps ``<peak>.<quantity>`` and their errors with statuses (NaN where not OK)."""
    values: dict[str, np.ndarray] = {}
    statuses: dict[str, np.ndarray] = {}
    status = fits.value_statuses()  # (..., n_peaks)
    ok = status == Status.OK
    masked = {quantity: np.where(ok, getattr(fits, quantity), np.nan)
              for quantity in PEAK_QUANTITIES + PEAK_ERRORS}
    for i, peak in enumerate(fits.names):
        for quantity, error in zip(PEAK_QUANTITIES, PEAK_ERRORS):
            name = f"{peak}.{quantity}"
            values[name] = masked[quantity][..., i]
            values[error_name(name)] = masked[error][..., i]
            statuses[name] = statuses[error_name(name)] = status[..., i]
    return values, statuses


def map_vectors(parameters: Sequence[str], *parts: tuple[Mapping, Mapping]) -> tuple[np.ndarray, np.ndarray]:
    """Stack per-frame values into the ordered vectors of ``parameters``.

    Parameters
    ----------
    parameters : sequence of str
        Parameter names in map order (:func:`parameter_names`).
    *parts : (values dict, statuses dict) pairs
        From ``map_values()`` of the derived results, :func:`peak_map_values`, or built by the
        caller (e.g. ``({"saxs_intensity": x}, {"saxs_intensity": status})``). Later parts win.

    Returns
    -------
    values : ndarray of float64, shape (..., n_parameters)
        NaN wherever the status is not OK (the invariant of the maps).
    statuses : ndarray of int32, shape (..., n_parameters)
        Non-finite values with an OK status become INVALID_INPUT.

    Raises
    ------
    ConfigurationError
        When a parameter is produced by none of the parts.
    """
    values: dict = {}
    statuses: dict = {}
    for part_values, part_statuses in parts:
        values.update(part_values)
        statuses.update(part_statuses)
    missing = [name for name in parameters if name not in values or name not in statuses]
    if missing:
        raise ConfigurationError(f"no value computed for map parameter(s) {missing}")
    lead = np.shape(values[parameters[0]]) if parameters else ()
    value_stack = np.empty(lead + (len(parameters),))
    status_stack = np.empty(lead + (len(parameters),), np.int32)
    for k, name in enumerate(parameters):  # (half the time of np.stack over ~120 small arrays)
        value_stack[..., k] = values[name]
        status_stack[..., k] = statuses[name]
    with np.errstate(invalid="ignore"):
        status_stack = np.where((status_stack == Status.OK) & ~np.isfinite(value_stack),
                                int(Status.INVALID_INPUT), status_stack).astype(np.int32)
    value_stack = np.where(status_stack == Status.OK, value_stack, np.nan)
    return value_stack, status_stack
