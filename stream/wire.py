"""The service's internal messages between ingest, workers and collector.

Multipart ZeroMQ messages of one kind tag, one compact JSON part and raw binary parts (never
pickle). Image payloads travel still compressed, exactly as the detector sent them.

=================  ==========================  =============================================
kind               direction                   parts after the kind
=================  ==========================  =============================================
``series``         ingest -> workers, collector JSON :class:`SeriesInfo`, pixel mask (uint32 or b"")
``frame``          ingest -> worker            JSON frame metadata, compressed payload (or b""
                                               and the payload's frame-store location in the
                                               metadata's ``"stored"``, for a worker on the
                                               ingest's host that reads the store)
``frames``         ingest -> worker            n frames at once (those a burst of the detector
                                               brought for this worker): JSON list of n frame
                                               metadata, then n payloads (b"" where stored)
``ready``          worker -> ingest            JSON ``{"credits": n, "worker": name}``
``credit``         worker -> ingest            (none): one more frame may be sent; or ASCII
                                               ``n``: n more (one message for a batch)
``result``         worker -> collector         JSON metadata, values float64, statuses int32
``results``        worker -> collector         the results of a batch of n frames: JSON list
                                               of n metadata, values (n, p) float64, statuses
                                               (n, p) int32
``summary``        ingest -> collector         JSON accounting summary + ``forwarded``
``problem``        ingest/worker -> collector  JSON ``{"series_id", "message"}``
``series_end``     ingest -> every worker      JSON ``{"series_id"}``: send your average pattern
``average``        worker -> collector         JSON metadata, signal_sum f8, raw_sum f8, n_valid i8
=================  ==========================  =============================================
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from analysis.errors import ProtocolError
from stream.messages import ImageFrame, SeriesStart

SERIES = b"series"
FRAME = b"frame"
FRAMES = b"frames"
READY = b"ready"
CREDIT = b"credit"
RESULT = b"result"
RESULTS = b"results"
SUMMARY = b"summary"
PROBLEM = b"problem"
SERIES_END = b"series_end"
AVERAGE = b"average"


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=True).encode()


def loads(part: bytes | memoryview) -> Any:
    try:
        return json.loads(bytes(part))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"internal message part is not JSON: {exc}") from exc


def _jsonable(value: Any) -> Any:
    """Appendix payloads may be bytes: keep them readable in JSON."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return raw.hex()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


@dataclass(frozen=True)
class SeriesInfo:
    """What workers and the collector need to know about a series (from its header)."""

    series_id: int
    protocol: str
    n_images: int | None
    image_shape: tuple[int, int] | None
    image_dtype: str | None
    saturation_value: int | None
    wavelength_m: float | None
    pixel_size_m: float | None
    detector_distance_m: float | None
    count_time_s: float | None
    appendix: Any = None
    header_seen: bool = True
    pixel_mask_digest: str | None = None
    """SHA-1 of the series' pixel mask (little-endian uint32), set by :func:`encode_series`:
    the workers find the analyzer of a mask seen before without hashing 18 MB again."""
    instance: int | None = None
    """Set by the ingest for each series it opens, increasing (from its clock, in ns): frames,
    results and averages carry it as ``series_instance``, so the collector tells two series of
    one detector series id apart (a detector that numbers from 1 again after a restart)."""

    @classmethod
    def from_start(cls, start: SeriesStart) -> "SeriesInfo":
        return cls(
            series_id=start.series_id,
            protocol=start.protocol,
            n_images=start.n_images,
            image_shape=start.image_shape,
            image_dtype=start.image_dtype,
            saturation_value=start.saturation_value,
            wavelength_m=start.wavelength_m,
            pixel_size_m=start.pixel_size_m,
            detector_distance_m=start.detector_distance_m,
            count_time_s=start.count_time_s,
            appendix=_jsonable(start.appendix),
        )

    @classmethod
    def headerless(cls, frame: ImageFrame) -> "SeriesInfo":
        """A series whose header was never received: only what the first frame tells."""
        return cls(
            series_id=frame.series_id,
            protocol="?",
            n_images=None,
            image_shape=frame.shape,
            image_dtype=frame.dtype,
            saturation_value=None,
            wavelength_m=None,
            pixel_size_m=None,
            detector_distance_m=None,
            count_time_s=None,
            header_seen=False,
        )

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SeriesInfo":
        data = dict(data)
        if data.get("image_shape") is not None:
            data["image_shape"] = tuple(int(v) for v in data["image_shape"])
        return cls(**data)


