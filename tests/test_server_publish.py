"""``POST /publish`` over HTTP, received over WebSocket with scopes, catalogs and ACLs (docs/protocol.md
sections 1, 4 and 6), and every documented publish error. A refused request applies nothing: subscribers
receive nothing from it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from helpers import (
    RECV_TIMEOUT,
    ServerFactory,
    http_base,
    order,
    order_change,
    post_publish,
    recv_json,
    recv_until,
    subscribe,
)
from xia_broadcast.server.config import ApiKey
from xia_broadcast.server.native import NativeServer

EU_SCOPE = [{"fn": "region", "op": "==", "val": "EU"}]
SMALL_CATALOG = {"order_id": None, "amount": None}






async def test_single_change_is_received_through_scope_and_catalog(
        server: NativeServer, http: httpx.AsyncClient) -> None:
    eu, eu_conf = await subscribe(server.url, {"Order": {"data_scope": EU_SCOPE, "catalog": SMALL_CATALOG}})
    everything, _ = await subscribe(server.url, {"Order": {}})
    async with eu, everything:
        resp = await post_publish(http, server, order_change(1, region="EU", amount=12.5))
        eu_msg = await recv_json(eu)
        all_msg = await recv_json(everything)
    assert resp.status_code == 200
    [seq] = resp.json()["seqs"]
    assert eu_conf["Order"]["data_scope"] == EU_SCOPE and eu_conf["Order"]["catalog"] == SMALL_CATALOG
    assert eu_msg == {"doc_class": "Order", "op": "I", "seq": seq,
                      "message": {"_id": "O-000001", "order_id": "O-000001", "amount": 12.5}}
    # no catalog: every field but the hidden one
    expected = order(1, region="EU", amount=12.5)
    del expected["margin"]
    assert all_msg == {"doc_class": "Order", "op": "I", "seq": seq, "message": expected}


async def test_batch_is_received_in_order_filtered_by_scope(server: NativeServer, http: httpx.AsyncClient) -> None:
    regions = ["EU", "US", "EU", "APAC", "EU", "US"]
    eu, _ = await subscribe(server.url, {"Order": {"data_scope": EU_SCOPE, "catalog": {"region": None}}})
    hidden, _ = await subscribe(server.url, {"Order": {"show_hidden": True, "catalog": {"margin": None}}})
    async with eu, hidden:
        changes = [order_change(i, region=r) for i, r in enumerate(regions, 1)]
        resp = await post_publish(http, server, {"changes": changes})
        seqs = resp.json()["seqs"]
        eu_got = await recv_until(eu, "O-000005")
        hidden_got = [await recv_json(hidden) for _ in regions]
    assert resp.status_code == 200
    assert len(seqs) == len(regions) and seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert [(m["seq"], m["message"]) for m in eu_got] == [
        (seqs[i], {"_id": f"O-{i + 1:06d}", "region": "EU"}) for i in (0, 2, 4)]
    assert [(m["seq"], m["message"]) for m in hidden_got] == [
        (seqs[i], {"_id": f"O-{i + 1:06d}", "margin": 0.25}) for i in range(len(regions))]


async def test_update_and_delete_ops_are_delivered_as_published(server: NativeServer, http: httpx.AsyncClient) -> None:
    ws, _ = await subscribe(server.url, {"Order": {"catalog": {"status": None}}})
    async with ws:
        resp = await post_publish(http, server, {"changes": [
            order_change(1), order_change(1, "U", status="paid"),
            {**order_change(1, "D", status="paid"), "previous": order(1, status="paid")}]})
        got = [await recv_json(ws) for _ in range(3)]
    assert resp.status_code == 200
    assert [(m["op"], m["seq"], m["message"]) for m in got] == [
        ("I", resp.json()["seqs"][0], {"_id": "O-000001", "status": "new"}),
        ("U", resp.json()["seqs"][1], {"_id": "O-000001", "status": "paid"}),
        ("D", resp.json()["seqs"][2], {"_id": "O-000001", "status": "paid"})]


async def test_acl_applies_to_http_published_changes(make_server: ServerFactory, http: httpx.AsyncClient) -> None:
    server = await make_server(
        api_keys={"k-alice": ApiKey("alice", {"content": [{"obj": "Order/customer/acme", "act": "read"}]}),
                  "k-ops": ApiKey("ops", None)},
        publish_keys=["p-1", "p-2"])
    alice, _ = await subscribe(server.url, {"Order": {"catalog": {"customer": None}},
                                            "_header": {"X-Api-Key": "k-alice"}})
    ops, _ = await subscribe(server.url, {"Order": {"catalog": {"customer": None}},
                                          "_header": {"X-Api-Key": "k-ops"}})
    customers = ["globex", "acme", "initech", "acme", "globex", "acme"]
    async with alice, ops:
        first = await post_publish(http, server, {"changes": [
            order_change(i, customer=c) for i, c in enumerate(customers[:3])]}, {"X-Publisher-Key": "p-1"})
        second = await post_publish(http, server, {"changes": [
            order_change(i, customer=c) for i, c in enumerate(customers[3:], 3)]}, {"Authorization": "Bearer p-2"})
        alice_got = await recv_until(alice, "O-000005")
        ops_got = await recv_until(ops, "O-000005")
    assert (first.status_code, second.status_code) == (200, 200)
    seqs = first.json()["seqs"] + second.json()["seqs"]
    assert [(m["seq"], m["message"]["customer"]) for m in alice_got] == [
        (s, c) for s, c in zip(seqs, customers, strict=True) if c == "acme"]
    assert [(m["seq"], m["message"]["customer"]) for m in ops_got] == list(zip(seqs, customers, strict=True))


# -- errors -----------------------------------------------------------------------------------------------

ERRORS = [
    pytest.param(b"{not json", 400, "bad_json", "body is not JSON", id="bad-json"),
    pytest.param([order_change(1)], 400, "bad_request",
                 "a batch is {\"changes\": [change, ...]}, not a bare list", id="list"),
    pytest.param("42", 400, "bad_request", "change 0: a change is an object", id="number"),
    pytest.param({**order_change(1), "seq": "1"}, 400, "bad_request", "change 0: unknown keys ['seq']",
                 id="unknown-key"),
    pytest.param({"changes": []}, 400, "bad_request", "a batch is", id="empty-batch"),
    pytest.param({"changes": [order_change(1)], "atomic": True}, 400, "bad_request", "a batch is",
                 id="batch-extra-key"),
    pytest.param({"changes": order_change(1)}, 400, "bad_request", "a batch is", id="batch-not-a-list"),
    pytest.param({"class": "Invoice", "op": "I", "doc": {"_id": "i"}}, 404, "unknown_class",
                 "change 0: unknown class 'Invoice'", id="unknown-class"),
    pytest.param({"op": "I", "doc": order(1)}, 404, "unknown_class", "change 0: unknown class None",
                 id="no-class"),
    pytest.param(order_change(1, op="Z"), 422, "invalid_change",
                 "change 0: op must be one of ['D', 'I', 'U'], not 'Z'", id="unknown-op"),
    pytest.param({**order_change(1), "op": ["I"]}, 422, "invalid_change",
                 "change 0: op must be one of ['D', 'I', 'U'], not ['I']", id="op-a-list"),
    pytest.param({**order_change(1), "op": {"I": 1}}, 422, "invalid_change", "change 0: op must be one of",
                 id="op-an-object"),
    pytest.param({"changes": [order_change(1), order_change(2), order_change(3), order_change(4, amount="12")]}, 422,
                 "invalid_change", "change 3: Order.amount: expected float, got str", id="wrong-type"),
    pytest.param({"changes": [order_change(1), order_change(2, colour="red")]}, 422, "invalid_change",
                 "change 1: Order: unknown field 'colour'", id="undeclared-field"),
    pytest.param({"class": "Order", "op": "I", "doc": {"order_id": "x"}}, 422, "invalid_change",
                 "change 0: Order: '_id' must be", id="missing-id"),
    pytest.param({"class": "Order", "op": "I"}, 422, "invalid_change",
                 "change 0: Order: a document must be a JSON object", id="missing-doc"),
    pytest.param({**order_change(1, "U"), "previous": {"_id": "O-000001", "amount": "x"}}, 422, "invalid_change",
                 "change 0: Order.amount: expected float", id="bad-previous"),
]


@pytest.mark.parametrize(("body", "status", "error", "message"), ERRORS)
async def test_publish_errors_apply_nothing(
        server: NativeServer, http: httpx.AsyncClient, body: Any, status: int, error: str, message: str) -> None:
    ws, _ = await subscribe(server.url, {"Order": {}})
    async with ws:
        resp = await post_publish(http, server, body)
        sentinel = await post_publish(http, server, order_change(777))
        got = await recv_json(ws)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    payload = resp.json()
    assert payload["error"] == error
    assert payload["message"].startswith(message), payload["message"]
    # nothing of the refused request reached the subscriber: the first thing it gets is the sentinel
    assert (got["seq"], got["message"]["_id"]) == (sentinel.json()["seqs"][0], "O-000777")


async def test_publish_405_and_413(make_server: ServerFactory, http: httpx.AsyncClient) -> None:
    server = await make_server(max_publish_size=1000)
    ws, _ = await subscribe(server.url, {"Order": {}})
    async with ws:
        get = await http.get(f"{http_base(server)}/publish")
        too_big = await post_publish(http, server, order_change(1, note="n" * 2000))
        just_fits = await post_publish(http, server, order_change(2, note="n" * 100))
        got = await recv_json(ws)
    assert (get.status_code, get.json()["error"]) == (405, "method_not_allowed")
    assert (too_big.status_code, too_big.json()["error"]) == (413, "too_large")
    assert just_fits.status_code == 200
    assert got["message"]["_id"] == "O-000002"


async def test_publish_keys(make_server: ServerFactory, http: httpx.AsyncClient) -> None:
    server = await make_server(publish_keys=["p-1"])
    ws, _ = await subscribe(server.url, {"Order": {}})
    async with ws:
        missing = await post_publish(http, server, order_change(1))
        wrong = await post_publish(http, server, order_change(2), {"X-Publisher-Key": "p-2"})
        wrong_bearer = await post_publish(http, server, order_change(3), {"Authorization": "Bearer p-2"})
        ok = await post_publish(http, server, order_change(4), {"x-publisher-key": "p-1"})
        got = await recv_json(ws)
    for resp, text in ((missing, "X-Publisher-Key missing"), (wrong, "unknown publisher key"),
                       (wrong_bearer, "unknown publisher key")):
        assert (resp.status_code, resp.json()) == (401, {"error": "unauthorized", "message": text})
    assert ok.status_code == 200
    assert got["message"]["_id"] == "O-000004"


async def test_publishing_is_closed_on_an_authenticated_server_without_publish_keys(
        make_server: ServerFactory, http: httpx.AsyncClient) -> None:
    server = await make_server(api_keys={"k": ApiKey("u", None)})
    resp = await post_publish(http, server, order_change(1), {"X-Publisher-Key": "anything"})
    assert resp.status_code == 401
    assert resp.json()["message"].startswith("publishing is disabled")


async def test_unauthorized_is_checked_before_the_body(make_server: ServerFactory, http: httpx.AsyncClient) -> None:
    """An unauthenticated publisher learns nothing about the body: 401 even for garbage."""
    server = await make_server(publish_keys=["p-1"])
    resp = await post_publish(http, server, b"{garbage")
    assert resp.status_code == 401


async def test_other_http_endpoints(server: NativeServer, http: httpx.AsyncClient) -> None:
    ws_plain = await http.get(f"{http_base(server)}/ws")
    missing = await http.get(f"{http_base(server)}/nope")
    assert (ws_plain.status_code, ws_plain.json()["error"]) == (426, "upgrade_required")
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")


async def test_sequential_publishes_arrive_in_publish_order(server: NativeServer, http: httpx.AsyncClient) -> None:
    ws, _ = await subscribe(server.url, {"Order": {}})
    async with ws:
        seqs = []
        for i in range(20):
            resp = await post_publish(http, server, order_change(i))
            seqs += resp.json()["seqs"]
        got = await recv_until(ws, "O-000019")
    assert [m["seq"] for m in got] == seqs


async def test_http_keep_alive_and_pipelining(server: NativeServer) -> None:
    """Two requests written at once on one connection get two answers, in order."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /nope HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        first = await asyncio.wait_for(reader.readuntil(b"}"), RECV_TIMEOUT)
        second = await asyncio.wait_for(reader.readuntil(b"}"), RECV_TIMEOUT)
    finally:
        writer.close()
    assert first.startswith(b"HTTP/1.1 200 ") and first.endswith(b'{"ready":true}')
    assert second.startswith(b"HTTP/1.1 404 ") and b'"error":"not_found"' in second
