"""The document store every backend keeps with its journal (memory, SQLite and Redis run the same tests).

The latest state of each document (``I``/``U`` store it, ``D`` removes it) read as a snapshot; the stored
previous state journaled with each change whose publisher gave none (live and read back); a snapshot never
returns a version after its position, and the journal after the position completes it; the store's bounds
refuse snapshots instead of serving them partial.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson
import pytest

from xia_broadcast.core.change import Change
from xia_broadcast.journal import Backend
from xia_broadcast.journal.store import Snapshot, SnapshotRefused, StoreBounds

from .journal_helpers import ChangeRecorder, MakeBackend
from .test_backend_contract import started


def doc(i: Any, **fields: Any) -> dict[str, Any]:
    return {"_id": i, "n": 0, **fields}


async def pages(snapshot: Snapshot, limit: int = 3) -> list[Change]:
    out: list[Change] = []
    while page := await snapshot.next(limit):
        assert len(page) <= limit
        out.extend(page)
    return out


async def publish(backend: Backend, op: str, data: dict[str, Any], prev: dict[str, Any] | None = None) -> str:
    return (await backend.publish(Change("T", op, "", data, prev=prev))).seq


async def test_the_store_holds_the_latest_state_of_each_document_with_the_seq_of_its_last_change(
        make_backend: MakeBackend) -> None:
    backend = await started(await make_backend(), None, "T")
    seqs = {}
    for i in range(10):
        seqs[i] = await publish(backend, "I", doc(i))
    for i in range(0, 10, 2):
        seqs[i] = await publish(backend, "U", doc(i, n=i))
    for i in (1, 3):
        await publish(backend, "D", doc(i))
        del seqs[i]
    seqs["7"] = await publish(backend, "I", doc("7", n=-7))  # the string "7" is another document than 7
    snapshot = await backend.snapshot("T")
    got = await pages(snapshot)
    assert sorted(((c.doc_id, c.seq, c.data["n"]) for c in got), key=repr) == sorted(
        ((i, s, -7 if i == "7" else (i if i % 2 == 0 else 0)) for i, s in seqs.items()), key=repr)
    assert {c.op for c in got} == {"I"} and all(c.prev is None for c in got)
    assert snapshot.position == await backend.position("T")
    assert await pages(await backend.snapshot("Other")) == []  # a class never published: empty, not refused


async def test_every_change_carries_the_stored_previous_state_live_and_read_back(make_backend: MakeBackend) -> None:
    recorder = ChangeRecorder()
    backend = await started(await make_backend(), recorder, "T")
    await publish(backend, "I", doc(1, n=1))
    await publish(backend, "U", doc(1, n=2))
    # a stale previous state from a publisher: what subscribers were sent last (the store's) wins
    await publish(backend, "U", doc(1, n=3), prev=doc(1, n=99))
    await publish(backend, "D", doc(1, n=3))
    await publish(backend, "I", doc(1, n=4))  # a new life: nothing stored before it
    await publish(backend, "U", doc(2, n=1), prev=doc(2, n=0))  # nothing stored: the publisher's is all there is
    await recorder.until_count(6, "T")
    expected = [(None, True), ({"_id": 1, "n": 1}, True), ({"_id": 1, "n": 2}, True),
                ({"_id": 1, "n": 3}, True), (None, True), ({"_id": 2, "n": 0}, False)]
    assert [(c.prev, c.prev_stored) for c in recorder.changes] == expected
    read = await backend.read("T", None, inclusive=True, limit=10)
    assert [(c.prev, c.prev_stored) for c in read] == expected
    # the previous state's ACL subjects are those of the state used, not of the publisher's stale one
    assert read[2].prev_subjects == recorder.changes[2].prev_subjects == ("T/key/1",)


async def test_a_snapshot_returns_no_version_after_its_position_and_the_journal_after_it_completes_it(
        make_backend: MakeBackend) -> None:
    backend = await started(await make_backend(), None, "T")
    for i in range(20):
        await publish(backend, "I", doc(i))
    snapshot = await backend.snapshot("T")
    first = await snapshot.next(5)
    # changes after the position while the snapshot is read: updates, deletes, new documents
    for i in range(0, 20, 3):
        await publish(backend, "U", doc(i, n=100 + i))
    for i in (1, 2, 4):
        await publish(backend, "D", doc(i))
    await publish(backend, "I", doc(50))
    rest = await pages(snapshot, 5)
    got = first + rest
    assert all(c.seq <= snapshot.position.seq for c in got)
    assert len({c.doc_id for c in got}) == len(got)  # each document once
    state = {c.doc_id: dict(c.data) for c in got}
    for change in await backend.read("T", snapshot.position.seq, inclusive=False, limit=1000):
        if change.op == "D":
            state.pop(change.doc_id, None)
        else:
            state[change.doc_id] = dict(change.data)
    final = {c.doc_id: dict(c.data) for c in await pages(await backend.snapshot("T"), 100)}
    assert state == final
    assert final == {**{i: doc(i) for i in range(20) if i not in (1, 2, 4)},
                     **{i: doc(i, n=100 + i) for i in range(0, 20, 3) if i not in (1, 2, 4)}, 50: doc(50)}


async def test_a_store_over_its_bounds_is_refused_never_served_partial(make_backend: MakeBackend) -> None:
    recorder = ChangeRecorder()
    backend = await started(await make_backend(store=StoreBounds(max_documents=3, max_bytes=10**9)), recorder, "T")
    small = await started(await make_backend(store=StoreBounds(max_documents=100, max_bytes=200)), None, "S")
    for i in range(3):
        await publish(backend, "I", doc(i))
    assert len(await pages(await backend.snapshot("T"))) == 3
    await publish(backend, "I", doc(3))  # the fourth document: past the bound
    with pytest.raises(SnapshotRefused, match="more than 3 documents"):
        await pages(await backend.snapshot("T"))
    await publish(backend, "D", doc(3))  # dropping under the bound again does not bring back what was not kept
    with pytest.raises(SnapshotRefused):
        await pages(await backend.snapshot("T"))
    await publish(backend, "U", doc(0, n=5))
    await recorder.until_count(6, "T")
    assert recorder.changes[-1].prev is None and not recorder.changes[-1].prev_stored  # no store: nothing decided
    for i in range(5):
        await small.publish(Change("S", "I", "", doc(i, text="x" * 40)))
    with pytest.raises(SnapshotRefused, match="more than 200 bytes"):
        await pages(await small.snapshot("S"))


async def test_the_stores_of_every_class_together_are_bounded_the_class_passing_it_refused(
        make_backend: MakeBackend) -> None:
    if make_backend.kind == "redis":
        pytest.skip("Redis bounds its total memory itself (maxmemory); each class's store is bounded here")
    backend = await started(await make_backend(store=StoreBounds(10**6, 10**9, max_total_bytes=1000)), None)
    for i in range(4):
        await backend.publish(Change("A", "I", "", doc(i, text="x" * 100)))  # about 600 bytes in all
    for i in range(4):
        await backend.publish(Change("B", "I", "", doc(i, text="x" * 100)))  # B passes the total
    assert len(await pages(await backend.snapshot("A"))) == 4  # A keeps its store
    with pytest.raises(SnapshotRefused, match="store_max_total_bytes"):
        await pages(await backend.snapshot("B"))
    await backend.publish(Change("C", "I", "", doc(1)))  # B's bytes were freed: room for another class
    assert len(await pages(await backend.snapshot("C"))) == 1


async def test_a_snapshot_being_read_when_the_store_is_refused_fails_instead_of_ending_short(
        make_backend: MakeBackend) -> None:
    if make_backend.kind == "memory":
        pytest.skip("the memory store's snapshot is taken at once: it cannot change under a reader")
    backend = await started(await make_backend(store=StoreBounds(max_documents=10, max_bytes=10**9)), None, "T")
    for i in range(10):
        await publish(backend, "I", doc(i))
    snapshot = await backend.snapshot("T")
    await snapshot.next(2)
    await publish(backend, "I", doc(10))  # past the bound while the snapshot is read
    with pytest.raises(SnapshotRefused):
        await pages(snapshot)


async def stored_bytes(kind: str, backend: Backend, class_name: str, doc_id: Any) -> bytes | None:
    """What the SQLite file or Redis holds for a document in the store (None for the memory backend)."""
    key = orjson.dumps(doc_id).decode()
    if kind == "sqlite":
        db = sqlite3.connect(backend.path)  # type: ignore[attr-defined]
        try:
            row = db.execute("SELECT record FROM documents WHERE class = ? AND id = ?", (class_name, key)).fetchone()
        finally:
            db.close()
        return bytes(row[0])
    if kind == "redis":
        value: bytes = await backend._redis.hget(backend.docs_key(class_name), key)  # type: ignore[attr-defined]
        return value
    return None


async def test_the_store_keeps_no_previous_state_a_publisher_gave(make_backend: MakeBackend) -> None:
    recorder = ChangeRecorder()
    backend = await started(await make_backend(), recorder, "T")
    await publish(backend, "I", doc(1, n=1), prev=doc(1, n=0, big="x" * 500))  # nothing stored before it
    raw = await stored_bytes(make_backend.kind, backend, "T", 1)
    assert raw is None or (b'"n":1' in raw and b"x" * 500 not in raw)  # the store holds the document only
    await publish(backend, "U", doc(1, n=2))
    await recorder.until_count(2, "T")
    # the stored version, the next change's previous state, is the document alone
    assert recorder.changes[1].prev == doc(1, n=1)
    read = await backend.read("T", None, inclusive=True, limit=10)
    assert read[1].prev == doc(1, n=1) and read[0].prev == doc(1, n=0, big="x" * 500)
    stored = await (await backend.snapshot("T")).next(10)
    assert [(c.data, c.prev) for c in stored] == [(doc(1, n=2), None)]


async def test_a_stored_record_that_cannot_be_read_is_skipped_and_logged_the_rest_served(
        make_backend: MakeBackend, caplog: pytest.LogCaptureFixture) -> None:
    if make_backend.kind == "memory":
        pytest.skip("the memory store keeps objects, not records")
    backend = await started(await make_backend(), None, "T")
    for i in range(3):
        await publish(backend, "I", doc(i))
    key = orjson.dumps(1).decode()
    if make_backend.kind == "sqlite":
        db = sqlite3.connect(backend.path)  # type: ignore[attr-defined]
        db.execute("UPDATE documents SET record = ? WHERE class = 'T' AND id = ?", (b"not json", key))
        db.commit()
        db.close()
    else:
        redis = backend._redis  # type: ignore[attr-defined]
        value = await redis.hget(backend.docs_key("T"), key)  # type: ignore[attr-defined]
        await redis.hset(backend.docs_key("T"), key, value.split(b" ", 1)[0] + b" not json")  # type: ignore[attr-defined]
    got = await pages(await backend.snapshot("T"))
    assert sorted(c.doc_id for c in got) == [0, 2]
    assert "skipping stored document 1" in caplog.text
