"""Polar regrouping table: which detector pixel goes to which (window, q bin, chi bin).

Built once per geometry + pixel mask + peak model (a second or two for an EIGER X 4M); each
frame then costs one pass over the table (``analysis.regroup_kernel``). The binning is the
one of pyFAI ``integrate2d`` with ``method=("no", "histogram", "cython")``: each pixel goes,
whole, to the bin holding its centre (no pixel splitting). A window's bins are half-open,
``[edge_j, edge_j+1)``, in q and in the window's unwrapped chi.

Windows of different sizes share arrays of shape ``(n_windows, n_q, n_chi)`` with n_q, n_chi
the largest sizes; the bins a smaller window does not have hold no pixel (count 0) and NaN
centres. Use :meth:`PolarTable.window_bins` to cut one window's own bins out.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from analysis.errors import GeometryError
from analysis.geometry import DetectorGeometry, pixel_area_q_chi, pixel_q_chi
from analysis.peak_model import PeakModel, PeakWindow
from analysis.status import Status

log = logging.getLogger(__name__)

MIN_WINDOW_COVERAGE = 0.25
"""Windows with a smaller fraction of their (q, chi) cells on valid pixels are OUTSIDE_DETECTOR."""
COVERAGE_CELL_CHI_DEG = 10.0
COVERAGE_CELLS_Q = 4
MAX_SEGMENT_LENGTH = int(np.iinfo(np.int16).max)
"""Longer segments (consecutive pixels of one bin) are split so that their lengths fit int16."""


def _smallest_signed(limit: int) -> type:
    """int16, int32 or int64: the smallest signed dtype holding 0 .. limit - 1."""
    for dtype in (np.int16, np.int32):
        if limit <= np.iinfo(dtype).max + 1:
            return dtype
    return np.int64


def _first_of_runs(pixel_index: np.ndarray, bin_index: np.ndarray | None = None) -> np.ndarray:
    """Entry indices where a run of consecutive pixels (of one bin, with ``bin_index``) begins."""
    if pixel_index.size == 0:
        return np.zeros(0, np.int64)
    breaks = np.diff(pixel_index) != 1
    if bin_index is not None:
        breaks |= np.diff(bin_index) != 0
    return np.flatnonzero(np.concatenate(([True], breaks)))


def run_length_encode(pixel_index: np.ndarray, bin_index: np.ndarray, n_pixels: int, n_bins: int) -> dict:
    """The run-length form of a table (entries ``pixel_index`` ascending, ``bin_index``).

    Runs are maximal stretches of entries on consecutive pixels; each run is cut into segments
    of entries of one bin (at most ``MAX_SEGMENT_LENGTH`` long), in entry order. Returns
    ``run_start`` (int32, int64 past 2^31 pixels), ``run_length`` (int32/int64),
    ``run_first_segment`` (n_runs + 1 bounds, int32/int64), ``segment_length`` (int16) and
    ``segment_bin`` (int16 when the bins fit, else int32).
    """
    n = int(pixel_index.size)
    index_dtype = np.int32 if max(n_pixels, n + 1) <= np.iinfo(np.int32).max else np.int64
    run_first = _first_of_runs(pixel_index)
    segment_first = _first_of_runs(pixel_index, bin_index)         # every run start is a segment start
    lengths = np.diff(np.append(segment_first, n))
    if lengths.size and lengths.max() > MAX_SEGMENT_LENGTH:
        pieces = -(-lengths // MAX_SEGMENT_LENGTH)
        piece = np.arange(int(pieces.sum())) - np.repeat(np.cumsum(pieces) - pieces, pieces)
        segment_first = np.repeat(segment_first, pieces) + piece * MAX_SEGMENT_LENGTH
        lengths = np.diff(np.append(segment_first, n))
    return {
        "run_start": np.ascontiguousarray(pixel_index[run_first], dtype=index_dtype),
        "run_length": np.diff(np.append(run_first, n)).astype(index_dtype),
        "run_first_segment": np.append(np.searchsorted(segment_first, run_first),
                                       segment_first.size).astype(index_dtype),
        "segment_length": lengths.astype(np.int16),
        "segment_bin": np.ascontiguousarray(bin_index[segment_first], dtype=_smallest_signed(n_bins)),
    }


@dataclass(frozen=True, eq=False)
class PolarTable:
    """Sparse map from detector pixels to polar bins, for every window of a peak model.

    Attributes
    ----------
    detector_shape : tuple of int
        (rows, columns) of the frames the table applies to.
    peak_names : tuple of str
        One per window, in the peak model's order.
    pixel_index : ndarray of int64, shape (n_entries,)
        Flat (C-order) index of each statically valid pixel that falls in a window, ascending.
    bin_index : ndarray of int32, shape (n_entries,)
        Flat bin index ``(window * n_q + i_q) * n_chi + i_chi`` of each entry.
    n_q, n_chi : int
        Bins per window along q and chi (the largest over the windows).
    n_q_per_window, n_chi_per_window : ndarray of int32, shape (n_windows,)
    q_edges_nm : ndarray of float64, shape (n_windows, n_q + 1)
    q_centres_nm : ndarray of float64, shape (n_windows, n_q)
    chi_edges_deg : ndarray of float64, shape (n_windows, n_chi + 1)
        Unwrapped: continuous across +-180 inside a window (may exceed 180).
    chi_centres_deg : ndarray of float64, shape (n_windows, n_chi)
        Unwrapped, as ``chi_edges_deg``. Padding bins are NaN in all four edge/centre arrays.
    q_bin_width_nm, chi_bin_width_deg : ndarray of float64, shape (n_windows,)
    pixel_count_geometric : ndarray of int32, shape (n_windows, n_q, n_chi)
        Pixels whose centre is in each bin, before the static mask.
    pixel_count_valid : ndarray of int32, shape (n_windows, n_q, n_chi)
        The same after the static mask (the entries of the table).
    pixel_area_per_bin : ndarray of float64, shape (n_windows, n_q, n_chi)
        Mean area in the (q, chi) plane (nm^-1 x deg) of the pixels in each bin (NaN where none):
        mean counts per pixel / this = intensity density in (q, chi), the quantity the peak
        model describes.
    window_coverage : ndarray of float64, shape (n_windows,)
        Fraction of the window's coarse (q, chi) cells (4 along q, about 10 deg along chi)
        holding at least one valid pixel.
    window_status : ndarray of int32, shape (n_windows,)
        ``Status.OK``, or ``Status.OUTSIDE_DETECTOR`` when the coverage is below the minimum.
    saxs_q_max_nm : float
    saxs_pixel_index : ndarray of int64, shape (n_saxs,)
        Flat indices of the statically valid pixels with q < ``saxs_q_max_nm``, ascending.
    saxs_pixel_count_geometric : int
        Pixels with q < ``saxs_q_max_nm`` before the static mask.

    The per-frame kernel reads a run-length form of the same entries, derived at construction
    (read-only; about 4 B per segment of about 8 pixels instead of 12 B per entry), so that it
    reads the frame contiguously (see :func:`run_length_encode`):

    run_start, run_length : ndarray of int32 (int64 past 2^31 pixels), shape (n_runs,)
        Stretches of entries on consecutive pixels.
    run_first_segment : ndarray, shape (n_runs + 1,)
        Run r holds segments ``run_first_segment[r]`` to ``run_first_segment[r + 1] - 1``.
    segment_length : ndarray of int16, shape (n_segments,)
        Consecutive entries of one bin, in entry order, from the run's start on.
    segment_bin : ndarray of int16 (int32 when the bins do not fit int16), shape (n_segments,)
    saxs_run_start, saxs_run_length : ndarray, shape (n_saxs_runs,)
        Stretches of consecutive pixels of ``saxs_pixel_index``.
    max_pixels_per_sum : int
        Most entries summed into one bin, or the SAXS pixel count if larger (bounds the sums).
    """

    detector_shape: tuple[int, int]
    peak_names: tuple[str, ...]
    pixel_index: np.ndarray
    bin_index: np.ndarray
    n_q: int
    n_chi: int
    n_q_per_window: np.ndarray
    n_chi_per_window: np.ndarray
    q_edges_nm: np.ndarray
    q_centres_nm: np.ndarray
    chi_edges_deg: np.ndarray
    chi_centres_deg: np.ndarray
    q_bin_width_nm: np.ndarray
    chi_bin_width_deg: np.ndarray
    pixel_count_geometric: np.ndarray
    pixel_count_valid: np.ndarray
    pixel_area_per_bin: np.ndarray
    window_coverage: np.ndarray
    window_status: np.ndarray
    saxs_q_max_nm: float
    saxs_pixel_index: np.ndarray
    saxs_pixel_count_geometric: int
    run_start: np.ndarray = field(init=False, repr=False)
    run_length: np.ndarray = field(init=False, repr=False)
    run_first_segment: np.ndarray = field(init=False, repr=False)
    segment_length: np.ndarray = field(init=False, repr=False)
    segment_bin: np.ndarray = field(init=False, repr=False)
    saxs_run_start: np.ndarray = field(init=False, repr=False)
    saxs_run_length: np.ndarray = field(init=False, repr=False)
    max_pixels_per_sum: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("pixel_index", "saxs_pixel_index"):
            if np.any(np.diff(getattr(self, name)) < 0):
                raise GeometryError(f"polar table {name} must be ascending")
        n_pixels = int(self.detector_shape[0]) * int(self.detector_shape[1])
        derived = run_length_encode(self.pixel_index, self.bin_index, n_pixels,
                                    len(self.peak_names) * self.n_q * self.n_chi)
        saxs = run_length_encode(self.saxs_pixel_index, np.zeros(self.saxs_pixel_index.size, np.int32), n_pixels, 1)
        derived["saxs_run_start"], derived["saxs_run_length"] = saxs["run_start"], saxs["run_length"]
        for name, array in derived.items():
            array.setflags(write=False)
            object.__setattr__(self, name, array)
        largest_bin = int(np.bincount(self.bin_index).max()) if self.bin_index.size else 0
        object.__setattr__(self, "max_pixels_per_sum", max(largest_bin, int(self.saxs_pixel_index.size)))

    @property
    def n_segments(self) -> int:
        return int(self.segment_length.size)

    @property
    def n_windows(self) -> int:
        return len(self.peak_names)

    @property
    def bins_shape(self) -> tuple[int, int, int]:
        """(n_windows, n_q, n_chi), the shape of every per-bin array."""
        return (self.n_windows, self.n_q, self.n_chi)

    @property
    def n_bins_per_window(self) -> int:
        return self.n_q * self.n_chi

    @property
    def n_entries(self) -> int:
        return int(self.pixel_index.size)

    def window_index(self, name: str) -> int:
        """Index of the window of peak ``name``."""
        try:
            return self.peak_names.index(name)
        except ValueError:
            raise GeometryError(f"polar table has no window {name!r} (windows: {list(self.peak_names)})") from None

    def window_bins(self, window: int) -> tuple[slice, slice]:
        """Slices (q, chi) that cut window ``window``'s own bins out of a (n_q, n_chi) plane."""
        return slice(0, int(self.n_q_per_window[window])), slice(0, int(self.n_chi_per_window[window]))

    def window_centres(self, window: int) -> tuple[np.ndarray, np.ndarray]:
        """(q_centres_nm (n_q_w,), chi_centres_deg (n_chi_w,)) of one window, without padding."""
        q_bins, chi_bins = self.window_bins(window)
        return self.q_centres_nm[window, q_bins], self.chi_centres_deg[window, chi_bins]

    def pixel_window_image(self) -> np.ndarray:
        """int32 image (rows, columns): the window index of each table pixel, -1 elsewhere
        (for overlays in the viewer and for checks)."""
        image = np.full(self.detector_shape[0] * self.detector_shape[1], -1, dtype=np.int32)
        image[self.pixel_index] = self.bin_index // self.n_bins_per_window
        return image.reshape(self.detector_shape)


