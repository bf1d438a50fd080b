"""The frames of the current and the previous series, still compressed, for the frame-detail
endpoint (a viewer asks "show me the frame of this map pixel").

Each series' payloads are appended to one temporary file; only an index of offsets stays in
memory, so a 61 x 61 scan of 1 MB frames does not live in RAM. A new series overwrites the file of
the oldest one it replaces (bytes past the new series' end are stale and never read; the file is
as large as the largest series it held). The ingest thread adds frames,
the detail server thread reads them: every method takes one lock and file access uses
``os.pwrite``/``os.pread`` (no shared file position).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from analysis.errors import ConfigurationError
from stream import wire
from stream.messages import ImageFrame

log = logging.getLogger(__name__)

DEFAULT_MAX_SERIES_BYTES = 64 * 2**30
"""Stop storing a series beyond this many payload bytes (protects the disk)."""


@dataclass(frozen=True)
class StoredFrameMeta:
    """What is needed to decode a stored payload.

    Attributes
    ----------
    series_id, frame_index : int
    shape : tuple of int
        (rows, columns).
    dtype : str
        ``"uint8"``, ``"uint16"`` or ``"uint32"``.
    compression : str
        As :data:`stream.messages.Compression`.
    n_bytes : int
        Stored (compressed) payload size.
    """

    series_id: int
    frame_index: int
    shape: tuple[int, int]
    dtype: str
    compression: str
    n_bytes: int


@dataclass
class _SeriesFile:
    path: str
    fd: int
    size: int = 0
    index: dict[int, tuple[int, StoredFrameMeta]] = field(default_factory=dict)
    header: tuple[wire.SeriesInfo, np.ndarray | None] | None = None
    full: bool = False


class FrameStore:
    """Compressed payloads of the last ``keep_series`` series, on disk.

    Parameters
    ----------
    directory : str, optional
        Where the temporary files go (default: the system temporary folder); it must be a
        writable directory (else ``ConfigurationError``).
    keep_series : int
        Series kept (2: the current and the previous one); older ones are deleted.
    header_source : callable, optional
        ``header_source() -> list of bytes or None``: the encoded series message
        (:func:`stream.wire.encode_series`) of the series being received, read when the first
        frame of a series arrives (the ingest's ``series_parts``), so that the detail endpoint
        knows the pixel mask and saturation value of a stored frame.
    max_series_bytes : int
        Payload bytes stored per series at most; later frames of that series are not stored.
    """

    def __init__(self, directory: str | None = None, keep_series: int = 2,
                 header_source: Callable[[], list | None] | None = None,
                 max_series_bytes: int = DEFAULT_MAX_SERIES_BYTES) -> None:
        if keep_series < 1:
            raise ValueError(f"keep_series={keep_series} must be at least 1")
        if directory is not None and not (os.path.isdir(directory) and os.access(directory, os.W_OK | os.X_OK)):
            raise ConfigurationError(f"frame store directory {directory!r} is not a writable directory")
        self.directory = directory
        self.keep_series = keep_series
        self.header_source = header_source
        self.max_series_bytes = max_series_bytes
        self._series: OrderedDict[int, _SeriesFile] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = False
        self._unstorable: set[int] = set()

    # -- writing (ingest thread) --------------------------------------------------------------
    def add(self, frame: ImageFrame) -> None:
        """Append one frame's compressed payload (a repeated frame index replaces the old one)."""
        with self._lock:
            if self._closed:
                return
            series = self._series.get(frame.series_id)
            if series is None:
                if frame.series_id in self._unstorable:
                    return
                try:
                    series = self._open(frame.series_id)
                except OSError as exc:
                    log.error("frame store: cannot keep the frames of series %d: %s", frame.series_id, exc)
                    self._unstorable.add(frame.series_id)
                    return
            payload = frame.payload
            n_bytes = len(payload) if not isinstance(payload, memoryview) else payload.nbytes
            if series.size + n_bytes > self.max_series_bytes:
                if not series.full:
                    log.warning("frame store: series %d exceeds %d bytes; later frames are not kept",
                                frame.series_id, self.max_series_bytes)
                    series.full = True
                return
            written = 0
            view = memoryview(payload).cast("B")
            try:
                while written < n_bytes:
                    written += os.pwrite(series.fd, view[written:], series.size + written)
            except OSError as exc:  # disk full...: the ingest must go on without the store
                log.error("frame store: cannot write series %d frame %d (%s); later frames are not kept",
                          frame.series_id, frame.frame_index, exc)
                series.full = True
                return
            meta = StoredFrameMeta(frame.series_id, frame.frame_index, tuple(frame.shape), frame.dtype,
                                   frame.compression, n_bytes)
            series.index[frame.frame_index] = (series.size, meta)
            series.size += n_bytes

    def _open(self, series_id: int) -> _SeriesFile:
        recycled = None
        while len(self._series) >= self.keep_series:
            _old_id, old = self._series.popitem(last=False)
            if recycled is not None:
                self._delete(recycled)
            recycled = old
        if recycled is not None:
            # overwrite the oldest series' file: its pages are in the page cache already, where
            # a new file's cost the ingest ~4x more per write (~0.9 ms per 4M frame under load)
            path, fd = recycled.path, recycled.fd
        else:
            fd, path = tempfile.mkstemp(prefix="braggmap-frames-", suffix=".bin", dir=self.directory)
        series = _SeriesFile(path=path, fd=fd, header=self._header_for(series_id))
        self._series[series_id] = series
        return series

    def _header_for(self, series_id: int):
        if self.header_source is None:
            return None
        try:
            parts = self.header_source()
            if parts is None:
                return None
            info, mask = wire.decode_series(parts)
        except Exception as exc:  # a bad header only costs the detail view its mask
            log.warning("frame store: series header unreadable: %s", exc)
            return None
        return (info, mask) if info.series_id == series_id else None

    @staticmethod
    def _delete(series: _SeriesFile) -> None:
        try:
            os.close(series.fd)
        except OSError:
            pass
        try:
            os.unlink(series.path)
        except FileNotFoundError:
            pass

    # -- reading (any thread) -----------------------------------------------------------------
    def get(self, series_id: int, frame_index: int) -> tuple[StoredFrameMeta, bytes] | None:
        """The stored frame, or None when that series or frame is not (or no longer) kept."""
        with self._lock:
            series = self._series.get(series_id)
            if series is None or frame_index not in series.index:
                return None
            offset, meta = series.index[frame_index]
            payload = os.pread(series.fd, meta.n_bytes, offset)
        if len(payload) != meta.n_bytes:
            log.error("frame store: short read of series %d frame %d", series_id, frame_index)
            return None
        return meta, payload

    def header(self, series_id: int) -> tuple[wire.SeriesInfo, np.ndarray | None] | None:
        """(series info, pixel mask or None) of a kept series, None when unknown."""
        with self._lock:
            series = self._series.get(series_id)
            return None if series is None else series.header

    def series_ids(self) -> list[int]:
        """Kept series, oldest first."""
        with self._lock:
            return list(self._series)

    def frame_indices(self, series_id: int) -> list[int]:
        with self._lock:
            series = self._series.get(series_id)
            return [] if series is None else sorted(series.index)

    def stored_bytes(self) -> int:
        with self._lock:
            return sum(series.size for series in self._series.values())

    def paths(self) -> list[str]:
        with self._lock:
            return [series.path for series in self._series.values()]

    def close(self) -> None:
        """Delete every file; later :meth:`add` calls are ignored and :meth:`get` finds nothing."""
        with self._lock:
            self._closed = True
            while self._series:
                _series_id, series = self._series.popitem(last=False)
                self._delete(series)

    def __enter__(self) -> "FrameStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
