"""The steering endpoint of a running service: where to scan next, from the current maps.

REQ/REP, one JSON object per request and per reply (never pickle); the server is a thread of
the service process. It knows the maps of every series of the session from the collector: each
finished series' final maps (handed over by the service, exact) and the newest published
snapshot of a series still running (it subscribes to the collector's map publisher).

Requests (``command`` selects; replies are ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``):

``suggest``
    The fields of :class:`analysis.steering.SteeringRequest`; the reply holds
    :meth:`analysis.steering.SteeringResult.as_dict`. With ``series_id`` and ``wait_s`` it waits
    up to ``wait_s`` (at most :data:`MAX_WAIT_S`) for that series to finish, and for every
    series in ``wait_for_series`` (the scans just run, so that their maps take part). Strategy ``user``
    without ranges uses every region added by ``add_region``.
``add_region``
    ``x_range_um``, ``y_range_um`` (and optional ``series_id``): a rectangle drawn in the viewer.
``regions`` / ``clear_regions``
    List / forget the added regions.
``status``
    The series known, with their grids and whether they are finished.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict

import numpy as np
import zmq

from analysis.errors import BraggmapError, ConfigurationError, ProtocolError
from analysis.steering import SteeringRequest, StrategySpec, suggest
from analysis.steering_maps import SteeringMaps
from analysis.steering_strategies import finite_pair
from stream import wire
from stream.loop_thread import LoopThread
from stream.reqrep import bind_rep
from stream.published_state import MapSnapshot, MapSubscriber

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1 << 20
MAX_WAIT_S = 600.0
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5559"


def maps_of_outcome(outcome) -> SteeringMaps:
    """:class:`SteeringMaps` of a finished series (:class:`stream.collector.SeriesOutcome`)."""
    state = outcome.maps
    names = tuple(state.parameters)
    return SteeringMaps(int(outcome.info.series_id), outcome.grid, names,
                        np.stack([state.values[n] for n in names]), np.stack([state.statuses[n] for n in names]),
                        final=True, count_time_s=outcome.info.count_time_s)


def maps_of_snapshot(snapshot: MapSnapshot) -> SteeringMaps:
    """:class:`SteeringMaps` of a published snapshot."""
    return SteeringMaps(snapshot.series_id, snapshot.grid, tuple(snapshot.parameters), snapshot.values,
                        snapshot.statuses.astype(np.int64), final=snapshot.final)


class MapBook:
    """The maps of the session's series, newest last; thread-safe.

    A finished series' maps from the service are final: a later snapshot never replaces them.
    """

    def __init__(self, max_series: int = 256) -> None:
        self._maps: "OrderedDict[int, SteeringMaps]" = OrderedDict()
        self._changed = threading.Condition()
        self.max_series = max_series

    def add(self, maps: SteeringMaps) -> None:
        with self._changed:
            known = self._maps.get(maps.series_id)
            if known is not None and known.final and not maps.final:
                return
            self._maps.pop(maps.series_id, None)
            self._maps[maps.series_id] = maps
            while len(self._maps) > self.max_series:
                self._maps.popitem(last=False)
            self._changed.notify_all()

    def all(self) -> list[SteeringMaps]:
        with self._changed:
            return list(self._maps.values())

    def get(self, series_id: int, wait_s: float = 0.0) -> SteeringMaps:
        """Series ``series_id``, waiting up to ``wait_s`` for it to be final."""
        deadline = time.monotonic() + wait_s
        with self._changed:
            while True:
                maps = self._maps.get(series_id)
                left = deadline - time.monotonic()
                if (maps is not None and maps.final) or left <= 0:
                    break
                self._changed.wait(min(left, 0.5))
        if maps is None:
            raise ConfigurationError(f"no maps of series {series_id} (known: {sorted(self._maps) or 'none'})")
        return maps

    def newest_measured(self) -> SteeringMaps:
        for maps in reversed(self.all()):
            if maps.measured.any():
                return maps
        raise ConfigurationError("no maps to steer from: no series has measured points yet")


def _ranges(request: dict) -> dict:
    region = {}
    for key in ("x_range_um", "y_range_um"):
        pair = finite_pair(request.get(key))
        if pair is None:
            raise ConfigurationError(f"add_region needs {key} as two finite numbers (um), got {request.get(key)!r}")
        region[key] = list(pair)
    if "series_id" in request and request["series_id"] is not None:
        region["series_id"] = request["series_id"]
    return region


class SteeringServer(LoopThread):
    """REP server thread answering steering requests.

    Parameters
    ----------
    endpoint : str
        Where to bind; ``tcp://127.0.0.1:0`` picks a free port (see :attr:`endpoint`).
    publish_endpoint : str, optional
        The collector's map publisher, for the maps of series still running.
    book : MapBook, optional
    """

    thread_name = "braggmap-steering"
    join_timeout_s = 15.0

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, publish_endpoint: str | None = None,
                 book: MapBook | None = None, context: zmq.Context | None = None) -> None:
        self.book = book or MapBook()
        self._context = context or zmq.Context.instance()
        self.socket = bind_rep(endpoint, "steering", MAX_REQUEST_BYTES, self._context)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.subscriber = MapSubscriber(publish_endpoint, self._context) if publish_endpoint else None
        self.regions: list[dict] = []
        self.requests = 0
        self.errors = 0
        self.history: list[dict] = []  # every suggestion made, for the record

    def add_outcome(self, outcome) -> None:
        """A finished series (called from the collector thread)."""
        self.book.add(maps_of_outcome(outcome))

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        if self.subscriber is not None:
            poller.register(self.subscriber.socket, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                ready = dict(poller.poll(100))
                if self.subscriber is not None and self.subscriber.socket in ready:
                    snapshot = self.subscriber.latest(0)
                    if snapshot is not None:
                        self.book.add(maps_of_snapshot(snapshot))
                if self.socket in ready:
                    parts = self.socket.recv_multipart()
                    self.socket.send(wire.dumps(self.handle(parts)))
        finally:
            self.socket.close(linger=0)
            if self.subscriber is not None:
                self.subscriber.close()

    def handle(self, parts: list) -> dict:
        """The reply to one request; never raises."""
        self.requests += 1
        try:
            if len(parts) != 1:
                raise ProtocolError(f"request has {len(parts)} parts, expected one JSON part")
            request = wire.loads(parts[0])
            if not isinstance(request, dict):
                raise ProtocolError(f"request {str(request)[:80]!r} is not a JSON object")
            command = request.get("command", "suggest")
            handler = {"suggest": self._suggest, "add_region": self._add_region, "regions": self._regions,
                       "clear_regions": self._clear_regions, "status": self._status}.get(command)
            if handler is None:
                raise ProtocolError(f"unknown command {command!r}; known: suggest, add_region, regions, "
                                    "clear_regions, status")
            return {"ok": True, **handler(request)}
        except BraggmapError as exc:
            self.errors += 1
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug must not take the service down: say it to the client
            self.errors += 1
            log.exception("steering request failed")
            return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}

    def _suggest(self, request: dict) -> dict:
        request = dict(request)
        wait_for = request.pop("wait_for_series", None) or []
        if not isinstance(wait_for, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in wait_for):
            raise ConfigurationError(f"wait_for_series={wait_for!r} must be a list of series ids")
        parsed = SteeringRequest.from_dict(request)
        if any(s.name == "user" and not s.options for s in parsed.strategies):
            if not self.regions:
                raise ConfigurationError("strategy user: no region was drawn (add_region) and none given")
            specs = [s for s in parsed.strategies if not (s.name == "user" and not s.options)]
            specs += [StrategySpec("user", {k: v for k, v in r.items() if k != "series_id"}) for r in self.regions]
            parsed = dataclasses.replace(parsed, strategies=tuple(specs))
        wait = min(parsed.wait_s, MAX_WAIT_S)
        for series_id in wait_for:  # e.g. the scans just run: their maps take part
            self.book.get(series_id, wait)
        basis = (self.book.get(parsed.series_id, wait) if parsed.series_id is not None
                 else self.book.newest_measured())
        result = suggest(parsed, basis, self.book.all()).as_dict()
        result["basis_final"] = basis.final
        result["request"] = {"strategies": [s.as_dict() for s in parsed.strategies],
                             "fine_step_um": result["fine_grid"]["step_um"]}
        self.history.extend(result["suggestions"])
        return result

    def _add_region(self, request: dict) -> dict:
        region = _ranges(request)
        self.regions.append(region)
        return {"regions": list(self.regions)}

    def _regions(self, request: dict) -> dict:
        return {"regions": list(self.regions)}

    def _clear_regions(self, request: dict) -> dict:
        self.regions.clear()
        return {"regions": []}

    def _status(self, request: dict) -> dict:
        return {"series": [{"series_id": m.series_id, "final": m.final, "grid": m.grid.as_dict(),
                            "measured": int(m.measured.sum())} for m in self.book.all()],
                "regions": len(self.regions), "requests": self.requests, "errors": self.errors}
