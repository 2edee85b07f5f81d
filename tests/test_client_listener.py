"""The Python Listener against a real server on 127.0.0.1: connections cut at random moments lose and repeat
nothing; a drop before any message resumes from the confirmation's head; a server restart is reported as
history gone and the caller reloads; refusals end the iteration with a typed error.

What each test expects is computed here from the changes it publishes (plain Python predicates), not by the
code under test.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import pytest

from helpers import (
    EU,
    RECV_TIMEOUT,
    REGIONS,
    SCENARIO_TIMEOUT,
    Collector,
    ServerFactory,
    TcpProxy,
    fast_backoff,
    free_port,
    order,
    silent_host,
    until,
)
from xia_broadcast.client import (
    Connected,
    DocumentMessage,
    Event,
    Exit,
    GaveUp,
    HistoryGone,
    Listener,
    Reconnecting,
    Refused,
    ReplayDone,
    Unreachable,
)
from xia_broadcast.client.backoff import Backoff
from xia_broadcast.journal.redis import delete_prefix
from xia_broadcast.server.native import NativeServer
from xia_broadcast.server.upgrade import accept_key


def listener(url: str, subscriptions: dict[str, Any], seed: int = 0, **options: Any) -> Listener:
    """A listener with fast, seeded reconnection delays and no client pings."""
    options.setdefault("backoff", fast_backoff(seed))
    options.setdefault("ping_interval", None)
    options.setdefault("open_timeout", RECV_TIMEOUT)
    options.setdefault("connect_kwargs", {"proxy": None})
    return Listener(url, subscriptions, **options)


async def until_it_gives_up(lst: Listener) -> tuple[list[Event], GaveUp]:
    """Every event ``lst`` yields until it raises :class:`GaveUp` (within ``SCENARIO_TIMEOUT``), and that."""
    events: list[Event] = []
    with pytest.raises(GaveUp) as info:
        async with asyncio.timeout(SCENARIO_TIMEOUT):
            async for event in lst:
                events.append(event)
    return events, info.value


class Orders:
    """Publishes random inserts, updates (moving orders across regions) and deletes in-process, and says
    what a subscriber scoped on ``region == EU`` must receive for them."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.live: dict[str, dict[str, Any]] = {}
        self.expected: list[tuple[str, str, str]] = []  # (seq, op, _id) for the EU subscriber
        self.counter = 0

    def publish(self, server: NativeServer) -> None:
        rng = self.rng
        if not self.live or rng.random() < 0.4:
            self.counter += 1
            op, doc, prev = "I", order(self.counter, region=rng.choice(REGIONS)), None
        else:
            oid = rng.choice(sorted(self.live))
            prev = self.live[oid]
            if rng.random() < 0.2:
                op, doc = "D", prev
            else:
                op, doc = "U", {**prev, "region": rng.choice(REGIONS), "amount": prev["amount"] + 1}
        seq = server.service.publish_nowait("Order", op, dict(doc))
        if op == "D":
            del self.live[doc["_id"]]
        else:
            self.live[doc["_id"]] = doc
        if doc["region"] == "EU":
            self.expected.append((seq, op, doc["_id"]))
        elif prev is not None and prev["region"] == "EU":
            self.expected.append((seq, "X" if op == "U" else "D", doc["_id"]))


def received(c: Collector) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    for e in c.events:
        if isinstance(e, DocumentMessage):
            out.append((e.seq, e.op, e.id))
        elif isinstance(e, Exit):
            out.append((e.seq, "X", e.id))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_cuts_at_random_moments_lose_and_repeat_nothing(
        make_server: ServerFactory, make_proxy: Callable[..., Any], collect: Callable[..., Collector],
        seed: int) -> None:
    server = await make_server()
    proxy: TcpProxy = await make_proxy(server.port)
    c = collect(listener(proxy.url(), {"Order": {"data_scope": EU}}, seed))
    await c.until(lambda: bool(c.of(Connected)), what="connected")
    orders, rng = Orders(seed), random.Random(seed)
    cut_at = sorted(rng.sample(range(20, 600), 8))  # cut after these many publications
    for n in range(600):
        orders.publish(server)
        if cut_at and n == cut_at[0]:
            cut_at.pop(0)
            proxy.cut()
        if rng.random() < 0.3:  # let the loop run: the listener reads, reconnects, resumes meanwhile
            await asyncio.sleep(rng.choice([0, 0, 0.001, 0.005]))
    await c.until(lambda: len(received(c)) >= len(orders.expected), what="every expected change")
    assert received(c) == orders.expected
    assert len(c.of(Reconnecting)) >= 1 and proxy.cuts >= 1
    assert c.listener.duplicates == 0
    assert c.listener.last_seq["Order"] >= orders.expected[-1][0]


