"""Views, not subscribers: equal requests share one view, computed and encoded once per change."""

from __future__ import annotations

import json
from typing import Any

from helpers import Region, Socket, fresh
from xia_broadcast import DocSchema

#: an Order with lines (not the test servers' Order of helpers.ORDER)
ORDER_WITH_LINES = DocSchema.from_dict(
    {
        "name": "Order",
        "key": ["order_id"],
        "privilege_keys": {"customer": ["customer"]},
        "fields": {
            "order_id": "str",
            "customer": "str",
            "status": "str",
            "total": "float",
            "margin": {"type": "float", "hidden": True},
            "lines": {"many": True, "fields": {"sku": "str", "qty": "int", "cost": {"type": "float", "hidden": True}}},
        },
    }
)


def order_with_lines(i: int, **kw: Any) -> dict[str, Any]:
    """A document of :data:`ORDER_WITH_LINES`, number ``i``."""
    return {"_id": f"o{i}", "order_id": f"A{i}", "customer": "c1", "status": "new", "total": 10.0 * i,
            "margin": 0.2, "lines": [{"sku": "x", "qty": i, "cost": 1.0}], **kw}


SCOPE: list[dict[str, Any]] = [{"fn": "status", "op": "==", "val": "new"}, {"fn": "total", "op": ">=", "val": 10}]
CATALOG: dict[str, Any] = {"total": None, "lines": {"sku": None, "qty": None}}
ACL: dict[str, Any] = {"content": [{"obj": "Order/customer/c1", "act": "read"}, {"obj": "Invoice/*", "act": "read"}]}


async def test_fifty_identical_subscribers_cost_one_projection_and_one_encoding_per_change() -> None:
    b = fresh(ORDER_WITH_LINES)
    sockets = [Socket() for _ in range(50)]
    for ws in sockets:
        await b.subscribe(ws, "Order", SCOPE, CATALOG, False, "", ACL)
    assert b.hub().view_count("Order") == 1
    stats = b.hub().stats
    for i in range(1, 4):
        projections, encodings = stats.projections, stats.encodings
        b.publish("Order", "I", order_with_lines(i))
        assert stats.projections - projections == 1
        assert stats.encodings - encodings == 1
    assert await b.flush()
    assert len(b.sent) == 150
    by_change: dict[str, list[str]] = {}
    for ws, message in b.sent:
        by_change.setdefault(json.loads(message)["message"]["_id"], []).append(message)
        assert ws in sockets
    assert sorted(by_change) == ["o1", "o2", "o3"]
    for messages in by_change.values():
        assert len(messages) == 50
        assert all(m is messages[0] for m in messages)  # the very same encoded message for every member
    assert json.loads(by_change["o2"][0])["message"] == {"_id": "o2", "total": 20.0, "lines": [{"sku": "x", "qty": 2}]}


async def test_subscribers_in_three_views_cost_three_projections_per_change() -> None:
    b = fresh(ORDER_WITH_LINES)
    catalogs = [None, {"total": None}, {"status": None}]
    sockets = [Socket() for _ in range(30)]
    for i, ws in enumerate(sockets):
        await b.subscribe(ws, "Order", catalog=catalogs[i % 3])
    assert b.hub().view_count("Order") == 3
    before = b.hub().stats.encodings
    b.publish("Order", "U", order_with_lines(1))
    assert b.hub().stats.encodings - before == 3
    assert await b.flush()
    assert len(b.sent) == 30
    assert len({m for _, m in b.sent}) == 3


async def test_out_of_scope_or_unreadable_changes_are_not_encoded() -> None:
    b = fresh(ORDER_WITH_LINES)
    for _ in range(10):
        await b.subscribe(Socket(), "Order", SCOPE, None, False, "", ACL)
    before = b.hub().stats.encodings
    b.publish("Order", "I", order_with_lines(0))  # total 0: out of scope
    b.publish("Order", "I", order_with_lines(5, customer="c2"))  # not readable by the ACL
    assert b.hub().stats.encodings == before
    assert await b.flush()
    assert b.sent == []


