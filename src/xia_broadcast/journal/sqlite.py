"""The durable embedded backend: the journal in a SQLite file (WAL mode), for one node that must not forget.

Files in the data directory:

* ``journal.sqlite3`` (with SQLite's ``-wal`` and ``-shm``): tables ``meta`` (the file's format, so a foreign
  database is refused), ``classes`` (per class: its epoch, the last seq ever assigned, the newest seq
  retention removed, its document store's size or the reason it was refused), ``changes`` (per class and
  seq: the change record, its size, when it was written, and the stored previous state when the publisher
  gave none) and ``documents`` (the document store, :mod:`.store`: per class and ``_id``, the record and seq
  of the document's last change), written in the same transaction as the changes.
* ``journal.lock``: held (``flock``) by the one server using the directory; a second one is refused.

What "acknowledged" means: :meth:`SqliteBackend.publish` returns, and ``on_change`` delivers the change, only
after the transaction holding it committed. So no subscriber holds a change that a restart forgets, and no
publisher loses a change it was told was accepted. Durability: ``"os"`` (SQLite ``synchronous=NORMAL`` in WAL
mode: a commit is in the operating system when it returns; it survives the process being killed, not a power
loss) or ``"disk"`` (``synchronous=FULL``: the WAL is synced at each commit; it survives a power loss).

Nothing here blocks the event loop: commits run in a writer thread, reads in a reader thread, each with its own
connection. Commits are grouped: while one commit runs, every change published meanwhile waits for the next,
which takes them all in one transaction (at most ``max_batch``), so concurrent publishers share commits. The
latency a publish adds is one commit plus, at worst, the commit in flight when it arrived.

Positions survive restarts: a class's epoch is stored with it and changes only when its history is really lost
(the file deleted or replaced: a new file has new epochs); seqs keep increasing across restarts (the last one
assigned is stored). Retention by count, age and bytes per class and in total, enforced in the transaction of
each commit; SQLite reuses the pages of removed changes, so under a steady stream the file stops growing.

Faults: a write that fails (disk full, file made read-only, I/O error) rolls its transaction back: nothing of it
is kept or delivered, and its publishers get :class:`BackendUnavailable` (HTTP 503); the next commit tries again,
so the node recovers when space returns. A file that is not a SQLite database, fails SQLite's quick check, or
is another program's database, and a directory another server holds, raise :class:`JournalFileError` at
construction (the CLI exits 2): never a silent new epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..core.change import Change
from ..core.seq import SeqClock, format_seq
from ..errors import XiaBroadcastError
from .base import (
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_COUNT,
    Backend,
    BackendUnavailable,
    HistoryGone,
    OnChange,
    Position,
    SeqOrderError,
)
from .memory import DEFAULT_MAX_BYTES, DEFAULT_MAX_TOTAL_BYTES
from .store import ListSnapshot, Snapshot, SnapshotRefused, StoreBounds, doc_key, stored_document

log = logging.getLogger("xia_broadcast.journal.sqlite")

#: the journal file and the lock file in the data directory
FILE_NAME = "journal.sqlite3"
LOCK_NAME = "journal.lock"
#: what ``meta.format`` says in a journal this code writes; a file of the format before it (no document store)
#: is brought to this one when opened, its classes' stores marked refused (they began after their history)
FORMAT = "xia-broadcast journal 2"
_FORMAT_1 = "xia-broadcast journal 1"
#: the store reason of the classes of a journal written before the document store existed
_NO_STORE_BEFORE = "the journal file was written by a version without a document store"
#: durability levels: committed to the operating system, or synced to disk
DURABILITY = {"os": "NORMAL", "disk": "FULL"}
#: changes removed by retention per DELETE, so one commit never holds the writer long
_TRIM_CHUNK = 1000

_DOCUMENTS = """
CREATE TABLE documents (
    class TEXT NOT NULL,
    id TEXT NOT NULL,
    seq TEXT NOT NULL,
    size INTEGER NOT NULL,
    record BLOB NOT NULL,
    PRIMARY KEY (class, id)
) WITHOUT ROWID;
"""

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE classes (
    name TEXT PRIMARY KEY,
    epoch TEXT NOT NULL,
    last_seq TEXT NOT NULL DEFAULT '',
    trimmed TEXT NOT NULL DEFAULT '',
    docs INTEGER NOT NULL DEFAULT 0,
    doc_bytes INTEGER NOT NULL DEFAULT 0,
    store TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
CREATE TABLE changes (
    class TEXT NOT NULL,
    seq TEXT NOT NULL,
    at REAL NOT NULL,
    size INTEGER NOT NULL,
    record BLOB NOT NULL,
    prev BLOB,
    PRIMARY KEY (class, seq)
) WITHOUT ROWID;
""" + _DOCUMENTS

