"""The standalone server: the listening socket, the accept loop, file descriptors, keepalive, lifecycle.

Every accepted socket starts in the HTTP stage (:mod:`.http`: operations endpoints, ``POST /publish``,
the upgrade) and, once upgraded, becomes a :class:`~.connection.WebSocketConnection`. The server's
:class:`~.service.Service` holds the Hub, which writes through the server's
:class:`~.native_transport.NativeTransport`.

File descriptors are a limit of their own: at start the server raises its soft ``RLIMIT_NOFILE`` to the
hard limit, and keeps ``max_connections`` (plus ``max_http_connections``) below what that limit allows, so
that a full server answers 4503 or 503 instead of failing to accept. When ``accept`` still fails for want
of descriptors (EMFILE, ENFILE: other sockets, other code in the process), accepting pauses for
:data:`ACCEPT_PAUSE` seconds with one log line per pause; clients wait in the listen backlog meanwhile and
are served once descriptors are free, and the connections already open are served throughout.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time

from .config import Settings
from .connection import CLOSE_TIMEOUT, WebSocketConnection
from .endpoints import BodyBudget, EndpointTable, default_endpoints
from .http import HttpConnection, HttpLimits
from .native_transport import NativeTransport
from .service import Service
from .upgrade import served_hosts

__all__ = ["NativeServer", "raise_fd_limit"]

log = logging.getLogger("xia_broadcast.server")

#: seconds accepting pauses when the process is out of file descriptors
ACCEPT_PAUSE = 0.5
#: connections accepted per wake-up of the listening socket, so that a flood never holds the loop (64
#: accepts with their tasks measured at 1-2 ms in a storm of 19,000)
ACCEPT_BATCH = 64
#: file descriptors kept free for everything but client sockets (log files, journal backends, DNS, ...)
FD_RESERVE = 32
#: seconds between two keepalive rounds: the WebSockets are dealt over ``ping_interval / KEEPALIVE_TICK``
#: rounds (400 at the default 20 s), so a server with 19,000 connections writes about 48 pings (and reads
#: about 48 pongs) every 50 ms, never a twentieth of them at once (950: a 20-40 ms hold of the loop)
KEEPALIVE_TICK = 0.05
#: at most this many rounds (a long ``ping_interval`` gets longer ticks, not more empty sets to hold)
KEEPALIVE_MAX_ROUNDS = 1200


def keepalive_round_count(ping_interval: float) -> int:
    """Keepalive rounds per ``ping_interval`` (each connection is pinged in one of them): one per
    :data:`KEEPALIVE_TICK`, at most :data:`KEEPALIVE_MAX_ROUNDS`."""
    return max(1, min(KEEPALIVE_MAX_ROUNDS, round(ping_interval / KEEPALIVE_TICK)))

_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def raise_fd_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; return the soft limit now in force (0: unknown
    or unlimited)."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and hard != resource.RLIM_INFINITY:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            log.warning("could not raise the file descriptor limit from %d to %d", soft, hard)
    return 0 if soft == resource.RLIM_INFINITY else int(soft)


def open_fd_count() -> int:
    """File descriptors this process has open (Linux; elsewhere a guess that errs high)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 64


def presize_fd_table(highest: int) -> None:
    """Grow this process's file descriptor table once, now, to hold descriptor ``highest``.

    The kernel grows the table by doubling as descriptors are opened, and each growth in a process with
    threads waits for an RCU grace period. In a storm of 19,000 connections, seven ``accept`` calls held the
    event loop 10-42 ms each; with the table grown at start, one of 15 ms was left. The
    table never shrinks; it costs about 8 bytes per slot (160 KiB for 20,000)."""
    if highest <= 2 or _fd_open(highest):
        return
    try:
        fd = os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return
    try:
        os.dup2(fd, highest)  # a free slot (checked above): nothing open is replaced
        os.close(highest)
    except OSError:
        pass  # the table grows as descriptors come, as it would have
    finally:
        os.close(fd)


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


