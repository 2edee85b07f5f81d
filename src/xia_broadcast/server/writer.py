"""Outbound bytes of the standalone server: frames built once per view, one write per socket, bounded buffers.

A message is framed once (server frames are not masked and compression is never negotiated, so the frame
is the same bytes for every recipient) and cached on its :class:`~xia_broadcast.fanout.Outgoing`. After a
fan-out, :class:`NativeBroadcaster` writes every connection with queued messages on the next loop turn, in
**one** ``transport.write`` per connection, with no task and no await per socket.

Two bounds keep what waits in transport buffers (the only per-socket copies of outbound bytes) finite:

* per socket, a :class:`SocketWriter` writes only while its transport holds less than
  :data:`WRITE_HIGH_WATER` bytes, and never more than that in one write: a socket holds at most
  ``WRITE_HIGH_WATER`` plus one message;
* over all sockets, an :class:`OutboundBudget` holds the bytes written and not yet sent under
  ``max_outbound_bytes``. When it is spent, a socket that still holds unsent bytes is not written: its
  connection stops taking live changes (``FanoutEngine.lag``) and continues from the journal when there is
  room again, as when its queue overflows; nothing is lost. A socket that holds nothing (its client keeps
  up) is still written, one message at a time, so stalled clients cannot starve the others. In all, the
  sockets hold at most ``max_outbound_bytes`` plus one message each, whatever the clients read.

What stays queued is references to encoded messages, shared by every member of a view and bounded per
connection by ``queue_messages``/``queue_bytes``.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from typing import TYPE_CHECKING, Any

from ..broadcast import Broadcaster
from ..fanout import Connection, FanoutEngine, Outgoing

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger("xia_broadcast.server")

#: transport buffer high-water mark, in bytes: above it a socket is not written and its messages wait
WRITE_HIGH_WATER = 1024 * 1024
#: seconds between two looks for room in a spent :class:`OutboundBudget`
BUDGET_RETRY = 0.05
#: rounds of (take, write) per connection and loop turn while it replays, so no replay holds the loop
WRITE_ROUNDS = 4


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


class OutboundBudget:
    """The bytes handed to transports and not yet sent, over every socket of one server, and their bound.

    ``held`` is what each writer's transport held when last looked at (after a write, when it drained);
    sockets drain without telling, so the sum over-estimates and :meth:`refresh` reads the transports
    again (cost: one call per socket holding bytes, at most once per :data:`BUDGET_RETRY`).
    Writers that found no room wait in ``waiting`` and are woken, oldest first, when there is some.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self.held: dict[SocketWriter, int] = {}
        self.waiting: dict[SocketWriter, None] = {}  # insertion-ordered set
        self._retry: asyncio.TimerHandle | None = None
        self._refreshed_at = 0.0

    def note(self, writer: SocketWriter, size: int) -> None:
        """Record that ``writer``'s transport now holds ``size`` bytes."""
        self.total += size - self.held.pop(writer, 0)
        if size > 0:
            self.held[writer] = size

    def forget(self, writer: SocketWriter) -> None:
        self.note(writer, 0)
        self.waiting.pop(writer, None)

    def refresh(self) -> None:
        """Re-read every transport that held bytes (at most once per :data:`BUDGET_RETRY`)."""
        now = time.monotonic()
        if now - self._refreshed_at < BUDGET_RETRY:
            return
        self._refreshed_at = now
        for writer in list(self.held):
            self.note(writer, writer.buffered())

    def room(self, size: int) -> bool:
        """True when ``size`` more bytes may be written; looks at the transports again when it seems not."""
        if self.total + size <= self.limit:
            return True
        self.refresh()
        return self.total + size <= self.limit

    def wait(self, writer: SocketWriter) -> None:
        """Wake ``writer`` (:meth:`SocketWriter.resume`) once there is room again."""
        self.waiting[writer] = None
        if self._retry is None:
            self._retry = asyncio.get_running_loop().call_later(BUDGET_RETRY, self._wake)

    def _wake(self) -> None:
        self._retry = None
        self.refresh()
        while self.waiting and self.total < self.limit:
            writer = next(iter(self.waiting))
            del self.waiting[writer]
            writer.resume()
        if self.waiting and self._retry is None:
            self._retry = asyncio.get_running_loop().call_later(BUDGET_RETRY, self._wake)


