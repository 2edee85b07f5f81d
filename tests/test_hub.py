"""The Hub (``xia_broadcast.hub``): what it tells its transport, the document hooks and schemas it is built
with, the one place a backend's synchronous capability is checked, and what a refused subscription leaves
(nothing). No sockets."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from helpers import Signals
from xia_broadcast.core.change import Change
from xia_broadcast.core.schema import DocSchema
from xia_broadcast.errors import HiddenFieldError, SubscriptionError
from xia_broadcast.fanout import Connection, DocumentHooks
from xia_broadcast.hub import Hub, HubSettings
from xia_broadcast.journal.redis import RedisBackend
from xia_broadcast.transport import NoTransport


class Calls(NoTransport[Any]):
    """A transport recording every call in order; writes during a fan-out when ``direct``."""

    def __init__(self, direct: bool = False) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.direct = direct

    def writable(self, conn: Connection[Any]) -> None:
        self.calls.append(("writable", conn.websocket, len(conn.queue)))

    def close(self, conn: Connection[Any], code: int, reason: str) -> None:
        self.calls.append(("close", conn.websocket, code))

    def fanout_begins(self) -> bool:
        self.calls.append(("begins",))
        return self.direct

    def write_during_fanout(self, conn: Connection[Any]) -> bool:
        self.calls.append(("direct", conn.websocket))
        conn.take()
        conn.scheduled = False
        return True

    def fanout_ended(self, queued: int) -> None:
        self.calls.append(("ended", queued))


def doc(i: int, **fields: Any) -> Change:
    return Change("Doc", "I", "", {"_id": f"d{i}", "n": i, **fields})


def test_a_connection_is_handed_to_the_transport_once_when_it_goes_from_idle_to_having_work() -> None:
    calls = Calls()
    hub: Hub[str] = Hub(transport=calls)
    hub.subscribe("a", "Doc", {})
    hub.subscribe("b", "Doc", {"data_scope": [{"fn": "n", "op": ">", "val": 0}]})
    hub.publish_nowait(doc(0))  # reaches a only
    hub.publish_nowait(doc(1))  # a is still scheduled: not handed again; b is
    assert calls.calls == [("begins",), ("ended", 1), ("writable", "a", 1),
                           ("begins",), ("ended", 2), ("writable", "b", 1)]
    hub.connections["a"].take()
    hub.connections["a"].scheduled = False  # the transport wrote it
    hub.publish_nowait(doc(2))
    assert calls.calls[-3:] == [("begins",), ("ended", 2), ("writable", "a", 1)]


def test_a_fanout_the_transport_writes_directly_does_not_call_writable_and_counts_what_it_queued() -> None:
    calls = Calls(direct=True)
    hub: Hub[str] = Hub(transport=calls)
    for ws in "abc":
        hub.subscribe(ws, "Doc", {})
    hub.publish_nowait(doc(0))
    assert calls.calls == [("begins",), ("direct", "a"), ("direct", "b"), ("direct", "c"), ("ended", 3)]


def test_a_change_of_a_class_nobody_reads_tells_the_transport_nothing() -> None:
    calls = Calls()
    hub: Hub[str] = Hub(transport=calls)
    hub.subscribe("a", "Other", {})
    hub.publish_nowait(doc(0))
    assert calls.calls == []


def test_a_connection_that_does_not_read_what_it_provokes_is_closed_through_the_transport_and_forgotten() -> None:
    calls = Calls()
    hub: Hub[str] = Hub(settings=HubSettings(queue_messages=4), transport=calls)
    hub.subscribe("a", "Doc", {})
    for _ in range(20):  # e.g. token refreshes answered, never read
        hub.send_direct("a", b"{}")
    assert calls.calls == [("writable", "a", 1), ("close", "a", 4409)]  # nothing for it once cut off
    assert "a" not in hub.connections


def test_document_hooks_given_at_construction_serve_objects_without_data_and_for_every_change_when_asked() -> None:
    seen: list[str] = []

    def check_acl(document: Any, acl: Any) -> bool:
        seen.append("acl")
        return True

    def get_body(document: Any, scope: Any, catalog: Any, show_hidden: bool) -> dict[str, Any]:
        seen.append("body")
        return {"_id": document.get_display_data()["_id"], "via": "hooks"}

    signals = Signals(take=True)
    hub: Hub[str] = Hub(transport=signals, hooks=DocumentHooks(check_acl, get_body))
    hub.subscribe("a", "Doc", {})
    hub.publish_nowait(doc(0))  # data: the compiled view, no hook
    assert seen == [] and orjson.loads(signals.taken[-1])["message"] == {"_id": "d0", "n": 0}

    every = Signals(take=True)
    hub2: Hub[str] = Hub(transport=every, hooks=DocumentHooks(check_acl, get_body, for_every_change=True))
    hub2.subscribe("a", "Doc", {})
    hub2.publish_nowait(doc(1))
    assert seen == ["acl", "body"] and orjson.loads(every.taken[-1])["message"] == {"_id": "d1", "via": "hooks"}


def test_schemas_are_kept_by_reference_so_a_class_declared_later_keeps_its_hidden_fields_hidden() -> None:
    schemas: dict[str, DocSchema] = {}
    signals = Signals(take=True)
    hub: Hub[str] = Hub(transport=signals, schemas=schemas)
    schemas["Doc"] = DocSchema.from_dict({"fields": {"n": "int", "secret": {"type": "str", "hidden": True}}}, "Doc")
    hub.subscribe("a", "Doc", {})
    hub.publish_nowait(doc(0, secret="s"))
    assert orjson.loads(signals.taken[-1])["message"] == {"_id": "d0", "n": 0}


def test_the_synchronous_capability_is_the_backends_to_declare() -> None:
    pytest.importorskip("redis")
    hub: Hub[str] = Hub(RedisBackend("redis://127.0.0.1:1/0"))  # never started: nothing is connected
    assert not hub.backend.synchronous and not hub.ready
    with pytest.raises(RuntimeError, match=r"await hub\.publish"):
        hub.publish_nowait(doc(0))
    with pytest.raises(RuntimeError, match=r"await hub\.watch"):
        hub.subscribe("a", "Doc", {})
    memory: Hub[str] = Hub()
    assert memory.backend.synchronous and memory.ready  # usable at once, without a loop
    assert memory.publish_nowait(doc(0)) == memory.head("Doc")


def test_direct_messages_a_client_provokes_without_reading_are_bounded() -> None:
    signals = Signals()
    engine: Hub[object] = Hub(settings=HubSettings(queue_messages=100, queue_bytes=10_000), transport=signals)
    ws = object()
    engine.subscribe(ws, "Doc", {})
    for _ in range(1000):  # e.g. token refreshes answered with token_refreshed, never read
        engine.send_direct(ws, b'{"_control":"token_refreshed","expires_at":1}')
        if signals.closed:
            break
    assert signals.closed == [(4409, "too slow: does not read the messages it asks for")]
    assert ws not in engine.connections


# -- subscribing --------------------------------------------------------------------------------------------


async def test_a_refused_subscription_leaves_no_view_behind() -> None:
    hub: Hub[object] = Hub()
    for i in range(50):  # each refused after its scope compiled (the epoch is not a string)
        with pytest.raises(SubscriptionError):
            hub.subscribe(object(), "Doc", {"data_scope": [{"fn": "n", "op": "==", "val": i}], "epoch": 5}, None)
    assert hub.view_count() == 0
    hub.publish_nowait(Change("Doc", "I", "", {"_id": "d", "n": 1}))
    assert hub.stats.encodings == 0


async def test_without_a_schema_a_scope_needs_permission_to_see_hidden_fields() -> None:
    hub: Hub[object] = Hub()
    with pytest.raises(HiddenFieldError, match="no schema is known"):
        hub.subscribe(object(), "Free", {"data_scope": [{"fn": "margin", "op": "==", "val": 0.42}]}, None,
                      hidden_allowed=False)
    hub.subscribe(object(), "Free", {}, None, hidden_allowed=False)  # no scope: nothing to ask
