"""The original ``Broadcaster`` API, kept exactly, and each fault of the original not reproduced.

Transports are the documented hooks (``send_message_async``, ``subscriber_is_connected``, ``close_async``)
overridden on a subclass, as a framework integration does; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import typing
from typing import Any, ClassVar

import pytest

import xia_broadcast
from helpers import Recorder, Socket, fresh, until
from xia_broadcast import Broadcaster, DocSchema, Document, DocumentError, EmbeddedDocument, field
from xia_broadcast.broadcast import Broadcaster as BroadcasterFromModule
from xia_broadcast.errors import (
    AuthorizationError,
    HiddenFieldError,
    InvalidAclError,
    InvalidCatalogError,
    InvalidScopeError,
    OutOfScopeError,
    SubscriptionError,
)
from xia_broadcast.server.demo import ORDER_SCHEMA

# -- documents -----------------------------------------------------------------------------------------


class Line(EmbeddedDocument):
    sku: str = ""
    cost: float = field(0.0, hidden=True)


class Order(Document):
    privilege_keys: ClassVar[dict[str, list[str]]] = {"customer": ["customer"]}

    order_id: str = field(key=True)
    customer: str = ""
    total: Any = 0.0
    margin: float = field(0.0, hidden=True)
    lines: list[Line] = []


def order_document(i: int, **kw: Any) -> Order:
    """Order document number ``i`` (the pydantic ``Order`` above, not the test servers' Order schema)."""
    return Order(**{"_id": f"o{i}", "order_id": f"A{i}", "customer": "c1", "total": float(i), **kw})


# -- the API, exactly ----------------------------------------------------------------------------------

P = inspect.Parameter
PK, KW = P.POSITIONAL_OR_KEYWORD, P.VAR_KEYWORD

API: dict[str, tuple[bool, list[tuple[str, Any, Any]]]] = {
    # name: (async, [(parameter, kind, default)])
    "accept": (True, [("websocket", PK, P.empty)]),
    "subscribe": (True, [
        ("websocket", PK, P.empty), ("class_name", PK, P.empty), ("data_scope", PK, None),
        ("catalog", PK, None), ("show_hidden", PK, False), ("start_seq", PK, ""), ("acl", PK, None),
        ("kwargs", KW, P.empty),
    ]),
    "disconnect": (False, [("websocket", PK, P.empty)]),
    "subscriber_is_connected": (False, [("websocket", PK, P.empty)]),
    "check_subscriber_acl": (False, [("doc", PK, P.empty), ("acl", PK, P.empty)]),
    "get_message_body": (False, [
        ("doc", PK, P.empty), ("data_scope", PK, P.empty), ("catalog", PK, P.empty), ("show_hidden", PK, P.empty),
    ]),
    "send_message_async": (True, [("websocket", PK, P.empty), ("message", PK, P.empty)]),
    "send_json_async": (True, [("websocket", PK, P.empty), ("content", PK, P.empty)]),
    "document_sent_async": (True, [("doc", PK, P.empty), ("op", PK, P.empty), ("seq", PK, P.empty)]),
}


def test_import_paths() -> None:
    assert xia_broadcast.Broadcaster is BroadcasterFromModule


@pytest.mark.parametrize("name", sorted(API))
def test_every_original_member_keeps_its_signature_kind_and_asyncness(name: str) -> None:
    is_async, params = API[name]
    assert isinstance(inspect.getattr_static(Broadcaster, name), classmethod), f"{name} is a classmethod"
    member = getattr(Broadcaster, name)
    assert inspect.iscoroutinefunction(member) is is_async
    sig = inspect.signature(member)
    assert [(p.name, p.kind, p.default) for p in sig.parameters.values()] == params


def test_annotations_of_the_original() -> None:
    hints = typing.get_type_hints(Broadcaster.send_message_async)
    assert hints["message"] is str
    assert typing.get_type_hints(Broadcaster.document_sent_async)["op"] is str
    assert typing.get_type_hints(Broadcaster.document_sent_async)["seq"] is str
    content = typing.get_type_hints(Broadcaster.send_json_async)["content"]
    assert content is dict or typing.get_origin(content) is dict


def test_init_takes_no_arguments_and_active_connections_is_a_class_dict() -> None:
    assert list(inspect.signature(Broadcaster.__init__).parameters) == ["self"]
    Broadcaster()
    assert isinstance(inspect.getattr_static(Broadcaster, "active_connections"), dict)


async def test_accept_and_subscriber_is_connected_defaults() -> None:
    assert await Broadcaster.accept(Socket("a")) is None
    assert Broadcaster.subscriber_is_connected(Socket("a")) is True


async def test_subscribe_returns_the_subscription_params_and_fills_the_library_by_class() -> None:
    b = fresh()
    w1, w2 = Socket("1"), Socket("2")
    p1 = await b.subscribe(w1, "Order")
    assert p1 == {"data_scope": None, "catalog": None, "show_hidden": False, "start_seq": "", "acl": None}
    scope = [{"fn": "total", "op": ">", "val": 1}]
    acl = {"content": [{"obj": "Order/*", "act": "read"}]}
    p2 = await b.subscribe(w2, "Order", scope, {"total": None}, True, "0005", acl, app="x")
    assert p2 == {"data_scope": scope, "catalog": {"total": None}, "show_hidden": True, "start_seq": "0005",
                  "acl": acl, "app": "x"}
    p3 = await b.subscribe(w2, "Note")
    assert b.active_connections == {"Order": {w1: p1, w2: p2}, "Note": {w2: p3}}
    b.disconnect(w2)
    assert b.active_connections == {"Order": {w1: p1}}
    b.disconnect(w2)  # disconnecting twice is harmless
    assert b.active_connections == {"Order": {w1: p1}}


@pytest.mark.parametrize(("again", "expected"), [
    ({"catalog": {"customer": None}}, {"_id": "o1", "customer": "c1"}),  # another view
    ({"catalog": {"total": None}}, {"_id": "o1", "total": 1.0}),  # the same view: it must stay
    ({"catalog": {"total": None}, "start_seq": "0001"}, {"_id": "o1", "total": 1.0}),  # the same view
])
async def test_resubscribing_replaces_the_subscription_of_that_class(
        again: dict[str, Any], expected: dict[str, Any]) -> None:
    b = fresh()
    ws = Socket("w")
    await b.subscribe(ws, "Order", catalog={"total": None})
    await b.subscribe(ws, "Order", **again)
    assert b.hub().view_count("Order") == 1
    await b.document_sent_async(order_document(1), "I", "0001")
    assert await b.flush()
    assert [m["message"] for m in b.to(ws)] == [expected]  # once, as the last subscription asked


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"data_scope": [{"fn": "total", "op": "~", "val": 1}]}, InvalidScopeError),
        ({"data_scope": [{"fn": "colour", "op": "==", "val": 1}], "strict": True}, InvalidScopeError),
        ({"catalog": {"colour": None}, "strict": True}, InvalidCatalogError),
        ({"acl": "everything"}, InvalidAclError),
        ({"show_hidden": "yes", "hidden_allowed": False}, HiddenFieldError),
        ({"start_seq": 5}, SubscriptionError),
        ({"after_seq": "1", "from_seq": "1"}, SubscriptionError),
    ],
)
async def test_invalid_subscription_is_refused_at_subscribe_and_keeps_the_previous_one(
    kwargs: dict[str, Any], error: type[Exception]
) -> None:
    b = fresh()
    b.register_class(Order)
    ws = Socket("w")
    await b.subscribe(ws, "Order", catalog={"total": None})
    with pytest.raises(error) as info:
        await b.subscribe(ws, "Order", **kwargs)
    assert info.value.class_name == "Order"  # type: ignore[attr-defined]
    assert b.active_connections["Order"][ws]["catalog"] == {"total": None}
    await b.document_sent_async(order_document(1), "I", "0001")
    assert await b.flush()
    assert [m["message"] for m in b.to(ws)] == [{"_id": "o1", "total": 1.0}]


