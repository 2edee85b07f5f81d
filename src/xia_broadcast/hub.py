"""The Hub: the engine, one instance with its views, connections, queues and journal backend.

Every change reaches a Hub through one callback, :meth:`Hub.handle_change`, called by the journal backend
with the change and its position, whether the change was published here or on another node (as
Centrifuge's brokers call their hub's ``HandlePublication``). Publishing only hands the change to the
backend; the backend appends it and calls back. So the memory backend and Redis Streams carry changes the
same way, and every node fans out the same changes in the same order.

The Hub keeps the registry (views by class, connections, members) and runs the fan-out. A member catching
up from the journal (asked for, or after its queue overflowed) is the business of :mod:`.replay`. Moving
bytes is the transport's (:class:`~xia_broadcast.transport.Transport`, given at construction): the Hub tells
it when a connection went from idle to having work, and when one must be closed.

Nothing in the fan-out awaits: it runs from start to end without yielding, so no subscription changes under
it and changes keep their publish order in every queue.

Memory: each connection holds at most ``queue_messages`` queued messages (``queue_bytes`` bytes); a message
shared by many connections is stored once and counted for each. Each class keeps the last version of at
most ``max_tracked_ids`` documents (to find scope exits when a publisher gives no previous state).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic

from .core.acl import Acl
from .core.catalog import validate_catalog
from .core.change import Change
from .core.limits import DEFAULT_LIMITS, SubscriptionLimits
from .core.protocol import CLOSE_TOO_SLOW
from .core.schema import DocSchema
from .core.scope import compile_conditions, validate_scope
from .core.versions import DEFAULT_MAX_TRACKED_IDS, LastVersions
from .core.viewindex import ViewIndex, index_key
from .core.viewkey import view_key
from .errors import HiddenFieldError, SubscriptionError
from .fanout import (
    DEFAULT_MAX_QUEUE_BYTES,
    DEFAULT_MAX_QUEUE_MESSAGES,
    DEFAULT_MAX_TOTAL_QUEUE_BYTES,
    Connection,
    DocumentHooks,
    HubStats,
    Member,
    Outgoing,
    QueueTotal,
    Sharing,
    View,
    W,
    truthy,
)
from .journal import Backend, MemoryBackend, Position, SeqOrderError
from .replay import Replays
from .transport import NoTransport, Transport

log = logging.getLogger("xia_broadcast.hub")


@dataclass(frozen=True)
class HubSettings:
    """What a Hub is built with. Units: messages and bytes."""

    #: bound of each connection's outbound queue, in messages
    queue_messages: int = DEFAULT_MAX_QUEUE_MESSAGES
    #: bound of each connection's outbound queue, in bytes of encoded messages
    queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES
    #: bytes queued over every connection together (each counting the messages it holds); past it, a
    #: connection with messages queued continues from the journal, as when its own queue is full
    total_queue_bytes: int = DEFAULT_MAX_TOTAL_QUEUE_BYTES
    #: last versions remembered per class, to find scope exits when a publisher gives no previous state
    max_tracked_ids: int = DEFAULT_MAX_TRACKED_IDS
    #: what one subscription may cost
    limits: SubscriptionLimits = DEFAULT_LIMITS


class Hub(Generic[W]):
    """Views and connections, the fan-out of changes into connection queues; replay through :mod:`.replay`.

    Args:
        backend: where changes are kept and how they arrive (default: a new :class:`MemoryBackend`).
        settings: queue bounds, last-version tracking, subscription limits.
        transport: moves the queued bytes of connections, and closes them: told when a connection that was
            idle has queued messages, and when one must be closed (4409 when it lagged beyond the journal
            and takes no control messages, or does not read what it provokes; 4410 when it asked to resume
            from a position the journal no longer holds). Default: :class:`NoTransport` (messages stay
            queued).
        hooks: the original's document hooks, for documents published as objects without data, and for
            every change when ``hooks.for_every_change`` (a broadcaster that overrides them).
        schemas: the document classes by name (kept by reference: classes added to it later are known). A
            change that arrives without its schema (from another node, or read back from the journal) is
            given this one, so hidden fields stay hidden; a class published with a schema is added to it.
    """

    def __init__(self, backend: Backend | None = None, settings: HubSettings | None = None,
                 transport: Transport[W] | None = None, *, hooks: DocumentHooks | None = None,
                 schemas: dict[str, DocSchema] | None = None) -> None:
        self.settings = settings if settings is not None else HubSettings()
        self.backend: Backend = backend if backend is not None else MemoryBackend()
        self.transport: Transport[W] = transport if transport is not None else NoTransport()
        self.hooks = hooks
        self.schemas: dict[str, DocSchema] = schemas if schemas is not None else {}
        #: the position after which every change of a class reaches this Hub (classes it watches)
        self._watching: dict[str, Position] = {}
        #: the epoch of the last change delivered per class (it changes when the store starts again empty)
        self._epochs: dict[str, str] = {}
        self._started = False
        if self.backend.synchronous:  # nothing to connect to: usable at once, also without a loop
            self.backend.bind(self.handle_change)
            self._started = True
        #: the views of each class, indexed by an equality condition of each
        self.channels: dict[str, ViewIndex[View]] = {}
        #: what its views share (compiled catalogs, scopes, class-restricted ACLs) and their remembered answers
        self.sharing = Sharing()
        self.connections: dict[W, Connection[W]] = {}
        #: the bytes queued over every connection, shared by them
        self.queued = QueueTotal(self.settings.total_queue_bytes)
        self.stats = HubStats()
        #: the seq of the last change of each class this Hub fanned out
        self.delivered: dict[str, str] = {}
        self._versions: dict[str, LastVersions] = {}
        self.replays = Replays(self.backend, self.delivered, self.head, self._hooks_for, self._wake, self._cut,
                               self.schemas, self.settings.queue_bytes, self.stats, self.epoch)

    @property
    def limits(self) -> SubscriptionLimits:
        return self.settings.limits

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
        self.replays.stop_all()
        await self.backend.close()

    async def watch(self, class_name: str, *, create: bool = True) -> Position:
        """Make sure this Hub receives the changes of ``class_name``; returns where that began. ``create``
        False: a class the store holds nothing of is not created in it (see ``Backend.watch``)."""
        pos = self._watching.get(class_name)
        if pos is None:
            pos = await self.backend.watch(class_name, create=create)
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
        if not self.backend.synchronous:
            raise RuntimeError(f"await hub.watch({class_name!r}) before subscribing to it")
        self._watching[class_name] = self.backend.position_nowait(class_name)

    def epoch(self, class_name: str) -> str:
        """The epoch of the class's journal as this Hub knows it ("" before it watched the class)."""
        epoch = self._epochs.get(class_name)
        if epoch:
            return epoch
        pos = self._watching.get(class_name)
        return pos.epoch if pos is not None else ""

    # -- subscriptions ------------------------------------------------------------------------------------

    def connection(self, websocket: W) -> Connection[W]:
        conn = self.connections.get(websocket)
        if conn is None:
            s = self.settings
            conn = self.connections[websocket] = Connection(websocket, s.queue_messages, s.queue_bytes, self.queued)
        return conn

    def subscribe(self, websocket: W, class_name: str, params: Mapping[str, Any], schema: DocSchema | None = None,
                  *, strict: bool = False, exits: bool = False, control: bool = False,
                  hidden_allowed: bool = True) -> Member[W]:
        """Validate and compile a subscription, place it in its view. Raises :class:`SubscriptionError`.

        ``params`` are the original's (``data_scope``, ``catalog``, ``show_hidden``, ``start_seq``, ``acl``)
        and the replay positions: with ``after_seq`` (changes after it) or ``from_seq`` (changes from it on)
        the member first replays the journal, then goes live; ``start_seq`` alone only skips older changes,
        as the original. With ``snapshot`` true, the member is first sent the stored documents of its view
        (``I``), then the journal from the snapshot's position, then ``snapshot_done`` and live changes; with
        ``after_seq`` too, it resumes from there, and is sent ``reset`` and a fresh snapshot when the journal
        no longer holds that position (a snapshot member takes control messages and exits). ``strict``
        refuses what the original ignores (unknown scope paths and keys, unknown catalog names); ``exits``
        asks for scope exits; ``control`` for control messages (which implies exits); ``hidden_allowed``
        False refuses ``show_hidden`` and scopes naming hidden fields (:class:`HiddenFieldError`, 4403).
        Must run in the event loop that serves the connections.
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
        snapshot = params.get("snapshot", False)
        if snapshot is None:
            snapshot = False
        if not isinstance(snapshot, bool):
            raise SubscriptionError("snapshot must be true or false", class_name=class_name)
        if snapshot and (start_seq or from_seq):
            raise SubscriptionError("a snapshot resumes with after_seq (and epoch), not start_seq or from_seq",
                                    class_name=class_name)
        self._watch_nowait(class_name)
        # every check is done: from here on nothing refuses, so no view is made for a refused subscription
        key = view_key(scope, catalog, show_hidden, acl, params.get("acl"))
        views = self.channels.get(class_name)
        if views is None:
            views = self.channels[class_name] = ViewIndex()
        view = views.get(key)
        if view is None:
            filed = index_key(scope)
            view = View(key, class_name, scope, self.sharing.scope(key[0], lambda: compile_conditions(scope)),
                        catalog, show_hidden, acl, params.get("acl"), self.sharing,
                        exact=filed is not None and len(scope) == 1)  # the index's candidates are the scan's
            views.add(key, view, filed)
        conn = self.connection(websocket)
        if control or snapshot:  # a snapshot client keeps a collection: snapshot_done, reset, exits
            conn.control = True
        old = conn.members.get(class_name)
        if old is not None:  # subscribing again replaces the subscription; the view joined now stays
            self._leave(old, keep=view)
        member = conn.members[class_name] = Member(conn, view, start_seq, exits=exits or control or snapshot,
                                                   epoch=epoch or None, snapshot=snapshot)
        view.join(member)
        if after_seq or from_seq:
            self.replays.ask(member, after_seq or from_seq, inclusive=bool(from_seq))
        elif snapshot:
            self.replays.snapshot(member)
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
        if self.backend.synchronous:
            return self.backend.position_nowait(class_name).seq or None
        return None

    def _leave(self, member: Member[W], keep: View | None = None) -> None:
        """``member`` leaves its view; a view left empty is dropped (and its class unwatched when it was the
        last), unless it is ``keep``: the one its connection is joining instead."""
        self.replays.stop(member)
        view = member.view
        view.leave(member.connection)
        if not view.members and view is not keep:
            view.release()
            views = self.channels.get(view.class_name)
            if views is not None:
                views.remove(view.key)
                if not views:
                    del self.channels[view.class_name]
                    self._unwatch(view.class_name)

    def remove(self, websocket: W) -> Connection[W] | None:
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

    def send_direct(self, websocket: W, data: bytes) -> None:
        """Queue a message for one subscribed websocket (a confirmation, a control message), after what is
        queued; nothing for a websocket the Hub does not know (never subscribed, or cut off already)."""
        conn = self.connections.get(websocket)
        if conn is None:
            return
        if len(conn.queue) >= 2 * conn.max_messages or conn.queued_bytes >= 2 * conn.max_bytes:
            self._cut(conn, CLOSE_TOO_SLOW, "too slow: does not read the messages it asks for")
            return
        conn.put(Outgoing(data))
        self._wake(conn)

    def _cut(self, conn: Connection[W], code: int, reason: str) -> None:
        """Cut a connection off (the transport closes it with ``code``); it is forgotten here either way."""
        self.transport.close(conn, code, reason)
        if not conn.closed:
            self.remove(conn.websocket)

    def _wake(self, conn: Connection[W]) -> None:
        if not conn.scheduled and not conn.closed and conn.queue:
            conn.scheduled = True
            self.transport.writable(conn)

    def view_count(self, class_name: str | None = None) -> int:
        if class_name is not None:
            return len(self.channels.get(class_name, ()))
        return sum(len(v) for v in self.channels.values())

    @property
    def busy(self) -> bool:
        """True while a connection has queued messages or a replay is running."""
        return self.replays.running or any(c.scheduled or c.queue for c in self.connections.values())

    # -- publishing: the one seam -------------------------------------------------------------------------

    def publish_nowait(self, change: Change) -> str:
        """Publish through a backend that never waits (one that declares ``synchronous``, the memory one): it
        journals the change and calls :meth:`handle_change` before this returns. Returns the seq. Raises
        RuntimeError on any other backend (``await`` :meth:`publish`).

        A seq chosen by the caller (the original API) that is not after the last of its class cannot be
        journaled: it is delivered to live members only, and logged. The journal assigns a seq otherwise.
        """
        if not self.backend.synchronous:
            raise RuntimeError("this Hub's backend publishes asynchronously: await hub.publish(change)")
        self._learn_schema(change)
        try:
            self.backend.publish_nowait(change)
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
        if self.backend.synchronous:
            return self.publish_nowait(change)
        self._learn_schema(change)
        change.schema = change.schema or self.schemas.get(change.class_name)
        # the backend's I/O runs in a task of its own: a caller started eagerly, outside any task (the
        # server's HTTP handlers, ``server.eager``), never runs a backend's timeouts outside one
        pos = await asyncio.ensure_future(self.backend.publish(change))
        return pos.seq

    async def publish_many(self, changes: list[Change]) -> list[str]:
        """:meth:`publish` for several changes, in order (one transaction where the backend can); their seqs.
        Raises :class:`BackendUnavailable` (``published``: how many were published before the failure)."""
        if self.backend.synchronous:
            return [self.publish_nowait(change) for change in changes]
        for change in changes:
            self._learn_schema(change)
            change.schema = change.schema or self.schemas.get(change.class_name)
        positions = await asyncio.ensure_future(self.backend.publish_many(changes))  # I/O in a task, as above
        return [p.seq for p in positions]

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
            if change.prev is None and not change.prev_stored:  # the backend's store said nothing
                change.prev = versions.get(doc_id)
            versions.record(change.op, doc_id, change.data)
        self.fanout(change)

    # -- fan-out ------------------------------------------------------------------------------------------

    def _hooks_for(self, change: Change) -> DocumentHooks | None:
        """The document hooks ``change`` is evaluated through (None: the compiled views read its data)."""
        hooks = self.hooks
        if hooks is not None and (hooks.for_every_change or change.data is None):
            return hooks
        return None

    def fanout(self, change: Change) -> int:
        """Queue ``change`` to every live member allowed to see it; returns the number of deliveries queued.

        Members catching up read it from the journal. One view raising never stops the others.
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
        slow = self._hooks_for(change)
        ready: list[Connection[W]] = []
        lagged: list[Connection[W]] = []
        sharing = self.sharing
        made = sharing.made  # views sharing a catalog share one message: the count of those made
        queued = projections = 0
        data = change.data
        transport = self.transport
        write_now = transport.write_during_fanout if transport.fanout_begins() else None
        total = self.queued
        full = total.over  # over the total bound: every connection that holds messages is full (read once)
        added = 0
        doc: Mapping[str, Any] = {}
        fast = slow is None and data is not None  # published as data, read by the compiled views
        exact = False  # the view index found the views of one indexed condition exactly where they hold
        if fast:
            assert data is not None
            doc = data
            prev = change.prev
            candidates = views.candidates(doc, prev)
            exact = prev is None
        else:
            candidates = views.values()
        subjects: tuple[str, ...] | None = None  # the change's, made at the first view with an ACL
        op = change.op
        for view in candidates:
            try:
                if fast:
                    # View.message inline (this loop runs it once per view and change): in the view now
                    # (View._in_now), by the ACL's decision and the scope's answer, both shared with the views
                    # alike; exits through the view
                    acl = view.shared_acl
                    if acl is None:
                        inside = True
                    else:
                        if subjects is None:
                            subjects = change.subjects
                        inside = acl.last_result if subjects is acl.last_subjects else acl.allows(subjects)
                    if inside and not (exact and view.exact):
                        scope = view.shared_scope
                        inside = scope.holds(change, doc) if scope.views > 1 else scope.predicate(doc)
                    if inside:
                        out, is_exit = view.shared.message(change, doc, op), False
                    else:
                        result = view.exit_message(change)
                        if result is None:
                            continue
                        out, is_exit = result
                else:
                    result = view.message(change, slow)
                    if result is None:
                        continue
                    out, is_exit = result
                projections += 1
            except Exception:
                stats.view_errors += 1
                log.exception("change %s %s %s failed for a view of %s; other views go on",
                              class_name, change.op, seq, class_name)
                continue
            size = len(out.data)
            for member in view.sole or view.members.values():  # the hot loop; an empty queue takes any one message
                if member.replay is not None or seq < member.start_seq or (is_exit and not member.exits):
                    continue
                conn = member.connection
                q = conn.queue
                if q and (full or len(q) >= conn.max_messages or conn.queued_bytes + size > conn.max_bytes):
                    lagged.append(conn)
                    continue
                q.append(out)
                conn.queued_bytes += size
                added += size
                queued += 1
                if not conn.scheduled:
                    conn.scheduled = True
                    if write_now is None or not write_now(conn):
                        ready.append(conn)
        stats.deliveries += queued
        stats.projections += projections
        stats.encodings += sharing.made - made
        total.queued += added
        transport.fanout_ended(queued)
        for conn in lagged:
            self._lag(conn, change)
        for conn in ready:
            if not conn.closed:
                transport.writable(conn)
        return queued

    # -- lagging ------------------------------------------------------------------------------------------

    def _lag(self, conn: Connection[W], change: Change) -> None:
        """A connection's queue overflowed at ``change``: its live members continue from the journal (the
        member of that class from ``change`` itself)."""
        if conn.closed:
            return
        self.stats.lags += 1
        for member in conn.members.values():
            if member.class_name == change.class_name:
                self.replays.lag(member, change.place, inclusive=True)
            else:
                self.replays.lag(member, self.head(member.class_name), inclusive=False)

    def lag(self, conn: Connection[W]) -> None:
        """Move every live member of a connection to the journal (its transport holds too much)."""
        if conn.closed:
            return
        self.stats.lags += 1
        for member in conn.members.values():
            self.replays.lag(member, self.head(member.class_name), inclusive=False)

    async def idle(self, timeout: float = 5.0) -> bool:
        """Wait until no replay runs and every queue was handed to its transport; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.busy:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.001)
        return True


__all__ = ["Hub", "HubSettings", "HubStats"]
