"""The demo page in headless Chromium against a real server: it opens on the current orders (a snapshot), rows
appear, change and go, the most recently changed first; the scope controls resubscribe and the table follows;
the page survives a server restart (reset, then the new server's orders). Its layout, measured, on a phone
(390x844: nothing overlaps, every column fits, a change lands in view) and on a desktop. The client module's
snapshot logic against a scripted WebSocket. Screenshots are written to tests/artifacts/.

Needs Debian's ``chromium`` (``/usr/bin/chromium``, installed by ``.ci/run``) and the ``playwright`` package
(driving that browser; no browser download).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
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
async def new_page() -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """``await new_page(**context_options)``: a page of its own browser context (default viewport 1100x560);
    an error in any page fails the test."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        errors: list[str] = []

        async def factory(**options: Any) -> Any:
            options.setdefault("viewport", {"width": 1100, "height": 560})
            pg = await (await browser.new_context(**options)).new_page()
            pg.on("pageerror", lambda exc: errors.append(str(exc)))
            return pg

        try:
            yield factory
            assert errors == [], f"errors in the page: {errors}"
        finally:
            await browser.close()


@pytest.fixture
async def page(new_page: Callable[..., Awaitable[Any]]) -> Any:
    return await new_page()


async def rows_are(page: Any, ids: Sequence[int | str]) -> None:
    """Wait until the table shows exactly these orders (numbers, or ids), in this order (the most recently
    changed first)."""
    want = [i if isinstance(i, str) else f"O-{i:06d}" for i in ids]
    try:
        await page.wait_for_function(f"(want) => JSON.stringify(({ROW_IDS})()) === JSON.stringify(want)",
                                     arg=want, timeout=WAIT_MS)
    except Exception as exc:
        log = await page.inner_text("#log")
        raise AssertionError(f"rows {await page.evaluate(ROW_IDS)} never became {want}; page log: {log}") from exc


async def state_is(page: Any, state: str) -> None:
    await page.wait_for_function("(s) => document.getElementById('state').dataset.state === s", arg=state,
                                 timeout=WAIT_MS)


