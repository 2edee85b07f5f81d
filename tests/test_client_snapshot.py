"""The Python Listener with snapshots, and the Collection it fills, against a real server on 127.0.0.1:
documents stored before, publishers publishing over HTTP while the snapshot is read, a resume across a
restart that keeps the journal, a cut before ``snapshot_done``, a restart that loses it (reset and a fresh
snapshot), and the refusal of a class whose store passed its bounds (4413, final).

What each test expects is computed here from the changes it publishes (a plain model of the documents and
of the region == EU scope), not by the code under test: at every ``snapshot_done`` the collection must be
exactly the model's documents at that seq, and at the end exactly the model's last state.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import xia_broadcast.snapshot as snapshot_module
from helpers import (
    EU,
    RECV_TIMEOUT,
    REGIONS,
    SCENARIO_TIMEOUT,
    ServerFactory,
    TcpProxy,
    fast_backoff,
    free_port,
    order,
    post_publish,
)
from helpers import (
    Collector as BaseCollector,
)
from xia_broadcast.client import (
    TERMINAL_CLOSE_CODES,
    Collection,
    Connected,
    Control,
    DocumentMessage,
    Event,
    Exit,
    HistoryGone,
    Listener,
    ProtocolError,
    Reconnecting,
    Refused,
    ReplayDone,
    Reset,
    SnapshotDone,
    parse_message,
)
from xia_broadcast.server.native import NativeServer


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server reads (and sends) its store 4 documents per loop turn instead of 512: a snapshot of a few
    hundred documents then spans a hundred loop turns or more, so that publishers, cuts and restarts land
    while it is under way, whatever the machine's speed. Only the pace changes."""
    monkeypatch.setattr(snapshot_module, "PAGE", 4)


def journal_settings(journal: str, tmp_path: Path) -> dict[str, Any]:
    """The server settings of a journal: ``memory``, or ``sqlite`` (a data directory)."""
    return {"data": str(tmp_path / "data")} if journal == "sqlite" else {}


# -- the model ------------------------------------------------------------------------------------------------


def visible(doc: dict[str, Any]) -> dict[str, Any]:
    """A document as a subscriber without a catalog sees it: without the hidden ``margin``."""
    return {f: v for f, v in doc.items() if f != "margin"}


class Shop:
    """Every change published to one server (journal), with its seq; what a subscriber scoped on
    ``region == EU`` must hold at any seq, and must be sent after one."""

    def __init__(self) -> None:
        self.history: list[tuple[str, str, dict[str, Any]]] = []

    def _ordered(self) -> list[tuple[str, str, dict[str, Any]]]:
        return sorted(self.history, key=lambda h: h[0])

    def state(self, at: str | None = None) -> dict[str, dict[str, Any]]:
        """The EU documents after every change up to seq ``at`` (None: all), as the subscriber sees them."""
        docs: dict[str, dict[str, Any]] = {}
        for seq, op, doc in self._ordered():
            if at is not None and seq > at:
                break
            if op == "D":
                docs.pop(doc["_id"], None)
            else:
                docs[doc["_id"]] = doc
        return {k: visible(d) for k, d in docs.items() if d["region"] == "EU"}

    def sent_after(self, after: str, upto: str) -> list[tuple[str, str, str]]:
        """``(seq, op, _id)`` of what the subscriber is sent for the changes after ``after`` up to ``upto``:
        the change when the document is in the scope now, an exit (``X``) or a delete when it was before."""
        out: list[tuple[str, str, str]] = []
        docs: dict[str, dict[str, Any]] = {}
        for seq, op, doc in self._ordered():
            prev = docs.get(doc["_id"])
            if op == "D":
                docs.pop(doc["_id"], None)
            else:
                docs[doc["_id"]] = doc
            if not after < seq <= upto:
                continue
            if op != "D" and doc["region"] == "EU":
                out.append((seq, op, doc["_id"]))
            elif prev is not None and prev["region"] == "EU":
                out.append((seq, "X" if op == "U" else "D", doc["_id"]))
        return out