class SocketWriter:
    """The outbound side of one WebSocket: writes its connection's queue to its transport, within bounds.

    At most :data:`WRITE_HIGH_WATER` bytes (and at least one message) go in one write, and only while the
    transport holds less than that; otherwise the connection stays scheduled and :meth:`resume` (called
    when the transport drains, or when the budget has room again) writes it.
    """

    def __init__(self, transport: asyncio.Transport, engine: FanoutEngine, budget: OutboundBudget,
                 metrics: Metrics) -> None:
        self.transport = transport
        self.engine = engine
        self.budget = budget
        self.metrics = metrics
        #: the transport is over its high-water mark (between pause_writing and resume_writing)
        self.paused = False
        self.closed = False
        #: the connection waiting to be written when the transport drains or the budget has room
        self.pending: Connection | None = None

    def buffered(self) -> int:
        return 0 if self.closed else self.transport.get_write_buffer_size()

    def write_control(self, data: bytes) -> None:
        """Write protocol bytes (pings, close frames, single frames of the original API) right away."""
        if not self.closed:
            self.transport.write(data)
            self.budget.note(self, self.transport.get_write_buffer_size())

    def write_queue(self, conn: Connection) -> float | None:
        """Write what is queued for this socket in one call (the oldest messages up to the high-water
        mark); while the connection replays from the journal, refill and write again, a few rounds per loop
        turn. Returns when the oldest message written was made (``Outgoing.born``), for the caller to observe
        publish-to-send latency once per flush."""
        if self.closed:
            conn.take()
            conn.scheduled = False
            return None
        oldest = None
        transport = self.transport
        for _ in range(WRITE_ROUNDS):
            if self.paused:
                self.pending = conn  # stays scheduled; resume() writes it
                return oldest
            if not conn.queue and conn.replaying:
                self.engine.pump(conn)
            if not conn.queue:
                break
            buffered = transport.get_write_buffer_size()
            size = max(WRITE_HIGH_WATER - buffered, 1)
            if not self.budget.room(min(conn.queued_bytes, size)):
                if buffered:
                    # every socket together holds max_outbound_bytes and this one is behind: it takes no
                    # more live changes, and goes on from the journal once it can be written again
                    if conn.replaying < len(conn.members):
                        self.engine.lag(conn)
                    self.pending = conn
                    self.budget.wait(self)
                    return oldest
                size = 1  # a socket that keeps up still gets one message at a time: the kernel takes it
            batch = conn.take(size)
            if oldest is None:
                oldest = batch[0].born
            transport.write(frame_of(batch[0]) if len(batch) == 1 else b"".join([frame_of(o) for o in batch]))
            self.budget.note(self, transport.get_write_buffer_size())
        if (conn.replaying or conn.queue) and not conn.closed:
            asyncio.get_running_loop().call_soon(self._write_observed, conn)
        else:
            conn.scheduled = False
        return oldest

    def _write_observed(self, conn: Connection) -> None:
        """:meth:`write_queue` outside a flush (replay rounds, a drained transport, room in the budget)."""
        born = self.write_queue(conn)
        if born is not None:
            self.metrics.send_latency.observe(time.perf_counter() - born)

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        """The transport drained below its low-water mark, or the budget has room: write what waits."""
        self.paused = False
        if self.closed:
            return
        self.budget.note(self, self.transport.get_write_buffer_size())
        pending, self.pending = self.pending, None
        if pending is not None:
            self._write_observed(pending)

    def close(self) -> None:
        """The socket is gone: forget it in the budget; nothing is written any more."""
        self.closed = True
        self.pending = None
        self.budget.forget(self)


class NativeBroadcaster(Broadcaster):
    """A broadcaster whose websockets are :class:`~.connection.WebSocketConnection` objects.

    After a fan-out, connections that have messages are written once each, on the next loop turn, so that
    a burst of changes published in one go leaves in one write per socket.
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
                born = conn.websocket.writer.write_queue(conn)
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