async def test_a_drop_before_any_message_resumes_from_the_confirmation_head(
        make_server: ServerFactory, make_proxy: Callable[..., Any], collect: Callable[..., Collector]) -> None:
    server = await make_server()
    proxy: TcpProxy = await make_proxy(server.port)
    c = collect(listener(proxy.url(), {"Order": {}}))
    await c.until(lambda: bool(c.of(Connected)), what="connected")
    head = c.of(Connected)[0].confirmation["Order"]["head_seq"]
    await proxy.stop()  # the connection drops and new ones are refused meanwhile
    seqs = [server.service.publish_nowait("Order", "I", order(i)) for i in range(5)]  # published while away
    await c.until(lambda: bool(c.of(Reconnecting)), what="reconnecting")
    await proxy.start()
    await c.until(lambda: len(c.of(DocumentMessage)) >= 5, what="5 documents")
    assert [m.seq for m in c.of(DocumentMessage)] == seqs
    assert c.of(Connected)[-1].resumed == {"Order": head}


async def test_server_restart_reports_history_gone_and_the_caller_reloads(
        make_server: ServerFactory, collect: Callable[..., Collector]) -> None:
    port = free_port()
    server = await make_server(port=port)
    database: dict[str, dict[str, Any]] = {}  # the caller's source of truth, which publishes to the server
    local: dict[str, dict[str, Any]] = {}  # the caller's view, built from what the listener yields
    reloads: list[HistoryGone] = []

    def publish(srv: NativeServer, op: str, doc: dict[str, Any]) -> None:
        if op == "D":
            database.pop(doc["_id"], None)
        else:
            database[doc["_id"]] = doc
        srv.service.publish_nowait("Order", op, doc)

    def apply(event: Event) -> None:
        if isinstance(event, HistoryGone):  # missed changes cannot be replayed: reload from the source
            reloads.append(event)
            local.clear()
            local.update({k: {f: v for f, v in d.items() if f != "margin"} for k, d in database.items()})
        elif isinstance(event, DocumentMessage):
            if event.op == "D":
                local.pop(event.id, None)
            else:
                local[event.id] = event.message
        elif isinstance(event, Exit):
            local.pop(event.id, None)

    c = collect(listener(f"ws://127.0.0.1:{port}/ws", {"Order": {}}), apply)
    await c.until(lambda: bool(c.of(Connected)), what="connected")
    for i in range(5):
        publish(server, "I", order(i))
    await c.until(lambda: len(c.of(DocumentMessage)) == 5, what="5 documents")
    last_before = c.listener.last_seq["Order"]

    await server.shutdown()
    publish_later = order(1, status="paid")  # changed while the server is down: the caller's database has it
    database[publish_later["_id"]] = publish_later
    del database[order(2)["_id"]]
    server = await make_server(port=port)  # a new server: its journal starts empty
    publish(server, "I", order(10))  # published before the listener is back: covered by the reload
    await c.until(lambda: bool(reloads), what="a reload")
    publish(server, "U", order(10, status="shipped"))  # live after the reload
    publish(server, "D", order(3))
    await c.until(lambda: local.get(order(10)["_id"], {}).get("status") == "shipped" and order(3)["_id"] not in local,
                  what="order 10 shipped and order 3 gone in the reloaded copy")

    assert reloads[0].doc_class == "Order" and reloads[0].seq == last_before
    assert len(c.of(Connected)) == 2 and c.of(Connected)[1].resumed == {"Order": last_before}
    expected = {k: {f: v for f, v in d.items() if f != "margin"} for k, d in database.items()}
    assert local == expected


