"""The Python side of the steering endpoint (:mod:`stream.steering_server`).

:class:`SteeringClient` sends JSON requests over REQ (a time-out closes and reopens the socket,
"lazy pirate") and raises :class:`SteeringError` with the server's reason for a refused request.
It also speaks the ask/tell protocol of bluesky-adaptive's lockstep recommenders: ``ask(n)``
returns up to n suggested scans; ``tell`` / ``tell_many`` accept and ignore measurements,
because the service learns from the detector stream itself.
"""

from __future__ import annotations

import zmq

from analysis.errors import BraggmapError
from stream import wire
from stream.reqrep import LazyPirate


class SteeringError(BraggmapError):
    """The steering endpoint refused a request (the message is its reason) or did not answer."""


class SteeringClient(LazyPirate):
    """REQ client of a :class:`stream.steering_server.SteeringServer`
    (:class:`stream.reqrep.LazyPirate`). Not thread-safe.

    Parameters
    ----------
    endpoint : str
    timeout_s : float
        Longest wait for a reply (a request with ``wait_s`` waits that much longer).
    defaults : dict, optional
        Fields added to every ``suggest`` request (e.g. strategies, fine step, limits).
    """

    def __init__(self, endpoint: str, timeout_s: float = 30.0, defaults: dict | None = None,
                 context: zmq.Context | None = None) -> None:
        super().__init__(endpoint, context)
        self.timeout_s = timeout_s
        self.defaults = dict(defaults or {})

    def request(self, body: dict) -> dict:
        """Send one request; the reply without its ``ok`` flag, or :class:`SteeringError`."""
        timeout_s = self.timeout_s + float(body.get("wait_s", 0.0) or 0.0)
        parts = self.exchange(wire.dumps(body), int(timeout_s * 1000))
        if parts is None:
            raise SteeringError(f"no reply from the steering endpoint {self.endpoint} within {timeout_s:.0f} s")
        reply = wire.loads(parts[0])
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

    def __enter__(self) -> "SteeringClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
