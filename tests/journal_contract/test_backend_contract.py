"""The contract every journal backend keeps (memory, SQLite and Redis run the same tests).

Positions, reads, retention by count and age, history gone (trimmed, before the epoch, another epoch), the
one callback receiving every change once and in order, concurrent publishers, watching.
"""

from __future__ import annotations

import asyncio

import pytest

from helpers import until
from xia_broadcast.core.change import Change
from xia_broadcast.journal import Backend, HistoryGone, Position, SeqOrderError
from xia_broadcast.journal.redis import id_of_seq, seq_of_id

from .journal_helpers import ChangeRecorder, MakeBackend, change


async def started(backend: Backend, recorder: ChangeRecorder | None = None, *watch: str) -> Backend:
    await backend.start(recorder if recorder is not None else ChangeRecorder())
    for class_name in watch:
        await backend.watch(class_name)
    await until(lambda: backend.ready, what="backend ready")
    return backend


def seqs(changes: list[Change]) -> list[str]:
    return [c.seq for c in changes]


async def test_publish_assigns_increasing_seqs_in_one_epoch(make_backend: MakeBackend) -> None:
    b = await started(await make_backend())
    positions = [await b.publish(change(i)) for i in range(50)]
    got = [p.seq for p in positions]
    assert got == sorted(got) and len(set(got)) == 50
    assert {p.epoch for p in positions} == {await b.epoch("T")}
    assert await b.position("T") == positions[-1]
    assert all(len(s) == 24 and id_of_seq(s) is not None for s in got)  # the fixed-width form


async def test_read_inclusive_exclusive_from_the_start_and_limit(make_backend: MakeBackend) -> None:
    b = await started(await make_backend())
    s = [(await b.publish(change(i))).seq for i in range(5)]
    assert seqs(await b.read("T", s[1], inclusive=True, limit=10)) == s[1:]
    assert seqs(await b.read("T", s[1], inclusive=False, limit=10)) == s[2:]
    assert seqs(await b.read("T", None, inclusive=False, limit=2)) == s[:2]
    assert seqs(await b.read("T", s[0], inclusive=True, limit=3)) == s[:3]
    assert await b.read("T", s[-1], inclusive=False, limit=10) == []
    read = await b.read("T", s[2], inclusive=True, limit=1)
    assert read[0].data == {"_id": "d2", "n": 2} and read[0].epoch == await b.epoch("T")


async def test_the_epoch_start_of_an_empty_class_misses_nothing(make_backend: MakeBackend) -> None:
    b = await started(await make_backend())
    start = await b.position("Empty")
    assert start.epoch == await b.epoch("Empty")
    first = await b.publish(change(1, "Empty"))
    assert first.seq > start.seq
    assert seqs(await b.read("Empty", start.seq, inclusive=False, limit=10)) == [first.seq]
    assert seqs(await b.read("Empty", start.seq, inclusive=False, limit=10, epoch=start.epoch)) == [first.seq]


async def test_classes_are_independent(make_backend: MakeBackend) -> None:
    b = await started(await make_backend())
    a = await b.publish(change(1, "A"))
    await b.publish(change(2, "B"))
    assert [c.class_name for c in await b.read("A", None, inclusive=True, limit=10)] == ["A"]
    assert (await b.position("A")).seq == a.seq


async def test_a_caller_chosen_seq_must_follow_the_head(make_backend: MakeBackend) -> None:
    b = await started(await make_backend())
    last = await b.publish(change(1))
    ms = int(last.seq[:13])
    with pytest.raises(SeqOrderError):
        await b.publish(Change("T", "I", last.seq, {"_id": "again"}))
    chosen = f"{ms + 5:013d}-{7:010d}"
    assert (await b.publish(Change("T", "I", chosen, {"_id": "chosen"}))).seq == chosen
    with pytest.raises(SeqOrderError):
        await b.publish(Change("T", "I", f"{ms + 5:013d}-{6:010d}", {"_id": "before"}))
    assert seqs(await b.read("T", last.seq, inclusive=False, limit=10)) == [chosen]


async def test_retention_by_count_and_history_gone(make_backend: MakeBackend) -> None:
    b = await started(await make_backend(max_count=3))
    s = [(await b.publish(change(i))).seq for i in range(6)]
    assert seqs(await b.read("T", s[2], inclusive=False, limit=10)) == s[3:]  # nothing after s[2] is gone
    assert seqs(await b.read("T", s[3], inclusive=True, limit=10)) == s[3:]
    with pytest.raises(HistoryGone) as gone:
        await b.read("T", s[1], inclusive=False, limit=10)  # s[2] was dropped
    assert gone.value.oldest == s[3] and gone.value.epoch == await b.epoch("T")
    with pytest.raises(HistoryGone):
        await b.read("T", s[2], inclusive=True, limit=10)
    with pytest.raises(HistoryGone):
        await b.read("T", None, inclusive=False, limit=10)


async def test_retention_by_age(make_backend: MakeBackend) -> None:
    clock = make_backend.clock()
    b = await started(await make_backend(max_age=60.0, clock=clock))
    old = [(await b.publish(change(i))).seq for i in range(2)]
    clock.advance(30)
    assert seqs(await b.read("T", None, inclusive=True, limit=10)) == old  # younger than 60 s: kept
    clock.advance(31)
    new = (await b.publish(change(2))).seq
    with pytest.raises(HistoryGone):
        await b.read("T", old[0], inclusive=True, limit=10)
    assert seqs(await b.read("T", old[1], inclusive=False, limit=10)) == [new]


