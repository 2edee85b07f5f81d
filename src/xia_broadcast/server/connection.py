"""One WebSocket of the standalone server, after the upgrade: frames in, the handshake, close, keepalive.

Inbound frames are parsed by the sans-I/O protocol of ``websockets`` (masking, fragmentation, ping/pong,
the close handshake, the inbound size limit); a text message that is not UTF-8 closes the connection with
1007. At most :data:`~.inbound.INBOUND_CHUNK` bytes of a connection are parsed per loop turn, and a client
sending more frames than its :class:`~.inbound.FrameBudget` allows is closed with 4408 (:mod:`.inbound`).
Outbound messages go through the connection's :class:`~.socket_writer.SocketWriter`, written by the server's
:class:`~.native_transport.NativeTransport`.

Memory per idle subscribed connection: this object, a websockets protocol (a few KiB), its writer, the
asyncio transport and the kernel's socket buffers. No task is kept per connection; one timer of the server
serves keepalive for all.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side, State

from ..core.protocol import (
    CLOSE_BAD_HANDSHAKE,
    CLOSE_FLOOD,
    CLOSE_GOING_AWAY,
    CLOSE_INVALID_DATA,
    CLOSE_MESSAGE_TOO_BIG,
    Refusal,
)
from .inbound import INBOUND_CHUNK, FrameBudget
from .service import Session
from .socket_writer import SocketWriter

#: what ``upgrade_headers`` holds once the handshake is answered
NO_HEADERS: Mapping[str, str] = MappingProxyType({})

if TYPE_CHECKING:
    from .native import NativeServer

log = logging.getLogger("xia_broadcast.server")

#: seconds the peer has to answer a close frame before the socket is aborted
CLOSE_TIMEOUT = 2.0
#: client messages kept while the handshake is being processed (a token refresh sent right behind it)
MAX_EARLY_MESSAGES = 16


class Phase(enum.Enum):
    """Where a connection is in its life; each moves only forward."""

    #: waiting for the first message (the handshake), at most ``handshake_timeout`` seconds
    AWAITING_HANDSHAKE = "awaiting_handshake"
    #: the first message arrived and is being authenticated and subscribed (awaits)
    OPENING = "opening"
    #: subscribed: client messages are control messages (token refresh) or ignored
    SUBSCRIBED = "subscribed"
    #: refused or closing: client messages are ignored
    CLOSED = "closed"
    #: closed for sending more than the protocol needs: what it still sends is dropped unparsed until the
    #: socket goes (so that the close frame reaches it, rather than a reset)
    DISCARDING = "discarding"


class WebSocketConnection(asyncio.Protocol):
    """An upgraded socket: the asyncio protocol the HTTP stage hands its transport to.

    The server counts it against ``max_connections`` from :meth:`start` to :meth:`connection_lost`.
    """

    __slots__ = ("budget", "early", "fragments", "handshake_timer", "inbound", "keepalive_slot", "last_recv",
                 "opening", "peer", "phase", "server", "service", "session", "transport", "upgrade_headers", "writer",
                 "ws")

    def __init__(self, server: NativeServer, transport: asyncio.Transport, upgrade_headers: Mapping[str, str],
                 peer: str) -> None:
        self.server = server
        self.service = server.service
        self.transport: asyncio.Transport | None = transport
        self.ws = Protocol(Side.SERVER, state=State.OPEN, max_size=self.service.settings.max_message_size)
        self.writer = SocketWriter(transport, self.service)
        #: the upgrade request's headers, until the handshake is answered (then forgotten: memory)
        self.upgrade_headers: Mapping[str, str] = dict(upgrade_headers)
        self.peer = peer
        #: which of the server's keepalive rounds pings this connection (pings are spread over the interval)
        self.keepalive_slot = server.next_keepalive_slot()
        self.phase = Phase.AWAITING_HANDSHAKE
        self.session: Session | None = None
        self.handshake_timer: asyncio.TimerHandle | None = None
        #: opcode and frames of a fragmented message being received
        self.fragments: tuple[Opcode, list[bytes]] | None = None
        #: client messages that arrived while the handshake was being processed
        self.early: list[bytes] = []
        self.last_recv = time.monotonic()
        self.opening: asyncio.Task[None] | None = None
        settings = self.service.settings
        self.budget = FrameBudget(settings.client_frame_burst, settings.client_frame_rate, self.last_recv)
        #: input read and not parsed yet (more than one chunk came at once); the socket is not read meanwhile
        self.inbound = bytearray()

    def start(self, trailing: bytes) -> None:
        """Count this connection, refuse it if the server is full or stopping, and read what the client
        sent behind its upgrade request (``trailing``)."""
        self.server.sockets.add(self)
        self.server.keepalive_rounds[self.keepalive_slot].add(self)
        refusal = self.service.admit()
        if refusal is not None:
            self.close(refusal.code, refusal.reason)
            return
        self.handshake_timer = asyncio.get_running_loop().call_later(self.service.settings.handshake_timeout,
                                                                     self._handshake_timeout)
        if trailing:
            self.data_received(trailing)

    # -- asyncio.Protocol ---------------------------------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.sockets.discard(self)
        self.server.keepalive_rounds[self.keepalive_slot].discard(self)
        self._cancel_timer()
        self.writer.close()
        self.service.release()
        self.service.close_session(self, self.session)
        self.phase = Phase.CLOSED
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.phase is Phase.DISCARDING:
            return
        self.last_recv = time.monotonic()
        if not self.inbound and len(data) <= INBOUND_CHUNK:
            self._parse(data)  # the usual case: a client sends little
            return
        self.inbound += data
        if len(self.inbound) == len(data):  # a backlog begins: parse it a chunk per loop turn
            self._set_reading()
            self._parse_backlog()

    def _parse_backlog(self) -> None:
        """Parse one chunk of the backlog; the next on the next loop turn, reading again once it is empty."""
        if self.transport is None or self.phase is Phase.DISCARDING:
            self.inbound.clear()
            self._set_reading()
            return
        chunk = bytes(self.inbound[:INBOUND_CHUNK])
        del self.inbound[:INBOUND_CHUNK]
        self._parse(chunk)
        if self.inbound:
            asyncio.get_running_loop().call_soon(self._parse_backlog)
        else:
            self._set_reading()

    def _parse(self, data: bytes) -> None:
        ws = self.ws
        was_open = ws.state is State.OPEN
        ws.receive_data(data)
        if was_open and ws.close_sent is not None and ws.close_sent.code == CLOSE_MESSAGE_TOO_BIG:
            self.service.note_close(CLOSE_MESSAGE_TOO_BIG)  # the protocol refused an oversized message itself
        events = ws.events_received()
        if not self.budget.spend(len(events), self.last_recv):
            self.inbound.clear()
            self.close(CLOSE_FLOOD, "too many frames: a client sends little after its first message")
            self.phase = Phase.DISCARDING  # aborted CLOSE_TIMEOUT seconds later if it does not go itself
            return
        for frame in events:
            if not isinstance(frame, Frame):
                continue
            if frame.opcode is Opcode.TEXT or frame.opcode is Opcode.BINARY:
                if frame.fin:
                    self._message(frame.opcode, bytes(frame.data))
                else:
                    self.fragments = (frame.opcode, [bytes(frame.data)])
            elif frame.opcode is Opcode.CONT and self.fragments is not None:
                self.fragments[1].append(bytes(frame.data))
                if frame.fin:
                    (opcode, parts), self.fragments = self.fragments, None
                    self._message(opcode, b"".join(parts))
        self._send_pending()
        if ws.close_expected() and self.transport is not None:
            asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self._abort)

    def _set_reading(self) -> None:
        """Read the socket unless its peer does not read (``pause_writing``) or a backlog waits to be parsed."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.writer.paused or self.inbound:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def pause_writing(self) -> None:
        # the peer does not read: stop reading from it too, so that nothing it sends (pings, refreshes) can
        # make the server write more for it meanwhile
        self.writer.pause()
        self._set_reading()

    def resume_writing(self) -> None:
        self.writer.resume()
        self._set_reading()

    # -- outbound (what NativeTransport calls besides the writer) -------------------------------------

    def is_open(self) -> bool:
        return self.ws.state is State.OPEN and self.transport is not None

    def write_frames(self, frames: bytes) -> None:
        if self.is_open():
            self.writer.write_control(frames)

    def fail(self) -> None:
        """A write to this socket raised: forget its subscriptions now, close it with 1011."""
        self.service.close_session(self, self.session)
        self.close(1011, "internal error")

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake with ``code`` and ``reason``; abort if the peer does not answer."""
        if self.transport is None:
            return
        self.phase = Phase.CLOSED
        self._cancel_timer()
        if self.ws.state is State.OPEN:
            self.service.note_close(code)
            self.ws.send_close(code, reason)
            self._send_pending()
            asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self._abort)

    def shutdown(self) -> None:
        """The server stops: close with 1001 (after what was queued, which the server flushed)."""
        self.close(CLOSE_GOING_AWAY, "shutting down")

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _send_pending(self) -> None:
        for chunk in self.ws.data_to_send():
            if self.transport is None:
                return
            if chunk:
                self.writer.write_control(chunk)
            else:
                self.transport.close()

    # -- inbound messages ---------------------------------------------------------------------------------

    def _message(self, opcode: Opcode, message: bytes) -> None:
        if opcode is Opcode.TEXT:
            try:
                message.decode()
            except UnicodeDecodeError as exc:
                self.close(CLOSE_INVALID_DATA, f"invalid UTF-8 at position {exc.start}")
                return
        phase = self.phase
        if phase is Phase.SUBSCRIBED:
            assert self.session is not None  # set with the phase
            try:
                self.service.client_message(self, self.session, message, self.close)
            except Refusal as exc:
                self.close(exc.code, exc.reason)
        elif phase is Phase.OPENING:  # keep a few for when the handshake is done
            if len(self.early) < MAX_EARLY_MESSAGES:
                self.early.append(message)
        elif phase is Phase.AWAITING_HANDSHAKE:
            self.phase = Phase.OPENING
            self._cancel_timer()
            self.opening = asyncio.get_running_loop().create_task(self._open(message))

    async def _open(self, message: bytes) -> None:
        try:
            session = await self.service.open_session(self, message, self.upgrade_headers)
        except Refusal as exc:
            log.info("refused", extra={"peer": self.peer, "code": exc.code, "reason": exc.reason})
            self.close(exc.code, exc.reason)
            return
        except Exception:
            log.exception("handshake failed unexpectedly")
            self.close(1011, "internal error")
            return
        finally:
            self.upgrade_headers = NO_HEADERS
            self.opening = None  # a finished task keeps its coroutine's memory while referenced
        self.session = session
        if self.phase is not Phase.OPENING:  # closed meanwhile: connection_lost came before the session
            self.service.close_session(self, session)
            return
        self.phase = Phase.SUBSCRIBED
        self.service.arm_expiry(self, session, self.close)
        early, self.early = self.early, []
        for m in early:
            self._message(Opcode.BINARY, m)  # already checked

    def _handshake_timeout(self) -> None:
        self.handshake_timer = None
        if self.phase is Phase.AWAITING_HANDSHAKE:
            self.close(CLOSE_BAD_HANDSHAKE, "Need connection information")

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
        self.ws.send_ping(b"")
        self._send_pending()
