"""How long Python's full garbage collections hold a server's event loop, and how often they come.

    .venv/bin/python -m bench.gc_pauses [--connections 10000] [--rate 2000] [--seconds 150] [--shared-views]

A server in this process with ``--connections`` idle WebSocket subscribers (a child process holds the
clients), each with a view of its own (``customer == nobody<i>``: indexed, so a change tests none of them and
nobody receives anything; ``--shared-views``: all with the same scope, one view), while ``--rate`` changes per
second are published in-process into the memory journal, paced against the clock (the rate achieved is
printed). It prints the objects the collector tracks per subscriber (before and after they connected), and
records every collection of the oldest generation (``gc.callbacks``): when it came and how long it held the
loop. A full collection visits every tracked object, so its
pause grows with connections (each holds a few dozen) and with the journal (one per retained change);
CPython 3.11 starts one when the objects that reached the oldest generation since the last one pass a
quarter of those already there.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from typing import Any

import orjson

from xia_broadcast.core.schema import DocSchema
from xia_broadcast.server.config import Settings
from xia_broadcast.server.native import NativeServer

ORDER = DocSchema.from_dict({"fields": {"customer": "str", "amount": "float", "status": "str"}}, "Order")


async def hold_clients(port: int, n: int, shared: bool) -> None:
    """The child: ``n`` subscribers, each on its own view (or all on one); prints ``up`` then idles until stdin
    closes."""
    from websockets.asyncio.client import connect

    clients = []
    for i in range(n):
        ws = await connect(f"ws://127.0.0.1:{port}/ws", max_size=None, ping_interval=None, proxy=None)
        who = "nobody" if shared else f"nobody{i}"
        await ws.send(orjson.dumps({"Order": {"data_scope": [{"fn": "customer", "op": "==", "val": who}]}}))
        await ws.recv()  # the confirmation
        clients.append(ws)
    print("up", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def measure(connections: int, rate: int, seconds: float, shared: bool) -> dict[str, Any]:
    server = NativeServer(Settings(port=0, classes={"Order": ORDER}, ping_interval=0.0))
    await server.start()
    gc.collect()
    tracked_alone = len(gc.get_objects())
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.gc_pauses", "--hold-clients", str(server.port), str(connections),
        *(["--shared-views"] if shared else []), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert child.stdout is not None and child.stdin is not None
    started = time.monotonic()
    await asyncio.wait_for(child.stdout.readline(), 600)
    print(f"{connections} subscribers connected in {time.monotonic() - started:.1f} s", flush=True)
    gc.collect()
    tracked = len(gc.get_objects())
    pauses: list[tuple[float, float]] = []
    begun = 0.0

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        nonlocal begun
        if info["generation"] == 2:
            if phase == "start":
                begun = time.perf_counter()
            else:
                pauses.append((begun, (time.perf_counter() - begun) * 1e3))

    gc.callbacks.append(on_gc)
    t0 = time.perf_counter()
    published, report_at = 0, 10.0
    try:
        while (now := time.perf_counter() - t0) < seconds:
            for _ in range(int(now * rate) - published):  # what the clock says is due, then let the loop run
                published += 1
                server.service.publish_nowait("Order", "U", {"_id": f"o{published % 5000}", "customer": "c1",
                                                          "amount": float(published), "status": "new"})
            await asyncio.sleep(0.005)
            if now >= report_at:  # progress every 10 s
                report_at += 10.0
                print(f"  {now:5.0f} s: {published:,} changes published, {len(pauses)} full collections",
                      flush=True)
    finally:
        gc.callbacks.remove(on_gc)
        elapsed = time.perf_counter() - t0
        child.stdin.close()
        await child.wait()
        await server.shutdown()
    return {"connections": connections, "shared_views": shared, "rate": rate, "seconds": elapsed,
            "published": published, "tracked_without_subscribers": tracked_alone, "tracked": tracked,
            "full_collections": [{"at_s": round(at - t0, 1), "pause_ms": round(ms, 1)} for at, ms in pauses]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--rate", type=int, default=2000, help="changes published per second")
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--shared-views", action="store_true", help="every subscriber on one view")
    parser.add_argument("--hold-clients", nargs=2, type=int, metavar=("PORT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hold_clients:
        port, n = args.hold_clients
        asyncio.run(hold_clients(port, n, args.shared_views))
        return
    res = asyncio.run(measure(args.connections, args.rate, args.seconds, args.shared_views))
    per = (res["tracked"] - res["tracked_without_subscribers"]) / res["connections"]
    print(f"\n{res['connections']:,} subscribers ({'one view' if res['shared_views'] else 'a view each'}): "
          f"{res['tracked']:,} objects tracked ({per:.1f} per subscriber); {res['published']:,} changes in "
          f"{res['seconds']:.0f} s ({res['published'] / res['seconds']:,.0f}/s)")
    print("| full collection at (s) | loop held (ms) |\n|---:|---:|")
    for p in res["full_collections"]:
        print(f"| {p['at_s']} | {p['pause_ms']} |")
    if not res["full_collections"]:
        print("| none in this run | |")


if __name__ == "__main__":
    main()
