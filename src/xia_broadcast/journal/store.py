"""The document store: the latest state of each document of a class, kept by every backend atomically with
its journal, for snapshots (``DESIGN.md`` section 9) and for the previous state that travels with each change.

What every backend does with each change it journals, in the same atomic step (the memory backend's
append, the SQLite backend's transaction, the Redis backend's publish script):

* ``I`` and ``U`` store the document's data with the change's seq; ``D`` removes it;
* the stored version before the change becomes the change's ``prev`` (and is journaled with it), so scope
  exits are found the same live, in replays, and on every node; it wins over a previous state the publisher
  gave, which is used only when the store holds nothing of the document (or the class's store was refused).

Bounds, per class: at most ``max_documents`` documents and ``max_bytes`` bytes (each document counted by its
change record's size); over every class (memory and SQLite; Redis is bounded by its own ``maxmemory``), at
most ``max_total_bytes``: the class whose change passes it is the one refused. A class that passes a bound
stops being stored: its store is dropped (its memory
freed) and marked *refused* with the reason, and snapshots of it are refused (:class:`SnapshotRefused`, close
code 4413), never served partial. Documents published without data (objects with only the original document
hooks) cannot be stored either: their class is refused the same way. A refused class stays refused for the
life of the store (memory: the process; SQLite: the file; Redis: the class's keys).

A :class:`Snapshot` reads a class's store a page at a time. Every document it returns is at a version at or
before its ``position``; every change after ``position`` is in the journal. A document changed after
``position`` while the pages are read is left out of the pages: the changes after ``position``, read from
the journal, bring it. So a reader that applies the pages, then the journal from ``position``, holds exactly
the class's documents at the end of what it read, whatever was published meanwhile.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson

from ..core.change import BadChangeRecord, Change
from ..errors import XiaBroadcastError
from .base import Position

log = logging.getLogger("xia_broadcast.journal.store")

__all__ = ["DEFAULT_STORE_MAX_BYTES", "DEFAULT_STORE_MAX_DOCUMENTS", "DEFAULT_STORE_MAX_TOTAL_BYTES", "ListSnapshot",
           "MemoryStore", "Snapshot", "SnapshotRefused", "StoreBounds", "doc_key"]

#: default bounds of one class's store, and of every class's together (memory and SQLite)
DEFAULT_STORE_MAX_DOCUMENTS = 1_000_000
DEFAULT_STORE_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_STORE_MAX_TOTAL_BYTES = 1024 * 1024 * 1024

#: the reason a class of documents without data is refused
NO_DATA = "documents published without data cannot be stored"


class SnapshotRefused(XiaBroadcastError):
    """A snapshot of a class cannot be served: its store passed a bound, or holds documents it cannot keep.
    ``reason`` says which (close code 4413)."""

    def __init__(self, class_name: str, reason: str) -> None:
        super().__init__(f"no snapshot of {class_name}: {reason}")
        self.class_name = class_name
        self.reason = reason


class StoreBounds:
    """The bounds of each class's store (see the module docstring)."""

    __slots__ = ("max_bytes", "max_documents", "max_total_bytes")

    def __init__(self, max_documents: int = DEFAULT_STORE_MAX_DOCUMENTS, max_bytes: int = DEFAULT_STORE_MAX_BYTES,
                 max_total_bytes: int = DEFAULT_STORE_MAX_TOTAL_BYTES) -> None:
        self.max_documents = max_documents
        self.max_bytes = max_bytes
        self.max_total_bytes = max_total_bytes

    def passed(self, documents: int, size: int, total: int = 0) -> str:
        """The reason a store of ``documents`` documents and ``size`` bytes (``total`` over every class) is
        over its bounds ("" if not)."""
        if documents > self.max_documents:
            return f"more than {self.max_documents} documents (store_max_documents)"
        if size > self.max_bytes:
            return f"more than {self.max_bytes} bytes of documents (store_max_bytes)"
        if total > self.max_total_bytes:
            return f"every class's documents together passed {self.max_total_bytes} bytes (store_max_total_bytes)"
        return ""


class Snapshot(ABC):
    """A read of one class's store, a page at a time (see the module docstring). ``position`` is where the
    journal takes over: every document returned is at a version at or before it."""

    position: Position

    @abstractmethod
    async def next(self, limit: int) -> list[Change]:
        """Up to ``limit`` more documents as ``I`` changes (seq: the document's last change; no ``prev``);
        an empty list at the end. Raises :class:`SnapshotRefused` when the store was refused meanwhile,
        ``HistoryGone`` when the class's epoch changed, ``BackendUnavailable`` when the store is away."""


