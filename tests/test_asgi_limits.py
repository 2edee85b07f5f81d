"""The ASGI app keeps the standalone server's HTTP bounds where they apply to it: the Origin allow-list, and
the bytes of request bodies being received at once (docs/configuration.md)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest
from websockets.exceptions import InvalidStatus

from helpers import AsgiServer, read_response, subscribe, until, ws_connect

MIB = 1024 * 1024


async def test_origin_allowlist_refuses_other_origins_with_403(
        asgi_server: Callable[..., Awaitable[AsgiServer]]) -> None:
    server = await asgi_server(origin_allowlist=["https://shop.example"])
    with pytest.raises(InvalidStatus) as refused_upgrade:
        await ws_connect(server.url, origin="https://evil.example")
    assert refused_upgrade.value.response.status_code == 403
    ws, confirmation = await subscribe(server.url, {"Order": {}}, origin="https://shop.example")
    assert "Order" in confirmation
    await ws.close()


async def test_bodies_in_flight_are_bounded_over_all_requests(
        asgi_server: Callable[..., Awaitable[AsgiServer]]) -> None:
    server = await asgi_server(max_publish_size=MIB, max_body_bytes=2 * MIB)
    budget = server.app.state.body_budget
    started = []
    for _ in range(2):  # two bodies of 1 MiB being sent, slowly
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"POST /publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {MIB}\r\n\r\n".encode() + b" " * 10)
        started.append((reader, writer))
    await until(lambda: budget.reserved >= 2 * MIB, what=lambda: f"2 MiB reserved (reserved: {budget.reserved})")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 10\r\n\r\n" + b" " * 10)
    status, _, body = await read_response(reader)
    assert (status, json.loads(body)["error"]) == (503, "busy")
    writer.close()
    first_reader, first_writer = started[0]
    first_writer.write(b" " * (MIB - 10))
    assert (await read_response(first_reader))[0] == 400  # complete, not JSON: answered, its bytes released
    assert budget.reserved == MIB
    for _, w in started:
        w.close()
