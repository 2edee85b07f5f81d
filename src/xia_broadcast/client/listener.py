"""An async listener that stays subscribed: reconnects after any drop and resumes where it stopped.

    async with Listener("ws://127.0.0.1:8765/ws", {"Order": {"data_scope": [...]}}) as listener:
        async for event in listener:
            match event:
                case DocumentMessage(): ...      # I / U / D
                case Exit(): ...                 # X: the document left the view
                case HistoryGone(): ...          # reload that class, then keep applying what follows

With ``snapshot=True`` (or ``"snapshot": True`` in a class's subscription) the listener keeps a collection
rather than following changes: the server first sends every stored document of the class in the view (``I``
messages, their seqs in no order), then the changes made meanwhile, then ``snapshot_done``
(:class:`SnapshotDone`), then live changes. The position of such a class is known from ``snapshot_done`` on;
after a drop it resumes with ``after_seq`` and ``epoch`` (the missed changes, then ``snapshot_done`` again),
or, when the server no longer holds that position, is sent :class:`Reset` and a fresh snapshot. A drop before
``snapshot_done`` cannot be resumed: the next connection asks for a fresh snapshot and the listener yields a
:class:`Reset` first, so that what was applied of the partial one is dropped. :class:`Collection` applies
these events.

The listener sends the original handshake (``{class: {data_scope, catalog, show_hidden}, "_header": {...}}``)
with ``"_options": {"control": true, "strict": true}``, so that it receives ``replay_done``, ``history_gone``
and exits, and so that a scope field or catalog name the class does not declare (a typo) is refused at once
(4420, 4421: :class:`Refused` with the server's reason) rather than matching nothing (``strict=False``: the
original's leniency). It
keeps the last seq of every class (the ``after_seq`` asked, else the confirmation's ``head_seq``, until a
message arrives), and after a drop reconnects with :class:`~xia_broadcast.client.backoff.Backoff` and asks
for ``after_seq`` that seq: the server replays what was missed through the same scope, catalog and ACL, then
continues live, so nothing is lost or repeated. A message whose seq is not after the last one of its class is
never yielded twice (the documents of a snapshot, before ``snapshot_done``, are all yielded).

Close codes that mean "this request will never be accepted as it is" (bad handshake, authentication,
permission, unknown class, invalid scope or catalog, too many subscriptions, message too big, snapshot
refused because the class's document store passed its bounds) and HTTP refusals of the upgrade (4xx but 408
and 429) end the iteration with :class:`Refused` instead of retrying. ``max_retries`` bounds the consecutive
failed attempts (:class:`GaveUp`); ``connect_attempts`` bounds the attempts made while the server has never
been reached (:class:`Unreachable`: nothing listening there, a host name that does not resolve).

Memory: one ``websockets`` client connection (its receive queue holds at most ``max_queue`` messages of at
most ``max_size`` bytes each: 4 of 16 MiB by default) and one seq string per class (and an epoch per snapshot
class). A server message that is not a message of the protocol (not JSON, wrong types) is logged, counted
(``protocol_errors``) and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import logging
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.uri import parse_uri

from ..core.protocol import (
    CLOSE_AUTH_FAILED,
    CLOSE_BAD_HANDSHAKE,
    CLOSE_FORBIDDEN,
    CLOSE_INVALID_CATALOG,
    CLOSE_INVALID_SCOPE,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_NO_CLASS,
    CLOSE_SNAPSHOT_REFUSED,
    CLOSE_TOO_MANY_SUBSCRIPTIONS,
)
from ..errors import XiaBroadcastError
from .backoff import Backoff
from .messages import (
    Connected,
    Control,
    DocumentMessage,
    Event,
    Exit,
    HistoryGone,
    ProtocolError,
    Reconnecting,
    ReplayDone,
    Reset,
    SnapshotDone,
    parse_message,
)

log = logging.getLogger("xia_broadcast.client")

#: close codes after which reconnecting with the same request cannot succeed
TERMINAL_CLOSE_CODES = frozenset({
    CLOSE_MESSAGE_TOO_BIG, CLOSE_BAD_HANDSHAKE, CLOSE_AUTH_FAILED, CLOSE_FORBIDDEN, CLOSE_NO_CLASS,
    CLOSE_INVALID_SCOPE, CLOSE_INVALID_CATALOG, CLOSE_TOO_MANY_SUBSCRIPTIONS, CLOSE_SNAPSHOT_REFUSED,
})
#: HTTP statuses refusing the upgrade that are worth retrying (others in 4xx are not)
RETRIED_HTTP_STATUSES = frozenset({408, 429})
#: the close code reported when a connection ends without a close frame (RFC 6455: abnormal closure)
ABNORMAL_CLOSURE = 1006

#: a bearer token, or a function (sync or async) that returns a fresh one; called on every connection
TokenSource = str | Callable[[], str | Awaitable[str]]
_SUB_KEYS = frozenset({"data_scope", "catalog", "show_hidden", "start_seq", "after_seq", "snapshot", "epoch"})


class ListenerError(XiaBroadcastError):
    """Base of the errors that end a listener's iteration."""


