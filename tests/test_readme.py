"""The README runs as written: every fenced code block in it is run, or checked, by a test of this module, and
a block that no test claims fails :func:`test_every_block_of_the_readme_is_checked` (``CHECKED``; the blocks
that cannot run are listed with their reason in ``NOT_RUNNABLE``, empty).

How each kind of block is checked:

- ``sh``: each line is a command (each in a terminal of its own, as a reader runs them), run as a real process
  from the checkout: ``serve``, ``listen`` and ``redis-server`` in the background (their output read), the
  others to completion (their exit code and output checked). Two commands are not re-run: the front door's
  ``python3 -m venv .venv && .venv/bin/pip install -e '.[dev]'`` (an install from nothing takes minutes; it is
  what ``.ci/run`` does before anything else, checked here to be the same commands, and this interpreter is
  checked to be such an install of this checkout), and ``.venv/bin/python -m pytest -q`` (the suite cannot run
  itself; ``.ci/run`` runs exactly it, checked here, and it is run with ``--collect-only``, which imports
  every test module). The front door's ``serve --demo`` is the server every other block runs against.
- ``python``: each block is written to a file and run by this interpreter, with a timeout; its output is
  checked. A block that listens stops by itself after a few events: the README says so.
- ``html``: written to a page, served from another origin with a copy of ``/client.js`` next to it, as the
  README says (the page's origin in ``origin_allowlist``), and opened in headless Chromium; what it logs is
  checked.
- ``toml``: loaded by the server's config loader, and found verbatim in the file the README names.

The only changes made to the README's text before running it (mechanical, and the same for every block):

- ``.venv/bin/`` at the start of a command: the directory of the interpreter running the tests (the same
  virtual environment, wherever it is);
- the ports 8765, 8766 (servers) and 6379 (Redis): free ports, since another server may listen on those;
- the front door's ``serve --demo`` names no port: ``XIA_BROADCAST_PORT`` gives it its free port, and
  ``XIA_BROADCAST_ORIGIN_ALLOWLIST`` the web page's origin (the README's own instruction for a page of another
  origin); ``XIA_BROADCAST_*`` variables of the environment the tests run in are not passed on;
- the cluster's ``redis-server`` line runs in a temporary directory (its append-only file goes there); when
  ``redis-server`` is not installed, the nodes use the suite's Redis (``REDIS_URL``, else 127.0.0.1:6379)
  in place of the README's URL, under a key prefix of their own (``XIA_BROADCAST_REDIS_PREFIX``) deleted
  afterwards.

The inline ``curl`` commands of the README's prose are run too (:func:`test_the_inline_curl_commands`).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import http.server
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from packaging.requirements import Requirement

import xia_broadcast
from helpers import free_port, until
from xia_broadcast.core.schema import DocSchema
from xia_broadcast.server.config import Settings, apply_toml, load_settings
from xia_broadcast.server.demo import ORDER_SCHEMA

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TEXT = README.read_text(encoding="utf-8")
#: the README's ``.venv/bin``: where the interpreter running the tests is
BIN = Path(sys.executable).parent
#: seconds one step may take (a process starting, a line arriving, a script running) before the test fails
WAIT = 20.0
#: the ports the README names, replaced by free ones
PORT_1, PORT_2, REDIS_PORT = "8765", "8766", "6379"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SEQ = r"\d{13}-\d{10}"


# -- the README's blocks -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    #: the line of its opening fence in README.md
    line: int


def fenced_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    opened: tuple[str, int, list[str]] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        fence = re.fullmatch(r"\s*```(\S*)\s*", line)
        if opened is None:
            if fence:
                opened = (fence.group(1), number, [])
        elif fence and not fence.group(1):
            blocks.append(Block(opened[0], "\n".join(opened[2]) + "\n", opened[1]))
            opened = None
        else:
            opened[2].append(line)
    assert opened is None, f"README.md: the block opened on line {opened[1]} is never closed"
    return blocks


BLOCKS = fenced_blocks(TEXT)

#: every block, by its language and a text it contains: the test that runs it
CHECKED: dict[tuple[str, str], str] = {
    ("sh", "pip install -e"): "test_front_door_install_and_serve",
    ("sh", "python -m pytest -q"): "test_the_test_command",
    ("html", "<script type=\"module\">"): "test_the_web_page_in_chromium",
    ("sh", "xia-broadcast listen ws://127.0.0.1:8765/ws"): "test_listen_and_publish_from_the_shell",
    ("python", "DocumentMessage, Exit, HistoryGone, Listener"): "test_the_python_listener",
    ("python", "Collection(\"Order\")"): "test_the_python_collection",
    ("python", "class MyBroadcaster(Broadcaster)"): "test_the_library_program",
    ("toml", "[classes.Order]"): "test_the_cluster_config_file",
    ("sh", "redis-server"): "test_two_nodes_on_redis",
}
#: blocks that are not run, with the reason (keep it empty)
NOT_RUNNABLE: dict[tuple[str, str], str] = {}
#: the commands of the prose (inline code) that are run: every inline ``curl`` command
INLINE_COMMANDS = re.findall(r"`(curl [^`]+)`", TEXT)


def block(lang: str, marker: str) -> Block:
    """The one block of ``lang`` holding ``marker``."""
    found = [b for b in BLOCKS if b.lang == lang and marker in b.text]
    assert len(found) == 1, f"README.md: {len(found)} {lang} blocks hold {marker!r}, not one"
    return found[0]


def localize(text: str, ports: Mapping[str, int]) -> str:
    """``text`` with the documented ports replaced (whole numbers only)."""
    for documented, port in ports.items():
        text = re.sub(rf"(?<!\d){documented}(?!\d)", str(port), text)
    return text


def shell_commands(text: str) -> list[list[str]]:
    """The commands of a shell block as written: one per line (``&&`` separates several), comments left out."""
    found = []
    for line in text.splitlines():
        tokens = shlex.split(line, comments=True)
        command: list[str] = []
        for token in [*tokens, "&&"]:
            if token != "&&":
                command.append(token)
            elif command:
                found.append(command)
                command = []
    return found


def runnable(command: list[str], ports: Mapping[str, int], *, redis_url: str | None = None) -> list[str]:
    """A README command as it runs here: ``.venv/bin/`` is this interpreter's directory, the ports are
    ``ports``, and the README's Redis URL is ``redis_url`` when given."""
    argv = [localize(token, ports) for token in command]
    if argv[0].startswith(".venv/bin/"):
        argv[0] = str(BIN / argv[0].removeprefix(".venv/bin/"))
    if redis_url is not None:
        argv = [redis_url if token == "redis://127.0.0.1:6379/0" else token for token in argv]
    return argv


