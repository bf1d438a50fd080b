"""Fused bitshuffle-LZ4 decode + polar regroup of EIGER frames, without the decoded frame.

A worker that decodes a ``bslz4`` payload (``stream.codecs.decompress``) and then regroups it
(:func:`analysis.regroup_kernel.regroup_frame`) writes and reads an 18 MB frame for an EIGER
X 4M and bit-untransposes every block, although the polar table only needs the sums of runs
of consecutive pixels. :class:`FusedRegroup` computes the same :class:`RegroupBuffers`
straight from the payload, block by block, with a scratch of one block (8 KiB):

1. The payload's block table is walked and checked (``stream.bslz4_kernel``'s walker: every
   block inside the payload, no byte left over) and the header is checked against the table's
   detector shape and the pixel dtype.
2. A block holding no pixel of the table (window or SAXS region) is not decompressed at all.
   Any other block is LZ4-decoded by bitshuffle's own C ``LZ4_decompress_safe`` (which
   bounds its reads and writes; its result must be the block's byte count) into the scratch.
3. The decoded block of m elements is 8 x itemsize bit planes of m / 8 bytes: bit p of
   element i is bit ``i % 64`` of little-endian word ``p * m / 64 + i // 64``. The sum of
   the values of pixels ``[a, a + n)`` is then ``V(a + n) - V(a)`` with the prefix sum
   ``V(x) = sum_p 2^p * popcount(plane p, bits 0 .. x - 1)``, a prefix table per 64-pixel
   word plus one masked popcount per plane at each piece boundary: no untranspose. Only the
   planes with a set bit at a pixel the table uses count (a per-block bit mask of those
   pixels, built once per table, leaves out the NODATA of module gaps and masked pixels).
4. That shortcut needs the used pixels to be valid and not saturated. A value above the
   saturation value S has a bit >= floor(log2(S + 1)); NODATA (2^bits - 1, or the
   ``invalid_value``) has a bit >= floor(log2(invalid)). Where such "danger" planes have set
   bits at a few used pixels of a block (``max_candidates``), the prefix sums use only the
   other planes and the pieces holding those candidate pixels are read pixel by pixel from
   all planes and checked one by one as in ``regroup_frame`` (NODATA skipped and counted in
   ``n_invalid``, values above the saturation value counted in ``n_saturated`` and summed).
   Blocks with more candidates, the last partial block (its planes are not whole 64-bit
   words), the raw tail of the last n % 8 elements, and blocks where popcounts would cost more
   than an untranspose (many planes x many pieces: ``popcount_budget``) are bit-untransposed
   by bitshuffle's C ``bshuf_untrans_bit_elem`` into a pixel scratch and regrouped run by run
   with the code of ``regroup_frame``.

The per-table work is a block schedule (per pixel dtype and block size, built on first use
and cached): for every block holding table pixels, its window pieces (window segments cut at
block boundaries: start in the block, length, bin) and SAXS pieces (start, length, ordinal
of the first pixel in the SAXS region), in pixel order.

Exactness: the fused kernel runs only where ``_integer_sums_exact`` holds (uint16/uint32
frames; every partial sum below 2^53), so the integer sums of any order equal the float64
sums of ``regroup_frame``; the SAXS background is added pixel by pixel in SAXS-pixel order
as there. The results are bit for bit those of ``regroup_frame(decompress(payload))``.

Fallback: for other dtypes, when the integer sums are not exact, or when bitshuffle's C
symbols cannot be found (logged once at debug level), :meth:`FusedRegroup.regroup` decodes
with ``stream.codecs.decompress`` and calls ``regroup_frame`` (same results, no speed-up).

Behaviour that differs from decode + regroup: blocks holding no table pixel are not
decompressed, so corrupt LZ4 data inside them (with a valid block table) goes unnoticed.
"""

from __future__ import annotations

import ctypes
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass

import numba
import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from analysis.background import RegroupedBackground
from analysis.errors import GeometryError, ProtocolError
from analysis.polar_table import PolarTable
from analysis.regroup_kernel import (
    RegroupBuffers,
    _integer_sums_exact,
    add_saxs_background,
    background_arguments,
    checked_run,
    checked_segments,
    clear_sums,
    finish_bins,
    regroup_frame,
    regroup_run,
    regroup_saxs_run,
    regroup_settings,
    saxs_intensity_of,
    store_saxs,
)
from stream.bslz4_kernel import (
    BAD_BLOCK_SIZE,
    BAD_TOTAL_SIZE,
    BLOCK_LENGTH_MISMATCH,
    BLOCK_TRUNCATED,
    DECODE_STATUS_REASONS,
    HEADER_TRUNCATED,
    LZ4_TRUNCATED_INPUT,
    OK,
    PREFIX_TRUNCATED,
    TAIL_TRUNCATED,
    SCRATCH_TOO_SMALL,
    _payload_u8,
    _walk_blocks_kernel,
)
from stream.codecs import check_framed_header, compress, decompress, parse_bslz4_header

log = logging.getLogger(__name__)

FUSED_DTYPES = (np.dtype("<u2"), np.dtype("<u4"))
"""Pixel dtypes of the fused kernel; other dtypes take the decode + regroup fallback."""

LZ4_CORRUPT = -30
UNTRANSPOSE_FAILED = -31
TRUNCATED_STATUSES = frozenset({LZ4_TRUNCATED_INPUT, HEADER_TRUNCATED, PREFIX_TRUNCATED, BLOCK_TRUNCATED,
                                TAIL_TRUNCATED})