class Refused(ListenerError):
    """The server refused the subscription for good: close ``code`` and ``reason`` (``docs/protocol.md``,
    section 5), or an HTTP status refusing the upgrade (``code`` is then the HTTP status, e.g. 404)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}".strip())
        self.code = code
        self.reason = reason


class GaveUp(ListenerError):
    """``max_retries`` consecutive attempts failed; ``code`` and ``reason`` are the last failure's."""

    def __init__(self, code: int, reason: str, failures: int) -> None:
        super().__init__(f"gave up after {failures} failed attempts; last: {code} {reason}".strip())
        self.code = code
        self.reason = reason
        self.failures = failures


class Unreachable(GaveUp):
    """The server was never reached: ``connect_attempts`` attempts in a row, and none before them, got an
    answer from it (nothing listening at that address, a host name that does not resolve, no HTTP answer
    within ``open_timeout``); ``reason`` says why the last one failed (e.g. ``cannot connect: connection
    refused``)."""

    def __init__(self, url: str, reason: str, failures: int) -> None:
        ListenerError.__init__(self, f"{url} was never reached in {failures} attempts; last: {reason}")
        self.url = url
        self.code = ABNORMAL_CLOSURE
        self.reason = reason
        self.failures = failures


class _Drop(XiaBroadcastError):
    """Internal: the current connection ended (or could not be made) with ``code`` and ``reason``;
    ``reached`` is false when the attempt did not reach the server at all."""

    def __init__(self, code: int, reason: str, reached: bool = True) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason
        self.reached = reached