#: from the format before the document store to this one
_MIGRATE_1 = f"""
ALTER TABLE classes ADD COLUMN docs INTEGER NOT NULL DEFAULT 0;
ALTER TABLE classes ADD COLUMN doc_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE classes ADD COLUMN store TEXT NOT NULL DEFAULT '';
ALTER TABLE changes ADD COLUMN prev BLOB;
UPDATE classes SET store = '{_NO_STORE_BEFORE}';
UPDATE meta SET value = '{FORMAT}' WHERE key = 'format';
""" + _DOCUMENTS


class JournalFileError(XiaBroadcastError):
    """The data directory cannot be used: its journal file is corrupt or another program's, it cannot be
    read, or another server holds it. The message says which and what to do."""


@dataclass
class _Class:
    """What the event loop knows of one class: its epoch and where it stands."""

    epoch: str
    #: the epoch's start: a position before it is history gone; the position of a class with no change yet
    start: str
    #: hands out seqs after the last one ever assigned (across restarts)
    clock: SeqClock
    #: the last seq assigned (a caller-chosen seq must follow it)
    last: str
    #: the seq of the last change delivered to ``on_change`` (the start when none)
    delivered: str
    #: the row of the class is committed
    stored: bool


@dataclass
class _Tally:
    """What the writer thread keeps per class to apply retention without counting rows each time."""

    count: int = 0
    held: int = 0
    last_seq: str = ""
    trimmed: str = ""
    #: the document store: documents, their bytes, and why it was refused ("" while it is kept)
    docs: int = 0
    doc_bytes: int = 0
    refused: str = ""


class _Tallies:
    """The tallies one commit works on: a class's is copied from the committed ones when the commit first
    changes it (``changed``), so a failed commit leaves the committed tallies as they were."""

    def __init__(self, committed: dict[str, _Tally]) -> None:
        self.committed = committed
        self.changed: dict[str, _Tally] = {}

    def get(self, name: str) -> _Tally:
        """The class's tally, to change."""
        tally = self.changed.get(name)
        if tally is None:
            old = self.committed.get(name)
            tally = self.changed[name] = _Tally() if old is None else _Tally(
                old.count, old.held, old.last_seq, old.trimmed, old.docs, old.doc_bytes, old.refused)
        return tally

    def peek(self, name: str) -> _Tally:
        """The class's tally as it stands, to read."""
        return self.changed.get(name) or self.committed[name]

    def names(self) -> set[str]:
        return set(self.committed) | set(self.changed)


@dataclass
class _Entry:
    """A change waiting for its commit: its record, size and time, and its publisher's future."""

    change: Change
    record: bytes
    size: int
    at: float
    waiter: asyncio.Future[Position]
    #: the document's key in the store (its ``_id`` as JSON)
    key: str = ""
    #: set by the commit: the stored previous state (a record; b"" none, and none given), and its data
    prev: bytes | None = None
    prev_data: dict[str, Any] | None = None


@dataclass
class _Batch:
    """What waits for the next commit: new classes (name -> epoch) and who waits for them, and changes."""

    classes: dict[str, str] = field(default_factory=dict)
    class_waiters: list[asyncio.Future[None]] = field(default_factory=list)
    entries: list[_Entry] = field(default_factory=list)


