"""Scope exits in replays are the same on every backend: the previous state travels with each change
(the backend's document store gives it when the publisher does not), so a resume, a late joiner or a
subscriber catching up from the journal gets the ``X`` and the ``D`` a live one got, on one node, from a
SQLite file, and from Redis on another node than the publisher's."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from helpers import EU, order, recv_json, subscribe, until
from xia_broadcast.journal.redis import delete_prefix
from xia_broadcast.server.native import NativeServer


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def two_nodes(request: pytest.FixtureRequest, make_server: Callable[..., Any],
                    tmp_path: Path) -> AsyncIterator[tuple[NativeServer, NativeServer]]:
    """(the node publishing, the node subscribing): one server for memory and SQLite, two on one Redis."""
    if request.param == "memory":
        server = await make_server()
        yield server, server
    elif request.param == "sqlite":
        server = await make_server(data=str(tmp_path / "data"))
        yield server, server
    else:
        url = request.getfixturevalue("redis_url")
        prefix = f"xia-test:{uuid.uuid4().hex[:12]}:"
        a, b = [await make_server(redis_url=url, redis_prefix=prefix) for _ in range(2)]
        for s in (a, b):
            await until(lambda s=s: s.service.hub.ready, what="the node tails Redis")
        try:
            yield a, b
        finally:
            await delete_prefix(url, prefix)


async def test_a_late_joiner_replaying_gets_the_exits_a_live_subscriber_got(
        two_nodes: tuple[NativeServer, NativeServer]) -> None:
    publisher, node = two_nodes
    url = f"ws://127.0.0.1:{node.port}/ws"
    live, _ = await subscribe(url, {"Order": {"data_scope": EU}, "_options": {"exits": True}})
    publish = publisher.service.publish
    first = await publish("Order", "I", order(1))
    await publish("Order", "I", order(2))
    await publish("Order", "U", order(1, region="US"))  # leaves the view: no previous state given
    await publish("Order", "D", order(2, region="US"))  # deleted after it moved out, in one change
    expected = [("I", "O-000001"), ("I", "O-000002"), ("X", "O-000001"), ("D", "O-000002")]
    async with live:
        got = [await recv_json(live) for _ in range(4)]
        assert [(m["op"], m["message"]["_id"]) for m in got] == expected
    late, _ = await subscribe(url, {"Order": {"data_scope": EU, "from_seq": first}, "_options": {"exits": True}})
    async with late:
        replayed = [await recv_json(late) for _ in range(4)]
    assert [(m["op"], m["message"]["_id"]) for m in replayed] == expected
    assert json.dumps(replayed) == json.dumps(got)  # the same messages, byte for byte
