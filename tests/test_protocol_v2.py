"""Stream v2 (CBOR): decoding the real EIGER 1M capture, re-encoding, round trips."""

from __future__ import annotations

import dataclasses
import datetime

import cbor2
import numpy as np
import pytest

from analysis.errors import ProtocolError
from conftest import read_zmqcap
from stream.codecs import compress, decompress
from stream.messages import ImageFrame, SeriesEnd, SeriesStart
from stream.protocol import decode_message
from stream.protocol_v2 import (decode_v2, encode_v2_end, encode_v2_image, encode_v2_start,
                                typed_array_dtype)

CAPTURE = "eiger_stream_v2.zmqcap.gz"


@pytest.fixture(scope="module")
def capture(captures_dir):
    return [parts[0] for parts in read_zmqcap(captures_dir / CAPTURE)]


def test_capture_start_fields_match_the_raw_cbor(capture):
    raw = cbor2.loads(capture[0])
    start = decode_message([capture[0]])
    assert isinstance(start, SeriesStart) and start.protocol == "v2"
    assert start.series_id == raw["series_id"] == 16
    assert start.series_unique_id == raw["series_unique_id"] == "01HRCJF83SA63WH8M5X1VBKFJM"
    assert start.n_images == raw["number_of_images"] == 10
    assert start.image_shape == (raw["image_size_y"], raw["image_size_x"]) == (1065, 1030)
    assert start.image_dtype is None and "image_dtype" not in raw  # older firmware
    assert start.wavelength_m == pytest.approx(raw["incident_wavelength"] * 1e-10, rel=1e-15)
    assert start.pixel_size_m == raw["pixel_size_x"] == 7.5e-5
    assert start.count_time_s == raw["count_time"] and start.frame_time_s == raw["frame_time"]
    assert start.beam_centre_px == (raw["beam_center_x"], raw["beam_center_y"])
    assert start.saturation_value == raw["saturation_value"] == 2943293
    assert start.channel == raw["channels"][0] == "threshold_1"
    assert start.appendix == raw["user_data"] and start.appendix.startswith('{"attenuator')
    assert start.detector_distance_m is None  # stream v2 has no detector_distance
    dims, mask_typed = raw["pixel_mask"]["threshold_1"].value
    assert start.pixel_mask.shape == tuple(dims) and start.pixel_mask.dtype == np.uint32
    np.testing.assert_array_equal(start.pixel_mask.ravel(), np.frombuffer(mask_typed.value, "<u4"))
    assert mask_typed.tag == 70
    assert set(np.unique(start.pixel_mask)) <= {0, 1, 2, 4, 8, 16}
    assert start.flatfield.dtype == np.float32 and start.flatfield.shape == (1065, 1030)
    assert raw["flatfield"]["threshold_1"].value[1].tag == 85
    assert start.countrate_table.dtype == np.uint32 and start.countrate_table.shape == (65536,)
    assert start.config["arm_date"] == raw["arm_date"]
    assert start.config["threshold_energy"] == {"threshold_1": 4000.0}
    assert start.config["channels"] == ["threshold_1"]
    assert "pixel_mask" not in start.config and "type" not in start.config


def test_capture_images_and_end_match_the_raw_cbor(capture):
    for image_id, message in enumerate(capture[1:-1]):
        raw = cbor2.loads(message)
        frame = decode_message([message])
        assert isinstance(frame, ImageFrame)
        assert frame.series_id == raw["series_id"] and frame.frame_index == raw["image_id"]
        assert frame.frame_index == image_id
        assert frame.series_unique_id == raw["series_unique_id"]
        (dims, typed), = (array.value for array in raw["data"].values())
        algorithm, elem_size, payload = typed.value.value
        assert frame.shape == tuple(dims) and frame.channel == "threshold_1"
        assert (frame.compression, frame.elem_size, frame.dtype) == ("bslz4", 4, "uint32")
        assert algorithm == "bslz4" and elem_size == 4 and bytes(frame.payload) == payload
        for key in ("start_time", "stop_time", "real_time"):
            num, den = raw[key]
            assert den == 50_000_000
            assert getattr(frame, f"{key}_ns") == num * 20
    end = decode_message([capture[-1]])
    assert end == SeriesEnd(series_id=16, series_unique_id="01HRCJF83SA63WH8M5X1VBKFJM")


