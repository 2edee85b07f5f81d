"""Cluster mode against one node: what the Redis Streams hop costs, and two nodes against one.

Scenarios, each with the same subscribers (every one receives every change):

* ``memory``: one node on the embedded journal (the baseline);
* ``redis``: one node on Redis Streams (publish -> XADD -> the node's tail -> subscribers);
* ``redis x2``: two nodes on one Redis, the subscribers split between them, every change published to the
  first node (it reaches the second one through the stream).

For each: publish-to-receipt latency at a fixed rate (one change per request), and deliveries/s at full
speed with one change per request from one publisher (each request answered before the next is sent, so
with Redis every change waits for its XADD). On this 2-core machine both nodes run on CPU 0 and the load
generators on CPU 1: two nodes share one core, so ``redis x2`` shows what cluster mode costs per node, not
how it scales (that needs a core per node).

Run from the repository root (about 3 minutes), after ``npm ci --prefix bench/node``::

    .venv/bin/python -m bench.cluster [--connections 1000] [--rate 20] [--seconds 10] [--count 3000]

Redis: ``$REDIS_URL``, else ``redis://127.0.0.1:6379/0``; the keys live under a prefix of their own and are
deleted at the end. Prints a table and writes ``bench/results/cluster-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from xia_broadcast.journal.redis import delete_prefix

from .harness import (
    BENCH_DIR,
    SERVER_CPU,
    BenchError,
    FixedRate,
    FullSpeed,
    Loadgen,
    XiaTarget,
    drive,
    rss_kib,
    set_niceness,
)


class ClusterNode(XiaTarget):
    """``xia-broadcast serve`` with ``--redis`` (None: the embedded journal), its keys under ``prefix``."""

    def __init__(self, redis_url: str | None, prefix: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.redis_url = redis_url
        self.prefix = prefix
        self.name = "xia-broadcast (redis)" if redis_url else "xia-broadcast (memory)"

    def argv(self) -> list[str]:
        argv = super().argv()
        if self.redis_url:
            config = Path(argv[argv.index("--config") + 1])
            config.write_text(config.read_text() + f"\n[redis]\nurl = {json.dumps(self.redis_url)}\n"
                                                   f"prefix = {json.dumps(self.prefix)}\n")
        return argv


def run(nodes: list[ClusterNode], connections: int, profile: FixedRate | FullSpeed, log_dir: Path,
        timeout_s: float = 120.0) -> dict[str, Any]:
    """Subscribe ``connections`` clients split over ``nodes``, publish ``profile`` to the first node, and
    return the deliveries, their rate, and the latency of every client's receipts."""
    share = connections // len(nodes)
    loadgens = [Loadgen(node.ws_url, share, expect=profile.count, timeout_s=timeout_s, log_dir=log_dir)
                for node in nodes]
    try:
        for lg in loadgens:
            lg.wait_ready()
        start = time.monotonic()
        stats = drive(nodes[0], profile, timeout_s)
        results = [lg.wait_result(timeout_s + 10) for lg in loadgens]
        wall = time.monotonic() - start
    finally:
        for lg in loadgens:
            lg.stop()
    deliveries = sum(r["deliveries"] for r in results)
    last = max(r["duration_s"] for r in results)
    return {
        "nodes": len(nodes), "connections": share * len(nodes), "profile": repr(profile),
        "published": stats.published, "publish_s": stats.seconds, "wall_s": wall,
        "deliveries": deliveries, "expected": share * len(nodes) * profile.count,
        "deliveries_per_s": deliveries / last if last > 0 else None,
        "out_of_order": sum(r["out_of_order"] for r in results),
        "latency_ms": [r["latency_ms"] for r in results],
        "server_rss_kib": [rss_kib(n.pid) for n in nodes],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0, help="changes per second of the latency runs")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the latency runs")
    parser.add_argument("--count", type=int, default=3000, help="changes of the full-speed runs")
    args = parser.parse_args(argv)
    set_niceness()
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"xia-bench:{uuid.uuid4().hex[:10]}:"
    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"xia-bench-cluster-{uuid.uuid4().hex[:8]}"
    log_dir.mkdir(parents=True)
    rows: list[dict[str, Any]] = []
    layouts: list[tuple[str, list[str | None]]] = [("memory", [None]), ("redis", [url]), ("redis x2", [url, url])]
    try:
        for label, urls in layouts:
            for kind, profile in (("latency", FixedRate(args.rate, args.seconds)),
                                  ("full speed, 1 change/request", FullSpeed(args.count, batch=1))):
                print(f"{label:9} {kind} ...", file=sys.stderr, flush=True)
                nodes = [ClusterNode(u, prefix, cpu=SERVER_CPU, log_dir=log_dir) for u in urls]
                try:
                    for node in nodes:
                        node.start()
                    result = run(nodes, args.connections, profile, log_dir)
                finally:
                    for node in nodes:
                        node.stop()
                rows.append({"layout": label, "kind": kind, **result})
    except BenchError as exc:
        print(f"benchmark failed: {exc} (logs in {log_dir})", file=sys.stderr)
        return 1
    finally:
        asyncio.run(delete_prefix(url, prefix))
    print("\n| layout | run | clients | deliveries (expected) | deliveries/s | p50 ms | p99 ms | reordered |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        lat = r["latency_ms"]
        p50 = max(x["p50"] for x in lat)
        p99 = max(x["p99"] for x in lat)
        dps = f"{r['deliveries_per_s']:,.0f}" if r["deliveries_per_s"] else "-"
        print(f"| {r['layout']} | {r['kind']} | {r['connections']} | {r['deliveries']:,} ({r['expected']:,}) | "
              f"{dps} | {p50:.2f} | {p99:.2f} | {r['out_of_order']} |")
    out = BENCH_DIR / "results" / f"cluster-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2, default=str))
    print(f"\nwritten to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["ClusterNode", "main", "run"]
