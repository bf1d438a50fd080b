"""The Numba bitshuffle-LZ4 decoder against the stock decoders and real EIGER captures."""

from __future__ import annotations

import json
import struct
import zlib

import bitshuffle
import h5py
import hdf5plugin  # noqa: F401  (registers the HDF5 filters for the capture files)
import lz4.block
import numpy as np
import pytest
from dectris.compression import decompress
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis.errors import GeometryError, ProtocolError
from conftest import read_zmqcap
from stream.bslz4_kernel import (
    BAD_BLOCK_ID,
    OK,
    BslZ4Decoder,
    allocate_scratch,
    bitunshuffle_into,
    blocks_for_pixels,
    decode_bslz4,
    decode_bslz4_blocks,
    index_bslz4_blocks,
    lz4_decompress_into,
    warm_up,
)

BLOCK_BYTES = 8192
DTYPES = [np.uint8, np.uint16, np.uint32]
# 1003 elements; 37 x 29; frames whose last block is partial (u32: 2048 per block);
# raw tails of 1..7 elements; fewer than 8 elements (no block at all); whole blocks only.
SHAPES = [(1003,), (37, 29), (3, 2731), (1, 802), (2, 4099), (4, 1001), (5, 1001), (5, 811),
          (1, 7), (1, 3), (2048,), (64, 64)]


