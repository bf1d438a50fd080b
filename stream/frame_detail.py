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

import zmq

from analysis.errors import BraggmapError, ProtocolError
from stream.loop_thread import LoopThread
from stream.reqrep import LazyPirate, bind_rep
from stream import codecs, wire
from stream.frame_detail_reply import (DETAIL, ERROR, FRAME_CODEC, DetailError, FrameDetail, PeakDetail,
                                       WindowDetail, decode_detail_reply, encode_detail_reply, error_reply)

__all__ = ["DETAIL", "ERROR", "DetailError", "DetailServer", "FrameDetail", "FrameDetailClient", "PeakDetail",
           "WindowDetail", "decode_detail_reply", "encode_detail_reply", "error_reply", "parse_request"]

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 65536


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
class DetailServer(LoopThread):
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

    thread_name = "braggmap-detail"
    join_timeout_s = 30.0

    def __init__(self, endpoint: str, frame_store, analyzer_cache, context: zmq.Context | None = None) -> None:
        self.frame_store = frame_store
        self._analyzer_cache = analyzer_cache
        self._integrator = None
        self.socket = bind_rep(endpoint, "frame-detail", MAX_REQUEST_BYTES, context)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.requests = 0
        self.errors = 0



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
class FrameDetailClient(LazyPirate):
    """REQ client of a :class:`DetailServer` (:class:`stream.reqrep.LazyPirate`). Not thread-safe:
    one thread per client."""

    def request(self, series_id: int, frame_index: int, timeout_ms: int = 30000) -> FrameDetail | DetailError:
        """Ask for one frame; returns its :class:`FrameDetail` or a :class:`DetailError`."""
        reply = self.exchange(wire.dumps({"series_id": int(series_id), "frame_index": int(frame_index)}), timeout_ms)
        if reply is None:
            return DetailError(f"no reply from the frame-detail endpoint {self.endpoint} within "
                               f"{timeout_ms} ms", "timeout")
        return decode_detail_reply(reply)
