"""The HTTP/1.1 stage of the standalone server: every socket starts here, until it upgrades to WebSocket.

HTTP is parsed by ``h11``; requests are routed through the one :class:`~.endpoints.EndpointTable`. What a
request may cost is decided from its headers, before its body is read:

* only an endpoint that takes a body (``POST /publish``) gets its body read, and only once its credentials
  (401) and declared ``Content-Length`` (413) pass; any other request that comes with a body is answered
  and its connection closed, the body unread;
* the bodies being received at once, over every connection, hold at most ``max_body_bytes`` (a request
  counts its declared length; one that would pass the bound is answered 503 and closed);
* at most ``max_http_connections`` sockets are in this stage at once; one more is answered 503 and closed
  before anything of it is read;
* ``Expect: 100-continue`` is answered 100 only once those checks pass, else with the final answer;
* a request carrying both ``Transfer-Encoding`` and ``Content-Length`` is refused with 400 and its
  connection closed (RFC 9112 section 6.1: it may be an attempt at request smuggling);
* each request, from its first byte to the end of its body, must arrive within ``handshake_timeout``;
  between requests, a kept-alive connection may stay idle :data:`HTTP_IDLE_TIMEOUT` seconds.

The upgrade is checked as websockets' ``ServerProtocol`` checks it (:mod:`.upgrade`); a non-listed
``Origin`` (``origin_allowlist``) is answered 403. Then the transport is handed to a
:class:`~.connection.WebSocketConnection`.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
from typing import TYPE_CHECKING

import h11

from .connection import WebSocketConnection
from .eager import run_eagerly
from .endpoints import Endpoint, HttpRequest, HttpResponse, busy, refuse_before_body
from .socket_writer import WRITE_HIGH_WATER
from .upgrade import UpgradeError, check_host, check_origin, check_upgrade

if TYPE_CHECKING:
    from .native import NativeServer

log = logging.getLogger("xia_broadcast.server")

#: seconds a kept-alive HTTP connection may stay idle between requests
HTTP_IDLE_TIMEOUT = 60.0
#: largest request line plus headers, in bytes (h11 answers 431 past it)
MAX_HEAD_SIZE = 16 * 1024

#: the answer to a socket over ``max_http_connections``, written before anything of it is read
BUSY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
                 b"connection: close\r\ncontent-length: 63\r\n\r\n"
                 b'{"error":"busy","message":"too many connections, retry later"}\n')


class HttpLimits:
    """The sockets in the HTTP stage of one server, and their bound (``max_http_connections``)."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.connections = 0


class RequestState(enum.Enum):
    """Where the current request of an :class:`HttpConnection` is."""

    #: between requests on a kept-alive connection: the idle timer runs
    IDLE = "idle"
    #: a new connection, or bytes of a request arrived: the whole request must arrive within
    #: ``handshake_timeout`` of that moment
    RECEIVING = "receiving"
    #: the request's handler runs (a task); nothing more of the socket's input is handled until it answers
    HANDLING = "handling"
    #: the answer is written; what is left of the request (its end) is read before the next one begins
    ANSWERING = "answering"
    #: the socket is done with HTTP (answered with close, or upgraded)
    DONE = "done"


