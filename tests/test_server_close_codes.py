"""Every row of the close-code table (docs/protocol.md section 5), over real sockets.

Each refusal happens while a well-behaved subscriber on the same server keeps receiving published changes:
it must get every one of them, in publish order, before and after the refusal ("a refused connection never
affects any other connection").
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from helpers import (
    GoodClient,
    ServerFactory,
    http_base,
    publish_orders,
    read_until_closed,
    recv_json,
    refused,
    settled_health,
    stalled_socket,
    subscribe,
    ws_connect,
)
from xia_broadcast.server.config import ApiKey
from xia_broadcast.server.native import NativeServer

KEYS = {
    "k-admin": ApiKey("admin", None),
    "k-carol": ApiKey("carol", {"content": [{"obj": "Customer/*", "act": "read"}]}),
}
GOOD_KEYED = {"Order": {}, "_header": {"X-Api-Key": "k-admin"}}


def hs(obj: Any) -> str:
    return json.dumps(obj)


# (id, server settings, good client's handshake, bad first message, close code, reason pattern)
REFUSALS: list[tuple[str, dict[str, Any], dict[str, Any] | None, str, int, str]] = [
    ("4400-not-json", {}, None, "Order please", 4400, r"Connection information should be a Json string"),
    ("4400-not-object", {}, None, "[1, 2]", 4400, r"Connection information should be a Json object"),
    ("4400-unknown-key", {}, None, hs({"Order": {"x": 1}, "_options": {"strict": True}}), 4400,
     r"Order: unknown subscription keys \['x'\]"),
    ("4400-options-not-flags", {}, None, hs({"Order": {}, "_options": {"control": "yes"}}), 4400,
     r"_options should be an object of true/false flags"),
    ("4400-subscription-not-object", {}, None, hs({"Order": [1]}), 4400,
     r"Order: subscription should be an object"),
    ("4400-header-not-object", {}, None, hs({"Order": {}, "_header": "k-admin"}), 4400,
     r"_header should be an object"),
    ("4400-unknown-option", {}, None, hs({"Order": {}, "_options": {"colour": True, "strict": True}}), 4400,
     r"unknown _options \['colour'\]"),
    ("4400-unknown-entry", {}, None, hs({"Order": {}, "_secret": {}, "_options": {"strict": True}}), 4400,
     r"unknown handshake entry '_secret'"),
    ("4400-start-seq-type", {}, None, hs({"Order": {"start_seq": 5}}), 4400, r"Order: start_seq .*must be .*string"),
    ("4400-after-and-from-seq", {}, None, hs({"Order": {"from_seq": "1", "after_seq": "1"}}), 4400,
     r"Order: give after_seq or from_seq, not both"),
    ("4401-missing-key", {"api_keys": KEYS}, GOOD_KEYED, hs({"Order": {}}), 4401,
     r"App Name or API Key missing for authentication"),
    ("4401-wrong-key", {"api_keys": KEYS}, GOOD_KEYED, hs({"Order": {}, "_header": {"X-Api-Key": "k-nope"}}),
     4401, r"Authentication Error: unknown API key"),
    ("4403-show-hidden", {"api_keys": KEYS}, GOOD_KEYED,
     hs({"Order": {"show_hidden": "yes"}, "_header": {"X-Api-Key": "k-carol"}}), 4403,
     r"Order: show_hidden not permitted"),
    ("4403-hidden-field-in-scope", {"api_keys": KEYS}, GOOD_KEYED,
     hs({"Order": {"data_scope": [{"fn": "margin", "op": ">", "val": 1}]}, "_header": {"X-Api-Key": "k-carol"}}),
     4403, r"Order: data_scope\[0\]: 'margin' is hidden"),
    ("4404-unknown-class", {}, None, hs({"Invoice": {}}), 4404, r"Class requested Not Found"),
    ("4404-no-class", {}, None, hs({"_header": {}}), 4404, r"Class requested Not Found"),
    ("4420-operator", {}, None, hs({"Order": {"data_scope": [{"fn": "region", "op": "~", "val": "EU"}]}}),
     4420, r"Order: data_scope\[0\]: unknown operator '~', expected one of"),
    ("4420-unknown-field", {}, None,
     hs({"Order": {"data_scope": [{"fn": "colour", "op": "==", "val": 1}]}, "_options": {"strict": True}}),
     4420, r"Order: data_scope\[0\]: Order has no field 'colour'"),
    ("4420-too-many-conditions", {}, None,
     hs({"Order": {"data_scope": [{"fn": "amount", "op": ">", "val": i} for i in range(33)]}}),
     4420, r"Order: data_scope has 33 conditions, more than max_conditions \(32\)"),
    ("4420-not-a-list", {}, None, hs({"Order": {"data_scope": "region == EU"}}), 4420,
     r"Order: data_scope must be a list"),
    ("4421-unknown-field", {}, None, hs({"Order": {"catalog": {"colour": None}}, "_options": {"strict": True}}), 4421,
     r"Order: Order has no field 'colour'"),
    ("4421-not-an-object", {}, None, hs({"Order": {"catalog": ["order_id"]}}), 4421,
     r"Order: catalog must be an object"),
    ("4429-too-many", {"max_subscriptions": 1}, None, hs({"Order": {}, "Customer": {}}), 4429,
     r"too many subscriptions: 2 > 1"),
]


@pytest.mark.parametrize(("settings", "good_request", "message", "code", "reason"),
                         [pytest.param(*case[1:], id=case[0]) for case in REFUSALS])
async def test_refusal_while_a_good_client_keeps_receiving(
        make_server: ServerFactory, good_client: Callable[..., Awaitable[GoodClient]], http: httpx.AsyncClient,
        settings: dict[str, Any], good_request: dict[str, Any] | None, message: str, code: int, reason: str) -> None:
    server = await make_server(**settings)
    good = await good_client(server, good_request)
    good.publish(5)
    got_code, got_reason, messages = await refused(server.url, message)
    good.publish(5)

    assert (got_code, messages) == (code, []), f"expected {code}, got {got_code} {got_reason!r}"
    assert re.fullmatch(reason, got_reason) or re.match(reason, got_reason), got_reason
    await good.verify()
    # nothing of the refused connection stays behind: one connection, one subscription left
    health = await settled_health(http, server, 1)
    assert (health["connections"], health["views"]) == (1, 1)


async def test_4400_refused_second_class_leaves_nothing_subscribed(
        make_server: ServerFactory, good_client: Callable[..., Awaitable[GoodClient]], http: httpx.AsyncClient) -> None:
    """Order is valid, Customer's catalog is not: the whole handshake is refused, Order included."""
    server = await make_server()
    good = await good_client(server)
    code, reason, _ = await refused(server.url, hs({"Order": {"catalog": {"amount": None}},
                                                   "Customer": {"catalog": {"colour": None}},
                                                   "_options": {"strict": True}}))
    assert (code, reason) == (4421, "Customer: Customer has no field 'colour'")
    good.publish(3)
    await good.verify()
    metrics = (await http.get(f"{http_base(server)}/metrics")).text
    assert re.search(r"^xia_subscriptions 1\.0$", metrics, re.M), metrics


