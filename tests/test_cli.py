"""The ``xia-broadcast`` command as a real subprocess: the demo over a plain WebSocket client, SIGTERM,
configuration priorities (file < environment < flags) and bad configurations (exit code 2)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from helpers import cli, free_port, read_until_closed, recv_json, subscribe

STARTUP_TIMEOUT = 20.0
DEMO_FIELDS = {"_id", "order_id", "customer", "region", "amount", "status"}


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any XIA_BROADCAST_* variable of the caller, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XIA_BROADCAST_")}
    env.update(extra)
    return env


class Served:
    """A running ``xia-broadcast serve`` subprocess and the URL it announced."""

    def __init__(self, proc: asyncio.subprocess.Process, banner: str, stderr: Path) -> None:
        self.proc = proc
        self.banner = banner
        self.stderr = stderr
        match = re.search(r"listening on (ws://\S+)", banner)
        assert match, banner
        self.url = match.group(1)
        self.port = int(re.search(r":(\d+)/", self.url).group(1))  # type: ignore[union-attr]

    async def terminate(self, timeout: float = 15.0) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), timeout)


@contextlib.asynccontextmanager
async def serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> AsyncIterator[Served]:
    """Start ``xia-broadcast serve ARGS`` and wait for its banner; kill it afterwards if still running."""
    stderr_path = tmp_path / f"stderr-{len(list(tmp_path.iterdir()))}.log"
    with stderr_path.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(*cli("serve", *args), stdout=asyncio.subprocess.PIPE,
                                                    stderr=stderr, env=env or clean_env())
    try:
        assert proc.stdout is not None
        try:
            banner = (await asyncio.wait_for(proc.stdout.readline(), STARTUP_TIMEOUT)).decode()
        except TimeoutError:
            raise AssertionError(f"no banner; stderr: {stderr_path.read_text()}") from None
        assert banner, f"exited with {await proc.wait()}; stderr: {stderr_path.read_text()}"
        yield Served(proc, banner, stderr_path)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_demo_end_to_end_and_sigterm(tmp_path: Path) -> None:
    port = free_port()
    async with serve(tmp_path, "--demo", "--port", str(port), env=clean_env(XIA_BROADCAST_DEMO_RATE="100")) as srv:
        assert srv.port == port
        assert "classes: Order" in srv.banner
        assert srv.proc.stdout is not None
        rest = [(await asyncio.wait_for(srv.proc.stdout.readline(), STARTUP_TIMEOUT)).decode() for _ in range(3)]
        assert rest[0].startswith("  journal: in memory: a restart loses every change"), rest
        assert rest[2].startswith(f"  demo: open http://127.0.0.1:{port}/demo in a browser"), rest
        plain, confirmation = await subscribe(srv.url, {"Order": {}})
        hidden, _ = await subscribe(srv.url, {"Order": {"show_hidden": True}})
        changes = [await recv_json(plain) for _ in range(20)]
        hidden_changes = [await recv_json(hidden) for _ in range(20)]
        code = await srv.terminate()
        _, close_code, close_reason = await read_until_closed(plain, timeout=10)
        await hidden.close()

    assert code == 0, srv.stderr.read_text()
    assert (close_code, close_reason) == (1001, "shutting down")
    assert confirmation["Order"]["user_name"] == "Anonymous" and confirmation["Order"]["acl"] is None
    for msg in changes:
        # the original's envelope, nothing more
        assert set(msg) == {"doc_class", "op", "seq", "message"}, msg
        assert msg["doc_class"] == "Order" and msg["op"] in {"I", "U", "D"}
        assert re.fullmatch(r"\d{13}-\d{10}", msg["seq"]), msg["seq"]
        assert "margin" not in msg["message"]
        assert {"_id", "order_id"} <= set(msg["message"]) <= DEMO_FIELDS, msg["message"]
    seqs = [m["seq"] for m in changes]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # the hidden field exists: a subscriber that asks for it gets it
    assert all("margin" in m["message"] for m in hidden_changes if m["op"] == "I")
    assert any(m["op"] == "I" for m in hidden_changes)


async def test_sigterm_without_clients_exits_0(tmp_path: Path) -> None:
    async with serve(tmp_path, "--port", str(free_port())) as srv:
        code = await srv.terminate()
    assert code == 0


async def test_env_port_is_honoured(tmp_path: Path) -> None:
    port = free_port()
    async with serve(tmp_path, env=clean_env(XIA_BROADCAST_PORT=str(port))) as srv:
        async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
            health = await http.get(f"http://127.0.0.1:{port}/healthz")
        code = await srv.terminate()
    assert srv.port == port
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert code == 0


async def test_config_file_env_and_flag_priorities(tmp_path: Path) -> None:
    """Flags beat the environment, which beats the file; the file's classes and keys are in force."""
    file_port, env_port, flag_port = free_port(), free_port(), free_port()
    config = tmp_path / "broadcast.toml"
    config.write_text(f"""
[server]
port = {file_port}
handshake_timeout = 3.0

[publish]
keys = ["p-secret"]

[api_keys."k-alice"]
user_name = "alice"
acl = {{ content = [ {{ obj = "Ticket/*", act = "read" }} ] }}

[classes.Ticket]
key = ["ticket_id"]
[classes.Ticket.fields]
ticket_id = "str"
title = "str"
internal = {{ type = "str", hidden = true }}
""")
    env = clean_env(XIA_BROADCAST_CONFIG=str(config), XIA_BROADCAST_PORT=str(env_port))
    async with serve(tmp_path, "--port", str(flag_port), env=env) as srv:
        ws, confirmation = await subscribe(srv.url, {"Ticket": {}, "_header": {"X-Api-Key": "k-alice"}})
        async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
            refused = await http.post(f"http://127.0.0.1:{flag_port}/publish",
                                      json={"class": "Ticket", "op": "I", "doc": {"_id": "t1"}})
            resp = await http.post(f"http://127.0.0.1:{flag_port}/publish",
                                   headers={"X-Publisher-Key": "p-secret"},
                                   json={"class": "Ticket", "op": "I",
                                         "doc": {"_id": "t1", "ticket_id": "t1", "title": "Help",
                                                 "internal": "vip"}})
        msg = await recv_json(ws)
        await ws.close()
        code = await srv.terminate()
    assert srv.port == flag_port
    assert confirmation["Ticket"]["user_name"] == "alice"
    assert refused.status_code == 401
    assert resp.status_code == 200
    assert msg["message"] == {"_id": "t1", "ticket_id": "t1", "title": "Help"}
    assert code == 0


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli(*args), env=env or clean_env(), capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(("config_text", "env", "message"), [
    pytest.param('[server]\nport = "eighty"\n', {}, "port: invalid value 'eighty'", id="bad-value"),
    pytest.param("[sever]\nport = 1\n", {}, "unknown config sections ['sever']", id="unknown-section"),
    pytest.param("[server]\ncolour = 1\n", {}, "[server]: unknown settings ['colour']", id="unknown-setting"),
    pytest.param("[server\nport = 1\n", {}, "not valid TOML", id="not-toml"),
    pytest.param("[classes.Order.fields]\namount = \"money\"\n", {}, "[classes]", id="bad-class"),
    pytest.param("", {"XIA_BROADCAST_PORT": "abc"}, "port: invalid value 'abc'", id="bad-env"),
    pytest.param("", {"XIA_BROADCAST_COLOUR": "red"}, "XIA_BROADCAST_COLOUR: unknown setting", id="unknown-env"),
])
def test_bad_configuration_exits_2_with_a_clear_message(
        tmp_path: Path, config_text: str, env: dict[str, str], message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(config_text)
    result = run_cli("serve", "--config", str(config), "--port", str(free_port()), env=clean_env(**env))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("xia-broadcast: configuration error: "), result.stderr
    assert message in result.stderr, result.stderr
    assert "listening" not in result.stdout


def test_missing_config_file_exits_2_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    result = run_cli("serve", "--config", str(missing))
    assert result.returncode == 2
    assert f"cannot read config file {missing}" in result.stderr


def test_port_in_use_exits_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--port", str(port))
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.strip().splitlines()[-1] == (
        f"xia-broadcast: cannot start on 127.0.0.1:{port}: Address already in use "
        "(another process listens there: choose another with --port)")


def test_version_and_python_dash_m() -> None:
    from xia_broadcast import __version__

    for command in ([sys.executable, "-m", "xia_broadcast", "--version"],
                    [sys.executable, "-m", "xia_broadcast.cli", "--version"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        assert (done.returncode, done.stdout.strip()) == (0, f"xia-broadcast {__version__}"), done


def test_no_command_is_a_usage_error() -> None:
    result = run_cli()
    assert result.returncode == 2
    assert "usage: xia-broadcast" in result.stderr


def _first_log_line(stderr_is_terminal: bool, *extra: str) -> str:
    """Start ``serve`` with its stderr on a terminal (a pty) or a pipe; its first log line on stderr."""
    import pty
    import select
    import time

    port = free_port()
    master = slave = -1
    if stderr_is_terminal:
        master, slave = pty.openpty()
    env = {**os.environ, "XIA_BROADCAST_LOG_LEVEL": "debug"}  # something is logged at startup, whatever the host
    proc = subprocess.Popen(cli("serve", "--port", str(port), *extra), stdout=subprocess.DEVNULL, env=env,
                            stderr=slave if stderr_is_terminal else subprocess.PIPE)
    try:
        fd = master if stderr_is_terminal else proc.stderr.fileno()  # type: ignore[union-attr]
        data = b""
        deadline = time.monotonic() + 10
        while b"\n" not in data and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                data += os.read(fd, 4096)
        return data.decode(errors="replace").splitlines()[0]
    finally:
        proc.terminate()
        proc.wait(10)
        if stderr_is_terminal:
            os.close(master)
            os.close(slave)


def test_logs_are_text_on_a_terminal_and_json_elsewhere_unless_told() -> None:
    on_terminal = _first_log_line(True)
    assert re.match(r"\d\d:\d\d:\d\d (debug|info|warning) ", on_terminal), on_terminal
    piped = _first_log_line(False)
    assert piped.startswith("{") and '"level"' in piped, piped
    forced = _first_log_line(True, "--log-format", "json")
    assert forced.startswith("{"), forced
