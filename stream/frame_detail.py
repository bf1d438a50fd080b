"""The frame-detail endpoint: a viewer asks for one frame of a scan and gets the raw frame, its
mask, the fitted peaks and the polar windows with fit and residual.

Server: :class:`DetailServer`, a REP socket in a thread of the service process, reading the
frames kept by :class:`stream.frame_store.FrameStore` and analysing them with the service's
analysis setup. Client: :class:`FrameDetailClient` (REQ, reset after a time-out: "lazy pirate").

Request: one JSON part ``{"series_id": int, "frame_index": int}``.
Reply: ``[b"detail", JSON meta, frame, excluded, windows]`` where ``frame`` is the decoded
frame re-sent as a bitshuffle-LZ4 chunk (the stored payload itself when it already is one;
decode with :func:`stream.codecs.decompress`), ``excluded`` a bitshuffle-LZ4 uint8 image
(1 = masked or NODATA pixel), ``windows`` float32 ``(3, n_windows, n_q, n_chi)`` (mean counts,
fitted model, residual; NaN in padding bins); or ``[b"error", JSON {"error": message}]`` for
anything that cannot be answered (unknown series or frame, bad JSON, garbage). Never pickle.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from analysis.errors import BraggmapError, ProtocolError
from stream import codecs, wire

log = logging.getLogger(__name__)

DETAIL = b"detail"
ERROR = b"error"
MAX_REQUEST_BYTES = 65536
FRAME_CODEC = "bslz4"


# -- what a client gets --------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class PeakDetail:
    """Fit of one peak window of one frame.

    Attributes
    ----------
    name : str
    status : int
        :class:`analysis.status.Status` code; ``reason`` says it in words.
    reason : str
    values, errors : dict of str to float
        ``i0`` (photons), ``q0_nm``, ``chi0_deg``, ``fwhm_q_nm``, ``fwhm_chi_deg`` and their
        1-sigma errors (same keys); NaN where missing.
    centre_px : (row, col) or None
        Fitted centre on the detector, fractional pixel indices.
    ellipse_px : (rows, cols) of ndarray or None
        Outline of the FWHM ellipse on the detector.
    window_outline_px : (rows, cols) of ndarray
        Outline of the peak's polar window on the detector.
    """

    name: str
    status: int
    reason: str
    values: dict[str, float]
    errors: dict[str, float]
    centre_px: tuple[float, float] | None
    ellipse_px: tuple[np.ndarray, np.ndarray] | None
    window_outline_px: tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True, eq=False)
class WindowDetail:
    """One polar window: arrays of shape (n_q, n_chi) of this window's own bins."""

    name: str
    q_centres_nm: np.ndarray
    chi_centres_deg: np.ndarray
    mean_counts: np.ndarray
    model: np.ndarray
    residual: np.ndarray


@dataclass(frozen=True, eq=False)
class FrameDetail:
    """Everything the viewer shows about one frame.

    Attributes
    ----------
    series_id, frame_index : int
    frame : ndarray, shape (rows, columns)
        Raw counts (uint8/16/32, NODATA = 2^bits - 1).
    excluded : ndarray of bool, shape (rows, columns)
        Masked or NODATA pixels.
    peaks : tuple of PeakDetail
    windows : tuple of WindowDetail
    parameters : dict
        Map parameter name -> ``{"value": float (NaN if missing), "status", "reason", "unit"}``.
    analysis_ms : float
        Time the service spent analysing the frame.
    """

    series_id: int
    frame_index: int
    frame: np.ndarray
    excluded: np.ndarray
    peaks: tuple[PeakDetail, ...]
    windows: tuple[WindowDetail, ...]
    parameters: dict[str, dict[str, Any]]
    analysis_ms: float = 0.0

    def peak(self, name: str) -> PeakDetail:
        for peak in self.peaks:
            if peak.name == name:
                return peak
        raise KeyError(f"frame detail has no peak {name!r}")


@dataclass(frozen=True)
class DetailError:
    """Why no detail came back: ``kind`` is ``"server"`` (the service said why), ``"timeout"``
    or ``"protocol"`` (the reply made no sense)."""

    message: str
    kind: str = "server"


# -- encoding --------------------------------------------------------------------------------------
def error_reply(message: str) -> list[bytes]:
    return [ERROR, wire.dumps({"error": message})]


