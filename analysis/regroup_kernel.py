"""Per-frame polar regrouping: one pass over a :class:`~analysis.polar_table.PolarTable`.

For every bin (window, i_q, i_chi) the pass sums the counts of the pixels actually used on
this frame: statically valid (already the only pixels in the table) and not NODATA in this
frame (value == ``invalid_value``, 2^bits - 1 for EIGER integer frames) nor NaN (float
frames). From the sums it derives the background-subtracted mean counts per valid pixel and
the Poisson variance of that mean. Pixels above ``saturation_value`` stay in the sums and are
counted per window (the analysis turns a count into a ``SATURATED`` status). The same pass
integrates the SAXS region (q < ``saxs_q_max_nm``).

:func:`regroup_frame` runs the Numba kernel over the table's run-length form (runs of
consecutive pixels cut into segments of one bin: the frame is read contiguously, about 4 B of
table per segment); :func:`regroup_frame_reference` is the plain NumPy version with the same
signature and bit for bit the same results, used to test it. Sums accumulate in float64 (or,
where that is exact, in int64), in the table's entry order.

The inline Numba helpers (``clear_sums``, ``regroup_run``, ``regroup_saxs_run``, ``finish_bins``,
``saxs_intensity_of`` and the ones they call) and ``regroup_settings`` also
serve the fused bitshuffle-LZ4 decode + regroup kernel (``stream.bslz4_regroup``), so that both
give the same results.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

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
    def for_table(cls, table: PolarTable, lead: tuple[int, ...] = ()) -> "RegroupBuffers":
        """Allocate buffers of the right shapes for ``table``, with leading axes ``lead`` (e.g.
        ``(n_frames,)`` for the stacked buffers of a batch; ``()`` for one frame)."""
        shape = tuple(lead) + tuple(table.bins_shape)
        per_window = tuple(lead) + (table.n_windows,)
        return cls(
            sum_counts=np.zeros(shape, dtype=np.float64),
            n_valid=np.zeros(shape, dtype=np.int32),
            mean_counts=np.full(shape, np.nan, dtype=np.float64),
            variance=np.full(shape, np.nan, dtype=np.float64),
            n_saturated=np.zeros(per_window, dtype=np.int32),
            n_invalid=np.zeros(per_window, dtype=np.int32),
        )


PREFETCH_LINES = 64
"""Cache lines (64 B) of the next run that the kernel asks the CPU to fetch at each run's start."""


