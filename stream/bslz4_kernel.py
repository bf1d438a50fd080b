"""Bitshuffle-LZ4 decoding of EIGER frames in Numba, able to decode only selected blocks.

An EIGER ``bslz4`` payload (stream v1 ``bs*-lz4<`` blob, stream v2 ``"bslz4"`` payload, HDF5
filter 32008 chunk) is a 12-byte header (u64 BE uncompressed bytes, u32 BE block bytes), then
per block a u32 BE compressed size and a raw LZ4 block holding the bit-transposed block, then
the last ``n_elements % 8`` elements raw (see ``shared/docs/eiger-stream.md`` section 3).
Blocks are independent, so a caller that needs only a few pixels decodes only their blocks:
``index_bslz4_blocks`` walks the size prefixes, ``blocks_for_pixels`` maps pixels to blocks
(once per geometry) and ``decode_bslz4_blocks`` decodes the chosen blocks in place.

Kernels never raise on bad data; they return a negative status (``DECODE_STATUS_REASONS``)
and never read or write out of bounds. The Python wrappers raise ``ProtocolError``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numba
import numpy as np

from analysis.errors import GeometryError, ProtocolError

logger = logging.getLogger(__name__)

HEADER_BYTES = 12

OK = 0
LZ4_TRUNCATED_INPUT = -1
LZ4_OUTPUT_OVERFLOW = -2
LZ4_BAD_OFFSET = -3
HEADER_TRUNCATED = -10
BAD_BLOCK_SIZE = -11
BAD_TOTAL_SIZE = -12
PREFIX_TRUNCATED = -13
BLOCK_TRUNCATED = -14
BAD_COMPRESSED_SIZE = -15
TAIL_TRUNCATED = -16
TRAILING_BYTES = -17
INDEX_TOO_SMALL = -18
BLOCK_LENGTH_MISMATCH = -20
BAD_BLOCK_ID = -21
OUTPUT_TOO_SMALL = -22
SCRATCH_TOO_SMALL = -23

DECODE_STATUS_REASONS: dict[int, str] = {
    OK: "ok",
    LZ4_TRUNCATED_INPUT: "LZ4 block ends inside a sequence (truncated input)",
    LZ4_OUTPUT_OVERFLOW: "LZ4 block decodes to more bytes than the block holds",
    LZ4_BAD_OFFSET: "LZ4 match offset is 0 or points before the block start",
    HEADER_TRUNCATED: "payload shorter than the 12-byte bslz4 header",
    BAD_BLOCK_SIZE: "block size is 0 or not a multiple of 8 elements",
    BAD_TOTAL_SIZE: "uncompressed size is not a whole number of elements",
    PREFIX_TRUNCATED: "payload ends inside a block's 4-byte compressed-size prefix",
    BLOCK_TRUNCATED: "a block's compressed size runs past the end of the payload",
    BAD_COMPRESSED_SIZE: "a block's compressed size is 0 or larger than any LZ4 block of it",
    TAIL_TRUNCATED: "payload ends inside the raw tail of the last n % 8 elements",
    TRAILING_BYTES: "payload has bytes after the raw tail",
    INDEX_TOO_SMALL: "block index arrays too small for the payload",
    BLOCK_LENGTH_MISMATCH: "a block decodes to fewer bytes than it must hold",
    BAD_BLOCK_ID: "a selected block id is outside the payload's blocks",
    OUTPUT_TOO_SMALL: "output buffer smaller than the decoded frame",
    SCRATCH_TOO_SMALL: "scratch buffer smaller than one block",
}


def decode_status_reason(status: int) -> str:
    """Readable reason of a decode status code (unknown codes are named as such)."""
    return DECODE_STATUS_REASONS.get(int(status), f"unknown decode status {int(status)}")


# ---------------------------------------------------------------------------------------------
# Kernels (indices are cast to uint64 in the hot loops: Numba then drops its negative-index
# wraparound and LLVM vectorises the loops; every bound is checked before in int64)
# ---------------------------------------------------------------------------------------------

_U8 = np.uint64(8)


@numba.njit(cache=True, nogil=True, inline="always")
def _copy_bytes(src, src_pos, dst, dst_pos, n_bytes):
    """``dst[dst_pos:dst_pos+n] = src[src_pos:src_pos+n]`` for non-overlapping ranges that the
    caller has checked."""
    s0 = np.uint64(src_pos)
    d0 = np.uint64(dst_pos)
    for i in range(np.uint64(n_bytes)):
        dst[d0 + i] = src[s0 + i]


@numba.njit(cache=True, nogil=True)
def _lz4_decompress_kernel(src, src_start, src_len, dst, dst_start, dst_cap):
    """Decode one raw LZ4 block ``src[src_start:src_start+src_len]`` into
    ``dst[dst_start:dst_start+dst_cap]``; returns the decoded length or a negative status."""
    ip = src_start
    ip_end = src_start + src_len
    op = dst_start
    op_end = dst_start + dst_cap
    if src_len <= 0 or src_start < 0 or ip_end > src.size or dst_start < 0 \
            or op_end > dst.size:
        return LZ4_TRUNCATED_INPUT
    while True:
        if ip >= ip_end:
            return LZ4_TRUNCATED_INPUT     # a block must end with a literals-only sequence
        token = np.int64(src[ip])
        ip += 1
        literal_len = token >> 4
        if literal_len == 15:
            while True:
                if ip >= ip_end:
                    return LZ4_TRUNCATED_INPUT
                extra = np.int64(src[ip])
                ip += 1
                literal_len += extra
                if extra != 255:
                    break
        if literal_len > ip_end - ip:
            return LZ4_TRUNCATED_INPUT
        if literal_len > op_end - op:
            return LZ4_OUTPUT_OVERFLOW
        _copy_bytes(src, ip, dst, op, literal_len)
        ip += literal_len
        op += literal_len
        if ip == ip_end:
            return op - dst_start      # the last sequence has literals only
        if ip_end - ip < 2:
            return LZ4_TRUNCATED_INPUT
        offset = np.int64(src[ip]) | (np.int64(src[ip + 1]) << 8)
        ip += 2
        if offset == 0 or offset > op - dst_start:
            return LZ4_BAD_OFFSET
        match_len = token & 15
        if match_len == 15:
            while True:
                if ip >= ip_end:
                    return LZ4_TRUNCATED_INPUT
                extra = np.int64(src[ip])
                ip += 1
                match_len += extra
                if extra != 255:
                    break
        match_len += 4
        if match_len > op_end - op:
            return LZ4_OUTPUT_OVERFLOW
        # An overlapping match (offset < length) repeats the last `offset` bytes: copy it as
        # non-overlapping chunks of doubling length; the distance stays a multiple of offset.
        copied = 0
        distance = offset
        while copied < match_len:
            chunk = min(distance, match_len - copied)
            _copy_bytes(dst, op + copied - distance, dst, op + copied, chunk)
            copied += chunk
            distance *= 2
        op += match_len


_M1 = np.uint64(0x00AA00AA00AA00AA)
_M2 = np.uint64(0x0000CCCC0000CCCC)
_M3 = np.uint64(0x00000000F0F0F0F0)
_S7 = np.uint64(7)
_S14 = np.uint64(14)
_S28 = np.uint64(28)
_BYTE = np.uint64(0xFF)


@numba.njit(cache=True, nogil=True, inline="always")
def _transpose_8x8_bits(x):
    """Transpose the 8x8 bit matrix in ``x`` (row r = byte r, column c = bit c); an
    involution, identical to bitshuffle's ``TRANS_BIT_8X8``."""
    t = (x ^ (x >> _S7)) & _M1
    x = x ^ t ^ (t << _S7)
    t = (x ^ (x >> _S14)) & _M2
    x = x ^ t ^ (t << _S14)
    t = (x ^ (x >> _S28)) & _M3
    x = x ^ t ^ (t << _S28)
    return x


