"""The wire protocol's pure parts: close codes, the handshake parser, control messages.

The handshake is the original listener's first message: a JSON object
``{class_name: {data_scope, catalog, show_hidden, start_seq}, ..., "_header": {...}}``. Keys starting with
``_`` are never class names: ``_header`` carries credentials, ``_options`` opts in to what is new
(``control``, ``exits``, ``strict``); other ``_`` keys are ignored. Keys of a subscription that the
server does not use are passed on and echoed in the confirmation, as the original passes them to
``subscribe`` as ``**kwargs``; what the server derives itself (``acl``, ``user_name``, ``start_time``) is
never taken from the client. Every refusal is a :class:`Refusal` with its close code (``docs/protocol.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import XiaBroadcastError
from .acl import act_grants

# Close codes, in one table. 4400, 4401 and 4404 are the original's; 1001, 1007 and 1009 are RFC 6455's.
CLOSE_GOING_AWAY = 1001  #: server shutting down (after flushing what was queued)
CLOSE_INVALID_DATA = 1007  #: a text message that is not valid UTF-8
CLOSE_MESSAGE_TOO_BIG = 1009  #: an inbound message exceeded max_message_size
CLOSE_TRY_AGAIN = 1013  #: the journal cannot be reached (cluster mode: Redis away): retry later
CLOSE_BAD_HANDSHAKE = 4400  #: bad, missing or late first message
CLOSE_AUTH_FAILED = 4401  #: authentication missing or failed (also: token expired while connected)
CLOSE_FORBIDDEN = 4403  #: hidden fields (show_hidden, or a scope on a hidden field) without the permission
CLOSE_FLOOD = 4408  #: the client sent more frames than the protocol needs (client_frame_burst, client_frame_rate)
CLOSE_NO_CLASS = 4404  #: no requested class is known
CLOSE_TOO_SLOW = 4409  #: the client fell behind the journal's retention, or does not read what it asks for
CLOSE_HISTORY_GONE = 4410  #: a replay was asked for from a position the journal no longer holds
CLOSE_SNAPSHOT_REFUSED = 4413  #: a snapshot was asked of a class whose document store passed its bounds
CLOSE_INVALID_SCOPE = 4420  #: a data scope is invalid or over the subscription limits
CLOSE_INVALID_CATALOG = 4421  #: a catalog is invalid or over the subscription limits
CLOSE_TOO_MANY_SUBSCRIPTIONS = 4429  #: more classes in one handshake than max_subscriptions
CLOSE_TOO_MANY_CONNECTIONS = 4503  #: the server holds max_connections already

#: The options a client may set in ``_options`` (each true or false): ``control`` (control messages and
#: scope exits), ``exits`` (scope exits only), ``strict`` (refuse what the original ignores).
OPTIONS = frozenset({"control", "exits", "strict"})

#: subscription keys the server derives itself: a client's values are ignored
SERVER_KEYS = frozenset({"acl", "user_name", "start_time"})
#: subscription keys the server gives a meaning to
SUBSCRIPTION_KEYS = frozenset({"data_scope", "catalog", "show_hidden", "start_seq", "after_seq", "from_seq", "epoch",
                               "snapshot"})
#: names a client may not pass through (they are options or arguments of ``subscribe`` itself)
_RESERVED = frozenset({"websocket", "class_name", "cls", "control", "exits", "strict", "hidden_allowed"})


class Refusal(XiaBroadcastError):
    """A connection is refused or closed: ``code`` and ``reason`` go into the close frame."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason.encode()[:120].decode(errors="ignore")


@dataclass
class Handshake:
    """A parsed first message."""

    header: dict[str, Any]
    requests: dict[str, dict[str, Any]]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def control(self) -> bool:
        """True when the client asked for control messages."""
        return self.options.get("control") is True

    @property
    def exits(self) -> bool:
        """True when the client asked for scope exits (control clients get them too)."""
        return self.options.get("exits") is True or self.control

    @property
    def strict(self) -> bool:
        """True when the client asked for strict checking."""
        return self.options.get("strict") is True


def parse_handshake(message: str | bytes, max_subscriptions: int) -> Handshake:
    """Parse and check the shape of a first message; raises :class:`Refusal` (4400, 4404 or 4429)."""
    try:
        obj = orjson.loads(message)
    except orjson.JSONDecodeError as exc:
        raise Refusal(CLOSE_BAD_HANDSHAKE, "Connection information should be a Json string") from exc
    if not isinstance(obj, dict):
        raise Refusal(CLOSE_BAD_HANDSHAKE, "Connection information should be a Json object")
    header = obj.pop("_header", {})
    if header is None:
        header = {}
    if not isinstance(header, dict):
        raise Refusal(CLOSE_BAD_HANDSHAKE, "_header should be an object")
    options = obj.pop("_options", {})
    if not isinstance(options, dict) or not all(isinstance(v, bool) for v in options.values()):
        raise Refusal(CLOSE_BAD_HANDSHAKE, "_options should be an object of true/false flags")
    strict = options.get("strict") is True
    if strict and set(options) - OPTIONS:
        raise Refusal(CLOSE_BAD_HANDSHAKE, f"unknown _options {sorted(set(options) - OPTIONS)}")
    requests: dict[str, dict[str, Any]] = {}
    for name, sub in obj.items():
        if name.startswith("_"):
            if strict:
                raise Refusal(CLOSE_BAD_HANDSHAKE, f"unknown handshake entry {name[:40]!r}")
            continue  # the original passes them on; nothing here reads them
        if sub is None:
            sub = {}
        if not isinstance(sub, Mapping):
            raise Refusal(CLOSE_BAD_HANDSHAKE, f"{name}: subscription should be an object")
        unknown = set(sub) - SUBSCRIPTION_KEYS - SERVER_KEYS
        if strict and unknown:
            raise Refusal(CLOSE_BAD_HANDSHAKE, f"{name}: unknown subscription keys {sorted(unknown)}"[:120])
        requests[name] = {k: v for k, v in sub.items() if k not in SERVER_KEYS and k not in _RESERVED}
    if not requests:
        raise Refusal(CLOSE_NO_CLASS, "Class requested Not Found")
    if len(requests) > max_subscriptions:
        raise Refusal(CLOSE_TOO_MANY_SUBSCRIPTIONS,
                      f"too many subscriptions: {len(requests)} > {max_subscriptions}")
    return Handshake(header, requests, options)


def subscription_params(data_scope: list[dict[str, Any]] | None = None, catalog: dict[str, Any] | None = None,
                        show_hidden: Any = False, start_seq: Any = "", acl: Any = None,
                        **kwargs: Any) -> dict[str, Any]:
    """The subscription params as the original's ``subscribe`` returns them, and the server confirms them:
    its four parameters with their defaults, the ACL, then every other key in the order given."""
    return {"data_scope": data_scope, "catalog": catalog, "show_hidden": show_hidden, "start_seq": start_seq,
            "acl": acl, **kwargs}


def acl_may_read_class(acl_items: Any, class_name: str) -> bool:
    """True when some item of an ACL could grant ``read`` on some document of ``class_name``.

    ``acl_items`` is an iterable of objects with ``obj`` and ``act``. A pattern can match a subject of the
    class when its literal part before the first ``*`` and ``Class/`` agree on their common length.
    """
    prefix = class_name + "/"
    for item in acl_items:
        if not act_grants(item.act, "read"):
            continue
        obj = item.obj
        if "*" in obj:
            lit = obj.split("*", 1)[0]
            if lit.startswith(prefix) or prefix.startswith(lit):
                return True
        elif obj.startswith(prefix):
            return True
    return False
