"""The frames of the current and the previous series, still compressed: for the frame-detail
endpoint (a viewer asks "show me the frame of this map pixel") and for the workers on the
ingest's host, which read a frame's payload here instead of receiving it over loopback.

Each series' payloads are appended to one temporary file; only an index of offsets stays in
memory, so a 61 x 61 scan of 1 MB frames does not live in RAM. A new series overwrites the file of
the oldest one it replaces (bytes past the new series' end are stale and never read; the file is
as large as the largest series it held). The ingest thread adds frames,
the detail server thread reads them: every method takes one lock and file access uses
``os.pwrite``/``os.pread`` (no shared file position).

File layout: a 4096-byte file header (:data:`FILE_MAGIC`, then the file's *generation*, uint64
little-endian), then the payloads back to back. The generation changes, before any payload is
overwritten, each time the file is taken over by a new series; a reader in another process
(:class:`StoredPayloadReader`) reads it before and after a payload, so a payload overwritten
while it was being read is an error, never another frame's bytes.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import struct
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from analysis.errors import ConfigurationError, ProtocolError
from analysis.frame_rows import FrameRows
from stream import wire
from stream.messages import ImageFrame

log = logging.getLogger(__name__)

DEFAULT_MAX_SERIES_BYTES = 64 * 2**30
"""Stop storing a series beyond this many payload bytes (protects the disk)."""

FILE_MAGIC = b"BRAGGMAP-FRAMES1"
_FILE_HEADER = struct.Struct("<16sQ")  # magic, generation
DATA_START = 4096
"""Offset of the first payload in a store file (after the file header; page-aligned)."""

FILE_PREFIX = "braggmap-frames-"
"""Store files are named ``braggmap-frames-<host>-<pid>-<random>.bin``: the host and process
that wrote them, so that a store can tell the files left by a killed service (below)."""


def _host_prefix() -> str:
    """``braggmap-frames-<host>-``; the host name without "-" so that it cannot run into the pid."""
    host = "".join(c if c.isalnum() or c in "._" else "_" for c in socket.gethostname())
    return f"{FILE_PREFIX}{host}-"


def _file_prefix() -> str:
    return f"{_host_prefix()}{os.getpid()}-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: alive
        return True
    return True


def remove_stale_files(directory: str) -> list[str]:
    """Delete the store files in ``directory`` that a process of this host left behind when it
    ended without closing its store (killed, crashed): a series' file can hold gigabytes.

    Only files named by this host whose process is gone are deleted; files of live processes
    and of other hosts (a shared directory) are kept. Returns the paths deleted.
    """
    host_prefix = _host_prefix()
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(host_prefix) and name.endswith(".bin")):
            continue
        pid_text = name[len(host_prefix):].split("-", 1)[0]
        if not pid_text.isdigit() or _process_alive(int(pid_text)):
            continue
        path = os.path.join(directory, name)
        try:
            os.unlink(path)
        except OSError as exc:
            log.warning("frame store: cannot delete %s, left by ended process %s: %s", path, pid_text, exc)
            continue
        removed.append(path)
    if removed:
        log.warning("frame store: deleted %d file(s) left in %s by ended braggmap processes", len(removed),
                    directory)
    return removed


@dataclass(frozen=True)
class StoredLocation:
    """Where one frame's payload lies in a store file.

    Attributes
    ----------
    path : str
        The store file (on the ingest's host).
    generation : int
        The file's generation when the payload was written.
    offset, n_bytes : int
        Byte range of the payload in the file.
    """

    path: str
    generation: int
    offset: int
    n_bytes: int

    def as_dict(self) -> dict:
        return {"path": self.path, "generation": self.generation, "offset": self.offset, "n_bytes": self.n_bytes}

    @classmethod
    def from_dict(cls, data) -> "StoredLocation":
        """Parse a location from an internal message; ``ProtocolError`` when it is not one."""
        try:
            path, generation, offset, n_bytes = data["path"], data["generation"], data["offset"], data["n_bytes"]
        except (TypeError, KeyError) as exc:
            raise ProtocolError(f"stored frame location {data!r} lacks {exc}") from exc
        if not isinstance(path, str) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                for v in (generation, offset, n_bytes)):
            raise ProtocolError(f"stored frame location {data!r} is not a path and three counts")
        return cls(path, generation, offset, n_bytes)


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


_INDEX_DTYPE = np.dtype([("offset", "<i8"), ("n_bytes", "<i8"), ("kind", "<i2")])
"""One stored frame: where its payload lies, and its (shape, dtype, compression) as a number."""
MAX_KINDS = 32767
"""Distinct (shape, dtype, compression) of one series' frames kept at most (a real one has 1)."""


@dataclass
class _SeriesFile:
    path: str
    fd: int
    generation: int
    size: int = 0
    index: FrameRows = field(default_factory=lambda: FrameRows(_INDEX_DTYPE))
    kinds: dict[tuple, int] = field(default_factory=dict)
    kind_keys: list[tuple] = field(default_factory=list)
    header: tuple[wire.SeriesInfo, np.ndarray | None] | None = None
    full: bool = False

    def kind_of(self, frame: ImageFrame) -> int | None:
        """The number of ``frame``'s (shape, dtype, compression), None beyond :data:`MAX_KINDS`."""
        key = (tuple(frame.shape), frame.dtype, frame.compression)
        kind = self.kinds.get(key)
        if kind is None and len(self.kinds) < MAX_KINDS:
            kind = self.kinds[key] = len(self.kind_keys)
            self.kind_keys.append(key)
        return kind

    def meta(self, series_id: int, frame_index: int, kind: int, n_bytes: int) -> StoredFrameMeta:
        shape, dtype, compression = self.kind_keys[kind]
        return StoredFrameMeta(series_id, frame_index, shape, dtype, compression, n_bytes)


class FrameStore:
    """Compressed payloads of the last ``keep_series`` series, on disk.

    Parameters
    ----------
    directory : str, optional
        Where the temporary files go (default: the system temporary folder); it must be a
        writable directory (else ``ConfigurationError``). Files that ended processes of this
        host left there are deleted (:func:`remove_stale_files`).
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
        self._series: OrderedDict[int | tuple, _SeriesFile] = OrderedDict()  # ("replaced", generation): see begin_series
        self._lock = threading.Lock()
        self._closed = False
        self._unstorable: set[int] = set()
        self._generations = secrets.randbits(62)  # unique across stores: a path may be reused
        remove_stale_files(directory if directory is not None else tempfile.gettempdir())

    # -- writing (ingest thread) --------------------------------------------------------------
    def add(self, frame: ImageFrame) -> StoredLocation | None:
        """Append one frame's compressed payload (a repeated frame index replaces the old one).

        Returns
        -------
        StoredLocation or None
            Where the payload now lies; None when it was not stored (store closed or full, or
            the file could not be written: logged).
        """
        with self._lock:
            if self._closed:
                return None
            series = self._series.get(frame.series_id)
            if series is None:
                if frame.series_id in self._unstorable:
                    return None
                try:
                    series = self._open(frame.series_id)
                except OSError as exc:
                    log.error("frame store: cannot keep the frames of series %d: %s", frame.series_id, exc)
                    self._unstorable.add(frame.series_id)
                    return None
            payload = frame.payload
            n_bytes = len(payload) if not isinstance(payload, memoryview) else payload.nbytes
            if series.size + n_bytes > self.max_series_bytes:
                if not series.full:
                    log.warning("frame store: series %d exceeds %d bytes; later frames are not kept",
                                frame.series_id, self.max_series_bytes)
                    series.full = True
                return None
            kind = series.kind_of(frame)
            if kind is None:
                log.warning("frame store: series %d has more than %d frame shapes and types; frame %d is not kept",
                            frame.series_id, MAX_KINDS, frame.frame_index)
                return None
            written = 0
            view = memoryview(payload).cast("B")
            try:
                while written < n_bytes:
                    written += os.pwrite(series.fd, view[written:], DATA_START + series.size + written)
            except OSError as exc:  # disk full...: the ingest must go on without the store
                log.error("frame store: cannot write series %d frame %d (%s); later frames are not kept",
                          frame.series_id, frame.frame_index, exc)
                series.full = True
                return None
            offset = DATA_START + series.size
            try:
                series.index.put(frame.frame_index, (offset, n_bytes, kind))
            except ValueError as exc:  # a negative frame number: never sent to a worker either
                log.warning("frame store: series %d: %s; not kept", frame.series_id, exc)
                return None
            series.size += n_bytes
            return StoredLocation(series.path, series.generation, offset, n_bytes)

    def begin_series(self, series_id: int) -> None:
        """A new series of this id begins (the ingest opened it): what the store keeps of an
        earlier one with the same id (a detector restarted numbers from 1 again) is no longer
        found by that id, so its frames and header are never served as the new series'. Its
        file stays until it is the oldest (frames of it may still be on their way to workers)."""
        with self._lock:
            self._unstorable.discard(series_id)
            old = self._series.pop(series_id, None)
            if old is not None:
                self._series[("replaced", old.generation)] = old

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
            fd, path = tempfile.mkstemp(prefix=_file_prefix(), suffix=".bin", dir=self.directory)
        self._generations += 1
        try:  # before any payload of the new series: readers of the old one see it changed
            os.pwrite(fd, _FILE_HEADER.pack(FILE_MAGIC, self._generations), 0)
        except OSError:
            self._delete(_SeriesFile(path, fd, 0))
            raise
        series = _SeriesFile(path=path, fd=fd, generation=self._generations, header=self._header_for(series_id))
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
            row = None if series is None else series.index.get(frame_index)
            if row is None:
                return None
            offset, n_bytes = int(row["offset"]), int(row["n_bytes"])
            meta = series.meta(series_id, int(frame_index), int(row["kind"]), n_bytes)
            payload = os.pread(series.fd, n_bytes, offset)
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
            return [key for key in self._series if isinstance(key, int)]

    def frame_indices(self, series_id: int) -> list[int]:
        with self._lock:
            series = self._series.get(series_id)
            return [] if series is None else series.index.indices().tolist()

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


def _read_into(fd: int, view: memoryview, offset: int) -> int:
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    data = os.pread(fd, len(view), offset)  # platforms without preadv: one copy more
    view[:len(data)] = data
    return len(data)


class FrameStoreUnreadable(ProtocolError):
    """A store file cannot be opened here (another host, another file system, no permission)."""


class StoredPayloadGone(ProtocolError):
    """The payload is no longer where its location says: the file moved on to a newer series."""


class StoredPayloadReader:
    """Reads payloads out of a :class:`FrameStore`'s files from another process on its host.

    Parameters
    ----------
    max_open_files : int
        Store files kept open at once (the store uses ``keep_series`` files, 2 by default).

    Notes
    -----
    :meth:`read` returns a view of one buffer that the next call overwrites. The file's
    generation is read before and after the payload (the store writes a new generation before
    it overwrites any payload, so an unchanged generation after the read means the bytes read
    are the payload's).
    """

    def __init__(self, max_open_files: int = 4) -> None:
        self.max_open_files = max_open_files
        self._files: OrderedDict[str, int] = OrderedDict()
        self._buffer = np.empty(0, np.uint8)

    def read(self, location: StoredLocation) -> memoryview:
        """The payload at ``location``.

        Returns
        -------
        memoryview
            ``location.n_bytes`` bytes, valid until the next call.

        Raises
        ------
        FrameStoreUnreadable
            When the file cannot be opened.
        StoredPayloadGone
            When the file holds another generation, or is too short.
        """
        try:
            for reopen in (False, True):  # a cached descriptor may be of a deleted file whose path was reused
                fd = self._open(location.path, reopen)
                if self._generation(fd, location.path) != location.generation:
                    continue
                view = self._read_range(fd, location)
                if self._generation(fd, location.path) != location.generation:
                    break
                return view
        except OSError as exc:
            raise StoredPayloadGone(f"cannot read the payload at {location.offset} in {location.path!r}: {exc}") from exc
        raise StoredPayloadGone(f"the payload at {location.offset} in {location.path} was overwritten by a newer "
                                f"series before this worker read it (generation {location.generation})")

    def _open(self, path: str, reopen: bool) -> int:
        fd = self._files.pop(path, None)
        if fd is not None and reopen:
            os.close(fd)
            fd = None
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as exc:
                raise FrameStoreUnreadable(f"cannot open the frame store file {path!r}: {exc}") from exc
            while len(self._files) >= self.max_open_files:
                os.close(self._files.popitem(last=False)[1])
        self._files[path] = fd
        return fd

    @staticmethod
    def _generation(fd: int, path: str) -> int | None:
        header = os.pread(fd, _FILE_HEADER.size, 0)
        if len(header) != _FILE_HEADER.size:
            return None
        magic, generation = _FILE_HEADER.unpack(header)
        if magic != FILE_MAGIC:
            raise StoredPayloadGone(f"{path!r} is not a frame store file")
        return generation

    def _read_range(self, fd: int, location: StoredLocation) -> memoryview:
        n_bytes = location.n_bytes
        if self._buffer.size < n_bytes:
            self._buffer = np.empty(max(n_bytes, 2 * self._buffer.size), np.uint8)
        view = memoryview(self._buffer)[:n_bytes]
        done = 0
        while done < n_bytes:
            n = _read_into(fd, view[done:], location.offset + done)
            if n <= 0:
                raise StoredPayloadGone(f"{location.path!r} ends before the payload at {location.offset} "
                                        f"({n_bytes} bytes)")
            done += n
        return view

    def close(self) -> None:
        while self._files:
            os.close(self._files.popitem(last=False)[1])
