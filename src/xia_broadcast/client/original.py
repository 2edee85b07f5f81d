"""The listener in the shape of the original ``xia-broadcast-listener``, for code moving from it.

    listener = BroadcastListener("ws://host:8765/ws", {"app_name": "shop", "api_key": "XIA_SHOP_KEY"},
                                 {"Order": {"data_scope": [...], "catalog": {...}}})
    await listener.listen(on_open, on_message, on_error, on_close)

The constructor takes what the original's does (``uri``, ``header``, ``channel_config``); ``listen`` takes
the original's callbacks in the original's order, or they are given to the constructor by name. Callbacks may
be plain functions (as the original's) or coroutine functions:

- ``on_open()``: a connection is open and confirmed (after every reconnection too);
- ``on_message(message: dict)``: one document message, as the server sent it
  (``{"doc_class", "op", "seq", "message"}``);
- ``on_close(code: int, reason: str)``: the connection dropped; the listener reconnects and resumes;
- ``on_error(error: Exception)``: the server refused the subscription for good (or ``max_retries`` was
  exceeded); ``listen`` returns after it. Without ``on_error``, ``listen`` raises the error.

Unlike the original, it reconnects after any drop with backoff and jitter, and resumes after the last seq
received, so nothing is lost or repeated. Exits (``X``) and control messages are ops the original never
received: they reach ``on_message`` only with ``exits=True``, and ``on_control(message: dict)`` when given.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any

from .listener import Listener, ListenerError
from .messages import (
    Connected,
    Control,
    DocumentMessage,
    Exit,
    HistoryGone,
    Reconnecting,
    ReplayDone,
    Reset,
    SnapshotDone,
)

Callback = Callable[..., Any]
#: an ``api_key`` starting with this names the environment variable that holds the key, as in the original
ENV_PREFIX = "XIA_"


def header_entries(header: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``_header`` the original sends for its ``header`` argument.

    ``{"app_name": A, "api_key": K}`` becomes ``{"X-App-Name": A, "X-Api-Key": K}``; a ``K`` starting with
    ``XIA_`` that names an environment variable is replaced by that variable's value (the original's
    ``OsEnvironField``). Entries already in wire form (``X-App-Name``, ``Authorization``...) pass as given.
    """
    out: dict[str, Any] = {}
    for key, value in (header or {}).items():
        if key == "app_name":
            out["X-App-Name"] = value
        elif key == "api_key":
            if isinstance(value, bytes):
                value = value.decode()
            if isinstance(value, str) and value.startswith(ENV_PREFIX) and value in os.environ:
                value = os.environ[value]
            out["X-Api-Key"] = value
        else:
            out[key] = value
    return out


class BroadcastListener:
    """The original listener's interface on top of :class:`~xia_broadcast.client.listener.Listener`.

    Args:
        uri: the server's WebSocket URL.
        header: credentials, ``{"app_name": ..., "api_key": ...}`` as the original (see
            :func:`header_entries`), or ``_header`` entries as sent on the wire.
        channel_config: ``{class_name: {data_scope, catalog, show_hidden, start_seq}}``, as the original.
        on_open, on_message, on_close, on_error: default callbacks for :meth:`listen`.
        on_control: receives ``replay_done`` and ``history_gone`` (``{"_control": ...}``) when given, and
            ``snapshot_done`` and ``reset`` for a class subscribed with ``"snapshot": true``.
        exits: pass exits (op ``X``) to ``on_message`` too.
        **listener_options: passed to :class:`Listener` (``backoff``, ``max_retries``, ``token``...). Unlike
            :class:`Listener`, it does not ask for strict checking unless given ``strict=True``: like the
            original, a scope field or catalog name the class does not declare is accepted (it matches
            nothing).
    """

    def __init__(self, uri: str, header: Mapping[str, Any] | None, channel_config: Mapping[str, Any], *,
                 on_open: Callback | None = None, on_message: Callback | None = None,
                 on_close: Callback | None = None, on_error: Callback | None = None,
                 on_control: Callback | None = None, exits: bool = False, **listener_options: Any) -> None:
        self.uri = uri
        self.header = header_entries(header)
        self.channel_config = {name: dict(sub or {}) for name, sub in channel_config.items()}
        self.on_open, self.on_message, self.on_close, self.on_error = on_open, on_message, on_close, on_error
        self.on_control = on_control
        self.exits = exits
        # the original's leniency: what the original listener sent is accepted as it was
        self.listener_options = {"strict": False, **listener_options}
        self.listener: Listener | None = None

    async def listen(self, on_open: Callback | None = None, on_message: Callback | None = None,
                     on_error: Callback | None = None, on_close: Callback | None = None,
                     id_only: bool = False) -> None:
        """Receive messages until :meth:`close` or a final refusal, calling the callbacks (the original's
        order: ``on_open, on_message, on_error, on_close``). ``id_only``: ask for ``_id`` only."""
        on_open = on_open or self.on_open
        on_message = on_message or self.on_message
        on_error = on_error or self.on_error
        on_close = on_close or self.on_close
        config = self.channel_config
        if id_only:
            config = {name: {**sub, "catalog": {"_id": None}} for name, sub in config.items()}
        self.listener = Listener(self.uri, config, header=self.header, **self.listener_options)
        try:
            async for event in self.listener:
                if isinstance(event, Connected):
                    await _call(on_open)
                elif isinstance(event, Reconnecting):
                    await _call(on_close, event.code, event.reason)
                elif isinstance(event, DocumentMessage) or (isinstance(event, Exit) and self.exits):
                    await _call(on_message, event.to_wire())
                elif isinstance(event, ReplayDone | HistoryGone | SnapshotDone | Reset | Control):
                    await _call(self.on_control, event.to_wire())
        except ListenerError as exc:
            if on_error is None:
                raise
            await _call(on_error, exc)

    async def close(self) -> None:
        """Stop listening: :meth:`listen` returns."""
        if self.listener is not None:
            await self.listener.close()


async def _call(callback: Callback | None, *args: Any) -> None:
    if callback is None:
        return
    result = callback(*args)
    if inspect.isawaitable(result):
        await result
