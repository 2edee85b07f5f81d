"""What the fan-out is made of: views, members, connections with bounded queues, encoded messages. No I/O.

Subscribers of a class that share (scope, catalog, show_hidden, ACL) form one :class:`View`. A change is
checked, projected and JSON-encoded once per view; the one :class:`Outgoing` it yields is appended to the
queue of every member's :class:`Connection`. The :class:`~xia_broadcast.hub.Hub` runs the fan-out and the
replay from the journal over these.

Memory: each connection holds at most ``max_messages`` queued messages (``max_bytes`` bytes); a message
shared by many connections is stored once and counted for each.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

import orjson

from .core.acl import Acl
from .core.catalog import HEAD, TAIL, Flat, Projector, compile_normalised, flat_plan
from .core.change import Change
from .core.encoding import dumps
from .core.schema import DocSchema
from .core.scope import Predicate
from .core.viewkey import ViewKey
from .document import DataDocument

if TYPE_CHECKING:
    from .replay import Replay
    from .snapshot import SnapshotPass

log = logging.getLogger("xia_broadcast.fanout")

__all__ = ["DEFAULT_MAX_QUEUE_BYTES", "DEFAULT_MAX_QUEUE_MESSAGES", "DEFAULT_MAX_TOTAL_QUEUE_BYTES", "Body",
           "Connection", "Cut", "DocumentHooks", "Evaluation", "FieldCodes", "HubStats", "Member", "Outgoing",
           "QueueTotal", "SharedAcl", "SharedCatalog", "SharedScope", "Sharing", "View", "W",
           "control_message", "encode_json", "envelope", "truthy"]

#: the transport's object for one socket (a key of the Hub's connections)
W = TypeVar("W", bound=Hashable)

#: Default bound of a connection's outbound queue, in messages.
DEFAULT_MAX_QUEUE_MESSAGES = 1000
#: Default bound of a connection's outbound queue, in bytes of encoded messages.
DEFAULT_MAX_QUEUE_BYTES = 8 * 1024 * 1024
#: Default bound of the bytes queued over every connection of a Hub (each counting what it holds).
DEFAULT_MAX_TOTAL_QUEUE_BYTES = 512 * 1024 * 1024


_FALSE_STRINGS = frozenset({"", "0", "false", "no", "off", "n", "f", "none", "null"})


def truthy(value: Any) -> bool:
    """A flag as the original read it (Python truth: ``1``, ``"yes"``, ``True``), except that a string that
    says false (``"false"``, ``"0"``, ``"no"``, ``"off"``) is false: a client never gets hidden fields by
    saying it does not want them."""
    if isinstance(value, str):
        return value.strip().lower() not in _FALSE_STRINGS
    try:
        return bool(value)
    except Exception:
        return False


def _json_default(obj: Any) -> Any:
    display = getattr(obj, "get_display_data", None)
    if callable(display):
        return display()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


def encode_json(content: Any) -> bytes:
    """Encode a JSON message (UTF-8 bytes). Objects with ``get_display_data`` encode as their display.

    What orjson refuses and Python's ``json`` (the original's encoder) accepts, integers beyond 64 bits
    and objects with non-string keys, is encoded by ``json``, never dropped.
    """
    try:
        return dumps(content, default=_json_default)
    except TypeError:
        return json.dumps(content, ensure_ascii=False, default=_json_default, separators=(",", ":")).encode()


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


@dataclass
class HubStats:
    """Counters of a Hub since it started. ``deliveries`` counts messages queued to connections by the
    fan-out, ``replayed`` those queued by replays; ``encodings`` counts messages encoded by both."""

    changes: int = 0
    projections: int = 0
    encodings: int = 0
    deliveries: int = 0
    replayed: int = 0
    lags: int = 0
    history_gone: int = 0
    view_errors: int = 0
    #: snapshot passes read (each shared by the members of one view), documents queued from them, resets
    snapshot_passes: int = 0
    snapshot_documents: int = 0
    resets: int = 0


class QueueTotal:
    """The bytes queued for every connection of a Hub together (each connection counting the messages it holds:
    a message shared by many counts for each), and their bound, ``limit``. Past it, a connection that has
    messages queued takes no more live changes and continues from the journal once its queue is taken."""

    __slots__ = ("limit", "queued")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.queued = 0

    @property
    def over(self) -> bool:
        return self.queued > self.limit


class Connection(Generic[W]):
    """The outbound state of one websocket: its queue and its subscriptions (one per class).

    ``websocket`` is the transport's own object for the socket (the key the Hub knows it by); the Hub never
    calls it, it hands the connection to its :class:`~xia_broadcast.transport.Transport`.
    """

    __slots__ = (
        "_room", "closed", "control", "max_bytes", "max_messages", "members", "queue", "queued_bytes",
        "replaying", "scheduled", "total", "websocket",
    )

    def __init__(self, websocket: W, max_messages: int, max_bytes: int, total: QueueTotal | None = None) -> None:
        self.websocket = websocket
        #: the bytes queued over every connection of its Hub (shared); its own when none is given
        self.total = total if total is not None else QueueTotal(1 << 62)
        #: queued messages, oldest first (a list: an empty one costs 56 bytes, an empty deque over 600)
        self.queue: list[Outgoing] = []
        self.queued_bytes = 0
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.members: dict[str, Member[W]] = {}
        #: the transport has been told (``Transport.writable``) and has not finished writing the queue yet
        self.scheduled = False
        self.closed = False
        #: the client asked for control messages
        self.control = False
        #: how many of its members are catching up from the journal (kept by :class:`~.replay.Replays`)
        self.replaying = 0
        self._room: asyncio.Future[None] | None = None

    def take(self, max_bytes: int | None = None) -> list[Outgoing]:
        """Remove and return the queued messages, oldest first: every one, or (``max_bytes``) the oldest
        that fit in ``max_bytes`` of encoded messages, and always at least one. Wakes who waits for room."""
        room, self._room = self._room, None
        if room is not None and not room.done():
            room.set_result(None)
        if max_bytes is None or self.queued_bytes <= max_bytes:
            batch, self.queue = self.queue, []
            self.total.queued -= self.queued_bytes
            self.queued_bytes = 0
            return batch
        q = self.queue
        size = len(q[0].data)
        n = 1
        while n < len(q) and size + len(q[n].data) <= max_bytes:
            size += len(q[n].data)
            n += 1
        batch = q[:n]
        del q[:n]  # O(len(q)), at most max_messages references, once per write
        self.queued_bytes -= size
        self.total.queued -= size
        return batch

    @property
    def full(self) -> bool:
        """It holds messages and no more may be queued now: its own bounds, or the Hub's total, are reached
        (replays and snapshots wait for room; an empty queue always takes one message)."""
        return bool(self.queue) and (len(self.queue) >= self.max_messages or self.queued_bytes >= self.max_bytes
                                     or self.total.over)

    def put(self, out: Outgoing) -> None:
        """Queue one message after what is queued (no bound checked: the caller checked it)."""
        self.queue.append(out)
        size = len(out.data)
        self.queued_bytes += size
        self.total.queued += size

    def room(self) -> asyncio.Future[None]:
        """A future done when the transport next takes the queue."""
        if self._room is None or self._room.done():
            self._room = asyncio.get_running_loop().create_future()
        return self._room


class Member(Generic[W]):
    """One subscription: a connection in a view, live (``replay`` None) or catching up from the journal
    (``replay``: its position and why, see :mod:`xia_broadcast.replay`)."""

    __slots__ = ("connection", "epoch", "exits", "replay", "snapshot", "start_seq", "view")

    def __init__(self, connection: Connection[W], view: View, start_seq: str, exits: bool = False,
                 epoch: str | None = None, snapshot: bool = False) -> None:
        self.connection = connection
        self.view = view
        #: changes with a seq before this are not for this member (the original's start_seq)
        self.start_seq = start_seq
        #: the member receives scope exits (``X``, and ``D`` of a document that had left); original clients
        #: never ask, so they never receive an op they do not know
        self.exits = exits
        #: the journal epoch of the position the client asked to resume from (None: not given, only the seq
        #: is checked); used by the replay it asked for, then forgotten
        self.epoch = epoch
        #: None while live; the replay in progress otherwise
        self.replay: Replay | None = None
        #: the client keeps a collection: it asked for a snapshot (``snapshot_done``, ``reset``, exits)
        self.snapshot = snapshot

    @property
    def class_name(self) -> str:
        return self.view.class_name


class Body(dict[str, Any]):
    """A projected document, made once per change for all the views whose catalogs are alike (same catalog,
    ``show_hidden`` and schema). It carries the message made of it (:func:`envelope`), so that those views
    share that too: a change is projected and encoded once per distinct catalog, not once per view."""

    #: ``message``: (op, seq, class name, the message) once :func:`envelope` made it (unset before: no
    #: ``__init__`` of our own, so that making a Body costs what copying a dict costs)
    __slots__ = ("message",)
    message: tuple[str, str, str, Outgoing]


class Cut(dict[str | int, bytes]):
    """One document's top-level fields, each encoded once: ``"name":value`` by name (in the document's
    order), ``,"name":value`` by its position in the document (a field after another); under :data:`HEAD` the
    message's head for the change's op, under :data:`TAIL` its end. Its :attr:`shape` is its field names in
    order, one tuple for every document of that shape (:attr:`Sharing.shapes`), so that a catalog finds its
    getter (:meth:`Flat.picker`) by identity: one call takes a whole message's pieces, in order."""

    __slots__ = ("shape",)
    shape: tuple[str, ...]


