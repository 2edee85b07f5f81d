"""Outbound WebSocket frames.

Server frames are not masked and compression is never negotiated, so the frame of a message is the same
bytes for every recipient. A message written alone has its frame built once and cached on its
:class:`~xia_broadcast.fanout.Outgoing` for every other recipient; several queued messages for one socket
are joined with their headers into one write, with no frame built per message (a message made for one view
is written once: building its frame would copy it once more).

Memory: the headers of frames between 126 and 65,535 bytes are kept once made, one per length (at most
65,410 of 37 bytes, 2.4 MB, in a process that sends every such length).
"""

from __future__ import annotations

import struct

from ..fanout import Outgoing


def text_frame(data: bytes) -> bytes:
    """An unmasked, unfragmented WebSocket text frame carrying ``data`` (RFC 6455 section 5.2)."""
    return header(len(data)) + data


def frame_of(out: Outgoing) -> bytes:
    """The wire frame of a message, built once and cached on it for every other recipient."""
    frame = out.frame
    if not frame:  # None, or _ONCE
        frame = out.frame = text_frame(out.data)
    return frame


#: frame headers by payload length, under 126 bytes (made at import) and from 126 to 65,535 (made when first used)
_SHORT = [bytes((0x81, n)) for n in range(126)]
_MEDIUM: dict[int, bytes] = {}
#: ``Outgoing.frame`` of a message written once with its header, no frame built (the next write builds one)
_ONCE = b""


def header(n: int) -> bytes:
    """The header of a text frame carrying ``n`` bytes (kept once made, up to 65,535 bytes)."""
    if n < 126:
        return _SHORT[n]
    if n < 65536:
        made = _MEDIUM.get(n)
        if made is None:
            made = _MEDIUM[n] = struct.pack("!BBH", 0x81, 126, n)
        return made
    return struct.pack("!BBQ", 0x81, 127, n)


def frames_of(batch: list[Outgoing]) -> bytes:
    """The wire bytes of queued messages, for one write. A lone message is its frame, built once and cached
    for every other socket. Of several, a message written for the first time is its header joined with it
    (no frame built: a message made for one subscriber is written once), and its frame is built at its
    second write and cached for the others."""
    if len(batch) == 1:
        return frame_of(batch[0])
    parts: list[bytes] = []
    append = parts.append
    for out in batch:
        frame = out.frame
        if frame:
            append(frame)
        elif frame is None:
            data = out.data
            append(header(len(data)))
            append(data)
            out.frame = _ONCE
        else:
            append(frame_of(out))
    return b"".join(parts)
