"""Image payload codecs of the EIGER stream: bitshuffle-LZ4, HDF5-LZ4, raw LZ4 and none.

Pure functions on bytes and numpy arrays (no sockets, no files). The formats are those of
``shared/docs/eiger-stream.md`` section 3:

* ``"bslz4"``: HDF5 bitshuffle-LZ4 chunk (filter 32008). 12-byte header (u64 BE total bytes,
  u32 BE block size in bytes), then per block a u32 BE compressed size and an LZ4 block of
  bit-transposed data; the last ``(n_elements mod 8)`` elements are stored raw.
* ``"lz4-hdf5"``: HDF5-LZ4 framing (filter 32004). Same 12-byte header, then per block a u32
  BE compressed size and an LZ4 block; a block whose compressed size equals its uncompressed
  size is stored raw.
* ``"lz4-raw"``: one LZ4 block without any header (v1 ``lz4<``).
* ``"none"``: raw little-endian pixels.

Every problem with the bytes raises :class:`analysis.errors.ProtocolError` naming the value
at fault; the fast C decoders (bitshuffle, lz4) are only called on payloads whose block table
has been checked to lie inside the buffer, because they do not bound their reads themselves.
"""

from __future__ import annotations

import logging
import struct
from typing import Sequence

import bitshuffle
import lz4.block
import numpy as np

from analysis.errors import ProtocolError

log = logging.getLogger(__name__)

COMPRESSIONS = ("bslz4", "lz4-hdf5", "lz4-raw", "none")
FRAMED_COMPRESSIONS = ("bslz4", "lz4-hdf5")
HEADER_BYTES = 12
DEFAULT_BLOCK_SIZE_BYTES = 8192
_HEADER = struct.Struct(">QI")
_BLOCK_SIZE = struct.Struct(">I")


def _lz4_bound(n_bytes: int) -> int:
    """Largest LZ4 block that ``n_bytes`` of input can compress to (LZ4_COMPRESSBOUND)."""
    return n_bytes + n_bytes // 255 + 16


def _as_dtype(dtype) -> np.dtype:
    try:
        resolved = np.dtype(dtype)
    except TypeError as exc:
        raise ProtocolError(f"unknown pixel dtype {dtype!r}") from exc
    if resolved.kind not in "uif" or resolved.itemsize not in (1, 2, 4, 8):
        raise ProtocolError(f"unsupported pixel dtype {dtype!r}")
    return resolved.newbyteorder("<")


def _as_shape(shape: Sequence[int]) -> tuple[int, int]:
    try:
        rows, cols = (int(n) for n in shape)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"image shape {shape!r} is not (rows, columns)") from exc
    if rows < 0 or cols < 0:
        raise ProtocolError(f"image shape {shape!r} has a negative size")
    return rows, cols


def parse_bslz4_header(payload) -> tuple[int, int]:
    """Read the 12-byte header of an HDF5 bitshuffle-LZ4 or HDF5-LZ4 chunk.

    Parameters
    ----------
    payload : bytes-like
        The framed chunk.

    Returns
    -------
    total_bytes, block_size_bytes : int
        Uncompressed size of the whole chunk and the block size, both in bytes.
    """
    if len(payload) < HEADER_BYTES:
        raise ProtocolError(
            f"truncated blob: {len(payload)} bytes, shorter than the {HEADER_BYTES}-byte header")
    return _HEADER.unpack_from(payload, 0)


def check_framed_header(payload, compression: str, shape: Sequence[int], itemsize: int) -> None:
    """Check the 12-byte header of a framed payload against the image it should hold.

    Cheap (reads 12 bytes): used when a message is decoded, before any decompression.

    Parameters
    ----------
    payload : bytes-like
    compression : {"bslz4", "lz4-hdf5"}
    shape : (rows, columns)
    itemsize : int
        Bytes per pixel.
    """
    rows, cols = _as_shape(shape)
    total_bytes, block_bytes = parse_bslz4_header(payload)
    expected = rows * cols * itemsize
    if total_bytes != expected:
        raise ProtocolError(
            f"wrong size: {compression} header says {total_bytes} uncompressed bytes, "
            f"image {rows}x{cols}x{itemsize} B needs {expected}")
    if block_bytes == 0:
        raise ProtocolError(f"{compression} header has block size 0")
    if compression == "bslz4" and block_bytes % (8 * itemsize):
        raise ProtocolError(
            f"bslz4 block size {block_bytes} B is not a multiple of 8 elements of {itemsize} B")