#: document shapes :class:`Sharing` keeps one tuple of (past it, it starts again: getters are made anew)
MAX_SHAPES = 1024


class FieldCodes:
    """The JSON of one change's documents, cut up for :class:`SharedCatalog`: each top-level field encoded
    once per change and document (:class:`Cut`), whatever the catalogs, with the message head for the change's
    op. A message is then the head, the fields its catalog keeps, and ``}}``: the bytes :func:`encode_json`
    would make of the whole message, without projecting or encoding per catalog.

    One instance at a time (the change fanned out last): it holds that change's fields.
    """

    __slots__ = ("change", "cuts", "shapes")

    #: a document that cannot be cut up (a key that is not a string, a value orjson refuses): its messages
    #: are made whole by :func:`envelope`, which falls back to ``json`` as before
    UNCUT = Cut()

    def __init__(self, change: Change, shapes: dict[tuple[str, ...], tuple[str, ...]]) -> None:
        self.change = change
        #: one tuple per document shape (:attr:`Cut.shape`), shared with the other changes of the Hub
        self.shapes = shapes
        #: the change's data and previous data cut up (None: no catalog asked yet; ``_ASKED``: one did)
        self.cuts: list[Cut | None] = [None, None]

    def fields(self, data: Mapping[str, Any]) -> Cut:
        """The encoded fields of ``data`` (the change's data or previous data); :attr:`UNCUT` when it cannot
        be cut up, or when no other catalog asked for this document of this change before: a document that
        only one catalog projects (one view, a replay into one subscriber) is encoded whole, which costs less
        than cutting up all its fields; the second catalog cuts it up for itself and every later one."""
        change = self.change
        which = 0 if data is change.data else 1 if data is change.prev else -1
        if which < 0:
            return FieldCodes.UNCUT
        codes = self.cuts[which]
        if codes is None:
            self.cuts[which] = _ASKED
            return FieldCodes.UNCUT
        if codes is _ASKED:
            whole = orjson.dumps({"doc_class": change.class_name, "op": change.op, "seq": change.seq, "message": 0})
            codes = self.cuts[which] = _cut(data, self.shapes, whole[:-2] + b"{")  # the head: less the ``0}``
        return codes


