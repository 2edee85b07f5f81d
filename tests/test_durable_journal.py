"""The durable journal (``serve --data DIR``, ``journal/sqlite.py``): what was acknowledged survives restarts,
crashes and faults, with the same epoch and increasing seqs; a directory that cannot be used is refused at
startup. Real servers on 127.0.0.1 and real child processes killed with SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import RECV_TIMEOUT, ServerFactory, ServerProcess, cli, order, recv_json, subscribe
from xia_broadcast.core.change import Change
from xia_broadcast.journal import HistoryGone
from xia_broadcast.journal.sqlite import FILE_NAME, SqliteBackend


async def post(http: httpx.AsyncClient, port: int, doc: dict[str, Any]) -> httpx.Response:
    return await http.post(f"http://127.0.0.1:{port}/publish", json={"class": "Order", "op": "I", "doc": doc})


def note(i: int) -> dict[str, Any]:
    """An Order as the schema of ``ServerProcess`` declares it."""
    return {"_id": f"O-{i:06d}", "order_id": f"O-{i:06d}", "note": f"n{i}"}


async def replay_all(url: str, after: str, epoch: str, expect: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every change after ``after`` in ``epoch``, as a resuming client receives them (``expect`` of them)."""
    ws, confirmation = await subscribe(url, {"Order": {"after_seq": after, "epoch": epoch}})
    async with ws:
        got = [await recv_json(ws) for _ in range(expect)]
        with contextlib.suppress(TimeoutError):  # nothing more: a repeat would arrive right behind
            extra = await recv_json(ws, timeout=0.3)
            got.append(extra)
    return got, confirmation


