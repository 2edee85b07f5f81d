"""The standalone server's :class:`~xia_broadcast.transport.Transport`: queued frames straight into sockets.

Every connection with queued messages is written in **one** ``transport.write`` (all its queued frames
together, each frame built once per message: :mod:`.frames`), with no task and no await per socket, through
its :class:`~.socket_writer.SocketWriter`. When it writes is the :class:`~.flush.FlushScheduler`'s decision:
during the fan-out itself after a lull, else at the next flush, at most ``max_write_delay`` seconds later
while changes keep coming, so that changes published one after another leave in one write per socket.

What stays queued is references to encoded messages, shared by every member of a view and bounded per
connection by ``queue_messages``/``queue_bytes``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from ..fanout import Connection
from .flush import FlushScheduler
from .frames import frames_of

if TYPE_CHECKING:
    from .connection import WebSocketConnection

log = logging.getLogger("xia_broadcast.server")

#: a write happens at once when this fraction of ``queue_messages`` is queued per waiting connection (on
#: average) since the first: coalescing never makes a queue overflow
BATCH_FRACTION = 0.25


class NativeTransport:
    """Writes the native server's connections (``Connection[WebSocketConnection]``) for its Hub.

    Args:
        max_write_delay: the latency bound of write coalescing, in seconds.
        queue_messages: each connection's queue bound (coalescing writes at a quarter of it).
    """

    def __init__(self, max_write_delay: float, queue_messages: int) -> None:
        self.scheduler = FlushScheduler(self._write_pending, max_write_delay,
                                        max_batch=max(1, int(queue_messages * BATCH_FRACTION)),
                                        write_now=self._write_direct, observe=self._observe_send)
        #: the current fan-out writes connections as their messages are queued
        self._direct = False

    # -- the Transport interface ----------------------------------------------------------------------

    def writable(self, conn: Connection[WebSocketConnection]) -> None:
        self.scheduler.add(conn)

    def close(self, conn: Connection[WebSocketConnection], code: int, reason: str) -> None:
        """Write what is queued (e.g. the confirmation), then close the socket with ``code``."""
        ws = conn.websocket
        pending = [] if conn.closed else conn.take()
        if pending and ws.is_open():
            ws.write_frames(frames_of(pending))
        ws.close(code, reason)

    def fanout_begins(self) -> bool:
        self._direct = self.scheduler.begin()
        return self._direct

    def write_during_fanout(self, conn: Connection[WebSocketConnection]) -> bool:
        return self.scheduler.write(conn)

    def fanout_ended(self, queued: int) -> None:
        self.scheduler.count(queued)
        if self._direct:
            self._direct = False
            self.scheduler.end()

    # -- writing --------------------------------------------------------------------------------------

    def flush_now(self) -> None:
        """Write every pending connection's queued messages now, one write per connection."""
        self.scheduler.flush_now()

    def _write_direct(self, conn: Connection[WebSocketConnection]) -> bool:
        try:
            return conn.websocket.writer.write_direct(conn)
        except Exception:  # one connection's fault never stops the others; it is closed after the fan-out
            log.exception("writing to a subscriber failed; it is closed")
            asyncio.get_running_loop().call_soon(self._fail, conn)  # stays scheduled: nothing re-adds it
            return True

    def _write_pending(self, pending: list[Connection[WebSocketConnection]]) -> None:
        oldest: float | None = None
        for conn in pending:
            try:
                born = conn.websocket.writer.write_queue(conn)
                if born is not None and (oldest is None or born < oldest):
                    oldest = born
            except Exception:  # one connection's fault never stops the others
                log.exception("writing to a subscriber failed; it is closed")
                self._fail(conn)
        if oldest is not None and pending:
            pending[0].websocket.service.metrics.send_latency.observe(time.perf_counter() - oldest)

    @staticmethod
    def _fail(conn: Connection[WebSocketConnection]) -> None:
        """A write to ``conn`` raised: it is forgotten and its socket closed with 1011."""
        conn.scheduled = False
        conn.websocket.fail()

    @staticmethod
    def _observe_send(conn: Connection[WebSocketConnection], seconds: float) -> None:
        conn.websocket.service.metrics.send_latency.observe(seconds)