async def test_equal_requests_written_differently_share_one_view() -> None:
    b = fresh(ORDER_WITH_LINES)
    await b.subscribe(Socket(), "Order", SCOPE, CATALOG, False, "", ACL)
    await b.subscribe(Socket(), "Order", list(reversed(SCOPE)), CATALOG, False, "", ACL)  # condition order
    await b.subscribe(Socket(), "Order", SCOPE, {"lines": {"qty": None, "sku": None}, "total": None},
                      False, "", ACL)  # catalog key order, nested too
    await b.subscribe(Socket(), "Order", SCOPE, CATALOG, False, "",
                      {"content": list(reversed(ACL["content"]))})  # ACL item order
    await b.subscribe(Socket(), "Order", [dict(reversed(list(c.items()))) for c in SCOPE], CATALOG, False, "",
                      ACL)  # key order inside a condition
    await b.subscribe(Socket(), "Order", SCOPE, CATALOG, False, "0005", ACL)  # start_seq is per subscriber
    await b.subscribe(Socket(), "Order", SCOPE, CATALOG, False, "", ACL, app_name="other")  # extra params
    assert b.hub().view_count("Order") == 1
    assert len(b.active_connections["Order"]) == 7


async def test_no_catalog_and_empty_catalog_share_one_view_as_do_no_scope_and_empty_scope() -> None:
    b = fresh(ORDER_WITH_LINES)
    await b.subscribe(Socket(), "Order", None, None)
    await b.subscribe(Socket(), "Order", [], {})
    await b.subscribe(Socket(), "Order", [], {"lines": {}, "total": None})
    await b.subscribe(Socket(), "Order", None, {"total": None, "lines": None})
    assert b.hub().view_count("Order") == 2


async def test_different_requests_get_different_views() -> None:
    b = fresh(ORDER_WITH_LINES)
    await b.subscribe(Socket(), "Order", SCOPE, CATALOG, False, "", ACL)
    variants: list[dict[str, Any]] = [
        {"data_scope": [SCOPE[0]]},
        {"data_scope": [SCOPE[0], {"fn": "total", "op": ">=", "val": 11}]},
        {"data_scope": [SCOPE[0], {"fn": "total", "op": ">", "val": 10}]},
        {"catalog": {"total": None}},
        {"catalog": {"total": None, "lines": {"sku": None}}},
        {"show_hidden": True},
        {"acl": None},
        {"acl": {"content": []}},
        {"acl": {"content": ACL["content"][:1]}},
        {"acl": {"content": [{"obj": "Order/customer/c1", "act": "read,write"}, ACL["content"][1]]}},
    ]
    base = {"data_scope": SCOPE, "catalog": CATALOG, "show_hidden": False, "start_seq": "", "acl": ACL}
    for n, variant in enumerate(variants, start=2):
        await b.subscribe(Socket(), "Order", **{**base, **variant})
        assert b.hub().view_count("Order") == n, variant


async def test_views_are_per_class_and_go_away_with_their_last_member() -> None:
    b = fresh(ORDER_WITH_LINES)
    w1, w2 = Socket(), Socket()
    await b.subscribe(w1, "Order", catalog=CATALOG)
    await b.subscribe(w2, "Order", catalog=CATALOG)
    await b.subscribe(w1, "Invoice", catalog=None)
    assert b.hub().view_count("Order") == 1
    assert b.hub().view_count("Invoice") == 1
    b.disconnect(w1)
    assert b.hub().view_count("Order") == 1
    assert b.hub().view_count("Invoice") == 0
    b.disconnect(w2)
    assert b.hub().view_count() == 0


