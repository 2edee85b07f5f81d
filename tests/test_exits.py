"""Scope exits and entries: updates that move documents across scope and ACL borders; deletes."""

from __future__ import annotations

from typing import Any

from helpers import EU, Recorder, Socket, fresh
from xia_broadcast import Broadcaster
from xia_broadcast.server.demo import ORDER_SCHEMA


def ops(b: type[Recorder], ws: str) -> list[tuple[str, Any]]:
    return [(m["op"], m["message"]) for m in b.to(ws)]


def bare_order(oid: str, **fields: Any) -> dict[str, Any]:
    """An Order of the demo's schema with only its ids and ``fields`` (not the fuller ``helpers.order``)."""
    return {"_id": oid, "order_id": oid, **fields}


ACME = {"content": [{"obj": "Order/customer/acme", "act": "read"}]}


async def test_leaving_the_scope_sends_x_and_entering_sends_u() -> None:
    b = fresh(ORDER_SCHEMA)
    await b.subscribe("eu", "Order", data_scope=EU, exits=True)
    await b.subscribe("original", "Order", data_scope=EU)
    b.publish("Order", "I", bare_order("1", region="US"))
    b.publish("Order", "U", bare_order("1", region="EU", amount=5.0))   # enters
    b.publish("Order", "U", bare_order("1", region="EU", amount=6.0))   # stays
    b.publish("Order", "U", bare_order("1", region="US", amount=6.0))   # leaves
    b.publish("Order", "U", bare_order("1", region="APAC"))             # still out: nothing
    await b.flush()
    assert ops(b, "eu") == [("U", bare_order("1", region="EU", amount=5.0)),
                            ("U", bare_order("1", region="EU", amount=6.0)), ("X", {"_id": "1"})]
    # a subscriber that did not ask for exits never receives an op it does not know
    assert ops(b, "original") == ops(b, "eu")[:2]


async def test_crossing_the_acl_border_is_an_exit_or_an_entry_too() -> None:
    b = fresh(ORDER_SCHEMA)
    await b.subscribe("acme", "Order", acl=ACME, exits=True)
    b.publish("Order", "I", bare_order("1", customer="acme"))
    b.publish("Order", "U", bare_order("1", customer="globex"))  # no longer readable: exit, _id only
    b.publish("Order", "U", bare_order("1", customer="globex", amount=1.0))  # never sees globex data
    b.publish("Order", "U", bare_order("1", customer="acme", amount=2.0))  # readable again: entry
    await b.flush()
    assert ops(b, "acme") == [("I", bare_order("1", customer="acme")), ("X", {"_id": "1"}),
                              ("U", bare_order("1", customer="acme", amount=2.0))]


async def test_deletes_reach_only_who_could_read_the_document() -> None:
    b = fresh(ORDER_SCHEMA)
    await b.subscribe("eu", "Order", data_scope=EU)
    await b.subscribe("acme", "Order", acl=ACME)
    b.publish("Order", "I", bare_order("1", region="EU", customer="globex"))
    b.publish("Order", "D", bare_order("1", region="EU", customer="globex"))
    b.publish("Order", "I", bare_order("2", region="US", customer="acme", margin=3.0))
    b.publish("Order", "D", bare_order("2", region="US", customer="acme", margin=3.0))
    await b.flush()
    assert ops(b, "eu") == [("I", bare_order("1", region="EU", customer="globex")),
                            ("D", bare_order("1", region="EU", customer="globex"))]
    assert ops(b, "acme") == [("I", bare_order("2", region="US", customer="acme")),
                              ("D", bare_order("2", region="US", customer="acme"))]  # hidden margin left out


async def test_a_delete_published_with_a_state_out_of_view_still_reaches_the_view_it_left() -> None:
    b = fresh(ORDER_SCHEMA)
    await b.subscribe("eu", "Order", data_scope=EU, catalog={"region": None}, exits=True)
    await b.subscribe("original", "Order", data_scope=EU, catalog={"region": None})
    b.publish("Order", "I", bare_order("1", region="EU"))
    b.publish("Order", "D", bare_order("1", region="US"))
    await b.flush()
    assert ops(b, "eu") == [("I", {"_id": "1", "region": "EU"}), ("D", {"_id": "1", "region": "EU"})]
    # the original checks the deleted document as published: out of scope, nothing
    assert ops(b, "original") == [("I", {"_id": "1", "region": "EU"})]


