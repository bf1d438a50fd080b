"""The Python side of the steering endpoint (:mod:`stream.steering_server`).

:class:`SteeringClient` sends JSON requests over REQ (a time-out closes and reopens the socket,
"lazy pirate") and raises :class:`SteeringError` with the server's reason for a refused request.
It also speaks the ask/tell protocol of bluesky-adaptive's lockstep recommenders: ``ask(n)``
returns up to n suggested scans; ``tell`` / ``tell_many`` accept and ignore measurements,
because the service learns from the detector stream itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import zmq

from analysis.errors import BraggmapError
from stream import wire


class SteeringError(BraggmapError):
    """The steering endpoint refused a request (the message is its reason) or did not answer."""


@dataclass
class SteeringClient:
    """REQ client of a :class:`stream.steering_server.SteeringServer`. Not thread-safe.

    Parameters
    ----------
    endpoint : str
    timeout_s : float
        Longest wait for a reply (a request with ``wait_s`` waits that much longer).
    defaults : dict
        Fields added to every ``suggest`` request (e.g. strategies, fine step, limits).
    """

    endpoint: str
    timeout_s: float = 30.0
    defaults: dict = field(default_factory=dict)
    context: zmq.Context | None = None
    _socket: Any = field(default=None, init=False, repr=False)

    def _connect(self):
        if self._socket is None:
            self._socket = (self.context or zmq.Context.instance()).socket(zmq.REQ)
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.connect(self.endpoint)
        return self._socket

    def request(self, body: dict) -> dict:
        """Send one request; the reply without its ``ok`` flag, or :class:`SteeringError`."""
        socket = self._connect()
        socket.send(wire.dumps(body))
        timeout_s = self.timeout_s + float(body.get("wait_s", 0.0) or 0.0)
        if not socket.poll(int(timeout_s * 1000), zmq.POLLIN):
            self.reset()
            raise SteeringError(f"no reply from the steering endpoint {self.endpoint} within {timeout_s:.0f} s")
        reply = wire.loads(socket.recv())
        if not isinstance(reply, dict) or "ok" not in reply:
            raise SteeringError(f"the steering endpoint sent no steering reply: {str(reply)[:120]!r}")
        if not reply.pop("ok"):
            raise SteeringError(str(reply.get("error", "request refused")))
        return reply

    def suggest(self, **fields) -> dict:
        """Suggested scans (:meth:`analysis.steering.SteeringResult.as_dict`)."""
        return self.request({"command": "suggest", **self.defaults, **fields})

    def add_region(self, x_range_um, y_range_um, series_id: int | None = None) -> list[dict]:
        """Hand over a rectangle drawn by the user (for strategy ``user``)."""
        reply = self.request({"command": "add_region", "x_range_um": list(x_range_um),
                              "y_range_um": list(y_range_um), "series_id": series_id})
        return reply["regions"]

    def status(self) -> dict:
        return self.request({"command": "status"})

    # bluesky-adaptive's ask/tell protocol
    def ask(self, n: int = 1, tell_pending: bool = True, **fields) -> list[dict]:
        """Up to ``n`` suggested scans, best first."""
        return self.suggest(**fields)["suggestions"][:n]

    def tell(self, x, y) -> None:
        """Nothing to do: the service reads the measurements from the detector stream."""

    def tell_many(self, xs, ys) -> None:
        """Nothing to do: see :meth:`tell`."""

    def reset(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def close(self) -> None:
        self.reset()

    def __enter__(self) -> "SteeringClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
