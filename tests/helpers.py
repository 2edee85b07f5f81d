"""What the tests share, in one module: waiting, the test documents, stand-ins for the library's
transports, real clients and servers on 127.0.0.1.

Fixtures live in ``conftest.py``; they are built from what is here. Test modules import from here:
``from helpers import until, order, subscribe``. The journal contract's own pieces (backends of every kind,
a Redis to test against) are in ``journal_contract/journal_helpers.py``, built on these.

Every wait is bounded (:data:`RECV_TIMEOUT` unless told), so a broken server fails a test quickly instead of
hanging the suite; every wait on a condition goes through :func:`until`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, ClassVar

import httpx
import uvicorn
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from xia_broadcast import Broadcaster, Document, field
from xia_broadcast.client import Backoff
from xia_broadcast.core.schema import DocSchema
from xia_broadcast.fanout import Connection
from xia_broadcast.server.asgi import create_app
from xia_broadcast.server.config import Settings
from xia_broadcast.server.native import NativeServer
from xia_broadcast.transport import NoTransport

# -- waiting -----------------------------------------------------------------------------------------------

#: seconds any one wait may take (a message, a condition, a process starting) before the test fails:
#: generous for a loaded CI machine, still fails fast
RECV_TIMEOUT = 5.0
#: seconds a whole client scenario (connect, drops, retries, resumes) may take before the test fails
SCENARIO_TIMEOUT = 30.0
#: the data scope of the subscribers of one region, and the regions documents are spread over
EU = [{"fn": "region", "op": "==", "val": "EU"}]
REGIONS = ["EU", "US", "APAC"]

#: seconds between two checks of a condition nothing signals
POLL = 0.005


async def until(predicate: Callable[[], Any], timeout: float = RECV_TIMEOUT, *, what: str | Callable[[], str],
                wake: asyncio.Event | None = None, poll: float | None = None) -> None:
    """Wait until ``predicate()`` is true; fail the test after ``timeout`` seconds with an assertion naming
    ``what`` it waited for (a string, or a function that makes it when the wait fails, to show the state then).

    ``predicate`` may return an awaitable (an HTTP request, a publish to retry): it is awaited at each check.
    It is checked every ``poll`` seconds (:data:`POLL` by default) or, given ``wake`` (an event set whenever
    the condition may have changed), each time the event is set, and also every ``poll`` seconds if given.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if wake is not None:
            wake.clear()  # before the check: a change signalled while it runs wakes the wait below at once
        holds = predicate()
        if inspect.isawaitable(holds):
            holds = await holds
        if holds:
            return
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AssertionError(f"timed out after {timeout} s waiting for {what() if callable(what) else what}")
        if wake is None:
            await asyncio.sleep(min(POLL if poll is None else poll, remaining))
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), remaining if poll is None else min(poll, remaining))


class FakeClock:
    """An injectable clock (seconds) that moves only when the test moves it (:meth:`advance`, or ``now``)."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- the test documents ------------------------------------------------------------------------------------

#: the Order class of the test servers (``make_server``'s default classes), as a schema; not the pydantic
#: ``Order`` document of test_broadcaster_api, nor the demo's ``ORDER_SCHEMA``
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
    """A valid document of :data:`ORDER`, number ``i`` (``_id`` ``O-00000i``, amount ``i``)."""
    oid = f"O-{i:06d}"
    doc = {"_id": oid, "order_id": oid, "customer": customer, "region": region, "amount": float(i),
           "status": "new", "margin": 0.25}
    doc.update(extra)
    return doc


def publish_orders(server: NativeServer, ids: range, **fields: Any) -> list[str]:
    """Publish one Order insert per number in ``ids``, in-process; returns their seqs, in order."""
    return [server.service.publish_nowait("Order", "I", order(i, **fields)) for i in ids]


def order_change(i: int, op: str = "I", **fields: Any) -> dict[str, Any]:
    """A change of :func:`order` ``i`` as ``POST /publish`` takes it."""
    return {"class": "Order", "op": op, "doc": order(i, **fields)}


class Region(Document):
    """A small ``Document`` (pydantic) class for the ``Broadcaster`` API: an order and its region."""

    order_id: str = field(key=True)
    region: str = ""


# -- stand-ins for the library's transports ----------------------------------------------------------------


class Socket:
    """A stand-in websocket for the ``Broadcaster`` API: any hashable object is one (equal only to itself)."""

    def __init__(self, name: Any = "ws") -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Socket({self.name!r})"


class Recorder(Broadcaster):
    """A ``Broadcaster`` whose documented transport hook (``send_message_async``) records what it is handed:
    ``sent`` holds ``(websocket, message)`` in the order sent. Make one per test with :func:`fresh`."""

    sent: ClassVar[list[tuple[Any, str]]] = []

    @classmethod
    async def send_message_async(cls, websocket: Any, message: str) -> None:
        cls.sent.append((websocket, message))

    @classmethod
    def to(cls, ws: Any) -> list[dict[str, Any]]:
        """The messages sent to ``ws``, parsed, in order."""
        return [json.loads(m) for w, m in cls.sent if w == ws]


def fresh(*classes: Any, base: type[Recorder] = Recorder, **attrs: Any) -> type[Recorder]:
    """A new subclass of ``base`` (its own connections, Hub and ``sent``), with ``classes`` (schemas or
    ``Document`` classes) registered and ``attrs`` (hooks, bounds) set on it."""
    b: type[Recorder] = type("B", (base,), {"sent": [], **attrs})
    for cls in classes:
        b.register_class(cls)
    return b


class Signals(NoTransport[Any]):
    """A Hub's transport that writes nothing and records what the Hub tells it, as events a test waits for:
    ``ready`` when a connection has queued messages, ``closed`` (code, reason) when one must be closed.
    With ``take``, a connection's queue is taken at once into ``taken`` (as a transport would write it)."""

    def __init__(self, take: bool = False) -> None:
        self.ready = asyncio.Event()
        self.closed: list[tuple[int, str]] = []
        self.closing = asyncio.Event()
        self.take = take
        self.taken: list[bytes] = []

    def writable(self, conn: Connection[Any]) -> None:
        if self.take:
            self.taken.extend(o.data for o in conn.take())
            conn.scheduled = False
        self.ready.set()

    def close(self, conn: Connection[Any], code: int, reason: str) -> None:
        self.closed.append((code, reason))
        self.closing.set()

    async def next_ready(self, timeout: float = RECV_TIMEOUT) -> None:
        await asyncio.wait_for(self.ready.wait(), timeout)
        self.ready.clear()