def static_mask_from(geometry: DetectorGeometry, pixel_mask: np.ndarray | None) -> np.ndarray:
    """Boolean (rows, columns) image, True where a pixel is excluded for the whole series.

    ``pixel_mask`` is the EIGER pixel mask (any integer/bool dtype, nonzero = excluded). When it
    is None, the module gaps of the pyFAI detector named in the geometry are used if pyFAI
    knows that detector with this shape (frames mark gap pixels as NODATA anyway; knowing them
    here makes window coverage and geometric counts right before the first series header).
    """
    if pixel_mask is not None:
        mask = np.asarray(pixel_mask)
        if mask.shape != tuple(geometry.shape):
            raise GeometryError(f"pixel mask shape {mask.shape} does not match the geometry's detector "
                                f"shape {tuple(geometry.shape)}")
        return mask != 0
    try:
        from pyFAI.detectors import detector_factory

        detector_mask = detector_factory(geometry.detector_name).mask
    except Exception:  # unknown or generic detector: no gap information
        detector_mask = None
    if detector_mask is not None and detector_mask.shape == tuple(geometry.shape):
        return np.asarray(detector_mask) != 0
    return np.zeros(geometry.shape, dtype=bool)


def _window_bins(window: PeakWindow, q_nm: np.ndarray, chi_deg: np.ndarray):
    """Pixels (flat indices, ascending) of one window and their (i_q, i_chi) bins."""
    q_min, q_max = window.q_range_nm
    in_q = np.flatnonzero((q_nm >= q_min) & (q_nm < q_max))
    chi_offset = np.mod(chi_deg[in_q] - window.chi_range_deg[0], 360.0)
    i_q = np.floor((q_nm[in_q] - q_min) * (window.n_q / window.q_width_nm)).astype(np.int64)
    i_chi = np.floor(chi_offset * (window.n_chi / window.chi_width_deg)).astype(np.int64)
    keep = (chi_offset < window.chi_width_deg) & (i_q >= 0) & (i_q < window.n_q) & (i_chi < window.n_chi)
    return in_q[keep], i_q[keep], i_chi[keep]


