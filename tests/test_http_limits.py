"""The HTTP stage of the standalone server: nothing is buffered before it is allowed, and every request is
bounded in bytes, sockets and time (docs/protocol.md section 6, docs/configuration.md)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from helpers import (
    RECV_TIMEOUT,
    UPGRADE_REQUEST,
    GoodClient,
    ServerFactory,
    closed_by_peer,
    read_response,
    recv_json,
    refused,
    stalled_socket,
    subscribe,
    until,
    ws_connect,
)
from xia_broadcast.server.demo import ORDER_SCHEMA
from xia_broadcast.server.native import NativeServer


async def open_http(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), RECV_TIMEOUT)


def head(method: str, path: str, *headers: str) -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode()


# -- nothing is read before it is allowed ------------------------------------------------------------------


async def test_a_publish_without_key_is_refused_from_its_headers_and_the_body_never_read(
        make_server: ServerFactory) -> None:
    """The client declares 10 MB and sends none of it: the answer comes at once, then the server closes."""
    server = await make_server(publish_keys=["p-1"])
    reader, writer = await open_http(server.port)
    writer.write(head("POST", "/publish", "Content-Length: 10000000"))
    status, headers, body = await read_response(reader)
    assert (status, json.loads(body)["error"], headers.get("connection")) == (401, "unauthorized", "close")
    assert await closed_by_peer(reader)
    writer.close()


@pytest.mark.parametrize(("method", "path", "status"), [("POST", "/healthz", 405), ("PUT", "/publish", 405),
                                                        ("POST", "/nope", 404), ("GET", "/healthz", 200)])
async def test_a_body_where_none_is_expected_is_answered_and_the_connection_closed_unread(
        make_server: ServerFactory, method: str, path: str, status: int) -> None:
    server = await make_server()
    reader, writer = await open_http(server.port)
    writer.write(head(method, path, "Content-Length: 10000000") + b"x" * 1000)
    got, headers, _ = await read_response(reader)
    assert (got, headers.get("connection")) == (status, "close")
    assert await closed_by_peer(reader)
    writer.close()


async def test_a_declared_body_over_max_publish_size_is_413_before_it_is_sent(make_server: ServerFactory) -> None:
    server = await make_server(max_publish_size=1000)
    reader, writer = await open_http(server.port)
    writer.write(head("POST", "/publish", "Content-Length: 1001"))
    status, _, body = await read_response(reader)
    assert (status, json.loads(body)["error"]) == (413, "too_large")
    assert await closed_by_peer(reader)
    writer.close()


async def test_expect_100_continue_is_answered_only_once_key_and_length_pass(make_server: ServerFactory) -> None:
    server = await make_server(publish_keys=["p-1"], max_publish_size=10_000)
    change = json.dumps({"class": "Order", "op": "I", "doc": {"_id": "O-1", "order_id": "O-1"}}).encode()
    reader, writer = await open_http(server.port)
    writer.write(head("POST", "/publish", "X-Publisher-Key: p-1", f"Content-Length: {len(change)}",
                      "Content-Type: application/json", "Expect: 100-continue"))
    assert (await read_response(reader))[0] == 100
    writer.write(change)
    status, _, body = await read_response(reader)
    assert status == 200 and len(json.loads(body)["seqs"]) == 1
    writer.close()
    for headers, expected in ((["X-Publisher-Key: p-2", "Content-Length: 10"], 401),
                              (["X-Publisher-Key: p-1", "Content-Length: 10001"], 413),
                              (["X-Publisher-Key: p-1", "Content-Length: 10", "Content-Type: text/plain"], 415)):
        reader, writer = await open_http(server.port)
        writer.write(head("POST", "/publish", *headers, "Expect: 100-continue"))
        assert (await read_response(reader))[0] == expected  # the final answer, no 100 before it
        assert await closed_by_peer(reader)
        writer.close()


async def test_transfer_encoding_with_content_length_is_400_and_the_connection_closed(
        make_server: ServerFactory) -> None:
    server = await make_server()
    reader, writer = await open_http(server.port)
    writer.write(head("POST", "/publish", "Transfer-Encoding: chunked", "Content-Length: 5") + b"0\r\n\r\n"
                 + head("GET", "/healthz"))  # a smuggled second request is never answered
    status, headers, _ = await read_response(reader)
    assert (status, headers.get("connection")) == (400, "close")
    assert await closed_by_peer(reader)
    writer.close()


# -- bounds over all connections ---------------------------------------------------------------------------


async def test_bodies_in_flight_are_bounded_over_all_connections(make_server: ServerFactory) -> None:
    """Two bodies of 1 MiB fill max_body_bytes = 2 MiB: a third is 503 at once; when one is done, room again."""
    mib = 1024 * 1024
    server = await make_server(max_publish_size=mib, max_body_bytes=2 * mib)
    started = []
    for _ in range(2):
        reader, writer = await open_http(server.port)
        writer.write(head("POST", "/publish", f"Content-Length: {mib}", "Content-Type: application/json",
                          "Expect: 100-continue"))
        assert (await read_response(reader))[0] == 100
        started.append((reader, writer))
    reader, writer = await open_http(server.port)
    writer.write(head("POST", "/publish", "Content-Length: 10", "Content-Type: application/json"))
    status, headers, body = await read_response(reader)
    assert (status, json.loads(body)["error"], headers.get("connection")) == (503, "busy", "close")
    writer.close()
    first_reader, first_writer = started[0]
    first_writer.write(b" " * mib)  # a complete (if empty of JSON) body: answered, its bytes released
    assert (await read_response(first_reader))[0] == 400
    reader, writer = await open_http(server.port)
    writer.write(head("POST", "/publish", "Content-Length: 10", "Content-Type: application/json",
                      "Expect: 100-continue"))
    assert (await read_response(reader))[0] == 100
    for _, w in [*started, (reader, writer)]:
        w.close()


async def test_sockets_that_never_upgrade_are_bounded_and_the_next_one_gets_503(make_server: ServerFactory) -> None:
    server = await make_server(max_http_connections=4)
    idle = []
    for n in range(1, 5):
        idle.append(await open_http(server.port))
        await until(lambda n=n: server.http_limits.connections == n, what=f"{n} HTTP connections counted")
    reader, writer = await open_http(server.port)
    status, headers, _ = await read_response(reader)  # answered before it sent anything
    assert (status, headers.get("connection")) == (503, "close")
    writer.close()
    idle.pop()[1].close()
    await until(lambda: server.http_limits.connections == 3, what="3 HTTP connections counted")
    reader, writer = await open_http(server.port)  # served again
    writer.write(head("GET", "/readyz", "Connection: close"))
    assert (await read_response(reader))[0] == 200
    writer.close()
    await until(lambda: server.http_limits.connections == 3, what="3 HTTP connections counted")
    # a WebSocket leaves the HTTP stage once upgraded: it does not hold one of the four
    ws, _ = await subscribe(server.url, {"Order": {}})
    async with ws:
        await until(lambda: server.http_limits.connections == 3, what="3 HTTP connections counted")
    for _, w in idle:
        w.close()


async def test_a_request_dribbled_on_a_kept_alive_connection_is_cut_at_handshake_timeout(
        make_server: ServerFactory) -> None:
    server = await make_server(handshake_timeout=0.5)
    reader, writer = await open_http(server.port)
    writer.write(head("GET", "/healthz"))
    assert (await read_response(reader))[0] == 200
    started = time.monotonic()
    writer.write(b"GET /healthz HTTP/1.1\r\n")
    cut = False
    for i in range(40):  # one header line each 0.1 s: 4 s in all, far past the 0.5 s allowed
        try:
            writer.write(f"X-Line-{i}: x\r\n".encode())
            await writer.drain()
        except ConnectionError:
            cut = True
            break
        if await closed_by_peer(reader, timeout=0.1):
            cut = True
            break
    assert cut, "a request taking 4 s on a kept-alive connection was not cut"
    assert time.monotonic() - started < 2.0
    writer.close()


# -- the upgrade -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("replace", "status"), [
    (("dGhlIHNhbXBsZSBub25jZQ==", "!!!!!!!!!!!!!!!!!!!!!!!!"), 400),  # 24 characters, not base64
    (("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZXg="), 400),  # base64 of 17 bytes
    (("Connection: Upgrade", "Connection: keep-alive, notupgrade"), 426),  # a token, not a substring
    (("Connection: Upgrade", "Connection: keep-alive, Upgrade"), 101),
])
async def test_upgrade_requests_are_checked_as_websockets_checks_them(
        make_server: ServerFactory, replace: tuple[str, str], status: int) -> None:
    server = await make_server()
    reader, writer = await open_http(server.port)
    writer.write(UPGRADE_REQUEST.format(path="/ws").replace(*replace).encode())
    got, _, _ = await read_response(reader)
    assert got == status
    writer.close()


async def test_origin_allowlist_refuses_other_origins_with_403_before_the_upgrade(make_server: ServerFactory) -> None:
    server = await make_server(origin_allowlist=["https://shop.example"])
    with pytest.raises(InvalidStatus) as refused_upgrade:
        await ws_connect(server.url, origin="https://evil.example")
    assert refused_upgrade.value.response.status_code == 403
    for origin in ("https://shop.example", None):  # listed, or no Origin at all (not a browser)
        ws, confirmation = await subscribe(server.url, {"Order": {}}, origin=origin)
        assert "Order" in confirmation
        await ws.close()


# -- the endpoint table ------------------------------------------------------------------------------------


async def test_a_static_get_endpoint_is_one_registration(make_server: ServerFactory, http: httpx.AsyncClient) -> None:
    server = await make_server()
    server.endpoints.add_static("/hello.txt", lambda: ("text/plain", b"hello"))
    got = await http.get(f"http://127.0.0.1:{server.port}/hello.txt")
    posted = await http.post(f"http://127.0.0.1:{server.port}/hello.txt", content=b"x")
    assert (got.status_code, got.headers["content-type"], got.content) == (200, "text/plain", b"hello")
    assert (posted.status_code, posted.json()["error"]) == (405, "method_not_allowed")


# -- WebSocket input ---------------------------------------------------------------------------------------


async def test_invalid_utf8_in_a_text_message_closes_with_1007(
        server: NativeServer, good_client: Callable[..., Awaitable[GoodClient]]) -> None:
    good = await good_client(server)
    for first in (True, False):  # as the handshake, and after it
        async with ws_connect(server.url) as ws:
            if not first:
                await ws.send(json.dumps({"Order": {}}))
                await recv_json(ws)
            await ws.send(b"{\"Order\": \xff}", text=True)
            await asyncio.wait_for(ws.wait_closed(), RECV_TIMEOUT)
            assert ws.close_code == 1007
    good.publish(3)
    await good.verify()


async def test_a_document_nested_deeper_than_the_bound_is_refused_with_422(
        make_server: ServerFactory, http: httpx.AsyncClient) -> None:
    server = await make_server(allow_undeclared_classes=True)
    ws, _ = await subscribe(server.url, {"Free": {}})

    def nested(depth: int) -> Any:
        value: Any = 1
        for _ in range(depth - 1):
            value = {"a": value}
        return value

    async with ws:
        deep = await http.post(f"http://127.0.0.1:{server.port}/publish",
                               json={"class": "Free", "op": "I", "doc": {"_id": "deep", "x": nested(250)}})
        fine = await http.post(f"http://127.0.0.1:{server.port}/publish",
                               json={"class": "Free", "op": "I", "doc": {"_id": "fine", "x": nested(150)}})
        got = await recv_json(ws)
    assert (deep.status_code, deep.json()["error"]) == (422, "invalid_change")
    assert "nest" in deep.json()["message"]
    assert fine.status_code == 200
    assert got["message"]["_id"] == "fine"  # the refused one was never delivered


async def test_a_deeply_nested_catalog_is_refused_with_4421(make_server: ServerFactory) -> None:
    server = await make_server(allow_undeclared_classes=True)
    catalog: Any = None
    for _ in range(300):
        catalog = {"a": catalog}
    code, reason, _ = await refused(server.url, json.dumps({"Free": {"catalog": catalog}}))
    assert code == 4421, reason


async def test_a_jwt_with_exp_as_a_numeric_string_is_refused_with_4401(make_server: ServerFactory) -> None:
    import jwt

    server = await make_server(jwt_secret="s" * 32)
    acl = {"content": [{"obj": "Order/*", "act": "read"}]}
    exp = int(time.time()) + 600
    as_string = jwt.encode({"sub": "u", "exp": str(exp), "acl": acl}, "s" * 32, algorithm="HS256")
    as_number = jwt.encode({"sub": "u", "exp": exp, "acl": acl}, "s" * 32, algorithm="HS256")
    code, reason, _ = await refused(server.url, json.dumps(
        {"Order": {}, "_header": {"Authorization": f"Bearer {as_string}"}}))
    assert (code, reason) == (4401, "invalid token: claim 'exp' must be a number")
    ws, confirmation = await subscribe(server.url, {"Order": {}, "_header": {"Authorization": f"Bearer {as_number}"}})
    assert confirmation["Order"]["user_name"] == "u"
    await ws.close()


async def test_a_peer_that_pipelines_requests_without_reading_cannot_grow_server_memory(
        make_server: ServerFactory) -> None:
    server = await make_server(classes={"Order": ORDER_SCHEMA}, log_level="CRITICAL")
    _, writer = await asyncio.open_connection(sock=stalled_socket(server.port))
    request = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    for _ in range(5):
        writer.write(request * 2000)
        try:
            await asyncio.wait_for(writer.drain(), 1)
        except TimeoutError:
            break  # the server stopped reading from us: the point of the test
    await asyncio.sleep(0.3)
    buffered = max(s.transport.get_write_buffer_size() for s in server.sockets if s.transport)
    assert buffered < 4 * 1024 * 1024
    writer.transport.abort()
