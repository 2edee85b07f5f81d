"""Adaptive write coalescing (``server/flush.py``, ``server/native_transport.py``): written at once when
idle, together while busy, within ``max_write_delay``, in order and without loss.

Time is an injected clock advanced by the test, never the wall clock; "busy" is a task that stays ready.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from helpers import RECV_TIMEOUT, FakeClock, ServerFactory, order, raw_subscribe, read_frame, until
from xia_broadcast.fanout import Outgoing
from xia_broadcast.server.flush import FlushScheduler


class FakeConn:
    """Stands for a connection: a number, whether it replays from the journal, and one queued message."""

    def __init__(self, n: int, replaying: int = 0) -> None:
        self.n = n
        self.replaying = replaying
        self.queue = [Outgoing(b"{}")]

    def __repr__(self) -> str:
        return f"conn{self.n}"


class FlushRecorder:
    """The flush callback: records, per flush, the clock time and what was written."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.flushes: list[tuple[float, list[Any]]] = []
        self.written = asyncio.get_running_loop().create_future()

    def __call__(self, pending: list[Any]) -> None:
        self.flushes.append((self.clock(), [c.n for c in pending]))
        if not self.written.done():
            self.written.set_result(None)


async def test_a_lone_message_at_idle_is_written_without_waiting_for_the_bound() -> None:
    clock = FakeClock()  # never moves: the bound (an hour) can never pass
    flushed = FlushRecorder(clock)
    scheduler = FlushScheduler(flushed, max_write_delay=3600.0, clock=clock)
    scheduler.add(FakeConn(0))  # type: ignore[arg-type]
    assert flushed.flushes == []  # never written inside the fan-out that queued it
    await asyncio.wait_for(flushed.written, RECV_TIMEOUT)  # the loop is idle: nothing else is ready
    assert flushed.flushes == [(clock.now, [0])]


async def test_while_busy_messages_wait_together_and_never_longer_than_the_bound() -> None:
    clock = FakeClock()
    flushed = FlushRecorder(clock)
    bound, step, turns = 0.002, 0.00025, 400
    scheduler = FlushScheduler(flushed, max_write_delay=bound, clock=clock)
    added_at: dict[int, float] = {}
    for i in range(turns):  # a publisher: one message per loop turn, the clock moving a step a turn
        added_at[i] = clock.now
        scheduler.add(FakeConn(i))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        clock.now += step
    await asyncio.wait_for(flushed.written, RECV_TIMEOUT)
    await until(lambda: not scheduler.pending, what="the rest written once the loop is idle")

    written = [item for _, items in flushed.flushes for item in items]
    assert written == list(range(turns))  # every message once, in order
    for at, items in flushed.flushes:
        # written within one loop turn (a clock step) of the bound after the oldest was queued
        assert at - added_at[items[0]] <= bound + step + 1e-9
    busy = flushed.flushes[:-1]  # the last flush came when the publisher had stopped
    assert len(busy) <= turns * step / bound + 1  # one write per bound, not one per message
    assert min(len(items) for _, items in busy) >= bound / step


async def test_while_busy_a_connection_with_a_full_batch_is_written_before_the_bound() -> None:
    clock = FakeClock()  # never moves: only the batch limit can make a busy loop write
    flushed = FlushRecorder(clock)
    queued = 0
    scheduler = FlushScheduler(flushed, max_write_delay=3600.0, clock=clock, max_batch=5)
    scheduler.add(FakeConn(0))  # type: ignore[arg-type]
    for _ in range(12):  # a publisher queueing one message a loop turn to the one waiting connection
        queued += 1
        scheduler.count(1)  # as each fan-out ends
        await asyncio.sleep(0)
        if flushed.flushes:
            break
    assert len(flushed.flushes) == 1
    assert 5 <= queued <= 6  # written once five were queued (within a loop turn), not at the bound


async def test_while_busy_a_replaying_connection_is_written_on_the_next_loop_turn() -> None:
    clock = FakeClock()  # never moves: the bound cannot be what makes the busy loop write
    flushed = FlushRecorder(clock)
    scheduler = FlushScheduler(flushed, max_write_delay=3600.0, clock=clock)
    scheduler.add(FakeConn(0))  # type: ignore[arg-type]
    scheduler.add(FakeConn(1, replaying=1))  # type: ignore[arg-type]  # a replay chunk: a batch already
    for _ in range(3):  # busy: this task is ready every turn
        await asyncio.sleep(0)
    assert [items for _, items in flushed.flushes] == [[0, 1]]
    scheduler.add(FakeConn(2))  # type: ignore[arg-type]  # live again: waits while the loop is busy
    for _ in range(3):
        await asyncio.sleep(0)
    assert [items for _, items in flushed.flushes] == [[0, 1]]