async def test_a_restart_keeps_every_change_the_epoch_and_increasing_seqs(
        make_server: ServerFactory, http: httpx.AsyncClient, tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    server = await make_server(data=data)
    ws, first = await subscribe(server.url, {"Order": {}})
    start, epoch = first["Order"]["head_seq"], first["Order"]["epoch"]
    async with ws:
        seqs = [(await post(http, server.port, order(i))).json()["seqs"][0] for i in range(20)]
        assert [(await recv_json(ws))["seq"] for _ in range(20)] == seqs
    await server.shutdown()

    again = await make_server(data=data)
    got, confirmation = await replay_all(again.url, start, epoch, 20)
    assert confirmation["Order"]["epoch"] == epoch and confirmation["Order"]["head_seq"] == seqs[-1]
    assert [m["seq"] for m in got] == seqs
    later = (await post(http, again.port, order(99))).json()["seqs"][0]
    assert later > seqs[-1]  # seqs never repeat across restarts


async def test_kill_9_under_load_loses_no_acknowledged_change_and_delivers_each_once(
        tmp_path: Path, server_process: Callable[..., ServerProcess]) -> None:
    """Four publishers post as fast as they are answered; a subscriber listens; the server is killed with
    SIGKILL at a random moment, then started again on the same directory. Every change that was answered 200
    is in the journal exactly once, in the order of its seq, in the same epoch; every change the subscriber
    received before the kill is among them (delivered only once committed)."""
    rng = random.Random(os.getpid())
    env = {"XIA_BROADCAST_DATA": str(tmp_path / "data")}
    first = server_process(directory="one", env=env)
    url = f"ws://127.0.0.1:{first.port}/ws"
    ws, confirmation = await subscribe(url, {"Order": {}})
    start, epoch = confirmation["Order"]["head_seq"], confirmation["Order"]["epoch"]
    acknowledged: list[str] = []
    live: list[str] = []

    async def publisher(k: int, http: httpx.AsyncClient) -> None:
        for i in range(100_000):
            try:
                r = await post(http, first.port, note(k * 100_000 + i))
            except httpx.HTTPError:
                return  # the server is gone
            assert r.status_code == 200, r.text
            acknowledged.extend(r.json()["seqs"])

    async def listen() -> None:
        with contextlib.suppress(Exception):
            while True:
                live.append((await recv_json(ws, timeout=30))["seq"])

    async with httpx.AsyncClient(trust_env=False, timeout=RECV_TIMEOUT) as http:
        tasks = [asyncio.create_task(publisher(k, http)) for k in range(4)]
        listener = asyncio.create_task(listen())
        await asyncio.sleep(rng.uniform(0.5, 1.5))
        os.kill(first.pid, signal.SIGKILL)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    listener.cancel()
    await ws.close()
    assert len(acknowledged) > 50, "too few changes before the kill: the test proves little"

    second = server_process(directory="two", env=env)
    got, again = await replay_all(f"ws://127.0.0.1:{second.port}/ws", start, epoch, len(acknowledged))
    assert again["Order"]["epoch"] == epoch
    replayed = [m["seq"] for m in got]
    assert replayed == sorted(replayed) and len(set(replayed)) == len(replayed)  # in order, once
    assert set(acknowledged) <= set(replayed)  # nothing acknowledged is lost
    assert set(live) <= set(replayed)  # no subscriber held a change the restart forgot
    # at most the changes committed but not yet answered when the kill came are beyond the acknowledged ones
    assert len(replayed) - len(acknowledged) <= 4 * 512


def serve_exit(data: Path, timeout: float = 20) -> tuple[int, str]:
    """Start ``xia-broadcast serve --data`` on ``data``; its exit code and stderr (it is expected to exit)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XIA_BROADCAST_")}
    proc = subprocess.run(cli("serve", "--port", "0", "--data", str(data)), capture_output=True, timeout=timeout,
                          env=env)
    return proc.returncode, proc.stderr.decode()


def test_a_corrupt_or_foreign_journal_file_is_refused_at_startup_with_exit_2(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / FILE_NAME).write_bytes(b"this is not a database, it is a note someone left\n" * 200)
    code, err = serve_exit(corrupt)
    assert code == 2 and "corrupt or not a journal" in err and str(corrupt) in err

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    with contextlib.closing(sqlite3.connect(foreign / FILE_NAME)) as db:
        db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        db.commit()
    code, err = serve_exit(foreign)
    assert code == 2 and "not an xia-broadcast journal" in err
    with contextlib.closing(sqlite3.connect(foreign / FILE_NAME)) as db:  # left as it was
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["invoices"]


async def test_a_second_server_on_the_same_directory_is_refused_with_exit_2(
        make_server: ServerFactory, tmp_path: Path) -> None:
    data = tmp_path / "data"
    await make_server(data=str(data))
    code, err = await asyncio.to_thread(serve_exit, data)
    assert code == 2 and "another server uses the data directory" in err and str(os.getpid()) in err


# -- faults of the disk: a small tmpfs of our own --------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs mounted for this test (needs the right to mount, e.g. root: skipped otherwise)."""
    where = tmp_path / f"disk-{uuid.uuid4().hex[:8]}"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}): the disk-full and read-only "
                    "tests need the right to mount (root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def remount(where: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True, capture_output=True)


async def test_a_full_disk_answers_503_keeps_nothing_half_written_and_recovers_when_space_returns(
        make_server: ServerFactory, http: httpx.AsyncClient, small_disk: Path) -> None:
    server = await make_server(data=str(small_disk / "data"))
    ws, confirmation = await subscribe(server.url, {"Order": {}})
    start, epoch = confirmation["Order"]["head_seq"], confirmation["Order"]["epoch"]
    accepted: list[str] = []
    answers: list[int] = []
    async with ws:
        for i in range(400):  # 4 KB each: the 512 KiB disk is full long before the end
            r = await post(http, server.port, order(i, note="x" * 4000))
            answers.append(r.status_code)
            if r.status_code == 200:
                accepted += r.json()["seqs"]
            else:
                assert (r.status_code, r.json()["error"]) == (503, "unavailable")
                assert "journal write failed" in r.json()["message"]
                if answers[-3:] == [503, 503, 503]:
                    break
        assert 503 in answers and accepted, answers
        live = [(await recv_json(ws))["seq"] for _ in accepted]
        assert live == accepted  # the refused ones were never delivered
        remount(small_disk, "size=16m")  # space returns
        after = (await post(http, server.port, order(1000, note="x" * 4000)))
        assert after.status_code == 200
        accepted += after.json()["seqs"]
        assert (await recv_json(ws))["seq"] == accepted[-1]
    got, _ = await replay_all(server.url, start, epoch, len(accepted))
    assert [m["seq"] for m in got] == accepted  # what the journal holds is exactly what was acknowledged