async def test_4400_handshake_timeout(
        make_server: ServerFactory, good_client: Callable[..., Awaitable[GoodClient]]) -> None:
    server = await make_server(handshake_timeout=0.3)
    good = await good_client(server)
    async with ws_connect(server.url) as silent:
        started = time.monotonic()
        good.publish(5)
        _, code, reason = await read_until_closed(silent, timeout=3)
        elapsed = time.monotonic() - started
    good.publish(5)
    assert (code, reason) == (4400, "Need connection information")
    assert 0.1 < elapsed < 2.0, elapsed
    await good.verify()


async def test_handshake_timeout_does_not_close_a_subscribed_client(make_server: ServerFactory) -> None:
    server = await make_server(handshake_timeout=0.2)
    ws, _ = await subscribe(server.url, {"Order": {}})
    async with ws:
        await asyncio.sleep(0.5)
        seq = server.service.publish_nowait("Order", "I", {"_id": "late", "order_id": "late"})
        msg = await recv_json(ws)
    assert (msg["seq"], msg["message"]["_id"]) == (seq, "late")


async def test_4401_wrong_app_name(
        make_server: ServerFactory, good_client: Callable[..., Awaitable[GoodClient]]) -> None:
    keys = {"k-shop": ApiKey("shopper", None, app_name="shop"), **KEYS}
    server = await make_server(api_keys=keys)
    good = await good_client(server, GOOD_KEYED)
    good.publish(2)
    code, reason, _ = await refused(server.url, hs({"Order": {}, "_header": {"X-Api-Key": "k-shop",
                                                                           "X-App-Name": "other"}}))
    good.publish(2)
    assert code == 4401
    assert reason.startswith("Authentication Error"), reason
    await good.verify()