async def shown_seq_is(page: Any, seq: str) -> None:
    """Wait until the page shows this seq as its position (in short; in full in data-seq and the title)."""
    await page.wait_for_function("(s) => document.getElementById('last-seq').dataset.seq === s", arg=seq,
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
    publish(server, "U", 2, "US", 175.0)  # updates change cells, highlighted, and bring the row to the top
    amount = page.locator('#rows tr[data-id="O-000002"] td[data-field="amount"]')
    await page.wait_for_function(
        "() => document.querySelector('#rows tr[data-id=\"O-000002\"] td[data-field=\"amount\"]')"
        ".textContent === '175.00'", timeout=WAIT_MS)
    assert "flash" in (await amount.get_attribute("class") or "")
    await rows_are(page, [2, 4, 3, 1])
    publish(server, "D", 1, "EU", 50.0)  # deletes remove rows
    await rows_are(page, [2, 4, 3])

    await page.select_option("#region", "EU")  # a new scope: a snapshot of it (the current orders in it)
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
    # its journal and store start empty (a new epoch): reset, and the new server's (empty) snapshot
    await page.wait_for_function("() => document.getElementById('log').textContent.includes('reset:')",
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
    await rows_are(page, [6, 8])
    await shown_seq_is(page, head)

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
    assert "connected, resuming after" in log and "caught up at" in log and "reset" not in log
    assert await page.evaluate("() => window.xiaDemo.listener.duplicates") == 0


async def demo_state(page: Any) -> dict[str, Any]:
    state: dict[str, Any] = await page.evaluate("""() => {
        const { listener, orders } = window.xiaDemo;
        return { complete: orders.complete, lastSeq: listener.lastSeq.Order ?? null,
                 epoch: listener.epoch.Order ?? null, duplicates: listener.duplicates,
                 messages: Number(document.getElementById('message-count').textContent),
                 shownSeq: document.getElementById('last-seq').dataset.seq,
                 highlighted: document.querySelectorAll('#rows tr.new').length };
    }""")
    return state


async def cell_is(page: Any, i: int, field: str, text: str) -> None:
    await page.wait_for_function(
        "([id, f, t]) => document.querySelector(`#rows tr[data-id='${id}'] td[data-field='${f}']`)?.textContent === t",
        arg=[f"O-{i:06d}", field, text], timeout=WAIT_MS)


async def test_demo_page_opens_on_the_current_orders_and_after_a_restart_shows_the_new_servers_only(
        make_server: ServerFactory, page: Any) -> None:
    port = free_port()
    server = await make_server(port=port, demo=True)
    for i in range(1, 7):
        publish(server, "I", i, ["EU", "US", "APAC"][i % 3], 100.0 * i)
    publish(server, "U", 2, "APAC", 175.0)
    publish(server, "D", 4, "US", 400.0)
    publish(server, "U", 5, "APAC", 500.0, status="paid")
    publish(server, "I", 7, "US", 700.0)
    head = publish(server, "D", 7, "US", 700.0)

    await page.goto(f"http://127.0.0.1:{port}/demo")  # nothing is published from here until checked
    # the current orders, at once, not an empty table: the most recently changed first (5 and 2 were updated)
    await rows_are(page, [5, 2, 6, 3, 1])
    await cell_is(page, 2, "amount", "175.00")
    await cell_is(page, 5, "status", "paid")
    await shown_seq_is(page, head)
    state = await demo_state(page)
    # five messages: the stored documents, not a replay of the eleven changes
    assert state == {"complete": True, "lastSeq": head, "epoch": state["epoch"], "duplicates": 0,
                     "messages": 5, "shownSeq": head, "highlighted": 0}, state
    old_epoch = state["epoch"]
    assert old_epoch
    assert "current orders loaded (5)" in await page.inner_text("#log")

    publish(server, "I", 8, "EU", 800.0)  # then live
    publish(server, "U", 1, "US", 150.0)
    await rows_are(page, [1, 8, 5, 2, 6, 3])
    await cell_is(page, 1, "amount", "150.00")

    await server.shutdown()  # memory mode: the new server on the same port has a new epoch, other orders
    await state_is(page, "reconnecting")
    server = await make_server(port=port, demo=True)
    publish(server, "I", 20, "EU", 20.0)
    new_head = publish(server, "I", 21, "US", 21.0)
    await rows_are(page, [21, 20])  # the reset dropped every order of the old server
    await page.wait_for_function("(s) => window.xiaDemo.listener.lastSeq.Order === s", arg=new_head,
                                 timeout=WAIT_MS)
    state = await demo_state(page)
    assert state["complete"] and state["epoch"] and state["epoch"] != old_epoch and state["duplicates"] == 0
    log = await page.inner_text("#log")
    assert "connected, resuming after" in log and "reset: history gone on the server" in log
    publish(server, "D", 20, "EU", 20.0)
    await rows_are(page, [21])


async def test_demo_page_is_refused_for_good_when_the_store_refuses_snapshots(make_server: ServerFactory,
                                                                             page: Any) -> None:
    server = await make_server(demo=True, store_max_documents=2)
    for i in range(1, 5):  # past the store's bound: it is dropped, and snapshots of Order refused (4413)
        publish(server, "I", i, "EU", float(i))
    await page.goto(f"http://127.0.0.1:{server.port}/demo")
    await state_is(page, "refused")
    assert "refused: 4413" in await page.inner_text("#log")
    await asyncio.sleep(1.0)  # longer than the demo's first reconnection delays: none is made
    assert await page.evaluate("() => [window.xiaDemo.listener.state, window.xiaDemo.listener.connections]") == [
        "refused", 1]  # confirmed once, then closed with 4413: not retried
    assert (await page.inner_text("#log")).count("connected") == 1


#: The demo page's layout as the browser lays it out (CSS pixels, relative to the viewport): the page, the
#: header, the table and its scroll container (the section), the connection panel, every column and cell shown.
LAYOUT = """() => {
    const box = (el) => { const r = el.getBoundingClientRect();
                          return { left: r.left, top: r.top, right: r.right, bottom: r.bottom }; };
    const shown = (el) => getComputedStyle(el).display !== "none" && el.getClientRects().length > 0;
    const section = document.querySelector("main > section");
    const seq = document.getElementById("last-seq");
    return {
        viewport: { width: document.documentElement.clientWidth, height: innerHeight,
                    scale: visualViewport.scale },
        pageWidth: document.documentElement.scrollWidth, scrollY,
        header: box(document.querySelector("header")),
        table: box(document.querySelector("main table")),
        section: { ...box(section), scrollWidth: section.scrollWidth, clientWidth: section.clientWidth },
        panel: box(document.querySelector("aside")),
        columns: [...document.querySelectorAll("thead th")].filter(shown)
            .map((th) => ({ field: th.dataset.field, ...box(th) })),
        cells: [...document.querySelectorAll("#rows td")].filter(shown).map((td) => ({
            id: td.parentElement.dataset.id, field: td.dataset.field, ...box(td),
            cut: td.scrollWidth > td.clientWidth, title: td.title })),
        seq: { text: seq.textContent, title: seq.title, size: parseFloat(getComputedStyle(seq).fontSize),
               rowsSize: parseFloat(getComputedStyle(document.getElementById("row-count")).fontSize) },
    };
}"""


def overlap(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    return a["left"] < b["right"] and b["left"] < a["right"] and a["top"] < b["bottom"] and b["top"] < a["bottom"]


def within(inner: Mapping[str, float], outer: Mapping[str, float], slack: float = 0.5) -> bool:
    return (inner["left"] >= outer["left"] - slack and inner["right"] <= outer["right"] + slack
            and inner["top"] >= outer["top"] - slack and inner["bottom"] <= outer["bottom"] + slack)


async def row_box(page: Any, oid: str) -> dict[str, Any]:
    """Where the row of this order is, with the viewport's height and the scroll position."""
    box: dict[str, Any] = await page.evaluate("""(id) => {
        const tr = document.querySelector(`#rows tr[data-id="${id}"]`);
        const r = tr.getBoundingClientRect();
        return { left: r.left, top: r.top, right: r.right, bottom: r.bottom, height: innerHeight,
                 width: document.documentElement.clientWidth, scrollY,
                 index: [...tr.parentElement.children].indexOf(tr),
                 classes: [tr.className, ...[...tr.children].map((td) => td.className)].join(" ") };
    }""", oid)
    return box


def in_view(box: Mapping[str, Any]) -> bool:
    return bool(box["top"] >= 0 and box["bottom"] <= box["height"]
                and box["left"] >= 0 and box["right"] <= box["width"])


def check_seq_is_compact(layout: dict[str, Any], head: str) -> None:
    """The position is shown in short (the end of the seq's milliseconds, its counter), smaller than the counts;
    in full in its title."""
    seq = layout["seq"]
    ms, counter = head.split("-")
    assert seq["text"] == f"…{ms[-6:]}-{int(counter)}", seq
    assert head in seq["title"] and seq["size"] < seq["rowsSize"], seq


async def test_demo_page_on_a_phone_fits_the_screen_and_shows_each_change_in_view(
        make_server: ServerFactory, new_page: Callable[..., Awaitable[Any]], run: Callable[..., Any]) -> None:
    """390x844, a phone's screen (mobile viewport, touch): the connection panel is below the table, never over
    it; every column shown fits on the screen without scrolling sideways (the narrow table leaves out the
    region and cuts a long name with an ellipsis, never the status); an order inserted from the CLI (an id
    that sorts before every other) and an update of the order at the bottom of a long table both land at the
    top, in view, highlighted."""
    server = await make_server(demo=True)
    for i in range(1, 41):  # more orders than the screen shows
        publish(server, "I", i, ["EU", "US", "APAC"][i % 3], 97.5 * i, status=["new", "paid", "delivered"][i % 3],
                **({"customer": "Umbrella Corporation International"} if i == 39 else {}))
    head = publish(server, "U", 40, "US", 4000.0, status="delivered")
    page = await new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                          has_touch=True)
    await page.goto(f"http://127.0.0.1:{server.port}/demo")
    await state_is(page, "open")
    await page.wait_for_function("() => window.xiaDemo.orders.complete && "
                                 "document.querySelectorAll('#rows tr').length === 40", timeout=WAIT_MS)
    await shown_seq_is(page, head)

    layout = await page.evaluate(LAYOUT)
    screen = {"left": 0, "top": -1e9, "right": layout["viewport"]["width"], "bottom": 1e9}
    assert layout["viewport"]["width"] == 390 and layout["viewport"]["scale"] == 1, layout["viewport"]
    assert layout["pageWidth"] <= 390, f"the page scrolls sideways: {layout['pageWidth']} px wide"
    assert not overlap(layout["panel"], layout["table"]) and not overlap(layout["panel"], layout["section"])
    assert layout["panel"]["top"] >= layout["section"]["bottom"], (layout["panel"], layout["section"])
    assert layout["header"]["bottom"] <= layout["table"]["top"]
    assert within(layout["section"], screen), layout["section"]
    assert layout["section"]["scrollWidth"] <= layout["section"]["clientWidth"], layout["section"]  # no scrolling
    fields = [c["field"] for c in layout["columns"]]
    assert fields == ["order_id", "customer", "amount", "status"], fields  # the region left out
    for box in layout["columns"] + layout["cells"]:
        assert within(box, layout["section"]) and within(box, screen), f"cut: {box}"
    long_name = next(c for c in layout["cells"] if c["id"] == "O-000039" and c["field"] == "customer")
    assert long_name["cut"] and long_name["title"] == "Umbrella Corporation International", long_name
    assert not any(c["cut"] for c in layout["cells"] if c["field"] in ("amount", "status"))
    check_seq_is_compact(layout, head)
    oldest = await row_box(page, "O-000001")
    assert oldest["index"] == 39 and not in_view(oldest), oldest  # at the bottom: below the screen

    # from the CLI, as a reader does: an id that sorted by id would go last
    doc = {**order(0, customer="cli", amount=12.5), "_id": "A-1", "order_id": "A-1"}
    cli = await run("publish", f"http://127.0.0.1:{server.port}", "--class", "Order", "--op", "I",
                    "--doc", json.dumps(doc))
    assert await cli.wait() == 0, cli.err
    await rows_are(page, ["A-1"] + [f"O-{i:06d}" for i in [40, *range(39, 0, -1)]])
    inserted = await row_box(page, "A-1")
    assert inserted["index"] == 0 and inserted["scrollY"] == 0 and in_view(inserted), inserted
    assert "new" in inserted["classes"].split(), inserted

    publish(server, "U", 1, "US", 1234.5)  # the order at the bottom changes: to the top, its amount lit
    await cell_is(page, 1, "amount", "1234.50")
    updated = await row_box(page, "O-000001")
    assert updated["index"] == 0 and in_view(updated), updated
    assert "flash" in updated["classes"].split(), updated
    layout = await page.evaluate(LAYOUT)  # still fits
    assert layout["pageWidth"] <= 390 and layout["section"]["scrollWidth"] <= layout["section"]["clientWidth"]
    assert not overlap(layout["panel"], layout["table"])

    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "demo-phone.png"))


