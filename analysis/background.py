"""The Kapton-only background (science.md section 1) in the bins of a polar table.

The background frame is regrouped once per table: its mean counts per statically valid pixel
in every bin, and its value at every pixel of the SAXS region. Per frame, the regroup kernel
subtracts ``scale * mean_per_pixel * n_valid`` bin by bin (so pixels that are NODATA on one
frame only take their share of background with them) and, for the SAXS region, the
background of exactly the pixels used. ``scale`` is the exposure ratio
(frame count time / background count time).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np

from analysis.errors import ConfigurationError, GeometryError
from analysis.polar_table import PolarTable

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class RegroupedBackground:
    """A background frame regrouped into a polar table's bins.

    Attributes
    ----------
    mean_per_pixel : ndarray of float64, shape (n_windows, n_q, n_chi)
        Mean background counts per pixel in each bin (over the statically valid pixels whose
        background value is usable); 0 in bins without such pixels.
    n_pixels : ndarray of int32, shape (n_windows, n_q, n_chi)
        Pixels the mean was taken over.
    saxs_per_pixel : ndarray of float64, shape (n_saxs,)
        Background at each pixel of ``table.saxs_pixel_index``; unusable background pixels
        take the mean of the usable ones.
    scale : float
        Multiplies the background when it is subtracted (exposure ratio).
    """

    mean_per_pixel: np.ndarray
    n_pixels: np.ndarray
    saxs_per_pixel: np.ndarray
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale >= 0):
            raise ConfigurationError(f"background scale (exposure ratio) {self.scale!r} must be finite and >= 0")

    def scaled(self, exposure_ratio: float) -> "RegroupedBackground":
        """The same background with ``scale = exposure_ratio`` (arrays shared, not copied)."""
        return replace(self, scale=float(exposure_ratio))

    def check_matches(self, table: PolarTable) -> None:
        """Raise :class:`GeometryError` when this background was not regrouped into ``table``'s bins."""
        if self.mean_per_pixel.shape != table.bins_shape or self.saxs_per_pixel.shape != table.saxs_pixel_index.shape:
            raise GeometryError(
                f"background regrouped into bins {self.mean_per_pixel.shape} and {self.saxs_per_pixel.size} SAXS "
                f"pixels does not match the table ({table.bins_shape}, {table.saxs_pixel_index.size} SAXS pixels)")


def regroup_background(background_frame: np.ndarray, table: PolarTable, exposure_ratio: float = 1.0,
                       invalid_value: float | None = None) -> RegroupedBackground:
    """Regroup a background frame into ``table``'s bins.

    Parameters
    ----------
    background_frame : ndarray, shape (rows, columns), float32 (or any real dtype)
        Background counts per exposure. NaN, negative values and ``invalid_value`` are
        unusable pixels (left out of the bin means).
    table : PolarTable
    exposure_ratio : float
        Initial ``scale`` (frame exposure / background exposure).
    invalid_value : number, optional
        NODATA marker of the background frame, if it has one.

    Returns
    -------
    RegroupedBackground
    """
    frame = np.asarray(background_frame)
    if frame.shape != table.detector_shape:
        raise GeometryError(f"background frame shape {frame.shape} does not match the detector shape "
                            f"{table.detector_shape}")
    if frame.dtype.kind not in "uif":
        raise GeometryError(f"background frame dtype {frame.dtype} is not numeric")
    flat = frame.reshape(-1)

    def usable_values(index):
        values = flat[index].astype(np.float64)
        usable = np.isfinite(values) & (values >= 0)
        if invalid_value is not None:
            usable &= values != float(frame.dtype.type(invalid_value))
        return values, usable

    n_bins = int(np.prod(table.bins_shape))
    values, usable = usable_values(table.pixel_index)
    sums = np.bincount(table.bin_index[usable], weights=values[usable], minlength=n_bins)
    counts = np.bincount(table.bin_index[usable], minlength=n_bins)
    mean = np.divide(sums, counts, out=np.zeros(n_bins), where=counts > 0).reshape(table.bins_shape)
    n_unusable = int((~usable).sum())

    saxs_values, saxs_usable = usable_values(table.saxs_pixel_index)
    fill = float(saxs_values[saxs_usable].mean()) if saxs_usable.any() else 0.0
    saxs = np.where(saxs_usable, saxs_values, fill)
    n_unusable += int((~saxs_usable).sum())
    if n_unusable:
        log.warning("background frame: %d pixels inside the analysed regions are unusable (NaN, negative or "
                    "NODATA) and left out", n_unusable)

    mean_per_pixel = np.ascontiguousarray(mean, dtype=np.float64)
    saxs_per_pixel = np.ascontiguousarray(saxs, dtype=np.float64)
    n_pixels = counts.reshape(table.bins_shape).astype(np.int32)
    for array in (mean_per_pixel, saxs_per_pixel, n_pixels):
        array.setflags(write=False)
    return RegroupedBackground(mean_per_pixel=mean_per_pixel, n_pixels=n_pixels, saxs_per_pixel=saxs_per_pixel,
                               scale=float(exposure_ratio))
