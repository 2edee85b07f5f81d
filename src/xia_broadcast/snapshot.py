"""Snapshot passes: one read of a class's document store for one view, shared by its members.

A subscriber that asks for a snapshot first receives every stored document its view lets through (scope,
ACL, catalog: the same :meth:`View.evaluate` as every change), as ``I`` messages with the seq of each
document's last change, then the journal from the snapshot's position (:mod:`.replay`), then live changes.
Members of one view that ask at about the same time (within :data:`SHARE_SECONDS` of the pass's start) share
one :class:`SnapshotPass`: the store is read once and each document encoded once for all of them; each member
copies the encoded pages into its own connection queue at its own pace, within its queue bounds.

Memory: a pass keeps the encoded pages it read (at most the view's share of the class's store, itself bounded
by ``store_max_bytes``) until its last member has sent them; then it is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from .core.change import Change
from .fanout import DocumentHooks, HubStats, Member, Outgoing, View, envelope
from .journal import BackendUnavailable, HistoryGone
from .journal.store import Snapshot, SnapshotRefused

log = logging.getLogger("xia_broadcast.snapshot")

__all__ = ["PAGE", "SHARE_SECONDS", "SnapshotPass"]

#: documents read from the store (and encoded) at a time
PAGE = 512
#: a member asking for a snapshot joins the view's pass when it began at most this many seconds ago
SHARE_SECONDS = 5.0


class SnapshotPass:
    """One read of a class's store through one view (see the module docstring).

    Args:
        view: the view whose members share the pass.
        snapshot: the backend's read of the store (its ``position`` is where the journal takes over).
        hooks_for: the document hooks a document needs (None: the compiled view reads its data).
        schemas: the document classes by name (documents read back without their schema get it).
        stats: the Hub's counters (``encodings``, ``view_errors``).
    """

    def __init__(self, view: View, snapshot: Snapshot, hooks_for: Callable[[Change], DocumentHooks | None],
                 schemas: dict[str, Any], stats: HubStats) -> None:
        self.view = view
        self.snapshot = snapshot
        self.position = snapshot.position
        self.hooks_for = hooks_for
        self.schemas = schemas
        self.stats = stats
        self.started = time.monotonic()
        #: the encoded documents, a page at a time (a page may be empty: nothing in it was for the view)
        self.pages: list[list[Outgoing]] = []
        self.done = False
        #: why the pass cannot go on (``SnapshotRefused``, ``HistoryGone``): every member gets it
        self.failure: SnapshotRefused | HistoryGone | None = None
        self.members: set[Member[Any]] = set()
        self._reading: asyncio.Task[None] | None = None

    @property
    def joinable(self) -> bool:
        return self.failure is None and time.monotonic() - self.started <= SHARE_SECONDS

    def join(self, member: Member[Any]) -> None:
        self.members.add(member)

    def leave(self, member: Member[Any]) -> None:
        """A member has sent the pass (or left): the last one to leave ends it."""
        self.members.discard(member)
        if self.members:
            return
        if self.view.snapshot_pass is self:
            self.view.snapshot_pass = None
        if self._reading is not None:
            self._reading.cancel()
        self.pages = []

    async def page(self, index: int) -> list[Outgoing] | None:
        """The ``index``-th page of encoded documents (read when first asked for); None after the last.
        Raises the pass's failure."""
        while index >= len(self.pages):
            if self.failure is not None:
                raise self.failure
            if self.done:
                return None
            if self._reading is None:
                self._reading = asyncio.get_running_loop().create_task(self._read())
            await asyncio.shield(self._reading)
        return self.pages[index]

    async def _read(self) -> None:
        """Read and encode the next page (retrying while the store is away)."""
        retry = 0.0
        try:
            while True:
                try:
                    changes = await self.snapshot.next(PAGE)
                    break
                except BackendUnavailable:
                    retry = min(2.0, retry * 2) if retry else 0.05
                    await asyncio.sleep(retry)  # every member waits; nothing is skipped
                except (SnapshotRefused, HistoryGone) as exc:
                    self.failure = exc
                    return
            if not changes:
                self.done = True
                return
            page: list[Outgoing] = []
            for change in changes:
                out = self._encode(change)
                if out is not None:
                    page.append(out)
            self.pages.append(page)
        finally:
            self._reading = None

    def _encode(self, change: Change) -> Outgoing | None:
        """The message the view's members get for a stored document (None: not for them)."""
        if change.schema is None:
            change.schema = self.schemas.get(change.class_name)
        view = self.view
        try:
            evaluated = view.evaluate(change, self.hooks_for(change))
        except Exception:
            self.stats.view_errors += 1
            log.exception("snapshot of %s: a document failed for a view; it is left out", view.class_name)
            return None
        if evaluated is None or evaluated[2]:
            return None
        self.stats.encodings += 1
        return envelope(view.class_name, "I", change.seq, evaluated[1])
