"""Regressions: hidden fields, ACLs, gaps and resource bounds under unusual documents, hooks and clients."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from typing import Any, ClassVar

import orjson
import pytest
from pydantic import ConfigDict
from pydantic.alias_generators import to_camel

from helpers import Signals
from xia_broadcast import Broadcaster, Document, field
from xia_broadcast.core.change import Change
from xia_broadcast.errors import HiddenFieldError, SubscriptionError
from xia_broadcast.hub import Hub, HubSettings
from xia_broadcast.journal import MemoryBackend, MemoryJournal
from xia_broadcast.server.config import Settings
from xia_broadcast.server.demo import ORDER_SCHEMA
from xia_broadcast.server.native import NativeServer


class Socket:
    def __init__(self, name: str = "ws") -> None:
        self.name = name
        self.got: list[dict[str, Any]] = []


def recorder(**attrs: Any) -> type[Broadcaster]:
    class B(Broadcaster):
        @classmethod
        async def send_message_async(cls, websocket: Any, message: str) -> None:
            websocket.got.append(json.loads(message))

    for k, v in attrs.items():
        setattr(B, k, v)
    return B


# -- hidden fields and ACLs -----------------------------------------------------------------------------


class Aliased(Document):
    order_id: str = field(key=True, serialization_alias="orderRef")
    margin: float = field(0.0, hidden=True, serialization_alias="mrg")


class Camel(Document):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)
    order_id: str = field(key=True)
    secret_margin: float = field(0.0, hidden=True)


@pytest.mark.parametrize("doc", [Aliased(order_id="A", margin=0.42), Camel(order_id="A", secret_margin=0.42)])
async def test_hidden_fields_and_keys_follow_serialization_aliases(doc: Document) -> None:
    b = recorder()
    ws, acl_ws = Socket(), Socket()
    await b.subscribe(ws, type(doc).__name__)
    await b.subscribe(acl_ws, type(doc).__name__,
                      acl={"content": [{"obj": f"{type(doc).__name__}/key/A", "act": "read"}]})
    await b.document_sent_async(doc, "I", "1")
    assert await b.flush()
    for got in (ws.got, acl_ws.got):
        assert len(got) == 1
        assert set(got[0]["message"]) == {"_id", "orderRef" if isinstance(doc, Aliased) else "orderId"}


class Secret(Document):
    owner: str = field(key=True)
    ssn: str = ""

    def check_acl(self, acl: Any, act: str = "read", doc: Any = None, raise_error: bool = True) -> bool:
        return acl is None

    def get_display_data(self, catalog: Any = None, show_hidden: bool = False, **_: Any) -> dict[str, Any]:
        return {"_id": self.id, "owner": self.owner}


async def test_a_document_overriding_the_original_protocol_is_asked_through_it() -> None:
    b = recorder()
    public, restricted = Socket(), Socket()
    await b.subscribe(public, "Secret")
    await b.subscribe(restricted, "Secret", acl={"content": [{"obj": "*", "act": "*"}]})
    await b.document_sent_async(Secret(id="s", owner="bob", ssn="123-45-6789"), "I", "1")
    assert await b.flush()
    assert [m["message"] for m in public.got] == [{"_id": "s", "owner": "bob"}]
    assert restricted.got == []


class Region(Document):
    order_id: str = field(key=True)
    region: str = ""


async def test_acls_that_differ_beyond_obj_and_act_never_share_a_view_on_the_slow_path() -> None:
    def check(cls: Any, doc: Any, acl: Any) -> bool:
        return any(all(getattr(doc, k) == v for k, v in item.get("cond", {}).items()) for item in acl["content"])

    b = recorder(check_subscriber_acl=classmethod(check))
    eu, us = Socket("eu"), Socket("us")
    await b.subscribe(eu, "Region", acl={"content": [{"obj": "Region/*", "act": "read", "cond": {"region": "EU"}}]})
    await b.subscribe(us, "Region", acl={"content": [{"obj": "Region/*", "act": "read", "cond": {"region": "US"}}]})
    assert b.hub().view_count("Region") == 2
    await b.document_sent_async(Region(order_id="A", region="EU"), "I", "1")
    assert await b.flush()
    assert len(eu.got) == 1 and us.got == []


async def test_overridden_hooks_also_see_data_changes_and_scope_exits() -> None:
    seen: list[str] = []

    def check(cls: Any, doc: Any, acl: Any) -> bool:
        seen.append(type(doc).__name__)
        return Broadcaster.check_subscriber_acl.__func__(cls, doc, acl)  # type: ignore[attr-defined]

    b = recorder(check_subscriber_acl=classmethod(check))
    b.register_class(ORDER_SCHEMA)
    ws = Socket()
    await b.subscribe(ws, "Order", data_scope=[{"fn": "status", "op": "==", "val": "new"}], exits=True)
    b.publish("Order", "I", {"_id": "1", "order_id": "1", "status": "new", "margin": 2.0})
    b.publish("Order", "U", {"_id": "1", "order_id": "1", "status": "paid"})
    assert await b.flush()
    assert [(m["op"], m["message"]) for m in ws.got] == [
        ("I", {"_id": "1", "order_id": "1", "status": "new"}), ("X", {"_id": "1"})]
    assert seen and set(seen) == {"DataDocument"}


# -- no silent gap, no spin -----------------------------------------------------------------------------


def oldest(hub: Hub[Any], class_name: str = "Doc") -> str | None:
    """The oldest seq the memory journal of ``hub`` holds for ``class_name``."""
    backend = hub.backend
    assert isinstance(backend, MemoryBackend)
    return backend.journal.oldest(class_name)


def hub_with(signals: Signals, journal: MemoryJournal | None = None, **settings: Any) -> Hub[Any]:
    return Hub(MemoryBackend(journal=journal or MemoryJournal()), HubSettings(**settings), signals)


async def test_a_replay_overtaken_by_retention_is_cut_off_not_skipped() -> None:
    signals = Signals()
    hub = hub_with(signals, MemoryJournal(max_count=100), queue_messages=10)
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


async def test_chosen_seqs_before_the_journal_epoch_are_delivered_live_without_a_replay_spin() -> None:
    class B(Broadcaster):
        journal_epoch_now = True

        @classmethod
        async def send_message_async(cls, websocket: Any, message: str) -> None:
            websocket.got.append(json.loads(message))

    B.register_class(Region)
    live, late = Socket(), Socket()
    await B.subscribe(live, "Region")
    await B.document_sent_async(Region(order_id="A"), "I", "0001")  # before the epoch: not journaled
    await B.subscribe(late, "Region", from_seq="0001")
    assert await B.flush(2)
    assert [m["seq"] for m in live.got] == ["0001"]
    assert late.got == [] and B.hub().stats.history_gone <= 1


async def test_a_replay_never_queues_past_the_byte_bound_and_reads_once_per_round() -> None:
    signals = Signals()
    journal = MemoryJournal()
    hub = hub_with(signals, journal, queue_messages=1000, queue_bytes=65536)
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


async def test_publishing_from_another_thread_is_refused_before_anything_changes() -> None:
    b = recorder()
    b.register_class(ORDER_SCHEMA)
    ws = Socket()
    await b.subscribe(ws, "Order")
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            b.publish("Order", "I", {"_id": "1", "order_id": "1"})
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    assert len(errors) == 1 and await b.hub().backend.read("Order", None, inclusive=True, limit=1) == []
    seq = b.publish("Order", "I", {"_id": "2", "order_id": "2"})  # the loop's own publishing still works
    assert await b.flush()
    assert [m["seq"] for m in ws.got] == [seq]


# -- one bad socket, one bad change --------------------------------------------------------------------


class Note(Document):
    x: int = 0


async def test_an_unencodable_change_in_a_replay_does_not_stop_other_sockets() -> None:
    srv = NativeServer(Settings(port=0, queue_messages=5, ping_interval=0, log_level="CRITICAL"))
    srv.service.hub.schemas["Note"] = Note.doc_schema()
    await srv.start()

    def publish(note: Note) -> None:
        srv.service.publish_nowait("Note", "I", note.stored_data())

    try:
        from websockets.asyncio.client import connect

        async with connect(srv.url) as lagging, connect(srv.url) as healthy:
            await lagging.send(json.dumps({"Note": {}}))
            await lagging.recv()
            await healthy.send(json.dumps({"Note": {"data_scope": [{"fn": "x", "op": "==", "val": 5000}]}}))
            await healthy.recv()
            for i in range(10):  # one burst: the first client overflows its queue and replays
                publish(Note(id=f"s{i}", x=i))
            publish(Note(id="big", x=2**70))  # not JSON-encodable by orjson
            publish(Note(id="h1", x=5000))
            await asyncio.sleep(0.2)
            publish(Note(id="h2", x=5000))
            got = [json.loads(await asyncio.wait_for(healthy.recv(), 5))["message"]["_id"] for _ in range(2)]
            assert got == ["h1", "h2"]
    finally:
        await srv.shutdown()


async def test_a_peer_that_pipelines_requests_without_reading_cannot_grow_server_memory() -> None:
    srv = NativeServer(Settings(port=0, ping_interval=0, classes={"Order": ORDER_SCHEMA}, log_level="CRITICAL"))
    await srv.start()
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", srv.port))
        sock.setblocking(False)
        _, writer = await asyncio.open_connection(sock=sock)
        request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        for _ in range(5):
            writer.write(request * 2000)
            try:
                await asyncio.wait_for(writer.drain(), 1)
            except TimeoutError:
                break  # the server stopped reading from us: the point of the test
        await asyncio.sleep(0.3)
        buffered = max(s.transport.get_write_buffer_size() for s in srv.sockets if s.transport)
        assert buffered < 4 * 1024 * 1024
        writer.transport.abort()
    finally:
        await srv.shutdown()


async def test_publish_refuses_ids_that_are_not_strings_or_integers_and_applies_nothing() -> None:
    b = recorder()
    for bad in ([1], {"a": 1}, "", True, None):
        with pytest.raises(ValueError):
            b.publish("Free", "I", {"_id": bad})
    assert await b.hub().backend.read("Free", None, inclusive=True, limit=1) == []


def test_direct_messages_a_client_provokes_without_reading_are_bounded() -> None:
    signals = Signals()
    engine = hub_with(signals, queue_messages=100, queue_bytes=10_000)
    ws = object()
    engine.subscribe(ws, "Doc", {})
    for _ in range(1000):  # e.g. token refreshes answered with token_refreshed, never read
        engine.send_direct(ws, b'{"_control":"token_refreshed","expires_at":1}')
        if signals.closed:
            break
    assert signals.closed == [(4409, "too slow: does not read the messages it asks for")]
    assert ws not in engine.connections


async def test_members_of_one_view_catching_up_together_share_each_encoding() -> None:
    signals = Signals()
    hub = hub_with(signals)
    for i in range(200):
        hub.publish_nowait(Change("Doc", "I", "", {"_id": f"d{i}", "i": i}))
    first = oldest(hub)
    before = hub.stats.encodings
    sockets = [object() for _ in range(50)]
    for ws in sockets:  # 50 subscribers of one view resume from the same position
        hub.subscribe(ws, "Doc", {"from_seq": first}, None)
    for _ in range(10_000):  # let the replay tasks run (no transport takes the queues: they stay queued)
        if all(not hub.connections[ws].replaying for ws in sockets):
            break
        await asyncio.sleep(0)
    assert all(len(hub.connections[ws].queue) == 200 for ws in sockets)
    assert hub.stats.encodings - before == 200  # once per change, not once per change and subscriber
    assert [orjson.loads(o.data)["message"]["i"] for o in hub.connections[sockets[-1]].queue] == list(range(200))


async def test_caller_chosen_seqs_out_of_order_reach_lagging_subscribers_too() -> None:
    """The original API lets callers choose seqs; one that is not after the last is journaled after it, so
    a subscriber that lagged and goes on from the journal still gets it, in publish order."""
    class Small(Broadcaster):
        max_queue_messages = 3
        got: ClassVar[list[str]] = []

        @classmethod
        async def send_message_async(cls, websocket: Any, message: str) -> None:
            cls.got.append(json.loads(message)["seq"])

    Small.got = []
    await Small.subscribe("slow", "Doc")
    seqs = ["0005", "0006", "0003", "0007", "0004", "0008"]  # 0003 and 0004 arrive out of order
    for seq in seqs:  # no await in between: the queue (3) overflows, the subscriber goes on from the journal
        Small.publish("Doc", "I", {"_id": seq}, seq=seq)
    assert Small.hub().stats.lags >= 1, "the queue never overflowed: the test proves nothing"
    assert await Small.flush()
    assert Small.got == seqs  # every change, once, in publish order (before: 0004 was lost)


# -- what a review found ----------------------------------------------------------------------------------


async def test_a_refused_subscription_leaves_no_view_behind() -> None:
    hub = Hub()
    for i in range(50):  # each refused after its scope compiled (the epoch is not a string)
        with pytest.raises(SubscriptionError):
            hub.subscribe(object(), "Doc", {"data_scope": [{"fn": "n", "op": "==", "val": i}], "epoch": 5}, None)
    assert hub.view_count() == 0
    hub.publish_nowait(Change("Doc", "I", "", {"_id": "d", "n": 1}))
    assert hub.stats.encodings == 0


async def test_replay_encodings_are_dropped_once_the_view_is_live_and_bounded_by_bytes() -> None:
    signals = Signals()
    hub = hub_with(signals, queue_bytes=64 * 1024, queue_messages=10_000)
    for i in range(100):
        hub.publish_nowait(Change("Doc", "I", "", {"_id": f"d{i}", "pad": "x" * 2000}))
    ws = object()
    hub.subscribe(ws, "Doc", {"from_seq": oldest(hub)}, None)
    conn = hub.connections[ws]
    view = conn.members["Doc"].view
    for _ in range(200):  # the transport takes what is queued until the member is live
        await signals.next_ready()
        assert view.replay_cache_bytes <= 64 * 1024 + 4096
        conn.take()
        conn.scheduled = False
        if not conn.replaying:
            break
    assert not conn.replaying and view.replay_cache == {} and view.replay_cache_bytes == 0


async def test_a_position_of_another_epoch_is_checked_once_not_at_every_later_lag() -> None:
    signals = Signals()
    hub = hub_with(signals, queue_messages=3)
    first = hub.publish_nowait(Change("A", "I", "", {"_id": "x0"}))
    ws = object()
    hub.subscribe(ws, "A", {"after_seq": first, "epoch": "0000000000000-deadbeef"}, None, control=True)
    await signals.next_ready()
    conn = hub.connections[ws]
    assert [orjson.loads(o.data)["_control"] for o in conn.take()] == ["history_gone"]
    conn.scheduled = False
    seqs = [hub.publish_nowait(Change("A", "I", "", {"_id": f"x{i}"})) for i in range(1, 8)]  # it lags
    got: list[Any] = []
    for _ in range(20):
        got += [orjson.loads(o.data) for o in conn.take()]
        conn.scheduled = False
        if not conn.replaying and not conn.queue:
            break
        await signals.next_ready()
    assert [m["seq"] for m in got if "doc_class" in m] == seqs  # from the journal: nothing lost
    assert "history_gone" not in [m.get("_control") for m in got]


async def test_a_published_object_is_journaled_as_it_was_when_published() -> None:
    class Small(Broadcaster):
        max_queue_messages = 1
        got: ClassVar[list[str]] = []

        @classmethod
        async def send_message_async(cls, websocket: Any, message: str) -> None:
            cls.got.append(json.loads(message)["message"]["status"])

    class Mutable:
        def __init__(self) -> None:
            self.status = "new"

        def check_scope(self, data_scope: Any) -> None:
            pass

        def get_display_data(self, catalog: Any = None, show_hidden: bool = False, **_: Any) -> dict[str, Any]:
            return {"_id": "m", "status": self.status}

        def check_acl(self, acl: Any, act: str = "read", doc: Any = None, raise_error: bool = True) -> bool:
            return True

    Small.got = []
    await Small.subscribe("w", "Mutable")
    doc = Mutable()
    for status in ("new", "paid", "shipped"):  # the same object, changed and published again
        doc.status = status
        await Small.document_sent_async(doc, "U", "")
    assert Small.hub().stats.lags >= 1, "the queue never overflowed: the test proves nothing"
    assert await Small.flush()
    assert Small.got == ["new", "paid", "shipped"]


async def test_without_a_schema_a_scope_needs_permission_to_see_hidden_fields() -> None:
    hub = Hub()
    with pytest.raises(HiddenFieldError, match="no schema is known"):
        hub.subscribe(object(), "Free", {"data_scope": [{"fn": "margin", "op": "==", "val": 0.42}]}, None,
                      hidden_allowed=False)
    hub.subscribe(object(), "Free", {}, None, hidden_allowed=False)  # no scope: nothing to ask
