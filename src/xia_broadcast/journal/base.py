"""The journal interface."""

from __future__ import annotations

from abc import ABC, abstractmethod

from ..core.change import Change


class SeqOrderError(ValueError):
    """A change's seq is not greater than the last seq of its class: it cannot be journaled."""


class HistoryGone(Exception):
    """The journal no longer holds every change from the requested position on.

    ``oldest`` is the oldest seq still held (None when nothing is held).
    """

    def __init__(self, class_name: str, oldest: str | None) -> None:
        super().__init__(f"history of {class_name} is gone; oldest seq held: {oldest}")
        self.class_name = class_name
        self.oldest = oldest


class Journal(ABC):
    """Every change of every class, in seq order per class, with bounded retention.

    Positions: ``read(cls, seq, inclusive=True)`` reads changes with ``seq >= seq`` (a client's
    ``start_seq``); ``inclusive=False`` reads ``seq > seq`` (resuming after the last change seen);
    ``seq=None`` reads from the first change the journal ever held for the class.
    """

    #: the journal knows nothing from before this seq (None: complete from its first change on)
    epoch_seq: str | None = None

    def position(self, class_name: str) -> str | None:
        """Where a subscriber that goes live now stands: resuming ``after_seq`` this position misses
        nothing. The head, or the epoch when the class has no change yet."""
        return self.head(class_name) or self.epoch_seq

    @abstractmethod
    def append(self, change: Change) -> str:
        """Append a change; assign its seq when it has none. Returns the seq. Raises :class:`SeqOrderError`."""

    @abstractmethod
    def read(self, class_name: str, seq: str | None, *, inclusive: bool, limit: int) -> list[Change]:
        """Up to ``limit`` changes from a position, in order. Raises :class:`HistoryGone` when changes from
        that position on are no longer all held."""

    @abstractmethod
    def head(self, class_name: str) -> str | None:
        """The seq of the last change of the class (None when there was none)."""

    @abstractmethod
    def oldest(self, class_name: str) -> str | None:
        """The oldest seq still held for the class."""
