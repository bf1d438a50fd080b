"""The document log: serves a RunEngine's documents to followers that may join late or restart.

A PUB socket loses whatever was published before a subscriber connected (bluesky's 0MQ proxy
drops a run's start document that way). Here the beamline side keeps a numbered log of the
documents of its recent runs and followers *ask* for them (long-poll over ROUTER/DEALER):

* follower -> log: ``[MAGIC, b"since", {"publisher": uid or null, "seq": n}]``
* log -> follower: ``[MAGIC, b"docs", {"publisher", "seqs", "names", "latest", "gap"}, doc...]``
  with every retained document after ``n`` (at most ``max_batch``), or, when there is none yet,
  an empty reply after ``heartbeat_s`` (the request is parked until then).

A follower that joins late or restarts asks with ``publisher: null`` and gets the retained runs
from their start documents; a log that restarts has a new ``publisher`` uid, so followers start
over. Documents are JSON (numpy arrays become lists); nothing is ever unpickled. Garbage requests
are counted and ignored.

Use: ``log = DocumentLog("tcp://127.0.0.1:0"); RE.subscribe(log)``; followers connect to
``log.endpoint`` (:class:`stream.documents.DocumentReceiver`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import Counter
from typing import Any, Mapping

import numpy as np
import zmq

from analysis.errors import ProtocolError
from stream.loop_thread import waiting_messages

log = logging.getLogger(__name__)

MAGIC = b"braggmap-documents/1"
SINCE = b"since"
DOCS = b"docs"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode(errors="replace")
    return str(value)


def encode_document(doc: Mapping) -> bytes:
    """A bluesky document as JSON bytes (numpy arrays -> lists, unknown objects -> str)."""
    return json.dumps(doc, default=_json_default, separators=(",", ":"), allow_nan=True).encode()


def decode_json(part: bytes | memoryview, what: str) -> Any:
    try:
        return json.loads(bytes(part))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"{what} is not JSON: {exc}") from None


def encode_request(publisher: str | None, seq: int) -> list[bytes]:
    return [MAGIC, SINCE, json.dumps({"publisher": publisher, "seq": int(seq)}).encode()]


def decode_request(parts: list[bytes]) -> tuple[str | None, int]:
    if len(parts) != 3 or parts[0] != MAGIC or parts[1] != SINCE:
        raise ProtocolError(f"not a document-log request ({len(parts)} parts, first {bytes(parts[0])[:32]!r})")
    body = decode_json(parts[2], "document-log request")
    if not isinstance(body, dict) or not isinstance(body.get("seq"), int):
        raise ProtocolError(f"document-log request {str(body)[:100]} has no integer 'seq'")
    publisher = body.get("publisher")
    return (publisher if isinstance(publisher, str) else None), body["seq"]


def decode_reply(parts: list[bytes]) -> tuple[dict, list[bytes]]:
    """(header, document parts) of a log reply; raises ProtocolError for anything else."""
    if len(parts) < 3 or parts[0] != MAGIC or parts[1] != DOCS:
        raise ProtocolError(f"not a document-log reply ({len(parts)} parts, first {bytes(parts[0])[:32]!r})")
    header = decode_json(parts[2], "document-log reply header")
    documents = parts[3:]
    if (not isinstance(header, dict) or not isinstance(header.get("publisher"), str)
            or not isinstance(header.get("seqs"), list) or not isinstance(header.get("names"), list)
            or not len(header["seqs"]) == len(header["names"]) == len(documents)
            or not all(isinstance(s, int) for s in header["seqs"])
            or not all(isinstance(n, str) for n in header["names"])):
        raise ProtocolError(f"document-log reply header {str(header)[:120]} does not describe its "
                            f"{len(documents)} documents")
    return header, documents


class DocumentLog:
    """A RunEngine callback that keeps and serves the documents of the last ``keep_runs`` runs.

    Parameters
    ----------
    endpoint : str
        Where to bind (ROUTER); ``tcp://127.0.0.1:0`` picks a free port (see :attr:`endpoint`).
    keep_runs : int
        Runs kept for late followers (the oldest run is dropped when a new one starts).
    max_documents : int
        Hard cap on the documents kept (the oldest go first).
    heartbeat_s : float
        A parked request is answered (empty) after this long.
    max_batch : int
        Documents per reply at most.
    """

    def __init__(self, endpoint: str = "tcp://127.0.0.1:0", keep_runs: int = 4, max_documents: int = 1_000_000,
                 heartbeat_s: float = 1.0, max_batch: int = 1000, context: zmq.Context | None = None) -> None:
        self._context = context or zmq.Context.instance()
        self.uid = uuid.uuid4().hex
        self.keep_runs, self.max_documents = int(keep_runs), int(max_documents)
        self.heartbeat_s, self.max_batch = float(heartbeat_s), int(max_batch)
        self._router = self._context.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        bind_to = endpoint[:-2] + ":*" if endpoint.startswith("tcp://") and endpoint.endswith(":0") else endpoint
        deadline = time.monotonic() + 3.0
        while True:  # a log restarted on its old port may find it still closing
            try:
                self._router.bind(bind_to)
                break
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                    self._router.close(linger=0)
                    raise
                time.sleep(0.05)
        self.endpoint = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        inbox_address = f"inproc://braggmap-document-log-{self.uid}"
        self._inbox = self._context.socket(zmq.PULL)
        self._inbox.bind(inbox_address)
        self._outbox = self._context.socket(zmq.PUSH)
        self._outbox.setsockopt(zmq.LINGER, 0)
        self._outbox.connect(inbox_address)
        self._outbox_lock = threading.Lock()
        self._documents: list[tuple[str, bytes]] = []
        self._first_seq = 1  # seq of self._documents[0]
        self._run_starts: list[int] = []
        self._parked: dict[bytes, tuple[int, float]] = {}
        self.garbage: Counter[str] = Counter()
        self.not_sent = 0
        self.latest_seq = 0
        self._logged = 0  # documents handed to the log (their seqs are 1.._logged)
        self.delivered_seq = 0  # the most any follower has confirmed having (its ``since``)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="braggmap-document-log", daemon=True)
        self._thread.start()

    # -- RunEngine side (any thread) ----------------------------------------------------------------
    def __call__(self, name: str, doc: Mapping) -> None:
        """Log one document (``RE.subscribe(log)``). Never raises: a failure is logged and counted."""
        try:
            body = encode_document(doc)
            with self._outbox_lock:
                self._outbox.send_multipart([str(name).encode(), body])
                self._logged += 1
        except Exception:
            self.not_sent += 1
            log.exception("document %r could not be logged", name)

    def wait_delivered(self, timeout_s: float) -> bool:
        """Wait until a follower has every document logged so far; False on time-out."""
        target, deadline = self._logged, time.monotonic() + timeout_s
        while self.delivered_seq < target:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with self._outbox_lock:
            self._outbox.close(linger=0)

    def __enter__(self) -> "DocumentLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- owner thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._inbox, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(100))
                if self._inbox in events:
                    self._take_documents()
                if self._router in events:
                    self._take_requests()
                self._answer_parked()
        finally:
            self._router.close(linger=0)
            self._inbox.close(linger=0)

    def _take_documents(self) -> None:
        for name, body in waiting_messages(self._inbox):
            name = name.decode()
            self._documents.append((name, body))
            self.latest_seq = self._first_seq + len(self._documents) - 1
            if name == "start":
                self._run_starts.append(self.latest_seq)
                if len(self._run_starts) > self.keep_runs:
                    self._drop_before(self._run_starts[1])
            if len(self._documents) > self.max_documents:
                self._drop_before(self.latest_seq - self.max_documents + 1)

    def _drop_before(self, seq: int) -> None:
        n = max(0, min(seq - self._first_seq, len(self._documents)))
        del self._documents[:n]
        self._first_seq += n
        self._run_starts = [s for s in self._run_starts if s >= self._first_seq]

    def _take_requests(self) -> None:
        for parts in waiting_messages(self._router):
            identity, request = parts[0], parts[1:]
            try:
                publisher, since = decode_request(request)
            except ProtocolError as exc:
                self.garbage[str(exc)[:80]] += 1
                log.debug("ignored a bad document-log request: %s", exc)
                continue
            if publisher != self.uid:
                since = 0  # a new follower, or one that followed a previous log: start over
            self.delivered_seq = max(self.delivered_seq, since)
            self._parked[identity] = (since, time.monotonic())

    def _answer_parked(self) -> None:
        now = time.monotonic()
        for identity, (since, parked_at) in list(self._parked.items()):
            if since < self.latest_seq or now - parked_at >= self.heartbeat_s:
                del self._parked[identity]
                self._reply(identity, since)

    def _reply(self, identity: bytes, since: int) -> None:
        start = max(since + 1, self._first_seq)
        gap = start - (since + 1)
        offset = start - self._first_seq
        batch = self._documents[offset:offset + self.max_batch]
        header = {"publisher": self.uid, "seqs": list(range(start, start + len(batch))),
                  "names": [name for name, _ in batch], "latest": self.latest_seq, "gap": gap}
        try:
            self._router.send_multipart([identity, MAGIC, DOCS, json.dumps(header).encode(),
                                         *(body for _, body in batch)], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # follower gone or its queue full: it asks again
            log.debug("document-log reply not sent: %s", exc)
