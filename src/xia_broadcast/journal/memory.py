"""The embedded journal: per class, a list of changes in seq order, trimmed by count, age and bytes.

Memory: the journal holds a reference to each retained change and its data (``max_count`` per class), plus
about 200 to 300 bytes of bookkeeping per change (measured: its seq string, time, size, list slots and the
ACL subjects the record computes). The byte bounds count the change's encoded record size
(:meth:`Change.encoded_size`, its JSON), computed once per change at append (one ``orjson.dumps``: about
1.5 us for a 2 KB document, 0.2 ms for 2 MB); the Python objects behind a change usually take 1 to 3 times
that. Reading is a binary search plus a slice.

:class:`MemoryJournal` is the storage, synchronous and usable on its own; :class:`MemoryBackend` serves it
behind the :class:`~.base.Backend` contract, for one node, and declares the synchronous capability.
"""

from __future__ import annotations

import bisect
import secrets
import time
from collections.abc import Callable

from ..core.change import Change
from ..core.seq import SeqClock, format_seq
from .base import (
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_COUNT,
    Backend,
    BackendUnavailable,
    HistoryGone,
    OnChange,
    Position,
    SeqOrderError,
)
from .store import MemoryStore, Snapshot, StoreBounds

__all__ = ["DEFAULT_MAX_AGE", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_COUNT", "DEFAULT_MAX_TOTAL_BYTES", "MemoryBackend",
           "MemoryJournal"]

#: default bytes retained per class (encoded changes)
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: default bytes kept over all classes
DEFAULT_MAX_TOTAL_BYTES = 256 * 1024 * 1024


class _ClassLog:
    """One class's retained changes: ``seqs[start:]``, ``changes[start:]``, ... are held; ``held_bytes`` is
    the sum of ``sizes[start:]``; ``last_trimmed`` is the seq of the newest change dropped. A dropped change is
    released at once (its slot holds None until the trimmed prefix is compacted away): dropped means freed."""

    __slots__ = ("changes", "clock", "held_bytes", "last_trimmed", "seqs", "sizes", "start", "times")

    def __init__(self, epoch_ms: int) -> None:
        self.seqs: list[str] = []
        self.changes: list[Change | None] = []
        self.times: list[float] = []
        self.sizes: list[int] = []
        self.start = 0  # index of the oldest retained change
        self.held_bytes = 0
        self.last_trimmed: str | None = None
        self.clock = SeqClock(epoch_ms, 0)

    def __len__(self) -> int:
        return len(self.seqs) - self.start

    def trim(self, max_count: int, max_age: float, max_bytes: float, now: float) -> int:
        """Drop the oldest changes beyond the bounds; the byte bound always keeps the newest change.
        Returns the bytes dropped."""
        start, n, held = self.start, len(self.seqs), self.held_bytes
        while start < n and (n - start > max_count or now - self.times[start] > max_age
                             or (held > max_bytes and n - start > 1)):
            held -= self.sizes[start]
            start += 1
        return self._drop_to(start, self.held_bytes - held)

    def drop_oldest(self) -> int:
        """Drop the oldest retained change. Returns its bytes."""
        return self._drop_to(self.start + 1, self.sizes[self.start])

    def _drop_to(self, start: int, dropped: int) -> int:
        if start == self.start:
            return 0
        self.last_trimmed = self.seqs[start - 1]
        changes = self.changes
        for i in range(self.start, start):
            changes[i] = None  # the change and its data go now, not at the next compaction
        self.start = start
        self.held_bytes -= dropped
        n = len(self.seqs)
        if start > 1024 and start * 2 > n:  # compact: drop the trimmed prefix
            del self.seqs[:start], self.changes[:start], self.times[:start], self.sizes[:start]
            self.start = 0
        return dropped