async def test_each_subclass_has_its_own_connection_library_and_fanout() -> None:
    a, b = fresh(), fresh()
    wa, wb = Socket("a"), Socket("b")
    await a.subscribe(wa, "Order")
    await b.subscribe(wb, "Order")
    assert a.active_connections == {"Order": {wa: a.active_connections["Order"][wa]}}
    assert wa not in b.active_connections["Order"]
    assert "Order" not in Broadcaster.active_connections or wa not in Broadcaster.active_connections["Order"]
    await a.document_sent_async(order_document(1), "I", "0001")
    assert await a.flush() and await b.flush()
    assert len(a.to(wa)) == 1
    assert b.sent == []


async def test_a_subclass_receives_every_message_through_its_own_send_message_async() -> None:
    parent = fresh()

    class Child(parent):  # type: ignore[valid-type,misc]
        mine: ClassVar[list[tuple[Any, str]]] = []

        @classmethod
        async def send_message_async(cls, websocket: Any, message: str) -> None:
            cls.mine.append((websocket, message))

    sockets = [Socket(str(i)) for i in range(5)]
    for ws in sockets:
        await Child.subscribe(ws, "Order")
    for i in range(3):
        await Child.document_sent_async(order_document(i), "I", f"000{i}")
    assert await Child.flush()
    assert parent.sent == []
    assert len(Child.mine) == 15
    for ws in sockets:
        assert [json.loads(m)["seq"] for w, m in Child.mine if w is ws] == ["0000", "0001", "0002"]


