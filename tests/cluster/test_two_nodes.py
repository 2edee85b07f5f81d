"""Two ``xia-broadcast serve --redis`` processes on one Redis: publishers and subscribers on both nodes.

Every subscriber receives exactly what its scope, catalog and ACL allow, the same on both nodes and in the
same order; a client that leaves node A resumes on node B with nothing lost or repeated.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from helpers import ServerProcess, recv_json, subscribe
from xia_broadcast.journal.redis import delete_prefix

CONFIG = """
[api_keys.k-root]
user_name = "root"
show_hidden = true
[api_keys.k-owner-a]
user_name = "alice"
acl = { content = [ { obj = "Ticket/owner/a", act = "read" } ] }
[publish]
keys = ["p-1"]
[classes.Ticket]
key = ["ticket_id"]
privilege_keys = { owner = ["owner"] }
[classes.Ticket.fields]
ticket_id = "str"
owner = "str"
region = "str"
amount = "float"
secret = { type = "float", hidden = true }
"""

ROOT = {"X-Api-Key": "k-root"}
OWNER_A = {"X-Api-Key": "k-owner-a"}
#: name -> (handshake entry, header): the same four subscriptions on each node
SUBSCRIPTIONS: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    "all": ({}, ROOT),
    "eu-amounts": ({"data_scope": [{"fn": "region", "op": "==", "val": "EU"}], "catalog": {"amount": None}}, ROOT),
    "owner-a": ({}, OWNER_A),
    "big-hidden": ({"data_scope": [{"fn": "amount", "op": ">", "val": 50}], "show_hidden": True}, ROOT),
}
SENTINEL = "zz-end"


def ticket(i: int, rnd: int) -> dict[str, Any]:
    tid = f"t{i % 12:02d}"
    return {"_id": tid, "ticket_id": tid, "owner": "ab"[(i + rnd) % 2],
            "region": ["EU", "US", "APAC"][(i * 7 + rnd) % 3], "amount": float((i * 37 + rnd * 11) % 100),
            "secret": float(i)}


def expected(name: str, changes: list[tuple[str, str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """What subscriber ``name`` must receive for ``changes`` (seq, op, doc in seq order): an independent
    reading of the rules (scope, ACL, catalog, hidden fields; no exits: these clients did not ask)."""
    out = []
    for seq, op, doc in changes:
        if name == "eu-amounts":
            shown = {"_id": doc["_id"], "amount": doc["amount"]} if doc["region"] == "EU" else None
        elif name == "owner-a":
            shown = {k: v for k, v in doc.items() if k != "secret"} if doc["owner"] == "a" else None
        elif name == "big-hidden":
            shown = dict(doc) if doc["amount"] > 50 else None
        else:
            shown = {k: v for k, v in doc.items() if k != "secret"}
        if shown is not None:
            out.append({"doc_class": "Ticket", "op": op, "seq": seq, "message": shown})
    return out


async def read_until_sentinel(ws: Any, limit: int = 2000) -> list[dict[str, Any]]:
    got = []
    for _ in range(limit):
        msg = await recv_json(ws, 10)
        got.append(msg)
        if msg["message"]["_id"] == SENTINEL:
            return got
    raise AssertionError("sentinel not received")


@pytest.fixture
async def nodes(server_process: Callable[..., ServerProcess], redis_url: str) -> Any:
    """Nodes a and b, on one Redis key prefix (deleted afterwards, once both nodes stopped)."""
    prefix = f"xia-test:{uuid.uuid4().hex[:12]}:"
    env = {"XIA_BROADCAST_REDIS_URL": redis_url, "XIA_BROADCAST_REDIS_PREFIX": prefix}
    started: list[ServerProcess] = []
    try:
        for name in ("a", "b"):
            started.append(server_process(directory=name, config=CONFIG, env=env))
        yield started
    finally:
        for node in started:
            node.stop()
        await delete_prefix(redis_url, prefix)


async def test_two_nodes_deliver_the_same_permitted_changes_in_the_same_order_and_resume_across(
        nodes: list[ServerProcess]) -> None:
    a, b = nodes
    urls = {node: f"ws://127.0.0.1:{node.port}/ws" for node in nodes}
    clients: dict[tuple[str, str], Any] = {}
    for node_name, node in (("a", a), ("b", b)):
        for name, (entry, header) in SUBSCRIPTIONS.items():
            ws, confirmation = await subscribe(urls[node], {"Ticket": entry, "_header": header})
            assert confirmation["Ticket"]["epoch"], "the confirmation names the journal's epoch"
            clients[(node_name, name)] = ws
    leaver, confirmation = await subscribe(urls[a], {"Ticket": {}, "_header": ROOT})
    published: list[tuple[str, str, dict[str, Any]]] = []

    async def publisher(http: httpx.AsyncClient, node: ServerProcess, rnd: int, count: int) -> None:
        for i in range(count):  # one change per request, as publishers do
            doc = ticket(i, rnd)
            op = "I" if i < 12 else ("D" if i % 9 == 0 else "U")
            r = await http.post(f"http://127.0.0.1:{node.port}/publish", headers={"X-Publisher-Key": "p-1"},
                                json={"class": "Ticket", "op": op, "doc": doc})
            assert r.status_code == 200, r.text
            published.append((r.json()["seqs"][0], op, doc))

    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        # four concurrent publishers, two on each node
        await asyncio.gather(*(publisher(http, node, rnd, 30) for rnd, node in enumerate([a, b, a, b])))
        # the leaving client has read part of the stream, leaves node A, and comes back on node B
        first = [await recv_json(leaver, 10) for _ in range(40)]
        await leaver.close()
        await asyncio.gather(*(publisher(http, node, rnd, 15) for rnd, node in enumerate([b, a], start=4)))
        last = first[-1]["seq"]
        back, _ = await subscribe(urls[b], {"Ticket": {"after_seq": last, "epoch": confirmation["Ticket"]["epoch"]},
                                            "_header": ROOT})
        end = {"_id": SENTINEL, "ticket_id": SENTINEL, "owner": "a", "region": "EU", "amount": 99.0, "secret": 1.0}
        r = await http.post(f"http://127.0.0.1:{b.port}/publish", headers={"X-Publisher-Key": "p-1"},
                            json={"class": "Ticket", "op": "I", "doc": end})
        published.append((r.json()["seqs"][0], "I", end))
    changes = sorted(published)
    assert len({seq for seq, _, _ in changes}) == len(changes) == 151
    for name in SUBSCRIPTIONS:
        on_a = await read_until_sentinel(clients[("a", name)])
        on_b = await read_until_sentinel(clients[("b", name)])
        assert on_a == on_b == expected(name, changes), name
    resumed = first + await read_until_sentinel(back)
    assert resumed == expected("all", changes)  # nothing lost, nothing repeated across the two nodes
    for ws in [*clients.values(), back]:
        await ws.close()
    assert json.dumps(resumed).count('"secret"') == 0
