"""EIGER stream v2: one CBOR map per ZeroMQ message. Decoder and encoder;
``shared/docs/eiger-stream.md`` section 2 is the spec.

Decoding uses plain ``cbor2.loads`` semantics (no ``tag_hook``, whose signature changed between
cbor2 5 and 6) and walks the :class:`cbor2.CBORTag` objects itself:

* 55799 self-describe prefix, required (``d9 d9 f7``);
* 40 row-major multi-dimensional array ``[[rows, cols], typed array]``;
* 64-87 typed arrays (RFC 8746; 76 and the 128-bit floats excepted);
* 56500 DECTRIS compression ``[algorithm, elem_size, bytes]`` inside the typed array:
  ``"bslz4"`` -> ``"bslz4"``, ``"lz4"`` (HDF5-LZ4 framing) -> ``"lz4-hdf5"``;
* 0 date-time (decoded by cbor2), rationals ``[num, den]`` -> nanoseconds.

Maps inside tags come back from cbor2 6 as ``cbor2.frozendict`` and arrays as tuples; values
handed out (config, appendix) are converted to plain dicts and lists.
"""

from __future__ import annotations

import datetime
import fractions
import io
import logging
from collections.abc import Mapping
from typing import Any

import cbor2
import numpy as np

from analysis.errors import ProtocolError
from stream.codecs import check_framed_header, decompress
from stream.messages import ImageFrame, SeriesEnd, SeriesStart
from stream.protocol import MessageContext, merge_start_field

log = logging.getLogger(__name__)

SELF_DESCRIBE_TAG = 55799
MULTIDIM_TAG = 40
COMPRESSION_TAG = 56500
TIME_BASE_HZ = 50_000_000
"""Denominator of the rationals a real detector sends (50 MHz clock)."""
_NS_PER_S = 1_000_000_000
_ARRAY_KEYS = ("pixel_mask", "flatfield", "countrate_correction_lookup_table")
_NOT_CONFIG = ("type", "series_id", "series_unique_id", "user_data") + _ARRAY_KEYS
IMAGE_TAGS = {64: "uint8", 68: "uint8", 69: "uint16", 70: "uint32"}
"""Typed-array tags allowed for image data (unsigned little-endian)."""
_TAG_OF_IMAGE_DTYPE = {"uint8": 64, "uint16": 69, "uint32": 70}


def typed_array_dtype(tag: int) -> np.dtype:
    """The numpy dtype of an RFC 8746 typed-array tag (64-87).

    The tag is ``0b010_f_s_e_ll``: f float, s signed, e little-endian, ll log2 of the size
    (for floats ll 0..3 = 16..128 bits). Raises ProtocolError for other tags, for 76
    (reserved) and for 128-bit floats.
    """
    if not 64 <= tag <= 87 or tag in (76, 83, 87):
        raise ProtocolError(f"unsupported typed-array tag {tag}")
    is_float, signed, little = bool(tag & 0x10), bool(tag & 0x08), bool(tag & 0x04)
    size_code = tag & 0x03
    order = "<" if little else ">"
    if is_float:
        return np.dtype(f"{order}f{2 << size_code}")
    if tag == 68:  # uint8, clamped arithmetic
        return np.dtype("u1")
    return np.dtype(f"{order}{'i' if signed else 'u'}{1 << size_code}")


def _typed_array_tag(dtype: np.dtype) -> int:
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        codes = {2: 0, 4: 1, 8: 2}
        if dtype.itemsize not in codes:
            raise ProtocolError(f"no typed-array tag for {dtype}")
        return 0x50 | 0x04 | codes[dtype.itemsize]
    if dtype.kind in "ui" and dtype.itemsize in (1, 2, 4, 8):
        return (0x40 | (0x08 if dtype.kind == "i" else 0)
                | (0x04 if dtype.itemsize > 1 else 0) | (dtype.itemsize.bit_length() - 1))
    raise ProtocolError(f"no typed-array tag for {dtype}")


