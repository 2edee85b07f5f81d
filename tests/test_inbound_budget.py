"""One connection must not stall the loop: what a client sends is parsed a bounded chunk per loop turn, and a
client sending more frames than the protocol needs is closed with 4408 (``server/inbound.py``).

The server runs as a process of its own, so the test's measuring loop is not the server's; the attacker is
another process (``flood_client.py``) that reconnects and streams tiny frames for the whole measurement."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import RECV_TIMEOUT, ServerProcess, recv_json, subscribe
from xia_broadcast.server.inbound import FrameBudget

FLOOD_CLIENT = Path(__file__).with_name("flood_client.py")


def test_a_frame_budget_allows_its_burst_then_its_rate() -> None:
    budget = FrameBudget(burst=10, rate=2.0, now=100.0)
    assert budget.spend(10, 100.0)  # the burst
    assert not budget.spend(1, 100.0)  # one more at once: overdrawn
    fresh = FrameBudget(burst=10, rate=2.0, now=100.0)
    assert fresh.spend(10, 100.0) and fresh.spend(2, 101.0)  # two more a second later
    assert not fresh.spend(2, 101.5)  # only one more came in half a second
    again = FrameBudget(burst=10, rate=2.0, now=0.0)
    assert again.spend(5, 0.0) and again.spend(10, 1000.0) and not again.spend(1, 1000.0)  # refills to the burst


async def latencies(port: int, count: int, rate: float) -> list[float]:
    """Publish ``count`` changes at ``rate`` per second over HTTP; each one's publish-to-receipt time, in ms,
    as a subscriber of its own sees it."""
    ws, _ = await subscribe(f"ws://127.0.0.1:{port}/ws", {"Order": {}})
    got: list[float] = []
    async with ws, httpx.AsyncClient(trust_env=False, timeout=RECV_TIMEOUT) as http:
        for i in range(count):
            started = time.perf_counter()
            doc = {"_id": f"O-{i:06d}", "order_id": f"O-{i:06d}", "note": "n"}
            response = await http.post(f"http://127.0.0.1:{port}/publish",
                                       json={"class": "Order", "op": "I", "doc": doc})
            assert response.status_code == 200, response.text
            message = await recv_json(ws)
            assert message["message"]["_id"] == doc["_id"]
            got.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(max(0.0, 1 / rate - (time.perf_counter() - started)))
    return got


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@pytest.mark.parametrize("kind", ["fragments", "pings", "text"])
async def test_a_client_streaming_tiny_frames_is_closed_4408_and_a_good_clients_p99_stays_within_2x(
        server_process: Callable[..., ServerProcess], kind: str) -> None:
    server = server_process()
    await latencies(server.port, 20, 50)  # warm up: connections, caches
    quiet = await latencies(server.port, 100, 50)
    attacker = await asyncio.create_subprocess_exec(
        sys.executable, str(FLOOD_CLIENT), str(server.port), kind, "3.0", stdout=subprocess.PIPE)
    await asyncio.sleep(0.3)  # the attack is under way
    attacked = await latencies(server.port, 100, 50)
    out, _ = await asyncio.wait_for(attacker.communicate(), 30)
    report: dict[str, Any] = json.loads(out)
    closes = [code for code in report["codes"] if code is not None]
    assert closes and set(closes) == {4408}, report
    # within 2x of the quiet p99, with at least 20 ms of room: on two cores the attacker process itself takes
    # one, and the measuring client shares this test process with the rest of the suite, so one hiccup of a
    # few milliseconds is this machine's noise. Without the budget the attacked p99 was 843 to 1,665 ms.
    assert p99(attacked) <= max(2 * p99(quiet), p99(quiet) + 20.0), (p99(quiet), p99(attacked), report)


async def test_a_large_message_arriving_at_once_is_parsed_over_several_turns_and_delivered_whole(
        server_process: Callable[..., ServerProcess]) -> None:
    """A handshake much larger than one parse chunk, in one write: the chunks add up to the message."""
    server = server_process()
    padding = {"x" * 50: "y" * 30_000}  # an unknown subscription key: passed on and echoed
    ws, confirmation = await subscribe(f"ws://127.0.0.1:{server.port}/ws", {"Order": padding})
    await ws.close()
    assert confirmation["Order"]["x" * 50] == "y" * 30_000
