"""The embedded journal: per class, a list of changes in seq order, trimmed by count and by age.

Memory: the journal holds a reference to each retained change and its data (``max_count`` per class);
reading is a binary search plus a slice.
"""

from __future__ import annotations

import bisect
import time

from ..core.change import Change
from ..core.seq import SeqClock, format_seq
from .base import HistoryGone, Journal, SeqOrderError


class _ClassLog:
    __slots__ = ("changes", "clock", "last_trimmed", "seqs", "start", "times")

    def __init__(self, epoch_ms: int) -> None:
        self.seqs: list[str] = []
        self.changes: list[Change] = []
        self.times: list[float] = []
        self.start = 0  # index of the oldest retained change
        self.last_trimmed: str | None = None
        self.clock = SeqClock(epoch_ms, 0)

    def trim(self, max_count: int, max_age: float, now: float) -> None:
        start, n = self.start, len(self.seqs)
        while n - start > max_count or (start < n and now - self.times[start] > max_age):
            start += 1
        if start == self.start:
            return
        self.last_trimmed = self.seqs[start - 1]
        self.start = start
        if start > 1024 and start * 2 > n:  # compact: drop the trimmed prefix
            del self.seqs[:start], self.changes[:start], self.times[:start]
            self.start = 0


class MemoryJournal(Journal):
    """In-memory journal.

    Args:
        max_count: changes retained per class (oldest dropped first).
        max_age: seconds a change is retained.
        epoch_seq: the journal knows nothing before this seq (e.g. the server's start): a position
            older than it is reported as history gone. None: complete from its first change on.
    """

    def __init__(self, max_count: int = 100_000, max_age: float = 3600.0, epoch_seq: str | None = None) -> None:
        self.max_count = max_count
        self.max_age = max_age
        self.epoch_seq = epoch_seq
        self._epoch_ms = int(epoch_seq.split("-", 1)[0]) if epoch_seq and epoch_seq[:13].isdigit() else 0
        self._logs: dict[str, _ClassLog] = {}

    @classmethod
    def starting_now(cls, max_count: int = 100_000, max_age: float = 3600.0) -> MemoryJournal:
        """A journal whose epoch is now: positions from before it are history gone."""
        return cls(max_count, max_age, format_seq(time.time_ns() // 1_000_000, 0))

    def append(self, change: Change) -> str:
        log = self._logs.get(change.class_name)
        if log is None:
            log = self._logs[change.class_name] = _ClassLog(self._epoch_ms)
        seq = change.seq or log.clock.next()
        if log.seqs and seq <= log.seqs[-1]:
            raise SeqOrderError(f"{change.class_name}: seq {seq!r} is not after {log.seqs[-1]!r}")
        if self.epoch_seq is not None and seq < self.epoch_seq:
            raise SeqOrderError(f"{change.class_name}: seq {seq!r} is before the journal's epoch "
                                f"{self.epoch_seq!r}")
        change.seq = seq
        now = time.monotonic()
        log.seqs.append(change.seq)
        log.changes.append(change)
        log.times.append(now)
        log.trim(self.max_count, self.max_age, now)
        return change.seq

    def read(self, class_name: str, seq: str | None, *, inclusive: bool, limit: int) -> list[Change]:
        log = self._logs.get(class_name)
        if seq is not None and self.epoch_seq is not None and seq < self.epoch_seq:
            raise HistoryGone(class_name, self.oldest(class_name))
        if log is None:
            return []
        if self.max_age < float("inf"):
            log.trim(self.max_count, self.max_age, time.monotonic())
        lt = log.last_trimmed
        if lt is not None and (seq is None or lt > seq or (inclusive and lt == seq)):
            raise HistoryGone(class_name, self.oldest(class_name))
        if seq is None:
            i = log.start
        elif inclusive:
            i = bisect.bisect_left(log.seqs, seq, log.start)
        else:
            i = bisect.bisect_right(log.seqs, seq, log.start)
        return log.changes[i:i + limit]

    def head(self, class_name: str) -> str | None:
        log = self._logs.get(class_name)
        return log.seqs[-1] if log is not None and log.seqs else None

    def oldest(self, class_name: str) -> str | None:
        log = self._logs.get(class_name)
        if log is None or log.start >= len(log.seqs):
            return None
        return log.seqs[log.start]

    def size(self, class_name: str) -> int:
        """Changes retained for a class."""
        log = self._logs.get(class_name)
        return 0 if log is None else len(log.seqs) - log.start
