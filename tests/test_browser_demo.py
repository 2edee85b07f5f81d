"""The demo page in headless Chromium against a real server: rows appear, change and go; the scope controls
resubscribe and the table follows; the page survives a server restart. A screenshot is written to
tests/artifacts/demo.png.

Needs Debian's ``chromium`` (``/usr/bin/chromium``, installed by ``.ci/run``) and the ``playwright`` package
(driving that browser; no browser download).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from helpers import ServerFactory, TcpProxy, free_port, order
from xia_broadcast.server.native import NativeServer
from xia_broadcast.server.upgrade import accept_key

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).parent / "artifacts"
#: milliseconds the page may take to show what a step expects
WAIT_MS = 20_000

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)")

ROW_IDS = "() => [...document.querySelectorAll('#rows tr')].map((r) => r.dataset.id)"


@pytest.fixture
async def page() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pg = await browser.new_page(viewport={"width": 1100, "height": 560})
            errors: list[str] = []
            pg.on("pageerror", lambda exc: errors.append(str(exc)))
            yield pg
            assert errors == [], f"errors in the page: {errors}"
        finally:
            await browser.close()


async def rows_are(page: Any, ids: list[int]) -> None:
    """Wait until the table shows exactly these orders, in this order (newest first)."""
    want = [f"O-{i:06d}" for i in ids]
    try:
        await page.wait_for_function(f"(want) => JSON.stringify(({ROW_IDS})()) === JSON.stringify(want)",
                                     arg=want, timeout=WAIT_MS)
    except Exception as exc:
        log = await page.inner_text("#log")
        raise AssertionError(f"rows {await page.evaluate(ROW_IDS)} never became {want}; page log: {log}") from exc


async def state_is(page: Any, state: str) -> None:
    await page.wait_for_function("(s) => document.getElementById('state').dataset.state === s", arg=state,
                                 timeout=WAIT_MS)


def publish(server: NativeServer, op: str, i: int, region: str, amount: float, **extra: Any) -> str:
    return server.service.publish_nowait("Order", op, order(i, region=region, amount=amount, **extra))


async def test_demo_page_follows_changes_scopes_and_a_server_restart(make_server: ServerFactory,
                                                                     page: Any) -> None:
    port = free_port()
    server = await make_server(port=port, demo=True)
    await page.goto(f"http://127.0.0.1:{port}/demo")
    await state_is(page, "open")

    publish(server, "I", 1, "EU", 50.0)  # inserts appear
    publish(server, "I", 2, "US", 150.0)
    publish(server, "I", 3, "EU", 250.0)
    await rows_are(page, [3, 2, 1])
    publish(server, "I", 4, "APAC", 400.0)
    await rows_are(page, [4, 3, 2, 1])
    publish(server, "U", 2, "US", 175.0)  # updates change cells, highlighted
    amount = page.locator('#rows tr[data-id="O-000002"] td[data-field="amount"]')
    await page.wait_for_function(
        "() => document.querySelector('#rows tr[data-id=\"O-000002\"] td[data-field=\"amount\"]')"
        ".textContent === '175.00'", timeout=WAIT_MS)
    assert "flash" in (await amount.get_attribute("class") or "")
    publish(server, "D", 1, "EU", 50.0)  # deletes remove rows
    await rows_are(page, [4, 3, 2])

    await page.select_option("#region", "EU")  # a new scope: what the page saw is replayed through it
    await rows_are(page, [3])
    publish(server, "I", 5, "EU", 30.0)
    await rows_are(page, [5, 3])
    await page.fill("#min-amount", "100")
    await page.click("#apply")
    await rows_are(page, [3])
    publish(server, "U", 3, "EU", 20.0)  # leaves the scope: an exit removes the row
    await rows_are(page, [])
    publish(server, "U", 5, "EU", 500.0)  # enters the scope
    await rows_are(page, [5])

    await server.shutdown()  # the page reconnects to a new server on the same port
    await state_is(page, "reconnecting")
    server = await make_server(port=port, demo=True)
    # its journal starts empty: history gone, the page starts over from live changes
    await page.wait_for_function("() => document.getElementById('log').textContent.includes('history gone')",
                                 timeout=WAIT_MS)
    await rows_are(page, [])
    await state_is(page, "open")
    log = await page.inner_text("#log")
    assert "dropped (1001 shutting down)" in log and "connected, resuming after" in log
    publish(server, "I", 6, "EU", 600.0)
    publish(server, "I", 7, "US", 700.0)
    await rows_are(page, [6])  # still in the scope chosen before the restart
    publish(server, "I", 8, "EU", 800.0)
    head = publish(server, "U", 6, "EU", 650.0)
    await rows_are(page, [8, 6])
    await page.wait_for_function("(s) => document.getElementById('last-seq').textContent === s", arg=head,
                                 timeout=WAIT_MS)

    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "demo.png"))
    assert (ARTIFACTS / "demo.png").stat().st_size > 1000


async def test_demo_page_resumes_after_a_drop_without_losing_a_change(
        make_server: ServerFactory, make_proxy: Callable[..., Any], page: Any) -> None:
    server = await make_server(demo=True)
    proxy: TcpProxy = await make_proxy(server.port)  # the page and its WebSocket both go through it
    await page.goto(f"http://127.0.0.1:{proxy.port}/demo")
    await state_is(page, "open")
    publish(server, "I", 1, "EU", 10.0)
    await rows_are(page, [1])
    await proxy.stop()  # the connection drops; new ones are refused for a while
    await state_is(page, "reconnecting")
    publish(server, "I", 2, "US", 20.0)  # published while the page is away
    publish(server, "U", 1, "EU", 15.0)
    publish(server, "I", 3, "APAC", 30.0)
    publish(server, "D", 2, "US", 20.0)
    await proxy.start()
    await rows_are(page, [3, 1])  # resumed after its last seq: every change applied, in order
    await page.wait_for_function(
        "() => document.querySelector('#rows tr[data-id=\"O-000001\"] td[data-field=\"amount\"]')"
        ".textContent === '15.00'", timeout=WAIT_MS)
    log = await page.inner_text("#log")
    assert "connected, resuming after" in log and "history gone" not in log
    assert await page.evaluate("() => window.xiaDemo.listener.duplicates") == 0


async def test_client_module_backoff_is_bounded_with_full_jitter(make_server: ServerFactory, page: Any) -> None:
    server = await make_server()
    await page.goto(f"http://127.0.0.1:{server.port}/client.js")  # an origin to import the module from
    bounds, delays = await page.evaluate("""async () => {
        const { Backoff } = await import("/client.js");
        const b = new Backoff({ initial: 0.5, factor: 2, maxDelay: 4 });
        const draws = Array.from({ length: 2000 }, () => b.delay(3));
        return [[1, 2, 3, 4, 5, 1000].map((n) => b.bound(n)), [Math.min(...draws), Math.max(...draws)]];
    }""")
    assert bounds == [0.5, 1, 2, 4, 4, 4]
    assert 0 <= delays[0] < 0.1 and 1.9 < delays[1] <= 2.0


async def test_client_module_drops_and_retries_a_connection_the_server_never_confirms(
        make_server: ServerFactory, page: Any) -> None:
    """A server that completes the upgrade and then says nothing: the browser client gives up on that
    connection after ``openTimeout`` and reconnects, instead of waiting forever."""
    upgrades = 0

    async def upgrade_then_silence(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal upgrades
        request = await reader.readuntil(b"\r\n\r\n")
        key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept_key(key.decode()) + b"\r\n\r\n")
        upgrades += 1
        with contextlib.suppress(Exception):
            await reader.read()  # reads the subscription, answers nothing, until the client goes

    silent = await asyncio.start_server(upgrade_then_silence, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    server = await make_server()
    try:
        await page.goto(f"http://127.0.0.1:{server.port}/client.js")  # an origin to import the module from
        states = await page.evaluate("""async (port) => {
            const { Listener } = await import("/client.js");
            const states = [];
            const listener = new Listener(`ws://127.0.0.1:${port}/ws`, { Order: {} }, {
                openTimeout: 0.3, backoff: { initial: 0.01, factor: 1, maxDelay: 0.01 },
                onState: (state, detail) => states.push([state, detail.reason || ""]) }).start();
            await new Promise((resolve) => setTimeout(resolve, 1500));
            listener.close();
            return states;
        }""", port)
    finally:
        silent.close()
    retries = [reason for state, reason in states if state == "reconnecting"]
    assert len(retries) >= 2 and all(r == "no confirmation within 0.3 s" for r in retries), states
    assert upgrades >= 3
