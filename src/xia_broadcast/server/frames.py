"""Outbound WebSocket frames, built once per message.

Server frames are not masked and compression is never negotiated, so the frame of a message is the same
bytes for every recipient: it is built once and cached on its :class:`~xia_broadcast.fanout.Outgoing`, and
several queued frames for one socket are joined for one write.
"""

from __future__ import annotations

import struct

from ..fanout import Outgoing


def text_frame(data: bytes) -> bytes:
    """An unmasked, unfragmented WebSocket text frame carrying ``data`` (RFC 6455 section 5.2)."""
    n = len(data)
    if n < 126:
        return bytes((0x81, n)) + data
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + data
    return struct.pack("!BBQ", 0x81, 127, n) + data


def frame_of(out: Outgoing) -> bytes:
    """The wire frame of a message, built once and cached on it for every other recipient."""
    frame = out.frame
    if frame is None:
        frame = out.frame = text_frame(out.data)
    return frame


def frames_of(batch: list[Outgoing]) -> bytes:
    """The wire bytes of queued messages, for one write (a lone message's cached frame as it is)."""
    return frame_of(batch[0]) if len(batch) == 1 else b"".join([frame_of(o) for o in batch])
