"""The original ``Broadcaster`` API, a thin front over a :class:`~xia_broadcast.hub.Hub`.

Every member of the original keeps its name, signature, default and async-ness. What changed is inside:

* each subclass has its own connection library (``active_connections``) and Hub (made from the class's
  settings, backend and hooks on first use);
* subscribers sharing (scope, catalog, show_hidden, ACL) form one view, computed once per change;
* ``document_sent_async`` only queues: each websocket has a bounded outbound queue drained by its own
  task (a :class:`~xia_broadcast.transport.TaskTransport` over this class's transport hooks), so a slow or
  failing client never delays, stops or breaks the delivery to the others;
* every change goes into a journal first: ``after_seq``/``from_seq`` replay it (gapless, then live), and a
  subscriber whose queue overflows continues from the journal once it reads again instead of losing anything;
* an update that takes a document out of a view sends ``X`` with its ``_id`` to the members that asked for
  exits;
* a subscriber with a later ``start_seq`` skips older changes for itself only; a closed socket is
  never written to; one bad document or one failing view is logged and skipped;
* invalid scopes, catalogs and ACLs are refused at ``subscribe`` time (:class:`SubscriptionError`).

Transport hooks for a framework: override ``accept``, ``send_message_async`` and
``subscriber_is_connected`` (as the original), and optionally ``close_async`` so that a subscriber that
fell behind the journal's retention is told so with close code 4409 (``docs/protocol.md``).
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import orjson

from .core.change import Change, check_change
from .core.limits import DEFAULT_LIMITS, SubscriptionLimits
from .core.protocol import subscription_params
from .core.schema import DocSchema
from .core.versions import DEFAULT_MAX_TRACKED_IDS
from .document import Document, is_out_of_scope
from .fanout import DEFAULT_MAX_QUEUE_BYTES, DEFAULT_MAX_QUEUE_MESSAGES, DocumentHooks, Outgoing, encode_json
from .hub import Hub, HubSettings
from .journal import Backend, MemoryBackend
from .journal.base import DEFAULT_MAX_AGE, DEFAULT_MAX_COUNT
from .journal.store import (
    DEFAULT_STORE_MAX_BYTES,
    DEFAULT_STORE_MAX_DOCUMENTS,
    DEFAULT_STORE_MAX_TOTAL_BYTES,
    StoreBounds,
)
from .transport import TaskTransport

log = logging.getLogger("xia_broadcast")


class Broadcaster:
    """Broadcasting documents to subscribers (via websocket)."""

    active_connections: dict[str, dict[Any, dict[str, Any]]] = {}  #: Connection library, by doc class

    #: Bound of each websocket's outbound queue, in messages. Set on a subclass before the first subscribe.
    max_queue_messages: ClassVar[int] = DEFAULT_MAX_QUEUE_MESSAGES
    #: Bound of each websocket's outbound queue, in bytes (encoded messages).
    max_queue_bytes: ClassVar[int] = DEFAULT_MAX_QUEUE_BYTES
    #: Document classes known by name (schemas): scopes and catalogs are checked against them at subscribe.
    document_classes: ClassVar[dict[str, DocSchema]] = {}
    #: Journal retention per class: changes kept, and their age in seconds.
    journal_max_count: ClassVar[int] = DEFAULT_MAX_COUNT
    journal_max_age: ClassVar[float] = DEFAULT_MAX_AGE
    #: Last versions remembered per class (for scope exits when a publisher gives no previous state).
    max_tracked_ids: ClassVar[int] = DEFAULT_MAX_TRACKED_IDS
    #: bounds of each class's document store (the latest state of each document, for snapshots and exits)
    store_max_documents: ClassVar[int] = DEFAULT_STORE_MAX_DOCUMENTS
    store_max_bytes: ClassVar[int] = DEFAULT_STORE_MAX_BYTES
    store_max_total_bytes: ClassVar[int] = DEFAULT_STORE_MAX_TOTAL_BYTES
    #: True: the journal knows nothing from before this class's Hub started (a start_seq older than
    #: that is reported as history gone). False: the journal is taken as complete from its first change.
    journal_epoch_now: ClassVar[bool] = False
    #: What one subscription may cost (conditions, path depth, list sizes, catalog size).
    subscription_limits: ClassVar[SubscriptionLimits] = DEFAULT_LIMITS

    _hub: ClassVar[Hub[Any] | None] = None
    _transport: ClassVar[TaskTransport[Any] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.active_connections = {}
        cls.document_classes = dict(cls.document_classes)
        cls._hub = None
        cls._transport = None

    def __init__(self) -> None:
        pass

    # -- state of this class ------------------------------------------------------------------------------

    @classmethod
    def hub(cls) -> Hub[Any]:
        """This class's Hub, made on first use from this class's settings, its backend (:meth:`make_backend`),
        its document hooks and its transport hooks (each websocket drained by a task of its own)."""
        hub = cls.__dict__.get("_hub")
        if hub is None:
            # the hooks are looked up at each call, as the original does (a hook replaced later is used)
            transport: TaskTransport[Any] = TaskTransport(
                lambda ws, messages: cls.send_batch_async(ws, messages),
                lambda ws: cls.subscriber_is_connected(ws),
                lambda ws, code, reason: cls.close_async(ws, code, reason),
                lambda ws: cls.disconnect(ws))
            hooks = DocumentHooks(cls.check_subscriber_acl, cls.get_message_body,
                                  for_every_change=not cls._uses_default_checks())
            hub = Hub(cls.make_backend(),
                      HubSettings(queue_messages=cls.max_queue_messages, queue_bytes=cls.max_queue_bytes,
                                  max_tracked_ids=cls.max_tracked_ids, limits=cls.subscription_limits),
                      transport, hooks=hooks, schemas=cls.document_classes)
            cls._hub, cls._transport = hub, transport
        return hub

    @classmethod
    def make_backend(cls) -> Backend:
        """The journal backend of this class's Hub (override to use another one, e.g. Redis Streams)."""
        return MemoryBackend(max_count=cls.journal_max_count, max_age=cls.journal_max_age,
                             complete=not cls.journal_epoch_now, accept_out_of_order=True,
                             store=StoreBounds(cls.store_max_documents, cls.store_max_bytes,
                                               cls.store_max_total_bytes))

    @classmethod
    def register_class(cls, schema: DocSchema | type[Document]) -> DocSchema:
        """Make a document class known by name, from a :class:`DocSchema` or a :class:`Document` subclass."""
        if isinstance(schema, type) and issubclass(schema, Document):
            schema = schema.doc_schema()
        cls.document_classes[schema.name] = schema
        return schema

    @classmethod
    def _uses_default_checks(cls) -> bool:
        """True when neither ``get_message_body`` nor ``check_subscriber_acl`` is overridden."""
        def own(name: str) -> Any:
            return next(k.__dict__[name] for k in cls.__mro__ if name in k.__dict__)
        return all(own(n) is Broadcaster.__dict__[n] for n in ("get_message_body", "check_subscriber_acl"))

    # -- the original API ---------------------------------------------------------------------------------

    @classmethod
    async def accept(cls, websocket: Any) -> None:
        """Accept event of a websocket (transport hook).

        Args:
            websocket: websocket object
        """

    @classmethod
    async def subscribe(cls,
                        websocket: Any,
                        class_name: str,
                        data_scope: list[dict[str, Any]] | None = None,
                        catalog: dict[str, Any] | None = None,
                        show_hidden: bool = False,
                        start_seq: str = "",
                        acl: Any = None,
                        **kwargs: Any) -> dict[str, Any]:
        """Subscribe a websocket to a document class; returns the subscription params.

        Args:
            websocket: websocket object (hashable)
            class_name: Document class name
            data_scope: the subset of documents to be sent (None: all)
            catalog: the fields to be sent (None: all non-hidden fields)
            show_hidden: send hidden fields or not
            start_seq: not interested in changes before this sequence (live changes only: nothing is replayed)
            acl: the subscriber's access control list (None: unrestricted)
            kwargs: kept in the returned params, as the original. Those with a meaning here (all opt-in):
                ``after_seq`` / ``from_seq``: replay the journal after / from this seq, then go live;
                ``exits=True``: receive scope exits (``X``); ``control=True``: control messages (and exits);
                ``strict=True``: refuse unknown scope paths, scope keys and catalog names;
                ``hidden_allowed=False``: refuse ``show_hidden`` and scopes naming hidden fields (4403).

        Raises:
            SubscriptionError: the scope, catalog or ACL is invalid (the websocket keeps its other
                subscriptions; a previous subscription to the same class stays in place).
        """
        sub_params = subscription_params(data_scope, catalog, show_hidden, start_seq, acl, **kwargs)
        hub = cls.hub()
        await hub.watch(class_name)
        hub.subscribe(websocket, class_name, sub_params, cls.document_classes.get(class_name),
                      strict=kwargs.get("strict") is True, exits=kwargs.get("exits") is True,
                      control=kwargs.get("control") is True,
                      hidden_allowed=kwargs.get("hidden_allowed", True) is not False)
        cls.active_connections.setdefault(class_name, {})[websocket] = sub_params
        return sub_params

    @classmethod
    def disconnect(cls, websocket: Any) -> None:
        """Remove the websocket from every class; what was queued for it is dropped."""
        for class_name in list(cls.active_connections):
            subscribers = cls.active_connections[class_name]
            subscribers.pop(websocket, None)
            if not subscribers:
                del cls.active_connections[class_name]
        conn = cls.hub().remove(websocket)
        transport = cls.__dict__.get("_transport")
        if conn is not None and transport is not None:
            transport.stop(conn)

    @classmethod
    async def send_message_async(cls, websocket: Any, message: str) -> None:
        """Send a message to the target websocket (transport hook).

        Args:
            websocket: websocket object
            message: message content
        """

    @classmethod
    async def send_json_async(cls, websocket: Any, content: dict[str, Any]) -> None:
        """Serialise ``content`` as JSON and send it with ``send_message_async``."""
        await cls.send_message_async(websocket, encode_json(content).decode())

    @classmethod
    def get_message_body(cls, doc: Any, data_scope: list[dict[str, Any]] | None,
                         catalog: dict[str, Any] | None, show_hidden: bool) -> dict[str, Any] | None:
        """The projected document if it is in ``data_scope``, else None.

        A document's own out-of-scope error (this package's :class:`OutOfScopeError`, xia-engine's, or any
        exception class named ``OutOfScopeError``) means "not in scope", as the original.
        """
        try:
            doc.check_scope(data_scope)
        except Exception as exc:
            if is_out_of_scope(exc):
                return None
            raise
        body: dict[str, Any] = doc.get_display_data(catalog=catalog, show_hidden=show_hidden)
        return body

    @classmethod
    def subscriber_is_connected(cls, websocket: Any) -> bool:
        """True while the websocket can be written to (transport hook)."""
        return True

    @classmethod
    def check_subscriber_acl(cls, doc: Any, acl: Any) -> bool:
        """True if ``acl`` may read ``doc``."""
        return bool(doc.check_acl(acl, "read", doc, False))

    @classmethod
    async def document_sent_async(cls, /, doc: Any, op: str, seq: str) -> None:
        """Fan one change out to every matching subscriber.

        Returns once the change is queued for every subscriber that may see it; sending happens in each
        websocket's own task, so no subscriber waits for another.

        Args:
            doc: the document (a :class:`Document`, or any object with the original document protocol)
            op: operation type (``I``, ``U``, ``D``)
            seq: sequence of the change
        """
        await cls.hub().publish(cls._change_of(doc, op, seq))

    # -- beyond the original ------------------------------------------------------------------------------

    @classmethod
    def publish(cls, class_name: str, op: str, data: Mapping[str, Any], seq: str | None = None,
                previous: Mapping[str, Any] | None = None) -> str:
        """Journal and fan out a change given as plain data (a JSON-ready dict with ``_id``); returns its seq.

        The change is checked first (:meth:`check_change`). The journal assigns the seq when none is given
        (sortable, increasing per class). ``previous`` is the document before the change; without it, the
        last version published of the same ``_id`` is used to find scope exits.
        """
        return cls.publish_checked(cls.check_change(class_name, op, data, previous), class_name, op, data, seq,
                                   previous)

    @classmethod
    def publish_checked(cls, schema: DocSchema | None, class_name: str, op: str, data: Mapping[str, Any],
                        seq: str | None = None, previous: Mapping[str, Any] | None = None) -> str:
        """:meth:`publish` for a change :meth:`check_change` accepted (``schema`` is what it returned)."""
        change = Change(class_name, op, seq or "", data, schema, prev=previous)
        cls._record(change)
        return change.seq

    @classmethod
    async def publish_async(cls, class_name: str, op: str, data: Mapping[str, Any], seq: str | None = None,
                            previous: Mapping[str, Any] | None = None) -> str:
        """:meth:`publish` through any backend (Redis Streams included): waits until the store holds the
        change; raises :class:`~xia_broadcast.journal.BackendUnavailable` when it cannot be reached."""
        schema = cls.check_change(class_name, op, data, previous)
        return await cls.hub().publish(Change(class_name, op, seq or "", data, schema, prev=previous))

    @classmethod
    def check_change(cls, class_name: str, op: Any, data: Any, previous: Any = None) -> DocSchema | None:
        """Check a change given as data, without publishing it; returns the class schema (None: undeclared).

        Raises :class:`DocumentError` naming the problem: an unknown op; a document (or previous state) that
        does not fit the class schema or, without a schema, is not an object with a string or integer
        ``_id``; a previous state of another ``_id``; a document nested deeper than ``MAX_NESTING``.
        """
        return check_change(cls.document_classes.get(class_name), class_name, op, data, previous)

    @classmethod
    def _record(cls, change: Change) -> None:
        """Hand the change to the Hub (journal, previous state, fan-out) without waiting (memory backend)."""
        hub = cls.hub()
        if hub.connections:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                raise RuntimeError("publish from the event loop that serves the subscribers "
                                   "(e.g. loop.call_soon_threadsafe from another thread)") from None
        hub.publish_nowait(change)

    @classmethod
    def _change_of(cls, doc: Any, op: str, seq: str) -> Change:
        """The change of a published document object. What is journaled is a copy taken now: an application
        that changes the same object and publishes it again does not change what was published before
        (replays and lagging subscribers get each state as it was)."""
        class_name = type(doc).__name__
        if isinstance(doc, Document):
            schema = doc.doc_schema()
            # a class published with a schema is known by it: hidden fields stay hidden everywhere
            cls.document_classes.setdefault(class_name, schema)
            if type(doc).keeps_default_protocol():
                # its data is what the compiled views read, and it gives the previous state for scope exits;
                # broadcasters overriding the hooks still get the document object itself
                hooks = cls.hub().hooks
                return Change(class_name, op, seq, doc.stored_data(), schema,
                              doc=doc.model_copy(deep=True) if hooks and hooks.for_every_change else None)
            return Change(class_name, op, seq, doc=doc.model_copy(deep=True))
        return Change(class_name, op, seq, doc=_snapshot(doc))

    @classmethod
    async def close_async(cls, websocket: Any, code: int, reason: str) -> None:
        """Close a websocket with a code and reason (transport hook; the default does nothing)."""

    @classmethod
    async def flush(cls, timeout: float = 5.0) -> bool:
        """Wait until every replay has gone live and every queued message has been handed to the
        transport; False on timeout."""
        return await cls.hub().idle(timeout)

    # -- draining queues ----------------------------------------------------------------------------------

    @classmethod
    async def send_batch_async(cls, websocket: Any, messages: list[Outgoing]) -> None:
        """Send queued messages, oldest first (transport hook; default: one ``send_message_async`` each).

        A transport that can write several messages at once overrides this. A subclass that overrides
        ``send_json_async`` (and not this) receives every message through it, as a dict, as the original.
        """
        if cls._overrides("send_json_async"):
            for out in messages:
                await cls.send_json_async(websocket, orjson.loads(out.data))
            return
        for out in messages:
            await cls.send_message_async(websocket, out.text)

    @classmethod
    def _overrides(cls, name: str) -> bool:
        """True when a subclass replaces ``Broadcaster.<name>``."""
        return bool(getattr(cls, name).__func__ is not getattr(Broadcaster, name).__func__)


def _snapshot(doc: Any) -> Any:
    """A deep copy of a document object (the object itself when it cannot be copied)."""
    try:
        return copy.deepcopy(doc)
    except Exception:
        log.debug("%s cannot be copied: journaled by reference", type(doc).__name__)
        return doc
