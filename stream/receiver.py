"""The detector-facing socket: a PULL that connects to the EIGER (or the simulator).

The detector binds PUSH and hands each message to exactly one PULL peer, so there is one
receiver per detector stream (the ingest owns it). A message that cannot be decoded becomes a
:class:`Malformed` record with its reason; the receiver never stops on bad input.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import zmq

from analysis.errors import ProtocolError
from stream.messages import StreamMessage
from stream.protocol import UndecodableImage, decode_message

log = logging.getLogger(__name__)

DEFAULT_DETECTOR_ENDPOINT = "tcp://127.0.0.1:9999"


@dataclass(frozen=True)
class Malformed:
    """A message that could not be decoded.

    Attributes
    ----------
    reason : str
        Why, in one line.
    series_id, frame_index : int or None
        Filled when the message was recognisably an image of a known frame.
    """

    reason: str
    series_id: int | None = None
    frame_index: int | None = None


@dataclass(frozen=True)
class Received:
    """A decoded message and the time it arrived (ns, ``time.time_ns``)."""

    message: StreamMessage
    received_ns: int


class DetectorReceiver:
    """PULL socket connected to a detector stream endpoint.

    Parameters
    ----------
    endpoint : str
        Where the detector binds (``tcp://HOST:9999`` for v1, ``:31001`` for v2).
    protocol : {"auto", "v1", "v2"}
    context : zmq.Context, optional
    rcvhwm : int
        Receive high-water mark (messages queued in this process).
    """

    def __init__(self, endpoint: str = DEFAULT_DETECTOR_ENDPOINT, protocol: str = "auto",
                 context: zmq.Context | None = None, rcvhwm: int = 2000) -> None:
        self.endpoint = endpoint
        self.protocol = protocol
        self._context = context or zmq.Context.instance()
        self.socket = self._context.socket(zmq.PULL)
        self.socket.setsockopt(zmq.RCVHWM, rcvhwm)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)

    def receive(self, timeout_ms: int) -> Received | Malformed | None:
        """Wait up to ``timeout_ms`` for one message; None on time-out."""
        if not self.socket.poll(timeout_ms, zmq.POLLIN):
            return None
        frames = self.socket.recv_multipart(copy=False)
        received_ns = time.time_ns()
        parts = [frame.buffer for frame in frames]
        return self.decode(parts, received_ns)

    def decode(self, parts: list, received_ns: int) -> Received | Malformed:
        try:
            return Received(decode_message(parts, self.protocol), received_ns)
        except UndecodableImage as exc:
            return Malformed(str(exc), exc.series_id, exc.frame_index)
        except ProtocolError as exc:
            return Malformed(str(exc))
        except Exception as exc:  # a decoder bug must not stop the receiver either
            log.exception("unexpected error decoding a detector message")
            return Malformed(f"unexpected decoder error: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        self.socket.close(linger=0)
