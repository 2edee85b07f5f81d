"""Cluster mode when Redis fails: each test runs its own ``redis-server`` (append-only) and stops,
restarts or empties it under a running node."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from typing import Any

import httpx
import pytest

from helpers import CLASSES, ServerFactory, order, read_until_closed, recv_json, refused, subscribe, until
from journal_contract.journal_helpers import RedisServer


async def wait_ready(http: httpx.AsyncClient, base: str, ready: bool, timeout: float = 20.0) -> None:
    """Poll /readyz until it says ``ready`` (the node's own view of Redis)."""

    async def says_so() -> bool:
        return ((await http.get(f"{base}/readyz")).status_code == 200) is ready

    await until(says_so, timeout, poll=0.05, what=f"/readyz to say {'ready' if ready else 'not ready'}")


async def publish(http: httpx.AsyncClient, base: str, i: int) -> httpx.Response:
    return await http.post(f"{base}/publish", json={"class": "Order", "op": "I", "doc": order(i)})


async def test_a_restart_of_redis_loses_nothing_and_readyz_and_publish_say_so(
        make_server: ServerFactory, own_redis: RedisServer) -> None:
    server = await make_server(redis_url=own_redis.url, classes=dict(CLASSES))
    base = f"http://127.0.0.1:{server.port}"
    ws, _ = await subscribe(server.url, {"Order": {}})
    async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
        await wait_ready(http, base, True)
        seqs = [(await publish(http, base, i)).json()["seqs"][0] for i in range(10)]
        assert [(await recv_json(ws))["seq"] for _ in range(10)] == seqs
        own_redis.stop()
        await wait_ready(http, base, False)
        down = await publish(http, base, 99)
        assert down.status_code == 503 and down.json()["error"] == "unavailable"  # loudly, never silently
        own_redis.start()  # the same append-only file: everything within retention is back
        await wait_ready(http, base, True)
        seqs += [(await publish(http, base, i)).json()["seqs"][0] for i in range(10, 20)]
    assert [(await recv_json(ws))["seq"] for _ in range(10)] == seqs[10:]
    await ws.close()


async def test_redis_back_empty_tells_resuming_clients_history_is_gone(
        make_server: ServerFactory, own_redis: RedisServer) -> None:
    server = await make_server(redis_url=own_redis.url, classes=dict(CLASSES))
    base = f"http://127.0.0.1:{server.port}"
    async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
        await wait_ready(http, base, True)
        ws, confirmation = await subscribe(server.url, {"Order": {}})
        seqs = [(await publish(http, base, i)).json()["seqs"][0] for i in range(5)]
        assert [(await recv_json(ws))["seq"] for _ in range(5)] == seqs
        await ws.close()
        own_redis.stop()
        shutil.rmtree(own_redis.directory)  # Redis comes back with nothing: a new epoch
        own_redis.start()
        await wait_ready(http, base, True)
        r = await publish(http, base, 50)
        assert r.status_code == 200, r.text
        later = r.json()["seqs"][0]
        resume: dict[str, Any] = {"after_seq": seqs[-1], "epoch": confirmation["Order"]["epoch"]}
        control, _ = await subscribe(server.url, {"Order": resume, "_options": {"control": True}})
        gone = await recv_json(control)
        assert gone["_control"] == "history_gone" and gone["seq"] == seqs[-1]
        plain, _ = await subscribe(server.url, {"Order": {"after_seq": seqs[-1]}})  # no epoch: the seq tells
        _, code, reason = await read_until_closed(plain)
        assert code == 4410 and "history gone" in reason
        newer = (await publish(http, base, 51)).json()["seqs"][0]
        assert (await recv_json(control))["seq"] == newer  # the control client goes on live
        assert later < newer
        await control.close()


async def test_a_node_started_while_redis_is_down_becomes_ready_when_it_comes(
        make_server: ServerFactory, own_redis: RedisServer) -> None:
    own_redis.stop()
    server = await make_server(redis_url=own_redis.url, classes=dict(CLASSES))
    base = f"http://127.0.0.1:{server.port}"
    async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
        assert (await http.get(f"{base}/readyz")).status_code == 503
        own_redis.start()
        await wait_ready(http, base, True)
        assert (await publish(http, base, 1)).status_code == 200


async def test_while_redis_is_away_a_new_subscriber_is_told_to_retry_with_1013_and_the_outage_logged_once(
        make_server: ServerFactory, own_redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    own_redis.stop()
    with caplog.at_level(logging.INFO):
        server = await make_server(redis_url=own_redis.url, classes=dict(CLASSES))
        for _ in range(3):  # a client retrying: a documented, retryable code each time, no traceback
            code, reason, _ = await refused(server.url, json.dumps({"Order": {}}))
            assert (code, reason) == (1013, "journal unavailable, retry later")
        await asyncio.sleep(0.5)  # the tail keeps retrying meanwhile
    unreachable = [r for r in caplog.records if "unreachable, retrying" in r.getMessage()]
    assert len(unreachable) == 1  # said at startup, not once per retry
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= logging.ERROR]
    own_redis.start()
    ws, confirmation = await subscribe(server.url, {"Order": {}})  # and served once it is back
    await ws.close()
    assert set(confirmation) == {"Order"}


async def test_a_redis_that_could_lose_the_journal_is_warned_about_once_connected(
        own_redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    import redis.asyncio as aioredis

    from xia_broadcast.journal.redis import RedisBackend

    async def warnings_of(settings: dict[str, str]) -> list[str]:
        client = aioredis.from_url(own_redis.url)
        try:
            for key, value in settings.items():
                await client.config_set(key, value)
        finally:
            await client.aclose()
        caplog.clear()
        backend = RedisBackend(own_redis.url, block_ms=100)
        with caplog.at_level(logging.WARNING, logger="xia_broadcast.journal.redis"):
            await backend.start(lambda change: None)
            await until(lambda: backend.ready, what="the backend connected")
            await backend.close()
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    assert await warnings_of({"appendonly": "yes", "maxmemory-policy": "noeviction"}) == []
    lossy = await warnings_of({"appendonly": "no", "save": "", "maxmemory-policy": "allkeys-lru"})
    assert len(lossy) == 2 and "keeps nothing on disk" in lossy[0] and "allkeys-lru" in lossy[1]


async def test_a_snapshot_asked_while_redis_is_away_is_sent_whole_once_it_is_back(
        make_server: ServerFactory, own_redis: RedisServer) -> None:
    server = await make_server(redis_url=own_redis.url, classes=dict(CLASSES))
    await until(lambda: server.service.hub.ready, what="the node tails Redis")
    for i in range(1, 6):
        await server.service.publish("Order", "I", order(i))
    url = f"ws://127.0.0.1:{server.port}/ws"
    watcher, _ = await subscribe(url, {"Order": {}})  # the class is tailed: a handshake needs no Redis
    own_redis.stop()
    try:
        ws, confirmation = await subscribe(url, {"Order": {"snapshot": True}})
        with pytest.raises(TimeoutError):  # nothing can be read of the store meanwhile, and nothing partial is sent
            await recv_json(ws, 1.0)
    finally:
        own_redis.start()  # the same append-only file: the store is back with the journal
    async with ws, watcher:
        got = [await recv_json(ws, 20.0) for _ in range(6)]
    assert sorted(m["message"]["_id"] for m in got[:5]) == [f"O-{i:06d}" for i in range(1, 6)]
    assert got[5]["_control"] == "snapshot_done" and got[5]["epoch"] == confirmation["Order"]["epoch"]