async def test_a_position_of_another_epoch_or_before_the_epoch_is_history_gone(make_backend: MakeBackend) -> None:
    b = await started(await make_backend())
    p = await b.publish(change(1))
    assert seqs(await b.read("T", p.seq, inclusive=True, limit=10, epoch=p.epoch)) == [p.seq]
    with pytest.raises(HistoryGone) as gone:
        await b.read("T", p.seq, inclusive=True, limit=10, epoch="0000000000001-deadbeef")
    assert gone.value.epoch == p.epoch
    with pytest.raises(HistoryGone):
        await b.read("T", "0000000000001-0000000000", inclusive=False, limit=10)  # before the epoch began


async def test_on_change_receives_every_change_once_in_order_with_its_position(make_backend: MakeBackend) -> None:
    rec = ChangeRecorder()
    b = await started(await make_backend(), rec, "T")
    sent = [await b.publish(Change("T", "U", "", {"_id": f"d{i}", "n": i}, prev={"_id": f"d{i}", "n": -i}))
            for i in range(30)]
    await rec.until_count(30)
    await asyncio.sleep(0.05)  # room for a duplicate to show up
    assert [Position(c.seq, c.epoch) for c in rec.changes] == sent
    last = rec.changes[-1]
    assert (last.op, last.data, last.prev, last.doc_id) == ("U", {"_id": "d29", "n": 29}, {"_id": "d29", "n": -29},
                                                            "d29")
    assert last.subjects == ("T/key/d29",)


async def test_concurrent_publishers_are_delivered_in_seq_order(make_backend: MakeBackend) -> None:
    rec = ChangeRecorder()
    b = await started(await make_backend(), rec, "T")

    async def publisher(k: int) -> list[str]:
        return [(await b.publish(change(k * 1000 + i))).seq for i in range(40)]

    results = await asyncio.gather(*(publisher(k) for k in range(5)))
    for r in results:
        assert r == sorted(r)  # each publisher's own changes in its order
    published = sorted(s for r in results for s in r)
    assert len(set(published)) == 200
    await rec.until_count(200)
    assert rec.seqs() == published
    assert seqs(await b.read("T", None, inclusive=True, limit=1000)) == published


async def test_watch_returns_the_position_after_which_everything_is_delivered(make_backend: MakeBackend) -> None:
    rec = ChangeRecorder()
    b = await started(await make_backend(), rec)
    before = await b.publish(change(1, "W"))
    at = await b.watch("W")
    assert at == before
    after = [await b.publish(change(i, "W")) for i in range(2, 5)]
    await rec.until_count(3, "W")
    assert [s for s in rec.seqs("W") if s > at.seq] == [p.seq for p in after]
    assert await b.watch("W") == after[-1]  # watched already: the last position delivered


async def test_ready_after_start_and_not_after_close(make_backend: MakeBackend) -> None:
    b = await make_backend()
    assert not b.ready
    await started(b)
    assert b.ready
    await b.close()
    assert not b.ready
    await b.close()  # idempotent


async def test_a_positions_seq_round_trips_through_a_stream_id() -> None:
    seq = "1732565000123-0000000042"
    assert id_of_seq(seq) == "1732565000123-42" and seq_of_id("1732565000123-42") == seq
    assert id_of_seq("b") is None and id_of_seq("1732565000123-42") is None


async def test_reading_page_by_page_gives_every_change_once(make_backend: MakeBackend) -> None:
    b = await started(await make_backend())
    sent = [(await b.publish(change(i))).seq for i in range(23)]
    got: list[str] = []
    cursor: str | None = None
    for _ in range(10):  # 23 changes in pages of 5: 5 pages, then an empty one
        page = await b.read("T", cursor, inclusive=False, limit=5)
        if not page:
            break
        got += seqs(page)
        cursor = page[-1].seq
    assert got == sent


async def test_a_position_after_the_head_is_history_gone(make_backend: MakeBackend) -> None:
    """No position of the epoch lies after its head (one from a store that started again, or made up): going
    live from it would skip every change up to it."""
    b = await started(await make_backend())
    p = await b.publish(change(1))
    later = f"{int(p.seq[:13]) + 60_000:013d}-{0:010d}"
    with pytest.raises(HistoryGone):
        await b.read("T", later, inclusive=False, limit=10)
    with pytest.raises(HistoryGone):
        await b.read("T", later, inclusive=False, limit=10, epoch=p.epoch)
    assert await b.read("T", p.seq, inclusive=False, limit=10) == []  # the head itself is a position


async def test_publish_many_appends_in_order_as_publishing_one_by_one_would(make_backend: MakeBackend) -> None:
    rec = ChangeRecorder()
    b = await started(await make_backend(), rec, "T")
    one = await b.publish(change(0))
    many = await b.publish_many([change(i) for i in range(1, 31)])
    got = [p.seq for p in many]
    assert got == sorted(got) and len(set(got)) == 30 and got[0] > one.seq
    assert {p.epoch for p in many} == {one.epoch}
    assert seqs(await b.read("T", one.seq, inclusive=False, limit=100)) == got
    await rec.until_count(31)
    assert rec.seqs() == [one.seq, *got]