@numba.njit(cache=True, nogil=True)
def _bitunshuffle_kernel(src, src_start, n_elements, elem_size, tiles, tiles_start, dst,
                         dst_start):
    """Inverse of bitshuffle's ``trans_bit_elem`` for one block of ``n_elements`` (a multiple
    of 8) elements of ``elem_size`` bytes.

    ``src[src_start:]`` (uint8) holds bit-row ``8*j + k`` (bit k of byte j of every element;
    element ``8*b + m`` in bit m of byte b) after bit-row. Pass 1 gathers one byte of 8
    bit-rows into a uint64 and transposes it as an 8x8 bit matrix, giving byte j of 8
    elements: ``tiles[tiles_start + j*n/8 + b]`` (uint64 scratch). Pass 2 interleaves these
    byte planes into ``dst[dst_start : dst_start + n*elem_size]`` (uint8).
    """
    row_bytes = np.uint64(n_elements // 8)
    es = np.uint64(elem_size)
    s0 = np.uint64(src_start)
    t0 = np.uint64(tiles_start)
    for j in range(es):
        in_base = s0 + j * _U8 * row_bytes
        out_base = t0 + j * row_bytes
        for b in range(row_bytes):
            x = np.uint64(0)
            for k in range(_U8):
                x |= np.uint64(src[in_base + k * row_bytes + b]) << (_U8 * k)
            tiles[out_base + b] = _transpose_8x8_bits(x)
    planes = tiles.view(np.uint8)
    n = np.uint64(n_elements)
    p0 = t0 * _U8
    d0 = np.uint64(dst_start)
    if elem_size == 1:
        for e in range(n):
            dst[d0 + e] = planes[p0 + e]
    elif elem_size == 2:
        for e in range(n):
            o = d0 + np.uint64(2) * e
            dst[o] = planes[p0 + e]
            dst[o + np.uint64(1)] = planes[p0 + n + e]
    elif elem_size == 4:
        for e in range(n):
            o = d0 + np.uint64(4) * e
            dst[o] = planes[p0 + e]
            dst[o + np.uint64(1)] = planes[p0 + n + e]
            dst[o + np.uint64(2)] = planes[p0 + np.uint64(2) * n + e]
            dst[o + np.uint64(3)] = planes[p0 + np.uint64(3) * n + e]
    else:
        for e in range(n):
            for j in range(es):
                dst[d0 + e * es + j] = planes[p0 + j * n + e]


@numba.njit(cache=True, nogil=True)
def _header_layout_kernel(payload, elem_size, layout):
    """Parse the 12-byte header into ``layout[0:3]`` = (n_elements, block_elements,
    n_blocks); returns a status (also when the payload is too short to hold n_blocks)."""
    n_bytes = payload.size
    if n_bytes < HEADER_BYTES:
        return HEADER_TRUNCATED
    if payload[0] >= 128:
        return BAD_TOTAL_SIZE
    total_bytes = np.int64(0)
    for i in range(8):
        total_bytes = (total_bytes << 8) | np.int64(payload[i])
    block_bytes = np.int64(0)
    for i in range(8, 12):
        block_bytes = (block_bytes << 8) | np.int64(payload[i])
    if total_bytes % elem_size != 0:
        return BAD_TOTAL_SIZE
    block_elements = block_bytes // elem_size
    if block_elements <= 0 or block_elements % 8 != 0:
        return BAD_BLOCK_SIZE
    n_elements = total_bytes // elem_size
    last_elements = n_elements % block_elements
    n_blocks = n_elements // block_elements + (1 if last_elements >= 8 else 0)
    if n_blocks * 5 > n_bytes - HEADER_BYTES:    # every block needs >= 4 + 1 bytes
        return BLOCK_TRUNCATED
    layout[0] = n_elements
    layout[1] = block_elements
    layout[2] = n_blocks
    return OK


@numba.njit(cache=True, nogil=True)
def _walk_blocks_kernel(payload, elem_size, compressed_offset, compressed_size, element_start,
                        element_count, layout):
    """Walk the header and size prefixes; fill the per-block arrays and ``layout`` =
    (n_elements, block_elements, n_blocks, tail_offset, tail_elements). Returns a status."""
    status = _header_layout_kernel(payload, elem_size, layout)
    if status != OK:
        return status
    n_bytes = payload.size
    n_elements = layout[0]
    block_elements = layout[1]
    n_blocks = layout[2]
    n_full = n_elements // block_elements
    last_elements = n_elements % block_elements
    last_elements -= last_elements % 8
    if n_blocks > compressed_offset.size or n_blocks > compressed_size.size \
            or n_blocks > element_start.size or n_blocks > element_count.size:
        return INDEX_TOO_SMALL
    pos = np.int64(HEADER_BYTES)
    for block in range(n_blocks):
        count = block_elements if block < n_full else last_elements
        if n_bytes - pos < 4:
            return PREFIX_TRUNCATED
        size = (np.int64(payload[pos]) << 24) | (np.int64(payload[pos + 1]) << 16) \
            | (np.int64(payload[pos + 2]) << 8) | np.int64(payload[pos + 3])
        pos += 4
        raw_bytes = count * elem_size
        if size <= 0 or size > raw_bytes + raw_bytes // 255 + 16:
            return BAD_COMPRESSED_SIZE
        if size > n_bytes - pos:
            return BLOCK_TRUNCATED
        compressed_offset[block] = pos
        compressed_size[block] = size
        element_start[block] = block * block_elements
        element_count[block] = count
        pos += size
    tail_elements = n_elements % 8
    if n_bytes - pos < tail_elements * elem_size:
        return TAIL_TRUNCATED
    if n_bytes - pos > tail_elements * elem_size:
        return TRAILING_BYTES
    layout[3] = pos
    layout[4] = tail_elements
    return OK


@numba.njit(cache=True, nogil=True)
def _decode_blocks_kernel(payload, compressed_offset, compressed_size, element_start,
                          element_count, n_blocks, elem_size, selected, scratch, out,
                          tail_offset, tail_elements, failed_block):
    """LZ4-decode and unshuffle the ``selected`` blocks into ``out`` (uint8 view of the
    frame) and copy the raw tail. ``scratch`` (uint64) holds the LZ4 output of one block in
    its first half (as bytes) and the unshuffle tiles in its second half. Returns a status;
    ``failed_block[0]`` names the culprit."""
    failed_block[0] = -1
    n_elements = element_start[n_blocks - 1] + element_count[n_blocks - 1] if n_blocks > 0 \
        else np.int64(0)
    if (n_elements + tail_elements) * elem_size > out.size:
        return OUTPUT_TOO_SMALL
    if tail_offset + tail_elements * elem_size > payload.size:
        return TAIL_TRUNCATED
    if n_blocks > compressed_offset.size or n_blocks > compressed_size.size \
            or n_blocks > element_start.size or n_blocks > element_count.size:
        return INDEX_TOO_SMALL
    scratch_u8 = scratch.view(np.uint8)
    half_words = scratch.size // 2
    for s in range(selected.size):
        block = selected[s]
        if block < 0 or block >= n_blocks:
            failed_block[0] = block
            return BAD_BLOCK_ID
        raw_bytes = element_count[block] * elem_size
        if element_start[block] < 0 or element_start[block] * elem_size + raw_bytes > out.size:
            failed_block[0] = block
            return OUTPUT_TOO_SMALL
        if raw_bytes > half_words * 8:
            failed_block[0] = block
            return SCRATCH_TOO_SMALL
        decoded = _lz4_decompress_kernel(payload, compressed_offset[block],
                                         compressed_size[block], scratch_u8, 0, raw_bytes)
        if decoded != raw_bytes:
            failed_block[0] = block
            return decoded if decoded < 0 else BLOCK_LENGTH_MISMATCH
        _bitunshuffle_kernel(scratch_u8, 0, element_count[block], elem_size, scratch,
                             half_words, out, element_start[block] * elem_size)
    out_pos = n_elements * elem_size
    for i in range(tail_elements * elem_size):
        out[out_pos + i] = payload[tail_offset + i]
    return OK


# ---------------------------------------------------------------------------------------------
# Python wrappers
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BlockIndex:
    """Where every block of one bslz4 payload lies, compressed and decoded.

    Attributes
    ----------
    elem_size : int
        Bytes per element (1, 2, 4 or 8).
    n_elements : int
        Elements in the frame (rows * cols).
    block_elements : int
        Elements per full block (header block bytes / elem_size).
    compressed_offset, compressed_size : ndarray, int64, shape (n_blocks,)
        Payload byte offset of each LZ4 block (after its 4-byte prefix) and its length.
    element_start, element_count : ndarray, int64, shape (n_blocks,)
        First decoded element of each block and its element count (a multiple of 8).
    tail_offset, tail_elements : int
        Payload offset of the raw tail and its element count (``n_elements % 8``).
    """

    elem_size: int
    n_elements: int
    block_elements: int
    compressed_offset: np.ndarray
    compressed_size: np.ndarray
    element_start: np.ndarray
    element_count: np.ndarray
    tail_offset: int
    tail_elements: int

    @property
    def n_blocks(self) -> int:
        return int(self.compressed_offset.size)


def _payload_u8(payload) -> np.ndarray:
    """1-D contiguous uint8 view of bytes, memoryview or a uint8 array (no copy)."""
    if isinstance(payload, np.ndarray):
        if payload.dtype != np.uint8 or not payload.flags.c_contiguous:
            raise ProtocolError(f"bslz4 payload must be C-contiguous uint8, got {payload.dtype} "
                                f"(contiguous={payload.flags.c_contiguous})")
        return payload.reshape(-1)
    return np.frombuffer(payload, dtype=np.uint8)


def _check_elem_size(elem_size: int) -> int:
    if int(elem_size) not in (1, 2, 4, 8):
        raise ProtocolError(f"bslz4 element size must be 1, 2, 4 or 8 bytes, got {elem_size!r}")
    return int(elem_size)


def _raise_for(status: int, what: str, block: int = -1) -> None:
    where = f" (block {block})" if block >= 0 else ""
    raise ProtocolError(f"cannot decode bslz4 {what}{where}: {decode_status_reason(status)} "
                        f"[status {status}]")


def _index_into(payload: np.ndarray, elem_size: int, arrays: tuple, layout: np.ndarray) -> int:
    status = _walk_blocks_kernel(payload, elem_size, *arrays, layout)
    if status != OK:
        _raise_for(status, f"payload of {payload.size} bytes")
    return int(layout[2])


def index_bslz4_blocks(payload_u8, elem_size: int) -> BlockIndex:
    """Index the blocks of one bslz4 payload (header, size prefixes, raw tail).

    Parameters
    ----------
    payload_u8 : ndarray of uint8 (1-D, C-contiguous), bytes or memoryview
        The whole payload including the 12-byte header.
    elem_size : int
        Bytes per element; needed because block element counts are multiples of 8 elements.

    Raises
    ------
    ProtocolError
        If the payload is malformed or truncated (the reason is named).
    """
    payload = _payload_u8(payload_u8)
    elem_size = _check_elem_size(elem_size)
    layout = np.zeros(5, dtype=np.int64)
    status = _header_layout_kernel(payload, elem_size, layout)
    if status != OK:
        _raise_for(status, f"payload of {payload.size} bytes")
    arrays = tuple(np.empty(int(layout[2]), dtype=np.int64) for _ in range(4))
    _index_into(payload, elem_size, arrays, layout)
    return BlockIndex(elem_size, int(layout[0]), int(layout[1]), *arrays,
                      tail_offset=int(layout[3]), tail_elements=int(layout[4]))


def allocate_scratch(block_elements: int, elem_size: int) -> np.ndarray:
    """Scratch for decoding blocks of ``block_elements``: uint64, 2 x the block bytes."""
    return np.empty(2 * (int(block_elements) * int(elem_size) // 8), dtype=np.uint64)


def decode_bslz4_blocks(payload_u8, index: BlockIndex, selected_blocks: np.ndarray,
                        out_u8: np.ndarray, scratch: np.ndarray | None = None) -> int:
    """Decode only ``selected_blocks`` of a payload into their places in ``out_u8``.

    The raw tail (last ``n_elements % 8`` elements) is always copied; every other byte of
    ``out_u8`` outside the selected blocks is left untouched.

    Parameters
    ----------
    payload_u8 : ndarray of uint8 (1-D), bytes or memoryview
        The payload that ``index`` was built from.
    index : BlockIndex
    selected_blocks : ndarray of int64, shape (n_selected,)
        Block ids, e.g. from ``blocks_for_pixels``.
    out_u8 : ndarray of uint8, shape (n_elements * elem_size,), C-contiguous
        uint8 view of the (rows, cols) frame, e.g. ``frame.reshape(-1).view(np.uint8)``.
    scratch : ndarray of uint64, optional
        From ``allocate_scratch(index.block_elements, index.elem_size)``; allocated when
        omitted (pass one to avoid an allocation per frame).

    Returns
    -------
    int
        0 on success, else a negative status (``decode_status_reason``); the kernel never
        reads or writes out of bounds.
    """
    payload = _payload_u8(payload_u8)
    if out_u8.dtype != np.uint8 or out_u8.ndim != 1 or not out_u8.flags.c_contiguous:
        raise ProtocolError(f"out_u8 must be a 1-D C-contiguous uint8 array, got {out_u8.dtype} "
                            f"with shape {out_u8.shape}")
    if scratch is None:
        scratch = allocate_scratch(index.block_elements, index.elem_size)
    elif scratch.dtype != np.uint64 or scratch.ndim != 1 or not scratch.flags.c_contiguous:
        raise ProtocolError(f"scratch must be a 1-D C-contiguous uint64 array, got "
                            f"{scratch.dtype} with shape {scratch.shape}")
    selected = np.ascontiguousarray(selected_blocks, dtype=np.int64)
    failed_block = np.zeros(1, dtype=np.int64)
    return int(_decode_blocks_kernel(
        payload, index.compressed_offset, index.compressed_size, index.element_start,
        index.element_count, index.n_blocks, index.elem_size, selected, scratch, out_u8,
        index.tail_offset, index.tail_elements, failed_block))


def _frame_out(out: np.ndarray | None, dtype: np.dtype, shape: tuple) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype=dtype)
    if out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous \
            or not out.flags.writeable:
        raise ProtocolError(f"out must be a writable C-contiguous {dtype} array of shape "
                            f"{shape}, got {out.dtype} {out.shape}")
    return out


def decode_bslz4(payload, dtype, shape, out: np.ndarray | None = None) -> np.ndarray:
    """Decode a whole bslz4 frame (all blocks and the raw tail).

    Parameters
    ----------
    payload : bytes, memoryview or 1-D uint8 array, including the 12-byte header
    dtype : numpy dtype of the pixels (uint8, uint16, uint32...)
    shape : tuple of int, e.g. (rows, cols)
    out : ndarray of ``dtype`` and ``shape``, C-contiguous, optional

    Returns
    -------
    ndarray of ``dtype`` and ``shape`` (``out`` when given)
    """
    dtype = np.dtype(dtype)
    shape = tuple(int(n) for n in np.atleast_1d(shape))
    index = index_bslz4_blocks(payload, dtype.itemsize)
    if index.n_elements != int(np.prod(shape)):
        raise ProtocolError(f"bslz4 payload holds {index.n_elements} elements of "
                            f"{dtype.itemsize} bytes, expected shape {shape}")
    frame = _frame_out(out, dtype, shape)
    payload_u8 = _payload_u8(payload)
    failed_block = np.zeros(1, dtype=np.int64)
    status = _decode_blocks_kernel(
        payload_u8, index.compressed_offset, index.compressed_size, index.element_start,
        index.element_count, index.n_blocks, index.elem_size,
        np.arange(index.n_blocks, dtype=np.int64),
        allocate_scratch(index.block_elements, index.elem_size),
        frame.reshape(-1).view(np.uint8), index.tail_offset, index.tail_elements, failed_block)
    if status != OK:
        _raise_for(int(status), f"frame of shape {shape}", int(failed_block[0]))
    return frame


def blocks_for_pixels(flat_pixel_indices: np.ndarray, elem_size: int,
                      index: BlockIndex) -> np.ndarray:
    """Unique sorted ids of the blocks that hold the given pixels.

    Pixels in the raw tail (last ``n_elements % 8``) belong to no block: ``decode_bslz4_blocks``
    always copies the tail. Compute this once per geometry; all frames of a series share it.

    Parameters
    ----------
    flat_pixel_indices : ndarray of int64, any shape
        Row-major pixel indices (``row * cols + col``), in ``[0, n_elements)``.
    elem_size : int
        Bytes per pixel; must match ``index.elem_size``.
    index : BlockIndex
        Index of any payload of this frame layout.

    Returns
    -------
    ndarray of int64, shape (n_needed,)
    """
    if int(elem_size) != index.elem_size:
        raise ProtocolError(f"elem_size {elem_size} does not match the index "
                            f"({index.elem_size} bytes per element)")
    flat = np.asarray(flat_pixel_indices, dtype=np.int64).reshape(-1)
    return _blocks_for_pixels(flat, index.n_elements, index.block_elements, index.tail_elements)


def _blocks_for_pixels(flat: np.ndarray, n_elements: int, block_elements: int,
                       tail_elements: int) -> np.ndarray:
    if flat.size and (flat.min() < 0 or flat.max() >= n_elements):
        raise GeometryError(f"pixel indices span [{flat.min()}, {flat.max()}], outside the "
                            f"frame of {n_elements} pixels")
    in_blocks = flat[flat < n_elements - tail_elements]
    return np.unique(in_blocks // block_elements)


def lz4_decompress_into(compressed_u8: np.ndarray, out_u8: np.ndarray) -> int:
    """Decode one raw LZ4 block into ``out_u8`` (uint8, 1-D); returns the decoded length or
    a negative status; never reads or writes outside the two arrays."""
    src = _payload_u8(compressed_u8)
    if out_u8.dtype != np.uint8 or out_u8.ndim != 1 or not out_u8.flags.c_contiguous:
        raise ProtocolError(f"out_u8 must be a 1-D C-contiguous uint8 array, got {out_u8.dtype}")
    return int(_lz4_decompress_kernel(src, 0, src.size, out_u8, 0, out_u8.size))


def bitunshuffle_into(shuffled_u8: np.ndarray, elem_size: int, out_u8: np.ndarray) -> None:
    """Bit-unshuffle one block (``shuffled_u8.size / elem_size`` elements, a multiple of 8)
    into ``out_u8`` (uint8, same size); the inverse of ``bitshuffle.bitshuffle`` with
    ``block_size`` equal to the element count."""
    src = _payload_u8(shuffled_u8)
    elem_size = _check_elem_size(elem_size)
    n_elements = src.size // elem_size
    if n_elements % 8 or src.size % elem_size or out_u8.size != src.size \
            or out_u8.dtype != np.uint8 or not out_u8.flags.c_contiguous:
        raise ProtocolError(f"cannot unshuffle {src.size} bytes of {elem_size}-byte elements "
                            f"into {out_u8.size} bytes: need a multiple of 8 elements")
    tiles = np.empty(src.size // 8, dtype=np.uint64)
    _bitunshuffle_kernel(src, 0, n_elements, elem_size, tiles, 0, out_u8.reshape(-1), 0)


class BslZ4Decoder:
    """Reusable decoder for frames of one dtype and shape; no buffer is allocated per frame.

    Parameters
    ----------
    dtype : numpy dtype of the pixels
    shape : tuple of int, the frame shape (rows, cols)
    block_bytes : int
        Block size the detector writes in the header (EIGER: 8192).

    One owner thread; the ``BlockIndex`` from ``index`` views the decoder's own arrays and is
    overwritten by the next call.
    """

    def __init__(self, dtype, shape, block_bytes: int = 8192) -> None:
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(n) for n in np.atleast_1d(shape))
        self.elem_size = _check_elem_size(self.dtype.itemsize)
        self.n_elements = int(np.prod(self.shape))
        self.block_elements = int(block_bytes) // self.elem_size
        if self.block_elements <= 0 or self.block_elements % 8:
            raise ProtocolError(f"block size {block_bytes} bytes is not a positive multiple of "
                                f"8 elements of {self.elem_size} bytes")
        self.tail_elements = self.n_elements % 8
        n_blocks = -(-(self.n_elements - self.tail_elements) // self.block_elements)
        self._arrays = tuple(np.zeros(n_blocks, dtype=np.int64) for _ in range(4))
        self._layout = np.zeros(5, dtype=np.int64)
        self._scratch = allocate_scratch(self.block_elements, self.elem_size)
        self._all_blocks = np.arange(n_blocks, dtype=np.int64)
        self._failed_block = np.zeros(1, dtype=np.int64)

    @property
    def n_blocks(self) -> int:
        return int(self._all_blocks.size)

    def index(self, payload) -> BlockIndex:
        """Index one payload into the decoder's arrays; raises ProtocolError when it is
        malformed or does not hold a frame of this dtype, shape and block size."""
        payload = _payload_u8(payload)
        _index_into(payload, self.elem_size, self._arrays, self._layout)
        n_elements, block_elements = int(self._layout[0]), int(self._layout[1])
        if n_elements != self.n_elements or block_elements != self.block_elements:
            raise ProtocolError(
                f"bslz4 payload holds {n_elements} elements in blocks of {block_elements}, "
                f"expected {self.n_elements} ({self.shape}) in blocks of {self.block_elements}")
        return BlockIndex(self.elem_size, n_elements, block_elements, *self._arrays,
                          tail_offset=int(self._layout[3]), tail_elements=int(self._layout[4]))

    def blocks_for_pixels(self, flat_pixel_indices: np.ndarray) -> np.ndarray:
        """Unique sorted block ids holding the given row-major pixel indices (int64)."""
        flat = np.asarray(flat_pixel_indices, dtype=np.int64).reshape(-1)
        return _blocks_for_pixels(flat, self.n_elements, self.block_elements,
                                  self.tail_elements)

    def decode(self, payload, out: np.ndarray | None = None) -> np.ndarray:
        """Decode the whole frame into ``out`` (allocated when omitted) and return it."""
        return self.decode_blocks(payload, self._all_blocks, _frame_out(out, self.dtype,
                                                                          self.shape))

    def decode_blocks(self, payload, selected_blocks: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Decode only ``selected_blocks`` (int64 ids) and the raw tail into the frame ``out``
        (``dtype``, ``shape``, C-contiguous); other pixels keep their values. Returns ``out``."""
        frame = _frame_out(out, self.dtype, self.shape)
        payload = _payload_u8(payload)
        index = self.index(payload)
        status = _decode_blocks_kernel(
            payload, *self._arrays, index.n_blocks, self.elem_size,
            np.ascontiguousarray(selected_blocks, dtype=np.int64), self._scratch,
            frame.reshape(-1).view(np.uint8), index.tail_offset, index.tail_elements,
            self._failed_block)
        if status != OK:
            _raise_for(int(status), f"frame of shape {self.shape}", int(self._failed_block[0]))
        return frame


def _tiny_payload() -> bytes:
    """11 uint8 elements: one 8-element block of zeros (LZ4: 1 literal, a 7-byte match at
    offset 1, an empty final sequence) and a raw tail of 3 bytes."""
    lz4_block = bytes([0x13, 0x00, 0x01, 0x00, 0x00])
    return (np.array([11], ">u8").tobytes() + np.array([8192], ">u4").tobytes()
            + np.array([len(lz4_block)], ">u4").tobytes() + lz4_block + b"\x01\x02\x03")


def warm_up() -> None:
    """Compile (or load from the Numba cache) every kernel for the argument types the
    service uses: read-only payloads (bytes from sockets/files) and writable arrays."""
    payload = _tiny_payload()
    expected = np.array([0] * 8 + [1, 2, 3], dtype=np.uint8)
    for variant in (payload, np.frombuffer(payload, np.uint8).copy()):
        frame = decode_bslz4(variant, np.uint8, (11,))
        if not np.array_equal(frame, expected):
            raise ProtocolError(f"bslz4 warm-up decoded {frame.tolist()}, expected "
                                f"{expected.tolist()}")
        BslZ4Decoder(np.uint8, (11,)).decode(variant)
    out = np.zeros(8, dtype=np.uint8)
    lz4_decompress_into(np.frombuffer(payload, np.uint8)[16:21].copy(), out)
    bitunshuffle_into(out, 1, np.empty(8, dtype=np.uint8))
    logger.debug("bslz4 kernels compiled")
