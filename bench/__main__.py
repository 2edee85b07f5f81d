"""The benchmark: xia-broadcast against a plain reference, same machine, same run, same load generator.

    npm ci --prefix bench/node            # once: the load generator's `ws`
    .venv/bin/python -m bench [--quick]

Steps (each on a fresh server; server pinned to CPU 0, load generator to CPU 1):

1. the load generator's own capacity against a synthetic sender (pre-built frames), and its latency floor;
2. full-speed deliveries/s, subscribers N in {100, 1000, 5000}: the reference once per N, xia-broadcast
   with V in {1, 10, 100, N} distinct views (each view a different scope, catalog and ACL; every document
   matches every view, so every subscriber receives every document and deliveries are comparable);
3. publish-to-receipt latency p50/p99/max at N=1000 and 20 messages/s for 10 s, both servers, three runs
   each in turn (the median run is reported);
4. resident memory per idle subscribed connection at 10,000 connections, both servers;
5. replay rate: 100,000 retained changes replayed into one subscriber (xia-broadcast only).

Every step checks loss (every subscriber got every document it should) and order (seqs increase per
connection) and reports both. Writes ``bench/results/bench-<time>.json`` and ``docs/benchmarks.md``.
``--quick`` runs small sizes (a smoke test, about a minute; it does not write docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import (
    BENCH_DIR,
    DEFAULT_HANDSHAKE,
    FixedRate,
    FullSpeed,
    Loadgen,
    ReferenceTarget,
    XiaTarget,
    drive,
    measure_idle_rss,
    measure_loadgen_capacity,
    node_binary,
    run_publish_scenario,
    wait_until_quiet,
)

ROOT = BENCH_DIR.parent
CATALOGS = [{}, {"ts": None, "customer": None, "amount": None, "status": None}, {"ts": None, "region": None}]


def views(v: int) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """``v`` handshakes forming ``v`` distinct views (scope, catalog and ACL differ), each matching every
    benchmark document, and the API keys they use (key -> ACL)."""
    handshakes, keys = [], {}
    for k in range(v):
        key = f"bench-key-{k}"
        keys[key] = {"content": [{"obj": "Order/key/*", "act": "read"}, {"obj": f"Report/key/{k}", "act": "read"}]}
        handshakes.append({
            "Order": {"data_scope": [{"fn": "amount", "op": ">=", "val": -k}], "catalog": CATALOGS[k % len(CATALOGS)],
                      "show_hidden": False, "start_seq": ""},
            "_header": {"X-Api-Key": key},
        })
    return handshakes, keys


class Progress:
    """Prints ``[k/n] step ... result (seconds)`` to stderr while the benchmark runs."""

    def __init__(self, total: int) -> None:
        self.total, self.k, self.t0 = total, 0, time.monotonic()

    def run(self, name: str, fn: Callable[[], Any], summary: Callable[[Any], str]) -> Any:
        self.k += 1
        t = time.monotonic()
        print(f"[{self.k}/{self.total}] {name} ...", end="", file=sys.stderr, flush=True)
        result = fn()
        print(f" {summary(result)} ({time.monotonic() - t:.1f} s, total {time.monotonic() - self.t0:.0f} s)",
              file=sys.stderr, flush=True)
        return result


def checks(lg: dict[str, Any]) -> dict[str, Any]:
    return {"complete": lg["complete"], "out_of_order": lg["out_of_order"],
            "min_received": lg["per_connection_min"], "max_received": lg["per_connection_max"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="small sizes, a smoke test")
    args = ap.parse_args()
    quick = args.quick
    sizes = {100: 500, 1000: 200} if quick else {100: 5000, 1000: 2000, 5000: 400}
    rate = FixedRate(20, 3 if quick else 10)
    latency_n = 100 if quick else 1000
    idle_n = 500 if quick else 10_000
    replay_n = 5000 if quick else 100_000
    log_dir = Path(tempfile.mkdtemp(prefix="xia-bench-"))
    view_counts = {n: sorted({1, 10, 100, n} - ({100} if n < 100 else set())) for n in sizes}
    total = 2 + sum(1 + len(v) for v in view_counts.values()) + 2 * (1 if quick else 3) + 2 + 1
    progress = Progress(total)
    report: dict[str, Any] = {"machine": machine(), "log_dir": str(log_dir), "quick": quick}

    def quiet() -> float:
        return wait_until_quiet(timeout_s=30.0)

    # 1. the load generator's own limits
    cap_n, cap_count = (1000, 2000) if not quick else (100, 500)
    cap = progress.run(f"loadgen capacity, synthetic sender, {cap_n} clients",
                       lambda: (quiet(), measure_loadgen_capacity(cap_n, cap_count, log_dir=log_dir))[1],
                       lambda r: f"{r['deliveries_per_s']:,.0f} deliveries/s")
    floor = progress.run(f"loadgen latency floor, {rate.rate_per_s:g}/s, {latency_n} clients",
                         lambda: (quiet(), measure_loadgen_capacity(latency_n, rate.count,
                                                                     rate_per_s=rate.rate_per_s,
                                                                     log_dir=log_dir))[1],
                         lambda r: f"p50 {r['latency_ms']['p50']:.1f} ms p99 {r['latency_ms']['p99']:.1f} ms")
    report["loadgen"] = {"capacity": cap, "capacity_connections": cap_n, "latency_floor": floor}

    # 2. full speed
    full: list[dict[str, Any]] = []
    for n, count in sizes.items():
        def ref_run(n: int = n, count: int = count) -> Any:
            with ReferenceTarget(log_dir=log_dir) as t:
                quiet()
                return run_publish_scenario(t, n, FullSpeed(count), log_dir=log_dir)
        ref = progress.run(f"reference full speed, N={n}", ref_run,
                           lambda r: f"{r.loadgen['deliveries_per_s']:,.0f} deliveries/s")
        full.append(row("reference", n, None, ref))
        for v in view_counts[n]:
            handshakes, keys = views(v)

            def xia_run(n: int = n, count: int = count, handshakes: Any = handshakes, keys: Any = keys) -> Any:
                with XiaTarget(log_dir=log_dir, api_keys=keys, settings={"max_connections": 20000}) as t:
                    quiet()
                    return run_publish_scenario(t, n, FullSpeed(count), handshakes=handshakes, log_dir=log_dir)
            res = progress.run(f"xia-broadcast full speed, N={n}, V={v}", xia_run,
                               lambda r: f"{r.loadgen['deliveries_per_s']:,.0f} deliveries/s")
            full.append(row("xia-broadcast", n, v, res, ref))
    report["full_speed"] = full

    # 3. latency at a fixed rate: both servers in turn, `repeats` times; the median run of each is reported
    repeats = 1 if quick else 3
    runs: dict[str, list[Any]] = {"reference": [], "xia-broadcast": []}
    for i in range(repeats):
        for target_cls in (ReferenceTarget, XiaTarget):
            def lat_run(target_cls: Any = target_cls) -> Any:
                with target_cls(log_dir=log_dir) as t:
                    quiet()
                    return run_publish_scenario(t, latency_n, rate, log_dir=log_dir)
            res = progress.run(f"{target_cls.name} latency {i + 1}/{repeats}, {rate.rate_per_s:g}/s for "
                               f"{rate.duration_s:g} s, N={latency_n}", lat_run,
                               lambda r: f"p50 {r.loadgen['latency_ms']['p50']:.1f} ms "
                                         f"p99 {r.loadgen['latency_ms']['p99']:.1f} ms")
            runs[target_cls.name].append(res)
    lat: dict[str, Any] = {}
    for name, results in runs.items():
        by_p99 = sorted(results, key=lambda r: r.loadgen["latency_ms"]["p99"])
        median = by_p99[len(by_p99) // 2]
        lat[name] = {"latency_ms": median.loadgen["latency_ms"], **checks(median.loadgen),
                     "complete_all_runs": all(r.loadgen["complete"] for r in results),
                     "out_of_order_all_runs": sum(r.loadgen["out_of_order"] for r in results),
                     "p99_all_runs": [r.loadgen["latency_ms"]["p99"] for r in results],
                     "other_cpu_s": median.other_cpu_s}
    lat["p99_ratio"] = lat["xia-broadcast"]["latency_ms"]["p99"] / lat["reference"]["latency_ms"]["p99"]
    report["latency"] = {"connections": latency_n, "rate_per_s": rate.rate_per_s, "duration_s": rate.duration_s,
                         "repeats": repeats, **lat}

    # 4. memory per idle subscribed connection
    mem: dict[str, Any] = {}
    for target_cls in (ReferenceTarget, XiaTarget):
        def mem_run(target_cls: Any = target_cls) -> Any:
            with target_cls(log_dir=log_dir) as t:
                return measure_idle_rss(t, idle_n, log_dir=log_dir)
        res = progress.run(f"{target_cls.name} memory, {idle_n} idle connections", mem_run,
                           lambda r: f"{r.kib_per_connection:.1f} KiB per connection")
        mem[target_cls.name] = {**dataclasses.asdict(res), "kib_per_connection": res.kib_per_connection}
    mem["ratio"] = mem["xia-broadcast"]["kib_per_connection"] / mem["reference"]["kib_per_connection"]
    report["memory"] = {"connections": idle_n, **mem}

    # 5. replay
    def replay_run() -> Any:
        with XiaTarget(log_dir=log_dir, journal={"max_count": replay_n}) as t:
            drive(t, FullSpeed(replay_n, batch=1000), timeout_s=300)
            quiet()
            handshake = {"Order": {**DEFAULT_HANDSHAKE["Order"], "start_seq": "0"}}
            lg = Loadgen(t.ws_url, 1, handshakes=[handshake], expect=replay_n, timeout_s=120, log_dir=log_dir)
            try:
                lg.wait_ready()
                return lg.wait_result(130)
            finally:
                lg.stop()
    rep = progress.run(f"xia-broadcast replay of {replay_n:,} retained changes into 1 subscriber", replay_run,
                       lambda r: f"{r['deliveries_per_s']:,.0f} changes/s")
    report["replay"] = {"retained": replay_n, "changes_per_s": rep["deliveries_per_s"],
                        "duration_s": rep["duration_s"], **checks(rep)}

    out_dir = BENCH_DIR / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    text = render(report)
    print(text)
    print(f"full results: {out.relative_to(ROOT)}")
    if not quick:
        (ROOT / "docs" / "benchmarks.md").write_text(text)
        print("wrote docs/benchmarks.md")


def row(target: str, n: int, v: int | None, res: Any, ref: Any = None) -> dict[str, Any]:
    lg = res.loadgen
    out = {"target": target, "connections": n, "views": v, "deliveries_per_s": lg["deliveries_per_s"],
           "server_busy": res.server_cpu_s / (lg["duration_s"] or float("nan")),
           "other_cpu_s": res.other_cpu_s, **checks(lg)}
    if ref is not None:
        out["ratio"] = lg["deliveries_per_s"] / ref.loadgen["deliveries_per_s"]
    return out


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal")))
    node = subprocess.run([node_binary(), "--version"], capture_output=True, text=True).stdout.strip()
    ws_version = json.loads((BENCH_DIR / "node" / "node_modules" / "ws" / "package.json").read_text())["version"]
    import websockets

    import xia_broadcast
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kib / 2**20, 1),
            "kernel": platform.release(), "python": platform.python_version(), "websockets": websockets.__version__,
            "node": node, "node_ws": ws_version, "xia_broadcast": xia_broadcast.__version__}


def render(r: dict[str, Any]) -> str:
    m = r["machine"]
    cap = r["loadgen"]["capacity"]
    floor = r["loadgen"]["latency_floor"]["latency_ms"]
    lines = [
        "# Benchmarks",
        "",
        "Produced by `.venv/bin/python -m bench` (after `npm ci --prefix bench/node`); every figure below comes",
        "from one run of it. The reference is a plain `websockets` server that encodes each message once and",
        "sends it to every client with no filtering (`bench/reference_server.py`). Both servers are driven by",
        "the same Node.js load generator (`bench/node/loadgen.js`) and the same publisher (`POST /publish`,",
        "batches of 100). Server pinned to CPU 0, load generator to CPU 1, 127.0.0.1 only.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}.",
        f"Python {m['python']}, websockets {m['websockets']}, Node.js {m['node']} with ws {m['node_ws']},",
        f"xia-broadcast {m['xia_broadcast']}.",
        "",
        "## The load generator's own capacity",
        "",
        f"Against a synthetic sender writing pre-built frames: **{cap['deliveries_per_s']:,.0f} deliveries/s** "
        f"({r['loadgen']['capacity_connections']} clients); latency floor at "
        f"{r['latency']['rate_per_s']:g} msg/s to {r['latency']['connections']} clients: p50 {floor['p50']:.1f} ms,"
        f" p99 {floor['p99']:.1f} ms. A server figure near the capacity is bounded by the load generator, not",
        "by the server: `server busy` (server CPU seconds per second of delivery) tells how much headroom the",
        "server had.",
        "",
        "## Full-speed deliveries/s (messages x subscribers that received them)",
        "",
        "| server | N | V | deliveries/s | ratio to reference | server busy (1: core full) | loss | reordered |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for f in r["full_speed"]:
        ratio = f"{f['ratio']:.2f}x" if "ratio" in f else "1.00x"
        loss = "none" if f["complete"] else f"INCOMPLETE (min {f['min_received']})"
        lines.append(f"| {f['target']} | {f['connections']} | {f['views'] or '-'} | {f['deliveries_per_s']:,.0f} | "
                     f"{ratio} | {f['server_busy']:.2f} | {loss} | {f['out_of_order']} |")
    lat = r["latency"]
    lines += [
        "",
        f"## Latency, N={lat['connections']}, {lat['rate_per_s']:g} messages/s for {lat['duration_s']:g} s",
        "",
        "Publish (just before the POST) to receipt (after parsing in the load generator), in ms. Each server",
        f"ran {lat['repeats']} times, in turn with the other; the run with the median p99 is shown, all p99s beside.",
        "",
        "| server | p50 | p99 | max | p99 of every run | loss | reordered |",
        "|---|---:|---:|---:|---|---|---:|",
    ]
    for name in ("reference", "xia-broadcast"):
        x = lat[name]
        loss = "none" if x["complete_all_runs"] else "INCOMPLETE"
        every = ", ".join(f"{v:.2f}" for v in x["p99_all_runs"])
        lines.append(f"| {name} | {x['latency_ms']['p50']:.2f} | {x['latency_ms']['p99']:.2f} | "
                     f"{x['latency_ms']['max']:.2f} | {every} | {loss} | {x['out_of_order_all_runs']} |")
    lines += ["", f"p99 ratio xia-broadcast / reference: **{lat['p99_ratio']:.2f}x**.", ""]
    mem = r["memory"]
    lines += [
        f"## Resident memory per idle subscribed connection ({mem['connections']:,} connections)",
        "",
        "| server | RSS before | RSS after | KiB per connection |",
        "|---|---:|---:|---:|",
    ]
    for name in ("reference", "xia-broadcast"):
        x = mem[name]
        lines.append(f"| {name} | {x['rss_kib_before']:,} KiB | {x['rss_kib_after']:,} KiB | "
                     f"{x['kib_per_connection']:.1f} |")
    lines += ["", f"Ratio xia-broadcast / reference: **{mem['ratio']:.2f}x**.", ""]
    rep = r["replay"]
    lines += [
        "## Replay",
        "",
        f"{rep['retained']:,} retained changes replayed into one subscriber (`start_seq`): "
        f"**{rep['changes_per_s']:,.0f} changes/s** ({rep['duration_s']:.2f} s), "
        f"{'none lost' if rep['complete'] else 'INCOMPLETE'}, {rep['out_of_order']} reordered.",
        "",
        "## Cluster mode",
        "",
        "Not measured: cluster mode (Redis Streams) is not built yet.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
