"""Per-frame polar regrouping: one pass over a :class:`~analysis.polar_table.PolarTable`.

For every bin (window, i_q, i_chi) the pass sums the counts of the pixels actually used on
this frame: statically valid (already the only pixels in the table) and not NODATA in this
frame (value == ``invalid_value``, 2^bits - 1 for EIGER integer frames) nor NaN (float
frames). From the sums it derives the background-subtracted mean counts per valid pixel and
the Poisson variance of that mean. Pixels above ``saturation_value`` stay in the sums and are
counted per window (the analysis turns a count into a ``SATURATED`` status). The same pass
integrates the SAXS region (q < ``saxs_q_max_nm``).

:func:`regroup_frame` runs the Numba kernel; :func:`regroup_frame_reference` is the plain
NumPy version with the same signature, used to test it. Sums accumulate in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from analysis.background import RegroupedBackground
from analysis.errors import GeometryError
from analysis.polar_table import PolarTable

FRAME_DTYPES = (np.uint8, np.uint16, np.uint32, np.float32, np.float64)


@dataclass(eq=False)
class RegroupBuffers:
    """Caller-owned results of one regrouped frame (overwritten by every call).

    Attributes
    ----------
    sum_counts : ndarray of float64, shape (n_windows, n_q, n_chi)
        Raw counts summed over the valid pixels of each bin.
    n_valid : ndarray of int32, shape (n_windows, n_q, n_chi)
        Pixels used in each bin on this frame.
    mean_counts : ndarray of float64, shape (n_windows, n_q, n_chi)
        (sum_counts - background) / n_valid, NaN where n_valid == 0.
    variance : ndarray of float64, shape (n_windows, n_q, n_chi)
        Poisson variance of ``mean_counts``: max(sum_counts, 1) / n_valid^2; NaN where n_valid == 0.
    n_saturated, n_invalid : ndarray of int32, shape (n_windows,)
        Per window: valid pixels above the saturation value; pixels skipped as NODATA/NaN.
    saxs_sum : float
        Raw counts summed over the valid SAXS-region pixels.
    saxs_n_valid, saxs_n_invalid, saxs_n_saturated : int
    saxs_intensity : float
        (saxs_sum - background) / saxs_n_valid * (the region's geometric pixel count), NaN when
        no pixel is valid: the integrated SAXS intensity, not biased by masked pixels.
    """

    sum_counts: np.ndarray
    n_valid: np.ndarray
    mean_counts: np.ndarray
    variance: np.ndarray
    n_saturated: np.ndarray
    n_invalid: np.ndarray
    saxs_sum: float = 0.0
    saxs_n_valid: int = 0
    saxs_n_invalid: int = 0
    saxs_n_saturated: int = 0
    saxs_intensity: float = float("nan")

    @classmethod
    def for_table(cls, table: PolarTable) -> "RegroupBuffers":
        """Allocate buffers of the right shapes for ``table``."""
        shape = table.bins_shape
        return cls(
            sum_counts=np.zeros(shape, dtype=np.float64),
            n_valid=np.zeros(shape, dtype=np.int32),
            mean_counts=np.full(shape, np.nan, dtype=np.float64),
            variance=np.full(shape, np.nan, dtype=np.float64),
            n_saturated=np.zeros(table.n_windows, dtype=np.int32),
            n_invalid=np.zeros(table.n_windows, dtype=np.int32),
        )


@numba.njit(cache=True, error_model="numpy")
def _regroup_kernel(frame_flat, pixel_index, bin_index, n_bins_per_window, invalid_value, check_invalid,
                    saturation_value, has_background, background_mean, saxs_pixel_index, saxs_background,
                    background_scale, saxs_pixel_count_geometric, sum_counts, n_valid, mean_counts, variance,
                    n_saturated, n_invalid):
    """The per-frame pass (plain loops over caller-owned flat arrays, no allocation).

    ``background_mean`` (per bin) and ``saxs_background`` (per SAXS pixel) are read only when
    ``has_background``. Returns (saxs_sum, saxs_n_valid, saxs_n_invalid, saxs_n_saturated,
    saxs_intensity).
    """
    for b in range(sum_counts.size):
        sum_counts[b] = 0.0
        n_valid[b] = 0
    for w in range(n_saturated.size):
        n_saturated[w] = 0
        n_invalid[w] = 0
    for e in range(pixel_index.size):
        value = np.float64(frame_flat[pixel_index[e]])
        b = bin_index[e]
        if value != value or (check_invalid and value == invalid_value):
            n_invalid[b // n_bins_per_window] += 1
            continue
        sum_counts[b] += value
        n_valid[b] += 1
        if value > saturation_value:
            n_saturated[b // n_bins_per_window] += 1
    for b in range(sum_counts.size):
        n = n_valid[b]
        if n == 0:
            mean_counts[b] = np.nan
            variance[b] = np.nan
        else:
            background_sum = background_scale * background_mean[b] * n if has_background else 0.0
            mean_counts[b] = (sum_counts[b] - background_sum) / n
            variance[b] = max(sum_counts[b], 1.0) / (np.float64(n) * np.float64(n))
    saxs_sum = 0.0
    saxs_background_sum = 0.0
    saxs_n_valid = 0
    saxs_n_invalid = 0
    saxs_n_saturated = 0
    for s in range(saxs_pixel_index.size):
        value = np.float64(frame_flat[saxs_pixel_index[s]])
        if value != value or (check_invalid and value == invalid_value):
            saxs_n_invalid += 1
            continue
        saxs_sum += value
        if has_background:
            saxs_background_sum += saxs_background[s]
        saxs_n_valid += 1
        if value > saturation_value:
            saxs_n_saturated += 1
    saxs_intensity = np.nan
    if saxs_n_valid > 0:
        saxs_intensity = ((saxs_sum - background_scale * saxs_background_sum) / saxs_n_valid
                          * saxs_pixel_count_geometric)
    return saxs_sum, saxs_n_valid, saxs_n_invalid, saxs_n_saturated, saxs_intensity


def _prepare(frame, table: PolarTable, invalid_value, saturation_value, background, out):
    """Validate the arguments; return (flat frame, invalid, check_invalid, saturation, out)."""
    frame = np.asarray(frame)
    if frame.dtype.type not in FRAME_DTYPES:
        raise GeometryError(f"frame dtype {frame.dtype} is not one of uint8/16/32, float32/64")
    if frame.shape != table.detector_shape:
        raise GeometryError(f"frame shape {frame.shape} does not match the polar table's detector shape "
                            f"{table.detector_shape}")
    if invalid_value is None and frame.dtype.kind == "u":
        invalid_value = np.iinfo(frame.dtype).max
    check_invalid = invalid_value is not None
    # Compare in the frame's own dtype (float32(2^32 - 1) is not 2^32 - 1 in float64).
    invalid = float(frame.dtype.type(invalid_value)) if check_invalid and frame.dtype.kind == "f" else (
        float(invalid_value) if check_invalid else 0.0)
    saturation = np.inf if saturation_value is None else float(saturation_value)
    if out is None:
        out = RegroupBuffers.for_table(table)
    shape = table.bins_shape
    for name in ("sum_counts", "mean_counts", "variance"):
        array = getattr(out, name)
        if array.shape != shape or array.dtype != np.float64 or not array.flags.c_contiguous:
            raise GeometryError(f"buffer {name} must be C-contiguous float64 {shape}, got {array.dtype} {array.shape}")
    for name, want in (("n_valid", shape), ("n_saturated", (table.n_windows,)), ("n_invalid", (table.n_windows,))):
        array = getattr(out, name)
        if array.shape != want or array.dtype != np.int32 or not array.flags.c_contiguous:
            raise GeometryError(f"buffer {name} must be C-contiguous int32 {want}, got {array.dtype} {array.shape}")
    if background is not None:
        background.check_matches(table)
    return frame.reshape(-1), invalid, check_invalid, saturation, out


_NO_BACKGROUND = np.zeros(1, dtype=np.float64)
_NO_BACKGROUND.setflags(write=False)


def regroup_frame(frame: np.ndarray, table: PolarTable, invalid_value: float | None = None,
                  saturation_value: float | None = None, background: RegroupedBackground | None = None,
                  out: RegroupBuffers | None = None) -> RegroupBuffers:
    """Regroup one frame into the table's polar bins (Numba kernel).

    Parameters
    ----------
    frame : ndarray, shape (rows, columns), uint8/uint16/uint32/float32/float64
        Counts of one exposure.
    table : PolarTable
    invalid_value : number, optional
        NODATA marker; None means 2^bits - 1 for integer frames and "NaN only" for float frames.
    saturation_value : number, optional
        Largest valid count; pixels above it are counted in ``n_saturated`` (None: no check).
    background : RegroupedBackground, optional
        Background regrouped into the same table (``analysis.background``); its ``scale``
        (exposure ratio) multiplies it.
    out : RegroupBuffers, optional
        Caller-owned buffers (allocated when None; pass them on every frame to avoid allocation).

    Returns
    -------
    RegroupBuffers
        ``out``, filled.
    """
    flat, invalid, check_invalid, saturation, out = _prepare(frame, table, invalid_value, saturation_value,
                                                             background, out)
    has_background = background is not None
    result = _regroup_kernel(
        flat, table.pixel_index, table.bin_index, np.int64(table.n_bins_per_window), invalid, check_invalid,
        saturation, has_background,
        background.mean_per_pixel.reshape(-1) if has_background else _NO_BACKGROUND,
        table.saxs_pixel_index, background.saxs_per_pixel if has_background else _NO_BACKGROUND,
        float(background.scale) if has_background else 0.0,
        np.float64(table.saxs_pixel_count_geometric), out.sum_counts.reshape(-1), out.n_valid.reshape(-1),
        out.mean_counts.reshape(-1), out.variance.reshape(-1), out.n_saturated, out.n_invalid)
    out.saxs_sum, out.saxs_n_valid, out.saxs_n_invalid, out.saxs_n_saturated, out.saxs_intensity = (
        float(result[0]), int(result[1]), int(result[2]), int(result[3]), float(result[4]))
    return out


def regroup_frame_reference(frame: np.ndarray, table: PolarTable, invalid_value: float | None = None,
                            saturation_value: float | None = None,
                            background: RegroupedBackground | None = None,
                            out: RegroupBuffers | None = None) -> RegroupBuffers:
    """NumPy reference of :func:`regroup_frame` (same signature and results; allocates)."""
    flat, invalid, check_invalid, saturation, out = _prepare(frame, table, invalid_value, saturation_value,
                                                             background, out)
    if background is None:
        background_mean, saxs_background, scale = 0.0, np.zeros(table.saxs_pixel_index.size), 0.0
    else:
        background_mean, saxs_background, scale = (background.mean_per_pixel, background.saxs_per_pixel,
                                                   float(background.scale))
    n_bins = int(np.prod(table.bins_shape))

    def usable(values):
        bad = np.isnan(values)
        if check_invalid:
            bad |= values == invalid
        return ~bad

    values = flat[table.pixel_index].astype(np.float64)
    good = usable(values)
    window = table.bin_index // table.n_bins_per_window
    sums = np.bincount(table.bin_index[good], weights=values[good], minlength=n_bins)
    counts = np.bincount(table.bin_index[good], minlength=n_bins)
    out.sum_counts[...] = sums.reshape(table.bins_shape)
    out.n_valid[...] = counts.reshape(table.bins_shape)
    out.n_invalid[...] = np.bincount(window[~good], minlength=table.n_windows)
    out.n_saturated[...] = np.bincount(window[good & (values > saturation)], minlength=table.n_windows)
    with np.errstate(invalid="ignore", divide="ignore"):
        n = out.n_valid.astype(np.float64)
        out.mean_counts[...] = np.where(n > 0, (out.sum_counts - scale * background_mean * n) / n, np.nan)
        out.variance[...] = np.where(n > 0, np.maximum(out.sum_counts, 1.0) / n**2, np.nan)

    saxs_values = flat[table.saxs_pixel_index].astype(np.float64)
    saxs_good = usable(saxs_values)
    out.saxs_sum = float(saxs_values[saxs_good].sum())
    out.saxs_n_valid = int(saxs_good.sum())
    out.saxs_n_invalid = int((~saxs_good).sum())
    out.saxs_n_saturated = int((saxs_values[saxs_good] > saturation).sum())
    if out.saxs_n_valid:
        background_sum = scale * saxs_background[saxs_good].sum()
        out.saxs_intensity = (out.saxs_sum - background_sum) / out.saxs_n_valid * table.saxs_pixel_count_geometric
    else:
        out.saxs_intensity = float("nan")
    return out