"""Statuses of a payload cut short: their message starts "truncated blob", as the codecs' do."""

STATUS_REASONS: dict[int, str] = {
    **DECODE_STATUS_REASONS,
    LZ4_CORRUPT: "LZ4 block is corrupt (LZ4_decompress_safe failed)",
    UNTRANSPOSE_FAILED: "bit untranspose of a block failed",
}

DEFAULT_POPCOUNT_BUDGET = 3000
"""Largest (bit planes in use) x (pieces in the block) of a clean block that is summed by
popcounts; a block above it is untransposed instead. Speed only (both give the same results):
on the 4M default table (about 90 pieces per block) popcounts win up to about 20 planes in
use (counts up to 10^6); the synthetic frames use 5."""

DEFAULT_MAX_CANDIDATES = 16
"""Most table pixels of a full block that may be NODATA or saturated (a set bit in a danger
plane) for the block to be summed by popcounts, with the pieces holding them read pixel by pixel
from the planes; a block with more is untransposed. Speed only (both give the same results)."""

MAX_SCHEDULES = 4
"""Block schedules (one per block size seen in headers) kept per :class:`FusedRegroup`."""

_SYMBOL_PREFIX = "braggmap_"
_C_FUNCTIONS = ("LZ4_decompress_safe", "bshuf_untrans_bit_elem")


def _register_c_symbols() -> bool:
    """Make bitshuffle's C LZ4 decoder and bit untranspose callable from Numba code (under
    ``braggmap_``-prefixed names); False when the library or a symbol cannot be found."""
    try:
        import bitshuffle.ext

        library = ctypes.CDLL(bitshuffle.ext.__file__)
        addresses = {name: ctypes.cast(getattr(library, name), ctypes.c_void_p).value for name in _C_FUNCTIONS}
    except (ImportError, OSError, AttributeError) as exc:
        log.debug("bitshuffle C symbols %s not found (%s): FusedRegroup decodes whole frames and calls "
                  "regroup_frame", _C_FUNCTIONS, exc)
        return False
    for name, address in addresses.items():
        llvm_binding.add_symbol(_SYMBOL_PREFIX + name, address)
    return True


C_SYMBOLS_AVAILABLE = _register_c_symbols()
"""Whether the fused kernel can run (bitshuffle's C functions were found at import)."""


def _byte_pointer(context, builder, array_type, array_value, offset=None):
    """i8* to the data of a Numba array (plus ``offset`` bytes)."""
    byte_pointer = ir.IntType(8).as_pointer()
    pointer = builder.bitcast(context.make_array(array_type)(context, builder, array_value).data, byte_pointer)
    return pointer if offset is None else builder.gep(pointer, [offset])


def _c_block_function(name: str, bits: int, doc: str):
    """An intrinsic ``f(source, source_offset, target, first, second)`` (arrays, int64s) calling
    bitshuffle's C ``name(source + source_offset bytes, target, first, second)``, whose integer
    arguments and result have ``bits`` bits (the callers check every size)."""
    integer = ir.IntType(bits)

    def typer(typingctx, source, source_offset, target, first, second):
        if not (isinstance(source, types.Array) and isinstance(target, types.Array)):
            return None

        def codegen(context, builder, signature, args):
            byte_pointer = ir.IntType(8).as_pointer()
            function = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(integer, [byte_pointer, byte_pointer, integer, integer]),
                _SYMBOL_PREFIX + name)
            numbers = [builder.trunc(value, integer) if bits < 64 else value for value in args[3:]]
            return builder.call(function, [_byte_pointer(context, builder, signature.args[0], args[0], args[1]),
                                           _byte_pointer(context, builder, signature.args[2], args[2]), *numbers])

        return (types.int32 if bits == 32 else types.int64)(source, types.int64, target, types.int64, types.int64), codegen

    typer.__name__ = f"_c_{name}"
    typer.__doc__ = doc
    return intrinsic(typer)


_lz4_decompress_safe = _c_block_function(
    "LZ4_decompress_safe", 32, "LZ4-decode (source, offset, target, compressed bytes, capacity bytes): int32 decoded "
    "byte count, negative when the block is corrupt; reads and writes stay in the given ranges.")
_untrans_bit_elem = _c_block_function(
    "bshuf_untrans_bit_elem", 64, "Bit-untranspose (source, 0, target, elements, element bytes) of one block "
    "(elements a multiple of 8): int64, negative on failure.")


@intrinsic
def _popcount(typingctx, word):
    """``llvm.ctpop.i64``: set bits of a uint64."""
    if word != types.uint64:
        return None

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i64]), "llvm.ctpop.i64")
        return builder.call(function, [args[0]])

    return types.uint64(types.uint64), codegen


_ONE = np.uint64(1)
_SIX = np.uint64(6)
_LOW6 = np.uint64(63)


@numba.njit(cache=True, nogil=True, inline="always")
def _planes_at_interest(block_words, interest, interest_first, words, n_planes):
    """Bit p set when bit plane p of the decoded block has a set bit at a pixel of interest
    (``interest[interest_first:interest_first + words]``, one bit per pixel)."""
    found = np.uint64(0)
    for p in range(n_planes):
        base = np.uint64(p) * words
        hit = np.uint64(0)
        for w in range(words):
            hit |= block_words[base + w] & interest[interest_first + w]
        if hit != 0:
            found |= _ONE << np.uint64(p)
    return found


