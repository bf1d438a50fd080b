"""stream.codecs against independent decoders, on real detector payloads and on synthetic ones.

The decoders compared are listed in DECODERS, one line each; add a decoder there and every
payload of every capture and HDF5 data file is checked against it.
"""

from __future__ import annotations

import struct
from pathlib import Path

import bitshuffle
import h5py
import hdf5plugin
import lz4.block
import numpy as np
import pytest
from dectris.compression import decompress as dectris_decompress
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.errors import ProtocolError
from conftest import read_zmqcap
from stream.codecs import compress, decompress, parse_bslz4_header
from stream.protocol import decode_message

H5_FILTERS = {
    "bslz4": hdf5plugin.Bitshuffle(cname="lz4"),
    "lz4-hdf5": hdf5plugin.LZ4(),
}


def _ours(payload, compression, dtype, shape, scratch):
    return decompress(payload, compression, dtype, shape)


def _ours_into_out(payload, compression, dtype, shape, scratch):
    out = np.full(shape, 7, dtype=dtype)
    result = decompress(payload, compression, dtype, shape, out=out)
    assert result is out
    return out


def _dectris(payload, compression, dtype, shape, scratch):
    algorithm = {"bslz4": "bslz4", "lz4-hdf5": "lz4"}[compression]
    raw = dectris_decompress(bytes(payload), algorithm, elem_size=np.dtype(dtype).itemsize)
    return np.frombuffer(raw, dtype).reshape(shape)


