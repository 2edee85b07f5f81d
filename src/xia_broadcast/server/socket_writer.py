"""The outbound side of one WebSocket of the standalone server: its connection's queue into its transport,
within bounds.

What waits in transport buffers (the only per-socket copies of outbound bytes) is bounded: a socket is
written only up to its share of ``max_outbound_bytes`` (that divided by the open WebSockets when it is
written, at most :data:`WRITE_HIGH_WATER`) plus one message, so all of them together hold about
``max_outbound_bytes`` whatever the clients read (more only where sockets stalled while fewer were open,
each then holding the larger share of that time). A socket over its share is not written; when more than
its share is still queued, its connection takes no more live changes (``Hub.lag``) and continues
from the journal once the socket drains, as when its queue overflows: nothing is lost. A client that keeps
up is not slowed: the kernel takes what is written to it.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from ..fanout import Connection
from .frames import frames_of

if TYPE_CHECKING:
    from .connection import WebSocketConnection
    from .service import Service

#: largest transport buffer high-water mark, in bytes: above its mark a socket is not written
WRITE_HIGH_WATER = 1024 * 1024
#: rounds of (take, write) per connection and loop turn while it replays, so no replay holds the loop
WRITE_ROUNDS = 4


class SocketWriter:
    """The outbound side of one WebSocket: writes its connection's queue to its transport, within bounds.

    The transport's high-water mark is this socket's share of ``max_outbound_bytes``: that divided by the
    open WebSockets, at most :data:`WRITE_HIGH_WATER` (re-read at every write, as connections come and go).
    A write carries the oldest queued messages that fit under the mark, and always at least one; over the
    mark, nothing is written until the transport drains (``resume_writing``). When, at that moment, more
    than the share is still queued, the connection takes no more live changes (``Hub.lag``): it
    continues from the journal once it is written again, as it does when its queue overflows.
    """

    __slots__ = ("closed", "high_water", "hub", "max_outbound", "paused", "pending", "service", "transport")

    def __init__(self, transport: asyncio.Transport, service: Service[WebSocketConnection]) -> None:
        self.transport = transport
        self.service = service
        self.hub = service.hub
        self.max_outbound = service.settings.max_outbound_bytes
        #: the transport is over its high-water mark (between pause_writing and resume_writing)
        self.paused = False
        self.closed = False
        #: the connection waiting to be written when the transport drains
        self.pending: Connection[WebSocketConnection] | None = None
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

    def write_queue(self, conn: Connection[WebSocketConnection]) -> float | None:
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
                    self.hub.lag(conn)
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

    def write_direct(self, conn: Connection[WebSocketConnection]) -> bool:
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

    def _write_observed(self, conn: Connection[WebSocketConnection]) -> None:
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
