"""The fan-out engine: views, members, bounded outbound queues, replay from the journal. No I/O.

Subscribers of a class that share (scope, catalog, show_hidden, ACL) form one :class:`View`. A change is
checked, projected and JSON-encoded once per view; the one :class:`Outgoing` it yields is appended to the
queue of every member connection. Nothing here awaits: a fan-out runs from start to end without yielding to
the event loop, so no subscription changes under it and changes keep their publish order in every queue.

Every change is in the journal before it is fanned out. A member is either *live* (it gets changes from
the fan-out) or *replaying* (it gets them from the journal, through :meth:`FanoutEngine.pump`, which a
transport calls whenever the connection's queue is empty). Replay ends, with no gap and no duplicate, when
the pump finds nothing after the member's cursor: being synchronous, the switch cannot miss a change.

A member replays when it subscribes with ``start_seq``/``after_seq``, and when its connection's queue
overflows (it *lags*): the queue is not cut, the member goes on from the journal once the queue drains.
Only when the journal no longer reaches back is the client told (control message ``history_gone``) or,
without control messages, closed with 4409 through ``on_too_slow``.

Moving bytes is the transport's business: after a fan-out the engine calls ``on_ready(connection)`` once
for each connection that went from idle to having work.

Memory: each connection holds at most ``max_messages`` queued messages (``max_bytes`` bytes); a message
shared by many connections is stored once and counted for each.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from .core.acl import Acl
from .core.catalog import Projector, compile_catalog, validate_catalog
from .core.change import Change
from .core.schema import DocSchema
from .core.scope import Predicate, compile_scope
from .core.viewkey import ViewKey, view_key
from .document import DataDocument
from .errors import SubscriptionError
from .journal import HistoryGone, Journal, MemoryJournal

log = logging.getLogger("xia_broadcast.fanout")

__all__ = ["Change", "Connection", "FanoutEngine", "Member", "Outgoing", "View", "encode_json"]

#: Default bound of a connection's outbound queue, in messages.
DEFAULT_MAX_QUEUE_MESSAGES = 1000
#: Default bound of a connection's outbound queue, in bytes of encoded messages.
DEFAULT_MAX_QUEUE_BYTES = 8 * 1024 * 1024
#: Changes read from the journal at a time while replaying.
REPLAY_CHUNK = 512


def _json_default(obj: Any) -> Any:
    display = getattr(obj, "get_display_data", None)
    if callable(display):
        return display()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


def encode_json(content: Any) -> bytes:
    """Encode a JSON message (UTF-8 bytes). Objects with ``get_display_data`` encode as their display."""
    return orjson.dumps(content, default=_json_default)


class Outgoing:
    """One encoded message, shared by every member of the view that produced it.

    ``frame`` is free for a transport to cache the message's wire frame in, so that it is built once.
    """

    __slots__ = ("_text", "born", "data", "frame")

    def __init__(self, data: bytes) -> None:
        #: when the message was made (``time.perf_counter()``), for publish-to-send latency
        self.born = time.perf_counter()
        self.data = data
        self.frame: bytes | None = None
        self._text: str | None = None

    @property
    def text(self) -> str:
        """The message as a string (decoded once, for transports that send text)."""
        if self._text is None:
            self._text = self.data.decode()
        return self._text


class Connection:
    """The outbound state of one websocket: its queue and its subscriptions (one per class)."""

    __slots__ = (
        "closed", "control", "max_bytes", "max_messages", "members", "queue", "queued_bytes", "replaying",
        "scheduled", "task", "websocket",
    )

    def __init__(self, websocket: Any, max_messages: int, max_bytes: int) -> None:
        self.websocket = websocket
        self.queue: deque[Outgoing] = deque()
        self.queued_bytes = 0
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.members: dict[str, Member] = {}
        #: a transport has been told (``on_ready``) and has not finished draining yet
        self.scheduled = False
        self.closed = False
        #: the client asked for control messages
        self.control = False
        #: how many members are replaying from the journal
        self.replaying = 0
        self.task: Any = None

    def take(self, max_bytes: int | None = None) -> list[Outgoing]:
        """Remove and return the queued messages, oldest first: every one, or (``max_bytes``) the oldest
        that fit in ``max_bytes`` of encoded messages, and always at least one."""
        if max_bytes is None or self.queued_bytes <= max_bytes:
            batch = list(self.queue)
            self.queue.clear()
            self.queued_bytes = 0
            return batch
        q = self.queue
        batch = [q.popleft()]
        size = len(batch[0].data)
        while q and size + len(q[0].data) <= max_bytes:
            out = q.popleft()
            size += len(out.data)
            batch.append(out)
        self.queued_bytes -= size
        return batch


class Member:
    """One subscription: a connection in a view, live or replaying from a journal position."""

    __slots__ = ("connection", "cursor", "inclusive", "lagging", "read_any", "replaying", "start_seq", "view")

    def __init__(self, connection: Connection, view: View, start_seq: str) -> None:
        self.connection = connection
        self.view = view
        self.start_seq = start_seq
        self.replaying = False
        #: replay position: changes after ``cursor`` (from it, when ``inclusive``); None: from the start
        self.cursor: str | None = None
        self.inclusive = False
        #: replaying because the queue overflowed (not because the client asked)
        self.lagging = False
        #: this replay has read from the journal already (a gap from here on must not be skipped)
        self.read_any = False

    @property
    def class_name(self) -> str:
        return self.view.class_name


class View:
    """Subscribers of one class sharing (scope, catalog, show_hidden, ACL), and what they compile to."""

    __slots__ = ("_projectors", "acl", "acl_param", "catalog", "class_name", "key", "members", "predicate",
                 "scope", "show_hidden")

    def __init__(self, key: ViewKey, class_name: str, scope: list[dict[str, Any]], predicate: Predicate,
                 catalog: dict[str, Any], show_hidden: bool, acl: Acl | None, acl_param: Any) -> None:
        self.key = key
        self.class_name = class_name
        self.scope = scope
        self.predicate = predicate
        self.catalog = catalog
        self.show_hidden = show_hidden
        self.acl = acl
        #: the ACL object as the first subscriber gave it, for documents that check ACLs themselves
        self.acl_param = acl_param
        self.members: dict[Connection, Member] = {}
        self._projectors: dict[DocSchema | None, Projector] = {}

    def projector(self, schema: DocSchema | None) -> Projector:
        """The catalog compiled against ``schema`` (cached: one per schema the class is published with)."""
        p = self._projectors.get(schema)
        if p is None:
            p = self._projectors[schema] = compile_catalog(self.catalog, schema, self.show_hidden)
        return p

    def evaluate(self, change: Change, slow: SlowHooks | None) -> tuple[str, Any] | None:
        """What this view's members get for ``change``: ``(op, message body)``, or None.

        In the view now: the change as published (an update that brings a document in arrives as ``U``).
        Out of it now but in it before (``change.prev``): ``X`` with ``{"_id"}`` for an update, ``D`` with
        the previous state for a delete. Being in the view means: the ACL reads it and the scope holds.
        """
        if slow is not None or change.data is None:
            return self._evaluate_slow(change, slow)
        data, acl = change.data, self.acl
        if (acl is None or acl.allows(change.subjects)) and self.predicate(data):
            return change.op, self.projector(change.schema)(data)
        prev = change.prev
        if change.op == "I" or prev is None:
            return None
        if (acl is None or acl.allows(change.prev_subjects)) and self.predicate(prev):
            if change.op == "U":
                return "X", {"_id": data.get("_id")}
            return change.op, self.projector(change.schema)(prev)
        return None

    def _evaluate_slow(self, change: Change, slow: SlowHooks | None) -> tuple[str, Any] | None:
        """The same rules through the document hooks (``check_subscriber_acl``, ``get_message_body``): for
        documents the engine cannot read as data, and for broadcasters that override the hooks (a change
        published as data is then handed to them as a :class:`DataDocument`)."""
        if slow is None:
            raise TypeError("a change without data needs the document's own hooks")
        doc = change.doc
        if doc is None:
            assert change.data is not None
            doc = DataDocument(change.class_name, change.data, change.schema)
        body = self._visible_slow(doc, slow)
        if body is not None:
            return change.op, body
        if change.op == "I" or change.prev is None:
            return None
        prev_body = self._visible_slow(DataDocument(change.class_name, change.prev, change.schema), slow)
        if prev_body is None:
            return None
        return ("X", {"_id": change.doc_id}) if change.op == "U" else (change.op, prev_body)

    def _visible_slow(self, doc: Any, slow: SlowHooks) -> Any:
        check_acl, get_body = slow
        if not check_acl(doc, self.acl_param):
            return None
        return get_body(doc, self.scope or None, self.catalog or None, self.show_hidden)


@dataclass
class EngineStats:
    """Counters since the engine started. ``deliveries`` counts messages queued to connections."""

    changes: int = 0
    projections: int = 0
    encodings: int = 0
    deliveries: int = 0
    replayed: int = 0
    lags: int = 0
    history_gone: int = 0
    view_errors: int = 0


SlowHooks = tuple[Callable[[Any, Any], bool], Callable[[Any, Any, Any, bool], Any]]


def envelope(class_name: str, op: str, seq: str, body: Any) -> Outgoing:
    """The document message, as the original sends it."""
    return Outgoing(encode_json({"doc_class": class_name, "op": op, "seq": seq, "message": body}))


def control_message(kind: str, **fields: Any) -> Outgoing:
    """A control message (only for clients that asked for them): ``{"_control": kind, ...}``."""
    return Outgoing(encode_json({"_control": kind, **fields}))


class FanoutEngine:
    """Views and connections of one broadcaster, and the fan-out of changes into connection queues.

    Args:
        on_ready: called with a connection that has work (queued messages or a replay) and was idle.
        on_too_slow: called with a connection that must be closed with 4409, and the close reason (it
            lagged beyond the journal and takes no control messages, or it does not read what it provokes).
        journal: where changes are kept for replay (default: a :class:`MemoryJournal`).
    """

    def __init__(self, on_ready: Callable[[Connection], None], on_too_slow: Callable[[Connection, str], None],
                 max_queue_messages: int = DEFAULT_MAX_QUEUE_MESSAGES,
                 max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES, journal: Journal | None = None) -> None:
        self.on_ready = on_ready
        self.on_too_slow = on_too_slow
        self.max_queue_messages = max_queue_messages
        self.max_queue_bytes = max_queue_bytes
        self.journal: Journal = journal if journal is not None else MemoryJournal()
        self.channels: dict[str, dict[ViewKey, View]] = {}
        self.connections: dict[Any, Connection] = {}
        self.stats = EngineStats()
        #: the document hooks used for documents the engine cannot read as data (set by the broadcaster)
        self.slow_hooks: SlowHooks | None = None
        #: use the hooks for every document (a broadcaster overrides get_message_body/check_subscriber_acl)
        self.force_slow = False

    # -- subscriptions ------------------------------------------------------------------------------------

    def connection(self, websocket: Any) -> Connection:
        conn = self.connections.get(websocket)
        if conn is None:
            conn = self.connections[websocket] = Connection(websocket, self.max_queue_messages,
                                                            self.max_queue_bytes)
        return conn

    def subscribe(self, websocket: Any, class_name: str, params: dict[str, Any],
                  schema: DocSchema | None) -> Member:
        """Validate and compile a subscription, place it in its view. Raises :class:`SubscriptionError`.

        With ``start_seq`` (changes from it on) or ``after_seq`` (changes after it), the member first
        replays the journal, then goes live.
        """
        if not isinstance(class_name, str) or not class_name:
            raise SubscriptionError("class name must be a non-empty string")
        show_hidden = params.get("show_hidden", False)
        if not isinstance(show_hidden, bool):
            raise SubscriptionError("show_hidden must be true or false", class_name=class_name)
        start_seq = params.get("start_seq") or ""
        after_seq = params.get("after_seq") or ""
        if not isinstance(start_seq, str) or not isinstance(after_seq, str):
            raise SubscriptionError("start_seq and after_seq must be strings", class_name=class_name)
        if start_seq and after_seq:
            raise SubscriptionError("give start_seq or after_seq, not both", class_name=class_name)
        try:
            predicate = compile_scope(params.get("data_scope"), schema)
            scope = [] if params.get("data_scope") is None else list(params["data_scope"])
            catalog = validate_catalog(params.get("catalog"), schema)
            acl = Acl.coerce(params.get("acl"))
        except SubscriptionError as exc:
            exc.class_name = class_name
            raise
        key = view_key(scope, catalog, show_hidden, acl, params.get("acl"))
        views = self.channels.setdefault(class_name, {})
        view = views.get(key)
        if view is None:
            view = views[key] = View(key, class_name, scope, predicate, catalog, show_hidden, acl,
                                     params.get("acl"))
        conn = self.connection(websocket)
        if params.get("control"):
            conn.control = True
        old = conn.members.get(class_name)
        if old is not None:
            self._leave(old)
        member = conn.members[class_name] = Member(conn, view, start_seq)
        view.members[conn] = member
        if start_seq or after_seq:
            self._start_replay(member, start_seq or after_seq, inclusive=bool(start_seq), lagging=False)
            self._wake(conn)
        return member

    def _leave(self, member: Member) -> None:
        if member.replaying:
            member.replaying = False
            member.connection.replaying -= 1
        view = member.view
        view.members.pop(member.connection, None)
        if not view.members:
            views = self.channels.get(view.class_name)
            if views is not None:
                views.pop(view.key, None)
                if not views:
                    del self.channels[view.class_name]

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
            self._too_slow(conn, "too slow: does not read the messages it asks for")
            return
        conn.queue.append(Outgoing(data))
        conn.queued_bytes += len(data)
        self._wake(conn)

    def _too_slow(self, conn: Connection, reason: str) -> None:
        """Cut a connection off (the transport closes it with 4409); it is forgotten here either way."""
        self.on_too_slow(conn, reason)
        if not conn.closed:
            self.remove(conn.websocket)

    def _wake(self, conn: Connection) -> None:
        if not conn.scheduled and not conn.closed:
            conn.scheduled = True
            self.on_ready(conn)

    def view_count(self, class_name: str | None = None) -> int:
        if class_name is not None:
            return len(self.channels.get(class_name, ()))
        return sum(len(v) for v in self.channels.values())

    # -- fan-out ------------------------------------------------------------------------------------------

    def _slow_for(self, change: Change) -> SlowHooks | None:
        return self.slow_hooks if (self.force_slow or change.data is None) else None

    def fanout(self, change: Change) -> int:
        """Queue ``change`` to every live member allowed to see it; returns the number of deliveries queued.

        The change must already be in the journal (replaying and lagging members read it from there).
        One view raising never stops the others.
        """
        stats = self.stats
        stats.changes += 1
        views = self.channels.get(change.class_name)
        if not views:
            return 0
        seq, class_name = change.seq, change.class_name
        slow = self._slow_for(change)
        ready: list[Connection] = []
        lagged: list[Connection] = []
        queued = 0
        for view in list(views.values()):
            try:
                result = view.evaluate(change, slow)
                if result is None:
                    continue
                stats.projections += 1
                out = envelope(class_name, result[0], seq, result[1])
                stats.encodings += 1
            except Exception:
                stats.view_errors += 1
                log.exception("change %s %s %s failed for a view of %s; other views go on",
                              class_name, change.op, seq, class_name)
                continue
            size = len(out.data)
            for member in view.members.values():  # the hot loop; an empty queue takes any one message
                if member.replaying or seq < member.start_seq:
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
                    ready.append(conn)
        stats.deliveries += queued
        for conn in lagged:
            self._lag(conn, change)
        for conn in ready:
            if not conn.closed:
                self.on_ready(conn)
        return queued

    # -- lagging and replay -------------------------------------------------------------------------------

    def _start_replay(self, member: Member, cursor: str | None, *, inclusive: bool, lagging: bool) -> None:
        if not member.replaying:
            member.replaying = True
            member.connection.replaying += 1
        member.cursor, member.inclusive, member.lagging, member.read_any = cursor, inclusive, lagging, False

    def lag(self, conn: Connection) -> None:
        """Queue no more live changes for ``conn``: its live members continue from the journal after what is
        queued (a transport calls this when it cannot take more bytes for the connection)."""
        self._lag(conn, None)

    def _lag(self, conn: Connection, change: Change | None) -> None:
        """A connection's queue overflowed at ``change`` (None: after the last change): its live members
        continue from the journal."""
        if conn.closed:
            return
        self.stats.lags += 1
        for member in conn.members.values():
            if member.replaying:
                continue
            if change is not None and member.class_name == change.class_name:
                self._start_replay(member, change.seq, inclusive=True, lagging=True)
            else:
                self._start_replay(member, self.journal.head(member.class_name), inclusive=False, lagging=True)

    def pump(self, conn: Connection, budget: int = 4 * REPLAY_CHUNK) -> None:
        """Fill a connection's queue from the journal for its replaying members; transports call this
        whenever the queue is empty and ``conn.replaying``. Reads at most about ``budget`` journal entries,
        so one call never holds the event loop for long. A member that reaches the end goes live."""
        for member in list(conn.members.values()):
            while member.replaying and not conn.closed and budget > 0:
                room = conn.max_messages - len(conn.queue)
                if room <= 0:
                    return
                budget -= self._replay_some(member, min(room, budget))

    def _replay_some(self, member: Member, room: int) -> int:
        """Replay up to ``room`` journal entries into the member's queue (stopping early at the queue's byte
        bound); returns how many entries were read."""
        conn, view = member.connection, member.view
        limit = min(room, REPLAY_CHUNK)
        try:
            changes = self.journal.read(member.class_name, member.cursor, inclusive=member.inclusive,
                                        limit=limit)
        except HistoryGone as gone:
            self._history_gone(member, gone)
            return 1
        member.read_any = True
        stats = self.stats
        done = 0
        for change in changes:
            if conn.queue and conn.queued_bytes >= conn.max_bytes:
                break
            done += 1
            member.cursor, member.inclusive = change.seq, False
            if change.seq < member.start_seq:
                continue
            try:
                result = view.evaluate(change, self._slow_for(change))
                if result is None:
                    continue
                out = envelope(member.class_name, result[0], change.seq, result[1])
            except Exception:
                stats.view_errors += 1
                log.exception("replay of %s %s failed for one subscriber", member.class_name, change.seq)
                continue
            conn.queue.append(out)
            conn.queued_bytes += len(out.data)
            stats.replayed += 1
        if done == len(changes) < limit:  # caught up: from here on, the fan-out delivers
            member.replaying = False
            conn.replaying -= 1
            if conn.control:
                head = self.journal.head(member.class_name)
                conn.queue.append(control_message("replay_done", **{"class": member.class_name, "seq": head}))
        return max(done, 1)

    def _history_gone(self, member: Member, gone: HistoryGone) -> None:
        self.stats.history_gone += 1
        conn = member.connection
        requested = member.cursor
        if conn.control:
            # the client reloads; from now on it is live
            member.replaying = False
            conn.replaying -= 1
            conn.queue.append(control_message("history_gone", **{"class": member.class_name, "seq": requested,
                                                                "oldest_seq": gone.oldest}))
        elif member.lagging or member.read_any:
            # it fell behind the journal in the middle of its stream: it must not miss changes silently
            self._too_slow(conn, "too slow: fell behind the journal's retention")
        elif gone.oldest is not None and (requested is None or gone.oldest > requested):
            # an original client asked for more than is held: it gets what is held (docs/protocol.md)
            member.cursor, member.inclusive = gone.oldest, True
        else:
            member.replaying = False
            conn.replaying -= 1
