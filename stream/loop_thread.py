"""The service's socket loops (ingest, collector, frame-detail server, document receiver) each
own their sockets and run in one daemon thread until stopped; this is that life cycle, once,
and the loops' way of taking what waits on a socket."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import zmq


def waiting_messages(socket: zmq.Socket, limit: int | None = None) -> Iterator[list[bytes]]:
    """The messages waiting on ``socket`` now (at most ``limit``), received without blocking.

    ``ZMQ_EVENTS`` says whether one waits, so the end is found without raising ``zmq.Again``:
    these loops run often and mostly find little.
    """
    taken = 0
    while (limit is None or taken < limit) and socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
        try:
            parts = socket.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        taken += 1
        yield parts


class LoopThread:
    """Mixin: :meth:`start` runs ``self.run()`` in a daemon thread; :meth:`stop` sets
    :attr:`_stop` (which ``run`` polls) and joins the thread.

    Subclasses set ``thread_name`` and, if their loop may take longer to notice the stop,
    ``join_timeout_s``.
    """

    thread_name = "braggmap-loop"
    join_timeout_s = 10.0
    thread: threading.Thread | None = None
    _stop_event: threading.Event | None = None

    @property
    def _stop(self) -> threading.Event:
        if self._stop_event is None:
            self._stop_event = threading.Event()
        return self._stop_event

    def run(self) -> None:  # pragma: no cover - every subclass defines its loop
        raise NotImplementedError

    def start(self):
        self._stop  # noqa: B018  (create the event before the thread can look at it)
        self.thread = threading.Thread(target=self.run, name=self.thread_name, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.thread is not None:
            self.thread.join(self.join_timeout_s)