class Changes:
    """Random inserts, updates (amounts, and regions: documents move in and out of the scope) and deletes
    of its own range of orders (two of them never touch the same document)."""

    def __init__(self, seed: int, first: int = 1) -> None:
        self.rng = random.Random(seed)
        self.next_id = first
        self.live: dict[int, dict[str, Any]] = {}

    def make(self, n: int) -> list[dict[str, Any]]:
        rng, changes = self.rng, []
        for _ in range(n):
            if not self.live or rng.random() < 0.4:
                i, self.next_id = self.next_id, self.next_id + 1
                doc, op = order(i, region=rng.choice(REGIONS)), "I"
            else:
                i = rng.choice(sorted(self.live))
                prev = self.live[i]
                if rng.random() < 0.2:
                    op, doc = "D", prev
                else:
                    op, doc = "U", {**prev, "region": rng.choice(REGIONS), "amount": prev["amount"] + 1}
            if op == "D":
                del self.live[i]
            else:
                self.live[i] = doc
            changes.append({"class": "Order", "op": op, "doc": doc})
        return changes


async def publish(http: httpx.AsyncClient, server: NativeServer, shop: Shop,
                  changes: list[dict[str, Any]]) -> list[str]:
    """POST the changes as one batch; records them in ``shop`` with their seqs."""
    resp = await post_publish(http, server, {"changes": changes})
    assert resp.status_code == 200, resp.text
    seqs: list[str] = resp.json()["seqs"]
    shop.history.extend((seq, c["op"], c["doc"]) for seq, c in zip(seqs, changes, strict=True))
    return seqs


# -- the listener, read in the background ---------------------------------------------------------------------


def listener(url: str, subscriptions: dict[str, Any], seed: int = 0, **options: Any) -> Listener:
    """A snapshot listener with fast, seeded reconnection delays and no client pings."""
    options.setdefault("snapshot", True)
    options.setdefault("backoff", fast_backoff(seed))
    options.setdefault("ping_interval", None)
    options.setdefault("open_timeout", RECV_TIMEOUT)
    options.setdefault("connect_kwargs", {"proxy": None})
    return Listener(url, subscriptions, **options)


class Collector(BaseCollector):
    """Reads a listener in a background task into a :class:`Collection` of Order; keeps every event, the
    collection as it was at each ``snapshot_done``, and what it held when told to reset."""

    timeout = SCENARIO_TIMEOUT

    def __init__(self, lst: Listener, on_event: Callable[[Event], None] | None = None) -> None:
        self.collection = Collection("Order")
        #: (the snapshot_done, the collection's documents then)
        self.done: list[tuple[SnapshotDone, dict[Any, dict[str, Any]]]] = []
        #: (documents held, complete) just before each Reset was applied
        self.before_reset: list[tuple[int, bool]] = []
        super().__init__(lst, on_event)

    def record(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, Reset):
            self.before_reset.append((len(self.collection), self.collection.complete))
        self.collection.apply(event)
        if isinstance(event, SnapshotDone):
            self.done.append((event, dict(self.collection.docs)))

    def after(self, event: Event) -> list[Event]:
        """The events that followed ``event``."""
        return self.events[self.events.index(event) + 1:]


@pytest.fixture
def collect(collect: Callable[..., BaseCollector]) -> Callable[..., Collector]:
    """The conftest's ``collect``, making the Collectors of this file (with their Collection)."""
    return functools.partial(collect, kind=Collector)  # type: ignore[return-value]


def assert_whole_at_each_snapshot_done(c: Collector, shop: Shop, since: int = 0) -> None:
    """At each ``snapshot_done`` (from the ``since``-th), the collection was the model's documents at its seq."""
    assert len(c.done) > since
    for done, docs in c.done[since:]:
        assert docs == shop.state(done.seq), f"collection at {done} is not the documents at that seq"


