"""Detector geometry: where each pixel sits in (q, chi).

The geometry is the one a pyFAI PONI file describes (users calibrate with pyFAI); this module
holds its numbers in a frozen dataclass and asks pyFAI for the per-pixel arrays. Reading the
PONI *file* happens at the edge (``stream.config_files``); here everything is computation.

Azimuth convention (science.md section 2): chi is counted counter-clockwise from the
horizontal axis pointing right, *as seen on the detector image* displayed with row 0 at the
top (the usual ``imshow(origin="upper")`` / ALBULA view). pyFAI's own chi (detector
orientation 3) grows clockwise in that view, so ``chi_deg = -degrees(chi_pyfai)``.
Angles are returned in [-180, 180).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from analysis.errors import GeometryError

HC_KEV_NM = 1.2398419843320026
"""h*c in keV*nm: wavelength_nm = HC_KEV_NM / energy_keV."""


@dataclass(frozen=True)
class DetectorGeometry:
    """Numbers of a pyFAI PONI geometry for one detector.

    Attributes
    ----------
    distance_m : float
        Sample to point-of-normal-incidence distance (pyFAI ``dist``), metres.
    poni1_m, poni2_m : float
        PONI coordinates along the slow (row) and fast (column) axes, metres from the
        detector's first pixel corner (pyFAI convention).
    rot1_rad, rot2_rad, rot3_rad : float
        pyFAI detector rotations, radians.
    wavelength_m : float
        X-ray wavelength, metres.
    pixel1_m, pixel2_m : float
        Pixel size along rows (slow) and columns (fast), metres.
    shape : tuple of int
        Detector shape (n_rows, n_columns) = (y, x) in pixels.
    detector_name : str
        pyFAI detector name (e.g. ``"Eiger4M"``), or ``"Detector"`` for a generic one.
    """

    distance_m: float
    poni1_m: float
    poni2_m: float
    rot1_rad: float
    rot2_rad: float
    rot3_rad: float
    wavelength_m: float
    pixel1_m: float
    pixel2_m: float
    shape: tuple[int, int]
    detector_name: str = "Detector"

    def __post_init__(self) -> None:
        checks = {
            "distance_m": self.distance_m > 0,
            "wavelength_m": 1e-12 < self.wavelength_m < 1e-8,
            "pixel1_m": self.pixel1_m > 0,
            "pixel2_m": self.pixel2_m > 0,
        }
        for name, ok in checks.items():
            if not (ok and math.isfinite(getattr(self, name))):
                raise GeometryError(f"geometry {name}={getattr(self, name)!r} is not physical")
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise GeometryError(f"geometry shape {self.shape!r} is not (rows, columns)")

    @property
    def wavelength_nm(self) -> float:
        return self.wavelength_m * 1e9

    @property
    def energy_kev(self) -> float:
        return HC_KEV_NM / self.wavelength_nm

    @property
    def beam_centre_px(self) -> tuple[float, float]:
        """Direct-beam position (row, column) in fractional pixel indices (pixel centres at
        integers). Exact for untilted detectors; for tilted ones, where the direct beam hits."""
        integrator = self.integrator()
        fit2d = integrator.getFit2D()
        # Fit2D centre is in pixels from the first corner; pixel centres sit at +0.5.
        return fit2d["centerY"] - 0.5, fit2d["centerX"] - 0.5

    def pyfai_config(self) -> dict:
        """The geometry as a pyFAI configuration dictionary (PONI version 2)."""
        return {
            "poni_version": 2,
            "dist": self.distance_m,
            "poni1": self.poni1_m,
            "poni2": self.poni2_m,
            "rot1": self.rot1_rad,
            "rot2": self.rot2_rad,
            "rot3": self.rot3_rad,
            "wavelength": self.wavelength_m,
            "detector": self.detector_name,
            "detector_config": {
                "pixel1": self.pixel1_m,
                "pixel2": self.pixel2_m,
                "max_shape": list(self.shape),
            },
        }

    def integrator(self):
        """A pyFAI ``AzimuthalIntegrator`` for this geometry (imported lazily: pyFAI is slow
        to import and only needed when tables are built)."""
        from pyFAI.detectors import Detector
        from pyFAI.integrator.azimuthal import AzimuthalIntegrator

        detector = Detector(
            pixel1=self.pixel1_m, pixel2=self.pixel2_m, max_shape=self.shape, orientation=3
        )
        return AzimuthalIntegrator(
            dist=self.distance_m,
            poni1=self.poni1_m,
            poni2=self.poni2_m,
            rot1=self.rot1_rad,
            rot2=self.rot2_rad,
            rot3=self.rot3_rad,
            wavelength=self.wavelength_m,
            detector=detector,
        )

    @classmethod
    def from_pyfai_config(cls, config: dict, shape: tuple[int, int] | None = None) -> "DetectorGeometry":
        """Build from a pyFAI configuration dictionary (what ``PoniFile.as_dict()`` returns).

        Parameters
        ----------
        config : dict
            Keys ``dist``, ``poni1``, ``poni2``, ``rot1..3``, ``wavelength``, ``detector`` and
            ``detector_config`` (pixel sizes, ``max_shape``) as pyFAI writes them.
        shape : tuple of int, optional
            Detector shape (rows, columns) when the configuration lacks ``max_shape``.
        """
        from pyFAI.detectors import detector_factory

        try:
            detector = detector_factory(config.get("detector", "Detector"), config.get("detector_config"))
        except Exception as exc:  # pyFAI raises several types for unknown detectors
            raise GeometryError(f"unknown detector {config.get('detector')!r} in geometry: {exc}") from exc
        detector_shape = detector.max_shape or shape
        if detector_shape is None:
            raise GeometryError("geometry has no detector shape (max_shape) and none was given")
        wavelength = config.get("wavelength")
        if wavelength is None:
            raise GeometryError("geometry has no wavelength")
        return cls(
            distance_m=float(config["dist"]),
            poni1_m=float(config["poni1"]),
            poni2_m=float(config["poni2"]),
            rot1_rad=float(config.get("rot1", 0.0)),
            rot2_rad=float(config.get("rot2", 0.0)),
            rot3_rad=float(config.get("rot3", 0.0)),
            wavelength_m=float(wavelength),
            pixel1_m=float(detector.pixel1),
            pixel2_m=float(detector.pixel2),
            shape=(int(detector_shape[0]), int(detector_shape[1])),
            detector_name=str(config.get("detector", "Detector")),
        )

    def check_matches(self, shape: tuple[int, int], pixel_size_m: float | None = None,
                      wavelength_m: float | None = None, wavelength_tolerance: float = 0.02) -> None:
        """Raise :class:`GeometryError` when detector data do not fit this geometry.

        Parameters
        ----------
        shape : tuple of int
            Frame shape (rows, columns) of the data.
        pixel_size_m : float, optional
            Pixel size the detector reports, metres.
        wavelength_m : float, optional
            Wavelength the detector reports, metres; compared with a relative tolerance.
        """
        if tuple(shape) != tuple(self.shape):
            raise GeometryError(
                f"frame shape {tuple(shape)} (rows, columns) does not match the geometry's "
                f"detector shape {tuple(self.shape)}"
            )
        if pixel_size_m is not None and not math.isclose(pixel_size_m, self.pixel1_m, rel_tol=1e-3):
            raise GeometryError(
                f"detector pixel size {pixel_size_m:g} m does not match the geometry's {self.pixel1_m:g} m"
            )
        if wavelength_m is not None and wavelength_m > 0:
            if abs(wavelength_m / self.wavelength_m - 1) > wavelength_tolerance:
                raise GeometryError(
                    f"detector wavelength {wavelength_m * 1e9:.5f} nm does not match the geometry's "
                    f"{self.wavelength_nm:.5f} nm"
                )


def pixel_q_chi(geometry: DetectorGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Scattering vector and azimuth at every pixel centre.

    Returns
    -------
    q_nm : ndarray of float64, shape (rows, columns)
        q = 4 pi sin(theta) / lambda in nm^-1.
    chi_deg : ndarray of float64, shape (rows, columns)
        Azimuth in degrees in [-180, 180), counter-clockwise as seen on the image
        (see module docstring).
    """
    integrator = geometry.integrator()
    q_nm = np.ascontiguousarray(integrator.center_array(geometry.shape, unit="q_nm^-1"), dtype=np.float64)
    chi_pyfai = integrator.center_array(geometry.shape, unit="chi_rad")
    chi_deg = wrap_degrees(-np.degrees(chi_pyfai))
    return q_nm, np.ascontiguousarray(chi_deg, dtype=np.float64)