def encode_detail_reply(series_id: int, frame_index: int, frame_bslz4: bytes, frame_shape, frame_dtype: str,
                        content: dict, excluded: np.ndarray, planes: np.ndarray) -> list[bytes]:
    """The reply parts (see the module docstring); ``content`` from
    :func:`stream.frame_detail_content.frame_detail_content`."""
    meta = dict(content, series_id=int(series_id), frame_index=int(frame_index),
                frame={"shape": [int(v) for v in frame_shape], "dtype": str(frame_dtype), "compression": FRAME_CODEC},
                excluded={"shape": list(excluded.shape), "dtype": "uint8", "compression": FRAME_CODEC})
    return [DETAIL, wire.dumps(meta), bytes(frame_bslz4), codecs.compress(excluded.astype(np.uint8), FRAME_CODEC),
            np.ascontiguousarray(planes, dtype="<f4").tobytes()]


def _nan(value) -> float:
    return float("nan") if value is None else float(value)


def _outline(points) -> tuple[np.ndarray, np.ndarray] | None:
    if points is None:
        return None
    return (np.array([_nan(v) for v in points["rows"]]), np.array([_nan(v) for v in points["cols"]]))


def decode_detail_reply(parts: list) -> FrameDetail | DetailError:
    """Parse a reply; an error reply or a malformed one becomes a :class:`DetailError`."""
    try:
        kind = bytes(parts[0])
        if kind == ERROR and len(parts) == 2:
            return DetailError(str(wire.loads(parts[1]).get("error", "unknown error")), "server")
        if kind != DETAIL or len(parts) != 5:
            raise ProtocolError(f"reply of kind {kind[:20]!r} with {len(parts)} parts")
        meta = wire.loads(parts[1])
        frame_info, excluded_info = meta["frame"], meta["excluded"]
        frame = codecs.decompress(bytes(parts[2]), frame_info["compression"], frame_info["dtype"], frame_info["shape"])
        excluded = codecs.decompress(bytes(parts[3]), excluded_info["compression"], "uint8",
                                     excluded_info["shape"]).astype(bool)
        windows_info = meta["windows"]
        shape = tuple(int(v) for v in windows_info["shape"])
        planes = np.frombuffer(bytes(parts[4]), dtype="<f4")
        if planes.size != 3 * int(np.prod(shape)):
            raise ProtocolError(f"window arrays of {planes.size} values do not fit 3 x {shape}")
        planes = planes.reshape((3, *shape))
        windows = []
        for w, name in enumerate(windows_info["peak_names"]):
            n_q, n_chi = int(windows_info["n_q"][w]), int(windows_info["n_chi"][w])
            windows.append(WindowDetail(
                name=name,
                q_centres_nm=np.array([_nan(v) for v in windows_info["q_centres_nm"][w]]),
                chi_centres_deg=np.array([_nan(v) for v in windows_info["chi_centres_deg"][w]]),
                mean_counts=planes[0, w, :n_q, :n_chi], model=planes[1, w, :n_q, :n_chi],
                residual=planes[2, w, :n_q, :n_chi]))
        peaks = tuple(PeakDetail(
            name=p["name"], status=int(p["status"]), reason=str(p["reason"]),
            values={k: _nan(v) for k, v in p["values"].items()},
            errors={k: _nan(v) for k, v in p["errors"].items()},
            centre_px=None if p["centre_px"] is None else (_nan(p["centre_px"]["row"]), _nan(p["centre_px"]["col"])),
            ellipse_px=_outline(p["ellipse_px"]), window_outline_px=_outline(p["window_outline_px"]),
        ) for p in meta["peaks"])
        parameters = {name: dict(entry, value=_nan(entry["value"])) for name, entry in meta["parameters"].items()}
        return FrameDetail(int(meta["series_id"]), int(meta["frame_index"]), frame, excluded, peaks,
                           tuple(windows), parameters, float(meta.get("analysis_ms", 0.0)))
    except (BraggmapError, KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        return DetailError(f"malformed frame-detail reply: {exc}", "protocol")


def parse_request(parts: list) -> tuple[int, int]:
    """(series_id, frame_index) of a request; :class:`ProtocolError` naming what is wrong."""
    if len(parts) != 1:
        raise ProtocolError(f"request has {len(parts)} parts, expected one JSON part")
    request = wire.loads(parts[0])
    if not isinstance(request, dict):
        raise ProtocolError(f"request {str(request)[:80]!r} is not a JSON object")
    numbers = []
    for key in ("series_id", "frame_index"):
        value = request.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ProtocolError(f"request field {key}={value!r} is not a non-negative integer")
        numbers.append(value)
    return numbers[0], numbers[1]


# -- server ----------------------------------------------------------------------------------------
class DetailServer:
    """REP server thread answering frame-detail requests.

    Parameters
    ----------
    endpoint : str
        Where to bind; ``tcp://127.0.0.1:0`` picks a free port (see :attr:`endpoint`).
    frame_store : FrameStore
        Where the frames are.
    analyzer_cache : AnalyzerCache or callable
        :class:`stream.analysis_setup.AnalyzerCache`, or a function returning one (called at the
        first request: the tables cost seconds and memory only when a viewer asks).
    """

    def __init__(self, endpoint: str, frame_store, analyzer_cache, context: zmq.Context | None = None) -> None:
        from stream.ingest import _bindable

        self.frame_store = frame_store
        self._analyzer_cache = analyzer_cache
        self._integrator = None
        self.socket = (context or zmq.Context.instance()).socket(zmq.REP)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        self.socket.bind(_bindable(endpoint))
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.requests = 0
        self.errors = 0
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> "DetailServer":
        self.thread = threading.Thread(target=self.run, name="braggmap-detail", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.thread is not None:
            self.thread.join(30)

    def run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self.socket.poll(100, zmq.POLLIN):
                    continue
                parts = self.socket.recv_multipart()
                self.socket.send_multipart(self.handle(parts), copy=False)
        finally:
            self.socket.close(linger=0)

    def analyzer_cache(self):
        if not hasattr(self._analyzer_cache, "for_series"):
            self._analyzer_cache = self._analyzer_cache()
        return self._analyzer_cache

    def handle(self, parts: list) -> list[bytes]:
        """The reply to one request; never raises."""
        self.requests += 1
        try:
            return self._answer(*parse_request(parts))
        except BraggmapError as exc:
            self.errors += 1
            return error_reply(str(exc))
        except Exception as exc:  # a bug must not take the service down: say it to the client
            self.errors += 1
            log.exception("frame-detail request failed")
            return error_reply(f"internal error: {type(exc).__name__}: {exc}")

    def _answer(self, series_id: int, frame_index: int) -> list[bytes]:
        from stream.frame_detail_content import frame_detail_content

        stored = self.frame_store.get(series_id, frame_index)
        if stored is None:
            kept = self.frame_store.series_ids()
            if series_id not in kept:
                return self._error(f"series {series_id} is not kept (kept: {kept})")
            return self._error(f"frame {frame_index} of series {series_id} was not received")
        meta, payload = stored
        try:
            frame = codecs.decompress(payload, meta.compression, meta.dtype, meta.shape)
        except ProtocolError as exc:
            return self._error(f"frame {frame_index} of series {series_id} cannot be decoded: {exc}")
        cache = self.analyzer_cache()
        header = self.frame_store.header(series_id)
        if header is not None:
            info, pixel_mask = header
            analyzer, saturation = cache.for_series(info, pixel_mask), info.saturation_value
        else:
            analyzer, pixel_mask, saturation = cache.default(), None, None
        if self._integrator is None:
            self._integrator = analyzer.geometry.integrator()
        content, excluded, planes = frame_detail_content(analyzer, frame, pixel_mask, saturation, self._integrator)
        frame_bslz4 = payload if meta.compression == FRAME_CODEC else codecs.compress(frame, FRAME_CODEC)
        return encode_detail_reply(series_id, frame_index, frame_bslz4, meta.shape, meta.dtype, content,
                                   excluded, planes)

    def _error(self, message: str) -> list[bytes]:
        self.errors += 1
        return error_reply(message)


# -- client ----------------------------------------------------------------------------------------
@dataclass
class FrameDetailClient:
    """REQ client of a :class:`DetailServer`; a time-out closes and reopens the socket so the
    next request starts clean (lazy pirate). Not thread-safe: one thread per client."""

    endpoint: str
    context: zmq.Context | None = None
    _socket: Any = field(default=None, init=False, repr=False)

    def _connect(self):
        if self._socket is None:
            self._socket = (self.context or zmq.Context.instance()).socket(zmq.REQ)
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.connect(self.endpoint)
        return self._socket

    def request(self, series_id: int, frame_index: int, timeout_ms: int = 30000) -> FrameDetail | DetailError:
        """Ask for one frame; returns its :class:`FrameDetail` or a :class:`DetailError`."""
        socket = self._connect()
        socket.send(wire.dumps({"series_id": int(series_id), "frame_index": int(frame_index)}))
        if not socket.poll(timeout_ms, zmq.POLLIN):
            self.reset()
            return DetailError(f"no reply from the frame-detail endpoint {self.endpoint} within "
                               f"{timeout_ms} ms", "timeout")
        return decode_detail_reply(socket.recv_multipart())

    def reset(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def close(self) -> None:
        self.reset()