# -- the scenarios --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("journal", "seed"), [("memory", 1), ("memory", 2), ("sqlite", 3)])
async def test_a_snapshot_under_concurrent_publishers_is_whole_at_snapshot_done_and_at_the_end(
        make_server: ServerFactory, collect: Callable[..., Collector], http: httpx.AsyncClient,
        small_pages: None, tmp_path: Path, journal: str, seed: int) -> None:
    server = await make_server(**journal_settings(journal, tmp_path))
    shop = Shop()
    publishers = [Changes(seed * 10 + k, first=100_000 * (k + 1)) for k in range(2)]
    for pub in publishers:
        for _ in range(3):
            await publish(http, server, shop, pub.make(150))
    before = len(shop.history)
    done_seen = asyncio.Event()

    async def keep_publishing(pub: Changes, rng: random.Random) -> None:
        """Publish while the snapshot is read, then 30 batches more (live)."""
        while not done_seen.is_set():
            await publish(http, server, shop, pub.make(rng.randint(1, 4)))
        for _ in range(30):
            await publish(http, server, shop, pub.make(rng.randint(1, 4)))

    c = collect(listener(server.url, {"Order": {"data_scope": EU}}, seed),
                lambda e: done_seen.set() if isinstance(e, SnapshotDone) else None)
    tasks = [asyncio.get_running_loop().create_task(keep_publishing(pub, random.Random(seed + k)))
             for k, pub in enumerate(publishers)]
    try:
        async with asyncio.timeout(SCENARIO_TIMEOUT):
            await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    await c.until(lambda: c.collection.docs == shop.state(), what="the final state")

    first_done = c.of(SnapshotDone)[0]
    snapshot_part = c.events[:c.events.index(first_done)]
    confirmation_head = c.of(Connected)[0].confirmation["Order"]["head_seq"]
    # publishers published while the snapshot was read: its position is past the confirmation's head, and
    # changes made meanwhile (ops that a stored document never has) came before snapshot_done
    assert len(shop.history) > before and first_done.seq > confirmation_head
    assert any(isinstance(e, Exit) or (isinstance(e, DocumentMessage) and e.op != "I") for e in snapshot_part)
    # the stored documents came with the seqs of their last changes, before the confirmation's head: none of
    # them was taken for a repeat
    snapshot_seqs = [e.seq for e in snapshot_part if isinstance(e, DocumentMessage)]
    assert any(seq <= confirmation_head for seq in snapshot_seqs)
    if journal == "sqlite":  # its store is read in _id order: the seqs come in no order, and all are yielded
        assert snapshot_seqs != sorted(snapshot_seqs)
    assert_whole_at_each_snapshot_done(c, shop)
    assert c.collection.complete and c.collection.docs == shop.state()
    # everything after snapshot_done is exactly what the model says the subscriber must be sent
    live = [(e.seq, e.op if isinstance(e, DocumentMessage) else "X", e.id) for e in c.after(first_done)
            if isinstance(e, DocumentMessage | Exit)]
    assert live == shop.sent_after(first_done.seq, max(s for s, _, _ in shop.history))
    assert c.listener.duplicates == 0 and c.listener.protocol_errors == 0
    assert not c.of(Reset) and not c.of(Reconnecting) and not c.of(HistoryGone) and not c.of(ReplayDone)
    assert c.listener.last_seq["Order"] == max([live[-1][0]] + [d.seq for d, _ in c.done])


async def test_a_drop_after_snapshot_done_resumes_after_the_last_seq_across_a_restart_that_keeps_the_journal(
        make_server: ServerFactory, make_proxy: Callable[..., Any], collect: Callable[..., Collector],
        http: httpx.AsyncClient, small_pages: None, tmp_path: Path) -> None:
    port, data = free_port(), str(tmp_path / "data")
    server = await make_server(port=port, data=data)  # the journal (and the store) in SQLite
    proxy: TcpProxy = await make_proxy(port)
    shop, changes = Shop(), Changes(7)
    await publish(http, server, shop, changes.make(300))
    c = collect(listener(proxy.url(), {"Order": {"data_scope": EU}}))
    await c.until(lambda: bool(c.done), what="snapshot_done")
    await publish(http, server, shop, changes.make(20))  # live
    await c.until(lambda: c.collection.docs == shop.state(), what="the live changes")
    position, epoch = c.listener.last_seq["Order"], c.listener.epochs["Order"]
    assert epoch == c.done[0][0].epoch

    await proxy.stop()  # the connection drops; new ones are refused meanwhile
    await publish(http, server, shop, changes.make(30))  # missed
    await server.shutdown()
    server = await make_server(port=port, data=data)  # the same journal file
    await publish(http, server, shop, changes.make(30))  # missed too
    await proxy.start()
    await c.until(lambda: len(c.done) == 2, what="the second snapshot_done")
    await publish(http, server, shop, changes.make(10))  # live again
    await c.until(lambda: c.collection.docs == shop.state(), what="the final state")

    second = c.of(Connected)[1]
    assert second.resumed == {"Order": position}
    assert c.done[1][0].epoch == epoch  # the journal survived: the same epoch, no reset
    assert not c.of(Reset) and c.listener.duplicates == 0
    # between the reconnection and snapshot_done: only the missed changes, in order (no snapshot again)
    resumed = c.after(second)[:c.after(second).index(c.done[1][0])]
    assert [(e.seq, e.op if isinstance(e, DocumentMessage) else "X", e.id) for e in resumed
            if isinstance(e, DocumentMessage | Exit)] == shop.sent_after(position, c.done[1][0].seq)
    assert all(isinstance(e, DocumentMessage | Exit) for e in resumed) and len(resumed) >= 1
    assert_whole_at_each_snapshot_done(c, shop)