async def test_server_restart_with_the_redis_journal_resumes_without_loss(
        make_server: ServerFactory, collect: Callable[..., Collector], redis_url: str) -> None:
    """A listener on a node whose journal is a Redis Stream: the node restarts while another node keeps
    publishing; the listener resumes after its last seq and gets every change, with no history_gone."""
    prefix = f"xia-test:{uuid.uuid4().hex[:12]}:"
    port = free_port()
    cluster = {"redis_url": redis_url, "redis_prefix": prefix}
    node = await make_server(port=port, **cluster)
    other = await make_server(**cluster)  # a second node that publishes throughout
    try:
        c = collect(listener(f"ws://127.0.0.1:{port}/ws", {"Order": {}}))
        await c.until(lambda: bool(c.of(Connected)), what="connected")
        seqs = [await other.service.publish("Order", "I", order(i)) for i in range(5)]
        await c.until(lambda: len(c.of(DocumentMessage)) == 5, what="5 documents")
        await node.shutdown()
        seqs += [await other.service.publish("Order", "I", order(i)) for i in range(5, 10)]
        await make_server(port=port, **cluster)  # the node is back; its journal is the same stream
        await c.until(lambda: len(c.of(DocumentMessage)) == 10, what="10 documents")
        seqs.append(await other.service.publish("Order", "I", order(10)))
        await c.until(lambda: len(c.of(DocumentMessage)) == 11, what="11 documents")
        assert [m.seq for m in c.of(DocumentMessage)] == seqs  # nothing lost, nothing repeated
        assert not c.of(HistoryGone) and len(c.of(Connected)) == 2
    finally:
        await delete_prefix(redis_url, prefix)


@pytest.mark.parametrize(("request_", "settings", "code"), [
    ({"Nope": {}}, {}, 4404),
    ({"Order": {"data_scope": [{"fn": "amount", "op": "~", "val": 1}]}}, {}, 4420),
    ({"Order": {}}, {"api_keys": "k"}, 4401),
])
async def test_final_refusals_end_the_iteration_with_refused(
        make_server: ServerFactory, request_: dict[str, Any], settings: dict[str, Any], code: int) -> None:
    from xia_broadcast.server.config import ApiKey

    if settings.get("api_keys"):
        settings = {"api_keys": {"right": ApiKey(user_name="u", acl=None)}}
    server = await make_server(**settings)
    lst = listener(server.url, request_, api_key="wrong" if settings else None)
    events: list[Event] = []
    with pytest.raises(Refused) as info:
        async with asyncio.timeout(SCENARIO_TIMEOUT):
            async for event in lst:
                events.append(event)
    assert info.value.code == code
    assert not any(isinstance(e, Reconnecting) for e in events)  # no retry for a final refusal


async def test_an_http_refusal_of_the_upgrade_is_final(server: NativeServer) -> None:
    lst = listener(f"ws://127.0.0.1:{server.port}/not-the-ws-path", {"Order": {}})
    with pytest.raises(Refused) as info:
        async with asyncio.timeout(SCENARIO_TIMEOUT):
            async for _ in lst:
                pass
    assert info.value.code == 404


async def test_max_retries_gives_up_on_a_server_that_is_not_there() -> None:
    lst = listener(f"ws://127.0.0.1:{free_port()}/ws", {"Order": {}}, max_retries=2)
    events, gave_up = await until_it_gives_up(lst)
    assert gave_up.failures == 3 and gave_up.code == 1006
    assert [e.failures for e in events if isinstance(e, Reconnecting)] == [1, 2]


async def test_a_cut_between_the_upgrade_and_the_subscription_is_retried() -> None:
    """A server that completes the WebSocket upgrade and then drops the TCP connection, sometimes at once,
    sometimes a moment later: whether the cut is seen while the subscription message is sent or while the
    confirmation is awaited, it is a drop to retry, never an error that ends the iteration."""
    rng = random.Random(7)
    cuts = 0

    async def upgrade_then_cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal cuts
        request = await reader.readuntil(b"\r\n\r\n")
        key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        accept = accept_key(key.decode())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        delay = rng.choice([0.0, 0.0, 0.0005, 0.002])
        if delay:
            await asyncio.sleep(delay)
        cuts += 1
        writer.transport.abort()

    tcp = await asyncio.start_server(upgrade_then_cut, "127.0.0.1", 0)
    port = tcp.sockets[0].getsockname()[1]
    lst = listener(f"ws://127.0.0.1:{port}/ws", {"Order": {}}, max_retries=40,
                   backoff=Backoff(initial=0.001, factor=1.0, max_delay=0.001, rng=random.Random(1)))
    async with tcp:
        events, gave_up = await until_it_gives_up(lst)
    assert gave_up.failures == 41 and gave_up.code == 1006
    assert [e.failures for e in events if isinstance(e, Reconnecting)] == list(range(1, 41))
    assert cuts == 41


