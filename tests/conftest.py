"""Shared fixtures for the server tests: in-process servers on 127.0.0.1 and real WebSocket clients.

Every server is a :class:`NativeServer` bound to an ephemeral port; every client is a real ``websockets``
client over a real socket. Every wait is bounded (``asyncio.wait_for``), so a broken server fails a test
quickly instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from xia_broadcast.client import Backoff
from xia_broadcast.core.schema import DocSchema
from xia_broadcast.server.config import Settings
from xia_broadcast.server.native import NativeBroadcaster, NativeServer

#: seconds to wait for any one message; generous for a loaded CI machine, still fails fast
RECV_TIMEOUT = 5.0

ORDER = DocSchema.from_dict({
    "key": ["order_id"],
    "privilege_keys": {"customer": ["customer"]},
    "fields": {
        "order_id": "str",
        "customer": "str",
        "region": "str",
        "amount": "float",
        "status": "str",
        "note": "str",
        "margin": {"type": "float", "hidden": True},
    },
}, "Order")

CUSTOMER = DocSchema.from_dict({
    "key": ["customer_id"],
    "fields": {"customer_id": "str", "name": "str", "credit": {"type": "float", "hidden": True}},
}, "Customer")

CLASSES = {"Order": ORDER, "Customer": CUSTOMER}


def order(i: int, customer: str = "acme", region: str = "EU", **extra: Any) -> dict[str, Any]:
    """A valid Order document number ``i``."""
    oid = f"O-{i:06d}"
    doc = {"_id": oid, "order_id": oid, "customer": customer, "region": region, "amount": float(i),
           "status": "new", "margin": 0.25}
    doc.update(extra)
    return doc


def publish_orders(server: NativeServer, ids: range, **fields: Any) -> list[str]:
    """Publish one Order insert per number in ``ids``, in-process; returns their seqs, in order."""
    return [server.broadcaster.publish("Order", "I", order(i, **fields)) for i in ids]


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stalled_socket(port: int) -> socket.socket:
    """A connected client socket with a tiny receive buffer, so that a client that stops reading fills the
    kernel buffers after a few megabytes, not after tens of them."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(RECV_TIMEOUT)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


# -- clients -----------------------------------------------------------------------------------------------


def ws_connect(url: str, **kwargs: Any) -> connect:
    """A real ``websockets`` client connection (use with ``await`` or ``async with``): no proxy, bounded
    opening handshake, no client pings."""
    kwargs.setdefault("open_timeout", RECV_TIMEOUT)
    kwargs.setdefault("ping_interval", None)
    kwargs.setdefault("proxy", None)
    return connect(url, **kwargs)


async def recv_json(ws: ClientConnection, timeout: float = RECV_TIMEOUT) -> Any:
    """The next message, parsed; fails the test if none arrives within ``timeout``."""
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def read_until_closed(ws: ClientConnection, timeout: float = RECV_TIMEOUT,
                            limit: int = 100_000) -> tuple[list[Any], int, str]:
    """Every message until the server closes: ``(messages, close code, close reason)``.

    Fails if the server does not close within ``timeout`` or closes without a close frame.
    """
    messages: list[Any] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        for _ in range(limit):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            messages.append(json.loads(await asyncio.wait_for(ws.recv(), remaining)))
    except ConnectionClosed as exc:
        assert exc.rcvd is not None, f"connection dropped without a close frame after {len(messages)} messages"
        return messages, exc.rcvd.code, exc.rcvd.reason
    except TimeoutError:
        pass
    raise AssertionError(f"server did not close within {timeout}s ({len(messages)} messages received)")


async def refused(url: str, first_message: str | bytes | None, timeout: float = RECV_TIMEOUT,
                  **connect_kwargs: Any) -> tuple[int, str, list[Any]]:
    """Connect, send ``first_message`` (None: send nothing) and return ``(code, reason, messages)``."""
    async with ws_connect(url, **connect_kwargs) as ws:
        if first_message is not None:
            with contextlib.suppress(ConnectionClosed):  # the server may close before reading anything
                await ws.send(first_message)
        messages, code, reason = await read_until_closed(ws, timeout)
    return code, reason, messages


