"""The standalone server: one asyncio protocol per socket, HTTP and WebSocket on one port.

HTTP/1.1 is parsed by ``h11`` (operations endpoints, ``POST /publish``, the upgrade request); after the
upgrade, inbound WebSocket frames are parsed by the sans-I/O protocol of ``websockets`` (masking,
fragmentation, UTF-8, ping/pong, the close handshake, the inbound size limit).

Outbound changes bypass it: a message is framed once per view (server frames are not masked and
compression is never negotiated, so the frame is the same bytes for every recipient) and, after a
fan-out, every connection with queued messages gets them all in **one** ``transport.write`` call, with
no task and no await per socket. A connection whose transport buffer is over its high-water mark is
paused: messages wait in its bounded queue until the transport drains, and an overflow closes it with
4409.

Memory per idle subscribed connection: the protocol object, an h11 connection until the upgrade, a
websockets protocol (a few KiB), the asyncio transport and kernel socket buffers. No task is kept per
connection; one timer serves keepalive for all.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import struct
import time
from typing import Any

import h11
import orjson
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side, State

from ..broadcast import Broadcaster
from ..core.protocol import (
    CLOSE_BAD_HANDSHAKE,
    CLOSE_GOING_AWAY,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_TOO_MANY_CONNECTIONS,
    Refusal,
)
from ..fanout import Connection, Outgoing
from .config import Settings
from .metrics import CONTENT_TYPE
from .service import PublishError, Service
from .static import static_response

log = logging.getLogger("xia_broadcast.server")

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: transport buffer high-water mark: above it a connection is paused and messages wait in its queue
WRITE_HIGH_WATER = 1024 * 1024
CLOSE_TIMEOUT = 2.0
#: seconds a kept-alive HTTP connection may stay idle between requests
HTTP_IDLE_TIMEOUT = 60.0


def text_frame(data: bytes) -> bytes:
    """An unmasked, unfragmented WebSocket text frame carrying ``data`` (RFC 6455 section 5.2)."""
    n = len(data)
    if n < 126:
        return bytes((0x81, n)) + data
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + data
    return struct.pack("!BBQ", 0x81, 127, n) + data


def frame_of(out: Outgoing) -> bytes:
    """The wire frame of a message, built once and cached on it for every other recipient."""
    frame = out.frame
    if frame is None:
        frame = out.frame = text_frame(out.data)
    return frame


class NativeBroadcaster(Broadcaster):
    """A broadcaster whose websockets are :class:`WebSocketConnection` objects of the native server.

    After a fan-out, connections that have messages are written once each, on the next loop iteration,
    so that a burst of changes published in one go leaves in one write per socket.
    """

    _pending: list[Connection] = []
    _flush_handle: asyncio.Handle | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._pending = []
        cls._flush_handle = None

    @classmethod
    def subscriber_is_connected(cls, websocket: Any) -> bool:
        return bool(websocket.is_open())

    @classmethod
    async def send_message_async(cls, websocket: Any, message: str) -> None:
        websocket.write_frames(text_frame(message.encode()))

    @classmethod
    async def close_async(cls, websocket: Any, code: int, reason: str) -> None:
        websocket.close(code, reason)

    @classmethod
    def _connection_ready(cls, conn: Connection) -> None:
        cls._pending.append(conn)
        if cls._flush_handle is None:
            cls._flush_handle = asyncio.get_running_loop().call_soon(cls.flush_pending)

    @classmethod
    def flush_pending(cls) -> None:
        """Write every pending connection's queued messages, one write per connection."""
        cls._flush_handle = None
        pending, cls._pending = cls._pending, []
        oldest: float | None = None
        for conn in pending:
            try:
                born = conn.websocket.write_queue(conn)
                if born is not None and (oldest is None or born < oldest):
                    oldest = born
            except Exception:  # one connection's fault never stops the others
                log.exception("writing to a subscriber failed; it is closed")
                conn.scheduled = False
                cls.disconnect(conn.websocket)
                conn.websocket.close(1011, "internal error")
        if oldest is not None and pending:
            pending[0].websocket.service.metrics.send_latency.observe(time.perf_counter() - oldest)

    @classmethod
    async def flush(cls, timeout: float = 5.0) -> bool:
        cls.flush_pending()
        return await super().flush(timeout)


