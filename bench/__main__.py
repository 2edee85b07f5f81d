"""The benchmark: xia-broadcast against two plain references, same machine, same run, same load generator.

    npm ci --prefix bench/node            # once: the load generator's and the Node reference's `ws`
    .venv/bin/python -m bench [--quick]

The references send one pre-encoded message to every client with no filtering: a Python ``websockets``
server (``bench/reference_server.py``) and a Node.js ``ws`` server (``bench/node/reference_server.js``).
xia-broadcast runs as its native server (``xia-broadcast serve``) and, the usual Python way, as its ASGI app
(``create_app``) under uvicorn, one worker, the same config (``bench/asgi_server.py``, :class:`AsgiTarget`).
Steps (each on a fresh server; server pinned to CPU 0, load generator to CPU 1):

1. the load generator's own capacity against a synthetic sender (pre-built frames), and its latency floor;
2. HEADLINE, one change per request: 8 concurrent keep-alive publishers, each POSTing one change and
   sending the next after the answer; subscribers N in {100, 1000, 5000}: both references once per N,
   xia-broadcast with V in {1, 10, 100, N} distinct views (each view a different scope and ACL, catalogs
   cycling over three; every document matches every view, so every subscriber receives every document and
   deliveries are comparable), and at N=1000 also V=N with every catalog distinct (no view shares its
   projection), and at N=1000 the ASGI app under uvicorn with V in {1, N}. The server's socket-writing system
   calls are counted meanwhile (``perf stat``);
3. batched publishing (100 changes per POST, one publisher), N=1000: a second, labelled scenario;
4. publish-to-receipt latency p50/p99/max at N=1000 and 20 messages/s for 20 s, all four servers, five
   runs each in turn (the run with the median p99 is reported, every run's p99 beside it: a p99 over
   400 changes moves by several milliseconds between runs on a shared machine);
5. resident memory per idle subscribed connection at 10,000 connections: both references, xia-broadcast
   with one view and with one view per subscriber, the ASGI app under uvicorn with one view;
6. replay rate: 100,000 retained changes replayed into one subscriber (xia-broadcast only).

Every step checks loss (every subscriber got every document it should) and order (seqs increase per
connection) and reports both. Writes ``bench/results/bench-<time>.json`` and ``docs/benchmarks.md`` (keeping
its "Snapshots" section, whose figures come from ``python -m bench.snapshot``).
``--quick`` runs small sizes (a smoke test, about two minutes; it does not write docs/benchmarks.md).
``--headline-only`` runs steps 1 and 2 at N=1000 only (the load generator's capacity, both references, every
V, the ASGI rows): the comparison of one build against another, about three minutes; it writes the JSON result,
not the docs.
The throughput scenarios (steps 2 and 3) are driven by ``bench/node/leangen.js`` (frames read straight from ``net``
sockets, many per read: a load generator well above the servers' figures); ``loadgen.js`` (the ``ws`` package)
stays for latency, memory and replay, and step 1 measures both generators' capacities. ``--ws-throughput`` drives
the throughput scenarios with ``loadgen.js`` too, as earlier versions did.
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
    NICE,
    AsgiTarget,
    FixedRate,
    FullSpeed,
    Loadgen,
    NodeReferenceTarget,
    OnePerRequest,
    ReferenceTarget,
    XiaTarget,
    drive,
    measure_idle_rss,
    measure_loadgen_capacity,
    node_binary,
    run_publish_scenario,
    set_niceness,
    wait_until_quiet,
)

ROOT = BENCH_DIR.parent
CATALOGS = [{}, {"ts": None, "customer": None, "amount": None, "status": None}, {"ts": None, "region": None}]
REFERENCES = (ReferenceTarget, NodeReferenceTarget)
PUBLISHERS = 8
"""Concurrent publishers of the headline scenario."""
XIA_SETTINGS = {"max_connections": 20000}
QUIET_WAIT_S = 15.0
"""Seconds a step waits at most for the machine to be quiet before it starts."""


def views(v: int, distinct_catalogs: bool = False) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """``v`` handshakes forming ``v`` distinct views (scope and ACL differ; catalogs cycle over three, or with
    ``distinct_catalogs`` each is its own: it also names a field no document has), each matching every
    benchmark document, and the API keys they use (key -> ACL)."""
    handshakes, keys = [], {}
    for k in range(v):
        key = f"bench-key-{k}"
        keys[key] = {"content": [{"obj": "Order/key/*", "act": "read"}, {"obj": f"Report/key/{k}", "act": "read"}]}
        catalog = dict(CATALOGS[k % len(CATALOGS)])
        if distinct_catalogs:
            catalog = {"ts": None, "customer": None, "amount": None, "status": None, f"absent_{k}": None}
        handshakes.append({
            "Order": {"data_scope": [{"fn": "amount", "op": ">=", "val": -k}], "catalog": catalog,
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


#: checks only the lean generator (``leangen.js``) reports: seqs it could not read, sampled parses that disagreed
LEAN_CHECKS = ("seq_scan_failures", "cross_checked", "cross_check_failures", "frames_per_read")


def checks(lg: dict[str, Any]) -> dict[str, Any]:
    return {"complete": lg["complete"], "out_of_order": lg["out_of_order"],
            "min_received": lg["per_connection_min"], "max_received": lg["per_connection_max"],
            "loadgen_busy": lg.get("busy_fraction"), **{k: lg[k] for k in LEAN_CHECKS if k in lg}}


ASGI_N = 1000
"""The N at which the headline scenario also measures the ASGI app under uvicorn (V=1 and V=N)."""


def throughput_cases(sizes: dict[int, int]) -> list[tuple[int, str, int | None, bool]]:
    """(N, target name, V, distinct catalogs) of the headline scenario, references first for each N, then the
    native server, then (at :data:`ASGI_N`) the ASGI app under uvicorn."""
    cases: list[tuple[int, str, int | None, bool]] = []
    for n in sizes:
        cases += [(n, ReferenceTarget.name, None, False), (n, NodeReferenceTarget.name, None, False)]
        cases += [(n, XiaTarget.name, v, False) for v in sorted({1, 10, 100, n} - ({100} if n < 100 else set()))]
        if n == 1000:
            cases.append((n, XiaTarget.name, n, True))
        if n == ASGI_N:
            cases += [(n, AsgiTarget.name, 1, False), (n, AsgiTarget.name, n, False)]
    return cases


def run_case(n: int, target: str, v: int | None, distinct: bool, profile: Any, log_dir: Path,
             generator: str = "ws") -> Any:
    """One throughput measurement on a fresh server, with its socket writes counted, driven by ``generator``."""
    if target in (XiaTarget.name, AsgiTarget.name):
        assert v is not None
        handshakes, keys = views(v, distinct)
        xia_cls = XiaTarget if target == XiaTarget.name else AsgiTarget
        with xia_cls(log_dir=log_dir, api_keys=keys, settings=XIA_SETTINGS) as t:
            wait_until_quiet(timeout_s=QUIET_WAIT_S)
            return run_publish_scenario(t, n, profile, handshakes=handshakes, count_syscalls=True,
                                        generator=generator, log_dir=log_dir)
    cls = ReferenceTarget if target == ReferenceTarget.name else NodeReferenceTarget
    with cls(log_dir=log_dir) as ref:
        wait_until_quiet(timeout_s=QUIET_WAIT_S)
        return run_publish_scenario(ref, n, profile, count_syscalls=True, generator=generator, log_dir=log_dir)


def throughput(progress: Progress, title: str, cases: list[tuple[int, str, int | None, bool]],
               counts: dict[int, int], profile_of: Callable[[int], Any], log_dir: Path,
               generator: str = "ws") -> list[dict[str, Any]]:
    """Run ``cases``; every xia-broadcast row carries its ratio to both references of its N, and every ASGI
    row its ratio to the native server's row of the same N, V and catalogs (``ratio_xia-broadcast``)."""
    rows: list[dict[str, Any]] = []
    refs: dict[tuple[int, str], Any] = {}
    native: dict[tuple[int, int | None, bool], Any] = {}
    for n, target, v, distinct in cases:
        label = f"{title}: {target}, N={n}" + (f", V={v}" if v is not None else "") + \
            (" (distinct catalogs)" if distinct else "")
        def measure(n: int = n, target: str = target, v: int | None = v, distinct: bool = distinct) -> Any:
            return run_case(n, target, v, distinct, profile_of(counts[n]), log_dir, generator)
        res = progress.run(label, measure, lambda r: f"{r.loadgen['deliveries_per_s']:,.0f} deliveries/s")
        if v is None:
            refs[(n, target)] = res
        if target == XiaTarget.name:
            native[(n, v, distinct)] = res
        compared = {name: refs.get((n, name)) for name in (ReferenceTarget.name, NodeReferenceTarget.name)}
        if target == AsgiTarget.name:
            compared[XiaTarget.name] = native.get((n, v, distinct))
        rows.append(row(target, n, v, distinct, res, compared))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="small sizes, a smoke test")
    ap.add_argument("--headline-only", action="store_true",
                    help="only the load generator's capacity and the headline scenario at N=1000")
    ap.add_argument("--ws-throughput", action="store_true",
                    help="throughput scenarios driven by bench/node/loadgen.js (ws) as well, not leangen.js")
    args = ap.parse_args()
    generator = "ws" if args.ws_throughput else "lean"
    set_niceness()
    quick = args.quick
    sizes = {100: 500, 1000: 300} if quick else {100: 5000, 1000: 2000, 5000: 400}
    if args.headline_only:
        sizes = {1000: sizes[1000]}
    batched_n, batched_count = (1000, 300) if quick else (1000, 2000)
    rate = FixedRate(20, 3 if quick else 20)
    latency_n = 100 if quick else 1000
    idle_n = 500 if quick else 10_000
    replay_n = 5000 if quick else 100_000
    repeats = 1 if quick else 5
    log_dir = Path(tempfile.mkdtemp(prefix="xia-bench-"))
    headline = throughput_cases(sizes)
    batched = [(batched_n, ReferenceTarget.name, None, False), (batched_n, NodeReferenceTarget.name, None, False),
               (batched_n, XiaTarget.name, 1, False), (batched_n, XiaTarget.name, batched_n, False)]
    latency_targets = (ReferenceTarget, NodeReferenceTarget, XiaTarget, AsgiTarget)
    mem_cases: list[tuple[str, Any, int]] = [(ReferenceTarget.name, ReferenceTarget, 0),
                                             (NodeReferenceTarget.name, NodeReferenceTarget, 0),
                                             ("xia-broadcast, one view", XiaTarget, 1),
                                             ("xia-broadcast, one view per subscriber", XiaTarget, idle_n),
                                             (f"{AsgiTarget.name}, one view", AsgiTarget, 1)]
    total = 2 + int(generator == "lean") + len(headline) + (0 if args.headline_only else
                                 len(batched) + len(latency_targets) * repeats + len(mem_cases) + 1)
    progress = Progress(total)
    report: dict[str, Any] = {"machine": machine(), "log_dir": str(log_dir), "quick": quick,
                              "publishers": PUBLISHERS, "throughput_generator": generator}

    def quiet() -> float:
        return wait_until_quiet(timeout_s=QUIET_WAIT_S)

    # 1. the load generator's own limits
    cap_n, cap_count = (1000, 2000) if not quick else (100, 500)
    cap = progress.run(f"loadgen capacity (ws, loadgen.js), synthetic sender, {cap_n} clients",
                       lambda: (quiet(), measure_loadgen_capacity(cap_n, cap_count, log_dir=log_dir))[1],
                       lambda r: f"{r['deliveries_per_s']:,.0f} deliveries/s")
    lean_cap = None
    if generator == "lean":
        lean_cap = progress.run(f"loadgen capacity (lean, leangen.js), synthetic sender, {cap_n} clients",
                                lambda: (quiet(), measure_loadgen_capacity(cap_n, cap_count, generator="lean",
                                                                           log_dir=log_dir))[1],
                                lambda r: f"{r['deliveries_per_s']:,.0f} deliveries/s")
    floor = progress.run(f"loadgen latency floor, {rate.rate_per_s:g}/s, {latency_n} clients",
                         lambda: (quiet(), measure_loadgen_capacity(latency_n, rate.count,
                                                                     rate_per_s=rate.rate_per_s,
                                                                     log_dir=log_dir))[1],
                         lambda r: f"p50 {r['latency_ms']['p50']:.1f} ms p99 {r['latency_ms']['p99']:.1f} ms")
    report["loadgen"] = {"capacity": cap, "capacity_connections": cap_n, "latency_floor": floor}
    if lean_cap is not None:
        report["loadgen"]["lean_capacity"] = lean_cap

    # 2. headline: one change per request, concurrent publishers
    report["one_per_request"] = throughput(progress, "one change per request", headline, sizes,
                                           lambda count: OnePerRequest(count, PUBLISHERS), log_dir, generator)
    if args.headline_only:
        report["headline_only"] = True
        out = save(report)
        for name, c in (("ws", cap), ("lean", lean_cap)):
            if c is not None:
                print(json.dumps({"loadgen_capacity": name, "deliveries_per_s": c["deliveries_per_s"],
                                  "busy": c["busy_fraction"], "complete": c["complete"],
                                  "out_of_order": c["out_of_order"], "headline": name == generator}))
        for r in report["one_per_request"]:
            print(json.dumps({k: v for k, v in r.items() if k in SUMMARY or k.startswith("ratio_")}))
        print(f"full results: {out.relative_to(ROOT)}")
        return
    # 3. batched publishing, labelled
    report["batched"] = throughput(progress, "batched, 100 per request", batched, {batched_n: batched_count},
                                   lambda count: FullSpeed(count, batch=100), log_dir, generator)

    # 4. latency at a fixed rate: the servers in turn, `repeats` times; the median run of each is reported
    runs: dict[str, list[Any]] = {t.name: [] for t in latency_targets}
    for i in range(repeats):
        for target_cls in latency_targets:
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
    report["latency"] = {"connections": latency_n, "rate_per_s": rate.rate_per_s, "duration_s": rate.duration_s,
                         "repeats": repeats, "servers": lat}

    # 5. memory per idle subscribed connection
    mem: dict[str, Any] = {}
    for label, target_cls, v in mem_cases:
        def mem_run(target_cls: Any = target_cls, v: int = v) -> Any:
            if not v:
                with target_cls(log_dir=log_dir) as t:
                    return measure_idle_rss(t, idle_n, log_dir=log_dir)
            handshakes, keys = views(v)
            with target_cls(log_dir=log_dir, api_keys=keys, settings=XIA_SETTINGS) as t:
                return measure_idle_rss(t, idle_n, handshakes=handshakes, log_dir=log_dir)
        res = progress.run(f"{label} memory, {idle_n} idle connections", mem_run,
                           lambda r: f"{r.kib_per_connection:.1f} KiB per connection")
        mem[label] = {**dataclasses.asdict(res), "kib_per_connection": res.kib_per_connection}
    report["memory"] = {"connections": idle_n, "servers": mem}

    # 6. replay
    def replay_run() -> Any:
        with XiaTarget(log_dir=log_dir, journal={"max_count": replay_n}) as t:
            start = head_seq(t.ws_url)  # the journal's start: a replay after it misses nothing
            drive(t, FullSpeed(replay_n, batch=1000), timeout_s=300)
            quiet()
            handshake = {"Order": {**DEFAULT_HANDSHAKE["Order"], "after_seq": start}}
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

    out = save(report)
    text = render(report)
    print(text)
    print(f"full results: {out.relative_to(ROOT)}")
    if not quick:
        docs = ROOT / "docs" / "benchmarks.md"
        docs.write_text(keep_sections(docs.read_text() if docs.exists() else "", text))
        print("wrote docs/benchmarks.md")


