"""Fused bitshuffle-LZ4 decode + regroup against decode + regroup_frame and the NumPy reference."""

from __future__ import annotations

import dataclasses
import logging
import struct

import lz4.block
import numpy as np
import pytest
from regroup_checks import assert_same_buffers as _assert_same
from regroup_checks import with_repeated_pixels

from analysis.background import regroup_background
from analysis.errors import ProtocolError
from analysis.geometry import DetectorGeometry
from analysis.peak_model import PeakModel, PeakWindow
from analysis.polar_table import build_polar_table
from analysis.regroup_kernel import (
    RegroupBuffers,
    regroup_frame,
    regroup_frame_reference,
)
from stream import bslz4_regroup
from stream.bslz4_regroup import FusedRegroup
from stream.codecs import compress, decompress

SMALL_SHAPE = (45, 91)          # 4095 pixels: a partial last block and a raw tail of 7 for every block size
NODATA32 = 2**32 - 1


def _check(fused: FusedRegroup, frame: np.ndarray, *, block_size_bytes: int = 8192, reference: bool = True,
           **options) -> RegroupBuffers:
    """The fused result of ``frame``'s payload equals decode + regroup_frame (and the reference)."""
    payload = compress(frame, "bslz4", block_size_bytes=block_size_bytes)
    result = fused.regroup(payload, **options)
    decoded = decompress(payload, "bslz4", frame.dtype, frame.shape)
    _assert_same(result, regroup_frame(decoded, fused.table, **options))
    if reference:
        _assert_same(result, regroup_frame_reference(decoded, fused.table, **options))
    return result


def _with_defects(rng, frame: np.ndarray, table, nodata: int, high: int, n: int = 40) -> np.ndarray:
    """NODATA and high (saturated) pixels inside the windows and the SAXS region."""
    frame = frame.copy()
    flat = frame.reshape(-1)
    for pixels in (table.pixel_index, table.saxs_pixel_index):     # SAXS last: at least n of each there
        chosen = rng.choice(np.unique(pixels), 2 * n, replace=False)
        flat[chosen[:n]] = nodata
        flat[chosen[n:]] = high
    return frame


# --- the default analysis set-up (EIGER X 4M), built once --------------------------------------------------


