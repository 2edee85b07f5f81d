"""Reference fan-out server: the plain, obvious ``websockets`` implementation.

It is the baseline the xia-broadcast benchmarks compare against. Every published
change is wrapped in the document envelope, encoded ONCE with :mod:`json` and
pushed to every connected client with :func:`websockets.asyncio.server.broadcast`,
without any filtering.

Two listeners on 127.0.0.1:

* ``ws://127.0.0.1:WS_PORT/ws`` -- clients. The first client message must be a
  JSON object with exactly one key, the class name, mapping to an object of
  subscription parameters, e.g. ``{"Order": {"data_scope": [], "catalog": {},
  "show_hidden": false, "start_seq": ""}}``. The server answers with
  ``{"Order": {...the same parameters...}}`` and from then on pushes
  ``{"doc_class": "Order", "op": "I", "seq": "00000000000000000001", "message": {...}}``
  text frames. ``seq`` is a 20-digit zero-padded counter, so it increases both
  numerically and lexicographically.
* ``http://127.0.0.1:HTTP_PORT/publish`` -- the publish driver, with the same
  body as xia-broadcast: one change ``{"class": "Order", "op": "I", "doc": {...}}``
  or a batch ``{"changes": [change, ...]}``. The response (``200``,
  ``{"published": n, "last_seq": "..."}``) is sent once every change of the body
  has been broadcast. The server yields to the event loop after each message, so
  it never runs more than one request body ahead of its own I/O. Headers such as
  ``X-Publisher-Key`` are accepted and ignored.

Compression is disabled: the message is framed per connection but never
re-encoded or compressed per connection.

Run: ``.venv/bin/python bench/reference_server.py --ws-port 8765 --http-port 8766``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.http11 import Request, Response

HANDSHAKE_TIMEOUT_S = 10.0
"""Seconds a client has to send its subscription message after connecting."""

MAX_HTTP_BODY_BYTES = 64 * 1024 * 1024
"""Largest accepted ``POST /publish`` body, in bytes."""

LISTEN_BACKLOG = 4096
"""TCP accept backlog of both listeners (connection storms of thousands of clients)."""


class FanOut:
    """The set of subscribed clients and the sequence counter of published messages."""

    def __init__(self) -> None:
        self.clients: set[ServerConnection] = set()
        self.seq = 0

    async def handle_client(self, ws: ServerConnection) -> None:
        """Serve one WebSocket client: subscription handshake, then wait until it leaves."""
        try:
            first = await asyncio.wait_for(ws.recv(), HANDSHAKE_TIMEOUT_S)
        except TimeoutError:
            await ws.close(1008, "no subscription message")
            return
        subscription = parse_subscription(first)
        if subscription is None:
            await ws.close(1008, "expected {ClassName: {params}}")
            return
        await ws.send(json.dumps(subscription))
        self.clients.add(ws)
        try:
            await ws.wait_closed()
        finally:
            self.clients.discard(ws)

    async def publish(self, changes: list[dict[str, Any]]) -> str:
        """Broadcast each change as one envelope, in order; return the last ``seq`` used."""
        for change in changes:
            self.seq += 1
            envelope = {
                "doc_class": change["class"],
                "op": change["op"],
                "seq": f"{self.seq:020d}",
                "message": change["doc"],
            }
            broadcast(self.clients, json.dumps(envelope))
            await asyncio.sleep(0)
        return f"{self.seq:020d}"


def parse_subscription(raw: str | bytes) -> dict[str, Any] | None:
    """Return the ``{ClassName: {params}}`` subscription in ``raw``, or None if malformed."""
    try:
        message = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(message, dict) or len(message) != 1:
        return None
    ((class_name, params),) = message.items()
    if not isinstance(params, dict):
        return None
    return {class_name: params}


def parse_changes(body: bytes) -> list[dict[str, Any]]:
    """Return the changes of a ``POST /publish`` body; raise ValueError if malformed."""
    payload = json.loads(body)
    changes = payload["changes"] if isinstance(payload, dict) and "changes" in payload else [payload]
    for change in changes:
        if not (isinstance(change, dict) and {"class", "op", "doc"} <= change.keys()):
            raise ValueError("each change needs 'class', 'op' and 'doc'")
    return list(changes)


def only_ws_path(connection: ServerConnection, request: Request) -> Response | None:
    """Reject WebSocket upgrades on any path but ``/ws``."""
    if request.path != "/ws":
        return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
    return None


async def handle_http(fan_out: FanOut, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Serve ``POST /publish`` requests on one keep-alive HTTP/1.1 connection."""
    try:
        while True:
            request_line = await reader.readline()
            if not request_line:
                return
            method, path, _version = request_line.decode("latin-1").split(" ", 2)
            length = 0
            while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = header.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if length > MAX_HTTP_BODY_BYTES:
                await respond(writer, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "body too large"})
                return
            body = await reader.readexactly(length)
            if (method, path) != ("POST", "/publish"):
                await respond(writer, HTTPStatus.NOT_FOUND, {"error": "only POST /publish"})
                continue
            try:
                changes = parse_changes(body)
            except (ValueError, KeyError, TypeError) as exc:
                await respond(writer, HTTPStatus.BAD_REQUEST, {"error": str(exc)})
                continue
            last_seq = await fan_out.publish(changes)
            await respond(writer, HTTPStatus.OK, {"published": len(changes), "last_seq": last_seq})
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        return
    finally:
        writer.close()


async def respond(writer: asyncio.StreamWriter, status: HTTPStatus, payload: dict[str, Any]) -> None:
    """Write one JSON HTTP/1.1 response and wait until it is flushed."""
    body = json.dumps(payload).encode()
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode("latin-1") + body)
    await writer.drain()


async def run(ws_port: int, http_port: int) -> None:
    """Serve both listeners on 127.0.0.1 until SIGINT or SIGTERM."""
    fan_out = FanOut()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with serve(
        fan_out.handle_client,
        "127.0.0.1",
        ws_port,
        process_request=only_ws_path,
        compression=None,
        backlog=LISTEN_BACKLOG,
    ):
        http_server = await asyncio.start_server(
            lambda r, w: handle_http(fan_out, r, w), "127.0.0.1", http_port, backlog=LISTEN_BACKLOG
        )
        async with http_server:
            await stop.wait()


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ws-port", type=int, required=True, help="WebSocket port (endpoint /ws)")
    parser.add_argument("--http-port", type=int, required=True, help="HTTP port of POST /publish")
    args = parser.parse_args()
    asyncio.run(run(args.ws_port, args.http_port))


if __name__ == "__main__":
    main()
