"""Sequence numbers: strings whose lexicographic order is publish order within a class."""

from __future__ import annotations

import time


class SeqClock:
    """Hands out sortable seqs ``<13-digit epoch ms>-<10-digit counter>``, strictly increasing.

    The millisecond part follows the wall clock but never goes back; the counter orders changes published
    within one millisecond. The format is the padded form of a Redis Stream id, so both backends agree.
    """

    __slots__ = ("_counter", "_last_ms")

    def __init__(self, last_ms: int = 0, counter: int = 0) -> None:
        """Every seq handed out is after ``format_seq(last_ms, counter)``."""
        self._last_ms = last_ms
        self._counter = counter

    def next(self) -> str:
        ms = time.time_ns() // 1_000_000
        if ms <= self._last_ms:
            ms = self._last_ms
            self._counter += 1
        else:
            self._last_ms, self._counter = ms, 0
        return format_seq(ms, self._counter)


def format_seq(ms: int, counter: int) -> str:
    """The seq string of a (milliseconds, counter) pair, e.g. a Redis Stream id ``ms-counter``."""
    return f"{ms:013d}-{counter:010d}"
