"""The memory journal's byte bounds (per class and in total) and the change record they measure."""

from __future__ import annotations

import pytest

from xia_broadcast.core.change import BadChangeRecord, Change, ChangeNotSerialisable
from xia_broadcast.core.schema import DocSchema
from xia_broadcast.journal import HistoryGone, MemoryBackend, MemoryJournal

from .journal_helpers import ChangeRecorder

KB = 1024


def big(i: int, class_name: str = "T", size: int = 10 * KB) -> Change:
    return Change(class_name, "I", "", {"_id": f"d{i}", "blob": "x" * size})


def test_a_class_keeps_at_most_max_bytes_oldest_dropped_first() -> None:
    j = MemoryJournal(max_bytes=50 * KB)
    seqs = [j.append(big(i)) for i in range(20)]
    size = big(0).encoded_size()
    assert 10 * KB < size < 11 * KB
    assert j.size("T") == 50 * KB // size == 4
    held = j.read("T", seqs[-5], inclusive=False, limit=10)
    assert j.held_bytes("T") == sum(c.encoded_size() for c in held) <= 50 * KB
    assert j.oldest("T") == seqs[-4]
    with pytest.raises(HistoryGone):
        j.read("T", seqs[-6], inclusive=False, limit=10)
    assert [c.seq for c in j.read("T", seqs[-5], inclusive=False, limit=10)] == seqs[-4:]


def test_the_newest_change_is_kept_even_when_larger_than_the_bound() -> None:
    j = MemoryJournal(max_bytes=KB)
    j.append(big(0))
    s = j.append(big(1, size=100 * KB))
    assert j.size("T") == 1 and j.head("T") == s and j.held_bytes() == big(1, size=100 * KB).encoded_size()


def test_the_total_bound_drops_the_oldest_change_of_any_class() -> None:
    j = MemoryJournal(max_total_bytes=60 * KB)
    a = [j.append(big(i, "A")) for i in range(3)]
    b = [j.append(big(i, "B")) for i in range(4)]
    # 7 changes of ~10.1 KB over a 60 KB total: the oldest (all A's but its newest) went first
    assert j.held_bytes() <= 60 * KB
    assert j.size("A") + j.size("B") == 5
    assert j.oldest("A") == a[-1] and j.oldest("B") == b[0]
    assert j.held_bytes() == j.held_bytes("A") + j.held_bytes("B")


def test_bytes_are_released_when_age_trims() -> None:
    now = [0.0]
    j = MemoryJournal(max_age=10, clock=lambda: now[0])
    j.append(big(0))
    now[0] = 11
    with pytest.raises(HistoryGone):
        j.read("T", None, inclusive=True, limit=1)
    assert j.held_bytes() == 0 and j.held_bytes("T") == 0


async def test_the_memory_backend_applies_the_byte_bound() -> None:
    b = MemoryBackend(max_bytes=30 * KB)
    await b.start(ChangeRecorder())
    for i in range(10):
        await b.publish(big(i))
    assert b.journal.size("T") == 2 and b.journal.held_bytes("T") <= 30 * KB


def test_a_change_record_round_trips() -> None:
    schema = DocSchema.from_dict({"key": ["k"], "privilege_keys": {"owner": ["owner"]},
                                  "fields": {"k": "str", "owner": "str"}}, "T")
    c = Change("T", "U", "1732565000123-0000000001", {"_id": "x", "k": "x", "owner": "ann"}, schema,
               prev={"_id": "x", "k": "x", "owner": "bob"})
    back = Change.from_record(c.to_record(), epoch="e1")
    assert (back.class_name, back.op, back.seq, back.data, back.prev, back.epoch, back.doc_id) == (
        "T", "U", c.seq, c.data, c.prev, "e1", "x")
    # the subjects ride along: a reader without the schema checks the same ACL subjects
    assert back.subjects == c.subjects == ("T/key/x", "T/owner/ann")
    assert back.prev_subjects == ("T/key/x", "T/owner/bob")
    assert Change.from_record(c.to_record(with_seq=False), seq="s2").seq == "s2"


def test_what_cannot_be_a_record_is_refused_clearly() -> None:
    with pytest.raises(ChangeNotSerialisable, match="only a Python object"):
        Change("T", "I", "", doc=object()).to_record()
    with pytest.raises(ChangeNotSerialisable, match="not JSON-ready"):
        Change("T", "I", "", {"_id": "x", "v": object()}).to_record()
    for bad in [b"not json", b"[]", b'{"class": "T"}', b'{"class": 1, "op": "I", "data": {}}']:
        with pytest.raises(BadChangeRecord):
            Change.from_record(bad)
