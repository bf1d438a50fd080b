"""Frame-detail requests off the GUI thread: one background thread asks the service, the newest
request wins (a click while a request runs replaces any waiting one), the answer comes back as
a Qt signal in the GUI thread."""

from __future__ import annotations

import threading

from PySide6 import QtCore

from stream.frame_detail import DetailError, FrameDetailClient

DEFAULT_TIMEOUT_MS = 60000
"""Generous: the service builds its geometry tables (seconds) at the first request."""


class DetailFetcher(QtCore.QObject):
    """Ask a :class:`stream.frame_detail.DetailServer` for frames without blocking the GUI.

    Signals
    -------
    finished(object)
        A :class:`FrameDetail` or a :class:`DetailError`.
    """

    finished = QtCore.Signal(object)

    def __init__(self, endpoint: str | None, timeout_ms: int = DEFAULT_TIMEOUT_MS,
                 parent: QtCore.QObject | None = None) -> None:
        super().__init__(parent)
        self.endpoint = endpoint
        self.timeout_ms = timeout_ms
        self._pending: tuple[int, int] | None = None
        self._wake = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def request(self, series_id: int, frame_index: int) -> None:
        if self.endpoint is None:
            self.finished.emit(DetailError("no frame-detail endpoint given (--detail)", "config"))
            return
        with self._wake:
            self._pending = (int(series_id), int(frame_index))
            self._wake.notify()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="viewer-detail", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        client = FrameDetailClient(self.endpoint)
        try:
            while True:
                with self._wake:
                    while self._pending is None and not self._closed:
                        self._wake.wait()
                    if self._closed:
                        return
                    series_id, frame_index = self._pending
                    self._pending = None
                result = client.request(series_id, frame_index, self.timeout_ms)
                if self._closed:
                    return
                try:
                    self.finished.emit(result)
                except RuntimeError:  # the window was deleted meanwhile
                    return
        finally:
            client.close()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(1.0)
