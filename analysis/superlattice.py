"""Superlattice (SAXS) parameters from the four first-order peaks (science.md section 3).

Lapkin SI S5. The first-order peaks ``saxs_1`` .. ``saxs_4`` are listed counter-clockwise:
1 and 3 are (100)_SL and its Friedel mate, 2 and 4 are (010)_SL and its mate. Each Friedel
pair is averaged (the mate's azimuth corrected by -180 deg, as a circular mean so that the
360-degree branch of the fitted chi0 does not matter), giving (I1, q1, w1, omega1) and
(I2, q2, w2, omega2). Then::

    phi1 = omega2 - 90;  phi2 = omega1 + 90;  gamma = phi2 - phi1;  phi = (phi1 + phi2) / 2
    a1 = 2 pi / (q1 sin gamma);  a2 = 2 pi / (q2 sin gamma);  <a> = (a1 + a2) / 2;  a2 / a1

Conventions and choices
-----------------------
* gamma is the (unsigned) angle between a1 and a2, in (0, 180) deg. With the peaks listed
  clockwise instead (a left-handed basis) the formulas above give -gamma and the negated basis
  vectors; we take the sense from the sign of gamma, so a1, a2, gamma and the line phi are the
  same for either listing. phi1 / phi2 are the azimuths of a1 / a2 (a1 on the side of
  reciprocal vector 1), in [0, 360).
* phi (the mean line M between a1 and a2) is an axis: reported modulo 180 deg in
  ``[phi_centre_deg - 90, phi_centre_deg + 90)`` (default [0, 180), Lapkin's 72..97 deg).
* A Friedel pair with one of its two peaks missing is still used (its single peak gives q and
  omega); ``pair1_n_peaks`` / ``pair2_n_peaks`` (0, 1, 2) record the completeness. The values stay
  OK because Friedel's law makes the mates equivalent; a single peak only loses the first-order
  cancellation of a beam-centre error, which the completeness map lets the user see. With
  both peaks of a pair missing every lattice value is NaN with ``MISSING_PEAK``.
* Hiller (ligand-stripping SI, eq. S11/S12): <a_SC> = 2 pi / (<q0> sin gamma_H),
  gamma_H = 1/2 (chi_001 + chi_00-1 - pi) - 1/2 (chi_010 + chi_0-10 - pi). Mapping: (001) and
  (00-1) are our ``saxs_2`` / ``saxs_4``, (010) and (0-10) are ``saxs_1`` / ``saxs_3``, so that
  gamma_H = omega2 - omega1 = 90 deg for a square lattice (both gammas agree). The half sums are
  evaluated as circular means (the printed arithmetic half sum jumps by 180 deg when one chi is
  given in another branch). For an oblique lattice gamma_H is the angle between the
  *reciprocal* vectors, 180 deg - gamma: the two formulas disagree on gamma (not on a, since
  sin gamma_H = sin gamma). We report gamma_H as the paper defines it.
* Errors: first-order propagation of the fitted 1-sigma errors of q0 and chi0 (pair means
  treated as independent); NaN when the fitter gave no errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.angles import circular_mean_deg, wrap_deg
from analysis.map_parameters import error_name
from analysis.peak_fits import SAXS_FIRST_ORDER, PeakFits
from analysis.status import Status

MIN_SIN_GAMMA = 1e-6
"""Below this |sin gamma| the basis is degenerate: values NaN with ``SINGULAR``."""


@dataclass(frozen=True, eq=False)
class FriedelPair:
    """One Friedel pair averaged. Arrays of shape (...).

    Attributes
    ----------
    i0 : float64
        Mean integrated intensity of the peaks present (photons).
    q0_nm : float64
        Mean centre q (nm^-1).
    omega_deg : float64
        Azimuth of the first peak of the pair (the mate corrected by -180 deg), deg in [-180, 180).
    fwhm_q_nm, fwhm_chi_deg : float64
        Mean radial (nm^-1) and azimuthal (deg) FWHM.
    q0_err_nm, omega_err_deg : float64
        1-sigma errors of the means.
    n_peaks : int32
        Peaks of the pair present: 0, 1 or 2.
    status : int32
        OK when at least one peak is present, else MISSING_PEAK.
    """

    i0: np.ndarray
    q0_nm: np.ndarray
    omega_deg: np.ndarray
    fwhm_q_nm: np.ndarray
    fwhm_chi_deg: np.ndarray
    q0_err_nm: np.ndarray
    omega_err_deg: np.ndarray
    n_peaks: np.ndarray
    status: np.ndarray


def _mean_of_present(values: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Mean over the last axis of the finite values where ``present``; NaN when none."""
    use = present & np.isfinite(values)
    count = use.sum(axis=-1)
    total = np.where(use, values, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _error_of_mean(errors: np.ndarray, present: np.ndarray) -> np.ndarray:
    """1-sigma error of the mean of independent values present: sqrt(sum sigma^2) / n."""
    count = present.sum(axis=-1)
    squares = np.where(present, errors, 0.0) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.sqrt(squares.sum(axis=-1)) / np.maximum(count, 1), np.nan)