async def test_the_previous_state_given_by_the_publisher_wins() -> None:
    b = fresh(ORDER_SCHEMA)
    await b.subscribe("eu", "Order", data_scope=EU, control=True)
    # the server never saw order 1, but the publisher says it was in EU before
    b.publish("Order", "U", bare_order("1", region="US"), previous=bare_order("1", region="EU"))
    await b.flush()
    assert ops(b, "eu") == [("X", {"_id": "1"})]


async def test_the_document_store_gives_the_previous_state_past_the_last_versions_bound() -> None:
    b = fresh(ORDER_SCHEMA)
    b.max_tracked_ids = 1
    await b.subscribe("eu", "Order", data_scope=EU, exits=True)
    b.publish("Order", "I", bare_order("1", region="EU"))
    b.publish("Order", "I", bare_order("2", region="EU"))  # pushes order 1 out of the remembered versions
    b.publish("Order", "U", bare_order("1", region="US"))  # the store still holds order 1: an exit
    await b.flush()
    assert ops(b, "eu") == [("I", bare_order("1", region="EU")), ("I", bare_order("2", region="EU")),
                            ("X", {"_id": "1"})]


async def test_an_insert_over_a_stored_document_that_leaves_the_scope_is_an_exit() -> None:
    b = fresh(ORDER_SCHEMA)
    await b.subscribe("eu", "Order", data_scope=EU, exits=True)
    b.publish("Order", "I", bare_order("1", region="EU"))
    b.publish("Order", "I", bare_order("1", region="US"))  # inserted again, elsewhere: it left the view
    await b.flush()
    assert ops(b, "eu") == [("I", bare_order("1", region="EU")), ("X", {"_id": "1"})]


async def test_past_the_store_bound_last_versions_are_bounded_and_documented_as_such() -> None:
    b = fresh(ORDER_SCHEMA)
    b.max_tracked_ids = 1
    b.store_max_documents = 1  # the store is refused at the second document: last versions take over
    await b.subscribe("eu", "Order", data_scope=EU, exits=True)
    b.publish("Order", "I", bare_order("1", region="EU"))
    b.publish("Order", "I", bare_order("2", region="EU"))  # pushes order 1 out of the remembered versions
    b.publish("Order", "U", bare_order("1", region="US"))  # the exit cannot be known: nothing sent
    b.publish("Order", "U", bare_order("1", region="APAC"))  # the version of 1 is remembered again from here
    b.publish("Order", "U", bare_order("1", region="EU"))
    b.publish("Order", "U", bare_order("1", region="US"))
    await b.flush()
    assert ops(b, "eu") == [("I", bare_order("1", region="EU")), ("I", bare_order("2", region="EU")),
                            ("U", bare_order("1", region="EU")), ("X", {"_id": "1"})]


async def test_replay_applies_the_same_rules_as_live_delivery() -> None:
    b = fresh(ORDER_SCHEMA)
    first = b.publish("Order", "I", bare_order("1", region="EU"))
    b.publish("Order", "U", bare_order("1", region="US"))
    b.publish("Order", "U", bare_order("1", region="EU", amount=1.0))
    await b.subscribe("late", "Order", data_scope=EU, from_seq=first, exits=True)
    await b.subscribe("live", "Order", data_scope=EU, exits=True)
    b.publish("Order", "U", bare_order("1", region="US", amount=1.0))
    await b.flush()
    assert ops(b, "late") == [("I", bare_order("1", region="EU")), ("X", {"_id": "1"}),
                              ("U", bare_order("1", region="EU", amount=1.0)), ("X", {"_id": "1"})]
    assert ops(b, "live") == [("X", {"_id": "1"})]


async def test_overridden_hooks_also_see_data_changes_and_scope_exits() -> None:
    seen: list[str] = []

    def check(cls: Any, doc: Any, acl: Any) -> bool:
        seen.append(type(doc).__name__)
        return Broadcaster.check_subscriber_acl.__func__(cls, doc, acl)  # type: ignore[attr-defined]

    b = fresh(ORDER_SCHEMA, check_subscriber_acl=classmethod(check))
    ws = Socket()
    await b.subscribe(ws, "Order", data_scope=[{"fn": "status", "op": "==", "val": "new"}], exits=True)
    b.publish("Order", "I", {"_id": "1", "order_id": "1", "status": "new", "margin": 2.0})
    b.publish("Order", "U", {"_id": "1", "order_id": "1", "status": "paid"})
    assert await b.flush()
    assert [(m["op"], m["message"]) for m in b.to(ws)] == [
        ("I", {"_id": "1", "order_id": "1", "status": "new"}), ("X", {"_id": "1"})]
    assert seen and set(seen) == {"DataDocument"}
