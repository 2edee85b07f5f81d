"""On an authenticated server, hidden fields are for the keys and tokens that are granted them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from websockets.exceptions import ConnectionClosed

from helpers import ServerFactory, recv_json, ws_connect
from xia_broadcast.server.config import ApiKey
from xia_broadcast.server.demo import ORDER_SCHEMA
from xia_broadcast.server.native import NativeServer

SECRET = "another-test-secret-0123456789abcdef"
READ_ALL = {"content": [{"obj": "Order/*", "act": "read"}]}
DOC = {"_id": "1", "order_id": "1", "customer": "acme", "margin": 0.25}


def token(**claims: Any) -> str:
    return jwt.encode({"sub": "t", "exp": int(time.time()) + 60, "acl": READ_ALL, **claims}, SECRET)


@pytest.fixture
async def server(make_server: ServerFactory) -> NativeServer:
    """An authenticated server: JWTs signed with :data:`SECRET`, a plain key and a key granted hidden fields."""
    return await make_server(classes={"Order": ORDER_SCHEMA}, jwt_secret=SECRET, log_level="WARNING", api_keys={
        "plain": ApiKey("plain", READ_ALL), "trusted": ApiKey("trusted", READ_ALL, show_hidden=True)})


async def open_ws(srv: NativeServer, header: dict[str, str], show_hidden: bool) -> Any:
    """A client that sent its handshake (asking for hidden fields when ``show_hidden``), not yet answered."""
    ws = await ws_connect(srv.url)
    await ws.send(json.dumps({"Order": {"show_hidden": show_hidden}, "_header": header}))
    return ws


async def first_document(srv: NativeServer, ws: Any) -> dict[str, Any]:
    """The confirmation, then the document :data:`DOC` published now, as ``ws`` receives it."""
    assert "Order" in await recv_json(ws)
    srv.service.publish_nowait("Order", "I", dict(DOC))
    message: dict[str, Any] = (await recv_json(ws))["message"]
    return message


def api_key(key: str) -> Callable[[], dict[str, str]]:
    return lambda: {"X-Api-Key": key}


def bearer(**claims: Any) -> Callable[[], dict[str, str]]:
    """A header with a token made when the test runs (a token made at import could expire first)."""
    return lambda: {"Authorization": f"Bearer {token(**claims)}"}


@pytest.mark.parametrize("header", [api_key("trusted"), bearer(show_hidden=True)])
async def test_granted_keys_and_tokens_see_hidden_fields(server: NativeServer,
                                                         header: Callable[[], dict[str, str]]) -> None:
    ws = await open_ws(server, header(), show_hidden=True)
    assert (await first_document(server, ws))["margin"] == 0.25
    await ws.close()


@pytest.mark.parametrize("make_header", [api_key("plain"), bearer(), bearer(show_hidden="yes")])
async def test_others_asking_for_hidden_fields_are_refused_with_4403(server: NativeServer,
                                                                      make_header: Callable[[], dict[str, str]]
                                                                      ) -> None:
    header = make_header()
    good = await open_ws(server, {"X-Api-Key": "plain"}, show_hidden=False)
    assert "margin" not in await first_document(server, good)
    ws = await open_ws(server, header, show_hidden=True)
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
    assert "show_hidden not permitted" in closed.value.rcvd.reason
    # without show_hidden, the same credentials subscribe fine
    ws = await open_ws(server, header, show_hidden=False)
    assert "margin" not in await first_document(server, ws)
    await ws.close()
    await good.close()


async def test_a_public_server_lets_anyone_ask_for_hidden_fields_as_the_original(make_server: ServerFactory) -> None:
    srv = await make_server(classes={"Order": ORDER_SCHEMA}, log_level="WARNING")
    ws = await open_ws(srv, {}, show_hidden=True)
    assert (await first_document(srv, ws))["margin"] == 0.25
    await ws.close()
