"""Benchmark harness: run a fan-out server and the Node.js load generator on separate cores.

Building blocks, all bounded in count and time and all cleaning up their child processes:

* :class:`Target` -- a server under test: ``start()``, ``publish_batch(changes)``, ``stop()``.
  :class:`HttpPublishTarget` implements publishing as ``POST /publish`` with body
  ``{"changes": [{"class": ..., "op": ..., "doc": {...}}, ...]}`` and header
  ``X-Publisher-Key``, which is the API of both :class:`ReferenceTarget` and
  xia-broadcast, so a target for xia-broadcast only needs its command line.
* :class:`FullSpeed` and :class:`FixedRate` -- publish profiles, run by :func:`drive`.
  Every published document carries ``"ts"``: CLOCK_MONOTONIC in microseconds at
  publish time, from which the loadgen computes publish-to-receipt latency.
* :class:`Loadgen` -- ``bench/node/loadgen.js`` as a child process.
* Scenarios: :func:`run_publish_scenario`, :func:`measure_idle_rss`,
  :func:`measure_loadgen_capacity`.

By default the server is pinned to CPU 0 and the loadgen to CPU 1 with ``taskset``.
The publish driver runs in the calling Python process, unpinned; it sends one HTTP
request per batch, so its own cost is small next to the fan-out it triggers.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import itertools
import json
import math
import os
import queue
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, TypedDict

BENCH_DIR = Path(__file__).resolve().parent
NODE_DIR = BENCH_DIR / "node"
SERVER_CPU = 0
"""CPU the server under test is pinned to."""
LOADGEN_CPU = 1
"""CPU the load generator (and the synthetic sender's clients) is pinned to."""
NICE = int(os.environ.get("XIA_BENCH_NICE", "-10" if os.geteuid() == 0 else "0"))
"""Scheduling niceness of the benchmark (see :func:`set_niceness`): below 0, unrelated processes of the
machine (databases, brokers) interrupt the measured ones less. Needs root; ``XIA_BENCH_NICE=0`` keeps the
default priority."""


def set_niceness() -> None:
    """Run this process at :data:`NICE`, before it starts any thread or child: its publishers, and every
    server, reference and load generator it starts, inherit it, so all of them have the same priority."""
    if NICE:
        os.setpriority(os.PRIO_PROCESS, 0, NICE)

DEFAULT_HANDSHAKE: dict[str, Any] = {"Order": {"data_scope": [], "catalog": {}, "show_hidden": False, "start_seq": ""}}
"""Subscription sent by every loadgen connection unless a scenario gives its own list."""

STOP_GRACE_S = 10.0
"""Seconds a child process gets to exit after SIGTERM before it is killed."""

Change = TypedDict("Change", {"class": str, "op": str, "doc": dict[str, Any]})
"""One document change, as ``POST /publish`` takes it."""


class BenchError(RuntimeError):
    """A benchmark step failed or exceeded its time bound."""


def monotonic_us() -> int:
    """CLOCK_MONOTONIC in microseconds; the clock of the ``"ts"`` field (shared with the loadgen)."""
    return time.monotonic_ns() // 1000


def make_change(n: int, ts_us: int) -> Change:
    """The ``n``-th benchmark change: an ``Order`` insert whose document carries ``ts`` (microseconds)."""
    doc = {
        "_id": f"order-{n:08d}",
        "ts": ts_us,
        "customer": f"customer-{n % 997:04d}",
        "status": "open",
        "amount": round(10 + (n % 1000) * 1.25, 2),
        "currency": "EUR",
        "region": ("eu-west", "us-east", "ap-south")[n % 3],
        "lines": n % 7 + 1,
    }
    return {"class": "Order", "op": "I", "doc": doc}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_kib(pid: int) -> int:
    """Resident set size (VmRSS) of process ``pid``, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time consumed so far by process ``pid`` (its threads included), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def node_binary() -> str:
    """Path of the ``node`` executable."""
    node = shutil.which("node")
    if node is None:
        raise BenchError("node is not on PATH")
    return node


def machine_cpu_seconds() -> float:
    """Non-idle CPU time of all cores so far (user, nice, system, irq, softirq, steal), in seconds."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = Path("/proc/stat").read_text().split()[1:9]
    busy = int(user) + int(nice) + int(system) + int(irq) + int(softirq) + int(steal)
    return busy / os.sysconf("SC_CLK_TCK")


def wait_until_quiet(max_busy_cores: float = 0.15, window_s: float = 1.0, timeout_s: float = 120.0) -> float:
    """Wait until the machine uses at most ``max_busy_cores`` cores' worth of CPU over ``window_s`` s.

    Gives up after ``timeout_s`` seconds. Returns the last busy level measured (in cores),
    so a caller can record how quiet the machine was when a measurement began.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        before = machine_cpu_seconds()
        time.sleep(window_s)
        busy = (machine_cpu_seconds() - before) / window_s
        if busy <= max_busy_cores or time.monotonic() > deadline:
            return busy


def own_cpu_seconds() -> float:
    """User + system CPU time of this (harness) process so far, in seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (children inherit it); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


_live: set[subprocess.Popen[bytes]] = set()
_log_numbers = itertools.count(1)


def _kill_all_live() -> None:
    for proc in list(_live):
        proc.kill()


atexit.register(_kill_all_live)


class Child:
    """A child process, optionally pinned to one CPU, with stderr in a log file.

    It is started through ``setpriv --pdeathsig SIGTERM``, so it is terminated if the
    thread that started it dies, even without cleanup (e.g. the harness is killed).

    With ``capture_stdout`` its stdout must be JSON lines, read with :meth:`next_event`;
    otherwise stdout goes to the log file too.
    """

    def __init__(
        self, name: str, argv: Sequence[str], *, cpu: int | None, log_dir: Path, capture_stdout: bool = False
    ) -> None:
        fd_limit()
        self.name = name
        self.log_path = log_dir / f"{name}-{next(_log_numbers)}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        prefix = ["setpriv", "--pdeathsig", "SIGTERM", "--"]
        if cpu is not None:
            prefix += ["taskset", "-c", str(cpu)]
        self.proc = subprocess.Popen(
            [*prefix, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture_stdout else self._log,
            stderr=self._log,
        )
        _live.add(self.proc)
        self._lines: queue.Queue[bytes] = queue.Queue()
        if capture_stdout:
            threading.Thread(target=self._read_stdout, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self._lines.put(line)
        self._lines.put(b"")

    def next_event(self, kind: str, timeout_s: float) -> dict[str, Any]:
        """The next JSON line of stdout (at most ``timeout_s`` seconds away); it must be a ``kind`` event."""
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise BenchError(f"{self.name} silent for {timeout_s} s:\n{self.log_tail()}") from None
        if not line:
            self.proc.wait(STOP_GRACE_S)
            raise BenchError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
        event: dict[str, Any] = json.loads(line)
        if event.get("event") != kind:
            raise BenchError(f"{self.name}: expected a {kind!r} event, got {event}")
        return event

    @property
    def pid(self) -> int:
        """Process id (setpriv and taskset exec the command, so it is the command's own pid)."""
        return self.proc.pid

    def check_alive(self) -> None:
        """Raise BenchError with the log's tail if the process has exited."""
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        """The last ``chars`` characters of the process log."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM, then SIGKILL after ``grace_s`` seconds; idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        _live.discard(self.proc)
        self._log.close()


def wait_for_port(port: int, child: Child, timeout_s: float) -> None:
    """Wait until 127.0.0.1:``port`` accepts TCP connections, at most ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        child.check_alive()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise BenchError(f"{child.name}: port {port} not open after {timeout_s} s") from None
            time.sleep(0.05)


class Target(ABC):
    """A server under test. Use as a context manager, or call :meth:`start` and :meth:`stop`."""

    name: str

    @property
    @abstractmethod
    def ws_url(self) -> str:
        """WebSocket URL clients subscribe at."""

    @property
    @abstractmethod
    def pid(self) -> int:
        """Pid of the server process (for RSS and CPU readings)."""

    @abstractmethod
    def start(self) -> None:
        """Launch the server and return once it accepts connections."""

    @abstractmethod
    def publish_batch(self, changes: Sequence[Change], connection: http.client.HTTPConnection | None = None) -> None:
        """Publish ``changes`` in order (on ``connection``, default the target's own); return once the server
        has accepted them."""

    @abstractmethod
    def publisher(self) -> http.client.HTTPConnection:
        """A new connection for one more concurrent publisher."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the server; idempotent."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class HttpPublishTarget(Target):
    """A server process publishing through ``POST /publish`` (batch body, ``X-Publisher-Key`` header).

    Subclasses give the command line in :meth:`argv`. ``ws_port`` and ``http_port``
    may be equal for a server with one listener.
    """

    def __init__(
        self,
        *,
        ws_port: int | None = None,
        http_port: int | None = None,
        ws_path: str = "/ws",
        publisher_key: str = "bench",
        cpu: int | None = SERVER_CPU,
        log_dir: Path | None = None,
        start_timeout_s: float = 30.0,
        publish_timeout_s: float = 120.0,
    ) -> None:
        self.ws_port = ws_port or free_port()
        self.http_port = http_port or free_port()
        self.ws_path = ws_path
        self.publisher_key = publisher_key
        self.cpu = cpu
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="xia-bench-"))
        self.start_timeout_s = start_timeout_s
        self.publish_timeout_s = publish_timeout_s
        self._child: Child | None = None
        self._http: http.client.HTTPConnection | None = None

    @abstractmethod
    def argv(self) -> list[str]:
        """Command line of the server, listening on ``self.ws_port`` and ``self.http_port``."""

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}{self.ws_path}"

    @property
    def pid(self) -> int:
        if self._child is None:
            raise BenchError(f"{self.name} is not running")
        return self._child.pid

    def start(self) -> None:
        self._child = Child(self.name, self.argv(), cpu=self.cpu, log_dir=self.log_dir)
        try:
            for port in {self.ws_port, self.http_port}:
                wait_for_port(port, self._child, self.start_timeout_s)
        except BaseException:
            self.stop()
            raise
        self._http = self.publisher()

    def publisher(self) -> http.client.HTTPConnection:
        """A new keep-alive HTTP connection to publish on (one per concurrent publisher)."""
        return http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=self.publish_timeout_s)

    def publish_batch(self, changes: Sequence[Change], connection: http.client.HTTPConnection | None = None) -> None:
        """POST ``changes`` (one body) on ``connection`` (default: the target's own); return after the answer."""
        conn = connection or self._http
        if conn is None or self._child is None:
            raise BenchError(f"{self.name} is not running")
        body = json.dumps({"changes": list(changes)}).encode()
        headers = {"Content-Type": "application/json", "X-Publisher-Key": self.publisher_key}
        conn.request("POST", "/publish", body=body, headers=headers)
        response = conn.getresponse()
        reply = response.read()
        if not 200 <= response.status < 300:
            self._child.check_alive()
            raise BenchError(f"{self.name}: POST /publish -> {response.status} {reply[:500]!r}")

    def stop(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        if self._child is not None:
            self._child.stop()
            self._child = None


class ReferenceTarget(HttpPublishTarget):
    """``bench/reference_server.py``: plain ``websockets`` broadcast to every client, no filtering."""

    name = "reference"

    def argv(self) -> list[str]:
        return [
            sys.executable,
            str(BENCH_DIR / "reference_server.py"),
            "--ws-port",
            str(self.ws_port),
            "--http-port",
            str(self.http_port),
        ]


class NodeReferenceTarget(HttpPublishTarget):
    """``bench/node/reference_server.js``: plain Node.js ``ws`` broadcast to every client, no filtering."""

    name = "node-ws"

    def argv(self) -> list[str]:
        return [node_binary(), str(NODE_DIR / "reference_server.js"), "--ws-port", str(self.ws_port),
                "--http-port", str(self.http_port)]


BENCH_CLASSES = """
[classes.Order]
key = ["customer"]
[classes.Order.fields]
ts = "int"
customer = "str"
status = "str"
amount = "float"
currency = "str"
region = "str"
lines = "int"
"""
"""The benchmark's document class, as xia-broadcast's config declares it (the fields of :func:`make_change`)."""


def _toml_item(item: dict[str, str]) -> str:
    return f"{{ obj = {json.dumps(item['obj'])}, act = {json.dumps(item['act'])} }}"


class XiaTarget(HttpPublishTarget):
    """``xia-broadcast serve``: one port for WebSocket and HTTP, classes and publish key from a config file.

    ``settings`` are extra ``[server]`` settings (e.g. ``{"queue_messages": 4000}``).
    """

    name = "xia-broadcast"

    def __init__(self, *, settings: dict[str, Any] | None = None, journal: dict[str, Any] | None = None,
                 api_keys: dict[str, dict[str, Any]] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.http_port = self.ws_port
        self.settings = {"log_level": "WARNING", **(settings or {})}
        #: ``[journal]`` settings (e.g. ``{"max_count": 100000}``)
        self.journal = journal or {}
        #: API key -> its ACL display dict (``{"content": [...]}``); empty: a public server
        self.api_keys = api_keys or {}

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "xia_broadcast.cli", "serve", "--port", str(self.ws_port),
                "--config", str(self.write_config())]

    def write_config(self) -> Path:
        """Write the server's TOML config file (settings, journal, publish key, API keys, classes); its path."""
        config = self.log_dir / f"xia-{self.ws_port}.toml"
        server = "\n".join(f"{k} = {json.dumps(v)}" for k, v in self.settings.items())
        keys = "".join(
            f'[api_keys.{json.dumps(key)}]\nuser_name = {json.dumps(key)}\n'
            f'acl = {{ content = [{", ".join(_toml_item(i) for i in acl["content"])}] }}\n'
            for key, acl in self.api_keys.items())
        journal = "".join(f"{k} = {json.dumps(v)}\n" for k, v in self.journal.items())
        config.write_text(f"[server]\n{server}\n[journal]\n{journal}[publish]\n"
                          f"keys = [{json.dumps(self.publisher_key)}]\n" + keys + BENCH_CLASSES)
        return config


class AsgiTarget(XiaTarget):
    """xia-broadcast's ASGI app (``create_app``) under uvicorn, one worker (``bench/asgi_server.py``): the same
    config file as :class:`XiaTarget`, one port for WebSocket and HTTP.

    uvicorn closes a kept-alive HTTP connection after 5 s idle (its default ``--timeout-keep-alive``; the
    native server waits 60 s), e.g. the target's own between two scenarios: before a request, a connection
    the server has closed is reopened (nothing was sent on it since, so nothing is published twice).
    """

    name = "xia-broadcast ASGI (uvicorn)"

    def argv(self) -> list[str]:
        return [sys.executable, str(BENCH_DIR / "asgi_server.py"), "--port", str(self.ws_port),
                "--config", str(self.write_config())]

    def publish_batch(self, changes: Sequence[Change], connection: http.client.HTTPConnection | None = None) -> None:
        conn = connection or self._http
        if conn is not None and conn.sock is not None and _closed_by_peer(conn.sock):
            conn.close()  # http.client connects again on the next request
        super().publish_batch(changes, connection)


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the peer has closed ``sock`` (an idle keep-alive connection: nothing is expected on it)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


@dataclass(frozen=True)
class FullSpeed:
    """Publish ``count`` changes as fast as the target accepts them, ``batch`` changes per request.

    The driver waits for each request's response before sending the next, so the
    server never runs more than one batch ahead of the driver.
    """

    count: int
    batch: int = 100


@dataclass(frozen=True)
class OnePerRequest:
    """Publish ``count`` changes from ``publishers`` concurrent publishers, ONE change per request, each
    publisher sending its next request after the previous answer (keep-alive, one connection each): how a
    server sees changes in real use. Each change's ``ts`` is taken just before its own request."""

    count: int
    publishers: int = 8


@dataclass(frozen=True)
class FixedRate:
    """Publish ``rate_per_s`` changes per second for ``duration_s`` seconds.

    Each change is sent when due (one request per change at low rates); changes
    that fell due together while the driver was busy go in one request.
    """

    rate_per_s: float
    duration_s: float

    @property
    def count(self) -> int:
        """Number of changes the profile publishes."""
        return math.ceil(self.rate_per_s * self.duration_s)


@dataclass(frozen=True)
class PublishStats:
    """What :func:`drive` did: ``published`` changes in ``seconds`` (wall time of the driver)."""

    published: int
    seconds: float


Profile = FullSpeed | FixedRate | OnePerRequest


def _drive_concurrently(target: Target, profile: OnePerRequest, timeout_s: float) -> PublishStats:
    """:class:`OnePerRequest`: ``profile.publishers`` threads, each on its own connection, one change per POST."""
    start = time.monotonic()
    deadline = start + timeout_s
    numbers = itertools.count()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def publisher() -> None:
        conn = target.publisher()
        try:
            while not errors:
                with lock:
                    n = next(numbers)
                if n >= profile.count:
                    return
                if time.monotonic() > deadline:
                    raise BenchError(f"publishing stopped by the {timeout_s} s bound after about {n} changes")
                target.publish_batch([make_change(n, monotonic_us())], conn)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=publisher, daemon=True) for _ in range(profile.publishers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + STOP_GRACE_S)
    if errors:
        raise errors[0]
    if any(t.is_alive() for t in threads):
        raise BenchError(f"publishers still running after the {timeout_s} s bound")
    return PublishStats(published=profile.count, seconds=time.monotonic() - start)


def drive(target: Target, profile: Profile, timeout_s: float) -> PublishStats:
    """Publish ``profile`` to ``target``; raise BenchError if it takes longer than ``timeout_s`` seconds."""
    if isinstance(profile, OnePerRequest):
        return _drive_concurrently(target, profile, timeout_s)
    start = time.monotonic()
    deadline = start + timeout_s
    sent = 0
    while sent < profile.count:
        now = time.monotonic()
        if now > deadline:
            raise BenchError(f"publishing stopped by the {timeout_s} s bound after {sent} changes")
        if isinstance(profile, FullSpeed):
            due = min(profile.count, sent + profile.batch)
        else:
            due = min(profile.count, math.floor((now - start) * profile.rate_per_s) + 1)
            if due <= sent:
                time.sleep(max(0.0, start + sent / profile.rate_per_s - now))
                continue
        ts_us = monotonic_us()
        target.publish_batch([make_change(n, ts_us) for n in range(sent, due)])
        sent = due
    return PublishStats(published=sent, seconds=time.monotonic() - start)


class CpuWindow:
    """CPU seconds used by a server, a loadgen and the rest of the machine from creation to :meth:`close`."""

    def __init__(self, server_pid: int, loadgen_pid: int) -> None:
        self.server_pid = server_pid
        self.machine = machine_cpu_seconds()
        self.own = own_cpu_seconds()
        self.server = cpu_seconds(server_pid)
        self.loadgen = cpu_seconds(loadgen_pid)

    def close(self, loadgen_result: dict[str, Any]) -> tuple[float, float, float]:
        """``(server, loadgen, other)`` CPU seconds; the loadgen's comes from its (final) result."""
        server = cpu_seconds(self.server_pid) - self.server
        loadgen_ms = loadgen_result["cpu_ms"]
        loadgen = (loadgen_ms["user"] + loadgen_ms["system"]) / 1000 - self.loadgen
        own = own_cpu_seconds() - self.own
        return server, loadgen, machine_cpu_seconds() - self.machine - server - loadgen - own


def _write_handshakes(log_dir: Path, handshakes: Sequence[dict[str, Any]]) -> Path:
    """Write the handshakes for ``loadgen.js --handshakes @FILE`` (a list of thousands exceeds argv limits)."""
    fd, name = tempfile.mkstemp(prefix="handshakes-", suffix=".json", dir=log_dir)
    with os.fdopen(fd, "w") as f:
        json.dump(list(handshakes), f)
    return Path(name)


GENERATORS = {"ws": "loadgen.js", "lean": "leangen.js"}
"""Load generators by name: ``loadgen.js`` (the ``ws`` package; latency) and ``leangen.js`` (frames read straight
from ``net`` sockets, many per read; throughput). Same command line and result fields."""


class Loadgen:
    """``bench/node/loadgen.js`` (or, with ``generator="lean"``, ``leangen.js``) as a child process; see that file
    for its result fields."""

    def __init__(
        self,
        url: str,
        connections: int,
        *,
        handshakes: Sequence[dict[str, Any]] = (DEFAULT_HANDSHAKE,),
        expect: int = 0,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 120.0,
        cpu: int | None = LOADGEN_CPU,
        generator: str = "ws",
        log_dir: Path,
    ) -> None:
        """Start the loadgen: ``connections`` clients, each expecting ``expect`` documents (0: none).

        It reports after every client got ``expect`` documents, ``timeout_s`` seconds after
        being ready, or when stopped.
        """
        if not (NODE_DIR / "node_modules" / "ws").is_dir():
            raise BenchError(f"run `npm ci` in {NODE_DIR} first")
        if connections + 64 > fd_limit():
            raise BenchError(f"{connections} connections need a higher `ulimit -n` than {fd_limit()}")
        self.connect_timeout_s = connect_timeout_s
        argv = [
            node_binary(),
            str(NODE_DIR / GENERATORS[generator]),
            "--url",
            url,
            "--connections",
            str(connections),
            "--handshakes",
            "@" + str(_write_handshakes(log_dir, handshakes)),
            "--expect",
            str(expect),
            "--timeout",
            str(timeout_s),
            "--connect-timeout",
            str(connect_timeout_s),
        ]
        self._child = Child("loadgen", argv, cpu=cpu, log_dir=log_dir, capture_stdout=True)

    @property
    def pid(self) -> int:
        """Pid of the Node.js process."""
        return self._child.pid

    def wait_ready(self) -> dict[str, Any]:
        """Wait until every connection is confirmed; return the ``ready`` event."""
        return self._child.next_event("ready", self.connect_timeout_s + STOP_GRACE_S)

    def wait_result(self, timeout_s: float) -> dict[str, Any]:
        """Wait at most ``timeout_s`` seconds for the ``result`` event and return it."""
        return self._child.next_event("result", timeout_s)

    def stop_for_result(self) -> dict[str, Any]:
        """Ask the loadgen to report now (SIGTERM) and return its ``result`` event."""
        self._child.proc.send_signal(signal.SIGTERM)
        return self._child.next_event("result", STOP_GRACE_S)

    def stop(self) -> None:
        """Terminate the loadgen; idempotent."""
        self._child.stop()


SYSCALLS = ("write", "writev", "sendto", "sendmsg")
"""The system calls a server can write a socket with (asyncio: ``send``, i.e. sendto; Node: writev)."""


class SyscallCounter:
    """Counts the socket-writing system calls of a running process with ``perf stat`` tracepoints.

    Start it, run the load, :meth:`stop` it: a dict system call -> count, or None where ``perf`` is
    missing or may not trace (then the figure is reported as not measured). Tracepoints count in the
    kernel, so the process is not slowed the way ``strace`` slows it.
    """

    def __init__(self, pid: int, log_dir: Path) -> None:
        self.out = log_dir / f"perf-{pid}-{next(_log_numbers)}.csv"
        perf = shutil.which("perf")
        self.child: Child | None = None
        if perf is not None:
            events = ",".join(f"syscalls:sys_enter_{name}" for name in SYSCALLS)
            self.child = Child("perf", [perf, "stat", "-x,", "-o", str(self.out), "-e", events, "-p", str(pid)],
                               cpu=None, log_dir=log_dir)
            time.sleep(0.3)  # attached before the load starts

    def stop(self) -> dict[str, int] | None:
        if self.child is None:
            return None
        proc = self.child.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_GRACE_S)  # perf writes its counts when interrupted
        self.child.stop()
        counts: dict[str, int] = {}
        if self.out.exists():
            for line in self.out.read_text().splitlines():
                fields = line.split(",")
                if len(fields) > 2 and fields[2].startswith("syscalls:sys_enter_") and fields[0].isdigit():
                    counts[fields[2].removeprefix("syscalls:sys_enter_")] = int(fields[0])
        return counts or None


@dataclass
class ScenarioResult:
    """One publish scenario: the loadgen's ``result`` event plus server-side readings.

    CPU times are in seconds, from the first publish to the loadgen's result.
    ``other_cpu_s`` is what the rest of the machine used meanwhile (every process but
    the server, the loadgen and the harness, plus steal time): well above zero means
    something else competed for the two cores and the figures are suspect.
    RSS values are in KiB.
    """

    target: str
    connections: int
    profile: str
    publish: PublishStats
    loadgen: dict[str, Any]
    server_cpu_s: float
    loadgen_cpu_s: float
    other_cpu_s: float
    server_rss_kib_idle: int
    server_rss_kib_after: int
    #: socket-writing system calls of the server during the scenario (``count_syscalls``), else None
    syscalls: dict[str, int] | None = None


def run_publish_scenario(
    target: Target,
    connections: int,
    profile: Profile,
    *,
    handshakes: Sequence[dict[str, Any]] = (DEFAULT_HANDSHAKE,),
    expect: int | None = None,
    timeout_s: float = 300.0,
    count_syscalls: bool = False,
    generator: str = "ws",
    log_dir: Path,
) -> ScenarioResult:
    """Subscribe ``connections`` clients to the started ``target``, publish ``profile``, collect results.

    ``expect`` is the number of documents each client should receive (default: all of
    ``profile``, right for a target that does not filter). The scenario is bounded by
    ``timeout_s`` seconds for publishing and as much again for delivery. ``count_syscalls`` counts the
    server's socket writes meanwhile (:class:`SyscallCounter`). ``generator``: see :data:`GENERATORS`.
    """
    loadgen = Loadgen(
        target.ws_url,
        connections,
        handshakes=handshakes,
        expect=profile.count if expect is None else expect,
        timeout_s=timeout_s,
        generator=generator,
        log_dir=log_dir,
    )
    try:
        loadgen.wait_ready()
        rss_idle = rss_kib(target.pid)
        counter = SyscallCounter(target.pid, log_dir) if count_syscalls else None
        cpu = CpuWindow(target.pid, loadgen.pid)
        stats = drive(target, profile, timeout_s)
        result = loadgen.wait_result(timeout_s + STOP_GRACE_S)
        server_cpu_s, loadgen_cpu_s, other_cpu_s = cpu.close(result)
        syscalls = counter.stop() if counter is not None else None
        return ScenarioResult(
            target=target.name,
            connections=connections,
            profile=repr(profile),
            publish=stats,
            loadgen=result,
            server_cpu_s=server_cpu_s,
            loadgen_cpu_s=loadgen_cpu_s,
            other_cpu_s=other_cpu_s,
            server_rss_kib_idle=rss_idle,
            server_rss_kib_after=rss_kib(target.pid),
            syscalls=syscalls,
        )
    finally:
        loadgen.stop()


@dataclass(frozen=True)
class IdleRss:
    """Server RSS (KiB) before and after ``connections`` idle subscribed clients."""

    connections: int
    rss_kib_before: int
    rss_kib_after: int

    @property
    def kib_per_connection(self) -> float:
        """RSS growth per idle connection, in KiB."""
        return (self.rss_kib_after - self.rss_kib_before) / self.connections


def measure_idle_rss(
    target: Target,
    connections: int,
    *,
    handshakes: Sequence[dict[str, Any]] = (DEFAULT_HANDSHAKE,),
    settle_s: float = 2.0,
    log_dir: Path,
) -> IdleRss:
    """Server RSS of the started ``target`` before, and ``settle_s`` s after, ``connections`` subscribe."""
    time.sleep(settle_s)
    before = rss_kib(target.pid)
    loadgen = Loadgen(target.ws_url, connections, handshakes=handshakes, timeout_s=600.0, log_dir=log_dir)
    try:
        loadgen.wait_ready()
        time.sleep(settle_s)
        after = rss_kib(target.pid)
        loadgen.stop_for_result()
    finally:
        loadgen.stop()
    return IdleRss(connections=connections, rss_kib_before=before, rss_kib_after=after)


def measure_loadgen_capacity(
    connections: int,
    count: int,
    *,
    frames_per_write: int = 16,
    rate_per_s: float | None = None,
    timeout_s: float = 300.0,
    generator: str = "ws",
    log_dir: Path,
) -> dict[str, Any]:
    """Loadgen ``result`` against ``bench/synthetic_server.js`` (server on CPU 0, loadgen on CPU 1).

    The synthetic server sends ``count`` documents shaped like :func:`make_change`'s
    to each of ``connections`` clients. At full speed (``rate_per_s`` None) they are
    pre-built, carry no ``ts`` and go out ``frames_per_write`` per socket write, so the
    reported deliveries/s is the loadgen's own receive ceiling. With ``rate_per_s``
    (documents per second) each carries ``ts``, so the reported latency is the
    loadgen's own latency floor at that fan-out width. Added keys: the synthetic
    server's ``sent`` event under ``"sender"``, and ``sender_cpu_s``, ``loadgen_cpu_s``,
    ``other_cpu_s`` as in :class:`ScenarioResult` (counted from the loadgen's start). ``generator``: the load
    generator measured (:data:`GENERATORS`).
    """
    port = free_port()
    doc = {k: v for k, v in make_change(0, monotonic_us())["doc"].items() if k not in ("_id", "ts")}
    argv = [
        node_binary(),
        str(BENCH_DIR / "synthetic_server.js"),
        "--port",
        str(port),
        "--clients",
        str(connections),
        "--messages",
        str(count),
        "--doc",
        json.dumps(doc),
        "--frames-per-write",
        str(frames_per_write),
        "--timeout",
        str(math.ceil(2 * timeout_s)),
    ]
    if rate_per_s is not None:
        argv += ["--rate", str(rate_per_s)]
    server = Child("synthetic", argv, cpu=SERVER_CPU, log_dir=log_dir, capture_stdout=True)
    try:
        server.next_event("listening", STOP_GRACE_S)
        loadgen = Loadgen(f"ws://127.0.0.1:{port}/ws", connections, expect=count, timeout_s=timeout_s,
                          generator=generator, log_dir=log_dir)
        try:
            cpu = CpuWindow(server.pid, loadgen.pid)
            loadgen.wait_ready()
            result = loadgen.wait_result(timeout_s + STOP_GRACE_S)
            result["sender_cpu_s"], result["loadgen_cpu_s"], result["other_cpu_s"] = cpu.close(result)
        finally:
            loadgen.stop()
        result["sender"] = server.next_event("sent", STOP_GRACE_S)
        return result
    finally:
        server.stop()
