"""The publishers against real servers: ``AsyncPublisher`` answers and fails as ``Publisher`` does (the same
seqs, the same ``PublishRefused`` for each refusal, ``OSError`` for a network failure), on one kept-alive
connection; a kept-alive connection the server closed meanwhile is replaced without losing the request; a
body over 64 KiB waits for ``100 Continue`` (a refusal from the headers comes back before it is sent), on the
standalone server and on the ASGI app under uvicorn.

What is published is read back from the server's journal and from a subscriber, not from the publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import pytest

from helpers import (
    RECV_TIMEOUT,
    AsgiServer,
    GoodClient,
    ServerFactory,
    free_port,
    order,
    order_change,
    silent_host,
    until,
)
from xia_broadcast.client import AsyncPublisher, Publisher, PublishRefused
from xia_broadcast.server.native import NativeServer

#: seconds a test's exchanges may take
TIMEOUT = 20.0


class Both:
    """One interface over a Publisher (run in a thread) and an AsyncPublisher, so that one test checks both."""

    def __init__(self, kind: str, base_url: str, key: str | None = None, timeout: float = RECV_TIMEOUT) -> None:
        self.kind = kind
        self.sync = Publisher(base_url, key, timeout) if kind == "sync" else None
        self.aio = AsyncPublisher(base_url, key, timeout) if kind == "async" else None

    async def publish(self, cls: str, op: str, doc: Mapping[str, Any],
                      previous: Mapping[str, Any] | None = None) -> str:
        if self.sync is not None:
            return await asyncio.to_thread(self.sync.publish, cls, op, doc, previous)
        assert self.aio is not None
        return await self.aio.publish(cls, op, doc, previous)

    async def send(self, changes: Sequence[Mapping[str, Any]]) -> list[str]:
        if self.sync is not None:
            return await asyncio.to_thread(self.sync.send, changes)
        assert self.aio is not None
        return await self.aio.send(changes)

    async def close(self) -> None:
        if self.sync is not None:
            self.sync.close()
        if self.aio is not None:
            await self.aio.close()


@pytest.fixture(params=["sync", "async"])
async def publisher(request: pytest.FixtureRequest) -> Any:
    made: list[Both] = []

    def factory(base_url: str, key: str | None = None, timeout: float = RECV_TIMEOUT) -> Both:
        both = Both(request.param, base_url, key, timeout)
        made.append(both)
        return both

    yield factory
    for both in made:
        await both.close()


def base(server: NativeServer) -> str:
    return f"http://127.0.0.1:{server.port}"


async def stored(server: NativeServer) -> list[tuple[str, str, str]]:
    """(seq, op, _id) of every Order change in the server's journal."""
    changes = await server.service.hub.backend.read("Order", None, inclusive=True, limit=10_000)
    return [(c.seq, c.op, c.doc_id) for c in changes]


async def test_publish_one_and_many_reach_the_journal_and_a_subscriber(
        make_server: ServerFactory, good_client: Callable[..., Awaitable[GoodClient]],
        publisher: Callable[..., Both]) -> None:
    server = await make_server(publish_keys=["pk"])
    subscriber = await good_client(server, {"Order": {"catalog": {"amount": None}}})
    pub = publisher(base(server), "pk")
    one = await pub.publish("Order", "I", order(1))
    updated = await pub.publish("Order", "U", order(1, amount=10.0), previous=order(1))
    many = await pub.send([order_change(2), order_change(3), order_change(2, "D")])
    assert await pub.send([]) == []
    assert await stored(server) == [(one, "I", "O-000001"), (updated, "U", "O-000001"), (many[0], "I", "O-000002"),
                                    (many[1], "I", "O-000003"), (many[2], "D", "O-000002")]
    await until(lambda: len(subscriber.received) >= 5, TIMEOUT, what="five messages to the subscriber")
    assert [(m["seq"], m["op"], m["message"]) for m in subscriber.received] == [
        (one, "I", {"_id": "O-000001", "amount": 1.0}), (updated, "U", {"_id": "O-000001", "amount": 10.0}),
        (many[0], "I", {"_id": "O-000002", "amount": 2.0}), (many[1], "I", {"_id": "O-000003", "amount": 3.0}),
        (many[2], "D", {"_id": "O-000002", "amount": 2.0})]


@pytest.mark.parametrize(("changes", "key", "status", "error", "message"), [
    ([order_change(1)], "wrong", 401, "unauthorized", "unknown publisher key"),
    ([order_change(1)], None, 401, "unauthorized", "X-Publisher-Key missing"),
    ([order_change(1), order_change(2, amount="lots")], "pk", 422, "invalid_change",
     "change 1: Order.amount: expected float, got str"),
    ([order_change(1), {"class": "Nope", "op": "I", "doc": {"_id": "x"}}], "pk", 404, "unknown_class", "Nope"),
    ([{**order_change(1), "colour": "red"}], "pk", 400, "bad_request", "colour"),
    ([order_change(1, "R")], "pk", 422, "invalid_change", "op"),
    ([order_change(i, note="x" * 2_000) for i in range(5)], "pk", 413, "too_large", "body over 8000 bytes"),
])
async def test_refusals_raise_publish_refused_with_the_servers_error_and_apply_nothing(
        make_server: ServerFactory, publisher: Callable[..., Both], changes: list[dict[str, Any]],
        key: str | None, status: int, error: str, message: str) -> None:
    server = await make_server(publish_keys=["pk"], max_publish_size=8_000)
    pub = publisher(base(server), key)
    with pytest.raises(PublishRefused) as info:
        await pub.send(changes)
    assert (info.value.status, info.value.error) == (status, error), info.value
    assert message in info.value.message and str(info.value).startswith(f"{status} {error}: ")
    assert await stored(server) == []  # a refused batch applies none of its changes
    good = publisher(base(server), "pk")  # the server still takes a good one (on a new connection or not)
    assert len(await good.send([order_change(9)])) == 1 and len(await stored(server)) == 1


