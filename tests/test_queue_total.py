"""The bytes queued over every connection together are bounded (``total_queue_bytes``, the server's
``max_queued_bytes``): past it, a connection with messages queued continues from the journal, nothing lost."""

from __future__ import annotations

import asyncio

import orjson

from helpers import Signals, until
from xia_broadcast.core.change import Change
from xia_broadcast.hub import Hub, HubSettings
from xia_broadcast.journal import MemoryBackend, MemoryJournal

PAD = "x" * 1000


def publish(hub: Hub[object], i: int) -> str:
    return hub.publish_nowait(Change("Doc", "I", "", {"_id": f"d{i}", "i": i, "pad": PAD}))


async def test_replays_of_many_connections_that_never_read_stay_within_the_total_and_lose_nothing() -> None:
    hub: Hub[object] = Hub(MemoryBackend(journal=MemoryJournal()),
                           HubSettings(queue_messages=10_000, queue_bytes=10_000_000, total_queue_bytes=40_000),
                           Signals())
    first = publish(hub, 0)
    for i in range(1, 300):
        publish(hub, i)
    sockets = [object() for _ in range(20)]
    for k, ws in enumerate(sockets):  # each its own catalog: no message is shared between them
        hub.subscribe(ws, "Doc", {"from_seq": first, "catalog": {"i": None, "pad": None, f"absent_{k}": None}})
    conns = [hub.connections[ws] for ws in sockets]
    await until(lambda: all(c.queue for c in conns), what="every replay to queue its first chunk")
    for _ in range(50):  # let every replay run as far as it may
        await asyncio.sleep(0.001)
    one = max(len(o.data) for c in conns for o in c.queue)
    assert hub.queued.queued == sum(c.queued_bytes for c in conns)  # the total is what the queues hold
    assert hub.queued.queued <= 40_000 + len(conns) * one, hub.queued.queued  # not 20 x 300 KB
    got: dict[int, list[int]] = {k: [] for k in range(len(conns))}
    for _ in range(2000):  # the transport takes the queues, one connection after the other
        for k, conn in enumerate(conns):
            got[k] += [orjson.loads(o.data)["message"]["i"] for o in conn.take()]
            conn.scheduled = False
        if all(len(v) == 300 for v in got.values()) and not hub.replays.running:
            break
        await asyncio.sleep(0.001)
    assert all(v == list(range(300)) for v in got.values())


async def test_live_changes_past_the_total_go_to_the_journal_for_connections_that_hold_messages() -> None:
    hub: Hub[object] = Hub(MemoryBackend(journal=MemoryJournal()),
                           HubSettings(queue_messages=10_000, queue_bytes=10_000_000, total_queue_bytes=5_000),
                           Signals())
    stalled, reading = object(), object()
    hub.subscribe(stalled, "Doc", {})
    hub.subscribe(reading, "Doc", {"catalog": {"i": None}})
    for i in range(10):  # the stalled connection holds about 10 KB: over the total after the fifth
        publish(hub, i)
        hub.connections[reading].take()
    assert hub.stats.lags >= 1 and hub.connections[stalled].replaying == 1
    assert hub.queued.queued <= 5_000 + 1_100 * 2
    got = []
    conn = hub.connections[stalled]
    for _ in range(200):
        got += [orjson.loads(o.data)["message"]["i"] for o in conn.take()]
        conn.scheduled = False
        if len(got) == 10 and not hub.replays.running:
            break
        await asyncio.sleep(0.001)
    assert got == list(range(10))
