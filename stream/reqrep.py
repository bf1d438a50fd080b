"""The request/reply sockets of the service's side endpoints (frame detail, steering), once.

* :func:`bind_rep`: a REP socket bound on an endpoint (``tcp://127.0.0.1:0``: a free port), with
  a request size limit; an endpoint that cannot be bound is a :class:`ConfigurationError`.
* :class:`LazyPirate`: the client side; one request at a time, and a time-out closes and reopens
  the REQ socket so the next request starts clean ("lazy pirate"). Not thread-safe.
"""

from __future__ import annotations

import zmq

from analysis.errors import ConfigurationError


def bind_rep(endpoint: str, what: str, max_request_bytes: int, context: zmq.Context | None = None) -> zmq.Socket:
    """A bound REP socket; its real endpoint is ``socket.getsockopt_string(zmq.LAST_ENDPOINT)``."""
    from stream.ingest import _bindable

    socket = (context or zmq.Context.instance()).socket(zmq.REP)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.MAXMSGSIZE, max_request_bytes)
    try:
        socket.bind(_bindable(endpoint))
    except zmq.ZMQError as exc:
        socket.close(linger=0)
        raise ConfigurationError(f"{what} endpoint {endpoint!r} cannot be bound: {exc}") from exc
    return socket


class LazyPirate:
    """REQ side of one endpoint."""

    def __init__(self, endpoint: str, context: zmq.Context | None = None) -> None:
        self.endpoint = endpoint
        self.context = context
        self._socket = None

    def exchange(self, request: bytes, timeout_ms: int) -> list[bytes] | None:
        """Send ``request``; the reply's parts, or None (and a fresh socket) after ``timeout_ms``."""
        if self._socket is None:
            self._socket = (self.context or zmq.Context.instance()).socket(zmq.REQ)
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.connect(self.endpoint)
        self._socket.send(request)
        if not self._socket.poll(timeout_ms, zmq.POLLIN):
            self.reset()
            return None
        return self._socket.recv_multipart()

    def reset(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    close = reset