KEPT_SECTIONS = ("## Snapshots",)
"""Sections of docs/benchmarks.md written from other benchmarks' runs (``bench.snapshot``): kept when this one
rewrites the page."""


def keep_sections(old: str, new: str) -> str:
    """``new`` with the :data:`KEPT_SECTIONS` of ``old`` (each up to the next ``## `` heading) put back before
    ``## Cluster mode`` (or at the end)."""
    kept = []
    for heading in KEPT_SECTIONS:
        at = old.find(f"\n{heading}\n")
        if at >= 0:
            end = old.find("\n## ", at + 1)
            kept.append(old[at + 1:end + 1 if end >= 0 else len(old)].rstrip("\n") + "\n\n")
    if not kept:
        return new
    at = new.find("\n## Cluster mode\n")
    at = at + 1 if at >= 0 else len(new)
    return new[:at] + "".join(kept) + new[at:]


#: the keys of a throughput row that ``--headline-only`` prints (with every ``ratio_*``)
SUMMARY = ("target", "connections", "views", "distinct_catalogs", "deliveries_per_s", "server_busy", "complete",
           "out_of_order", "loadgen_busy", "seq_scan_failures", "cross_check_failures")


def save(report: dict[str, Any]) -> Path:
    """Write ``report`` to ``bench/results/bench-<time>.json``; returns the path."""
    out_dir = BENCH_DIR / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    return out


