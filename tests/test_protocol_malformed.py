"""Malformed detector messages: every one raises ProtocolError naming the problem; image
messages that still say which frame they are raise UndecodableImage carrying it."""

from __future__ import annotations

import json

import cbor2
import numpy as np
import pytest

from analysis.errors import ProtocolError
from stream.codecs import compress
from stream.messages import ImageFrame, SeriesStart
from stream.protocol import UndecodableImage, decode_message
from stream.protocol_v1 import encode_v1_image, encode_v1_start
from stream.protocol_v2 import encode_v2_image

PIXELS = np.arange(6 * 10, dtype=np.uint32).reshape(6, 10)


def _frame(compression="bslz4", dtype="uint32") -> ImageFrame:
    pixels = PIXELS.astype(dtype)
    return ImageFrame(series_id=12, frame_index=34, shape=pixels.shape, dtype=dtype,
                      compression=compression, payload=compress(pixels, compression),
                      elem_size=pixels.itemsize, start_time_ns=0, stop_time_ns=20,
                      real_time_ns=20)


def _v1_image(**detail_changes) -> list[bytes]:
    parts = encode_v1_image(_frame())
    detail = json.loads(parts[1])
    detail.update(detail_changes)
    parts[1] = json.dumps(detail).encode()
    return parts


def _v1_header(detail="all") -> list[bytes]:
    start = SeriesStart(series_id=12, protocol="v1", header_detail=detail,
                        config={"nimages": 1, "ntrigger": 1},
                        pixel_mask=np.zeros((2, 3), np.uint32),
                        flatfield=np.ones((2, 3), np.float32),
                        countrate_table=np.zeros((4000, 2), np.float32))
    return encode_v1_start(start)


def _cbor(body: dict, prefix: bool = True) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(55799, body) if prefix else body)


def _v2_image_body(typed_tag=70, content=None, dims=(6, 10)) -> dict:
    if content is None:
        content = cbor2.CBORTag(56500, ["bslz4", 4, compress(PIXELS, "bslz4")])
    return {"type": "image", "series_id": 12, "image_id": 34,
            "real_time": [1, 50_000_000],
            "data": {"threshold_1": cbor2.CBORTag(40, [list(dims),
                                                       cbor2.CBORTag(typed_tag, content)])}}


V1_CASES = {
    "bad JSON": ([b"{not json", b"x"], "bad JSON in first part"),
    "JSON not an object": ([b"[1, 2]"], "bad JSON in first part: expected an object"),
    "empty message": ([], "wrong part count: empty message"),
    "unknown htype": ([b'{"htype":"dfoo-1.0","series":1}'], "unknown htype 'dfoo-1.0'"),
    "no htype": ([b'{"series":1}'], "unknown htype None"),
    "header part count": (_v1_header()[:5], "header_detail 'all' needs 8 or 9 parts, got 5"),
    "basic part count": (_v1_header("basic")[:1], "header_detail 'basic' needs 2 or 3 parts"),
    "header missing series": ([b'{"header_detail":"none","htype":"dheader-1.0"}'],
                              "missing key 'series' in dheader-1.0"),
    "unknown header_detail": ([b'{"header_detail":"most","htype":"dheader-1.0","series":1}'],
                              "unknown header_detail 'most'"),
    "bad config JSON": ([_v1_header("basic")[0], b'{"nimages":'], "bad JSON in config part"),
    "mask blob short": (_v1_header()[:5] + [b"\0" * 20] + _v1_header()[6:],
                        "wrong size: dpixelmask-1.0 blob has 20 bytes"),
    "flatfield htype": (_v1_header()[:2] + [b'{"htype":"dflat-1.0","shape":[3,2],'
                                            b'"type":"float32"}'] + _v1_header()[3:],
                        "unknown htype 'dflat-1.0' in dflatfield-1.0 part"),
    "end part count": ([b'{"htype":"dseries_end-1.0","series":1}', b"x"],
                       "wrong part count: dseries_end-1.0 has 1 part, got 2"),
    "end missing series": ([b'{"htype":"dseries_end-1.0"}'],
                           "missing key 'series' in dseries_end-1.0"),
}


@pytest.mark.parametrize("case", sorted(V1_CASES))
def test_malformed_v1_non_image_messages(case):
    parts, message = V1_CASES[case]
    with pytest.raises(ProtocolError) as info:
        decode_message(parts, "v1")
    assert message in str(info.value)
    assert not isinstance(info.value, UndecodableImage)