async def test_demo_page_on_a_desktop_keeps_the_table_and_the_panel_side_by_side(
        make_server: ServerFactory, new_page: Callable[..., Awaitable[Any]]) -> None:
    """1280x800: the layout as it was, the table with its five columns and the connection panel beside it, in
    the same row; nothing overlaps, nothing scrolls sideways; a change lands at the top of the table."""
    server = await make_server(demo=True)
    for i in range(1, 9):
        publish(server, "I", i, ["EU", "US", "APAC"][i % 3], 120.0 * i)
    page = await new_page(viewport={"width": 1280, "height": 800})
    await page.goto(f"http://127.0.0.1:{server.port}/demo")
    await rows_are(page, [8, 7, 6, 5, 4, 3, 2, 1])
    head = publish(server, "U", 2, "EU", 999.0, status="paid")
    await rows_are(page, [2, 8, 7, 6, 5, 4, 3, 1])
    await shown_seq_is(page, head)

    layout = await page.evaluate(LAYOUT)
    screen = {"left": 0, "top": 0, "right": 1280, "bottom": 800}
    assert layout["pageWidth"] <= 1280 and layout["viewport"]["width"] == 1280
    fields = [c["field"] for c in layout["columns"]]
    assert fields == ["order_id", "customer", "region", "amount", "status"], fields
    table, panel, section = layout["table"], layout["panel"], layout["section"]
    # main's grid: the table in the first column (20 px padding), the 280 px panel beside it, 16 px apart
    assert abs(table["left"] - 20) < 1 and abs(panel["right"] - 1260) < 1, (table, panel)
    assert abs(panel["right"] - panel["left"] - 280) < 1, panel
    assert abs(panel["left"] - table["right"] - 16) < 1 and abs(panel["top"] - table["top"]) < 1, (table, panel)
    assert not overlap(panel, table) and layout["header"]["bottom"] <= table["top"]
    assert section["scrollWidth"] <= section["clientWidth"], section
    for box in layout["columns"] + layout["cells"]:
        assert within(box, section) and within(box, screen) and not box.get("cut"), f"cut: {box}"
    assert in_view(await row_box(page, "O-000002"))
    check_seq_is_compact(layout, head)