def child_env(**settings: str) -> dict[str, str]:
    """This environment without its ``XIA_BROADCAST_*`` settings, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XIA_BROADCAST_")}
    env.update(settings)
    return env


def test_every_block_of_the_readme_is_checked() -> None:
    assert len(BLOCKS) >= len(CHECKED)
    claims = {**CHECKED, **NOT_RUNNABLE}
    for b in BLOCKS:
        owners = [key for key in claims if key[0] == b.lang and key[1] in b.text]
        assert len(owners) == 1, (f"README.md line {b.line}: a {b.lang} block claimed by {owners}: each block "
                                  "needs one test in CHECKED (or a reason in NOT_RUNNABLE)")
    for (lang, marker), test_name in CHECKED.items():
        block(lang, marker)
        assert callable(globals().get(test_name)), f"CHECKED names {test_name}, which is not a test here"
    assert len(INLINE_COMMANDS) == 2, f"test_the_inline_curl_commands runs two inline commands: {INLINE_COMMANDS}"


# -- processes -----------------------------------------------------------------------------------------------


class Process:
    """A command in the background, its output in files of ``directory``, stopped by :meth:`stop`."""

    def __init__(self, argv: list[str], directory: Path, name: str, env: Mapping[str, str],
                 cwd: Path = ROOT) -> None:
        self.argv = argv
        self.out = directory / f"{name}.stdout"
        self.err = directory / f"{name}.stderr"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.popen = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=dict(env),
                                          cwd=cwd)

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def describe(self) -> str:
        return (f"{shlex.join(self.argv)} (exit code {self.popen.poll()})\n--- stdout:\n{self.stdout()[-3000:]}"
                f"\n--- stderr:\n{self.stderr()[-3000:]}")

    def wait_for(self, pattern: str, *, stderr: bool = False, timeout: float = WAIT) -> re.Match[str]:
        """The first match of ``pattern`` in its output; fails if it exits or ``timeout`` passes first."""
        return wait_until(lambda: re.search(pattern, self.stderr() if stderr else self.stdout(), re.M),
                          lambda: f"{pattern!r} from {self.describe()}", timeout, self)

    def json_lines(self) -> list[Any]:
        return [json.loads(line) for line in self.stdout().splitlines() if line.strip()]

    def stop(self) -> None:
        """SIGTERM (a server shuts down gracefully), then SIGKILL if it is still there after 10 s."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)