@pytest.fixture(scope="module")
def default_setup():
    from simulators.synthetic_scan import SyntheticScan, SyntheticScanConfig
    from stream.analysis_setup import AnalysisSetup
    from stream.config_files import load_geometry, load_peak_model

    scan = SyntheticScan(SyntheticScanConfig())
    inside = np.argwhere(scan.truth.maps["sc_mask"] > 0)
    frame = scan.frame(scan.grid.frame_index(*inside[len(inside) // 2]))
    setup = AnalysisSetup.default()
    table = build_polar_table(load_geometry(setup.poni_path), load_peak_model(setup.peaks_path),
                              pixel_mask=scan.pixel_mask)
    background = regroup_background(scan.renderer.background_expected, table).scaled(0.8)
    return table, frame, background


@pytest.fixture(scope="module")
def default_fused(default_setup):
    table = default_setup[0]
    return {np.uint32: FusedRegroup(table, np.uint32), np.uint16: FusedRegroup(table, np.uint16)}


def _as_uint16(frame: np.ndarray) -> np.ndarray:
    return np.where(frame == NODATA32, 65535, np.minimum(frame, 65534)).astype(np.uint16)


@pytest.mark.parametrize("dtype", [np.uint32, np.uint16])
def test_realistic_frames_match_decode_and_regroup(default_setup, default_fused, dtype):
    table, frame, background = default_setup
    fused = default_fused[dtype]
    assert fused.uses_fused_kernel
    frame = frame if dtype == np.uint32 else _as_uint16(frame)
    nodata = int(np.iinfo(dtype).max)
    out = RegroupBuffers.for_table(table)
    result = _check(fused, frame, invalid_value=nodata, background=background, out=out)
    assert result is out
    n_decoded, n_popcounted, _ = fused.last_blocks
    assert n_popcounted > 0.9 * n_decoded                     # sparse frame: almost no block untransposed
    assert result.n_valid.sum() == table.n_entries and result.saxs_n_valid == table.saxs_pixel_index.size
    _check(fused, frame, reference=False)                      # no background, default NODATA, buffers reused

    rng = np.random.default_rng(7 + np.dtype(dtype).itemsize)
    top = int(frame.reshape(-1)[table.pixel_index].max())
    defective = _with_defects(rng, frame, table, nodata, high=top + 50)
    result = _check(fused, defective, saturation_value=top, background=background)
    assert result.n_invalid.sum() > 0 and result.saxs_n_invalid >= 40 and result.saxs_n_saturated >= 40
    assert fused.last_blocks[2] > 0                            # pieces with defects read pixel by pixel
    fused.max_candidates = 0
    try:                                                       # their blocks untransposed instead
        _assert_same(fused.regroup(compress(defective, "bslz4"), saturation_value=top, background=background),
                     result)
        assert 0 < fused.last_blocks[1] < fused.last_blocks[0] and fused.last_blocks[2] == 0
    finally:
        fused.max_candidates = bslz4_regroup.DEFAULT_MAX_CANDIDATES
    result = _check(fused, frame, saturation_value=10, reference=False)
    assert result.n_saturated.sum() + result.saxs_n_saturated > 0


def test_random_high_counts_on_the_default_table(default_setup, default_fused):
    """Many bit planes at every pixel: popcounts over many planes, and the untranspose path."""
    table, _, background = default_setup
    fused = default_fused[np.uint32]
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 4096, table.detector_shape, dtype=np.uint32)     # 12 planes
    default_budget = fused.popcount_budget
    try:
        for budget in (10**9, 0):
            fused.popcount_budget = budget
            _check(fused, frame, background=background, saturation_value=6000, reference=budget == 0)
            assert (fused.last_blocks[1] == fused.last_blocks[0]) == (budget > 0)
    finally:
        fused.popcount_budget = default_budget
    huge = rng.integers(0, NODATA32, table.detector_shape, dtype=np.uint32)     # every plane, NODATA too
    huge.reshape(-1)[table.pixel_index[::997]] = NODATA32
    _check(fused, huge, background=background, saturation_value=2**31, reference=False)
    assert fused.last_blocks[1] < fused.last_blocks[0] // 100            # almost every block untransposed


# --- a small detector: partial last block, raw tail, other block sizes, repeated pixels ----------------------


@pytest.fixture(scope="module")
def small_table():
    rows, columns = SMALL_SHAPE
    geometry = DetectorGeometry(distance_m=0.05, poni1_m=22.4 * 75e-6, poni2_m=45.3 * 75e-6, rot1_rad=0.0,
                                rot2_rad=0.0, rot3_rad=0.0, wavelength_m=8.984e-11, pixel1_m=75e-6,
                                pixel2_m=75e-6, shape=(rows, columns))
    model = PeakModel(peaks=(
        PeakWindow("waxs_100", "waxs", (1.0, 3.0), (135.0, 215.0), 8, 12, hkl=(1, 0, 0)),
        PeakWindow("waxs_010", "waxs", (1.5, 4.0), (-40.0, 40.0), 10, 9, hkl=(0, 1, 0)),
        PeakWindow("waxs_001", "waxs", (2.0, 4.0), (50.0, 120.0), 6, 14, hkl=(0, 0, 1)),
        PeakWindow("waxs_110", "waxs", (4.0, 8.0), (-180.0, 180.0), 5, 16, hkl=(1, 1, 0)),   # reaches the corners
    ), saxs_integration_q_max_nm=1.2)
    mask = np.zeros(SMALL_SHAPE, np.uint32)
    mask[::7, ::5] = 1
    table = build_polar_table(geometry, model, pixel_mask=mask)
    assert table.pixel_index.max() >= 4088                                        # pixels in the raw tail
    return table, mask


def _small_frame(rng, mask, dtype, top):
    frame = rng.integers(0, top, SMALL_SHAPE).astype(dtype)
    frame[rng.random(SMALL_SHAPE) < 0.6] = 0                       # sparse, as real frames
    frame[mask != 0] = np.iinfo(dtype).max                          # masked pixels are NODATA on EIGER frames
    return frame


@pytest.mark.parametrize("dtype", [np.uint32, np.uint16])
@pytest.mark.parametrize("block_size_bytes", [8192, 4096, 512, 96])
def test_small_detector_partial_block_tail_and_block_sizes(small_table, dtype, block_size_bytes):
    table, mask = small_table
    rng = np.random.default_rng(block_size_bytes + np.dtype(dtype).itemsize)
    background = regroup_background(rng.random(SMALL_SHAPE).astype(np.float32) * 3, table).scaled(1.3)
    fused = FusedRegroup(table, dtype)
    out = RegroupBuffers.for_table(table)
    nodata = int(np.iinfo(dtype).max)
    for top, saturation in ((4, None), (3000, 2000), (2**16 - 1, 60000)):
        frame = _small_frame(rng, mask, dtype, top)
        frame.reshape(-1)[-7:] = rng.integers(1, 4, 7)                    # the raw tail holds counts
        for options in ({}, {"background": background, "saturation_value": saturation, "out": out}):
            _check(fused, frame, block_size_bytes=block_size_bytes, **options)
        defective = _with_defects(rng, frame, table, nodata, high=min(top + 5000, nodata - 1), n=5)
        result = _check(fused, defective, block_size_bytes=block_size_bytes, saturation_value=saturation or 2,
                        background=background)
        assert result.n_invalid.sum() > 0 and result.saxs_n_invalid > 0
        _check(fused, frame, block_size_bytes=block_size_bytes, invalid_value=min(top - 1, 3), reference=False)
    n_block = block_size_bytes // np.dtype(dtype).itemsize
    if n_block % 64 == 0 and n_block <= 4095:                      # full blocks of whole 64-bit words
        _check(fused, _small_frame(rng, mask, dtype, 4), block_size_bytes=block_size_bytes)
        assert fused.last_blocks[1] > 0
    zeros = np.zeros(SMALL_SHAPE, dtype)                            # every pixel NODATA when it is 0
    assert _check(fused, zeros, block_size_bytes=block_size_bytes, invalid_value=0).n_valid.sum() == 0


def test_repeated_pixels_and_segments_across_blocks(small_table):
    """One pixel in two bins (pieces going back), segments spanning several blocks, no pixel at all."""
    table, mask = small_table
    rng = np.random.default_rng(11)
    doubled = with_repeated_pixels(table, rng, 30)
    block = dataclasses.replace(table, pixel_index=np.arange(300, 3900, dtype=np.int64),
                                bin_index=np.repeat(np.arange(4, dtype=np.int32), 900),
                                saxs_pixel_index=np.arange(100, 4095, dtype=np.int64))
    empty = dataclasses.replace(table, pixel_index=np.zeros(0, np.int64), bin_index=np.zeros(0, np.int32),
                                saxs_pixel_index=np.zeros(0, np.int64))
    for candidate in (doubled, block, empty):
        for dtype, block_size_bytes in ((np.uint16, 256), (np.uint32, 8192), (np.uint32, 1024)):
            frame = _small_frame(rng, np.zeros_like(mask), dtype, 40)
            _check(FusedRegroup(candidate, dtype), frame, block_size_bytes=block_size_bytes, saturation_value=30)


@pytest.mark.parametrize("check_invalid", [False, True])
def test_danger_planes_bound_every_unusable_value(check_invalid):
    """Brute force on 8-bit values: below 2^k no value is NODATA or saturated; k = -1 when 0 may be."""
    values = np.arange(256, dtype=np.float64)
    for invalid in (0.0, 0.5, 1.0, 2.0, 2.5, 3.0, 7.0, 8.0, 100.0, 255.0, 256.0, -1.0, np.nan):
        for saturation in (np.inf, np.nan, -0.5, 0.0, 0.5, 1.0, 6.0, 7.0, 7.5, 8.0, 254.0, 255.0, 1e300):
            k = bslz4_regroup._clean_planes(8, check_invalid, invalid, saturation)
            unusable = values > saturation
            if check_invalid:
                unusable |= values == invalid
            if k < 0:
                assert unusable[0] or np.isnan(saturation) or saturation < 0 or invalid == 0
            else:
                assert not unusable[:2**k].any(), (invalid, saturation, k)


# --- corrupt payloads ------------------------------------------------------------------------------------------


def _assert_no_pixels(out: RegroupBuffers) -> None:
    assert not out.n_valid.any() and not out.sum_counts.any() and np.isnan(out.mean_counts).all()
    assert np.isnan(out.variance).all() and not out.n_invalid.any() and not out.n_saturated.any()
    assert out.saxs_n_valid == 0 and out.saxs_sum == 0.0 and np.isnan(out.saxs_intensity)


def _first_block_prefix(payload: bytes, block: int) -> int:
    """Byte offset of the 4-byte size prefix of block ``block``."""
    offset = 12
    for _ in range(block):
        offset += 4 + struct.unpack_from(">I", payload, offset)[0]
    return offset


def test_corrupt_payloads_raise_and_leave_no_pixels(small_table):
    table, mask = small_table
    fused = FusedRegroup(table, np.uint32)
    frame = _small_frame(np.random.default_rng(2), mask, np.uint32, 100)
    payload = compress(frame, "bslz4", block_size_bytes=512)
    used_block = int(table.pixel_index[0]) // 128
    prefix = _first_block_prefix(payload, used_block)
    csize = struct.unpack_from(">I", payload, prefix)[0]
    garbage = bytearray(payload)                                       # same framing, random LZ4 bytes
    garbage[prefix + 4:prefix + 4 + csize] = np.random.default_rng(0).integers(0, 256, csize, np.uint8).tobytes()
    short = lz4.block.compress(bytes(256), store_size=False)          # a valid LZ4 block of half the bytes
    wrong_length = payload[:prefix] + struct.pack(">I", len(short)) + short + payload[prefix + 4 + csize:]
    cases = {
        "truncated blob": payload[:8],
        "ends inside": payload[:-3],                                   # inside the raw tail
        "runs past the end": payload[:prefix + 6],
        "corrupt|fewer bytes": bytes(garbage),
        "fewer bytes": wrong_length,
        "wrong size": struct.pack(">QI", 4096 * 4, 512) + payload[12:],
        "not a multiple of 8 elements": struct.pack(">QI", 4095 * 4, 100) + payload[12:],
        "block size 0": struct.pack(">QI", 4095 * 4, 0) + payload[12:],
        "cannot decode bslz4": struct.pack(">QI", 4095 * 4, 1024) + payload[12:],   # blocks of 512 B really
        "trailing bytes|after the raw tail": payload + b"\0\0",
        "impossible compressed size|larger than any": payload[:12] + struct.pack(">I", 10**6) + payload[16:],
    }
    out = RegroupBuffers.for_table(table)
    for message, bad in cases.items():
        fused.regroup(payload, out=out)
        assert out.n_valid.any()
        with pytest.raises(ProtocolError, match=message):
            fused.regroup(bad, out=out)
        _assert_no_pixels(out)
    with pytest.raises(ProtocolError, match="wrong size"):                 # a uint16 payload for uint32 frames
        fused.regroup(compress(frame.astype(np.uint16), "bslz4"), out=out)
    _assert_no_pixels(out)
    _check(fused, frame, block_size_bytes=512, reference=False, out=out)     # and the next frame is fine


# --- fallback paths, payload types, warm-up ------------------------------------------------------------------


def test_fallbacks_give_the_same_results(small_table, monkeypatch):
    table, mask = small_table
    rng = np.random.default_rng(5)
    frame = _small_frame(rng, mask, np.uint32, 500)
    options = {"saturation_value": 300, "background": regroup_background(rng.random(SMALL_SHAPE), table)}
    fused = FusedRegroup(table, np.uint32)
    expected = _check(fused, frame, **options)
    monkeypatch.setattr(bslz4_regroup, "C_SYMBOLS_AVAILABLE", False)
    assert not fused.uses_fused_kernel
    _assert_same(_check(fused, frame, **options), expected)
    with pytest.raises(ProtocolError, match="truncated"):
        fused.regroup(compress(frame, "bslz4")[:-5], out=expected)
    _assert_no_pixels(expected)
    monkeypatch.undo()
    monkeypatch.setattr(bslz4_regroup, "_integer_sums_exact", lambda *args: False)
    assert not FusedRegroup(table, np.uint32).uses_fused_kernel
    monkeypatch.undo()
    for dtype in (np.uint8, np.float32):                                   # not fused: decode + regroup_frame
        other = FusedRegroup(table, dtype)
        assert not other.uses_fused_kernel
        _check(other, (frame % 200).astype(dtype), saturation_value=150)


def test_missing_c_symbols_leave_the_fallback(monkeypatch, caplog):
    def missing(*args, **kwargs):
        raise OSError("no such library")

    monkeypatch.setattr(bslz4_regroup.ctypes, "CDLL", missing)
    with caplog.at_level(logging.DEBUG, logger="stream.bslz4_regroup"):
        assert bslz4_regroup._register_c_symbols() is False
    assert "not found" in caplog.text and all(record.levelno == logging.DEBUG for record in caplog.records)


def test_payload_types_and_warm_up(small_table):
    table, mask = small_table
    fused = FusedRegroup(table, np.uint16)
    fused.warm_up()
    frame = _small_frame(np.random.default_rng(9), mask, np.uint16, 50)
    payload = compress(frame, "bslz4")
    expected = fused.regroup(payload)
    for variant in (memoryview(payload), bytearray(payload), np.frombuffer(payload, np.uint8).copy()):
        _assert_same(fused.regroup(variant), expected)
    with pytest.raises(ProtocolError, match="uint8"):
        fused.regroup(np.frombuffer(payload[:-1], np.uint8).view(np.int8))
    for block_size_bytes in (512, 8192, 1024, 2048, 256, 128, 4096, 512):          # schedules cached, evicted
        _assert_same(fused.regroup(compress(frame, "bslz4", block_size_bytes=block_size_bytes)), expected)
    assert len(fused._schedules) == bslz4_regroup.MAX_SCHEDULES
