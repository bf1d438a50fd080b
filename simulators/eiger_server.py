"""A DECTRIS EIGER stream simulator: binds PUSH like the detector and sends a series.

The server replays a :class:`simulators.frame_sources.FrameSource` as stream v1 (JSON + binary
multipart) or v2 (CBOR), with the global header built from the source metadata, one image
message per frame (v1 frame numbers from 0, ``dconfig`` times in ns as SIMPLON 1.8 sends them)
paced on an absolute monotonic schedule, and the series end. bitshuffle-LZ4 chunks read from
HDF5 files go on the wire unchanged; other encodings are converted with :mod:`stream.codecs`.
"""

from __future__ import annotations

import datetime
import logging
import os
import struct
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from analysis.errors import ConfigurationError, ProtocolError
from simulators.eiger_files import EigerMetadata
from simulators.frame_sources import FrameSource
from stream import protocol_v1, protocol_v2
from stream.codecs import compress, decompress
from stream.messages import ImageFrame, SeriesEnd, SeriesStart

log = logging.getLogger(__name__)

ENCODINGS = ("bslz4", "lz4", "none")
HEADER_DETAILS = ("none", "basic", "all")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
REUSED_PAYLOAD_BYTES = 256 * 2**20
"""A series that cycles through its source sends each repeated payload from one ``zmq.Frame``;
at most this many payload bytes are held that way during the series."""


class ReusedPayloads:
    """One ``zmq.Frame`` per payload object that a series sends again (a source cycled through).

    Sending a ``zmq.Frame`` again shares its buffer (libzmq counts references) where sending the
    bytes with ``copy=False`` makes a new zero-copy message each time, whose release wakes pyzmq's
    garbage-collection thread once per frame: in a benchmark that runs the simulator next to the
    service, CPU taken from the service. Payloads below ``zmq.COPY_THRESHOLD`` are copied by pyzmq
    anyway and pass through.

    Parameters
    ----------
    max_bytes : int
        Payload bytes held at most (the objects stay referenced until this object goes).
    """

    def __init__(self, max_bytes: int = REUSED_PAYLOAD_BYTES) -> None:
        self.max_bytes = int(max_bytes)
        self.held_bytes = 0
        self._frames: dict[int, tuple[bytes, zmq.Frame]] = {}

    def part(self, payload):
        """The part to send for ``payload``: its ``zmq.Frame`` (made on first use) or ``payload``."""
        held = self._frames.get(id(payload))
        if held is not None and held[0] is payload:
            return held[1]
        if (not isinstance(payload, bytes) or len(payload) < zmq.COPY_THRESHOLD
                or self.held_bytes + len(payload) > self.max_bytes):
            return payload
        frame = zmq.Frame(payload, copy=False)
        self._frames[id(payload)] = (payload, frame)  # the reference keeps id(payload) unique
        self.held_bytes += len(payload)
        return frame


@dataclass(frozen=True)
class SendReport:
    """What :meth:`EigerStreamServer.send_series` sent.

    Attributes
    ----------
    series_id : int
    frames_sent : int
    elapsed_s : float
        From the first image message to the last one sent.
    achieved_rate_hz : float or None
        ``(frames_sent - 1) / elapsed_s``; None with fewer than 2 frames.
    payload_bytes : int
        Compressed image bytes sent.
    header_sent, end_sent : bool
    """

    series_id: int
    frames_sent: int
    elapsed_s: float
    achieved_rate_hz: float | None
    payload_bytes: int
    header_sent: bool
    end_sent: bool


def wire_compression(protocol: str, encoding: str) -> str:
    """The payload compression a stream ``protocol`` uses for a SIMPLON ``encoding``."""
    if encoding == "bslz4":
        return "bslz4"
    if encoding == "lz4":
        return "lz4-raw" if protocol == "v1" else "lz4-hdf5"
    return "none"