async def test_the_document_message_envelope() -> None:
    b = fresh()
    ws = Socket("w")
    await b.subscribe(ws, "Order", catalog={"total": None, "lines": None})
    await b.document_sent_async(order_document(7, lines=[Line(sku="x", cost=1.0)]), "U", "0042")
    assert await b.flush()
    (sent_ws, raw), = b.sent
    assert sent_ws is ws
    assert isinstance(raw, str)
    assert json.loads(raw) == {
        "doc_class": "Order",
        "op": "U",
        "seq": "0042",
        "message": {"_id": "o7", "total": 7.0, "lines": [{"sku": "x"}]},
    }


async def test_send_json_async_serialises_through_send_message_async() -> None:
    b = fresh()
    ws = Socket("w")
    await b.send_json_async(ws, {"a": [1, "é"], "b": None})
    assert b.sent == [(ws, b.sent[0][1])]
    assert json.loads(b.sent[0][1]) == {"a": [1, "é"], "b": None}


def test_check_subscriber_acl_and_get_message_body() -> None:
    doc = order_document(1, margin=0.5)
    assert Broadcaster.check_subscriber_acl(doc, None) is True
    assert Broadcaster.check_subscriber_acl(doc, {"content": [{"obj": "Order/key/A1", "act": "read"}]}) is True
    assert Broadcaster.check_subscriber_acl(doc, {"content": [{"obj": "Order/key/A2", "act": "read"}]}) is False
    assert Broadcaster.check_subscriber_acl(doc, {"content": []}) is False
    assert Broadcaster.get_message_body(doc, [{"fn": "total", "op": ">", "val": 5}], None, False) is None
    body = Broadcaster.get_message_body(doc, None, {"total": None, "margin": None}, False)
    assert body == {"_id": "o1", "total": 1.0}
    assert Broadcaster.get_message_body(doc, [], {"margin": None}, True) == {"_id": "o1", "margin": 0.5}


# -- each fault of the original, not reproduced --------------------------------------------------------


async def test_a_later_start_seq_only_skips_changes_for_that_subscriber() -> None:
    b = fresh()
    late, w1, w2 = Socket("late"), Socket("1"), Socket("2")
    await b.subscribe(late, "Order", start_seq="0005")  # first in the library, as in the original bug
    await b.subscribe(w1, "Order")
    await b.subscribe(w2, "Order", start_seq="0003")
    for i, seq in enumerate(["0003", "0004", "0005", "0006"]):
        await b.document_sent_async(order_document(i), "I", seq)
    assert await b.flush()
    assert [m["seq"] for m in b.to(w1)] == ["0003", "0004", "0005", "0006"]
    assert [m["seq"] for m in b.to(w2)] == ["0003", "0004", "0005", "0006"]
    assert [m["seq"] for m in b.to(late)] == ["0005", "0006"]


