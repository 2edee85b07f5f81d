"""Gapless resume, lagging subscribers and scope exits over real sockets on 127.0.0.1.

The expected messages of every client are computed here, independently of the server's code, from the
list of published changes: plain Python predicates for scopes and ACLs, the semantics of docs/protocol.md
for exits (an update that leaves a view gives ``X``; a delete reaches whoever could read the document).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from helpers import REGIONS, ServerFactory, read_until_closed, recv_json, ws_connect
from xia_broadcast import Document
from xia_broadcast.server.config import ApiKey
from xia_broadcast.server.demo import ORDER_SCHEMA
from xia_broadcast.server.native import NativeServer

CUSTOMERS = ["acme", "globex", "initech", "umbrella"]


def acl_for(customers: list[str]) -> dict[str, Any]:
    return {"content": [{"obj": f"Order/customer/{c}", "act": "read"} for c in customers]}


# name -> (api key acl, subscription, scope predicate, acl predicate, projected field names or None = all)
CLIENTS: dict[str, tuple[dict[str, Any] | None, dict[str, Any], Callable[[dict[str, Any]], bool],
                         Callable[[dict[str, Any]], bool], set[str] | None]] = {
    "all": (None, {}, lambda d: True, lambda d: True, None),
    "eu": (None, {"data_scope": [{"fn": "region", "op": "==", "val": "EU"}]},
           lambda d: d.get("region") == "EU", lambda d: True, None),
    "big": (None, {"data_scope": [{"fn": "amount", "op": ">=", "val": 500}],
                   "catalog": {"amount": None, "status": None}},
            lambda d: isinstance(d.get("amount"), (int, float)) and d["amount"] >= 500, lambda d: True,
            {"_id", "amount", "status"}),
    "acme_globex": (acl_for(["acme", "globex"]), {}, lambda d: True,
                    lambda d: d.get("customer") in ("acme", "globex"), None),
    "acme_us_apac": (acl_for(["acme"]), {"data_scope": [{"fn": "region", "op": "in", "val": ["US", "APAC"]}]},
                     lambda d: d.get("region") in ("US", "APAC"), lambda d: d.get("customer") == "acme", None),
}


def expected_messages(name: str, changes: list[tuple[str, str, dict[str, Any], dict[str, Any] | None]],
                      after: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(seq, op, message) the client ``name`` must receive for changes after seq ``after``."""
    _, _, in_scope, may_read, fields = CLIENTS[name]

    def visible(d: dict[str, Any] | None) -> bool:
        return d is not None and may_read(d) and in_scope(d)

    def project(d: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in d.items() if k != "margin"}
        return out if fields is None else {k: v for k, v in out.items() if k in fields}

    out = []
    for seq, op, data, prev in changes:
        if seq <= after:
            continue
        if visible(data):
            out.append((seq, op, project(data)))
        elif op == "U" and visible(prev):
            out.append((seq, "X", {"_id": data["_id"]}))
        elif op == "D" and visible(prev):
            assert prev is not None
            out.append((seq, "D", project(prev)))
    return out


class OrderPublisher:
    """Random inserts, updates (moving documents across regions, amounts and customers) and deletes."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.live: dict[str, dict[str, Any]] = {}
        self.n = 0

    def next(self) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
        rng = self.rng
        if len(self.live) < 20 or rng.random() < 0.3:
            self.n += 1
            oid = f"O{self.n}"
            doc = {"_id": oid, "order_id": oid, "customer": rng.choice(CUSTOMERS), "region": rng.choice(REGIONS),
                   "amount": float(rng.randrange(0, 1000)), "status": "new", "margin": 1.5}
            self.live[oid] = doc
            return "I", dict(doc), None
        oid = rng.choice(sorted(self.live))
        prev = dict(self.live[oid])
        if rng.random() < 0.1:
            del self.live[oid]
            return "D", prev, prev
        doc = dict(prev)
        key = rng.choice(["region", "amount", "customer", "status"])
        doc[key] = {"region": rng.choice(REGIONS), "amount": float(rng.randrange(0, 1000)),
                    "customer": rng.choice(CUSTOMERS), "status": rng.choice(["paid", "shipped"])}[key]
        self.live[oid] = doc
        return "U", dict(doc), prev


@pytest.fixture
async def server(make_server: ServerFactory) -> NativeServer:
    """A server with the demo's Order class and one API key per client of :data:`CLIENTS`, queues of 64."""
    keys = {f"key-{name}": ApiKey(name, acl) for name, (acl, *_rest) in CLIENTS.items()}
    return await make_server(classes={"Order": ORDER_SCHEMA}, api_keys=keys, queue_messages=64, log_level="WARNING")


