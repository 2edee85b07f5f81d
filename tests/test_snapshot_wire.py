"""Snapshots on the wire and in the library: what a client may ask, what it is sent, in which order, within
which bounds; the refusals and their codes; one shared pass for the members of a view.

The guarantee under concurrent publishing, resumes and resets, on every backend, is
``test_snapshot_guarantee.py``; the store each backend keeps, ``journal_contract/test_store_contract.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from helpers import ORDER, fresh, order, publish_orders, read_until_closed, recv_json, refused, subscribe, until
from xia_broadcast.server.native import NativeServer


def url(server: NativeServer) -> str:
    return f"ws://127.0.0.1:{server.port}/ws"


async def until_snapshot_done(ws: Any, timeout: float = 10.0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The document messages before ``snapshot_done``, and it."""
    docs: list[dict[str, Any]] = []
    while True:
        msg = await recv_json(ws, timeout)
        if msg.get("_control") == "snapshot_done":
            return docs, msg
        assert "_control" not in msg, msg
        docs.append(msg)


@pytest.mark.parametrize(("request_", "reason"), [
    ({"snapshot": "yes"}, "snapshot must be true or false"),
    ({"snapshot": 1}, "snapshot must be true or false"),
    ({"snapshot": True, "start_seq": "1"}, "a snapshot resumes with after_seq"),
    ({"snapshot": True, "from_seq": "1"}, "a snapshot resumes with after_seq"),
])
async def test_a_snapshot_request_that_is_not_a_boolean_or_mixes_positions_is_4400(
        make_server: Callable[..., Any], request_: dict[str, Any], reason: str) -> None:
    server = await make_server()
    code, text, _ = await refused(url(server), json.dumps({"Order": request_}))
    assert code == 4400 and reason in text


async def test_a_snapshot_is_the_stored_documents_of_the_view_projected_then_snapshot_done_then_live(
        make_server: Callable[..., Any]) -> None:
    server = await make_server()
    publish_orders(server, range(1, 7))  # orders 1..6, EU, acme
    service = server.service
    service.publish_nowait("Order", "U", order(2, region="US"))  # out of the scope below
    last = service.publish_nowait("Order", "D", order(3))  # gone
    ws, confirmation = await subscribe(url(server), {"Order": {
        "snapshot": True, "data_scope": [{"fn": "region", "op": "==", "val": "EU"}], "catalog": {"amount": None}}})
    async with ws:
        assert confirmation["Order"]["snapshot"] is True
        docs, done = await until_snapshot_done(ws)
        assert sorted((d["op"], d["message"]["_id"], d["message"].get("amount")) for d in docs) == [
            ("I", f"O-{i:06d}", float(i)) for i in (1, 4, 5, 6)]
        assert all(set(d["message"]) == {"_id", "amount"} for d in docs)  # the catalog; no hidden margin
        assert done == {"_control": "snapshot_done", "class": "Order", "seq": last,
                        "epoch": confirmation["Order"]["epoch"]}
        # then live, with exits: a snapshot client keeps a collection
        service.publish_nowait("Order", "U", order(4, region="US"))
        service.publish_nowait("Order", "I", order(9))
        assert [(m["op"], m["message"]["_id"]) for m in [await recv_json(ws), await recv_json(ws)]] == [
            ("X", "O-000004"), ("I", "O-000009")]


async def test_a_class_whose_store_passed_its_bound_refuses_snapshots_with_4413_and_serves_changes(
        make_server: Callable[..., Any]) -> None:
    server = await make_server(store_max_documents=3)
    publish_orders(server, range(1, 5))
    ws, _ = await subscribe(url(server), {"Order": {"snapshot": True}})
    async with ws:
        _, code, reason = await read_until_closed(ws)
    assert code == 4413 and "snapshot refused" in reason and "store_max_documents" in reason
    ws, _ = await subscribe(url(server), {"Order": {}})  # without a snapshot the class is served as ever
    async with ws:
        server.service.publish_nowait("Order", "I", order(7))
        assert (await recv_json(ws))["message"]["_id"] == "O-000007"


async def test_a_large_snapshot_goes_in_chunks_within_small_queue_bounds(make_server: Callable[..., Any]) -> None:
    server = await make_server(queue_messages=16, queue_bytes=4096)
    publish_orders(server, range(1, 3001))
    ws, _ = await subscribe(url(server), {"Order": {"snapshot": True}})
    async with ws:
        docs, done = await until_snapshot_done(ws, timeout=20)
        assert len({d["message"]["_id"] for d in docs}) == len(docs) == 3000
        # nothing was cut off or lagged: the queue bounds only paced it
        assert server.service.hub.stats.lags == 0 and done["class"] == "Order"


async def test_members_of_one_view_asking_together_share_one_pass_and_one_encoding_per_document(
        make_server: Callable[..., Any]) -> None:
    server = await make_server()
    publish_orders(server, range(1, 501))
    hub = server.service.hub
    before = hub.stats.encodings
    request = json.dumps({"Order": {"snapshot": True, "catalog": {"amount": None}}})

    async def one() -> int:
        ws, _ = await subscribe(url(server), json.loads(request))
        async with ws:
            docs, _ = await until_snapshot_done(ws, timeout=30)
            return len(docs)

    counts = await asyncio.gather(*(one() for _ in range(100)))
    assert counts == [500] * 100
    passes = hub.stats.snapshot_passes
    assert 1 <= passes <= 3, passes  # joined within the sharing window: not one pass per subscriber
    assert hub.stats.encodings - before == 500 * passes
    assert hub.stats.snapshot_documents == 500 * 100
    async with httpx.AsyncClient(trust_env=False) as http:  # and the operator sees it
        metrics = (await http.get(f"http://127.0.0.1:{server.port}/metrics")).text
    assert f"xia_snapshot_passes_total {float(passes)}" in metrics
    assert f"xia_snapshot_documents_total {float(500 * 100)}" in metrics


async def test_the_library_subscribes_with_a_snapshot_too() -> None:
    b = fresh(ORDER)
    for i in range(1, 4):
        b.publish("Order", "I", order(i))
    b.publish("Order", "D", order(2))
    await b.subscribe("ws", "Order", snapshot=True, catalog={"customer": None})
    b.publish("Order", "U", order(1, customer="globex"))
    await until(lambda: any(m.get("_control") == "snapshot_done" for m in b.to("ws")), what="snapshot_done")
    await b.hub().idle()
    messages = b.to("ws")
    done = next(i for i, m in enumerate(messages) if m.get("_control") == "snapshot_done")
    collection: dict[str, Any] = {}
    for m in messages:
        if "doc_class" in m:
            if m["op"] in ("I", "U"):
                collection[m["message"]["_id"]] = m["message"]
            else:
                collection.pop(m["message"]["_id"], None)
    assert collection == {"O-000001": {"_id": "O-000001", "customer": "globex"},
                          "O-000003": {"_id": "O-000003", "customer": "acme"}}
    # what follows snapshot_done is after its position; what precedes it is at or before the head
    assert all(m["seq"] > messages[done]["seq"] for m in messages[done + 1:])
    assert messages[done]["seq"] <= b.hub().head("Order")
