"""Journal backends: every published change, per class, with bounded retention, for gapless resume.

:class:`~.base.Backend` is the one contract through which every change, local or from another node, reaches a
Hub: :class:`~.memory.MemoryBackend` (over a :class:`~.memory.MemoryJournal`) for one node,
``journal.redis.RedisBackend`` (Redis Streams, the ``redis`` extra) for a cluster. :func:`~.factory.make_backend`
chooses one from settings.
"""

from .base import Backend, BackendUnavailable, HistoryGone, OnChange, Position, SeqOrderError
from .factory import make_backend
from .memory import MemoryBackend, MemoryJournal

__all__ = ["Backend", "BackendUnavailable", "HistoryGone", "MemoryBackend", "MemoryJournal", "OnChange",
           "Position", "SeqOrderError", "make_backend"]