class SqliteBackend(Backend):
    """The journal in ``directory/journal.sqlite3`` (see the module docstring).

    Args:
        directory: the data directory (made if missing).
        max_count, max_age, max_bytes: retention per class: changes kept, their age in seconds, their bytes
            (encoded records; the newest change of a class is always kept).
        max_total_bytes: bytes retained over all classes (the oldest changes of any class go first).
        durability: ``"os"`` or ``"disk"`` (see the module docstring).
        max_batch: changes committed in one transaction at most.
        clock: wall-clock seconds, for the age bound (injectable for tests).
        store: the bounds of each class's document store (:mod:`.store`).

    Raises :class:`JournalFileError` when the directory cannot be used. Memory: a few hundred bytes per class,
    and the changes waiting for a commit; the changes themselves are on disk (SQLite's page cache, about 2 MiB
    per connection by default, comes on top).
    """

    def __init__(self, directory: str | Path, *, max_count: int = DEFAULT_MAX_COUNT,
                 max_age: float = DEFAULT_MAX_AGE, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES, durability: str = "os", max_batch: int = 512,
                 clock: Callable[[], float] = time.time, store: StoreBounds | None = None) -> None:
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {sorted(DURABILITY)}, not {durability!r}")
        self.directory = Path(directory)
        self.path = self.directory / FILE_NAME
        self.max_count = max_count
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.max_total_bytes = max_total_bytes
        self.durability = durability
        self.max_batch = max_batch
        self.store = store if store is not None else StoreBounds()
        self._clock = clock
        self.ready = False
        self._on_change: OnChange | None = None
        self._closed = False
        self._lock_fd = self._lock()
        try:
            self._writer_db = self._open(check=True)
            self._reader_db = self._open(check=False)
            self._classes, self._tallies = self._load()
        except BaseException:
            self._release()
            raise
        self._total = sum(t.held for t in self._tallies.values())
        #: bytes of the document store over every class (the writer thread's)
        self._doc_total = sum(t.doc_bytes for t in self._tallies.values())
        self._work_doc_total = self._doc_total  # the same, within the commit being written
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="xia-journal-writer")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="xia-journal-reader")
        self._pending = _Batch()
        self._committing: asyncio.Future[None] | None = None

    # -- opening ------------------------------------------------------------------------------------------

    def _lock(self) -> int:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise JournalFileError(f"cannot use the data directory {self.directory}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise JournalFileError(f"another server uses the data directory {self.directory} "
                                   f"(process {holder} holds {LOCK_NAME}); one server per directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return fd

    def _release(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = -1

    def _open(self, *, check: bool) -> sqlite3.Connection:
        """A connection to the journal file; with ``check``, the file is made (new) or checked (existing)."""
        new = not self.path.exists() or self.path.stat().st_size == 0
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise JournalFileError(f"cannot open {self.path}: {exc}") from exc
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={DURABILITY[self.durability]}")
            if check:
                if new:
                    db.executescript(_SCHEMA)
                    db.execute("INSERT INTO meta VALUES ('format', ?), ('created', ?)",
                               (FORMAT, format_seq(time.time_ns() // 1_000_000, 0)))
                else:
                    self._check(db)
                    db.execute("BEGIN IMMEDIATE")  # the file can be written (a read-only one is refused now)
                    db.execute("COMMIT")
                    self._migrate(db)
        except sqlite3.OperationalError as exc:
            db.close()
            raise JournalFileError(f"cannot write {self.path} ({exc}): make the directory and its files writable "
                                   "by the server") from exc
        except sqlite3.DatabaseError as exc:
            db.close()
            raise JournalFileError(f"{self.path} is not a usable SQLite database ({exc}): the file is corrupt or "
                                   "not a journal. Move it away to start a new journal (clients resuming from "
                                   "the old one will be told its history is gone)") from exc
        except JournalFileError:
            db.close()
            raise
        return db

    def _check(self, db: sqlite3.Connection) -> None:
        result = db.execute("PRAGMA quick_check").fetchone()
        if result is None or result[0] != "ok":
            raise JournalFileError(f"{self.path} fails SQLite's quick check ({result[0] if result else 'no answer'}): "
                                   "the file is corrupt. Move it away to start a new journal (clients resuming "
                                   "from the old one will be told its history is gone)")
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        fmt = db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone() if "meta" in tables else None
        if fmt is None or fmt[0] not in (FORMAT, _FORMAT_1) or not {"classes", "changes"} <= tables:
            raise JournalFileError(f"{self.path} is a SQLite database but not an xia-broadcast journal "
                                   f"(format {fmt[0] if fmt else 'missing'!r}); use another data directory")

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """A journal of the format before the document store: add it (its classes' stores refused)."""
        if db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()[0] == _FORMAT_1:
            db.executescript("BEGIN IMMEDIATE;" + _MIGRATE_1 + "COMMIT;")
            log.warning("journal file brought to format %r: the classes it held have no document store "
                        "(snapshots of them are refused)", FORMAT)

    def _load(self) -> tuple[dict[str, _Class], dict[str, _Tally]]:
        db = self._writer_db
        tallies = {row[0]: _Tally(0, 0, *row[1:]) for row
                   in db.execute("SELECT name, last_seq, trimmed, docs, doc_bytes, store FROM classes")}
        for name, count, held in db.execute("SELECT class, count(*), sum(size) FROM changes GROUP BY class"):
            tally = tallies.setdefault(name, _Tally())
            tally.count, tally.held = count, held
        classes = {}
        for name, epoch in db.execute("SELECT name, epoch FROM classes"):
            last = tallies[name].last_seq
            start = format_seq(int(epoch[:13]), 0)
            at = last or start
            classes[name] = _Class(epoch, start, SeqClock(int(at[:13]), int(at[14:] or 0)), last, at, True)
        return classes, tallies

    # -- the Backend contract -----------------------------------------------------------------------------

    async def start(self, on_change: OnChange) -> None:
        self._on_change = on_change
        self.ready = not self._closed

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.ready = False
        self._on_change = None
        if self._committing is not None:
            with contextlib.suppress(Exception):
                await self._committing
        self._fail(self._pending, BackendUnavailable("the journal is closed"))
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)
        self._writer_db.close()
        self._reader_db.close()
        self._release()

    async def publish(self, change: Change) -> Position:
        if self._closed:
            raise BackendUnavailable("the journal is closed")
        return await self._enqueue(change)

    def _enqueue(self, change: Change) -> asyncio.Future[Position]:
        """Assign the change its seq and queue it for the next commit; the future of its position."""
        record = change.to_record(with_seq=False)  # raises ChangeNotSerialisable before anything is assigned
        cls = self._class(change.class_name)
        if change.seq:
            if change.seq <= cls.last or change.seq < cls.start:
                raise SeqOrderError(f"{change.class_name}: seq {change.seq!r} is not after {cls.last or cls.start!r}")
            cls.clock = SeqClock(int(change.seq[:13]), int(change.seq[14:] or 0))
        else:
            change.seq = cls.clock.next()
        cls.last = change.seq
        change.epoch = cls.epoch
        waiter: asyncio.Future[Position] = asyncio.get_running_loop().create_future()
        self._pending.entries.append(_Entry(change, record, len(record) + 24, self._clock(), waiter,
                                            doc_key(change.doc_id)))
        self._commit_soon()
        return waiter

    async def publish_many(self, changes: list[Change]) -> list[Position]:
        """Every change queued for the next commits at once (one transaction for up to ``max_batch`` of them),
        in order; their positions. A commit that fails leaves the changes of the commits before it published
        (``BackendUnavailable.published`` counts them)."""
        if self._closed:
            raise BackendUnavailable("the journal is closed")
        waiters = [self._enqueue(change) for change in changes]
        positions: list[Position] = []
        failure: BackendUnavailable | None = None
        for waiter in waiters:
            try:
                positions.append(await waiter)
            except BackendUnavailable as exc:
                failure = failure or exc
        if failure is not None:
            failure.published = len(positions)
            raise failure
        return positions

    async def read(self, class_name: str, seq: str | None, *, inclusive: bool, limit: int,
                   epoch: str | None = None) -> list[Change]:
        seq, epoch = seq or None, epoch or None  # ("", ""): the position of a class not created yet
        if class_name not in self._classes:  # reading creates nothing
            if seq is not None or epoch is not None:
                raise HistoryGone(class_name, None, reason="the journal holds nothing of the class")
            return []
        cls = await self._stored_class(class_name)
        if epoch is not None and epoch != cls.epoch:
            raise HistoryGone(class_name, None, epoch=cls.epoch, reason=f"epoch {epoch!r} is not the journal's")
        if seq is not None and seq < cls.start:
            raise HistoryGone(class_name, None, epoch=cls.epoch, reason="before the journal's epoch")
        if seq is not None and seq > cls.delivered:
            # no position of this epoch lies there: going live from it would skip every change up to it
            raise HistoryGone(class_name, None, epoch=cls.epoch, reason="after the journal's head")
        loop = asyncio.get_running_loop()
        try:
            trimmed, oldest, rows = await loop.run_in_executor(self._reader, self._read, class_name, seq,
                                                                inclusive, limit)
        except sqlite3.Error as exc:
            raise BackendUnavailable(f"journal read failed: {exc}") from exc
        if trimmed and (seq is None or trimmed > seq or (inclusive and trimmed == seq)):
            raise HistoryGone(class_name, oldest, epoch=cls.epoch, reason="trimmed")
        return [Change.from_record(record, seq=row_seq, epoch=cls.epoch, stored_prev=prev)
                for row_seq, record, prev in rows]

    async def position(self, class_name: str) -> Position:
        cls = await self._stored_class(class_name)
        return Position(cls.delivered, cls.epoch)

    async def epoch(self, class_name: str) -> str:
        return (await self._stored_class(class_name)).epoch

    async def watch(self, class_name: str, *, create: bool = True) -> Position:
        if not create and class_name not in self._classes:
            return Position("", "")
        return await self.position(class_name)

    async def snapshot(self, class_name: str) -> Snapshot:
        if class_name not in self._classes:
            return ListSnapshot(class_name, Position("", ""), [])
        cls = await self._stored_class(class_name)  # every change up to ``delivered`` is committed
        return _SqliteSnapshot(self, class_name, Position(cls.delivered, cls.epoch))

    def unwatch(self, class_name: str) -> None:
        pass  # every class is delivered: there is no tail to stop

    # -- classes and epochs ---------------------------------------------------------------------------------

    def _class(self, class_name: str) -> _Class:
        """The class's state, with a new epoch (committed with the next batch) when it has none."""
        cls = self._classes.get(class_name)
        if cls is None:
            ms = time.time_ns() // 1_000_000
            start = format_seq(ms, 0)
            cls = _Class(f"{ms:013d}-{secrets.token_hex(4)}", start, SeqClock(ms, 0), "", start, False)
            self._classes[class_name] = cls
        if not cls.stored:
            self._pending.classes[class_name] = cls.epoch
        return cls

    async def _stored_class(self, class_name: str) -> _Class:
        """The class's state once its epoch is committed (a position handed out survives a restart)."""
        if self._closed:
            raise BackendUnavailable("the journal is closed")
        cls = self._class(class_name)
        if not cls.stored:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._pending.class_waiters.append(waiter)
            self._commit_soon()
            await waiter
        return cls

    # -- group commit ---------------------------------------------------------------------------------------

    def _commit_soon(self) -> None:
        """Start a commit of what waits, unless one runs: then the next starts when it ends."""
        pending = self._pending
        if self._committing is None and (pending.entries or pending.class_waiters or pending.classes):
            self._committing = asyncio.ensure_future(self._commit_next())

    async def _commit_next(self) -> None:
        batch, self._pending = self._pending, _Batch()
        if len(batch.entries) > self.max_batch:  # the rest waits for the next commit
            self._pending.entries, batch.entries = batch.entries[self.max_batch:], batch.entries[:self.max_batch]
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._writer, self._write, batch.classes, batch.entries)
        except Exception as exc:  # a failed commit: nothing of it is kept or delivered
            log.error("journal commit of %d changes failed: %s", len(batch.entries), exc)
            self._fail(batch, BackendUnavailable(f"journal write failed ({exc}); nothing of it was kept"))
            with contextlib.suppress(Exception):  # the next commit starts on a fresh connection
                await loop.run_in_executor(self._writer, self._reopen_writer)
        else:
            self._delivered(batch)
        finally:
            self._committing = None
            if not self._closed:
                self._commit_soon()

    def _delivered(self, batch: _Batch) -> None:
        """A batch committed: its classes are stored, its changes delivered in order, its publishers answered."""
        for name in batch.classes:
            self._classes[name].stored = True
        for waiter in batch.class_waiters:
            if not waiter.done():
                waiter.set_result(None)
        on_change = self._on_change
        for entry in batch.entries:
            change = entry.change
            self._classes[change.class_name].delivered = change.seq
            if entry.prev:  # what the store held before it
                change.prev, change._prev_subjects, change.prev_stored = entry.prev_data, None, True
            elif entry.prev is not None:
                change.prev_stored = True
            if on_change is not None:
                try:
                    on_change(change)
                except Exception:  # the Hub's business; the change is journaled either way
                    log.exception("delivering %s %s failed", change.class_name, change.seq)
            if not entry.waiter.done():
                entry.waiter.set_result(Position(change.seq, change.epoch))

    @staticmethod
    def _fail(batch: _Batch, error: Exception) -> None:
        waiters: list[asyncio.Future[Any]] = [*batch.class_waiters, *(e.waiter for e in batch.entries)]
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)

    # -- in the writer thread -------------------------------------------------------------------------------

    def _write(self, classes: dict[str, str], entries: list[_Entry]) -> None:
        """One transaction: new classes, the changes, retention. Costs what the batch touches: the tallies of
        the classes it changes are copied (kept only once committed), no other class is looked at (but for
        the total bound, once it is passed)."""
        db = self._writer_db
        work = _Tallies(self._tallies)
        total = self._total
        self._work_doc_total = self._doc_total
        db.execute("BEGIN IMMEDIATE")
        try:
            for name, epoch in classes.items():
                db.execute("INSERT OR IGNORE INTO classes (name, epoch) VALUES (?, ?)", (name, epoch))
                work.get(name)
            for entry in entries:
                name = entry.change.class_name
                tally = work.get(name)
                entry.prev = self._store(db, name, tally, entry)
                entry.size += len(entry.prev or b"")  # journaled with the change: counted by the byte bounds
                db.execute("INSERT INTO changes (class, seq, at, size, record, prev) VALUES (?, ?, ?, ?, ?, ?)",
                           (name, entry.change.seq, entry.at, entry.size, entry.record, entry.prev))
                tally.count += 1
                tally.held += entry.size
                tally.last_seq = entry.change.seq
                total += entry.size
            now = self._clock()
            for name in list(work.changed):
                total -= self._trim_class(db, name, work.changed[name], now)
            total = self._trim_total(db, work, total)
            for name, tally in work.changed.items():
                db.execute("UPDATE classes SET last_seq = ?, trimmed = ?, docs = ?, doc_bytes = ?, store = ? "
                           "WHERE name = ?", (tally.last_seq, tally.trimmed, tally.docs, tally.doc_bytes,
                                             tally.refused, name))
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        self._tallies.update(work.changed)  # only once committed
        self._total = total
        self._doc_total = self._work_doc_total

    def _store(self, db: sqlite3.Connection, name: str, tally: _Tally, entry: _Entry) -> bytes | None:
        """Keep the entry's document in the store (``D``: remove it); the stored previous record (its data
        parsed into ``entry.prev_data``, here in the writer thread), else b"" when the publisher gave no
        previous state either, else None. A store passing its bounds is dropped and
        refused (see :mod:`.store`)."""
        if tally.refused:
            return None
        change = entry.change
        row = db.execute("SELECT size, record FROM documents WHERE class = ? AND id = ?", (name, entry.key)).fetchone()
        if row is not None:
            tally.docs -= 1
            tally.doc_bytes -= row[0]
            self._work_doc_total -= row[0]
        if change.op == "D":
            if row is not None:
                db.execute("DELETE FROM documents WHERE class = ? AND id = ?", (name, entry.key))
        else:
            stored = change.stored_record(entry.record)
            size = len(stored) + 24
            db.execute("INSERT OR REPLACE INTO documents (class, id, seq, size, record) VALUES (?, ?, ?, ?, ?)",
                       (name, entry.key, change.seq, size, stored))
            tally.docs += 1
            tally.doc_bytes += size
            self._work_doc_total += size
            reason = self.store.passed(tally.docs, tally.doc_bytes, self._work_doc_total)
            if reason:
                db.execute("DELETE FROM documents WHERE class = ?", (name,))
                self._work_doc_total -= tally.doc_bytes
                tally.refused, tally.docs, tally.doc_bytes = reason, 0, 0
                log.warning("%s: the document store is dropped, snapshots of the class are refused: %s", name, reason)
        if row is not None:  # what subscribers were sent last: it wins over a previous state the publisher gave
            entry.prev_data = orjson.loads(row[1])["data"]
            return bytes(row[1])
        return None if change.prev is not None else b""

    def _reopen_writer(self) -> None:
        """After a failed commit: a new writer connection, so that a file that can be written again (space
        freed, permissions restored) is written through a connection that knows it."""
        old, self._writer_db = self._writer_db, self._open(check=False)
        old.close()

    def _trim_class(self, db: sqlite3.Connection, name: str, tally: _Tally, now: float) -> int:
        """Drop the class's oldest changes beyond its count, age and byte bounds (its newest is kept).
        Returns the bytes dropped. Only the oldest rows are read: the age bound looks at them a chunk at a
        time (changes are written in seq order, so the old ones are a prefix)."""
        dropped = 0
        if tally.count > self.max_count:
            dropped += self._drop(db, name, tally, tally.count - self.max_count)
        cutoff = now - self.max_age
        while self.max_age < float("inf") and tally.count > 1:
            ages = db.execute("SELECT at FROM changes WHERE class = ? ORDER BY seq LIMIT ?",
                              (name, min(_TRIM_CHUNK, tally.count - 1))).fetchall()
            old = next((i for i, (at,) in enumerate(ages) if at >= cutoff), len(ages))
            if not old:
                break
            dropped += self._drop(db, name, tally, old)
            if old < len(ages):
                break
        while tally.held > self.max_bytes and tally.count > 1:
            dropped += self._drop(db, name, tally, min(_TRIM_CHUNK, tally.count - 1), bytes_over=True)
        return dropped

    def _trim_total(self, db: sqlite3.Connection, work: _Tallies, total: int) -> int:
        """Drop the oldest changes of any class until the total fits (each class keeps its newest)."""
        while total > self.max_total_bytes:
            oldest: tuple[float, str] | None = None
            for name in work.names():
                if work.peek(name).count > 1:
                    row = db.execute("SELECT at FROM changes WHERE class = ? ORDER BY seq LIMIT 1", (name,)).fetchone()
                    if row is not None and (oldest is None or row[0] < oldest[0]):
                        oldest = (row[0], name)
            if oldest is None:
                break
            total -= self._drop(db, oldest[1], work.get(oldest[1]), 1)
        return total

    def _drop(self, db: sqlite3.Connection, name: str, tally: _Tally, n: int, *, bytes_over: bool = False) -> int:
        """Drop the ``n`` oldest changes of a class (with ``bytes_over``: only as many of them as bring its
        bytes within ``max_bytes``). Returns the bytes dropped."""
        if n <= 0:
            return 0
        rows = db.execute("SELECT seq, size FROM changes WHERE class = ? ORDER BY seq LIMIT ?", (name, n)).fetchall()
        if bytes_over:
            freed, keep = 0, 0
            for keep, (_, size) in enumerate(rows, 1):  # noqa: B007 (keep is read after the loop)
                freed += size
                if tally.held - freed <= self.max_bytes:
                    break
            rows = rows[:keep]
        if not rows:
            return 0
        cutoff = rows[-1][0]
        db.execute("DELETE FROM changes WHERE class = ? AND seq <= ?", (name, cutoff))
        freed = sum(size for _, size in rows)
        tally.count -= len(rows)
        tally.held -= freed
        tally.trimmed = max(tally.trimmed, cutoff)
        return freed

    # -- in the reader thread -------------------------------------------------------------------------------

    def _read(self, name: str, seq: str | None, inclusive: bool,
              limit: int) -> tuple[str, str | None, list[tuple[str, bytes, bytes | None]]]:
        """One read transaction: what retention removed, the oldest seq held, and up to ``limit`` changes."""
        db = self._reader_db
        db.execute("BEGIN")
        try:
            row = db.execute("SELECT trimmed FROM classes WHERE name = ?", (name,)).fetchone()
            trimmed = row[0] if row is not None else ""
            first = db.execute("SELECT seq FROM changes WHERE class = ? ORDER BY seq LIMIT 1", (name,)).fetchone()
            if seq is None:
                cursor = db.execute("SELECT seq, record, prev FROM changes WHERE class = ? ORDER BY seq LIMIT ?",
                                    (name, limit))
            else:
                op = ">=" if inclusive else ">"
                cursor = db.execute(f"SELECT seq, record, prev FROM changes WHERE class = ? AND seq {op} ? "
                                    "ORDER BY seq LIMIT ?", (name, seq, limit))
            rows = cursor.fetchall()
        finally:
            db.execute("COMMIT")
        return trimmed, first[0] if first is not None else None, rows

    def _read_documents(self, name: str, after: str, limit: int) -> tuple[str, str, list[tuple[str, str, bytes]]]:
        """One read transaction: the class's epoch and store state, and up to ``limit`` stored documents with
        a key after ``after``, in key order."""
        db = self._reader_db
        db.execute("BEGIN")
        try:
            row = db.execute("SELECT epoch, store FROM classes WHERE name = ?", (name,)).fetchone()
            rows = db.execute("SELECT id, seq, record FROM documents WHERE class = ? AND id > ? ORDER BY id LIMIT ?",
                              (name, after, limit)).fetchall()
        finally:
            db.execute("COMMIT")
        return (row[0], row[1], rows) if row is not None else ("", "", [])

    # -- for tools and tests --------------------------------------------------------------------------------

    def file_bytes(self) -> int:
        """Bytes of the journal file and its WAL on disk now."""
        return sum(p.stat().st_size for p in (self.path, self.path.with_name(FILE_NAME + "-wal")) if p.exists())


class _SqliteSnapshot(Snapshot):
    """The store of one class read a page at a time in key order, each page its own read transaction;
    documents changed after ``position`` are left out (the journal brings them)."""

    def __init__(self, backend: SqliteBackend, class_name: str, position: Position) -> None:
        self.backend = backend
        self.class_name = class_name
        self.position = position
        self._after = ""

    async def next(self, limit: int) -> list[Change]:
        backend, name, position = self.backend, self.class_name, self.position
        loop = asyncio.get_running_loop()
        while True:
            if backend._closed:
                raise BackendUnavailable("the journal is closed")
            try:
                epoch, refused, rows = await loop.run_in_executor(backend._reader, backend._read_documents, name,
                                                                  self._after, limit)
            except sqlite3.Error as exc:
                raise BackendUnavailable(f"journal read failed: {exc}") from exc
            if epoch and epoch != position.epoch:
                raise HistoryGone(name, None, epoch=epoch, reason="the class's epoch changed")
            if refused:
                raise SnapshotRefused(name, refused)
            if not rows:
                return []
            self._after = rows[-1][0]
            page = []
            for key, seq, record in rows:
                if seq > position.seq:
                    continue  # changed after the position: the journal after it brings the document
                document = stored_document(name, key, seq, record, position.epoch)
                if document is not None:
                    page.append(document)
            if page:
                return page


__all__ = ["DURABILITY", "FILE_NAME", "FORMAT", "LOCK_NAME", "JournalFileError", "SqliteBackend"]