def average_friedel_pair(fits: PeakFits, first: str, mate: str) -> FriedelPair:
    """Average a Friedel pair; the mate's azimuth is corrected by -180 deg.

    Parameters
    ----------
    fits : PeakFits
        Fitted peaks, leading shape (...).
    first, mate : str
        Names of the peak and of its Friedel mate (e.g. ``"saxs_1"``, ``"saxs_3"``).
    """
    present = fits.present_columns((first, mate))

    def column(quantity):
        return fits.columns(quantity, (first, mate))

    chi = column("chi0_deg") - np.array([0.0, 180.0])
    omega = circular_mean_deg(np.where(present, chi, np.nan), axis=-1)
    n_peaks = present.sum(axis=-1).astype(np.int32)
    return FriedelPair(
        i0=_mean_of_present(column("i0"), present),
        q0_nm=_mean_of_present(column("q0_nm"), present),
        omega_deg=omega,
        fwhm_q_nm=_mean_of_present(column("fwhm_q_nm"), present),
        fwhm_chi_deg=_mean_of_present(column("fwhm_chi_deg"), present),
        q0_err_nm=_error_of_mean(column("q0_err_nm"), present),
        omega_err_deg=_error_of_mean(column("chi0_err_deg"), present),
        n_peaks=n_peaks,
        status=np.where(n_peaks > 0, int(Status.OK), int(Status.MISSING_PEAK)).astype(np.int32),
    )