def _bitshuffle(payload, compression, dtype, shape, scratch):
    _, block_bytes = struct.unpack(">QI", bytes(payload[:12]))
    dtype = np.dtype(dtype)
    return bitshuffle.decompress_lz4(np.frombuffer(payload, np.uint8)[12:], shape, dtype,
                                     block_bytes // dtype.itemsize)


def _lz4_raw_block(payload, compression, dtype, shape, scratch):
    n_bytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = lz4.block.decompress(bytes(payload), uncompressed_size=n_bytes)
    return np.frombuffer(raw, dtype).reshape(shape)


def _h5py_chunk(payload, compression, dtype, shape, scratch: h5py.File):
    """Write the payload as the chunk of a filtered dataset, let HDF5 decode it."""
    name = f"chunk_{len(scratch)}"
    dataset = scratch.create_dataset(name, shape=(1, *shape), dtype=dtype, chunks=(1, *shape),
                                     **H5_FILTERS[compression])
    dataset.id.write_direct_chunk((0, 0, 0), bytes(payload))
    return dataset[0]


def _numba_bslz4(payload, compression, dtype, shape, scratch):
    from stream.bslz4_kernel import decode_bslz4

    return decode_bslz4(payload, dtype, shape)


DECODERS = [
    # (name, compressions it decodes, function(payload, compression, dtype, shape, h5 scratch))
    ("braggmap", {"bslz4", "lz4-hdf5", "lz4-raw", "none"}, _ours),
    ("braggmap out=", {"bslz4", "lz4-hdf5", "lz4-raw", "none"}, _ours_into_out),
    ("dectris.compression", {"bslz4", "lz4-hdf5"}, _dectris),
    ("bitshuffle", {"bslz4"}, _bitshuffle),
    ("braggmap Numba (stream.bslz4_kernel)", {"bslz4"}, _numba_bslz4),
    ("lz4.block", {"lz4-raw"}, _lz4_raw_block),
    ("h5py+hdf5plugin", {"bslz4", "lz4-hdf5"}, _h5py_chunk),
]


def _assert_all_decoders_agree(payload, compression, dtype, shape, scratch, reference=None):
    results = {}
    for name, supported, decode in DECODERS:
        if compression in supported:
            image = decode(payload, compression, dtype, shape, scratch)
            assert image.shape == tuple(shape) and image.dtype == np.dtype(dtype), name
            results[name] = image
    assert len(results) >= 2 or reference is not None, f"only {list(results)} for {compression}"
    expected = reference if reference is not None else results["braggmap"]
    for name, image in results.items():
        np.testing.assert_array_equal(image, expected, err_msg=f"{name} disagrees")
    return expected


@pytest.fixture
def scratch(tmp_path):
    with h5py.File(tmp_path / "scratch.h5", "w") as handle:
        yield handle


@pytest.mark.parametrize("capture", ["eiger1m_stream_v1.zmqcap.gz", "eiger_stream_v2.zmqcap.gz"])
def test_stream_capture_payloads_decode_identically(captures_dir, scratch, capture):
    n_images = 0
    for parts in read_zmqcap(captures_dir / capture):
        message = decode_message(parts)
        if not hasattr(message, "payload"):
            continue
        image = _assert_all_decoders_agree(message.payload, message.compression, message.dtype,
                                           message.shape, scratch)
        n_images += 1
        # A real frame: gap pixels hold the NODATA value 2**32-1, the rest are counts.
        assert (image == np.iinfo(image.dtype).max).sum() > 30_000
        assert image[image < np.iinfo(image.dtype).max].max() < 3_000_000
    assert n_images == {"eiger1m_stream_v1.zmqcap.gz": 9, "eiger_stream_v2.zmqcap.gz": 10}[capture]


def _h5_files(captures_dir: Path) -> list[Path]:
    files = sorted((captures_dir / "h5_eiger_datafiles").glob("*.h5"))
    files.append(captures_dir / "h5_artificial_small" / "test_data_000001.h5")
    return files


def test_hdf5_data_file_chunks_decode_identically(captures_dir, scratch):
    n_chunks = 0
    for path in _h5_files(captures_dir):
        with h5py.File(path, "r") as handle:
            dataset = handle["/entry/data/data"]
            filter_id = next(iter(dataset._filters))
            compression = {"32008": "bslz4", "32004": "lz4-hdf5"}[filter_id]
            for index in range(dataset.shape[0]):
                _, chunk = dataset.id.read_direct_chunk((index, 0, 0))
                reference = dataset[index]
                _assert_all_decoders_agree(chunk, compression, dataset.dtype.name,
                                           dataset.shape[1:], scratch, reference=reference)
                n_chunks += 1
    assert n_chunks == 12 * 2 + 5


def test_eiger1_lz4_chunk_without_its_16_byte_prefix_is_a_raw_lz4_block(captures_dir, scratch):
    name = "eiger1_testmode10_2datafiles_4images_lz4_data_000001.h5"
    path = captures_dir / "h5_eiger_datafiles" / name
    with h5py.File(path, "r") as handle:
        dataset = handle["/entry/data/data"]
        _, chunk = dataset.id.read_direct_chunk((0, 0, 0))
        total, block = parse_bslz4_header(chunk)
        assert total == block == dataset[0].nbytes  # one block covering the frame
        _assert_all_decoders_agree(chunk[16:], "lz4-raw", "uint16", dataset.shape[1:], scratch,
                                   reference=dataset[0])


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32"])
@pytest.mark.parametrize("shape", [(2167, 2070), (37, 53), (1, 1003), (3, 8)])
def test_bslz4_compress_is_byte_identical_to_the_hdf5_filter(scratch, dtype, shape):
    rng = np.random.default_rng(sum(shape))
    image = rng.poisson(2.0, size=shape).astype(dtype)
    image[::17] = np.iinfo(dtype).max
    dataset = scratch.create_dataset("x", data=image[None], chunks=(1, *shape),
                                     **hdf5plugin.Bitshuffle(cname="lz4"))
    _, chunk = dataset.id.read_direct_chunk((0, 0, 0))
    ours = compress(image, "bslz4")
    assert ours == chunk
    assert parse_bslz4_header(ours) == (image.nbytes, 8192)


@pytest.mark.parametrize("compression", ["bslz4", "lz4-hdf5", "lz4-raw", "none"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32"])
def test_compress_then_every_decoder_gives_the_image_back(scratch, compression, dtype):
    rng = np.random.default_rng(3)
    image = rng.integers(0, np.iinfo(dtype).max, size=(129, 67), dtype=dtype)
    image[:40] = 5  # compressible rows too, so lz4-hdf5 has compressed and raw blocks
    payload = compress(image, compression)
    _assert_all_decoders_agree(payload, compression, dtype, image.shape, scratch,
                               reference=image)


def test_lz4_hdf5_stores_incompressible_blocks_raw():
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, size=(64, 256), dtype=np.uint8)  # 2 blocks of 8192 B
    payload = compress(image, "lz4-hdf5")
    assert parse_bslz4_header(payload) == (image.nbytes, 8192)
    assert struct.unpack(">I", payload[12:16])[0] == 8192  # stored raw
    assert payload[16:16 + 8192] == image.tobytes()[:8192]
    np.testing.assert_array_equal(decompress(payload, "lz4-hdf5", "uint8", image.shape), image)


@settings(max_examples=60, deadline=None, database=None)
@given(rows=st.integers(0, 40), cols=st.integers(1, 300),
       dtype=st.sampled_from(["uint8", "uint16", "uint32"]),
       compression=st.sampled_from(["bslz4", "lz4-hdf5", "lz4-raw", "none"]),
       seed=st.integers(0, 2**32 - 1))
def test_round_trip_of_any_image(rows, cols, dtype, compression, seed):
    rng = np.random.default_rng(seed)
    image = rng.geometric(0.3, size=(rows, cols)).astype(dtype)
    decoded = decompress(compress(image, compression), compression, dtype, (rows, cols))
    np.testing.assert_array_equal(decoded, image)
    assert decoded.flags.writeable


def test_decompress_accepts_memoryview_and_numpy_dtype():
    image = np.arange(300, dtype=np.uint16).reshape(15, 20)
    payload = memoryview(compress(image, "bslz4"))
    np.testing.assert_array_equal(decompress(payload, "bslz4", np.dtype("<u2"), [15, 20]), image)


# ------------------------------------------------------------------ malformed payloads


def _image(dtype="uint32", shape=(64, 100)):
    rng = np.random.default_rng(11)
    return rng.poisson(4.0, size=shape).astype(dtype)


@pytest.mark.parametrize("compression", ["bslz4", "lz4-hdf5"])
def test_truncated_framed_payload_is_reported(compression):
    image = _image()
    payload = compress(image, compression)
    for cut in (5, 12, 20, len(payload) // 2, len(payload) - 1):
        with pytest.raises(ProtocolError, match="truncated blob"):
            decompress(payload[:cut], compression, "uint32", image.shape)


@pytest.mark.parametrize("compression", ["bslz4", "lz4-hdf5"])
def test_header_size_must_match_the_image(compression):
    image = _image()
    payload = compress(image, compression)
    with pytest.raises(ProtocolError, match=r"wrong size: .* header says 25600 .* needs 51200"):
        decompress(payload, compression, "uint32", (128, 100))
    with pytest.raises(ProtocolError, match="wrong size"):
        decompress(payload, compression, "uint16", image.shape)


def test_bslz4_block_size_sanity():
    image = _image()
    payload = bytearray(compress(image, "bslz4"))
    payload[8:12] = struct.pack(">I", 100)  # not a multiple of 8 elements
    with pytest.raises(ProtocolError, match="block size 100 B is not a multiple"):
        decompress(bytes(payload), "bslz4", "uint32", image.shape)
    payload[8:12] = struct.pack(">I", 0)
    with pytest.raises(ProtocolError, match="block size 0"):
        decompress(bytes(payload), "bslz4", "uint32", image.shape)


def test_impossible_compressed_block_size_is_caught_before_the_c_decoder():
    image = _image()
    for compression in ("bslz4", "lz4-hdf5"):
        payload = bytearray(compress(image, compression))
        payload[12:16] = struct.pack(">I", 0xFFFF_FFF0)
        with pytest.raises(ProtocolError, match="impossible compressed size 4294967280"):
            decompress(bytes(payload), compression, "uint32", image.shape)


def test_trailing_bytes_and_corrupt_blocks():
    image = _image()
    for compression in ("bslz4", "lz4-hdf5"):
        payload = compress(image, compression)
        with pytest.raises(ProtocolError, match="3 unexpected trailing bytes"):
            decompress(payload + b"abc", compression, "uint32", image.shape)
    payload = bytearray(compress(image, "bslz4"))
    payload[20:40] = b"\xff" * 20  # garbage inside the first LZ4 block
    with pytest.raises(ProtocolError, match="corrupt bslz4 payload"):
        decompress(bytes(payload), "bslz4", "uint32", image.shape)


def test_lz4_raw_and_none_size_checks():
    image = _image("uint16")
    raw = compress(image, "lz4-raw")
    with pytest.raises(ProtocolError, match="lz4-raw payload"):
        decompress(raw, "lz4-raw", "uint16", (32, 100))
    with pytest.raises(ProtocolError, match="corrupt lz4-raw payload"):
        decompress(raw[: len(raw) // 2], "lz4-raw", "uint16", image.shape)
    with pytest.raises(ProtocolError, match="uncompressed payload has 12800 bytes"):
        decompress(image.tobytes(), "none", "uint16", (64, 101))


def test_unknown_compression_dtype_and_bad_out():
    image = _image()
    with pytest.raises(ProtocolError, match="unknown compression 'zstd'"):
        decompress(b"", "zstd", "uint32", image.shape)
    with pytest.raises(ProtocolError, match="unknown pixel dtype 'pixel'"):
        decompress(b"", "none", "pixel", image.shape)
    payload = compress(image, "bslz4")
    with pytest.raises(ValueError, match="out has shape"):
        decompress(payload, "bslz4", "uint32", image.shape, out=np.empty((2, 2), np.uint32))
    with pytest.raises(ValueError, match="out has shape"):
        decompress(payload, "bslz4", "uint32", image.shape, out=np.empty(image.shape, np.int32))


def test_parse_bslz4_header_of_a_short_buffer():
    assert parse_bslz4_header(struct.pack(">QI", 17942760, 8192)) == (17942760, 8192)
    with pytest.raises(ProtocolError, match="truncated blob: 11 bytes"):
        parse_bslz4_header(b"\0" * 11)