async def test_a_drop_before_snapshot_done_yields_reset_and_takes_a_fresh_snapshot(
        make_server: ServerFactory, make_proxy: Callable[..., Any], collect: Callable[..., Collector],
        http: httpx.AsyncClient, small_pages: None) -> None:
    server = await make_server()
    proxy: TcpProxy = await make_proxy(server.port)
    shop, changes = Shop(), Changes(3)
    await publish(http, server, shop, changes.make(600))
    cuts: list[int] = []

    def cut_at_the_first_document(event: Event) -> None:
        if isinstance(event, DocumentMessage) and not cuts:
            cuts.append(proxy.cut())

    c = collect(listener(proxy.url(), {"Order": {"data_scope": EU}}), cut_at_the_first_document)
    await c.until(lambda: bool(c.done), what="snapshot_done")
    await publish(http, server, shop, changes.make(20))
    await c.until(lambda: c.collection.docs == shop.state(), what="the final state")

    assert cuts == [1] and len(c.of(Connected)) == 2
    second = c.of(Connected)[1]
    assert second.resumed == {}  # no position: a fresh snapshot was asked
    assert c.after(second)[0] == Reset("Order", local=True)  # before any document of the fresh snapshot
    assert c.of(Reset) == [Reset("Order", local=True)]
    [(held, complete)] = c.before_reset
    assert held >= 1 and not complete  # the partial collection was dropped
    assert c.events.index(c.done[0][0]) > c.events.index(second)  # the only snapshot_done: the fresh one
    assert_whole_at_each_snapshot_done(c, shop)
    assert c.listener.duplicates == 0


@pytest.mark.parametrize(("journal", "seed"), [("memory", 1), ("memory", 2), ("sqlite", 3)])
async def test_cuts_at_random_moments_during_and_after_snapshots_end_with_the_right_documents(
        make_server: ServerFactory, make_proxy: Callable[..., Any], collect: Callable[..., Collector],
        http: httpx.AsyncClient, small_pages: None, tmp_path: Path, journal: str, seed: int) -> None:
    """Publishers publish throughout; the connection is cut at random moments: while a snapshot is read
    (reset, fresh snapshot), while a resume replays, while live. The collection ends exactly right."""
    server = await make_server(**journal_settings(journal, tmp_path))
    proxy: TcpProxy = await make_proxy(server.port)
    shop, rng = Shop(), random.Random(seed)
    publishers = [Changes(seed * 10 + k, first=100_000 * (k + 1)) for k in range(2)]
    for pub in publishers:
        await publish(http, server, shop, pub.make(300))
    gaps = [rng.randint(3, 20)] + [rng.randint(1, 150) for _ in range(6)]  # events of a connection before its cut
    cuts: list[bool] = []  # whether the collection was complete at each cut
    since = 0

    def cut_now(event: Event) -> None:
        nonlocal since
        if isinstance(event, Connected):
            since = 0
            return
        since += 1
        complete = c.collection.complete
        due = since >= gaps[len(cuts)] if len(cuts) < len(gaps) else len(cuts) == len(gaps) and complete and since >= 3
        # (events read after a cut, before the drop is seen, belong to no connection: nothing to cut then)
        if due and proxy.cut():
            cuts.append(complete)

    stop = asyncio.Event()

    async def keep_publishing(pub: Changes, prng: random.Random) -> None:
        while not stop.is_set():
            await publish(http, server, shop, pub.make(prng.randint(1, 3)))
            await asyncio.sleep(prng.choice([0, 0.001, 0.005]))

    c = collect(listener(proxy.url(), {"Order": {"data_scope": EU}}, seed), cut_now)
    tasks = [asyncio.get_running_loop().create_task(keep_publishing(pub, random.Random(seed + k)))
             for k, pub in enumerate(publishers)]
    try:
        await c.until(lambda: len(cuts) > len(gaps), what="every cut")
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    await c.until(lambda: len(c.of(Connected)) == len(cuts) + 1 and c.collection.complete
                  and c.collection.docs == shop.state(), what="the final state")

    assert cuts[0] is False and cuts[-1] is True  # cut during the first snapshot, and once live
    assert len(c.of(Connected)) == len(cuts) + 1
    assert_whole_at_each_snapshot_done(c, shop)
    for reset in c.of(Reset):  # made by the listener, at the start of a connection, for a partial collection
        assert reset.local and isinstance(c.events[c.events.index(reset) - 1], Connected)
    assert all(not complete for _, complete in c.before_reset) and len(c.of(Reset)) >= 1
    assert c.listener.duplicates == 0 and c.listener.protocol_errors == 0