async def test_a_closed_socket_is_never_written_to_and_is_removed() -> None:
    closed: set[Any] = set()
    b = fresh(subscriber_is_connected=classmethod(lambda cls, ws: ws not in closed))
    gone, alive = Socket("gone"), Socket("alive")
    await b.subscribe(gone, "Order")
    await b.subscribe(alive, "Order")
    closed.add(gone)
    await b.document_sent_async(order_document(1), "I", "0001")
    await b.document_sent_async(order_document(2), "I", "0002")
    assert await b.flush()
    assert b.to(gone) == []
    assert [m["seq"] for m in b.to(alive)] == ["0001", "0002"]
    assert gone not in b.active_connections["Order"]
    assert alive in b.active_connections["Order"]


async def test_a_failing_send_for_one_websocket_does_not_stop_the_others() -> None:
    class Flaky(Recorder):
        sent: ClassVar[list[tuple[Any, str]]] = []

        @classmethod
        async def send_message_async(cls, websocket: Any, message: str) -> None:
            if websocket.name == "broken":
                raise ConnectionResetError("peer went away")
            cls.sent.append((websocket, message))

    broken, w1, w2 = Socket("broken"), Socket("1"), Socket("2")
    await Flaky.subscribe(w1, "Order")
    await Flaky.subscribe(broken, "Order")
    await Flaky.subscribe(w2, "Order")
    for i in range(3):
        await Flaky.document_sent_async(order_document(i), "I", f"000{i}")
        await asyncio.sleep(0)
    assert await Flaky.flush()
    assert [m["seq"] for m in Flaky.to(w1)] == ["0000", "0001", "0002"]
    assert [m["seq"] for m in Flaky.to(w2)] == ["0000", "0001", "0002"]
    assert broken not in Flaky.active_connections["Order"]


class Duck:
    """A duck-typed document with the original protocol; ``boom_for`` makes one catalog raise."""

    def __init__(self, _id: str, total: Any, owner: str = "c1", boom_for: str | None = None,
                 body: dict[str, Any] | None = None) -> None:
        self._id, self.total, self.owner, self.boom_for, self.body = _id, total, owner, boom_for, body

    def check_scope(self, data_scope: list[dict[str, Any]] | None) -> None:
        for cond in data_scope or []:
            if cond["op"] == ">" and not (isinstance(self.total, (int, float)) and self.total > cond["val"]):
                raise OutOfScopeError(self._id)

    def get_display_data(self, catalog: dict[str, Any] | None = None, show_hidden: bool = False) -> dict[str, Any]:
        if self.boom_for is not None and catalog and self.boom_for in catalog:
            raise RuntimeError("cannot display this field")
        if self.body is not None:
            return self.body
        data = {"_id": self._id, "total": self.total, "owner": self.owner}
        return {k: v for k, v in data.items() if not catalog or k in catalog or k == "_id"}

    def check_acl(self, acl: Any, act: str = "read", doc: Any = None, raise_error: bool = True) -> bool:
        if acl is None or any(i["obj"] in ("Duck/*", f"Duck/owner/{self.owner}") for i in acl["content"]):
            return True
        if raise_error:
            raise AuthorizationError(self._id)
        return False


async def test_one_view_failing_on_a_document_does_not_stop_the_other_views() -> None:
    b = fresh()
    bad, all_fields, totals = Socket("bad"), Socket("all"), Socket("totals")
    await b.subscribe(bad, "Duck", catalog={"owner": None})
    await b.subscribe(all_fields, "Duck")
    await b.subscribe(totals, "Duck", catalog={"total": None})
    await b.document_sent_async(Duck("d1", 5, boom_for="owner"), "I", "0001")
    await b.document_sent_async(Duck("d2", 6), "I", "0002")
    assert await b.flush()
    assert [m["message"] for m in b.to(all_fields)] == [
        {"_id": "d1", "total": 5, "owner": "c1"}, {"_id": "d2", "total": 6, "owner": "c1"}]
    assert [m["message"] for m in b.to(totals)] == [{"_id": "d1", "total": 5}, {"_id": "d2", "total": 6}]
    assert [m["message"] for m in b.to(bad)] == [{"_id": "d2", "owner": "c1"}]  # the next document goes on


