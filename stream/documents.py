"""The service's document receiver: follows a beamline's :class:`stream.document_log.DocumentLog`
and hands every run document, once and in order, to the collector.

It asks the log for everything after the last document it has (long-poll), so it obtains the
current runs' start and descriptor documents however late it connects or however often it (or
the log) restarts. Replies that are not the log's protocol are counted and ignored; a log that
stops answering is asked again after ``request_timeout_s`` (ZeroMQ reconnects by itself).

Documents go to the collector's PULL socket as ``[DOCUMENT, name, JSON body]`` (the body as the
log sent it, parsed only by the collector).
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import zmq

from analysis.errors import ProtocolError
from stream.loop_thread import LoopThread
from stream.document_log import decode_reply, encode_request

log = logging.getLogger(__name__)

DOCUMENT = b"document"
"""Collector message kind: ``[DOCUMENT, name (utf-8), document JSON]``."""


class DocumentReceiver(LoopThread):
    """Follow a document log and forward its documents.

    Parameters
    ----------
    endpoint : str
        The document log's endpoint (this side connects).
    collector_endpoint : str
        Where to PUSH ``[DOCUMENT, name, body]`` messages (the collector's PULL endpoint).
    request_timeout_s : float
        Ask again when a request has had no answer for this long.

    Attributes
    ----------
    forwarded, duplicates, gaps, resets, timeouts : int
        Documents forwarded; documents received twice (dropped); documents the log no longer had
        when asked; log restarts seen; requests asked again.
    garbage : Counter of str
        Messages that were not log replies, by reason.
    """

    thread_name = "braggmap-documents"

    def __init__(self, endpoint: str, collector_endpoint: str, request_timeout_s: float = 3.0,
                 context: zmq.Context | None = None) -> None:
        self.endpoint = endpoint
        self.collector_endpoint = collector_endpoint
        self.request_timeout_s = float(request_timeout_s)
        self._context = context or zmq.Context.instance()
        self.publisher: str | None = None
        self.seq = 0
        self.forwarded = self.duplicates = self.gaps = self.resets = self.timeouts = 0
        self.garbage: Counter[str] = Counter()



    def run(self) -> None:
        dealer = self._context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(self.endpoint)
        push = self._context.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 2000)
        push.connect(self.collector_endpoint)
        try:
            dealer.send_multipart(encode_request(self.publisher, self.seq))
            asked_at = time.monotonic()
            while not self._stop.is_set():
                if dealer.poll(100, zmq.POLLIN):
                    parts = dealer.recv_multipart()
                    if self._on_reply(parts, push):
                        dealer.send_multipart(encode_request(self.publisher, self.seq))
                        asked_at = time.monotonic()
                elif time.monotonic() - asked_at > self.request_timeout_s:
                    self.timeouts += 1
                    dealer.send_multipart(encode_request(self.publisher, self.seq))
                    asked_at = time.monotonic()
        finally:
            dealer.close(linger=0)
            push.close()

    def _on_reply(self, parts: list[bytes], push: zmq.Socket) -> bool:
        """Forward the new documents of one reply; False (and counted) for garbage."""
        try:
            header, documents = decode_reply(parts)
        except ProtocolError as exc:
            self.garbage[str(exc)[:80]] += 1
            log.debug("ignored a message on the document socket: %s", exc)
            return False
        if header["publisher"] != self.publisher:
            if self.publisher is not None:
                self.resets += 1
                log.warning("document log %s restarted as %s: following it from its start",
                            self.publisher[:8], header["publisher"][:8])
            self.publisher, self.seq = header["publisher"], 0
        elif header.get("gap"):
            self.gaps += int(header["gap"])
            log.warning("document log no longer had %s documents this service had not seen", header["gap"])
        for seq, name, body in zip(header["seqs"], header["names"], documents):
            if seq <= self.seq:
                self.duplicates += 1
                continue
            self.seq = seq
            self.forwarded += 1
            push.send_multipart([DOCUMENT, name.encode(), body])
        return True