def test_capture_reencoding(capture):
    """Images and end re-encode byte for byte (given the image's series_date, which
    ImageFrame does not keep); the start does not (the detector writes the shortest exact
    float, cbor2 writes float64) but decodes back to the same SeriesStart."""
    for message in capture[1:-1]:
        frame = decode_v2(message)
        assert encode_v2_image(frame, series_date=cbor2.loads(message)["series_date"]) == message
    assert encode_v2_end(decode_v2(capture[-1])) == capture[-1]
    start = decode_v2(capture[0])
    encoded = encode_v2_start(start)
    assert encoded != capture[0]
    again = decode_v2(encoded)
    _assert_same_start(again, start, exact_config=True)
    raw, raw_again = cbor2.loads(capture[0]), cbor2.loads(encoded)
    assert list(raw_again) == list(raw)  # same keys in the same order, type first


def _assert_same_start(decoded: SeriesStart, original: SeriesStart, exact_config: bool) -> None:
    for field in dataclasses.fields(SeriesStart):
        got, want = getattr(decoded, field.name), getattr(original, field.name)
        if field.name == "config":
            if exact_config:
                assert got == want
            else:
                assert got.items() >= dict(want).items()
        elif isinstance(want, np.ndarray):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
        elif field.name == "wavelength_m" and want is not None:
            assert got == pytest.approx(want, rel=1e-15)
        elif field.name == "header_detail":
            assert got == ("all" if original.pixel_mask is not None else "basic")
        else:
            assert got == want, field.name


@pytest.mark.parametrize("with_arrays", [True, False])
@pytest.mark.parametrize("user_data", [None, '{"scan": "json string"}', {"x": [1, 2.5]},
                                       [1, "💙"]])
def test_start_round_trip(with_arrays, user_data):
    rng = np.random.default_rng(2)
    start = SeriesStart(
        series_id=5, protocol="v2", header_detail="all" if with_arrays else "basic",
        config={"arm_date": datetime.datetime(2025, 1, 2, 3, 4, 5, 678000,
                                              tzinfo=datetime.timezone.utc),
                "detector_description": "simulated EIGER X 4M", "sensor_thickness": 450e-6,
                "threshold_energy": {"threshold_1": 6900.0}, "channels": ["threshold_1"]},
        n_images=20, image_shape=(9, 14), image_dtype="uint32",
        pixel_mask=rng.integers(0, 2, (9, 14)).astype(np.uint32) if with_arrays else None,
        flatfield=rng.random((9, 14)).astype(np.float32) if with_arrays else None,
        countrate_table=np.arange(1000, dtype=np.uint32) if with_arrays else None,
        wavelength_m=0.8984e-10, pixel_size_m=75e-6, count_time_s=0.01, frame_time_s=0.0105,
        beam_centre_px=(7.5, 4.25), saturation_value=123456,
        series_unique_id="01ABCDEF", appendix=user_data, channel="threshold_1")
    message = encode_v2_start(start)
    assert message[:3] == b"\xd9\xd9\xf7"
    raw = cbor2.loads(message)
    assert list(raw)[:3] == ["type", "series_id", "series_unique_id"]
    assert raw["arm_date"] == start.config["arm_date"]
    decoded = decode_message([message], "auto")
    _assert_same_start(decoded, start, exact_config=False)
    assert encode_v2_start(decoded) == message


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32"])
@pytest.mark.parametrize("compression", ["bslz4", "lz4-hdf5", "none"])
@pytest.mark.parametrize("user_data", [None, {"x_um": 1.5, "point": [3, 4]}, b"\x00\x01"])
def test_image_round_trip(dtype, compression, user_data):
    rng = np.random.default_rng(8)
    pixels = rng.poisson(5.0, size=(17, 23)).astype(dtype)
    frame = ImageFrame(series_id=2, frame_index=6, shape=(17, 23), dtype=dtype,
                       compression=compression, payload=compress(pixels, compression),
                       elem_size=np.dtype(dtype).itemsize, start_time_ns=120_000_000,
                       stop_time_ns=129_999_987, real_time_ns=9_999_980,
                       series_unique_id="01XYZ", appendix=user_data, channel="threshold_2")
    message = encode_v2_image(frame)
    raw = cbor2.loads(message)
    dims, typed = raw["data"]["threshold_2"].value
    assert list(dims) == [17, 23]
    assert typed.tag == {"uint8": 64, "uint16": 69, "uint32": 70}[dtype]
    if compression != "none":
        assert typed.value.tag == 56500
    assert raw["start_time"] == (6_000_000, 50_000_000)  # multiple of 20 ns: the 50 MHz base
    assert raw["stop_time"] == (129_999_987, 1_000_000_000)  # not: exact over 1 GHz
    decoded = decode_message([message])
    for field in dataclasses.fields(ImageFrame):
        assert getattr(decoded, field.name) == getattr(frame, field.name), field.name
    np.testing.assert_array_equal(
        decompress(decoded.payload, decoded.compression, decoded.dtype, decoded.shape), pixels)