async def test_a_slow_subscriber_delays_no_one_and_publishing_does_not_wait_for_it() -> None:
    release = asyncio.Event()

    class Slow(Recorder):
        sent: ClassVar[list[tuple[Any, str]]] = []

        @classmethod
        async def send_message_async(cls, websocket: Any, message: str) -> None:
            if websocket.name == "slow":
                await release.wait()
            cls.sent.append((websocket, message))

    slow = Socket("slow")
    fast = [Socket(str(i)) for i in range(5)]
    await Slow.subscribe(slow, "Order")  # first, as in the original where sends were awaited in turn
    for ws in fast:
        await Slow.subscribe(ws, "Order")
    for i in range(3):
        await asyncio.wait_for(Slow.document_sent_async(order_document(i), "I", f"000{i}"), 0.5)
    await until(lambda: all(len(Slow.to(ws)) == 3 for ws in fast), timeout=2.0, what="3 messages to each fast one")
    assert Slow.to(slow) == []
    release.set()
    await until(lambda: len(Slow.to(slow)) == 3, what="3 messages to the slow one")
    assert [m["seq"] for m in Slow.to(slow)] == ["0000", "0001", "0002"]


async def test_subscribe_and_disconnect_during_fanout_are_safe() -> None:
    newcomer, victim = Socket("newcomer"), Socket("victim")

    class Churn(Recorder):
        sent: ClassVar[list[tuple[Any, str]]] = []

        @classmethod
        async def send_message_async(cls, websocket: Any, message: str) -> None:
            cls.sent.append((websocket, message))
            if websocket.name == "0":  # while the change is still going out to others
                cls.disconnect(victim)
                await cls.subscribe(newcomer, "Order")

    class Meddling(Duck):
        def check_acl(self, acl: Any, act: str = "read", doc: Any = None, raise_error: bool = True) -> bool:
            Churn.disconnect(Socket("never subscribed"))
            Churn.disconnect(doomed)  # a subscriber of another view leaves in the middle of the fan-out
            return super().check_acl(acl, act, doc, raise_error)

    doomed = Socket("doomed")
    sockets = [Socket(str(i)) for i in range(4)]
    await Churn.subscribe(doomed, "Meddling", catalog={"owner": None})
    await Churn.subscribe(victim, "Order", catalog={"total": None})
    for i, ws in enumerate(sockets):
        await Churn.subscribe(ws, "Order", catalog={"total": None} if i % 2 else None)
        await Churn.subscribe(ws, "Meddling", catalog={"total": None} if i % 2 else None)
    await Churn.document_sent_async(order_document(1), "I", "0001")
    await Churn.document_sent_async(Meddling("m1", 3), "I", "0002")
    assert await Churn.flush()
    await Churn.document_sent_async(order_document(2), "I", "0003")
    assert await Churn.flush()
    for ws in sockets:
        assert [m["seq"] for m in Churn.to(ws)] == ["0001", "0002", "0003"]
    assert [m["seq"] for m in Churn.to(newcomer)] == ["0003"]
    assert Churn.to(doomed) == []
    assert victim not in Churn.active_connections["Order"]
    assert doomed not in Churn.active_connections.get("Meddling", {})


async def test_an_empty_projection_is_still_sent() -> None:
    b = fresh()
    ws = Socket("w")
    await b.subscribe(ws, "Duck")
    await b.document_sent_async(Duck("d1", 1, body={}), "U", "0001")
    assert await b.flush()
    assert b.to(ws) == [{"doc_class": "Duck", "op": "U", "seq": "0001", "message": {}}]


async def test_a_type_mismatch_in_a_scope_is_out_of_scope() -> None:
    b = fresh()
    b.register_class(Order)
    numbers, strings, negated = Socket("numbers"), Socket("strings"), Socket("negated")
    await b.subscribe(numbers, "Order", [{"fn": "total", "op": ">", "val": 100}])
    await b.subscribe(strings, "Order", [{"fn": "total", "op": "==", "val": "500"}])
    await b.subscribe(negated, "Order", [{"fn": "total", "op": "!=", "val": 7}])
    await b.document_sent_async(order_document(1, total="500"), "I", "0001")
    await b.document_sent_async(order_document(2, total=500), "I", "0002")
    assert await b.flush()
    assert [m["message"]["_id"] for m in b.to(numbers)] == ["o2"]
    assert [m["message"]["_id"] for m in b.to(strings)] == ["o1"]
    assert [m["message"]["_id"] for m in b.to(negated)] == ["o2"]  # "500" != 7 is a mismatch: out