@numba.njit(cache=True, nogil=True, inline="always")
def _prepare_prefix(block_words, words, planes, plane_list, cumulative):
    """List the planes of bit mask ``planes`` in ``plane_list`` and fill ``cumulative[w]``
    (w = 0 .. words) with the sum of the values, over those planes, of the block's pixels
    0 .. 64 w - 1. Returns the number of planes listed."""
    n_listed = np.uint64(0)
    for p in range(64):
        if (planes >> np.uint64(p)) & _ONE:
            plane_list[n_listed] = np.uint64(p)
            n_listed += _ONE
    for w in range(words + _ONE):
        cumulative[w] = 0
    for k in range(n_listed):
        p = plane_list[k]
        base = p * words
        for w in range(words):
            cumulative[w + _ONE] += _popcount(block_words[base + w]) << p
    for w in range(words):
        cumulative[w + _ONE] += cumulative[w]
    return n_listed


@numba.njit(cache=True, nogil=True, inline="always")
def _prefix_value(block_words, words, plane_list, n_listed, cumulative, x):
    """Sum of the values (over the listed planes) of the block's pixels 0 .. x - 1 (uint64)."""
    w = x >> _SIX
    r = x & _LOW6
    total = cumulative[w]
    if r != 0:
        mask = (_ONE << r) - _ONE
        for k in range(n_listed):
            p = plane_list[k]
            total += _popcount(block_words[p * words + w] & mask) << p
    return total


@numba.njit(cache=True, nogil=True, inline="always")
def _set_no_pixels(sum_counts, n_valid, mean_counts, variance, n_saturated, n_invalid):
    """The buffers of a frame without any used pixel (what a failed frame leaves)."""
    clear_sums(sum_counts, n_valid, n_saturated, n_invalid)
    finish_bins(sum_counts, n_valid, mean_counts, variance, False, sum_counts, 0.0)


@numba.njit(cache=True, nogil=True, inline="always")
def _candidates_at_interest(block_words, interest, interest_first, words, danger_planes, candidates, others):
    """``candidates[w]``: the pixels of interest of word w with a set bit in one of the planes of
    bit mask ``danger_planes`` (the pixels that may be NODATA or saturated); ``others[w]``: the
    other pixels of interest. Returns the number of candidates."""
    for w in range(words):
        candidates[w] = 0
    for p in range(64):
        if (danger_planes >> np.uint64(p)) & _ONE:
            base = np.uint64(p) * words
            for w in range(words):
                candidates[w] |= block_words[base + w]
    n_candidates = np.uint64(0)
    for w in range(words):
        wanted = interest[interest_first + w]
        candidates[w] &= wanted
        others[w] = wanted & ~candidates[w]
        n_candidates += _popcount(candidates[w])
    return n_candidates


@numba.njit(cache=True, nogil=True, inline="always")
def _any_in_range(candidates, first, end):
    """Whether bit mask ``candidates`` (one bit per pixel) has a set bit in pixels first .. end - 1."""
    w_first = first >> _SIX
    w_last = (end - _ONE) >> _SIX
    first_mask = ~((_ONE << (first & _LOW6)) - _ONE)
    last_mask = ((_ONE << ((end - _ONE) & _LOW6)) << _ONE) - _ONE     # wraps to all ones for bit 63
    if w_first == w_last:
        return (candidates[w_first] & first_mask & last_mask) != 0
    if (candidates[w_first] & first_mask) != 0 or (candidates[w_last] & last_mask) != 0:
        return True
    for w in range(w_first + _ONE, w_last):
        if candidates[w] != 0:
            return True
    return False