def head_seq(url: str) -> str:
    """The ``head_seq`` of ``Order`` a subscriber is confirmed with now (one short-lived subscription)."""
    from websockets.sync.client import connect

    with connect(url, open_timeout=10, close_timeout=5) as ws:
        ws.send(json.dumps(DEFAULT_HANDSHAKE))
        confirmation = json.loads(ws.recv(timeout=10))
    seq: str = confirmation["Order"]["head_seq"]
    return seq


def row(target: str, n: int, v: int | None, distinct: bool, res: Any, refs: dict[str, Any]) -> dict[str, Any]:
    """One throughput row: deliveries/s, ratios to the references of the same N, writes per delivery."""
    lg = res.loadgen
    delivered = lg["deliveries_per_s"] * lg["duration_s"]
    syscalls = sum(res.syscalls.values()) if res.syscalls else None
    out: dict[str, Any] = {
        "target": target, "connections": n, "views": v, "distinct_catalogs": distinct,
        "deliveries_per_s": lg["deliveries_per_s"],
        "server_busy": res.server_cpu_s / (lg["duration_s"] or float("nan")),
        "publish_requests_per_s": None, "syscalls": res.syscalls,
        "writes_per_delivery": syscalls / (res.connections * res.publish.published) if syscalls else None,
        "other_cpu_s": res.other_cpu_s, "delivered": delivered, **checks(lg)}
    requests = res.publish.published if "OnePerRequest" in res.profile else res.publish.published / 100
    out["publish_requests_per_s"] = requests / res.publish.seconds
    for name, ref in refs.items():
        if ref is not None and target != name:
            out[f"ratio_{name}"] = lg["deliveries_per_s"] / ref.loadgen["deliveries_per_s"]
    return out


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal")))
    node = subprocess.run([node_binary(), "--version"], capture_output=True, text=True).stdout.strip()
    ws_version = json.loads((BENCH_DIR / "node" / "node_modules" / "ws" / "package.json").read_text())["version"]
    from importlib.metadata import version

    import xia_broadcast
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kib / 2**20, 1),
            "kernel": platform.release(), "python": platform.python_version(), "websockets": version("websockets"),
            "node": node, "node_ws": ws_version, "xia_broadcast": xia_broadcast.__version__, "nice": NICE,
            "uvicorn": version("uvicorn"), "starlette": version("starlette"), "uvicorn_auto": uvicorn_auto()}


