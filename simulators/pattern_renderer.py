"""Detector frames from scan-point parameters: Kapton background, diffuse SAXS, Bragg peaks.

Heavy tables are built once per geometry (:func:`geometry_tables`): q and chi of every pixel
(:func:`analysis.geometry.pixel_q_chi`), the pixel area in (q, chi) space (Jacobian of the
pixel-to-(q, chi) map, nm^-1 deg) and per-tile bounds of q and chi so that a peak is only
evaluated over the 32 x 32 tiles it can reach. A peak ``I(q, chi) = I0 / (2 pi s_q s_chi)
exp(...)`` (science.md section 2) gives ``I(q_i, chi_i) * area_i * transmission_i`` expected
counts in pixel i, evaluated within ``n_sigma`` standard deviations in q and in chi.

Counts are drawn photon by photon, which costs O(photons) instead of O(pixels) for broad
WAXS peaks: a peak emits ``N ~ Poisson(I0)`` photons at (q, chi) drawn from its Gaussian, each
landing in the pixel that contains it (:class:`DetectorPlane` inverts the geometry). The
diffuse SAXS emits ``Poisson(photons)`` photons into pixels drawn from its fixed per-pixel
profile (Poisson splitting: exactly independent Poisson counts per pixel). Sums of
independent Poisson variables are Poisson, so all is added onto a Poisson realisation of the
Kapton background. The noise-free frame (:meth:`PatternRenderer.render_expected`) uses the
pixel-centre value times the pixel area; the counts integrate the Gaussian over each pixel.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import numba
import numpy as np

from analysis.errors import ConfigurationError, GeometryError
from analysis.geometry import DetectorGeometry, pixel_q_chi
from simulators.eiger4m_detector import NODATA_UINT32
from simulators.supercrystal import PeakSpec, PointParameters

logger = logging.getLogger(__name__)

TILE_SIZE = 32


@dataclass(frozen=True)
class KaptonBackground:
    """Kapton-like background, expected counts per pixel per exposure as a function of q.

    A constant floor, Gaussian amorphous halos and a weak diffuse SAXS term
    ``saxs_counts / (1 + (q / saxs_corner_q_nm)^3)`` rising towards low q.
    """

    floor_counts: float = 0.02
    halo_q_nm: tuple[float, ...] = (4.1, 12.5)
    halo_fwhm_q_nm: tuple[float, ...] = (1.6, 6.0)
    halo_counts: tuple[float, ...] = (0.45, 0.2)
    saxs_counts: float = 1.5
    saxs_corner_q_nm: float = 0.3

    def expected_counts(self, q_nm: np.ndarray) -> np.ndarray:
        """Expected counts per pixel (float64, shape of ``q_nm``)."""
        q_nm = np.asarray(q_nm, dtype=np.float64)
        counts = np.full(q_nm.shape, self.floor_counts)
        for centre, fwhm, height in zip(self.halo_q_nm, self.halo_fwhm_q_nm, self.halo_counts):
            counts += height * np.exp(-4.0 * math.log(2.0) * ((q_nm - centre) / fwhm) ** 2)
        counts += self.saxs_counts / (1.0 + (q_nm / self.saxs_corner_q_nm) ** 3)
        return counts


@dataclass(frozen=True)
class DiffuseSaxs:
    """Shape of the SC's diffuse small-angle scattering: ``1 / (1 + (q xi)^2)^2`` for q < q_max."""

    correlation_length_nm: float = 4.0
    q_max_nm: float = 3.0


@dataclass(frozen=True)
class Beamstop:
    """A round beamstop on the direct beam: transmission inside ``radius_px`` (pixels)."""

    radius_px: float = 10.0
    transmission: float = 2e-3


@dataclass(frozen=True, eq=False)
class GeometryTables:
    """Per-pixel tables of one geometry (all float64, shape (rows, columns) unless noted).

    Attributes
    ----------
    q_nm, chi_deg : pixel centres (chi counter-clockwise as seen on the image, [-180, 180))
    area_q_chi : pixel area in (q, chi) space, nm^-1 deg
    tile_q_min, tile_q_max, tile_chi_centre_deg, tile_chi_half_deg : shape (n_tile_rows, n_tile_cols)
        Bounds of q and chi over each TILE_SIZE x TILE_SIZE tile.
    plane : DetectorPlane
        Inverse map (q, chi) -> pixel.
    """

    q_nm: np.ndarray
    chi_deg: np.ndarray
    area_q_chi: np.ndarray
    tile_q_min: np.ndarray
    tile_q_max: np.ndarray
    tile_chi_centre_deg: np.ndarray
    tile_chi_half_deg: np.ndarray
    plane: "DetectorPlane"


