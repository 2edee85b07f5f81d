"""How long Python's full garbage collections hold a server's event loop, and how often they come.

    .venv/bin/python -m bench.gc_pauses [--connections 10000] [--rate 2000] [--seconds 150]

A server in this process with ``--connections`` idle WebSocket subscribers (a child process holds the
clients), each with a view of its own (``customer == nobody<i>``: indexed, so a change tests none of them and
nobody receives anything), while ``--rate`` changes per second are published in-process into the memory
journal. Every collection of the oldest generation is recorded (``gc.callbacks``): when it came, how long it
held the loop, how many objects the collector tracked. A full collection visits every tracked object, so its
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


async def hold_clients(port: int, n: int) -> None:
    """The child: ``n`` subscribers, each on its own view; prints ``up`` then idles until stdin closes."""
    from websockets.asyncio.client import connect

    clients = []
    for i in range(n):
        ws = await connect(f"ws://127.0.0.1:{port}/ws", max_size=None, ping_interval=None, proxy=None)
        await ws.send(orjson.dumps({"Order": {"data_scope": [{"fn": "customer", "op": "==", "val": f"nobody{i}"}]}}))
        await ws.recv()  # the confirmation
        clients.append(ws)
    print("up", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def measure(connections: int, rate: int, seconds: float) -> dict[str, Any]:
    server = NativeServer(Settings(port=0, classes={"Order": ORDER}, ping_interval=0.0))
    await server.start()
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.gc_pauses", "--hold-clients", str(server.port), str(connections),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert child.stdout is not None and child.stdin is not None
    started = time.monotonic()
    await asyncio.wait_for(child.stdout.readline(), 600)
    print(f"{connections} subscribers connected in {time.monotonic() - started:.1f} s", flush=True)
    gc.collect()
    tracked_before = len(gc.get_objects())
    pauses: list[tuple[float, float, int]] = []
    begun: list[float] = []

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            begun.append(time.perf_counter())
        else:
            pauses.append((time.perf_counter(), (time.perf_counter() - begun.pop()) * 1e3, len(gc.get_objects())))

    gc.callbacks.append(on_gc)
    t0 = time.perf_counter()
    published, report_at = 0, 10.0
    try:
        while (now := time.perf_counter() - t0) < seconds:
            for _ in range(max(1, rate // 100)):  # a hundredth of a second's worth, then let the loop run
                published += 1
                server.broadcaster.publish("Order", "U", {"_id": f"o{published % 5000}", "customer": "c1",
                                                          "amount": float(published), "status": "new"})
            await asyncio.sleep(0.01)
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
    return {"connections": connections, "rate": rate, "seconds": elapsed, "published": published,
            "tracked_with_clients": tracked_before,
            "full_collections": [{"at_s": round(at - t0, 1), "pause_ms": round(ms, 1), "tracked": tracked}
                                 for at, ms, tracked in pauses]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--rate", type=int, default=2000, help="changes published per second")
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--hold-clients", nargs=2, type=int, metavar=("PORT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hold_clients:
        asyncio.run(hold_clients(*args.hold_clients))
        return
    res = asyncio.run(measure(args.connections, args.rate, args.seconds))
    print(f"\n{res['connections']:,} subscribers, {res['published']:,} changes in {res['seconds']:.0f} s; "
          f"objects tracked with the subscribers connected: {res['tracked_with_clients']:,}")
    print("| full collection at (s) | loop held (ms) | objects tracked after it |\n|---:|---:|---:|")
    for p in res["full_collections"]:
        print(f"| {p['at_s']} | {p['pause_ms']} | {p['tracked']:,} |")
    if not res["full_collections"]:
        print("| none in this run | | |")


if __name__ == "__main__":
    main()