V1_IMAGE_CASES = {
    "image part count": (encode_v1_image(_frame())[:3],
                         "wrong part count: an image message needs 4 or 5 parts, got 3"),
    "size mismatch": (_v1_image(size=999),
                      "size mismatch: dimage_d-1.0 says size 999 but the blob has"),
    "unknown encoding": (_v1_image(encoding="bs32-zstd<"), "unknown encoding 'bs32-zstd<'"),
    "big-endian encoding": (_v1_image(encoding="bs32-lz4>"), "unknown encoding 'bs32-lz4>'"),
    "type/encoding mismatch": (_v1_image(encoding="bs16-lz4<"),
                               "encoding 'bs16-lz4<' does not match type 'uint32'"),
    "unknown pixel type": (_v1_image(type="float32"), "unknown pixel type 'float32'"),
    "dims vs header": (_v1_image(shape=[10, 7]),
                       "wrong size: bslz4 header says 240 uncompressed bytes"),
    "bad shape": (_v1_image(shape=[10]), "bad shape [10] in dimage_d-1.0"),
    "missing encoding": (_v1_image(encoding=None), "wrong type: None"),
    "dimage_d htype": (_v1_image(htype="dimage-1.0"), "unknown htype 'dimage-1.0' in dimage_d"),
    "bad dimage_d JSON": (encode_v1_image(_frame())[:1] + [b"{]"] + encode_v1_image(_frame())[2:],
                          "bad JSON in dimage_d-1.0 part"),
    "bad dconfig time": (encode_v1_image(_frame())[:3]
                         + [b'{"htype":"dconfig-1.0","real_time":"soon"}'],
                         "key 'real_time' in dconfig-1.0 has wrong type: 'soon'"),
}


@pytest.mark.parametrize("case", sorted(V1_IMAGE_CASES))
def test_malformed_v1_images_name_their_frame(case):
    parts, message = V1_IMAGE_CASES[case]
    with pytest.raises(UndecodableImage) as info:
        decode_message(parts, "auto")
    assert message in str(info.value)
    assert (info.value.series_id, info.value.frame_index) == (12, 34)
    assert "(series 12, frame 34)" in str(info.value)


def test_truncated_v1_blob_is_caught_at_decode_time():
    parts = encode_v1_image(_frame())
    parts[2] = parts[2][:8]
    parts[1] = json.dumps({**json.loads(parts[1]), "size": 8}).encode()
    with pytest.raises(UndecodableImage, match="truncated blob: 8 bytes"):
        decode_message(parts)


def test_uncompressed_v1_blob_of_the_wrong_length():
    parts = encode_v1_image(_frame("none"))
    parts[2] = parts[2][:-4]
    parts[1] = json.dumps({**json.loads(parts[1]), "size": len(parts[2])}).encode()
    with pytest.raises(UndecodableImage, match="wrong size: uncompressed blob has 236 bytes"):
        decode_message(parts)


def test_v1_image_without_frame_number_still_names_its_series():
    parts = encode_v1_image(_frame())
    parts[0] = b'{"hash":"","htype":"dimage-1.0","series":12}'
    with pytest.raises(UndecodableImage, match="missing key 'frame' in dimage-1.0") as info:
        decode_message(parts)
    assert (info.value.series_id, info.value.frame_index) == (12, None)


V2_CASES = {
    "CBOR garbage": (b"\xd9\xd9\xf7\xff\xff\x00", "CBOR garbage"),
    "truncated CBOR": (_cbor(_v2_image_body())[:-50], "CBOR garbage"),
    "trailing bytes": (_cbor({"type": "end", "series_id": 1}) + b"\x00\x01",
                       "CBOR garbage: 2 trailing bytes"),
    "missing tag 55799": (_cbor({"type": "end", "series_id": 1}, prefix=False),
                          "missing self-describe tag 55799"),
    "type not first": (_cbor({"series_id": 1, "type": "end"}),
                       "'type' is not the first key (the first is 'series_id')"),
    "missing type": (_cbor({"series_id": 1}), "missing key 'type'"),
    "unknown type": (_cbor({"type": "pause", "series_id": 1}), "unknown message type 'pause'"),
    "not a map": (_cbor([1, 2]), "a v2 message must be a CBOR map, got array"),
    "end missing series": (_cbor({"type": "end"}), "missing key 'series_id' in end message"),
    "start missing series": (_cbor({"type": "start", "number_of_images": 3}),
                             "missing key 'series_id' in start message"),
    "start mask not tag 40": (_cbor({"type": "start", "series_id": 1,
                                     "pixel_mask": {"t1": b"\0" * 4}}),
                              "pixel_mask['t1'] is not a row-major multi-dimensional array"),
    "start mask size": (_cbor({"type": "start", "series_id": 1, "pixel_mask": {
        "t1": cbor2.CBORTag(40, [[2, 2], cbor2.CBORTag(70, b"\0" * 12)])}}),
        "pixel_mask['t1']: dims [2, 2] of uint32 need 16 bytes, payload has 12"),
    "start unknown image_dtype": (_cbor({"type": "start", "series_id": 1,
                                         "image_dtype": "float7"}),
                                  "unknown image_dtype 'float7'"),
}