def uvicorn_auto() -> dict[str, str]:
    """What uvicorn's ``auto`` choices (``--loop``, ``--http``, ``--ws``) resolve to in this environment, i.e. in
    ``bench/asgi_server.py``, which runs on this Python and passes none of them."""
    from importlib.util import find_spec

    from uvicorn.config import HTTP_PROTOCOLS, WS_PROTOCOLS
    from uvicorn.protocols.http.auto import AutoHTTPProtocol
    from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol

    def name(table: dict[str, Any], cls: Any) -> str:
        where = f"{cls.__module__}:{cls.__qualname__}" if cls is not None else None
        return next((k for k, v in table.items() if v == where and k != "auto"), str(where))

    return {"loop": "uvloop" if find_spec("uvloop") else "asyncio", "http": name(HTTP_PROTOCOLS, AutoHTTPProtocol),
            "ws": name(WS_PROTOCOLS, AutoWebSocketsProtocol)}


def _throughput_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| server | N | V | deliveries/s | vs websockets | vs Node ws | socket writes per delivery | server busy | "
        "publish requests/s | other CPU s | loss | reordered |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for f in rows:
        v = "-" if f["views"] is None else f"{f['views']}" + (" (distinct catalogs)" if f["distinct_catalogs"] else "")
        ratios = [f"{f[k]:.2f}x" if k in f else "-" for k in ("ratio_reference", "ratio_node-ws")]
        writes = "n/a" if f["writes_per_delivery"] is None else f"{f['writes_per_delivery']:.3f}"
        loss = "none" if f["complete"] else f"INCOMPLETE (min {f['min_received']})"
        lines.append(f"| {f['target']} | {f['connections']} | {v} | {f['deliveries_per_s']:,.0f} | {ratios[0]} | "
                     f"{ratios[1]} | {writes} | {f['server_busy']:.2f} | {f['publish_requests_per_s']:,.0f} | "
                     f"{f['other_cpu_s']:.1f} | {loss} | {f['out_of_order']} |")
    return lines