def test_end_round_trip():
    for end in (SeriesEnd(series_id=3, series_unique_id="01U"), SeriesEnd(series_id=4)):
        assert decode_message([encode_v2_end(end)]) == end


def test_typed_array_tags_follow_rfc8746():
    expected = {64: "|u1", 65: ">u2", 66: ">u4", 67: ">u8", 68: "|u1", 69: "<u2", 70: "<u4",
                71: "<u8", 72: "|i1", 73: ">i2", 74: ">i4", 75: ">i8", 77: "<i2", 78: "<i4",
                79: "<i8", 80: ">f2", 81: ">f4", 82: ">f8", 84: "<f2", 85: "<f4", 86: "<f8"}
    for tag, dtype in expected.items():
        assert typed_array_dtype(tag) == np.dtype(dtype), tag
    for tag in (63, 76, 83, 87, 88):
        with pytest.raises(ProtocolError, match=f"unsupported typed-array tag {tag}"):
            typed_array_dtype(tag)


def test_big_endian_and_compressed_start_arrays_decode():
    mask = np.arange(12, dtype=np.uint32).reshape(3, 4)
    flat = np.linspace(0.5, 1.5, 12, dtype=np.float32).reshape(3, 4)
    msg = {"type": "start", "series_id": 1,
           "pixel_mask": {"t1": cbor2.CBORTag(40, [[3, 4], cbor2.CBORTag(
               70, cbor2.CBORTag(56500, ["bslz4", 4, compress(mask, "bslz4")]))])},
           "flatfield": {"t1": cbor2.CBORTag(40, [[3, 4], cbor2.CBORTag(
               81, flat.astype(">f4").tobytes())])}}
    start = decode_v2(cbor2.dumps(cbor2.CBORTag(55799, msg)))
    np.testing.assert_array_equal(start.pixel_mask, mask)
    np.testing.assert_array_equal(start.flatfield, flat)
    assert start.flatfield.dtype == np.float32 and start.channel == "t1"


def test_v2_encoder_refuses_lz4_raw_and_contradictions():
    frame = ImageFrame(series_id=1, frame_index=0, shape=(1, 1), dtype="uint8",
                       compression="lz4-raw", payload=b"\x10\x00", elem_size=1)
    with pytest.raises(ProtocolError, match="v2 cannot carry compression 'lz4-raw'"):
        encode_v2_image(frame)
    start = SeriesStart(series_id=1, protocol="v2", header_detail="basic",
                        config={"number_of_images": 10}, n_images=11)
    with pytest.raises(ProtocolError, match=r"n_images \(11\) disagrees"):
        encode_v2_start(start)