def pixel_mask_digest(pixel_mask: np.ndarray) -> str:
    """SHA-1 (hex) of a pixel mask as little-endian uint32."""
    return hashlib.sha1(np.ascontiguousarray(pixel_mask, dtype="<u4")).hexdigest()


class MaskEncoder:
    """The wire bytes and digest of pixel masks, remembering the last one: the series of a
    beamtime mostly share their mask, and copying and hashing a 4M mask (18 MB) costs the
    ingest ~20 ms per series, where comparing it with the last one costs ~9 ms."""

    def __init__(self) -> None:
        self._last: np.ndarray | None = None  # a read-only view of ``_bytes``
        self._bytes = b""
        self._digest: str | None = None

    def encode(self, pixel_mask: np.ndarray | None) -> tuple[bytes, str | None]:
        """(little-endian uint32 bytes, :func:`pixel_mask_digest`) of ``pixel_mask``; (b"", None) for None."""
        if pixel_mask is None:
            return b"", None
        contiguous = np.ascontiguousarray(pixel_mask, dtype="<u4")
        last = self._last
        if last is None or last.shape != contiguous.shape or not np.array_equal(last, contiguous):
            self._bytes = contiguous.tobytes()
            self._digest = pixel_mask_digest(contiguous)
            self._last = np.frombuffer(self._bytes, dtype="<u4").reshape(contiguous.shape)
        return self._bytes, self._digest


def encode_series(info: SeriesInfo, pixel_mask: np.ndarray | None, masks: MaskEncoder | None = None) -> list[bytes]:
    """The series message; ``masks`` (optional) reuses the encoding of a mask equal to its last one."""
    mask, digest = (masks or MaskEncoder()).encode(pixel_mask)
    return [SERIES, dumps(dict(info.as_dict(), pixel_mask_digest=digest)), mask]


def series_with_mask_as_before(parts: list[bytes]) -> list[bytes]:
    """The series message ``parts`` (of :func:`encode_series`) without its mask, for a receiver
    that holds the mask of that digest from the series before (:func:`decode_series`'s
    ``last_mask``): a 4M mask is 18 MB on the wire per worker and series."""
    meta = loads(parts[1])
    if meta.get("pixel_mask_digest") is None:
        return parts
    return [parts[0], dumps(dict(meta, pixel_mask_as_before=True)), b""]


def decode_series(parts: list, last_mask: tuple[str, np.ndarray] | None = None) -> tuple[SeriesInfo, np.ndarray | None]:
    """(series info, pixel mask or None) of a series message; ``last_mask`` = (digest, mask) the
    receiver kept from its last series, for a message sent as :func:`series_with_mask_as_before`
    (a ``ProtocolError`` when it holds another mask or none)."""
    if len(parts) != 3:
        raise ProtocolError(f"series message has {len(parts)} parts, expected 3")
    meta = loads(parts[1])
    if not isinstance(meta, dict):
        raise ProtocolError(f"series message meta is {type(meta).__name__}, not an object")
    as_before = meta.pop("pixel_mask_as_before", False)
    try:
        info = SeriesInfo.from_dict(meta)
    except (TypeError, ValueError) as exc:  # missing, unknown or mistyped fields
        raise ProtocolError(f"series message meta does not describe a series: {exc}") from exc
    mask_bytes = memoryview(parts[2])  # no copy: the mask is a read-only view of the message
    mask = None
    if as_before:
        if mask_bytes.nbytes or info.pixel_mask_digest is None:
            raise ProtocolError(f"series {info.series_id}: a mask 'as before' needs a digest and no mask bytes")
        if last_mask is None or last_mask[0] != info.pixel_mask_digest:
            raise ProtocolError(f"series {info.series_id}: its pixel mask (digest {info.pixel_mask_digest}) is "
                                f"not the one this receiver holds from its last series")
        mask = last_mask[1]
        if info.image_shape is None or mask.shape != tuple(info.image_shape):
            raise ProtocolError(f"series {info.series_id}: the mask held, {mask.shape}, does not fit shape "
                                f"{info.image_shape}")
    elif mask_bytes.nbytes:
        if info.image_shape is None or mask_bytes.nbytes != 4 * info.image_shape[0] * info.image_shape[1]:
            raise ProtocolError(f"series {info.series_id}: pixel mask of {mask_bytes.nbytes} bytes "
                                f"does not fit shape {info.image_shape}")
        mask = np.frombuffer(mask_bytes, dtype="<u4").reshape(info.image_shape)
    elif info.pixel_mask_digest is not None:
        raise ProtocolError(f"series {info.series_id}: a pixel mask digest without a mask")
    return info, mask


