"""Where a point of the (q, chi) plane lies on the detector: the inverse of
:func:`analysis.geometry.pixel_q_chi`, for drawing fitted peaks on the raw frame.

pyFAI gives q and chi of any (fractional) pixel position; the inverse is found by Newton
iterations on (row, column) with a finite-difference Jacobian, started from the flat-detector
guess around the beam centre. Positions are fractional pixel indices with pixel centres at
integers (row 0 on top), chi counter-clockwise as seen on the image (minus pyFAI's chi).
Points that no pixel position reaches (2 theta >= 90 deg, or no convergence) are NaN.
"""

from __future__ import annotations

import numpy as np

from analysis.geometry import DetectorGeometry, two_theta_from_q, wrap_degrees

NEWTON_STEP_PX = 0.5
"""Finite-difference step of the Jacobian, pixels."""
TOLERANCE_PX = 1e-3


def _q_chi_at(integrator, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q_nm = np.asarray(integrator.qFunction(rows, cols), dtype=np.float64)
    chi_deg = -np.degrees(np.asarray(integrator.chi(rows, cols), dtype=np.float64))
    return q_nm, chi_deg


def flat_detector_guess(geometry: DetectorGeometry, q_nm, chi_deg) -> tuple[np.ndarray, np.ndarray]:
    """Pixel position of (q, chi) on an untilted detector (exact without rotations).

    Parameters
    ----------
    geometry : DetectorGeometry
    q_nm, chi_deg : array_like of float
        Broadcast together; nm^-1 and degrees (counter-clockwise on the image).

    Returns
    -------
    rows, cols : ndarray of float64
        Fractional pixel indices; NaN where 2 theta >= 90 deg.
    """
    q_nm, chi_deg = np.broadcast_arrays(np.asarray(q_nm, np.float64), np.asarray(chi_deg, np.float64))
    two_theta = two_theta_from_q(q_nm, geometry.wavelength_nm)
    with np.errstate(invalid="ignore"):
        two_theta = np.where(two_theta < np.pi / 2, two_theta, np.nan)
    radius_m = geometry.distance_m * np.tan(two_theta)
    chi_rad = np.radians(chi_deg)
    row0 = geometry.poni1_m / geometry.pixel1_m - 0.5
    col0 = geometry.poni2_m / geometry.pixel2_m - 0.5
    rows = row0 - radius_m * np.sin(chi_rad) / geometry.pixel1_m
    cols = col0 + radius_m * np.cos(chi_rad) / geometry.pixel2_m
    return rows, cols


def pixel_of_q_chi(geometry: DetectorGeometry, q_nm, chi_deg, integrator=None,
                   max_iterations: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Detector position of points of the (q, chi) plane.

    Parameters
    ----------
    geometry : DetectorGeometry
    q_nm, chi_deg : array_like of float
        Broadcast together; nm^-1 and degrees (any 360-degree branch).
    integrator : pyFAI AzimuthalIntegrator, optional
        ``geometry.integrator()``, passed in to avoid rebuilding it for every call.
    max_iterations : int
        Newton iterations at most.

    Returns
    -------
    rows, cols : ndarray of float64, the broadcast shape
        Fractional pixel indices (pixel centres at integers, may lie off the detector);
        NaN where the point is unreachable or the iteration did not converge.
    """
    integrator = integrator if integrator is not None else geometry.integrator()
    rows, cols = flat_detector_guess(geometry, q_nm, chi_deg)
    shape = rows.shape
    rows, cols = rows.ravel().copy(), cols.ravel().copy()
    q_target = np.broadcast_to(np.asarray(q_nm, np.float64), shape).ravel()
    chi_target = np.broadcast_to(np.asarray(chi_deg, np.float64), shape).ravel()
    live = np.isfinite(rows) & np.isfinite(cols)
    converged = np.zeros(rows.size, dtype=bool)
    h = NEWTON_STEP_PX
    for _ in range(max_iterations):
        todo = np.flatnonzero(live & ~converged)
        if todo.size == 0:
            break
        r, c = rows[todo], cols[todo]
        q0, chi0 = _q_chi_at(integrator, r, c)
        q_r, chi_r = _q_chi_at(integrator, r + h, c)
        q_c, chi_c = _q_chi_at(integrator, r, c + h)
        f_q = q0 - q_target[todo]
        f_chi = wrap_degrees(chi0 - chi_target[todo])
        a, b = (q_r - q0) / h, (q_c - q0) / h
        c_, d = wrap_degrees(chi_r - chi0) / h, wrap_degrees(chi_c - chi0) / h
        det = a * d - b * c_
        with np.errstate(invalid="ignore", divide="ignore"):
            d_row = -(d * f_q - b * f_chi) / det
            d_col = -(-c_ * f_q + a * f_chi) / det
        bad = ~(np.isfinite(d_row) & np.isfinite(d_col))
        live[todo[bad]] = False
        d_row, d_col = np.where(bad, 0.0, d_row), np.where(bad, 0.0, d_col)
        rows[todo] += d_row
        cols[todo] += d_col
        converged[todo] = np.hypot(d_row, d_col) < TOLERANCE_PX
    ok = live & converged
    rows[~ok] = np.nan
    cols[~ok] = np.nan
    return rows.reshape(shape), cols.reshape(shape)


def ellipse_q_chi(q0_nm: float, chi0_deg: float, half_q_nm: float, half_chi_deg: float,
                  n_points: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Closed outline (first point repeated) of the ellipse of half-axes ``half_q_nm`` and
    ``half_chi_deg`` around (q0, chi0) in the (q, chi) plane, ``n_points + 1`` points each."""
    angle = np.linspace(0.0, 2.0 * np.pi, n_points + 1)
    return q0_nm + half_q_nm * np.cos(angle), chi0_deg + half_chi_deg * np.sin(angle)


def rectangle_q_chi(q_range_nm: tuple[float, float], chi_range_deg: tuple[float, float],
                    n_per_side: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Closed outline of the (q, chi) rectangle of a window, ``4 n_per_side + 1`` points."""
    q_lo, q_hi = q_range_nm
    chi_lo, chi_hi = chi_range_deg
    t = np.linspace(0.0, 1.0, n_per_side, endpoint=False)
    q = np.concatenate([q_lo + (q_hi - q_lo) * t, np.full(n_per_side, q_hi),
                        q_hi - (q_hi - q_lo) * t, np.full(n_per_side, q_lo), [q_lo]])
    chi = np.concatenate([np.full(n_per_side, chi_lo), chi_lo + (chi_hi - chi_lo) * t,
                          np.full(n_per_side, chi_hi), chi_hi - (chi_hi - chi_lo) * t, [chi_lo]])
    return q, chi
