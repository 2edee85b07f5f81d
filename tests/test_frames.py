"""Outbound frames (``server.frames``): what a socket is written is RFC 6455 unmasked text frames, one per
queued message in order, whether messages are written alone (cached frame) or several together (headers
joined with the messages), at every length boundary of the header's forms."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from xia_broadcast.fanout import Outgoing
from xia_broadcast.server.frames import frame_of, frames_of

LENGTHS = [0, 1, 125, 126, 127, 200, 65535, 65536, 70000]


def parse(wire: bytes) -> list[bytes]:
    """The payloads of consecutive unmasked, final text frames (an independent reading of RFC 6455 5.2)."""
    out, i = [], 0
    while i < len(wire):
        assert wire[i] == 0x81  # FIN, text
        n, i = wire[i + 1], i + 2
        assert n & 0x80 == 0  # a server never masks
        if n == 126:
            (n,), i = struct.unpack("!H", wire[i:i + 2]), i + 2
            assert n >= 126  # the shortest form is used
        elif n == 127:
            (n,), i = struct.unpack("!Q", wire[i:i + 8]), i + 8
            assert n >= 65536
        out.append(wire[i:i + n])
        i += n
    assert i == len(wire)
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(LENGTHS), st.booleans()), min_size=1, max_size=6))
def test_a_batch_is_each_message_framed_in_order(spec: list[tuple[int, bool]]) -> None:
    batch = []
    for k, (n, cached) in enumerate(spec):
        out = Outgoing(bytes([65 + k % 26]) * n)
        if cached:
            frame_of(out)  # written alone to another socket before
        batch.append(out)
    assert parse(frames_of(batch)) == [o.data for o in batch]


def test_a_message_written_alone_has_its_frame_built_once() -> None:
    out = Outgoing(b"x" * 300)
    assert frames_of([out]) is frames_of([out]) is out.frame
    assert parse(out.frame) == [out.data]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(LENGTHS), min_size=2, max_size=5), st.integers(1, 4))
def test_messages_written_to_several_sockets_are_the_same_frames_each_time(lengths: list[int], sockets: int) -> None:
    batch = [Outgoing(bytes([97 + k]) * n) for k, n in enumerate(lengths)]
    writes = [frames_of(batch) for _ in range(sockets)]  # the first writes headers, the second builds frames
    assert all(parse(w) == [o.data for o in batch] for w in writes)
    assert len(set(writes)) == 1
    if sockets >= 2:
        assert all(o.frame is not None and parse(o.frame) == [o.data] for o in batch)