async def subscribe(url: str, request: Mapping[str, Any],
                    **connect_kwargs: Any) -> tuple[ClientConnection, dict[str, Any]]:
    """Connect, send the handshake ``request`` and return the client with the server's confirmation."""
    ws = await ws_connect(url, **connect_kwargs)
    await ws.send(json.dumps(request))
    try:
        confirmation = await recv_json(ws)
    except ConnectionClosed as exc:
        await ws.close()
        raise AssertionError(f"handshake refused: {exc.rcvd}") from exc
    return ws, confirmation


async def recv_until(ws: ClientConnection, last_id: str, timeout: float = RECV_TIMEOUT,
                     limit: int = 10_000) -> list[dict[str, Any]]:
    """Document messages up to and including the one whose ``_id`` is ``last_id`` (a sentinel).

    Changes of one class arrive in publish order, so publishing a sentinel last and reading up to it shows
    everything the subscriber was sent before it, without sleeping.
    """
    got: list[dict[str, Any]] = []
    for _ in range(limit):
        msg = await recv_json(ws, timeout)
        got.append(msg)
        if msg.get("message", {}).get("_id") == last_id:
            return got
    raise AssertionError(f"sentinel {last_id} not received in {limit} messages")


class GoodClient:
    """A well-behaved subscriber that reads continuously in a background task.

    Tests use it to show that whatever another client does, this one keeps receiving every published change,
    in publish order: :meth:`publish` records what it expects, :meth:`verify` checks it all arrived.
    """

    def __init__(self, server: NativeServer, request: Mapping[str, Any] | None = None) -> None:
        self.server = server
        self.request = dict(request or {"Order": {}})
        self.ws: ClientConnection | None = None
        self.confirmation: dict[str, Any] = {}
        self.received: list[dict[str, Any]] = []
        self.expected: list[tuple[str, str]] = []
        self._reader: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()
        self._counter = 0
        self.closed = False
        self.close_code: int | None = None
        self.close_reason: str | None = None

    async def start(self) -> GoodClient:
        self.ws, self.confirmation = await subscribe(self.server.url, self.request)
        classes = {k for k in self.request if not k.startswith("_")}
        assert set(self.confirmation) == classes, self.confirmation
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.ws is not None
        with contextlib.suppress(ConnectionClosed):
            async for raw in self.ws:
                self.received.append(json.loads(raw))
                self._arrived.set()
        self.closed = True
        self.close_code, self.close_reason = self.ws.close_code, self.ws.close_reason
        self._arrived.set()

    def publish(self, n: int, **fields: Any) -> list[str]:
        """Publish ``n`` Orders in-process (each one a fresh id); returns their seqs."""
        seqs = []
        for _ in range(n):
            self._counter += 1
            doc = order(900_000 + self._counter, **fields)
            seq = self.server.broadcaster.publish("Order", "I", doc)
            self.expected.append((seq, doc["_id"]))
            seqs.append(seq)
        return seqs

    async def verify(self, timeout: float = RECV_TIMEOUT) -> None:
        """Everything published so far arrived, in order, nothing else, and the connection is still open."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.received) < len(self.expected) and not self.closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        assert not self.closed, f"the good client was closed: {self.close_code} {self.close_reason}"
        got = [(m["seq"], m["message"]["_id"]) for m in self.received]
        assert got == self.expected, (
            f"good client got {len(got)} of {len(self.expected)} changes (or out of order)")

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._reader, RECV_TIMEOUT)


# -- fixtures ---------------------------------------------------------------------------------------------


ServerFactory = Callable[..., Awaitable[NativeServer]]


@pytest.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    """A factory of started servers: ``await make_server(**settings)``; all are shut down afterwards.

    Defaults: ephemeral port on 127.0.0.1, the Order and Customer classes, no keepalive pings. ``broadcaster``
    (a :class:`NativeBroadcaster` subclass) is subclassed once more, so that its state is this server's.
    """
    servers: list[NativeServer] = []

    async def factory(broadcaster: type[NativeBroadcaster] | None = None, **settings: Any) -> NativeServer:
        settings.setdefault("port", 0)
        settings.setdefault("classes", dict(CLASSES))
        settings.setdefault("ping_interval", 0.0)
        settings.setdefault("shutdown_timeout", 2.0)
        if broadcaster is not None:  # a fresh subclass: its class-level state belongs to this server
            broadcaster = type(f"Test{broadcaster.__name__}", (broadcaster,), {})
        server = NativeServer(Settings(**settings), broadcaster)
        await server.start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await asyncio.wait_for(server.shutdown(), 15)


@pytest.fixture
async def server(make_server: ServerFactory) -> NativeServer:
    """A public server with the default settings and the Order and Customer classes."""
    return await make_server()


@pytest.fixture
async def good_client() -> AsyncIterator[Callable[..., Awaitable[GoodClient]]]:
    """A factory of :class:`GoodClient` subscribers, closed afterwards."""
    clients: list[GoodClient] = []

    async def factory(server: NativeServer, request: Mapping[str, Any] | None = None) -> GoodClient:
        client = await GoodClient(server, request).start()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()


def http_base(server: NativeServer) -> str:
    return f"http://127.0.0.1:{server.port}"


async def settled_health(http: httpx.AsyncClient, server: NativeServer, connections: int,
                         timeout: float = 2.0) -> dict[str, Any]:
    """``GET /healthz`` until it reports ``connections`` (closing sockets take a loop turn to go); returns
    the last answer, whatever it says, for the caller to assert on."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        health: dict[str, Any] = (await http.get(f"{http_base(server)}/healthz")).json()
        if health["connections"] == connections or loop.time() > deadline:
            return health
        await asyncio.sleep(0.02)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client (no proxy from the environment, bounded timeouts)."""
    async with httpx.AsyncClient(trust_env=False, timeout=RECV_TIMEOUT) as client:
        yield client


# -- connections cut on purpose ---------------------------------------------------------------------------


class TcpProxy:
    """A TCP proxy on 127.0.0.1 in front of a server, that a test cuts whenever it likes.

    :meth:`cut` aborts every connection through it (both sides, no close frame: the client sees a dropped
    connection, as on a network failure); :meth:`stop` also stops accepting (connections are refused, as while
    a server restarts) until :meth:`start` listens again on the same port.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.connections = 0  # connections accepted so far
        self.cuts = 0  # connections aborted by cut()
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str = "/ws") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        pair = (writer, up_writer)
        self._pairs.add(pair)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pipe(src, dst, pair))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter]) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        self._close(pair, abort=False)

    def _close(self, pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter], abort: bool) -> None:
        if pair in self._pairs:
            self._pairs.discard(pair)
            for w in pair:
                if abort:
                    w.transport.abort()
                else:
                    w.close()

    def cut(self) -> int:
        """Abort every connection now; returns how many were cut."""
        pairs = list(self._pairs)
        for pair in pairs:
            self._close(pair, abort=True)
        self.cuts += len(pairs)
        return len(pairs)

    async def stop(self) -> None:
        """Stop accepting and cut every connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.cut()

    async def close(self) -> None:
        await self.stop()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=RECV_TIMEOUT)


@pytest.fixture
async def make_proxy() -> AsyncIterator[Callable[[int], Awaitable[TcpProxy]]]:
    """A factory of started :class:`TcpProxy` objects in front of a port; all are closed afterwards."""
    proxies: list[TcpProxy] = []

    async def factory(target_port: int) -> TcpProxy:
        proxy = await TcpProxy(target_port).start()
        proxies.append(proxy)
        return proxy

    yield factory
    for proxy in proxies:
        await proxy.close()


def fast_backoff(seed: int = 0) -> Backoff:
    """Reconnection delays for tests: at most 0.2 s, seeded jitter."""
    return Backoff(initial=0.02, factor=2.0, max_delay=0.2, rng=random.Random(seed))