def _walk_bslz4_blocks(payload, total_bytes: int, block_bytes: int, itemsize: int) -> None:
    """Check that every bitshuffle block lies inside ``payload`` and nothing is left over.

    A tight loop (about 1 ms for a 4M 32-bit frame): bitshuffle's C decoder trusts these
    sizes and would read outside the buffer.
    """
    n_elements = total_bytes // itemsize
    block_elements = block_bytes // itemsize
    n_full = n_elements // block_elements
    last_elements = n_elements % block_elements
    last_elements -= last_elements % 8
    unpack = _BLOCK_SIZE.unpack_from
    bound = _lz4_bound(block_bytes)
    offset, index, length = HEADER_BYTES, 0, len(payload)
    try:
        for index in range(n_full):
            (csize,) = unpack(payload, offset)
            if csize == 0 or csize > bound:
                raise ProtocolError(f"bslz4 block {index} has impossible compressed size "
                                    f"{csize} B for {block_bytes} B of data")
            offset += 4 + csize
        if last_elements:
            index = n_full
            (csize,) = unpack(payload, offset)
            if csize == 0 or csize > _lz4_bound(last_elements * itemsize):
                raise ProtocolError(f"bslz4 block {index} has impossible compressed size "
                                    f"{csize} B for {last_elements * itemsize} B of data")
            offset += 4 + csize
    except struct.error:
        raise ProtocolError(f"truncated blob: bslz4 block {index} starts at byte {offset} "
                            f"of {length}") from None
    expected_end = offset + (n_elements % 8) * itemsize
    if expected_end > length:
        raise ProtocolError(
            f"truncated blob: bslz4 payload has {length} bytes, its blocks need {expected_end}")
    if expected_end < length:
        raise ProtocolError(
            f"bslz4 payload has {length - expected_end} unexpected trailing bytes")