def convert_payload(payload: bytes, compression: str, target: str, metadata: EigerMetadata) -> bytes:
    """Re-encode one frame's payload from ``compression`` to ``target`` (unchanged when equal).

    An HDF5-LZ4 chunk made of one compressed block (EIGER1 files) becomes a v1 ``lz4<`` blob by
    dropping its 16-byte prefix (12-byte header + block size), without recompression.
    """
    if compression == target:
        return payload
    if compression == "lz4-hdf5" and target == "lz4-raw" and len(payload) > 16:
        total_bytes, block_bytes, block_size = struct.unpack(">QII", bytes(payload[:16]))
        if block_bytes >= total_bytes > block_size and len(payload) == 16 + block_size:
            return bytes(payload[16:])
    frame = decompress(payload, compression, np.dtype(metadata.dtype), metadata.shape)
    return compress(np.ascontiguousarray(frame), target)


def synthetic_countrate_table(dead_time_s: float = 2.7e-7) -> np.ndarray:
    """A v1 count-rate table (float32, (4000, 2)): true rate and paralyzable dead-time response.

    Column 0 runs in steps of 1125 counts/s, column 1 is ``n exp(-n tau)``, matching the
    first rows of a real EIGER table ((0, 0), (1125, 1124.66), (2250, 2248.6)...).
    """
    true_rate = np.arange(4000, dtype=np.float64) * 1125.0
    return np.stack([true_rate, true_rate * np.exp(-true_rate * dead_time_s)], axis=1).astype(np.float32)