# -- 1009 --------------------------------------------------------------------------------------------------


async def test_1009_oversized_handshake(
        make_server: ServerFactory, good_client: Callable[..., Awaitable[GoodClient]]) -> None:
    server = await make_server(max_message_size=1024)
    good = await good_client(server)
    good.publish(3)
    code, reason, _ = await refused(server.url, hs({"Order": {"start_seq": "x" * 2000}}))
    good.publish(3)
    assert code == 1009
    assert re.fullmatch(r"frame with \d+ bytes exceeds limit of 1024 bytes", reason), reason
    await good.verify()


async def test_1009_oversized_message_after_the_handshake(
        make_server: ServerFactory, good_client: Callable[..., Awaitable[GoodClient]], http: httpx.AsyncClient) -> None:
    """A subscribed client that sends a huge message is cut off; its subscription goes with it."""
    server = await make_server(max_message_size=1024)
    good = await good_client(server)
    chatty, _ = await subscribe(server.url, {"Order": {}})
    good.publish(2)
    await chatty.send("y" * 5000)
    messages, code, reason = await read_until_closed(chatty)
    good.publish(2)
    assert code == 1009, (code, reason)
    assert len(messages) <= 2  # what was published before the close, nothing after
    await good.verify()
    health = await settled_health(http, server, 1)
    assert (health["connections"], health["views"]) == (1, 1)


async def test_1009_counts_the_whole_fragmented_message(
        make_server: ServerFactory, good_client: Callable[..., Awaitable[GoodClient]]) -> None:
    """Three fragments of 600 bytes are one message of 1800 bytes: over a 1024-byte limit."""
    server = await make_server(max_message_size=1024)
    good = await good_client(server)
    async with ws_connect(server.url) as ws:
        await ws.send(["a" * 600, "b" * 600, "c" * 600])
        _, code, _ = await read_until_closed(ws)
    good.publish(2)
    assert code == 1009
    await good.verify()


async def test_client_messages_after_the_handshake_are_ignored(
        server: NativeServer, good_client: Callable[..., Awaitable[GoodClient]]) -> None:
    ws, _ = await subscribe(server.url, {"Order": {}})
    async with ws:
        await ws.send(hs({"Customer": {}}))
        await ws.send("not even json")
        good = await good_client(server)
        seqs = good.publish(3)
        got = [await recv_json(ws) for _ in range(3)]
        server.service.publish_nowait("Customer", "I", {"_id": "c1", "customer_id": "c1"})
        await good.verify()
        # still subscribed to Order only: the second "handshake" did nothing
        sentinel = good.publish(1)
        nxt = await recv_json(ws)
    assert [m["seq"] for m in got] == seqs
    assert (nxt["doc_class"], nxt["seq"]) == ("Order", sentinel[0])


# -- 4409 --------------------------------------------------------------------------------------------------


async def test_4409_slow_subscriber_is_cut_off_and_nothing_is_lost_silently(
        make_server: ServerFactory, good_client: Callable[..., Awaitable[GoodClient]], http: httpx.AsyncClient) -> None:
    # a 20-message queue, and a journal of 50 changes: a client that falls further behind cannot be caught up
    server = await make_server(queue_messages=20, queue_bytes=1 << 20, journal_max_count=50)
    good = await good_client(server)
    # max_queue=1: the client library stops reading the socket as soon as one frame waits unread
    slow, _ = await subscribe(server.url, {"Order": {}}, sock=stalled_socket(server.port), max_queue=1)
    published: list[str] = []
    note = "x" * 32_768
    deadline = time.monotonic() + 10
    for _ in range(400):  # ~13 MB: far more than kernel buffers + 1 MiB transport + a 20-message queue
        published += good.publish(1, note=note)
        await asyncio.sleep(0)  # let the server write and the good client read
        if time.monotonic() > deadline:
            break
    # the slow client reads again: it gets what was sent to it, in order, then 4409
    messages, code, reason = await read_until_closed(slow, timeout=10)
    assert code == 4409, (code, reason)
    assert reason.startswith("too slow"), reason
    seqs = [m["seq"] for m in messages]
    assert seqs == published[: len(seqs)], "the slow client got a gap or a reordering before 4409"
    assert len(seqs) < len(published)
    await good.verify(timeout=10)
    assert len(good.received) == len(published)
    metrics = (await http.get(f"{http_base(server)}/metrics")).text
    assert re.search(r"^xia_refusals_total 1\.0$", metrics, re.M), metrics
    # the server still takes new subscribers
    fresh, confirmation = await subscribe(server.url, {"Order": {}})
    await fresh.close()
    assert "Order" in confirmation