@dataclass(frozen=True, eq=False)
class DetectorPlane:
    """A flat detector in the lab frame: where a photon of given (q, chi) lands.

    Attributes
    ----------
    origin_m, row_step_m, column_step_m : ndarray of float64, shape (3,)
        Lab position (z along the beam, y, x; pyFAI's ``calc_pos_zyx``) of pixel (0, 0)'s
        centre and the steps to the next row / column, metres.
    wavelength_nm : float
    """

    origin_m: np.ndarray
    row_step_m: np.ndarray
    column_step_m: np.ndarray
    wavelength_nm: float

    @classmethod
    def from_geometry(cls, geometry: DetectorGeometry) -> "DetectorPlane":
        rows, cols = geometry.shape
        z, y, x = geometry.integrator().calc_pos_zyx(d1=np.array([0.0, 1.0, 0.0, rows - 1.0]),
                                                      d2=np.array([0.0, 0.0, 1.0, cols - 1.0]))
        points = np.stack([np.ravel(z), np.ravel(y), np.ravel(x)], axis=1).astype(np.float64)
        plane = cls(points[0], points[1] - points[0], points[2] - points[0], geometry.wavelength_nm)
        far = plane.origin_m + (rows - 1) * plane.row_step_m + (cols - 1) * plane.column_step_m
        if not np.allclose(far, points[3], rtol=0, atol=1e-9):
            raise GeometryError(f"detector of geometry {geometry.detector_name!r} is not flat and regular; "
                                "the simulator needs a planar pixel grid")
        return plane

    def pixel_of(self, q_nm: np.ndarray, chi_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fractional (row, column) indices (pixel centres at integers) where photons of
        (q_nm, chi_deg) land; NaN where the ray misses the detector plane or q is unreachable."""
        sin_theta = np.asarray(q_nm, dtype=np.float64) * self.wavelength_nm / (4.0 * np.pi)
        with np.errstate(invalid="ignore"):
            two_theta = 2.0 * np.arcsin(np.where((sin_theta >= 0) & (sin_theta <= 1), sin_theta, np.nan))
        chi = np.radians(chi_deg)
        direction = np.stack([np.cos(two_theta), -np.sin(two_theta) * np.sin(chi),
                              np.sin(two_theta) * np.cos(chi)], axis=-1)
        normal = np.cross(self.row_step_m, self.column_step_m)
        with np.errstate(divide="ignore", invalid="ignore"):
            distance = (self.origin_m @ normal) / (direction @ normal)
        distance = np.where(distance > 0, distance, np.nan)
        offset = direction * distance[..., None] - self.origin_m
        gram = np.array([[self.row_step_m @ self.row_step_m, self.row_step_m @ self.column_step_m],
                         [self.row_step_m @ self.column_step_m, self.column_step_m @ self.column_step_m]])
        rhs = np.stack([offset @ self.row_step_m, offset @ self.column_step_m], axis=-1)
        row_col = rhs @ np.linalg.inv(gram).T
        return row_col[..., 0], row_col[..., 1]


def _wrapped_diff(chi_deg: np.ndarray, axis: int) -> np.ndarray:
    """d chi / d index (deg per pixel) by central differences, wrapped across +-180."""
    padded = np.concatenate([np.take(chi_deg, [0], axis), chi_deg, np.take(chi_deg, [-1], axis)], axis=axis)
    n = chi_deg.shape[axis]
    forward = np.take(padded, np.arange(2, n + 2), axis) - np.take(padded, np.arange(0, n), axis)
    derivative = (forward + 180.0) % 360.0 - 180.0
    scale = np.full(n, 0.5)
    scale[0] = scale[-1] = 1.0
    return derivative * (scale[:, None] if axis == 0 else scale[None, :])


def pixel_area_q_chi(q_nm: np.ndarray, chi_deg: np.ndarray) -> np.ndarray:
    """|det d(q, chi)/d(row, column)|: pixel area in (q, chi) space, nm^-1 deg (float64)."""
    dq_drow, dq_dcol = np.gradient(q_nm)
    return np.abs(dq_drow * _wrapped_diff(chi_deg, 1) - dq_dcol * _wrapped_diff(chi_deg, 0))


def _tile_bounds(q_nm: np.ndarray, chi_deg: np.ndarray, tile: int):
    rows, cols = q_nm.shape
    n_tr, n_tc = -(-rows // tile), -(-cols // tile)
    pad = ((0, n_tr * tile - rows), (0, n_tc * tile - cols))
    q_tiles = np.pad(q_nm, pad, mode="edge").reshape(n_tr, tile, n_tc, tile)
    chi_tiles = np.radians(np.pad(chi_deg, pad, mode="edge").reshape(n_tr, tile, n_tc, tile))
    centre = np.degrees(np.arctan2(np.sin(chi_tiles).mean(axis=(1, 3)), np.cos(chi_tiles).mean(axis=(1, 3))))
    spread = (np.degrees(chi_tiles) - centre[:, None, :, None] + 180.0) % 360.0 - 180.0
    half = np.abs(spread).max(axis=(1, 3)) + 1e-6
    return q_tiles.min(axis=(1, 3)), q_tiles.max(axis=(1, 3)), centre, half


@functools.lru_cache(maxsize=2)
def geometry_tables(geometry: DetectorGeometry) -> GeometryTables:
    """Tables of a geometry, built once per process and geometry (about 2 s)."""
    q_nm, chi_deg = pixel_q_chi(geometry)
    tables = GeometryTables(q_nm, chi_deg, pixel_area_q_chi(q_nm, chi_deg), *_tile_bounds(q_nm, chi_deg, TILE_SIZE),
                            DetectorPlane.from_geometry(geometry))
    for array in vars(tables).values():
        if isinstance(array, np.ndarray):
            array.setflags(write=False)
    return tables


@numba.njit(cache=True)
def gaussian_peak_pixels_kernel(q_nm, chi_deg, weight, tile_q_min, tile_q_max, tile_chi_centre, tile_chi_half,
                                tile_size, q0, chi0, sigma_q, sigma_chi, i0, n_sigma, out_index, out_expected):
    """Expected counts of one 2D Gaussian peak in every pixel within n_sigma (in q and chi).

    Writes flat pixel indices (int64) and expected counts (float64) into the caller's
    ``out_index``/``out_expected``; returns how many, or -1 when they are too small. Peaks with
    non-finite or non-positive parameters give 0 pixels.
    """
    if not (np.isfinite(q0) and np.isfinite(chi0) and np.isfinite(i0) and sigma_q > 0.0 and sigma_chi > 0.0):
        return 0
    n_rows, n_cols = q_nm.shape
    dq_max = n_sigma * sigma_q
    dchi_max = n_sigma * sigma_chi
    norm = i0 / (2.0 * np.pi * sigma_q * sigma_chi)
    n = 0
    for tr in range(tile_q_min.shape[0]):
        for tc in range(tile_q_min.shape[1]):
            if tile_q_max[tr, tc] < q0 - dq_max or tile_q_min[tr, tc] > q0 + dq_max:
                continue
            d_tile = abs(chi0 - tile_chi_centre[tr, tc])
            if min(d_tile, 360.0 - d_tile) > tile_chi_half[tr, tc] + dchi_max:
                continue
            for r in range(tr * tile_size, min((tr + 1) * tile_size, n_rows)):
                for c in range(tc * tile_size, min((tc + 1) * tile_size, n_cols)):
                    dq = q_nm[r, c] - q0
                    if abs(dq) > dq_max:
                        continue
                    dchi = chi_deg[r, c] - chi0  # both in [-180, 180): one wrap suffices
                    if dchi >= 180.0:
                        dchi -= 360.0
                    elif dchi < -180.0:
                        dchi += 360.0
                    if abs(dchi) > dchi_max:
                        continue
                    if n >= out_index.shape[0]:
                        return -1
                    out_index[n] = r * n_cols + c
                    out_expected[n] = norm * weight[r, c] * np.exp(
                        -0.5 * (dq / sigma_q) ** 2 - 0.5 * (dchi / sigma_chi) ** 2)
                    n += 1
    return n


def gaussian_peak_reference(q_nm, chi_deg, weight, peak: PeakSpec, n_sigma: float) -> np.ndarray:
    """Plain NumPy reference of :func:`gaussian_peak_pixels_kernel`: a full (rows, columns)
    float64 frame of expected counts, zero beyond n_sigma."""
    s_q, s_chi = peak.sigma_q_nm, peak.sigma_chi_deg
    dq = q_nm - peak.q0_nm
    dchi = (chi_deg - peak.chi0_deg + 180.0) % 360.0 - 180.0
    inside = (np.abs(dq) <= n_sigma * s_q) & (np.abs(dchi) <= n_sigma * s_chi)
    value = peak.i0 / (2 * np.pi * s_q * s_chi) * np.exp(-0.5 * (dq / s_q) ** 2 - 0.5 * (dchi / s_chi) ** 2) * weight
    return np.where(inside, value, 0.0)


class PatternRenderer:
    """Expected and Poisson-noisy frames of one geometry and pixel mask.

    Parameters
    ----------
    geometry : DetectorGeometry
    pixel_mask : ndarray of uint32, shape geometry.shape
        Nonzero pixels are masked: NaN in expected frames, 2**32 - 1 in counted frames.
    background, diffuse, beamstop : the component models
    n_sigma : float
        Expected frames evaluate peaks within this many standard deviations in q and in chi
        (4 keeps all but about 1e-4 of a peak's photons).
    """

    def __init__(self, geometry: DetectorGeometry, pixel_mask: np.ndarray,
                 background: KaptonBackground = KaptonBackground(), diffuse: DiffuseSaxs = DiffuseSaxs(),
                 beamstop: Beamstop = Beamstop(), n_sigma: float = 4.0):
        pixel_mask = np.asarray(pixel_mask)
        if pixel_mask.shape != tuple(geometry.shape) or pixel_mask.dtype != np.uint32:
            raise GeometryError(f"pixel mask {pixel_mask.shape} {pixel_mask.dtype} does not fit the geometry's "
                                f"detector {tuple(geometry.shape)} (uint32 expected)")
        if not n_sigma > 0:
            raise ConfigurationError(f"n_sigma={n_sigma!r} must be positive")
        self.geometry, self.pixel_mask, self.n_sigma = geometry, pixel_mask, float(n_sigma)
        self.masked = pixel_mask != 0
        self.tables = geometry_tables(geometry)
        q_nm = self.tables.q_nm
        row0, col0 = geometry.beam_centre_px
        rows, cols = np.ogrid[: q_nm.shape[0], : q_nm.shape[1]]
        self.transmission = np.where((rows - row0) ** 2 + (cols - col0) ** 2 <= beamstop.radius_px**2,
                                     np.float32(beamstop.transmission), np.float32(1.0))
        self._peak_weight: np.ndarray | None = None
        self.background_expected = (background.expected_counts(q_nm) * self.transmission).astype(np.float32)
        index = np.flatnonzero(q_nm < diffuse.q_max_nm)
        profile = self.transmission.flat[index] / (1.0 + (q_nm.flat[index] * diffuse.correlation_length_nm) ** 2) ** 2
        self.diffuse_index, self.diffuse_profile = index, profile / profile.sum()
        self._diffuse_cdf = np.cumsum(self.diffuse_profile)
        self._out_index = np.empty(1 << 20, dtype=np.int64)
        self._out_expected = np.empty(1 << 20, dtype=np.float64)
        self._below_q: dict[float, tuple[np.ndarray, float, float]] = {}

    def peak_pixels(self, peak: PeakSpec) -> tuple[np.ndarray, np.ndarray]:
        """Flat pixel indices (int64) and expected counts (float64) of one peak within n_sigma
        (masked pixels included); see :func:`gaussian_peak_pixels_kernel`."""
        t = self.tables
        if self._peak_weight is None:  # pixel area x beamstop transmission, float64
            self._peak_weight = t.area_q_chi * self.transmission
        chi0_deg = (float(peak.chi0_deg) + 180.0) % 360.0 - 180.0
        while True:
            n = gaussian_peak_pixels_kernel(
                t.q_nm, t.chi_deg, self._peak_weight, t.tile_q_min, t.tile_q_max, t.tile_chi_centre_deg,
                t.tile_chi_half_deg, TILE_SIZE, float(peak.q0_nm), chi0_deg, float(peak.sigma_q_nm),
                float(peak.sigma_chi_deg), float(peak.i0), self.n_sigma, self._out_index, self._out_expected)
            if n >= 0:
                return self._out_index[:n].copy(), self._out_expected[:n].copy()
            size = min(2 * self._out_index.size, t.q_nm.size)
            self._out_index, self._out_expected = np.empty(size, np.int64), np.empty(size, np.float64)

    def render_expected(self, point: PointParameters, include_background: bool = True) -> np.ndarray:
        """Noise-free frame: expected counts per pixel, float64 (rows, columns), NaN where masked.

        A peak contributes ``I(q_i, chi_i) * area_i * transmission_i`` to pixel i (pixel-centre
        value times the pixel's (q, chi) area)."""
        frame = self.background_expected.astype(np.float64) if include_background else np.zeros(self.geometry.shape)
        flat = frame.reshape(-1)
        if point.diffuse_saxs_photons > 0:
            flat[self.diffuse_index] += point.diffuse_saxs_photons * self.diffuse_profile
        for peak in point.peaks:
            index, expected = self.peak_pixels(peak)
            flat[index] += expected
        frame[self.masked] = np.nan
        return frame

    def background_counts(self, rng: np.random.Generator) -> np.ndarray:
        """A Poisson realisation of the Kapton background, uint32, masked pixels = 2**32 - 1."""
        frame = rng.poisson(self.background_expected).astype(np.uint32)
        frame[self.masked] = NODATA_UINT32
        return frame

    def render_counts(self, point: PointParameters, rng: np.random.Generator,
                      background_counts: np.ndarray | None = None) -> np.ndarray:
        """Poisson counts of a scan point: uint32 (rows, columns), masked pixels = 2**32 - 1.

        Peak photons are drawn in (q, chi) from the peak's 2D Gaussian (their number
        ``Poisson(i0)``) and land in the pixel that contains them (:class:`DetectorPlane`);
        those hitting a gap, a masked pixel or no pixel are lost, those under the beamstop
        pass with its transmission. Diffuse SAXS photons are drawn from its pixel profile.

        Parameters
        ----------
        point : PointParameters
        rng : numpy Generator
        background_counts : ndarray of uint32, optional
            A Poisson realisation of the background (masked pixels already 2**32 - 1), copied;
            drawn from ``rng`` when None.
        """
        if background_counts is None:
            frame = self.background_counts(rng)
        else:
            if background_counts.shape != tuple(self.geometry.shape) or background_counts.dtype != np.uint32:
                raise GeometryError(f"background realisation {background_counts.shape} {background_counts.dtype} "
                                    f"does not fit the detector {tuple(self.geometry.shape)} uint32")
            frame = background_counts.copy()
        flat = frame.reshape(-1)
        if point.diffuse_saxs_photons > 0:
            n_photons = rng.poisson(point.diffuse_saxs_photons)
            where = np.searchsorted(self._diffuse_cdf, np.sort(rng.random(n_photons)) * self._diffuse_cdf[-1],
                                    side="right")
            self._count_photons(flat, self.diffuse_index[np.minimum(where, self.diffuse_index.size - 1)])
        for peak in point.peaks:
            self._count_photons(flat, self.peak_photon_pixels(peak, rng), rng)
        return frame

    def peak_photon_pixels(self, peak: PeakSpec, rng: np.random.Generator) -> np.ndarray:
        """Flat pixel indices (int64) of the Poisson(i0) photons of one peak that hit a pixel."""
        if not (peak.i0 > 0 and peak.sigma_q_nm > 0 and peak.sigma_chi_deg > 0):
            return np.empty(0, dtype=np.int64)
        n_photons = rng.poisson(peak.i0)
        q_nm = rng.normal(peak.q0_nm, peak.sigma_q_nm, n_photons)
        chi_deg = rng.normal(peak.chi0_deg, peak.sigma_chi_deg, n_photons)
        rows, cols = self.tables.plane.pixel_of(q_nm, chi_deg)
        n_rows, n_cols = self.geometry.shape
        with np.errstate(invalid="ignore"):
            rows, cols = np.rint(rows), np.rint(cols)
            hit = (rows >= 0) & (rows < n_rows) & (cols >= 0) & (cols < n_cols)
        return rows[hit].astype(np.int64) * n_cols + cols[hit].astype(np.int64)

    def _count_photons(self, flat: np.ndarray, pixels: np.ndarray, rng: np.random.Generator | None = None) -> None:
        """Add one count per photon (flat pixel indices), dropping masked pixels; with ``rng``
        photons also pass the beamstop with its transmission."""
        keep = ~self.masked.reshape(-1)[pixels]
        if rng is not None:
            keep &= rng.random(pixels.size) < self.transmission.reshape(-1)[pixels]
        np.add.at(flat, pixels[keep], np.uint32(1))

    def expected_counts_below_q(self, point: PointParameters, q_max_nm: float = 2.0,
                                include_background: bool = True) -> float:
        """Noise-free counts summed over unmasked pixels with q < q_max_nm (the SAXS-map quantity)."""
        if q_max_nm not in self._below_q:
            good = ~self.masked.reshape(-1) & (self.tables.q_nm.reshape(-1) < q_max_nm)
            self._below_q[q_max_nm] = (good, float(self.background_expected.reshape(-1)[good].sum(dtype=np.float64)),
                                       float(self.diffuse_profile[good[self.diffuse_index]].sum()))
        good, background_total, diffuse_fraction = self._below_q[q_max_nm]
        total = background_total if include_background else 0.0
        total += point.diffuse_saxs_photons * diffuse_fraction
        for peak in point.peaks:
            if peak.q0_nm - self.n_sigma * peak.sigma_q_nm < q_max_nm:
                index, expected = self.peak_pixels(peak)
                total += float(expected[good[index]].sum())
        return total