class NativeServer:
    """The standalone server. ``await start()``, then ``await shutdown()``.

    ``service`` holds the Hub (``service.hub``) and the in-process publisher (``service.publish``);
    ``endpoints`` is the HTTP endpoint table, where more endpoints may be added before ``start``.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.transport = NativeTransport(settings.max_write_delay, settings.queue_messages)
        self.service: Service[WebSocketConnection] = Service(settings, self.transport)
        self.endpoints: EndpointTable = default_endpoints(settings)
        #: the names the Host header of a request may carry (None: any), from ``allowed_hosts``
        self.hosts = served_hosts(settings.host, settings.allowed_hosts)
        self.http_limits = HttpLimits(settings.max_http_connections)
        self.body_budget = BodyBudget(settings.max_body_bytes)
        self.sockets: set[HttpConnection | WebSocketConnection] = set()
        self.port = settings.port
        self._listener: socket.socket | None = None
        self._accepting = False
        self._accept_resume: asyncio.TimerHandle | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._keepalive_slots = 0
        #: the open WebSockets of each keepalive round (a round pings its own set, it scans nothing else)
        self.keepalive_rounds: list[set[WebSocketConnection]] = [
            set() for _ in range(keepalive_round_count(settings.ping_interval))]
        self._starting: set[asyncio.Task[None]] = set()

    @property
    def max_connections(self) -> int:
        """The bound in force: ``settings.max_connections``, lowered at start when the fd limit cannot hold
        that many sockets."""
        return self.service.max_connections

    async def start(self) -> None:
        self._fit_fd_limit()
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self.settings.host, self.settings.port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(4096)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._listener = sock
        self.port = sock.getsockname()[1]
        self._accepting = True
        loop.add_reader(sock.fileno(), self._accept)
        await self.service.start()
        self._keepalive = loop.create_task(self._keepalive_loop())

    def _fit_fd_limit(self) -> None:
        """Raise the fd limit; lower ``max_connections`` (and ``max_http_connections``) to what it allows."""
        limit = raise_fd_limit()
        if limit <= 0:
            return
        open_now = open_fd_count()
        budget = limit - open_now - FD_RESERVE
        http = min(self.settings.max_http_connections, max(1, budget // 8))
        ws = max(1, budget - http)
        presize_fd_table(min(limit - 1, open_now + FD_RESERVE + min(http, self.http_limits.max_connections)
                             + min(ws, self.max_connections)))
        if http < self.http_limits.max_connections:
            self.http_limits.max_connections = http
        if ws < self.max_connections:
            self.service.max_connections = ws
            # a value the operator chose is worth a warning; the default is meant to follow the fd limit
            chosen = self.settings.max_connections != type(self.settings)().max_connections
            log.log(logging.WARNING if chosen else logging.INFO,
                    "max_connections lowered from %d to %d: the file descriptor limit is %d "
                    "(%d kept for HTTP connections)", self.settings.max_connections, ws, limit, http,
                    extra={"max_connections": ws, "fd_limit": limit})
        else:
            log.info("max_connections %d within the file descriptor limit %d", self.max_connections, limit,
                     extra={"max_connections": self.max_connections, "fd_limit": limit})

    # -- accepting ----------------------------------------------------------------------------------------

    def _accept(self) -> None:
        """Accept what waits in the backlog (at most :data:`ACCEPT_BATCH` per wake-up)."""
        sock = self._listener
        if sock is None:
            return
        loop = asyncio.get_running_loop()
        for _ in range(ACCEPT_BATCH):
            try:
                client, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while waiting in the backlog
            except OSError as exc:
                if exc.errno in _OUT_OF_FDS:
                    self._pause_accepting(exc)
                    return
                raise
            client.setblocking(False)
            task = loop.create_task(self._serve(client))
            self._starting.add(task)  # held until the transport exists
            task.add_done_callback(self._starting.discard)

    async def _serve(self, client: socket.socket) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: HttpConnection(self), client)
        except OSError:
            client.close()

    def _pause_accepting(self, exc: OSError) -> None:
        """Out of file descriptors: stop accepting for :data:`ACCEPT_PAUSE` s (one log line per pause)."""
        if self._listener is None or not self._accepting:
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._listener.fileno())
        self._accepting = False
        log.warning("accept paused for %.1f s: %s (%d sockets open)", ACCEPT_PAUSE,
                    os.strerror(exc.errno or 0), len(self.sockets))
        self._accept_resume = loop.call_later(ACCEPT_PAUSE, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._accept_resume = None
        if self._listener is None or self._accepting:
            return
        self._accepting = True
        asyncio.get_running_loop().add_reader(self._listener.fileno(), self._accept)

    def _stop_accepting(self) -> None:
        if self._accept_resume is not None:
            self._accept_resume.cancel()
            self._accept_resume = None
        if self._listener is not None:
            if self._accepting:
                asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._accepting = False
            self._listener.close()
            self._listener = None

    # -- keepalive and lifecycle --------------------------------------------------------------------------

    def next_keepalive_slot(self) -> int:
        """The keepalive round of a new WebSocket: connections are dealt round-robin over the rounds."""
        self._keepalive_slots += 1
        return self._keepalive_slots % len(self.keepalive_rounds)

    async def _keepalive_loop(self) -> None:
        """Ping every WebSocket once per ``ping_interval``, one round of them every
        ``ping_interval / len(keepalive_rounds)`` seconds (about :data:`KEEPALIVE_TICK`), so that pings and
        their pongs never hold the loop for many connections at once."""
        interval, timeout = self.settings.ping_interval, self.settings.ping_timeout
        if interval <= 0:
            return
        rounds = len(self.keepalive_rounds)
        round_no = 0
        while True:
            await asyncio.sleep(interval / rounds)
            round_no = (round_no + 1) % rounds
            now = time.monotonic()
            for sock in list(self.keepalive_rounds[round_no]):
                sock.keepalive(now, interval, timeout)

    async def shutdown(self) -> None:
        """Stop accepting, flush what is queued, close every WebSocket with 1001, wait for them to go."""
        self.service.shutting_down = True
        self._stop_accepting()
        if self._keepalive is not None:
            self._keepalive.cancel()
        deadline = time.monotonic() + self.settings.shutdown_timeout
        self.transport.flush_now()
        await self.service.hub.idle(self.settings.shutdown_timeout)
        while time.monotonic() < deadline and any(
                s.transport is not None and s.transport.get_write_buffer_size() > 0 for s in self.sockets):
            await asyncio.sleep(0.01)
        for sock in list(self.sockets):
            sock.shutdown()
        while self.sockets and time.monotonic() < deadline + CLOSE_TIMEOUT:
            await asyncio.sleep(0.01)
        for sock in list(self.sockets):
            if sock.transport is not None:
                sock.transport.abort()
        await self.service.stop()

    @property
    def url(self) -> str:
        return f"ws://{self.settings.host}:{self.port}{self.settings.path}"

    def __repr__(self) -> str:
        return f"<NativeServer {self.url} sockets={len(self.sockets)}>"