#: a :class:`SharedCatalog` before its first message: no schema is current
_UNSET: Any = object()


def _no_pick(fields: Mapping[Any, Any]) -> tuple[Any, ...]:
    raise AssertionError("no document shape yet")


#: ``FieldCodes.cuts`` of a document one catalog asked for (and encoded whole): not cut up yet
_ASKED = Cut()


def _cut(data: Mapping[str, Any], shapes: dict[tuple[str, ...], tuple[str, ...]], head: bytes) -> Cut:
    codes = Cut()
    dumps_ = orjson.dumps
    try:
        for i, (k, v) in enumerate(data.items()):
            if type(k) is not str:
                return FieldCodes.UNCUT
            code = codes[k] = dumps_({k: v}, default=_json_default)[1:-1]  # ``"k":v``, as inside the whole
            codes[i] = b"," + code
    except TypeError:  # orjson refuses it (e.g. an integer beyond 64 bits): encoded whole, by json
        return FieldCodes.UNCUT
    shape = tuple(data)
    known = shapes.get(shape)
    if known is None:
        if len(shapes) >= MAX_SHAPES:
            shapes.clear()
        known = shapes[shape] = shape
    codes.shape = known
    codes[HEAD] = head
    codes[TAIL] = b"}}"
    return codes


class SharedCatalog:
    """A catalog with its ``show_hidden``, compiled once for every view that asks for it (whatever their scopes
    and ACLs): one projector per schema the class is published with, and the last projection made.

    Memory: the projectors, and one change with its projection and message (the last), per distinct catalog
    in use.
    """

    __slots__ = ("__weakref__", "catalog", "last", "last_message", "pick", "pick_shape", "plan", "plan_schema",
                 "plans", "projectors", "sharing", "show_hidden", "views")

    def __init__(self, catalog: dict[str, Any], show_hidden: bool, sharing: Sharing) -> None:
        self.catalog = catalog
        #: the registry it belongs to (whose :class:`FieldCodes` it reads)
        self.sharing = sharing
        self.show_hidden = show_hidden
        self.projectors: dict[DocSchema | None, Projector] = {}
        #: per schema: the fields the catalog keeps (None: it projects embedded values, only the projector can)
        self.plans: dict[DocSchema | None, Flat | None] = {}
        #: (change, data, body): the projection of ``data`` of ``change`` made last
        self.last: tuple[Change, Mapping[str, Any], Body] | None = None
        #: (change, data, op, message): the message made last, while more than one view uses the catalog
        #: (with one, nothing is kept: a message is freed once its connections took it)
        self.last_message: tuple[Change, Mapping[str, Any], str, Outgoing] | None = None
        #: views using it now
        self.views = 0
        #: the schema of the message made last and its plan (``plans[plan_schema]``), and the getter of the
        #: fields kept (:meth:`Flat.picker`) of the document shape made last from cut-up fields: the next
        #: message of the same schema and shape finds them here
        self.plan_schema: object = _UNSET
        self.plan: Flat | None = None
        self.pick_shape: tuple[str, ...] | None = None
        self.pick: Callable[[Mapping[Any, Any]], tuple[Any, ...]] = _no_pick

    def projector(self, schema: DocSchema | None) -> Projector:
        """The catalog compiled against ``schema`` (cached: one per schema the class is published with)."""
        p = self.projectors.get(schema)
        if p is None:
            p = self.projectors[schema] = compile_normalised(self.catalog, schema, self.show_hidden)
        return p

    def project(self, change: Change, data: Mapping[str, Any]) -> Body:
        """``data`` (the change's data or previous data) projected, once per change for every view sharing
        this catalog. The change is held while it is the last one, so no other object takes its identity."""
        last = self.last  # one read: the tuple is consistent
        if last is not None and last[0] is change and last[1] is data:
            return last[2]
        project = self.projectors.get(change.schema)
        if project is None:
            project = self.projector(change.schema)
        body = Body(project(data))
        self.last = (change, data, body)
        return body

    def message(self, change: Change, data: Mapping[str, Any], op: str) -> Outgoing:
        """The document message of ``data`` (the change's data or previous data) with ``op``: made once per
        change for every view sharing this catalog, from the change's :class:`FieldCodes` when the catalog
        keeps whole top-level fields (the same bytes :func:`envelope` makes of the projection)."""
        last = self.last_message
        if last is not None and last[0] is change and last[1] is data and last[2] == op:
            return last[3]
        out = None
        if change.schema is not self.plan_schema:
            self._use(change.schema)
        if self.plan is not None:
            codes = self.sharing.codes
            if codes is None or codes.change is not change:
                codes = self.sharing.field_codes(change)
            fields = codes.cuts[0] if data is change.data else None
            if fields is None or fields is _ASKED:
                fields = codes.fields(data)
            if fields is not FieldCodes.UNCUT and op == change.op:  # (the head is the change's op's)
                if fields.shape is not self.pick_shape:
                    self.pick_shape, self.pick = fields.shape, self.plan.picker(fields.shape)
                out = Outgoing(b"".join(self.pick(fields)))
        if out is None:
            out = envelope(change.class_name, op, change.seq, self.project(change, data))
        self.sharing.made += 1
        self.last_message = (change, data, op, out) if self.views > 1 else None
        return out

    def _use(self, schema: DocSchema | None) -> None:
        """Make the plan of ``schema`` the current one (:attr:`plan`: None when the catalog projects embedded
        values further, which only the projector does)."""
        plan = self.plans.get(schema, _UNSET)
        if plan is _UNSET:
            plan = self.plans[schema] = flat_plan(self.catalog, schema, self.show_hidden)
        self.plan_schema, self.plan, self.pick_shape, self.pick = schema, plan, None, _no_pick


