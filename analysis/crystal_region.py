"""The supercrystal on the map: its mask, the distance to its edge, and profiles against that
distance (science.md section 6; Lapkin Fig. 6b and S18b).

* Mask: a scan point is *inside* when its SAXS intensity exceeds ``threshold_fraction`` (1/2)
  of the maximum of the measured (finite) intensities, *outside* when it is measured and not
  inside. A point without a value (NaN: not measured yet, or the frame failed) is neither: it is
  left out of the mask (``supercrystal_mask`` is False there) and is never taken as an edge, so a
  half-finished scan does not make false edges along its unmeasured rows. With a maximum <= 0
  nothing is inside.
* Distance to edge: Euclidean distance from each inside point to the centre of the nearest
  outside point (``scipy.ndimage.distance_transform_edt`` with ``sampling`` = the step sizes, so
  steps may differ between the axes), micrometres. Outside points get 0, points neither inside
  nor outside get NaN, and so do inside points when no outside point exists. Beyond the scan
  border is unknown by default; ``scan_border_outside=True`` treats it as outside (a crystal cut
  by the scan border then has an edge there, one step beyond the last row/column).
* Profile: mean, sample standard deviation (ddof = 1; NaN below two points) and count of a
  parameter per distance bin, over inside points with a finite value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from analysis.errors import ConfigurationError


def _steps(step_um) -> tuple[float, float]:
    steps = tuple(abs(float(s)) for s in np.broadcast_to(np.asarray(step_um, dtype=np.float64), (2,)))
    if not all(math.isfinite(s) and s > 0 for s in steps):
        raise ConfigurationError(f"map step sizes {step_um!r} must be two non-zero finite numbers (um)")
    return steps


def _map2d(values, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 2:
        raise ConfigurationError(f"{name} must be a 2-D map (rows, columns), got shape {array.shape}")
    return array


def supercrystal_threshold(saxs_intensity, threshold_fraction: float = 0.5) -> float:
    """``threshold_fraction`` times the maximum finite SAXS intensity; NaN when none is finite."""
    data = np.asarray(saxs_intensity, dtype=np.float64)
    finite = data[np.isfinite(data)]
    return float(threshold_fraction * finite.max()) if finite.size else math.nan


def supercrystal_mask(saxs_intensity, threshold_fraction: float = 0.5) -> np.ndarray:
    """Inside-the-supercrystal mask.

    Parameters
    ----------
    saxs_intensity : array_like of float, shape (rows, columns)
        Integrated SAXS intensity map (counts); NaN = not measured.
    threshold_fraction : float
        Fraction of the maximum (1/2 in the papers).

    Returns
    -------
    ndarray of bool, shape (rows, columns)
        True where the intensity exceeds the threshold (False at NaN; with a maximum <= 0
        nothing is inside).
    """
    data = _map2d(saxs_intensity, "saxs_intensity").astype(np.float64)
    threshold = supercrystal_threshold(data, threshold_fraction)
    if not math.isfinite(threshold) or threshold <= 0:
        return np.zeros(data.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        return np.isfinite(data) & (data > threshold)


def distance_to_edge_um(inside, step_um=(1.0, 1.0), outside=None, scan_border_outside: bool = False) -> np.ndarray:
    """Distance (um) from each inside point to the nearest outside point.

    Parameters
    ----------
    inside : array_like of bool, shape (rows, columns)
        Supercrystal mask.
    step_um : (float, float)
        Scan step sizes along rows and columns, micrometres (sign ignored).
    outside : array_like of bool, shape (rows, columns), optional
        Points known to be outside; default ``~inside`` (every point measured).
    scan_border_outside : bool
        Treat the ring just beyond the scan as outside.

    Returns
    -------
    ndarray of float64, shape (rows, columns)
        Distance for inside points; 0 for outside points; NaN elsewhere and for inside points
        when there is no outside point at all.
    """
    inside = _map2d(inside, "inside").astype(bool)
    outside = ~inside if outside is None else _map2d(outside, "outside").astype(bool) & ~inside
    if outside.shape != inside.shape:
        raise ConfigurationError(f"outside mask shape {outside.shape} differs from inside {inside.shape}")
    steps = _steps(step_um)
    if scan_border_outside:
        outside = np.pad(outside, 1, constant_values=True)
    distance = np.full(outside.shape, np.nan)
    if outside.any():
        distance = ndimage.distance_transform_edt(~outside, sampling=steps).astype(np.float64)
    if scan_border_outside:
        distance, outside = distance[1:-1, 1:-1], outside[1:-1, 1:-1]
    return np.where(inside, distance, np.where(outside, 0.0, np.nan))


@dataclass(frozen=True, eq=False)
class CrystalRegion:
    """Mask and distance map of a supercrystal.

    Attributes
    ----------
    inside, outside : ndarray of bool, shape (rows, columns)
        Inside the mask / measured and outside (NaN points are neither).
    threshold : float
        Intensity threshold used (counts); NaN when nothing was measured.
    distance_um : ndarray of float64, shape (rows, columns)
        See :func:`distance_to_edge_um`.
    """

    inside: np.ndarray
    outside: np.ndarray
    threshold: float
    distance_um: np.ndarray


def crystal_region(saxs_intensity, step_um=(1.0, 1.0), threshold_fraction: float = 0.5,
                   scan_border_outside: bool = False) -> CrystalRegion:
    """Mask, outside points and distance to edge from a SAXS intensity map (NaN = not measured)."""
    data = _map2d(saxs_intensity, "saxs_intensity").astype(np.float64)
    inside = supercrystal_mask(data, threshold_fraction)
    outside = np.isfinite(data) & ~inside
    distance = distance_to_edge_um(inside, step_um, outside, scan_border_outside)
    return CrystalRegion(inside, outside, supercrystal_threshold(data, threshold_fraction), distance)


@dataclass(frozen=True, eq=False)
class DistanceProfile:
    """A parameter against distance to the edge.

    Attributes
    ----------
    bin_edges_um : ndarray of float64, shape (n_bins + 1,)
    bin_centres_um : ndarray of float64, shape (n_bins,)
    mean, std : ndarray of float64, shape (n_bins,)
        Mean and sample standard deviation per bin (NaN for empty bins; std NaN below 2 points).
    count : ndarray of int64, shape (n_bins,)
    """

    bin_edges_um: np.ndarray
    bin_centres_um: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray


def profile_vs_distance(values, distance_um, inside=None, bin_width_um: float | None = None,
                        bin_edges_um=None) -> DistanceProfile:
    """Mean and +-1 sigma of a map in bins of distance to the edge (Lapkin Fig. 6b).

    Parameters
    ----------
    values : array_like of float, shape (rows, columns)
        The parameter map; NaN = missing.
    distance_um : array_like of float, shape (rows, columns)
        Distance map (:func:`distance_to_edge_um`).
    inside : array_like of bool, shape (rows, columns), optional
        Points to use; default: finite distance > 0.
    bin_width_um : float, optional
        Bins ``[(k - 1/2) w, (k + 1/2) w)`` for k = 1, 2, ..., centred on multiples of w (one
        scan step is a natural choice); default: the smallest positive distance present.
    bin_edges_um : array_like of float, optional
        Explicit increasing bin edges (overrides ``bin_width_um``).
    """
    values = _map2d(values, "values").astype(np.float64)
    distance = _map2d(distance_um, "distance_um").astype(np.float64)
    if values.shape != distance.shape:
        raise ConfigurationError(f"values shape {values.shape} differs from distance shape {distance.shape}")
    with np.errstate(invalid="ignore"):
        use = np.isfinite(distance) & (distance > 0) & np.isfinite(values)
    if inside is not None:
        use &= _map2d(inside, "inside").astype(bool)
    d, v = distance[use], values[use]
    if bin_edges_um is not None:
        edges = np.asarray(bin_edges_um, dtype=np.float64)
        if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
            raise ConfigurationError(f"profile bin edges {bin_edges_um!r} must increase strictly")
    else:
        if bin_width_um is None:
            bin_width_um = float(d.min()) if d.size else 1.0
        if not (math.isfinite(bin_width_um) and bin_width_um > 0):
            raise ConfigurationError(f"profile bin width {bin_width_um!r} um must be positive")
        n_bins = max(int(math.floor(d.max() / bin_width_um + 0.5)), 1) if d.size else 1
        edges = (np.arange(n_bins + 1, dtype=np.float64) + 0.5) * bin_width_um
    n_bins = edges.size - 1
    index = np.searchsorted(edges, d, side="right") - 1
    keep = (index >= 0) & (index < n_bins)
    index, v = index[keep], v[keep]
    count = np.bincount(index, minlength=n_bins).astype(np.int64)
    total = np.bincount(index, weights=v, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        squares = np.bincount(index, weights=(v - mean[index]) ** 2, minlength=n_bins)
        std = np.where(count > 1, np.sqrt(squares / np.maximum(count - 1, 1)), np.nan)
    return DistanceProfile(edges, 0.5 * (edges[:-1] + edges[1:]), mean, std, count)
