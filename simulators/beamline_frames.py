"""What the simulated detector sees at a stage position: ``frame_at(slow_um, fast_um)`` makers.

* :func:`uniform_frames`: a flat frame whose every pixel counts ``counts_at(slow_um, fast_um)``
  (a sample whose SAXS intensity is a known function of position; cheap on a small detector).
* :func:`recorded_scan_frames`: the recorded frame of the grid point nearest to the position
  (a synthetic or real EIGER scan replayed by a bluesky raster over the same grid).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from analysis.scan_grid import ScanGrid
from simulators.eiger_files import EigerMetadata
from simulators.frame_sources import FrameSource
from stream.codecs import compress


def uniform_frames(metadata: EigerMetadata, counts_at: Callable[[float, float], int],
                   compression: str = "bslz4") -> Callable[[float, float], tuple[str, bytes]]:
    """Frames of ``metadata.shape`` filled with ``counts_at(slow_um, fast_um)`` (compressed, cached)."""
    cache: dict[int, bytes] = {}

    def frame_at(slow_um: float, fast_um: float) -> tuple[str, bytes]:
        counts = int(counts_at(slow_um, fast_um))
        if counts not in cache:
            cache[counts] = compress(np.full(metadata.shape, counts, dtype=np.dtype(metadata.dtype)), compression)
        return compression, cache[counts]

    return frame_at


def recorded_scan_frames(source: FrameSource, grid: ScanGrid) -> Callable[[float, float], tuple[str, bytes]]:
    """The recorded frame of the grid point nearest to (slow_um, fast_um) (frames in scan order)."""
    payloads: dict[int, tuple[str, bytes]] = {}

    def frame_at(slow_um: float, fast_um: float) -> tuple[str, bytes]:
        pixel = []
        for axis, value in enumerate((slow_um, fast_um)):
            index = int(math.floor((value - grid.start_um[axis]) / grid.step_um[axis] + 0.5))
            pixel.append(min(max(index, 0), grid.shape[axis] - 1))
        k = grid.frame_index(pixel[0], pixel[1])
        if k not in payloads:
            payloads.clear()  # frames are large: keep only the latest
            _, compression, payload = next(iter(source.iter_chunks(k, k + 1)))
            payloads[k] = (compression, bytes(payload))
        return payloads[k]

    return frame_at
