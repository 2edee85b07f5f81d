"""The service behind every transport: handshake, authentication, subscriptions, publishing, health.

A transport (native or ASGI) owns sockets and bytes; it calls :meth:`Service.open_session` with the first
message of a WebSocket, :meth:`Service.publish_http` with the body of a ``POST /publish``, and reads
:meth:`Service.health`/:meth:`Service.ready`/:meth:`Service.metrics_text` for the operations endpoints.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import orjson

from ..broadcast import Broadcaster
from ..core.change import Change
from ..core.protocol import (
    CLOSE_AUTH_FAILED,
    CLOSE_NO_CLASS,
    Refusal,
    acl_may_read_class,
    parse_handshake,
)
from ..core.schema import DocSchema
from ..errors import DocumentError, HttpError, SubscriptionError
from ..fanout import encode_json
from ..hub import Hub, HubSettings
from ..journal import Backend, BackendUnavailable, MemoryBackend
from .auth import Authenticator, AuthError, Principal
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


#: options given to ``subscribe`` that are not part of the original's confirmation
_OPTION_KWARGS = frozenset({"control", "exits", "strict", "hidden_allowed"})

#: control clients are told this many seconds (at most half the token's remaining life) before expiry
EXPIRY_WARNING = 30.0


class Service:
    """One server's state: settings, the broadcaster class it fans out with, authentication, metrics."""

    def __init__(self, settings: Settings, broadcaster: type[Broadcaster]) -> None:
        self.settings = settings
        self.broadcaster = broadcaster
        for schema in settings.classes.values():
            broadcaster.register_class(schema)
        #: this service's own Hub, made from its settings (never one made earlier from class defaults)
        self.hub = broadcaster.use_hub(Hub(
            make_backend(settings),
            HubSettings(queue_messages=settings.queue_messages, queue_bytes=settings.queue_bytes,
                        max_tracked_ids=settings.max_tracked_ids, limits=settings.subscription_limits())))
        self.auth = Authenticator(settings)
        self.metrics = Metrics(self)
        self.connection_count = 0
        self.refusals = 0
        self.shutting_down = False
        self.started = False

    async def start(self) -> None:
        """Start the Hub's backend (Redis: connect and tail; it keeps retrying while Redis is down)."""
        await self.hub.start()
        self.started = True

    async def stop(self) -> None:
        await self.hub.close()

    # -- subscribers --------------------------------------------------------------------------------------

    def class_known(self, class_name: str) -> bool:
        return self.settings.allow_undeclared_classes or class_name in self.broadcaster.document_classes

    async def open_session(self, websocket: Any, message: str | bytes,
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
        if not known:
            raise Refusal(CLOSE_NO_CLASS, "Class requested Not Found")
        hidden_allowed = principal.show_hidden or not self.settings.show_hidden_requires_grant
        start_time = time.time()
        subscribed: dict[str, Any] = {}
        notes: list[bytes] = []
        for c in known:  # every wait first: from here to the confirmation nothing may run before it
            await self.hub.watch(c)
        try:
            for c in known:
                params = await self.broadcaster.subscribe(
                    websocket, c, **handshake.requests[c], acl=principal.acl, user_name=principal.user_name,
                    start_time=start_time, control=handshake.control, exits=handshake.exits,
                    strict=handshake.strict, hidden_allowed=hidden_allowed)
                subscribed[c] = {k: v for k, v in params.items() if k not in _OPTION_KWARGS}
                subscribed[c]["head_seq"] = self.hub.head(c)
                subscribed[c]["epoch"] = self.hub.epoch(c)
                if handshake.control and principal.acl is not None and \
                        not acl_may_read_class(principal.acl.content, c):
                    notes.append(encode_json({"_control": "acl_reads_nothing", "class": c}))
        except SubscriptionError as exc:
            self.broadcaster.disconnect(websocket)
            raise Refusal(exc.code, exc.reason) from exc
        engine = self.hub
        engine.send_direct(websocket, encode_json(subscribed))
        for note in notes:
            engine.send_direct(websocket, note)
        log.info("subscribed", extra={"user": principal.user_name, "classes": known})
        return Session(principal, handshake.control)

    def arm_expiry(self, websocket: Any, session: Session, close: Callable[[int, str], Any]) -> None:
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

    def client_message(self, websocket: Any, session: Session, message: str | bytes,
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

    def close_session(self, websocket: Any, session: Session | None = None) -> None:
        if session is not None:
            session.cancel_timers()
        self.broadcaster.disconnect(websocket)

    # -- publishers ---------------------------------------------------------------------------------------

    def publish_http(self, headers: Mapping[str, Any], body: bytes) -> list[str] | Awaitable[list[str]]:
        """Apply a ``POST /publish`` body (one change or ``{"changes": [...]}``); returns the seqs, or, with
        a backend that publishes asynchronously (Redis), an awaitable of them.

        Every change is checked before any is applied, so a refused batch applies nothing (with Redis, a
        batch is appended change by change: a failure part-way answers 503 naming how many were applied).
        Raises :class:`PublishError` (503 ``unavailable`` when the backend cannot be reached).
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
        else:
            changes = [obj]
        checked = [self._check_change(i, c) for i, c in enumerate(changes)]
        if self.hub.synchronous:
            return [self.broadcaster.publish_checked(schema, cls, op, doc, previous=prev)
                    for schema, cls, op, doc, prev in checked]
        return self._publish_async(checked)

    async def _publish_async(self, checked: list[tuple[DocSchema | None, str, str, dict[str, Any],
                                                        dict[str, Any] | None]]) -> list[str]:
        seqs: list[str] = []
        for schema, cls, op, doc, prev in checked:
            try:
                seqs.append(await self.hub.publish(Change(cls, op, "", doc, schema, prev=prev)))
            except BackendUnavailable as exc:
                raise PublishError(503, "unavailable", f"journal unavailable after {len(seqs)} of "
                                                       f"{len(checked)} changes: {exc}") from exc
        return seqs

    def _check_change(self, index: int, change: Any) -> tuple[DocSchema | None, str, str, dict[str, Any],
                                                               dict[str, Any] | None]:
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
            schema = self.broadcaster.check_change(class_name, op, doc, previous)
        except DocumentError as exc:
            raise PublishError(422, "invalid_change", f"{where}: {exc}") from exc
        return schema, class_name, str(op), cast(dict[str, Any], doc), previous  # checked just above

    # -- operations ---------------------------------------------------------------------------------------

    def ready(self) -> bool:
        """Serving: started, not shutting down, and the journal backend reachable."""
        return self.started and not self.shutting_down and self.hub.ready

    def health(self) -> dict[str, Any]:
        engine = self.hub
        return {"status": "ok", "connections": self.connection_count, "views": engine.view_count(),
                "shutting_down": self.shutting_down}

    def metrics_text(self) -> bytes:
        return self.metrics.render()


def make_backend(settings: Settings) -> Backend:
    """The journal backend the settings name: Redis Streams with ``redis_url``, else the memory one."""
    if settings.redis_url:
        from ..journal.redis import RedisBackend
        return RedisBackend(settings.redis_url, prefix=settings.redis_prefix, max_count=settings.journal_max_count,
                            max_age=settings.journal_max_age)
    return MemoryBackend(max_count=settings.journal_max_count, max_age=settings.journal_max_age,
                         max_bytes=settings.journal_max_bytes, max_total_bytes=settings.journal_max_total_bytes,
                         accept_out_of_order=True)