#: A scripted WebSocket: the test plays the server (``FakeSocket.all[n].serve(msg)``, ``.drop(code)``).
FAKE_SOCKET = """
class FakeSocket {
  constructor(url) { this.url = url; this.sent = []; FakeSocket.all.push(this); setTimeout(() => this.onopen(), 0); }
  send(data) { this.sent.push(JSON.parse(data)); }
  close(code = 1000) { this.closed = code; }
  serve(msg) { this.onmessage({ data: JSON.stringify(msg) }); }
  drop(code = 1006, reason = "") { this.onclose({ code, reason }); }
}
FakeSocket.all = [];
const tick = () => new Promise((resolve) => setTimeout(resolve, 20));
async function connection(n) {  // the n-th socket, once it sent its handshake
  for (let i = 0; i < 250 && !(FakeSocket.all[n] && FakeSocket.all[n].sent.length); i++) await tick();
  if (!FakeSocket.all[n]) throw new Error(`no connection ${n}`);
  return FakeSocket.all[n];
}
const doc = (op, id, seq, extra = {}) => ({ doc_class: "Order", op, seq, message: { _id: id, ...extra } });
const ids = (collection) => [...collection.docs.keys()].sort();
"""


async def test_client_module_snapshot_collection_resume_restart_reset_and_refusal(make_server: ServerFactory,
                                                                                  page: Any) -> None:
    """The Listener and Collection against a scripted server: a snapshot's unordered seqs are all delivered,
    the collection is complete at snapshot_done, a resume carries after_seq and epoch only after it, a drop
    before it starts a fresh snapshot (the partial collection dropped), a server reset clears, a new scope
    resets, 4413 is final; a class without snapshot keeps its history_gone reload."""
    server = await make_server()
    await page.goto(f"http://127.0.0.1:{server.port}/client.js")  # an origin to import the module from
    got = await page.evaluate(FAKE_SOCKET + """async () => {
        const { Listener, Collection } = await import("/client.js");
        const out = {};
        const kinds = [];
        const orders = new Collection("Order", { onChange: (kind, id) => kinds.push(id ? `${kind} ${id}` : kind) });
        const controls = [];
        const states = [];
        const listener = new Listener("ws://x/ws", { Order: { snapshot: true, data_scope: [] } }, {
          WebSocket: FakeSocket, backoff: { initial: 0.001, factor: 1, maxDelay: 0.001 },
          onMessage: (msg) => orders.handle(msg),
          onControl: (msg) => { controls.push(msg._control + (msg.local ? " (local)" : "")); orders.handle(msg); },
          onState: (state, detail) => states.push(state === "open" ? `open ${detail.snapshot}` : state),
        }).start();

        let ws = await connection(0);
        out.hello0 = ws.sent[0].Order;
        ws.serve({ Order: { head_seq: "0009", epoch: "E1" } });
        ws.serve(doc("I", "b", "0007")); ws.serve(doc("I", "a", "0003")); ws.serve(doc("I", "c", "0009"));
        ws.serve(doc("D", "b", "0010"));  // published while the snapshot was read
        out.beforeDone = [ids(orders), orders.complete, listener.lastSeq.Order ?? null];
        ws.drop();  // before snapshot_done: a fresh snapshot, the partial collection dropped

        ws = await connection(1);
        out.hello1 = ws.sent[0].Order;
        out.afterRestart = [ids(orders), orders.complete];
        ws.serve({ Order: { head_seq: "0010", epoch: "E1" } });
        ws.serve(doc("I", "c", "0009")); ws.serve(doc("I", "a", "0003"));
        ws.serve({ _control: "snapshot_done", class: "Order", seq: "0010", epoch: "E1" });
        out.done = [ids(orders), orders.complete, orders.snapshotSeq, listener.lastSeq.Order, listener.epoch.Order];
        ws.serve(doc("U", "a", "0011", { v: 2 }));
        ws.serve(doc("U", "a", "0011", { v: 3 }));  // a repeat: dropped
        ws.serve(doc("I", "d", "0012"));
        ws.serve(doc("X", "c", "0013"));
        out.live = [ids(orders), orders.docs.get("a").v, listener.lastSeq.Order, listener.duplicates];
        ws.drop(1001, "shutting down");

        ws = await connection(2);
        out.hello2 = ws.sent[0].Order;  // resumes: after_seq and epoch
        ws.serve({ Order: { head_seq: "0014", epoch: "E2" } });
        ws.serve({ _control: "reset", class: "Order" });  // the position is gone: fresh snapshot follows
        out.afterReset = [ids(orders), orders.complete, listener.lastSeq.Order ?? null];
        ws.serve(doc("I", "z", "0002"));  // a new epoch's seqs, lower than the old position: delivered
        ws.serve(doc("I", "y", "0001"));
        ws.serve({ _control: "snapshot_done", class: "Order", seq: "0002", epoch: "E2" });
        out.reset = [ids(orders), orders.complete, listener.lastSeq.Order, listener.epoch.Order];

        listener.resubscribe({ Order: { snapshot: true, data_scope: [{ fn: "region", op: "==", val: "EU" }] } },
                             { afterSeq: "0001" });
        ws = await connection(3);
        out.hello3 = ws.sent[0].Order;  // a new scope: a fresh snapshot (afterSeq is not for it)
        out.afterResubscribe = [ids(orders), orders.complete];
        ws.serve({ Order: { head_seq: "0002", epoch: "E2" } });
        ws.drop(4413, "snapshot refused");
        await tick(); await tick();
        out.refused = [listener.state, FakeSocket.all.length];
        out.controls = controls;
        out.states = states;
        out.kinds = kinds;

        // a class without snapshot: history_gone still reloads; positions follow the head as before
        const plain = new Collection("Order", { reload: async () => [{ _id: "r1" }, { _id: "live" }] });
        const other = new Listener("ws://x/ws", { Order: {} }, { WebSocket: FakeSocket,
          onMessage: (msg) => plain.handle(msg), onControl: (msg) => plain.handle(msg) }).start();
        ws = await connection(4);
        out.plainHello = ws.sent[0].Order;
        ws.serve({ Order: { head_seq: "0005", epoch: "E2" } });
        plain.handle(doc("I", "old", "0004"));
        ws.serve({ _control: "history_gone", class: "Order", seq: "0001", oldest_seq: "0003" });
        ws.serve(doc("U", "live", "0006", { v: 1 }));
        await tick();
        out.plain = [ids(plain), plain.docs.get("live").v, plain.complete, other.lastSeq.Order];
        other.close();
        return out;
    }""")
    assert got["hello0"] == {"snapshot": True, "data_scope": []}
    assert got["beforeDone"] == [["a", "c"], False, None]  # every snapshot document, none taken as a repeat
    assert got["hello1"] == {"snapshot": True, "data_scope": []}  # no after_seq before a snapshot_done
    assert got["afterRestart"] == [[], False]
    assert got["done"] == [["a", "c"], True, "0010", "0010", "E1"]
    assert got["live"] == [["a", "d"], 2, "0013", 1]
    assert got["hello2"] == {"snapshot": True, "data_scope": [], "after_seq": "0013", "epoch": "E1"}
    assert got["afterReset"] == [[], False, None]
    assert got["reset"] == [["y", "z"], True, "0002", "E2"]
    assert got["hello3"] == {"snapshot": True, "data_scope": [{"fn": "region", "op": "==", "val": "EU"}]}
    assert got["afterResubscribe"] == [[], False]
    assert got["refused"] == ["refused", 4]  # 4413 is final: no fifth connection
    assert got["controls"] == ["reset (local)", "snapshot_done", "reset", "snapshot_done", "reset (local)"]
    assert got["states"] == ["connecting", "open Order", "reconnecting", "reconnecting", "open Order",
                             "reconnecting", "reconnecting", "open ", "reconnecting", "open Order", "refused"]
    assert got["kinds"][:6] == ["insert b", "insert a", "insert c", "delete b", "clear", "insert c"]
    assert got["kinds"].count("complete") == 2 and got["kinds"].count("clear") == 3
    assert got["plainHello"] == {}
    assert got["plain"] == [["live", "r1"], 1, False, "0006"]


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


