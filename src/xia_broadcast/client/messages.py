"""What a listener yields: typed messages parsed from the wire, and events of the connection itself.

Pure: no I/O. :func:`parse_message` turns one server message (a JSON object, already decoded) into one of
the message types below; the events (:class:`Connected`, :class:`Reconnecting`) are made by the listener,
and so is a :class:`Reset` when a snapshot was cut short by a drop.
The wire format is in ``docs/protocol.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import XiaBroadcastError


@dataclass(frozen=True)
class DocumentMessage:
    """An insert (``I``), update (``U``) or delete (``D``) of one document the subscriber may see.

    ``message`` is the document projected through the subscription's catalog (``_id`` always there).
    """

    doc_class: str
    op: str
    seq: str
    message: dict[str, Any]

    @property
    def id(self) -> Any:
        """The document's ``_id``."""
        return self.message.get("_id")

    def to_wire(self) -> dict[str, Any]:
        """The message as the server sent it: ``{"doc_class", "op", "seq", "message"}``."""
        return {"doc_class": self.doc_class, "op": self.op, "seq": self.seq, "message": self.message}


@dataclass(frozen=True)
class Exit:
    """Op ``X``: an update took the document ``id`` out of the subscription's view; drop it locally."""

    doc_class: str
    seq: str
    id: Any

    def to_wire(self) -> dict[str, Any]:
        return {"doc_class": self.doc_class, "op": "X", "seq": self.seq, "message": {"_id": self.id}}


@dataclass(frozen=True)
class ReplayDone:
    """The replay of ``doc_class`` reached the end of the journal at ``seq``: what follows is live."""

    doc_class: str
    seq: str

    def to_wire(self) -> dict[str, Any]:
        return {"_control": "replay_done", "class": self.doc_class, "seq": self.seq}


@dataclass(frozen=True)
class HistoryGone:
    """The server no longer holds the changes of ``doc_class`` after ``seq`` (retention, or it restarted).

    What was missed cannot be replayed: the caller reloads its state of that class (from its source of
    truth), then applies the live messages that follow. ``oldest_seq`` is the oldest change still held
    (None when the journal holds none).
    """

    doc_class: str
    seq: str
    oldest_seq: str | None

    def to_wire(self) -> dict[str, Any]:
        return {"_control": "history_gone", "class": self.doc_class, "seq": self.seq,
                "oldest_seq": self.oldest_seq}


@dataclass(frozen=True)
class SnapshotDone:
    """The snapshot of ``doc_class`` is whole: the documents received since it was asked for (or since the
    last :class:`Reset`) are exactly the class's documents in the view at ``seq``; live changes follow.

    ``seq`` and ``epoch`` are the position a listener resumes from (``after_seq``, ``epoch``). Sent again
    after a resume or a catch-up, with the new position.
    """

    doc_class: str
    seq: str
    epoch: str

    def to_wire(self) -> dict[str, Any]:
        return {"_control": "snapshot_done", "class": self.doc_class, "seq": self.seq, "epoch": self.epoch}


@dataclass(frozen=True)
class Reset:
    """Drop every document of ``doc_class`` held so far: a fresh snapshot of it follows.

    Sent by the server when a snapshot client's position is gone (retention, a restart), and made by the
    listener (``local`` true) when a connection dropped before ``snapshot_done``: the partial snapshot
    cannot be resumed.
    """

    doc_class: str
    local: bool = False

    def to_wire(self) -> dict[str, Any]:
        if self.local:
            return {"_control": "reset", "class": self.doc_class, "local": True}
        return {"_control": "reset", "class": self.doc_class}


@dataclass(frozen=True)
class Control:
    """Any other control message (``token_expiring``, ``token_refreshed``, or one this client does not
    know): its kind and its fields as sent."""

    kind: str
    fields: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {"_control": self.kind, **self.fields}


@dataclass(frozen=True)
class Connected:
    """A connection was made and the server confirmed the subscriptions.

    ``confirmation`` is the server's answer (``{class: accepted params}``, each with ``head_seq``);
    ``resumed`` maps each class that was resumed to the ``after_seq`` asked (empty on a first connection
    without a start position); ``attempt`` counts the connections made so far, from 1.
    """

    confirmation: dict[str, Any]
    resumed: dict[str, str]
    attempt: int

    def to_wire(self) -> dict[str, Any]:
        return {"_event": "connected", "attempt": self.attempt, "resumed": self.resumed,
                "confirmation": self.confirmation}


@dataclass(frozen=True)
class Reconnecting:
    """The connection dropped (or could not be made) and the listener will try again in ``delay`` seconds.

    ``code`` and ``reason`` are the close frame's (1006 and a description when there was none);
    ``failures`` counts consecutive failed attempts, from 1. ``reached`` is false when this attempt did not
    reach the server at all (nothing listening, a host name that does not resolve, no HTTP answer within
    ``open_timeout``), true when the server answered (and then refused the upgrade, closed, or the
    connection dropped).
    """

    code: int
    reason: str
    delay: float
    failures: int
    reached: bool = True

    def to_wire(self) -> dict[str, Any]:
        return {"_event": "reconnecting", "code": self.code, "reason": self.reason,
                "delay": round(self.delay, 3), "failures": self.failures, "reached": self.reached}


#: what a server message parses to
ServerMessage = DocumentMessage | Exit | ReplayDone | HistoryGone | SnapshotDone | Reset | Control
#: what a listener yields
Event = ServerMessage | Connected | Reconnecting


class ProtocolError(XiaBroadcastError, ValueError):
    """A server message that does not have the documented shape."""


def parse_message(obj: Any) -> ServerMessage:
    """The typed form of one server message after the confirmation; raises :class:`ProtocolError`."""
    if not isinstance(obj, Mapping):
        raise ProtocolError(f"expected a JSON object, got {type(obj).__name__}")
    kind = obj.get("_control")
    if kind is not None:
        if not isinstance(kind, str):
            raise ProtocolError(f"_control should be a string: {kind!r}")
        if kind == "replay_done":
            return ReplayDone(_str(obj, "class"), _str(obj, "seq"))
        if kind == "history_gone":
            oldest = obj.get("oldest_seq")
            if oldest is not None and not isinstance(oldest, str):
                raise ProtocolError(f"history_gone: oldest_seq should be a string or null: {oldest!r}")
            return HistoryGone(_str(obj, "class"), _str(obj, "seq"), oldest)
        if kind == "snapshot_done":
            return SnapshotDone(_str(obj, "class"), _str(obj, "seq"), _str(obj, "epoch"))
        if kind == "reset":
            return Reset(_str(obj, "class"))
        return Control(kind, {k: v for k, v in obj.items() if k != "_control"})
    doc_class, op, seq = _str(obj, "doc_class"), _str(obj, "op"), _str(obj, "seq")
    body = obj.get("message")
    if not isinstance(body, dict):
        raise ProtocolError(f"{doc_class} {seq}: message should be an object")
    if op == "X":
        return Exit(doc_class, seq, body.get("_id"))
    return DocumentMessage(doc_class, op, seq, body)


def _str(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise ProtocolError(f"{key} should be a string: {value!r}")
    return value