def wait_until(predicate: Callable[[], Any], what: Callable[[], str], timeout: float = WAIT,
               process: Process | None = None) -> Any:
    """Poll ``predicate`` (a child process's output: nothing to be woken by) until it is true; fail after
    ``timeout`` seconds, or at once when ``process`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if process is not None and process.popen.poll() is not None:
            raise AssertionError(f"exited while waiting for {what()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what()}")
        time.sleep(0.05)


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    """Background processes of one test, stopped afterwards (the last started first)."""
    started: list[Process] = []
    yield started
    for process in reversed(started):
        process.stop()


def run(argv: list[str], cwd: Path = ROOT, timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
    """A command run to completion; fails unless it exits with 0."""
    result = subprocess.run(argv, cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, (f"{shlex.join(argv)}: exit code {result.returncode}\n--- stdout:\n"
                                    f"{result.stdout[-3000:]}\n--- stderr:\n{result.stderr[-3000:]}")
    return result


BANNER = r"listening on ws://127\.0\.0\.1:(\d+)/ws  \(classes: ([^;]*);"


# -- the front door: install, serve --demo -------------------------------------------------------------------


def front_door() -> list[list[str]]:
    commands = shell_commands(block("sh", "pip install -e").text)
    assert len(commands) == 3, commands
    return commands


@dataclass
class Demo:
    port: int
    process: Process


@pytest.fixture(scope="module")
def page_port() -> int:
    """The port of the web page's own origin (test_the_web_page_in_chromium)."""
    return free_port()


