"""The one backend contract: :class:`Backend` (memory, Redis Streams), through which every change, published
on this node or another, reaches a Hub; positions and the errors a backend raises.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from ..core.change import Change
from ..errors import XiaBroadcastError

if TYPE_CHECKING:
    from .store import Snapshot

#: default retention per class, for every backend: changes kept, and their age in seconds
DEFAULT_MAX_COUNT = 100_000
DEFAULT_MAX_AGE = 3600.0


class SeqOrderError(XiaBroadcastError, ValueError):
    """A change's seq is not greater than the last seq of its class: it cannot be journaled."""


class HistoryGone(XiaBroadcastError):
    """The journal no longer holds every change from the requested position on: it was trimmed (retention),
    or the position belongs to another epoch (the journal was lost and started again).

    ``oldest`` is the oldest seq still held (None when nothing is held or unknown); ``epoch`` the journal's
    current epoch for the class ("" when not known).
    """

    def __init__(self, class_name: str, oldest: str | None, *, epoch: str = "", reason: str = "") -> None:
        why = f" ({reason})" if reason else ""
        super().__init__(f"history of {class_name} is gone{why}; oldest seq held: {oldest}")
        self.class_name = class_name
        self.oldest = oldest
        self.epoch = epoch


class BackendUnavailable(XiaBroadcastError):
    """The backend cannot reach its store (e.g. Redis is down or restarting): the change was NOT published
    (or, for a read, nothing was read). The caller may retry; the server answers HTTP 503. For several
    changes (``Backend.publish_many``), ``published`` of them were published before the failure."""

    published: int = 0


class Position(NamedTuple):
    """Where a subscriber stands in a class's journal: the seq of the last change it has (or the epoch's
    start seq when it has none), and the journal's epoch. A position is only meaningful in its epoch: a
    journal that was lost and started again has a new epoch, and positions of the old one are history gone.
    """

    seq: str
    epoch: str


#: The one callback through which every change reaches a Hub (see :class:`Backend`).
OnChange = Callable[[Change], None]


class Backend(ABC):
    """An asynchronous journal and broker: where changes are published, kept for replay, and delivered.

    Every change, published on this node or on any other sharing the store, reaches a Hub through ONE
    callback, ``on_change`` (given to :meth:`start`), with ``change.seq`` and ``change.epoch`` set. The
    callback is called from the event loop, in seq order per class, never twice for one seq, and only for
    classes this node :meth:`watch`-es (the memory backend delivers every class). It must not block: it is
    called inline by the backend's delivery loop.

    Positions: ``read(cls, seq, inclusive=True)`` reads changes with ``seq >= seq``; ``inclusive=False``
    reads ``seq > seq`` (resuming after the last change seen); ``seq=None`` reads from the first change of
    the epoch. Seqs are ``core.seq.format_seq(ms, counter)`` strings: their string order is publish order.

    Gapless going live: the position returned by :meth:`watch` (first watch of a class) or the position of
    the last change ``on_change`` delivered is where a new live subscriber stands; every later change
    reaches ``on_change``, every earlier one is readable with :meth:`read` (within retention).
    """

    #: True when the backend can publish and deliver (Redis: connected and tailing)
    ready: bool = False
    #: A capability: publishing, starting and reading a class's head complete without waiting (the memory
    #: backend), so :meth:`bind`, :meth:`publish_nowait` and :meth:`position_nowait` work, and a Hub on it
    #: can publish from synchronous code. A Hub checks it in one place; other backends leave it False.
    synchronous: bool = False

    def bind(self, on_change: OnChange) -> None:
        """:meth:`start` without waiting (``synchronous`` backends only)."""
        raise NotImplementedError(f"{type(self).__name__} starts asynchronously: await start()")

    def publish_nowait(self, change: Change) -> Position:
        """:meth:`publish` without waiting: ``on_change`` has been called when it returns (``synchronous``
        backends only)."""
        raise NotImplementedError(f"{type(self).__name__} publishes asynchronously: await publish()")

    def position_nowait(self, class_name: str) -> Position:
        """:meth:`position` without waiting (``synchronous`` backends only)."""
        raise NotImplementedError(f"{type(self).__name__} reads positions asynchronously: await position()")

    @abstractmethod
    async def start(self, on_change: OnChange) -> None:
        """Connect (if needed) and begin delivering changes to ``on_change``. Called once."""

    @abstractmethod
    async def close(self) -> None:
        """Stop delivering and release connections. Idempotent."""

    @abstractmethod
    async def publish(self, change: Change) -> Position:
        """Append a change; assign its seq (a seq already set by the caller must sort after the class's
        last one, else :class:`SeqOrderError`). Returns its position. Raises :class:`BackendUnavailable`
        when the store cannot be reached: never a silent loss."""

    async def publish_many(self, changes: list[Change]) -> list[Position]:
        """Publish ``changes`` in order; their positions. A backend that can append several at once (one
        transaction) overrides this; by default they go one after another. Raises
        :class:`BackendUnavailable` at the first that cannot be published, with ``published`` set to how many
        were before it (they stay published)."""
        positions: list[Position] = []
        for change in changes:
            try:
                positions.append(await self.publish(change))
            except BackendUnavailable as exc:
                exc.published = len(positions)
                raise
        return positions

    @abstractmethod
    async def read(self, class_name: str, seq: str | None, *, inclusive: bool, limit: int,
                   epoch: str | None = None) -> list[Change]:
        """Up to ``limit`` changes from a position, in seq order, with seq and epoch set. Raises
        :class:`HistoryGone` when changes from that position on are no longer all held, or when ``epoch``
        is given and is not the class's current epoch (``epoch=None``: a position without an epoch, e.g.
        from an original client: only its seq is checked, against the epoch's start and retention). Raises
        :class:`BackendUnavailable` when the store cannot be reached."""

    @abstractmethod
    async def position(self, class_name: str) -> Position:
        """The class's head in the store (the last seq, or the epoch's start seq when the epoch holds no
        change yet) and its epoch."""

    @abstractmethod
    async def epoch(self, class_name: str) -> str:
        """The class's current epoch (created when the class has none yet)."""

    @abstractmethod
    async def watch(self, class_name: str, *, create: bool = True) -> Position:
        """Deliver this class's changes to ``on_change`` from now on. Returns the position after which
        every change of the class reaches ``on_change`` (for a class already watched: the position of the
        last change delivered, or where watching began). ``create`` False: a class the store holds nothing
        of is not created (no epoch, no key, no row: a subscriber of a name nobody publishes leaves nothing
        behind); its position is then ``("", "")``, from which everything published later is read."""

    async def snapshot(self, class_name: str) -> Snapshot:
        """A read of the class's document store (:mod:`.store`): its documents a page at a time, at or
        before the returned snapshot's ``position``; the journal holds what came after. Raises
        ``SnapshotRefused`` when the class's store passed its bounds (or this backend keeps none),
        :class:`BackendUnavailable` when the store cannot be reached."""
        from .store import SnapshotRefused
        raise SnapshotRefused(class_name, f"{type(self).__name__} keeps no document store")

    @abstractmethod
    def unwatch(self, class_name: str) -> None:
        """Stop delivering this class (no subscriber left on this node). Changes already in flight may
        still be dropped or delivered; none is delivered twice."""
