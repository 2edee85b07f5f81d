"""Browser safety by default: a page of another site can neither open a WebSocket to the server nor publish
to it, nor reach a server on loopback through a name it made resolve to 127.0.0.1 (DNS rebinding).
Non-browser clients (no Origin, the original listener) are unaffected."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from helpers import (
    UPGRADE_REQUEST,
    ServerFactory,
    order,
    post_publish,
    read_response,
    recv_json,
    subscribe,
    ws_connect,
)


async def test_an_upgrade_from_another_sites_page_is_refused_and_the_servers_own_pages_and_other_clients_pass(
        make_server: ServerFactory) -> None:
    server = await make_server()
    with pytest.raises(InvalidStatus) as refused:
        await ws_connect(server.url, origin="https://evil.example")
    assert refused.value.response.status_code == 403 and b"forbidden_origin" in refused.value.response.body
    own = f"http://127.0.0.1:{server.port}"  # a page this server served (the demo, client.js)
    for kwargs in ({"origin": own}, {}):  # its own origin; no Origin at all (not a browser)
        ws, confirmation = await subscribe(server.url, {"Order": {}}, **kwargs)
        await ws.close()
        assert set(confirmation) == {"Order"}


@pytest.mark.parametrize(("allowlist", "origin", "allowed"), [
    (["https://shop.example"], "https://shop.example", True),
    (["https://shop.example"], "https://evil.example", False),
    (["*"], "https://evil.example", True),
])
async def test_the_origin_allowlist_adds_origins_and_star_lets_any_in(
        make_server: ServerFactory, allowlist: list[str], origin: str, allowed: bool) -> None:
    server = await make_server(origin_allowlist=allowlist)
    if allowed:
        ws, _ = await subscribe(server.url, {"Order": {}}, origin=origin)
        await ws.close()
    else:
        with pytest.raises(InvalidStatus) as refused:
            await ws_connect(server.url, origin=origin)
        assert refused.value.response.status_code == 403


async def test_a_loopback_server_answers_only_to_loopback_names(make_server: ServerFactory,
                                                                http: httpx.AsyncClient) -> None:
    server = await make_server()
    base = f"http://127.0.0.1:{server.port}"
    rebound = await http.get(f"{base}/metrics", headers={"Host": f"evil.example:{server.port}"})
    assert rebound.status_code == 403 and rebound.json()["error"] == "forbidden_host"
    published = await post_publish(http, server, {"class": "Order", "op": "I", "doc": order(1)},
                                   {"Host": "evil.example"})
    assert published.status_code == 403
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(UPGRADE_REQUEST.format(path="/ws").replace("Host: 127.0.0.1", "Host: evil.example").encode())
    status, _, body = await read_response(reader)
    writer.close()
    assert status == 403 and b"forbidden_host" in body  # the upgrade too
    for name in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", "LOCALHOST"):
        assert (await http.get(f"{base}/healthz", headers={"Host": name})).status_code == 200, name
    anywhere = await make_server(allowed_hosts=["*"])
    assert (await http.get(f"http://127.0.0.1:{anywhere.port}/healthz",
                           headers={"Host": "evil.example"})).status_code == 200


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_publish_takes_json_declared_as_json_only(make_server: ServerFactory, http: httpx.AsyncClient,
                                                         content_type: str | None) -> None:
    """What a page of another site can send without asking first (a form, text/plain) is refused before its
    body is read, and nothing of it is published."""
    server = await make_server()
    ws, _ = await subscribe(server.url, {"Order": {}})
    async with ws:
        headers = {"Content-Type": content_type} if content_type else {"Content-Type": ""}
        refused = await post_publish(http, server, {"class": "Order", "op": "I", "doc": order(1)}, headers)
        assert (refused.status_code, refused.json()["error"]) == (415, "unsupported_media_type")
        ok = await post_publish(http, server, {"class": "Order", "op": "I", "doc": order(2)},
                                {"Content-Type": "application/json; charset=utf-8"})
        assert ok.status_code == 200
        assert (await recv_json(ws))["message"]["_id"] == "O-000002"  # the refused one never came