async def test_close_ends_the_iteration_without_error(server: NativeServer,
                                                      collect: Callable[..., Collector]) -> None:
    c = collect(listener(server.url, {"Order": {}}))
    await c.until(lambda: bool(c.of(Connected)), what="connected")
    await c.listener.close()
    await asyncio.wait_for(c.task, RECV_TIMEOUT)
    assert c.error is None and not c.of(Reconnecting)


async def test_after_seq_replays_what_followed_then_replay_done(server: NativeServer,
                                                                 collect: Callable[..., Collector]) -> None:
    seqs = [server.service.publish_nowait("Order", "I", order(i)) for i in range(4)]
    c = collect(listener(server.url, {"Order": {"after_seq": seqs[0]}}))
    await c.until(lambda: bool(c.of(ReplayDone)), what="replay done")
    assert [m.seq for m in c.of(DocumentMessage)] == seqs[1:]  # not mistaken for repeats of the head
    assert c.of(ReplayDone)[0].seq == seqs[-1] and c.listener.last_seq["Order"] == seqs[-1]
    assert c.of(Connected)[0].resumed == {"Order": seqs[0]}


async def test_start_seq_filters_out_earlier_messages(server: NativeServer,
                                                      collect: Callable[..., Collector]) -> None:
    c = collect(listener(server.url, {"Order": {"start_seq": "9"}, "Customer": {}}))  # "9…" is after any seq
    await c.until(lambda: bool(c.of(Connected)), what="connected")
    server.service.publish_nowait("Order", "I", order(1))
    server.service.publish_nowait("Customer", "I", {"_id": "C-1", "customer_id": "C-1", "name": "n"})  # a sentinel
    await c.until(lambda: bool(c.of(DocumentMessage)), what="a document")
    assert [m.doc_class for m in c.of(DocumentMessage)] == ["Customer"]
    assert "start_seq" not in (await c.listener.handshake())["Order"]  # applied here, the same on any server


async def test_a_token_source_refreshes_the_token_before_it_expires(make_server: ServerFactory,
                                                                   collect: Callable[..., Collector]) -> None:
    secret = "s3cret-for-tests-only-0123456789abcdef"
    first_exp = int(time.time()) + 3
    issued: list[int] = []

    def token() -> str:  # the first token expires in about 3 s, the next ones in a minute
        exp = first_exp if not issued else int(time.time()) + 60
        issued.append(exp)
        return jwt.encode({"sub": "alice", "exp": exp, "acl": {"content": [{"obj": "Order/*", "act": "read"}]}},
                          secret, algorithm="HS256")

    server = await make_server(jwt_secret=secret)
    c = collect(listener(server.url, {"Order": {}}, token=token))
    await c.until(lambda: any(getattr(e, "kind", None) == "token_refreshed" for e in c.events),
                  what="the token refreshed")
    await until(lambda: time.time() >= first_exp + 0.5, timeout=10.0, poll=0.1, what="the first token's expiry")
    seq = server.service.publish_nowait("Order", "I", order(1))
    await c.until(lambda: bool(c.of(DocumentMessage)), what="a document")
    assert [m.seq for m in c.of(DocumentMessage)] == [seq]
    assert len(c.of(Connected)) == 1 and not c.of(Reconnecting)  # the same connection throughout
    assert len(issued) == 2


async def test_close_while_connecting_ends_the_iteration(server: NativeServer) -> None:
    lst = listener(server.url, {"Order": {}})
    events: list[Event] = []

    async def consume() -> None:
        async for event in lst:
            events.append(event)

    task = asyncio.get_running_loop().create_task(consume())
    await asyncio.sleep(0)  # the iteration starts connecting
    await lst.close()
    await asyncio.wait_for(task, RECV_TIMEOUT)  # ends instead of listening on
    assert not any(isinstance(e, DocumentMessage) for e in events)


