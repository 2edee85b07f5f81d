"""The memory journal's byte bound is a memory bound: a change dropped by retention is freed at once."""

from __future__ import annotations

import tracemalloc

from xia_broadcast.core.change import Change
from xia_broadcast.journal import MemoryJournal


def test_changes_dropped_by_the_byte_bound_are_freed_at_once() -> None:
    journal = MemoryJournal(max_bytes=2 * 1024 * 1024, max_total_bytes=10**12)
    tracemalloc.start()
    try:
        for i in range(300):  # 300 changes of 200 KB: 60 MB published, 2 MB retained
            journal.append(Change("Big", "I", "", {"_id": f"b{i}", "blob": "x" * 200_000}))
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert journal.held_bytes("Big") <= 2 * 1024 * 1024 and journal.size("Big") == 10
    # what is retained (2 MB), twice over for the objects behind it, and nothing of the 58 MB dropped
    assert held < 6 * 1024 * 1024, f"{held / 2**20:.1f} MiB still allocated"
