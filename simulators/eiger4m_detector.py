"""The DECTRIS EIGER X 4M as the simulators see it: shape, module gaps and pixel mask.

Numbers from ``shared/docs/eiger-stream.md`` section 6 (verified on a real 4M capture):
2167 rows x 2070 columns of 75 um pixels, 2 x 4 modules of 514 x 1030 pixels, a 10-column
vertical gap (columns 1030-1039) and three 37-row horizontal gaps (rows 514-550, 1065-1101,
1616-1652). The pixel mask uses the NXmx bits (1 gap, 2 dead, 8 hot); a detector running
with ``pixel_mask_applied`` writes ``2**bits - 1`` into every masked pixel of every frame.
"""

from __future__ import annotations

import logging

import numpy as np

from analysis.errors import GeometryError

logger = logging.getLogger(__name__)

EIGER_X_4M_SHAPE: tuple[int, int] = (2167, 2070)
"""(rows, columns) of an EIGER X 4M frame."""
EIGER_X_4M_PIXEL_SIZE_M = 75e-6
EIGER_X_4M_MODULE_SHAPE: tuple[int, int] = (514, 1030)
GAP_COLUMNS: tuple[tuple[int, int], ...] = ((1030, 1040),)
"""Half-open column ranges [start, stop) of the vertical module gap."""
GAP_ROWS: tuple[tuple[int, int], ...] = ((514, 551), (1065, 1102), (1616, 1653))
"""Half-open row ranges [start, stop) of the horizontal module gaps."""

MASK_GAP = np.uint32(1)
MASK_DEAD = np.uint32(2)
MASK_COLD = np.uint32(4)
MASK_HOT = np.uint32(8)
NODATA_UINT32 = np.uint32(2**32 - 1)
"""Value of masked pixels in uint32 frames (``pixel_mask_applied``)."""
COUNT_CUTOFF_PER_S = 3_000_000
"""Approximate count-rate cutoff of an EIGER X pixel, counts per second (the EIGER1 1M of the
captures reports 2943293 counts for 1 s); ``saturation_value`` is this times the count time."""

DEFAULT_DEFECT_SEED = 4_2167_2070
"""Seed of the fixed dead/hot pixel positions: a simulated detector keeps its defects."""


def gap_mask(shape: tuple[int, int] = EIGER_X_4M_SHAPE) -> np.ndarray:
    """Pixels in the EIGER X 4M module gaps.

    Parameters
    ----------
    shape : tuple of int
        (rows, columns); must be the EIGER X 4M shape.

    Returns
    -------
    ndarray of bool, shape (rows, columns)
        True in a gap.
    """
    if tuple(shape) != EIGER_X_4M_SHAPE:
        raise GeometryError(f"detector shape {tuple(shape)} is not the EIGER X 4M's {EIGER_X_4M_SHAPE}")
    gaps = np.zeros(shape, dtype=bool)
    for start, stop in GAP_ROWS:
        gaps[start:stop, :] = True
    for start, stop in GAP_COLUMNS:
        gaps[:, start:stop] = True
    return gaps


def eiger4m_pixel_mask(n_dead: int = 12, n_hot: int = 6, seed: int = DEFAULT_DEFECT_SEED) -> np.ndarray:
    """The NXmx pixel mask of a simulated EIGER X 4M: gaps plus a handful of defects.

    Parameters
    ----------
    n_dead, n_hot : int
        Number of isolated dead (bit 2) and hot (bit 8) pixels, placed at random on the sensor
        (outside the gaps) with ``seed``; one extra 2 x 3 cluster of dead pixels is always added.
    seed : int
        Seed of the defect positions (fixed by default, like a real detector's).

    Returns
    -------
    ndarray of uint32, shape (2167, 2070)
        0 for good pixels, NXmx bits otherwise.
    """
    if n_dead < 0 or n_hot < 0:
        raise GeometryError(f"numbers of defective pixels must be >= 0, not dead={n_dead}, hot={n_hot}")
    gaps = gap_mask()
    mask = np.where(gaps, MASK_GAP, np.uint32(0)).astype(np.uint32)
    sensor = np.flatnonzero(~gaps)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(sensor, size=n_dead + n_hot, replace=False)
    mask.flat[chosen[:n_dead]] |= MASK_DEAD
    mask.flat[chosen[n_dead:]] |= MASK_HOT
    mask[1200:1202, 300:303] |= MASK_DEAD  # a small dead cluster in module (2, 0)
    logger.debug("EIGER X 4M mask: %d gap, %d dead, %d hot pixels", int(gaps.sum()),
                 int(np.count_nonzero(mask & MASK_DEAD)), int(np.count_nonzero(mask & MASK_HOT)))
    return mask


def apply_pixel_mask(frame: np.ndarray, pixel_mask: np.ndarray) -> np.ndarray:
    """Write ``2**32 - 1`` into every masked pixel of a uint32 frame, in place (returns it).

    Parameters
    ----------
    frame : ndarray of uint32, shape (rows, columns)
    pixel_mask : ndarray of uint32, same shape; nonzero = masked
    """
    if frame.dtype != np.uint32 or frame.shape != pixel_mask.shape:
        raise GeometryError(f"frame {frame.shape} {frame.dtype} does not fit the pixel mask "
                            f"{pixel_mask.shape} (uint32 frames expected)")
    np.copyto(frame, NODATA_UINT32, where=pixel_mask != 0)
    return frame


def saturation_value(count_time_s: float) -> int:
    """Largest valid count of one frame for a count time (``countrate_correction_count_cutoff``)."""
    if not count_time_s > 0:
        raise GeometryError(f"count time {count_time_s!r} s must be positive")
    return int(round(COUNT_CUTOFF_PER_S * count_time_s))
