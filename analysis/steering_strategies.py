"""Steering strategies: which points of the fine grid deserve a closer look, and how much.

Each strategy reads one scan's maps (:class:`analysis.steering_maps.SteeringMaps`) and marks
points of the fine grid (:class:`analysis.steering_maps.FineGrid`) with a score in [0, 1]:

``crystal``
    Locate the supercrystal(s): the SAXS-intensity mask (intensity above ``threshold_fraction``
    of the maximum, science.md section 6), interpolated onto the fine grid, plus ``margin_um``.
``edges``
    The band within ``band_um`` of the crystal edge, on both sides (the papers see strain and
    disorder change there).
``gradient``
    Where ``parameter`` changes fastest: the ``fraction`` of measured points with the largest
    gradient magnitude (per micrometre), with the cell each of them stands for.
``uncertain``
    Where the fits of ``parameter`` failed (status not OK) or are uncertain (relative 1-sigma
    error above ``max_relative_error``), inside the crystal unless ``inside_crystal`` is false.
``user``
    A rectangle drawn by the user (``x_range_um``, ``y_range_um``), taken as it is.

A strategy that finds nothing returns an empty mask and says why in its note.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage

from analysis.errors import ConfigurationError
from analysis.map_parameters import error_name
from analysis.status import Status
from analysis.steering_maps import (FineGrid, SteeringMaps, coarse_index_on_fine, interpolate_to_fine,
                                    measured_on_fine)

SAXS_INTENSITY = "saxs_intensity"


@dataclass(frozen=True, eq=False)
class StrategyResult:
    """Points one strategy wants.

    Attributes
    ----------
    name : str
    wanted : ndarray of bool, shape ``fine.shape``
    score : ndarray of float64, shape ``fine.shape``
        0..1, 0 where not wanted.
    note : str
        What it found, in words.
    """

    name: str
    wanted: np.ndarray
    score: np.ndarray
    note: str


def finite_pair(value) -> tuple[float, float] | None:
    """``value`` as two finite floats (a JSON pair), or None when it is not one."""
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        return None
    return float(value[0]), float(value[1])


def _number(options: dict, key: str, low: float = 0.0, inclusive: bool = True, high: float = math.inf) -> float:
    value = options[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigurationError(f"option {key}={value!r} must be a finite number")
    if value < low or (value == low and not inclusive) or value > high:
        bound = f"> {low}" if not inclusive else f">= {low}"
        raise ConfigurationError(f"option {key}={value!r} must be {bound}" + (f" and <= {high}" if high < math.inf else ""))
    return float(value)


def composite_on_fine(intensity: str, maps: SteeringMaps, fine: FineGrid, scans=()):
    """``intensity`` on the fine grid: the basis map interpolated, overwritten by what scans at the
    fine step or finer measured (a fine point takes its nearest measured value).

    Returns
    -------
    composite : ndarray of float64, shape ``fine.shape``
        NaN where nothing is known.
    measured : ndarray of bool, shape ``fine.shape``
        Points whose value was measured at the fine step (not interpolated).
    """
    composite = interpolate_to_fine(maps.map(intensity), maps, fine)
    measured = np.zeros(fine.shape, dtype=bool)
    for scan in scans:
        if intensity not in scan.parameters:
            continue
        values = scan.map(intensity)
        placed = measured_on_fine(scan, fine, scan.measured & np.isfinite(values))
        if placed is None:
            continue
        r, c, fr, fc = placed
        composite[fr, fc] = values[r, c]
        measured[fr, fc] = True
    return composite, measured


def crystal_inside_fine(maps: SteeringMaps, fine: FineGrid, intensity: str, threshold_fraction: float, scans=()):
    """(inside on the fine grid, measured at the fine step, threshold, number of crystals) from
    :func:`composite_on_fine`; the threshold is ``threshold_fraction`` of the largest intensity
    measured by any scan."""
    composite, measured = composite_on_fine(intensity, maps, fine, scans)
    coarse = maps.map(intensity)
    known = np.concatenate([composite[np.isfinite(composite)], coarse[np.isfinite(coarse)]])
    top = float(known.max()) if known.size else math.nan
    if not known.size or top <= 0:
        return np.zeros(fine.shape, bool), measured, math.nan, 0
    threshold = threshold_fraction * top
    with np.errstate(invalid="ignore"):
        inside = np.isfinite(composite) & (composite > threshold)
    _, n_crystals = ndimage.label(inside)
    return inside, measured, threshold, int(n_crystals)


def _within_um(mask: np.ndarray, fine: FineGrid, distance_um: float) -> np.ndarray:
    """Points within ``distance_um`` of a True point of ``mask`` (True points included)."""
    if not mask.any():
        return mask.copy()
    return ndimage.distance_transform_edt(~mask, sampling=fine.step_um) <= distance_um + 1e-9


def crystal(maps: SteeringMaps, fine: FineGrid, scans=(), intensity: str = SAXS_INTENSITY,
            threshold_fraction: float = 0.5, margin_um: float = 0.0, frontier_um: float | None = None) -> StrategyResult:
    """The crystal as the maps know it, plus ``margin_um``; where a fine scan measured the crystal
    up to its own border, ``frontier_um`` (default one fine step) beyond it: the crystal goes on
    there, and asking again follows it until its edge is measured."""
    inside, measured, threshold, n = crystal_inside_fine(maps, fine, intensity, threshold_fraction, scans)
    frontier = max(fine.step_um) if frontier_um is None else frontier_um
    wanted = _within_um(inside, fine, margin_um) | _within_um(inside & measured, fine, frontier)
    score = np.where(inside, 1.0, np.where(wanted, 0.5, 0.0))
    if n == 0:
        note = f"crystal: no point of series {maps.series_id} has {intensity} above {threshold_fraction:g} of the maximum"
    else:
        note = (f"crystal: {n} supercrystal{'s' if n > 1 else ''} in series {maps.series_id} ({intensity} > "
                f"{threshold:.4g}), {int(inside.sum())} fine points inside ({int((inside & measured).sum())} "
                f"measured at the fine step), margin {margin_um:g} um, frontier {frontier:g} um")
    return StrategyResult("crystal", wanted, score, note)


def edges(maps: SteeringMaps, fine: FineGrid, scans=(), intensity: str = SAXS_INTENSITY,
          threshold_fraction: float = 0.5, band_um: float | None = None) -> StrategyResult:
    inside, _, _, n = crystal_inside_fine(maps, fine, intensity, threshold_fraction, scans)
    band = max(maps.abs_step_um) if band_um is None else band_um
    if n == 0 or inside.all():
        why = "no supercrystal" if n == 0 else "no point outside the supercrystal"
        return StrategyResult("edges", np.zeros(fine.shape, bool), np.zeros(fine.shape),
                              f"edges: {why} in series {maps.series_id}, so no edge")
    to_outside = ndimage.distance_transform_edt(inside, sampling=fine.step_um)
    to_inside = ndimage.distance_transform_edt(~inside, sampling=fine.step_um)
    distance = np.where(inside, to_outside, to_inside)  # to the edge, from either side
    wanted = distance <= band + 1e-9
    score = np.where(wanted, 1.0 - 0.5 * distance / max(band, 1e-12), 0.0)
    return StrategyResult("edges", wanted, score, f"edges: band of {band:g} um along the edge of "
                          f"{n} supercrystal{'s' if n > 1 else ''} ({int(wanted.sum())} fine points)")


def _cells(coarse_selected: np.ndarray, coarse_score: np.ndarray, maps: SteeringMaps, fine: FineGrid):
    rows, cols = coarse_index_on_fine(maps, fine)
    wanted = coarse_selected[np.ix_(rows, cols)]
    return wanted, np.where(wanted, coarse_score[np.ix_(rows, cols)], 0.0)


def gradient(maps: SteeringMaps, fine: FineGrid, scans=(), parameter: str | None = None, fraction: float = 0.2) -> StrategyResult:
    if parameter is None:
        raise ConfigurationError("strategy gradient needs the option parameter (the map to follow)")
    values = maps.map(parameter)
    parts = []
    for axis in (0, 1):
        if values.shape[axis] < 2:
            parts.append(np.zeros_like(values))
        else:
            parts.append(np.gradient(values, abs(maps.grid.step_um[axis]), axis=axis))
    magnitude = np.hypot(*parts)
    finite = np.isfinite(magnitude)
    if not finite.any():
        return StrategyResult("gradient", np.zeros(fine.shape, bool), np.zeros(fine.shape),
                              f"gradient: {parameter} has no two neighbouring values in series {maps.series_id}")
    cut = float(np.quantile(magnitude[finite], 1.0 - fraction))
    top = float(magnitude[finite].max())
    selected = finite & (magnitude >= cut) & (magnitude > 0)
    score = np.where(selected, magnitude / top if top > 0 else 0.0, 0.0)
    wanted, fine_score = _cells(selected, score, maps, fine)
    return StrategyResult("gradient", wanted, fine_score,
                          f"gradient: {int(selected.sum())} points of series {maps.series_id} where |grad {parameter}| "
                          f">= {cut:.4g} per um (top {fraction:.0%}, largest {top:.4g})")


def uncertain(maps: SteeringMaps, fine: FineGrid, scans=(), parameter: str | None = None, max_relative_error: float = 0.05,
              inside_crystal: bool = True, intensity: str = SAXS_INTENSITY,
              threshold_fraction: float = 0.5) -> StrategyResult:
    if parameter is None:
        raise ConfigurationError("strategy uncertain needs the option parameter (the map whose fits to check)")
    values, status = maps.map(parameter), maps.status(parameter)
    measured = maps.measured & (status != int(Status.NOT_MEASURED))
    failed = measured & (status != int(Status.OK))
    relative = np.zeros(values.shape)
    if error_name(parameter) in maps.parameters:
        with np.errstate(invalid="ignore", divide="ignore"):
            relative = np.abs(maps.map(error_name(parameter)) / values)
    with np.errstate(invalid="ignore"):
        doubtful = measured & (status == int(Status.OK)) & (relative > max_relative_error)
    selected = failed | doubtful
    where = ""
    if inside_crystal:
        intensity_map = maps.map(intensity)
        finite = intensity_map[np.isfinite(intensity_map)]
        threshold = threshold_fraction * float(finite.max()) if finite.size else math.inf
        with np.errstate(invalid="ignore"):
            selected &= np.isfinite(intensity_map) & (intensity_map > threshold)
        where = " inside the supercrystal"
    score = np.where(failed, 1.0, np.clip(relative / max(2 * max_relative_error, 1e-12), 0.0, 1.0)) * selected
    wanted, fine_score = _cells(selected, score, maps, fine)
    return StrategyResult("uncertain", wanted, fine_score,
                          f"uncertain: {int((failed & selected).sum())} failed and {int((doubtful & selected).sum())} "
                          f"uncertain (> {max_relative_error:.0%}) {parameter} fits{where} in series {maps.series_id}")


def user(maps: SteeringMaps, fine: FineGrid, scans=(), x_range_um=None, y_range_um=None) -> StrategyResult:
    ranges = []
    for key, value in (("y_range_um", y_range_um), ("x_range_um", x_range_um)):
        pair = finite_pair(value)
        if pair is None:
            raise ConfigurationError(f"strategy user needs {key} as two finite numbers (um), got {value!r}")
        ranges.append(sorted(pair))
    rows, cols = fine.axes_um()
    tolerance = [1e-6 * s for s in fine.step_um]
    in_rows = (rows >= ranges[0][0] - tolerance[0]) & (rows <= ranges[0][1] + tolerance[0])
    in_cols = (cols >= ranges[1][0] - tolerance[1]) & (cols <= ranges[1][1] + tolerance[1])
    wanted = np.outer(in_rows, in_cols)
    note = (f"user: rectangle {fine.axis_names[1]} {ranges[1][0]:g}..{ranges[1][1]:g} um x "
            f"{fine.axis_names[0]} {ranges[0][0]:g}..{ranges[0][1]:g} um")
    if not wanted.any():
        note += " misses the mapped area"
    return StrategyResult("user", wanted, wanted.astype(np.float64), note)


STRATEGIES: dict[str, Callable[..., StrategyResult]] = {
    "crystal": crystal, "edges": edges, "gradient": gradient, "uncertain": uncertain, "user": user,
}
NUMBER_OPTIONS = {"threshold_fraction": (0.0, False, 1.0), "margin_um": (0.0, True, math.inf), "frontier_um": (0.0, True, math.inf),
                  "band_um": (0.0, False, math.inf), "fraction": (0.0, False, 1.0),
                  "max_relative_error": (0.0, False, math.inf)}


def run_strategy(name: str, options: dict, maps: SteeringMaps, fine: FineGrid, scans=()) -> StrategyResult:
    """Run strategy ``name`` with ``options``; :class:`ConfigurationError` naming any bad option."""
    if name not in STRATEGIES:
        raise ConfigurationError(f"unknown steering strategy {name!r}; known: {', '.join(STRATEGIES)}")
    function = STRATEGIES[name]
    known = [p for p in inspect.signature(function).parameters if p not in ("maps", "fine", "scans")]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigurationError(f"strategy {name} has no option {', '.join(unknown)}; its options: {', '.join(known)}")
    checked = dict(options)
    for key, (low, inclusive, high) in NUMBER_OPTIONS.items():
        if key in checked and checked[key] is not None:
            checked[key] = _number(checked, key, low, inclusive, high)
    for key in ("parameter", "intensity"):
        if key in checked and not isinstance(checked[key], str):
            raise ConfigurationError(f"option {key}={checked[key]!r} of strategy {name} must be a map name")
    if "inside_crystal" in checked and not isinstance(checked["inside_crystal"], bool):
        raise ConfigurationError(f"option inside_crystal={checked['inside_crystal']!r} must be true or false")
    return function(maps, fine, scans, **checked)
