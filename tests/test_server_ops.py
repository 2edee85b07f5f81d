"""Operations: /healthz, /readyz, /metrics, keepalive, and graceful shutdown that loses nothing queued."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import (
    ServerFactory,
    http_base,
    order,
    publish_orders,
    raw_subscribe,
    read_frame,
    read_until_closed,
    recv_json,
    recv_until,
    refused,
    settled_health,
    stalled_socket,
    subscribe,
    until,
    ws_connect,
)
from xia_broadcast.server.native import NativeServer

EU_SCOPE = [{"fn": "region", "op": "==", "val": "EU"}]


def documented_metrics() -> list[str]:
    """The metric names the ``GET /metrics`` row of docs/protocol.md promises."""
    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text(encoding="utf-8")
    row = next(line for line in doc.splitlines() if line.startswith("| `GET /metrics`"))
    names = re.findall(r"`(xia_[a-z_]+)`", row)
    assert len(names) >= 10, row
    return names


def samples(text: str) -> dict[str, float]:
    """Every sample of a Prometheus text exposition, by name plus labels."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


async def test_healthz_and_readyz(server: NativeServer, http: httpx.AsyncClient) -> None:
    base = http_base(server)
    empty = (await http.get(f"{base}/healthz")).json()
    a, _ = await subscribe(server.url, {"Order": {}, "Customer": {}})
    b, _ = await subscribe(server.url, {"Order": {}})
    c, _ = await subscribe(server.url, {"Order": {"data_scope": EU_SCOPE}})
    async with a, b, c:
        busy = (await http.get(f"{base}/healthz")).json()
        ready = await http.get(f"{base}/readyz")
    assert empty == {"status": "ok", "connections": 0, "views": 0, "shutting_down": False}
    # a and b share the Order view; c has its own; a's Customer view makes three
    assert busy == {"status": "ok", "connections": 3, "views": 3, "shutting_down": False}
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    after = await settled_health(http, server, 0)
    assert (after["connections"], after["views"]) == (0, 0)


async def test_metrics_after_deliveries(server: NativeServer, http: httpx.AsyncClient) -> None:
    wide, _ = await subscribe(server.url, {"Order": {}, "Customer": {}})
    small_1, _ = await subscribe(server.url, {"Order": {"catalog": {"amount": None}}})
    small_2, _ = await subscribe(server.url, {"Order": {"catalog": {"amount": None}}})
    code, _, _ = await refused(server.url, json.dumps({"Invoice": {}}))
    async with wide, small_1, small_2:
        publish_orders(server, range(1, 11))
        server.service.publish_nowait("Customer", "I", {"_id": "c1", "customer_id": "c1"})
        server.service.publish_nowait("Customer", "I", {"_id": "c2", "customer_id": "c2"})
        wide_got = [await recv_json(wide) for _ in range(12)]
        small_got = [await recv_until(ws, "O-000010") for ws in (small_1, small_2)]
        text = (await http.get(f"{http_base(server)}/metrics")).text
    assert code == 4404
    assert len(wide_got) == 12 and [len(g) for g in small_got] == [10, 10]
    m = samples(text)
    assert m["xia_connections"] == 3
    assert m["xia_subscriptions"] == 4
    assert m["xia_views"] == 3
    assert m["xia_queue_depth"] == 0
    assert m["xia_changes_total"] == 12
    assert m["xia_deliveries_total"] == 12 + 10 + 10
    # encoded once per view and change: the two small subscribers share one encoding
    assert m["xia_encodings_total"] == 10 + 10 + 2
    assert m["xia_refusals_total"] == 1
    # a healthy run: every other counter (views failing, subscribers cut off, lagging or replaying) is 0
    core = {"xia_changes_total", "xia_deliveries_total", "xia_encodings_total", "xia_refusals_total",
            "xia_gc_freezes_total"}
    trouble = {n: v for n, v in m.items() if n.startswith("xia_") and n.endswith("_total") and n not in core}
    assert "xia_view_errors_total" in trouble and all(v == 0 for v in trouble.values()), trouble
    count = m["xia_publish_to_send_seconds_count"]
    assert 1 <= count <= 12 + 10 + 10 + 3  # at most one observation per socket write
    assert 0 < m["xia_publish_to_send_seconds_sum"] < 5 * count
    assert m["xia_publish_to_send_seconds_bucket{le=+Inf}"] == count
    assert m["xia_publish_to_send_seconds_bucket{le=2.5}"] == count