async def test_duck_typed_documents_follow_their_own_scope_acl_and_display() -> None:
    b = fresh()
    anyone, big, owner_c2, nobody = Socket("anyone"), Socket("big"), Socket("c2"), Socket("nobody")
    await b.subscribe(anyone, "Duck")
    await b.subscribe(big, "Duck", [{"fn": "total", "op": ">", "val": 10}], {"total": None})
    await b.subscribe(owner_c2, "Duck", acl={"content": [{"obj": "Duck/owner/c2", "act": "read"}]})
    await b.subscribe(nobody, "Duck", acl={"content": []})
    await b.document_sent_async(Duck("d1", 5, owner="c1"), "I", "0001")
    await b.document_sent_async(Duck("d2", 50, owner="c2"), "I", "0002")
    await b.document_sent_async(Duck("d3", "99", owner="c2"), "D", "0003")
    assert await b.flush()
    assert [m["message"]["_id"] for m in b.to(anyone)] == ["d1", "d2", "d3"]
    assert [m["message"] for m in b.to(big)] == [{"_id": "d2", "total": 50}]
    assert [(m["op"], m["message"]["_id"]) for m in b.to(owner_c2)] == [("I", "d2"), ("D", "d3")]
    assert b.to(nobody) == []


async def test_a_delete_still_passes_the_acl_check() -> None:
    b = fresh()
    mine, other = Socket("mine"), Socket("other")
    await b.subscribe(mine, "Order", acl={"content": [{"obj": "Order/customer/c1", "act": "read"}]})
    await b.subscribe(other, "Order", acl={"content": [{"obj": "Order/customer/c2", "act": "read"}]})
    await b.document_sent_async(order_document(1, customer="c1"), "D", "0001")
    assert await b.flush()
    assert [(m["op"], m["message"]["_id"]) for m in b.to(mine)] == [("D", "o1")]
    assert b.to(other) == []


# -- bounded queues ------------------------------------------------------------------------------------


def bounded(release: asyncio.Event, closes: list[tuple[Any, int, str]], journal: int) -> type[Recorder]:
    class Bounded(Recorder):
        sent: ClassVar[list[tuple[Any, str]]] = []
        max_queue_messages = 3
        journal_max_count = journal

        @classmethod
        async def send_message_async(cls, websocket: Any, message: str) -> None:
            if websocket.name == "slow":
                await release.wait()
            cls.sent.append((websocket, message))

        @classmethod
        async def close_async(cls, websocket: Any, code: int, reason: str) -> None:
            closes.append((websocket, code, reason))

    return Bounded


async def overflow(b: type[Recorder], n: int) -> tuple[Socket, list[Socket], list[str]]:
    """A blocked subscriber and three fast ones; ``n`` changes published, the fast ones keeping up."""
    slow = Socket("slow")
    fast = [Socket(str(i)) for i in range(3)]
    await b.subscribe(slow, "Order")
    for ws in fast:
        await b.subscribe(ws, "Order")
    seqs = [f"{i:04d}" for i in range(n)]
    for i, seq in enumerate(seqs):
        await b.document_sent_async(order_document(i), "I", seq)
        await until(lambda k=i + 1: all(len(b.to(ws)) == k for ws in fast), what=f"{i + 1} messages to each fast one")
    for ws in fast:
        assert [m["seq"] for m in b.to(ws)] == seqs
    return slow, fast, seqs