def _asgi_sentence(asgi1: dict[str, Any] | None, asgin: dict[str, Any] | None, native1: dict[str, Any] | None,
                   nativen: dict[str, Any] | None) -> list[str]:
    """What the ASGI rows show against the native server's rows of the same N and V (none if one is missing)."""
    if asgi1 is None or asgin is None or native1 is None or nativen is None:
        return []

    def writes(f: dict[str, Any]) -> str:
        return "n/a" if f["writes_per_delivery"] is None else f"{f['writes_per_delivery']:.2f}"

    idle = [f"{label}, busy {f['server_busy']:.2f}" for label, f in (("one view", native1),
                                                                      ("one view per subscriber", nativen))
            if f["server_busy"] < 0.9]
    headroom = (f" (the native server's own core was not full with {' and '.join(idle)}: there its figure is bounded"
                " by the publishers or the load generator)") if idle else ""
    full = "with its own core full " if min(asgi1["server_busy"], asgin["server_busy"]) >= 0.9 else "at "
    return [
        "The ASGI rows are the same service (the same core computing the views and encodings) served the usual",
        f"Python way: at N={asgi1['connections']} it delivers {asgi1['ratio_xia-broadcast']:.2f}x (one view) and "
        f"{asgin['ratio_xia-broadcast']:.2f}x (one view per subscriber) the native server's deliveries/s"
        f"{headroom},",
        f"{full}(server busy {asgi1['server_busy']:.2f} and {asgin['server_busy']:.2f}) and {writes(asgi1)} and "
        f"{writes(asgin)} socket writes per delivery against the native server's {writes(native1)} and "
        f"{writes(nativen)}:",
        "uvicorn sends each message to each socket with its own awaited `send_text`, where the native server "
        "coalesces the writes of a socket.",
        "",
    ]


