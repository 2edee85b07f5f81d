"""Journals: every published change, per class, with bounded retention, for gapless resume.

:class:`~.base.Journal` is the interface; :class:`~.memory.MemoryJournal` the embedded default.
"""

from .base import HistoryGone, Journal, SeqOrderError
from .memory import MemoryJournal

__all__ = ["HistoryGone", "Journal", "MemoryJournal", "SeqOrderError"]