@pytest.fixture(scope="module")
def demo(page_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """The front door's ``.venv/bin/xia-broadcast serve --demo``, running as a process for the module."""
    port = free_port()
    env = child_env(XIA_BROADCAST_PORT=str(port), XIA_BROADCAST_ORIGIN_ALLOWLIST=f"http://127.0.0.1:{page_port}")
    process = Process(runnable(front_door()[2], {}), tmp_path_factory.mktemp("demo"), "serve", env)
    try:
        banner = process.wait_for(BANNER)
        assert (int(banner[1]), banner[2]) == (port, "Order"), process.describe()
        yield Demo(port, process)
    finally:
        process.stop()
    assert process.popen.returncode == 0, process.describe()


def test_front_door_install_and_serve(demo: Demo) -> None:
    venv, install, serve = front_door()
    # the install is what CI does from nothing (.ci/run), and this interpreter is such an install of this checkout
    assert venv == ["python3", "-m", "venv", ".venv"]
    assert install == [".venv/bin/pip", "install", "-e", ".[dev]"]
    ci = [c for line in (ROOT / ".ci" / "run").read_text().splitlines() for c in shell_commands(line)]
    assert venv in ci
    assert install in [[token for token in c if token != "--quiet"] for c in ci]
    assert Path(xia_broadcast.__file__).resolve().is_relative_to(ROOT / "src"), xia_broadcast.__file__
    requirements = [Requirement(r) for r in importlib.metadata.requires("xia-broadcast") or []]
    dev = [r for r in requirements if r.marker is not None and r.marker.evaluate({"extra": "dev"})]
    assert dev
    for requirement in dev:
        assert requirement.specifier.contains(importlib.metadata.version(requirement.name)), requirement
    # and the server: the demo's banner, its page
    assert serve == [".venv/bin/xia-broadcast", "serve", "--demo"]
    banner = demo.process.stdout()
    assert "journal: in memory" in banner
    assert f"demo: open http://127.0.0.1:{demo.port}/demo in a browser" in banner
    page = httpx.get(f"http://127.0.0.1:{demo.port}/demo", timeout=WAIT)
    assert page.status_code == 200 and "client.js" in page.text
    assert "<http://127.0.0.1:8765/demo>" in TEXT


def test_the_test_command() -> None:
    (command,) = shell_commands(block("sh", "python -m pytest -q").text)
    ci = [c for line in (ROOT / ".ci" / "run").read_text().splitlines() for c in shell_commands(line)]
    assert ci[-1] == command, "the last command of .ci/run is the README's test command"
    result = run([*runnable(command, {}), "--collect-only"], timeout=60)
    assert "tests/test_readme.py::test_the_test_command" in result.stdout
    collected = re.search(r"^(\d+) tests collected", result.stdout, re.M)
    assert collected and int(collected[1]) > 100, result.stdout[-2000:]


# -- listening -----------------------------------------------------------------------------------------------


def test_listen_and_publish_from_the_shell(demo: Demo, processes: list[Process], tmp_path: Path) -> None:
    listen, publish = shell_commands(block("sh", "xia-broadcast listen ws://127.0.0.1:8765/ws").text)
    ports = {PORT_1: demo.port}
    listener = Process(runnable(listen, ports), tmp_path, "listen", child_env())
    processes.append(listener)
    listener.wait_for("connected to ws://", stderr=True)
    seq = run(runnable(publish, ports)).stdout.strip()
    assert re.fullmatch(SEQ, seq), seq
    published = json.loads(publish[publish.index("--doc") + 1])

    def received() -> list[Any]:
        return [m for m in listener.json_lines() if m.get("message", {}).get("_id") == "A-1"]

    (message,) = wait_until(received, lambda: f"A-1 from {listener.describe()}", process=listener)
    assert message == {"doc_class": "Order", "op": "I", "seq": seq, "message": published}
    lines = listener.json_lines()
    done = [i for i, m in enumerate(lines) if m.get("_control") == "snapshot_done"]
    assert len(done) == 1 and done[0] < lines.index(message), lines
    for m in lines[:done[0]]:  # the snapshot: current EU orders
        assert m["op"] == "I" and m["message"]["region"] == "EU", m
    for m in lines:
        assert "margin" not in m.get("message", {}), m
        if m.get("op") in ("I", "U", "D"):
            assert m["message"]["region"] == "EU", m


def test_the_python_listener(demo: Demo, tmp_path: Path) -> None:
    lines = run_python(block("python", "DocumentMessage, Exit, HistoryGone, Listener"), {PORT_1: demo.port},
                       tmp_path)
    documents = []
    for line in lines:
        if (doc := re.fullmatch(r"([IUD]) (\{.*\})", line)) is not None:
            documents.append((doc[1], ast.literal_eval(doc[2])))
        else:
            assert re.fullmatch(r"no longer in scope: O-\d{6}", line), f"unexpected line {line!r} in {lines}"
    assert len(documents) == 5, lines
    for op, doc in documents:
        assert doc["_id"] == doc["order_id"] and "margin" not in doc, doc
        assert set(doc) <= {"_id", *ORDER_SCHEMA.fields}, doc
        assert doc["amount"] >= 1000 or op == "D", doc  # the scope: big orders only


def test_the_python_collection(demo: Demo, tmp_path: Path) -> None:
    lines = run_python(block("python", "Collection(\"Order\")"), {PORT_1: demo.port}, tmp_path)
    assert len(lines) == 11, lines
    first = re.fullmatch(r"(\d+) orders now", lines[0])
    assert first, lines
    count = int(first[1])
    assert count > 0, "the demo has orders by now"
    for line in lines[1:]:
        change = re.fullmatch(r"([IUD]) (\S+) -> (\d+) orders", line)
        assert change, f"unexpected line {line!r} in {lines}"
        count += {"I": 1, "U": 0, "D": -1}[change[1]]  # nothing missed, nothing twice: each change counts
        assert int(change[3]) == count, lines


def test_the_library_program(tmp_path: Path) -> None:
    program = block("python", "class MyBroadcaster(Broadcaster)")
    lines = run_python(program, {}, tmp_path)
    (expected,) = re.findall(r"^# (sent: .*)$", program.text, re.M)  # what the README says it prints
    pattern = re.escape(expected).replace("…", "[^\"]+")
    assert len(lines) == 1 and re.fullmatch(pattern, lines[0]), (lines, expected)
    sent = json.loads(lines[0].removeprefix("sent: "))
    assert sent["message"]["order_id"] == "A-1" and set(sent["message"]) == {"_id", "order_id", "amount"}


def run_python(program: Block, ports: Mapping[str, int], tmp_path: Path) -> list[str]:
    """The block run as a script by this interpreter; its output lines."""
    script = tmp_path / f"readme_line_{program.line}.py"
    script.write_text(localize(program.text, ports), encoding="utf-8")
    return run([sys.executable, str(script)], cwd=tmp_path, timeout=2 * WAIT).stdout.splitlines()


# -- the web page --------------------------------------------------------------------------------------------


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM}: apt-get install chromium")
async def test_the_web_page_in_chromium(demo: Demo, page_port: int, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    site = tmp_path / "site"
    site.mkdir()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{demo.port}", timeout=WAIT) as client:
        # "put a copy" next to the page (the README's curl -O: test_the_inline_curl_commands)
        (site / "client.js").write_bytes((await client.get("/client.js")).raise_for_status().content)
        (site / "index.html").write_text(localize(block("html", "<script").text, {PORT_1: demo.port}))
        files = http.server.ThreadingHTTPServer(("127.0.0.1", page_port),
                                                functools.partial(QuietFiles, directory=str(site)))
        threading.Thread(target=files.serve_forever, daemon=True).start()
        try:
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    page = await browser.new_page()
                    console: list[Any] = []
                    errors: list[str] = []
                    page.on("console", lambda m: console.append(m) if m.type == "log" else None)
                    page.on("pageerror", lambda exc: errors.append(str(exc)))
                    await page.goto(f"http://127.0.0.1:{page_port}/index.html")
                    logged: list[list[Any]] = []

                    async def read_console() -> None:
                        while len(logged) < len(console):
                            logged.append([await a.json_value() for a in console[len(logged)].args])

                    async def has(predicate: Callable[[list[Any]], bool]) -> bool:
                        await read_console()
                        return any(predicate(entry) for entry in logged)

                    def what() -> str:
                        return f"the page's console: {logged[-20:]}, errors {errors}"

                    # the snapshot: the current orders, then "complete"
                    await until(lambda: has(lambda e: e[0] == "complete"), WAIT, what=what)
                    first = logged.index(next(e for e in logged if e[0] == "complete"))
                    assert first > 0 and all(e[0] == "insert" for e in logged[:first]), what()
                    # then a change published now
                    doc = {"_id": "W-1", "order_id": "W-1", "region": "EU", "amount": 7.5, "margin": 1.0}
                    r = await client.post("/publish", json={"class": "Order", "op": "I", "doc": doc})
                    assert r.status_code == 200, r.text
                    shown = {k: v for k, v in doc.items() if k != "margin"}  # hidden: never sent
                    await until(lambda: has(lambda e: e == ["insert", "W-1", shown]), WAIT, what=what)
                    for entry in logged:
                        assert len(entry) == 3 and (entry[2] is None or "margin" not in entry[2]), entry
                    assert errors == [], errors
                finally:
                    await browser.close()
        finally:
            files.shutdown()
            files.server_close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_inline_curl_commands(demo: Demo, tmp_path: Path) -> None:
    (publish,) = [c for c in INLINE_COMMANDS if "/publish" in c]
    (download,) = [c for c in INLINE_COMMANDS if " -O " in c]
    ports = {PORT_1: demo.port}
    answer = json.loads(run(runnable(shlex.split(publish), ports)).stdout)
    assert list(answer) == ["seqs"] and len(answer["seqs"]) == 1 and re.fullmatch(SEQ, answer["seqs"][0])
    run(runnable(shlex.split(download), ports), cwd=tmp_path)
    served = httpx.get(f"http://127.0.0.1:{demo.port}/client.js", timeout=WAIT).content
    assert (tmp_path / "client.js").read_bytes() == served and b"export class Listener" in served


# -- several nodes -------------------------------------------------------------------------------------------


def same_schema(a: DocSchema, b: DocSchema) -> bool:
    def shape(s: DocSchema) -> Any:
        return (s.name, s.key_fields, dict(s.privilege_keys),
                {n: (f.type, f.hidden, f.key, f.many, f.embedded is not None) for n, f in s.fields.items()})
    return bool(shape(a) == shape(b))


def test_the_cluster_config_file() -> None:
    config = block("toml", "[classes.Order]")
    app = ROOT / "examples" / "app.toml"
    assert config.text in app.read_text(encoding="utf-8"), "the README shows examples/app.toml's classes verbatim"
    settings = Settings()
    apply_toml(settings, tomllib.loads(config.text))
    assert same_schema(settings.classes["Order"], ORDER_SCHEMA), "the demo's Order, which node 1 publishes"
    assert same_schema(load_settings(app, environ={}).classes["Order"], ORDER_SCHEMA)
    # docs/cluster.md starts its nodes with the same file
    cluster_md = fenced_blocks((ROOT / "docs" / "cluster.md").read_text(encoding="utf-8"))
    nodes = [c for b in cluster_md if b.lang == "sh" for c in shell_commands(b.text) if c[1:2] == ["serve"]]
    assert len(nodes) == 2 and all(c[c.index("--config") + 1] == "examples/app.toml" for c in nodes), nodes


def test_two_nodes_on_redis(processes: list[Process], tmp_path: Path, request: pytest.FixtureRequest) -> None:
    redis_server, node_1, node_2, listen, publish = shell_commands(block("sh", "redis-server").text)
    assert redis_server[0] == "redis-server"
    for node in (node_1, node_2):  # both know the classes (node 2 has no --demo to declare Order)
        assert "--config" in node and node[node.index("--config") + 1] == "examples/app.toml", node
    ports = {PORT_1: free_port(), PORT_2: free_port()}
    env = child_env()
    redis_url, prefix = None, None
    if shutil.which("redis-server") is not None:  # the README's own line, in a directory of the test's own
        ports[REDIS_PORT] = free_port()
        processes.append(Process(runnable(redis_server, ports), tmp_path, "redis", env, cwd=tmp_path))
        processes[-1].wait_for(r"Ready to accept connections")
    else:  # the suite's Redis, under a key prefix of this test's own
        redis_url = request.getfixturevalue("redis_url")
        prefix = f"xia-readme:{uuid.uuid4().hex[:12]}:"
        env["XIA_BROADCAST_REDIS_PREFIX"] = prefix
    try:
        nodes = []
        for name, command, port in (("node1", node_1, PORT_1), ("node2", node_2, PORT_2)):
            node = Process(runnable(command, ports, redis_url=redis_url), tmp_path, name, env)
            processes.append(node)
            nodes.append((node, ports[port]))
        for node, port in nodes:
            banner = node.wait_for(BANNER)
            # node 2 too serves Order: the classes come from examples/app.toml
            assert (int(banner[1]), banner[2]) == (port, "Order"), node.describe()
            assert "journal: Redis Streams at redis://" in node.stdout()
        listener = Process(runnable(listen, ports), tmp_path, "listen", env)
        processes.append(listener)
        listener.wait_for(f"connected to ws://127.0.0.1:{ports[PORT_2]}/ws", stderr=True)
        seq = run(runnable(publish, ports)).stdout.strip()
        assert re.fullmatch(SEQ, seq), seq
        published = json.loads(publish[publish.index("--doc") + 1])

        def arrived() -> bool:
            ids = {m["message"]["_id"] for m in listener.json_lines()}
            return "B-1" in ids and any(str(i).startswith("O-") for i in ids)  # node 1's demo orders too

        wait_until(arrived, lambda: f"B-1 and a demo order on node 2: {listener.describe()}", process=listener)
        lines = listener.json_lines()
        assert {"doc_class": "Order", "op": "I", "seq": seq, "message": published} in lines
        assert all("margin" not in m["message"] for m in lines), lines
        seqs = [m["seq"] for m in lines]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    finally:
        for process in reversed(processes):
            process.stop()
        if prefix is not None:
            assert redis_url is not None
            delete_keys(redis_url, prefix)
    for process in processes[:3] if prefix is None else processes[:2]:
        assert process.popen.returncode == 0, process.describe()


def delete_keys(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    with contextlib.closing(client):
        keys = list(client.scan_iter(match=f"{prefix}*"))
        assert keys, f"the nodes kept nothing under {prefix!r}"
        client.delete(*keys)
        assert not list(client.scan_iter(match=f"{prefix}*"))
