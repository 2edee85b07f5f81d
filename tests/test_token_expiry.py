"""A JWT's expiry is enforced while connected; control clients are warned and can refresh."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import jwt
import pytest
from websockets.exceptions import ConnectionClosed

from helpers import ServerFactory, recv_json, subscribe, ws_connect
from xia_broadcast.server.demo import ORDER_SCHEMA
from xia_broadcast.server.native import NativeServer

SECRET = "s3cret-for-tests-only-0123456789abcdef"
ACL = {"content": [{"obj": "Order/*", "act": "read"}]}


def token(sub: str = "alice", ttl: float = 60.0, acl: dict[str, Any] | None = None) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time() + ttl), "acl": acl or ACL}, SECRET, algorithm="HS256")


@pytest.fixture
async def server(make_server: ServerFactory) -> NativeServer:
    """A server that takes JWTs signed with :data:`SECRET`, with the demo's Order class."""
    return await make_server(classes={"Order": ORDER_SCHEMA}, jwt_secret=SECRET, log_level="WARNING")


async def subscribe_with(srv: NativeServer, tok: str, control: bool) -> Any:
    """A subscriber to Order with the token ``tok`` (and control messages when ``control``)."""
    request: dict[str, Any] = {"Order": {}, "_header": {"Authorization": f"Bearer {tok}"}}
    if control:
        request["_options"] = {"control": True}
    ws, confirmation = await subscribe(srv.url, request)
    assert "Order" in confirmation
    return ws


async def test_an_expired_token_closes_the_connection_with_4401(server: NativeServer) -> None:
    short = await subscribe_with(server, token(ttl=1.5), control=False)
    other = await subscribe_with(server, token(sub="bob"), control=False)
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(short.recv(), 5)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4401, "token expired")
    seq = server.service.publish_nowait("Order", "I", {"_id": "1", "order_id": "1"})
    assert (await recv_json(other))["seq"] == seq  # the other subscriber is untouched
    await other.close()


async def test_a_control_client_is_warned_and_refreshes_its_token(server: NativeServer) -> None:
    ws = await subscribe_with(server, token(ttl=2.5), control=True)
    warning = await recv_json(ws)
    assert warning["_control"] == "token_expiring" and warning["expires_at"] > time.time()
    fresh = token(ttl=60)
    await ws.send(json.dumps({"_control": "refresh", "token": fresh}))
    refreshed = await recv_json(ws)
    assert refreshed == {"_control": "token_refreshed", "expires_at": jwt.decode(fresh, SECRET, ["HS256"])["exp"]}
    await asyncio.sleep(2.0)  # past the first token's expiry: still subscribed
    seq = server.service.publish_nowait("Order", "I", {"_id": "2", "order_id": "2"})
    assert (await recv_json(ws))["seq"] == seq
    await ws.close()


@pytest.mark.parametrize("bad", [
    {"_control": "refresh", "token": "not-a-token"},
    {"_control": "refresh"},
    {"_control": "refresh", "token": token(sub="mallory")},
    {"_control": "refresh", "token": token(acl={"content": [{"obj": "*", "act": "*"}]})},
    {"_control": "refresh", "token": jwt.encode({"sub": "alice", "exp": 1, "acl": ACL}, SECRET)},
])
async def test_a_refresh_that_fails_closes_with_4401(server: NativeServer, bad: dict[str, Any]) -> None:
    ws = await subscribe_with(server, token(), control=True)
    await ws.send(json.dumps(bad))
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


async def test_other_client_messages_are_ignored_as_the_original(server: NativeServer) -> None:
    ws = await subscribe_with(server, token(), control=False)
    await ws.send("hello")
    await ws.send(json.dumps({"anything": 1}))
    seq = server.service.publish_nowait("Order", "I", {"_id": "3", "order_id": "3"})
    assert (await recv_json(ws))["seq"] == seq
    await ws.close()


async def test_a_refresh_sent_right_behind_the_handshake_is_not_lost(server: NativeServer) -> None:
    ws = await ws_connect(server.url)
    fresh = token(ttl=120)
    await ws.send(json.dumps({"Order": {}, "_header": {"Authorization": f"Bearer {token()}"},
                              "_options": {"control": True}}))
    await ws.send(json.dumps({"_control": "refresh", "token": fresh}))
    assert "Order" in await recv_json(ws)
    assert await recv_json(ws) == {"_control": "token_refreshed",
                              "expires_at": jwt.decode(fresh, SECRET, ["HS256"])["exp"]}
    await ws.close()