def bslz4_payload(arr: np.ndarray, block_bytes: int = BLOCK_BYTES) -> bytes:
    """EIGER blob: 12-byte header + bitshuffle's block stream (as in eiger-stream.md s.3)."""
    return (struct.pack(">QI", arr.nbytes, block_bytes)
            + bitshuffle.compress_lz4(arr, block_size=block_bytes // arr.itemsize).tobytes())


def make_data(kind: str, dtype, shape, rng) -> np.ndarray:
    info = np.iinfo(dtype)
    if kind == "random":
        return rng.integers(0, info.max, size=shape, dtype=dtype, endpoint=True)
    frame = np.minimum(rng.poisson(0.2, size=shape), info.max).astype(dtype)   # mostly zero
    flat = frame.reshape(-1)
    hot = rng.integers(0, flat.size, size=max(1, flat.size // 200))
    flat[hot] = np.minimum(rng.poisson(300, size=hot.size), info.max).astype(dtype)
    flat[-1:] = info.max                                   # a saturated / gap pixel at the end
    return frame


def stock_decodes(payload: bytes, dtype, shape) -> tuple[np.ndarray, np.ndarray]:
    dtype = np.dtype(dtype)
    by_bitshuffle = bitshuffle.decompress_lz4(np.frombuffer(payload, np.uint8)[12:], shape,
                                              dtype, BLOCK_BYTES // dtype.itemsize)
    by_dectris = np.frombuffer(decompress(payload, "bslz4", elem_size=dtype.itemsize),
                               dtype).reshape(shape)
    return by_bitshuffle, by_dectris


@pytest.fixture(scope="module", autouse=True)
def compiled_kernels():
    warm_up()


@pytest.mark.parametrize("kind", ["random", "sparse"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_whole_frame_matches_stock_decoders(dtype, shape, kind):
    rng = np.random.default_rng(zlib.crc32(repr((np.dtype(dtype).str, shape, kind)).encode()))
    frame = make_data(kind, dtype, shape, rng)
    payload = bslz4_payload(frame)
    by_bitshuffle, by_dectris = stock_decodes(payload, dtype, shape)
    ours = decode_bslz4(payload, dtype, shape)
    np.testing.assert_array_equal(ours, frame)
    np.testing.assert_array_equal(ours, by_bitshuffle)
    np.testing.assert_array_equal(ours, by_dectris)
    # the reusable decoder, from bytes and from a writable array, into a given `out`
    decoder = BslZ4Decoder(dtype, shape)
    out = np.full(shape, 7, dtype=dtype)
    assert decoder.decode(np.frombuffer(payload, np.uint8).copy(), out) is out
    np.testing.assert_array_equal(out, frame)


def test_index_layout_of_partial_block_and_tail():
    frame = np.arange(9003, dtype=np.uint32)      # 4 full blocks of 2048, 808 + 3 raw elements
    payload = bslz4_payload(frame)
    index = index_bslz4_blocks(payload, 4)
    assert (index.elem_size, index.n_elements, index.block_elements) == (4, 9003, 2048)
    np.testing.assert_array_equal(index.element_start, [0, 2048, 4096, 6144, 8192])
    np.testing.assert_array_equal(index.element_count, [2048, 2048, 2048, 2048, 808])
    assert index.tail_elements == 3
    assert index.tail_offset == len(payload) - 12
    # walking the prefixes by hand gives the same compressed offsets and sizes
    position = 12
    for offset, size in zip(index.compressed_offset, index.compressed_size):
        assert struct.unpack(">I", payload[position:position + 4])[0] == size
        assert offset == position + 4
        position += 4 + size
    assert position == index.tail_offset
    assert payload[position:] == frame[-3:].tobytes()


# --- real detector data ------------------------------------------------------------------------

def test_every_chunk_of_the_eiger_bslz4_data_files(captures_dir):
    files = sorted((captures_dir / "h5_eiger_datafiles").glob("*bslz4*.h5"))
    assert len(files) == 8
    n_chunks = 0
    for path in files:
        with h5py.File(path, "r") as handle:
            dataset = handle["/entry/data/data"]
            decoder = BslZ4Decoder(dataset.dtype, dataset.shape[1:])
            for i in range(dataset.shape[0]):
                chunk = dataset.id.read_direct_chunk((i, 0, 0))[1]
                expected = dataset[i]                       # h5py + hdf5plugin filter 32008
                ours = decode_bslz4(chunk, dataset.dtype, dataset.shape[1:])
                np.testing.assert_array_equal(ours, expected, err_msg=f"{path.name}[{i}]")
                np.testing.assert_array_equal(
                    ours, np.frombuffer(decompress(chunk, "bslz4",
                                                   elem_size=dataset.dtype.itemsize),
                                        dataset.dtype).reshape(ours.shape))
                np.testing.assert_array_equal(decoder.decode(chunk), expected)
                n_chunks += 1
    assert n_chunks == 16


def test_every_image_of_the_stream_v1_capture(captures_dir):
    messages = read_zmqcap(captures_dir / "eiger1m_stream_v1.zmqcap.gz")
    images = messages[1:10]
    assert len(images) == 9
    for parts in images:
        data_header = json.loads(parts[1])
        assert data_header["encoding"] == "bs32-lz4<"
        shape = tuple(data_header["shape"][::-1])           # [x, y] -> (rows, cols)
        assert shape == (1065, 1030) and data_header["type"] == "uint32"
        blob = parts[2]
        ours = decode_bslz4(blob, np.uint32, shape)
        by_bitshuffle, by_dectris = stock_decodes(blob, np.uint32, shape)
        np.testing.assert_array_equal(ours, by_bitshuffle)
        np.testing.assert_array_equal(ours, by_dectris)


# --- selective decode --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_selected_blocks_decode_exactly_their_pixels(dtype):
    rng = np.random.default_rng(3)
    shape = (203, 167)                               # 33901 pixels: partial last block, tail 5
    frame = make_data("sparse", dtype, shape, rng)
    payload = bslz4_payload(frame)
    index = index_bslz4_blocks(payload, np.dtype(dtype).itemsize)
    pixels = rng.integers(0, frame.size // 8, size=20)             # early blocks only, and
    pixels = np.append(pixels, [frame.size - 1, frame.size - 6])     # tail and partial block
    blocks = blocks_for_pixels(pixels, np.dtype(dtype).itemsize, index)
    assert np.all(np.diff(blocks) > 0) and blocks.dtype == np.int64
    assert index.n_blocks - 1 in blocks
    sentinel = np.iinfo(dtype).max // 3
    out = np.full(shape, sentinel, dtype=dtype)
    status = decode_bslz4_blocks(payload, index, blocks, out.reshape(-1).view(np.uint8),
                                 allocate_scratch(index.block_elements, index.elem_size))
    assert status == OK
    flat_out, flat_truth = out.reshape(-1), frame.reshape(-1)
    np.testing.assert_array_equal(flat_out[pixels], flat_truth[pixels])
    in_selected = np.zeros(frame.size, dtype=bool)
    for block in blocks:
        start, count = index.element_start[block], index.element_count[block]
        in_selected[start:start + count] = True
    in_selected[frame.size - index.tail_elements:] = True         # the raw tail is always copied
    np.testing.assert_array_equal(flat_out[in_selected], flat_truth[in_selected])
    assert np.all(flat_out[~in_selected] == sentinel)
    assert (~in_selected).sum() >= frame.size // 2


def test_decoder_decode_blocks_and_reuse_across_frames():
    rng = np.random.default_rng(4)
    shape = (97, 211)
    decoder = BslZ4Decoder(np.uint16, shape)
    pixels = np.ravel_multi_index((rng.integers(0, 97, 30), rng.integers(0, 211, 30)), shape)
    blocks = decoder.blocks_for_pixels(pixels)
    out = np.zeros(shape, dtype=np.uint16)
    for _ in range(3):
        frame = make_data("sparse", np.uint16, shape, rng)
        decoder.decode_blocks(bslz4_payload(frame), blocks, out)
        np.testing.assert_array_equal(out.reshape(-1)[pixels], frame.reshape(-1)[pixels])
    np.testing.assert_array_equal(blocks, blocks_for_pixels(
        pixels, 2, index_bslz4_blocks(bslz4_payload(frame), 2)))


def test_bad_block_ids_and_pixels_are_refused():
    frame = np.arange(5000, dtype=np.uint16)
    payload = bslz4_payload(frame)
    index = index_bslz4_blocks(payload, 2)
    out = np.zeros(frame.nbytes, dtype=np.uint8)
    for bad in ([index.n_blocks], [-1], [0, 99]):
        assert decode_bslz4_blocks(payload, index, np.array(bad), out) == BAD_BLOCK_ID
    with pytest.raises(ProtocolError, match="block"):
        BslZ4Decoder(np.uint16, (5000,)).decode_blocks(payload, np.array([7]),
                                                        np.zeros(5000, np.uint16))
    with pytest.raises(GeometryError, match="5000"):
        blocks_for_pixels(np.array([0, 5000]), 2, index)
    with pytest.raises(ProtocolError, match="elem_size"):
        blocks_for_pixels(np.array([0]), 4, index)


def test_decoder_refuses_a_payload_of_another_layout():
    payload = bslz4_payload(np.zeros((10, 100), dtype=np.uint32))
    with pytest.raises(ProtocolError, match="1000 elements"):
        BslZ4Decoder(np.uint32, (10, 101)).decode(payload)
    with pytest.raises(ProtocolError, match="expected shape"):
        decode_bslz4(payload, np.uint32, (11, 100))
    with pytest.raises(ProtocolError, match="out must be"):
        decode_bslz4(payload, np.uint32, (10, 100), out=np.zeros((10, 100), np.int32))
    with pytest.raises(ProtocolError, match="in blocks of"):
        BslZ4Decoder(np.uint32, (10, 100), block_bytes=4096).decode(payload)


# --- LZ4 block kernel --------------------------------------------------------------------------

def repetitive_bytes(draw_seed: int, size: int) -> bytes:
    """Runs of zeros, repeated short motifs and random stretches: long and overlapping matches."""
    rng = np.random.default_rng(draw_seed)
    pieces, total = [], 0
    while total < size:
        choice = rng.integers(0, 3)
        length = int(rng.integers(1, 600))
        if choice == 0:
            piece = bytes(length)
        elif choice == 1:
            motif = rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
            piece = (motif * (length // len(motif) + 1))[:length]
        else:
            piece = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
        pieces.append(piece)
        total += length
    return b"".join(pieces)[:size]


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(min_size=1, max_size=3000),
                      st.builds(repetitive_bytes, st.integers(0, 2**32 - 1),
                                st.integers(1, 20000))),
       high_compression=st.booleans())
def test_lz4_kernel_matches_lz4_block(data, high_compression):
    mode = "high_compression" if high_compression else "default"
    compressed = lz4.block.compress(data, mode=mode, store_size=False)
    guarded = np.full(len(data) + 64, 0xA5, dtype=np.uint8)
    n_decoded = lz4_decompress_into(np.frombuffer(compressed, np.uint8), guarded[:len(data)])
    assert n_decoded == len(data)
    assert guarded[:len(data)].tobytes() == lz4.block.decompress(compressed,
                                                                  uncompressed_size=len(data))
    assert np.all(guarded[len(data):] == 0xA5)
    # one byte less of room is an overflow, never a write past the end
    if len(data) > 1:
        assert lz4_decompress_into(np.frombuffer(compressed, np.uint8),
                                   guarded[:len(data) - 1]) < 0


def test_corrupt_or_truncated_lz4_blocks_give_a_negative_status_and_stay_in_bounds():
    rng = np.random.default_rng(11)
    data = repetitive_bytes(5, 8192)
    compressed = np.frombuffer(lz4.block.compress(data, store_size=False), np.uint8)
    n_negative = 0
    for trial in range(3000):
        corrupt = compressed.copy()
        if trial % 3 == 0:
            corrupt = corrupt[:rng.integers(1, corrupt.size)]          # truncated
        elif trial % 3 == 1:
            where = rng.integers(0, corrupt.size, size=rng.integers(1, 6))
            corrupt[where] = rng.integers(0, 256, size=where.size)    # bytes changed
        else:
            corrupt = rng.integers(0, 256, size=rng.integers(1, 300), dtype=np.uint8)
        source = np.concatenate([corrupt, np.full(64, 0xFF, np.uint8)])  # junk after the end
        out = np.full(8192 + 64, 0x5A, dtype=np.uint8)
        status = lz4_decompress_into(source[:corrupt.size], out[:8192])
        assert -3 <= status <= 8192
        n_negative += status < 0
        assert np.all(out[8192:] == 0x5A)
    assert n_negative > 1500


def test_corrupt_bslz4_payloads_raise_protocol_error_or_decode():
    rng = np.random.default_rng(12)
    frame = make_data("sparse", np.uint32, (60, 70), rng)
    payload = np.frombuffer(bslz4_payload(frame), np.uint8)
    outcomes = {"raised": 0, "decoded": 0}
    for trial in range(600):
        corrupt = payload.copy()
        if trial % 2:
            corrupt = corrupt[:rng.integers(0, corrupt.size)]
        else:
            where = rng.integers(0, corrupt.size, size=rng.integers(1, 4))
            corrupt[where] ^= rng.integers(1, 256, size=where.size).astype(np.uint8)
        try:
            decoded = decode_bslz4(corrupt, np.uint32, frame.shape)
        except ProtocolError as error:
            assert "bslz4" in str(error)
            outcomes["raised"] += 1
        else:
            assert decoded.shape == frame.shape
            outcomes["decoded"] += 1
    assert outcomes["raised"] > 300


# --- bit unshuffle and header checks -----------------------------------------------------------

def numpy_bitunshuffle(shuffled_u8: np.ndarray, elem_size: int) -> np.ndarray:
    """Plain NumPy reference: bit-row 8*j + k holds bit k of byte j of element e in bit
    e % 8 of byte e // 8 of that row."""
    n_elements = shuffled_u8.size // elem_size
    bits = np.unpackbits(shuffled_u8, bitorder="little").reshape(8 * elem_size, n_elements)
    return np.packbits(bits.T, axis=1, bitorder="little").reshape(-1)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64])
@pytest.mark.parametrize("n_elements", [8, 64, 1000, 2048])
def test_bitunshuffle_inverts_bitshuffle(dtype, n_elements):
    rng = np.random.default_rng(n_elements)
    values = rng.integers(0, np.iinfo(dtype).max, n_elements, dtype=dtype, endpoint=True)
    shuffled = bitshuffle.bitshuffle(values, block_size=n_elements).view(np.uint8)
    out = np.empty(values.nbytes, dtype=np.uint8)
    bitunshuffle_into(shuffled, values.itemsize, out)
    np.testing.assert_array_equal(out.view(dtype), values)
    np.testing.assert_array_equal(
        out.view(dtype), bitshuffle.bitunshuffle(shuffled.view(dtype), block_size=n_elements))
    np.testing.assert_array_equal(out, numpy_bitunshuffle(shuffled, values.itemsize))


def test_single_bits_land_where_bitshuffle_puts_them():
    for element in (0, 5, 13):
        for bit in (0, 9, 31):
            values = np.zeros(16, dtype=np.uint32)
            values[element] = np.uint32(1) << np.uint32(bit)
            shuffled = bitshuffle.bitshuffle(values, block_size=16).view(np.uint8)
            # bit-row 8*byte + bit_in_byte, element e in bit e % 8 of byte e // 8 of that row
            row, position = bit, element
            expected = np.zeros(64, dtype=np.uint8)
            expected[row * 2 + position // 8] = 1 << (position % 8)
            np.testing.assert_array_equal(shuffled, expected)
            out = np.empty(64, dtype=np.uint8)
            bitunshuffle_into(shuffled, 4, out)
            np.testing.assert_array_equal(out.view(np.uint32), values)


def header(total_bytes: int, block_bytes: int) -> bytes:
    return struct.pack(">QI", total_bytes, block_bytes)


@pytest.mark.parametrize("payload, elem_size, reason", [
    (b"\x00" * 11, 4, "shorter than the 12-byte"),
    (header(4000, 0) + b"\x00" * 20, 4, "block size"),
    (header(4000, 8191) + b"\x00" * 20, 4, "block size"),
    (header(4002, 8192) + b"\x00" * 20, 4, "whole number of elements"),
    (header(2**63 + 8, 8192) + b"\x00" * 20, 4, "whole number of elements"),
    (header(40000, 8192) + b"\x00" * 20, 4, "past the end"),
    (header(4000, 8192) + struct.pack(">I", 0) + b"\x00" * 20, 4, "compressed size is 0"),
    (header(4000, 8192) + struct.pack(">I", 30) + b"\x00" * 20, 4, "past the end"),
    (header(4000, 8192) + struct.pack(">I", 10**6) + b"\x00" * 20, 4, "larger than any"),
    (header(12, 8192) + b"\x00" * 13, 4, "after the raw tail"),
    (header(12, 8192) + b"\x00" * 11, 4, "inside the raw tail"),
    (header(12, 8192) + b"\x00" * 12, 3, "element size"),
])
def test_malformed_headers_are_named(payload, elem_size, reason):
    with pytest.raises(ProtocolError, match=reason):
        index_bslz4_blocks(payload, elem_size)


def test_a_frame_of_fewer_than_8_elements_is_only_a_raw_tail():
    payload = header(12, 8192) + np.array([1, 2, 3], dtype=np.uint32).tobytes()
    index = index_bslz4_blocks(payload, 4)
    assert index.n_blocks == 0 and index.tail_elements == 3
    np.testing.assert_array_equal(decode_bslz4(payload, np.uint32, (3,)), [1, 2, 3])


def test_eiger_4m_frame_layout():
    """One EIGER X 4M uint32 frame: 2191 blocks of 2048 elements, exact against bitshuffle."""
    rng = np.random.default_rng(21)
    frame = make_data("sparse", np.uint32, (2167, 2070), rng)
    payload = bslz4_payload(frame)
    decoder = BslZ4Decoder(np.uint32, frame.shape)
    assert decoder.n_blocks == 2191
    np.testing.assert_array_equal(decoder.decode(payload), frame)