class SharedScope:
    """A scope compiled once for every view that has it (whatever their catalogs and ACLs), with its answer
    for the document tested last: views that differ only by catalog or ACL (every user of an application
    asking the same question with an ACL of their own) test each change once between them.

    Memory: the compiled predicate and the last change tested with its answer (the change held, so that no
    other takes its identity while it is compared by identity), per distinct scope in use.
    """

    __slots__ = ("__weakref__", "last_change", "last_data", "last_result", "predicate", "views")

    def __init__(self, predicate: Predicate) -> None:
        self.predicate = predicate
        #: views using it now: with one, it is tested directly (remembering would cost more than it saves)
        self.views = 0
        #: the change and document tested last, and the answer (the loop runs one fan-out at a time)
        self.last_change: Change | None = None
        self.last_data: Mapping[str, Any] | None = None
        self.last_result = False

    def holds(self, change: Change, data: Mapping[str, Any]) -> bool:
        """Whether the scope holds for ``data`` (the data or the previous data of ``change``): computed once
        per change and document for all the views sharing the scope."""
        if change is self.last_change and data is self.last_data:
            return self.last_result
        result = self.last_result = bool(self.predicate(data))
        self.last_change, self.last_data = change, data
        return result


class SharedAcl:
    """An ACL's grants on one class (:meth:`Acl.for_class`), checked once per document for every view whose
    ACL grants the same on that class (whatever it grants elsewhere): the last subjects checked and the answer.

    Memory: the ACL restricted to the class and the subjects checked last, per distinct restricted ACL in use.
    """

    __slots__ = ("__weakref__", "acl", "last_result", "last_subjects")

    def __init__(self, acl: Acl) -> None:
        self.acl = acl
        #: the subjects checked last (a change's, held so that no other tuple takes their identity)
        self.last_subjects: Sequence[str] | None = None
        self.last_result = False

    def allows(self, subjects: Sequence[str]) -> bool:
        """Whether the ACL reads a document with ``subjects`` (a change's subjects, compared by identity)."""
        if subjects is self.last_subjects:
            return self.last_result
        result = self.last_result = self.acl.allows(subjects)
        self.last_subjects = subjects
        return result


