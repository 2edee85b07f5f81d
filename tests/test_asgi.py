"""The Starlette app (``create_app``) under a real uvicorn on 127.0.0.1, with a real WebSocket client.

docs/protocol.md: "The standalone server and the ASGI app speak the same protocol."
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable

import httpx

from helpers import (
    AsgiServer,
    order,
    order_change,
    post_publish,
    read_until_closed,
    recv_json,
    recv_until,
    refused,
    subscribe,
)
from xia_broadcast.server.config import ApiKey


async def test_handshake_publish_receive(
        asgi_server: Callable[..., Awaitable[AsgiServer]], http: httpx.AsyncClient) -> None:
    server = await asgi_server()
    scoped, confirmation = await subscribe(server.url, {"Order": {
        "data_scope": [{"fn": "region", "op": "==", "val": "EU"}], "catalog": {"amount": None, "margin": None}}})
    everything, _ = await subscribe(server.url, {"Order": {}})
    async with scoped, everything:
        resp = await post_publish(http, server, {"changes": [order_change(1, region="US"), order_change(2, region="EU"),
                                                        order_change(3, region="EU")]})
        in_process = server.service.publish_nowait("Order", "U", order(3, region="EU", amount=9.5))
        scoped_got = await recv_until(scoped, "O-000003")
        scoped_got += [await recv_json(scoped)]
        all_got = [await recv_json(everything) for _ in range(4)]
    assert resp.status_code == 200
    seqs = resp.json()["seqs"]
    assert confirmation["Order"]["user_name"] == "Anonymous"
    assert confirmation["Order"]["catalog"] == {"amount": None, "margin": None}
    # the hidden field stays out even when the catalog names it, unless show_hidden
    assert [(m["op"], m["seq"], m["message"]) for m in scoped_got] == [
        ("I", seqs[1], {"_id": "O-000002", "amount": 2.0}),
        ("I", seqs[2], {"_id": "O-000003", "amount": 3.0}),
        ("U", in_process, {"_id": "O-000003", "amount": 9.5})]
    assert [m["seq"] for m in all_got] == [*seqs, in_process]
    assert all(set(m) == {"doc_class", "op", "seq", "message"} and "margin" not in m["message"] for m in all_got)


async def test_refusals_while_a_good_client_keeps_receiving(asgi_server: Callable[..., Awaitable[AsgiServer]]) -> None:
    server = await asgi_server(max_subscriptions=2, handshake_timeout=0.5)
    good, _ = await subscribe(server.url, {"Order": {}})
    cases = [
        (None, 4400, "Need connection information"),
        ("Order please", 4400, "Connection information should be a Json string"),
        (json.dumps({"Invoice": {}}), 4404, "Class requested Not Found"),
        (json.dumps({"Order": {"data_scope": [{"fn": "region", "op": "~", "val": 1}]}}), 4420,
         "Order: data_scope[0]: unknown operator '~'"),
        (json.dumps({"Order": {"catalog": {"colour": None}}, "_options": {"strict": True}}), 4421,
         "Order: Order has no field 'colour'"),
        (json.dumps({"Order": {}, "Customer": {}, "Invoice": {}}), 4429, "too many subscriptions: 3 > 2"),
    ]
    seqs = []
    async with good:
        for i, (message, code, reason) in enumerate(cases):
            seqs.append(server.service.publish_nowait("Order", "I", order(i)))
            got = await refused(server.url, message)
            assert got[:2] == (code, got[1]) and got[1].startswith(reason), (message, got)
        seqs.append(server.service.publish_nowait("Order", "I", order(99)))
        received = await recv_until(good, "O-000099")
    assert [m["seq"] for m in received] == seqs


async def test_api_key_acl_and_publish_key(
        asgi_server: Callable[..., Awaitable[AsgiServer]], http: httpx.AsyncClient) -> None:
    server = await asgi_server(api_keys={"k-alice": ApiKey("alice", {"content": [
        {"obj": "Order/customer/acme", "act": "read"}]})}, publish_keys=["p-1"])
    code, reason, _ = await refused(server.url, json.dumps({"Order": {}, "_header": {"X-Api-Key": "k-bad"}}))
    alice, confirmation = await subscribe(server.url, {"Order": {}, "_header": {"X-Api-Key": "k-alice"}})
    customers = ["globex", "acme", "initech", "acme"]
    async with alice:
        unauthorized = await post_publish(http, server, order_change(0))
        changes = [order_change(i, customer=c) for i, c in enumerate(customers)]
        resp = await post_publish(http, server, {"changes": changes}, {"X-Publisher-Key": "p-1"})
        got = await recv_until(alice, "O-000003")
    assert (code, reason) == (4401, "Authentication Error: unknown API key")
    assert confirmation["Order"]["user_name"] == "alice"
    assert unauthorized.status_code == 401 and unauthorized.json()["error"] == "unauthorized"
    seqs = resp.json()["seqs"]
    assert [(m["seq"], m["message"]["customer"]) for m in got] == [(seqs[1], "acme"), (seqs[3], "acme")]


async def test_publish_errors_and_operations_endpoints(
        asgi_server: Callable[..., Awaitable[AsgiServer]], http: httpx.AsyncClient) -> None:
    server = await asgi_server(max_publish_size=2000)
    ws, _ = await subscribe(server.url, {"Order": {}})
    async with ws:
        bad_json = await post_publish(http, server, b"{nope")
        invalid = await post_publish(http, server, {"changes": [order_change(1), order_change(2, amount="x")]})
        unknown = await post_publish(http, server, {"class": "Invoice", "op": "I", "doc": {"_id": "1"}})
        too_big = await post_publish(http, server, order_change(3, note="n" * 3000))
        ok = await post_publish(http, server, order_change(4))
        got = await recv_json(ws)
        health = (await http.get(f"{server.base}/healthz")).json()
        ready = await http.get(f"{server.base}/readyz")
        metrics = (await http.get(f"{server.base}/metrics")).text
    assert (bad_json.status_code, bad_json.json()["error"]) == (400, "bad_json")
    assert (invalid.status_code, invalid.json()) == (422, {
        "error": "invalid_change", "message": "change 1: Order.amount: expected float, got str"})
    assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_class")
    assert (too_big.status_code, too_big.json()["error"]) == (413, "too_large")
    assert got["seq"] == ok.json()["seqs"][0] and got["message"]["_id"] == "O-000004"  # nothing refused arrived
    assert health == {"status": "ok", "connections": 1, "views": 1, "shutting_down": False}
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    assert re.search(r"^xia_changes_total 1\.0$", metrics, re.M)
    assert re.search(r"^xia_deliveries_total 1\.0$", metrics, re.M)
    assert re.search(r"^xia_connections 1\.0$", metrics, re.M)


async def test_4503_too_many_connections(asgi_server: Callable[..., Awaitable[AsgiServer]]) -> None:
    server = await asgi_server(max_connections=1)
    good, _ = await subscribe(server.url, {"Order": {}})
    async with good:
        code, reason, _ = await refused(server.url, json.dumps({"Order": {}}))
        seq = server.service.publish_nowait("Order", "I", order(1))
        got = await recv_json(good)
    assert (code, reason) == (4503, "too many connections")
    assert got["seq"] == seq


async def test_http_error_answers_match_the_native_server(
        asgi_server: Callable[..., Awaitable[AsgiServer]], http: httpx.AsyncClient) -> None:
    server = await asgi_server()
    get_publish = await http.get(f"{server.base}/publish")
    plain_ws = await http.get(f"{server.base}/ws")
    missing = await http.get(f"{server.base}/nope")
    assert (get_publish.status_code, get_publish.json()["error"]) == (405, "method_not_allowed")
    assert (plain_ws.status_code, plain_ws.json()["error"]) == (426, "upgrade_required")
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")


async def test_binary_non_json_handshake_is_refused_with_4400(
        asgi_server: Callable[..., Awaitable[AsgiServer]]) -> None:
    server = await asgi_server()
    code, reason, _ = await refused(server.url, b"\x00\x01garbage")
    assert (code, reason) == (4400, "Connection information should be a Json string")


async def test_shutdown_flushes_and_closes_with_1001_when_the_host_calls_it(
        asgi_server: Callable[..., Awaitable[AsgiServer]]) -> None:
    """As documented in asgi.py: the host calls app.state.shutdown() before stopping its ASGI server."""
    server = await asgi_server()
    ws, _ = await subscribe(server.url, {"Order": {}})
    async with ws:
        seq = server.service.publish_nowait("Order", "I", order(1))
        reader = asyncio.get_running_loop().create_task(read_until_closed(ws, timeout=10))
        await server.app.state.shutdown()
        await server.stop()
        messages, code, _ = await reader
    assert [m["seq"] for m in messages] == [seq]
    assert code == 1001


async def test_publish_key_is_checked_before_the_body_is_read_and_the_body_is_bounded(
        asgi_server: Callable[..., Awaitable[AsgiServer]]) -> None:
    """The server answers while the client is still sending: it did not wait to read a body it refuses."""
    server = await asgi_server(publish_keys=["p-1"], max_publish_size=1024)

    async def answer_before_body_ends(headers: str, declared: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"POST /publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {declared}\r\n{headers}\r\n"
                     .encode() + b" " * 4096)  # far less than declared: a server waiting for the body never answers
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.close()
        return head

    assert b" 401 " in await answer_before_body_ends("", 10_000_000)
    assert b" 413 " in await answer_before_body_ends("X-Publisher-Key: p-1\r\n", 10_000_000)


def test_the_names_an_application_uses_are_exported_by_the_server_package() -> None:
    import xia_broadcast.server as server
    from xia_broadcast.server.asgi import create_app
    from xia_broadcast.server.config import Settings, load_settings
    from xia_broadcast.server.native import NativeServer

    assert (server.create_app, server.Settings, server.load_settings, server.NativeServer) == (
        create_app, Settings, load_settings, NativeServer)
    assert set(server.__all__) == {"ConfigError", "NativeServer", "Settings", "create_app", "load_settings"}