@pytest.mark.parametrize("case", sorted(V2_CASES))
def test_malformed_v2_messages(case):
    message, expected = V2_CASES[case]
    with pytest.raises(ProtocolError) as info:
        decode_message([message], "v2")
    assert expected in str(info.value)
    assert not isinstance(info.value, UndecodableImage)


def _replace(body: dict, **changes) -> dict:
    return {**body, **changes}


V2_IMAGE_CASES = {
    "missing image_id": ({k: v for k, v in _v2_image_body().items() if k != "image_id"},
                         "missing key 'image_id' in image message", (12, None)),
    "missing data": ({k: v for k, v in _v2_image_body().items() if k != "data"},
                     "missing key 'data' in image message", (12, 34)),
    "dims vs payload": (_v2_image_body(dims=(6, 11)),
                        "wrong size: bslz4 header says 240 uncompressed bytes, image 6x11x4 B "
                        "needs 264", (12, 34)),
    "dims vs raw payload": (_v2_image_body(content=PIXELS.tobytes()[:-4]),
                            "dims [6, 10] of uint32 need 240 bytes, payload has 236", (12, 34)),
    "type/encoding mismatch": (_v2_image_body(
        content=cbor2.CBORTag(56500, ["bslz4", 2, compress(PIXELS, "bslz4")])),
        "type/encoding mismatch: bslz4 elem_size 2 but typed array tag 70", (12, 34)),
    "unsupported compression": (_v2_image_body(
        content=cbor2.CBORTag(56500, ["bszstd", 4, b"\0" * 20])),
        "unsupported compression 'bszstd'", (12, 34)),
    "bad 56500": (_v2_image_body(content=cbor2.CBORTag(56500, ["bslz4", 4])),
                  "tag 56500 must hold [algorithm, elem_size, bytes]", (12, 34)),
    "truncated blob": (_v2_image_body(content=cbor2.CBORTag(56500, ["bslz4", 4, b"\0" * 7])),
                       "truncated blob: 7 bytes", (12, 34)),
    "big-endian image": (_v2_image_body(typed_tag=66, content=PIXELS.astype(">u4").tobytes()),
                         "typed array tag 66 is not an unsigned little-endian image type",
                         (12, 34)),
    "float image": (_v2_image_body(typed_tag=85, content=PIXELS.astype("<f4").tobytes()),
                    "typed array tag 85 is not an unsigned", (12, 34)),
    "data not tag 40": (_replace(_v2_image_body(), data={"threshold_1": b"\0" * 240}),
                        "data['threshold_1'] is not a row-major multi-dimensional array (tag 40)",
                        (12, 34)),
    "bad dims": (_replace(_v2_image_body(), data={"threshold_1": cbor2.CBORTag(
        40, [[6, -10], cbor2.CBORTag(70, b"")])}), "dims [6, -10] are not [rows, cols]",
        (12, 34)),
    "zero denominator": (_replace(_v2_image_body(), start_time=[5, 0]),
                         "key 'start_time' has rational denominator 0", (12, 34)),
    "bad rational": (_replace(_v2_image_body(), stop_time="late"),
                     "key 'stop_time' must be a rational [num, den]", (12, 34)),
}


@pytest.mark.parametrize("case", sorted(V2_IMAGE_CASES))
def test_malformed_v2_images_name_their_frame(case):
    body, expected, where = V2_IMAGE_CASES[case]
    with pytest.raises(UndecodableImage) as info:
        decode_message([_cbor(body)], "auto")
    assert expected in str(info.value)
    assert (info.value.series_id, info.value.frame_index) == where


def test_the_valid_bodies_used_above_do_decode():
    """The malformed cases are single mutations of messages that are otherwise valid."""
    frame = decode_message([_cbor(_v2_image_body())])
    assert (frame.series_id, frame.frame_index, frame.shape) == (12, 34, (6, 10))
    assert decode_message(encode_v1_image(_frame())).frame_index == 34
    assert decode_message(_v1_header()).pixel_mask.shape == (2, 3)
    assert decode_message([encode_v2_image(_frame())]).frame_index == 34


def test_dispatcher_errors():
    with pytest.raises(ProtocolError, match="wrong part count: a v2 message has 1 part, got 2"):
        decode_message([b"\xd9\xd9\xf7", b""], "v2")
    with pytest.raises(ProtocolError, match="unknown stream protocol 'v3'"):
        decode_message([b"{}"], "v3")
    # auto: a single part without the CBOR prefix is taken as v1
    with pytest.raises(ProtocolError, match="bad JSON in first part"):
        decode_message([b"\xa1\x64type\x63end"], "auto")
