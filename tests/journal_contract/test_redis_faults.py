"""Faults, against a ``redis-server`` of the test's own (append-only, a free port, a temp directory):
a restart mid-stream, a Redis that comes back empty, publishing while Redis is down."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from helpers import until
from xia_broadcast.core.change import Change
from xia_broadcast.journal import BackendUnavailable, HistoryGone, Position
from xia_broadcast.journal.redis import RedisBackend

from .journal_helpers import ChangeRecorder, RedisServer, change

NodeFactory = Callable[..., RedisBackend]


@pytest.fixture
async def make_node(own_redis: RedisServer) -> AsyncIterator[NodeFactory]:
    """Nodes on the test's own Redis, quick to notice an outage and to retry; closed afterwards."""
    prefix = f"xia-fault:{uuid.uuid4().hex[:8]}:"
    made: list[RedisBackend] = []

    def make(**kw: object) -> RedisBackend:
        options: dict[str, object] = {"prefix": prefix, "block_ms": 200, "timeout": 1.0, "backoff_min": 0.02,
                                      "backoff_max": 0.2, **kw}
        b = RedisBackend(own_redis.url, **options)  # type: ignore[arg-type]
        made.append(b)
        return b

    yield make
    for b in made:
        await b.close()


async def publish_when_up(node: RedisBackend, c: Change) -> Position:
    """Publish, retrying while Redis is still coming back (bounded)."""
    published: list[Position] = []
    refusals: list[BackendUnavailable] = []

    async def publish() -> bool:
        try:
            published.append(await node.publish(c))
        except BackendUnavailable as exc:
            refusals.append(exc)
        return bool(published)

    await until(publish, poll=0.02, what=lambda: f"Redis to take a publish again (last refusal: {refusals[-1]!r})")
    return published[0]


async def test_the_tail_resumes_after_a_restart_and_loses_nothing(own_redis: RedisServer,
                                                                  make_node: NodeFactory) -> None:
    pub = make_node()
    rec = ChangeRecorder()
    # a slow retry: the publisher writes again before this node is back, so it must resume from the last
    # entry it saw (not from "now") to get those changes
    sub = make_node(backoff_min=1.0, backoff_max=1.0)
    await pub.start(ChangeRecorder())
    await sub.start(rec)
    await sub.watch("T")
    await until(lambda: sub.ready, what="ready")
    before = [await pub.publish(change(i)) for i in range(30)]
    await rec.until_count(30)

    own_redis.stop()
    await until(lambda: not sub.ready, what="not ready during the outage")
    with pytest.raises(BackendUnavailable, match="cannot publish T"):
        await pub.publish(change(999))
    own_redis.start()  # the same directory: the append-only file brings every entry back

    after = [await publish_when_up(pub, change(i)) for i in range(30, 60)]
    assert not sub.ready  # still waiting to retry: the changes above were written while it was away
    await rec.until_count(60)
    await until(lambda: sub.ready, what="ready again")
    assert [Position(c.seq, c.epoch) for c in rec.changes] == before + after  # once each, in order
    assert [c.data["n"] for c in rec.changes if c.data] == list(range(60))
    assert {p.epoch for p in before + after} == {before[0].epoch}  # the same epoch: nothing was lost


async def test_redis_back_empty_is_a_new_epoch_and_old_positions_are_history_gone(
        own_redis: RedisServer, make_node: NodeFactory) -> None:
    rec = ChangeRecorder()
    node = make_node()
    await node.start(rec)
    await node.watch("T")
    await until(lambda: node.ready, what="ready")
    old = [await node.publish(change(i)) for i in range(5)]
    await rec.until_count(5)

    own_redis.stop()
    shutil.rmtree(own_redis.directory)  # Redis comes back without its data
    own_redis.start()
    await until(lambda: node.ready, what="ready again")

    new = [await publish_when_up(node, change(i)) for i in range(5, 8)]
    assert new[0].epoch != old[0].epoch
    await rec.until_count(8)
    assert [Position(c.seq, c.epoch) for c in rec.changes] == old + new  # the new epoch's changes, once
    assert await node.position("T") == new[-1]
    with pytest.raises(HistoryGone) as gone:
        await node.read("T", old[-1].seq, inclusive=False, limit=10, epoch=old[-1].epoch)
    assert gone.value.epoch == new[0].epoch
    with pytest.raises(HistoryGone):  # a position without its epoch: before the new epoch began
        await node.read("T", old[-1].seq, inclusive=False, limit=10)
    assert [p.seq for p in new] == [c.seq for c in await node.read("T", None, inclusive=True, limit=10)]