class HttpConnection(asyncio.Protocol):
    """One socket while it speaks HTTP/1.1."""

    def __init__(self, server: NativeServer) -> None:
        self.server = server
        self.service = server.service
        self.limits = server.http_limits
        self.bodies = server.body_budget
        self.transport: asyncio.Transport | None = None
        self.http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_SIZE)
        self.state = RequestState.IDLE
        #: the transport holds more than its high-water mark of answers unsent (see pause_writing)
        self._writing_paused = False
        self.counted = False
        self.request: h11.Request | None = None
        self.endpoint: Endpoint | None = None
        self.body = bytearray()
        #: bytes of ``max_body_bytes`` this connection's current body holds
        self.reserved = 0
        self.timer: asyncio.TimerHandle | None = None
        self.peer = ""
        #: the handler answering the current request
        self._pending: asyncio.Future[HttpResponse] | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if self.limits.connections >= self.limits.max_connections:
            self.state = RequestState.DONE
            transport.write(BUSY_RESPONSE)
            transport.close()
            return
        self.limits.connections += 1
        self.counted = True
        self.server.sockets.add(self)
        # a new socket must send its whole first request within handshake_timeout of connecting
        self.state = RequestState.RECEIVING
        self._arm(self.service.settings.handshake_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._leave()
        self.state = RequestState.DONE
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.state is RequestState.DONE:
            return
        if self.state is RequestState.IDLE:
            self.state = RequestState.RECEIVING
            self._arm(self.service.settings.handshake_timeout)  # from the first byte of the request
        self.http.receive_data(data)
        self._process()

    def eof_received(self) -> bool | None:
        if self.state is not RequestState.DONE:
            self.http.receive_data(b"")
            self._process()
        return None

    def pause_writing(self) -> None:
        # the peer does not read its answers: stop reading its requests, and answering those already read
        # (pipelined behind), until it does
        self._writing_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
            if self.state is not RequestState.HANDLING:
                self._process()  # requests read before the pause

    def shutdown(self) -> None:
        """The server stops: drop the socket (no request is answered any more)."""
        self._close()

    # -- requests -----------------------------------------------------------------------------------------

    def _process(self) -> None:
        """Handle every event h11 has; answers are written in order, one request at a time (nothing more is
        handled while a handler runs: what came behind its request waits for the answer)."""
        try:
            while self.state is not RequestState.DONE and self.state is not RequestState.HANDLING:
                if self._writing_paused and self.request is None:
                    return  # the peer does not read its answers: the next request waits until it does
                event = self.http.next_event()
                if event is h11.NEED_DATA:
                    return
                if event is h11.PAUSED:
                    if self.http.our_state is h11.DONE and self.http.their_state is h11.DONE:
                        self._next_cycle()
                        continue
                    return
                if isinstance(event, h11.Request):
                    self._request(event)
                elif isinstance(event, h11.Data):
                    self._data(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    self._end_of_message()
                elif isinstance(event, h11.ConnectionClosed):
                    self._close()
        except h11.RemoteProtocolError as exc:
            self._answer(HttpResponse.error(exc.error_status_hint, "bad_request", str(exc)), close=True)

    def _request(self, request: h11.Request) -> None:
        self.state = RequestState.RECEIVING
        self.request = request
        self.body.clear()
        headers = request.headers
        has_length = any(k == b"content-length" for k, _ in headers)
        chunked = any(k == b"transfer-encoding" for k, _ in headers)
        if has_length and chunked:
            self._answer(HttpResponse.error(400, "bad_request",
                                            "Transfer-Encoding and Content-Length together"), close=True)
            return
        hosts = self.server.hosts
        if hosts is not None:
            try:
                check_host([(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers if k == b"host"], hosts)
            except UpgradeError as exc:
                self._answer(HttpResponse.of(exc), close=True)
                return
        target = request.target.decode("latin-1")
        path = target.split("?", 1)[0]
        method = request.method.decode("latin-1")
        found = self.server.endpoints.resolve(method, path)
        declared = next((int(v) for k, v in headers if k == b"content-length"), None)  # h11 checked: digits
        has_body = chunked or bool(declared)
        if isinstance(found, HttpResponse):
            self._answer(found, close=has_body)  # the body is never read
            return
        self.endpoint = found
        if not found.reads_body:
            if found.websocket and any(k == b"upgrade" for k, _ in headers):
                if has_body:  # what follows the request would be read as WebSocket frames
                    self._answer(HttpResponse.error(400, "bad_upgrade", "an upgrade request has no body"),
                                 close=True)
                else:
                    self._upgrade(request)
            elif has_body:
                self._handle(close=True)
            # else: answered at EndOfMessage, which h11 gives right away for a request without a body
            return
        refusal = refuse_before_body(self.service, found, self._header_map(request), declared)
        if refusal is None and has_body and not self._reserve(declared or 0):
            refusal = HttpResponse.of(busy())
        if refusal is not None:
            self._answer(refusal, close=True)
            return
        if self.http.they_are_waiting_for_100_continue:
            self._send(h11.InformationalResponse(status_code=100, headers=[]))

    def _data(self, data: bytes) -> None:
        assert self.endpoint is not None and self.endpoint.reads_body
        self.body += data
        limit = self.service.settings.max_publish_size
        if len(self.body) > limit:
            self._answer(HttpResponse.error(413, "too_large", f"body over {limit} bytes"), close=True)
        elif len(self.body) > self.reserved and not self._reserve(len(self.body) - self.reserved):
            # a chunked body grows past what was free: refuse rather than hold more than the bound
            self._answer(HttpResponse.of(busy()), close=True)

    def _end_of_message(self) -> None:
        if self.state is RequestState.RECEIVING and self.endpoint is not None:
            self._handle(close=False)

    def _handle(self, *, close: bool) -> None:
        """Answer the current request through its endpoint (its body, if it reads one, is complete)."""
        assert self.request is not None and self.endpoint is not None
        self.state = RequestState.HANDLING
        endpoint = self.endpoint
        request = HttpRequest(self.request.method.decode("latin-1"), endpoint.path,
                              self._header_map(self.request), bytes(self.body))
        self.body.clear()
        self._release()
        answer = run_eagerly(endpoint.handler(self.service, request))
        if answer.done():  # it did not wait (the memory journal): answered in this loop turn
            self._respond(answer, close)
            return
        # it waits (a backend): answered from its task; nothing more is read from this socket meanwhile
        if self.transport is not None:
            self.transport.pause_reading()
        answer.add_done_callback(functools.partial(self._answered, close))
        self._pending = answer

    def _answered(self, close: bool, answer: asyncio.Future[HttpResponse]) -> None:
        self._pending = None
        if self.transport is None or self.state is RequestState.DONE:
            return
        self._respond(answer, close)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
            self._process()  # a request pipelined behind this one

    def _respond(self, answer: asyncio.Future[HttpResponse], close: bool) -> None:
        """Write the handler's answer (500 when it raised). What the request fanned out was written during
        the fan-out (after a lull) or is written by the server's flush scheduler, with whatever other
        requests and publishers queue meanwhile (one write per socket), within ``max_write_delay``."""
        if answer.cancelled():
            return
        exc = answer.exception()
        if exc is not None:
            log.error("HTTP request failed unexpectedly", exc_info=exc)
            response, close = HttpResponse.error(500, "internal", "internal error"), True
        else:
            response = answer.result()
        self._answer(response, close=close)

    @staticmethod
    def _header_map(request: h11.Request) -> dict[str, str]:
        return {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers}

    def _upgrade(self, request: h11.Request) -> None:
        transport = self.transport
        assert transport is not None
        pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers]
        try:
            accept = check_upgrade(pairs)
            check_origin(pairs, self.service.settings.origin_allowlist)
        except UpgradeError as exc:
            self._answer(HttpResponse.of(exc), close=True)
            return
        transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        trailing, _closed = self.http.trailing_data
        self.state = RequestState.DONE
        self._leave()
        conn = WebSocketConnection(self.server, transport, dict(pairs), self.peer)
        transport.set_protocol(conn)
        conn.start(bytes(trailing))

    # -- answers ------------------------------------------------------------------------------------------

    def _send(self, event: h11.Event) -> None:
        data = self.http.send(event)
        if data and self.transport is not None:
            self.transport.write(data)

    def _answer(self, response: HttpResponse, *, close: bool) -> None:
        """Write ``response``; then close the socket (``close``, or h11 says so) or wait for the next request."""
        if self.transport is None:
            return
        self.state = RequestState.ANSWERING
        self._release()
        headers = [("content-type", response.content_type), ("content-length", str(len(response.body)))]
        if close:
            headers.append(("connection", "close"))
        try:
            self._send(h11.Response(status_code=response.status, headers=headers))
            self._send(h11.Data(data=response.body))
            self._send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            self._close()
            return
        if close or self.http.our_state is h11.MUST_CLOSE:
            self._close()
        elif self.http.their_state is h11.DONE:
            self._next_cycle()
        # else: the request's (empty) end is still to come; _process starts the next cycle at PAUSED

    def _next_cycle(self) -> None:
        """Start waiting for the next request on a kept-alive connection."""
        self.http.start_next_cycle()
        self.request, self.endpoint = None, None
        if self.http.trailing_data[0]:  # the next request has begun already (pipelined)
            self.state = RequestState.RECEIVING
            self._arm(self.service.settings.handshake_timeout)
        else:
            self.state = RequestState.IDLE
            self._arm(HTTP_IDLE_TIMEOUT)

    def _close(self) -> None:
        self.state = RequestState.DONE
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        self._leave()
        if self.transport is not None:
            self.transport.close()

    # -- bookkeeping --------------------------------------------------------------------------------------

    def _reserve(self, size: int) -> bool:
        if not self.bodies.reserve(size):
            return False
        self.reserved += size
        return True

    def _release(self) -> None:
        self.bodies.release(self.reserved)
        self.reserved = 0

    def _leave(self) -> None:
        """This socket leaves the HTTP stage (closed or upgraded): release what it held, stop its timer."""
        self._release()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.counted:
            self.counted = False
            self.limits.connections -= 1
            self.server.sockets.discard(self)

    def _arm(self, seconds: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(seconds, self._timeout)

    def _timeout(self) -> None:
        """The request took longer than ``handshake_timeout``, or the connection idled too long: close."""
        self.timer = None
        self._close()

