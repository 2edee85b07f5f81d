"""The browser client at /client.js and the demo page at /demo (only with the demo), from the standalone
server over real sockets and from the ASGI app, also mounted under a prefix."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette
from starlette.routing import Mount

from helpers import CLASSES, ServerFactory, http_base
from xia_broadcast.server.asgi import create_app
from xia_broadcast.server.config import Settings


async def test_native_server_serves_the_client_always_and_the_demo_only_with_demo(
        make_server: ServerFactory, http: httpx.AsyncClient) -> None:
    plain = await make_server()
    js = await http.get(f"{http_base(plain)}/client.js")
    assert js.status_code == 200 and js.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "export class Listener" in js.text and "export class Collection" in js.text
    missing = await http.get(f"{http_base(plain)}/demo")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"

    demo = await make_server(demo=True, path="/live")
    page = await http.get(f"{http_base(demo)}/demo")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert 'new Listener("live"' in page.text  # the page connects to this server's WebSocket path
    assert (await http.post(f"{http_base(demo)}/demo")).status_code == 405  # GET only


async def test_asgi_app_serves_them_under_its_mount_prefix() -> None:
    app = Starlette(routes=[Mount("/realtime", create_app(Settings(classes=dict(CLASSES), demo=True)))])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        js = await client.get("/realtime/client.js")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
        page = await client.get("/realtime/demo")
        assert page.status_code == 200 and 'new Listener("ws"' in page.text  # relative: /realtime/ws
        assert (await client.get("/realtime/other.js")).status_code == 404
    plain = create_app(Settings(classes=dict(CLASSES)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=plain), base_url="http://test") as client:
        assert (await client.get("/demo")).status_code == 404
        assert (await client.get("/client.js")).status_code == 200