def encode_frame(frame: ImageFrame, received_ns: int, series_instance: int | None = None) -> list:
    return encode_frames([(frame_meta(frame, received_ns, series_instance), frame.payload)])


def encode_stored_frame(frame: ImageFrame, received_ns: int, location: dict,
                        series_instance: int | None = None) -> list:
    """A frame message without its payload: ``location`` (a
    :class:`stream.frame_store.StoredLocation` as a dict) says where the worker reads it."""
    return encode_frames([(frame_meta(frame, received_ns, series_instance, location), b"")])


def frame_meta(frame: ImageFrame, received_ns: int, series_instance: int | None = None,
               location: dict | None = None) -> dict:
    """The metadata of a frame for a worker; ``location`` (a stored payload's
    :class:`stream.frame_store.StoredLocation` as a dict) goes in as ``"stored"``."""
    meta = _frame_meta(frame, received_ns, series_instance)
    if location is not None:
        meta["stored"] = location
    return meta


def encode_frames(frames: list[tuple[dict, Any]]) -> list:
    """One message for the frames ``[(meta, payload), ...]`` (:func:`frame_meta`; payload b""
    where the metadata says where it is stored): a ``frame`` message for one, ``frames`` for more."""
    if len(frames) == 1:
        meta, payload = frames[0]
        return [FRAME, dumps(meta), payload]
    return [FRAMES, dumps([meta for meta, _ in frames]), *(payload for _, payload in frames)]


def decode_frames(parts: list) -> list[tuple[dict, memoryview]]:
    """(metadata, payload) of each frame of a ``frame`` or ``frames`` message, in order.

    Raises
    ------
    ProtocolError
        Wrong part count, or metadata that is not one object per payload.
    """
    if bytes(parts[0]) == FRAME:
        return [decode_frame(parts)]
    metas = loads(parts[1]) if len(parts) > 1 else None
    if not isinstance(metas, list) or not metas or not all(isinstance(m, dict) for m in metas):
        raise ProtocolError("frames metadata is not a non-empty list of objects")
    if len(parts) != 2 + len(metas):
        raise ProtocolError(f"frames message of {len(metas)} frames has {len(parts)} parts, expected {2 + len(metas)}")
    return [_decoded_frame(meta, payload) for meta, payload in zip(metas, parts[2:])]


def _decoded_frame(meta, payload) -> tuple[dict, memoryview]:
    """One frame's metadata (its shape a tuple) and payload (a memoryview) as the worker takes them.

    Raises
    ------
    ProtocolError
        Metadata that is not an object with a list ``"shape"``.
    """
    if not isinstance(meta, dict) or not isinstance(meta.get("shape"), list):
        raise ProtocolError(f"frame metadata without a shape: {meta!r:.80}")
    meta["shape"] = tuple(meta["shape"])
    return meta, payload.buffer if hasattr(payload, "buffer") else memoryview(payload)


def _frame_meta(frame: ImageFrame, received_ns: int, series_instance: int | None) -> dict:
    return {
        "series_id": frame.series_id,
        "frame_index": frame.frame_index,
        "shape": list(frame.shape),
        "dtype": frame.dtype,
        "compression": frame.compression,
        "elem_size": frame.elem_size,
        "received_ns": received_ns,
        "series_instance": series_instance,
    }


def decode_frame(parts: list) -> tuple[dict, memoryview]:
    """(metadata, payload) of a ``frame`` message."""
    if len(parts) != 3:
        raise ProtocolError(f"frame message has {len(parts)} parts, expected 3")
    return _decoded_frame(loads(parts[1]), parts[2])


def encode_result(meta: dict, values: np.ndarray, statuses: np.ndarray) -> list[bytes]:
    return [
        RESULT,
        dumps(meta),
        np.ascontiguousarray(values, dtype="<f8").tobytes(),
        np.ascontiguousarray(statuses, dtype="<i4").tobytes(),
    ]


MAX_CREDITS_PER_MESSAGE = 1 << 16
"""A credit message naming more frames than this is malformed (a worker's batch is far smaller)."""


def encode_credit(n_frames: int) -> list[bytes]:
    """``n_frames`` more frames may be sent to this worker (the bare ``[CREDIT]`` for one)."""
    return [CREDIT] if n_frames == 1 else [CREDIT, str(int(n_frames)).encode()]