# -- sockets -----------------------------------------------------------------------------------------------


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


# -- WebSocket clients -------------------------------------------------------------------------------------


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
        for _ in range(limit):  # reads what comes until the close: a deadline of its own, not a wait to poll
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
            seq = self.server.service.publish_nowait("Order", "I", doc)
            self.expected.append((seq, doc["_id"]))
            seqs.append(seq)
        return seqs

    async def verify(self, timeout: float = RECV_TIMEOUT) -> None:
        """Everything published so far arrived, in order, nothing else, and the connection is still open."""
        await until(lambda: len(self.received) >= len(self.expected) or self.closed, timeout, wake=self._arrived,
                    what=lambda: f"the good client to get {len(self.expected)} changes "
                                 f"(it got {len(self.received)})")
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


# -- HTTP --------------------------------------------------------------------------------------------------


def http_base(server: NativeServer) -> str:
    return f"http://127.0.0.1:{server.port}"


async def settled_health(http: httpx.AsyncClient, server: NativeServer, connections: int,
                         timeout: float = 2.0) -> dict[str, Any]:
    """``GET /healthz`` until it reports ``connections`` (closing sockets take a loop turn to go); returns
    that answer, for the caller to assert on the rest of it."""
    answers: list[dict[str, Any]] = []

    async def settled() -> bool:
        answers.append((await http.get(f"{http_base(server)}/healthz")).json())
        return bool(answers[-1]["connections"] == connections)

    await until(settled, timeout, poll=0.02,
                what=lambda: f"/healthz to report {connections} connections (last: {answers[-1]})")
    return answers[-1]


async def post_publish(http: httpx.AsyncClient, server: Any, body: Any,
                       headers: dict[str, str] | None = None) -> httpx.Response:
    """``POST /publish`` to ``server`` (anything with a ``port`` on 127.0.0.1: a native server, the ASGI app);
    ``body`` is sent as JSON, or as it is when it is bytes or a string, declared ``application/json`` unless
    ``headers`` say otherwise."""
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return await http.post(f"http://127.0.0.1:{server.port}/publish", content=content,
                           headers={"Content-Type": "application/json", **(headers or {})})


async def read_response(reader: asyncio.StreamReader,
                        timeout: float = RECV_TIMEOUT) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response from ``reader``: ``(status, headers with lower-case names, body)``; interim (1xx)
    responses are returned like any other (their body is empty)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
    length = int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), timeout) if length else b""
    return status, headers, body


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float = RECV_TIMEOUT) -> bool:
    """True when the peer closes the connection (EOF or reset) within ``timeout`` (what it sends meanwhile
    is skipped, up to 1 MiB); False when it keeps it open."""
    try:
        for _ in range(64):
            if not await asyncio.wait_for(reader.read(16 * 1024), timeout):
                return True
    except (ConnectionError, asyncio.IncompleteReadError):
        return True
    except TimeoutError:
        return False
    return False


# -- raw WebSocket over a plain socket ---------------------------------------------------------------------

