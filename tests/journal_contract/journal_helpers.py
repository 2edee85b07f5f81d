"""Helpers and fixtures for the journal backend contract: every backend (memory, SQLite, Redis) behind one
factory, a Redis to test against, and a ``redis-server`` of our own for fault tests.

Redis: ``REDIS_URL`` if set, else 127.0.0.1:6379 if it answers, else a ``redis-server`` started for the
session on a free port. Each test uses its own key prefix and deletes its keys afterwards. Tests that need
Redis are skipped, with a message saying so, only when none answers and no ``redis-server`` is installed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import RECV_TIMEOUT, FakeClock, free_port, until
from xia_broadcast.core.change import Change
from xia_broadcast.journal import Backend, MemoryBackend
from xia_broadcast.journal.redis import delete_prefix
from xia_broadcast.journal.store import StoreBounds


def change(i: int, class_name: str = "T", **extra: Any) -> Change:
    """A publishable change of document ``i``."""
    return Change(class_name, "I", "", {"_id": f"d{i}", "n": i, **extra})


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A ``redis-server`` process of our own: append-only, on a free port, in a temp directory."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, timeout: float = RECV_TIMEOUT) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--appendonly", "yes",
             "--appendfsync", "always", "--save", "", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # synchronous (a session fixture starts it, outside any event loop), and it stops at once if the
        # process exits: not a wait for helpers.until
        deadline = time.monotonic() + timeout
        while not _answers("127.0.0.1", self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop it (SIGTERM: Redis flushes its append-only file first) and wait for it to exit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(RECV_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(RECV_TIMEOUT)
        self.proc = None


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis to test against (see the module docstring)."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    if _answers("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/0"
        return
    if shutil.which("redis-server") is None:
        pytest.skip("no Redis: none answers on 127.0.0.1:6379, REDIS_URL is not set, and redis-server "
                    "is not installed")
    with tempfile.TemporaryDirectory(prefix="xia-redis-") as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A ``redis-server`` of this test's own, which the test may stop, restart or empty."""
    if shutil.which("redis-server") is None:
        pytest.skip("fault tests start their own Redis, and redis-server is not installed")
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


class MakeBackend:
    """Makes backends of one kind (``kind``: "memory" or "redis"). Several Redis backends from one factory
    share a key prefix: they are nodes of one cluster. Retention defaults: no count or age bound."""

    def __init__(self, kind: str, redis_url: str) -> None:
        self.kind = kind
        self.redis_url = redis_url
        self.prefix = f"xia-test:{uuid.uuid4().hex[:12]}:"
        self.made: list[Backend] = []
        #: the data directories of SQLite backends, removed afterwards
        self.directories: list[Path] = []

    async def __call__(self, *, max_count: int | None = None, max_age: float | None = None,
                       clock: FakeClock | None = None, block_ms: int = 500,
                       store: StoreBounds | None = None) -> Backend:
        backend: Backend
        if self.kind == "memory":
            backend = MemoryBackend(max_count=max_count or 10**9, max_age=max_age or float("inf"),
                                    clock=clock or time.monotonic, store=store)
        elif self.kind == "sqlite":
            from xia_broadcast.journal.sqlite import SqliteBackend

            directory = Path(tempfile.mkdtemp(prefix="xia-journal-"))
            self.directories.append(directory)
            backend = SqliteBackend(directory, max_count=max_count or 10**9, max_age=max_age or float("inf"),
                                    clock=clock or time.time, store=store)
        else:
            from xia_broadcast.journal.redis import RedisBackend

            backend = RedisBackend(self.redis_url, prefix=self.prefix, max_count=max_count, max_age=max_age,
                                   exact_trim=True, clock=clock or time.time, block_ms=block_ms, store=store)
        self.made.append(backend)
        return backend

    def clock(self) -> FakeClock:
        """A clock at "now" on the backend's time scale (monotonic for memory, wall clock for the others)."""
        return FakeClock(time.monotonic() if self.kind == "memory" else time.time())


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def make_backend(request: pytest.FixtureRequest) -> AsyncIterator[MakeBackend]:
    """A factory of backends of one kind; every backend it made is closed afterwards, its keys deleted."""
    kind: str = request.param
    url = request.getfixturevalue("redis_url") if kind == "redis" else ""
    make = MakeBackend(kind, url)
    try:
        yield make
    finally:
        for backend in make.made:
            with contextlib.suppress(Exception):
                await backend.close()
        if kind == "redis":
            await delete_prefix(url, make.prefix)
        for directory in make.directories:
            shutil.rmtree(directory, ignore_errors=True)


class ChangeRecorder:
    """A backend's ``on_change`` that keeps what it receives (``helpers.Recorder`` is a Broadcaster)."""

    def __init__(self) -> None:
        self.changes: list[Change] = []

    def __call__(self, change: Change) -> None:
        self.changes.append(change)

    def seqs(self, class_name: str | None = None) -> list[str]:
        return [c.seq for c in self.changes if class_name is None or c.class_name == class_name]

    async def until_count(self, count: int, class_name: str | None = None) -> None:
        """Wait until ``count`` changes (of ``class_name``, or of any class) were received."""
        await until(lambda: len(self.seqs(class_name)) >= count,
                    what=lambda: f"{count} changes (got {len(self.seqs(class_name))})")
