"""What the views of a Hub share (``fanout.Sharing``): compiled scopes (views that differ only by catalog or
ACL test each change once between them), ACL decisions (views whose ACLs grant the same on the class, whatever
they grant elsewhere) and messages (views with alike catalogs). Each view gets exactly the bytes it would
get with nothing shared."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from xia_broadcast.core.acl import Acl
from xia_broadcast.core.change import Change
from xia_broadcast.core.schema import DocSchema
from xia_broadcast.core.scope import compile_conditions, validate_scope
from xia_broadcast.core.viewkey import view_key
from xia_broadcast.fanout import View, envelope
from xia_broadcast.hub import Hub
from xia_broadcast.transport import NoTransport

SCHEMA = DocSchema.from_dict({"key": ["region"], "privilege_keys": {"region": ["region"]},
                              "fields": {"region": "str", "amount": "float", "tags": {"type": "str", "many": True},
                                         "secret": {"type": "str", "hidden": True}}}, "Order")
SCOPES: list[list[dict[str, Any]]] = [
    [],
    [{"fn": "region", "op": "==", "val": "EU"}],
    [{"fn": "amount", "op": ">=", "val": 10}],
    [{"fn": "amount", "op": ">=", "val": 10}, {"fn": "region", "op": "in", "val": ["EU", "US"]}],
    [{"fn": "tags", "op": "==", "val": "hot"}],
    [{"fn": "region", "op": "!=", "val": "EU"}, {"fn": "amount", "op": "<", "val": 50}],
]
CATALOGS: list[dict[str, Any]] = [{}, {"amount": None}, {"region": None, "tags": None}]
ACLS: list[dict[str, Any] | None] = [
    None,
    {"content": [{"obj": "Order/region/EU", "act": "read"}]},
    {"content": [{"obj": "Order/*", "act": "read"}]},
    {"content": [{"obj": "Order/region/US", "act": "read"}, {"obj": "Invoice/*", "act": "read"}]},
    # the same grants on Order as the ones above, with grants elsewhere: they share the decisions of those
    {"content": [{"obj": "Order/region/EU", "act": "read"}, {"obj": "Orders/*", "act": "read"}]},
    {"content": [{"obj": "Order/region/US", "act": "read"}, {"obj": "Invoice/region/US", "act": "read"}]},
    # grants that look alike but are not (a prefix, another action)
    {"content": [{"obj": "Ord*", "act": "read"}, {"obj": "Invoice/*", "act": "read"}]},
    {"content": [{"obj": "Order/region/US", "act": "write"}, {"obj": "Order/region/E*", "act": "r*"}]},
]
docs = st.fixed_dictionaries({
    "_id": st.sampled_from(["a", "b", "c"]),
    "region": st.sampled_from(["EU", "US", "ASIA"]),
    "amount": st.sampled_from([0.0, 9.5, 10.0, 49.0, 50.0, 99.0]),
    "tags": st.lists(st.sampled_from(["hot", "cold"]), max_size=2),
    "secret": st.just("s"),
})
views_drawn = st.lists(st.tuples(st.sampled_from(range(len(SCOPES))), st.sampled_from(range(len(CATALOGS))),
                                 st.sampled_from(range(len(ACLS)))), min_size=2, max_size=24)


@settings(max_examples=150, deadline=None)
@given(views_drawn, st.lists(st.tuples(st.sampled_from("IUD"), docs, st.none() | docs), min_size=1, max_size=12))
def test_views_sharing_a_compiled_scope_get_what_each_would_get_with_its_own(
        drawn: list[tuple[int, int, int]], changes: list[tuple[str, dict[str, Any], dict[str, Any] | None]]) -> None:
    hub: Hub[str] = Hub(transport=NoTransport(), schemas={"Order": SCHEMA})
    alone: dict[str, View] = {}
    for n, (s, c, a) in enumerate(drawn):
        ws = f"ws{n}"
        params = {"data_scope": SCOPES[s], "catalog": CATALOGS[c], "acl": ACLS[a]}
        hub.subscribe(ws, "Order", params, exits=True)
        # the same view, with a scope compiled for it alone (nothing shared, nothing remembered between views)
        scope = validate_scope(SCOPES[s], SCHEMA)
        acl = Acl.coerce(ACLS[a])
        alone[ws] = View(view_key(scope, CATALOGS[c], False, acl), "Order", scope, compile_conditions(scope),
                         CATALOGS[c], False, acl, ACLS[a])
    shared = {id(v.shared_scope) for v in hub.channels["Order"].values()}
    assert len(shared) == len({s for s, _, _ in drawn})  # one compiled scope per distinct scope
    restricted = {Acl.coerce(ACLS[a]).for_class("Order") for _, _, a in drawn if ACLS[a] is not None}  # type: ignore[union-attr]
    assert len({id(v.shared_acl) for v in hub.channels["Order"].values() if v.shared_acl}) == len(restricted)
    for op, data, prev in changes:
        change = Change("Order", op, "", data=data, schema=SCHEMA, prev=prev, prev_stored=True)
        hub.publish_nowait(change)
        for ws, view in alone.items():
            conn = hub.connections[ws]
            got = [m.data for m in conn.queue]
            conn.queue.clear()
            conn.queued_bytes = 0
            expected = view.evaluate(change, None)
            if expected is None:
                assert got == [], (ws, drawn, change)
            else:
                want_op, body, _exit = expected
                assert got == [envelope("Order", want_op, change.seq, dict(body)).data], (ws, drawn, change)
        hub.queued.queued = 0


def test_scopes_that_differ_only_by_nan_or_an_infinity_share_nothing() -> None:
    """JSON writes NaN, infinities and None alike (``null``): their views and compiled scopes must still be
    apart. ``amount < inf`` holds for every finite amount, ``amount < -inf`` for none, ``amount == NaN`` for
    none, ``amount == None`` where it is missing."""
    hub: Hub[str] = Hub(transport=NoTransport())
    scopes = {"below-inf": ("<", float("inf")), "below-minus-inf": ("<", float("-inf")),
              "nan": ("==", float("nan")), "none": ("==", None)}
    for ws, (op, val) in scopes.items():
        hub.subscribe(ws, "Order", {"data_scope": [{"fn": "amount", "op": op, "val": val}]})
    assert len(hub.channels["Order"]) == 4
    assert len({id(v.shared_scope) for v in hub.channels["Order"].values()}) == 4
    for op, data in (("I", {"_id": "a", "amount": 5.0}), ("I", {"_id": "b"})):
        hub.publish_nowait(Change("Order", op, "", data=data))
    got = {ws: [orjson.loads(m.data)["message"]["_id"] for m in hub.connections[ws].queue] for ws in scopes}
    assert got == {"below-inf": ["a"], "below-minus-inf": [], "nan": [], "none": ["b"]}