UPGRADE_REQUEST = ("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def masked_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A final client frame (masked, as RFC 6455 requires of clients) with ``opcode`` (1: text)."""
    mask = b"\x01\x02\x03\x04"
    n = len(payload)
    head = bytes((0x80 | opcode,))
    if n < 126:
        head += bytes((0x80 | n,))
    elif n < 65536:
        head += bytes((0x80 | 126,)) + n.to_bytes(2, "big")
    else:
        head += bytes((0x80 | 127,)) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def read_frame(reader: asyncio.StreamReader, timeout: float = RECV_TIMEOUT) -> tuple[int, bytes]:
    """One unmasked server frame: ``(opcode, payload)``."""
    first, second = await asyncio.wait_for(reader.readexactly(2), timeout)
    n = second & 0x7F
    if n == 126:
        n = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), timeout), "big")
    elif n == 127:
        n = int.from_bytes(await asyncio.wait_for(reader.readexactly(8), timeout), "big")
    return first & 0x0F, await asyncio.wait_for(reader.readexactly(n), timeout)


async def raw_subscribe(port: int, request: Mapping[str, Any], path: str = "/ws",
                        stall: bool = False) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket client on a plain socket: upgrade, send the handshake, read the confirmation.

    ``stall``: then stop reading (``writer.transport.resume_reading()`` reads again), with a tiny receive
    buffer, so that the kernel buffers fill after a few kilobytes and the server holds the rest.
    """
    rcvbuf = 4096 if stall else None
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)), RECV_TIMEOUT)
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(UPGRADE_REQUEST.format(path=path).encode() + masked_frame(json.dumps(request).encode()))
    status, _, _ = await read_response(reader)
    assert status == 101, status
    opcode, payload = await read_frame(reader)
    while opcode == 0x9:  # a keepalive ping may come before the confirmation (a server with pings on)
        opcode, payload = await read_frame(reader)
    assert opcode == 0x1 and set(json.loads(payload)) == {k for k in request if not k.startswith("_")}, payload
    if stall:
        writer.transport.pause_reading()
    return reader, writer


# -- servers -----------------------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def silent_host() -> AsyncIterator[tuple[int, asyncio.Event]]:
    """A TCP server on 127.0.0.1 that accepts connections and never answers: yields its port and an event
    set once a connection was accepted; closed afterwards."""
    accepted = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        with contextlib.suppress(Exception):
            await reader.read()

    tcp = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        yield tcp.sockets[0].getsockname()[1], accepted
    finally:
        tcp.close()
        await tcp.wait_closed()


def cli(*args: str) -> list[str]:
    """The command line running ``xia-broadcast ARGS`` with this interpreter."""
    return [sys.executable, "-m", "xia_broadcast.cli", *args]


#: the ``make_server`` fixture: ``await make_server(**settings)`` is a started :class:`NativeServer`
ServerFactory = Callable[..., Awaitable[NativeServer]]


class AsgiServer:
    """create_app(settings) served by uvicorn in this event loop, on a socket bound to 127.0.0.1:0."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)
        self.service = self.app.state.service
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}{settings.path}"
        self.base = f"http://127.0.0.1:{self.port}"
        self.uvicorn = uvicorn.Server(uvicorn.Config(self.app, lifespan="on", log_level="warning"))
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> AsgiServer:
        task = self.task = asyncio.get_running_loop().create_task(self.uvicorn.serve(sockets=[self.sock]))
        await until(lambda: self.uvicorn.started or task.done(), what="uvicorn to start")
        assert self.uvicorn.started, "uvicorn did not start"
        return self

    async def stop(self) -> None:
        self.uvicorn.should_exit = True
        if self.task is not None:
            await asyncio.wait_for(self.task, 15)
        self.sock.close()


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid``, in bytes (Linux ``/proc``)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


