"""``xia-broadcast listen`` and ``xia-broadcast publish`` as real subprocesses against a real server: JSON lines
on stdout, reconnection notices on stderr, the progress bar and the summary, and the documented exit codes."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers import ServerFactory, TcpProxy, free_port, order, silent_host
from xia_broadcast.server.config import ApiKey
from xia_broadcast.server.native import NativeServer

TIMEOUT = 30.0


def base(server: NativeServer) -> str:
    return f"http://127.0.0.1:{server.port}"


async def test_listen_prints_json_lines_across_a_drop_and_publish_reports_refusals(
        make_server: ServerFactory, make_proxy: Callable[..., Any], run: Callable[..., Any],
        tmp_path: Path) -> None:
    server = await make_server()
    proxy: TcpProxy = await make_proxy(server.port)
    listen = await run("listen", proxy.url(), "--class", "Order", "--scope",
                       '[{"fn": "region", "op": "==", "val": "EU"}]', "--catalog", '{"amount": null}',
                       "--count", "4", "--max-delay", "0.2")
    await listen.until(lambda: any("connected" in line for line in listen.err), what="connected")

    one = await run("publish", base(server), "--class", "Order", "--op", "I", "--doc", json.dumps(order(1)))
    assert await one.wait() == 0
    seq1 = one.out[0]
    await listen.until(lambda: len(listen.out) == 1, what="one line on stdout")
    proxy.cut()
    await listen.until(lambda: any("reconnecting" in line for line in listen.err), what="reconnecting")

    changes = tmp_path / "changes.jsonl"
    changes.write_text("\n".join([
        json.dumps({"op": "I", "doc": order(2)}),                              # --class fills in the class
        json.dumps({"class": "Order", "op": "I", "doc": order(3, region="US")}),  # out of the listener's scope
        "not json",
        json.dumps({"class": "Order", "op": "I", "doc": order(4, amount="lots")}),  # wrong type: refused
        "",
        json.dumps({"class": "Order", "op": "U", "doc": order(2, amount=20.0)}),
        json.dumps({"class": "Order", "op": "U", "doc": order(2, region="US")}),   # leaves the scope: X
    ]) + "\n")
    many = await run("publish", base(server), "--class", "Order", "--file", str(changes), "--progress", "always")
    assert await many.wait() == 1  # some refused
    summary = "\n".join(many.err)
    assert "accepted 4, refused 2 (bad_line: 1, invalid_change: 1)" in summary, summary
    assert "line 3: bad_line: not JSON" in summary
    assert "line 4: invalid_change: change 0: Order.amount" in summary
    assert "[##############################] 6/6  accepted 4  refused 2" in summary  # the final bar

    assert await listen.wait() == 0  # --count 4 reached
    lines = [json.loads(line) for line in listen.out]
    got = [m for m in lines if "doc_class" in m]
    assert any(m.get("_control") == "replay_done" for m in lines[1:])  # control messages are printed too
    assert [(m["op"], m["message"]) for m in got] == [
        ("I", {"_id": "O-000001", "amount": 1.0}), ("I", {"_id": "O-000002", "amount": 2.0}),
        ("U", {"_id": "O-000002", "amount": 20.0}), ("X", {"_id": "O-000002"})]
    assert got[0]["seq"] == seq1
    assert any("resuming Order after " + seq1 in line for line in listen.err), listen.err


async def test_publish_batches_are_all_or_nothing_and_read_stdin(make_server: ServerFactory,
                                                                 run: Callable[..., Any]) -> None:
    server = await make_server()
    lines = [json.dumps({"class": "Order", "op": "I", "doc": order(i)}) for i in range(5)]
    lines[3] = json.dumps({"class": "Nope", "op": "I", "doc": order(3)})
    p = await run("publish", base(server), "--file", "-", "--batch", "2", stdin="\n".join(lines).encode())
    assert await p.wait() == 1
    assert "accepted 3, refused 2 (unknown_class: 2)" in p.err[-2], p.err
    assert "lines 3-4: unknown_class" in p.err[-1]
    assert len(await server.service.hub.backend.read("Order", None, inclusive=True, limit=100)) == 3


async def test_publish_needs_the_key_when_one_is_configured(make_server: ServerFactory,
                                                            run: Callable[..., Any]) -> None:
    server = await make_server(publish_keys=["pk"])
    doc = json.dumps(order(1))
    refused = await run("publish", base(server), "--class", "Order", "--op", "I", "--doc", doc)
    assert await refused.wait() == 1 and "401 unauthorized" in refused.err[-1]
    accepted = await run("publish", base(server), "--class", "Order", "--op", "I", "--doc", doc, "--key", "pk")
    assert await accepted.wait() == 0 and accepted.out[0] == server.service.hub.head("Order")


async def test_exit_codes_of_refusals_and_unreachable_servers(make_server: ServerFactory,
                                                              run: Callable[..., Any]) -> None:
    server = await make_server(api_keys={"k": ApiKey(user_name="u", acl=None)})
    wrong_key = await run("listen", server.url, "--class", "Order", "--api-key", "nope", "--app-name", "a")
    assert await wrong_key.wait() == 3
    assert "refused by the server: 4401" in wrong_key.err[-1]
    unknown = await run("listen", server.url, "--class", "Nope", "--api-key", "k")
    assert await unknown.wait() == 3 and "4404" in unknown.err[-1]
    nobody = f"127.0.0.1:{free_port()}"
    gave_up = await run("listen", f"ws://{nobody}/ws", "--class", "Order", "--max-retries", "1",
                        "--max-delay", "0.1")
    assert await gave_up.wait() == 4 and "gave up after 2 failed attempts" in gave_up.err[-1]
    unreachable = await run("publish", f"http://{nobody}", "--class", "Order", "--op", "I", "--doc", "{}")
    assert await unreachable.wait() == 3 and "cannot reach" in unreachable.err[-1]
    bad = await run("publish", base(server), "--class", "Order", "--op", "I", "--doc", "{nope")
    assert await bad.wait() == 2
    mixed = await run("publish", base(server), "--file", "-", "--previous", "{}", stdin=b"")
    assert await mixed.wait() == 2 and "--previous goes with --doc" in mixed.err[-1]


async def test_listen_stops_on_sigint_with_exit_code_0(server: NativeServer, run: Callable[..., Any]) -> None:
    listen = await run("listen", server.url, "--class", "Order")
    await listen.until(lambda: any("connected" in line for line in listen.err), what="connected")
    server.service.publish_nowait("Order", "I", order(1))
    await listen.until(lambda: len(listen.out) == 1, what="one line on stdout")
    listen.proc.send_signal(signal.SIGINT)
    assert await listen.wait() == 0


def test_a_servers_close_reason_never_sends_control_characters_to_the_terminal() -> None:
    from xia_broadcast.client.commands import printable

    shown = printable("4400 \x1b[2J\x1b[31mgotcha\x07\nxia-broadcast: fake line")
    assert shown == "4400 \\x1b[2J\\x1b[31mgotcha\\x07\\nxia-broadcast: fake line"
    assert all(c.isprintable() for c in shown)


# -- the first hour: typos, where it connects, a server never reached, Ctrl-C --------------------------------


async def test_listen_refuses_a_typo_with_the_servers_reason_unless_no_strict(server: NativeServer,
                                                                             run: Callable[..., Any]) -> None:
    scope = await run("listen", server.url, "--class", "Order", "--scope",
                      '[{"fn": "regoin", "op": "==", "val": "EU"}]')
    assert await scope.wait() == 3
    assert "refused by the server: 4420 Order: data_scope[0]: Order has no field 'regoin'" in scope.err[-1]
    assert "--no-strict" in scope.err[-1] and not any("retrying" in line for line in scope.err)
    catalog = await run("listen", server.url, "--class", "Order", "--catalog", '{"amout": null}')
    assert await catalog.wait() == 3
    assert "refused by the server: 4421 Order: Order has no field 'amout'" in catalog.err[-1]

    lenient = await run("listen", server.url, "--class", "Order", "--catalog", '{"amout": null}', "--no-strict",
                        "--count", "1")
    await lenient.until(lambda: any(line.startswith("xia-broadcast: connected") for line in lenient.err),
                        what="connected")
    seq = server.service.publish_nowait("Order", "I", order(1))
    assert await lenient.wait() == 0
    assert [json.loads(line) for line in lenient.out] == [
        {"doc_class": "Order", "op": "I", "seq": seq, "message": {"_id": "O-000001"}}]  # the name matched nothing


async def test_listen_says_where_it_connects_and_gives_up_on_a_server_never_reached(
        run: Callable[..., Any]) -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws"
    p = await run("listen", url, "--class", "Order", "--max-delay", "0.05")
    assert await p.wait() == 5
    assert p.err[0] == f"xia-broadcast: connecting to {url}"
    retries = p.err[1:-1]
    assert len(retries) == 4, p.err  # five attempts by default: four retries, then it gives up
    for n, line in enumerate(retries, 1):
        assert line.startswith(f"xia-broadcast: cannot connect to {url}: connection refused (attempt {n} of 5); "
                               "retrying in "), line
        assert line.endswith(" s")
    assert p.err[-1] == (f"xia-broadcast: gave up: {url} was never reached in 5 attempts (last: connection "
                         "refused); is the server running at that address? (--connect-attempts sets how many "
                         "attempts)")
    assert p.out == []

    two = await run("listen", url, "--class", "Order", "--max-delay", "0.05", "--connect-attempts", "2")
    assert await two.wait() == 5 and len(two.err) == 3 and "never reached in 2 attempts" in two.err[-1]
    bad = await run("listen", url, "--class", "Order", "--connect-attempts", "-1")
    assert await bad.wait() == 2


async def test_listen_once_connected_keeps_retrying_and_says_why(make_server: ServerFactory,
                                                                 run: Callable[..., Any]) -> None:
    port = free_port()
    server = await make_server(port=port)
    p = await run("listen", f"ws://127.0.0.1:{port}/ws", "--class", "Order", "--max-delay", "0.05")
    await p.until(lambda: any(line.startswith("xia-broadcast: connected") for line in p.err), what="connected")
    await server.shutdown()
    # more failed attempts than --connect-attempts' 5: the server was reached once, it keeps trying
    await p.until(lambda: sum("connection refused" in line for line in p.err) >= 7, what="seven refused attempts")
    server = await make_server(port=port)
    await p.until(lambda: sum(line.startswith("xia-broadcast: connected") for line in p.err) == 2,
                  what="connected again")
    seq = server.service.publish_nowait("Order", "I", order(1))
    await p.until(lambda: any('"doc_class"' in line for line in p.out), what="a document on stdout")
    lines = [json.loads(line) for line in p.out]
    assert lines[0]["_control"] == "history_gone"  # a new server (memory journal): its history starts over
    assert [m["seq"] for m in lines if "doc_class" in m] == [seq]
    closed = [line for line in p.err if "closed by the server" in line]
    assert len(closed) == 1 and closed[0].startswith(
        "xia-broadcast: connection closed by the server with code 1001 (shutting down); reconnecting in "), p.err
    refused = [line for line in p.err if "connection refused" in line]
    assert all(f"cannot connect to ws://127.0.0.1:{port}/ws: connection refused (attempt " in line
               and " of " not in line and "; reconnecting in " in line for line in refused), refused
    assert p.proc.returncode is None  # still listening


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_listen_stops_at_once_with_exit_code_0_while_waiting_to_retry_or_connecting(
        run: Callable[..., Any], sig: signal.Signals) -> None:
    """Interrupted while it waits before retrying (nothing listening, long delays), and while an attempt is
    under way on a host that accepts TCP connections and never answers: exit 0 within a second or two,
    no traceback."""
    retrying = await run("listen", f"ws://127.0.0.1:{free_port()}/ws", "--class", "Order",
                         "--connect-attempts", "0", "--max-delay", "60")
    await retrying.until(lambda: any("retrying in" in line for line in retrying.err), what="a retry")

    async with silent_host() as (port, accepted):
        connecting = await run("listen", f"ws://127.0.0.1:{port}/ws", "--class", "Order")
        await asyncio.wait_for(accepted.wait(), TIMEOUT)
        await connecting.until(lambda: any("connecting to" in line for line in connecting.err), what="connecting")
        for p in (retrying, connecting):
            started = asyncio.get_running_loop().time()
            p.proc.send_signal(sig)
            assert await p.wait() == 0, p.err
            assert asyncio.get_running_loop().time() - started < 3.0
            assert not any("Traceback" in line for line in p.err), p.err
            assert p.out == []
