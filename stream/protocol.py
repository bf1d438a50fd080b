"""Decode one EIGER stream message, v1 (JSON multipart) or v2 (CBOR), into a StreamMessage.

The two protocols live in :mod:`stream.protocol_v1` and :mod:`stream.protocol_v2`; this module
only chooses between them and holds what both share: :class:`UndecodableImage`,
:class:`MessageContext` (which error to raise) and :func:`merge_start_field` (encoders).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from analysis.errors import ProtocolError
from stream.messages import StreamMessage

CBOR_SELF_DESCRIBE_PREFIX = b"\xd9\xd9\xf7"
"""Tag 55799 as it opens every v2 message a real detector sends."""


class UndecodableImage(ProtocolError):
    """An image message that cannot be decoded, although it says which frame it is.

    The accounting marks that frame *undecodable* instead of counting a gap.

    Parameters
    ----------
    reason : str
        What is wrong, in a few words.
    series_id, frame_index : int or None
        As far as they could be read from the message.
    """

    def __init__(self, reason: str, series_id: int | None = None,
                 frame_index: int | None = None) -> None:
        where = []
        if series_id is not None:
            where.append(f"series {series_id}")
        if frame_index is not None:
            where.append(f"frame {frame_index}")
        super().__init__(f"{reason} ({', '.join(where)})" if where else reason)
        self.reason = reason
        self.series_id = series_id
        self.frame_index = frame_index


class MessageContext:
    """What a decoder knows so far about the message it reads; builds the right error.

    Once an image message has named its series or frame, errors become
    :class:`UndecodableImage` carrying them; otherwise plain :class:`ProtocolError`.
    """

    def __init__(self) -> None:
        self.image = False
        self.series_id: int | None = None
        self.frame_index: int | None = None

    def error(self, reason: str) -> ProtocolError:
        if self.image and (self.series_id is not None or self.frame_index is not None):
            return UndecodableImage(reason, self.series_id, self.frame_index)
        return ProtocolError(reason)


def merge_start_field(config: dict, key: str, value: Any, field_name: str) -> None:
    """Put a typed SeriesStart field into a wire config, for the encoders.

    ``value`` None: nothing to do; ``key`` absent: it is added; present with the same value
    (floats to 1e-12): kept as it is; present with another value: ProtocolError, so that a
    field changed on a decoded SeriesStart is never silently overridden by its old config.
    """
    if value is None:
        return
    if key not in config:
        config[key] = value
        return
    present = config[key]
    numbers = (int, float)
    same = (math.isclose(float(present), float(value), rel_tol=1e-12, abs_tol=0.0)
            if isinstance(present, numbers) and isinstance(value, numbers)
            else present == value)
    if not same:
        raise ProtocolError(f"SeriesStart.{field_name} ({value!r}) disagrees with config "
                            f"{key!r} ({present!r}); change both")


# Imported after UndecodableImage: protocol_v1/v2 import it from here (either import order works).
from stream import protocol_v1, protocol_v2  # noqa: E402


def detect_protocol(parts: Sequence) -> str:
    """``"v2"`` for one part opening with the CBOR self-describe tag, else ``"v1"``."""
    if len(parts) == 1 and bytes(memoryview(parts[0])[:3]) == CBOR_SELF_DESCRIBE_PREFIX:
        return "v2"
    return "v1"


def decode_message(parts: Sequence, protocol: str = "auto") -> StreamMessage:
    """Decode the parts of one ZeroMQ message.

    Parameters
    ----------
    parts : sequence of bytes-like
        The message parts as received (``bytes`` or ``memoryview``; image payloads are kept
        without copying).
    protocol : {"auto", "v1", "v2"}
        ``"auto"``: a single part starting with ``d9 d9 f7`` is v2, anything else v1.

    Returns
    -------
    SeriesStart, ImageFrame or SeriesEnd

    Raises
    ------
    UndecodableImage
        A malformed image message whose series and/or frame number could be read.
    ProtocolError
        Any other malformed message.
    """
    if protocol == "auto":
        protocol = detect_protocol(parts)
    if protocol == "v1":
        return protocol_v1.decode_v1(parts)
    if protocol == "v2":
        if len(parts) != 1:
            raise ProtocolError(f"wrong part count: a v2 message has 1 part, got {len(parts)}")
        return protocol_v2.decode_v2(parts[0])
    raise ProtocolError(f"unknown stream protocol {protocol!r}; use 'auto', 'v1' or 'v2'")