class Sharing:
    """What the views of one Hub share: compiled catalogs, compiled scopes and class-restricted ACLs, each
    with its answer for the change seen last, and the fields of that change cut up (:class:`FieldCodes`).

    One per Hub, used only from the Hub's event loop: the answers remembered are not locked, so views of
    Hubs running in other threads never share them. An entry goes with its last view.
    """

    def __init__(self) -> None:
        #: by (canonical catalog, show_hidden)
        self.catalogs: weakref.WeakValueDictionary[tuple[bytes, bool], SharedCatalog] = weakref.WeakValueDictionary()
        #: by canonical scope (as in view keys)
        self.scopes: weakref.WeakValueDictionary[bytes, SharedScope] = weakref.WeakValueDictionary()
        #: by class and the content of the ACL restricted to it
        self.acls: weakref.WeakValueDictionary[tuple[str, tuple[tuple[str, str], ...]], SharedAcl] = \
            weakref.WeakValueDictionary()
        #: the change whose fields were cut up last (one at a time: the loop fans out one change at a time)
        self.codes: FieldCodes | None = None
        #: one tuple per document shape seen (field names in order): at most :data:`MAX_SHAPES`
        self.shapes: dict[tuple[str, ...], tuple[str, ...]] = {}
        #: messages made for its views (:meth:`SharedCatalog.message`, exits, hooks), a count the Hub reads around
        #: each fan-out
        self.made = 0

    def catalog(self, canonical: bytes, catalog: dict[str, Any], show_hidden: bool) -> SharedCatalog:
        """The :class:`SharedCatalog` of ``catalog`` (``canonical``: its canonical JSON, as in view keys)."""
        key = (canonical, show_hidden)
        shared = self.catalogs.get(key)
        if shared is None:
            shared = self.catalogs[key] = SharedCatalog(catalog, show_hidden, self)
        return shared

    def scope(self, canonical: bytes, compile_scope: Callable[[], Predicate]) -> SharedScope:
        """The :class:`SharedScope` of the scope whose canonical form is ``canonical`` (compiled by
        ``compile_scope`` the first time)."""
        shared = self.scopes.get(canonical)
        if shared is None:
            shared = self.scopes[canonical] = SharedScope(compile_scope())
        return shared

    def acl(self, acl: Acl, class_name: str) -> SharedAcl:
        """The :class:`SharedAcl` of what ``acl`` grants on ``class_name``."""
        restricted = acl.for_class(class_name)
        key = (class_name, restricted.key)
        shared = self.acls.get(key)
        if shared is None:
            shared = self.acls[key] = SharedAcl(restricted)
        return shared

    def field_codes(self, change: Change) -> FieldCodes:
        """The :class:`FieldCodes` of ``change`` (made anew when it is not the last one's)."""
        codes = self.codes
        if codes is None or codes.change is not change:
            codes = self.codes = FieldCodes(change, self.shapes)
        return codes


