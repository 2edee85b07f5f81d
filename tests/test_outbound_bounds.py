"""Outbound memory: clients that stop reading hold at most ``max_outbound_bytes`` of the server's memory in
all (plus one message each), and lose nothing: once they read again they get every change, from the journal.

The server runs in a child process, so that its resident memory is measured alone.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable

import httpx
import pytest

from helpers import RECV_TIMEOUT, ServerProcess, raw_subscribe, read_frame

LINUX_ONLY = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

MIB = 1024 * 1024
STALLED = 120
MESSAGE = 48 * 1024  # bytes of note per document
BATCH = 40  # documents per POST /publish: 1.9 MB leaving for each subscriber in one fan-out
BATCHES = 2
OUTBOUND = 8 * MIB


@LINUX_ONLY
async def test_stalled_clients_hold_bounded_memory_and_lose_nothing(
        server_process: Callable[..., ServerProcess]) -> None:
    server = server_process(env={"XIA_BROADCAST_MAX_OUTBOUND_BYTES": str(OUTBOUND),
                                 "XIA_BROADCAST_LOG_LEVEL": "WARNING"})
    stalled = [await raw_subscribe(server.port, {"Order": {}}, stall=True) for _ in range(STALLED)]
    good_reader, good_writer = await raw_subscribe(server.port, {"Order": {}})
    before = server.rss()
    published = 0
    async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
        for b in range(BATCHES):
            changes = [{"class": "Order", "op": "I",
                        "doc": {"_id": f"O-{b}-{i}", "order_id": f"O-{b}-{i}", "note": "n" * MESSAGE}}
                       for i in range(BATCH)]
            resp = await http.post(f"http://127.0.0.1:{server.port}/publish", json={"changes": changes})
            assert resp.status_code == 200, resp.text
            published += BATCH
            # the good client keeps up: it gets the batch while the others hold the budget
            for _ in range(BATCH):
                opcode, _ = await read_frame(good_reader)
                assert opcode == 0x1
    growth = server.rss() - before
    # written to sockets: at most max_outbound_bytes plus one message per socket; queued: references to
    # messages shared by the one view; the journal: every change once. 64 MiB is several times that, and a
    # quarter of what writing every batch to every socket would hold (STALLED x BATCH x MESSAGE = 230 MB).
    assert growth < 64 * MIB, f"server grew by {growth / MIB:.0f} MiB for {STALLED} stalled clients"

    # a stalled client that reads again gets every change, in order, nothing twice
    reader, writer = stalled[0]
    writer.transport.resume_reading()
    ids = []
    for _ in range(published + 10):
        opcode, payload = await read_frame(reader, timeout=RECV_TIMEOUT)
        assert opcode == 0x1
        ids.append(json.loads(payload)["message"]["_id"])
        if len(ids) == published:
            break
    assert ids == [f"O-{b}-{i}" for b in range(BATCHES) for i in range(BATCH)]
    for _, w in [*stalled, (good_reader, good_writer)]:
        w.close()
    await asyncio.sleep(0)
