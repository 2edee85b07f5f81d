"""Replay: a member catching up from the journal, then going live with no gap and no duplicate.

A member is *live* (``member.replay is None``: the fan-out queues changes to it) or *catching up* (a
:class:`Replay` in one of the phases below: a task reads the journal for it and queues what its view lets
through). Every change of phase is in :data:`TRANSITIONS`, and only :class:`Replays` makes one.

============  ==========================================================================================
phase         meaning
============  ==========================================================================================
``SNAPSHOT``  the client asked for a snapshot: it is sent the stored documents of its view
              (:mod:`.snapshot`), then reads the journal from the snapshot's position
``ASKED``     the client asked for changes from a position (``after_seq``/``from_seq``); nothing read yet
``READING``   the asked replay has read from the journal: a gap from here on is never skipped
``LAGGING``   its queue (or its socket) overflowed: it continues from the journal, nothing is lost
============  ==========================================================================================

Events: ``snapshot`` (asked for one), ``sent`` (the snapshot's documents are queued: the journal from its
position follows), ``read`` (a chunk was read), ``caught_up`` (the read reached what the Hub has delivered:
live), ``gone`` (the journal no longer holds the position). What ``gone`` does depends on the client: a
snapshot client (it keeps a collection) is told ``reset`` and sent a fresh snapshot (event ``reset``);
one that takes control messages is told (``history_gone``) and goes live; otherwise an asked position that
was never held closes with 4410, and a gap in the middle of a stream (a lag, or an asked replay that had
read) with 4409. A snapshot client is told ``snapshot_done`` when it goes live, any other client that takes
control messages ``replay_done`` after a replay.

The switch to live is gapless: a read that returns the end of the journal, while nothing was delivered live
after the member's cursor, makes the member live; changes up to its cursor are skipped for it from then on
(``start_seq`` is raised past the cursor). Changes delivered live while it catches up are read by the replay.

Memory: each view keeps the encodings of at most :data:`REPLAY_CACHE` recently replayed changes (and no
more bytes than one queue may hold), so members of one view catching up together encode each change once.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .core.change import Change
from .core.protocol import CLOSE_HISTORY_GONE, CLOSE_SNAPSHOT_REFUSED, CLOSE_TOO_SLOW
from .fanout import (
    Connection,
    DocumentHooks,
    Evaluation,
    HubStats,
    Member,
    Outgoing,
    View,
    control_message,
    envelope,
)
from .journal import Backend, BackendUnavailable, HistoryGone
from .journal.store import SnapshotRefused
from .snapshot import SnapshotPass

log = logging.getLogger("xia_broadcast.replay")

#: Changes read from the journal at a time while replaying.
REPLAY_CHUNK = 512
#: Encoded replayed changes each view keeps for its other members.
REPLAY_CACHE = 1024


class Phase(enum.Enum):
    """Why and how far a member catching up is (see the module docstring)."""

    SNAPSHOT = "snapshot"
    ASKED = "asked"
    READING = "reading"
    LAGGING = "lagging"


#: (phase, event) -> the phase after it; None: the member is live. ``gone`` is not here: it ends the
#: replay either way (live for a control client, closed otherwise, with the code of :data:`GONE_CODES`).
TRANSITIONS: dict[tuple[Phase | None, str], Phase | None] = {
    (None, "snapshot"): Phase.SNAPSHOT,
    (None, "ask"): Phase.ASKED,
    (None, "lag"): Phase.LAGGING,
    (Phase.SNAPSHOT, "sent"): Phase.READING,
    (Phase.SNAPSHOT, "reset"): Phase.SNAPSHOT,
    (Phase.ASKED, "reset"): Phase.SNAPSHOT,
    (Phase.READING, "reset"): Phase.SNAPSHOT,
    (Phase.LAGGING, "reset"): Phase.SNAPSHOT,
    (Phase.ASKED, "read"): Phase.READING,
    (Phase.READING, "read"): Phase.READING,
    (Phase.LAGGING, "read"): Phase.LAGGING,
    (Phase.ASKED, "caught_up"): None,
    (Phase.READING, "caught_up"): None,
    (Phase.LAGGING, "caught_up"): None,
}

#: the close code of a member whose position is gone, when it takes no control messages
GONE_CODES: dict[Phase, tuple[int, str]] = {
    Phase.ASKED: (CLOSE_HISTORY_GONE, "history gone: {cls} is held from {oldest} on"),
    Phase.READING: (CLOSE_TOO_SLOW, "too slow: fell behind the journal's retention"),
    Phase.LAGGING: (CLOSE_TOO_SLOW, "too slow: fell behind the journal's retention"),
    Phase.SNAPSHOT: (CLOSE_TOO_SLOW, "too slow: fell behind the journal's retention"),  # never: it resets
}


@dataclass(slots=True)
class Replay:
    """One member's way back to live: its phase and its position in the journal.

    ``cursor``: changes after it (from it, when ``inclusive``); None: from the journal's first change.
    ``epoch``: the journal epoch the position belongs to (None: only the seq is checked).
    """

    phase: Phase
    cursor: str | None
    inclusive: bool
    epoch: str | None = None
    #: when it was last reset (monotonic seconds): a snapshot after a reset joins only a pass begun after it
    reset_at: float = 0.0
    #: resets in a row without going live: each waits longer before its fresh snapshot (a position that is
    #: gone at once again never spins)
    resets: int = 0
    #: seconds waited before the last retry of a store that could not be reached (doubling, at most 2)
    retry: float = 0.0


class Replays:
    """Every replay of one Hub: starts them, runs a task for each, and ends them live or closed.

    Args:
        backend: the journal read from.
        delivered: the seq of the last change of each class the Hub fanned out (read, never written).
        head: the position a member that goes live now starts after (the Hub's).
        hooks_for: the document hooks a change needs (None: the compiled views suffice).
        wake: tells the transport a connection has queued messages.
        cut: closes a connection with a code and reason.
        schemas: the document classes by name, for changes read back without their schema.
        max_cache_bytes: bound of each view's replay cache, in bytes.
        stats: the Hub's counters (``replayed``, ``history_gone``, ``encodings``, ``view_errors``, snapshots).
        epoch_of: the epoch of a class's journal as the Hub knows it (for ``snapshot_done``).
    """

    def __init__(self, backend: Backend, delivered: dict[str, str], head: Callable[[str], str | None],
                 hooks_for: Callable[[Change], DocumentHooks | None], wake: Callable[[Connection[Any]], None],
                 cut: Callable[[Connection[Any], int, str], None], schemas: dict[str, Any],
                 max_cache_bytes: int, stats: HubStats, epoch_of: Callable[[str], str] = lambda _: "") -> None:
        self.backend = backend
        self.epoch_of = epoch_of
        self.delivered = delivered
        self.head = head
        self.hooks_for = hooks_for
        self.wake = wake
        self.cut = cut
        self.schemas = schemas
        self.max_cache_bytes = max_cache_bytes
        self.stats = stats
        self.tasks: dict[Member[Any], asyncio.Task[None]] = {}

    @property
    def running(self) -> bool:
        return bool(self.tasks)

    # -- transitions ----------------------------------------------------------------------------------

    def snapshot(self, member: Member[Any]) -> None:
        """The client asked for a snapshot (and no resume position): the stored documents, then the journal."""
        self._begin(member, "snapshot", None, False, None)
        member.epoch = None

    def ask(self, member: Member[Any], position: str, *, inclusive: bool) -> None:
        """The client asked for the changes after (``inclusive``: from) ``position``."""
        self._begin(member, "ask", position, inclusive, member.epoch)
        member.epoch = None

    def lag(self, member: Member[Any], position: str | None, *, inclusive: bool) -> None:
        """A live member's queue or socket overflowed: it continues from ``position``. A member already
        catching up is left as it is (it reads the journal anyway)."""
        if member.replay is None:
            self._begin(member, "lag", position, inclusive, None)

    def _begin(self, member: Member[Any], event: str, cursor: str | None, inclusive: bool,
               epoch: str | None) -> None:
        phase = TRANSITIONS[(None, event)]
        assert phase is not None and member.replay is None
        member.replay = Replay(phase, cursor, inclusive, epoch)
        member.connection.replaying += 1
        member.view.replaying += 1
        task = asyncio.get_running_loop().create_task(self._run(member))
        self.tasks[member] = task
        task.add_done_callback(functools.partial(self._task_done, member))

    def _end(self, member: Member[Any]) -> None:
        """The member is no longer catching up (live, closed or gone)."""
        if member.replay is None:
            return
        member.replay = None
        member.connection.replaying -= 1
        view = member.view
        view.replaying -= 1
        if not view.replaying:  # nobody of the view catches up any more: its encodings are not needed
            view.replay_cache.clear()
            view.replay_cache_bytes = 0

    def stop(self, member: Member[Any]) -> None:
        """The member leaves (unsubscribed, closed): its replay ends where it is."""
        self._end(member)
        task = self.tasks.pop(member, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def stop_all(self) -> None:
        for task in list(self.tasks.values()):
            task.cancel()

    def _task_done(self, member: Member[Any], task: asyncio.Task[None]) -> None:
        if self.tasks.get(member) is task:
            del self.tasks[member]

    def _go_live(self, member: Member[Any], replay: Replay, *, tell: bool) -> None:
        conn = member.connection
        self._end(member)
        if not self.backend.synchronous and replay.cursor is not None and replay.cursor + "\0" > member.start_seq:
            # an asynchronous read may have reached past what the Hub delivered so far: what the replay gave
            # is never delivered again (a synchronous read ends exactly at the last change delivered)
            member.start_seq = replay.cursor + "\0"
        if member.snapshot:  # the collection is whole at this position: tell it even without a replay
            seq = replay.cursor or self.head(member.class_name) or ""  # "": nothing was ever published
            conn.put(control_message("snapshot_done", **{"class": member.class_name, "seq": seq,
                                                         "epoch": replay.epoch or self.epoch_of(member.class_name)}))
        elif conn.control and tell:
            conn.put(control_message("replay_done", **{"class": member.class_name,
                                                       "seq": self.head(member.class_name)}))

    def _reset(self, member: Member[Any], replay: Replay) -> None:
        """A snapshot client's position is gone: it is told ``reset`` (drop the collection) and sent a fresh
        snapshot, instead of an error."""
        self.stats.resets += 1
        replay.phase = TRANSITIONS[(replay.phase, "reset")] or Phase.SNAPSHOT
        replay.cursor, replay.inclusive, replay.epoch = None, False, None
        replay.reset_at = time.monotonic()
        replay.resets += 1
        member.connection.put(control_message("reset", **{"class": member.class_name}))
        self.wake(member.connection)

    def _gone(self, member: Member[Any], replay: Replay, gone: HistoryGone) -> None:
        self.stats.history_gone += 1
        conn = member.connection
        if conn.control:
            # the client reloads; from now on it is live
            conn.put(control_message("history_gone", **{"class": member.class_name, "seq": replay.cursor,
                                                        "oldest_seq": gone.oldest}))
            replay.cursor, replay.inclusive = self.head(member.class_name), False
            self._go_live(member, replay, tell=False)
            self.wake(conn)
            return
        code, reason = GONE_CODES[replay.phase]
        self.cut(conn, code, reason.format(cls=member.class_name, oldest=gone.oldest))

    # -- the task -------------------------------------------------------------------------------------

    async def _run(self, member: Member[Any]) -> None:
        """Fill a member's connection queue from the journal, a chunk at a time, waiting for room and
        yielding between chunks so that live traffic keeps its pace; go live at the end."""
        conn, view = member.connection, member.view
        class_name = member.class_name
        retry = 0.0
        try:
            while (replay := member.replay) is not None and not conn.closed:
                if replay.phase is Phase.SNAPSHOT:
                    if not await self._send_snapshot(member, replay):
                        return
                    continue
                if conn.full:
                    await conn.room()
                    continue
                limit = min(REPLAY_CHUNK, max(1, conn.max_messages - len(conn.queue)))
                try:
                    changes = await self.backend.read(class_name, replay.cursor, inclusive=replay.inclusive,
                                                      limit=limit, epoch=replay.epoch)
                except HistoryGone as gone:
                    if member.snapshot:
                        self._reset(member, replay)
                        continue
                    self._gone(member, replay, gone)
                    return
                except BackendUnavailable:
                    retry = min(2.0, retry * 2) if retry else 0.05
                    await asyncio.sleep(retry)  # the store is back soon; the member waits, loses nothing
                    continue
                retry = 0.0
                if member.replay is not replay or conn.closed:
                    return
                replay.phase = TRANSITIONS[(replay.phase, "read")] or replay.phase
                done = self._queue_chunk(member, replay, view, changes)
                if done == len(changes) < limit:
                    head = self.delivered.get(class_name)
                    if head is None or replay.cursor is None or replay.cursor >= head:
                        self._go_live(member, replay, tell=True)
                        self.wake(conn)
                        return
                self.wake(conn)
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("replay of %s failed for one subscriber; it is closed", class_name)
            self.cut(conn, 1011, "internal error")

    async def _send_snapshot(self, member: Member[Any], replay: Replay) -> bool:
        """Queue the stored documents of the member's view (the view's shared pass, or a new one), within the
        connection's queue bounds; then the journal from the snapshot's position follows (phase ``READING``).
        False when the member is done with (closed, left, refused)."""
        conn, view = member.connection, member.view
        sp = view.snapshot_pass
        if replay.resets > 1:  # reset again before going live: back off (50 ms doubling, at most 2 s)
            await asyncio.sleep(min(2.0, 0.05 * 2 ** (replay.resets - 2)))
            if member.replay is not replay or conn.closed:
                return False
        if sp is None or not sp.joinable or sp.started < replay.reset_at:
            try:
                snapshot = await self.backend.snapshot(member.class_name)
            except SnapshotRefused as refused:
                self.cut(conn, CLOSE_SNAPSHOT_REFUSED, f"snapshot refused: {refused}")
                return False
            except BackendUnavailable:  # the store is back soon; the member waits (backing off), loses nothing
                replay.retry = min(2.0, replay.retry * 2) if replay.retry else 0.05
                await asyncio.sleep(replay.retry)
                return member.replay is replay and not conn.closed
            replay.retry = 0.0
            if member.replay is not replay or conn.closed:
                return False
            sp = view.snapshot_pass
            if sp is None or not sp.joinable or sp.started < replay.reset_at:  # nobody made one meanwhile
                sp = view.snapshot_pass = SnapshotPass(view, snapshot, self.hooks_for, self.schemas, self.stats)
                self.stats.snapshot_passes += 1
        sp.join(member)
        try:
            index = offset = 0
            while True:
                if member.replay is not replay or conn.closed:
                    return False
                if conn.full:
                    await conn.room()
                    continue
                try:
                    page = await sp.page(index)
                except SnapshotRefused as refused:
                    self.cut(conn, CLOSE_SNAPSHOT_REFUSED, f"snapshot refused: {refused}")
                    return False
                except HistoryGone:  # the store started again (a new epoch) while it was read
                    if member.replay is replay and not conn.closed:
                        self._reset(member, replay)
                    return member.replay is replay and not conn.closed
                if member.replay is not replay or conn.closed:
                    return False
                if page is None:
                    break
                while offset < len(page):
                    if conn.full:
                        break
                    conn.put(page[offset])
                    offset += 1
                    self.stats.snapshot_documents += 1
                if offset >= len(page):
                    index, offset = index + 1, 0
                self.wake(conn)
                await asyncio.sleep(0)  # one page per loop turn: the loop and other subscribers go on
        finally:
            sp.leave(member)
        replay.phase = TRANSITIONS[(replay.phase, "sent")] or Phase.READING
        replay.cursor, replay.inclusive, replay.epoch = sp.position.seq or None, False, sp.position.epoch or None
        return True

    def _queue_chunk(self, member: Member[Any], replay: Replay, view: View, changes: list[Change]) -> int:
        """Queue what ``view`` lets through of ``changes``, advancing the cursor; stops early when the queue
        holds its bytes (the rest when the transport has taken it: never a spin). Returns how many were
        consumed."""
        conn = member.connection
        done = 0
        for change in changes:
            if conn.queue and (conn.queued_bytes >= conn.max_bytes or conn.total.over):
                break  # the rest when the transport has taken the queue (never a spin)
            done += 1
            replay.cursor, replay.inclusive = change.place, False
            if change.seq < member.start_seq:
                continue
            if change.schema is None:
                change.schema = self.schemas.get(change.class_name)
            out = self._encoded(view, change)
            if out is None or (out[1] and not member.exits):
                continue
            conn.put(out[0])
            self.stats.replayed += 1
        return done

    def _encoded(self, view: View, change: Change) -> tuple[Outgoing, bool] | None:
        """The encoded message a view's members get for a replayed change (shared by them: cached)."""
        cache = view.replay_cache
        key = change.place
        if key in cache:
            return cache[key]
        result: tuple[Outgoing, bool] | None = None
        try:
            # projected and encoded whole: a replay reads one view's changes, nothing to share between catalogs
            evaluated: Evaluation | None = view.evaluate(change, self.hooks_for(change))
            if evaluated is not None:
                result = envelope(view.class_name, evaluated[0], change.seq, evaluated[1]), evaluated[2]
                self.stats.encodings += 1
        except Exception:
            self.stats.view_errors += 1
            log.exception("replay of %s %s failed for a view", view.class_name, change.seq)
        cache[key] = result
        if result is not None:
            view.replay_cache_bytes += len(result[0].data)
        # bounded by count and by one queue's bytes: what one member may hold queued anyway
        while cache and (len(cache) > REPLAY_CACHE or view.replay_cache_bytes > self.max_cache_bytes):
            dropped = cache.pop(next(iter(cache)))
            if dropped is not None:
                view.replay_cache_bytes -= len(dropped[0].data)
        return result


__all__ = ["GONE_CODES", "REPLAY_CACHE", "REPLAY_CHUNK", "TRANSITIONS", "Phase", "Replay", "Replays"]
