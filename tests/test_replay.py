"""Replay (``xia_broadcast.replay``): a member catching up from the journal, its phases, and how it ends.

Every test drives a real Hub on the memory journal; its transport is a recorder (``helpers.Signals``) that
takes queues as a socket would and records closes.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from helpers import Signals
from journal_contract.journal_helpers import until
from xia_broadcast.core.change import Change
from xia_broadcast.hub import Hub, HubSettings
from xia_broadcast.journal import MemoryBackend, MemoryJournal
from xia_broadcast.replay import GONE_CODES, TRANSITIONS, Phase


def make_hub(signals: Signals, *, max_count: int = 100_000, **settings: Any) -> Hub[object]:
    return Hub(MemoryBackend(journal=MemoryJournal(max_count=max_count)), HubSettings(**settings), signals)


def publish(hub: Hub[object], i: int, **fields: Any) -> str:
    return hub.publish_nowait(Change("Doc", "I", "", {"_id": f"d{i}", "i": i, **fields}))


def messages(signals: Signals) -> list[dict[str, Any]]:
    return [orjson.loads(data) for data in signals.taken]


def ids(signals: Signals) -> list[Any]:
    return [m["message"]["i"] for m in messages(signals) if "message" in m]


# -- the table ----------------------------------------------------------------------------------------------


def test_a_replay_starts_only_from_live_and_every_phase_ends_live_when_caught_up() -> None:
    assert {(p, e) for (p, e), to in TRANSITIONS.items() if p is None} == {(None, "ask"), (None, "lag")}
    assert TRANSITIONS[(None, "ask")] is Phase.ASKED and TRANSITIONS[(None, "lag")] is Phase.LAGGING
    for phase in Phase:
        assert TRANSITIONS[(phase, "caught_up")] is None
        assert (phase, "ask") not in TRANSITIONS and (phase, "lag") not in TRANSITIONS
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
    first = publish(hub, 0)
    for i in range(1, 30):
        publish(hub, i)
    ws = object()
    member = hub.subscribe(ws, "Doc", {"from_seq": first})
    assert member.replay is not None and member.replay.phase is Phase.ASKED
    await signals.next_ready()  # the first chunk: the queue holds 10, the replay waits for room
    assert member.replay is not None and member.replay.phase is Phase.READING
    conn = hub.connections[ws]
    got: list[int] = []
    while True:
        got += [orjson.loads(o.data)["message"]["i"] for o in conn.take()]
        conn.scheduled = False
        if member.replay is None and not conn.queue:
            break
        await until(lambda: bool(conn.queue) or member.replay is None)
    for i in range(30, 35):  # live now: straight from the fan-out
        publish(hub, i)
    got += [orjson.loads(o.data)["message"]["i"] for o in conn.take()]
    assert got == list(range(35))
    assert conn.replaying == 0 and member.view.replaying == 0


async def test_changes_published_while_catching_up_arrive_once_in_order() -> None:
    signals = Signals(take=True)
    hub = make_hub(signals, queue_messages=8)
    first = publish(hub, 0)
    for i in range(1, 50):
        publish(hub, i)
    member = hub.subscribe(object(), "Doc", {"from_seq": first})
    n = 50
    while member.replay is not None:  # publish between chunks until the replay catches up
        publish(hub, n)
        n += 1
        before = len(signals.taken)
        await until(lambda: len(signals.taken) > before or member.replay is None)  # noqa: B023 (awaited here)
    publish(hub, n)
    assert ids(signals) == list(range(n + 1))


async def test_a_control_client_is_told_replay_done_with_the_head_when_it_goes_live() -> None:
    signals = Signals(take=True)
    hub = make_hub(signals)
    first = publish(hub, 0)
    head = publish(hub, 1)
    member = hub.subscribe(object(), "Doc", {"from_seq": first}, control=True)
    await until(lambda: member.replay is None)
    got = messages(signals)
    assert [m.get("seq") for m in got[:2]] == [first, head]
    assert got[2] == {"_control": "replay_done", "class": "Doc", "seq": head}


async def test_an_asked_position_no_longer_held_closes_4410_and_a_control_client_is_told_and_goes_live() -> None:
    signals = Signals(take=True)
    hub = make_hub(signals, max_count=5)
    first = publish(hub, 0)
    for i in range(1, 20):  # retention keeps the last five
        publish(hub, i)
    plain, control = object(), object()
    hub.subscribe(plain, "Doc", {"after_seq": first})
    told = hub.subscribe(control, "Doc", {"after_seq": first}, control=True)
    await until(lambda: bool(signals.closed) and told.replay is None)
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
    first = publish(hub, 0)
    for i in range(1, 20):
        publish(hub, i)
    ws = object()
    member = hub.subscribe(ws, "Doc", {"from_seq": first})
    await signals.next_ready()
    assert member.replay is not None and member.replay.phase is Phase.READING
    for i in range(20, 60):  # retention drops what the replay has not reached
        publish(hub, i)
    hub.connections[ws].take()  # room again: the replay reads on, and finds its position gone
    await until(lambda: bool(signals.closed))
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
    got: list[int] = []
    conn = hub.connections[ws]
    while True:
        got += [orjson.loads(o.data)["message"]["i"] for o in conn.take()]
        conn.scheduled = False
        if member.replay is None and not conn.queue:
            break
        await until(lambda: bool(conn.queue) or member.replay is None)
    assert got == list(range(10))


@pytest.mark.parametrize("event", ["leave", "close"])
async def test_a_member_that_leaves_or_closes_while_catching_up_stops_its_replay(event: str) -> None:
    signals = Signals()
    hub = make_hub(signals, queue_messages=2)
    first = publish(hub, 0)
    for i in range(1, 10):
        publish(hub, i)
    ws = object()
    member = hub.subscribe(ws, "Doc", {"from_seq": first})
    await signals.next_ready()
    assert hub.replays.running
    if event == "leave":
        hub.subscribe(ws, "Doc", {})  # subscribing again replaces the member
    else:
        hub.remove(ws)
    await until(lambda: not hub.replays.running)
    assert member.replay is None and member.view.replaying == 0


def oldest(hub: Hub[object]) -> str | None:
    backend = hub.backend
    assert isinstance(backend, MemoryBackend)
    return backend.journal.oldest("Doc")