async def open_client(srv: NativeServer, name: str, **sub: Any) -> tuple[ClientConnection, str]:
    ws = await ws_connect(srv.url, max_size=None)
    request = {"Order": {**CLIENTS[name][1], **sub}, "_header": {"X-Api-Key": f"key-{name}"},
               "_options": {"control": True}}
    await ws.send(json.dumps(request))
    confirmation = await recv_json(ws)
    return ws, confirmation["Order"]["head_seq"]


async def test_clients_dropping_at_random_moments_resume_with_nothing_lost_nor_repeated(server: NativeServer) -> None:
    """Five clients with different scopes, catalogs and ACLs drop their connection at random moments while
    2,000 changes are published at full speed, and reconnect with ``after_seq`` = the last seq they got."""
    bc = server.service
    rng = random.Random(7)
    publisher = OrderPublisher(seed=11)
    published: list[tuple[str, str, dict[str, Any], dict[str, Any] | None]] = []
    received: dict[str, list[tuple[str, str, dict[str, Any]]]] = {name: [] for name in CLIENTS}
    starts: dict[str, str] = {}
    reconnects = dict.fromkeys(CLIENTS, 0)
    done = asyncio.Event()
    total = 2000

    async def client(name: str) -> None:
        ws, head = await open_client(server, name)
        starts[name] = head
        last = head
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            drop_after = rng.randrange(1, 300)
            try:
                for _ in range(drop_after):
                    try:
                        raw = await asyncio.wait_for(ws.recv(), 0.5)
                    except TimeoutError:
                        if done.is_set() and received[name] == expected_messages(name, published, starts[name]):
                            await ws.close()
                            return
                        continue
                    msg = json.loads(raw)
                    if "_control" in msg:
                        assert msg["_control"] == "replay_done", msg
                        continue
                    received[name].append((msg["seq"], msg["op"], msg["message"]))
                    last = msg["seq"]
            except ConnectionClosed:
                pass
            ws.transport.abort()  # an abrupt drop, at a random moment
            reconnects[name] += 1
            ws, _ = await open_client(server, name, after_seq=last)
        raise AssertionError(f"{name} did not catch up in time")

    async def publish() -> None:
        for i in range(total):
            op, doc, prev = publisher.next()
            seq = bc.publish_nowait("Order", op, doc)
            published.append((seq, op, doc, prev))
            if i % 25 == 0:
                await asyncio.sleep(0)
        done.set()

    bc.publish_nowait("Order", "I", {"_id": "seed", "order_id": "seed", "customer": "acme", "region": "EU"})
    tasks = [asyncio.create_task(client(name)) for name in CLIENTS]
    await asyncio.sleep(0.2)  # every client is subscribed
    await publish()
    await asyncio.wait_for(asyncio.gather(*tasks), 40)
    for name in CLIENTS:
        want = expected_messages(name, published, starts[name])
        assert received[name] == want, name
        assert reconnects[name] >= 3, f"{name} reconnected only {reconnects[name]} times"
    # the scenario exercised every kind of event: entries, exits and deletes across scope and ACL borders
    ops = {op for name in CLIENTS for _, op, _ in received[name]}
    assert ops == {"I", "U", "D", "X"}


