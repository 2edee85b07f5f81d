"""The Hub: one engine instance with its views, connections, queues and journal backend.

Every change reaches a Hub through one callback, :meth:`Hub.handle_change`, called by the journal backend
with the change and its position, whether the change was published here or on another node (as
Centrifuge's brokers call their hub's ``HandlePublication``). Publishing only hands the change to the
backend; the backend appends it and calls back. So the memory backend and Redis Streams carry changes the
same way, and every node fans out the same changes in the same order.

A member is either *live* (the fan-out queues changes to it) or *replaying* (a task reads the journal for
it and queues what its view lets through): from the position it asked for (``after_seq``/``from_seq``), or
from where its queue overflowed. The switch to live is gapless: when a read returns the end of the journal
and nothing was delivered live after the member's cursor, the member goes live, and changes up to its cursor
are skipped for it from then on (``start_seq`` is raised past the cursor). Changes delivered live while it
replays are read by the replay.

Nothing in the fan-out awaits: it runs from start to end without yielding, so no subscription changes under
it and changes keep their publish order in every queue. Moving bytes is the transport's business: the Hub
calls ``on_ready(connection)`` once for a connection that went from idle to having work, and
``on_close(connection, code, reason)`` for a connection it cuts off.

Memory: each connection holds at most ``queue_messages`` queued messages (``queue_bytes`` bytes); a message
shared by many connections is stored once and counted for each. Each view keeps the encodings of at most
``REPLAY_CACHE`` recently replayed changes, so members of one view catching up together encode each change
once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .core.acl import Acl
from .core.catalog import validate_catalog
from .core.change import Change
from .core.limits import DEFAULT_LIMITS, SubscriptionLimits
from .core.protocol import CLOSE_HISTORY_GONE, CLOSE_TOO_SLOW
from .core.schema import DocSchema
from .core.scope import compile_conditions, validate_scope
from .core.versions import LastVersions
from .core.viewindex import ViewIndex, equality_key
from .core.viewkey import view_key
from .errors import HiddenFieldError, SubscriptionError
from .fanout import (
    DEFAULT_MAX_QUEUE_BYTES,
    DEFAULT_MAX_QUEUE_MESSAGES,
    Connection,
    Evaluation,
    Member,
    Outgoing,
    SlowHooks,
    View,
    control_message,
    envelope,
    truthy,
)
from .journal import Backend, BackendUnavailable, HistoryGone, MemoryBackend, MemoryJournal, Position, SeqOrderError

log = logging.getLogger("xia_broadcast.hub")

#: Changes read from the journal at a time while replaying.
REPLAY_CHUNK = 512
#: Encoded replayed changes each view keeps for its other members.
REPLAY_CACHE = 1024


@dataclass(frozen=True)
class HubSettings:
    """What a Hub is built with. Units: messages and bytes."""

    #: bound of each connection's outbound queue, in messages
    queue_messages: int = DEFAULT_MAX_QUEUE_MESSAGES
    #: bound of each connection's outbound queue, in bytes of encoded messages
    queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES
    #: last versions remembered per class, to find scope exits when a publisher gives no previous state
    max_tracked_ids: int = 100_000
    #: what one subscription may cost
    limits: SubscriptionLimits = DEFAULT_LIMITS


@dataclass
class HubStats:
    """Counters since the Hub started. ``deliveries`` counts messages queued to connections."""

    changes: int = 0
    projections: int = 0
    encodings: int = 0
    deliveries: int = 0
    replayed: int = 0
    lags: int = 0
    history_gone: int = 0
    view_errors: int = 0


class DirectWrites(Protocol):
    """A transport that may write connections during a fan-out instead of after it (``Hub.direct``).

    :meth:`begin` is asked once per fan-out; when it says yes, each connection that gets a message and was
    idle is handed to :meth:`write` right then (so the first subscribers are written while the fan-out goes
    on to the others); a connection it does not write (False) goes to ``on_ready`` after the fan-out as
    usual. :meth:`write` must not change views or connections (it may schedule such work for later).
    :meth:`end` closes a fan-out that began.
    """

    def begin(self) -> bool: ...

    def write(self, conn: Connection) -> bool: ...

    def end(self) -> None: ...


def _noop_ready(_conn: Connection) -> None:
    pass


def _noop_close(_conn: Connection, _code: int, _reason: str) -> None:
    pass


class Hub:
    """Views and connections, the fan-out of changes into connection queues, replay from the journal.

    Args:
        backend: where changes are kept and how they arrive (default: a :class:`MemoryBackend`; a
            :class:`MemoryJournal` is served through one).
        settings: queue bounds, last-version tracking, subscription limits.
        on_ready: called with a connection that has queued messages and was idle.
        on_close: called with a connection that must be closed, and the close code and reason: 4409 when it
            lagged beyond the journal and takes no control messages, or does not read what it provokes;
            4410 when it asked to resume from a position the journal no longer holds.
    """

    def __init__(self, backend: Backend | MemoryJournal | None = None, settings: HubSettings | None = None,
                 on_ready: Callable[[Connection], None] = _noop_ready,
                 on_close: Callable[[Connection, int, str], None] = _noop_close,
                 schemas: Mapping[str, DocSchema] | None = None) -> None:
        self.settings = settings if settings is not None else HubSettings()
        if backend is None or isinstance(backend, MemoryJournal):
            backend = MemoryBackend(journal=backend)
        self.backend: Backend = backend
        #: the document classes by name: a change that arrives without its schema (from another node, or read
        #: back from the store) is given this one, so hidden fields stay hidden
        self.schemas: dict[str, DocSchema] = dict(schemas) if schemas is not None else {}
        #: the position after which every change of a class reaches this Hub (classes it watches)
        self._watching: dict[str, Position] = {}
        #: the epoch of the last change delivered per class (it changes when the store starts again empty)
        self._epochs: dict[str, str] = {}
        self._started = False
        if isinstance(backend, MemoryBackend):  # nothing to connect to: usable at once, also without a loop
            backend.bind(self.handle_change)
            self._started = True
        self.on_ready = on_ready
        self.on_close = on_close
        #: a transport that writes connections during the fan-out when it can (see :class:`DirectWrites`)
        self.direct: DirectWrites | None = None
        #: the views of each class, indexed by an equality condition of each
        self.channels: dict[str, ViewIndex[View]] = {}
        self.connections: dict[Any, Connection] = {}
        self.stats = HubStats()
        #: the seq of the last change of each class this Hub fanned out
        self.delivered: dict[str, str] = {}
        self._versions: dict[str, LastVersions] = {}
        self._replays: dict[Member, asyncio.Task[None]] = {}
        #: the document hooks used for documents the Hub cannot read as data (set by the broadcaster)
        self.slow_hooks: SlowHooks | None = None
        #: use the hooks for every document (a broadcaster overrides get_message_body/check_subscriber_acl)
        self.force_slow = False

    @property
    def limits(self) -> SubscriptionLimits:
        return self.settings.limits

    @property
    def synchronous(self) -> bool:
        """True when publishing completes without waiting (the memory backend): :meth:`publish_nowait`."""
        return isinstance(self.backend, MemoryBackend)

    @property
    def journal(self) -> MemoryJournal:
        """The memory backend's journal (read it directly in tests and tools)."""
        if not isinstance(self.backend, MemoryBackend):
            raise AttributeError("only the memory backend has a journal object; read through hub.backend")
        return self.backend.journal

    @property
    def ready(self) -> bool:
        """True when the backend can publish and deliver."""
        return self._started and self.backend.ready

    async def start(self) -> None:
        """Start the backend's delivery to :meth:`handle_change` (once)."""
        if not self._started:
            await self.backend.start(self.handle_change)
            self._started = True

    async def close(self) -> None:
        """Stop replays and the backend."""
        for task in list(self._replays.values()):
            task.cancel()
        await self.backend.close()

    async def watch(self, class_name: str) -> Position:
        """Make sure this Hub receives the changes of ``class_name``; returns where that began."""
        pos = self._watching.get(class_name)
        if pos is None:
            pos = await self.backend.watch(class_name)
            pos = self._watching.setdefault(class_name, pos)
        return pos

    def _unwatch(self, class_name: str) -> None:
        """No subscriber of the class is left here: stop receiving it (a store tails only what is read)."""
        if self._watching.pop(class_name, None) is not None:
            self.delivered.pop(class_name, None)
            self.backend.unwatch(class_name)

    def _watch_nowait(self, class_name: str) -> None:
        if class_name in self._watching:
            return
        if not isinstance(self.backend, MemoryBackend):
            raise RuntimeError(f"await hub.watch({class_name!r}) before subscribing to it")
        self._watching[class_name] = Position(self.backend.journal.position(class_name) or "",
                                              self.backend.epoch_now)

    def epoch(self, class_name: str) -> str:
        """The epoch of the class's journal as this Hub knows it ("" before it watched the class)."""
        epoch = self._epochs.get(class_name)
        if epoch:
            return epoch
        pos = self._watching.get(class_name)
        return pos.epoch if pos is not None else ""

    # -- subscriptions ------------------------------------------------------------------------------------

    def connection(self, websocket: Any) -> Connection:
        conn = self.connections.get(websocket)
        if conn is None:
            s = self.settings
            conn = self.connections[websocket] = Connection(websocket, s.queue_messages, s.queue_bytes)
        return conn

    def subscribe(self, websocket: Any, class_name: str, params: Mapping[str, Any], schema: DocSchema | None,
                  *, strict: bool = False, exits: bool = False, control: bool = False,
                  hidden_allowed: bool = True) -> Member:
        """Validate and compile a subscription, place it in its view. Raises :class:`SubscriptionError`.

        ``params`` are the original's (``data_scope``, ``catalog``, ``show_hidden``, ``start_seq``, ``acl``)
        and the replay positions: with ``after_seq`` (changes after it) or ``from_seq`` (changes from it on)
        the member first replays the journal, then goes live; ``start_seq`` alone only skips older changes,
        as the original. ``strict`` refuses what the original ignores (unknown scope paths and keys, unknown
        catalog names); ``exits`` asks for scope exits; ``control`` for control messages (which implies
        exits); ``hidden_allowed`` False refuses ``show_hidden`` and scopes naming hidden fields
        (:class:`HiddenFieldError`, 4403). Must run in the event loop that serves the connections.
        """
        if not isinstance(class_name, str) or not class_name:
            raise SubscriptionError("class name must be a non-empty string")
        show_hidden = truthy(params.get("show_hidden", False))
        if show_hidden and not hidden_allowed:
            raise HiddenFieldError("show_hidden not permitted", class_name=class_name)
        positions = {}
        for name in ("start_seq", "after_seq", "from_seq"):
            value = params.get(name)
            if value is not None and not isinstance(value, str):
                raise SubscriptionError(f"{name} must be a string", class_name=class_name)
            positions[name] = value or ""
        start_seq, after_seq, from_seq = positions["start_seq"], positions["after_seq"], positions["from_seq"]
        if after_seq and from_seq:
            raise SubscriptionError("give after_seq or from_seq, not both", class_name=class_name)
        if schema is None:
            schema = self.schemas.get(class_name)
        if schema is None and not hidden_allowed and params.get("data_scope"):
            # nothing tells which fields are hidden: the scope could be a question about one
            raise HiddenFieldError("no schema is known for this class: a data scope needs permission to see "
                                   "hidden fields (declare or register the class)", class_name=class_name)
        try:
            scope = validate_scope(params.get("data_scope"), schema, strict=strict, limits=self.limits,
                                   hidden_allowed=hidden_allowed)
            catalog = validate_catalog(params.get("catalog"), schema, strict=strict, limits=self.limits)
            acl = Acl.coerce(params.get("acl"))
        except SubscriptionError as exc:
            exc.class_name = class_name
            raise
        epoch = params.get("epoch")
        if epoch is not None and not isinstance(epoch, str):
            raise SubscriptionError("epoch must be a string", class_name=class_name)
        self._watch_nowait(class_name)
        # every check is done: from here on nothing refuses, so no view is made for a refused subscription
        key = view_key(scope, catalog, show_hidden, acl, params.get("acl"))
        views = self.channels.get(class_name)
        if views is None:
            views = self.channels[class_name] = ViewIndex()
        view = views.get(key)
        if view is None:
            view = View(key, class_name, scope, compile_conditions(scope), catalog, show_hidden, acl,
                        params.get("acl"))
            views.add(key, view, equality_key(scope))
        conn = self.connection(websocket)
        if control:
            conn.control = True
        old = conn.members.get(class_name)
        if old is not None:  # subscribing again replaces the subscription; the view joined now stays
            self._leave(old, keep=view)
        member = conn.members[class_name] = Member(conn, view, start_seq, exits=exits or control)
        member.epoch = epoch or None
        view.members[conn] = member
        if after_seq or from_seq:
            self._start_replay(member, after_seq or from_seq, inclusive=bool(from_seq), lagging=False)
        return member

    def head(self, class_name: str) -> str | None:
        """The position a subscriber that goes live now starts after: the last change this Hub delivered,
        else where it began to receive the class."""
        delivered = self.delivered.get(class_name)
        if delivered:
            return delivered
        pos = self._watching.get(class_name)
        if pos is not None and pos.seq:
            return pos.seq
        if isinstance(self.backend, MemoryBackend):
            return self.backend.journal.position(class_name)
        return None

    def _leave(self, member: Member, keep: View | None = None) -> None:
        """``member`` leaves its view; a view left empty is dropped (and its class unwatched when it was the
        last), unless it is ``keep``: the one its connection is joining instead."""
        self._stop_replay(member)
        view = member.view
        view.members.pop(member.connection, None)
        if not view.members and view is not keep:
            views = self.channels.get(view.class_name)
            if views is not None:
                views.remove(view.key)
                if not views:
                    del self.channels[view.class_name]
                    self._unwatch(view.class_name)

    def remove(self, websocket: Any) -> Connection | None:
        """Forget a websocket: leave every view, drop its queue. Returns its connection, if it had one."""
        conn = self.connections.pop(websocket, None)
        if conn is None:
            return None
        conn.closed = True
        conn.take()
        for member in conn.members.values():
            self._leave(member)
        conn.members.clear()
        return conn

    def send_direct(self, websocket: Any, data: bytes) -> None:
        """Queue a message for one websocket (a confirmation, a control message), after what is queued."""
        conn = self.connection(websocket)
        if len(conn.queue) >= 2 * conn.max_messages or conn.queued_bytes >= 2 * conn.max_bytes:
            self._cut(conn, CLOSE_TOO_SLOW, "too slow: does not read the messages it asks for")
            return
        conn.queue.append(Outgoing(data))
        conn.queued_bytes += len(data)
        self._wake(conn)

    def _cut(self, conn: Connection, code: int, reason: str) -> None:
        """Cut a connection off (the transport closes it with ``code``); it is forgotten here either way."""
        self.on_close(conn, code, reason)
        if not conn.closed:
            self.remove(conn.websocket)

    def _wake(self, conn: Connection) -> None:
        if not conn.scheduled and not conn.closed and conn.queue:
            conn.scheduled = True
            self.on_ready(conn)

    def view_count(self, class_name: str | None = None) -> int:
        if class_name is not None:
            return len(self.channels.get(class_name, ()))
        return sum(len(v) for v in self.channels.values())

    @property
    def busy(self) -> bool:
        """True while a connection has queued messages or a replay is running."""
        return bool(self._replays) or any(c.scheduled or c.queue for c in self.connections.values())

    # -- publishing: the one seam -------------------------------------------------------------------------

    def publish_nowait(self, change: Change) -> str:
        """Publish through a backend that never waits (the memory backend): it journals the change and
        calls :meth:`handle_change` before this returns. Returns the seq.

        A seq chosen by the caller (the original API) that is not after the last of its class cannot be
        journaled: it is delivered to live members only, and logged. The journal assigns a seq otherwise.
        """
        backend = self.backend
        if not isinstance(backend, MemoryBackend):
            raise RuntimeError("this Hub's backend publishes asynchronously: await hub.publish(change)")
        self._learn_schema(change)
        try:
            backend.publish_nowait(change)
        except SeqOrderError as exc:
            if not change.seq:
                raise
            log.warning("not journaled, delivered live only: %s", exc)
            self.handle_change(change)
        return change.seq

    async def publish(self, change: Change) -> str:
        """Hand a change to the backend, which journals it and delivers it to every node's Hub (this one
        through :meth:`handle_change`). Returns the seq. Raises :class:`BackendUnavailable` when the store
        cannot be reached: the change is then not published."""
        if isinstance(self.backend, MemoryBackend):
            return self.publish_nowait(change)
        self._learn_schema(change)
        change.schema = change.schema or self.schemas.get(change.class_name)
        pos = await self.backend.publish(change)
        return pos.seq

    def _learn_schema(self, change: Change) -> None:
        """A class published with a schema is known by it from then on: changes of it that come back
        without one (from the store, from another node) keep their hidden fields hidden."""
        if change.schema is not None and change.class_name not in self.schemas:
            self.schemas[change.class_name] = change.schema

    def handle_change(self, change: Change) -> None:
        """The one callback through which every change reaches the Hub, with its seq set: find its previous
        state, remember its version, fan it out."""
        if change.schema is None:
            change.schema = self.schemas.get(change.class_name)
        if change.epoch:
            self._epochs[change.class_name] = change.epoch
        if change.data is not None:
            versions = self._versions.get(change.class_name)
            if versions is None:
                versions = self._versions[change.class_name] = LastVersions(self.settings.max_tracked_ids)
            doc_id = change.doc_id
            if change.prev is None:
                change.prev = versions.get(doc_id)
            versions.record(change.op, doc_id, change.data)
        self.fanout(change)

    # -- fan-out ------------------------------------------------------------------------------------------

    def _slow_for(self, change: Change) -> SlowHooks | None:
        return self.slow_hooks if (self.force_slow or change.data is None) else None

    def fanout(self, change: Change) -> int:
        """Queue ``change`` to every live member allowed to see it; returns the number of deliveries queued.

        Replaying members read it from the journal. One view raising never stops the others.
        """
        stats = self.stats
        stats.changes += 1
        seq, class_name = change.seq, change.class_name
        place = change.place
        if place > self.delivered.get(class_name, ""):
            self.delivered[class_name] = place
        views = self.channels.get(class_name)
        if not views:
            return 0
        slow = self._slow_for(change)
        ready: list[Connection] = []
        lagged: list[Connection] = []
        encoded: set[int] = set()
        queued = 0
        data = change.data
        direct = self.direct
        write_now = direct.write if direct is not None and direct.begin() else None
        candidates = views.values() if (slow is not None or data is None) else views.candidates(data, change.prev)
        for view in candidates:
            try:
                result = view.evaluate(change, slow)
                if result is None:
                    continue
                stats.projections += 1
                out = envelope(class_name, result[0], seq, result[1])
                if id(out) not in encoded:  # views sharing a catalog share one message
                    encoded.add(id(out))
                    stats.encodings += 1
            except Exception:
                stats.view_errors += 1
                log.exception("change %s %s %s failed for a view of %s; other views go on",
                              class_name, change.op, seq, class_name)
                continue
            size = len(out.data)
            is_exit = result[2]
            for member in view.members.values():  # the hot loop; an empty queue takes any one message
                if member.replaying or seq < member.start_seq or (is_exit and not member.exits):
                    continue
                conn = member.connection
                q = conn.queue
                if q and (len(q) >= conn.max_messages or conn.queued_bytes + size > conn.max_bytes):
                    lagged.append(conn)
                    continue
                q.append(out)
                conn.queued_bytes += size
                queued += 1
                if not conn.scheduled:
                    conn.scheduled = True
                    if write_now is None or not write_now(conn):
                        ready.append(conn)
        stats.deliveries += queued
        if write_now is not None and direct is not None:
            direct.end()
        for conn in lagged:
            self._lag(conn, change)
        for conn in ready:
            if not conn.closed:
                self.on_ready(conn)
        return queued

    # -- lagging and replay -------------------------------------------------------------------------------

    def _lag(self, conn: Connection, change: Change) -> None:
        """A connection's queue overflowed at ``change``: its live members continue from the journal."""
        if conn.closed:
            return
        self.stats.lags += 1
        for member in conn.members.values():
            if member.replaying:
                continue
            if member.class_name == change.class_name:
                self._start_replay(member, change.place, inclusive=True, lagging=True)
            else:
                self._start_replay(member, self.head(member.class_name), inclusive=False, lagging=True)

    def lag(self, conn: Connection) -> None:
        """Move every live member of a connection to the journal (its transport holds too much)."""
        if conn.closed:
            return
        self.stats.lags += 1
        for member in conn.members.values():
            if not member.replaying:
                self._start_replay(member, self.head(member.class_name), inclusive=False, lagging=True)

    def _start_replay(self, member: Member, cursor: str | None, *, inclusive: bool, lagging: bool) -> None:
        if not member.replaying:
            member.replaying = True
            member.connection.replaying += 1
            member.view.replaying += 1
        member.cursor, member.inclusive, member.lagging, member.read_any = cursor, inclusive, lagging, False
        member.asked = True
        if member not in self._replays:
            task = asyncio.get_running_loop().create_task(self._replay(member))
            self._replays[member] = task
            task.add_done_callback(functools.partial(self._replay_ended, member))

    def _replay_ended(self, member: Member, task: asyncio.Task[None]) -> None:
        if self._replays.get(member) is task:
            del self._replays[member]

    def _stop_replay(self, member: Member) -> None:
        if member.replaying:
            self._replay_ended_for(member)
        task = self._replays.pop(member, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def _replay_ended_for(self, member: Member) -> None:
        member.replaying = False
        member.connection.replaying -= 1
        member.epoch = None  # the position was checked: later lags read the journal as it is now
        view = member.view
        view.replaying -= 1
        if not view.replaying:  # nobody of the view catches up any more: its encodings are not needed
            view.replay_cache.clear()
            view.replay_cache_bytes = 0

    def _go_live(self, member: Member) -> None:
        conn = member.connection
        self._replay_ended_for(member)
        if not self.synchronous and member.cursor is not None and member.cursor + "\0" > member.start_seq:
            # an asynchronous read may have reached past what this Hub delivered so far: what the replay
            # gave is never delivered again (a synchronous read ends exactly at the last change delivered)
            member.start_seq = member.cursor + "\0"
        if conn.control and member.asked:
            self._queue(conn, control_message("replay_done", **{"class": member.class_name,
                                                                "seq": self.head(member.class_name)}))

    def _queue(self, conn: Connection, out: Outgoing) -> None:
        conn.queue.append(out)
        conn.queued_bytes += len(out.data)

    async def _replay(self, member: Member) -> None:
        """Fill a member's connection queue from the journal, a chunk at a time, waiting for room and
        yielding between chunks so that live traffic keeps its pace; go live at the end."""
        conn, view = member.connection, member.view
        class_name = member.class_name
        stats = self.stats
        retry = 0.0
        try:
            while member.replaying and not conn.closed:
                if conn.queue and (len(conn.queue) >= conn.max_messages or conn.queued_bytes >= conn.max_bytes):
                    await conn.room()
                    continue
                limit = min(REPLAY_CHUNK, max(1, conn.max_messages - len(conn.queue)))
                try:
                    changes = await self.backend.read(class_name, member.cursor, inclusive=member.inclusive,
                                                      limit=limit, epoch=member.epoch)
                except HistoryGone as gone:
                    self._history_gone(member, gone)
                    return
                except BackendUnavailable:
                    retry = min(2.0, retry * 2) if retry else 0.05
                    await asyncio.sleep(retry)  # the store is back soon; the member waits, loses nothing
                    continue
                retry = 0.0
                if not member.replaying or conn.closed:
                    return
                member.read_any = True
                done = 0
                for change in changes:
                    if conn.queue and conn.queued_bytes >= conn.max_bytes:
                        break  # the rest when the transport has taken the queue (never a spin)
                    done += 1
                    member.cursor, member.inclusive = change.place, False
                    if change.seq < member.start_seq:
                        continue
                    if change.schema is None:
                        change.schema = self.schemas.get(class_name)
                    out = self._replayed(view, change)
                    if out is None or (out[1] and not member.exits):
                        continue
                    self._queue(conn, out[0])
                    stats.replayed += 1
                if done == len(changes) < limit:
                    head = self.delivered.get(class_name)
                    if head is None or member.cursor is None or member.cursor >= head:
                        self._go_live(member)
                        self._wake(conn)
                        return
                self._wake(conn)
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("replay of %s failed for one subscriber; it is closed", class_name)
            self._cut(conn, 1011, "internal error")

    def _replayed(self, view: View, change: Change) -> tuple[Outgoing, bool] | None:
        """The encoded message a view's members get for a replayed change (shared by them: cached)."""
        cache = view.replay_cache
        key = change.place
        if key in cache:
            return cache[key]
        result: tuple[Outgoing, bool] | None = None
        try:
            evaluated: Evaluation | None = view.evaluate(change, self._slow_for(change))
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
        while cache and (len(cache) > REPLAY_CACHE or view.replay_cache_bytes > self.settings.queue_bytes):
            dropped = cache.pop(next(iter(cache)))
            if dropped is not None:
                view.replay_cache_bytes -= len(dropped[0].data)
        return result

    def _history_gone(self, member: Member, gone: HistoryGone) -> None:
        self.stats.history_gone += 1
        conn = member.connection
        requested = member.cursor
        if conn.control:
            # the client reloads; from now on it is live
            self._queue(conn, control_message("history_gone", **{"class": member.class_name, "seq": requested,
                                                                 "oldest_seq": gone.oldest}))
            member.cursor, member.inclusive = self.head(member.class_name), False
            member.asked = False
            self._go_live(member)
            self._wake(conn)
        elif member.lagging or member.read_any:
            # it fell behind the journal in the middle of its stream: it must not miss changes silently
            self._cut(conn, CLOSE_TOO_SLOW, "too slow: fell behind the journal's retention")
        elif not member.asked:
            # a live-only subscription from before the journal's epoch: nothing to replay
            member.cursor = self.head(member.class_name)
            self._go_live(member)
        else:
            # it asked to resume from where the journal no longer reaches: never a silent gap
            self._cut(conn, CLOSE_HISTORY_GONE, f"history gone: {member.class_name} is held from {gone.oldest} on")

    async def idle(self, timeout: float = 5.0) -> bool:
        """Wait until no replay runs and every queue was handed to its transport; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.busy:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.001)
        return True


__all__ = ["REPLAY_CHUNK", "Hub", "HubSettings", "HubStats"]
