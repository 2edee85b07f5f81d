"""The suite's fixtures: in-process servers on 127.0.0.1, real WebSocket and HTTP clients, servers in child
processes, proxies to cut, and Redis (``redis_url``, ``own_redis``, defined with the journal contract).
Fixtures only: what they are built from, and every other helper, is in ``helpers.py``.

Every server is started through one fixture, :func:`make_server`, and shut down after the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import (
    CLASSES,
    RECV_TIMEOUT,
    AsgiServer,
    CliProcess,
    Collector,
    GoodClient,
    ServerFactory,
    ServerProcess,
    TcpProxy,
    cli,
)
from journal_contract.journal_helpers import own_redis, redis_url  # noqa: F401  (fixtures, shared by every test)
from xia_broadcast.server.config import Settings
from xia_broadcast.server.native import NativeServer

# -- servers in this process -------------------------------------------------------------------------------


@pytest.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    """A factory of started servers: ``await make_server(**settings)``; all are shut down afterwards.

    Defaults: ephemeral port on 127.0.0.1, the Order and Customer classes (``helpers.CLASSES``), no
    keepalive pings, a shutdown bounded to 2 s.
    """
    servers: list[NativeServer] = []

    async def factory(**settings: Any) -> NativeServer:
        settings.setdefault("port", 0)
        settings.setdefault("classes", dict(CLASSES))
        settings.setdefault("ping_interval", 0.0)
        settings.setdefault("shutdown_timeout", 2.0)
        server = NativeServer(Settings(**settings))
        await server.start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await asyncio.wait_for(server.shutdown(), 15)


@pytest.fixture
async def server(make_server: ServerFactory) -> NativeServer:
    """A public server with the default settings and the Order and Customer classes."""
    return await make_server()


@pytest.fixture
async def asgi_server() -> AsyncIterator[Callable[..., Awaitable[AsgiServer]]]:
    """A factory of started :class:`AsgiServer` (the ASGI app under uvicorn); all are stopped afterwards."""
    servers: list[AsgiServer] = []

    async def factory(**settings: Any) -> AsgiServer:
        settings.setdefault("classes", dict(CLASSES))
        settings.setdefault("ping_interval", 0.0)
        server = await AsgiServer(Settings(**settings)).start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.stop()


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """A factory of started :class:`ServerProcess` servers, all stopped afterwards:
    ``server_process(**kwargs)`` runs one in ``tmp_path``; ``server_process(directory="a", **kwargs)`` in
    that subdirectory of it (made), for several servers in one test."""
    started: list[ServerProcess] = []

    def factory(directory: str | None = None, **kwargs: Any) -> ServerProcess:
        where = tmp_path if directory is None else tmp_path / directory
        where.mkdir(exist_ok=True)
        proc = ServerProcess(where, **kwargs)
        started.append(proc)
        return proc.start()

    yield factory
    for proc in started:
        proc.stop()


# -- clients -----------------------------------------------------------------------------------------------


@pytest.fixture
async def good_client() -> AsyncIterator[Callable[..., Awaitable[GoodClient]]]:
    """A factory of :class:`GoodClient` subscribers, closed afterwards."""
    clients: list[GoodClient] = []

    async def factory(server: NativeServer, request: Mapping[str, Any] | None = None) -> GoodClient:
        client = await GoodClient(server, request).start()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client (no proxy from the environment, bounded timeouts)."""
    async with httpx.AsyncClient(trust_env=False, timeout=RECV_TIMEOUT) as client:
        yield client


@pytest.fixture
async def make_proxy() -> AsyncIterator[Callable[[int], Awaitable[TcpProxy]]]:
    """A factory of started :class:`TcpProxy` objects in front of a port; all are closed afterwards."""
    proxies: list[TcpProxy] = []

    async def factory(target_port: int) -> TcpProxy:
        proxy = await TcpProxy(target_port).start()
        proxies.append(proxy)
        return proxy

    yield factory
    for proxy in proxies:
        await proxy.close()


@pytest.fixture
async def run() -> AsyncIterator[Callable[..., Any]]:
    """``await run(*args, stdin=None)``: ``xia-broadcast ARGS`` in a child process (:class:`CliProcess`); every one
    still running is killed afterwards."""
    procs: list[CliProcess] = []

    async def start(*args: str, stdin: bytes | None = None) -> CliProcess:
        proc = await asyncio.create_subprocess_exec(
            *cli(*args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL)
        if stdin is not None:
            assert proc.stdin is not None
            proc.stdin.write(stdin)
            proc.stdin.close()
        p = CliProcess(proc)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.proc.returncode is None:
            p.proc.kill()
            await p.proc.wait()


@pytest.fixture
async def collect() -> AsyncIterator[Callable[..., Collector]]:
    """``collect(listener, on_event=None, kind=Collector)``: a :class:`Collector` (or ``kind``) reading a client
    ``Listener`` in a background task; every one is closed afterwards."""
    collectors: list[Collector] = []

    def factory(lst: Any, on_event: Callable[[Any], None] | None = None,
                kind: type[Collector] = Collector) -> Collector:
        c = kind(lst, on_event)
        collectors.append(c)
        return c

    yield factory
    for c in collectors:
        await c.close()