async def test_metrics_served_are_the_documented_ones(server: NativeServer, http: httpx.AsyncClient) -> None:
    """docs/protocol.md section 6 names every metric, and /metrics serves exactly those."""
    text = (await http.get(f"{http_base(server)}/metrics")).text
    served = {f.name for f in text_string_to_metric_families(text)
              if f.name.startswith("xia_") and not f.name.endswith("_created")}
    documented = {n.removesuffix("_total") for n in documented_metrics()}
    assert served == documented


async def test_metrics_count_1009_as_a_refusal(make_server: ServerFactory, http: httpx.AsyncClient) -> None:
    server = await make_server(max_message_size=1024)
    code, _, _ = await refused(server.url, "x" * 2000)
    assert code == 1009
    m = samples((await http.get(f"{http_base(server)}/metrics")).text)
    assert m["xia_refusals_total"] == 1


async def test_confirmation_is_first_and_head_seq_leaves_no_gap_while_changes_stream(server: NativeServer) -> None:
    """Clients subscribing while changes are being published get the confirmation before any change; the
    first change they get is the one right after the confirmation's ``head_seq``, then publish order."""
    stop = asyncio.Event()
    published: list[str] = []

    async def publisher() -> None:
        while not stop.is_set() and len(published) < 20_000:
            published.append(server.service.publish_nowait("Order", "I", order(len(published))))
            await asyncio.sleep(0)

    task = asyncio.get_running_loop().create_task(publisher())
    try:
        for _ in range(10):
            # the client stops reading after six messages while changes keep coming: with a bounded queue its
            # library would stop reading the socket and never see the server's answer to its close
            async with ws_connect(server.url, max_queue=None) as ws:
                await ws.send(json.dumps({"Order": {"catalog": {"amount": None}}}))
                first = await recv_json(ws)
                following = [await recv_json(ws) for _ in range(5)]
            assert "doc_class" not in first and set(first) == {"Order"}, first
            head = first["Order"]["head_seq"]
            start = published.index(head) + 1 if head in published else 0
            assert [m["seq"] for m in following] == published[start:start + 5]
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_keepalive_drops_a_silent_client_and_keeps_a_live_one(make_server: ServerFactory) -> None:
    server = await make_server(ping_interval=0.2, ping_timeout=0.2)
    live, _ = await subscribe(server.url, {"Order": {}})
    # a client that stops reading (its library stops reading the socket once one frame waits) never pongs
    silent, _ = await subscribe(server.url, {"Order": {}}, max_queue=1, close_timeout=0.5)
    async with live, silent:
        publish_orders(server, range(1, 4))
        started = time.monotonic()
        got = [await recv_json(live) for _ in range(3)]
        await until(lambda: time.monotonic() - started >= 1.2, poll=0.1, what="several ping intervals")
        health = server.service.health()
        seq = publish_orders(server, range(4, 5))
        after = await recv_json(live)
    assert [m["message"]["_id"] for m in got] == ["O-000001", "O-000002", "O-000003"]
    assert after["seq"] == seq[0]
    assert health["connections"] == 1, "the silent client was not dropped"


async def test_keepalive_pings_are_spread_over_the_interval_not_sent_to_everyone_at_once(
        make_server: ServerFactory) -> None:
    interval = 0.4
    server = await make_server(ping_interval=interval)
    rounds = len(server.keepalive_rounds)
    assert rounds == 8  # one every 50 ms
    clients = [await raw_subscribe(server.port, {"Order": {}}) for _ in range(5 * rounds)]
    per_round = Counter(sock.keepalive_slot for sock in server.service.hub.connections)
    assert sorted(per_round.values()) == [5] * rounds  # dealt round-robin
    assert [len(r) for r in server.keepalive_rounds] == [per_round[k] for k in range(rounds)]

    async def pings(reader: asyncio.StreamReader, until_t: float) -> list[float]:
        """When each ping reached this client until ``until_t`` (pongs are not needed within the test)."""
        arrivals: list[float] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(until_t - time.monotonic()):
                while True:
                    opcode, _ = await read_frame(reader)
                    if opcode == 0x9:
                        arrivals.append(time.monotonic())
        return arrivals

    # pings sent while the clients subscribed are read at once, at t0; the second interval after t0 holds
    # only pings sent then: one per connection, a round every eighth of the interval. Sent all at once,
    # they would arrive within milliseconds of each other
    t0 = time.monotonic()
    got = await asyncio.gather(*(pings(r, t0 + 2.5 * interval) for r, _ in clients))
    window = sorted(t for arrivals in got for t in arrivals if t0 + interval <= t < t0 + 2 * interval)
    assert len(window) >= 4 * rounds, window  # most of the 40 connections were pinged in it
    assert window[-1] - window[0] >= interval / 2, window
    for _, writer in clients:
        writer.close()
    await until(lambda: not any(server.keepalive_rounds), what="every closed connection left its round")


