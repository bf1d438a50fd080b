"""Truth of the synthetic scan: a supercrystal (SC) and its parameter maps over the raster.

A rotated rounded rectangle of nanocrystals covers part of the raster. Every parameter varies
smoothly from the SC centre to its edge (``shared/docs/science.md`` sections 3-5, Lapkin's
published ranges): the profile ``s`` is 1 deep inside and 0 at the edge, computed from the
Euclidean distance to the edge, plus an angular pattern (azimuth ``beta`` of the scan point
seen from the SC centre) and a gentle gradient along x so that no map is constant.
Outside the SC there are no Bragg peaks and the parameter maps are NaN.

Peaks (science.md sections 2-5), with ``omega1 = phi + gamma/2 - 90``,
``omega2 = phi - gamma/2 + 90``:

* ``saxs_1``/``saxs_3``: (100)_SL at chi = omega1 / omega1 + 180, q1 = 2 pi / (a1 sin gamma);
* ``saxs_2``/``saxs_4``: (010)_SL at chi = omega2 / omega2 + 180, q2 = 2 pi / (a2 sin gamma);
* ``waxs_010`` (q = 2 pi / a_AL, chi = psi), ``waxs_020`` (twice that q, chi = psi),
  ``waxs_110`` (q = 2 pi sqrt(2) / a_AL, chi = psi - 45), ``waxs_m110`` (chi = psi + 45);
  Williamson-Hall widths w_q = sqrt((2 pi K / L)^2 + (g q)^2) and
  w_chi = sqrt((delta_psi q)^2 + (2 pi K / L)^2) / q (radians).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from analysis.errors import ConfigurationError
from analysis.geometry import wrap_degrees

SAXS_PEAKS = ("saxs_1", "saxs_2", "saxs_3", "saxs_4")
WAXS_PEAKS = ("waxs_010", "waxs_020", "waxs_110", "waxs_m110")
PEAK_NAMES = SAXS_PEAKS + WAXS_PEAKS
PEAK_FIELDS = {"i0": "counts", "q0_nm": "nm^-1", "chi0_deg": "deg", "fwhm_q_nm": "nm^-1", "fwhm_chi_deg": "deg"}
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))

MAP_UNITS = {
    "sc_mask": "1 inside the SC, 0 outside",
    "distance_to_edge_um": "um (NaN outside)",
    "a1_nm": "nm", "a2_nm": "nm", "gamma_deg": "deg", "phi_deg": "deg", "a_mean_nm": "nm",
    "a_ratio": "a2/a1", "psi_deg": "deg", "a_al_nm": "nm", "g": "fraction (FWHM of delta a / a)",
    "delta_psi_deg": "deg", "L_nm": "nm",
    "diffuse_saxs_photons": "expected photons on the detector per exposure",
    **{f"{peak}.{field}": unit for peak in PEAK_NAMES for field, unit in PEAK_FIELDS.items()},
}


@dataclass(frozen=True)
class SupercrystalModel:
    """Shape of the SC and the centre/edge values of its parameters.

    Lengths in um, angles in degrees, intensities in expected photons per exposure. "Centre"
    values hold deep inside (profile s = 1), "edge" values at the edge (s = 0).
    """

    centre_offset_um: tuple[float, float] = (-0.7, 0.8)  # (y, x) from the raster centre
    size_um: tuple[float, float] = (7.0, 8.0)  # (height, width) before rotation
    rotation_deg: float = 25.0
    corner_radius_um: float = 1.5
    a_mean_centre_nm: float = 10.7
    a_mean_edge_nm: float = 7.8
    a_ratio_edge_amplitude: float = 0.15
    gamma_edge_amplitude_deg: float = 10.0
    phi_mean_deg: float = 85.0
    phi_gradient_deg: float = 4.0  # +- across the raster along x
    phi_edge_amplitude_deg: float = 6.0
    psi_minus_phi_deg: float = 45.0
    psi_minus_phi_amplitude_deg: float = 1.5
    a_al_centre_nm: float = 0.574
    a_al_edge_nm: float = 0.572
    nc_size_nm: float = 6.8
    scherrer_k: float = 0.86
    g_centre: float = 0.01
    g_edge: float = 0.02
    delta_psi_centre_deg: float = 9.9
    delta_psi_edge_deg: float = 24.0
    saxs_fwhm_q_centre_nm: float = 0.05
    saxs_fwhm_q_edge_nm: float = 0.2
    saxs_fwhm_chi_centre_deg: float = 3.0
    saxs_fwhm_chi_edge_deg: float = 8.0
    saxs_i0_centre: float = 3000.0  # (100)_SL peaks; (010)_SL get saxs_010_relative of it
    saxs_010_relative: float = 0.8
    waxs_i0_centre: float = 4000.0  # waxs_010; the others relative to it
    waxs_relative: tuple[float, float, float, float] = (1.0, 0.45, 0.7, 0.7)
    edge_intensity_fraction: float = 0.25  # the SC is thinner at the edge
    diffuse_saxs_photons_centre: float = 40000.0

    def __post_init__(self) -> None:
        if min(self.size_um) <= 0 or not 0 <= self.corner_radius_um <= min(self.size_um) / 2:
            raise ConfigurationError(f"SC size {self.size_um} um / corner radius {self.corner_radius_um} um "
                                     "must be positive with the radius at most half the smaller side")
        if self.nc_size_nm <= 0 or self.a_mean_edge_nm <= 0 or self.a_al_edge_nm <= 0:
            raise ConfigurationError(f"NC size {self.nc_size_nm} nm and lattice parameters must be positive")


@dataclass(frozen=True)
class PeakSpec:
    """One 2D Gaussian Bragg peak in (q, chi) (science.md section 2).

    Attributes
    ----------
    name : str
    i0 : float
        Expected total photons of the peak (integrated intensity), counts.
    q0_nm, chi0_deg : float
        Centre; chi in [-180, 180), counter-clockwise as seen on the image.
    fwhm_q_nm, fwhm_chi_deg : float
        Full widths at half maximum.
    """

    name: str
    i0: float
    q0_nm: float
    chi0_deg: float
    fwhm_q_nm: float
    fwhm_chi_deg: float

    @property
    def sigma_q_nm(self) -> float:
        return self.fwhm_q_nm / FWHM_PER_SIGMA

    @property
    def sigma_chi_deg(self) -> float:
        return self.fwhm_chi_deg / FWHM_PER_SIGMA


@dataclass(frozen=True)
class PointParameters:
    """What one scan point scatters: its Bragg peaks and its diffuse SAXS."""

    inside: bool
    peaks: tuple[PeakSpec, ...] = ()
    diffuse_saxs_photons: float = 0.0


@dataclass(frozen=True, eq=False)
class SupercrystalTruth:
    """Parameter maps of the synthetic scan.

    Attributes
    ----------
    grid_shape : tuple of int
        (ny, nx) raster points.
    step_um : float
    maps : dict of str to ndarray of float64, shape (ny, nx)
        Keys of :data:`MAP_UNITS`; NaN outside the SC where undefined (peak ``i0`` is 0 there).
    units : dict of str to str
    """

    grid_shape: tuple[int, int]
    step_um: float
    maps: dict[str, np.ndarray]
    units: dict[str, str]

    def point(self, row: int, column: int) -> PointParameters:
        """The peaks and diffuse SAXS of grid point (row, column)."""
        if not self.maps["sc_mask"][row, column]:
            return PointParameters(inside=False)
        peaks = tuple(PeakSpec(name, *(float(self.maps[f"{name}.{field}"][row, column]) for field in PEAK_FIELDS))
                      for name in PEAK_NAMES)
        return PointParameters(True, peaks, float(self.maps["diffuse_saxs_photons"][row, column]))


def rounded_rectangle_depth_um(y_um, x_um, model: SupercrystalModel, centre_um: tuple[float, float]) -> np.ndarray:
    """Signed distance to the SC edge in um: positive inside (distance to the nearest edge point)."""
    dy, dx = np.asarray(y_um) - centre_um[0], np.asarray(x_um) - centre_um[1]
    angle = math.radians(model.rotation_deg)
    u = math.cos(angle) * dx + math.sin(angle) * dy  # along the width
    v = -math.sin(angle) * dx + math.cos(angle) * dy  # along the height
    radius = model.corner_radius_um
    qu = np.abs(u) - (model.size_um[1] / 2 - radius)
    qv = np.abs(v) - (model.size_um[0] / 2 - radius)
    outside = np.hypot(np.maximum(qu, 0.0), np.maximum(qv, 0.0))
    inside = np.minimum(np.maximum(qu, qv), 0.0)
    return -(outside + inside - radius)


def make_truth(config: Any) -> SupercrystalTruth:
    """Parameter maps of the SC for a scan configuration (pure and cheap).

    Parameters
    ----------
    config : SyntheticScanConfig
        Uses ``grid_shape`` (ny, nx), ``step_um`` and ``crystal`` (a :class:`SupercrystalModel`).
        Grid point (i, j) sits at y = i step, x = j step (um).
    """
    model: SupercrystalModel = config.crystal
    ny, nx = (int(n) for n in config.grid_shape)
    step = float(config.step_um)
    if ny < 1 or nx < 1 or not step > 0:
        raise ConfigurationError(f"scan grid {config.grid_shape} with step {config.step_um} um is not a raster")
    y_um, x_um = np.meshgrid(np.arange(ny) * step, np.arange(nx) * step, indexing="ij")
    centre = ((ny - 1) * step / 2 + model.centre_offset_um[0], (nx - 1) * step / 2 + model.centre_offset_um[1])
    depth_um = rounded_rectangle_depth_um(y_um, x_um, model, centre)
    inside = depth_um > 0
    depth_fraction = np.clip(depth_um / (min(model.size_um) / 2), 0.0, 1.0)
    s = 1.0 - (1.0 - depth_fraction) ** 2  # 1 deep inside, 0 at the edge
    edge = 1.0 - s
    beta = np.arctan2(-(y_um - centre[0]), x_um - centre[1])  # azimuth around the SC centre
    x_gradient = (x_um - x_um.mean()) / max(x_um.max() - x_um.mean(), step)

    maps: dict[str, np.ndarray] = {}
    maps["sc_mask"] = inside.astype(np.float64)
    maps["distance_to_edge_um"] = depth_um
    a_mean = model.a_mean_edge_nm + (model.a_mean_centre_nm - model.a_mean_edge_nm) * s
    ratio = 1.0 + model.a_ratio_edge_amplitude * edge * np.cos(2.0 * (beta - math.radians(model.rotation_deg)))
    a1 = 2.0 * a_mean / (1.0 + ratio)
    maps.update(a_mean_nm=a_mean, a_ratio=ratio, a1_nm=a1, a2_nm=ratio * a1)
    maps["gamma_deg"] = 90.0 + model.gamma_edge_amplitude_deg * edge * np.sin(2.0 * beta)
    maps["phi_deg"] = (model.phi_mean_deg + model.phi_gradient_deg * x_gradient
                       + model.phi_edge_amplitude_deg * edge * np.sin(beta))
    maps["psi_deg"] = maps["phi_deg"] + model.psi_minus_phi_deg + model.psi_minus_phi_amplitude_deg * (
        0.3 + 0.7 * edge) * np.cos(beta + 0.5)
    maps["a_al_nm"] = model.a_al_edge_nm + (model.a_al_centre_nm - model.a_al_edge_nm) * s
    maps["g"] = model.g_edge + (model.g_centre - model.g_edge) * s
    maps["delta_psi_deg"] = model.delta_psi_edge_deg + (model.delta_psi_centre_deg - model.delta_psi_edge_deg) * s
    maps["L_nm"] = np.full((ny, nx), model.nc_size_nm)
    thickness = model.edge_intensity_fraction + (1.0 - model.edge_intensity_fraction) * s
    maps["diffuse_saxs_photons"] = model.diffuse_saxs_photons_centre * thickness
    _add_saxs_peaks(maps, model, edge, thickness)
    _add_waxs_peaks(maps, model, thickness)

    for name, values in maps.items():
        values = np.array(np.broadcast_to(values, (ny, nx)), dtype=np.float64)
        if name.endswith(".i0") or name == "diffuse_saxs_photons":
            values[~inside] = 0.0
        elif name != "sc_mask":
            values[~inside] = np.nan
        values.setflags(write=False)
        maps[name] = values
    return SupercrystalTruth((ny, nx), step, maps, {name: MAP_UNITS[name] for name in maps})


def _add_saxs_peaks(maps: dict, model: SupercrystalModel, edge: np.ndarray, thickness: np.ndarray) -> None:
    gamma_rad = np.radians(maps["gamma_deg"])
    omega1 = maps["phi_deg"] + maps["gamma_deg"] / 2.0 - 90.0
    omega2 = maps["phi_deg"] - maps["gamma_deg"] / 2.0 + 90.0
    q1 = 2.0 * np.pi / (maps["a1_nm"] * np.sin(gamma_rad))
    q2 = 2.0 * np.pi / (maps["a2_nm"] * np.sin(gamma_rad))
    fwhm_q = model.saxs_fwhm_q_edge_nm + (model.saxs_fwhm_q_centre_nm - model.saxs_fwhm_q_edge_nm) * (1 - edge)
    fwhm_chi = model.saxs_fwhm_chi_edge_deg + (model.saxs_fwhm_chi_centre_deg
                                               - model.saxs_fwhm_chi_edge_deg) * (1 - edge)
    i0_100 = model.saxs_i0_centre * thickness
    for name, q0, chi0, i0 in (("saxs_1", q1, omega1, i0_100), ("saxs_2", q2, omega2, model.saxs_010_relative * i0_100),
                               ("saxs_3", q1, omega1 + 180.0, i0_100),
                               ("saxs_4", q2, omega2 + 180.0, model.saxs_010_relative * i0_100)):
        maps[f"{name}.i0"] = i0
        maps[f"{name}.q0_nm"] = q0
        maps[f"{name}.chi0_deg"] = wrap_degrees(chi0)
        maps[f"{name}.fwhm_q_nm"] = fwhm_q
        maps[f"{name}.fwhm_chi_deg"] = fwhm_chi


def williamson_hall_fwhm(q_nm, nc_size_nm, g, delta_psi_deg, scherrer_k):
    """Radial FWHM (nm^-1) and azimuthal FWHM (deg) of a WAXS peak (science.md section 5)."""
    size_term = 2.0 * np.pi * scherrer_k / nc_size_nm
    fwhm_q = np.sqrt(size_term**2 + (g * q_nm) ** 2)
    fwhm_chi_rad = np.sqrt((np.radians(delta_psi_deg) * q_nm) ** 2 + size_term**2) / q_nm
    return fwhm_q, np.degrees(fwhm_chi_rad)


def _add_waxs_peaks(maps: dict, model: SupercrystalModel, thickness: np.ndarray) -> None:
    q010 = 2.0 * np.pi / maps["a_al_nm"]
    psi = maps["psi_deg"]
    for (name, q0, chi0), relative in zip(
            (("waxs_010", q010, psi), ("waxs_020", 2.0 * q010, psi),
             ("waxs_110", math.sqrt(2.0) * q010, psi - 45.0), ("waxs_m110", math.sqrt(2.0) * q010, psi + 45.0)),
            model.waxs_relative):
        fwhm_q, fwhm_chi = williamson_hall_fwhm(q0, model.nc_size_nm, maps["g"], maps["delta_psi_deg"],
                                                model.scherrer_k)
        maps[f"{name}.i0"] = relative * model.waxs_i0_centre * thickness
        maps[f"{name}.q0_nm"] = q0
        maps[f"{name}.chi0_deg"] = wrap_degrees(chi0)
        maps[f"{name}.fwhm_q_nm"] = fwhm_q
        maps[f"{name}.fwhm_chi_deg"] = fwhm_chi