async def test_a_large_body_is_refused_from_its_headers_before_it_is_sent(make_server: ServerFactory) -> None:
    """Bodies of megabytes: over max_publish_size, or with a wrong key. The blocking Publisher may see the
    server close while it still writes (ConnectionResetError); the AsyncPublisher asks for 100 Continue
    first and gets the refusal itself."""
    server = await make_server(publish_keys=["pk"], max_publish_size=1_000_000)
    big = [order_change(i, note="x" * 100_000) for i in range(30)]  # about 3 MB
    async with AsyncPublisher(base(server), "pk", timeout=TIMEOUT) as pub:
        with pytest.raises(PublishRefused) as info:
            await pub.send(big)
        assert (info.value.status, info.value.error) == (413, "too_large")
        pub.key = "wrong"
        with pytest.raises(PublishRefused) as info:
            await pub.send(big[:5])  # under the size bound
        assert (info.value.status, info.value.error) == (401, "unauthorized")
        pub.key = "pk"
        seqs = await pub.send(big[:5])  # accepted: sent after 100 Continue
    assert [s for s, _, _ in await stored(server)] == seqs


async def test_on_the_asgi_app_under_uvicorn(asgi_server: Callable[..., Awaitable[AsgiServer]]) -> None:
    server = await asgi_server(publish_keys=["pk"])
    async with AsyncPublisher(server.base, "pk", timeout=TIMEOUT) as pub:
        small = await pub.publish("Order", "I", order(1))
        large = await pub.send([order_change(i, note="x" * 50_000) for i in range(2, 6)])  # 100 Continue
        pub.key = "wrong"
        with pytest.raises(PublishRefused) as info:
            await pub.publish("Order", "I", order(7))
    assert info.value.status == 401
    changes = await server.service.hub.backend.read("Order", None, inclusive=True, limit=100)
    assert [c.seq for c in changes] == [small, *large]


async def test_concurrent_publishes_share_one_connection_one_request_at_a_time(make_server: ServerFactory) -> None:
    server = await make_server()
    connections = 0

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:  # a counting relay
        nonlocal connections
        connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", server.port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    relay = await asyncio.start_server(count, "127.0.0.1", 0)
    try:
        async with AsyncPublisher(f"http://127.0.0.1:{relay.sockets[0].getsockname()[1]}", timeout=TIMEOUT) as pub:
            seqs = await asyncio.gather(*(pub.publish("Order", "I", order(i)) for i in range(40)))
    finally:
        relay.close()
    journal = {doc_id: seq for seq, _, doc_id in await stored(server)}
    assert len(set(seqs)) == 40 and [journal[order(i)["_id"]] for i in range(40)] == list(seqs)
    assert connections == 1


class OneAnswerPerConnection:
    """An HTTP server that answers one request per connection (200 and a seq, kept alive by its headers) and
    then closes the connection, as a server does with a connection idle past its keep-alive; or, with
    ``answer=False``, closes without answering."""

    def __init__(self, answer: bool = True) -> None:
        self.answer = answer
        self.connections = 0
        self.requests = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        await reader.readexactly(length)
        self.requests += 1
        if self.answer:
            body = b'{"seqs": ["%d"]}' % self.requests
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
            await writer.drain()
            await asyncio.sleep(0.05)  # the client has its answer and keeps the connection for the next request
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_a_kept_alive_connection_closed_by_the_server_is_replaced_and_the_request_sent_once(
        publisher: Callable[..., Both]) -> None:
    fake = OneAnswerPerConnection()
    try:
        pub = publisher(await fake.start())
        first = await pub.publish("Order", "I", order(1))
        await asyncio.sleep(0.2)  # the server closed the connection meanwhile
        second = await pub.publish("Order", "I", order(2))
    finally:
        await fake.stop()
    assert (first, second) == ("1", "2")
    assert (fake.connections, fake.requests) == (2, 2)  # each request reached the server once


async def test_network_failures_raise_oserror(publisher: Callable[..., Both]) -> None:
    with pytest.raises(ConnectionRefusedError):
        await publisher(f"http://127.0.0.1:{free_port()}").publish("Order", "I", order(1))
    fake = OneAnswerPerConnection(answer=False)
    try:
        with pytest.raises(ConnectionError):  # a new connection closed without an answer: not sent again
            await publisher(await fake.start()).publish("Order", "I", order(1))
    finally:
        await fake.stop()
    assert (fake.connections, fake.requests) == (1, 1)


async def test_a_server_that_does_not_answer_times_out(publisher: Callable[..., Both]) -> None:
    started = asyncio.get_running_loop().time()
    async with silent_host() as (port, _accepted):
        with pytest.raises(TimeoutError):
            await publisher(f"http://127.0.0.1:{port}", timeout=0.3).publish("Order", "I", order(1))
    assert asyncio.get_running_loop().time() - started < 5.0


def test_urls() -> None:
    for cls in (Publisher, AsyncPublisher):
        pub = cls("ws://[::1]:8765/app/")
        assert (pub.scheme, pub.host, pub.port, pub.path) == ("http", "::1", 8765, "/app/publish")
        with pytest.raises(ValueError):
            cls("ftp://host/")
    assert AsyncPublisher("https://example.com/x")._authority == "example.com"
