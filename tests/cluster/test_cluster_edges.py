"""Cluster mode at its edges: what crosses Redis keeps its hidden fields hidden, the confirmation comes
first while changes flood in, a made-up resume position is history gone, and classes nobody reads any more
are no longer tailed."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from helpers import ServerFactory, Signals, fresh, recv_json, subscribe, until, ws_connect
from xia_broadcast import Document, field
from xia_broadcast.core.change import Change
from xia_broadcast.hub import Hub
from xia_broadcast.journal.redis import RedisBackend, delete_prefix


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    value = f"xia-test:{uuid.uuid4().hex[:12]}:"
    yield value
    await delete_prefix(redis_url, value)


class Invoice(Document):
    customer: str = ""
    margin: float = field(0.0, hidden=True)


async def test_a_document_published_through_redis_keeps_its_hidden_fields_hidden(redis_url: str,
                                                                                prefix: str) -> None:
    b = fresh(make_backend=classmethod(lambda cls: RedisBackend(redis_url, prefix=prefix, block_ms=200)))
    hub = b.hub()
    await hub.start()
    try:
        await b.subscribe("w", "Invoice")  # the class was never registered: its schema comes with the document
        await b.document_sent_async(Invoice(customer="acme", margin=0.42), "I", "")
        await until(lambda: bool(b.sent), what="the document through Redis")
        got = [m["message"] for m in b.to("w")]
        assert got and got[0]["customer"] == "acme" and "margin" not in got[0]
    finally:
        await hub.close()


async def test_the_confirmation_comes_first_while_changes_of_a_watched_class_flood_in(
        make_server: ServerFactory, redis_url: str, prefix: str) -> None:
    server = await make_server(redis_url=redis_url, redis_prefix=prefix, allow_undeclared_classes=True)
    publisher = RedisBackend(redis_url, prefix=prefix)
    await server.service.hub.watch("A")
    stop = asyncio.Event()

    async def flood() -> None:
        for i in range(20_000):
            if stop.is_set():
                return
            await publisher.publish(Change("A", "U", "", {"_id": f"a{i % 50}", "n": i}))

    task = asyncio.get_running_loop().create_task(flood())
    try:
        for k in range(20):  # A is watched already, B<k> is not: the node waits for Redis while A flows
            async with ws_connect(server.url) as ws:
                await ws.send(json.dumps({"A": {}, f"B{k}": {}}))
                first = await recv_json(ws)
                assert "doc_class" not in first and set(first) == {"A", f"B{k}"}, first
    finally:
        stop.set()
        await task
        await publisher.close()


async def test_a_resume_position_after_the_streams_head_is_history_gone(redis_url: str, prefix: str) -> None:
    signals = Signals(take=True)
    hub: Hub[object] = Hub(RedisBackend(redis_url, prefix=prefix, block_ms=200), transport=signals)

    def got() -> list[Any]:
        return [orjson.loads(data) for data in signals.taken]

    await hub.start()
    try:
        await hub.watch("A")
        await hub.publish(Change("A", "I", "", {"_id": "a"}))
        hub.subscribe(object(), "A", {"after_seq": "9999999999999-0000000000"}, None, control=True)
        hub.subscribe(object(), "A", {"after_seq": "9999999999999-0000000000"}, None)
        await until(lambda: bool(signals.taken and signals.closed), what="history_gone told and 4410 sent")
        assert got()[0]["_control"] == "history_gone"
        assert [code for code, _ in signals.closed] == [4410]  # never a silent skip
        seq = await hub.publish(Change("A", "I", "", {"_id": "b"}))
        await until(lambda: any(m.get("seq") == seq for m in got()), what="the control client live")
    finally:
        await hub.close()


async def test_classes_nobody_reads_any_more_are_no_longer_tailed(make_server: ServerFactory, redis_url: str,
                                                                 prefix: str) -> None:
    server = await make_server(redis_url=redis_url, redis_prefix=prefix, allow_undeclared_classes=True)
    backend = server.service.hub.backend
    assert isinstance(backend, RedisBackend)
    for k in range(5):
        ws, _ = await subscribe(server.url, {f"junk{k}_{j}": {} for j in range(8)})
        await ws.close()
    await until(lambda: server.service.connection_count == 0 and not backend.watched(),
                what="every connection gone and no class tailed")
    assert backend.watched() == [] and server.service.hub.view_count() == 0