# -- 4503 --------------------------------------------------------------------------------------------------


async def test_4503_too_many_connections(
        make_server: ServerFactory, good_client: Callable[..., Awaitable[GoodClient]], http: httpx.AsyncClient) -> None:
    server = await make_server(max_connections=1)
    good = await good_client(server)
    good.publish(3)
    code, reason, messages = await refused(server.url, hs({"Order": {}}))
    good.publish(3)
    assert (code, reason, messages) == (4503, "too many connections", [])
    await good.verify()
    assert (await settled_health(http, server, 1))["connections"] == 1
    # the refused connection did not keep the slot: once the good client leaves, a new one gets in
    await good.close()
    assert (await settled_health(http, server, 0))["connections"] == 0
    ws, confirmation = await subscribe(server.url, {"Order": {}})
    await ws.close()
    assert "Order" in confirmation


# -- 1001 --------------------------------------------------------------------------------------------------


async def test_1001_on_shutdown_after_everything_published(make_server: ServerFactory) -> None:
    server = await make_server()
    a, _ = await subscribe(server.url, {"Order": {}})
    b, _ = await subscribe(server.url, {"Order": {"catalog": {"amount": None}}})
    readers = [asyncio.get_running_loop().create_task(read_until_closed(ws)) for ws in (a, b)]
    seqs = publish_orders(server, range(1, 51))
    async with asyncio.timeout(10):  # no new task: shutdown starts before the loop has written anything
        await server.shutdown()
    results = [await r for r in readers]
    for messages, code, reason in results:
        assert [m["seq"] for m in messages] == seqs
        assert (code, reason) == (1001, "shutting down")
    assert results[1][0][0]["message"] == {"_id": "O-000001", "amount": 1.0}


async def test_1011_is_not_sent_for_ordinary_bad_input(
        server: NativeServer, good_client: Callable[..., Awaitable[GoodClient]]) -> None:
    """Garbage of every documented kind gets its documented 44xx code, never an internal error."""
    good = await good_client(server)
    bad = ["", "null", "42", '"Order"', hs({"Order": None, "Customer": 5}), hs({"Order": {"catalog": 5}}),
           hs({"Order": {"data_scope": [5]}}), hs({"Order": {"data_scope": [{"fn": "amount", "op": "<",
                                                                               "val": [1]}]}})]
    codes = []
    for message in bad:
        code, _, _ = await refused(server.url, message)
        codes.append(code)
        good.publish(1)
    assert all(4400 <= c < 4500 for c in codes), codes
    await good.verify()


async def test_4404_names_the_classes_served_to_a_client_of_this_protocol_only(make_server: Any) -> None:
    server = await make_server()
    url = f"ws://127.0.0.1:{server.port}/ws"
    code, reason, _ = await refused(url, json.dumps({"Ordr": {}, "_options": {"control": True}}))
    assert (code, reason) == (4404, "Class requested Not Found; this server serves: Customer, Order")
    code, reason, _ = await refused(url, json.dumps({"Ordr": {}, "_options": {"strict": True}}))
    assert (code, reason) == (4404, "Class requested Not Found: Ordr; this server serves: Customer, Order")
    code, reason, _ = await refused(url, json.dumps({"Ordr": {}}))  # an original client: the original's words
    assert (code, reason) == (4404, "Class requested Not Found")


async def test_a_strict_client_naming_an_unknown_class_beside_a_known_one_is_refused(make_server: Any) -> None:
    server = await make_server()
    url = f"ws://127.0.0.1:{server.port}/ws"
    code, reason, _ = await refused(url, json.dumps({"Order": {}, "Ordr": {}, "_options": {"strict": True}}))
    assert (code, reason) == (4404, "Class requested Not Found: Ordr; this server serves: Customer, Order")
    ws, confirmation = await subscribe(url, {"Order": {}, "Ordr": {}})  # not strict: skipped, as the original
    async with ws:
        assert list(confirmation) == ["Order"]