def _lean_sentence(r: dict[str, Any]) -> list[str]:
    """The lean generator's capacity, when it drove the throughput tables (not with ``--ws-throughput``)."""
    lean = r["loadgen"].get("lean_capacity")
    if lean is None:
        return []
    return [
        "The throughput tables (headline and batched) were driven by the lean load generator",
        "(`bench/node/leangen.js`: frames read straight from `net` sockets, many per read, seqs checked in the",
        f"frame bytes), whose capacity against the same synthetic sender is **{lean['deliveries_per_s']:,.0f}"
        f" deliveries/s** ({lean['deliveries_per_s'] / r['loadgen']['capacity']['deliveries_per_s']:.1f}x the "
        "`ws` one above, which drives the latency, memory and replay steps).",
        "",
    ]


def render(r: dict[str, Any]) -> str:
    m = r["machine"]
    cap = r["loadgen"]["capacity"]
    floor = r["loadgen"]["latency_floor"]["latency_ms"]
    lat = r["latency"]
    def find(target: str, views: int) -> dict[str, Any] | None:
        return next((f for f in r["one_per_request"] if f["target"] == target and f["connections"] == 1000
                     and f["views"] == views and not f["distinct_catalogs"]), None)

    head, vn = find(XiaTarget.name, 1), find(XiaTarget.name, 1000)
    asgi1, asgin = find(AsgiTarget.name, 1), find(AsgiTarget.name, 1000)
    auto = m.get("uvicorn_auto", {})
    lines = [
        "# Benchmarks",
        "",
        "Produced by `.venv/bin/python -m bench` (after `npm ci --prefix bench/node`); every figure below comes",
        "from one run of it, and says which scenario it comes from. Two references, measured in the same run:",
        "a plain Python `websockets` server (`bench/reference_server.py`) and a plain Node.js `ws` server",
        "(`bench/node/reference_server.js`), each encoding a message once and sending it to every client with",
        "no filtering, one socket write per delivery. All servers are driven by the same Node.js load generator",
        "(`bench/node/loadgen.js`) and the same publishers (`POST /publish`). Server pinned to CPU 0, load",
        "generator to CPU 1, publishers unpinned, 127.0.0.1 only. Documents of about 200 bytes. Servers, load",
        f"generator and publishers all run at niceness {m['nice']} (`XIA_BENCH_NICE`).",
        "",
    ]
    if "uvicorn" in m:
        lines += [
            "xia-broadcast runs twice: as its native server (`xia-broadcast serve`, rows \"xia-broadcast\") and the",
            "usual Python way, its ASGI app (`create_app`) served by uvicorn (rows \"xia-broadcast ASGI (uvicorn)\",",
            "`bench/asgi_server.py`): one worker, the same config file, what `pip install uvicorn` gives (here: "
            f"loop {auto.get('loop', '?')},",
            f"HTTP {auto.get('http', '?')}, WebSocket {auto.get('ws', '?')}, uvicorn's default implementation "
            "over the `websockets` package;",
            "`uvicorn[standard]` would add uvloop and httptools, not measured here), its other options at their",
            "defaults, log level WARNING as the native server's. Measured in the same run: the headline at N=1000,",
            "the latency and the memory tables.",
            "",
        ]
    lines += [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}.",
        f"Python {m['python']}, websockets {m['websockets']}, Node.js {m['node']} with ws {m['node_ws']},",
        f"xia-broadcast {m['xia_broadcast']}"
        + (f", uvicorn {m['uvicorn']} with Starlette {m['starlette']}." if "uvicorn" in m else "."),
        "",
    ]
    if head is not None and vn is not None:
        lines += [
            "**Headline (one change per request, 8 concurrent publishers, N=1000):** xia-broadcast with one view",
            f"delivers {head.get('ratio_reference', float('nan')):.2f}x the `websockets` reference and "
            f"{head.get('ratio_node-ws', float('nan')):.2f}x the Node `ws` reference; with one view per",
            f"subscriber {vn.get('ratio_reference', float('nan')):.2f}x and "
            f"{vn.get('ratio_node-ws', float('nan')):.2f}x.",
        ]
        if asgi1 is not None and asgin is not None:
            lines += [
                "Served the usual Python way (its ASGI app under uvicorn), the same service delivers "
                f"{asgi1.get('ratio_reference', float('nan')):.2f}x the `websockets`",
                f"reference and {asgi1.get('ratio_node-ws', float('nan')):.2f}x the Node `ws` reference with "
                f"one view ({asgin.get('ratio_reference', float('nan')):.2f}x and "
                f"{asgin.get('ratio_node-ws', float('nan')):.2f}x with one view per subscriber):",
                f"{asgi1.get('ratio_xia-broadcast', float('nan')):.2f}x and "
                f"{asgin.get('ratio_xia-broadcast', float('nan')):.2f}x the native server's figures.",
            ]
        lines += [
            "Earlier versions of this page quoted 2.1x, measured with batched publishing (100 changes per",
            "request), which lets one write carry 100 messages; batched figures have their own table below and",
            "are not the headline.",
            "",
        ]
    lines += [
        "## The load generator's own capacity",
        "",
        f"Against a synthetic sender writing pre-built frames (16 per write): **{cap['deliveries_per_s']:,.0f} "
        f"deliveries/s** ({r['loadgen']['capacity_connections']} clients); latency floor at "
        f"{lat['rate_per_s']:g} msg/s to {lat['connections']} clients: p50 {floor['p50']:.1f} ms,"
        f" p99 {floor['p99']:.1f} ms. A server figure near the capacity is bounded by the load generator, not",
        "by the server: `server busy` (server CPU seconds per second of delivery; 1: its core is full) tells",
        "how much headroom the server had.",
        "",
        *_lean_sentence(r),
        f"## Headline: one change per request ({r['publishers']} concurrent publishers)",
        "",
        f"{r['publishers']} publishers, each on its own keep-alive connection, POST one change each and send the next",
        "after the answer: how a server sees changes in real use. Deliveries/s = messages x subscribers that",
        "received them. V = distinct views (each a different scope and ACL; catalogs cycle over three, so views",
        "share their projections three ways, except in the row marked \"distinct catalogs\", where each view",
        "names its own). Socket writes per delivery: the server's write/writev/sendto/sendmsg system calls",
        "(`perf stat` tracepoints) divided by the deliveries, HTTP answers included. Publish requests/s: what",
        "the publishers achieved (they run unpinned, in the benchmark's own process). Other CPU s: CPU seconds",
        "the rest of the machine used during the step (anything but a few tenths means the step competed with",
        "something else and its figures are low). A row whose server busy is well below 1 was bounded by",
        "the publishers (8 threads of one Python process, sharing the two cores) or by the load generator,",
        "not by the server.",
        "",
        *_throughput_table(r["one_per_request"]),
        "",
        *_asgi_sentence(asgi1, asgin, head, vn),
        "## Batched publishing (100 changes per request, one publisher): a second scenario",
        "",
        "One publisher POSTs 100 changes per request, the next after the answer. Both references still write",
        "once per delivery when the client keeps up; a server that coalesces writes carries up to 100 messages",
        "per write. This is how earlier versions measured; it flatters coalescing and is not the headline.",
        "",
        *_throughput_table(r["batched"]),
        "",
        f"## Latency, N={lat['connections']}, {lat['rate_per_s']:g} messages/s for {lat['duration_s']:g} s",
        "",
        "Publish (just before the POST) to receipt (after parsing in the load generator), in ms. Each server",
        f"ran {lat['repeats']} times, in turn with the others; the run with the median p99 is shown, all p99s beside.",
        "",
        "| server | p50 | p99 | max | p99 of every run | loss | reordered |",
        "|---|---:|---:|---:|---|---|---:|",
    ]
    servers = lat["servers"]
    for name, x in servers.items():
        loss = "none" if x["complete_all_runs"] else "INCOMPLETE"
        every = ", ".join(f"{v:.2f}" for v in x["p99_all_runs"])
        lines.append(f"| {name} | {x['latency_ms']['p50']:.2f} | {x['latency_ms']['p99']:.2f} | "
                     f"{x['latency_ms']['max']:.2f} | {every} | {loss} | {x['out_of_order_all_runs']} |")
    xia_p99 = servers["xia-broadcast"]["latency_ms"]["p99"]
    lines += ["", f"p99 ratio xia-broadcast / `websockets` reference: "
              f"{xia_p99 / servers['reference']['latency_ms']['p99']:.2f}x; / Node `ws` reference: "
              f"{xia_p99 / servers['node-ws']['latency_ms']['p99']:.2f}x (the runs with the median p99)."]
    if AsgiTarget.name in servers:
        asgi_p99 = servers[AsgiTarget.name]["latency_ms"]["p99"]
        lines += [f"p99 ratio xia-broadcast ASGI (uvicorn) / native xia-broadcast: {asgi_p99 / xia_p99:.2f}x; "
                  f"/ `websockets` reference: {asgi_p99 / servers['reference']['latency_ms']['p99']:.2f}x."]
    lines += [""]
    moved = max(max(x["p99_all_runs"]) - min(x["p99_all_runs"]) for x in servers.values())
    lines += [f"The load generator's own floor at this rate (synthetic sender, above): p50 {floor['p50']:.1f} ms, "
              f"p99 {floor['p99']:.1f} ms. Between runs of one server the p99 moved by up to {moved:.1f} ms: "
              "at this rate the p99 is mostly the machine's "
              "(other processes, the load generator), and where the servers' ranges of p99 overlap, "
              "the ratio does not tell them apart.", ""]
    mem = r["memory"]
    lines += [
        f"## Resident memory per idle subscribed connection ({mem['connections']:,} connections)",
        "",
        "| server | RSS before | RSS after | KiB per connection |",
        "|---|---:|---:|---:|",
    ]
    for name, x in mem["servers"].items():
        lines.append(f"| {name} | {x['rss_kib_before']:,} KiB | {x['rss_kib_after']:,} KiB | "
                     f"{x['kib_per_connection']:.1f} |")
    rep = r["replay"]
    lines += [
        "",
        "## Replay",
        "",
        f"{rep['retained']:,} retained changes replayed into one subscriber (`after_seq`): "
        f"**{rep['changes_per_s']:,.0f} changes/s** ({rep['duration_s']:.2f} s), "
        f"{'none lost' if rep['complete'] else 'INCOMPLETE'}, {rep['out_of_order']} reordered.",
        "",
        "## Cluster mode",
        "",
        "Measured by its own benchmark, `.venv/bin/python -m bench.cluster` (one node on the memory journal, one",
        "on Redis Streams, two nodes on one Redis): its figures are in [cluster.md](cluster.md#measured).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
