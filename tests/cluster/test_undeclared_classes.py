"""Cluster mode with ``allow_undeclared_classes``: what subscribers of arbitrary class names may cost Redis.

A subscriber may not publish; subscribing to a name nobody publishes must leave no key in Redis (each
handshake could otherwise name new classes and grow Redis for good). A burst of subscribers to new classes
must not re-send the tail's blocking read over every watched stream once per class.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from helpers import recv_json, subscribe, until
from xia_broadcast.journal.redis import delete_prefix
from xia_broadcast.server.native import NativeServer


@pytest.fixture
async def node(make_server: Callable[..., Any], redis_url: str) -> AsyncIterator[tuple[NativeServer, str]]:
    prefix = f"xia-test:{uuid.uuid4().hex[:12]}:"
    server = await make_server(redis_url=redis_url, redis_prefix=prefix, allow_undeclared_classes=True)
    await until(lambda: server.service.hub.ready, what="the node tails Redis")
    try:
        yield server, prefix
    finally:
        await delete_prefix(redis_url, prefix)


async def keys(redis_url: str, prefix: str) -> list[str]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        return sorted([k.decode() async for k in client.scan_iter(match=f"{prefix}*")])
    finally:
        await client.aclose()


async def test_subscribers_of_names_nobody_publishes_leave_no_key(node: tuple[NativeServer, str],
                                                                  redis_url: str) -> None:
    server, prefix = node
    url = f"ws://127.0.0.1:{server.port}/ws"
    for i in range(20):
        ws, confirmation = await subscribe(url, {f"Made{i}a": {}, f"Made{i}b": {"snapshot": True}})
        assert confirmation[f"Made{i}a"]["epoch"] == ""  # nothing published: no epoch yet
        await ws.close()
    assert [k for k in await keys(redis_url, prefix) if ":wake:" not in k] == []
    # a class published later is delivered from its first change to a subscriber that was there before
    ws, _ = await subscribe(url, {"Later": {}, "_options": {"control": True}})
    async with ws:
        await server.service.publish("Later", "I", {"_id": 1})
        assert (await recv_json(ws))["message"] == {"_id": 1}
    assert {k.split(":")[-2] for k in await keys(redis_url, prefix)} >= {"meta", "stream"}


async def test_a_burst_of_new_classes_costs_a_few_blocking_reads_not_one_per_class(
        node: tuple[NativeServer, str], redis_url: str) -> None:
    server, _ = node
    url = f"ws://127.0.0.1:{server.port}/ws"
    client = aioredis.Redis.from_url(redis_url)

    async def xreads() -> int:
        stats = await client.info("commandstats")
        return int(stats.get("cmdstat_xread", {}).get("calls", 0))

    try:
        before = await xreads()
        sockets = await asyncio.gather(*(subscribe(url, {f"Burst{i}": {}}) for i in range(200)))
        await asyncio.sleep(0.2)  # the tail takes the new classes in
        used = await xreads() - before
        for ws, _ in sockets:
            await ws.close()
    finally:
        await client.aclose()
    assert used <= 40, f"{used} blocking reads for 200 new classes"  # one per class before
    assert json.dumps(server.service.hub.stats.view_errors) == "0"


async def test_a_snapshot_of_a_class_nobody_published_yet_is_empty_and_whole(node: tuple[NativeServer, str]) -> None:
    server, _ = node
    ws, _ = await subscribe(f"ws://127.0.0.1:{server.port}/ws", {"Fresh": {"snapshot": True}})
    async with ws:
        assert await recv_json(ws) == {"_control": "snapshot_done", "class": "Fresh", "seq": "", "epoch": ""}
        seq = await server.service.publish("Fresh", "I", {"_id": 1})  # the class's first change makes its epoch
        assert (await recv_json(ws))["seq"] == seq