def pixel_area_q_chi(q_nm: np.ndarray, chi_deg: np.ndarray) -> np.ndarray:
    """Area of each pixel in the (q, chi) plane, nm^-1 x deg (absolute Jacobian determinant).

    Counts per pixel are the (q, chi) intensity density times this area; near the beam it
    falls like 1/q (a pixel spans more azimuth), so fitting per-pixel counts would pull
    small-angle peaks towards low q.

    Parameters
    ----------
    q_nm, chi_deg : ndarray of float64, shape (rows, columns)
        From :func:`pixel_q_chi`.

    Returns
    -------
    ndarray of float64, shape (rows, columns)
    """
    dq_drow, dq_dcol = np.gradient(q_nm)
    chi_rad = np.radians(chi_deg)
    dchi_drow = np.degrees(np.gradient(np.unwrap(chi_rad, axis=0), axis=0))
    dchi_dcol = np.degrees(np.gradient(np.unwrap(chi_rad, axis=1), axis=1))
    return np.abs(dq_drow * dchi_dcol - dq_dcol * dchi_drow)


def wrap_degrees(angle_deg):
    """Wrap angles to [-180, 180) degrees (scalar or array)."""
    return (np.asarray(angle_deg) + 180.0) % 360.0 - 180.0


def q_from_two_theta(two_theta_rad, wavelength_nm: float):
    """q = 4 pi sin(2theta / 2) / lambda in nm^-1."""
    return 4.0 * np.pi * np.sin(np.asarray(two_theta_rad) / 2.0) / wavelength_nm


def two_theta_from_q(q_nm, wavelength_nm: float):
    """Scattering angle 2theta (radians) of q (nm^-1); NaN where q is unreachable."""
    s = np.asarray(q_nm, dtype=np.float64) * wavelength_nm / (4.0 * np.pi)
    with np.errstate(invalid="ignore"):
        return 2.0 * np.arcsin(np.where(np.abs(s) <= 1, s, np.nan))