async def test_client_module_asks_for_strict_checking_and_shows_the_servers_reason(
        server: NativeServer, page: Any) -> None:
    """Against a real server: a scope field or catalog name the class does not declare is refused at once
    (state "refused", the server's reason in the detail, no retry); with `strict: false` it is accepted and
    matches nothing, as with the original listener."""
    await page.goto(f"http://127.0.0.1:{server.port}/client.js")  # an origin to import the module from
    got = await page.evaluate("""async (url) => {
        const { Listener } = await import("/client.js");
        const settle = (subscriptions, options = {}) => new Promise((resolve) => {
            const states = [];
            const messages = [];
            const listener = new Listener(url, subscriptions, { ...options,
                backoff: { initial: 0.01, factor: 1, maxDelay: 0.01 },
                onMessage: (msg) => { messages.push(msg); resolve({ states, messages, listener }); },
                onState: (state, detail) => {
                    states.push([state, detail.code ?? null, detail.reason ?? null]);
                    if (state === "refused") setTimeout(() => resolve({ states, messages, listener }), 300);
                    if (state === "open") window.opened = (window.opened || 0) + 1;
                } }).start();
        });
        const out = {};
        const scope = await settle({ Order: { data_scope: [{ fn: "regoin", op: "==", val: "EU" }] } });
        out.scope = [scope.states, scope.listener.connections];
        const catalog = await settle({ Order: { catalog: { amout: null } } });
        out.catalog = [catalog.states, (await catalog.listener.handshake())._options];
        const key = await settle({ Order: { id_only: true } });  // passed on by the original, refused strictly
        out.key = key.states.at(-1);
        window.opened = 0;
        const lenient = settle({ Order: { catalog: { amout: null } } }, { strict: false });
        for (let i = 0; i < 250 && !window.opened; i++) await new Promise((r) => setTimeout(r, 20));
        await fetch("/publish", { method: "POST", headers: { "Content-Type": "application/json" },
            body: JSON.stringify({ class: "Order", op: "I", doc: { _id: "O-1", order_id: "O-1", amount: 5 } }) });
        const done = await lenient;
        out.lenient = [done.messages.map((m) => m.message), (await done.listener.handshake())._options];
        done.listener.close();
        return out;
    }""", server.url)
    assert got["scope"] == [[["connecting", None, None],
                             ["refused", 4420, "Order: data_scope[0]: Order has no field 'regoin'"]], 0]
    assert got["catalog"] == [[["connecting", None, None], ["refused", 4421, "Order: Order has no field 'amout'"]],
                              {"control": True, "strict": True}]
    assert got["key"] == ["refused", 4400, "Order: unknown subscription keys ['id_only']"]
    assert got["lenient"] == [[{"_id": "O-1"}], {"control": True}]