class View:
    """Subscribers of one class sharing (scope, catalog, show_hidden, ACL), and what they compile to.

    The compiled catalog is shared with every other view of the same catalog (:class:`SharedCatalog`), so
    views that differ only by scope or ACL project and encode each change once between them.
    """

    __slots__ = ("acl", "acl_param", "catalog", "class_name", "exact", "key", "members", "predicate",
                 "replay_cache", "replay_cache_bytes", "replaying", "scope", "shared", "shared_acl", "shared_scope",
                 "show_hidden", "snapshot_pass", "sole")

    def __init__(self, key: ViewKey, class_name: str, scope: list[dict[str, Any]], predicate: Predicate | SharedScope,
                 catalog: dict[str, Any], show_hidden: bool, acl: Acl | None, acl_param: Any,
                 sharing: Sharing | None = None, exact: bool = False) -> None:
        if sharing is None:  # a view of its own, sharing nothing
            sharing = Sharing()
        self.key = key
        self.class_name = class_name
        self.scope = scope
        #: the compiled scope, shared with every other view of the same scope (a bare predicate: this
        #: view's own), which answers it once per change for all of them
        self.shared_scope = predicate if isinstance(predicate, SharedScope) else SharedScope(predicate)
        self.shared_scope.views += 1
        self.predicate = self.shared_scope.predicate
        #: the view index files this view by its scope's only condition: it finds it (among its candidates)
        #: exactly when the scope holds for a change without a previous state, which the fan-out then does not
        #: test again
        self.exact = exact
        self.catalog = catalog
        self.show_hidden = show_hidden
        self.acl = acl
        #: what the ACL grants on the class, checked once per change with every view granting the same there
        self.shared_acl = None if acl is None else sharing.acl(acl, class_name)
        #: the ACL object as the first subscriber gave it, for documents that check ACLs themselves
        self.acl_param = acl_param
        self.members: dict[Connection[Any], Member[Any]] = {}
        #: ``(member,)`` while it has one member, else ``()`` (the fan-out reads it before ``members``)
        self.sole: tuple[Member[Any], ...] = ()
        self.shared = sharing.catalog(key[1], catalog, show_hidden)
        self.shared.views += 1
        self.catalog = self.shared.catalog  # one equal dict for all the views sharing it
        #: seq -> (message, is_exit) or None, for the changes its members replayed lately (shared by them)
        self.replay_cache: dict[str, tuple[Outgoing, bool] | None] = {}
        #: bytes of the messages in ``replay_cache``; members of the view replaying now
        self.replay_cache_bytes = 0
        self.replaying = 0
        #: the read of the class's store its members asking for a snapshot now share (see :mod:`.snapshot`)
        self.snapshot_pass: SnapshotPass | None = None

    def projector(self, schema: DocSchema | None) -> Projector:
        """The catalog compiled against ``schema`` (cached: one per schema the class is published with)."""
        return self.shared.projector(schema)

    def join(self, member: Member[Any]) -> None:
        """``member`` (of a connection not in the view yet) joins the view."""
        self.members[member.connection] = member
        self.sole = (member,) if len(self.members) == 1 else ()

    def leave(self, conn: Connection[Any]) -> None:
        """The member of ``conn`` (if any) leaves the view."""
        self.members.pop(conn, None)
        self.sole = tuple(self.members.values()) if len(self.members) == 1 else ()

    def release(self) -> None:
        """The view is dropped (its last member left): it no longer counts among its scope's users."""
        self.shared_scope.views -= 1
        self.shared.views -= 1

    def evaluate(self, change: Change, slow: DocumentHooks | None) -> Evaluation | None:
        """What this view's members get for ``change``: ``(op, message body, is_exit)``, or None.

        In the view now: the change as published (an update that brings a document in arrives as ``U``).
        Out of it now but in it before (``change.prev``): an *exit*, for members that asked for exits only:
        ``X`` with ``{"_id"}`` for an update (or an insert over a document still stored), ``D`` with the
        previous state for a delete. Being in the view
        means: the ACL reads it and the scope holds.
        """
        if slow is not None or change.data is None:
            return self._evaluate_slow(change, slow)
        found = self._find(change)
        if found is None:
            return None
        data, is_exit = found
        if is_exit and change.op != "D":
            return "X", {"_id": change.doc_id}, True
        return change.op, self.shared.project(change, data), is_exit

    def message(self, change: Change, slow: DocumentHooks | None) -> tuple[Outgoing, bool] | None:
        """:meth:`evaluate`, encoded: ``(message, is_exit)`` or None. The message is shared by every view whose
        catalog is alike (:meth:`SharedCatalog.message`)."""
        data = change.data
        if slow is not None or data is None:
            evaluated = self._evaluate_slow(change, slow)
            if evaluated is None:
                return None
            self.shared.sharing.made += 1
            return envelope(self.class_name, evaluated[0], change.seq, evaluated[1]), evaluated[2]
        if self._in_now(change, data):
            return self.shared.message(change, data, change.op), False
        return self.exit_message(change)

    def exit_message(self, change: Change) -> tuple[Outgoing, bool] | None:
        """For a change published as data that is not in the view now: its exit, ``(message, True)``, when its
        previous state was in the view, else None."""
        if not self._was_in(change):
            return None
        if change.op != "D":
            self.shared.sharing.made += 1
            return envelope(self.class_name, "X", change.seq, {"_id": change.doc_id}), True
        assert change.prev is not None
        return self.shared.message(change, change.prev, change.op), True

    def _find(self, change: Change) -> tuple[Mapping[str, Any], bool] | None:
        """Which state of a change published as data is in the view: ``(data, False)`` (now), ``(prev, True)``
        (before, not now: an exit), or None."""
        data = change.data
        assert data is not None
        if self._in_now(change, data):
            return data, False
        return (change.prev, True) if self._was_in(change) else None  # type: ignore[return-value]

    def _in_now(self, change: Change, data: Mapping[str, Any]) -> bool:
        """Whether a change published as data is in the view now: the ACL reads it and the scope holds (both
        decided once per change with the views alike). ``Hub.fanout`` runs a copy of this inline."""
        return self._holds(change, data, False)

    def _was_in(self, change: Change) -> bool:
        """Whether the previous state of a change published as data was in the view."""
        prev = change.prev
        return prev is not None and self._holds(change, prev, True)

    def _holds(self, change: Change, state: Mapping[str, Any], previous: bool) -> bool:
        """Whether the ACL reads ``state`` (the change's data, or its ``previous`` state) and the scope holds."""
        acl, scope = self.shared_acl, self.shared_scope
        return (acl is None or acl.allows(change.prev_subjects if previous else change.subjects)) and (
            scope.holds(change, state) if scope.views > 1 else bool(scope.predicate(state)))

    def _evaluate_slow(self, change: Change, slow: DocumentHooks | None) -> Evaluation | None:
        """The same rules through the document hooks (``check_subscriber_acl``, ``get_message_body``): for
        documents the Hub cannot read as data, and for broadcasters that override the hooks (a change
        published as data is then handed to them as a :class:`DataDocument`)."""
        if slow is None:
            raise TypeError("a change without data needs the document's own hooks")
        doc = change.doc
        if doc is None:
            assert change.data is not None
            doc = DataDocument(change.class_name, change.data, change.schema)
        body = self._visible_slow(doc, slow)
        if body is not None:
            return change.op, body, False
        if change.prev is None:
            return None
        prev_body = self._visible_slow(DataDocument(change.class_name, change.prev, change.schema), slow)
        if prev_body is None:
            return None
        return ("X", {"_id": change.doc_id}, True) if change.op != "D" else (change.op, prev_body, True)

    def _visible_slow(self, doc: Any, slow: DocumentHooks) -> Any:
        if not slow.check_acl(doc, self.acl_param):
            return None
        return slow.get_body(doc, self.scope or None, self.catalog or None, self.show_hidden)


