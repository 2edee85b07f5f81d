"""Helpers shared by the tests: a transport that records what a Hub tells it."""

from __future__ import annotations

import asyncio
from typing import Any

from xia_broadcast.fanout import Connection
from xia_broadcast.transport import NoTransport


class Signals(NoTransport[Any]):
    """A Hub's transport that writes nothing and records what the Hub tells it, as events a test waits for:
    ``ready`` when a connection has queued messages, ``closed`` (code, reason) when one must be closed.
    With ``take``, a connection's queue is taken at once into ``taken`` (as a transport would write it)."""

    def __init__(self, take: bool = False) -> None:
        self.ready = asyncio.Event()
        self.closed: list[tuple[int, str]] = []
        self.closing = asyncio.Event()
        self.take = take
        self.taken: list[bytes] = []

    def writable(self, conn: Connection[Any]) -> None:
        if self.take:
            self.taken.extend(o.data for o in conn.take())
            conn.scheduled = False
        self.ready.set()

    def close(self, conn: Connection[Any], code: int, reason: str) -> None:
        self.closed.append((code, reason))
        self.closing.set()

    async def next_ready(self, timeout: float = 5.0) -> None:
        await asyncio.wait_for(self.ready.wait(), timeout)
        self.ready.clear()
