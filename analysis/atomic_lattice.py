"""Atomic lattice (WAXS) parameters of the nanocrystals (science.md section 4).

Lapkin SI S4/S6 with pseudo-cubic indexing; the per-frame peaks are ``waxs_010``,
``waxs_020``, ``waxs_110`` and ``waxs_m110``. In the counter-clockwise image convention
[100] lies at psi - 90, so (110) = (100) + (010) sits at psi - 45 and (-110) at psi + 45::

    psi = circular mean(chi_010, chi_020, chi_110 + 45, chi_-110 - 45)   over the peaks present,
          reported where its propagated error is <= PSI_MAX_ERROR_DEG (else TOO_UNCERTAIN)
    Delta = psi - phi        (phi from the superlattice; Lapkin: 45.2 +- 1.7 deg)
    <I_AL> = mean i0 of the WAXS peaks present
    a_AL = 2 pi sqrt(h^2 + k^2 + l^2) / q0     per peak, and their mean

Hiller SI eq. S9/S10: a = 2 pi / q0(100), b = 2 pi a / sqrt(a^2 q0(110)^2 - 4 pi^2). In our
pseudo-cubic naming the (100)-type reflection is ``waxs_010`` and q0(110) is the mean q0 of the
(110)-type peaks present (``waxs_110``, ``waxs_m110``, which have the same |q| for a
rectangular cell). For a cubic cell b = a.

Branches: psi is a direction reported in ``[psi_centre_deg - 180, psi_centre_deg + 180)``
(default [0, 360)); Delta is an axis difference (phi is only defined mod 180) reported in
``[delta_centre_deg - 90, delta_centre_deg + 90)`` (default [-90, 90)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.angles import circular_mean_deg, wrap_deg
from analysis.map_parameters import error_name
from analysis.peak_fits import WAXS_MILLER, WAXS_PEAKS, PeakFits
from analysis.status import Status

PSI_OFFSETS_DEG = {"waxs_010": 0.0, "waxs_020": 0.0, "waxs_110": 45.0, "waxs_m110": -45.0}
"""What to add to each peak's chi0 to get the azimuth psi of [010]_AL."""
PSI_MAX_ERROR_DEG = 0.5
"""psi is reported where its propagated 1-sigma error is at most this (the 1 deg accuracy of
the issue is then 2 sigma); beyond it the value is NaN with ``TOO_UNCERTAIN``."""


