"""Outbound bytes of the standalone server: frames built once per view, one write per socket, bounded buffers.

A message is framed once (server frames are not masked and compression is never negotiated, so the frame
is the same bytes for every recipient) and cached on its :class:`~xia_broadcast.fanout.Outgoing`.
:class:`NativeBroadcaster` writes every connection with queued messages in **one** ``transport.write`` per
connection (all its queued frames together), with no task and no await per socket.

When it writes is adaptive (see :class:`FlushScheduler`): after a lull, during the fan-out itself (each
subscriber as soon as its message is queued: no added latency at low rates); while changes come one after
another or the loop is busy (requests or other callbacks waiting), the write waits for them, at most
``max_write_delay`` seconds after the first message was queued, so that changes arriving one per loop turn
from many publishers leave in one write per socket instead of one write per delivery.

What waits in transport buffers (the only per-socket copies of outbound bytes) is bounded: a socket is
written only up to its share of ``max_outbound_bytes`` (that divided by the open WebSockets when it is
written, at most :data:`WRITE_HIGH_WATER`) plus one message, so all of them together hold about
``max_outbound_bytes`` whatever the clients read (more only where sockets stalled while fewer were open,
each then holding the larger share of that time). A socket over its share is not written; when more than
its share is still queued, its connection takes no more live changes (``Hub.lag``) and continues
from the journal once the socket drains, as when its queue overflows: nothing is lost. A client that keeps
up is not slowed: the kernel takes what is written to it.

What stays queued is references to encoded messages, shared by every member of a view and bounded per
connection by ``queue_messages``/``queue_bytes``.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..broadcast import Broadcaster
from ..fanout import Connection, Outgoing
from ..hub import Hub
from .config import Settings

if TYPE_CHECKING:
    from .service import Service

log = logging.getLogger("xia_broadcast.server")

#: largest transport buffer high-water mark, in bytes: above its mark a socket is not written
WRITE_HIGH_WATER = 1024 * 1024
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


def frames_of(batch: list[Outgoing]) -> bytes:
    """The wire bytes of queued messages, for one write (a lone message's cached frame as it is)."""
    return frame_of(batch[0]) if len(batch) == 1 else b"".join([frame_of(o) for o in batch])


class SocketWriter:
    """The outbound side of one WebSocket: writes its connection's queue to its transport, within bounds.

    The transport's high-water mark is this socket's share of ``max_outbound_bytes``: that divided by the
    open WebSockets, at most :data:`WRITE_HIGH_WATER` (re-read at every write, as connections come and go).
    A write carries the oldest queued messages that fit under the mark, and always at least one; over the
    mark, nothing is written until the transport drains (``resume_writing``). When, at that moment, more
    than the share is still queued, the connection takes no more live changes (``Hub.lag``): it
    continues from the journal once it is written again, as it does when its queue overflows.
    """

    __slots__ = ("closed", "engine", "high_water", "max_outbound", "paused", "pending", "service", "transport")

    def __init__(self, transport: asyncio.Transport, engine: Hub, service: Service) -> None:
        self.transport = transport
        self.engine = engine
        self.service = service
        self.max_outbound = service.settings.max_outbound_bytes
        #: the transport is over its high-water mark (between pause_writing and resume_writing)
        self.paused = False
        self.closed = False
        #: the connection waiting to be written when the transport drains
        self.pending: Connection | None = None
        #: the transport's high-water mark now (0: not set yet, at the first write)
        self.high_water = 0

    def _fit_high_water(self) -> int:
        """Set the transport's high-water mark to this socket's share of ``max_outbound_bytes``."""
        share = min(WRITE_HIGH_WATER, self.max_outbound // max(1, self.service.connection_count))
        if share != self.high_water:
            self.high_water = share
            self.transport.set_write_buffer_limits(high=share)  # may call pause_writing at once
        return share

    def write_control(self, data: bytes) -> None:
        """Write protocol bytes (pings, close frames, single frames of the original API) right away."""
        if not self.closed:
            self.transport.write(data)

    def write_queue(self, conn: Connection) -> float | None:
        """Write what is queued for this socket (the oldest messages up to the high-water mark), a few
        writes per loop turn at most; a replay refills the queue and wakes the connection again. Returns
        when the oldest message written was made (``Outgoing.born``), for the caller to observe
        publish-to-send latency once per flush."""
        if self.closed:
            conn.take()
            conn.scheduled = False
            return None
        oldest = None
        transport = self.transport
        high_water = self._fit_high_water()
        for _ in range(WRITE_ROUNDS):
            if self.paused:
                self.pending = conn  # stays scheduled; resume() writes it
                if conn.queued_bytes > high_water and conn.replaying < len(conn.members):
                    # the socket holds its share unsent and as much again waits: what comes next waits
                    # in the journal, not here (a queue that merely overflows later lags the same way)
                    self.engine.lag(conn)
                return oldest
            if not conn.queue:
                break
            batch = conn.take(max(high_water - transport.get_write_buffer_size(), 1))
            if oldest is None:
                oldest = batch[0].born
            transport.write(frames_of(batch))
        if conn.queue and not conn.closed:  # more than one write may carry: the rest on the next turn
            asyncio.get_running_loop().call_soon(self._write_observed, conn)
        else:
            conn.scheduled = False
        return oldest

    def write_direct(self, conn: Connection) -> bool:
        """Write what is queued for this socket now, during a fan-out, if one write within the high-water
        mark carries all of it; False when nothing was written (the socket is paused or closed, or more is
        queued than one write may carry: the flush writes it as usual). Never calls back into the Hub."""
        if self.closed:
            return False
        transport = self.transport
        high_water = self._fit_high_water()  # may pause the transport at once
        if self.paused or conn.queued_bytes + transport.get_write_buffer_size() > high_water:
            return False
        transport.write(frames_of(conn.take()))
        conn.scheduled = False
        return True

    def _write_observed(self, conn: Connection) -> None:
        """:meth:`write_queue` outside a flush (replay rounds, a drained transport)."""
        born = self.write_queue(conn)
        if born is not None:
            self.service.metrics.send_latency.observe(time.perf_counter() - born)

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        """The transport drained below its low-water mark: write what waits."""
        self.paused = False
        if self.closed:
            return
        pending, self.pending = self.pending, None
        if pending is not None:
            self._write_observed(pending)

    def close(self) -> None:
        """The socket is gone: nothing is written any more."""
        self.closed = True
        self.pending = None


#: default bound of :class:`FlushScheduler`, in seconds (the ``max_write_delay`` setting's default)
DEFAULT_MAX_WRITE_DELAY: float = Settings.max_write_delay


def _loop_backlog(loop: asyncio.AbstractEventLoop) -> int | None:
    """How many callbacks are ready to run in ``loop`` besides the one running now (requests read, tasks
    woken, timers due), or None where the loop does not tell (asyncio's loops keep them in ``_ready``)."""
    ready = getattr(loop, "_ready", None)
    return len(ready) if ready is not None else None


class FlushScheduler:
    """Decides when queued messages are written: at once when the loop is idle, together while it is busy.

    Connections that got messages are collected (:meth:`add`); one callback a loop turn decides whether to
    write them all now (``flush``, one write per connection carrying everything queued for it):

    * the first collected message has waited ``max_write_delay`` seconds (``clock`` time): write (the bound);
    * the messages queued since then (``queued``, a running count such as the Hub's deliveries) reach
      ``max_batch`` per collected connection on average: write, so that coalescing never fills a queue that
      a client reading promptly would keep near empty;
    * a collected connection is replaying from the journal (its messages come in chunks already, and the
      replay waits for its queue to be taken): write at once;
    * the loop has nothing else ready to run, and has polled its sockets once since the first message was
      collected: write (one or two loop turns after the fan-out, never waiting for the bound);
    * otherwise the callback goes behind the work that is waiting (requests read, publishers woken, other
      callbacks), which may queue more messages to the same sockets: they leave in the same write.

    It is also the Hub's :class:`~xia_broadcast.hub.DirectWrites`: after a lull (no fan-out nor flush for
    ``max_write_delay``, nothing collected, nothing else ready in the loop), a fan-out writes
    each connection as soon as its message is queued (``write_now``), so the first subscribers are written
    while the fan-out goes on and a change at a low rate waits for nothing; a fan-out that comes soon after
    another collects as above.

    So changes arriving one per loop turn from many publishers leave in one write per socket per flush, not
    one write per delivery, and a message waits at most ``max_write_delay`` plus the loop turn in which the
    bound passes (and the writes to the sockets flushed before its own). A socket over its high-water mark is
    written when it drains, not by the bound. ``max_write_delay`` 0: every flush on the next loop turn.
    Cost: one callback a loop turn while messages wait; none when nothing waits.
    """

    def __init__(self, flush: Callable[[list[Connection]], None], max_write_delay: float = DEFAULT_MAX_WRITE_DELAY,
                 clock: Callable[[], float] = time.monotonic,
                 backlog: Callable[[asyncio.AbstractEventLoop], int | None] = _loop_backlog,
                 queued: Callable[[], int] | None = None, max_batch: int = 0,
                 write_now: Callable[[Connection], bool] | None = None,
                 observe: Callable[[Connection, float], None] | None = None) -> None:
        self.flush = flush
        #: seconds a message may wait to be written together with later ones (the latency bound)
        self.max_write_delay = max_write_delay
        self.clock = clock
        self.backlog = backlog
        #: a running count of messages queued to connections, and how many per pending connection, on
        #: average, make the flush happen at once (0: no such limit)
        self.queued = queued
        self.max_batch = max_batch
        #: called with a connection written during a fan-out and the seconds its message waited (a metric)
        self.observe = observe
        self.queued_at = 0
        self.pending: list[Connection] = []
        self.handle: asyncio.Handle | None = None
        #: the loop the pending flush runs in (asked once per flush: asking costs a getpid system call)
        self.loop: asyncio.AbstractEventLoop | None = None
        #: ``clock()`` when the first pending connection was added
        self.since = 0.0
        #: the loop has polled its sockets since then (our callback has been re-queued once)
        self.polled = False
        #: a pending connection is replaying: the next turn writes without waiting
        self.urgent = False
        #: writes a connection during a fan-out: False when it leaves it to the flush (True also when the
        #: write failed and the connection is closed later); None: every write waits for a flush
        self.write_now = write_now
        #: ``clock()`` when the last fan-out or flush ended: writes during a fan-out happen only after a lull
        self.quiet_since = float("-inf")
        #: the first connection written during the current fan-out, and when its message was made
        self.direct_first: tuple[Connection, float] | None = None

    def add(self, conn: Connection) -> None:
        """``conn`` has messages to write (and was idle): write it with the next flush."""
        self.pending.append(conn)
        if conn.replaying:
            self.urgent = True
        if self.handle is None:
            self.since = self.clock()
            self.polled = False
            if self.queued is not None:
                self.queued_at = self.queued()
            self.loop = asyncio.get_running_loop()
            self.handle = self.loop.call_soon(self._turn)

    def _turn(self) -> None:
        loop = self.loop
        assert loop is not None
        if not self.urgent and self.clock() - self.since < self.max_write_delay and not self._batch_full():
            backlog = self.backlog(loop)
            if backlog or not self.polled:
                # busy, or the loop has not looked at its sockets yet: let what waits run first
                self.polled = True
                self.handle = loop.call_soon(self._turn)
                return
        self.flush_now()

    def _batch_full(self) -> bool:
        if self.queued is None or self.max_batch <= 0:
            return False
        return self.queued() - self.queued_at >= self.max_batch * len(self.pending)

    def flush_now(self) -> None:
        """Write every pending connection now."""
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.urgent = False
        pending, self.pending = self.pending, []
        if pending:
            self.flush(pending)
            self.quiet_since = self.clock()

    # -- writes during a fan-out (the Hub's DirectWrites) --------------------------------------------------

    def begin(self) -> bool:
        """A fan-out starts: may its connections be written right away, each as soon as its message is
        queued? Yes after a lull: no fan-out nor flush in the last ``max_write_delay`` seconds (changes are
        not coming one after another, so there is nothing to write together with), nothing collected for a
        flush (it would be overtaken), and nothing else ready to run in the loop (no request or task whose
        work could share the write). On a loop that does not tell what is ready: never."""
        if self.write_now is None or self.handle is not None:
            return False
        if self.clock() - self.quiet_since < self.max_write_delay:
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        return self.backlog(loop) == 0

    def write(self, conn: Connection) -> bool:
        """Write ``conn`` now (its queue holds what this fan-out gave it); False: leave it to the flush."""
        assert self.write_now is not None
        born = conn.queue[0].born
        if not self.write_now(conn):
            return False
        if self.direct_first is None:
            self.direct_first = (conn, born)
        return True

    def end(self) -> None:
        """The fan-out that began is over."""
        self.quiet_since = self.clock()
        if self.direct_first is not None:
            conn, born = self.direct_first
            self.direct_first = None
            if self.observe is not None:
                self.observe(conn, time.perf_counter() - born)


class NativeBroadcaster(Broadcaster):
    """A broadcaster whose websockets are :class:`~.connection.WebSocketConnection` objects.

    After a fan-out, connections that have messages are written once each, when :class:`FlushScheduler`
    says (at once when the loop is idle, at most ``max_write_delay`` seconds later when it is busy), so
    that changes published one after another leave in one write per socket.
    """

    #: the latency bound of write coalescing, in seconds (the server's ``max_write_delay`` setting)
    max_write_delay: float = DEFAULT_MAX_WRITE_DELAY
    #: a write happens at once when this fraction of the Hub's ``queue_messages`` is queued per waiting connection
    #: (on average) since the first: coalescing never makes a queue overflow
    BATCH_FRACTION = 0.25
    _scheduler: FlushScheduler | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._scheduler = None

    @classmethod
    def scheduler(cls) -> FlushScheduler:
        """This class's flush scheduler (made at first use, with ``max_write_delay`` as set then)."""
        if cls._scheduler is None:
            cls._scheduler = FlushScheduler(
                cls._write_pending, cls.max_write_delay, queued=lambda: cls.hub().stats.deliveries,
                max_batch=max(1, int(cls.hub().settings.queue_messages * cls.BATCH_FRACTION)),
                write_now=cls._write_direct, observe=cls._observe_send)
        return cls._scheduler

    @classmethod
    def use_hub(cls, hub: Hub) -> Hub:
        """As :meth:`Broadcaster.use_hub`; the Hub also writes sockets during a fan-out after a lull."""
        hub = super().use_hub(hub)
        hub.direct = cls.scheduler()
        return hub

    @classmethod
    def _write_direct(cls, conn: Connection) -> bool:
        try:
            return bool(conn.websocket.writer.write_direct(conn))
        except Exception:  # one connection's fault never stops the others; it is closed after the fan-out
            log.exception("writing to a subscriber failed; it is closed")
            asyncio.get_running_loop().call_soon(cls._fail, conn)  # stays scheduled: nothing re-adds it
            return True

    @classmethod
    def _fail(cls, conn: Connection) -> None:
        """A write to ``conn`` raised: it is forgotten and its socket closed with 1011."""
        conn.scheduled = False
        cls.disconnect(conn.websocket)
        conn.websocket.close(1011, "internal error")

    @classmethod
    def _observe_send(cls, conn: Connection, seconds: float) -> None:
        conn.websocket.service.metrics.send_latency.observe(seconds)

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
        cls.scheduler().add(conn)

    @classmethod
    def flush_pending(cls) -> None:
        """Write every pending connection's queued messages now, one write per connection."""
        cls.scheduler().flush_now()

    @classmethod
    def _write_pending(cls, pending: list[Connection]) -> None:
        oldest: float | None = None
        for conn in pending:
            try:
                born = conn.websocket.writer.write_queue(conn)
                if born is not None and (oldest is None or born < oldest):
                    oldest = born
            except Exception:  # one connection's fault never stops the others
                log.exception("writing to a subscriber failed; it is closed")
                cls._fail(conn)
        if oldest is not None and pending:
            pending[0].websocket.service.metrics.send_latency.observe(time.perf_counter() - oldest)

    @classmethod
    async def flush(cls, timeout: float = 5.0) -> bool:
        cls.flush_pending()
        return await super().flush(timeout)