async def test_while_redis_is_down_publish_and_read_raise_and_a_node_waits_for_it(
        own_redis: RedisServer, make_node: NodeFactory) -> None:
    own_redis.stop()
    node = make_node()
    await node.start(ChangeRecorder())
    started = time.monotonic()
    with pytest.raises(BackendUnavailable):
        await node.publish(change(1))
    with pytest.raises(BackendUnavailable):
        await node.read("T", None, inclusive=True, limit=1)
    with pytest.raises(BackendUnavailable):
        await node.watch("T")
    assert time.monotonic() - started < 3.0  # refused connections fail fast
    assert not node.ready
    own_redis.start()
    await until(lambda: node.ready, what="ready once Redis answers")
    assert (await node.publish(change(2))).epoch


async def test_a_full_redis_refuses_to_publish_loudly(own_redis: RedisServer, make_node: NodeFactory) -> None:
    import redis.asyncio as aioredis

    node = make_node()
    await node.start(ChangeRecorder())
    await node.publish(change(0))
    admin = aioredis.Redis.from_url(own_redis.url)
    try:
        await admin.config_set("maxmemory-policy", "noeviction")
        await admin.config_set("maxmemory", 1)  # anything in use is over it
        with pytest.raises(BackendUnavailable, match="refused to publish T"):
            await node.publish(change(1, blob="x" * 1000))
        await admin.config_set("maxmemory", 0)
    finally:
        await admin.aclose()
    assert [c.data["n"] for c in await node.read("T", None, inclusive=True, limit=10) if c.data] == [0]


async def connections_received(server: RedisServer) -> int:
    import redis.asyncio as aioredis

    admin = aioredis.Redis.from_url(server.url)
    try:
        return int((await admin.info("stats"))["total_connections_received"])
    finally:
        await admin.aclose()


async def test_the_tails_first_read_leaves_the_publishing_connections_alone(
        own_redis: RedisServer, make_node: NodeFactory) -> None:
    """The tail's first read closes no pooled connection: closing them would race with a publish taking one
    at that moment (redis-py closes them in tasks that run later, and that publish fails with "Connection
    lost"). The publishes that follow use the connection already open."""
    node = make_node(block_ms=1000)  # the first read ends after 1 s: long after the first publish
    await node.start(ChangeRecorder())
    first = await node.publish(change(0))  # opens the publishing connection, idle afterwards
    assert not node.ready
    await until(lambda: node.ready, what="ready")  # the tail's first read (its block_ms ran out)
    before = await connections_received(own_redis)
    later = [await node.publish(change(i)) for i in range(1, 6)]
    assert await connections_received(own_redis) == before + 1  # the admin's own, none for the publishes
    assert [c.seq for c in await node.read("T", None, inclusive=True, limit=10)] == [
        p.seq for p in [first, *later]]


async def test_after_a_restart_the_first_publish_once_ready_succeeds(
        own_redis: RedisServer, make_node: NodeFactory) -> None:
    """Pooled connections from before a restart of Redis are dead: once the node is ready again, publishes
    (on a new client) succeed at the first try, and what was published before and after is all there."""
    node = make_node()
    await node.start(ChangeRecorder())
    await node.watch("T")
    await until(lambda: node.ready, what="ready")
    await asyncio.gather(*(node.publish(change(i)) for i in range(4)))  # several pooled connections
    own_redis.stop()
    await until(lambda: not node.ready, what="not ready during the outage")
    own_redis.start()
    await until(lambda: node.ready, what="ready again")
    await asyncio.gather(*(node.publish(change(i)) for i in range(4, 8)))
    assert sorted(c.data["n"] for c in await node.read("T", None, inclusive=True, limit=20) if c.data) == [
        *range(8)]