# -- shutdown ---------------------------------------------------------------------------------------------


async def test_graceful_shutdown_delivers_everything_queued_then_1001(make_server: ServerFactory) -> None:
    """2000 changes published in one burst (twice the default queue bound), shutdown called at once: every
    subscriber gets all it may see, in order, then 1001."""
    server = await make_server(shutdown_timeout=10.0)
    requests = [{"Order": {}}, {"Order": {}}, {"Order": {"data_scope": EU_SCOPE}},
                {"Order": {"catalog": {"amount": None}, "show_hidden": True}}]
    clients = [(await subscribe(server.url, r))[0] for r in requests]
    readers = [asyncio.get_running_loop().create_task(read_until_closed(ws, timeout=20)) for ws in clients]
    regions = ["EU", "US", "APAC", "EU"]
    seqs = [server.service.publish_nowait("Order", "I", order(i, region=regions[i % 4])) for i in range(2000)]
    started = time.monotonic()
    async with asyncio.timeout(20):  # no new task: shutdown starts before the loop has written anything
        await server.shutdown()
    elapsed = time.monotonic() - started
    results = [await r for r in readers]
    for ws in clients:
        await ws.close()

    eu = [s for i, s in enumerate(seqs) if regions[i % 4] == "EU"]
    for (messages, code, reason), expected in zip(results, [seqs, seqs, eu, seqs], strict=True):
        assert [m["seq"] for m in messages] == expected
        assert (code, reason) == (1001, "shutting down")
    assert results[3][0][0]["message"] == {"_id": "O-000000", "amount": 0.0}
    assert elapsed < 10


async def test_readyz_is_503_during_shutdown_and_a_slow_reader_still_gets_everything(
        make_server: ServerFactory, http: httpx.AsyncClient) -> None:
    server = await make_server(queue_messages=10_000, queue_bytes=1 << 30, shutdown_timeout=10.0)
    base = http_base(server)
    before = await http.get(f"{base}/readyz")  # opens the keep-alive connection used during shutdown
    slow, _ = await subscribe(server.url, {"Order": {}}, sock=stalled_socket(server.port), max_queue=1)
    note = "x" * 32_768
    seqs: list[str] = []
    for i in range(250):  # ~8 MB: more than the kernel buffers take, so the server must wait for it
        seqs.append(server.service.publish_nowait("Order", "I", order(i, note=note)))
        await asyncio.sleep(0)
    shutdown = asyncio.get_running_loop().create_task(server.shutdown())
    await asyncio.sleep(0.2)
    during = await http.get(f"{base}/readyz")
    health = (await http.get(f"{base}/healthz")).json()
    assert not shutdown.done(), "shutdown did not wait for the slow reader"
    messages, code, reason = await read_until_closed(slow, timeout=15)
    await asyncio.wait_for(shutdown, 15)

    assert (before.status_code, before.json()) == (200, {"ready": True})
    assert (during.status_code, during.json()) == (503, {"ready": False})
    assert health["shutting_down"] is True
    assert [m["seq"] for m in messages] == seqs
    assert (code, reason) == (1001, "shutting down")


async def test_no_new_connections_after_shutdown(make_server: ServerFactory) -> None:
    server = await make_server()
    await server.shutdown()
    with pytest.raises(OSError):
        async with ws_connect(server.url, open_timeout=2):
            pass


async def test_shutdown_with_idle_clients_is_prompt(make_server: ServerFactory) -> None:
    server = await make_server()
    clients = [(await subscribe(server.url, {"Order": {}}))[0] for _ in range(20)]
    readers = [asyncio.get_running_loop().create_task(read_until_closed(ws)) for ws in clients]
    started = time.monotonic()
    async with asyncio.timeout(10):
        await server.shutdown()
    elapsed = time.monotonic() - started
    results: list[Any] = [await r for r in readers]
    assert all((code, reason) == (1001, "shutting down") and msgs == [] for msgs, code, reason in results)
    assert elapsed < 1.5, elapsed  # well under shutdown_timeout (2 s): nobody was waited for


async def test_metrics_carry_the_standard_process_metrics(server: NativeServer, http: httpx.AsyncClient) -> None:
    m = samples((await http.get(f"{http_base(server)}/metrics")).text)
    # the figures are this process's own (the server runs in it)
    assert m["process_open_fds"] >= 1 and m["process_resident_memory_bytes"] > 10 * 1024 * 1024
    assert m["process_max_fds"] >= m["process_open_fds"]
    assert "python_info" in {k.split("{")[0] for k in m}