async def test_a_stalled_client_delays_no_one_and_gets_everything_once_it_reads(server: NativeServer) -> None:
    bc = server.service
    good, _ = await open_client(server, "all")
    stalled, _ = await open_client(server, "all")
    pad = "x" * 10_000
    count = 1500
    latencies: list[float] = []
    published: list[str] = []

    async def read_good() -> None:
        while len(latencies) < count:
            msg = await recv_json(good)
            latencies.append(time.time() - float(msg["message"]["status"]))

    reader = asyncio.create_task(read_good())
    for i in range(count):  # 15 MB: far more than the stalled client's socket buffers and queue hold
        published.append(bc.publish_nowait("Order", "I", {"_id": f"S{i}", "order_id": f"S{i}", "customer": pad,
                                                   "status": repr(time.time())}))
        if i % 5 == 4:
            await asyncio.sleep(0.005)
    await asyncio.wait_for(reader, 10)
    assert bc.hub.stats.lags >= 1, "the stalled client never overflowed its queue: the test proves nothing"
    # the good client was never held back by the stalled one
    assert max(latencies) < 0.5, f"good client waited {max(latencies):.3f} s"
    seqs: list[str] = []
    while len(seqs) < len(published):
        msg = await recv_json(stalled)
        if "_control" not in msg:
            seqs.append(msg["seq"])
    assert seqs == published
    await good.close()
    await stalled.close()


async def test_history_gone_is_told_with_the_oldest_seq_held(make_server: ServerFactory) -> None:
    srv = await make_server(classes={"Order": ORDER_SCHEMA}, journal_max_count=10, log_level="WARNING")
    seqs = [srv.service.publish_nowait("Order", "I", {"_id": f"H{i}", "order_id": f"H{i}"}) for i in range(30)]
    ws = await ws_connect(srv.url)
    await ws.send(json.dumps({"Order": {"after_seq": seqs[5]}, "_options": {"control": True}}))
    await recv_json(ws)  # confirmation
    gone = await recv_json(ws)
    assert gone == {"_control": "history_gone", "class": "Order", "seq": seqs[5], "oldest_seq": seqs[20]}
    # then live, from now on
    seq = srv.service.publish_nowait("Order", "I", {"_id": "new", "order_id": "new"})
    msg = await recv_json(ws)
    assert msg["seq"] == seq
    # a client without control messages that asks to resume from what is no longer held is closed with
    # 4410, never given a silent gap
    plain = await ws_connect(srv.url)
    await plain.send(json.dumps({"Order": {"after_seq": seqs[5]}}))
    await recv_json(plain)
    _, code, reason = await read_until_closed(plain)
    assert code == 4410 and seqs[21] in reason  # "new" pushed seqs[20] out
    # an original client's start_seq replays nothing: it only skips older live changes
    original = await ws_connect(srv.url)
    await original.send(json.dumps({"Order": {"start_seq": seqs[5]}}))
    await recv_json(original)
    later = srv.service.publish_nowait("Order", "I", {"_id": "later", "order_id": "later"})
    assert (await recv_json(original))["seq"] == later
    await ws.close()
    await original.close()


class Note(Document):
    x: int = 0


async def test_an_unencodable_change_in_a_replay_does_not_stop_other_sockets(make_server: ServerFactory) -> None:
    """An integer beyond 64 bits is what orjson cannot encode (the fast encoder): replayed to a lagging socket,
    it is encoded by Python's ``json`` and delivered (never dropped), and no other socket is held up."""
    server = await make_server(classes={"Note": Note.doc_schema()}, queue_messages=5, log_level="CRITICAL")

    def publish(note: Note) -> None:
        server.service.publish_nowait("Note", "I", note.stored_data())

    async with ws_connect(server.url) as lagging, ws_connect(server.url) as healthy:
        await lagging.send(json.dumps({"Note": {}}))
        await lagging.recv()
        await healthy.send(json.dumps({"Note": {"data_scope": [{"fn": "x", "op": "==", "val": 5000}]}}))
        await healthy.recv()
        for i in range(10):  # one burst: the first client overflows its queue and replays
            publish(Note(id=f"s{i}", x=i))
        publish(Note(id="big", x=2**70))  # not JSON-encodable by orjson
        publish(Note(id="h1", x=5000))
        await asyncio.sleep(0.2)
        publish(Note(id="h2", x=5000))
        got = [(await recv_json(healthy))["message"]["_id"] for _ in range(2)]
        assert got == ["h1", "h2"]
        replayed = [(await recv_json(lagging))["message"] for _ in range(13)]
    assert server.service.hub.stats.lags >= 1, "the lagging socket never overflowed: no replay was tested"
    assert [m["_id"] for m in replayed] == [*(f"s{i}" for i in range(10)), "big", "h1", "h2"]
    assert replayed[10]["x"] == 2**70