async def test_without_delay_every_flush_is_on_the_next_loop_turn() -> None:
    clock = FakeClock()
    flushed = FlushRecorder(clock)
    scheduler = FlushScheduler(flushed, max_write_delay=0.0, clock=clock)
    for i in range(5):
        scheduler.add(FakeConn(i))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    assert [items for _, items in flushed.flushes] == [[0], [1], [2], [3], [4]]


class CountingTransport:
    """Counts the writes to a transport, passing everything through."""

    def __init__(self, inner: asyncio.Transport) -> None:
        self.inner = inner
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def counted_subscribers(server: Any, n: int) -> tuple[list[Any], list[CountingTransport]]:
    """``n`` raw subscribers to Order (each with its reader and writer), and the server-side transports of
    their sockets, counting writes, in the same order."""
    clients = [await raw_subscribe(server.port, {"Order": {"catalog": {"amount": None}}}) for _ in range(n)]
    counters = []
    for websocket in list(server.service.hub.connections):
        counter = CountingTransport(websocket.writer.transport)
        websocket.writer.transport = counter
        counters.append(counter)
    assert len(counters) == len(clients)
    return clients, counters


async def test_changes_published_one_per_loop_turn_reach_every_socket_in_order_in_fewer_writes(
        make_server: ServerFactory) -> None:
    # a bound far longer than the test: what makes writes happen is the loop's state, not the wall clock
    server = await make_server(max_write_delay=0.05)
    clients, counters = await counted_subscribers(server, 40)
    changes = 600

    async def publisher() -> list[str]:
        seqs = []
        for i in range(changes):  # one change per loop turn, as many publishers deliver them
            seqs.append(server.service.publish_nowait("Order", "I", order(i)))
            await asyncio.sleep(0)
        return seqs

    async def receive(reader: asyncio.StreamReader) -> list[str]:
        seqs: list[str] = []
        while len(seqs) < changes:
            opcode, payload = await read_frame(reader)
            assert opcode == 0x1
            seqs.append(json.loads(payload)["seq"])
        return seqs

    published, *received = await asyncio.wait_for(
        asyncio.gather(publisher(), *(receive(reader) for reader, _ in clients)), 60)
    for seqs in received:
        assert seqs == published  # nothing lost, nothing reordered, nothing twice
    writes = sum(c.writes for c in counters)
    assert writes < changes * len(clients) / 4, f"{writes} writes for {changes * len(clients)} deliveries"
    for _, writer in clients:
        writer.close()


# -- writes during the fan-out after a lull ---------------------------------------------------------------


class Written:
    """``write_now`` of a scheduler: records the connections written during a fan-out."""

    def __init__(self) -> None:
        self.conns: list[int] = []

    def __call__(self, conn: Any) -> Any:
        self.conns.append(conn.n)
        return True


async def test_a_fan_out_writes_at_once_only_after_a_lull_of_the_bound() -> None:
    clock = FakeClock()
    flushed = FlushRecorder(clock)
    written = Written()
    scheduler = FlushScheduler(flushed, max_write_delay=0.002, clock=clock, write_now=written)
    assert scheduler.begin()  # nothing happened yet: a lull
    assert scheduler.write(FakeConn(0))  # type: ignore[arg-type]
    scheduler.end()
    assert written.conns == [0]
    assert not scheduler.begin()  # the next change comes right after: it waits for the flush, with others
    clock.now += 0.0015
    assert not scheduler.begin()
    clock.now += 0.001  # the bound has passed since the last fan-out
    assert scheduler.begin()
    scheduler.end()


async def test_after_a_flush_the_next_fan_out_waits_for_the_bound_then_writes_at_once() -> None:
    clock = FakeClock()
    flushed = FlushRecorder(clock)
    written = Written()
    scheduler = FlushScheduler(flushed, max_write_delay=0.002, clock=clock, write_now=written)
    scheduler.add(FakeConn(0))  # type: ignore[arg-type]
    await asyncio.wait_for(flushed.written, RECV_TIMEOUT)  # idle: flushed a loop turn or two later
    assert not scheduler.begin()  # a flush just ended
    clock.now += 0.003
    await asyncio.sleep(0.001)  # nothing else ready in the loop
    assert scheduler.begin()


