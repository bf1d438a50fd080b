"""What the detector simulator streams: a series of compressed frames plus their metadata.

A :class:`FrameSource` hands out each frame as ``(frame_index0, compression, payload)`` with
the payload compressed the way an EIGER (or its HDF5 file writer) stores it, so the server can
put it on the wire unchanged. :class:`simulators.eiger_files.EigerScan` (an opened master file)
is one; :class:`ArrayFrameSource` serves frames held in memory.
"""

from __future__ import annotations

from typing import Iterator, Protocol, runtime_checkable

import numpy as np

from analysis.errors import ConfigurationError, GeometryError
from simulators.eiger_files import EigerMetadata, EigerScan
from stream.codecs import compress

__all__ = ["ArrayFrameSource", "EigerScan", "FrameSource"]


@runtime_checkable
class FrameSource(Protocol):
    """A series of frames ready to stream.

    Attributes
    ----------
    metadata : EigerMetadata
        Detector and series metadata (frame shape/dtype, geometry, mask, flatfield...).
    n_frames : int
    """

    metadata: EigerMetadata
    n_frames: int

    def iter_chunks(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, str, bytes]]:
        """Yield ``(frame_index0, compression, payload)`` for frames ``start`` to ``stop``.

        ``compression`` is one of ``"bslz4"``, ``"lz4-hdf5"``, ``"lz4-raw"``, ``"none"``
        (see :data:`stream.messages.Compression`).
        """
        ...


class ArrayFrameSource:
    """Frames held in memory, compressed on first use and cached.

    Parameters
    ----------
    frames : ndarray, shape (n, rows, cols), dtype uint8/uint16/uint32
    metadata : EigerMetadata, optional
        Default: an EIGER description with the frames' shape and dtype and nothing else.
    compression : {"bslz4", "lz4-hdf5", "lz4-raw", "none"}
        How the chunks are handed out.
    first_index0 : int
        Frame index of ``frames[0]``.
    """

    def __init__(self, frames: np.ndarray, metadata: EigerMetadata | None = None, *,
                 compression: str = "bslz4", first_index0: int = 0):
        frames = np.asarray(frames)
        if frames.ndim != 3:
            raise GeometryError(f"frames must be (n, rows, cols), got shape {frames.shape}")
        if metadata is None:
            metadata = EigerMetadata(shape=frames.shape[1:], dtype=frames.dtype.name)
        if frames.shape[1:] != metadata.shape or frames.dtype != np.dtype(metadata.dtype):
            raise GeometryError(f"frames are {frames.shape[1:]} {frames.dtype}, "
                                f"the metadata says {metadata.shape} {metadata.dtype}")
        if compression not in ("bslz4", "lz4-hdf5", "lz4-raw", "none"):
            raise ConfigurationError(f"unknown compression {compression!r}")
        self.frames = frames
        self.metadata = metadata
        self.n_frames = frames.shape[0]
        self.compression = compression
        self.first_index0 = first_index0
        self._cache: list[bytes | None] = [None] * self.n_frames

    def chunk(self, position: int) -> bytes:
        """The compressed payload of ``frames[position]``."""
        cached = self._cache[position]
        if cached is None:
            cached = compress(np.ascontiguousarray(self.frames[position]), self.compression)
            self._cache[position] = cached
        return cached

    def iter_chunks(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, str, bytes]]:
        stop = self.n_frames if stop is None else min(stop, self.n_frames)
        for position in range(start, stop):
            yield self.first_index0 + position, self.compression, self.chunk(position)
