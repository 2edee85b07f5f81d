"""A client that behaves as the original xia-broadcast listener, to check what an original client gets.

What it does, as the original: its first message is ``{class_name: {data_scope, catalog, show_hidden,
start_seq}, ..., "_header": {"X-App-Name": ..., "X-Api-Key": ...}}``; it reads the confirmation
``{class_name: params}``, then document messages ``{"doc_class", "op", "seq", "message"}``; it knows the
ops ``I``, ``U`` and ``D`` only; on a reconnect it sends the very same first message again (the same
``start_seq``). It never sends ``_options``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

ENVELOPE = {"doc_class", "op", "seq", "message"}
KNOWN_OPS = {"I", "U", "D"}


class OriginalListener:
    def __init__(self, url: str, channel_config: dict[str, Any], header: dict[str, str] | None = None) -> None:
        self.url = url
        self.channel_config = channel_config
        self.header = header
        self.ws: ClientConnection | None = None

    def first_message(self) -> str:
        message: dict[str, Any] = dict(self.channel_config)
        if self.header is not None:
            message["_header"] = self.header
        return json.dumps(message)

    async def connect(self) -> dict[str, Any]:
        """Open, send the first message, return the confirmation."""
        self.ws = await connect(self.url, open_timeout=5, ping_interval=None, proxy=None)
        await self.ws.send(self.first_message())
        confirmation: dict[str, Any] = json.loads(await asyncio.wait_for(self.ws.recv(), 5))
        return confirmation

    async def reconnect(self) -> dict[str, Any]:
        await self.close()
        return await self.connect()

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next document message; fails on anything an original listener would not understand."""
        assert self.ws is not None
        msg: dict[str, Any] = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        assert set(msg) == ENVELOPE, f"not a document message: {msg}"
        assert msg["op"] in KNOWN_OPS, f"an op the original listener does not know: {msg}"
        return msg

    async def until(self, last_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        """Document messages up to and including the one of ``_id`` ``last_id`` (a sentinel)."""
        got = []
        for _ in range(limit):
            msg = await self.next()
            got.append(msg)
            if msg["message"].get("_id") == last_id:
                return got
        raise AssertionError(f"sentinel {last_id} not received")

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
            self.ws = None
