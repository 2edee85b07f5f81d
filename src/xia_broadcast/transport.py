"""What a :class:`~xia_broadcast.hub.Hub` needs from whoever moves its bytes, and two ways of moving them.

The Hub never writes a socket. It queues encoded messages on a connection and tells its transport, given at
construction, through :class:`Transport` (as centrifuge's hub knows a ``Transport`` and nothing of HTTP):

* :meth:`~Transport.writable`: a connection went from idle to having queued messages;
* :meth:`~Transport.close`: a connection must be closed with a code and reason (it lagged beyond the
  journal, or asked for a position the journal no longer holds); the Hub forgets it after this call;
* :meth:`~Transport.fanout_begins`, :meth:`~Transport.write_during_fanout`, :meth:`~Transport.fanout_ended`:
  a transport that can write a connection while a fan-out goes on says so per fan-out; it learns how many
  messages each fan-out queued.

A transport must not change views or connections from these calls (it may schedule such work for later).

:class:`NoTransport` leaves messages queued (tests, tools that read queues). :class:`TaskTransport` drains
each connection in a task of its own through asynchronous send functions (the original ``Broadcaster``'s
hooks, an ASGI server's websockets). The standalone server's transport writes sockets directly
(``server.fanout_writes``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol

from .fanout import Connection, Outgoing, W

log = logging.getLogger("xia_broadcast.transport")


class Transport(Protocol[W]):
    """What a Hub calls on its transport (see the module docstring)."""

    def writable(self, conn: Connection[W]) -> None:
        """``conn`` has queued messages and was idle (``conn.scheduled`` is set); write them, then clear
        ``conn.scheduled`` once its queue is empty."""

    def close(self, conn: Connection[W], code: int, reason: str) -> None:
        """Close ``conn``'s socket with ``code`` and ``reason`` (what is queued first, if it can)."""

    def fanout_begins(self) -> bool:
        """A fan-out starts: True when connections may be handed to :meth:`write_during_fanout` as soon as
        their message is queued."""

    def write_during_fanout(self, conn: Connection[W]) -> bool:
        """Write ``conn`` now, during the fan-out; False leaves it to :meth:`writable` after the fan-out."""

    def fanout_ended(self, queued: int) -> None:
        """A fan-out that had views ended, having queued ``queued`` messages (before any :meth:`writable`
        call it causes)."""


class NoTransport(Generic[W]):
    """A transport that writes nothing: messages stay queued for whoever reads ``Connection.queue``."""

    def writable(self, conn: Connection[W]) -> None:
        pass

    def close(self, conn: Connection[W], code: int, reason: str) -> None:
        pass

    def fanout_begins(self) -> bool:
        return False

    def write_during_fanout(self, conn: Connection[W]) -> bool:
        return False

    def fanout_ended(self, queued: int) -> None:
        pass


#: sends messages to a socket, oldest first
SendBatch = Callable[[Any, list[Outgoing]], Awaitable[None]]


class TaskTransport(NoTransport[W]):
    """Drains each connection with queued messages in a task of its own, through ``send`` (one awaited send
    per batch), so a slow or failing socket delays and breaks nothing but itself.

    Args:
        send: sends a batch of messages to a socket.
        connected: True while a socket can be written to; a socket that is not is forgotten.
        close_socket: closes a socket with a code and reason.
        forget: forgets a socket everywhere (its subscriptions in the Hub included); called for a socket
            that failed, closed, or that the Hub cut off.

    Memory: one task per connection while it drains, none when idle.
    """

    def __init__(self, send: Callable[[W, list[Outgoing]], Awaitable[None]], connected: Callable[[W], bool],
                 close_socket: Callable[[W, int, str], Awaitable[None]], forget: Callable[[W], None]) -> None:
        self._send = send
        self._connected = connected
        self._close_socket = close_socket
        self._forget = forget
        #: the draining task of each connection that has one
        self.tasks: dict[Connection[W], asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()

    def writable(self, conn: Connection[W]) -> None:
        self.tasks[conn] = self.spawn(self._drain(conn))

    def close(self, conn: Connection[W], code: int, reason: str) -> None:
        log.warning("subscriber disconnected with %s (%s)", code, reason)
        ws = conn.websocket
        pending = [] if conn.closed else conn.take()  # e.g. the confirmation: sent before the close
        self.stop(conn)
        self._forget(ws)
        self.spawn(self._send_then_close(ws, pending, code, reason))

    def stop(self, conn: Connection[W]) -> None:
        """Cancel ``conn``'s draining task (unless it is the task running this)."""
        task = self.tasks.pop(conn, None)
        if task is not None and task is not _current_task():
            task.cancel()

    async def _drain(self, conn: Connection[W]) -> None:
        ws = conn.websocket
        try:
            while not conn.closed and conn.queue:
                if not self._connected(ws):
                    log.info("subscriber closed; removed")
                    self._forget(ws)
                    return
                await self._send(ws, conn.take())
        except Exception as exc:  # a failing send affects this websocket only
            log.warning("send failed (%s: %s); subscriber removed", type(exc).__name__, exc)
            self._forget(ws)
            self.spawn(self._close_socket(ws, 1011, "internal error"))
        finally:
            conn.scheduled = False
            if self.tasks.get(conn) is asyncio.current_task():
                del self.tasks[conn]

    async def _send_then_close(self, websocket: W, pending: list[Outgoing], code: int, reason: str) -> None:
        try:
            if pending and self._connected(websocket):
                await self._send(websocket, pending)
        finally:
            await self._close_socket(websocket, code, reason)

    def spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        """Run ``coro`` in a task this transport holds until it is done."""
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


__all__ = ["NoTransport", "TaskTransport", "Transport"]
