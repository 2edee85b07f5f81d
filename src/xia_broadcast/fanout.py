"""The fan-out engine: views, members, bounded outbound queues. No I/O of its own.

Subscribers of a class that share (scope, catalog, show_hidden, ACL) form one :class:`View`. A change is
checked, projected and JSON-encoded once per view; the one :class:`Outgoing` it yields is appended to the
queue of every member connection. Nothing here awaits: a fan-out runs from start to end without yielding to
the event loop, so no subscription changes under it and changes keep their publish order in every queue.

Moving bytes is the transport's business: after a fan-out the engine calls ``on_ready(connection)`` once
for each connection that went from idle to having queued messages, and ``on_overflow(connection)`` for
each connection whose queue overflowed.

Memory: each connection may hold up to ``max_messages`` queued messages and ``max_bytes`` bytes of them
(a message shared by many connections is stored once and counted for each).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from .core.acl import Acl, subjects_of
from .core.catalog import Projector, compile_catalog, validate_catalog
from .core.schema import DocSchema
from .core.scope import Predicate, compile_scope
from .core.viewkey import ViewKey, view_key
from .errors import InvalidScopeError, SubscriptionError

log = logging.getLogger("xia_broadcast.fanout")

#: Default bound of a connection's outbound queue, in messages.
DEFAULT_MAX_QUEUE_MESSAGES = 1000
#: Default bound of a connection's outbound queue, in bytes of encoded messages.
DEFAULT_MAX_QUEUE_BYTES = 8 * 1024 * 1024


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

    __slots__ = ("born", "data", "frame", "seq", "text")

    def __init__(self, data: bytes, seq: str = "") -> None:
        #: when the message was made (``time.perf_counter()``), for publish-to-send latency
        self.born = time.perf_counter()
        self.data = data
        self.text = data.decode()
        self.seq = seq
        self.frame: bytes | None = None


@dataclass(slots=True)
class Change:
    """One published change. ``data`` is the document's stored, JSON-ready data (fast path); ``doc`` is
    the original object, used through its own ``check_scope``/``get_display_data``/``check_acl`` when the
    engine cannot read it as data (slow path)."""

    class_name: str
    op: str
    seq: str
    data: Mapping[str, Any] | None = None
    schema: DocSchema | None = None
    doc: Any = None
    _subjects: tuple[str, ...] | None = None

    @property
    def subjects(self) -> tuple[str, ...]:
        if self._subjects is None:
            assert self.data is not None
            self._subjects = subjects_of(self.class_name, self.data, self.schema)
        return self._subjects


class Connection:
    """The outbound state of one websocket: its queue and its subscriptions (one per class)."""

    __slots__ = (
        "closed", "max_bytes", "max_messages", "members", "overflowed", "queue", "queued_bytes",
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
        self.overflowed = False
        self.task: Any = None

    def push(self, out: Outgoing) -> bool:
        """Queue a message; False (and ``overflowed`` set) when it would exceed a bound.

        A single message larger than ``max_bytes`` is still queued into an empty queue.
        """
        size = len(out.data)
        if self.queue and (len(self.queue) >= self.max_messages or self.queued_bytes + size > self.max_bytes):
            self.overflowed = True
            return False
        self.queue.append(out)
        self.queued_bytes += size
        return True

    def take(self) -> list[Outgoing]:
        """Remove and return every queued message, oldest first."""
        batch = list(self.queue)
        self.queue.clear()
        self.queued_bytes = 0
        return batch


class Member:
    """One subscription: a connection in a view, with its own start_seq and last delivered seq."""

    __slots__ = ("class_name", "connection", "params", "start_seq", "view")

    def __init__(self, connection: Connection, view: View, class_name: str, start_seq: str,
                 params: dict[str, Any]) -> None:
        self.connection = connection
        self.view = view
        self.class_name = class_name
        self.start_seq = start_seq
        self.params = params


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


@dataclass
class EngineStats:
    """Counters since the engine started. ``deliveries`` counts messages queued to connections."""

    changes: int = 0
    projections: int = 0
    encodings: int = 0
    deliveries: int = 0
    overflows: int = 0
    view_errors: int = 0
    by_class: dict[str, int] = field(default_factory=dict)


SlowHooks = tuple[Callable[[Any, Any], bool], Callable[[Any, Any, Any, bool], Any]]


class FanoutEngine:
    """Views and connections of one broadcaster, and the fan-out of changes into connection queues."""

    def __init__(self, on_ready: Callable[[Connection], None], on_overflow: Callable[[Connection], None],
                 max_queue_messages: int = DEFAULT_MAX_QUEUE_MESSAGES,
                 max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES) -> None:
        self.on_ready = on_ready
        self.on_overflow = on_overflow
        self.max_queue_messages = max_queue_messages
        self.max_queue_bytes = max_queue_bytes
        self.channels: dict[str, dict[ViewKey, View]] = {}
        self.connections: dict[Any, Connection] = {}
        self.stats = EngineStats()

    # -- subscriptions ------------------------------------------------------------------------------------

    def subscribe(self, websocket: Any, class_name: str, params: dict[str, Any],
                  schema: DocSchema | None) -> Member:
        """Validate and compile a subscription, place it in its view. Raises :class:`SubscriptionError`."""
        if not isinstance(class_name, str) or not class_name:
            raise SubscriptionError("class name must be a non-empty string")
        show_hidden = params.get("show_hidden", False)
        if not isinstance(show_hidden, bool):
            raise SubscriptionError("show_hidden must be true or false", class_name=class_name)
        start_seq = params.get("start_seq") or ""
        if not isinstance(start_seq, str):
            raise SubscriptionError("start_seq must be a string", class_name=class_name)
        try:
            predicate = compile_scope(params.get("data_scope"), schema)
            scope = [] if params.get("data_scope") is None else list(params["data_scope"])
            catalog = validate_catalog(params.get("catalog"), schema)
            acl = Acl.coerce(params.get("acl"))
        except SubscriptionError as exc:
            exc.class_name = class_name
            raise
        key = view_key(scope, catalog, show_hidden, acl)
        views = self.channels.setdefault(class_name, {})
        view = views.get(key)
        if view is None:
            view = views[key] = View(key, class_name, scope, predicate, catalog, show_hidden, acl,
                                     params.get("acl"))
        conn = self.connections.get(websocket)
        if conn is None:
            conn = self.connections[websocket] = Connection(websocket, self.max_queue_messages,
                                                            self.max_queue_bytes)
        old = conn.members.get(class_name)
        if old is not None:
            self._leave(old)
        member = conn.members[class_name] = Member(conn, view, class_name, start_seq, params)
        view.members[conn] = member
        return member

    def _leave(self, member: Member) -> None:
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

    def send_first(self, websocket: Any, data: bytes) -> None:
        """Queue a message for one websocket (e.g. a confirmation), ahead of any change queued later."""
        conn = self.connections.get(websocket)
        if conn is None:
            conn = self.connections[websocket] = Connection(websocket, self.max_queue_messages,
                                                            self.max_queue_bytes)
        conn.queue.append(Outgoing(data))
        conn.queued_bytes += len(data)
        if not conn.scheduled:
            conn.scheduled = True
            self.on_ready(conn)

    def view_count(self, class_name: str | None = None) -> int:
        if class_name is not None:
            return len(self.channels.get(class_name, ()))
        return sum(len(v) for v in self.channels.values())

    # -- fan-out ------------------------------------------------------------------------------------------

    def fanout(self, change: Change, slow: SlowHooks | None = None) -> int:
        """Queue ``change`` to every member allowed to see it; returns the number of deliveries queued.

        ``slow`` (check_acl, get_message_body) is used instead of the compiled view when given or when the
        change carries no data. One view raising never stops the others.
        """
        stats = self.stats
        stats.changes += 1
        views = self.channels.get(change.class_name)
        if not views:
            return 0
        seq, op, class_name = change.seq, change.op, change.class_name
        ready: list[Connection] = []
        overflowed: list[Connection] = []
        queued = 0
        for view in list(views.values()):
            try:
                if slow is not None or change.data is None:
                    body = self._slow_body(view, change, slow)
                else:
                    acl = view.acl
                    if acl is not None and not acl.allows(change.subjects):
                        continue
                    if not view.predicate(change.data):
                        continue
                    body = view.projector(change.schema)(change.data)
                if body is None:
                    continue
                stats.projections += 1
                out = Outgoing(encode_json({"doc_class": class_name, "op": op, "seq": seq, "message": body}),
                               seq)
                stats.encodings += 1
            except Exception:
                stats.view_errors += 1
                log.exception("change %s %s %s failed for a view of %s; other views go on",
                              class_name, op, seq, class_name)
                continue
            for member in view.members.values():
                if seq < member.start_seq:
                    continue
                conn = member.connection
                if conn.push(out):
                    queued += 1
                    if not conn.scheduled:
                        conn.scheduled = True
                        ready.append(conn)
                elif conn.overflowed:
                    overflowed.append(conn)
        stats.deliveries += queued
        for conn in overflowed:
            if not conn.closed:
                stats.overflows += 1
                self.on_overflow(conn)
        for conn in ready:
            if not conn.closed:
                self.on_ready(conn)
        return queued

    @staticmethod
    def _slow_body(view: View, change: Change, slow: SlowHooks | None) -> Any:
        if slow is None:
            raise InvalidScopeError("no way to read this document: it has no data and no hooks")
        check_acl, get_body = slow
        if not check_acl(change.doc, view.acl_param):
            return None
        return get_body(change.doc, view.scope or None, view.catalog or None, view.show_hidden)