async def test_a_journal_that_cannot_be_written_is_refused_at_startup_with_exit_2(
        make_server: ServerFactory, http: httpx.AsyncClient, small_disk: Path) -> None:
    data = small_disk / "data"
    server = await make_server(data=str(data))
    assert (await post(http, server.port, order(1))).status_code == 200
    await server.shutdown()
    remount(small_disk, "ro")  # e.g. a volume mounted read-only by mistake
    try:
        code, err = await asyncio.to_thread(serve_exit, data)
    finally:
        remount(small_disk, "rw")
    assert code == 2 and f"cannot use the data directory {data}" in err and "Read-only file system" in err


async def test_retention_reuses_the_space_of_removed_changes(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path / "data", max_count=500)
    await backend.start(lambda change: None)
    try:
        async def publish(n: int) -> None:  # 1,000 documents, changed again and again: the store stays as large
            for i in range(n):
                await backend.publish(Change("Order", "U", "", {"_id": f"o{i % 1000}", "note": "x" * 500}))

        await publish(3000)
        size = backend.file_bytes()
        await publish(6000)  # twice as many again, under the same retention
        assert backend.file_bytes() <= size * 1.2, (size, backend.file_bytes())
        with pytest.raises(HistoryGone) as gone:  # the oldest were removed, and it says so
            await backend.read("Order", None, inclusive=False, limit=10_000)
        held = await backend.read("Order", gone.value.oldest, inclusive=True, limit=10_000)
        assert len(held) == 500 and held[-1].data == {"_id": "o999", "note": "x" * 500}
    finally:
        await backend.close()


#: the journal file format before the document store (as an earlier version wrote it)
FORMAT_1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE classes (name TEXT PRIMARY KEY, epoch TEXT NOT NULL, last_seq TEXT NOT NULL DEFAULT '',
                      trimmed TEXT NOT NULL DEFAULT '') WITHOUT ROWID;
CREATE TABLE changes (class TEXT NOT NULL, seq TEXT NOT NULL, at REAL NOT NULL, size INTEGER NOT NULL,
                      record BLOB NOT NULL, PRIMARY KEY (class, seq)) WITHOUT ROWID;
INSERT INTO meta VALUES ('format', 'xia-broadcast journal 1'), ('created', '1700000000000-0000000000');
INSERT INTO classes VALUES ('Order', '1700000000000-abcdef01', '1700000000001-0000000001', '');
INSERT INTO changes VALUES ('Order', '1700000000001-0000000001', 1700000000.0, 60,
                            '{"class":"Order","op":"I","id":"o1","data":{"_id":"o1","n":1}}');
"""


async def test_a_journal_written_before_the_document_store_is_brought_forward_with_its_classes_refused(
        tmp_path: Path) -> None:
    from xia_broadcast.journal.store import SnapshotRefused

    directory = tmp_path / "data"
    directory.mkdir()
    db = sqlite3.connect(directory / FILE_NAME)
    db.executescript(FORMAT_1_SCHEMA)
    db.close()
    backend = SqliteBackend(directory)
    await backend.start(lambda change: None)
    try:
        held = await backend.read("Order", None, inclusive=True, limit=10)  # the old changes are still there
        assert [(c.seq, c.data) for c in held] == [("1700000000001-0000000001", {"_id": "o1", "n": 1})]
        with pytest.raises(SnapshotRefused, match="without a document store"):  # it would miss o1: refused
            await (await backend.snapshot("Order")).next(10)
        await backend.publish(Change("Customer", "I", "", {"_id": "c1"}))  # a new class has its store
        assert [c.data for c in await (await backend.snapshot("Customer")).next(10)] == [{"_id": "c1"}]
    finally:
        await backend.close()
    db = sqlite3.connect(directory / FILE_NAME)
    assert db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone() == ("xia-broadcast journal 2",)
    db.close()
