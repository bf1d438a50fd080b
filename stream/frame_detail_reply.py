"""The reply of the frame-detail endpoint (:mod:`stream.frame_detail`): what a client gets,
and its encoding as ZeroMQ message parts (JSON + raw arrays, never pickle).

Reply: ``[b"detail", JSON meta, frame, excluded, windows]`` where ``frame`` is the decoded
frame as a bitshuffle-LZ4 chunk (decode with :func:`stream.codecs.decompress`), ``excluded`` a
bitshuffle-LZ4 uint8 image (1 = masked or NODATA pixel), ``windows`` float32
``(3, n_windows, n_q, n_chi)`` (mean counts, fitted model, residual; NaN in padding bins); or
``[b"error", JSON {"error": message}]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from analysis.errors import BraggmapError, ProtocolError
from stream import codecs, wire

DETAIL = b"detail"
ERROR = b"error"
FRAME_CODEC = "bslz4"


# -- what a client gets --------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class PeakDetail:
    """Fit of one peak window of one frame.

    Attributes
    ----------
    name : str
    status : int
        :class:`analysis.status.Status` code; ``reason`` says it in words.
    reason : str
    values, errors : dict of str to float
        ``i0`` (photons), ``q0_nm``, ``chi0_deg``, ``fwhm_q_nm``, ``fwhm_chi_deg`` and their
        1-sigma errors (same keys); NaN where missing.
    centre_px : (row, col) or None
        Fitted centre on the detector, fractional pixel indices.
    ellipse_px : (rows, cols) of ndarray or None
        Outline of the FWHM ellipse on the detector.
    window_outline_px : (rows, cols) of ndarray
        Outline of the peak's polar window on the detector.
    """

    name: str
    status: int
    reason: str
    values: dict[str, float]
    errors: dict[str, float]
    centre_px: tuple[float, float] | None
    ellipse_px: tuple[np.ndarray, np.ndarray] | None
    window_outline_px: tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True, eq=False)
class WindowDetail:
    """One polar window: arrays of shape (n_q, n_chi) of this window's own bins."""

    name: str
    q_centres_nm: np.ndarray
    chi_centres_deg: np.ndarray
    mean_counts: np.ndarray
    model: np.ndarray
    residual: np.ndarray


@dataclass(frozen=True, eq=False)
class FrameDetail:
    """Everything the viewer shows about one frame.

    Attributes
    ----------
    series_id, frame_index : int
    frame : ndarray, shape (rows, columns)
        Raw counts (uint8/16/32, NODATA = 2^bits - 1).
    excluded : ndarray of bool, shape (rows, columns)
        Masked or NODATA pixels.
    peaks : tuple of PeakDetail
    windows : tuple of WindowDetail
    parameters : dict
        Map parameter name -> ``{"value": float (NaN if missing), "status", "reason", "unit"}``.
    analysis_ms : float
        Time the service spent analysing the frame.
    """

    series_id: int
    frame_index: int
    frame: np.ndarray
    excluded: np.ndarray
    peaks: tuple[PeakDetail, ...]
    windows: tuple[WindowDetail, ...]
    parameters: dict[str, dict[str, Any]]
    analysis_ms: float = 0.0

    def peak(self, name: str) -> PeakDetail:
        for peak in self.peaks:
            if peak.name == name:
                return peak
        raise KeyError(f"frame detail has no peak {name!r}")


@dataclass(frozen=True)
class DetailError:
    """Why no detail came back: ``kind`` is ``"server"`` (the service said why), ``"timeout"``
    or ``"protocol"`` (the reply made no sense)."""

    message: str
    kind: str = "server"


# -- encoding --------------------------------------------------------------------------------------
def error_reply(message: str) -> list[bytes]:
    return [ERROR, wire.dumps({"error": message})]