@numba.njit(cache=True, nogil=True, inline="always")
def _gather_pixels(block_words, words, n_planes, first, length, pixels):
    """``pixels[0:length]`` = the values of the block's pixels first .. first + length - 1, read
    bit by bit from every plane (for the few pieces holding NODATA or saturation candidates)."""
    for j in range(length):
        i = first + np.uint64(j)
        w = i >> _SIX
        shift = i & _LOW6
        value = np.uint64(0)
        for p in range(n_planes):
            value |= ((block_words[np.uint64(p) * words + w] >> shift) & _ONE) << np.uint64(p)
        pixels[j] = value


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _fused_kernel(payload, elem_size, n_elements, block_elements, words,
                  block_offset, block_bytes, block_start, block_count, layout,
                  schedule_block, schedule_run_first, schedule_saxs_first, run_start, run_length, run_first_piece,
                  piece_length, piece_bin, saxs_start, saxs_length, saxs_ordinal, interest,
                  n_bins_per_window, invalid_value, check_invalid, saturation_value, clean_planes, popcount_budget,
                  max_candidates, has_background, background_mean, saxs_background, background_scale,
                  saxs_pixel_count_geometric, block_words, pixels, cumulative, plane_list, candidates, others,
                  sum_counts, n_valid, mean_counts, variance, n_saturated, n_invalid):
    """Decode the scheduled blocks of one payload and regroup them (caller-owned arrays only).

    ``block_offset`` .. ``block_count`` (int64, n_blocks) and ``layout`` (int64, 5) receive the
    block walk. The schedule lists the blocks holding table pixels (``schedule_block``; id
    n_blocks is the raw tail) with their runs of window pieces (consecutive pixels from
    ``run_start``, in the block) and their SAXS pieces. ``interest`` holds one bit per
    table pixel of the full blocks (``words`` uint64 per block; ``words`` is 0 when a block's
    planes are not whole words). Planes >= ``clean_planes`` are the danger planes (every plane
    when it is -1). A full block whose danger planes have at most ``max_candidates`` set bits
    at table pixels is summed by popcounts over its other planes, but for the pieces holding
    such a candidate, whose pixels are read plane by plane and checked one by one.
    ``block_words`` (uint64) receives one LZ4-decoded block, ``pixels`` (the frame dtype) one
    untransposed block, the tail or a gathered piece, ``cumulative`` (uint64, words + 1) and
    ``plane_list`` (uint64, 64) the popcount prefix, ``candidates`` and ``others`` (uint64,
    words) the bit masks of the candidates and of the other table pixels.

    Returns (status, failed_block, blocks decoded, of which summed by popcounts, of which with
    gathered pieces, saxs_sum, saxs_n_valid, saxs_n_invalid, saxs_n_saturated, saxs_intensity);
    on a status other than OK the buffers are left as for a frame without any used pixel.
    """
    status = _walk_blocks_kernel(payload, elem_size, block_offset, block_bytes, block_start, block_count, layout)
    if status == OK and layout[0] != n_elements:
        status = BAD_TOTAL_SIZE
    if status == OK and layout[1] != block_elements:
        status = BAD_BLOCK_SIZE
    if status != OK:
        _set_no_pixels(sum_counts, n_valid, mean_counts, variance, n_saturated, n_invalid)
        return (np.int64(status), np.int64(-1), np.int64(0), np.int64(0), np.int64(0), 0.0, np.int64(0),
                np.int64(0), np.int64(0), np.nan)
    n_blocks = layout[2]
    tail_offset = layout[3]
    tail_bytes = layout[4] * elem_size
    clear_sums(sum_counts, n_valid, n_saturated, n_invalid)
    block_u8 = block_words.view(np.uint8)
    pixels_u8 = pixels.view(np.uint8)
    n_planes = np.uint64(8 * elem_size)
    popcount_allowed = clean_planes >= 0
    clean_mask = (_ONE << np.uint64(max(clean_planes, 0))) - _ONE     # the planes below the danger planes
    bins_per_window = np.uint64(n_bins_per_window)
    need_check = check_invalid or saturation_value < np.inf
    saxs_sum = 0.0
    saxs_background_sum = 0.0
    saxs_n_valid = 0
    saxs_n_invalid = 0
    saxs_n_saturated = 0
    n_decoded = 0
    n_popcounted = 0
    n_gathered = 0
    for i in range(schedule_block.size):
        block = schedule_block[i]
        first_run, end_run = schedule_run_first[i], schedule_run_first[i + 1]
        first_saxs, end_saxs = schedule_saxs_first[i], schedule_saxs_first[i + 1]
        status = OK
        popcounts = False
        gather = False
        n_listed = np.uint64(0)
        if block == n_blocks:                                    # the raw tail: little-endian pixels
            if tail_bytes > pixels_u8.size:
                status = SCRATCH_TOO_SMALL
            else:
                for k in range(tail_bytes):
                    pixels_u8[k] = payload[tail_offset + k]
        elif block > n_blocks:
            status = BAD_BLOCK_SIZE
        else:
            count = block_count[block]
            raw_bytes = count * elem_size
            if raw_bytes > block_u8.size or count > pixels.size:
                status = SCRATCH_TOO_SMALL
            else:
                decoded = _lz4_decompress_safe(payload, block_offset[block], block_u8, block_bytes[block], raw_bytes)
                if decoded < 0:
                    status = LZ4_CORRUPT
                elif decoded != raw_bytes:
                    status = BLOCK_LENGTH_MISMATCH
            if status == OK and popcount_allowed and words > 0 and count == block_elements:
                interest_first = np.uint64(block) * words
                planes = _planes_at_interest(block_words, interest, interest_first, words, n_planes)
                gather = (planes & ~clean_mask) != 0
                if gather:                                       # NODATA / saturation candidates
                    n_candidates = _candidates_at_interest(block_words, interest, interest_first, words,
                                                           planes & ~clean_mask, candidates, others)
                    if np.int64(n_candidates) <= max_candidates:     # the planes at the other pixels
                        planes = _planes_at_interest(block_words, others, np.uint64(0), words, n_planes)
                    else:
                        planes = ~np.uint64(0)
                n_pieces = (run_first_piece[end_run] - run_first_piece[first_run]) + (end_saxs - first_saxs)
                if (planes & ~clean_mask) == 0 and np.int64(_popcount(planes)) * n_pieces <= popcount_budget:
                    popcounts = True
                    n_listed = _prepare_prefix(block_words, words, planes, plane_list, cumulative)
            if status == OK and not popcounts and _untrans_bit_elem(block_u8, 0, pixels_u8, count, elem_size) < 0:
                status = UNTRANSPOSE_FAILED
        if status != OK:
            _set_no_pixels(sum_counts, n_valid, mean_counts, variance, n_saturated, n_invalid)
            return (np.int64(status), np.int64(block), np.int64(n_decoded), np.int64(n_popcounted),
                    np.int64(n_gathered), 0.0, np.int64(0), np.int64(0), np.int64(0), np.nan)
        if block < n_blocks:
            n_decoded += 1
        if popcounts:                                            # sums V(end) - V(start) of the clean planes
            n_popcounted += 1
            if gather:
                n_gathered += 1
            for r in range(first_run, end_run):
                x = np.uint64(run_start[r])
                before = _prefix_value(block_words, words, plane_list, n_listed, cumulative, x)
                for j in range(run_first_piece[r], run_first_piece[r + 1]):
                    length = np.uint64(piece_length[j])
                    b = np.uint64(piece_bin[j])
                    value = _prefix_value(block_words, words, plane_list, n_listed, cumulative, x + length)
                    if gather and _any_in_range(candidates, x, x + length):
                        _gather_pixels(block_words, words, n_planes, x, length, pixels)
                        checked_segments(pixels, np.uint64(0), j, j + 1, piece_length, piece_bin, bins_per_window,
                                         check_invalid, invalid_value, saturation_value, sum_counts, n_valid,
                                         n_saturated, n_invalid)
                    else:
                        sum_counts[b] += np.float64(np.int64(value - before))
                        n_valid[b] += np.int32(length)
                    before = value
                    x += length
            for j in range(first_saxs, end_saxs):
                x = np.uint64(saxs_start[j])
                length = np.uint64(saxs_length[j])
                ordinal = np.uint64(saxs_ordinal[j])
                if gather and _any_in_range(candidates, x, x + length):
                    _gather_pixels(block_words, words, n_planes, x, length, pixels)
                    saxs_sum, saxs_background_sum, used, skipped, saturated = checked_run(
                        pixels, np.uint64(0), length, saxs_sum, check_invalid, invalid_value, saturation_value,
                        has_background, saxs_background, ordinal, saxs_background_sum)
                    saxs_n_valid += used
                    saxs_n_invalid += skipped
                    saxs_n_saturated += saturated
                    continue
                total = (_prefix_value(block_words, words, plane_list, n_listed, cumulative, x + length)
                         - _prefix_value(block_words, words, plane_list, n_listed, cumulative, x))
                saxs_sum += np.float64(np.int64(total))
                saxs_n_valid += np.int64(length)
                if has_background:
                    saxs_background_sum = add_saxs_background(saxs_background, ordinal, length, saxs_background_sum)
        else:                                                    # pixels: run by run, as regroup_frame
            for r in range(first_run, end_run):
                regroup_run(pixels, np.uint64(run_start[r]), np.uint64(run_length[r]), run_first_piece[r],
                            run_first_piece[r + 1], piece_length, piece_bin, bins_per_window, True, need_check,
                            check_invalid, invalid_value, saturation_value, sum_counts, n_valid, n_saturated,
                            n_invalid)
            for j in range(first_saxs, end_saxs):
                saxs_sum, saxs_background_sum, used, skipped, saturated = regroup_saxs_run(
                    pixels, np.uint64(saxs_start[j]), np.uint64(saxs_length[j]), np.uint64(saxs_ordinal[j]),
                    saxs_background, has_background, True, need_check, check_invalid, invalid_value,
                    saturation_value, saxs_sum, saxs_background_sum)
                saxs_n_valid += used
                saxs_n_invalid += skipped
                saxs_n_saturated += saturated
    finish_bins(sum_counts, n_valid, mean_counts, variance, has_background, background_mean, background_scale)
    saxs_intensity = saxs_intensity_of(saxs_sum, saxs_background_sum, saxs_n_valid, background_scale,
                                       saxs_pixel_count_geometric)
    return (np.int64(OK), np.int64(-1), np.int64(n_decoded), np.int64(n_popcounted), np.int64(n_gathered), saxs_sum,
            np.int64(saxs_n_valid), np.int64(saxs_n_invalid), np.int64(saxs_n_saturated), saxs_intensity)