async def test_with_nothing_written_at_once_a_collected_change_is_still_flushed_on_an_idle_loop() -> None:
    clock = FakeClock()  # never moves: only an idle loop can make the flush happen
    flushed = FlushRecorder(clock)
    scheduler = FlushScheduler(flushed, max_write_delay=3600.0, clock=clock, write_now=Written())
    assert scheduler.begin()
    scheduler.end()
    assert not scheduler.begin()  # within the bound of that fan-out: this one is collected
    scheduler.add(FakeConn(1))  # type: ignore[arg-type]
    scheduler.end()
    await asyncio.wait_for(flushed.written, RECV_TIMEOUT)
    assert flushed.flushes == [(clock.now, [1])]


async def test_no_fan_out_writes_at_once_while_a_flush_waits_or_other_work_is_ready() -> None:
    clock = FakeClock()
    flushed = FlushRecorder(clock)
    scheduler = FlushScheduler(flushed, max_write_delay=0.002, clock=clock, write_now=Written())
    scheduler.add(FakeConn(0))  # type: ignore[arg-type]
    assert not scheduler.begin()  # something is queued for the flush: writing now would overtake it
    await asyncio.wait_for(flushed.written, RECV_TIMEOUT)
    clock.now += 0.003
    asyncio.get_running_loop().call_soon(lambda: None)  # a request read, a task woken: work is ready
    assert not scheduler.begin()
    await asyncio.sleep(0.001)  # it ran; nothing else is ready
    assert scheduler.begin()
    scheduler.end()


def test_without_writes_during_fan_out_or_outside_a_loop_every_fan_out_waits_for_the_flush() -> None:
    scheduler = FlushScheduler(lambda pending: None, max_write_delay=0.002)
    assert not scheduler.begin()  # no write_now
    scheduler = FlushScheduler(lambda pending: None, max_write_delay=0.002, write_now=Written())
    assert not scheduler.begin()  # no running loop (a publish from synchronous code)
    scheduler.end()  # outside a loop: nothing to probe with, nothing fails


async def test_at_idle_a_publish_writes_every_subscriber_before_it_returns(make_server: ServerFactory) -> None:
    # a lull is max_write_delay without a fan-out: a bound far longer than the two publishes take
    server = await make_server(max_write_delay=0.5)
    clients, counters = await counted_subscribers(server, 20)
    await asyncio.sleep(0.6)  # a lull
    first = server.service.publish_nowait("Order", "I", order(1))
    assert [c.writes for c in counters] == [1] * len(clients)  # written inside the publish call
    second = server.service.publish_nowait("Order", "I", order(2))  # no lull: waits for the flush
    assert [c.writes for c in counters] == [1] * len(clients)
    for reader, _ in clients:
        seqs = []
        for _ in range(2):
            opcode, payload = await asyncio.wait_for(read_frame(reader), RECV_TIMEOUT)
            assert opcode == 0x1
            seqs.append(json.loads(payload)["seq"])
        assert seqs == [first, second]
    assert [c.writes for c in counters] == [2] * len(clients)
    for _, writer in clients:
        writer.close()


class FailingTransport(CountingTransport):
    def write(self, data: bytes) -> None:
        self.writes += 1
        raise OSError("the socket is broken")


async def test_a_write_failing_during_the_fan_out_closes_that_subscriber_only(make_server: ServerFactory) -> None:
    server = await make_server(max_write_delay=0.5)
    clients, counters = await counted_subscribers(server, 5)
    websockets = list(server.service.hub.connections)
    broken = websockets[2]
    failing = broken.writer.transport = FailingTransport(counters[2].inner)
    await asyncio.sleep(0.6)  # a lull: the fan-out writes at once
    seq = server.service.publish_nowait("Order", "I", order(1))
    assert failing.writes == 1 and [c.writes for c in counters if c is not counters[2]] == [1] * 4  # during it
    for websocket, (reader, _) in zip(websockets, clients, strict=True):  # subscribed one after another
        if websocket is broken:
            continue
        opcode, payload = await asyncio.wait_for(read_frame(reader), RECV_TIMEOUT)
        assert (opcode, json.loads(payload)["seq"]) == (0x1, seq)
    await until(lambda: broken not in server.service.hub.connections, what="the broken subscriber closed")
    assert len(server.service.hub.connections) == len(clients) - 1
    for _, writer in clients:
        writer.close()