def doc_key(doc_id: Any) -> str:
    """A document's key in a store that keeps strings (SQLite, Redis): its ``_id`` as JSON, so ``5`` and
    ``"5"`` stay two documents."""
    return orjson.dumps(doc_id).decode()


class Stored(NamedTuple):
    """What the memory store keeps of a document's last change: not the change itself, whose ``prev`` would
    keep the version before it alive too."""

    seq: str
    data: Mapping[str, Any]
    doc: Any
    epoch: str
    size: int


def snapshot_document(class_name: str, seq: str, data: Mapping[str, Any], doc: Any = None, epoch: str = "") -> Change:
    """A stored document as a snapshot document: op ``I``, the seq of its last change. Its schema and ACL
    subjects are left to the reader (the schema the server has now, not the one the document was stored
    under)."""
    return Change(class_name, "I", seq, data, None, doc=doc, epoch=epoch)


def stored_document(class_name: str, key: Any, seq: str, record: bytes, epoch: str) -> Change | None:
    """A document as a store that keeps change records holds it (SQLite, Redis), as a snapshot document;
    None, logged, for bytes that are not a change record (the rest of the snapshot goes on)."""
    try:
        data = Change.from_record(record).data
    except BadChangeRecord as exc:
        log.error("%s: skipping stored document %s, not a change record: %s", class_name, key, exc)
        return None
    assert data is not None  # a record always holds its data
    return snapshot_document(class_name, seq, data, epoch=epoch)


class ListSnapshot(Snapshot):
    """A snapshot taken at once (the memory store: a list of what it keeps), served a page at a time."""

    def __init__(self, class_name: str, position: Position, stored: list[Stored]) -> None:
        self.class_name = class_name
        self.position = position
        self._stored = stored
        self._at = 0

    async def next(self, limit: int) -> list[Change]:
        page = self._stored[self._at:self._at + limit]
        self._at += len(page)
        return [snapshot_document(self.class_name, s.seq, s.data, s.doc, s.epoch) for s in page]


class _ClassStore:
    __slots__ = ("docs", "refused", "size")

    def __init__(self) -> None:
        self.docs: dict[Any, Stored] = {}
        self.size = 0
        self.refused = ""


class MemoryStore:
    """The memory backend's store: per class, ``_id`` -> what it keeps of the document's last change (its
    seq and data). Memory: a small tuple per document and a reference to data the journal holds anyway while
    it retains the change; documents whose last change was trimmed from the journal are held by the store
    alone (counted by ``max_bytes`` as their record size; the Python objects take 1 to 3 times that)."""

    def __init__(self, bounds: StoreBounds | None = None) -> None:
        self.bounds = bounds if bounds is not None else StoreBounds()
        self._classes: dict[str, _ClassStore] = {}
        #: bytes stored over every class
        self.total = 0

    def apply(self, change: Change) -> None:
        """Keep ``change`` (journaled just now): store or remove its document, and give it the stored previous
        state (over one its publisher gave; that one is used only when nothing is stored)."""
        store = self._classes.get(change.class_name)
        if store is None:
            store = self._classes[change.class_name] = _ClassStore()
        if store.refused:
            return
        data = change.data
        if data is None:
            self._refuse(store, NO_DATA)
            return
        doc_id = data.get("_id")
        old = store.docs.pop(doc_id, None)
        if old is not None:  # what subscribers were sent last: it wins over a previous state the publisher gave
            store.size -= old.size
            self.total -= old.size
            change.prev, change._prev_subjects, change.prev_stored = old.data, None, True
        elif change.prev is None:  # nothing stored, nothing given: a new document
            change.prev_stored = True
        if change.op == "D":
            return
        size = change.encoded_size()
        store.docs[doc_id] = Stored(change.seq, data, change.doc, change.epoch, size)
        store.size += size
        self.total += size
        reason = self.bounds.passed(len(store.docs), store.size, self.total)
        if reason:
            self._refuse(store, reason)

    def _refuse(self, store: _ClassStore, reason: str) -> None:
        store.refused = reason
        self.total -= store.size
        store.docs = {}
        store.size = 0

    def snapshot(self, class_name: str, position: Position) -> ListSnapshot:
        """Every stored document of the class, now (at ``position``). Raises :class:`SnapshotRefused`."""
        store = self._classes.get(class_name)
        if store is None:
            return ListSnapshot(class_name, position, [])
        if store.refused:
            raise SnapshotRefused(class_name, store.refused)
        return ListSnapshot(class_name, position, list(store.docs.values()))

    def documents(self, class_name: str) -> int:
        """Documents stored for a class."""
        store = self._classes.get(class_name)
        return 0 if store is None else len(store.docs)

    def size(self, class_name: str) -> int:
        """Bytes stored for a class (record sizes)."""
        store = self._classes.get(class_name)
        return 0 if store is None else store.size
