"""The durable journal (``--data DIR``, SQLite) against the memory journal, in the same run.

    .venv/bin/python -m bench.durable [--quick]

Each step runs on fresh servers (server pinned to CPU 0, the Node.js load generator to CPU 1), memory first,
then SQLite in a new temporary data directory:

1. the load generator's own capacity (synthetic sender, N=1000);
2. HEADLINE scenario, one change per request: 8 concurrent publishers, N=1000 subscribers, V=1: deliveries/s
   (goal: SQLite at least 0.8x memory);
3. publish-to-receipt latency at 20 changes/s for 20 s, N=1000, three runs of each in turn, the median run
   reported (goal: SQLite p99 at most 2 ms above memory);
4. replay of 100,000 retained changes into one subscriber (filled in batches of 1,000: labelled), from
   memory and from disk (goal for disk: at least 100,000 changes/s);
5. the journal file's size after 100,000, 500,000 and 1,000,000 changes under a 100,000-change retention
   (filled in batches of 1,000 per request: labelled; retention must keep the file from growing).

Every step checks loss and order as ``python -m bench`` does. Writes ``bench/results/durable-<time>.json``
and prints a table; ``--quick`` runs small sizes (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    BENCH_DIR,
    DEFAULT_HANDSHAKE,
    FixedRate,
    FullSpeed,
    Loadgen,
    OnePerRequest,
    XiaTarget,
    drive,
    measure_loadgen_capacity,
    run_publish_scenario,
    set_niceness,
    wait_until_quiet,
)

from .__main__ import PUBLISHERS, QUIET_WAIT_S, XIA_SETTINGS, checks, head_seq

JOURNALS = ("memory", "sqlite")


class Journals:
    """Makes the ``[journal]`` settings of each kind; the SQLite ones in temporary directories removed at
    the end."""

    def __init__(self) -> None:
        self.dirs: list[Path] = []

    def settings(self, kind: str, **extra: Any) -> dict[str, Any]:
        if kind == "memory":
            return dict(extra)
        directory = Path(tempfile.mkdtemp(prefix="xia-durable-"))
        self.dirs.append(directory)
        return {"path": str(directory / "data"), **extra}

    def cleanup(self) -> None:
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)


def file_bytes(journal: dict[str, Any]) -> int:
    data = Path(journal["path"])
    return sum(p.stat().st_size for p in data.glob("journal.sqlite3*"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="small sizes, a smoke test")
    args = ap.parse_args()
    set_niceness()
    quick = args.quick
    n = 200 if quick else 1000
    count = 300 if quick else 2000
    rate = FixedRate(20, 3 if quick else 20)
    repeats = 1 if quick else 3
    replay_n = 5000 if quick else 100_000
    fill_marks = [2000, 5000, 10_000] if quick else [100_000, 500_000, 1_000_000]
    retention = 1000 if quick else 100_000
    log_dir = Path(tempfile.mkdtemp(prefix="xia-bench-durable-"))
    journals = Journals()
    report: dict[str, Any] = {"quick": quick, "connections": n, "log_dir": str(log_dir)}

    def step(name: str) -> float:
        print(f"{name} ...", file=sys.stderr, flush=True)
        return time.monotonic()

    try:
        t = step("loadgen capacity")
        wait_until_quiet(timeout_s=QUIET_WAIT_S)
        report["loadgen_capacity"] = measure_loadgen_capacity(n, count, log_dir=log_dir)
        print(f"  {report['loadgen_capacity']['deliveries_per_s']:,.0f} deliveries/s ({time.monotonic() - t:.0f} s)",
              file=sys.stderr)

        # 2. headline: one change per request, V=1
        report["one_per_request"] = {}
        for kind in JOURNALS:
            t = step(f"one change per request, {kind}, N={n}, V=1")
            with XiaTarget(log_dir=log_dir, settings=XIA_SETTINGS, journal=journals.settings(kind)) as target:
                wait_until_quiet(timeout_s=QUIET_WAIT_S)
                res = run_publish_scenario(target, n, OnePerRequest(count, PUBLISHERS), log_dir=log_dir)
            lg = res.loadgen
            report["one_per_request"][kind] = {"deliveries_per_s": lg["deliveries_per_s"],
                                               "server_busy": res.server_cpu_s / (lg["duration_s"] or 1),
                                               **checks(lg)}
            print(f"  {lg['deliveries_per_s']:,.0f} deliveries/s ({time.monotonic() - t:.0f} s)", file=sys.stderr)
        rows = report["one_per_request"]
        report["one_per_request_ratio"] = rows["sqlite"]["deliveries_per_s"] / rows["memory"]["deliveries_per_s"]

        # 3. latency at 20/s, in turn
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in JOURNALS}
        for i in range(repeats):
            for kind in JOURNALS:
                t = step(f"latency {i + 1}/{repeats}, {kind}, {rate.rate_per_s:g}/s for {rate.duration_s:g} s")
                with XiaTarget(log_dir=log_dir, settings=XIA_SETTINGS, journal=journals.settings(kind)) as target:
                    wait_until_quiet(timeout_s=QUIET_WAIT_S)
                    res = run_publish_scenario(target, n, rate, log_dir=log_dir)
                runs[kind].append({"latency_ms": res.loadgen["latency_ms"], **checks(res.loadgen)})
                print(f"  p50 {res.loadgen['latency_ms']['p50']:.2f} ms p99 {res.loadgen['latency_ms']['p99']:.2f} ms",
                      file=sys.stderr)
        report["latency"] = {}
        for kind, results in runs.items():
            by_p99 = sorted(results, key=lambda r: r["latency_ms"]["p99"])
            report["latency"][kind] = {**by_p99[len(by_p99) // 2],
                                       "p99_all_runs": [r["latency_ms"]["p99"] for r in results],
                                       "p50_median": statistics.median(r["latency_ms"]["p50"] for r in results)}

        # 4. replay of retained changes (filled in batches: labelled)
        report["replay"] = {}
        for kind in JOURNALS:
            t = step(f"replay of {replay_n:,} changes, {kind}")
            journal = journals.settings(kind, max_count=replay_n)
            with XiaTarget(log_dir=log_dir, journal=journal) as target:
                start = head_seq(target.ws_url)
                drive(target, FullSpeed(replay_n, batch=1000), timeout_s=600)
                wait_until_quiet(timeout_s=QUIET_WAIT_S)
                handshake = {"Order": {**DEFAULT_HANDSHAKE["Order"], "after_seq": start}}
                gen = Loadgen(target.ws_url, 1, handshakes=[handshake], expect=replay_n, timeout_s=300,
                              log_dir=log_dir)
                try:
                    gen.wait_ready()
                    rep = gen.wait_result(310)
                finally:
                    gen.stop()
            report["replay"][kind] = {"changes_per_s": rep["deliveries_per_s"], **checks(rep)}
            print(f"  {rep['deliveries_per_s']:,.0f} changes/s ({time.monotonic() - t:.0f} s)", file=sys.stderr)

        # 5. file size under retention (filled in batches: labelled)
        t = step(f"file size, {fill_marks[-1]:,} changes under a {retention:,}-change retention")
        journal = journals.settings("sqlite", max_count=retention)
        sizes: dict[int, int] = {}
        with XiaTarget(log_dir=log_dir, journal=journal) as target:
            done = 0
            for mark in fill_marks:
                drive(target, FullSpeed(mark - done, batch=1000), timeout_s=1200)
                done = mark
                sizes[mark] = file_bytes(journal)
                print(f"  after {mark:,}: {sizes[mark] / 2**20:.1f} MiB", file=sys.stderr)
        report["file_size"] = {"retention": retention, "bytes_after": sizes,
                               "seconds": time.monotonic() - t}
    finally:
        journals.cleanup()

    out_dir = BENCH_DIR / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"durable-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    print(render(report))
    print(f"full results: {out.relative_to(BENCH_DIR.parent)}")


def render(r: dict[str, Any]) -> str:
    lines = [f"load generator capacity: {r['loadgen_capacity']['deliveries_per_s']:,.0f} deliveries/s",
             "", "| step | memory | SQLite (--data) | SQLite / memory |", "|---|---|---|---|"]
    one = r["one_per_request"]
    lines.append(f"| one change per request, 8 publishers, N={r['connections']}, V=1: deliveries/s | "
                 f"{one['memory']['deliveries_per_s']:,.0f} | {one['sqlite']['deliveries_per_s']:,.0f} | "
                 f"{r['one_per_request_ratio']:.2f}x |")
    lat = r["latency"]
    for q in ("p50", "p99", "max"):
        m, s = lat["memory"]["latency_ms"][q], lat["sqlite"]["latency_ms"][q]
        lines.append(f"| latency at 20/s, {q} (ms) | {m:.2f} | {s:.2f} | {s - m:+.2f} ms |")
    rep = r["replay"]
    lines.append(f"| replay of retained changes (filled in batches of 1,000), changes/s | "
                 f"{rep['memory']['changes_per_s']:,.0f} | {rep['sqlite']['changes_per_s']:,.0f} | "
                 f"{rep['sqlite']['changes_per_s'] / rep['memory']['changes_per_s']:.2f}x |")
    sizes = r["file_size"]["bytes_after"]
    lines.append("")
    lines.append(f"journal file (journal.sqlite3 and its WAL) under a {r['file_size']['retention']:,}-change "
                 "retention, filled in batches of 1,000 per request: " +
                 ", ".join(f"{int(k):,} changes: {v / 2**20:.1f} MiB" for k, v in sizes.items()))
    complete = all(x["complete"] and not x["out_of_order"] for x in [*one.values(), *rep.values()])
    lines.append(f"loss and order: {'every subscriber got every change, in order' if complete else 'FAILED'}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
