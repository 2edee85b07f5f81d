"""The garbage-collector policy (``gc_freeze_interval``, ``server/collector.py``): long-lived objects leave
the collector's generations, and freezing them leaks nothing.

Freezing is safe only if what the server keeps for a while never dies in a reference cycle (a frozen cycle is
never reclaimed). The churn test drives every kind of connection life (own and shared views, snapshots,
refusals, closes by either side, HTTP publishing, a lagging subscriber) with freezing every 10 ms, then
unfreezes and asks the collector what it finds unreachable: nothing of the server's may be there.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import json
import weakref
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.protocol import Protocol, Side

from helpers import (
    ServerFactory,
    order,
    order_change,
    post_publish,
    recv_json,
    refused,
    subscribe,
    until,
)
from xia_broadcast.server import collector
from xia_broadcast.server.connection import WebSocketConnection


def tracked_ids() -> set[int]:
    """Ids of the objects in the collector's generations (frozen ones are not there)."""
    return {id(o) for o in gc.get_objects()}


async def test_connections_leave_the_generations_the_collector_walks(make_server: ServerFactory) -> None:
    server = await make_server(gc_freeze_interval=0.05)
    clients = [(await subscribe(server.url, {"Order": {"data_scope": [
        {"fn": "customer", "op": "==", "val": f"c{i}"}]}}))[0] for i in range(20)]
    conns = websockets_of(server)
    hub_conns = list(server.service.hub.connections.values())
    assert len(conns) == 20 and len(hub_conns) == 20
    freezes = server.service.collector.freezes
    await until(lambda: server.service.collector.freezes >= freezes + 2, what="two freezes")
    walked = tracked_ids()
    # the socket, its parser, the Hub's connection, its member, view and compiled scope: none is walked again
    members = [m for h in hub_conns for m in h.members.values()]
    long_lived = ([(c, c.ws, c.writer) for c in conns] + [(h,) for h in hub_conns]
                  + [(m, m.view, m.view.shared_scope, m.view.predicate) for m in members])
    stray = [type(o).__name__ for group in long_lived for o in group if id(o) in walked]
    assert stray == []
    assert gc.get_freeze_count() > 0
    for ws in clients:
        await ws.close()


async def test_without_the_policy_they_stay_in_the_generations(make_server: ServerFactory) -> None:
    """The control: the same connections with ``gc_freeze_interval = 0`` are walked by full passes."""
    server = await make_server(gc_freeze_interval=0)
    ws, _ = await subscribe(server.url, {"Order": {}})
    await asyncio.sleep(0.2)
    (conn,) = websockets_of(server)
    assert id(conn) in tracked_ids()
    assert server.service.collector.freezes == 0
    await ws.close()


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No automatic collection meanwhile: what the test asks of the collector is all it finds."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def cyclic_garbage() -> list[Any]:
    """Unfreeze, then every object the collector finds unreachable (kept, not freed, to be inspected)."""
    gc.unfreeze()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    return found


def ours(objects: list[Any]) -> collections.Counter[str]:
    """The server's objects among ``objects``, by type: this project's, and the server side's WebSocket parsers
    (the test's own clients, in this process too, are the ``websockets`` library's business)."""
    return collections.Counter(
        f"{type(o).__module__}.{type(o).__qualname__}" for o in objects
        if type(o) not in weakref.ProxyTypes  # a dead weak proxy cannot even be asked its class
        and (type(o).__module__.startswith("xia_broadcast") or (isinstance(o, Protocol) and o.side is Side.SERVER)))


def websockets_of(server: Any) -> list[WebSocketConnection]:
    return [c for c in server.sockets if isinstance(c, WebSocketConnection)]


