"""Loop stalls at scale: how long anything (full garbage collections, keepalive rounds, timers) holds a
server's event loop with many subscribers, and what a subscriber sees of it.

    .venv/bin/python -m bench.gc_pauses [--connections 19000] [--rate 2000] [--seconds 120] [--shared-views]
                                        [--ping-interval 20] [--each-per-second 0] [--concurrency 200]

A server in this process (the native server, memory journal; keepalive on, as configured by default) gets a
storm of ``--connections`` WebSocket subscribers from the lean load generator (``bench/node/leangen.js``, a
child process; ``--concurrency`` upgrades in flight), each with a view of its own (``customer ==
nobody<i>``: the view index finds it, so a change tests none of the others; ``--shared-views``: all on one
scope). Then, for ``--seconds``, ``--rate`` changes per second are published in-process into the memory
journal, paced against the clock (the rate achieved is printed); with ``--each-per-second X`` another
``X x connections`` per second go one to each subscriber in turn (every subscriber receives X a second). A
probe (a second leangen, one subscriber of ``customer == probe``) receives 50 changes a second, each
stamped with the monotonic clock when published: its publish-to-receipt latency is what a subscriber sees
of every stall. The stamp is the moment the change was due (as if an outside publisher had sent it then), not
the moment this loop got round to publishing it, so a stall delays the probe's changes as it would delay
changes coming in over HTTP.

Measured in the server's process:
* loop stalls: a watcher task sleeps 1 ms at a time; every wake-up later than 5 ms is a stall (its length
  is the lateness), attributed to the collector when a collection ran within it;
* every garbage collection (``gc.callbacks``), per generation: count, longest, and each full one;
* objects the collector tracks (``gc.get_objects`` plus frozen ones) and RSS, before and after the storm.

Printed as markdown; ``--json FILE`` keeps the raw figures.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from xia_broadcast.core.schema import DocSchema
from xia_broadcast.server.config import Settings
from xia_broadcast.server.native import NativeServer

ORDER = DocSchema.from_dict(
    {"fields": {"customer": "str", "amount": "float", "status": "str", "ts": "int"}}, "Order")
LEANGEN = Path(__file__).parent / "node" / "leangen.js"
#: probe changes per second (each one stamped)
PROBE_RATE = 50
#: a wake-up of the watcher later than this is a stall
STALL_S = 0.005


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def tracked() -> int:
    return len(gc.get_objects()) + gc.get_freeze_count()


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def spawn_leangen(port: int, handshakes: list[Any], concurrency: int, workdir: str,
                        name: str) -> asyncio.subprocess.Process:
    path = os.path.join(workdir, f"{name}.json")
    with open(path, "w") as f:
        json.dump(handshakes, f)
    return await asyncio.create_subprocess_exec(
        "node", str(LEANGEN), "--url", f"ws://127.0.0.1:{port}/ws", "--connections", str(len(handshakes)),
        "--handshakes", f"@{path}", "--timeout", "100000", "--connect-timeout", "900",
        "--concurrency", str(concurrency), "--check-every", "1",
        stdout=asyncio.subprocess.PIPE)


async def read_event(proc: asyncio.subprocess.Process, timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    if not line:
        raise RuntimeError(f"the load generator exited ({await proc.wait()}) before it reported")
    event: dict[str, Any] = json.loads(line)
    if event.get("event") == "error":
        raise RuntimeError(f"the load generator failed: {event}")
    return event


async def stop_leangen(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    proc.send_signal(signal.SIGTERM)
    event = await read_event(proc, 60)
    await proc.wait()
    return event


class Watch:
    """Loop stalls and garbage collections (and, with ``trace``, the loop callbacks over 5 ms)."""

    def __init__(self, trace: bool = False) -> None:
        self.stalls: list[tuple[float, float]] = []  # (start, seconds late)
        self.collections: list[tuple[int, float, float]] = []  # (generation, start, seconds)
        self.slow_callbacks: list[tuple[float, float, str]] = []  # (start, seconds, what)
        self._gc_start = 0.0
        self.running = True
        if trace:
            self._trace_callbacks()

    def _trace_callbacks(self) -> None:
        """Time every callback the loop runs (asyncio.events.Handle._run); keep those over :data:`STALL_S`."""
        import asyncio.events
        run = asyncio.events.Handle._run
        slow = self.slow_callbacks

        def timed(handle: asyncio.events.Handle) -> None:
            t = time.perf_counter()
            run(handle)
            took = time.perf_counter() - t
            if took > STALL_S:
                slow.append((t, took, repr(handle)[:160]))
        asyncio.events.Handle._run = timed  # type: ignore[method-assign]

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.collections.append((info["generation"], self._gc_start, time.perf_counter() - self._gc_start))

    async def watch(self) -> None:
        last = time.perf_counter()
        while self.running:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            late = now - last - 0.001
            if late > STALL_S:
                self.stalls.append((last, late))
            last = now

    def reset(self) -> None:
        self.stalls.clear()
        self.collections.clear()
        self.slow_callbacks.clear()

    def summary(self, t0: float, seconds: float) -> dict[str, Any]:
        per_gen: dict[int, list[float]] = {0: [], 1: [], 2: []}
        for gen, _, s in self.collections:
            per_gen[gen].append(s * 1e3)

        def by_gc(start: float, late: float) -> bool:
            return any(gen == 2 and start - 0.002 <= at <= start + late + 0.002 for gen, at, _ in self.collections)

        def callback(start: float, late: float) -> str:
            return "; ".join(f"{what} {took * 1e3:.1f} ms" for at, took, what in self.slow_callbacks
                             if start - 0.002 <= at <= start + late + 0.002)

        stalls = [{"at_s": round(at - t0, 2), "ms": round(late * 1e3, 1), "full_gc": by_gc(at, late),
                   "callbacks": callback(at, late)} for at, late in self.stalls]
        over20 = [s for s in stalls if s["ms"] > 20]
        return {
            "stalls_over_5ms": len(stalls), "stalls_over_20ms": len(over20),
            "stalls_over_20ms_per_min": round(len(over20) / seconds * 60, 2),
            "longest_stall_ms": max((s["ms"] for s in stalls), default=0.0),
            "longest_stalls": sorted(stalls, key=lambda s: -s["ms"])[:8],
            "collections": {g: {"count": len(v), "longest_ms": round(max(v, default=0.0), 2)}
                            for g, v in per_gen.items()},
            "full_collections": [{"at_s": round(at - t0, 1), "ms": round(s * 1e3, 1)}
                                 for gen, at, s in self.collections if gen == 2],
        }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    n = args.connections
    server = NativeServer(Settings(port=0, classes={"Order": ORDER}, ping_interval=args.ping_interval,
                                   max_connections=n + 64, max_http_connections=256, log_level="WARNING"))
    await server.start()
    service = server.service
    watch = Watch(args.trace_callbacks)
    gc.callbacks.append(watch.on_gc)
    watcher = asyncio.create_task(watch.watch())
    workdir = tempfile.mkdtemp(prefix="gc-pauses-")
    gc.collect()
    tracked0, rss0 = tracked(), rss_mib()
    holder = probe = None
    result: dict[str, Any] = {"connections": n, "shared_views": args.shared_views, "rate": args.rate,
                              "each_per_second": args.each_per_second, "ping_interval": args.ping_interval,
                              "python": sys.version.split()[0], "gc_threshold": gc.get_threshold()}
    try:
        handshakes = [{"Order": {"data_scope": [{"fn": "customer", "op": "==",
                                                 "val": "nobody" if args.shared_views else f"nobody{i}"}]}}
                      for i in range(n)]
        storm_t0 = time.perf_counter()
        cpu0 = cpu_s()
        holder = await spawn_leangen(server.port, handshakes, args.concurrency, workdir, "holder")
        ready = await read_event(holder, 900)
        result["storm"] = {"subscribed_s": round(time.perf_counter() - storm_t0, 2),
                           "generator_connect_s": round(ready["connect_s"], 2),
                           "server_cpu_s": round(cpu_s() - cpu0, 2), "concurrency": args.concurrency,
                           **watch.summary(storm_t0, max(0.001, time.perf_counter() - storm_t0))}
        print(f"{n:,} subscribers in {result['storm']['subscribed_s']} s "
              f"(longest stall meanwhile {result['storm']['longest_stall_ms']} ms)", flush=True)
        await asyncio.sleep(1.0)  # let the last confirmations and the server's own follow-up run
        objects_after = tracked()
        result["tracked_per_subscriber"] = round((objects_after - tracked0) / n, 1)
        result["tracked"] = objects_after
        result["frozen"] = gc.get_freeze_count()
        result["rss_mib_before"] = round(rss0, 1)
        result["rss_mib_after"] = round(rss_mib(), 1)
        result["rss_kib_per_connection"] = round((rss_mib() - rss0) * 1024 / n, 2)
        probe = await spawn_leangen(server.port, [{"Order": {"data_scope": [
            {"fn": "customer", "op": "==", "val": "probe"}]}}], 1, workdir, "probe")
        await read_event(probe, 60)
        watch.reset()
        t0 = time.perf_counter()
        t0_us = time.monotonic_ns() // 1000  # the same clock as perf_counter and Node's hrtime, on Linux
        cpu0 = cpu_s()
        published = probes = directed = 0
        report_at = 10.0
        while (now := time.perf_counter() - t0) < args.seconds:
            for _ in range(int(now * args.rate) - published):
                published += 1
                service.publish_nowait("Order", "U", {"_id": f"o{published % 5000}", "customer": "c1",
                                                      "amount": float(published), "status": "new", "ts": 0})
            for _ in range(int(now * args.each_per_second * n) - directed):
                who = directed % n
                directed += 1
                service.publish_nowait("Order", "U", {"_id": f"d{who}", "customer": f"nobody{who}",
                                                      "amount": float(directed), "status": "new",
                                                      "ts": t0_us + int(directed / (args.each_per_second * n) * 1e6)})
            for _ in range(int(now * PROBE_RATE) - probes):
                probes += 1
                service.publish_nowait("Order", "U", {"_id": f"p{probes % 100}", "customer": "probe",
                                                      "amount": float(probes), "status": "new",
                                                      "ts": t0_us + int(probes / PROBE_RATE * 1e6)})
            await asyncio.sleep(0.001)  # due changes go out within about a millisecond
            if now >= report_at:
                report_at += 10.0
                full = sum(1 for g, _, _ in watch.collections if g == 2)
                longest = max((late for _, late in watch.stalls), default=0.0) * 1e3
                print(f"  {now:5.0f} s: {published + directed:,} changes published, {full} full collections, "
                      f"longest stall {longest:.1f} ms", flush=True)
        elapsed = time.perf_counter() - t0
        result["server_busy"] = round((cpu_s() - cpu0) / elapsed, 3)
        result.update(seconds=round(elapsed, 1), published=published + directed + probes,
                      published_per_s=round((published + directed + probes) / elapsed))
        result["run"] = watch.summary(t0, elapsed)
        await asyncio.sleep(0.5)  # the last probe changes arrive
        probe_result = await stop_leangen(probe)
        probe = None
        result["probe"] = {"received": probe_result["deliveries"], "sent": probes,
                           "latency_ms": probe_result["latency_ms"],
                           "out_of_order": probe_result["out_of_order"]}
        holder_result = await stop_leangen(holder)
        holder = None
        result["holder"] = {k: holder_result.get(k) for k in (
            "deliveries", "latency_ms", "out_of_order", "closed_early", "control_messages", "rss_mb",
            "busy_fraction")}
    finally:
        watch.running = False
        await watcher
        gc.callbacks.remove(watch.on_gc)
        for proc in (probe, holder):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
        await server.shutdown()
    return result


def report(res: dict[str, Any]) -> None:
    run, storm = res["run"], res["storm"]
    print(f"\n## {res['connections']:,} subscribers ({'one view' if res['shared_views'] else 'a view each'}), "
          f"{res['published_per_s']:,} changes/s for {res['seconds']} s, ping_interval {res['ping_interval']} s, "
          f"Python {res['python']}")
    print(f"\n- connection storm ({storm['concurrency']} upgrades in flight): all subscribed in "
          f"{storm['subscribed_s']} s, server CPU {storm['server_cpu_s']} s, longest stall "
          f"{storm['longest_stall_ms']} ms")
    print(f"- {res['tracked_per_subscriber']} objects tracked by the collector per subscriber "
          f"({res['tracked']:,} in all, {res['frozen']:,} of them frozen); RSS "
          f"{res['rss_mib_before']} -> {res['rss_mib_after']} MiB, {res['rss_kib_per_connection']} KiB per "
          f"connection")
    print(f"- server busy {res['server_busy']} (CPU seconds per second)")
    print(f"- loop stalls over 20 ms: {run['stalls_over_20ms']} ({run['stalls_over_20ms_per_min']}/min), "
          f"over 5 ms: {run['stalls_over_5ms']}, longest {run['longest_stall_ms']} ms")
    col = run["collections"]
    print(f"- collections: gen0 {col[0]['count']} (longest {col[0]['longest_ms']} ms), gen1 {col[1]['count']} "
          f"(longest {col[1]['longest_ms']} ms), full {col[2]['count']} (longest {col[2]['longest_ms']} ms)")
    lat = res["probe"]["latency_ms"] or {}
    print(f"- probe: {res['probe']['received']}/{res['probe']['sent']} received, publish-to-receipt p50 "
          f"{lat.get('p50', 0):.2f} ms, p99 {lat.get('p99', 0):.2f} ms, max {lat.get('max', 0):.2f} ms")
    hl = res["holder"]["latency_ms"]
    if hl:
        print(f"- the {res['connections']:,} subscribers: {res['holder']['deliveries']:,} deliveries, p50 "
              f"{hl['p50']:.2f} ms, p99 {hl['p99']:.2f} ms, max {hl['max']:.2f} ms")
    print("\n| longest stalls at (s) | ms | full collection within | loop callbacks over 5 ms within "
          "(--trace-callbacks) |\n|---:|---:|---|---|")
    for s in run["longest_stalls"]:
        print(f"| {s['at_s']} | {s['ms']} | {'yes' if s['full_gc'] else 'no'} | {s['callbacks']} |")
    if not run["longest_stalls"]:
        print("| none over 5 ms | | | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=19_000)
    parser.add_argument("--rate", type=int, default=2000, help="changes published per second (received by none)")
    parser.add_argument("--each-per-second", type=float, default=0.0,
                        help="changes per second each subscriber receives, on top of --rate")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--shared-views", action="store_true", help="every subscriber on one view")
    parser.add_argument("--ping-interval", type=float, default=20.0, help="the server's; 0: no keepalive")
    parser.add_argument("--concurrency", type=int, default=200, help="upgrades in flight during the storm")
    parser.add_argument("--trace-callbacks", action="store_true",
                        help="time every loop callback and name those over 5 ms (costs a little per callback)")
    parser.add_argument("--json", help="write the raw figures here")
    args = parser.parse_args()
    res = asyncio.run(measure(args))
    report(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
