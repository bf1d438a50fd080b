"""The viewer's side of the published map state: a Qt timer takes the newest snapshot at most
``rate_hz`` times a second (it ticks twice as often and hands on a snapshot only when
1 / ``rate_hz`` has passed since the last one). The SUB socket keeps only a few messages and
:meth:`stream.published_state.MapSubscriber.latest` drains them, so a slow viewer drops
snapshots and never slows the service."""

from __future__ import annotations

import logging
import time

from PySide6 import QtCore

from stream.published_state import MapSnapshot, MapSubscriber

log = logging.getLogger(__name__)

MAX_RATE_HZ = 20.0


class SnapshotFeed(QtCore.QObject):
    """Poll a map PUB endpoint; :attr:`snapshot` carries each newest snapshot.

    Attributes
    ----------
    received : int
        Snapshots handed on (one per timer tick at most).
    skipped : int
        Snapshot versions of the current series never seen (dropped by the sockets or
        superseded while draining).
    """

    snapshot = QtCore.Signal(object)

    def __init__(self, endpoint: str, rate_hz: float = MAX_RATE_HZ, parent: QtCore.QObject | None = None) -> None:
        super().__init__(parent)
        if not 0 < rate_hz <= MAX_RATE_HZ:
            raise ValueError(f"poll rate {rate_hz} Hz must be in (0, {MAX_RATE_HZ}]")
        self.endpoint = endpoint
        self.subscriber = MapSubscriber(endpoint)
        self.received = 0
        self.skipped = 0
        self._last: tuple[int, int] | None = None
        self.min_interval_s = 1.0 / rate_hz
        self._last_emit = -float("inf")
        self.timer = QtCore.QTimer(self)
        self.timer.setInterval(max(1, int(500.0 / rate_hz)))
        self.timer.timeout.connect(self.poll)

    def start(self) -> None:
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()

    def poll(self) -> MapSnapshot | None:
        """Take the newest waiting snapshot (never waits) and emit it, unless one was emitted
        less than 1 / ``rate_hz`` ago (the messages then wait for the next tick)."""
        if time.monotonic() - self._last_emit < self.min_interval_s:
            return None
        newest = self.subscriber.latest(0)
        if newest is None:
            return None
        if self._last is not None and self._last[0] == newest.series_id and newest.version <= self._last[1]:
            return None  # an old snapshot arriving late
        if self._last is not None and self._last[0] == newest.series_id:
            self.skipped += max(0, newest.version - self._last[1] - 1)
        self._last = (newest.series_id, newest.version)
        self.received += 1
        self._last_emit = time.monotonic()
        self.snapshot.emit(newest)
        return newest

    def close(self) -> None:
        self.stop()
        self.subscriber.close()
