"""Replay (``xia_broadcast.replay``): a member catching up from the journal, its phases, how it ends, and
what it may hold (queue bounds, encodings shared by a view, reads of the journal).

Every test but the last drives a real Hub on the memory journal; its transport is a recorder
(``helpers.Signals``) that takes queues as a socket would and records closes. The last ones go through the
original ``Broadcaster`` API, where callers choose seqs.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from helpers import FakeClock, Region, Signals, Socket, fresh, until
from xia_broadcast.core.change import Change
from xia_broadcast.fanout import Member
from xia_broadcast.hub import Hub, HubSettings
from xia_broadcast.journal import MemoryBackend, MemoryJournal
from xia_broadcast.replay import GONE_CODES, TRANSITIONS, Phase


def make_hub(signals: Signals, *, journal: MemoryJournal | None = None, max_count: int = 100_000,
             **settings: Any) -> Hub[object]:
    """A Hub on ``journal`` (by default a memory journal of ``max_count`` changes) telling ``signals``."""
    journal = journal if journal is not None else MemoryJournal(max_count=max_count)
    return Hub(MemoryBackend(journal=journal), HubSettings(**settings), signals)


def publish(hub: Hub[object], i: int, **fields: Any) -> str:
    return hub.publish_nowait(Change("Doc", "I", "", {"_id": f"d{i}", "i": i, **fields}))


def filled(hub: Hub[object], count: int) -> str:
    """Publish documents 0 to ``count - 1``; the seq of the first."""
    first = publish(hub, 0)
    for i in range(1, count):
        publish(hub, i)
    return first


async def read_until_live(member: Member[object]) -> list[int]:
    """Take the member's queue as a socket would, chunk after chunk, until it is live and its queue empty;
    the numbers of the documents read."""
    conn = member.connection
    got: list[int] = []
    while True:
        got += [orjson.loads(o.data)["message"]["i"] for o in conn.take()]
        conn.scheduled = False
        if member.replay is None and not conn.queue:
            return got
        await until(lambda: bool(conn.queue) or member.replay is None, what="the next chunk or the end of the replay")


def messages(signals: Signals) -> list[dict[str, Any]]:
    return [orjson.loads(data) for data in signals.taken]


def ids(signals: Signals) -> list[Any]:
    return [m["message"]["i"] for m in messages(signals) if "message" in m]


# -- the table ----------------------------------------------------------------------------------------------


def test_a_replay_starts_only_from_live_and_every_phase_ends_live_when_caught_up() -> None:
    assert {(p, e) for (p, e), to in TRANSITIONS.items() if p is None} == {(None, "ask"), (None, "lag"),
                                                                          (None, "snapshot")}
    assert TRANSITIONS[(None, "ask")] is Phase.ASKED and TRANSITIONS[(None, "lag")] is Phase.LAGGING
    assert TRANSITIONS[(None, "snapshot")] is Phase.SNAPSHOT
    for phase in Phase:
        # a snapshot goes live only through the journal after it (it is never "caught up" by itself)
        assert TRANSITIONS.get((phase, "caught_up"), "none") is (None if phase is not Phase.SNAPSHOT else "none")
        assert (phase, "ask") not in TRANSITIONS and (phase, "lag") not in TRANSITIONS
        # a snapshot client whose position is gone starts over with a fresh snapshot, from any phase
        assert TRANSITIONS[(phase, "reset")] is Phase.SNAPSHOT
    assert TRANSITIONS[(Phase.SNAPSHOT, "sent")] is Phase.READING
    # reading makes an asked replay one whose gap may no longer be skipped; a lag stays a lag
    assert TRANSITIONS[(Phase.ASKED, "read")] is Phase.READING
    assert TRANSITIONS[(Phase.LAGGING, "read")] is Phase.LAGGING
    # a position gone: 4410 only when the client's own position was never held, 4409 for a gap mid-stream
    assert GONE_CODES[Phase.ASKED][0] == 4410
    assert GONE_CODES[Phase.READING][0] == GONE_CODES[Phase.LAGGING][0] == 4409


# -- through a Hub ------------------------------------------------------------------------------------------


async def test_an_asked_replay_is_asked_then_reading_then_live_with_every_change_once_in_order() -> None:
    signals = Signals()  # takes nothing by itself: the test reads the queue as a slow socket would
    hub = make_hub(signals, queue_messages=10)
    first = filled(hub, 30)
    ws = object()
    member = hub.subscribe(ws, "Doc", {"from_seq": first})
    assert member.replay is not None and member.replay.phase is Phase.ASKED
    await signals.next_ready()  # the first chunk: the queue holds 10, the replay waits for room
    assert member.replay is not None and member.replay.phase is Phase.READING
    conn = hub.connections[ws]
    got = await read_until_live(member)
    for i in range(30, 35):  # live now: straight from the fan-out
        publish(hub, i)
    got += [orjson.loads(o.data)["message"]["i"] for o in conn.take()]
    assert got == list(range(35))
    assert conn.replaying == 0 and member.view.replaying == 0


async def test_changes_published_while_catching_up_arrive_once_in_order() -> None:
    signals = Signals(take=True)
    hub = make_hub(signals, queue_messages=8)
    first = filled(hub, 50)
    member = hub.subscribe(object(), "Doc", {"from_seq": first})
    n = 50
    while member.replay is not None:  # publish between chunks until the replay catches up
        publish(hub, n)
        n += 1
        before = len(signals.taken)
        await until(lambda: len(signals.taken) > before or member.replay is None,  # noqa: B023 (awaited here)
                    what="the next chunk or the end of the replay")
    publish(hub, n)
    assert ids(signals) == list(range(n + 1))


async def test_a_control_client_is_told_replay_done_with_the_head_when_it_goes_live() -> None:
    signals = Signals(take=True)
    hub = make_hub(signals)
    first = publish(hub, 0)
    head = publish(hub, 1)
    member = hub.subscribe(object(), "Doc", {"from_seq": first}, control=True)
    await until(lambda: member.replay is None, what="the replay to go live")
    got = messages(signals)
    assert [m.get("seq") for m in got[:2]] == [first, head]
    assert got[2] == {"_control": "replay_done", "class": "Doc", "seq": head}


async def test_an_asked_position_no_longer_held_closes_4410_and_a_control_client_is_told_and_goes_live() -> None:
    signals = Signals(take=True)
    hub = make_hub(signals, max_count=5)
    first = filled(hub, 20)  # retention keeps the last five
    plain, control = object(), object()
    hub.subscribe(plain, "Doc", {"after_seq": first})
    told = hub.subscribe(control, "Doc", {"after_seq": first}, control=True)
    await until(lambda: bool(signals.closed) and told.replay is None,
                what="the plain client closed and the control client live")
    assert signals.closed == [(4410, f"history gone: Doc is held from {oldest(hub)} on")]
    assert plain not in hub.connections
    gone = messages(signals)[0]
    assert gone == {"_control": "history_gone", "class": "Doc", "seq": first, "oldest_seq": oldest(hub)}
    publish(hub, 20)
    assert messages(signals)[-1]["message"]["i"] == 20  # live from now on, nothing replayed after the notice
    assert not any(m.get("_control") == "replay_done" for m in messages(signals))


async def test_a_replay_overtaken_by_retention_after_it_read_is_closed_4409_never_skipped() -> None:
    signals = Signals()  # takes nothing: the replay waits for room after its first chunk
    hub = make_hub(signals, max_count=20, queue_messages=5)
    first = filled(hub, 20)
    ws = object()
    member = hub.subscribe(ws, "Doc", {"from_seq": first})
    await signals.next_ready()
    assert member.replay is not None and member.replay.phase is Phase.READING
    for i in range(20, 60):  # retention drops what the replay has not reached
        publish(hub, i)
    hub.connections[ws].take()  # room again: the replay reads on, and finds its position gone
    await until(lambda: bool(signals.closed), what="the replay closed")
    assert signals.closed == [(4409, "too slow: fell behind the journal's retention")]


async def test_a_lagging_member_continues_from_the_journal_without_loss() -> None:
    signals = Signals()
    hub = make_hub(signals, queue_messages=3)
    ws = object()
    member = hub.subscribe(ws, "Doc", {})
    for i in range(10):  # nothing is taken: the queue overflows at the fourth change
        publish(hub, i)
    assert member.replay is not None and member.replay.phase is Phase.LAGGING
    assert hub.stats.lags == 1
    got = await read_until_live(member)
    assert got == list(range(10))


@pytest.mark.parametrize("event", ["leave", "close"])
async def test_a_member_that_leaves_or_closes_while_catching_up_stops_its_replay(event: str) -> None:
    signals = Signals()
    hub = make_hub(signals, queue_messages=2)
    first = filled(hub, 10)
    ws = object()
    member = hub.subscribe(ws, "Doc", {"from_seq": first})
    await signals.next_ready()
    assert hub.replays.running
    if event == "leave":
        hub.subscribe(ws, "Doc", {})  # subscribing again replaces the member
    else:
        hub.remove(ws)
    await until(lambda: not hub.replays.running, what="the replay to stop")
    assert member.replay is None and member.view.replaying == 0


def oldest(hub: Hub[object]) -> str | None:
    backend = hub.backend
    assert isinstance(backend, MemoryBackend)
    return backend.journal.oldest("Doc")


# -- what a replay holds and reads --------------------------------------------------------------------------


async def test_a_lagged_connection_goes_on_from_the_journal_with_nothing_lost_or_repeated() -> None:
    signals = Signals()
    woken = signals.ready
    hub: Hub[object] = Hub(transport=signals)
    ws = object()
    hub.subscribe(ws, "Doc", {}, None)
    publish(hub, 0, pad="x" * 1000)
    conn = hub.connections[ws]
    conn.scheduled = False
    hub.lag(conn)  # what the writer does for a socket over its share
    for i in range(1, 4):
        publish(hub, i, pad="x" * 1000)
    assert len(conn.queue) == 1  # nothing more was queued live
    got = [m.data for m in conn.take()]
    woken.clear()
    await asyncio.wait_for(woken.wait(), 5)  # the replay queued what the journal holds
    got += [m.data for m in conn.take()]
    conn.scheduled = False
    assert await hub.idle(5)
    publish(hub, 4, pad="x" * 1000)  # live again once the replay caught up
    got += [m.data for m in conn.take()]
    assert [orjson.loads(m)["message"]["_id"] for m in got] == [f"d{i}" for i in range(5)]
    assert conn.replaying == 0


async def test_a_replay_overtaken_by_retention_is_cut_off_not_skipped() -> None:
    signals = Signals()
    hub = make_hub(signals, max_count=100, queue_messages=10)
    for i in range(100):
        hub.publish_nowait(Change("Doc", "I", "", {"_id": f"d{i}", "i": i}))
    ws = object()
    hub.subscribe(ws, "Doc", {"from_seq": oldest(hub)}, None)
    conn = hub.connections[ws]
    await signals.next_ready()
    got = [orjson.loads(o.data)["message"]["i"] for o in conn.take()]
    conn.scheduled = False
    assert got == list(range(10))
    for i in range(100, 250):  # retention drops what the replay has not reached yet
        hub.publish_nowait(Change("Doc", "I", "", {"_id": f"d{i}", "i": i}))
    await asyncio.wait_for(signals.closing.wait(), 5)
    assert conn.closed  # told (4409 on the wire), never a silent jump
    assert signals.closed == [(4409, "too slow: fell behind the journal's retention")]


async def test_a_replay_never_queues_past_the_byte_bound_and_reads_once_per_round() -> None:
    signals = Signals()
    journal = MemoryJournal()
    hub = make_hub(signals, journal=journal, queue_messages=1000, queue_bytes=65536)
    for i in range(50):
        hub.publish_nowait(Change("Doc", "I", "", {"_id": f"d{i}", "pad": "x" * 100_000}))
    reads = 0
    read = journal.read

    def counting_read(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return read(*args, **kwargs)

    journal.read = counting_read  # type: ignore[method-assign]
    ws = object()
    hub.subscribe(ws, "Doc", {"from_seq": journal.oldest("Doc")}, None)
    conn = hub.connections[ws]
    await signals.next_ready()
    assert len(conn.queue) == 1 and conn.replaying == 1  # one message over the bound at most, then it waits
    assert reads == 1  # a queue full by bytes waits for room: no spin over the journal
    conn.take()  # as a transport does: take what is queued, then it is idle again
    conn.scheduled = False
    await signals.next_ready()
    assert len(conn.queue) == 1 and reads == 2


async def test_members_of_one_view_catching_up_together_share_each_encoding() -> None:
    signals = Signals()
    hub = make_hub(signals)
    for i in range(200):
        hub.publish_nowait(Change("Doc", "I", "", {"_id": f"d{i}", "i": i}))
    first = oldest(hub)
    before = hub.stats.encodings
    sockets = [object() for _ in range(50)]
    for ws in sockets:  # 50 subscribers of one view resume from the same position
        hub.subscribe(ws, "Doc", {"from_seq": first}, None)
    # the replay tasks run (no transport takes the queues: they stay queued)
    await until(lambda: all(not hub.connections[ws].replaying for ws in sockets), what="every replay caught up")
    assert all(len(hub.connections[ws].queue) == 200 for ws in sockets)
    assert hub.stats.encodings - before == 200  # once per change, not once per change and subscriber
    assert [orjson.loads(o.data)["message"]["i"] for o in hub.connections[sockets[-1]].queue] == list(range(200))


async def test_replay_encodings_are_dropped_once_the_view_is_live_and_bounded_by_bytes() -> None:
    signals = Signals()
    hub = make_hub(signals, queue_bytes=64 * 1024, queue_messages=10_000)
    for i in range(100):
        hub.publish_nowait(Change("Doc", "I", "", {"_id": f"d{i}", "pad": "x" * 2000}))
    ws = object()
    hub.subscribe(ws, "Doc", {"from_seq": oldest(hub)}, None)
    conn = hub.connections[ws]
    view = conn.members["Doc"].view
    for _ in range(200):  # the transport takes what is queued until the member is live, checking each round
        await signals.next_ready()
        assert view.replay_cache_bytes <= 64 * 1024 + 4096
        conn.take()
        conn.scheduled = False
        if not conn.replaying:
            break
    assert not conn.replaying and view.replay_cache == {} and view.replay_cache_bytes == 0


async def test_a_position_of_another_epoch_is_checked_once_not_at_every_later_lag() -> None:
    signals = Signals()
    hub = make_hub(signals, queue_messages=3)
    first = hub.publish_nowait(Change("A", "I", "", {"_id": "x0"}))
    ws = object()
    hub.subscribe(ws, "A", {"after_seq": first, "epoch": "0000000000000-deadbeef"}, None, control=True)
    await signals.next_ready()
    conn = hub.connections[ws]
    assert [orjson.loads(o.data)["_control"] for o in conn.take()] == ["history_gone"]
    conn.scheduled = False
    seqs = [hub.publish_nowait(Change("A", "I", "", {"_id": f"x{i}"})) for i in range(1, 8)]  # it lags
    got: list[Any] = []
    for _ in range(20):  # the transport takes what is queued until nothing is left to replay
        got += [orjson.loads(o.data) for o in conn.take()]
        conn.scheduled = False
        if not conn.replaying and not conn.queue:
            break
        await signals.next_ready()
    assert [m["seq"] for m in got if "doc_class" in m] == seqs  # from the journal: nothing lost
    assert "history_gone" not in [m.get("_control") for m in got]


# -- through the original Broadcaster API, where callers choose seqs ---------------------------------------


async def test_chosen_seqs_before_the_journal_epoch_are_delivered_live_without_a_replay_spin() -> None:
    b = fresh(Region, journal_epoch_now=True)
    live, late = Socket("live"), Socket("late")
    await b.subscribe(live, "Region")
    await b.document_sent_async(Region(order_id="A"), "I", "0001")  # before the epoch: not journaled
    await b.subscribe(late, "Region", from_seq="0001")
    assert await b.flush(2)
    assert [m["seq"] for m in b.to(live)] == ["0001"]
    assert b.to(late) == [] and b.hub().stats.history_gone <= 1


async def test_caller_chosen_seqs_out_of_order_reach_lagging_subscribers_too() -> None:
    """The original API lets callers choose seqs; one that is not after the last is journaled after it, so
    a subscriber that lagged and goes on from the journal still gets it, in publish order."""
    small = fresh(max_queue_messages=3)
    await small.subscribe("slow", "Doc")
    seqs = ["0005", "0006", "0003", "0007", "0004", "0008"]  # 0003 and 0004 arrive out of order
    for seq in seqs:  # no await in between: the queue (3) overflows, the subscriber goes on from the journal
        small.publish("Doc", "I", {"_id": seq}, seq=seq)
    assert small.hub().stats.lags >= 1, "the queue never overflowed: the test proves nothing"
    assert await small.flush()
    # every change, once, in publish order (before: 0004 was lost)
    assert [m["seq"] for m in small.to("slow")] == seqs


# -- snapshots -------------------------------------------------------------------------------------------------


async def test_a_snapshot_of_a_class_whose_every_change_aged_out_goes_live_it_never_resets_in_a_loop() -> None:
    clock = FakeClock(1000.0)
    signals = Signals(take=True)
    hub = make_hub(signals, journal=MemoryJournal(max_age=10, clock=clock))
    for i in range(1500):  # more than a compaction's worth (1,024) of changes
        publish(hub, i)
    clock.advance(60)  # every change is older than max_age: the first read drops them all
    first = hub.subscribe(object(), "Doc", {"snapshot": True})
    await until(lambda: first.replay is None, what="the first snapshot subscriber goes live")
    second = hub.subscribe(object(), "Doc", {"snapshot": True})
    await until(lambda: second.replay is None, what="the second snapshot subscriber goes live")
    got = messages(signals)
    assert [m["_control"] for m in got if "_control" in m] == ["snapshot_done", "snapshot_done"]
    assert sum(1 for m in got if "message" in m) == 2 * 1500  # the documents stayed; only the changes went
    assert hub.stats.resets == 0


async def test_a_snapshot_whose_position_is_gone_again_and_again_backs_off_between_resets() -> None:
    signals = Signals(take=True)
    hub = make_hub(signals, max_count=1)
    filled(hub, 5)
    member = hub.subscribe(object(), "Doc", {"snapshot": True, "after_seq": "0000000000001-0000000000",
                                              "epoch": "not-this-journal"})
    await until(lambda: member.replay is None, what="live after the reset and a fresh snapshot")
    assert [m["_control"] for m in messages(signals) if "_control" in m] == ["reset", "snapshot_done"]
    assert hub.stats.resets == 1


async def test_members_sharing_a_pass_finish_it_when_one_leaves_midway_and_the_pass_is_dropped_after(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import xia_broadcast.snapshot as snapshot_module

    monkeypatch.setattr(snapshot_module, "PAGE", 2)
    signals = Signals()  # nothing is taken by itself: each queue holds what its member was given
    hub = make_hub(signals, queue_messages=4)
    filled(hub, 40)
    sockets = [object() for _ in range(3)]
    members = [hub.subscribe(ws, "Doc", {"snapshot": True}) for ws in sockets]
    view = members[0].view
    await until(lambda: all(len(hub.connections[ws].queue) == 4 for ws in sockets), what="every queue full")
    shared = view.snapshot_pass
    assert shared is not None and hub.stats.snapshot_passes == 1 and shared.members == set(members)
    hub.remove(sockets[0])  # one leaves halfway: its task is cancelled and leaves the pass
    await until(lambda: shared.members == set(members[1:]), what="the member that left is out of the pass")
    got: dict[object, list[Any]] = {ws: [] for ws in sockets[1:]}
    while any(m.replay is not None for m in members[1:]) or any(hub.connections[ws].queue for ws in got):
        for ws in got:  # the others read on, as their sockets would
            got[ws] += [orjson.loads(o.data) for o in hub.connections[ws].take()]
            hub.connections[ws].scheduled = False
        await asyncio.sleep(0)
    for messages_of in got.values():
        assert sorted(m["message"]["i"] for m in messages_of if "message" in m) == list(range(40))
        assert messages_of[-1]["_control"] == "snapshot_done"
    assert view.snapshot_pass is None and hub.stats.encodings == 40  # one encoding per document, then dropped