class Listener:
    """Subscribes to document classes and yields their messages, across reconnections, with ``async for``.

    Args:
        url: the server's WebSocket URL, e.g. ``ws://127.0.0.1:8765/ws``.
        subscriptions: ``{class_name: {data_scope, catalog, show_hidden, start_seq, after_seq, snapshot,
            epoch}}`` (a value may be ``None`` or ``{}`` for everything); the keys are those of the handshake
            (``docs/protocol.md``). ``after_seq`` replays what was published after that seq, then goes live
            (the explicit replay parameter). ``start_seq`` keeps its original meaning, a filter: messages
            with a seq before it are not yielded; this listener applies it itself and never sends it, so
            that it means the same on every server. ``snapshot`` (true or false) overrides the argument
            below for that class; with a snapshot, ``after_seq`` and ``epoch`` (a ``snapshot_done``'s seq and
            epoch, or a later seq) say that the caller holds the class's documents at that position already,
            and ``start_seq`` is refused.
        snapshot: subscribe to every class with a snapshot (see the module docstring).
        api_key, app_name: credentials sent in ``_header`` as ``X-Api-Key`` and ``X-App-Name``.
        token: a JWT sent in ``_header`` as ``Authorization: Bearer``; a function returning one is called for
            every connection and, when the server warns that the token expires, for a refresh.
        header: any other ``_header`` entries (sent as given; the three above override them).
        backoff: reconnection delays (default: 0.5 s doubling up to 30 s, full jitter).
        max_retries: consecutive failed attempts allowed before :class:`GaveUp` (None: retry forever).
        connect_attempts: attempts made while the server has never been reached (no attempt got an answer
            from it: nothing listening, a host name that does not resolve) before :class:`Unreachable`; once
            one has, only ``max_retries`` applies (None: no such limit).
        strict: ask the server for strict checking (``_options.strict``): a scope field, catalog name or
            subscription key the class does not declare is refused (4400, 4420, 4421: :class:`Refused`, with
            the server's reason naming it) instead of matching nothing. False: the original's leniency.
        open_timeout: seconds allowed for the TCP and WebSocket opening and for the server's confirmation.
        ping_interval, ping_timeout: client keepalive in seconds (None disables pings).
        max_size: largest message accepted from the server, in bytes.
        max_queue: messages received and not yet read that the connection holds before it stops reading
            (so at most ``max_queue * max_size`` bytes, 64 MiB by default, whatever the server sends).
        connect_kwargs: more keyword arguments for ``websockets.asyncio.client.connect`` (``ssl``,
            ``proxy``, ``additional_headers``...).

    Attributes:
        last_seq: ``{class_name: seq}``, the position every class resumes after (a snapshot class has one
            from its ``snapshot_done`` on, none while its snapshot is under way).
        epochs: ``{class_name: epoch}``, the epoch of each snapshot class's position (sent with it).
        confirmation: the server's last confirmation (``{class_name: accepted params}``).
        duplicates: messages the server sent twice and this listener dropped (0 with a correct server).
    """

    def __init__(self, url: str, subscriptions: Mapping[str, Mapping[str, Any] | None], *,
                 api_key: str | None = None, app_name: str | None = None, token: TokenSource | None = None,
                 header: Mapping[str, Any] | None = None, backoff: Backoff | None = None,
                 max_retries: int | None = None, open_timeout: float = 10.0,
                 ping_interval: float | None = 20.0, ping_timeout: float | None = 20.0,
                 max_size: int = 16 * 1024 * 1024, max_queue: int = 4,
                 connect_kwargs: Mapping[str, Any] | None = None, snapshot: bool = False,
                 strict: bool = True, connect_attempts: int | None = None) -> None:
        try:
            parse_uri(url)
        except InvalidURI as exc:
            raise ValueError(f"not a WebSocket URL: {url!r}") from exc
        if not subscriptions:
            raise ValueError("subscribe to at least one class")
        self.url = url
        if not isinstance(snapshot, bool):
            raise ValueError(f"snapshot must be true or false, not {snapshot!r}")
        if not isinstance(strict, bool):
            raise ValueError(f"strict must be true or false, not {strict!r}")
        if connect_attempts is not None and connect_attempts < 1:
            raise ValueError(f"connect_attempts must be at least 1 (None: no limit), not {connect_attempts!r}")
        self.strict = strict
        self.connect_attempts = connect_attempts
        #: whether some attempt reached the server (it answered the upgrade, or refused it)
        self.reached = False
        self.last_seq: dict[str, str] = {}
        self.epochs: dict[str, str] = {}
        self._start_seq: dict[str, str] = {}
        self._subs: dict[str, dict[str, Any]] = {}
        #: the classes subscribed with a snapshot
        self._snapshots: set[str] = set()
        #: snapshot classes whose documents were yielded since their last snapshot_done or reset: a drop now
        #: leaves the caller a partial collection, dropped by a Reset on the next connection
        self._partial: set[str] = set()
        for name, sub in subscriptions.items():
            sub = dict(sub or {})
            if name.startswith("_"):
                raise ValueError(f"{name!r} is not a class name (names starting with '_' are reserved)")
            if set(sub) - _SUB_KEYS:
                raise ValueError(f"{name}: unknown subscription keys {sorted(set(sub) - _SUB_KEYS)}")
            wants = sub.pop("snapshot", None)
            if wants is None:
                wants = snapshot
            if not isinstance(wants, bool):
                raise ValueError(f"{name}: snapshot must be true or false, not {wants!r}")
            epoch = sub.pop("epoch", None)
            after = sub.pop("after_seq", None)
            if after:
                self.last_seq[name] = str(after)
            start = sub.pop("start_seq", None)
            if epoch and not (wants and after):
                raise ValueError(f"{name}: epoch goes with a snapshot's after_seq")
            if epoch:
                self.epochs[name] = str(epoch)
            if wants:
                if start:
                    raise ValueError(f"{name}: a snapshot gives every document; start_seq cannot filter it")
                self._snapshots.add(name)
            if start:
                self._start_seq[name] = str(start)
            self._subs[name] = sub
        self._header = dict(header or {})
        if api_key is not None:
            self._header["X-Api-Key"] = api_key
        if app_name is not None:
            self._header["X-App-Name"] = app_name
        self._token = token
        self.backoff = backoff or Backoff()
        self.max_retries = max_retries
        self.open_timeout = open_timeout
        self._connect_kwargs: dict[str, Any] = {"ping_interval": ping_interval, "ping_timeout": ping_timeout,
                                                "max_size": max_size, "max_queue": max_queue,
                                                **(connect_kwargs or {})}
        self.confirmation: dict[str, Any] = {}
        self.duplicates = 0
        #: server messages skipped because they were not messages of the protocol (not JSON, wrong types)
        self.protocol_errors = 0
        self._ws: ClientConnection | None = None
        self._closing = asyncio.Event()
        self._iterating = False

    # -- public -------------------------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Event]:
        if self._iterating:
            raise RuntimeError("a Listener is iterated by one consumer at a time")
        return self._events()

    async def close(self) -> None:
        """Stop: the current connection is closed and the iteration ends (no error)."""
        self._closing.set()
        ws = self._ws
        if ws is not None:
            await ws.close()

    async def __aenter__(self) -> Listener:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def handshake(self) -> dict[str, Any]:
        """The first message of the next connection: the subscriptions, each with ``after_seq`` its last
        seq when one is known (a snapshot class: ``snapshot`` true, and its ``epoch`` with ``after_seq``),
        the credentials in ``_header`` and ``_options`` (``control``, and ``strict`` unless turned off)."""
        message: dict[str, Any] = {}
        for name, sub in self._subs.items():
            request = dict(sub)
            snapshot = name in self._snapshots
            if snapshot:
                request["snapshot"] = True
            last = self.last_seq.get(name)
            if last is not None:
                request["after_seq"] = last
                epoch = self.epochs.get(name)
                if snapshot and epoch:
                    request["epoch"] = epoch
            message[name] = request
        header = dict(self._header)
        if self._token is not None:
            header["Authorization"] = f"Bearer {await self._fresh_token()}"
        if header:
            message["_header"] = header
        message["_options"] = {"control": True, "strict": True} if self.strict else {"control": True}
        return message

    # -- the loop -----------------------------------------------------------------------------------------

    async def _events(self) -> AsyncIterator[Event]:
        self._iterating = True
        failures = 0
        attempts = 0
        try:
            while not self._closing.is_set():
                attempts += 1
                try:
                    async with contextlib.aclosing(self._connection(attempts)) as connection:
                        async for event in connection:
                            if isinstance(event, Connected):
                                failures = 0
                            yield event
                    return  # closed on purpose
                except _Drop as drop:
                    if self._closing.is_set():
                        return
                    if drop.code in TERMINAL_CLOSE_CODES:
                        raise Refused(drop.code, drop.reason) from None
                    failures += 1
                    if drop.reached:
                        self.reached = True
                    elif not self.reached and self.connect_attempts is not None \
                            and failures >= self.connect_attempts:
                        raise Unreachable(self.url, drop.reason, failures) from None
                    if self.max_retries is not None and failures > self.max_retries:
                        raise GaveUp(drop.code, drop.reason, failures) from None
                    delay = self.backoff.delay(failures)
                    log.info("reconnecting", extra={"code": drop.code, "reason": drop.reason, "delay": delay})
                    yield Reconnecting(drop.code, drop.reason, delay, failures, drop.reached)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._closing.wait(), delay)
        finally:
            self._iterating = False

    async def _connection(self, attempt: int) -> AsyncGenerator[Event, None]:
        """One connection: open, handshake, confirmation, then its messages. Raises :class:`_Drop` when it
        ends for any reason but :meth:`close`."""
        handshake = await self.handshake()
        ws = await self._open()
        if ws is None:  # close() was called while connecting
            return
        self.reached = True
        self._ws = ws
        try:
            if self._closing.is_set():  # close() was called while connecting
                return
            try:
                await ws.send(orjson.dumps(handshake).decode())
            except ConnectionClosed as exc:  # cut between the upgrade and the subscription message
                raise _dropped(exc) from None
            confirmation = await self._confirmation(ws)
            self.confirmation = confirmation
            heads: dict[str, str] = {}
            for name, params in confirmation.items():
                head = params.get("head_seq") if isinstance(params, dict) else None
                if isinstance(head, str):
                    heads[name] = head
                    # live only (no replay asked): resume from here; a replay sets it as it arrives (a
                    # snapshot class's position is its snapshot_done's)
                    if name not in self._snapshots:
                        self.last_seq.setdefault(name, head)
            resumed = {n: r["after_seq"] for n, r in handshake.items()
                       if not n.startswith("_") and "after_seq" in r and n in confirmation}
            yield Connected(confirmation, resumed, attempt)
            for name in sorted(self._partial):  # a snapshot cut short: this connection sends a fresh one
                self._partial.discard(name)
                yield Reset(name, local=True)
            seen: set[str] = set()  # classes with a document message on this connection
            while True:
                try:
                    raw = await ws.recv()
                except ConnectionClosed as exc:
                    if self._closing.is_set():
                        return
                    raise _dropped(exc) from None
                try:
                    event = _parse(raw)
                except ProtocolError as exc:  # one bad message: logged and skipped, the stream goes on
                    self.protocol_errors += 1
                    log.warning("server message skipped: %s", str(exc)[:200])
                    continue
                if isinstance(event, DocumentMessage | Exit):
                    last = self.last_seq.get(event.doc_class)
                    if last is None and event.doc_class in self._snapshots:
                        # a snapshot under way: its documents come with the seqs of their last changes, in
                        # no order, and no position holds until snapshot_done
                        self._partial.add(event.doc_class)
                        yield event
                        continue
                    if last is not None and event.seq <= last:
                        self.duplicates += 1
                        log.warning("duplicate dropped", extra={"class": event.doc_class, "seq": event.seq})
                        continue
                    self.last_seq[event.doc_class] = event.seq
                    seen.add(event.doc_class)
                    start = self._start_seq.get(event.doc_class)
                    if start is not None and event.seq < start:
                        continue  # before the subscription's start_seq: not wanted
                elif isinstance(event, SnapshotDone):
                    # the collection is whole at seq: from here on the class resumes after its last seq
                    if event.doc_class in self._snapshots:
                        last = self.last_seq.get(event.doc_class)
                        if last is None or event.seq > last:
                            self.last_seq[event.doc_class] = event.seq
                        self.epochs[event.doc_class] = event.epoch
                        self._partial.discard(event.doc_class)
                elif isinstance(event, Reset):
                    # the server no longer holds the position: a fresh snapshot follows
                    self.last_seq.pop(event.doc_class, None)
                    self.epochs.pop(event.doc_class, None)
                    self._partial.discard(event.doc_class)
                elif isinstance(event, ReplayDone):
                    last = self.last_seq.get(event.doc_class)
                    if event.doc_class not in self._snapshots and (last is None or event.seq > last):
                        self.last_seq[event.doc_class] = event.seq
                elif isinstance(event, HistoryGone):
                    # what follows is live from this connection's head on: resume from there next time
                    head = heads.get(event.doc_class)
                    if head is not None and event.doc_class not in seen and event.doc_class not in self._snapshots:
                        self.last_seq[event.doc_class] = head
                elif isinstance(event, Control) and event.kind == "token_expiring" and callable(self._token):
                    token = await self._fresh_token()
                    with contextlib.suppress(ConnectionClosed):
                        await ws.send(orjson.dumps({"_control": "refresh", "token": token}).decode())
                yield event
        finally:
            self._ws = None
            await ws.close()

    async def _open(self) -> ClientConnection | None:
        """The WebSocket opened, or None when :meth:`close` was called meanwhile (an attempt under way is
        abandoned: a close never waits for ``open_timeout``)."""

        async def attempt() -> ClientConnection:
            return await connect(self.url, open_timeout=self.open_timeout, **self._connect_kwargs)

        opening = asyncio.ensure_future(attempt())
        opening.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: never "unretrieved"
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait((opening, closing), return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            if not opening.done():
                opening.cancel()
        if not opening.done():  # close() won: let the abandoned attempt clean up its socket
            await asyncio.wait((opening,))
        if opening.cancelled():
            return None
        try:
            ws = opening.result()
        except InvalidStatus as exc:
            status = exc.response.status_code
            reason = exc.response.body.decode(errors="replace")[:200] if exc.response.body else ""
            if 400 <= status < 500 and status not in RETRIED_HTTP_STATUSES:
                raise Refused(status, f"HTTP {status} {reason}".strip()) from None
            raise _Drop(ABNORMAL_CLOSURE, f"HTTP {status}") from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise _Drop(ABNORMAL_CLOSURE, f"cannot connect: {_why(exc, self.open_timeout)}", reached=False) from None
        if self._closing.is_set():
            await ws.close()
            return None
        return ws

    async def _confirmation(self, ws: ClientConnection) -> dict[str, Any]:
        try:
            raw = await asyncio.wait_for(ws.recv(), self.open_timeout)
        except ConnectionClosed as exc:
            raise _dropped(exc) from None
        except TimeoutError:
            raise _Drop(ABNORMAL_CLOSURE, "no confirmation from the server") from None
        try:
            confirmation = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(f"the confirmation is not JSON: {exc}") from None
        if not isinstance(confirmation, dict):
            raise ProtocolError("the confirmation is not a JSON object")
        return confirmation

    async def _fresh_token(self) -> str:
        token = self._token
        if token is None or isinstance(token, str):
            return token or ""
        value = token()
        if inspect.isawaitable(value):
            value = await value
        return str(value)


def _why(exc: BaseException, timeout: float) -> str:
    """Why a connection could not be made, in words: ``connection refused``, ``timed out after 10 s``..."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror or exc})"
    text = str(exc) or type(exc).__name__
    # asyncio reports one error per address tried ("Multiple exceptions: [Errno 111] ..., [Errno 111] ...")
    refused = f"[Errno {errno.ECONNREFUSED}]"
    if isinstance(exc, ConnectionRefusedError) or (text.startswith("Multiple exceptions:")
                                                   and text.count("[Errno ") == text.count(refused)):
        return "connection refused"
    return text


def _dropped(exc: ConnectionClosed) -> _Drop:
    if exc.rcvd is not None:
        return _Drop(exc.rcvd.code, exc.rcvd.reason)
    return _Drop(ABNORMAL_CLOSURE, "connection lost")


def _parse(raw: str | bytes) -> Event:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"a server message is not JSON: {exc}") from None
    return parse_message(obj)