def _plain(value: Any) -> Any:
    """frozendict -> dict, tuple -> list, numpy scalars -> Python, recursively."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


# --------------------------------------------------------------------------- decoding


def _cbor_kind(value: Any) -> str:
    """The CBOR name of a decoded value's type, for error messages."""
    if isinstance(value, cbor2.CBORTag):
        return f"tag {value.tag}"
    for kind, name in ((Mapping, "map"), ((list, tuple), "array"), ((bytes, bytearray), "bytes"),
                       (str, "text"), (bool, "bool"), (int, "integer"), (float, "float")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(msg: Mapping, key: str, check, kind: str, errors: MessageContext) -> Any:
    if key not in msg:
        raise errors.error(f"missing key {key!r} in {msg.get('type')} message")
    value = msg[key]
    if not check(value):
        raise errors.error(f"key {key!r} in {msg.get('type')} message must be {kind}, "
                           f"got {value!r}"[:200])
    return value


def _rational_ns(value: Any, key: str, errors: MessageContext) -> int:
    if isinstance(value, fractions.Fraction):
        num, den = value.numerator, value.denominator
    elif (isinstance(value, (list, tuple)) and len(value) == 2
          and all(_is_int(v) for v in value)):
        num, den = value
    else:
        raise errors.error(f"key {key!r} must be a rational [num, den], got {value!r}"[:200])
    if den <= 0:
        raise errors.error(f"key {key!r} has rational denominator {den}")
    return (num * _NS_PER_S + den // 2) // den


def _multidim(value: Any, what: str, errors: MessageContext
              ) -> tuple[tuple[int, int], cbor2.CBORTag]:
    """Unpack tag 40 ``[[rows, cols], typed array]``."""
    if not isinstance(value, cbor2.CBORTag) or value.tag != MULTIDIM_TAG:
        raise errors.error(f"{what} is not a row-major multi-dimensional array (tag 40), "
                           f"got {_cbor_kind(value)}")
    content = value.value
    if not isinstance(content, (list, tuple)) or len(content) != 2:
        raise errors.error(f"{what}: tag 40 must hold [dims, typed array]")
    dims, typed = content
    if (not isinstance(dims, (list, tuple)) or len(dims) != 2
            or not all(_is_int(n) and n >= 0 for n in dims)):
        shown = list(dims) if isinstance(dims, (list, tuple)) else dims
        raise errors.error(f"{what}: dims {shown!r} are not [rows, cols]"[:200])
    if not isinstance(typed, cbor2.CBORTag):
        raise errors.error(f"{what}: no typed-array tag inside tag 40")
    return (dims[0], dims[1]), typed


def _typed_content(typed: cbor2.CBORTag, what: str, errors: MessageContext
                   ) -> tuple[np.dtype, str, Any, int | None]:
    """(dtype, compression, payload bytes, compression elem_size) of a typed array."""
    try:
        dtype = typed_array_dtype(typed.tag)
    except ProtocolError as exc:
        raise errors.error(f"{what}: {exc}") from exc
    inner = typed.value
    if isinstance(inner, (bytes, bytearray)):
        return dtype, "none", inner, None
    if isinstance(inner, cbor2.CBORTag) and inner.tag == COMPRESSION_TAG:
        spec = inner.value
        if (not isinstance(spec, (list, tuple)) or len(spec) != 3
                or not isinstance(spec[0], str) or not _is_int(spec[1])
                or not isinstance(spec[2], (bytes, bytearray))):
            raise errors.error(f"{what}: tag 56500 must hold [algorithm, elem_size, bytes]")
        algorithm, elem_size, payload = spec
        if algorithm == "bslz4":
            if elem_size != dtype.itemsize:
                raise errors.error(
                    f"{what}: type/encoding mismatch: bslz4 elem_size {elem_size} but typed "
                    f"array tag {typed.tag} holds {dtype.itemsize}-byte {dtype.name}")
            return dtype, "bslz4", payload, elem_size
        if algorithm == "lz4":
            return dtype, "lz4-hdf5", payload, elem_size
        raise errors.error(f"{what}: unsupported compression {algorithm!r}")
    raise errors.error(f"{what}: typed array tag {typed.tag} holds neither bytes nor tag 56500")


def _check_size(dtype: np.dtype, compression: str, payload, dims: tuple[int, int], what: str,
                errors: MessageContext) -> None:
    expected = dims[0] * dims[1] * dtype.itemsize
    try:
        if compression == "none":
            if len(payload) != expected:
                raise ProtocolError(
                    f"dims {list(dims)} of {dtype.name} need {expected} bytes, "
                    f"payload has {len(payload)}")
        else:
            check_framed_header(payload, compression, dims, dtype.itemsize)
    except ProtocolError as exc:
        raise errors.error(f"{what}: {exc}") from exc


def _array(value: Any, what: str, errors: MessageContext) -> np.ndarray:
    """A tag-40 array of the start message as a native-endian ndarray (rows, cols)."""
    dims, typed = _multidim(value, what, errors)
    dtype, compression, payload, _ = _typed_content(typed, what, errors)
    _check_size(dtype, compression, payload, dims, what, errors)
    if compression == "none":
        array = np.frombuffer(payload, dtype).reshape(dims)
    else:
        array = decompress(payload, compression, dtype, dims)
    return array.astype(dtype.newbyteorder("="), copy=False)


def _channel_array(msg: Mapping, key: str, channel: str | None, errors: MessageContext
                   ) -> tuple[np.ndarray | None, str | None]:
    per_channel = msg.get(key)
    if per_channel is None:
        return None, channel
    if not isinstance(per_channel, Mapping) or not per_channel:
        raise errors.error(f"{key} must be a non-empty map channel -> array")
    if channel is None or channel not in per_channel:
        channel = next(iter(per_channel))
    return _array(per_channel[channel], f"{key}[{channel!r}]", errors), channel


def _number(msg: Mapping, key: str) -> float | None:
    value = msg.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _decode_start(msg: Mapping, errors: MessageContext) -> SeriesStart:
    series_id = _require(msg, "series_id", _is_int, "an unsigned integer", errors)
    channels = msg.get("channels")
    channel = channels[0] if isinstance(channels, (list, tuple)) and channels else None
    pixel_mask, channel = _channel_array(msg, "pixel_mask", channel, errors)
    flatfield, channel = _channel_array(msg, "flatfield", channel, errors)
    table = msg.get("countrate_correction_lookup_table")
    countrate_table = None
    if table is not None:
        if not isinstance(table, cbor2.CBORTag):
            raise errors.error("countrate_correction_lookup_table is not a typed array")
        dtype, compression, payload, _ = _typed_content(
            table, "countrate_correction_lookup_table", errors)
        if compression != "none":
            raise errors.error("compressed countrate_correction_lookup_table is not supported")
        if len(payload) % dtype.itemsize:
            raise errors.error(f"countrate_correction_lookup_table has {len(payload)} bytes, "
                               f"not a multiple of {dtype.itemsize}")
        countrate_table = np.frombuffer(payload, dtype).astype(dtype.newbyteorder("="),
                                                                copy=False)
    rows, cols = msg.get("image_size_y"), msg.get("image_size_x")
    image_dtype = msg.get("image_dtype")
    if image_dtype is not None and image_dtype not in _TAG_OF_IMAGE_DTYPE:
        raise errors.error(f"unknown image_dtype {image_dtype!r}")
    n_images = msg.get("number_of_images")
    saturation = msg.get("saturation_value")
    wavelength_a = _number(msg, "incident_wavelength")
    centre = (_number(msg, "beam_center_x"), _number(msg, "beam_center_y"))
    unique_id = msg.get("series_unique_id")
    config = {key: _plain(value) for key, value in msg.items()
              if key not in _NOT_CONFIG and not isinstance(value, cbor2.CBORTag)}
    return SeriesStart(
        series_id=series_id, protocol="v2", header_detail="all" if pixel_mask is not None
        else "basic", config=config,
        n_images=n_images if _is_int(n_images) else None,
        image_shape=(rows, cols) if _is_int(rows) and _is_int(cols) else None,
        image_dtype=image_dtype,
        pixel_mask=None if pixel_mask is None else pixel_mask.astype(np.uint32, copy=False),
        flatfield=None if flatfield is None else flatfield.astype(np.float32, copy=False),
        countrate_table=countrate_table,
        wavelength_m=wavelength_a * 1e-10 if wavelength_a is not None else None,
        pixel_size_m=_number(msg, "pixel_size_x"),
        count_time_s=_number(msg, "count_time"), frame_time_s=_number(msg, "frame_time"),
        beam_centre_px=centre if None not in centre else None,
        saturation_value=saturation if _is_int(saturation) else None,
        series_unique_id=unique_id if isinstance(unique_id, str) else None,
        appendix=_plain(msg.get("user_data")), channel=channel)


def _decode_image(msg: Mapping, errors: MessageContext) -> ImageFrame:
    errors.image = True
    if _is_int(msg.get("series_id")):
        errors.series_id = msg["series_id"]
    if _is_int(msg.get("image_id")):
        errors.frame_index = msg["image_id"]
    series_id = _require(msg, "series_id", _is_int, "an unsigned integer", errors)
    image_id = _require(msg, "image_id", _is_int, "an unsigned integer", errors)
    data = _require(msg, "data", lambda v: isinstance(v, Mapping) and len(v) > 0,
                    "a non-empty map channel -> array", errors)
    channel = next(iter(data))
    what = f"data[{channel!r}]"
    dims, typed = _multidim(data[channel], what, errors)
    if typed.tag not in IMAGE_TAGS:
        raise errors.error(f"{what}: typed array tag {typed.tag} is not an unsigned "
                           f"little-endian image type {sorted(IMAGE_TAGS)}")
    dtype, compression, payload, _ = _typed_content(typed, what, errors)
    _check_size(dtype, compression, payload, dims, what, errors)
    times = {key: _rational_ns(msg[key], key, errors)
             for key in ("start_time", "stop_time", "real_time") if key in msg}
    unique_id = msg.get("series_unique_id")
    return ImageFrame(
        series_id=series_id, frame_index=image_id, shape=dims, dtype=IMAGE_TAGS[typed.tag],
        compression=compression, payload=payload, elem_size=dtype.itemsize,
        start_time_ns=times.get("start_time"), stop_time_ns=times.get("stop_time"),
        real_time_ns=times.get("real_time"),
        series_unique_id=unique_id if isinstance(unique_id, str) else None,
        appendix=_plain(msg.get("user_data")), channel=channel)


def _decode_end(msg: Mapping, errors: MessageContext) -> SeriesEnd:
    series_id = _require(msg, "series_id", _is_int, "an unsigned integer", errors)
    unique_id = msg.get("series_unique_id")
    return SeriesEnd(series_id=series_id,
                     series_unique_id=unique_id if isinstance(unique_id, str) else None)


def decode_v2(message) -> SeriesStart | ImageFrame | SeriesEnd:
    """Decode one v2 (CBOR) message.

    Parameters
    ----------
    message : bytes-like
        The single ZeroMQ part. Image payloads are not decompressed; their 12-byte header
        (or their length, uncompressed) is checked against the dims and the typed array.

    Returns
    -------
    SeriesStart, ImageFrame or SeriesEnd

    Raises
    ------
    UndecodableImage
        Malformed image message whose ``series_id``/``image_id`` could be read.
    ProtocolError
        Any other malformed message.
    """
    head = bytes(memoryview(message)[:3])
    if head != b"\xd9\xd9\xf7":
        raise ProtocolError(f"missing self-describe tag 55799: message starts with "
                            f"{head.hex(' ') or 'nothing'}, not d9 d9 f7")
    stream = io.BytesIO(message)
    try:
        msg = cbor2.CBORDecoder(stream).decode()
    except Exception as exc:  # cbor2 raises several types on garbage
        raise ProtocolError(f"CBOR garbage: {type(exc).__name__}: {exc}"[:300]) from exc
    trailing = len(memoryview(message)) - stream.tell()
    if trailing:
        raise ProtocolError(f"CBOR garbage: {trailing} trailing bytes after the message")
    while isinstance(msg, cbor2.CBORTag) and msg.tag == SELF_DESCRIBE_TAG:
        msg = msg.value
    if not isinstance(msg, Mapping):
        raise ProtocolError(f"a v2 message must be a CBOR map, got {_cbor_kind(msg)}")
    first_key = next(iter(msg), None)
    if first_key != "type":
        if "type" in msg:
            raise ProtocolError(f"'type' is not the first key (the first is {first_key!r})")
        raise ProtocolError("missing key 'type'")
    errors = MessageContext()
    kind = msg["type"]
    if kind == "start":
        return _decode_start(msg, errors)
    if kind == "image":
        return _decode_image(msg, errors)
    if kind == "end":
        return _decode_end(msg, errors)
    raise ProtocolError(f"unknown message type {kind!r}")


# --------------------------------------------------------------------------- encoding


def _rational(ns: int) -> list[int]:
    """Nanoseconds as [num, den]: den 50 MHz like a detector when exact, else 1 GHz."""
    ns = int(ns)
    step = _NS_PER_S // TIME_BASE_HZ
    if ns % step == 0:
        return [ns // step, TIME_BASE_HZ]
    return [ns, _NS_PER_S]


def _datetime_tag(moment: datetime.datetime) -> cbor2.CBORTag:
    """Tag 0 with an RFC 3339 string; milliseconds like a detector when they suffice."""
    if moment.tzinfo is None:
        raise ProtocolError(f"date-time {moment!r} has no timezone")
    spec = "milliseconds" if moment.microsecond % 1000 == 0 else "microseconds"
    return cbor2.CBORTag(0, moment.isoformat(timespec=spec))


def _multidim_tag(array: np.ndarray) -> cbor2.CBORTag:
    array = np.asarray(array)
    if array.ndim != 2:
        raise ProtocolError(f"expected a 2-D array, got shape {array.shape}")
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return cbor2.CBORTag(MULTIDIM_TAG, [list(data.shape),
                                        cbor2.CBORTag(_typed_array_tag(data.dtype),
                                                      data.tobytes())])


def _message(first: dict, rest: dict, last: dict | None = None) -> bytes:
    """``type`` first, then ``rest`` in order, then ``last``; wrapped in tag 55799."""
    body = dict(first)
    body.update(rest)
    body.update(last or {})
    return cbor2.dumps(cbor2.CBORTag(SELF_DESCRIBE_TAG, body))


def encode_v2_start(start: SeriesStart) -> bytes:
    """The ``start`` message of ``start``, as a detector sends it.

    Fields: ``type``, ``series_id``, ``series_unique_id``, then the config (completed from
    the typed fields; a field that contradicts the config raises ProtocolError) and the
    arrays sorted by key, ``user_data`` last. Masks and flatfields go under ``start.channel``
    (else the first of ``channels``, else ``"threshold_1"``). ``arm_date`` is sent when the
    config has it (a timezone-aware datetime).
    """
    config = {key: _plain(value) for key, value in start.config.items()
              if key not in _NOT_CONFIG}
    if isinstance(config.get("arm_date"), datetime.datetime):
        config["arm_date"] = _datetime_tag(config["arm_date"])
    merge_start_field(config, "number_of_images", start.n_images, "n_images")
    if start.image_shape is not None:
        merge_start_field(config, "image_size_y", int(start.image_shape[0]), "image_shape")
        merge_start_field(config, "image_size_x", int(start.image_shape[1]), "image_shape")
    merge_start_field(config, "image_dtype", start.image_dtype, "image_dtype")
    if start.wavelength_m is not None:
        merge_start_field(config, "incident_wavelength", start.wavelength_m * 1e10,
                          "wavelength_m")
    merge_start_field(config, "pixel_size_x", start.pixel_size_m, "pixel_size_m")
    merge_start_field(config, "pixel_size_y", start.pixel_size_m, "pixel_size_m")
    merge_start_field(config, "count_time", start.count_time_s, "count_time_s")
    merge_start_field(config, "frame_time", start.frame_time_s, "frame_time_s")
    if start.beam_centre_px is not None:
        merge_start_field(config, "beam_center_x", start.beam_centre_px[0], "beam_centre_px")
        merge_start_field(config, "beam_center_y", start.beam_centre_px[1], "beam_centre_px")
    merge_start_field(config, "saturation_value", start.saturation_value, "saturation_value")
    channel = start.channel or (config.get("channels") or ["threshold_1"])[0]
    config.setdefault("channels", [channel])
    if start.pixel_mask is not None:
        config["pixel_mask"] = {channel: _multidim_tag(np.asarray(start.pixel_mask, np.uint32))}
    if start.flatfield is not None:
        config["flatfield"] = {channel: _multidim_tag(np.asarray(start.flatfield, np.float32))}
    if start.countrate_table is not None:
        table = np.ascontiguousarray(start.countrate_table)
        table = table.astype(table.dtype.newbyteorder("<"), copy=False)
        config["countrate_correction_lookup_table"] = cbor2.CBORTag(
            _typed_array_tag(table.dtype), table.tobytes())
    first = {"type": "start", "series_id": int(start.series_id)}
    if start.series_unique_id is not None:
        first["series_unique_id"] = start.series_unique_id
    last = {"user_data": _plain(start.appendix)} if start.appendix is not None else None
    return _message(first, dict(sorted(config.items())), last)


def encode_v2_image(frame: ImageFrame, *, series_date: datetime.datetime | None = None
                    ) -> bytes:
    """The ``image`` message of ``frame``, as a detector sends it.

    The payload goes out unchanged inside ``40([[rows, cols], <typed>(56500([algorithm,
    elem_size, payload]))])`` (or the bare typed array for ``"none"``), under the key
    ``frame.channel`` (``"threshold_1"`` when None). Times become rationals over 50 MHz
    (over 1 GHz when not a multiple of 20 ns); ``series_date`` (timezone-aware) is sent when
    given; ``frame.appendix`` becomes ``user_data``.
    """
    if frame.dtype not in _TAG_OF_IMAGE_DTYPE:
        raise ProtocolError(f"unknown image dtype {frame.dtype!r}")
    tag = _TAG_OF_IMAGE_DTYPE[frame.dtype]
    if np.dtype(frame.dtype).itemsize != frame.elem_size:
        raise ProtocolError(f"elem_size {frame.elem_size} does not match dtype {frame.dtype}")
    payload = bytes(frame.payload)
    if frame.compression == "bslz4":
        content = cbor2.CBORTag(COMPRESSION_TAG, ["bslz4", frame.elem_size, payload])
    elif frame.compression == "lz4-hdf5":
        content = cbor2.CBORTag(COMPRESSION_TAG, ["lz4", frame.elem_size, payload])
    elif frame.compression == "none":
        content = payload
    else:
        raise ProtocolError(f"stream v2 cannot carry compression {frame.compression!r} "
                            f"(only bslz4, lz4-hdf5, none)")
    rows, cols = (int(n) for n in frame.shape)
    array = cbor2.CBORTag(MULTIDIM_TAG, [[rows, cols], cbor2.CBORTag(tag, content)])
    body: dict = {"series_id": int(frame.series_id)}
    if frame.series_unique_id is not None:
        body["series_unique_id"] = frame.series_unique_id
    body["image_id"] = int(frame.frame_index)
    if frame.real_time_ns is not None:
        body["real_time"] = _rational(frame.real_time_ns)
    if series_date is not None:
        body["series_date"] = _datetime_tag(series_date)
    if frame.start_time_ns is not None:
        body["start_time"] = _rational(frame.start_time_ns)
    if frame.stop_time_ns is not None:
        body["stop_time"] = _rational(frame.stop_time_ns)
    if frame.appendix is not None:
        body["user_data"] = _plain(frame.appendix)
    body["data"] = {frame.channel or "threshold_1": array}
    return _message({"type": "image"}, body)


def encode_v2_end(end: SeriesEnd) -> bytes:
    """The ``end`` message."""
    body: dict = {"series_id": int(end.series_id)}
    if end.series_unique_id is not None:
        body["series_unique_id"] = end.series_unique_id
    return _message({"type": "end"}, body)
