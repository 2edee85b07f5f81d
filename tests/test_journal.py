"""The in-memory journal: order, positions, retention by count and by age, history gone."""

from __future__ import annotations

import time

import pytest

from xia_broadcast.core.change import Change
from xia_broadcast.journal import HistoryGone, MemoryJournal, SeqOrderError


def change(seq: str = "", class_name: str = "T") -> Change:
    return Change(class_name, "I", seq, {"_id": seq or "x"})


def seqs(changes: list[Change]) -> list[str]:
    return [c.seq for c in changes]


def test_assigned_seqs_are_strictly_increasing_strings() -> None:
    j = MemoryJournal()
    got = [j.append(change()) for _ in range(5000)]
    assert got == sorted(got) and len(set(got)) == 5000
    assert j.head("T") == got[-1] and j.oldest("T") == got[0]


def test_positions_inclusive_exclusive_and_from_the_start() -> None:
    j = MemoryJournal()
    for s in ["a", "b", "c", "d"]:
        j.append(change(s))
    assert seqs(j.read("T", "b", inclusive=True, limit=10)) == ["b", "c", "d"]
    assert seqs(j.read("T", "b", inclusive=False, limit=10)) == ["c", "d"]
    assert seqs(j.read("T", "bb", inclusive=True, limit=10)) == ["c", "d"]
    assert seqs(j.read("T", None, inclusive=False, limit=2)) == ["a", "b"]
    assert j.read("T", "d", inclusive=False, limit=10) == []
    assert j.read("Other", "a", inclusive=True, limit=10) == []


def test_a_seq_not_after_the_last_is_refused() -> None:
    j = MemoryJournal()
    j.append(change("b"))
    with pytest.raises(SeqOrderError):
        j.append(change("b"))
    with pytest.raises(SeqOrderError):
        j.append(change("a"))
    j.append(change("a", class_name="U"))  # classes are independent


def test_retention_by_count_and_history_gone() -> None:
    j = MemoryJournal(max_count=3)
    for s in "abcdef":
        j.append(change(s))
    assert j.oldest("T") == "d" and j.size("T") == 3
    assert seqs(j.read("T", "c", inclusive=False, limit=10)) == ["d", "e", "f"]  # nothing after c is gone
    with pytest.raises(HistoryGone) as gone:
        j.read("T", "b", inclusive=False, limit=10)  # c was dropped
    assert gone.value.oldest == "d"
    with pytest.raises(HistoryGone):
        j.read("T", "c", inclusive=True, limit=10)
    with pytest.raises(HistoryGone):
        j.read("T", None, inclusive=False, limit=10)


def test_retention_by_age() -> None:
    j = MemoryJournal(max_age=0.05)
    j.append(change("a"))
    time.sleep(0.1)
    j.append(change("b"))
    assert j.oldest("T") == "b"
    with pytest.raises(HistoryGone):
        j.read("T", "a", inclusive=True, limit=10)


def test_a_journal_with_an_epoch_knows_nothing_before_it() -> None:
    j = MemoryJournal.starting_now()
    s = j.append(change())
    assert j.epoch_seq is not None and j.epoch_seq <= s
    with pytest.raises(HistoryGone):
        j.read("T", "0", inclusive=True, limit=10)
    assert seqs(j.read("T", j.epoch_seq, inclusive=False, limit=10)) == [s]
    assert j.position("Unknown") == j.epoch_seq and j.position("T") == s


def test_compaction_keeps_reads_right() -> None:
    j = MemoryJournal(max_count=100)
    for i in range(5000):
        j.append(change(f"{i:06d}"))
    assert seqs(j.read("T", "004949", inclusive=False, limit=3)) == ["004950", "004951", "004952"]
    assert j.size("T") == 100