class WebSocketConnection(asyncio.Protocol):
    """One client socket: HTTP until an upgrade on the WebSocket path, then WebSocket."""

    def __init__(self, server: NativeServer) -> None:
        self.server = server
        self.service = server.service
        self.transport: asyncio.Transport | None = None
        self.http: h11.Connection | None = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        self.body = bytearray()
        self.request: h11.Request | None = None
        self.ws: Protocol | None = None
        self.upgrade_headers: dict[str, str] = {}
        self.session: Any = None
        self.handshake_timer: asyncio.TimerHandle | None = None
        self.fragments: list[bytes] | None = None
        #: client messages that arrived while the handshake was being processed
        self.early: list[bytes] = []
        self.paused = False
        self.pending: Connection | None = None
        self.last_recv = time.monotonic()
        self.peer = ""

    # -- asyncio.Protocol ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.server.sockets.add(self)
        self._arm_timer(self.service.settings.handshake_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.sockets.discard(self)
        self._cancel_timer()
        if self.ws is not None:
            self.service.connection_count -= 1
            self.service.close_session(self, self.session)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.last_recv = time.monotonic()
        if self.ws is None:
            self._http_received(data)
        else:
            self._ws_received(data)

    def pause_writing(self) -> None:
        # the peer does not read: stop reading from it too, so that nothing it sends (requests, pings)
        # can make the server write more for it meanwhile
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
        pending, self.pending = self.pending, None
        if pending is not None:
            self._write_observed(pending)

    # -- outbound -----------------------------------------------------------------------------------------

    def is_open(self) -> bool:
        return self.ws is not None and self.ws.state is State.OPEN and self.transport is not None

    def write_frames(self, frames: bytes) -> None:
        if self.is_open():
            assert self.transport is not None
            self.transport.write(frames)

    def write_queue(self, conn: Connection) -> float | None:
        """Write everything queued for this socket in one call (or wait for the transport to drain);
        while the connection replays from the journal, refill and write again, a few rounds per loop
        iteration so that one replay never holds the loop. Returns when the oldest message written was
        made (``Outgoing.born``), for the caller to observe publish-to-send latency once per flush."""
        if not self.is_open():
            conn.take()
            conn.scheduled = False
            return None
        assert self.transport is not None
        engine = self.server.broadcaster.engine()
        oldest = None
        for _ in range(4):
            if self.paused:
                self.pending = conn  # stays scheduled; resume_writing() writes it
                return oldest
            if not conn.queue and conn.replaying:
                engine.pump(conn)
            batch = conn.take()
            if not batch:
                break
            if oldest is None:
                oldest = batch[0].born
            self.transport.write(frame_of(batch[0]) if len(batch) == 1 else b"".join([frame_of(o) for o in batch]))
        if (conn.replaying or conn.queue) and not conn.closed:
            asyncio.get_running_loop().call_soon(self._write_observed, conn)
        else:
            conn.scheduled = False
        return oldest

    def _write_observed(self, conn: Connection) -> None:
        """:meth:`write_queue` outside a flush (replay rounds, a transport that drained)."""
        born = self.write_queue(conn)
        if born is not None:
            self.service.metrics.send_latency.observe(time.perf_counter() - born)

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake with ``code`` and ``reason``; abort if the peer does not answer."""
        if self.ws is None or self.transport is None:
            return
        if self.ws.state is State.OPEN:
            if code >= 4000:
                self.service.refusals += 1
            self.ws.send_close(code, reason)
            self._send_pending()
            asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self._abort)

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- HTTP ---------------------------------------------------------------------------------------------

    def _http_received(self, data: bytes) -> None:
        assert self.http is not None
        self.http.receive_data(data)
        try:
            while self.http is not None:
                event = self.http.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    if event is h11.PAUSED and self.http.our_state is h11.DONE:
                        self.http.start_next_cycle()
                        continue
                    break
                if isinstance(event, h11.Request):
                    self.request = event
                    self.body.clear()
                    self._arm_timer(self.service.settings.handshake_timeout)  # to finish this request
                elif isinstance(event, h11.Data):
                    self.body += event.data
                    if len(self.body) > self.service.settings.max_publish_size:
                        self._respond(413, {"error": "too_large", "message": "body too large"}, close=True)
                        return
                elif isinstance(event, h11.EndOfMessage):
                    try:
                        self._handle_request()
                    except Exception:
                        log.exception("HTTP request failed unexpectedly")
                        if self.http is not None and self.http.our_state is h11.SEND_RESPONSE:
                            self._respond(500, {"error": "internal", "message": "internal error"}, close=True)
                        elif self.transport is not None:
                            self.transport.close()
                        return
                    if self.http is not None and self.http.our_state is h11.DONE and \
                            self.http.their_state is h11.DONE:
                        self.http.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    if self.transport is not None:
                        self.transport.close()
                    return
        except h11.RemoteProtocolError as exc:
            self._respond(exc.error_status_hint, {"error": "bad_request", "message": str(exc)}, close=True)

    def _respond(self, status: int, payload: Any, *, content_type: str = "application/json",
                 close: bool = False, raw: bytes | None = None) -> None:
        assert self.http is not None and self.transport is not None
        body = raw if raw is not None else orjson.dumps(payload)
        headers = [("content-type", content_type), ("content-length", str(len(body)))]
        if close:
            headers.append(("connection", "close"))
        try:
            out = self.http.send(h11.Response(status_code=status, headers=headers))
            out = (out or b"") + (self.http.send(h11.Data(data=body)) or b"")
            out += self.http.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            self.transport.close()
            return
        self.transport.write(out)
        if close or self.http.our_state is h11.MUST_CLOSE:
            self.transport.close()
            self.http = None
        else:
            self._arm_timer(HTTP_IDLE_TIMEOUT)  # a kept-alive connection may wait for its next request

    def _handle_request(self) -> None:
        req = self.request
        assert req is not None
        target = req.target.decode("latin-1")
        path = target.split("?", 1)[0]
        method = req.method.decode("latin-1")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in req.headers}
        settings = self.service.settings
        if path == settings.path:
            if method == "GET" and headers.get("upgrade", "").lower() == "websocket":
                self._upgrade(headers)
            else:
                self._respond(426, {"error": "upgrade_required", "message": "WebSocket endpoint"})
            return
        if path == "/healthz" and method == "GET":
            self._respond(200, self.service.health())
        elif path == "/readyz" and method == "GET":
            ok = self.service.ready()
            self._respond(200 if ok else 503, {"ready": ok})
        elif path == "/metrics" and method == "GET":
            self._respond(200, None, content_type=CONTENT_TYPE, raw=self.service.metrics_text())
        elif path == "/publish":
            if method != "POST":
                self._respond(405, {"error": "method_not_allowed", "message": "POST only"})
                return
            try:
                seqs = self.service.publish_http(headers, bytes(self.body))
            except PublishError as exc:
                self._respond(exc.status, None, raw=exc.body())
                return
            # the whole request is fanned out: write it now, one write per socket, before answering
            self.server.broadcaster.flush_pending()
            self._respond(200, {"seqs": seqs})
        elif method == "GET" and (static := static_response(path, settings)) is not None:
            self._respond(200, None, content_type=static[0], raw=static[1])
        else:
            self._respond(404, {"error": "not_found", "message": f"no endpoint {path}"})

    def _upgrade(self, headers: dict[str, str]) -> None:
        assert self.http is not None and self.transport is not None
        key = headers.get("sec-websocket-key", "")
        if headers.get("sec-websocket-version") != "13" or "upgrade" not in headers.get("connection", "").lower() \
                or len(key) != 24:
            self._respond(400, {"error": "bad_upgrade", "message": "not a valid WebSocket upgrade request"},
                          close=True)
            return
        accept = base64.b64encode(hashlib.sha1(key.encode() + _WS_GUID).digest())
        self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        trailing, _closed = self.http.trailing_data
        self.http = None
        self.ws = Protocol(Side.SERVER, state=State.OPEN, max_size=self.service.settings.max_message_size)
        self.upgrade_headers = headers
        self.service.connection_count += 1
        if self.service.shutting_down:
            self.close(CLOSE_GOING_AWAY, "shutting down")
            return
        if self.service.connection_count > self.service.settings.max_connections:
            self.close(CLOSE_TOO_MANY_CONNECTIONS, "too many connections")
            return
        if trailing:
            self._ws_received(trailing)

    # -- WebSocket ----------------------------------------------------------------------------------------

    def _ws_received(self, data: bytes) -> None:
        ws = self.ws
        assert ws is not None
        was_open = ws.state is State.OPEN
        ws.receive_data(data)
        if was_open and ws.close_sent is not None and ws.close_sent.code == CLOSE_MESSAGE_TOO_BIG:
            self.service.refusals += 1  # the protocol refused an oversized message itself
        for frame in ws.events_received():
            if not isinstance(frame, Frame):
                continue
            if frame.opcode is Opcode.TEXT or frame.opcode is Opcode.BINARY:
                if frame.fin:
                    self._message(bytes(frame.data))
                else:
                    self.fragments = [bytes(frame.data)]
            elif frame.opcode is Opcode.CONT and self.fragments is not None:
                self.fragments.append(bytes(frame.data))
                if frame.fin:
                    message, self.fragments = b"".join(self.fragments), None
                    self._message(message)
        self._send_pending()
        if ws.close_expected() and self.transport is not None:
            asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self._abort)

    def _send_pending(self) -> None:
        assert self.ws is not None
        for chunk in self.ws.data_to_send():
            if self.transport is None:
                return
            if chunk:
                self.transport.write(chunk)
            else:
                self.transport.close()

    def _message(self, message: bytes) -> None:
        if self.session is not None:
            try:
                self.service.client_message(self, self.session, message, self.close)
            except Refusal as exc:
                self.close(exc.code, exc.reason)
            return
        if self.handshake_timer is None:  # the handshake is being processed: keep a few for after it
            if len(self.early) < 16:
                self.early.append(message)
            return
        self._cancel_timer()
        asyncio.get_running_loop().create_task(self._open(message))

    async def _open(self, message: bytes) -> None:
        try:
            self.session = await self.service.open_session(self, message, self.upgrade_headers)
            self.service.arm_expiry(self, self.session, self.close)
            early, self.early = self.early, []
            for m in early:
                self._message(m)
        except Refusal as exc:
            log.info("refused", extra={"peer": self.peer, "code": exc.code, "reason": exc.reason})
            self.close(exc.code, exc.reason)
        except Exception:
            log.exception("handshake failed unexpectedly")
            self.close(1011, "internal error")

    def _handshake_timeout(self) -> None:
        self.handshake_timer = None
        if self.ws is None:
            if self.transport is not None:
                self.transport.close()
            return
        if self.session is None:
            self.close(CLOSE_BAD_HANDSHAKE, "Need connection information")

    def _arm_timer(self, seconds: float) -> None:
        """(Re)start the one timer of this socket: the request or the WebSocket handshake must be done in
        ``seconds``; a kept-alive HTTP connection is closed after ``seconds`` without a request."""
        self._cancel_timer()
        self.handshake_timer = asyncio.get_running_loop().call_later(seconds, self._handshake_timeout)

    def _cancel_timer(self) -> None:
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
            self.handshake_timer = None

    def keepalive(self, now: float, interval: float, timeout: float) -> None:
        """Ping an open connection; abort it when nothing came back for ``interval + timeout`` seconds."""
        if not self.is_open():
            return
        if now - self.last_recv > interval + timeout:
            log.info("keepalive timeout", extra={"peer": self.peer})
            self._abort()
            return
        assert self.ws is not None
        self.ws.send_ping(b"")
        self._send_pending()


class NativeServer:
    """The standalone server. ``await start()``, then ``await shutdown()`` (or ``serve_forever``)."""

    def __init__(self, settings: Settings, broadcaster: type[NativeBroadcaster] | None = None) -> None:
        self.settings = settings
        self.broadcaster: type[NativeBroadcaster] = broadcaster or type("ServerBroadcaster", (NativeBroadcaster,), {})
        self.service = Service(settings, self.broadcaster)
        self.sockets: set[WebSocketConnection] = set()
        self._server: asyncio.Server | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self.port = settings.port

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: WebSocketConnection(self), self.settings.host,
                                                self.settings.port, backlog=4096)
        sock = self._server.sockets[0].getsockname()
        self.port = sock[1]
        self.service.started = True
        self._keepalive = loop.create_task(self._keepalive_loop())

    async def _keepalive_loop(self) -> None:
        interval, timeout = self.settings.ping_interval, self.settings.ping_timeout
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for sock in list(self.sockets):
                sock.keepalive(now, interval, timeout)

    async def shutdown(self) -> None:
        """Stop accepting, flush what is queued, close every WebSocket with 1001, wait for them to go."""
        self.service.shutting_down = True
        if self._server is not None:
            self._server.close()
        if self._keepalive is not None:
            self._keepalive.cancel()
        deadline = time.monotonic() + self.settings.shutdown_timeout
        await self.broadcaster.flush(self.settings.shutdown_timeout)
        while time.monotonic() < deadline and any(
                s.transport is not None and s.transport.get_write_buffer_size() > 0 for s in self.sockets):
            await asyncio.sleep(0.01)
        for sock in list(self.sockets):
            if sock.ws is not None:
                sock.close(CLOSE_GOING_AWAY, "shutting down")
            elif sock.transport is not None:
                sock.transport.close()
        while self.sockets and time.monotonic() < deadline + CLOSE_TIMEOUT:
            await asyncio.sleep(0.01)
        for sock in list(self.sockets):
            sock._abort()
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"ws://{self.settings.host}:{self.port}{self.settings.path}"
