"""Published map state: what viewers (and anything else) may read of a running service.

The collector PUBlishes the maps; subscribers keep only the newest state. PUB never blocks: with
a small send high-water mark a slow subscriber simply misses messages. Two kinds of message:

* full snapshots, ``[b"maps", JSON meta, values float32 (n_parameters, rows, columns), statuses
  uint8 (same shape)]``, at most ``max_rate_hz`` times a second (default 2) and less often for
  large maps (below), at the end of a series, and repeated (see below). Meta: ``series_id``, ``version``, ``parameters``, ``grid``
  (:meth:`analysis.scan_grid.ScanGrid.as_dict`), ``measured`` (points done), ``final`` and
  ``publisher`` (a token of the publishing process);
* pixel updates, ``[b"pixels", JSON meta, flat indices int64 (k,), values float32
  (n_parameters, k), statuses uint8 (n_parameters, k)]``, at most ``pixel_rate_hz`` times a
  second (default 100): the points measured since the previous message of the series. Meta:
  ``series_id``, ``version``, ``base_version`` (the version they apply to), ``measured``,
  ``publisher``. They keep a live map within tens of milliseconds of its results at the cost
  of a few hundred bytes each, where a full snapshot of a 200 x 200 scan is 24 MB. A series
  whose maps were laid out anew or whose grid changed (the scan's documents placing its frames)
  gets a full snapshot instead.

A subscriber applies a pixel update only on top of the version it names, so a message lost on
the way (high-water mark, a late subscriber) leaves its map as it was until the next full
snapshot; after a series' last pixel update a full snapshot always follows.

A full snapshot costs CPU in proportion to the maps (~30 ms for 200 x 200 points of the default
119 parameters, ~175 ms for 500 x 500): at 2 a second it would take a large share of the
collector's thread, and of a 2-core machine, away from placing results. So full snapshots are
spaced to take at most :data:`FULL_SNAPSHOT_CPU_SHARE` of the thread: the interval is at least
1 / ``max_rate_hz`` and at least the last one's CPU time / that share (1.5 s for 200 x 200,
~9 s for 500 x 500). Pixel updates keep a subscribed map current in between. A subscriber that
joins (the publisher's XPUB socket hands over its subscription) gets a full snapshot at once,
at most 1 / ``max_rate_hz`` after the previous one: it could not apply pixel updates before.

PUB/SUB loses what a subscriber did not receive: a snapshot dropped at the high-water mark, or
published before a viewer connected. So while nothing new is published the publisher sends its
newest full snapshot again every ``repeat_interval_s`` (the encoded message is kept: a repeat
costs one send). After a scan that is the final snapshot of the series that finished last, so a
viewer that missed it, or connects after the scan, still shows the final map. A repeat carries
the same series and version: subscribers skip versions they already have.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace

import numpy as np
import zmq

from analysis.errors import ProtocolError
from analysis.scan_grid import ScanGrid
from stream import wire
from stream.loop_thread import waiting_messages

MAPS = b"maps"
PIXELS = b"pixels"
MAX_HELD_SERIES = 4
"""Series whose newest state a :class:`MapSubscriber` holds (the oldest goes first): a viewer
shows the running one, and a 200 x 200 scan's maps are 24 MB."""
FULL_SNAPSHOT_CPU_SHARE = 0.02
"""Full snapshots take at most about this share of the publishing thread's time (see above)."""


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

    A :class:`MapSubscriber` applies later pixel updates of the series to ``values`` and
    ``statuses`` in place: copy them to keep a state.
    """

    series_id: int
    version: int
    parameters: tuple[str, ...]
    grid: ScanGrid
    values: np.ndarray
    statuses: np.ndarray
    measured: int
    final: bool = False
    publisher: str = ""
    """Token of the publishing process (pixel updates apply only to its own snapshots)."""

    def map(self, name: str) -> np.ndarray:
        return self.values[self.parameters.index(name)]


def encode_snapshot(snapshot: MapSnapshot) -> list[bytes]:
    meta = {
        "publisher": snapshot.publisher,
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
    # writable copies: a subscriber applies later pixel updates in place
    values = np.frombuffer(bytearray(parts[2]), dtype="<f4")
    statuses = np.frombuffer(bytearray(parts[3]), dtype=np.uint8)
    if values.size != np.prod(shape) or statuses.size != np.prod(shape):
        raise ProtocolError(f"map snapshot arrays do not fit shape {shape}")
    return MapSnapshot(
        series_id=int(meta["series_id"]), version=int(meta["version"]),
        parameters=tuple(meta["parameters"]), grid=grid,
        values=values.reshape(shape), statuses=statuses.reshape(shape),
        measured=int(meta["measured"]), final=bool(meta["final"]), publisher=str(meta.get("publisher", "")),
    )


def _published_arrays(maps, parameters, indices=None) -> tuple[np.ndarray, np.ndarray]:
    """Values float32 and statuses uint8 (capped at 255) of ``parameters`` of a map state,
    shape (n_parameters, rows, columns), or (n_parameters, k) at the flat points ``indices``."""
    all_values, all_statuses = maps.stacked()
    parameters = tuple(parameters)
    if parameters != maps.parameters:
        rows = [maps.parameters.index(name) for name in parameters]
        all_values, all_statuses = all_values[rows], all_statuses[rows]
    if indices is not None:
        all_values = all_values.reshape(len(parameters), -1)[:, indices]
        all_statuses = all_statuses.reshape(len(parameters), -1)[:, indices]
    return all_values.astype("<f4"), np.minimum(all_statuses, 255).astype(np.uint8)


def snapshot_of(series_id: int, version: int, parameters, grid: ScanGrid, maps, final=False,
                publisher: str = "") -> MapSnapshot:
    """Build a snapshot from an :class:`analysis.map_state.MapState`."""
    values, statuses = _published_arrays(maps, parameters)
    return MapSnapshot(series_id, version, tuple(parameters), grid, values, statuses,
                       int(maps.n_measured), final, publisher)


def encode_pixels(series_id: int, version: int, base_version: int, maps, indices: np.ndarray,
                  publisher: str = "") -> list[bytes]:
    """A pixel update: the points ``indices`` (flat, row-major) of an
    :class:`analysis.map_state.MapState`, to be applied on top of version ``base_version``."""
    indices = np.ascontiguousarray(indices, dtype="<i8")
    values, statuses = _published_arrays(maps, maps.parameters, indices)
    meta = {"publisher": publisher, "series_id": series_id, "version": version,
            "base_version": base_version, "measured": int(maps.n_measured)}
    return [PIXELS, wire.dumps(meta), indices.tobytes(), values.tobytes(), statuses.tobytes()]


def apply_pixels(snapshot: MapSnapshot, parts: list) -> MapSnapshot | None:
    """Apply a pixel update to ``snapshot`` (its arrays change in place) and return the new
    state, or None when the update does not follow ``snapshot``'s version (or another
    publisher's state) and so cannot be applied.

    Raises
    ------
    ProtocolError
        A malformed pixel message (nothing is applied then).
    """
    if len(parts) != 5 or bytes(parts[0]) != PIXELS:
        raise ProtocolError("not a pixel update message")
    meta = wire.loads(parts[1])
    if (int(meta["series_id"]) != snapshot.series_id or int(meta["base_version"]) != snapshot.version
            or meta.get("publisher", "") != snapshot.publisher):
        return None
    indices = np.frombuffer(bytes(parts[2]), dtype="<i8")
    n_parameters, n_points = len(snapshot.parameters), snapshot.grid.n_points
    values = np.frombuffer(bytes(parts[3]), dtype="<f4")
    statuses = np.frombuffer(bytes(parts[4]), dtype=np.uint8)
    if (values.size != n_parameters * indices.size or statuses.size != values.size
            or (indices.size and (indices.min() < 0 or indices.max() >= n_points))):
        raise ProtocolError(f"pixel update of {indices.size} points does not fit the series' maps")
    snapshot.values.reshape(n_parameters, -1)[:, indices] = values.reshape(n_parameters, -1)
    snapshot.statuses.reshape(n_parameters, -1)[:, indices] = statuses.reshape(n_parameters, -1)
    return replace(snapshot, version=int(meta["version"]), measured=int(meta["measured"]), final=False)


class MapPublisher:
    """PUB socket publishing the maps: full snapshots at most ``max_rate_hz`` times a second (less
    often for large maps: :attr:`full_interval_s`) and pixel updates (the points measured since)
    at most ``pixel_rate_hz`` times a second.

    :meth:`maybe_publish` (called in the owner's loop) also repeats the newest full snapshot
    when nothing was published for ``repeat_interval_s`` (see the module docstring), and to a
    subscriber that joins when nothing changed since it; ``repeats`` counts those sends,
    ``pixel_updates`` the pixel messages sent, ``joins`` the subscribers seen joining.
    """

    def __init__(self, endpoint: str, context: zmq.Context | None = None, max_rate_hz: float = 2.0,
                 repeat_interval_s: float = 1.0, pixel_rate_hz: float = 100.0) -> None:
        from stream.ingest import _bindable

        if not (max_rate_hz > 0 and pixel_rate_hz > 0):
            raise ValueError(f"publish rates must be > 0, got {max_rate_hz} and {pixel_rate_hz} Hz")
        # XPUB: a PUB socket that also hands over the subscriptions, so a joining subscriber is seen
        self.socket = (context or zmq.Context.instance()).socket(zmq.XPUB)
        self.socket.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscriber's, not only a topic's first
        self.socket.setsockopt(zmq.SNDHWM, 8)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(_bindable(endpoint))
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.token = uuid.uuid4().hex[:12]
        self.min_interval_s = 1.0 / max_rate_hz
        self.pixel_interval_s = 1.0 / pixel_rate_hz
        self._last_full = -float("inf")
        self._full_cost_s = 0.0  # thread CPU of the last full snapshot
        self._last_pixels = -float("inf")
        self._last_send = -float("inf")
        self.repeat_interval_s = float(repeat_interval_s)
        self._versions: dict[int, int] = {}
        self._published_results: dict[int, int] = {}
        # per series: what the subscribers' state follows (the MapState and grid of the last full
        # snapshot) and its frames per point when last published
        self._followed: dict[int, tuple[object, ScanGrid, np.ndarray]] = {}
        self._behind: set[int] = set()  # series with pixel updates newer than their last snapshot
        self._newest: list[bytes] | None = None  # the newest full snapshot, for repeats
        self.repeats = 0
        self.pixel_updates = 0
        self.joins = 0  # subscribers seen subscribing to the full snapshots
        self._joined = False  # one joined since the last full snapshot

    def maybe_publish(self, series: dict) -> None:
        """Publish what changed: a full snapshot of the series with new results (or with pixel
        updates since their last one) when one is due, else their new points; when nothing was
        sent for ``repeat_interval_s``, the newest full snapshot again.

        The pixel interval counts from the last time something was published: a result that
        comes after a quiet interval goes out at once, whenever the owner's loop calls."""
        now = time.monotonic()
        self._take_subscriptions()
        if now - self._last_pixels >= self.pixel_interval_s:
            # a new subscriber has nothing to apply pixel updates to: a full snapshot at once
            # (at most 1 / max_rate_hz after the last one, whatever the maps cost)
            interval = self.min_interval_s if self._joined else self.full_interval_s
            full_due = now - self._last_full >= interval
            published = False
            for series_id, state in series.items():
                changed = self._published_results.get(series_id) != state.results
                if full_due and (changed or series_id in self._behind):
                    self.publish_now(series_id, state, final=False)
                    published = True
                elif changed:
                    self._publish_pixels(series_id, state)
                    published = True
            if published:
                self._last_pixels = now
        if (self._joined and self._newest is not None and now - self._last_full >= self.min_interval_s
                and not self._behind and self.seconds_until_due(series) is None):
            self._joined = False  # nothing changed since the newest snapshot: that one again
            if self._send(self._newest):
                self.repeats += 1
        if self._newest is not None and now - self._last_send >= self.repeat_interval_s:
            if self._send(self._newest):
                self.repeats += 1

    def seconds_until_due(self, series: dict) -> float | None:
        """Seconds until :meth:`maybe_publish` sends results it holds back now (0 when it would
        send them at once), None when every series' results are published. The owner's loop
        waits at most this long, so held-back points go out one pixel interval after the
        previous message, not at the loop's next idle wake-up."""
        if all(self._published_results.get(series_id) == state.results for series_id, state in series.items()):
            return None
        return max(0.0, self._last_pixels + self.pixel_interval_s - time.monotonic())

    @property
    def full_interval_s(self) -> float:
        """Seconds between full snapshots while a series runs: 1 / ``max_rate_hz``, or more for
        maps whose snapshot costs more than :data:`FULL_SNAPSHOT_CPU_SHARE` of that."""
        return max(self.min_interval_s, self._full_cost_s / FULL_SNAPSHOT_CPU_SHARE)

    def publish_now(self, series_id: int, state, final: bool = True) -> None:
        """Publish a full snapshot of a series now (``final`` marks its last one)."""
        started = time.thread_time()
        version = self._versions.get(series_id, 0) + 1
        self._versions[series_id] = version
        self._published_results[series_id] = state.results
        self._followed[series_id] = (state.maps, state.grid, state.maps.measured_count.copy())
        self._behind.discard(series_id)
        snapshot = snapshot_of(series_id, version, state.maps.parameters, state.grid, state.maps, final,
                               self.token)
        self._newest = encode_snapshot(snapshot)
        self._full_cost_s = time.thread_time() - started
        self._last_full = time.monotonic()
        self._joined = False
        self._send(self._newest)
        if final:  # nothing more will change: forget the series (its snapshot stays for repeats)
            self._followed.pop(series_id, None)

    def _publish_pixels(self, series_id: int, state) -> None:
        base = self._versions.get(series_id)
        self._published_results[series_id] = state.results
        # nothing to build on, or maps laid out anew (frames moved by the scan's documents, a new
        # grid): a full one, as the changed points are not those whose count changed
        maps, grid, counts = self._followed.get(series_id, (None, None, None))
        if base is None or maps is not state.maps or grid != state.grid:
            self.publish_now(series_id, state, final=False)
            return
        current = state.maps.measured_count
        indices = np.flatnonzero(current != counts)
        if indices.size == 0:
            return
        self._versions[series_id] = base + 1
        counts[...] = current
        self._behind.add(series_id)
        if self._send(encode_pixels(series_id, base + 1, base, state.maps, indices, self.token)):
            self.pixel_updates += 1

    def _take_subscriptions(self) -> None:
        """Read the subscriptions the XPUB socket hands over; note a subscriber joining."""
        for parts in waiting_messages(self.socket):  # on every collector loop: mostly none
            if parts == [b"\x01" + MAPS]:
                self.joins += 1
                self._joined = True

    def _send(self, parts: list[bytes]) -> bool:
        try:
            self.socket.send_multipart(parts, zmq.NOBLOCK, copy=False)
            self._last_send = time.monotonic()
            return True
        except zmq.Again:
            return False  # nobody keeps up: drop, never block the collector

    def close(self) -> None:
        self.socket.close(linger=0)


class MapSubscriber:
    """SUB side for viewers: ``latest(timeout_ms)`` returns the newest map state or None.

    Full snapshots replace a series' state (unless they are older than it: a repeat), pixel
    updates are applied to it in place (see :class:`MapSnapshot`). ``missed_updates`` counts
    pixel updates that did not follow the state held (a message lost before them, or no
    snapshot yet): the state then waits for the series' next full snapshot. ``dropped_bad``
    counts malformed messages.
    """

    def __init__(self, endpoint: str, context: zmq.Context | None = None) -> None:
        self.socket = (context or zmq.Context.instance()).socket(zmq.SUB)
        self.socket.setsockopt(zmq.RCVHWM, 64)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SUBSCRIBE, MAPS)
        self.socket.setsockopt(zmq.SUBSCRIBE, PIXELS)
        self.socket.connect(endpoint)
        self.dropped_bad = 0
        self.missed_updates = 0
        self.applied_updates = 0
        self._states: dict[int, MapSnapshot] = {}

    def latest(self, timeout_ms: int = 0) -> MapSnapshot | None:
        newest = None
        if not self.socket.poll(timeout_ms, zmq.POLLIN):
            return None
        for parts in waiting_messages(self.socket):
            try:
                state = self._apply(parts)
            except (ProtocolError, KeyError, ValueError, TypeError):
                self.dropped_bad += 1
                continue
            if state is not None:
                newest = state
        return newest

    def _apply(self, parts: list) -> MapSnapshot | None:
        if parts and bytes(parts[0]) == PIXELS:
            series_id = int(wire.loads(parts[1])["series_id"]) if len(parts) > 1 else None
            held = self._states.get(series_id)
            state = None if held is None else apply_pixels(held, parts)
            if state is None:
                self.missed_updates += 1
                return None
            self.applied_updates += 1
            self._hold(state)
            return state
        snapshot = decode_snapshot(parts)
        held = self._states.get(snapshot.series_id)
        if held is not None and held.publisher == snapshot.publisher and snapshot.version < held.version:
            return None  # a repeat of an older snapshot: the state held is newer
        self._hold(snapshot)
        return snapshot

    def _hold(self, state: MapSnapshot) -> None:
        """Hold a series' newest state (most recently updated last; the least recent goes)."""
        self._states.pop(state.series_id, None)
        self._states[state.series_id] = state
        if len(self._states) > MAX_HELD_SERIES:
            del self._states[next(iter(self._states))]

    def close(self) -> None:
        self.socket.close(linger=0)