def new_series_unique_id(now_s: float | None = None) -> str:
    """A ULID-like 26-character id (48-bit ms time + 80 random bits, Crockford base32)."""
    millis = int((time.time() if now_s is None else now_s) * 1000) & ((1 << 48) - 1)
    value = (millis << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def detector_config(metadata: EigerMetadata, *, n_images: int, encoding: str, frame_time_s: float,
                    count_time_s: float) -> dict[str, Any]:
    """The v1 config part (``detector/config`` values) an EIGER with SIMPLON 1.8 sends.

    Values the metadata does not know (wavelength, distance, beam centre) are left out rather
    than invented.
    """
    rows, cols = metadata.shape
    bits = 8 * metadata.itemsize
    energy_ev = metadata.photon_energy_ev
    threshold = metadata.threshold_energy_ev
    if threshold is None and energy_ev is not None:
        threshold = energy_ev / 2
    cutoff = metadata.saturation_value if metadata.saturation_value is not None else 2 ** bits - 2
    pixel_x = metadata.pixel_size_m if metadata.pixel_size_m is not None else 75e-6
    distance = metadata.detector_distance_m
    config: dict[str, Any] = {
        "auto_summation": True, "bit_depth_image": bits,
        "bit_depth_readout": metadata.bit_depth_readout or min(bits, 16),
        "compression": "lz4" if encoding == "lz4" else ("bslz4" if encoding == "bslz4" else "none"),
        "count_time": count_time_s, "countrate_correction_applied": False,
        "countrate_correction_count_cutoff": int(cutoff),
        "data_collection_date": time.strftime("%Y-%m-%dT%H:%M:%S.000+00:00", time.gmtime()),
        "description": metadata.description, "detector_number": "braggmap-simulator",
        "detector_readout_time": max(frame_time_s - count_time_s, 0.0),
        "eiger_fw_version": "braggmap-simulator", "element": "",
        "flatfield_correction_applied": False, "frame_count_time": count_time_s,
        "frame_period": frame_time_s, "frame_time": frame_time_s,
        "nimages": n_images, "ntrigger": 1,
        "number_of_excluded_pixels": 0 if metadata.pixel_mask is None else int(np.count_nonzero(metadata.pixel_mask)),
        "pixel_mask_applied": bool(metadata.pixel_mask_applied), "roi_mode": "",
        "sensor_material": metadata.sensor, "software_version": "1.8.0", "trigger_mode": metadata.trigger_mode,
        "virtual_pixel_correction_applied": False,
        "x_pixel_size": pixel_x,
        "x_pixels_in_detector": cols,
        "y_pixel_size": metadata.pixel_size_y_m if metadata.pixel_size_y_m is not None else pixel_x,
        "y_pixels_in_detector": rows,
    }
    for axis in ("chi", "kappa", "omega", "phi", "two_theta"):
        config[f"{axis}_increment"] = 0.0
        config[f"{axis}_start"] = 0.0
    optional = {"beam_center_x": None, "beam_center_y": None, "detector_distance": distance,
                "detector_translation": None if distance is None else [0.0, 0.0, distance],
                "photon_energy": energy_ev, "sensor_thickness": metadata.sensor_thickness_m,
                "threshold_energy": threshold,
                "wavelength": None if metadata.wavelength_m is None else metadata.wavelength_m * 1e10}
    if metadata.beam_centre_px is not None:
        optional["beam_center_x"], optional["beam_center_y"] = map(float, metadata.beam_centre_px)
    config.update({key: value for key, value in optional.items() if value is not None})
    return dict(sorted(config.items()))


def synthetic_countrate_lut(dead_time_s: float = 2.7e-7, frame_time_s: float = 1.0) -> np.ndarray:
    """A v2 count-rate look-up table (uint32, (65536,)): measured counts -> corrected counts."""
    measured = np.arange(65536, dtype=np.float64)
    corrected = measured * np.exp(np.minimum(measured / frame_time_s * dead_time_s, 1.0))
    return np.minimum(np.rint(corrected), np.iinfo(np.uint32).max).astype(np.uint32)


def stream_v2_config(metadata: EigerMetadata, *, n_images: int, frame_time_s: float, count_time_s: float,
                     arm_date: datetime.datetime | None = None, channel: str = "threshold_1") -> dict[str, Any]:
    """The scalar fields of a v2 ``start`` message (``shared/docs/eiger-stream.md`` 2.3).

    Values the metadata does not know (wavelength, beam centre, distance) are left out.
    """
    rows, cols = metadata.shape
    energy_ev = metadata.photon_energy_ev
    threshold = metadata.threshold_energy_ev
    if threshold is None and energy_ev is not None:
        threshold = energy_ev / 2
    pixel_x = metadata.pixel_size_m if metadata.pixel_size_m is not None else 75e-6
    config: dict[str, Any] = {
        "arm_date": arm_date or datetime.datetime.now(datetime.timezone.utc),
        "channels": [channel], "count_time": count_time_s, "countrate_correction_enabled": False,
        "detector_description": metadata.description, "detector_serial_number": "braggmap-simulator",
        "flatfield_enabled": False,
        "goniometer": {axis: {"increment": 0.0, "start": 0.0}
                       for axis in ("chi", "kappa", "omega", "phi", "two_theta")},
        "frame_time": frame_time_s, "image_dtype": metadata.dtype, "image_size_x": cols, "image_size_y": rows,
        "number_of_images": n_images, "pixel_mask_enabled": bool(metadata.pixel_mask_applied),
        "pixel_size_x": pixel_x,
        "pixel_size_y": metadata.pixel_size_y_m if metadata.pixel_size_y_m is not None else pixel_x,
        "saturation_value": int(metadata.saturation_value if metadata.saturation_value is not None
                                else 2 ** (8 * metadata.itemsize) - 2),
        "sensor_material": metadata.sensor, "virtual_pixel_interpolation_enabled": False,
    }
    optional = {"incident_energy": energy_ev, "sensor_thickness": metadata.sensor_thickness_m,
                "incident_wavelength": None if metadata.wavelength_m is None else metadata.wavelength_m * 1e10,
                "threshold_energy": None if threshold is None else {channel: threshold}}
    if metadata.beam_centre_px is not None:
        optional["beam_center_x"], optional["beam_center_y"] = map(float, metadata.beam_centre_px)
    if metadata.detector_distance_m is not None:
        optional["detector_translation"] = [0.0, 0.0, metadata.detector_distance_m]
    config.update({key: value for key, value in optional.items() if value is not None})
    return dict(sorted(config.items()))


class EigerStreamServer:
    """Binds a ZeroMQ PUSH socket like an EIGER detector control unit and streams series.

    Parameters
    ----------
    endpoint : str
        Where to bind; port ``0`` or ``*`` picks a free port (see :attr:`endpoint`).
    protocol : {"v1", "v2"}
    header_detail : {"none", "basic", "all"}
        ``all`` adds flatfield, pixel mask and count-rate table to the header.
    encoding : {"bslz4", "lz4", "none"}
        SIMPLON compression: v1 ``bs<N>-lz4<`` / ``lz4<`` / ``<``; v2 ``bslz4`` / ``lz4`` / plain.
    header_appendix : object, optional
        The v1 header appendix part / v2 start ``user_data``. Text goes into the v1 part
        verbatim (a JSON text arrives as JSON), other objects as JSON; v2 sends it as CBOR.
    image_appendix : callable or object, optional
        ``image_appendix(frame_index0)`` or a constant, sent with every image (same rules).
    sndhwm : int
        Send high-water mark in messages; a full queue blocks the sender (backpressure).
    send_timeout_s : float or None
        A send blocked longer than this raises :class:`ProtocolError`; None blocks forever.
    linger_s : float
        How long :meth:`close` may still deliver queued messages (a detector delivers its whole
        series to a consumer that keeps reading; keep this long).
    clock, sleep : callable
        Monotonic clock (s) and sleep that pace the frames, replaceable in tests.
    context : zmq.Context, optional
        Default: a private context, terminated by :meth:`close`.
    """

    def __init__(self, endpoint: str = "tcp://127.0.0.1:9999", protocol: str = "v1", header_detail: str = "basic",
                 encoding: str = "bslz4", header_appendix: Any = None,
                 image_appendix: Callable[[int], Any] | Any = None, sndhwm: int = 100,
                 send_timeout_s: float | None = 60.0, linger_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 context: zmq.Context | None = None):
        if protocol not in ("v1", "v2"):
            raise ConfigurationError(f"stream protocol must be 'v1' or 'v2', not {protocol!r}")
        if header_detail not in HEADER_DETAILS:
            raise ConfigurationError(f"header_detail must be one of {HEADER_DETAILS}, not {header_detail!r}")
        if encoding not in ENCODINGS:
            raise ConfigurationError(f"encoding must be one of {ENCODINGS}, not {encoding!r}")
        self.protocol, self.header_detail, self.encoding = protocol, header_detail, encoding
        self.header_appendix, self.image_appendix = header_appendix, image_appendix
        self._clock, self._sleep = clock, sleep
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self._socket = self._context.socket(zmq.PUSH)
        self._socket.setsockopt(zmq.LINGER, int(linger_s * 1000))
        self._socket.setsockopt(zmq.SNDHWM, int(sndhwm))
        self._socket.setsockopt(zmq.SNDTIMEO, -1 if send_timeout_s is None else int(send_timeout_s * 1000))
        self._monitor = self._socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self._peers = 0
        bind_to = endpoint[:-2] + ":*" if endpoint.endswith(":0") else endpoint
        try:
            self._socket.bind(bind_to)
        except zmq.ZMQError as exc:
            self.close()
            raise ConfigurationError(f"cannot bind the simulator to {endpoint!r}: {exc}") from exc
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        log.info("EIGER simulator bound PUSH on %s (stream %s)", self.endpoint, protocol)

    # -- peers ------------------------------------------------------------------------------------
    def _drain_monitor(self, timeout_s: float = 0.0) -> None:
        timeout_ms = int(timeout_s * 1000)
        while self._monitor.poll(timeout_ms):
            event = recv_monitor_message(self._monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._peers += 1
            elif event == zmq.EVENT_DISCONNECTED:
                self._peers = max(self._peers - 1, 0)
            timeout_ms = 0

    @property
    def peer_count(self) -> int:
        """PULL peers connected now (handshakes minus disconnections seen so far)."""
        self._drain_monitor()
        return self._peers

    def wait_for_peers(self, timeout_s: float | None, min_peers: int = 1) -> bool:
        """Wait until ``min_peers`` peers are connected; False when ``timeout_s`` passes first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s  # real time, never the test clock
        while self.peer_count < min_peers:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            self._drain_monitor(0.05 if left is None else min(0.05, left))
        return True

    # -- sending ----------------------------------------------------------------------------------
    def _send(self, message, what: str) -> None:
        try:
            if isinstance(message, (bytes, bytearray, memoryview)):
                self._socket.send(message, copy=False)
            else:
                self._socket.send_multipart(list(message), copy=False)
        except zmq.Again as exc:
            raise ProtocolError(f"{self.endpoint}: sending the {what} timed out (no peer is taking messages)") from exc

    def send_raw(self, parts) -> None:
        """Send arbitrary bytes (one part, or a list of parts) as one message, e.g. a bad one."""
        self._send(parts, "raw message")

    def _encode(self, message, series_date: datetime.datetime | None = None):
        if self.protocol == "v1":
            if isinstance(message, SeriesStart):
                return protocol_v1.encode_v1_start(message)
            if isinstance(message, ImageFrame):
                return protocol_v1.encode_v1_image(message)
            return protocol_v1.encode_v1_end(message)
        if isinstance(message, SeriesStart):
            return protocol_v2.encode_v2_start(message)
        if isinstance(message, ImageFrame):
            return protocol_v2.encode_v2_image(message, series_date=series_date)
        return protocol_v2.encode_v2_end(message)

    def series_start(self, metadata: EigerMetadata, *, series_id: int, n_images: int, frame_time_s: float,
                     count_time_s: float, series_unique_id: str | None = None,
                     arm_date: datetime.datetime | None = None) -> SeriesStart:
        """The global header this server sends for a series of ``n_images`` frames."""
        detail = self.header_detail
        if self.protocol == "v1":
            config = {} if detail == "none" else detector_config(
                metadata, n_images=n_images, encoding=self.encoding, frame_time_s=frame_time_s,
                count_time_s=count_time_s)
            saturation = config.get("countrate_correction_count_cutoff")
            countrate_table = synthetic_countrate_table()
        else:  # v2 has no "none": the start message always carries the config
            config = stream_v2_config(metadata, n_images=n_images, frame_time_s=frame_time_s,
                                      count_time_s=count_time_s, arm_date=arm_date)
            saturation = config["saturation_value"]
            countrate_table = synthetic_countrate_lut()
        rows, cols = metadata.shape
        full = detail == "all"
        mask = metadata.pixel_mask if metadata.pixel_mask is not None else np.zeros((rows, cols), np.uint32)
        flatfield = metadata.flatfield if metadata.flatfield is not None else np.ones((rows, cols), np.float32)
        # Non-square pixels live only in the config: the typed field would contradict pixel_size_y.
        square = metadata.pixel_size_y_m is None or metadata.pixel_size_y_m == metadata.pixel_size_m
        typed = detail != "none" or self.protocol == "v2"
        return SeriesStart(
            series_id=series_id, protocol=self.protocol, header_detail=detail, config=config,
            n_images=n_images if typed else None, image_shape=metadata.shape if typed else None,
            image_dtype=metadata.dtype if typed else None,
            pixel_mask=mask if full else None, flatfield=flatfield if full else None,
            countrate_table=countrate_table if full else None,
            wavelength_m=metadata.wavelength_m if typed else None,
            pixel_size_m=metadata.pixel_size_m if typed and square else None,
            detector_distance_m=metadata.detector_distance_m if typed and self.protocol == "v1" else None,
            count_time_s=count_time_s if typed else None, frame_time_s=frame_time_s if typed else None,
            beam_centre_px=metadata.beam_centre_px if typed else None, saturation_value=saturation,
            series_unique_id=series_unique_id, appendix=self._appendix(self.header_appendix))

    def _appendix(self, value):
        """v1 sends a text appendix verbatim as its part (as SIMPLON does with user text); v2 as a string."""
        return value.encode() if self.protocol == "v1" and isinstance(value, str) else value

    def _image_appendix(self, frame_index: int):
        value = self.image_appendix(frame_index) if callable(self.image_appendix) else self.image_appendix
        return self._appendix(value)

    def _chunks(self, source: FrameSource, n_frames: int) -> Iterator[tuple[str, bytes]]:
        """``n_frames`` payloads from ``source``, cycling through it when it holds fewer."""
        sent = 0
        while sent < n_frames:
            for _index0, compression, payload in source.iter_chunks(0, min(source.n_frames, n_frames - sent)):
                yield compression, payload
                sent += 1

    def send_series(self, source: FrameSource, series_id: int = 1, rate_hz: float | None = None,
                    wait_for_peers_s: float | None = 10.0, n_frames: int | None = None, *, min_peers: int = 1,
                    send_header: bool = True, send_end: bool = True) -> SendReport:
        """Send a whole series: global header, every frame, series end.

        Parameters
        ----------
        source : FrameSource
        series_id : int
        rate_hz : float, optional
            Frame rate; frames leave on the absolute schedule ``t0 + i / rate_hz``. None: as
            fast as the peers take them (``dconfig`` times then follow the metadata frame time).
        wait_for_peers_s : float or None
            Wait this long for ``min_peers`` PULL peers before sending (PUSH would otherwise
            queue everything for the first peer); None waits forever, 0 does not wait.
        n_frames : int, optional
            Frames to send (default all; more than the source holds cycles through it).
        send_header, send_end : bool
            False drops the global header / series end (to test consumers against lost messages).

        Raises
        ------
        ProtocolError
            No peer connected in time, or a send blocked longer than ``send_timeout_s``.
        """
        n_frames = source.n_frames if n_frames is None else int(n_frames)
        if n_frames < 0 or (n_frames > 0 and source.n_frames == 0):
            raise ConfigurationError(f"cannot send {n_frames} frames from a source of {source.n_frames}")
        if rate_hz is not None and rate_hz <= 0:
            raise ConfigurationError(f"frame rate must be > 0 Hz, not {rate_hz}")
        if wait_for_peers_s != 0 and not self.wait_for_peers(wait_for_peers_s, min_peers):
            raise ProtocolError(f"no PULL peer connected to {self.endpoint} within {wait_for_peers_s} s")
        metadata = source.metadata
        frame_time_s = 1.0 / rate_hz if rate_hz else (metadata.frame_time_s or metadata.count_time_s or 0.0)
        count_time_s = min(metadata.count_time_s or frame_time_s, frame_time_s) if frame_time_s else (
            metadata.count_time_s or 0.0)
        period_ns, count_ns = round(frame_time_s * 1e9), round(count_time_s * 1e9)
        unique_id = new_series_unique_id() if self.protocol == "v2" else None
        arm_date = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        if send_header:
            start = self.series_start(metadata, series_id=series_id, n_images=n_frames, frame_time_s=frame_time_s,
                                      count_time_s=count_time_s, series_unique_id=unique_id, arm_date=arm_date)
            self._send(self._encode(start), "global header")
        target = wire_compression(self.protocol, self.encoding)
        # v1 sends the payload as its own part: a cycled source's payloads can share one buffer each
        reused = ReusedPayloads() if self.protocol == "v1" and n_frames > source.n_frames else None
        payload_bytes, t0, sent = 0, None, 0
        for index0, (compression, payload) in enumerate(self._chunks(source, n_frames)):
            payload = convert_payload(payload, compression, target, metadata)
            frame = ImageFrame(
                series_id=series_id, frame_index=index0, shape=metadata.shape, dtype=metadata.dtype,
                compression=target, payload=payload, elem_size=metadata.itemsize,
                start_time_ns=index0 * period_ns, stop_time_ns=index0 * period_ns + count_ns, real_time_ns=count_ns,
                series_unique_id=unique_id, appendix=self._image_appendix(index0))
            message = self._encode(frame, series_date=arm_date)
            if reused is not None and message[2] is payload:
                message[2] = reused.part(payload)
            if t0 is None:
                t0 = self._clock()
            elif rate_hz:
                delay = t0 + index0 / rate_hz - self._clock()
                if delay > 0:
                    self._sleep(delay)
            self._send(message, f"image {index0}")
            payload_bytes += len(payload)
            sent += 1
        elapsed = self._clock() - t0 if t0 is not None else 0.0
        if send_end:
            self._send(self._encode(SeriesEnd(series_id=series_id, series_unique_id=unique_id)), "series end")
        report = SendReport(series_id=series_id, frames_sent=sent, elapsed_s=elapsed,
                            achieved_rate_hz=(sent - 1) / elapsed if sent > 1 and elapsed > 0 else None,
                            payload_bytes=payload_bytes, header_sent=send_header, end_sent=send_end)
        log.info("series %d: %d frames in %.3f s to %s", series_id, sent, elapsed, self.endpoint)
        return report

    # -- lifetime ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the sockets (queued messages get at most ``linger_s`` to leave)."""
        if self._socket.closed:
            return
        try:
            self._socket.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(linger=0)
        self._socket.close()
        if self._own_context:
            self._context.term()

    def __enter__(self) -> "EigerStreamServer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
