"""Errors raised by xia-broadcast.

``OutOfScopeError`` and ``AuthorizationError`` keep the names of the original package so that document
classes written for it keep working. Every refusal of a subscription is a :class:`SubscriptionError`
subclass carrying the WebSocket close code the server answers it with (see ``docs/protocol.md``).
"""

from __future__ import annotations


class XiaBroadcastError(Exception):
    """Base class of every error this package raises on purpose."""


class OutOfScopeError(XiaBroadcastError):
    """A document is not in a subscriber's data scope (raised by ``check_scope``)."""


class AuthorizationError(XiaBroadcastError):
    """An ACL may not perform an action on a document."""


class SubscriptionError(XiaBroadcastError, ValueError):
    """A subscription request is refused. ``code`` is the close code the server uses for it."""

    code: int = 4400

    def __init__(self, message: str, *, class_name: str | None = None) -> None:
        super().__init__(message)
        self.class_name = class_name

    @property
    def reason(self) -> str:
        """Close reason text: short, names the problem (a close reason is capped at 123 bytes)."""
        prefix = f"{self.class_name}: " if self.class_name else ""
        text = f"{prefix}{self}"
        return text.encode()[:120].decode(errors="ignore")


class InvalidScopeError(SubscriptionError):
    """The data scope is malformed: not a list of ``{fn, op, val}``, an unknown operator, a bad value."""

    code = 4420


class HiddenFieldError(SubscriptionError):
    """Hidden fields were asked for (``show_hidden``, or a scope naming a hidden field) without permission to
    see them."""

    code = 4403


class InvalidCatalogError(SubscriptionError):
    """The catalog is malformed or names a field the document class does not have."""

    code = 4421


class InvalidAclError(SubscriptionError):
    """The ACL given to ``subscribe`` is not an ACL (neither an ``Acl``, a display dict, nor None)."""

    code = 4401


class HttpError(XiaBroadcastError):
    """An HTTP request refused with ``status``, a stable ``error`` code and a message naming the problem
    (the answer's body is ``{"error": error, "message": message}``, see ``docs/protocol.md``)."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error


class SchemaError(XiaBroadcastError, ValueError):
    """A document class schema (dict, JSON or TOML) is malformed."""


class DocumentError(XiaBroadcastError, ValueError):
    """A published document does not fit its class schema (wrong type, missing ``_id``, unknown op)."""
