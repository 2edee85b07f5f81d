"""Journals: every published change, per class, with bounded retention, for gapless resume.

:class:`~.base.Journal` is the synchronous interface the current engine uses, :class:`~.memory.MemoryJournal`
its embedded default. :class:`~.base.Backend` is the asynchronous interface through which every change,
local or from another node, reaches an engine: :class:`~.memory.MemoryBackend` for one node,
``journal.redis.RedisBackend`` (Redis Streams, the ``redis`` extra) for a cluster.
"""

from .base import Backend, BackendUnavailable, HistoryGone, Journal, OnChange, Position, SeqOrderError
from .memory import MemoryBackend, MemoryJournal

__all__ = ["Backend", "BackendUnavailable", "HistoryGone", "Journal", "MemoryBackend", "MemoryJournal",
           "OnChange", "Position", "SeqOrderError"]
