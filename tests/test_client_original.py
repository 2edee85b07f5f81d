"""BroadcastListener, the original listener's interface: constructor (uri, header, channel_config), callbacks
(on_open, on_message, on_close, on_error) in the original's order and signatures, the original's header form
(an api_key naming an XIA_ environment variable), over a real authenticated server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from helpers import EU, RECV_TIMEOUT, ServerFactory, TcpProxy, fast_backoff, order, until
from xia_broadcast.client import BroadcastListener, Refused
from xia_broadcast.client.original import header_entries
from xia_broadcast.server.config import ApiKey

KEYS = {"k-shop": ApiKey(user_name="shop", acl=None, app_name="shop")}


class Calls:
    """Records every callback, as the original's callers would, and lets the test wait for them."""

    def __init__(self) -> None:
        self.opened = 0
        self.messages: list[dict[str, Any]] = []
        self.closes: list[tuple[int, str]] = []
        self.errors: list[Exception] = []
        self.changed = asyncio.Event()

    def on_open(self) -> None:
        self.opened += 1
        self.changed.set()

    def on_message(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        self.changed.set()

    async def on_close(self, code: int, reason: str) -> None:  # a coroutine function works as well
        self.closes.append((code, reason))
        self.changed.set()

    def on_error(self, error: Exception) -> None:
        self.errors.append(error)
        self.changed.set()

    async def until(self, condition: Callable[[], bool], *, what: str, timeout: float = 20.0) -> None:
        """Until ``condition()`` holds, checked at each callback; fails after ``timeout`` seconds naming ``what``."""
        await until(condition, timeout, wake=self.changed,
                    what=lambda: f"{what} (opened {self.opened}, {len(self.messages)} messages, closes "
                                 f"{self.closes}, errors {self.errors})")


def test_header_in_the_original_form_reads_the_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XIA_SHOP_KEY", "secret")
    assert header_entries({"app_name": "shop", "api_key": "XIA_SHOP_KEY"}) == \
        {"X-App-Name": "shop", "X-Api-Key": "secret"}
    assert header_entries({"app_name": "shop", "api_key": "literal"}) == {"X-App-Name": "shop", "X-Api-Key": "literal"}
    assert header_entries({"X-Api-Key": "k", "Authorization": "Bearer t"}) == \
        {"X-Api-Key": "k", "Authorization": "Bearer t"}


async def test_original_callbacks_across_a_drop_and_exits_only_on_request(
        make_server: ServerFactory, make_proxy: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XIA_SHOP_KEY", "k-shop")
    server = await make_server(api_keys=KEYS)
    proxy: TcpProxy = await make_proxy(server.port)
    calls = Calls()
    bl = BroadcastListener(proxy.url(), {"app_name": "shop", "api_key": "XIA_SHOP_KEY"},
                           {"Order": {"data_scope": EU, "catalog": {"order_id": None, "region": None}}},
                           backoff=fast_backoff(), ping_interval=None, connect_kwargs={"proxy": None})
    task = asyncio.get_running_loop().create_task(
        bl.listen(calls.on_open, calls.on_message, calls.on_error, calls.on_close))  # the original's order
    try:
        await calls.until(lambda: calls.opened == 1, what="the first on_open")
        seqs = [server.service.publish_nowait("Order", "I", order(1)),
                server.service.publish_nowait("Order", "U", order(1, region="US"))]  # leaves the scope: X
        await calls.until(lambda: len(calls.messages) == 1, what="one message")
        proxy.cut()
        await calls.until(lambda: calls.opened == 2, what="on_open again")
        seqs.append(server.service.publish_nowait("Order", "I", order(2)))
        await calls.until(lambda: len(calls.messages) == 2, what="two messages")
    finally:
        await bl.close()
        await asyncio.wait_for(task, RECV_TIMEOUT)
    assert calls.messages == [
        {"doc_class": "Order", "op": "I", "seq": seqs[0], "message": {"_id": "O-000001", "order_id": "O-000001",
                                                                      "region": "EU"}},
        {"doc_class": "Order", "op": "I", "seq": seqs[2], "message": {"_id": "O-000002", "order_id": "O-000002",
                                                                      "region": "EU"}},
    ]  # the exit (op X) is not an op the original knew: it is not passed on
    assert calls.closes and calls.closes[0][0] == 1006
    assert calls.errors == []


async def test_exits_reach_on_message_when_asked(make_server: ServerFactory) -> None:
    server = await make_server()
    calls = Calls()
    bl = BroadcastListener(server.url, None, {"Order": {"data_scope": EU}}, on_open=calls.on_open,
                           on_message=calls.on_message, exits=True, ping_interval=None,
                           connect_kwargs={"proxy": None})
    task = asyncio.get_running_loop().create_task(bl.listen())  # callbacks given to the constructor
    try:
        await calls.until(lambda: calls.opened == 1, what="the first on_open")
        server.service.publish_nowait("Order", "I", order(1))
        server.service.publish_nowait("Order", "U", order(1, region="US"))
        await calls.until(lambda: len(calls.messages) == 2, what="two messages")
    finally:
        await bl.close()
        await asyncio.wait_for(task, RECV_TIMEOUT)
    assert [(m["op"], m["message"]) for m in calls.messages] == [("I", _public(order(1))),
                                                                  ("X", {"_id": "O-000001"})]


async def test_id_only_asks_for_the_id_alone(make_server: ServerFactory) -> None:
    server = await make_server()
    calls = Calls()
    bl = BroadcastListener(server.url, None, {"Order": {}}, ping_interval=None, connect_kwargs={"proxy": None})
    task = asyncio.get_running_loop().create_task(
        bl.listen(calls.on_open, calls.on_message, calls.on_error, calls.on_close, id_only=True))
    try:
        await calls.until(lambda: calls.opened == 1, what="the first on_open")
        server.service.publish_nowait("Order", "I", order(7))
        await calls.until(lambda: len(calls.messages) == 1, what="one message")
    finally:
        await bl.close()
        await asyncio.wait_for(task, RECV_TIMEOUT)
    assert calls.messages[0]["message"] == {"_id": "O-000007"}


async def test_a_wrong_key_calls_on_error_and_listen_returns(make_server: ServerFactory) -> None:
    server = await make_server(api_keys=KEYS)
    calls = Calls()
    bl = BroadcastListener(server.url, {"app_name": "shop", "api_key": "wrong"}, {"Order": {}},
                           ping_interval=None, connect_kwargs={"proxy": None})
    await asyncio.wait_for(bl.listen(calls.on_open, calls.on_message, calls.on_error, calls.on_close), 20)
    assert len(calls.errors) == 1 and isinstance(calls.errors[0], Refused) and calls.errors[0].code == 4401
    assert calls.opened == 0 and calls.closes == []


async def test_without_on_error_listen_raises(make_server: ServerFactory) -> None:
    server = await make_server()
    bl = BroadcastListener(server.url, None, {"Nope": {}}, ping_interval=None, connect_kwargs={"proxy": None})
    with pytest.raises(Refused) as info:
        await asyncio.wait_for(bl.listen(), 20)
    assert info.value.code == 4404


def _public(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "margin"}


async def test_it_sends_no_strict_option_and_a_name_the_class_does_not_declare_is_accepted(
        make_server: ServerFactory) -> None:
    """The original listener never asked for strict checking: a catalog name the class does not declare is
    accepted (the original server ignores it) and the documents come with `_id` alone, not a refusal."""
    server = await make_server()
    calls = Calls()
    bl = BroadcastListener(server.url, None, {"Order": {"catalog": {"colour": None}}}, ping_interval=None,
                           connect_kwargs={"proxy": None})
    task = asyncio.get_running_loop().create_task(
        bl.listen(calls.on_open, calls.on_message, calls.on_error, calls.on_close))
    try:
        await calls.until(lambda: calls.opened == 1, what="the first on_open")
        server.service.publish_nowait("Order", "I", order(3))
        await calls.until(lambda: len(calls.messages) == 1, what="one message")
        assert bl.listener is not None
        assert (await bl.listener.handshake())["_options"] == {"control": True}
    finally:
        await bl.close()
        await asyncio.wait_for(task, RECV_TIMEOUT)
    assert calls.messages[0]["message"] == {"_id": "O-000003"} and calls.errors == []
    strict = BroadcastListener(server.url, None, {"Order": {"catalog": {"colour": None}}}, strict=True,
                               ping_interval=None, connect_kwargs={"proxy": None})
    with pytest.raises(Refused) as info:  # asked for: the server's reason
        await asyncio.wait_for(strict.listen(), 20)
    assert (info.value.code, info.value.reason) == (4421, "Order: Order has no field 'colour'")