async def test_a_restart_that_loses_the_journal_yields_reset_then_a_fresh_snapshot(
        make_server: ServerFactory, collect: Callable[..., Collector], http: httpx.AsyncClient,
        small_pages: None) -> None:
    port = free_port()
    server = await make_server(port=port)  # the memory journal: a restart starts a new epoch, empty
    old, changes = Shop(), Changes(5)
    await publish(http, server, old, changes.make(200))
    c = collect(listener(f"ws://127.0.0.1:{port}/ws", {"Order": {"data_scope": EU}}))
    await c.until(lambda: bool(c.done), what="snapshot_done")
    await publish(http, server, old, changes.make(10))
    await c.until(lambda: c.collection.docs == old.state(), what="the live changes")
    position = c.listener.last_seq["Order"]
    assert c.collection.docs  # something to drop

    await server.shutdown()
    server = await make_server(port=port)
    new = Shop()
    await publish(http, server, new, Changes(6, first=40).make(100))  # some _ids of before, others not
    await c.until(lambda: len(c.done) == 2, what="the fresh snapshot's snapshot_done")
    await publish(http, server, new, Changes(8, first=10_000).make(10))
    await c.until(lambda: c.collection.docs == new.state(), what="the new server's documents")

    second = c.of(Connected)[1]
    assert second.resumed == {"Order": position}  # it tried to resume; the server said reset
    assert c.after(second)[0] == Reset("Order") and c.of(Reset) == [Reset("Order")]
    assert c.before_reset == [(len(old.state()), True)]
    assert c.done[1][0].epoch != c.done[0][0].epoch
    assert c.done[0][1] == old.state(c.done[0][0].seq) and c.done[1][1] == new.state(c.done[1][0].seq)
    assert c.listener.epochs["Order"] == c.done[1][0].epoch


async def test_a_snapshot_refused_for_the_stores_bounds_is_final(make_server: ServerFactory,
                                                                 http: httpx.AsyncClient,
                                                                 run: Callable[..., Any]) -> None:
    server = await make_server(store_max_documents=3)
    await publish(http, server, Shop(), [{"class": "Order", "op": "I", "doc": order(i)} for i in range(5)])
    lst = listener(server.url, {"Order": {}})
    events: list[Event] = []
    with pytest.raises(Refused) as info:
        async with asyncio.timeout(SCENARIO_TIMEOUT):
            async for event in lst:
                events.append(event)
    assert info.value.code == 4413 and "store_max_documents" in info.value.reason
    assert not any(isinstance(e, Reconnecting) for e in events)  # never retried
    assert 4413 in TERMINAL_CLOSE_CODES
    listen = await run("listen", server.url, "--class", "Order", "--snapshot", "--max-delay", "0.1")
    assert await listen.wait() == 3 and "refused by the server: 4413" in listen.err[-1]
    assert listen.out == [] and not any("reconnecting" in line for line in listen.err)


async def test_a_class_with_a_snapshot_and_one_without_on_one_connection(
        server: NativeServer, collect: Callable[..., Collector]) -> None:
    server.service.publish_nowait("Order", "I", order(1))
    server.service.publish_nowait("Customer", "I", {"_id": "C-1", "customer_id": "C-1", "name": "before"})
    c = collect(listener(server.url, {"Order": {}, "Customer": {"snapshot": False}}, snapshot=True))
    await c.until(lambda: bool(c.done), what="snapshot_done")
    customer = server.service.publish_nowait("Customer", "I", {"_id": "C-2", "customer_id": "C-2", "name": "n"})
    await c.until(lambda: any(isinstance(e, DocumentMessage) and e.doc_class == "Customer" for e in c.events),
                  what="the live customer")
    assert [(e.doc_class, e.id) for e in c.of(DocumentMessage)] == [("Order", "O-000001"), ("Customer", "C-2")]
    assert c.listener.last_seq["Customer"] == customer
    hello = await c.listener.handshake()
    assert hello["Order"] == {"snapshot": True, "after_seq": c.done[0][0].seq, "epoch": c.done[0][0].epoch}
    assert hello["Customer"] == {"after_seq": customer}


