"""The service behind every transport: admission, handshake, authentication, subscriptions, publishing,
health. It holds the server's :class:`~xia_broadcast.hub.Hub`.

A server (native or ASGI) owns sockets and bytes; it gives the Hub its transport when it makes the service,
asks :meth:`Service.admit` for each new WebSocket, calls :meth:`Service.open_session` with its first message,
:meth:`Service.note_close` for every close it sends, :meth:`Service.publish_http` with the body of a
``POST /publish``, and reads :meth:`Service.health`/:meth:`Service.ready`/:meth:`Service.metrics_text` for the
operations endpoints. In-process publishers call :meth:`Service.publish` (any backend) or
:meth:`Service.publish_nowait` (the memory backend).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, cast

import orjson

from ..core.change import Change, check_change
from ..core.protocol import (
    CLOSE_AUTH_FAILED,
    CLOSE_GOING_AWAY,
    CLOSE_INVALID_DATA,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_NO_CLASS,
    CLOSE_TOO_MANY_CONNECTIONS,
    CLOSE_TRY_AGAIN,
    Refusal,
    acl_may_read_class,
    parse_handshake,
    subscription_params,
)
from ..errors import DocumentError, HttpError, SubscriptionError
from ..fanout import W, encode_json
from ..hub import Hub, HubSettings
from ..journal import BackendUnavailable, make_backend
from ..journal.store import StoreBounds
from ..transport import Transport
from .auth import Authenticator, AuthError, Principal
from .collector import CollectorPolicy
from .config import Settings
from .metrics import Metrics

log = logging.getLogger("xia_broadcast.server")


class PublishError(HttpError):
    """A refused ``POST /publish``: HTTP ``status``, a stable ``error`` code and a message naming the problem."""

    def body(self) -> bytes:
        return orjson.dumps({"error": self.error, "message": str(self)})


@dataclass(slots=True)
class Session:
    """An accepted WebSocket: who it is, whether it asked for control messages, and the timers of its token's
    expiry. Its first message is not kept (the subscriptions live in the Hub): per connection, that would be
    a few objects as big as the request, for every full garbage collection to visit."""

    principal: Principal
    control: bool
    timers: list[asyncio.TimerHandle] = field(default_factory=list)

    def cancel_timers(self) -> None:
        for t in self.timers:
            t.cancel()
        self.timers.clear()


#: close codes counted as refusals (``xia_refusals_total``): every code of ours, and invalid or oversized data
REFUSAL_CODES = frozenset({CLOSE_INVALID_DATA, CLOSE_MESSAGE_TOO_BIG})

#: control clients are told this many seconds (at most half the token's remaining life) before expiry
EXPIRY_WARNING = 30.0


class Service(Generic[W]):
    """One server's state: settings, its Hub (on the backend the settings name, writing through
    ``transport``), authentication, metrics, connection admission and the refusal count."""

    def __init__(self, settings: Settings, transport: Transport[W]) -> None:
        self.settings = settings
        self.hub: Hub[W] = Hub(
            make_backend(settings.redis_url, redis_prefix=settings.redis_prefix, data=settings.data,
                         durability=settings.journal_durability,
                         max_count=settings.journal_max_count, max_age=settings.journal_max_age,
                         max_bytes=settings.journal_max_bytes, max_total_bytes=settings.journal_max_total_bytes,
                         store=StoreBounds(settings.store_max_documents, settings.store_max_bytes,
                                           settings.store_max_total_bytes)),
            HubSettings(queue_messages=settings.queue_messages, queue_bytes=settings.queue_bytes,
                        total_queue_bytes=settings.max_queued_bytes,
                        max_tracked_ids=settings.max_tracked_ids, limits=settings.subscription_limits()),
            transport, schemas=dict(settings.classes))
        self.auth = Authenticator(settings)
        self.collector = CollectorPolicy(settings.gc_freeze_interval)
        self.metrics = Metrics(self)
        #: WebSockets admitted and not yet released
        self.connection_count = 0
        #: the bound in force (``max_connections``, lowered by a server whose fd limit cannot hold that many)
        self.max_connections = settings.max_connections
        #: connections refused or closed with an error code (:meth:`note_close`)
        self.refusals = 0
        self.shutting_down = False

    async def start(self) -> None:
        """Start the Hub's backend (Redis: connect and tail; it keeps retrying while Redis is down) and the
        garbage-collector policy."""
        await self.hub.start()
        self.collector.start()

    async def stop(self) -> None:
        await self.collector.stop()
        await self.hub.close()

    # -- admission ------------------------------------------------------------------------------------

    def admit(self) -> Refusal | None:
        """Count a new WebSocket; the refusal it gets (None: admitted): 1001 while shutting down, 4503 over
        ``max_connections``. Every WebSocket counted here is :meth:`release`-d once gone, refused or not."""
        self.connection_count += 1
        if self.shutting_down:
            return Refusal(CLOSE_GOING_AWAY, "shutting down")
        if self.connection_count > self.max_connections:
            return Refusal(CLOSE_TOO_MANY_CONNECTIONS, "too many connections")
        return None

    def release(self) -> None:
        self.connection_count -= 1

    def note_close(self, code: int) -> None:
        """A WebSocket is being closed with ``code``: a refusal is counted (codes 4000 and above, 1007, 1009)."""
        if code >= 4000 or code in REFUSAL_CODES:
            self.refusals += 1

    # -- subscribers --------------------------------------------------------------------------------------

    def class_known(self, class_name: str) -> bool:
        return self.settings.allow_undeclared_classes or class_name in self.hub.schemas

    async def open_session(self, websocket: W, message: str | bytes,
                           upgrade_headers: Mapping[str, Any] | None = None) -> Session:
        """Authenticate and subscribe a websocket from its first message, and queue the confirmation.

        The confirmation ``{class_name: accepted params}`` is queued ahead of any change, so it is always
        the first message the client receives. Raises :class:`Refusal` (nothing stays subscribed then).
        """
        handshake = parse_handshake(message, self.settings.max_subscriptions)
        try:
            principal = self.auth.subscriber(handshake.header, upgrade_headers)
        except AuthError as exc:
            raise Refusal(CLOSE_AUTH_FAILED, str(exc)) from exc
        known = [c for c in handshake.requests if self.class_known(c)]
        unknown = [c for c in handshake.requests if c not in known]
        if unknown and handshake.strict:  # a typo in a class name fails loudly, not by silence
            served = ", ".join(sorted(self.hub.schemas)) or "none declared"
            raise Refusal(CLOSE_NO_CLASS, f"Class requested Not Found: {', '.join(unknown)[:40]}; "
                                          f"this server serves: {served}")
        if not known:
            if not handshake.options:  # an original client: the original's reason, exactly
                raise Refusal(CLOSE_NO_CLASS, "Class requested Not Found")
            # a client of this protocol is told what it could ask for (it passed authentication)
            served = ", ".join(sorted(self.hub.schemas)) or "none declared"
            raise Refusal(CLOSE_NO_CLASS, f"Class requested Not Found; this server serves: {served}")
        hidden_allowed = principal.show_hidden or not self.settings.show_hidden_requires_grant
        start_time = time.time()
        subscribed: dict[str, Any] = {}
        notes: list[bytes] = []
        try:
            for c in known:  # every wait first: from here to the confirmation nothing may run before it
                # a declared class gets its epoch now; a name only allowed by allow_undeclared_classes
                # leaves nothing in the store until someone publishes it
                await self.hub.watch(c, create=c in self.hub.schemas)
        except BackendUnavailable as exc:  # the backend says so in its own log, once per outage
            raise Refusal(CLOSE_TRY_AGAIN, "journal unavailable, retry later") from exc
        hub = self.hub
        try:
            for c in known:
                params = subscription_params(**handshake.requests[c], acl=principal.acl,
                                             user_name=principal.user_name, start_time=start_time)
                hub.subscribe(websocket, c, params, strict=handshake.strict, exits=handshake.exits,
                              control=handshake.control, hidden_allowed=hidden_allowed)
                subscribed[c] = {**params, "head_seq": hub.head(c), "epoch": hub.epoch(c)}
                if handshake.control and principal.acl is not None and \
                        not acl_may_read_class(principal.acl.content, c):
                    notes.append(encode_json({"_control": "acl_reads_nothing", "class": c}))
        except SubscriptionError as exc:
            hub.remove(websocket)
            raise Refusal(exc.code, exc.reason) from exc
        hub.send_direct(websocket, encode_json(subscribed))
        for note in notes:
            hub.send_direct(websocket, note)
        log.info("subscribed", extra={"user": principal.user_name, "classes": known})
        self.collector.note_subscribed()
        return Session(principal, handshake.control)

    def arm_expiry(self, websocket: W, session: Session, close: Callable[[int, str], Any]) -> None:
        """Close with 4401 when the session's token expires; warn a control client before that."""
        session.cancel_timers()
        expires_at = session.principal.expires_at
        if expires_at is None:
            return
        loop = asyncio.get_running_loop()
        left = expires_at - time.time()
        if session.control:
            warn_in = max(0.0, left - min(EXPIRY_WARNING, left / 2))
            session.timers.append(loop.call_later(warn_in, self.hub.send_direct, websocket,
                                                  encode_json({"_control": "token_expiring",
                                                               "expires_at": expires_at})))
        session.timers.append(loop.call_later(max(0.0, left), close, CLOSE_AUTH_FAILED, "token expired"))

    def client_message(self, websocket: W, session: Session, message: str | bytes,
                       close: Callable[[int, str], Any]) -> None:
        """A message after the handshake. ``{"_control": "refresh", "token": "<jwt>"}`` extends the session
        with a new token of the same user and ACL; anything else is ignored, as the original does.
        Raises :class:`Refusal` (4401) for a refresh that fails."""
        try:
            obj = orjson.loads(message)
        except orjson.JSONDecodeError:
            return
        if not isinstance(obj, dict) or obj.get("_control") != "refresh":
            return
        token = obj.get("token")
        if not isinstance(token, str):
            raise Refusal(CLOSE_AUTH_FAILED, "refresh needs a token")
        try:
            principal = self.auth.subscriber({"Authorization": f"Bearer {token}"})
        except AuthError as exc:
            raise Refusal(CLOSE_AUTH_FAILED, f"refresh failed: {exc}") from exc
        old = session.principal
        if principal.user_name != old.user_name or principal.acl != old.acl or \
                principal.show_hidden != old.show_hidden:
            raise Refusal(CLOSE_AUTH_FAILED, "refreshed token changes the user, the ACL or show_hidden: reconnect")
        session.principal = principal
        self.arm_expiry(websocket, session, close)
        if session.control:
            self.hub.send_direct(
                websocket, encode_json({"_control": "token_refreshed", "expires_at": principal.expires_at}))

    def close_session(self, websocket: W, session: Session | None = None) -> None:
        """The WebSocket is gone (or failed): its timers stop, its subscriptions and queue are dropped."""
        if session is not None:
            session.cancel_timers()
        self.hub.remove(websocket)

    # -- publishers ---------------------------------------------------------------------------------------

    async def publish_http(self, headers: Mapping[str, Any], body: bytes) -> list[str]:
        """Apply a ``POST /publish`` body (one change or ``{"changes": [...]}``); returns the seqs.

        Every change is checked before any is applied, so a refused batch applies nothing (with Redis, a
        batch is appended change by change: a failure part-way answers 503 naming how many were applied).
        On the memory backend nothing here waits. Raises :class:`PublishError` (503 ``unavailable`` when the
        backend cannot be reached).
        """
        try:
            self.auth.publisher(headers)
        except AuthError as exc:
            raise PublishError(401, "unauthorized", str(exc)) from exc
        if len(body) > self.settings.max_publish_size:
            raise PublishError(413, "too_large", f"body over {self.settings.max_publish_size} bytes")
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise PublishError(400, "bad_json", f"body is not JSON: {exc}") from exc
        if isinstance(obj, dict) and "changes" in obj:
            if set(obj) != {"changes"} or not isinstance(obj["changes"], list) or not obj["changes"]:
                raise PublishError(400, "bad_request", "a batch is {\"changes\": [change, ...]} (not empty)")
            changes = obj["changes"]
        elif isinstance(obj, list):
            raise PublishError(400, "bad_request", "a batch is {\"changes\": [change, ...]}, not a bare list")
        else:
            changes = [obj]
        checked = [self._check_change(i, c) for i, c in enumerate(changes)]
        try:
            return await self.hub.publish_many(checked)
        except BackendUnavailable as exc:
            raise PublishError(503, "unavailable", f"journal unavailable after {exc.published} of "
                                                   f"{len(checked)} changes: {exc}") from exc

    async def publish(self, class_name: str, op: str, doc: Mapping[str, Any],
                      previous: Mapping[str, Any] | None = None) -> str:
        """Publish one change in-process, through any backend; returns its seq. Raises
        :class:`DocumentError` for a change that does not fit its class, :class:`BackendUnavailable` when
        the backend cannot be reached."""
        return await self.hub.publish(self._change(class_name, op, doc, previous))

    def publish_nowait(self, class_name: str, op: str, doc: Mapping[str, Any],
                       previous: Mapping[str, Any] | None = None) -> str:
        """:meth:`publish` without waiting, on a backend that never waits (the memory one; RuntimeError on
        another). Call it from the event loop that serves the subscribers."""
        return self.hub.publish_nowait(self._change(class_name, op, doc, previous))

    def _change(self, class_name: str, op: Any, doc: Mapping[str, Any], previous: Mapping[str, Any] | None) -> Change:
        """The change, once :func:`check_change` accepted it (``op`` is one of the ops then)."""
        schema = check_change(self.hub.schemas.get(class_name), class_name, op, doc, previous)
        return Change(class_name, op, "", doc, schema, prev=previous)

    def _check_change(self, index: int, change: Any) -> Change:
        where = f"change {index}"
        if not isinstance(change, dict):
            raise PublishError(400, "bad_request", f"{where}: a change is an object {{class, op, doc}}")
        extra = set(change) - {"class", "op", "doc", "previous"}
        if extra:
            raise PublishError(400, "bad_request", f"{where}: unknown keys {sorted(extra)}")
        class_name, op, doc = change.get("class"), change.get("op"), change.get("doc")
        if not isinstance(class_name, str) or not self.class_known(class_name):
            raise PublishError(404, "unknown_class", f"{where}: unknown class {class_name!r}")
        previous = change.get("previous")
        try:
            return self._change(class_name, op, cast(dict[str, Any], doc), previous)  # checked there
        except DocumentError as exc:
            raise PublishError(422, "invalid_change", f"{where}: {exc}") from exc

    # -- operations ---------------------------------------------------------------------------------------

    def ready(self) -> bool:
        """Serving: not shutting down, and the Hub's backend started and reachable."""
        return not self.shutting_down and self.hub.ready

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "connections": self.connection_count, "views": self.hub.view_count(),
                "shutting_down": self.shutting_down}

    def metrics_text(self) -> bytes:
        return self.metrics.render()
