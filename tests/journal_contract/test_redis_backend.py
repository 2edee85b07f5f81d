"""What only the Redis backend does: several nodes on one Redis, approximate trimming, the tail following
watch/unwatch, changes that cannot cross, the key layout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from helpers import until
from xia_broadcast.core.change import Change, ChangeNotSerialisable
from xia_broadcast.journal import HistoryGone
from xia_broadcast.journal.redis import RedisBackend, delete_prefix

from .journal_helpers import ChangeRecorder, MakeBackend, change


@pytest.fixture
async def cluster(redis_url: str) -> AsyncIterator[MakeBackend]:
    """Redis nodes sharing one key prefix (one cluster); closed and their keys deleted afterwards."""
    make = MakeBackend("redis", redis_url)
    yield make
    for b in make.made:
        await b.close()
    await delete_prefix(redis_url, make.prefix)


async def node(make: MakeBackend, rec: ChangeRecorder, *watch: str, block_ms: int = 500) -> RedisBackend:
    b = await make(block_ms=block_ms)
    assert isinstance(b, RedisBackend)
    await b.start(rec)
    for class_name in watch:
        await b.watch(class_name)
    await until(lambda: b.ready, what="node ready")
    return b


async def test_two_nodes_see_every_change_in_the_same_order(cluster: MakeBackend) -> None:
    rec_a, rec_b = ChangeRecorder(), ChangeRecorder()
    a = await node(cluster, rec_a, "T")
    b = await node(cluster, rec_b, "T")

    async def publisher(backend: RedisBackend, k: int) -> None:
        for i in range(40):
            await backend.publish(change(k * 1000 + i))

    await asyncio.gather(*(publisher(n, k) for k, n in enumerate([a, b, a, b])))
    await rec_a.until_count(160)
    await rec_b.until_count(160)
    assert rec_a.seqs() == rec_b.seqs() == sorted(rec_a.seqs())
    assert len(set(rec_a.seqs())) == 160
    assert [c.data for c in rec_a.changes] == [c.data for c in rec_b.changes]
    # a node reads what another published: resuming on b after a position given by a
    cut = rec_a.seqs()[99]
    assert [c.seq for c in await b.read("T", cut, inclusive=False, limit=1000)] == rec_a.seqs()[100:]


async def test_a_node_only_tails_the_classes_it_watches(cluster: MakeBackend) -> None:
    rec = ChangeRecorder()
    a = await node(cluster, rec, "Seen", block_ms=10_000)  # a tail that would sleep 10 s unless woken
    publisher = await node(cluster, ChangeRecorder())
    await publisher.publish(change(1, "Unseen"))
    await publisher.publish(change(2, "Seen"))
    await rec.until_count(1, "Seen")
    await a.watch("Later")  # wakes the blocked read: no need to wait block_ms
    later = await publisher.publish(change(3, "Later"))
    await until(lambda: "Later" in {c.class_name for c in rec.changes}, timeout=3.0, what="woken tail")
    a.unwatch("Seen")
    await publisher.publish(change(4, "Seen"))
    last = await publisher.publish(change(5, "Later"))
    await until(lambda: rec.seqs("Later") == [later.seq, last.seq], what="the later class")
    assert [c.class_name for c in rec.changes] == ["Seen", "Later", "Later"]  # nothing of Unseen, no Seen after
    assert sorted(a.watched()) == ["Later"]


async def test_approximate_trimming_keeps_at_least_max_count_and_history_gone_stays_exact(
        redis_url: str, cluster: MakeBackend) -> None:
    b = RedisBackend(redis_url, prefix=cluster.prefix, max_count=10, max_age=None)  # approximate (default)
    cluster.made.append(b)
    seqs = [(await b.publish(change(i))).seq for i in range(450)]
    held = await b.read("T", seqs[-10], inclusive=True, limit=1000)
    assert [c.seq for c in held] == seqs[-10:]
    length = await b._redis.xlen(b.stream_key("T"))
    assert 10 <= length < 450  # Redis trimmed whole nodes, and kept the last max_count
    oldest = seqs[-length]
    assert [c.seq for c in await b.read("T", oldest, inclusive=True, limit=1)] == [oldest]
    with pytest.raises(HistoryGone) as gone:
        await b.read("T", seqs[-length - 2], inclusive=False, limit=1)  # seqs[-length - 1] was trimmed
    assert gone.value.oldest == oldest
    assert [c.seq for c in await b.read("T", seqs[-length - 1], inclusive=False, limit=1)] == [oldest]


async def test_a_change_carrying_only_an_object_cannot_cross(cluster: MakeBackend) -> None:
    b = await node(cluster, ChangeRecorder())
    with pytest.raises(ChangeNotSerialisable, match="only a Python object"):
        await b.publish(Change("T", "I", "", doc=object()))
    assert await b.read("T", None, inclusive=True, limit=10) == []


async def test_keys_live_under_the_prefix(cluster: MakeBackend) -> None:
    b = await node(cluster, ChangeRecorder(), "T")
    await b.publish(change(1))
    keys = [k.decode() async for k in b._redis.scan_iter(match=f"{cluster.prefix}*")]
    assert sorted(keys) == [f"{cluster.prefix}docs:T", f"{cluster.prefix}meta:T", f"{cluster.prefix}stream:T",
                            f"{cluster.prefix}wake:{b.node}"]
    await b.close()
    assert not await key_exists(cluster, f"{cluster.prefix}wake:{b.node}")


async def key_exists(make: MakeBackend, key: str) -> bool:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(make.redis_url)
    try:
        return bool(await client.exists(key))
    finally:
        await client.aclose()


async def test_a_burst_larger_than_one_tail_read_arrives_whole_and_in_order(redis_url: str,
                                                                           cluster: MakeBackend) -> None:
    rec = ChangeRecorder()
    tail = RedisBackend(redis_url, prefix=cluster.prefix, read_count=7, block_ms=500)
    cluster.made.append(tail)
    await tail.start(rec)
    await tail.watch("T")
    publisher = await node(cluster, ChangeRecorder())
    sent = [(await publisher.publish(change(i))).seq for i in range(100)]
    await rec.until_count(100)
    assert rec.seqs() == sent


async def test_a_class_published_without_the_store_has_its_store_refused_never_served_partial(
        cluster: MakeBackend) -> None:
    from xia_broadcast.journal.store import SnapshotRefused

    b = await node(cluster, ChangeRecorder(), "T")
    await b.publish(change(1))
    snap = await b.snapshot("T")
    assert len(await snap.next(10)) == 1
    # a node of an earlier version appends as its script did: the entry and meta's last, no store
    client = b._redis
    added = await client.xadd(b.stream_key("T"), {"e": (await b.epoch("T")), "p": "", "r": change(2).to_record()})
    await client.hset(b.meta_key("T"), "last", added)
    await b.publish(change(3))  # the store missed document 2 (or a delete): it is not whole any more
    with pytest.raises(SnapshotRefused, match="published without a document store"):
        await (await b.snapshot("T")).next(10)
    await b.close()