@intrinsic
def _prefetch(typingctx, array, index):
    """``llvm.prefetch`` (read, high locality) of the cache line of ``array[index]``: a hint only,
    no effect on any result (the index is not dereferenced)."""
    if not isinstance(array, types.Array) or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        view = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, view, [args[1]], wraparound=False)
        byte_pointer, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]), "llvm.prefetch.p0i8")
        builder.call(function, [builder.bitcast(pointer, byte_pointer), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(array, index), codegen


@numba.njit(cache=True, error_model="numpy")
def _prefetch_run(frame_flat, first, length):
    """Ask for the first PREFETCH_LINES cache lines of ``frame_flat[first:first + length]``."""
    step = np.uint64(max(1, 64 // frame_flat.itemsize))
    end = first + min(length, step * np.uint64(PREFETCH_LINES))
    k = first
    while k < end:
        _prefetch(frame_flat, k)
        k += step


@numba.njit(cache=True, error_model="numpy")
def _largest(frame_flat, first, length):
    """Largest value of ``frame_flat[first:first + length]`` (length >= 1, unsigned indices)."""
    largest = frame_flat[first]
    for j in range(length):
        largest = max(largest, frame_flat[first + np.uint64(j)])
    return largest


@numba.njit(cache=True, nogil=True, inline="always")
def clear_sums(sum_counts, n_valid, n_saturated, n_invalid):
    """Zero the per-bin sums and counts and the per-window counters (flat arrays)."""
    for b in range(sum_counts.size):
        sum_counts[b] = 0.0
        n_valid[b] = 0
    for w in range(n_saturated.size):
        n_saturated[w] = 0
        n_invalid[w] = 0


@numba.njit(cache=True, nogil=True, inline="always")
def checked_run(values, first, length, acc, check_invalid, invalid_value, saturation_value, add_weights, weights,
                weight_first, weight_sum):
    """Add the usable values of ``values[first:first + length]`` (uint64 indices) to ``acc``,
    pixel by pixel in order; NaN and ``invalid_value`` (when ``check_invalid``) are skipped.
    With ``add_weights``, also add ``weights[weight_first + j]`` of every used pixel j to
    ``weight_sum``, in order (the SAXS background; window segments pass a literal False, so
    that the branch compiles away there).

    Returns (acc, weight_sum, used, skipped, saturated): the new float64 sums, the pixels
    added, the pixels skipped as NODATA/NaN and the added pixels above ``saturation_value``.
    """
    used = 0
    skipped = 0
    saturated = 0
    for j in range(length):
        value = np.float64(values[first + np.uint64(j)])
        if value != value or (check_invalid and value == invalid_value):
            skipped += 1
            continue
        acc += value
        if add_weights:
            weight_sum += weights[weight_first + np.uint64(j)]
        used += 1
        if value > saturation_value:
            saturated += 1
    return acc, weight_sum, used, skipped, saturated


@numba.njit(cache=True, nogil=True, inline="always")
def checked_segments(values, first, first_segment, end_segment, segment_length, segment_bin, bins_per_window,
                     check_invalid, invalid_value, saturation_value, sum_counts, n_valid, n_saturated, n_invalid):
    """Regroup the segments ``first_segment .. end_segment - 1`` of one run, whose first pixel is
    ``values[first]``, pixel by pixel with every check (:func:`checked_run`) into the flat
    per-bin sums and counts and the per-window counters (uint64 indices)."""
    p = first
    for s in range(first_segment, end_segment):
        length = np.uint64(segment_length[s])
        b = np.uint64(segment_bin[s])
        w = b // bins_per_window
        sum_counts[b], _, used, skipped, saturated = checked_run(
            values, p, length, sum_counts[b], check_invalid, invalid_value, saturation_value, False, sum_counts,
            np.uint64(0), 0.0)
        n_valid[b] += used
        n_invalid[w] += skipped
        n_saturated[w] += saturated
        p += length


@numba.njit(cache=True, nogil=True, inline="always")
def add_saxs_background(saxs_background, offset, length, background_sum):
    """``background_sum`` plus ``saxs_background[offset:offset + length]``, added in order."""
    for j in range(length):
        background_sum += saxs_background[offset + np.uint64(j)]
    return background_sum


@numba.njit(cache=True, nogil=True, inline="always")
def finish_bins(sum_counts, n_valid, mean_counts, variance, has_background, background_mean, background_scale):
    """Background-subtracted means and their Poisson variances from the per-bin sums (flat arrays);
    NaN in the bins without a used pixel."""
    for b in range(sum_counts.size):
        n = n_valid[b]
        if n == 0:
            mean_counts[b] = np.nan
            variance[b] = np.nan
        else:
            background_sum = background_scale * background_mean[b] * n if has_background else 0.0
            mean_counts[b] = (sum_counts[b] - background_sum) / n
            variance[b] = max(sum_counts[b], 1.0) / (np.float64(n) * np.float64(n))


@numba.njit(cache=True, nogil=True, inline="always")
def saxs_intensity_of(saxs_sum, saxs_background_sum, saxs_n_valid, background_scale, saxs_pixel_count_geometric):
    """Integrated SAXS intensity (NaN without a used pixel), see :class:`RegroupBuffers`."""
    if saxs_n_valid > 0:
        return ((saxs_sum - background_scale * saxs_background_sum) / saxs_n_valid
                * saxs_pixel_count_geometric)
    return np.nan


@numba.njit(cache=True, nogil=True, inline="always")
def _run_is_clean(values, first, length, integer_sum, need_check, check_invalid, invalid_value, saturation_value):
    """True when the run ``values[first:first + length]`` (length >= 1) may be summed as integers
    without checks: ``integer_sum`` and its largest value neither NODATA nor saturated."""
    if not integer_sum:
        return False
    if not need_check:
        return True
    top = np.float64(_largest(values, first, length))
    return top <= saturation_value and not (check_invalid and top >= invalid_value)


@numba.njit(cache=True, nogil=True, inline="always")
def regroup_run(values, first, length, first_segment, end_segment, segment_length, segment_bin, bins_per_window,
                integer_sum, need_check, check_invalid, invalid_value, saturation_value, sum_counts, n_valid,
                n_saturated, n_invalid):
    """Regroup one run of consecutive pixels, ``values[first:first + length]``, cut into the
    segments ``first_segment .. end_segment - 1``: summed as integers segment by segment when it
    is clean (:func:`_run_is_clean`), else pixel by pixel with every check."""
    if _run_is_clean(values, first, length, integer_sum, need_check, check_invalid, invalid_value, saturation_value):
        p = first
        for s in range(first_segment, end_segment):
            segment = np.uint64(segment_length[s])
            b = np.uint64(segment_bin[s])
            total = np.uint64(0)
            for j in range(segment):
                total += np.uint64(values[p + np.uint64(j)])
            sum_counts[b] += np.float64(total)
            n_valid[b] += np.int32(segment)
            p += segment
    else:
        checked_segments(values, first, first_segment, end_segment, segment_length, segment_bin, bins_per_window,
                         check_invalid, invalid_value, saturation_value, sum_counts, n_valid, n_saturated, n_invalid)


@numba.njit(cache=True, nogil=True, inline="always")
def regroup_saxs_run(values, first, length, offset, saxs_background, has_background, integer_sum, need_check,
                     check_invalid, invalid_value, saturation_value, saxs_sum, background_sum):
    """Integrate one run of SAXS pixels, ``values[first:first + length]`` whose first has SAXS
    ordinal ``offset``, as :func:`regroup_run` does a window run; the background of every used
    pixel is added in order. Returns (saxs_sum, background_sum, used, skipped, saturated)."""
    if _run_is_clean(values, first, length, integer_sum, need_check, check_invalid, invalid_value, saturation_value):
        total = np.uint64(0)
        for j in range(length):
            total += np.uint64(values[first + np.uint64(j)])
        if has_background:
            background_sum = add_saxs_background(saxs_background, offset, length, background_sum)
        return saxs_sum + np.float64(total), background_sum, np.int64(length), 0, 0
    return checked_run(values, first, length, saxs_sum, check_invalid, invalid_value, saturation_value,
                       has_background, saxs_background, offset, background_sum)


@numba.njit(cache=True, error_model="numpy")
def _regroup_kernel(frame_flat, run_start, run_length, run_first_segment, segment_length, segment_bin,
                    n_bins_per_window, invalid_value, check_invalid, saturation_value, integer_sum, has_background,
                    background_mean, saxs_run_start, saxs_run_length, saxs_background, background_scale,
                    saxs_pixel_count_geometric, sum_counts, n_valid, mean_counts, variance, n_saturated, n_invalid):
    """The per-frame pass (plain loops over caller-owned flat arrays, no allocation).

    The table comes run-length encoded (:func:`analysis.polar_table.run_length_encode`): runs
    of consecutive pixels, each cut into segments of one bin, in the table's entry order, so
    the frame is read contiguously and every bin receives its pixels in the same order as
    pixel by pixel. With ``integer_sum`` (integer frames whose per-bin sums stay below 2^53,
    where int64 sums equal the float64 ones exactly), a run whose largest value is neither
    NODATA nor above the saturation value is summed segment by segment without checks; any
    other run (and every run of a float frame) goes pixel by pixel with every check.

    ``background_mean`` (per bin) and ``saxs_background`` (per SAXS pixel) are read only when
    ``has_background``. Returns (saxs_sum, saxs_n_valid, saxs_n_invalid, saxs_n_saturated,
    saxs_intensity). Indices are unsigned so that no negative-index wraparound is compiled in.
    """
    clear_sums(sum_counts, n_valid, n_saturated, n_invalid)
    need_check = check_invalid or saturation_value < np.inf
    bins_per_window = np.uint64(n_bins_per_window)
    n_runs = run_start.size
    for r in range(n_runs):
        if r + 1 < n_runs:                       # the frame is read run by run: fetch the next one early
            _prefetch_run(frame_flat, np.uint64(run_start[r + 1]), np.uint64(run_length[r + 1]))
        regroup_run(frame_flat, np.uint64(run_start[r]), np.uint64(run_length[r]), np.uint64(run_first_segment[r]),
                    np.uint64(run_first_segment[r + 1]), segment_length, segment_bin, bins_per_window, integer_sum,
                    need_check, check_invalid, invalid_value, saturation_value, sum_counts, n_valid, n_saturated,
                    n_invalid)
    finish_bins(sum_counts, n_valid, mean_counts, variance, has_background, background_mean, background_scale)
    saxs_sum = 0.0
    saxs_background_sum = 0.0
    saxs_n_valid = 0
    saxs_n_invalid = 0
    saxs_n_saturated = 0
    offset = np.uint64(0)                        # SAXS pixel ordinal of the run's first pixel
    n_saxs_runs = saxs_run_start.size
    for r in range(n_saxs_runs):
        length = np.uint64(saxs_run_length[r])
        if r + 1 < n_saxs_runs:
            _prefetch_run(frame_flat, np.uint64(saxs_run_start[r + 1]), np.uint64(saxs_run_length[r + 1]))
        saxs_sum, saxs_background_sum, used, skipped, saturated = regroup_saxs_run(
            frame_flat, np.uint64(saxs_run_start[r]), length, offset, saxs_background, has_background, integer_sum,
            need_check, check_invalid, invalid_value, saturation_value, saxs_sum, saxs_background_sum)
        saxs_n_valid += used
        saxs_n_invalid += skipped
        saxs_n_saturated += saturated
        offset += length
    saxs_intensity = saxs_intensity_of(saxs_sum, saxs_background_sum, saxs_n_valid, background_scale,
                                       saxs_pixel_count_geometric)
    return saxs_sum, saxs_n_valid, saxs_n_invalid, saxs_n_saturated, saxs_intensity


def _integer_sums_exact(frame_dtype: np.dtype, table: PolarTable) -> bool:
    """True when int64 sums of ``frame_dtype`` counts are exact in float64 for every bin and the
    SAXS region (each partial sum below 2^53), so they equal the plain float64 sums."""
    if frame_dtype.kind != "u":
        return False
    return table.max_pixels_per_sum * int(np.iinfo(frame_dtype).max) < 2**53


def regroup_settings(frame_dtype, table: PolarTable, invalid_value, saturation_value, background, out):
    """Check the buffers and background for ``table``; resolve the NODATA and saturation values.

    Parameters
    ----------
    frame_dtype : numpy dtype
        Pixel type of the frames (one of ``FRAME_DTYPES``).
    table, invalid_value, saturation_value, background, out
        As in :func:`regroup_frame`.

    Returns
    -------
    invalid : float
        The NODATA value, compared in float64 (0.0 when there is none).
    check_invalid : bool
    saturation : float
        ``inf`` when there is no saturation value.
    out : RegroupBuffers
        ``out``, or new buffers when it is None.
    """
    frame_dtype = np.dtype(frame_dtype)
    if invalid_value is None and frame_dtype.kind == "u":
        invalid_value = np.iinfo(frame_dtype).max
    check_invalid = invalid_value is not None
    # Compare in the frame's own dtype (float32(2^32 - 1) is not 2^32 - 1 in float64).
    invalid = float(frame_dtype.type(invalid_value)) if check_invalid and frame_dtype.kind == "f" else (
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
    return invalid, check_invalid, saturation, out


def _prepare(frame, table: PolarTable, invalid_value, saturation_value, background, out):
    """Validate the arguments; return (flat frame, invalid, check_invalid, saturation, out)."""
    frame = np.asarray(frame)
    if frame.dtype.type not in FRAME_DTYPES:
        raise GeometryError(f"frame dtype {frame.dtype} is not one of uint8/16/32, float32/64")
    if frame.shape != table.detector_shape:
        raise GeometryError(f"frame shape {frame.shape} does not match the polar table's detector shape "
                            f"{table.detector_shape}")
    invalid, check_invalid, saturation, out = regroup_settings(frame.dtype, table, invalid_value, saturation_value,
                                                               background, out)
    return frame.reshape(-1), invalid, check_invalid, saturation, out


_NO_BACKGROUND = np.zeros(1, dtype=np.float64)
_NO_BACKGROUND.setflags(write=False)


def background_arguments(background: RegroupedBackground | None) -> tuple:
    """(has_background, mean per bin flat float64, per SAXS pixel float64, scale) for the kernels."""
    if background is None:
        return False, _NO_BACKGROUND, _NO_BACKGROUND, 0.0
    return True, background.mean_per_pixel.reshape(-1), background.saxs_per_pixel, float(background.scale)


def store_saxs(out: RegroupBuffers, saxs_sum, saxs_n_valid, saxs_n_invalid, saxs_n_saturated, saxs_intensity) -> None:
    """Set the SAXS scalars of ``out`` from a kernel's results (as Python floats and ints)."""
    out.saxs_sum, out.saxs_n_valid, out.saxs_n_invalid, out.saxs_n_saturated, out.saxs_intensity = (
        float(saxs_sum), int(saxs_n_valid), int(saxs_n_invalid), int(saxs_n_saturated), float(saxs_intensity))


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
    has_background, background_mean, saxs_background, background_scale = background_arguments(background)
    result = _regroup_kernel(
        flat, table.run_start, table.run_length, table.run_first_segment, table.segment_length, table.segment_bin,
        np.int64(table.n_bins_per_window),
        invalid, check_invalid, saturation, _integer_sums_exact(flat.dtype, table), has_background,
        background_mean, table.saxs_run_start, table.saxs_run_length, saxs_background, background_scale,
        np.float64(table.saxs_pixel_count_geometric), out.sum_counts.reshape(-1), out.n_valid.reshape(-1),
        out.mean_counts.reshape(-1), out.variance.reshape(-1), out.n_saturated, out.n_invalid)
    store_saxs(out, *result)
    return out


def _sequential_sum(values: np.ndarray) -> float:
    """Left-to-right float64 sum (``ndarray.sum`` is pairwise and rounds differently)."""
    return float(np.cumsum(values, dtype=np.float64)[-1]) if values.size else 0.0


def regroup_frame_reference(frame: np.ndarray, table: PolarTable, invalid_value: float | None = None,
                            saturation_value: float | None = None,
                            background: RegroupedBackground | None = None,
                            out: RegroupBuffers | None = None) -> RegroupBuffers:
    """NumPy reference of :func:`regroup_frame` (same signature, bit for bit the same results; allocates).

    Entry by entry in the table's order, as the kernel: ``np.bincount`` adds its weights in
    index order and ``np.cumsum`` sums sequentially, so even float sums round the same way.
    """
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
    out.saxs_sum = _sequential_sum(saxs_values[saxs_good])
    out.saxs_n_valid = int(saxs_good.sum())
    out.saxs_n_invalid = int((~saxs_good).sum())
    out.saxs_n_saturated = int((saxs_values[saxs_good] > saturation).sum())
    if out.saxs_n_valid:
        background_sum = scale * _sequential_sum(saxs_background[saxs_good])
        out.saxs_intensity = (out.saxs_sum - background_sum) / out.saxs_n_valid * table.saxs_pixel_count_geometric
    else:
        out.saxs_intensity = float("nan")
    return out
