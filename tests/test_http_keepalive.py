"""HTTP keep-alive on the standalone server: a publisher's connection outlives the handshake timeout."""

from __future__ import annotations

import asyncio
import json

from helpers import ServerFactory, read_response
from xia_broadcast.server.demo import ORDER_SCHEMA


async def post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> tuple[int, bytes]:
    writer.write(b"POST /publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    status, _, answer = await read_response(reader)
    return status, answer


async def test_an_idle_keep_alive_publisher_connection_is_not_cut_by_the_handshake_timeout(
        make_server: ServerFactory) -> None:
    srv = await make_server(classes={"Order": ORDER_SCHEMA}, handshake_timeout=0.3, log_level="WARNING")
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    change = json.dumps({"class": "Order", "op": "I", "doc": {"_id": "1", "order_id": "1"}}).encode()
    assert (await post(reader, writer, change))[0] == 200
    await asyncio.sleep(0.8)  # longer than the handshake timeout, between two requests
    status, body = await post(reader, writer, change.replace(b'"1"', b'"2"'))
    assert status == 200 and len(json.loads(body)["seqs"]) == 1
    writer.close()
    # a socket that never sends a request is still closed after the handshake timeout
    reader2, writer2 = await asyncio.open_connection("127.0.0.1", srv.port)
    assert await asyncio.wait_for(reader2.read(), 3) == b""
    writer2.close()