@dataclass(frozen=True, eq=False)
class AtomicLatticeResult:
    """Atomic lattice parameters per frame; arrays of shape (...), NaN where status is not OK.

    Attributes
    ----------
    values : dict of str to ndarray of float64
        ``psi_deg``, ``psi_minus_phi_deg``, ``i_al`` (photons), ``a_al_nm`` (mean), ``a_nm``,
        ``b_nm`` (Hiller), ``<peak>.a_al_nm`` per WAXS peak, ``n_waxs_peaks``, and the 1-sigma
        errors ``psi_err_deg``, ``a_al_err_nm``, ``<peak>.a_al_err_nm``.
    statuses : dict of str to ndarray of int32
        One status per value.
    """

    values: dict
    statuses: dict

    def __getitem__(self, name: str) -> np.ndarray:
        return self.values[name]

    def map_values(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Values and statuses keyed by map parameter name."""
        return dict(self.values), dict(self.statuses)


def _status(ok: np.ndarray, otherwise: int) -> np.ndarray:
    return np.where(ok, int(Status.OK), int(otherwise)).astype(np.int32)


def atomic_lattice_parameters(fits: PeakFits, phi_deg=None, phi_status=None,
                              psi_centre_deg: float = 180.0, delta_centre_deg: float = 0.0,
                              peaks: tuple[str, ...] = WAXS_PEAKS,
                              psi_max_error_deg: float = PSI_MAX_ERROR_DEG) -> AtomicLatticeResult:
    """Orientation, intensity and lattice constants of the atomic lattice.

    Parameters
    ----------
    fits : PeakFits
        Fitted peaks, leading shape (...). Peaks the model lacks count as missing.
    phi_deg : array_like of float, shape (...), optional
        Superlattice mean-line azimuth (deg) for Delta = psi - phi; NaN / None = unknown.
    phi_status : array_like of int32, shape (...), optional
        Status of ``phi_deg``; passed on to Delta when psi is OK but phi is not.
    psi_centre_deg, delta_centre_deg : float
        Centres of the reporting branches (see module notes).
    peaks : tuple of str
        WAXS peak names with Miller indices in :data:`analysis.peak_fits.WAXS_MILLER`.
    psi_max_error_deg : float
        psi (and Delta) with a larger propagated 1-sigma error are NaN with TOO_UNCERTAIN
        (default :data:`PSI_MAX_ERROR_DEG`; ``inf`` reports every psi that can be computed).

    Returns
    -------
    AtomicLatticeResult
    """
    shape = fits.frame_shape
    present = fits.present_columns(peaks)
    any_present = present.any(axis=-1)
    values: dict[str, np.ndarray] = {}
    statuses: dict[str, np.ndarray] = {}

    # Orientation psi of [010]_AL.
    estimates = fits.columns("chi0_deg", peaks) + np.array([PSI_OFFSETS_DEG[name] for name in peaks])
    psi = circular_mean_deg(np.where(present, estimates, np.nan), axis=-1)
    chi_err = fits.columns("chi0_err_deg", peaks)
    n_present = present.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        psi_err = np.sqrt((np.where(present, chi_err, 0.0) ** 2).sum(axis=-1)) / np.maximum(n_present, 1)
    psi_computed = np.isfinite(psi)
    with np.errstate(invalid="ignore"):
        psi_ok = psi_computed & ~(psi_err > psi_max_error_deg)  # an unknown error is not judged
    values["psi_deg"] = np.where(psi_ok, wrap_deg(psi, psi_centre_deg), np.nan)
    statuses["psi_deg"] = np.where(psi_ok, int(Status.OK), np.where(
        psi_computed, int(Status.TOO_UNCERTAIN), int(Status.MISSING_PEAK))).astype(np.int32)
    values[error_name("psi_deg")] = np.where(psi_ok, psi_err, np.nan)
    statuses[error_name("psi_deg")] = statuses["psi_deg"]

    # Delta = psi - phi (an axis difference: phi is a line).
    phi = np.full(shape, np.nan) if phi_deg is None else np.broadcast_to(np.asarray(phi_deg, dtype=np.float64), shape)
    phi_ok = np.isfinite(phi)
    if phi_status is not None:
        phi_ok &= np.broadcast_to(np.asarray(phi_status), shape) == Status.OK
    delta_ok = psi_ok & phi_ok
    values["psi_minus_phi_deg"] = np.where(delta_ok, wrap_deg(psi - phi, delta_centre_deg, 180.0), np.nan)
    phi_reason = (np.full(shape, int(Status.MISSING_PEAK), dtype=np.int32) if phi_status is None
                  else np.broadcast_to(np.asarray(phi_status, dtype=np.int32), shape))
    phi_reason = np.where(phi_reason == Status.OK, int(Status.MISSING_PEAK), phi_reason)
    statuses["psi_minus_phi_deg"] = np.where(
        delta_ok, int(Status.OK), np.where(psi_ok, phi_reason, statuses["psi_deg"])).astype(np.int32)

    # Mean integrated intensity.
    i0 = fits.columns("i0", peaks)
    with np.errstate(invalid="ignore", divide="ignore"):
        values["i_al"] = np.where(any_present, np.where(present, i0, 0.0).sum(axis=-1) / np.maximum(n_present, 1),
                                  np.nan)
    statuses["i_al"] = _status(any_present, Status.MISSING_PEAK)

    # Lattice constant per peak and mean.
    a_per_peak = []
    a_err_per_peak = []
    for index, name in enumerate(peaks):
        h, k, l = WAXS_MILLER[name]
        q0 = fits.get("q0_nm", name)
        ok = present[..., index]
        with np.errstate(invalid="ignore", divide="ignore"):
            a = np.where(ok, 2.0 * np.pi * np.sqrt(h * h + k * k + l * l) / q0, np.nan)
            a_err = np.where(ok, a * fits.get("q0_err_nm", name) / q0, np.nan)
        values[f"{name}.a_al_nm"] = a
        statuses[f"{name}.a_al_nm"] = fits.value_status(name)
        values[error_name(f"{name}.a_al_nm")] = a_err
        statuses[error_name(f"{name}.a_al_nm")] = statuses[f"{name}.a_al_nm"]
        a_per_peak.append(a)
        a_err_per_peak.append(a_err)
    a_stack = np.stack(a_per_peak, axis=-1)
    a_err_stack = np.stack(a_err_per_peak, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        values["a_al_nm"] = np.where(any_present, np.where(present, a_stack, 0.0).sum(axis=-1)
                                     / np.maximum(n_present, 1), np.nan)
        values[error_name("a_al_nm")] = np.where(
            any_present, np.sqrt((np.where(present, a_err_stack, 0.0) ** 2).sum(axis=-1)) / np.maximum(n_present, 1),
            np.nan)
    statuses["a_al_nm"] = _status(any_present, Status.MISSING_PEAK)
    statuses[error_name("a_al_nm")] = statuses["a_al_nm"]
    values["n_waxs_peaks"] = n_present.astype(np.float64)
    statuses["n_waxs_peaks"] = np.zeros(shape, dtype=np.int32)

    a_nm, b_nm, a_status, b_status = hiller_cell(fits)
    values["a_nm"], statuses["a_nm"] = a_nm, a_status
    values["b_nm"], statuses["b_nm"] = b_nm, b_status
    return AtomicLatticeResult(values=values, statuses=statuses)


def hiller_cell(fits: PeakFits, peak_100: str = "waxs_010",
                peaks_110: tuple[str, ...] = ("waxs_110", "waxs_m110")):
    """Hiller SI eq. S9/S10: a = 2 pi / q0(100), b = 2 pi a / sqrt(a^2 q0(110)^2 - 4 pi^2).

    Parameters
    ----------
    fits : PeakFits
        Fitted peaks, leading shape (...).
    peak_100 : str
        The (100)-type reflection (pseudo-cubic ``waxs_010``).
    peaks_110 : tuple of str
        The (110)-type reflections; their q0 are averaged over those present.

    Returns
    -------
    a_nm, b_nm : ndarray of float64, shape (...)
        NaN where missing.
    a_status, b_status : ndarray of int32, shape (...)
        MISSING_PEAK without the needed peaks; NEGATIVE_RADICAND when a q0(110) <= 2 pi
        (q0(110) not above q0(100): no real b).
    """
    a_ok = fits.present(peak_100)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.where(a_ok, 2.0 * np.pi / fits.get("q0_nm", peak_100), np.nan)
    present_110 = fits.present_columns(peaks_110)
    q_110 = fits.columns("q0_nm", peaks_110)
    n_110 = present_110.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        q110_mean = np.where(n_110 > 0, np.where(present_110, q_110, 0.0).sum(axis=-1) / np.maximum(n_110, 1), np.nan)
        radicand = a * a * q110_mean * q110_mean - 4.0 * np.pi ** 2
    have = a_ok & (n_110 > 0)
    b_ok = have & (radicand > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        b = np.where(b_ok, 2.0 * np.pi * a / np.sqrt(np.where(b_ok, radicand, 1.0)), np.nan)
    a_status = _status(a_ok, Status.MISSING_PEAK)
    b_status = np.where(b_ok, int(Status.OK),
                        np.where(have, int(Status.NEGATIVE_RADICAND), int(Status.MISSING_PEAK))).astype(np.int32)
    return a, b, a_status, b_status