def _decompress_bslz4(payload, dtype: np.dtype, shape: tuple[int, int]) -> np.ndarray:
    total_bytes, block_bytes = parse_bslz4_header(payload)
    check_framed_header(payload, "bslz4", shape, dtype.itemsize)
    _walk_bslz4_blocks(payload, total_bytes, block_bytes, dtype.itemsize)
    data = np.frombuffer(payload, np.uint8)[HEADER_BYTES:]
    try:
        return bitshuffle.decompress_lz4(data, shape, dtype, block_bytes // dtype.itemsize)
    except (RuntimeError, ValueError) as exc:
        raise ProtocolError(f"corrupt bslz4 payload: {exc}") from exc


def _lz4_block(block, n_bytes: int, what: str) -> bytes:
    try:
        decoded = lz4.block.decompress(block, uncompressed_size=n_bytes)
    except lz4.block.LZ4BlockError as exc:
        raise ProtocolError(f"corrupt {what}: {exc}") from exc
    if len(decoded) != n_bytes:
        raise ProtocolError(f"wrong size: {what} decompressed to {len(decoded)} bytes, "
                            f"expected {n_bytes}")
    return decoded


def _decompress_lz4_hdf5(payload, out_bytes: np.ndarray) -> None:
    """Decode HDF5-LZ4 framing into ``out_bytes`` (uint8, the image's bytes)."""
    total_bytes, block_bytes = parse_bslz4_header(payload)
    view = memoryview(payload).cast("B")
    offset, produced, index, length = HEADER_BYTES, 0, 0, len(view)
    while produced < total_bytes:
        n = min(block_bytes, total_bytes - produced)
        if offset + 4 > length:
            raise ProtocolError(
                f"truncated blob: lz4-hdf5 block {index} starts at byte {offset} of {length}")
        (csize,) = _BLOCK_SIZE.unpack_from(view, offset)
        offset += 4
        if csize == 0 or csize > _lz4_bound(n):
            raise ProtocolError(
                f"lz4-hdf5 block {index} has impossible compressed size {csize} B for {n} B")
        if offset + csize > length:
            raise ProtocolError(
                f"truncated blob: lz4-hdf5 block {index} needs bytes up to {offset + csize}, "
                f"payload has {length}")
        block = view[offset:offset + csize]
        if csize == n:  # stored raw: compression did not pay
            out_bytes[produced:produced + n] = np.frombuffer(block, np.uint8)
        else:
            decoded = _lz4_block(block, n, f"lz4-hdf5 block {index}")
            out_bytes[produced:produced + n] = np.frombuffer(decoded, np.uint8)
        offset += csize
        produced += n
        index += 1
    if offset != length:
        raise ProtocolError(f"lz4-hdf5 payload has {length - offset} unexpected trailing bytes")


def _check_out(out: np.ndarray, shape: tuple[int, int], dtype: np.dtype) -> None:
    if not isinstance(out, np.ndarray):
        raise ValueError(f"out must be a numpy array, got {type(out).__name__}")
    if out.shape != shape or out.dtype != dtype:
        raise ValueError(f"out has shape {out.shape} dtype {out.dtype}, "
                         f"needs shape {shape} dtype {dtype}")
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise ValueError("out must be C-contiguous and writeable")


def decompress(payload, compression: str, dtype, shape: Sequence[int],
               out: np.ndarray | None = None) -> np.ndarray:
    """Decode one image payload into pixels.

    Parameters
    ----------
    payload : bytes-like
        The compressed bytes exactly as the detector sent them.
    compression : {"bslz4", "lz4-hdf5", "lz4-raw", "none"}
    dtype : str or numpy dtype
        Pixel type, e.g. ``"uint32"`` (little-endian on the wire).
    shape : (rows, columns)
    out : ndarray, optional
        Preallocated C-contiguous writeable array of ``shape`` and ``dtype`` to fill.

    Returns
    -------
    ndarray of ``dtype``, shape (rows, columns)
        ``out`` when given, else a new writeable array.

    Raises
    ------
    ProtocolError
        Unknown compression or dtype, truncated or corrupt payload, size mismatch.
    ValueError
        ``out`` does not fit.
    """
    pixel_dtype = _as_dtype(dtype)
    rows_cols = _as_shape(shape)
    if out is not None:
        _check_out(out, rows_cols, pixel_dtype)
    n_bytes = rows_cols[0] * rows_cols[1] * pixel_dtype.itemsize
    if compression == "bslz4":
        image = _decompress_bslz4(payload, pixel_dtype, rows_cols)
        if out is None:
            return image
        out[...] = image
        return out
    target = np.empty(rows_cols, pixel_dtype) if out is None else out
    target_bytes = target.reshape(-1).view(np.uint8)
    if compression == "lz4-hdf5":
        check_framed_header(payload, "lz4-hdf5", rows_cols, pixel_dtype.itemsize)
        _decompress_lz4_hdf5(payload, target_bytes)
    elif compression == "lz4-raw":
        target_bytes[:] = np.frombuffer(_lz4_block(payload, n_bytes, "lz4-raw payload"), np.uint8)
    elif compression == "none":
        if len(payload) != n_bytes:
            raise ProtocolError(f"wrong size: uncompressed payload has {len(payload)} bytes, "
                                f"image {rows_cols[0]}x{rows_cols[1]} {pixel_dtype.name} "
                                f"needs {n_bytes}")
        target_bytes[:] = np.frombuffer(payload, np.uint8)
    else:
        raise ProtocolError(f"unknown compression {compression!r}; known: {COMPRESSIONS}")
    return target


def _lz4_hdf5_frame(data: bytes, block_bytes: int) -> bytes:
    if len(data):
        block_bytes = min(block_bytes, len(data))  # as the HDF5-LZ4 filter does
    pieces = [_HEADER.pack(len(data), block_bytes)]
    for start in range(0, len(data), block_bytes):
        block = data[start:start + block_bytes]
        packed = lz4.block.compress(block, store_size=False)
        if len(packed) >= len(block):
            packed = block  # HDF5-LZ4 stores a block raw when compression does not pay
        pieces.append(_BLOCK_SIZE.pack(len(packed)))
        pieces.append(packed)
    return b"".join(pieces)


def compress(array: np.ndarray, compression: str, *,
             block_size_bytes: int = DEFAULT_BLOCK_SIZE_BYTES) -> bytes:
    """Encode an image the way an EIGER does (for simulators and tests).

    Parameters
    ----------
    array : ndarray, shape (rows, columns)
        Pixels; written little-endian.
    compression : {"bslz4", "lz4-hdf5", "lz4-raw", "none"}
    block_size_bytes : int
        Block size of the framed formats (8192, as EIGER detectors and the HDF5 filters use).

    Returns
    -------
    bytes
        ``"bslz4"`` is byte-identical to the chunk h5py writes with
        ``hdf5plugin.Bitshuffle(cname="lz4")``.
    """
    data = np.ascontiguousarray(array, dtype=np.asarray(array).dtype.newbyteorder("<"))
    itemsize = data.dtype.itemsize
    if compression == "bslz4":
        if block_size_bytes % (8 * itemsize):
            raise ValueError(f"bslz4 block size {block_size_bytes} B is not a multiple of "
                             f"8 elements of {itemsize} B")
        body = bitshuffle.compress_lz4(data, block_size=block_size_bytes // itemsize)
        return _HEADER.pack(data.nbytes, block_size_bytes) + body.tobytes()
    if compression == "lz4-hdf5":
        if block_size_bytes <= 0:
            raise ValueError(f"lz4-hdf5 block size must be positive, got {block_size_bytes}")
        return _lz4_hdf5_frame(data.tobytes(), block_size_bytes)
    if compression == "lz4-raw":
        return lz4.block.compress(data.tobytes(), store_size=False)
    if compression == "none":
        return data.tobytes()
    raise ProtocolError(f"unknown compression {compression!r}; known: {COMPRESSIONS}")
