"""Clients of an xia-broadcast server: an async :class:`Listener` that reconnects and resumes (optionally
through snapshots, applied by a :class:`Collection`), the original listener's interface
(:class:`BroadcastListener`), and HTTP publishers (:class:`Publisher`, blocking; :class:`AsyncPublisher`).

See ``docs/client.md``.
"""

from .backoff import Backoff
from .collection import Collection
from .listener import TERMINAL_CLOSE_CODES, GaveUp, Listener, ListenerError, Refused, Unreachable
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
from .original import BroadcastListener
from .publisher import AsyncPublisher, Publisher, PublishRefused

__all__ = [
    "TERMINAL_CLOSE_CODES",
    "AsyncPublisher",
    "Backoff",
    "BroadcastListener",
    "Collection",
    "Connected",
    "Control",
    "DocumentMessage",
    "Event",
    "Exit",
    "GaveUp",
    "HistoryGone",
    "Listener",
    "ListenerError",
    "ProtocolError",
    "PublishRefused",
    "Publisher",
    "Reconnecting",
    "Refused",
    "ReplayDone",
    "Reset",
    "SnapshotDone",
    "Unreachable",
    "parse_message",
]
