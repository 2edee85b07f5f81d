"""The fan-out's parts (``xia_broadcast.fanout``), without a Hub and without sockets: a connection's bounded
queue, what a view makes of a change (scope exits included), the one message views with alike catalogs
share, and flags read as the original read them."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from helpers import EU, ORDER, order
from xia_broadcast.core.acl import Acl
from xia_broadcast.core.catalog import validate_catalog
from xia_broadcast.core.change import Change
from xia_broadcast.core.scope import compile_conditions, validate_scope
from xia_broadcast.core.viewkey import view_key
from xia_broadcast.fanout import Body, Connection, Outgoing, Sharing, View, envelope, truthy

# -- a connection's queue ----------------------------------------------------------------------------------


def message(n: int, size: int = 100) -> Outgoing:
    """Encoded message number ``n``, of ``size`` bytes."""
    head = b'{"n":%d,"pad":"' % n
    return Outgoing(head + b"x" * (size - len(head) - 2) + b'"}')


def numbers(batch: list[Outgoing]) -> list[int]:
    return [orjson.loads(o.data)["n"] for o in batch]


def test_a_write_takes_the_oldest_messages_that_fit_and_at_least_one() -> None:
    conn: Connection[str] = Connection("ws", max_messages=100, max_bytes=10_000)
    for i in range(5):
        conn.put(message(i, size=1000))
    size = len(conn.queue[0].data)
    batches = [conn.take(1), conn.take(2 * size + 1), conn.take(None)]
    assert [len(b) for b in batches] == [1, 2, 2]
    assert [numbers(b) for b in batches] == [[0], [1, 2], [3, 4]]  # oldest first, nothing twice
    assert conn.queued_bytes == 0 and not conn.queue


def test_put_queues_after_what_is_queued_and_counts_its_bytes() -> None:
    conn: Connection[str] = Connection("ws", max_messages=100, max_bytes=10_000)
    conn.put(message(0, size=100))
    conn.put(message(1, size=250))
    assert numbers(conn.queue) == [0, 1] and conn.queued_bytes == 350
    assert numbers(conn.take(300)) == [0] and conn.queued_bytes == 250  # what stays is still counted


async def test_room_is_a_future_done_when_the_queue_is_next_taken() -> None:
    conn: Connection[str] = Connection("ws", max_messages=1, max_bytes=1000)
    conn.put(message(0))
    room = conn.room()
    assert conn.room() is room  # one future for everyone waiting
    await asyncio.sleep(0)
    assert not room.done()
    conn.take()
    assert room.done()
    assert conn.room() is not room  # the next wait is for the next take


# -- what a view makes of a change -------------------------------------------------------------------------

ACME = {"content": [{"obj": "Order/customer/acme", "act": "read"}]}


def view(scope: Any = None, catalog: Any = None, acl: Any = None, show_hidden: bool = False,
         sharing: Sharing | None = None) -> View:
    """A view of Order (``helpers.ORDER``), made as the Hub makes one for a subscription (sharing what the
    views of ``sharing`` share, as the views of one Hub do; nothing when None)."""
    checked_scope = validate_scope(scope, ORDER)
    checked_catalog = validate_catalog(catalog, ORDER)
    checked_acl = Acl.coerce(acl)
    key = view_key(checked_scope, checked_catalog, show_hidden, checked_acl, acl)
    return View(key, "Order", checked_scope, compile_conditions(checked_scope), checked_catalog, show_hidden,
                checked_acl, acl, sharing)


def published(op: str, data: dict[str, Any], prev: dict[str, Any] | None = None) -> Change:
    """A change of Order as the Hub hands it to its views: ``data``, and ``prev`` the state before it."""
    return Change("Order", op, "0001", data, schema=ORDER, prev=prev)


def test_a_change_in_the_view_is_the_change_as_published_projected_for_the_view() -> None:
    evaluation = view(EU, {"amount": None}).evaluate(published("U", order(1), prev=order(1, region="US")), None)
    assert evaluation == ("U", {"_id": "O-000001", "amount": 1.0}, False)  # an update that enters arrives as U
    inserted = view(EU, acl=ACME).evaluate(published("I", order(1)), None)
    assert inserted is not None and inserted[0] == "I" and "margin" not in inserted[1]  # hidden: not asked for
    shown = view(EU, acl=ACME, show_hidden=True).evaluate(published("I", order(1)), None)
    assert shown is not None and shown[1]["margin"] == 0.25


@pytest.mark.parametrize("data", [order(1, region="US"), order(1, customer="globex")],
                         ids=["out of scope", "unreadable"])
def test_a_change_out_of_the_view_that_was_not_in_it_before_is_nothing(data: dict[str, Any]) -> None:
    eu_acme = view(EU, acl=ACME)
    for op in "IUD":
        assert eu_acme.evaluate(published(op, data), None) is None  # no previous state known
        assert eu_acme.evaluate(published(op, data, prev=dict(data)), None) is None  # out before as well


@pytest.mark.parametrize("data", [order(1, region="US"), order(1, customer="globex", amount=9.0)],
                         ids=["leaves the scope", "leaves the ACL"])
def test_an_update_that_leaves_the_view_is_an_exit_x_with_only_the_id(data: dict[str, Any]) -> None:
    assert view(EU, acl=ACME).evaluate(published("U", data, prev=order(1)), None) == ("X", {"_id": "O-000001"}, True)


def test_a_delete_published_out_of_the_view_it_was_in_is_d_with_the_previous_state() -> None:
    eu = view(EU, {"region": None, "margin": None})
    evaluation = eu.evaluate(published("D", order(1, region="US"), prev=order(1)), None)
    assert evaluation == ("D", {"_id": "O-000001", "region": "EU"}, True)  # the state it had in the view, projected


def test_an_insert_over_a_document_still_stored_that_leaves_the_view_is_an_exit() -> None:
    # the previous state is the document the store still held: the view's members must drop it
    assert view(EU).evaluate(published("I", order(1, region="US"), prev=order(1)), None) == \
        ("X", {"_id": "O-000001"}, True)
    assert view(EU).evaluate(published("I", order(1, region="US")), None) is None  # a new document: nothing


# -- the message views share -------------------------------------------------------------------------------


def test_views_with_alike_catalogs_share_one_body_and_one_encoded_message() -> None:
    catalog = {"amount": None, "region": None}
    hub = Sharing()
    wide, narrow, by_acl = view(None, catalog, sharing=hub), view(EU, catalog, sharing=hub), \
        view(None, catalog, ACME, sharing=hub)
    other = view(None, {"amount": None}, sharing=hub)
    c = published("I", order(1))
    evaluations = [v.evaluate(c, None) for v in (wide, narrow, by_acl, other)]
    bodies = [e[1] for e in evaluations if e is not None]
    assert len(bodies) == 4 and all(type(b) is Body for b in bodies)
    assert bodies[0] is bodies[1] is bodies[2]  # projected once for the three views of one catalog
    messages = [envelope("Order", "I", c.seq, b) for b in bodies]
    assert messages[0] is messages[1] is messages[2]  # and encoded once
    assert messages[3] is not messages[0]
    assert orjson.loads(messages[3].data)["message"] == {"_id": "O-000001", "amount": 1.0}
    assert orjson.loads(messages[0].data) == {"doc_class": "Order", "op": "I", "seq": "0001",
                                              "message": {"_id": "O-000001", "amount": 1.0, "region": "EU"}}
    # what the fan-out uses: the message made from the change's cut-up fields, once for the three views
    encoded = [v.message(c, None) for v in (wide, narrow, by_acl, other)]
    outs = [e[0] for e in encoded if e is not None]
    assert len(outs) == 4 and outs[0] is outs[1] is outs[2] and outs[3] is not outs[0]
    assert [o.data for o in outs] == [m.data for m in messages]  # the very bytes of the projection encoded


def test_a_body_shared_for_one_change_is_encoded_again_for_another_op_or_seq() -> None:
    body = Body({"_id": "1"})
    first = envelope("Order", "U", "0001", body)
    assert envelope("Order", "U", "0001", body) is first
    assert envelope("Order", "U", "0002", body) is not first
    plain = {"_id": "1"}  # a body that is not a Body (the slow path's): encoded at each call
    assert envelope("Order", "U", "0001", plain) is not envelope("Order", "U", "0001", plain)


# -- flags -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("flag", "expected"), [
    (True, True), (1, True), ("yes", True), ("true", True), ("1", True), ("on", True), ([0], True),
    (False, False), (0, False), (None, False), ([], False),
    ("false", False), ("False", False), (" FALSE ", False), ("0", False), ("no", False), ("off", False),
    ("n", False), ("f", False), ("none", False), ("null", False), ("", False),
])
def test_truthy_reads_a_flag_as_the_original_except_strings_that_say_false(flag: Any, expected: bool) -> None:
    assert truthy(flag) is expected
