"""Published map state: what viewers (and anything else) may read of a running service.

The collector PUBlishes snapshots of the maps; subscribers keep only the newest. PUB never
blocks: with a small send high-water mark a slow subscriber simply misses snapshots.

Message: ``[b"maps", JSON meta, values float32 (n_parameters, rows, columns), statuses uint8
(same shape)]`` where meta holds ``series_id``, ``version``, ``parameters``, ``grid``
(:meth:`analysis.scan_grid.ScanGrid.as_dict`), ``measured`` (points done) and ``final``.

PUB/SUB loses what a subscriber did not receive: a snapshot dropped at the high-water mark, or
published before a viewer connected. So while nothing new is published the publisher sends its
newest message again every ``repeat_interval_s`` (the encoded message is kept: a repeat costs
one send). After a scan that is the final snapshot of the series that finished last, so a viewer
that missed it, or connects after the scan, still shows the final map. A repeat carries the same
series and version: subscribers skip versions they already have.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import zmq

from analysis.errors import ProtocolError
from analysis.scan_grid import ScanGrid
from stream import wire

MAPS = b"maps"


@dataclass(frozen=True)
class MapSnapshot:
    """One published state of the maps of a series.

    Attributes
    ----------
    series_id : int
    version : int
        Increases with every published snapshot of the series.
    parameters : tuple of str
    grid : ScanGrid
    values : ndarray of float32, shape (n_parameters, rows, columns)
        NaN where missing.
    statuses : ndarray of uint8, same shape
        :class:`analysis.status.Status` codes.
    measured : int
        Scan points with a result.
    final : bool
        True for the last snapshot of a finished series.
    """

    series_id: int
    version: int
    parameters: tuple[str, ...]
    grid: ScanGrid
    values: np.ndarray
    statuses: np.ndarray
    measured: int
    final: bool = False

    def map(self, name: str) -> np.ndarray:
        return self.values[self.parameters.index(name)]


def encode_snapshot(snapshot: MapSnapshot) -> list[bytes]:
    meta = {
        "series_id": snapshot.series_id,
        "version": snapshot.version,
        "parameters": list(snapshot.parameters),
        "grid": snapshot.grid.as_dict(),
        "measured": snapshot.measured,
        "final": snapshot.final,
    }
    return [
        MAPS,
        wire.dumps(meta),
        np.ascontiguousarray(snapshot.values, dtype="<f4").tobytes(),
        np.ascontiguousarray(snapshot.statuses, dtype=np.uint8).tobytes(),
    ]


def decode_snapshot(parts: list) -> MapSnapshot:
    if len(parts) != 4 or bytes(parts[0]) != MAPS:
        raise ProtocolError("not a map snapshot message")
    meta = wire.loads(parts[1])
    grid = ScanGrid.from_dict(meta["grid"])
    shape = (len(meta["parameters"]), *grid.shape)
    values = np.frombuffer(bytes(parts[2]), dtype="<f4")
    statuses = np.frombuffer(bytes(parts[3]), dtype=np.uint8)
    if values.size != np.prod(shape) or statuses.size != np.prod(shape):
        raise ProtocolError(f"map snapshot arrays do not fit shape {shape}")
    return MapSnapshot(
        series_id=int(meta["series_id"]), version=int(meta["version"]),
        parameters=tuple(meta["parameters"]), grid=grid,
        values=values.reshape(shape), statuses=statuses.reshape(shape),
        measured=int(meta["measured"]), final=bool(meta["final"]),
    )


def snapshot_of(series_id: int, version: int, parameters, grid: ScanGrid, maps, final=False) -> MapSnapshot:
    """Build a snapshot from an :class:`analysis.map_state.MapState`."""
    values = np.stack([maps.values[name] for name in parameters]).astype(np.float32)
    statuses = np.stack([np.minimum(maps.statuses[name], 255) for name in parameters]).astype(np.uint8)
    return MapSnapshot(series_id, version, tuple(parameters), grid, values, statuses,
                       int(maps.n_measured), final)


class MapPublisher:
    """PUB socket publishing map snapshots at most ``max_rate_hz`` times a second.

    :meth:`maybe_publish` (called in the owner's loop) also repeats the newest message when
    nothing was published for ``repeat_interval_s`` (see the module docstring); ``repeats``
    counts those sends.
    """

    def __init__(self, endpoint: str, context: zmq.Context | None = None, max_rate_hz: float = 5.0,
                 repeat_interval_s: float = 1.0) -> None:
        from stream.ingest import _bindable

        self.socket = (context or zmq.Context.instance()).socket(zmq.PUB)
        self.socket.setsockopt(zmq.SNDHWM, 2)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(_bindable(endpoint))
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.min_interval_s = 1.0 / max_rate_hz
        self._last = 0.0
        self.repeat_interval_s = float(repeat_interval_s)
        self._versions: dict[int, int] = {}
        self._published_results: dict[int, int] = {}
        self._newest: list[bytes] | None = None  # the newest encoded message, for repeats
        self._newest_at = 0.0
        self.repeats = 0

    def maybe_publish(self, series: dict) -> None:
        """Publish the series whose results changed (at most ``max_rate_hz`` times a second),
        or, when there were none for ``repeat_interval_s``, the newest message again."""
        now = time.monotonic()
        if now - self._last < self.min_interval_s:
            return
        self._last = now
        for series_id, state in series.items():
            if self._published_results.get(series_id) != state.results:
                self.publish_now(series_id, state, final=False)
        if self._newest is not None and now - self._newest_at >= self.repeat_interval_s:
            self._newest_at = now
            if self._send(self._newest):
                self.repeats += 1

    def publish_now(self, series_id: int, state, final: bool = True) -> None:
        version = self._versions.get(series_id, 0) + 1
        self._versions[series_id] = version
        self._published_results[series_id] = state.results
        snapshot = snapshot_of(series_id, version, state.maps.parameters, state.grid, state.maps, final)
        self._newest, self._newest_at = encode_snapshot(snapshot), time.monotonic()
        self._send(self._newest)

    def _send(self, parts: list[bytes]) -> bool:
        try:
            self.socket.send_multipart(parts, zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False  # nobody keeps up: drop, never block the collector

    def close(self) -> None:
        self.socket.close(linger=0)


class MapSubscriber:
    """SUB side for viewers: ``latest(timeout_ms)`` returns the newest snapshot or None."""

    def __init__(self, endpoint: str, context: zmq.Context | None = None) -> None:
        self.socket = (context or zmq.Context.instance()).socket(zmq.SUB)
        self.socket.setsockopt(zmq.RCVHWM, 4)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SUBSCRIBE, MAPS)
        self.socket.connect(endpoint)
        self.dropped_bad = 0

    def latest(self, timeout_ms: int = 0) -> MapSnapshot | None:
        newest = None
        if not self.socket.poll(timeout_ms, zmq.POLLIN):
            return None
        while True:
            try:
                parts = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return newest
            try:
                newest = decode_snapshot(parts)
            except (ProtocolError, KeyError, ValueError):
                self.dropped_bad += 1

    def close(self) -> None:
        self.socket.close(linger=0)
