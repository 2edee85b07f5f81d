"""When the standalone server writes: at once when the loop is idle, together while it is busy.

Changes arriving one per loop turn from many publishers leave in one write per socket per flush, not one
write per delivery; a message waits at most ``max_write_delay`` (see :class:`FlushScheduler`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from ..fanout import Connection
from .config import Settings

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
    * the messages queued since then (told with :meth:`count`, as each fan-out ends) reach ``max_batch`` per
      collected connection on average: write, so that coalescing never fills a queue that a client reading
      promptly would keep near empty;
    * a collected connection is replaying from the journal (its messages come in chunks already, and the
      replay waits for its queue to be taken): write at once;
    * the loop has nothing else ready to run, and has polled its sockets once since the first message was
      collected: write (one or two loop turns after the fan-out, never waiting for the bound);
    * otherwise the callback goes behind the work that is waiting (requests read, publishers woken, other
      callbacks), which may queue more messages to the same sockets: they leave in the same write.

    It also decides the writes during a fan-out (:meth:`begin`, :meth:`write`, :meth:`end`): after a lull
    (no fan-out nor flush for ``max_write_delay``, nothing collected, nothing else ready in the loop), a
    fan-out writes each connection as soon as its message is queued (``write_now``), so the first
    subscribers are written while the fan-out goes on and a change at a low rate waits for nothing; a
    fan-out that comes soon after another collects as above.

    So changes arriving one per loop turn from many publishers leave in one write per socket per flush, not
    one write per delivery, and a message waits at most ``max_write_delay`` plus the loop turn in which the
    bound passes (and the writes to the sockets flushed before its own). A socket over its high-water mark is
    written when it drains, not by the bound. ``max_write_delay`` 0: every flush on the next loop turn.
    Cost: one callback a loop turn while messages wait; none when nothing waits.
    """

    def __init__(self, flush: Callable[[list[Connection[Any]]], None],
                 max_write_delay: float = DEFAULT_MAX_WRITE_DELAY, clock: Callable[[], float] = time.monotonic,
                 backlog: Callable[[asyncio.AbstractEventLoop], int | None] = _loop_backlog, max_batch: int = 0,
                 write_now: Callable[[Connection[Any]], bool] | None = None,
                 observe: Callable[[Connection[Any], float], None] | None = None) -> None:
        self.flush = flush
        #: seconds a message may wait to be written together with later ones (the latency bound)
        self.max_write_delay = max_write_delay
        self.clock = clock
        self.backlog = backlog
        #: a running count of messages queued to connections (:meth:`count`), and how many per pending
        #: connection, on average, make the flush happen at once (0: no such limit)
        self.queued = 0
        self.max_batch = max_batch
        #: called with a connection written during a fan-out and the seconds its message waited (a metric)
        self.observe = observe
        self.queued_at = 0
        self.pending: list[Connection[Any]] = []
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
        self.direct_first: tuple[Connection[Any], float] | None = None

    def add(self, conn: Connection[Any]) -> None:
        """``conn`` has messages to write (and was idle): write it with the next flush."""
        self.pending.append(conn)
        if conn.replaying:
            self.urgent = True
        if self.handle is None:
            self.since = self.clock()
            self.polled = False
            self.queued_at = self.queued
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
        if self.max_batch <= 0:
            return False
        return self.queued - self.queued_at >= self.max_batch * len(self.pending)

    def count(self, queued: int) -> None:
        """``queued`` more messages were queued to connections (a fan-out ended)."""
        self.queued += queued

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

    # -- writes during a fan-out (for NativeTransport.fanout_begins and the rest) ------------------------

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

    def write(self, conn: Connection[Any]) -> bool:
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
