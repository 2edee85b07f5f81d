"""The one place that chooses a backend: the memory journal by default, Redis Streams with a URL."""

from __future__ import annotations

from .base import DEFAULT_MAX_AGE, DEFAULT_MAX_COUNT, Backend
from .memory import DEFAULT_MAX_BYTES, DEFAULT_MAX_TOTAL_BYTES, MemoryBackend
from .store import StoreBounds


def make_backend(redis_url: str | None = None, *, redis_prefix: str = "xia:", data: str | None = None,
                 durability: str = "os", max_count: int = DEFAULT_MAX_COUNT, max_age: float = DEFAULT_MAX_AGE,
                 max_bytes: int = DEFAULT_MAX_BYTES, max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
                 store: StoreBounds | None = None) -> Backend:
    """Redis Streams at ``redis_url`` (keys under ``redis_prefix``), else a SQLite file in the directory
    ``data`` (``durability``: ``"os"`` or ``"disk"``), else the embedded memory journal.

    Retention: ``max_count`` changes and ``max_age`` seconds per class on all; the memory and SQLite journals
    also keep at most ``max_bytes`` encoded bytes per class and ``max_total_bytes`` over all classes (Redis is
    bounded by its own ``maxmemory``). The memory journal accepts a seq chosen by a caller that is not after
    its class's last one (the original API lets callers choose seqs): see ``MemoryJournal``. ``store``: the
    bounds of each class's document store (every backend keeps one, ``journal.store``). Raises
    ``JournalFileError`` when the data directory cannot be used.
    """
    if redis_url:
        from .redis import RedisBackend
        return RedisBackend(redis_url, prefix=redis_prefix, max_count=max_count, max_age=max_age, store=store)
    if data:
        from .sqlite import SqliteBackend
        return SqliteBackend(data, max_count=max_count, max_age=max_age, max_bytes=max_bytes,
                             max_total_bytes=max_total_bytes, durability=durability, store=store)
    return MemoryBackend(max_count=max_count, max_age=max_age, max_bytes=max_bytes,
                         max_total_bytes=max_total_bytes, accept_out_of_order=True, store=store)
