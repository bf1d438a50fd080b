"""EIGER stream v1 (SIMPLON legacy): compact-JSON parts plus binary blobs, one multipart
message per event. Decoder and encoder; ``shared/docs/eiger-stream.md`` section 1 is the spec.

Wire facts kept here: JSON parts are compact with sorted keys; ``shape`` is ``[x, y]`` (the
reverse of numpy); ``hash`` is the md5 hex digest of the ``dimage_d-1.0`` part; ``size`` is the
blob length; encodings ``bs<N>-lz4<``, ``lz4<`` and ``<``.

JSON objects and arrays read from the wire (the config part and JSON appendices) come back as
:class:`JsonObject` / :class:`JsonArray`, plain ``dict``/``list`` subclasses that remember the
bytes they were read from, so that re-encoding an unmodified message reproduces the detector's
spelling (``0.000075``, ``7.5e-6``, ``", "`` separators) byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Mapping, Sequence

import numpy as np

from analysis.errors import ProtocolError
from stream.codecs import check_framed_header
from stream.messages import HeaderDetail, ImageFrame, SeriesEnd, SeriesStart
from stream.protocol import MessageContext, merge_start_field

log = logging.getLogger(__name__)

HEADER_PARTS = {"none": 1, "basic": 2, "all": 8}
"""Parts of the global header per ``header_detail``, not counting the optional appendix."""
IMAGE_PARTS = 4
PIXEL_TYPES = ("uint8", "uint16", "uint32")
ARRAY_TYPES = ("uint8", "uint16", "uint32", "int32", "float32", "float64")
_BIT_DEPTH_DTYPE = {8: "uint8", 16: "uint16", 32: "uint32"}


class JsonObject(dict):
    """A JSON object read from the wire; ``wire_bytes`` holds its exact original spelling."""

    wire_bytes: bytes | None = None


class JsonArray(list):
    """A JSON array read from the wire; ``wire_bytes`` holds its exact original spelling."""

    wire_bytes: bytes | None = None


def _with_source(value: Any, raw: bytes) -> Any:
    if isinstance(value, dict):
        value = JsonObject(value)
    elif isinstance(value, list):
        value = JsonArray(value)
    else:
        return value
    value.wire_bytes = raw
    return value


def _short(value: Any) -> str:
    """repr of a wire value, cut for an error message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def compact_json(value: Any) -> bytes:
    """Compact JSON with sorted keys, as the detector writes its parts."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _spelled(value: Any, fallback) -> bytes:
    """The original wire bytes of an unmodified decoded value, else ``fallback(value)``."""
    raw = getattr(value, "wire_bytes", None)
    if raw is not None and json.loads(raw) == value:
        return raw
    return fallback(value)


# --------------------------------------------------------------------------- decoding


def _json_object(part, what: str, errors: MessageContext) -> dict:
    try:
        value = json.loads(bytes(part))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise errors.error(f"bad JSON in {what} part: {exc}") from exc
    if not isinstance(value, dict):
        raise errors.error(f"bad JSON in {what} part: expected an object, got "
                           f"{type(value).__name__}")
    return value


def _require(obj: Mapping, key: str, kind: type | tuple, what: str, errors: MessageContext) -> Any:
    if key not in obj:
        raise errors.error(f"missing key {key!r} in {what}")
    value = obj[key]
    bool_wanted = bool in (kind if isinstance(kind, tuple) else (kind,))
    if not isinstance(value, kind) or (isinstance(value, bool) and not bool_wanted):
        raise errors.error(f"key {key!r} in {what} has wrong type: {_short(value)}")
    return value


def _htype(obj: Mapping, expected: str, what: str, errors: MessageContext) -> None:
    htype = obj.get("htype")
    if htype != expected:
        raise errors.error(f"unknown htype {_short(htype)} in {what} part, expected {expected!r}")


def _wire_shape(obj: Mapping, what: str, errors: MessageContext) -> tuple[int, int]:
    """``[x, y]`` on the wire -> numpy ``(rows, columns) = (y, x)``."""
    shape = _require(obj, "shape", list, what, errors)
    if len(shape) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                  for n in shape):
        raise errors.error(f"bad shape {_short(shape)} in {what}: expected [x, y] of two sizes")
    return shape[1], shape[0]


def _number(config: Mapping, key: str) -> float | None:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _integer(config: Mapping, key: str) -> int | None:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _decode_appendix(part) -> Any:
    raw = bytes(part)
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return raw
    return _with_source(value, raw)


def _decode_array_pair(parts: Sequence, index: int, htype: str,
                       errors: MessageContext) -> np.ndarray:
    what = htype
    header = _json_object(parts[index], what, errors)
    _htype(header, htype, what, errors)
    rows, cols = _wire_shape(header, what, errors)
    type_name = _require(header, "type", str, what, errors)
    if type_name not in ARRAY_TYPES:
        raise errors.error(f"unknown type {_short(type_name)} in {what}")
    dtype = np.dtype(type_name).newbyteorder("<")
    blob = parts[index + 1]
    expected = rows * cols * dtype.itemsize
    if len(blob) != expected:
        raise errors.error(f"wrong size: {what} blob has {len(blob)} bytes, "
                           f"shape [{cols}, {rows}] {type_name} needs {expected}")
    return np.frombuffer(blob, dtype).reshape(rows, cols)


def _start_fields(config: Mapping) -> dict:
    """SeriesStart fields derived from the v1 config part (None where absent)."""
    nimages, ntrigger = _integer(config, "nimages"), _integer(config, "ntrigger")
    rows, cols = _integer(config, "y_pixels_in_detector"), _integer(config, "x_pixels_in_detector")
    wavelength_a = _number(config, "wavelength")
    centre_x, centre_y = _number(config, "beam_center_x"), _number(config, "beam_center_y")
    return {
        "n_images": nimages * ntrigger if nimages is not None and ntrigger is not None else None,
        "image_shape": (rows, cols) if rows is not None and cols is not None else None,
        "image_dtype": _BIT_DEPTH_DTYPE.get(_integer(config, "bit_depth_image")),
        "wavelength_m": wavelength_a * 1e-10 if wavelength_a is not None else None,
        "pixel_size_m": _number(config, "x_pixel_size"),
        "detector_distance_m": _number(config, "detector_distance"),
        "count_time_s": _number(config, "count_time"),
        "frame_time_s": _number(config, "frame_time"),
        "beam_centre_px": ((centre_x, centre_y)
                           if centre_x is not None and centre_y is not None else None),
        "saturation_value": _integer(config, "countrate_correction_count_cutoff"),
    }


def _decode_header(first: dict, parts: Sequence, errors: MessageContext) -> SeriesStart:
    what = "dheader-1.0"
    series_id = _require(first, "series", int, what, errors)
    detail = _require(first, "header_detail", str, what, errors)
    if detail not in HEADER_PARTS:
        raise errors.error(f"unknown header_detail {_short(detail)} in {what}")
    n_parts = HEADER_PARTS[detail]
    if len(parts) not in (n_parts, n_parts + 1):
        raise errors.error(f"wrong part count: header_detail {_short(detail)} needs {n_parts} or "
                           f"{n_parts + 1} parts, got {len(parts)}")
    config: dict = {}
    fields: dict = {}
    if detail != "none":
        config = _with_source(_json_object(parts[1], "config", errors), bytes(parts[1]))
        fields = _start_fields(config)
    arrays = {}
    if detail == "all":
        arrays["flatfield"] = _decode_array_pair(parts, 2, "dflatfield-1.0", errors)
        arrays["pixel_mask"] = _decode_array_pair(parts, 4, "dpixelmask-1.0", errors)
        arrays["countrate_table"] = _decode_array_pair(parts, 6, "dcountrate_table-1.0", errors)
        if arrays["flatfield"].dtype != np.float32:
            arrays["flatfield"] = arrays["flatfield"].astype(np.float32)
        if arrays["pixel_mask"].dtype != np.uint32:
            arrays["pixel_mask"] = arrays["pixel_mask"].astype(np.uint32)
    appendix = _decode_appendix(parts[n_parts]) if len(parts) > n_parts else None
    return SeriesStart(series_id=series_id, protocol="v1", header_detail=detail, config=config,
                       appendix=appendix, **fields, **arrays)


def parse_encoding(encoding: str, type_name: str) -> str:
    """The :data:`stream.messages.Compression` of a v1 ``encoding`` for pixels of ``type_name``.

    Raises ProtocolError for an unknown encoding or a ``bs<N>`` that does not match the type.
    """
    if encoding == "<":
        return "none"
    if encoding == "lz4<":
        return "lz4-raw"
    if encoding.startswith("bs") and encoding.endswith("-lz4<"):
        bits = encoding[2:-5]
        if bits not in ("8", "16", "32", "64"):
            raise ProtocolError(f"unknown encoding {_short(encoding)}")
        expected = 8 * np.dtype(type_name).itemsize
        if int(bits) != expected:
            raise ProtocolError(f"encoding {_short(encoding)} does not match type {_short(type_name)} "
                                f"({expected} bits)")
        return "bslz4"
    raise ProtocolError(f"unknown encoding {_short(encoding)}")


def _decode_image(first: dict, parts: Sequence, errors: MessageContext) -> ImageFrame:
    errors.image = True
    what = "dimage-1.0"
    if isinstance(first.get("series"), int) and not isinstance(first.get("series"), bool):
        errors.series_id = first["series"]
    if isinstance(first.get("frame"), int) and not isinstance(first.get("frame"), bool):
        errors.frame_index = first["frame"]
    series_id = _require(first, "series", int, what, errors)
    frame_index = _require(first, "frame", int, what, errors)
    if frame_index < 0:
        raise errors.error(f"negative frame number {frame_index} in {what}")
    if len(parts) not in (IMAGE_PARTS, IMAGE_PARTS + 1):
        raise errors.error(f"wrong part count: an image message needs {IMAGE_PARTS} or "
                           f"{IMAGE_PARTS + 1} parts, got {len(parts)}")
    what = "dimage_d-1.0"
    detail = _json_object(parts[1], what, errors)
    _htype(detail, what, what, errors)
    shape = _wire_shape(detail, what, errors)
    type_name = _require(detail, "type", str, what, errors)
    if type_name not in PIXEL_TYPES:
        raise errors.error(f"unknown pixel type {_short(type_name)} in {what}")
    encoding = _require(detail, "encoding", str, what, errors)
    size = _require(detail, "size", int, what, errors)
    blob = parts[2]
    if len(blob) != size:
        raise errors.error(f"size mismatch: {what} says size {size} but the blob has "
                           f"{len(blob)} bytes")
    try:
        compression = parse_encoding(encoding, type_name)
        itemsize = np.dtype(type_name).itemsize
        if compression == "bslz4":
            check_framed_header(blob, compression, shape, itemsize)
        elif compression == "none" and size != shape[0] * shape[1] * itemsize:
            raise ProtocolError(f"wrong size: uncompressed blob has {size} bytes, shape "
                                f"[{shape[1]}, {shape[0]}] {type_name} needs "
                                f"{shape[0] * shape[1] * itemsize}")
        elif compression == "lz4-raw" and size == 0:
            raise ProtocolError("truncated blob: lz4< blob is empty")
    except ProtocolError as exc:
        raise errors.error(str(exc)) from exc
    what = "dconfig-1.0"
    times = _json_object(parts[3], what, errors)
    _htype(times, what, what, errors)
    time_ns = {}
    for key in ("start_time", "stop_time", "real_time"):
        if key in times:
            time_ns[key] = _require(times, key, int, what, errors)
    appendix = _decode_appendix(parts[4]) if len(parts) > IMAGE_PARTS else None
    return ImageFrame(series_id=series_id, frame_index=frame_index, shape=shape, dtype=type_name,
                      compression=compression, payload=blob, elem_size=itemsize,
                      start_time_ns=time_ns.get("start_time"),
                      stop_time_ns=time_ns.get("stop_time"),
                      real_time_ns=time_ns.get("real_time"), appendix=appendix)


def _decode_end(first: dict, parts: Sequence, errors: MessageContext) -> SeriesEnd:
    series_id = _require(first, "series", int, "dseries_end-1.0", errors)
    if len(parts) != 1:
        raise errors.error(f"wrong part count: dseries_end-1.0 has 1 part, got {len(parts)}")
    return SeriesEnd(series_id=series_id)


def decode_v1(parts: Sequence) -> SeriesStart | ImageFrame | SeriesEnd:
    """Decode one v1 multipart message.

    Parameters
    ----------
    parts : sequence of bytes-like
        The ZeroMQ message parts. The image blob is kept as given (no copy, no decompression);
        its bitshuffle header is checked against the declared shape and type.

    Returns
    -------
    SeriesStart, ImageFrame or SeriesEnd

    Raises
    ------
    UndecodableImage
        Malformed image message whose ``series``/``frame`` could be read.
    ProtocolError
        Any other malformed message.
    """
    if len(parts) == 0:
        raise ProtocolError("wrong part count: empty message")
    errors = MessageContext()
    first = _json_object(parts[0], "first", errors)
    htype = first.get("htype")
    if htype == "dheader-1.0":
        return _decode_header(first, parts, errors)
    if htype == "dimage-1.0":
        return _decode_image(first, parts, errors)
    if htype == "dseries_end-1.0":
        return _decode_end(first, parts, errors)
    raise ProtocolError(f"unknown htype {_short(htype)} in the first part")


# --------------------------------------------------------------------------- encoding


def v1_config(start: SeriesStart) -> dict:
    """The config part of ``start``: ``start.config`` plus the typed fields it lacks.

    Raises ProtocolError where a typed field contradicts the config.
    """
    config = dict(start.config)
    if start.n_images is not None:
        ntrigger = config.setdefault("ntrigger", 1)
        if "nimages" not in config and isinstance(ntrigger, int) and ntrigger > 0:
            config["nimages"] = start.n_images // ntrigger
        if config.get("nimages", 0) * ntrigger != start.n_images:
            raise ProtocolError(f"SeriesStart.n_images ({start.n_images}) disagrees with config "
                                f"nimages*ntrigger ({config.get('nimages')}*{ntrigger})")
    if start.image_shape is not None:
        merge_start_field(config, "y_pixels_in_detector", start.image_shape[0], "image_shape")
        merge_start_field(config, "x_pixels_in_detector", start.image_shape[1], "image_shape")
    if start.image_dtype is not None:
        bits = 8 * np.dtype(start.image_dtype).itemsize
        merge_start_field(config, "bit_depth_image", bits, "image_dtype")
    if start.wavelength_m is not None:
        merge_start_field(config, "wavelength", start.wavelength_m * 1e10, "wavelength_m")
    merge_start_field(config, "x_pixel_size", start.pixel_size_m, "pixel_size_m")
    merge_start_field(config, "y_pixel_size", start.pixel_size_m, "pixel_size_m")
    merge_start_field(config, "detector_distance", start.detector_distance_m, "detector_distance_m")
    merge_start_field(config, "count_time", start.count_time_s, "count_time_s")
    merge_start_field(config, "frame_time", start.frame_time_s, "frame_time_s")
    if start.beam_centre_px is not None:
        merge_start_field(config, "beam_center_x", start.beam_centre_px[0], "beam_centre_px")
        merge_start_field(config, "beam_center_y", start.beam_centre_px[1], "beam_centre_px")
    merge_start_field(config, "countrate_correction_count_cutoff", start.saturation_value,
                      "saturation_value")
    if config == dict(start.config) and getattr(start.config, "wire_bytes", None) is not None:
        return start.config  # unchanged: keeps its original spelling
    return config


def _encode_appendix(appendix: Any) -> bytes:
    """bytes go out verbatim; anything else as JSON (Python's default spelling, as sent by a
    user through SIMPLON), or its original spelling when it was decoded and is unmodified."""
    if isinstance(appendix, (bytes, bytearray, memoryview)):
        return bytes(appendix)
    return _spelled(appendix, lambda value: json.dumps(value).encode())


def _array_parts(array: np.ndarray | None, htype: str, name: str) -> list[bytes]:
    if array is None:
        raise ProtocolError(f"header_detail 'all' needs SeriesStart.{name}")
    array = np.asarray(array)
    if array.ndim != 2 or array.dtype.name not in ARRAY_TYPES:
        raise ProtocolError(f"SeriesStart.{name} must be 2-D of {ARRAY_TYPES}, "
                            f"got shape {array.shape} dtype {array.dtype}")
    header = {"htype": htype, "shape": [array.shape[1], array.shape[0]],
              "type": array.dtype.name}
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return [compact_json(header), data.tobytes()]


def encode_v1_start(start: SeriesStart) -> list[bytes]:
    """The global-header message of ``start``: 1, 2 or 8 parts plus the appendix if any.

    The config part is ``start.config`` completed from the typed fields (:func:`v1_config`);
    a config decoded from the wire and left unmodified is sent with its original bytes.
    """
    detail: HeaderDetail = start.header_detail
    if detail not in HEADER_PARTS:
        raise ProtocolError(f"unknown header_detail {_short(detail)}")
    parts = [compact_json({"header_detail": detail, "htype": "dheader-1.0",
                           "series": int(start.series_id)})]
    if detail != "none":
        parts.append(_spelled(v1_config(start), compact_json))
    if detail == "all":
        parts += _array_parts(start.flatfield, "dflatfield-1.0", "flatfield")
        parts += _array_parts(start.pixel_mask, "dpixelmask-1.0", "pixel_mask")
        parts += _array_parts(start.countrate_table, "dcountrate_table-1.0", "countrate_table")
    if start.appendix is not None:
        parts.append(_encode_appendix(start.appendix))
    return parts


def v1_encoding(compression: str, elem_size: int) -> str:
    """The v1 ``encoding`` string of a payload compression."""
    if compression == "bslz4":
        return f"bs{8 * elem_size}-lz4<"
    if compression == "lz4-raw":
        return "lz4<"
    if compression == "none":
        return "<"
    raise ProtocolError(f"stream v1 cannot carry compression {compression!r} "
                        f"(only bslz4, lz4-raw, none)")


def encode_v1_image(frame: ImageFrame, *, config_extra: Mapping[str, Any] | None = None
                    ) -> list[bytes]:
    """The 4 parts of an image message (5 with ``frame.appendix``).

    Parameters
    ----------
    frame : ImageFrame
        ``payload`` is sent unchanged; times that are None are left out of ``dconfig-1.0``.
    config_extra : mapping, optional
        Extra keys for the ``dconfig-1.0`` part.
    """
    if frame.dtype not in PIXEL_TYPES:
        raise ProtocolError(f"unknown pixel type {frame.dtype!r}")
    detail = compact_json({
        "encoding": v1_encoding(frame.compression, frame.elem_size),
        "htype": "dimage_d-1.0",
        "shape": [int(frame.shape[1]), int(frame.shape[0])],
        "size": len(frame.payload),
        "type": frame.dtype,
    })
    first = compact_json({"frame": int(frame.frame_index),
                          "hash": hashlib.md5(detail).hexdigest(),
                          "htype": "dimage-1.0", "series": int(frame.series_id)})
    times = {"htype": "dconfig-1.0"}
    for key, value in (("real_time", frame.real_time_ns), ("start_time", frame.start_time_ns),
                       ("stop_time", frame.stop_time_ns)):
        if value is not None:
            times[key] = int(value)
    times.update(config_extra or {})
    payload = frame.payload if isinstance(frame.payload, bytes) else bytes(frame.payload)
    parts = [first, detail, payload, compact_json(times)]
    if frame.appendix is not None:
        parts.append(_encode_appendix(frame.appendix))
    return parts


def encode_v1_end(end: SeriesEnd) -> list[bytes]:
    """The single-part ``dseries_end-1.0`` message."""
    return [compact_json({"htype": "dseries_end-1.0", "series": int(end.series_id)})]
