"""The documents of one class, kept up to date from a listener's events (pure: no I/O).

    orders = Collection("Order")
    async with Listener(url, {"Order": {"data_scope": scope}}, snapshot=True) as listener:
        async for event in listener:
            orders.apply(event)
            if orders.complete:
                show(orders.docs)      # exactly the documents of the view, as of the last change applied

Inserts and updates (``I``, ``U``) upsert the document by its ``_id``, deletes and exits (``D``, ``X``) remove
it, :class:`~xia_broadcast.client.messages.Reset` and
:class:`~xia_broadcast.client.messages.HistoryGone` drop every document, and
:class:`~xia_broadcast.client.messages.SnapshotDone` makes the collection *complete*: from then on it holds
exactly the class's documents in the subscriber's view. The browser module's ``Collection`` (``/client.js``)
without its ``reload`` option: after a ``HistoryGone`` the caller puts what it reloads in :attr:`docs`.

Memory: one dict entry per document held (the projected documents as the listener yields them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .messages import DocumentMessage, Event, Exit, HistoryGone, Reset, SnapshotDone

#: ``on_change(kind, id, doc, previous)``: ``kind`` is ``insert``, ``update``, ``delete``, ``exit``, ``clear``
#: or ``complete`` (``id``, ``doc`` and ``previous`` are None for the last two)
ChangeCallback = Callable[[str, Any, "dict[str, Any] | None", "dict[str, Any] | None"], None]


class Collection:
    """The documents of ``doc_class`` (``docs``: ``_id`` -> document), built by :meth:`apply`.

    Args:
        doc_class: the class whose events are applied (events of other classes are ignored).
        on_change: called after each change of the collection (see :data:`ChangeCallback`).

    Attributes:
        docs: ``{_id: document}``, the documents as the server sent them (projected by the catalog).
        complete: True from a ``snapshot_done`` on, until a reset (or a history gone) drops the documents.
        seq: the position the collection is at when complete (the ``snapshot_done``'s seq, then the seq of
            each change applied); None when it is not complete.
    """

    def __init__(self, doc_class: str, on_change: ChangeCallback | None = None) -> None:
        self.doc_class = doc_class
        self.on_change = on_change
        self.docs: dict[Any, dict[str, Any]] = {}
        self.complete = False
        self.seq: str | None = None

    def apply(self, event: Event) -> bool:
        """Apply one event a listener yielded; False when it was not for this collection (another class, or
        an event that does not change documents: ``Connected``, ``ReplayDone``...)."""
        if isinstance(event, DocumentMessage) and event.doc_class == self.doc_class:
            if event.op == "D":
                self._remove(event.id, "delete")
            else:
                doc_id = event.id
                previous = self.docs.get(doc_id)
                self.docs[doc_id] = event.message
                self._emit("update" if previous is not None else "insert", doc_id, event.message, previous)
            self._advance(event.seq)
            return True
        if isinstance(event, Exit) and event.doc_class == self.doc_class:
            self._remove(event.id, "exit")
            self._advance(event.seq)
            return True
        if isinstance(event, SnapshotDone) and event.doc_class == self.doc_class:
            self.complete, self.seq = True, event.seq
            self._emit("complete", None, None, None)
            return True
        if isinstance(event, Reset | HistoryGone) and event.doc_class == self.doc_class:
            self.clear()
            return True
        return False

    def clear(self) -> None:
        """Forget every document; the collection is no longer complete."""
        self.docs.clear()
        self.complete, self.seq = False, None
        self._emit("clear", None, None, None)

    def _remove(self, doc_id: Any, kind: str) -> None:
        previous = self.docs.pop(doc_id, None)
        if previous is not None:
            self._emit(kind, doc_id, None, previous)

    def _advance(self, seq: str) -> None:
        if self.complete and (self.seq is None or seq > self.seq):
            self.seq = seq

    def _emit(self, kind: str, doc_id: Any, doc: dict[str, Any] | None, previous: dict[str, Any] | None) -> None:
        if self.on_change is not None:
            self.on_change(kind, doc_id, doc, previous)

    # -- reading ------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.docs)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self.docs

    def __getitem__(self, doc_id: Any) -> dict[str, Any]:
        return self.docs[doc_id]

    def get(self, doc_id: Any, default: Any = None) -> Any:
        return self.docs.get(doc_id, default)

    def __repr__(self) -> str:
        state = "complete" if self.complete else "incomplete"
        return f"Collection({self.doc_class!r}, {len(self.docs)} documents, {state})"