async def test_queue_overflow_beyond_the_journal_cuts_off_only_the_slow_subscriber_with_4409() -> None:
    closes: list[tuple[Any, int, str]]
    release, closes = asyncio.Event(), []
    b = bounded(release, closes, journal=2)  # the journal cannot make up for what the slow one missed
    slow, fast, seqs = await overflow(b, 12)
    release.set()
    await until(lambda: bool(closes), what="the slow subscriber closed")
    assert [(ws, code) for ws, code, _ in closes] == [(slow, 4409)]
    assert "too slow" in closes[0][2]
    assert slow not in b.active_connections["Order"]
    got = [m["seq"] for m in b.to(slow)]
    assert got == seqs[: len(got)] and len(got) < len(seqs)  # what it got is in order, and it was told
    await b.document_sent_async(order_document(99), "I", "0099")
    assert await b.flush()
    for ws in fast:
        assert [m["seq"] for m in b.to(ws)] == [*seqs, "0099"]
        assert ws in b.active_connections["Order"]
    assert "0099" not in [m["seq"] for m in b.to(slow)]


async def test_queue_overflow_within_the_journal_loses_nothing() -> None:
    closes: list[tuple[Any, int, str]]
    release, closes = asyncio.Event(), []
    b = bounded(release, closes, journal=1000)
    slow, fast, seqs = await overflow(b, 12)
    assert len(b.to(slow)) < len(seqs)
    release.set()
    await b.document_sent_async(order_document(99), "I", "0099")
    assert await b.flush()
    assert [m["seq"] for m in b.to(slow)] == [*seqs, "0099"]  # no gap, no duplicate, in order
    for ws in fast:
        assert [m["seq"] for m in b.to(ws)] == [*seqs, "0099"]
    assert closes == []


# -- the previous state of a change is checked like the change itself ---------------------------------------


async def test_publish_refuses_a_previous_state_that_does_not_fit_the_schema() -> None:
    b = fresh()
    b.register_class(DocSchema.from_dict({"fields": {"x": "int", "pin": {"type": "str", "hidden": True}}}, "T"))
    ws = Socket("w")
    await b.subscribe(ws, "T", data_scope=[{"fn": "x", "op": "==", "val": 1}])
    with pytest.raises(DocumentError):
        b.publish("T", "D", {"_id": "1", "x": 2}, previous={"_id": "1", "x": 1, "undeclared": "secret"})
    assert await b.flush()
    assert b.to(ws) == []  # the undeclared field of the previous state reaches no one


async def test_publish_refuses_a_previous_state_of_another_document() -> None:
    b = fresh()
    b.register_class(DocSchema.from_dict({"fields": {"x": "int"}}, "T"))
    ws = Socket("w")
    await b.subscribe(ws, "T", data_scope=[{"fn": "x", "op": "==", "val": 1}])
    with pytest.raises(DocumentError):
        b.publish("T", "D", {"_id": "1", "x": 2}, previous={"_id": "2", "x": 1})
    assert await b.flush()
    assert b.to(ws) == []


# -- publishing: what is refused changes nothing, what is accepted is kept as it was -----------------------


async def test_publishing_from_another_thread_is_refused_before_anything_changes() -> None:
    b = fresh(ORDER_SCHEMA)
    ws = Socket("w")
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
    assert [m["seq"] for m in b.to(ws)] == [seq]


async def test_publish_refuses_ids_that_are_not_strings_or_integers_and_applies_nothing() -> None:
    b = fresh()
    for bad in ([1], {"a": 1}, "", True, None):
        with pytest.raises(ValueError):
            b.publish("Free", "I", {"_id": bad})
    assert await b.hub().backend.read("Free", None, inclusive=True, limit=1) == []


async def test_a_published_object_is_journaled_as_it_was_when_published() -> None:
    class Mutable:
        def __init__(self) -> None:
            self.status = "new"

        def check_scope(self, data_scope: Any) -> None:
            pass

        def get_display_data(self, catalog: Any = None, show_hidden: bool = False, **_: Any) -> dict[str, Any]:
            return {"_id": "m", "status": self.status}

        def check_acl(self, acl: Any, act: str = "read", doc: Any = None, raise_error: bool = True) -> bool:
            return True

    small = fresh(max_queue_messages=1)
    await small.subscribe("w", "Mutable")
    doc = Mutable()
    for status in ("new", "paid", "shipped"):  # the same object, changed and published again
        doc.status = status
        await small.document_sent_async(doc, "U", "")
    assert small.hub().stats.lags >= 1, "the queue never overflowed: the test proves nothing"
    assert await small.flush()
    assert [m["message"]["status"] for m in small.to("w")] == ["new", "paid", "shipped"]