def decode_credit(parts: list) -> int:
    """The frames a credit message (``[CREDIT]`` or ``[CREDIT, n]``, as the worker sent it, without
    the ROUTER's identity part) grants.

    Raises
    ------
    ProtocolError
        A count that is not a decimal integer in 1 .. :data:`MAX_CREDITS_PER_MESSAGE`.
    """
    if len(parts) < 2:
        return 1
    text = bytes(parts[1])
    if len(parts) > 2 or not text.isdigit() or not 1 <= int(text) <= MAX_CREDITS_PER_MESSAGE:
        raise ProtocolError(f"bad credit message: {text[:20]!r} (expected 1 .. {MAX_CREDITS_PER_MESSAGE})")
    return int(text)


def encode_results(metas: list[dict], values: np.ndarray, statuses: np.ndarray) -> list[bytes]:
    """The results of a batch in one message: frame ``k`` has ``metas[k]``, ``values[k]`` and
    ``statuses[k]`` (arrays of shape (n, p): float64, int32)."""
    values, statuses = np.asarray(values), np.asarray(statuses)
    if values.shape != statuses.shape or values.ndim != 2 or values.shape[0] != len(metas):
        raise ValueError(f"{len(metas)} results with values {values.shape} and statuses {statuses.shape}")
    return [RESULTS, dumps(metas), np.ascontiguousarray(values, dtype="<f8").tobytes(),
            np.ascontiguousarray(statuses, dtype="<i4").tobytes()]


def decode_results(parts: list) -> list[tuple[dict, np.ndarray, np.ndarray]]:
    """(metadata, values float64 (p,), statuses int32 (p,)) of each frame of a ``result`` or a
    ``results`` message.

    Raises
    ------
    ProtocolError
        Wrong part count, metadata that is not a list of objects, or arrays that do not hold
        one row of the same length per frame.
    """
    if bytes(parts[0]) == RESULT:
        return [decode_result(parts)]
    if len(parts) != 4:
        raise ProtocolError(f"results message has {len(parts)} parts, expected 4")
    metas = loads(parts[1])
    if not isinstance(metas, list) or not metas or not all(isinstance(m, dict) for m in metas):
        raise ProtocolError("results metadata is not a non-empty list of objects")
    values = np.frombuffer(bytes(parts[2]), dtype="<f8")
    statuses = np.frombuffer(bytes(parts[3]), dtype="<i4")
    if values.size != statuses.size or values.size % len(metas):
        raise ProtocolError(f"{len(metas)} results but {values.size} values and {statuses.size} statuses")
    values, statuses = values.reshape(len(metas), -1), statuses.reshape(len(metas), -1)
    return list(zip(metas, values, statuses))


def decode_result(parts: list) -> tuple[dict, np.ndarray, np.ndarray]:
    if len(parts) != 4:
        raise ProtocolError(f"result message has {len(parts)} parts, expected 4")
    meta = loads(parts[1])
    values = np.frombuffer(bytes(parts[2]), dtype="<f8")
    statuses = np.frombuffer(bytes(parts[3]), dtype="<i4")
    if values.shape != statuses.shape:
        raise ProtocolError(f"result has {values.size} values but {statuses.size} statuses")
    return meta, values, statuses


def encode_average(meta: dict, signal_sum: np.ndarray, raw_sum: np.ndarray, n_valid: np.ndarray) -> list[bytes]:
    """A worker's share of the average pattern (sums over the frames it analysed)."""
    meta = dict(meta, shape=list(signal_sum.shape))
    return [AVERAGE, dumps(meta), np.ascontiguousarray(signal_sum, "<f8").tobytes(),
            np.ascontiguousarray(raw_sum, "<f8").tobytes(), np.ascontiguousarray(n_valid, "<i8").tobytes()]


def decode_average(parts: list) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    if len(parts) != 5:
        raise ProtocolError(f"average message has {len(parts)} parts, expected 5")
    meta = loads(parts[1])
    shape = tuple(int(v) for v in meta["shape"])
    arrays = []
    for part, dtype in zip(parts[2:], ("<f8", "<f8", "<i8")):
        array = np.frombuffer(bytes(part), dtype=dtype)
        if array.size != int(np.prod(shape)):
            raise ProtocolError(f"average message array of {array.size} values does not fit shape {shape}")
        arrays.append(array.reshape(shape))
    return meta, *arrays