def _coverage(valid_counts: np.ndarray, window: PeakWindow) -> float:
    """Fraction of coarse cells (4 along q, ~10 deg along chi) holding a valid pixel."""
    n_cells_chi = max(1, min(window.n_chi, int(round(window.chi_width_deg / COVERAGE_CELL_CHI_DEG))))
    n_cells_q = min(window.n_q, COVERAGE_CELLS_Q)
    covered = 0
    for q_part in np.array_split(valid_counts, n_cells_q, axis=0):
        for cell in np.array_split(q_part, n_cells_chi, axis=1):
            covered += bool(cell.sum() > 0)
    return covered / (n_cells_q * n_cells_chi)


def build_polar_table(geometry: DetectorGeometry, peak_model: PeakModel, pixel_mask: np.ndarray | None = None,
                      min_window_coverage: float = MIN_WINDOW_COVERAGE) -> PolarTable:
    """Build the regrouping table of every window of ``peak_model`` for one geometry and mask.

    Parameters
    ----------
    geometry : DetectorGeometry
    peak_model : PeakModel
    pixel_mask : ndarray, shape (rows, columns), optional
        EIGER pixel mask, nonzero = excluded for the whole series (see :func:`static_mask_from`
        for what None means).
    min_window_coverage : float
        Windows with a smaller coverage (see :attr:`PolarTable.window_coverage`) get
        ``Status.OUTSIDE_DETECTOR`` and a warning naming the peak.

    Returns
    -------
    PolarTable
    """
    started = time.perf_counter()
    excluded = static_mask_from(geometry, pixel_mask).reshape(-1)
    q_nm, chi_deg = pixel_q_chi(geometry)
    pixel_area = pixel_area_q_chi(q_nm, chi_deg).reshape(-1)
    q_nm, chi_deg = q_nm.reshape(-1), chi_deg.reshape(-1)

    windows = peak_model.peaks
    n_win = len(windows)
    n_q = max(w.n_q for w in windows)
    n_chi = max(w.n_chi for w in windows)
    q_edges = np.full((n_win, n_q + 1), np.nan)
    chi_edges = np.full((n_win, n_chi + 1), np.nan)
    count_geometric = np.zeros((n_win, n_q, n_chi), dtype=np.int32)
    count_valid = np.zeros((n_win, n_q, n_chi), dtype=np.int32)
    area_sum = np.zeros((n_win, n_q, n_chi), dtype=np.float64)
    coverage = np.zeros(n_win, dtype=np.float64)
    status = np.full(n_win, int(Status.OK), dtype=np.int32)
    pixel_parts, bin_parts = [], []

    for w, window in enumerate(windows):
        q_edges[w, :window.n_q + 1] = np.linspace(*window.q_range_nm, window.n_q + 1)
        chi_edges[w, :window.n_chi + 1] = np.linspace(*window.chi_range_deg, window.n_chi + 1)
        pixels, i_q, i_chi = _window_bins(window, q_nm, chi_deg)
        flat_bin = (w * n_q + i_q) * n_chi + i_chi
        count_geometric[w] = np.bincount(flat_bin - w * n_q * n_chi, minlength=n_q * n_chi).reshape(n_q, n_chi)
        area_sum[w] = np.bincount(flat_bin - w * n_q * n_chi, weights=pixel_area[pixels],
                                  minlength=n_q * n_chi).reshape(n_q, n_chi)
        valid = ~excluded[pixels]
        count_valid[w] = np.bincount(flat_bin[valid] - w * n_q * n_chi,
                                     minlength=n_q * n_chi).reshape(n_q, n_chi)
        pixel_parts.append(pixels[valid])
        bin_parts.append(flat_bin[valid].astype(np.int32))
        coverage[w] = _coverage(count_valid[w, :window.n_q, :window.n_chi], window)
        if coverage[w] < min_window_coverage:
            status[w] = int(Status.OUTSIDE_DETECTOR)
            log.warning("window of peak %r (q %s nm^-1, chi %s deg) is outside the detector or in a gap for "
                        "this geometry: %.0f %% covered by valid pixels, %d pixels; its peak is reported "
                        "as OUTSIDE_DETECTOR", window.name, list(window.q_range_nm), list(window.chi_range_deg),
                        100 * coverage[w], int(count_valid[w].sum()))
        elif coverage[w] < 0.9:
            log.info("window of peak %r is %.0f %% covered by valid pixels", window.name, 100 * coverage[w])

    pixel_index = np.concatenate(pixel_parts) if pixel_parts else np.zeros(0, np.int64)
    bin_index = np.concatenate(bin_parts) if bin_parts else np.zeros(0, np.int32)
    order = np.argsort(pixel_index, kind="stable")
    in_saxs = q_nm < peak_model.saxs_integration_q_max_nm
    saxs_pixel_index = np.flatnonzero(in_saxs & ~excluded)

    q_centres = 0.5 * (q_edges[:, :-1] + q_edges[:, 1:])
    chi_centres = 0.5 * (chi_edges[:, :-1] + chi_edges[:, 1:])
    table = PolarTable(
        detector_shape=(int(geometry.shape[0]), int(geometry.shape[1])),
        peak_names=peak_model.peak_names,
        pixel_index=np.ascontiguousarray(pixel_index[order], dtype=np.int64),
        bin_index=np.ascontiguousarray(bin_index[order], dtype=np.int32),
        n_q=n_q,
        n_chi=n_chi,
        n_q_per_window=np.array([w.n_q for w in windows], dtype=np.int32),
        n_chi_per_window=np.array([w.n_chi for w in windows], dtype=np.int32),
        q_edges_nm=q_edges,
        q_centres_nm=q_centres,
        chi_edges_deg=chi_edges,
        chi_centres_deg=chi_centres,
        q_bin_width_nm=np.array([w.q_bin_width_nm for w in windows], dtype=np.float64),
        chi_bin_width_deg=np.array([w.chi_bin_width_deg for w in windows], dtype=np.float64),
        pixel_count_geometric=count_geometric,
        pixel_count_valid=count_valid,
        pixel_area_per_bin=np.where(count_geometric > 0, area_sum / np.maximum(count_geometric, 1), np.nan),
        window_coverage=coverage,
        window_status=status,
        saxs_q_max_nm=float(peak_model.saxs_integration_q_max_nm),
        saxs_pixel_index=saxs_pixel_index.astype(np.int64),
        saxs_pixel_count_geometric=int(np.count_nonzero(in_saxs)),
    )
    for array in (table.pixel_index, table.bin_index, table.saxs_pixel_index, table.pixel_count_valid,
                  table.pixel_count_geometric, table.q_centres_nm, table.chi_centres_deg, table.window_status):
        array.setflags(write=False)
    log.info("polar table: %d windows, %d pixel entries (%d segments), %d SAXS pixels, built in %.2f s",
             n_win, table.n_entries, table.n_segments, table.saxs_pixel_index.size, time.perf_counter() - started)
    return table