async def test_a_message_that_is_not_of_the_protocol_is_skipped_and_the_stream_goes_on() -> None:
    """A server sending a frame that is not JSON, or a message with a seq that is not a string, between good
    ones: the listener logs and counts each, and keeps yielding the good ones (it ended before)."""
    from websockets.asyncio.server import ServerConnection, serve

    async def hostile(ws: ServerConnection) -> None:
        await ws.recv()  # the subscription
        await ws.send(json.dumps({"Order": {"head_seq": "0", "epoch": "e"}}))
        await ws.send("{this is not json")
        await ws.send(json.dumps({"doc_class": "Order", "op": "I", "seq": 5, "message": {"_id": "bad"}}))
        await ws.send(json.dumps({"doc_class": "Order", "op": "I", "seq": "1", "message": {"_id": "good"}}))
        await ws.wait_closed()

    async with serve(hostile, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        lst = listener(f"ws://127.0.0.1:{port}/ws", {"Order": {}})
        got: list[Any] = []
        async with asyncio.timeout(SCENARIO_TIMEOUT):
            async for event in lst:
                if isinstance(event, DocumentMessage):
                    got.append(event.message["_id"])
                    break
        await lst.close()
    assert got == ["good"] and lst.protocol_errors == 2


# -- strict checking (the default) ---------------------------------------------------------------------------


@pytest.mark.parametrize(("request_", "code", "reason"), [
    ({"Order": {"data_scope": [{"fn": "regoin", "op": "==", "val": "EU"}]}}, 4420,
     "Order: data_scope[0]: Order has no field 'regoin'"),
    ({"Order": {"catalog": {"order_id": None, "amout": None}}}, 4421, "Order: Order has no field 'amout'"),
    ({"Order": {"data_scope": [{"fn": "region", "op": "==", "val": "EU", "neg": True}]}}, 4420,
     "Order: data_scope[0]: unknown keys ['neg']"),
])
async def test_a_typo_is_refused_at_subscribe_time_with_the_servers_reason(
        server: NativeServer, request_: dict[str, Any], code: int, reason: str) -> None:
    lst = listener(server.url, request_)
    events: list[Event] = []
    with pytest.raises(Refused) as info:
        async with asyncio.timeout(SCENARIO_TIMEOUT):
            async for event in lst:
                events.append(event)
    assert (info.value.code, info.value.reason) == (code, reason)
    assert str(info.value) == f"{code} {reason}"  # what a traceback or a log line shows
    assert events == []  # refused before any confirmation, never retried


async def test_without_strict_a_typo_is_accepted_and_matches_nothing_as_with_the_original(
        server: NativeServer, collect: Callable[..., Collector]) -> None:
    typo = collect(listener(server.url, {"Order": {"data_scope": [{"fn": "regoin", "op": "==", "val": "EU"}]},
                                         "Customer": {}}, strict=False))
    only_id = collect(listener(server.url, {"Order": {"catalog": {"amout": None}}}, strict=False))
    await typo.until(lambda: bool(typo.of(Connected)), what="connected")
    await only_id.until(lambda: bool(only_id.of(Connected)), what="connected")
    server.service.publish_nowait("Order", "I", order(1))
    server.service.publish_nowait("Customer", "I", {"_id": "C-1", "customer_id": "C-1", "name": "n"})  # a sentinel
    await typo.until(lambda: bool(typo.of(DocumentMessage)), what="the sentinel")
    await only_id.until(lambda: bool(only_id.of(DocumentMessage)), what="the order")
    assert [m.doc_class for m in typo.of(DocumentMessage)] == ["Customer"]  # 'regoin' reads as None: no order
    assert [m.message for m in only_id.of(DocumentMessage)] == [{"_id": "O-000001"}]


async def test_strict_checking_accepts_everything_the_listener_sends_itself(
        make_server: ServerFactory, make_proxy: Callable[..., Any], collect: Callable[..., Collector]) -> None:
    """A snapshot class resumed with after_seq and epoch, a class resumed with after_seq, a start_seq, a
    catalog naming a hidden field, show_hidden false: strictly checked on every connection, nothing is
    refused."""
    from xia_broadcast.client import SnapshotDone
    from xia_broadcast.client.listener import _SUB_KEYS
    from xia_broadcast.core.protocol import SUBSCRIPTION_KEYS

    assert _SUB_KEYS <= SUBSCRIPTION_KEYS  # every key the listener takes is one strict checking accepts
    server = await make_server()
    proxy: TcpProxy = await make_proxy(server.port)
    before = server.service.publish_nowait("Customer", "I", {"_id": "C-1", "customer_id": "C-1", "name": "a"})
    c = collect(listener(proxy.url(), {
        "Order": {"data_scope": EU, "catalog": {"order_id": None, "amount": True, "margin": False},
                  "show_hidden": False, "snapshot": True},
        "Customer": {"after_seq": before, "start_seq": "0", "catalog": {"name": None}},
    }))
    await c.until(lambda: bool(c.of(SnapshotDone)), what="the snapshot done")
    server.service.publish_nowait("Order", "I", order(1))
    await c.until(lambda: bool(c.of(DocumentMessage)), what="an order")
    proxy.cut()
    server.service.publish_nowait("Order", "I", order(2))
    server.service.publish_nowait("Customer", "I", {"_id": "C-2", "customer_id": "C-2", "name": "b"})
    await c.until(lambda: len(c.of(DocumentMessage)) == 3, what="what was published while away")
    hello = await c.listener.handshake()
    assert hello["_options"] == {"control": True, "strict": True}
    assert set(hello["Order"]) == {"data_scope", "catalog", "show_hidden", "snapshot", "after_seq", "epoch"}
    assert len(c.of(Connected)) == 2 and set(c.of(Connected)[1].resumed) == {"Order", "Customer"}
    assert [(m.doc_class, m.id) for m in c.of(DocumentMessage)] == [
        ("Order", "O-000001"), ("Order", "O-000002"), ("Customer", "C-2")]


# -- a server never reached ----------------------------------------------------------------------------------


async def test_a_server_never_reached_gives_up_after_connect_attempts() -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws"
    lst = listener(url, {"Order": {}}, connect_attempts=3)
    events: list[Event] = []
    with pytest.raises(Unreachable) as info:
        async with asyncio.timeout(SCENARIO_TIMEOUT):
            async for event in lst:
                events.append(event)
    assert isinstance(info.value, GaveUp) and info.value.failures == 3  # a GaveUp, for code that catches those
    assert info.value.reason == "cannot connect: connection refused"
    assert str(info.value) == f"{url} was never reached in 3 attempts; last: cannot connect: connection refused"
    assert [(e.failures, e.reached, e.reason) for e in events if isinstance(e, Reconnecting)] == [
        (1, False, "cannot connect: connection refused"), (2, False, "cannot connect: connection refused")]
    assert not lst.reached


async def test_a_server_that_answers_is_reached_and_connect_attempts_does_not_apply() -> None:
    """A server that answers the upgrade with 503: reached (only max_retries ends it), unlike a port with
    nothing listening."""
    answers = 0

    async def busy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answers
        await reader.readuntil(b"\r\n\r\n")
        answers += 1
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    tcp = await asyncio.start_server(busy, "127.0.0.1", 0)
    port = tcp.sockets[0].getsockname()[1]
    lst = listener(f"ws://127.0.0.1:{port}/ws", {"Order": {}}, connect_attempts=2, max_retries=4)
    async with tcp:
        events, gave_up = await until_it_gives_up(lst)
    assert type(gave_up) is GaveUp and gave_up.failures == 5 and gave_up.reason == "HTTP 503"
    assert [e.reached for e in events if isinstance(e, Reconnecting)] == [True] * 4
    assert answers == 5 and lst.reached


async def test_once_connected_it_retries_past_connect_attempts(
        make_server: ServerFactory, make_proxy: Callable[..., Any], collect: Callable[..., Collector]) -> None:
    server = await make_server()
    proxy: TcpProxy = await make_proxy(server.port)
    c = collect(listener(proxy.url(), {"Order": {}}, connect_attempts=2))
    await c.until(lambda: bool(c.of(Connected)), what="connected")
    await proxy.stop()  # connections are refused from now on
    await c.until(lambda: len(c.of(Reconnecting)) >= 5, what="five retries")
    assert [e.reached for e in c.of(Reconnecting)][:5] == [True, False, False, False, False]
    await proxy.start()
    await c.until(lambda: len(c.of(Connected)) == 2, what="connected again")
    seq = server.service.publish_nowait("Order", "I", order(1))
    await c.until(lambda: bool(c.of(DocumentMessage)), what="a document")
    assert c.of(DocumentMessage)[0].seq == seq and c.error is None


async def test_close_while_a_connection_is_being_opened_returns_at_once() -> None:
    """A host that accepts TCP connections and never answers the upgrade: close() does not wait for
    open_timeout."""
    events: list[Event] = []
    async with silent_host() as (port, accepted):
        lst = listener(f"ws://127.0.0.1:{port}/ws", {"Order": {}}, open_timeout=30.0)

        async def consume() -> None:
            async for event in lst:
                events.append(event)

        task = asyncio.get_running_loop().create_task(consume())
        try:
            await asyncio.wait_for(accepted.wait(), RECV_TIMEOUT)
            started = time.monotonic()
            await lst.close()
            await asyncio.wait_for(task, RECV_TIMEOUT)
            assert time.monotonic() - started < 1.0
        finally:
            task.cancel()
    assert events == []
