"""Stream v1: decoding the real EIGER 1M capture, byte-identical re-encoding, round trips."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest

from analysis.errors import ProtocolError
from conftest import read_zmqcap
from stream.codecs import compress, decompress
from stream.messages import ImageFrame, SeriesEnd, SeriesStart
from stream.protocol import decode_message
from stream.protocol_v1 import (JsonObject, decode_v1, encode_v1_end, encode_v1_image,
                                encode_v1_start)

CAPTURE = "eiger1m_stream_v1.zmqcap.gz"


@pytest.fixture(scope="module")
def capture(captures_dir):
    return read_zmqcap(captures_dir / CAPTURE)


def test_capture_header_fields_match_the_raw_json(capture):
    parts = capture[0]
    raw_first, raw_config = json.loads(parts[0]), json.loads(parts[1])
    start = decode_message(parts)
    assert isinstance(start, SeriesStart)
    assert start.protocol == "v1" and start.header_detail == raw_first["header_detail"] == "all"
    assert start.series_id == raw_first["series"] == 14
    assert start.config == raw_config
    assert start.n_images == raw_config["nimages"] * raw_config["ntrigger"] == 100000
    assert start.image_shape == (raw_config["y_pixels_in_detector"],
                                 raw_config["x_pixels_in_detector"]) == (1065, 1030)
    assert start.image_dtype == "uint32" and raw_config["bit_depth_image"] == 32
    assert start.wavelength_m == pytest.approx(raw_config["wavelength"] * 1e-10, rel=1e-15)
    assert start.pixel_size_m == raw_config["x_pixel_size"] == 7.5e-5
    assert start.detector_distance_m == raw_config["detector_distance"]
    assert start.count_time_s == raw_config["count_time"]
    assert start.frame_time_s == raw_config["frame_time"]
    assert start.beam_centre_px == (raw_config["beam_center_x"], raw_config["beam_center_y"])
    assert start.saturation_value == raw_config["countrate_correction_count_cutoff"] == 2943293
    assert start.appendix == json.loads(parts[8]) == {"filename": "", "rotate": 0}
    assert start.pixel_mask.dtype == np.uint32 and start.pixel_mask.shape == (1065, 1030)
    assert start.flatfield.dtype == np.float32 and start.flatfield.shape == (1065, 1030)
    # the mask's gap pixels (bit 0) number exactly number_of_excluded_pixels minus the rest
    assert np.count_nonzero(start.pixel_mask) == raw_config["number_of_excluded_pixels"]
    np.testing.assert_array_equal(start.pixel_mask.ravel(),
                                  np.frombuffer(parts[5], "<u4"))
    # count-rate table: [2, 4000] on the wire = 4000 rows of (true, measured)
    assert start.countrate_table.shape == (4000, 2)
    assert start.countrate_table[0].tolist() == [0.0, 0.0]
    assert np.all(np.diff(start.countrate_table[:, 0]) > 0)


def test_capture_images_match_the_raw_json(capture):
    for frame_index, parts in enumerate(capture[1:]):
        first, detail, times = (json.loads(parts[i]) for i in (0, 1, 3))
        frame = decode_message([memoryview(part) for part in parts])
        assert isinstance(frame, ImageFrame)
        assert frame.series_id == first["series"] == 14
        assert frame.frame_index == first["frame"] == frame_index
        assert first["hash"] == hashlib.md5(parts[1]).hexdigest()
        assert frame.shape == (detail["shape"][1], detail["shape"][0]) == (1065, 1030)
        assert frame.dtype == detail["type"] == "uint32" and frame.elem_size == 4
        assert frame.compression == "bslz4" and detail["encoding"] == "bs32-lz4<"
        assert bytes(frame.payload) == parts[2] and len(parts[2]) == detail["size"]
        assert isinstance(frame.payload, memoryview)  # no copy of the blob
        assert (frame.start_time_ns, frame.stop_time_ns, frame.real_time_ns) == (
            times["start_time"], times["stop_time"], times["real_time"])
        assert frame.appendix is None


def test_capture_reencodes_byte_for_byte(capture):
    assert len(capture) == 10
    for parts in capture:
        message = decode_v1(parts)
        if isinstance(message, SeriesStart):
            assert encode_v1_start(message) == parts
        else:
            assert encode_v1_image(message) == parts


def test_unmodified_config_keeps_its_spelling_and_a_changed_one_is_rewritten(capture):
    start = decode_v1(capture[0])
    assert isinstance(start.config, JsonObject)
    assert b'"x_pixel_size":0.000075' in encode_v1_start(start)[1]
    changed = dataclasses.replace(start, config={**start.config, "description": "test"})
    config_part = encode_v1_start(changed)[1]
    assert b'"x_pixel_size":7.5e-05' in config_part and b'"description":"test"' in config_part
    assert json.loads(config_part) == {**json.loads(capture[0][1]), "description": "test"}


# ------------------------------------------------------------------ round trips


def _synthetic_start(detail: str, appendix) -> SeriesStart:
    rows, cols = 7, 11
    rng = np.random.default_rng(1)
    table = np.stack([np.arange(4000.0), np.arange(4000.0) * 0.9], axis=1).astype(np.float32)
    return SeriesStart(
        series_id=3, protocol="v1", header_detail=detail,
        config={} if detail == "none" else {"trigger_mode": "exts", "description": "sim"},
        n_images=None if detail == "none" else 12,
        image_shape=None if detail == "none" else (rows, cols),
        image_dtype=None if detail == "none" else "uint16",
        pixel_mask=(rng.integers(0, 3, (rows, cols)).astype(np.uint32)
                    if detail == "all" else None),
        flatfield=rng.random((rows, cols)).astype(np.float32) if detail == "all" else None,
        countrate_table=table if detail == "all" else None,
        wavelength_m=None if detail == "none" else 0.8984e-10,
        pixel_size_m=None if detail == "none" else 75e-6,
        detector_distance_m=None if detail == "none" else 0.412,
        count_time_s=None if detail == "none" else 0.01,
        frame_time_s=None if detail == "none" else 0.0105,
        beam_centre_px=None if detail == "none" else (1835.0, 1884.5),
        saturation_value=None if detail == "none" else 65000,
        appendix=appendix)


def _assert_same_start(decoded: SeriesStart, original: SeriesStart) -> None:
    for field in dataclasses.fields(SeriesStart):
        got, want = getattr(decoded, field.name), getattr(original, field.name)
        if field.name == "config":
            assert dict(got).items() >= dict(want).items()
        elif field.name == "wavelength_m" and want is not None:
            assert got == pytest.approx(want, rel=1e-15)
        elif isinstance(want, np.ndarray):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
        else:
            assert got == want, field.name


APPENDICES = [None, {"scan": {"x_um": 1.5, "y_um": -2.0}, "point": 4}, [1, "two"], "a string",
              b"\x00not json\xff"]


@pytest.mark.parametrize("detail", ["none", "basic", "all"])
@pytest.mark.parametrize("appendix", APPENDICES)
def test_header_round_trip(detail, appendix):
    start = _synthetic_start(detail, appendix)
    parts = encode_v1_start(start)
    expected_parts = {"none": 1, "basic": 2, "all": 8}[detail] + (appendix is not None)
    assert len(parts) == expected_parts
    assert all(isinstance(part, bytes) for part in parts)
    decoded = decode_message(parts, "auto")
    _assert_same_start(decoded, start)
    assert encode_v1_start(decoded) == parts
    if detail != "none":
        config = json.loads(parts[1])
        assert list(config) == sorted(config)
        assert config["nimages"] * config["ntrigger"] == 12
        assert (config["x_pixels_in_detector"], config["y_pixels_in_detector"]) == (11, 7)
        assert config["bit_depth_image"] == 16 and config["wavelength"] == pytest.approx(0.8984)


ENCODINGS = {"bslz4": "bs{bits}-lz4<", "lz4-raw": "lz4<", "none": "<"}


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32"])
@pytest.mark.parametrize("compression", ["bslz4", "lz4-raw", "none"])
@pytest.mark.parametrize("appendix", [None, {"x_um": 12.5, "y_um": 3.0}, b"raw bytes"])
def test_image_round_trip(dtype, compression, appendix):
    rng = np.random.default_rng(5)
    pixels = rng.poisson(3.0, size=(13, 29)).astype(dtype)
    frame = ImageFrame(series_id=9, frame_index=41, shape=(13, 29), dtype=dtype,
                       compression=compression, payload=compress(pixels, compression),
                       elem_size=np.dtype(dtype).itemsize, start_time_ns=1_000_000_020,
                       stop_time_ns=1_010_000_000, real_time_ns=9_999_980, appendix=appendix)
    parts = encode_v1_image(frame)
    assert len(parts) == 4 + (appendix is not None)
    detail = json.loads(parts[1])
    assert detail == {"encoding": ENCODINGS[compression].format(bits=8 * frame.elem_size),
                      "htype": "dimage_d-1.0", "shape": [29, 13], "size": len(parts[2]),
                      "type": dtype}
    assert json.loads(parts[0])["hash"] == hashlib.md5(parts[1]).hexdigest()
    decoded = decode_message(parts)
    for field in dataclasses.fields(ImageFrame):
        assert getattr(decoded, field.name) == getattr(frame, field.name), field.name
    np.testing.assert_array_equal(
        decompress(decoded.payload, decoded.compression, decoded.dtype, decoded.shape), pixels)
    assert encode_v1_image(decoded) == parts


def test_image_config_extra_goes_into_dconfig():
    frame = ImageFrame(series_id=1, frame_index=0, shape=(2, 3), dtype="uint8",
                       compression="none", payload=bytes(6), elem_size=1, real_time_ns=5)
    parts = encode_v1_image(frame, config_extra={"x_um": 1.25})
    assert parts[3] == b'{"htype":"dconfig-1.0","real_time":5,"x_um":1.25}'
    assert decode_v1(parts).real_time_ns == 5


def test_end_round_trip():
    parts = encode_v1_end(SeriesEnd(series_id=77))
    assert parts == [b'{"htype":"dseries_end-1.0","series":77}']
    assert decode_message(parts) == SeriesEnd(series_id=77)


def test_typed_field_contradicting_the_config_is_refused(capture):
    start = decode_v1(capture[0])
    with pytest.raises(ProtocolError, match=r"n_images \(50\) disagrees with config"):
        encode_v1_start(dataclasses.replace(start, n_images=50))
    with pytest.raises(ProtocolError, match="v1 cannot carry compression 'lz4-hdf5'"):
        encode_v1_image(ImageFrame(series_id=1, frame_index=0, shape=(1, 1), dtype="uint8",
                                   compression="lz4-hdf5", payload=b"", elem_size=1))