# -- the command line -----------------------------------------------------------------------------------------


def done_lines(lines: list[dict[str, Any]]) -> list[int]:
    return [i for i, m in enumerate(lines) if m.get("_control") == "snapshot_done"]


async def test_listen_snapshot_prints_the_current_documents_then_snapshot_done_then_changes(
        make_server: ServerFactory, http: httpx.AsyncClient, run: Callable[..., Any], small_pages: None) -> None:
    port = free_port()
    server = await make_server(port=port)
    shop, publishers = Shop(), [Changes(11), Changes(12, first=100_000)]
    for pub in publishers:
        for _ in range(3):
            await publish(http, server, shop, pub.make(150))
    listen = await run("listen", f"ws://127.0.0.1:{port}/ws", "--class", "Order", "--snapshot",
                       "--scope", json.dumps(EU), "--max-delay", "0.2")

    async def keep_publishing(pub: Changes, rng: random.Random) -> None:
        """While the command connects and reads the snapshot."""
        while not any('"snapshot_done"' in line for line in listen.out):
            await publish(http, server, shop, pub.make(rng.randint(1, 3)))

    async with asyncio.timeout(SCENARIO_TIMEOUT):
        await asyncio.gather(*(keep_publishing(pub, random.Random(k)) for k, pub in enumerate(publishers)))
    # changes were made while the snapshot was read (sent after its documents, before snapshot_done): the
    # command folded them into the documents it printed
    assert server.service.hub.stats.replayed >= 1
    lines = listen.lines()
    first = done_lines(lines)[0]
    done = lines[first]
    # the current documents, one I line each, as they stand at snapshot_done's seq; then snapshot_done
    assert all(m["op"] == "I" and m["doc_class"] == "Order" for m in lines[:first])
    assert len({m["message"]["_id"] for m in lines[:first]}) == first
    assert {m["message"]["_id"]: m["message"] for m in lines[:first]} == shop.state(done["seq"])
    assert set(done) == {"_control", "class", "seq", "epoch"} and done["class"] == "Order"

    await publish(http, server, shop, publishers[0].make(20))  # then the changes, as the server sends them
    last = max(seq for seq, _, _ in shop.history)
    expected = shop.sent_after(done["seq"], last)
    assert expected  # some of the 20 changes are in the scope, or were
    await listen.until(lambda: len(listen.out) >= first + 1 + len(expected), what="the changes")
    assert [(m["seq"], m["op"], m["message"]["_id"]) for m in listen.lines()[first + 1:]] == expected

    # a restart that loses the journal: a reset line, then the new server's documents, then snapshot_done
    await server.shutdown()
    server = await make_server(port=port)
    new = Shop()
    await publish(http, server, new, Changes(12, first=20).make(60))
    await listen.until(lambda: len(done_lines(listen.lines())) == 2, what="the second snapshot_done")
    lines = listen.lines()[first + 1 + len(expected):]
    second = done_lines(lines)[0]
    assert lines[0] == {"_control": "reset", "class": "Order"}
    assert all(m["op"] == "I" for m in lines[1:second])
    assert {m["message"]["_id"]: m["message"] for m in lines[1:second]} == new.state(lines[second]["seq"])
    assert lines[second]["epoch"] != done["epoch"] and len(lines) == second + 1
    assert any(f"resuming Order after {expected[-1][0]}" in line for line in listen.err), listen.err
    listen.proc.send_signal(signal.SIGINT)
    assert await listen.wait() == 0


async def test_listen_epoch_goes_with_snapshot_and_after(run: Callable[..., Any]) -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws"
    alone = await run("listen", url, "--class", "Order", "--epoch", "e")
    assert await alone.wait() == 2 and "--epoch goes with --snapshot --after" in alone.err[-1]
    no_snapshot = await run("listen", url, "--class", "Order", "--after", "1-0", "--epoch", "e")
    assert await no_snapshot.wait() == 2


# -- the pure parts -------------------------------------------------------------------------------------------