def encode_detail_reply(series_id: int, frame_index: int, frame_bslz4: bytes, frame_shape, frame_dtype: str,
                        content: dict, excluded: np.ndarray, planes: np.ndarray) -> list[bytes]:
    """The reply parts (see the module docstring); ``content`` from
    :func:`stream.frame_detail_content.frame_detail_content`."""
    meta = dict(content, series_id=int(series_id), frame_index=int(frame_index),
                frame={"shape": [int(v) for v in frame_shape], "dtype": str(frame_dtype), "compression": FRAME_CODEC},
                excluded={"shape": list(excluded.shape), "dtype": "uint8", "compression": FRAME_CODEC})
    return [DETAIL, wire.dumps(meta), bytes(frame_bslz4), codecs.compress(excluded.astype(np.uint8), FRAME_CODEC),
            np.ascontiguousarray(planes, dtype="<f4").tobytes()]


def _nan(value) -> float:
    return float("nan") if value is None else float(value)


def _outline(points) -> tuple[np.ndarray, np.ndarray] | None:
    if points is None:
        return None
    return (np.array([_nan(v) for v in points["rows"]]), np.array([_nan(v) for v in points["cols"]]))


def decode_detail_reply(parts: list) -> FrameDetail | DetailError:
    """Parse a reply; an error reply or a malformed one becomes a :class:`DetailError`."""
    try:
        kind = bytes(parts[0])
        if kind == ERROR and len(parts) == 2:
            return DetailError(str(wire.loads(parts[1]).get("error", "unknown error")), "server")
        if kind != DETAIL or len(parts) != 5:
            raise ProtocolError(f"reply of kind {kind[:20]!r} with {len(parts)} parts")
        meta = wire.loads(parts[1])
        frame_info, excluded_info = meta["frame"], meta["excluded"]
        frame = codecs.decompress(bytes(parts[2]), frame_info["compression"], frame_info["dtype"], frame_info["shape"])
        excluded = codecs.decompress(bytes(parts[3]), excluded_info["compression"], "uint8",
                                     excluded_info["shape"]).astype(bool)
        windows_info = meta["windows"]
        shape = tuple(int(v) for v in windows_info["shape"])
        planes = np.frombuffer(bytes(parts[4]), dtype="<f4")
        if planes.size != 3 * int(np.prod(shape)):
            raise ProtocolError(f"window arrays of {planes.size} values do not fit 3 x {shape}")
        planes = planes.reshape((3, *shape))
        windows = []
        for w, name in enumerate(windows_info["peak_names"]):
            n_q, n_chi = int(windows_info["n_q"][w]), int(windows_info["n_chi"][w])
            windows.append(WindowDetail(
                name=name,
                q_centres_nm=np.array([_nan(v) for v in windows_info["q_centres_nm"][w]]),
                chi_centres_deg=np.array([_nan(v) for v in windows_info["chi_centres_deg"][w]]),
                mean_counts=planes[0, w, :n_q, :n_chi], model=planes[1, w, :n_q, :n_chi],
                residual=planes[2, w, :n_q, :n_chi]))
        peaks = tuple(PeakDetail(
            name=p["name"], status=int(p["status"]), reason=str(p["reason"]),
            values={k: _nan(v) for k, v in p["values"].items()},
            errors={k: _nan(v) for k, v in p["errors"].items()},
            centre_px=None if p["centre_px"] is None else (_nan(p["centre_px"]["row"]), _nan(p["centre_px"]["col"])),
            ellipse_px=_outline(p["ellipse_px"]), window_outline_px=_outline(p["window_outline_px"]),
        ) for p in meta["peaks"])
        parameters = {name: dict(entry, value=_nan(entry["value"])) for name, entry in meta["parameters"].items()}
        return FrameDetail(int(meta["series_id"]), int(meta["frame_index"]), frame, excluded, peaks,
                           tuple(windows), parameters, float(meta.get("analysis_ms", 0.0)))
    except (BraggmapError, KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        return DetailError(f"malformed frame-detail reply: {exc}", "protocol")