def _readonly(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    array.setflags(write=False)
    return array


def _split_at_blocks(starts: np.ndarray, lengths: np.ndarray, bounds: np.ndarray):
    """Cut pixel ranges ``[starts, starts + lengths)`` (int64, ascending starts) at the block
    bounds (int64, ascending, first 0, last n_elements; block k is ``[bounds[k], bounds[k+1])``).

    Returns (range index, block, start in the block, length) of every piece, in order.
    """
    ends = starts + lengths
    first = np.searchsorted(bounds, starts, side="right") - 1
    last = np.searchsorted(bounds, ends - 1, side="right") - 1
    n_pieces = last - first + 1
    which = np.repeat(np.arange(starts.size), n_pieces)
    block = np.repeat(first, n_pieces) + (np.arange(int(n_pieces.sum())) - np.repeat(np.cumsum(n_pieces) - n_pieces,
                                                                                         n_pieces))
    piece_start = np.maximum(starts[which], bounds[block])
    piece_end = np.minimum(ends[which], bounds[block + 1])
    return which, block, piece_start - bounds[block], piece_end - piece_start


@dataclass(eq=False)
class BlockSchedule:
    """What the fused kernel does for one table, pixel dtype and block size (built once).

    Attributes
    ----------
    block_elements : int
        Elements per full block (header block bytes / itemsize).
    n_blocks : int
        LZ4 blocks of a payload (full blocks and the partial last one); block id ``n_blocks``
        stands for the raw tail of the last n_elements % 8 elements.
    words : int
        uint64 words per bit plane of a full block (block_elements / 64), 0 when that is not
        whole: then no block takes the popcount path.
    block : ndarray of int64, shape (n_scheduled,)
        Ids of the blocks holding table pixels, ascending.
    run_first, saxs_first : ndarray of int64, shape (n_scheduled + 1,)
        Scheduled block i holds the runs ``run_first[i]:run_first[i + 1]`` and the SAXS pieces
        ``saxs_first[i]:saxs_first[i + 1]``.
    run_start, run_length : ndarray of int32, shape (n_runs,)
        First pixel (in the block) and pixels of each run of consecutive pixels in window
        pieces: the table's runs cut at block bounds.
    run_first_piece : ndarray of int64, shape (n_runs + 1,)
        Run r is the window pieces ``run_first_piece[r]:run_first_piece[r + 1]``, from its start on.
    piece_length, piece_bin : ndarray of int16 and of the table's ``segment_bin`` dtype, shape (n_pieces,)
        The window segments cut at block bounds: pixels, flat bin.
    saxs_start, saxs_length : ndarray of int32, shape (n_saxs_pieces,)
    saxs_ordinal : ndarray of int64, shape (n_saxs_pieces,)
        Index in ``table.saxs_pixel_index`` of each SAXS piece's first pixel.
    interest : ndarray of uint64, shape (n_full_blocks * words,)
        One bit per table pixel of the full blocks (bit i % 64 of word i // 64 of the block).

    The rest are caller-owned buffers of the kernel (overwritten by every frame).
    """

    block_elements: int
    n_blocks: int
    words: int
    block: np.ndarray
    run_first: np.ndarray
    saxs_first: np.ndarray
    run_start: np.ndarray
    run_length: np.ndarray
    run_first_piece: np.ndarray
    piece_length: np.ndarray
    piece_bin: np.ndarray
    saxs_start: np.ndarray
    saxs_length: np.ndarray
    saxs_ordinal: np.ndarray
    interest: np.ndarray
    block_offset: np.ndarray
    block_bytes: np.ndarray
    block_start: np.ndarray
    block_count: np.ndarray
    layout: np.ndarray
    block_words: np.ndarray
    pixels: np.ndarray
    cumulative: np.ndarray
    plane_list: np.ndarray
    candidates: np.ndarray
    others: np.ndarray

    @classmethod
    def build(cls, table: PolarTable, dtype: np.dtype, block_elements: int) -> BlockSchedule:
        """Schedule ``table`` for frames of ``dtype`` in blocks of ``block_elements`` (> 0, a
        multiple of 8) elements."""
        n_elements = int(table.detector_shape[0]) * int(table.detector_shape[1])
        tail_elements = n_elements % 8
        n_full = n_elements // block_elements
        n_blocks = n_full + (1 if (n_elements % block_elements) >= 8 else 0)
        bounds = np.append(np.arange(n_blocks, dtype=np.int64) * block_elements,
                           [n_elements - tail_elements, n_elements]).astype(np.int64)

        segment_entry = np.concatenate(([0], np.cumsum(table.segment_length, dtype=np.int64)[:-1]))
        segment_start = table.pixel_index[segment_entry] if table.n_segments else np.zeros(0, np.int64)
        segment, piece_block, piece_start, piece_length = _split_at_blocks(
            segment_start.astype(np.int64), table.segment_length.astype(np.int64), bounds)
        new_run = np.ones(piece_block.size, dtype=bool)                 # a run: pieces abutting in one block
        new_run[1:] = (piece_block[1:] != piece_block[:-1]) | (piece_start[1:] != piece_start[:-1] + piece_length[:-1])
        run_first_piece = np.flatnonzero(new_run)
        run_block = piece_block[run_first_piece]

        run_length = table.saxs_run_length.astype(np.int64)
        run_ordinal = np.concatenate(([0], np.cumsum(run_length)[:-1])).astype(np.int64)
        which, saxs_block, saxs_start, saxs_length = _split_at_blocks(
            table.saxs_run_start.astype(np.int64), run_length, bounds)
        saxs_ordinal = run_ordinal[which] + (bounds[saxs_block] + saxs_start - table.saxs_run_start[which])

        scheduled = np.union1d(run_block, saxs_block).astype(np.int64)
        run_first = np.searchsorted(run_block, np.append(scheduled, n_blocks + 1)).astype(np.int64)
        saxs_first = np.searchsorted(saxs_block, np.append(scheduled, n_blocks + 1)).astype(np.int64)

        words = block_elements // 64 if block_elements % 64 == 0 and n_full > 0 else 0
        if words:
            used = np.zeros(n_full * block_elements, dtype=bool)
            for pixels in (table.pixel_index, table.saxs_pixel_index):
                used[pixels[pixels < used.size]] = True
            interest = np.packbits(used, bitorder="little").view("<u8").astype(np.uint64)
        else:
            interest = np.zeros(1, dtype=np.uint64)
        largest_block = max(8, min(block_elements, n_elements - tail_elements))
        n_walk = max(n_blocks, 1)
        block_size = np.diff(bounds)                                     # the kernel trusts what follows
        if not (np.all(piece_start >= 0) and np.all(piece_length > 0) and np.all(saxs_length > 0)
                and np.all(piece_start + piece_length <= block_size[piece_block])
                and np.all(saxs_start + saxs_length <= block_size[saxs_block])
                and np.all(saxs_ordinal + saxs_length <= table.saxs_pixel_index.size)
                and (table.segment_bin.size == 0 or 0 <= table.segment_bin.min() <= table.segment_bin.max()
                     < int(np.prod(table.bins_shape)))):
            raise GeometryError("polar table does not fit its detector shape: cannot schedule its bslz4 blocks")
        return cls(
            block_elements=int(block_elements), n_blocks=int(n_blocks), words=int(words), block=_readonly(scheduled),
            run_first=_readonly(run_first), saxs_first=_readonly(saxs_first),
            run_start=_readonly(piece_start[run_first_piece].astype(np.int32)),
            run_length=_readonly(np.add.reduceat(piece_length, run_first_piece).astype(np.int32)
                                 if piece_length.size else np.zeros(0, np.int32)),
            run_first_piece=_readonly(np.append(run_first_piece, piece_block.size).astype(np.int64)),
            piece_length=_readonly(piece_length.astype(np.int16)),
            piece_bin=_readonly(table.segment_bin[segment]),
            saxs_start=_readonly(saxs_start.astype(np.int32)), saxs_length=_readonly(saxs_length.astype(np.int32)),
            saxs_ordinal=_readonly(saxs_ordinal.astype(np.int64)), interest=_readonly(interest),
            block_offset=np.zeros(n_walk, np.int64), block_bytes=np.zeros(n_walk, np.int64),
            block_start=np.zeros(n_walk, np.int64), block_count=np.zeros(n_walk, np.int64),
            layout=np.zeros(5, np.int64),
            block_words=np.zeros(-(-largest_block * dtype.itemsize // 8), np.uint64),
            pixels=np.zeros(largest_block, dtype), cumulative=np.zeros(words + 1, np.uint64),
            plane_list=np.zeros(64, np.uint64), candidates=np.zeros(max(words, 1), np.uint64),
            others=np.zeros(max(words, 1), np.uint64))


def _clean_planes(bits: int, check_invalid: bool, invalid: float, saturation: float) -> int:
    """The lowest danger plane k: a ``bits``-bit value whose planes >= k are all 0 (a value below
    2^k) is neither the NODATA value ``invalid`` (when ``check_invalid``) nor above
    ``saturation``; -1 when no such k exists (then every block is checked pixel by pixel)."""
    planes = bits
    if math.isnan(saturation) or saturation < 0:                 # NaN or negative: check every pixel
        return -1
    if saturation < np.inf:
        planes = min(planes, (int(saturation) + 1).bit_length() - 1)     # 2^k - 1 <= saturation
    if check_invalid and 0 <= invalid < 2**bits and invalid == int(invalid):    # a value the pixels can take
        if invalid == 0:
            return -1
        planes = min(planes, int(invalid).bit_length() - 1)     # 2^k <= invalid
    return planes


def _leave_no_pixels(out: RegroupBuffers) -> None:
    """Leave ``out`` as for a frame without any used pixel (what a payload that fails leaves)."""
    out.sum_counts[...] = 0.0
    out.n_valid[...] = 0
    out.mean_counts[...] = np.nan
    out.variance[...] = np.nan
    out.n_saturated[...] = 0
    out.n_invalid[...] = 0
    store_saxs(out, 0.0, 0, 0, 0, np.nan)


class FusedRegroup:
    """Regroup bitshuffle-LZ4 payloads of one polar table without decoding whole frames.

    Parameters
    ----------
    table : PolarTable
    dtype : numpy dtype
        Pixel type of the payloads (little-endian on the wire); uint16 and uint32 take the
        fused kernel, others the decode + regroup fallback.
    popcount_budget, max_candidates : int
        See ``DEFAULT_POPCOUNT_BUDGET`` and ``DEFAULT_MAX_CANDIDATES`` (speed only; any values
        give the same results).

    Attributes
    ----------
    last_blocks : (int, int, int)
        Blocks LZ4-decoded by the last fused :meth:`regroup`, how many of them were summed by
        popcounts without an untranspose, and how many of those had pieces holding NODATA or
        saturation candidates read pixel by pixel (for benchmarks and tests).

    One owner thread: the kernel's scratch buffers belong to the instance.
    """

    def __init__(self, table: PolarTable, dtype, popcount_budget: int = DEFAULT_POPCOUNT_BUDGET,
                 max_candidates: int = DEFAULT_MAX_CANDIDATES) -> None:
        self.table = table
        resolved = np.dtype(dtype)
        if resolved.kind not in "uif":
            raise GeometryError(f"pixel dtype {resolved} is not an integer or float type")
        self.dtype = resolved.newbyteorder("<")
        self.popcount_budget = int(popcount_budget)
        self.max_candidates = int(max_candidates)
        self._fused_dtype = self.dtype in FUSED_DTYPES and _integer_sums_exact(self.dtype, table)
        self._schedules: OrderedDict[int, BlockSchedule] = OrderedDict()
        self.last_blocks = (0, 0, 0)
        if not self._fused_dtype:
            log.debug("FusedRegroup for %s frames decodes whole frames and calls regroup_frame (fused kernel: "
                      "uint16/uint32 frames with exact integer sums only)", self.dtype)

    @property
    def uses_fused_kernel(self) -> bool:
        """True when :meth:`regroup` runs the fused kernel (else decode + ``regroup_frame``)."""
        return self._fused_dtype and C_SYMBOLS_AVAILABLE

    def schedule(self, block_elements: int) -> BlockSchedule:
        """The block schedule for blocks of ``block_elements`` elements (built on first use)."""
        schedule = self._schedules.get(block_elements)
        if schedule is None:
            schedule = BlockSchedule.build(self.table, self.dtype, block_elements)
            self._schedules[block_elements] = schedule
            while len(self._schedules) > MAX_SCHEDULES:
                self._schedules.popitem(last=False)
        else:
            self._schedules.move_to_end(block_elements)
        return schedule

    def regroup(self, payload, invalid_value: float | None = None, saturation_value: float | None = None,
                background: RegroupedBackground | None = None, out: RegroupBuffers | None = None) -> RegroupBuffers:
        """Regroup one ``bslz4`` payload: the results of ``regroup_frame(decompress(payload))``.

        Runs the fused kernel when :attr:`uses_fused_kernel`, else decodes the whole frame and
        calls ``regroup_frame`` (same results). Blocks holding no table pixel are not decoded, so
        the fused kernel does not notice corrupt LZ4 data inside them.

        Parameters
        ----------
        payload : bytes, memoryview or 1-D C-contiguous uint8 ndarray
            The whole bslz4 chunk (12-byte header, blocks, raw tail) of a frame of
            ``table.detector_shape`` pixels of ``dtype``.
        invalid_value, saturation_value, background, out
            As in :func:`analysis.regroup_kernel.regroup_frame`.

        Returns
        -------
        RegroupBuffers
            ``out``, filled.

        Raises
        ------
        ProtocolError
            Truncated or corrupt payload, or one whose header does not describe a frame of the
            table's shape and this dtype; ``out`` is then left as for a frame without any used
            pixel (n_valid 0, means NaN, saxs_n_valid 0).
        GeometryError
            ``out`` or ``background`` does not fit the table.
        """
        table = self.table
        invalid, check_invalid, saturation, out = regroup_settings(self.dtype, table, invalid_value,
                                                                   saturation_value, background, out)
        try:
            data = _payload_u8(payload)
            if not self.uses_fused_kernel:
                frame = decompress(data, "bslz4", self.dtype, table.detector_shape)
                return regroup_frame(frame, table, invalid_value, saturation_value, background, out)
            check_framed_header(data, "bslz4", table.detector_shape, self.dtype.itemsize)
            _, block_bytes = parse_bslz4_header(data)
            return self._run(data, self.schedule(block_bytes // self.dtype.itemsize), invalid, check_invalid,
                             saturation, background, out)
        except ProtocolError:
            _leave_no_pixels(out)
            raise

    def _run(self, data: np.ndarray, schedule: BlockSchedule, invalid: float, check_invalid: bool,
             saturation: float, background, out: RegroupBuffers) -> RegroupBuffers:
        """The fused kernel on a checked header; raises ProtocolError for a failed status."""
        if data.flags.writeable:                                 # one compiled variant: read-only payloads
            data = data.view()
            data.flags.writeable = False
        table, itemsize = self.table, self.dtype.itemsize
        has_background, background_mean, saxs_background, background_scale = background_arguments(background)
        status, failed_block, n_decoded, n_popcounted, n_gathered, *saxs = _fused_kernel(
            data, np.int64(itemsize), np.int64(table.detector_shape[0] * table.detector_shape[1]),
            np.int64(schedule.block_elements), np.uint64(schedule.words),
            schedule.block_offset, schedule.block_bytes, schedule.block_start, schedule.block_count, schedule.layout,
            schedule.block, schedule.run_first, schedule.saxs_first, schedule.run_start, schedule.run_length,
            schedule.run_first_piece,
            schedule.piece_length, schedule.piece_bin, schedule.saxs_start, schedule.saxs_length,
            schedule.saxs_ordinal, schedule.interest,
            np.int64(table.n_bins_per_window), invalid, check_invalid, saturation,
            np.int64(_clean_planes(8 * itemsize, check_invalid, invalid, saturation)), np.int64(self.popcount_budget),
            np.int64(self.max_candidates), has_background, background_mean, saxs_background, background_scale,
            np.float64(table.saxs_pixel_count_geometric),
            schedule.block_words, schedule.pixels, schedule.cumulative, schedule.plane_list, schedule.candidates,
            schedule.others,
            out.sum_counts.reshape(-1), out.n_valid.reshape(-1), out.mean_counts.reshape(-1),
            out.variance.reshape(-1), out.n_saturated, out.n_invalid)
        self.last_blocks = (int(n_decoded), int(n_popcounted), int(n_gathered))
        if status != OK:
            where = f" (block {failed_block})" if failed_block >= 0 else ""
            reason = STATUS_REASONS.get(int(status), f"unknown status {int(status)}")
            kind = "truncated blob: " if int(status) in TRUNCATED_STATUSES else ""  # as stream.codecs says it
            raise ProtocolError(f"{kind}cannot decode bslz4 payload of {data.size} bytes for a {table.detector_shape[0]}x"
                                f"{table.detector_shape[1]} {self.dtype.name} frame{where}: {reason} "
                                f"[status {int(status)}]")
        store_saxs(out, *saxs)
        return out

    def warm_up(self) -> None:
        """Compile (or load from the Numba cache) the kernels this instance runs, on an all-zero
        frame of the table's shape (also builds the schedule of EIGER's 8192-byte blocks)."""
        frame = np.zeros(self.table.detector_shape, dtype=self.dtype)
        result = self.regroup(compress(frame, "bslz4"))
        if int(result.n_valid.sum()) != self.table.n_entries or result.saxs_n_valid != self.table.saxs_pixel_index.size:
            raise GeometryError("FusedRegroup warm-up: an all-zero frame did not use every table pixel")
        log.debug("FusedRegroup kernels ready (%s, fused: %s)", self.dtype, self.uses_fused_kernel)