def test_snapshot_done_and_reset_parse_to_their_types() -> None:
    done = {"_control": "snapshot_done", "class": "Order", "seq": "1-5", "epoch": "e1"}
    assert parse_message(done) == SnapshotDone("Order", "1-5", "e1") and parse_message(done).to_wire() == done
    reset = {"_control": "reset", "class": "Order"}
    assert parse_message(reset) == Reset("Order") and parse_message(reset).to_wire() == reset
    assert Reset("Order", local=True).to_wire() == {**reset, "local": True}  # made by the listener
    assert parse_message({"_control": "something_new", "class": "Order"}) == Control("something_new",
                                                                                    {"class": "Order"})
    for bad in ({"_control": "snapshot_done", "class": "Order", "seq": None, "epoch": "e"},
                {"_control": "snapshot_done", "class": "Order", "seq": "1"},
                {"_control": "reset", "class": 3}):
        with pytest.raises(ProtocolError):
            parse_message(bad)


async def test_the_handshake_asks_for_a_snapshot_and_resumes_with_its_position() -> None:
    lst = Listener("ws://127.0.0.1:1/ws", {"Order": {"data_scope": EU}, "Customer": {"snapshot": False},
                                           "Item": {"after_seq": "4-0", "epoch": "e0"}}, snapshot=True)
    hello = await lst.handshake()
    assert hello["Order"] == {"data_scope": EU, "snapshot": True}  # no position until snapshot_done
    assert hello["Customer"] == {}
    assert hello["Item"] == {"snapshot": True, "after_seq": "4-0", "epoch": "e0"}  # held by the caller already
    per_class = Listener("ws://127.0.0.1:1/ws", {"Order": {"snapshot": True}, "Customer": None})
    hello = await per_class.handshake()
    assert hello["Order"] == {"snapshot": True} and hello["Customer"] == {}


@pytest.mark.parametrize(("subs", "options"), [
    ({"Order": {"snapshot": "yes"}}, {}),
    ({"Order": {}}, {"snapshot": 1}),
    ({"Order": {"start_seq": "1-0"}}, {"snapshot": True}),
    ({"Order": {"after_seq": "1-0", "epoch": "e"}}, {}),  # an epoch is a snapshot's
    ({"Order": {"epoch": "e"}}, {"snapshot": True}),  # and goes with its after_seq
])
def test_bad_snapshot_arguments_are_refused_at_construction(subs: dict[str, Any], options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Listener("ws://127.0.0.1:1/ws", subs, **options)


def test_the_collection_applies_upserts_removals_resets_and_knows_when_it_is_complete() -> None:
    seen: list[tuple[str, Any]] = []
    coll = Collection("Order", on_change=lambda kind, doc_id, doc, prev: seen.append((kind, doc_id)))
    a, b = {"_id": "A", "n": 1}, {"_id": "B", "n": 1}
    for event in [DocumentMessage("Order", "I", "1-9", a), DocumentMessage("Order", "I", "1-3", b),
                  DocumentMessage("Customer", "I", "1-4", {"_id": "C"}),  # another class: ignored
                  DocumentMessage("Order", "U", "1-10", {"_id": "B", "n": 2})]:
        coll.apply(event)
    assert coll.docs == {"A": a, "B": {"_id": "B", "n": 2}} and not coll.complete and coll.seq is None
    assert coll.apply(SnapshotDone("Order", "1-10", "e")) and coll.complete and coll.seq == "1-10"
    coll.apply(Exit("Order", "1-11", "A"))
    coll.apply(DocumentMessage("Order", "D", "1-12", {"_id": "B", "n": 2}))
    coll.apply(DocumentMessage("Order", "D", "1-13", {"_id": "nobody"}))  # not held: nothing happens
    assert coll.docs == {} and coll.seq == "1-13" and len(coll) == 0
    coll.apply(DocumentMessage("Order", "I", "1-14", a))
    assert "A" in coll and coll["A"] == a and coll.get("B") is None
    assert coll.apply(Reset("Order")) and coll.docs == {} and not coll.complete and coll.seq is None
    assert not coll.apply(Reset("Customer")) and not coll.apply(Reconnecting(1006, "", 0.1, 1))
    coll.apply(DocumentMessage("Order", "I", "1-15", a))
    coll.apply(HistoryGone("Order", "1-15", None))  # a listener without snapshots: reload, then apply
    assert coll.docs == {}
    assert seen == [("insert", "A"), ("insert", "B"), ("update", "B"), ("complete", None), ("exit", "A"),
                    ("delete", "B"), ("insert", "A"), ("clear", None), ("insert", "A"), ("clear", None)]