class ServerProcess:
    """``xia-broadcast serve`` in a child process, on an ephemeral port of 127.0.0.1, for what a test must
    measure from outside: its resident memory, its file descriptors, its log (stderr, one JSON per line).

    ``config`` is written as the TOML config file; ``env`` adds ``XIA_BROADCAST_*`` settings;
    ``fd_limit`` sets the child's soft and hard ``RLIMIT_NOFILE`` before it starts.
    """

    def __init__(self, tmp_path: Any, config: str = "", env: Mapping[str, str] | None = None,
                 fd_limit: int | None = None) -> None:
        self.config = tmp_path / "server.toml"
        self.config.write_text(config + "\n[classes.Order]\nkey = [\"order_id\"]\n[classes.Order.fields]\n"
                               "order_id = \"str\"\nnote = \"str\"\nmargin = { type = \"float\", hidden = true }\n")
        self.stderr_path = tmp_path / "server.stderr"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("XIA_BROADCAST_")}
        self.env.update({"XIA_BROADCAST_PING_INTERVAL": "0", **(env or {})})
        self.fd_limit = fd_limit
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def _limit_fds(self) -> None:  # runs in the child, before exec
        import resource
        assert self.fd_limit is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.fd_limit, self.fd_limit))

    def start(self, timeout: float = 20.0) -> ServerProcess:
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                cli("serve", "--port", "0", "--config", str(self.config)),
                stdout=subprocess.PIPE, stderr=err, env=self.env,
                preexec_fn=self._limit_fds if self.fd_limit is not None else None)
        assert self.proc.stdout is not None
        # reads the child's stdout line by line until it says where it listens (synchronous, called from
        # sync fixtures): a loop of its own, not a wait to poll
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline().decode()
                match = re.search(r"listening on ws://127\.0\.0\.1:(\d+)/", line)
                if match:
                    self.port = int(match.group(1))
                    return self
                if not line:
                    break
        self.stop()
        raise AssertionError(f"server did not start: {self.log_text()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def log_text(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines so far (anything else on stderr is left out: see :meth:`log_text`)."""
        records = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    records.append(entry)
        return records

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


# -- connections cut on purpose ----------------------------------------------------------------------------


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


def fast_backoff(seed: int = 0) -> Backoff:
    """Reconnection delays for tests: at most 0.2 s, seeded jitter."""
    return Backoff(initial=0.02, factor=2.0, max_delay=0.2, rng=random.Random(seed))


class Collector:
    """Reads a client ``Listener`` in a background task; tests wait (:meth:`until`) for conditions on what
    arrived. Subclasses keep more of each event by overriding :meth:`record`."""

    #: how long :meth:`until` waits by default (a scenario with reconnections)
    timeout = 30.0

    def __init__(self, lst: Any, on_event: Callable[[Any], None] | None = None) -> None:
        self.listener = lst
        self.events: list[Any] = []
        self.error: BaseException | None = None
        self._changed = asyncio.Event()
        self._on_event = on_event
        self.task = asyncio.get_running_loop().create_task(self._run())

    def record(self, event: Any) -> None:
        """Keep one event (called in order, before ``on_event``)."""
        self.events.append(event)

    async def _run(self) -> None:
        try:
            async for event in self.listener:
                self.record(event)
                if self._on_event is not None:
                    self._on_event(event)
                self._changed.set()
        except Exception as exc:
            self.error = exc
        finally:
            self._changed.set()

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    async def until(self, condition: Callable[[], bool], *, what: str, timeout: float | None = None) -> None:
        """Until ``condition()`` holds, checked at each event; fails after ``timeout`` seconds naming ``what``,
        or at once if the iteration ended."""

        def holds() -> bool:
            if condition():
                return True
            if self.task.done():
                raise AssertionError(f"the listener stopped while waiting for {what}: {self.error!r}")
            return False

        await until(holds, self.timeout if timeout is None else timeout, wake=self._changed,
                    what=lambda: f"{what} ({len(self.events)} events)")

    async def close(self) -> None:
        await self.listener.close()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, RECV_TIMEOUT)


#: how long a command of the CLI tests may take to do what is waited for
CLI_TIMEOUT = 30.0


class CliProcess:
    """A running subcommand: its stdout lines and stderr lines are read as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out: list[str] = []
        self.err: list[str] = []
        self._changed = asyncio.Event()
        assert proc.stdout is not None and proc.stderr is not None
        loop = asyncio.get_running_loop()
        self._readers = [loop.create_task(self._read(proc.stdout, self.out)),
                         loop.create_task(self._read(proc.stderr, self.err))]

    async def _read(self, stream: asyncio.StreamReader, into: list[str]) -> None:
        while line := await stream.readline():
            into.append(line.decode().rstrip("\n"))
            self._changed.set()
        self._changed.set()

    async def until(self, condition: Callable[[], bool], *, what: str, timeout: float = CLI_TIMEOUT) -> None:
        """Until ``condition()`` holds, checked at each line read (and every 0.5 s, for the exit); fails after
        ``timeout`` seconds, or once the process has ended without it, naming ``what``."""

        def ended() -> bool:
            return self.proc.returncode is not None and all(r.done() for r in self._readers)

        await until(lambda: condition() or ended(), timeout, wake=self._changed, poll=0.5,
                    what=lambda: f"{what}; stdout={self.out[-5:]} stderr={self.err[-5:]}")
        assert condition(), f"{what}: not met, the process ended; stdout={self.out[-5:]} stderr={self.err[-5:]}"

    def lines(self) -> list[dict[str, Any]]:
        """The stdout lines, parsed as JSON."""
        return [json.loads(line) for line in self.out]

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()

    async def wait(self, timeout: float = CLI_TIMEOUT) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.wait_for(asyncio.gather(*self._readers), timeout)
        return code