async def churn(server: Any, http: httpx.AsyncClient, rounds: int, per_round: int) -> int:
    """Connections of every kind come and go while changes are published; returns the connections made."""
    made = 0
    for r in range(rounds):
        clients = []
        for i in range(per_round):
            kind = i % 5
            if kind == 0:
                request: dict[str, Any] = {"Order": {"data_scope": [
                    {"fn": "customer", "op": "==", "val": f"c{r}-{i}"}]}}
            elif kind == 1:
                request = {"Order": {"data_scope": [{"fn": "region", "op": "==", "val": "EU"}]}}
            elif kind == 2:
                request = {"Order": {"snapshot": True, "catalog": {"_id": None, "amount": None}}}
            elif kind == 3:
                request = {"Order": {"start_seq": "0", "data_scope": [{"fn": "amount", "op": ">", "val": 3}]},
                           "_options": {"control": True}}
            else:
                request = {"Order": {}, "Customer": {}}
            clients.append((await subscribe(server.url, request, max_queue=None))[0])
            made += 1
            await asyncio.sleep(0.003)  # several freezes happen while connections are open
        for i in range(40):
            await server.service.publish("Order", "I", order(r * 100 + i, customer=f"c{r}-0"))
        for i in range(5):
            assert (await post_publish(http, server, order_change(r * 100 + 50 + i, op="U"))).status_code == 200
        await server.service.publish("Order", "D", order(r * 100 + 1, customer=f"c{r}-0"))
        for ws in clients[:3]:
            await recv_json(ws)
        # refusals: a bad handshake, an unknown class, a bad scope
        assert (await refused(server.url, "not json"))[0] == 4400
        assert (await refused(server.url, json.dumps({"Nope": {}})))[0] == 4404
        assert (await refused(server.url, json.dumps({"Order": {"data_scope": [{"fn": 1}]}})))[0] >= 4000
        made += 3
        # half close themselves; the server closes the other half
        for ws in clients[::2]:
            await ws.close()
        left = len(clients[1::2])
        await until(lambda left=left: len(websockets_of(server)) == left,
                    what=lambda left=left: f"{len(websockets_of(server))} WebSockets open, not {left}")
        for conn in websockets_of(server):
            conn.close(1001, "going away")
        for ws in clients[1::2]:
            with contextlib.suppress(ConnectionClosed, asyncio.TimeoutError):
                while True:
                    await asyncio.wait_for(ws.recv(), 2)
            await ws.close()
        await until(lambda: not websockets_of(server) and not server.service.hub.connections,
                    what=lambda: f"{len(websockets_of(server))} WebSockets left")
    return made


@pytest.mark.parametrize("journal", ["memory", "sqlite"])
async def test_connection_churn_with_freezing_leaks_no_cycle(make_server: ServerFactory, http: httpx.AsyncClient,
                                                              tmp_path: Any, journal: str) -> None:
    """Every connection, view, snapshot pass and refusal is freed by reference counting: with freezing every
    10 ms (so nearly everything is frozen while alive), the collector finds none of the server's objects
    unreachable afterwards (what it finds of the test's own clients, in this process too, is theirs)."""
    await until(lambda: collector._running == 0, what="the servers of earlier tests to stop")
    gc.collect()
    extra = {"data": str(tmp_path / "data")} if journal == "sqlite" else {}
    server = await make_server(gc_freeze_interval=0.01, queue_messages=4, **extra)
    await churn(server, http, rounds=4, per_round=25)
    assert server.service.collector.freezes > 20
    with collector_paused():
        await server.shutdown()  # the policy stops (this process's last one unfreezes; cyclic_garbage does too)
        garbage = cyclic_garbage()
    assert ours(garbage) == {}, f"the server's objects died in reference cycles: {ours(garbage).most_common(12)}"


async def test_the_interval_shortens_while_young_collections_are_long_and_comes_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that frees old objects as fast as it makes new ones never reaches CPython's own young
    collection: all it made since the last freeze is young. A freeze whose collection takes longer than the
    budget halves the interval (down to 50 ms); one well under it doubles it (up to ``gc_freeze_interval``)."""
    policy = collector.CollectorPolicy(1.0)
    monkeypatch.setattr(collector, "YOUNG_COLLECTION_BUDGET", 0.0)  # every collection is too long
    for expected in (0.5, 0.25, 0.125, 0.0625, 0.05, 0.05):
        policy.freeze()
        assert policy.current == expected
    monkeypatch.setattr(collector, "YOUNG_COLLECTION_BUDGET", 3600.0)  # every collection is short
    for expected in (0.1, 0.2, 0.4, 0.8, 1.0, 1.0):
        policy.freeze()
        assert policy.current == expected
    gc.unfreeze()  # no server runs this policy: leave the process's collector as it was


async def test_young_collections_start_later_while_a_server_runs_and_as_before_after(
        make_server: ServerFactory) -> None:
    """While a server's policy runs, CPython's first threshold is ``YOUNG_THRESHOLD`` (a fan-out's messages,
    alive until the next write, are not walked several times per change); when the last server stops, the
    thresholds it found are set again. A larger threshold the application set is kept, and so is 0 (automatic
    collection off)."""
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 11, 12)
        server = await make_server(gc_freeze_interval=0.05)
        assert gc.get_threshold() == (collector.YOUNG_THRESHOLD, 11, 12)
        await server.shutdown()
        assert gc.get_threshold() == (700, 11, 12)
        gc.set_threshold(10 * collector.YOUNG_THRESHOLD, 11, 12)
        server = await make_server(gc_freeze_interval=0.05)
        assert gc.get_threshold() == (10 * collector.YOUNG_THRESHOLD, 11, 12)
        await server.shutdown()
        gc.set_threshold(0, 11, 12)  # automatic collection off: it stays off
        server = await make_server(gc_freeze_interval=0.05)
        assert gc.get_threshold() == (0, 11, 12)
        await server.shutdown()
        gc.set_threshold(700, 11, 12)
        server = await make_server(gc_freeze_interval=0)  # no policy: the collector as the process set it
        assert gc.get_threshold() == (700, 11, 12)
        await server.shutdown()
    finally:
        gc.set_threshold(*before)