class DocumentHooks(NamedTuple):
    """The original's document hooks, for documents the Hub cannot read as data (objects published
    without their data) and for broadcasters that override them.

    ``check_acl(doc, acl)`` is True when ``acl`` may read ``doc``; ``get_body(doc, data_scope, catalog,
    show_hidden)`` is the projected document if it is in scope, else None. ``for_every_change``: use them
    for changes published as data too (a broadcaster overriding them gets every change through them).
    """

    check_acl: Callable[[Any, Any], bool]
    get_body: Callable[[Any, Any, Any, bool], Any]
    for_every_change: bool = False

#: what a view's members get for a change: (op, message body, whether it is a scope exit)
Evaluation = tuple[str, Any, bool]


def envelope(class_name: str, op: str, seq: str, body: Any) -> Outgoing:
    """The document message, as the original sends it. Made once per :class:`Body` (shared by the views
    whose catalogs are alike), once per call for any other body."""
    if type(body) is Body:
        made: tuple[str, str, str, Outgoing] | None = getattr(body, "message", None)
        if made is not None and made[0] == op and made[1] == seq and made[2] == class_name:
            return made[3]
        out = Outgoing(encode_json({"doc_class": class_name, "op": op, "seq": seq, "message": body}))
        body.message = (op, seq, class_name, out)
        return out
    return Outgoing(encode_json({"doc_class": class_name, "op": op, "seq": seq, "message": body}))


def control_message(kind: str, **fields: Any) -> Outgoing:
    """A control message (only for clients that asked for them): ``{"_control": kind, ...}``."""
    return Outgoing(encode_json({"_control": kind, **fields}))