class MemoryJournal:
    """In-memory journal: every change of every class, in seq order per class, with bounded retention.

    Positions: ``read(cls, seq, inclusive=True)`` reads changes with ``seq >= seq`` (a client's ``from_seq``);
    ``inclusive=False`` reads ``seq > seq`` (resuming after the last change seen); ``seq=None`` reads from the
    first change the journal ever held for the class.

    Args:
        max_count: changes retained per class (oldest dropped first).
        max_age: seconds a change is retained (checked at append and read).
        epoch_seq: the journal knows nothing before this seq (e.g. the server's start): a position
            older than it is reported as history gone. None: complete from its first change on.
        max_bytes: encoded bytes retained per class (:meth:`Change.encoded_size`); the newest change of a
            class is kept even when it alone is larger.
        max_total_bytes: encoded bytes retained over all classes; beyond it the oldest change of any class
            is dropped first (a class's newest change is kept). Memory used is about these bytes times the
            ratio of Python objects to JSON (1 to 3), plus 200 to 300 bytes per change.
        clock: seconds on a monotonic clock (injectable for tests).
    """

    def __init__(self, max_count: int = DEFAULT_MAX_COUNT, max_age: float = DEFAULT_MAX_AGE,
                 epoch_seq: str | None = None, *, max_bytes: float = DEFAULT_MAX_BYTES,
                 max_total_bytes: float = DEFAULT_MAX_TOTAL_BYTES,
                 clock: Callable[[], float] = time.monotonic, accept_out_of_order: bool = False) -> None:
        self.max_count = max_count
        #: a seq chosen by the caller that is not after the last of its class is journaled after it (at
        #: ``<last>~``, the change keeping its seq) instead of refused with :class:`SeqOrderError`
        self.accept_out_of_order = accept_out_of_order
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.max_total_bytes = max_total_bytes
        self.epoch_seq = epoch_seq
        self._clock = clock
        self._epoch_ms = int(epoch_seq.split("-", 1)[0]) if epoch_seq and epoch_seq[:13].isdigit() else 0
        self._logs: dict[str, _ClassLog] = {}
        #: sum of every class's ``held_bytes``
        self._held_bytes = 0

    @classmethod
    def starting_now(cls, max_count: int = DEFAULT_MAX_COUNT, max_age: float = DEFAULT_MAX_AGE, *,
                     max_bytes: float = DEFAULT_MAX_BYTES,
                     max_total_bytes: float = DEFAULT_MAX_TOTAL_BYTES,
                     clock: Callable[[], float] = time.monotonic) -> MemoryJournal:
        """A journal whose epoch is now: positions from before it are history gone."""
        return cls(max_count, max_age, format_seq(time.time_ns() // 1_000_000, 0), max_bytes=max_bytes,
                   max_total_bytes=max_total_bytes, clock=clock)

    def position(self, class_name: str) -> str | None:
        """Where a subscriber that goes live now stands: resuming after this position misses nothing. The
        head, or the epoch's start when the class has no change yet."""
        return self.head(class_name) or self.epoch_seq

    def append(self, change: Change) -> str:
        """Append a change; assign its seq when it has none. Returns the seq. Raises :class:`SeqOrderError`."""
        log = self._logs.get(change.class_name)
        if log is None:
            log = self._logs[change.class_name] = _ClassLog(self._epoch_ms)
        chosen = bool(change.seq)
        seq = change.seq or log.clock.next()
        pos = seq
        last = log.seqs[-1] if log.seqs else log.last_trimmed  # the last seq ever assigned
        if (last is not None and seq <= last) or (self.epoch_seq is not None and seq < self.epoch_seq):
            if not (chosen and self.accept_out_of_order):
                if last is not None and seq <= last:
                    raise SeqOrderError(f"{change.class_name}: seq {seq!r} is not after {last!r}")
                raise SeqOrderError(f"{change.class_name}: seq {seq!r} is before the journal's epoch "
                                    f"{self.epoch_seq!r}")
            # the caller's seq stays the message's; the journal keeps the change after its last one
            pos = max(last or "", self.epoch_seq or "") + "~"
        size = change.encoded_size()
        change.seq = seq
        change.pos = "" if pos == seq else pos
        now = self._clock()
        log.seqs.append(pos)
        log.changes.append(change)
        log.times.append(now)
        log.sizes.append(size)
        log.held_bytes += size
        self._held_bytes += size - log.trim(self.max_count, self.max_age, self.max_bytes, now)
        if self._held_bytes > self.max_total_bytes:
            self._trim_total()
        return change.seq

    def _trim_total(self) -> None:
        """Drop the oldest changes of any class until the total fits (each class keeps its newest).
        Costs O(classes) per change dropped."""
        while self._held_bytes > self.max_total_bytes:
            oldest: _ClassLog | None = None
            for log in self._logs.values():
                if len(log) > 1 and (oldest is None or log.times[log.start] < oldest.times[oldest.start]):
                    oldest = log
            if oldest is None:
                return
            self._held_bytes -= oldest.drop_oldest()

    def read(self, class_name: str, seq: str | None, *, inclusive: bool, limit: int) -> list[Change]:
        """Up to ``limit`` changes from a position, in order. Raises :class:`HistoryGone` when changes from
        that position on are no longer all held."""
        log = self._logs.get(class_name)
        if seq is not None and self.epoch_seq is not None and seq < self.epoch_seq:
            raise HistoryGone(class_name, self.oldest(class_name), reason="before the journal's epoch")
        if log is None:
            return []
        if self.max_age < float("inf"):
            self._held_bytes -= log.trim(self.max_count, self.max_age, self.max_bytes, self._clock())
        lt = log.last_trimmed
        if lt is not None and (seq is None or lt > seq or (inclusive and lt == seq)):
            raise HistoryGone(class_name, self.oldest(class_name), reason="trimmed")
        if seq is None:
            i = log.start
        elif inclusive:
            i = bisect.bisect_left(log.seqs, seq, log.start)
        else:
            i = bisect.bisect_right(log.seqs, seq, log.start)
        return log.changes[i:i + limit]  # type: ignore[return-value]  # from start on: never a dropped slot

    def head(self, class_name: str) -> str | None:
        """The seq of the last change of the class (None when there was none), also once retention has
        dropped every change of it."""
        log = self._logs.get(class_name)
        if log is None:
            return None
        return log.seqs[-1] if log.seqs else log.last_trimmed

    def oldest(self, class_name: str) -> str | None:
        """The oldest seq still held for the class."""
        log = self._logs.get(class_name)
        if log is None or log.start >= len(log.seqs):
            return None
        return log.seqs[log.start]

    def size(self, class_name: str) -> int:
        """Changes retained for a class."""
        log = self._logs.get(class_name)
        return 0 if log is None else len(log)

    def held_bytes(self, class_name: str | None = None) -> int:
        """Encoded bytes retained for a class (None: over all classes)."""
        if class_name is None:
            return self._held_bytes
        log = self._logs.get(class_name)
        return 0 if log is None else log.held_bytes


class MemoryBackend(Backend):
    """The embedded backend for one node: a :class:`MemoryJournal` behind the :class:`~.base.Backend`
    interface.

    Guarantees: ``publish`` (and ``publish_nowait``: the backend is ``synchronous``) journals the change and
    calls ``on_change`` before it returns (so delivery order
    is publish order); every class is delivered (``watch`` is not needed); the epoch is one random token per
    backend instance, so positions from before a restart of the process are history gone. Retention and
    memory: as :class:`MemoryJournal` (the keyword arguments are its own).
    """

    def __init__(self, *, max_count: int = DEFAULT_MAX_COUNT, max_age: float = DEFAULT_MAX_AGE,
                 max_bytes: float = DEFAULT_MAX_BYTES, max_total_bytes: float = DEFAULT_MAX_TOTAL_BYTES,
                 clock: Callable[[], float] = time.monotonic, journal: MemoryJournal | None = None,
                 complete: bool = False, accept_out_of_order: bool = False,
                 store: StoreBounds | None = None) -> None:
        """``journal``: an existing journal to serve (its own retention applies). ``complete``: the journal
        is taken as complete from its first change (a library that chooses its own seqs); by default it
        knows nothing from before it was made, and positions from before that are history gone.
        ``accept_out_of_order``: see :class:`MemoryJournal` (the original API lets callers choose seqs).
        ``store``: the bounds of each class's document store (:mod:`.store`)."""
        start_ms = time.time_ns() // 1_000_000
        #: the synchronous journal holding the changes (readable directly)
        self.journal = journal if journal is not None else MemoryJournal(
            max_count, max_age, None if complete else format_seq(start_ms, 0), max_bytes=max_bytes,
            max_total_bytes=max_total_bytes, clock=clock, accept_out_of_order=accept_out_of_order)
        self._epoch = f"{start_ms:013d}-{secrets.token_hex(4)}"
        #: the latest state of each document, per class (kept with each append)
        self.store = MemoryStore(store)
        self._on_change: OnChange | None = None
        self._closed = False
        self.ready = False

    synchronous = True

    def bind(self, on_change: OnChange) -> None:
        self._on_change = on_change
        self.ready = not self._closed

    def publish_nowait(self, change: Change) -> Position:
        if self._closed:
            raise BackendUnavailable("the memory backend is closed")
        # no await between the append and the callback: delivery order is append order
        seq = self.journal.append(change)
        change.epoch = self._epoch
        self.store.apply(change)
        if self._on_change is not None:
            self._on_change(change)
        return Position(seq, self._epoch)

    async def start(self, on_change: OnChange) -> None:
        self.bind(on_change)

    async def close(self) -> None:
        self._closed = True
        self.ready = False
        self._on_change = None

    async def publish(self, change: Change) -> Position:
        return self.publish_nowait(change)

    async def read(self, class_name: str, seq: str | None, *, inclusive: bool, limit: int,
                   epoch: str | None = None) -> list[Change]:
        if epoch is not None and epoch != self._epoch:
            raise HistoryGone(class_name, self.journal.oldest(class_name), epoch=self._epoch,
                              reason=f"epoch {epoch!r} is not the journal's")
        journal = self.journal
        if seq is not None and journal.epoch_seq is not None:
            head = journal.position(class_name)
            if head is not None and seq > head:
                # no position of this epoch lies there (made up, or from a journal that started again): going
                # live from it would skip every change up to it (a journal taken as complete, whose seqs a
                # library chooses, is left out)
                raise HistoryGone(class_name, journal.oldest(class_name), epoch=self._epoch,
                                  reason="after the journal's head")
        try:
            return self.journal.read(class_name, seq, inclusive=inclusive, limit=limit)
        except HistoryGone as gone:
            gone.epoch = self._epoch
            raise

    async def position(self, class_name: str) -> Position:
        return self.position_nowait(class_name)

    def position_nowait(self, class_name: str) -> Position:
        return Position(self.journal.position(class_name) or "", self._epoch)

    async def epoch(self, class_name: str) -> str:
        return self._epoch

    async def watch(self, class_name: str, *, create: bool = True) -> Position:
        return self.position_nowait(class_name)

    async def snapshot(self, class_name: str) -> Snapshot:
        return self.store.snapshot(class_name, self.position_nowait(class_name))

    def unwatch(self, class_name: str) -> None:
        pass