@dataclass(frozen=True, eq=False)
class SuperlatticeResult:
    """Superlattice parameters per frame. Arrays of shape (...), NaN where status is not OK.

    Attributes
    ----------
    pair1, pair2 : FriedelPair
        (100)_SL and (010)_SL pairs.
    a1_nm, a2_nm, a_mean_nm : float64
        Basis vector lengths and their mean (nm).
    a_ratio : float64
        a2 / a1.
    gamma_deg : float64
        Angle between a1 and a2, (0, 180) deg.
    phi_deg : float64
        Azimuth of the mean line between a1 and a2, mod 180 (see module notes).
    phi1_deg, phi2_deg : float64
        Azimuths of a1 and a2, [0, 360) deg.
    status : int32
        For all the values above: OK, MISSING_PEAK (a pair has no peak) or SINGULAR.
    a_sc_nm, gamma_hiller_deg : float64
        Hiller eq. S11/S12 lattice parameter (nm) and angle (deg).
    q0_mean_nm : float64
        Mean q0 of the first-order peaks present (Hiller's <q0>).
    hiller_status : int32
        Status of ``a_sc_nm`` / ``gamma_hiller_deg``.
    errors : dict of str to ndarray
        1-sigma errors ``a1_nm``, ``a2_nm``, ``a_mean_nm``, ``a_ratio``, ``gamma_deg``,
        ``phi_deg``, ``a_sc_nm``, ``gamma_hiller_deg`` (NaN when unknown).
    """

    pair1: FriedelPair
    pair2: FriedelPair
    a1_nm: np.ndarray
    a2_nm: np.ndarray
    a_mean_nm: np.ndarray
    a_ratio: np.ndarray
    gamma_deg: np.ndarray
    phi_deg: np.ndarray
    phi1_deg: np.ndarray
    phi2_deg: np.ndarray
    status: np.ndarray
    a_sc_nm: np.ndarray
    gamma_hiller_deg: np.ndarray
    q0_mean_nm: np.ndarray
    hiller_status: np.ndarray
    errors: dict

    def map_values(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Values and statuses keyed by map parameter name (see :mod:`analysis.map_parameters`)."""
        values = {
            "a1_nm": self.a1_nm, "a2_nm": self.a2_nm, "a_mean_nm": self.a_mean_nm,
            "a_ratio": self.a_ratio, "gamma_deg": self.gamma_deg, "phi_deg": self.phi_deg,
            "a_sc_nm": self.a_sc_nm, "gamma_hiller_deg": self.gamma_hiller_deg,
        }
        statuses = {name: (self.hiller_status if name in ("a_sc_nm", "gamma_hiller_deg") else self.status)
                    for name in values}
        for name, error in self.errors.items():
            values[error_name(name)] = error
            statuses[error_name(name)] = statuses[name]
        for index, pair in ((1, self.pair1), (2, self.pair2)):
            values[f"saxs_pair{index}_n_peaks"] = pair.n_peaks.astype(np.float64)
            statuses[f"saxs_pair{index}_n_peaks"] = np.zeros_like(pair.status)
        return values, statuses


def _masked(value: np.ndarray, ok: np.ndarray) -> np.ndarray:
    return np.where(ok, value, np.nan)


def superlattice_parameters(fits: PeakFits, phi_centre_deg: float = 90.0,
                            peaks: tuple[str, str, str, str] = SAXS_FIRST_ORDER) -> SuperlatticeResult:
    """Superlattice basis from the four first-order SAXS peaks (Lapkin S5 and Hiller S11/S12).

    Parameters
    ----------
    fits : PeakFits
        Fitted peaks, leading shape (...). Peaks the model lacks count as missing.
    phi_centre_deg : float
        Centre of the 180-deg branch in which ``phi_deg`` is reported.
    peaks : tuple of 4 str
        Names of the peaks 1..4 (1/3 and 2/4 Friedel pairs, listed counter-clockwise).

    Returns
    -------
    SuperlatticeResult
        Never raises for data conditions: NaN plus a status.
    """
    pair1 = average_friedel_pair(fits, peaks[0], peaks[2])
    pair2 = average_friedel_pair(fits, peaks[1], peaks[3])
    both = (pair1.n_peaks > 0) & (pair2.n_peaks > 0)

    # Signed angle from a1 to a2 (Lapkin: gamma = phi2 - phi1 = omega1 - omega2 + 180).
    gamma_signed = wrap_deg(pair1.omega_deg - pair2.omega_deg + 180.0)
    sense = np.where(gamma_signed < 0, -1.0, 1.0)
    gamma = np.abs(gamma_signed)
    sin_gamma = np.sin(np.radians(gamma))
    with np.errstate(invalid="ignore"):
        regular = sin_gamma > MIN_SIN_GAMMA
    ok = both & regular
    status = np.where(both, np.where(regular, int(Status.OK), int(Status.SINGULAR)),
                      int(Status.MISSING_PEAK)).astype(np.int32)

    phi1 = wrap_deg(pair2.omega_deg - 90.0 * sense, 180.0)
    phi2 = wrap_deg(pair1.omega_deg + 90.0 * sense, 180.0)
    phi = wrap_deg(phi1 + 0.5 * gamma_signed, phi_centre_deg, 180.0)
    safe_sin = np.where(ok, sin_gamma, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        a1 = 2.0 * np.pi / (pair1.q0_nm * safe_sin)
        a2 = 2.0 * np.pi / (pair2.q0_nm * safe_sin)
        a_mean = 0.5 * (a1 + a2)
        ratio = a2 / a1

        # Error propagation (radians inside, degrees out).
        sigma_gamma = np.radians(np.hypot(pair1.omega_err_deg, pair2.omega_err_deg))
        cot = np.cos(np.radians(gamma)) / safe_sin
        rel1 = pair1.q0_err_nm / pair1.q0_nm
        rel2 = pair2.q0_err_nm / pair2.q0_nm
        errors = {
            "a1_nm": a1 * np.hypot(rel1, cot * sigma_gamma),
            "a2_nm": a2 * np.hypot(rel2, cot * sigma_gamma),
            "a_mean_nm": np.sqrt((0.5 * a1 * rel1) ** 2 + (0.5 * a2 * rel2) ** 2
                                 + (a_mean * cot * sigma_gamma) ** 2),
            "a_ratio": ratio * np.hypot(rel1, rel2),
            "gamma_deg": np.degrees(sigma_gamma),
            "phi_deg": 0.5 * np.degrees(sigma_gamma),
        }

    # Hiller S11/S12: (001)/(00-1) = pair 2, (010)/(0-10) = pair 1.
    first_order = fits.present_columns(peaks)
    q_all = fits.columns("q0_nm", peaks)
    q_err_all = fits.columns("q0_err_nm", peaks)
    q0_mean = _mean_of_present(q_all, first_order)
    q0_mean_err = _error_of_mean(q_err_all, first_order)
    gamma_hiller = np.abs(wrap_deg(pair2.omega_deg - pair1.omega_deg))
    sin_hiller = np.sin(np.radians(gamma_hiller))
    with np.errstate(invalid="ignore"):
        regular_hiller = sin_hiller > MIN_SIN_GAMMA
    ok_hiller = both & regular_hiller
    hiller_status = np.where(both, np.where(regular_hiller, int(Status.OK), int(Status.SINGULAR)),
                             int(Status.MISSING_PEAK)).astype(np.int32)
    with np.errstate(invalid="ignore", divide="ignore"):
        a_sc = 2.0 * np.pi / (q0_mean * np.where(ok_hiller, sin_hiller, 1.0))
        cot_hiller = np.cos(np.radians(gamma_hiller)) / np.where(ok_hiller, sin_hiller, 1.0)
        errors["a_sc_nm"] = a_sc * np.hypot(q0_mean_err / q0_mean, cot_hiller * sigma_gamma)
        errors["gamma_hiller_deg"] = np.degrees(sigma_gamma)

    errors = {name: _masked(error, ok_hiller if name in ("a_sc_nm", "gamma_hiller_deg") else ok)
              for name, error in errors.items()}
    return SuperlatticeResult(
        pair1=pair1, pair2=pair2,
        a1_nm=_masked(a1, ok), a2_nm=_masked(a2, ok), a_mean_nm=_masked(a_mean, ok),
        a_ratio=_masked(ratio, ok), gamma_deg=_masked(gamma, ok), phi_deg=_masked(phi, ok),
        phi1_deg=_masked(phi1, ok), phi2_deg=_masked(phi2, ok), status=status,
        a_sc_nm=_masked(a_sc, ok_hiller), gamma_hiller_deg=_masked(gamma_hiller, ok_hiller),
        q0_mean_nm=q0_mean, hiller_status=hiller_status, errors=errors,
    )