async def test_members_of_one_view_keep_their_own_start_seq() -> None:
    b = fresh(ORDER_WITH_LINES)
    early, late = Socket(), Socket()
    await b.subscribe(early, "Order", catalog={"total": None})
    await b.subscribe(late, "Order", catalog={"total": None}, start_seq="0002")
    assert b.hub().view_count("Order") == 1
    for i in range(1, 4):
        b.publish("Order", "I", order_with_lines(i), seq=f"000{i}")
    assert await b.flush()
    assert [json.loads(m)["seq"] for ws, m in b.sent if ws is early] == ["0001", "0002", "0003"]
    assert [json.loads(m)["seq"] for ws, m in b.sent if ws is late] == ["0002", "0003"]


async def test_views_differing_only_by_scope_or_acl_share_one_projection_and_one_message_per_change() -> None:
    b = fresh(ORDER_WITH_LINES)
    narrow = [{"fn": "total", "op": ">=", "val": 20}]
    other_acl = {"content": [{"obj": "Order/*", "act": "read"}]}
    wide, by_scope, by_acl = Socket(), Socket(), Socket()
    await b.subscribe(wide, "Order", None, CATALOG, False, "", ACL)
    await b.subscribe(by_scope, "Order", narrow, CATALOG, False, "", ACL)
    await b.subscribe(by_acl, "Order", None, CATALOG, False, "", other_acl)
    assert b.hub().view_count("Order") == 3
    connections = b.hub().connections
    before = b.hub().stats.encodings
    b.publish("Order", "I", order_with_lines(1))  # total 10: out of the narrow scope
    b.publish("Order", "I", order_with_lines(2))
    assert b.hub().stats.encodings - before == 2  # one per change, counted once for the three views
    queued = {ws: list(connections[ws].queue) for ws in (wide, by_scope, by_acl)}
    assert [len(q) for q in queued.values()] == [2, 1, 2]  # each view still filters by its own scope
    assert queued[wide][1] is queued[by_scope][0] is queued[by_acl][1]  # one message, made once
    assert queued[wide][0] is queued[by_acl][0]
    body = json.loads(queued[wide][1].data)["message"]
    assert body == {"_id": "o2", "total": 20.0, "lines": [{"sku": "x", "qty": 2}]}


async def test_a_document_mutated_and_published_again_is_projected_again() -> None:
    b = fresh(ORDER_WITH_LINES)
    a, c = Socket(), Socket()
    await b.subscribe(a, "Order", None, {"status": None}, False, "", ACL)
    await b.subscribe(c, "Order", [{"fn": "total", "op": ">=", "val": 0}], {"status": None}, False, "", ACL)
    doc = order_with_lines(1)
    b.publish("Order", "I", doc)
    doc["status"] = "paid"  # the same dict object, changed, published again
    b.publish("Order", "U", doc)
    for ws in (a, c):
        got = [json.loads(o.data) for o in b.hub().connections[ws].queue]
        assert [(m["op"], m["message"]["status"]) for m in got] == [("I", "new"), ("U", "paid")]


async def test_acls_that_differ_beyond_obj_and_act_never_share_a_view_on_the_slow_path() -> None:
    def check(cls: Any, doc: Any, acl: Any) -> bool:
        return any(all(getattr(doc, k) == v for k, v in item.get("cond", {}).items()) for item in acl["content"])

    b = fresh(check_subscriber_acl=classmethod(check))
    eu, us = Socket("eu"), Socket("us")
    await b.subscribe(eu, "Region", acl={"content": [{"obj": "Region/*", "act": "read", "cond": {"region": "EU"}}]})
    await b.subscribe(us, "Region", acl={"content": [{"obj": "Region/*", "act": "read", "cond": {"region": "US"}}]})
    assert b.hub().view_count("Region") == 2
    await b.document_sent_async(Region(order_id="A", region="EU"), "I", "1")
    assert await b.flush()
    assert len(b.to(eu)) == 1 and b.to(us) == []
