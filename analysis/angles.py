"""Azimuths in degrees: wrapping into a chosen branch and NaN-aware circular means.

Fitted azimuths (``chi0_deg``) may come in any 360-degree branch (a window crossing +-180
is unwrapped, so a peak may be reported at 220 or at -140). Every derived angle is computed
from differences and circular means so that it does not depend on the branch, and is wrapped
into a documented branch only at the end.
"""

from __future__ import annotations

import numpy as np


def wrap_deg(angle_deg, centre_deg: float = 0.0, period_deg: float = 360.0) -> np.ndarray:
    """Wrap angles into ``[centre - period/2, centre + period/2)``.

    Parameters
    ----------
    angle_deg : array_like of float, any shape
        Angles in degrees; NaN stays NaN.
    centre_deg : float
        Centre of the branch, degrees.
    period_deg : float
        360 for directions, 180 for axes (lines without a sense), 90 for a four-fold axis.

    Returns
    -------
    ndarray of float64, same shape
    """
    angle = np.asarray(angle_deg, dtype=np.float64)
    low = centre_deg - 0.5 * period_deg
    return low + np.mod(angle - low, period_deg)


def circular_mean_deg(angles_deg, axis: int = -1, period_deg: float = 360.0) -> np.ndarray:
    """Mean of angles on a circle of ``period_deg``, ignoring NaN.

    Parameters
    ----------
    angles_deg : array_like of float, shape (..., n) (``axis`` selects the averaged axis)
        Angles in degrees, any branch; NaN = missing.
    axis : int
        Axis to average over.
    period_deg : float
        Period of the angle (360 for directions, 180 for axes).

    Returns
    -------
    ndarray of float64, the input shape without ``axis``
        Mean angle in ``[-period/2, period/2)``; NaN where every angle is missing or where the
        angles cancel exactly (no defined mean, e.g. two opposite directions).
    """
    angles = np.asarray(angles_deg, dtype=np.float64)
    radians = angles * (2.0 * np.pi / period_deg)
    present = np.isfinite(radians)
    sin_sum = np.where(present, np.sin(np.where(present, radians, 0.0)), 0.0).sum(axis=axis)
    cos_sum = np.where(present, np.cos(np.where(present, radians, 0.0)), 0.0).sum(axis=axis)
    count = present.sum(axis=axis)
    resultant = np.hypot(sin_sum, cos_sum)
    defined = (count > 0) & (resultant > 1e-12 * np.maximum(count, 1))
    mean = np.arctan2(sin_sum, cos_sum) * (period_deg / (2.0 * np.pi))
    return np.where(defined, wrap_deg(mean, 0.0, period_deg), np.nan)
