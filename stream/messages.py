"""Decoded EIGER stream messages, the same for stream v1 (JSON + binary) and v2 (CBOR).

A decoder turns the bytes of one ZeroMQ message into one of these frozen dataclasses; an
encoder turns them back into bytes. Image payloads stay compressed (exactly the bytes the
detector sent) so that the ingest can fan them out to workers without touching pixels.

Shapes are numpy order everywhere here: ``(rows, columns) = (y, x)``; the v1 wire format's
``[x, y]`` is reversed by the decoder and restored by the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import numpy as np

Protocol = Literal["v1", "v2"]
HeaderDetail = Literal["none", "basic", "all"]
Compression = Literal["bslz4", "lz4-hdf5", "lz4-raw", "none"]
"""How an image payload is compressed.

* ``"bslz4"``: HDF5 bitshuffle-LZ4 chunk (12-byte header), v1 ``bs<N>-lz4<`` and v2 ``"bslz4"``.
* ``"lz4-hdf5"``: HDF5-LZ4 framing (12-byte header, blocks with u32 BE sizes), v2 ``"lz4"``.
* ``"lz4-raw"``: one raw LZ4 block without header, v1 ``lz4<``.
* ``"none"``: raw little-endian pixels, v1 ``<`` or a v2 typed array without tag 56500.
"""


@dataclass(frozen=True, eq=False)
class SeriesStart:
    """Global header of a series (v1 ``dheader-1.0`` and its parts; v2 ``start``).

    Attributes
    ----------
    series_id : int
        Sequence id returned by ``arm``.
    protocol : {"v1", "v2"}
    header_detail : {"none", "basic", "all"}
    config : Mapping
        v1: the detector config part as sent (JSON object), empty for ``none``.
        v2: every scalar field of the start message (arrays removed).
    n_images : int or None
        Frames the series will hold (v1 ``nimages * ntrigger``; v2 ``number_of_images``),
        None when the header does not say (v1 ``header_detail`` none).
    image_shape : tuple of int or None
        (rows, columns), None when unknown.
    image_dtype : str or None
        ``"uint8"``/``"uint16"``/``"uint32"`` when known (v1 from ``bit_depth_image``).
    pixel_mask : ndarray of uint32, shape (rows, columns), or None
        EIGER pixel mask (NXmx bits; nonzero = do not use).
    flatfield : ndarray of float32, shape (rows, columns), or None
    countrate_table : ndarray of float32 or uint32, or None
        v1: float32 (4000, 2); v2: the look-up table as sent.
    wavelength_m, pixel_size_m, detector_distance_m, count_time_s, frame_time_s : float or None
    beam_centre_px : tuple of float or None
        (x, y) = (column, row) in pixels, as the detector reports it.
    saturation_value : int or None
        Largest valid count (v2 ``saturation_value``, v1 ``countrate_correction_count_cutoff``).
    series_unique_id : str or None
        v2 only.
    appendix : Any
        v1 header appendix part (decoded as JSON when it is JSON, else bytes); v2 ``user_data``.
    channel : str or None
        v2: the channel whose mask/flatfield were taken (first of ``channels``).
    """

    series_id: int
    protocol: Protocol
    header_detail: HeaderDetail
    config: Mapping[str, Any] = field(default_factory=dict)
    n_images: int | None = None
    image_shape: tuple[int, int] | None = None
    image_dtype: str | None = None
    pixel_mask: np.ndarray | None = None
    flatfield: np.ndarray | None = None
    countrate_table: np.ndarray | None = None
    wavelength_m: float | None = None
    pixel_size_m: float | None = None
    detector_distance_m: float | None = None
    count_time_s: float | None = None
    frame_time_s: float | None = None
    beam_centre_px: tuple[float, float] | None = None
    saturation_value: int | None = None
    series_unique_id: str | None = None
    appendix: Any = None
    channel: str | None = None


@dataclass(frozen=True, eq=False)
class ImageFrame:
    """One image message (v1 ``dimage-1.0`` + ``dimage_d-1.0`` + blob + ``dconfig-1.0``; v2 ``image``).

    Attributes
    ----------
    series_id : int
    frame_index : int
        0-based (v1 ``frame``, v2 ``image_id``).
    shape : tuple of int
        (rows, columns) of the decoded image.
    dtype : str
        ``"uint8"``, ``"uint16"`` or ``"uint32"``.
    compression : Compression
    payload : bytes or memoryview
        The compressed bytes exactly as received.
    elem_size : int
        Bytes per pixel (1, 2 or 4).
    start_time_ns, stop_time_ns, real_time_ns : int or None
        v1 ``dconfig`` times (ns on SIMPLON 1.8); v2 rationals converted to ns.
    series_unique_id : str or None
    appendix : Any
        v1 image appendix part; v2 ``user_data``.
    channel : str or None
        v2 channel name (``"threshold_1"``...), None for v1.
    """

    series_id: int
    frame_index: int
    shape: tuple[int, int]
    dtype: str
    compression: Compression
    payload: bytes | memoryview
    elem_size: int
    start_time_ns: int | None = None
    stop_time_ns: int | None = None
    real_time_ns: int | None = None
    series_unique_id: str | None = None
    appendix: Any = None
    channel: str | None = None

    @property
    def n_bytes_decoded(self) -> int:
        return self.shape[0] * self.shape[1] * self.elem_size


@dataclass(frozen=True)
class SeriesEnd:
    """End of a series (v1 ``dseries_end-1.0``; v2 ``end``)."""

    series_id: int
    series_unique_id: str | None = None


StreamMessage = SeriesStart | ImageFrame | SeriesEnd
