"""End-to-end check of the harness against the reference server, printing the measured figures.

Run from the repository root: ``.venv/bin/python -m bench.harness_selftest [--quick]``
(needs ``npm ci`` in ``bench/node`` once). It runs, each on a fresh server:

* loadgen capacity against ``synthetic_server.js``, 2000 documents, 100 and 1000 clients;
* loadgen latency floor against ``synthetic_server.js`` at 20 documents/s for 10 s, 1000 clients;
* the reference at full speed, 2000 documents, 100 and 1000 clients;
* the reference at 20 documents/s for 10 s, 1000 clients (latency);
* the reference's RSS with 2000 idle subscribed clients.

Before each step it waits (up to 2 minutes) for the machine to be quiet, and it
reports ``other_cpu``, the CPU seconds other processes used during the step: when
that is not near zero, something competed for the two cores and the step's figures
are too low.

``--quick`` runs the same steps with at most 100 clients and 200 documents (about 15 s).
Every figure goes to stdout as a table and, in full, to ``bench/results/selftest-<time>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    BENCH_DIR,
    FixedRate,
    FullSpeed,
    ReferenceTarget,
    ScenarioResult,
    measure_idle_rss,
    measure_loadgen_capacity,
    run_publish_scenario,
    wait_until_quiet,
)


def throughput_row(name: str, result: dict[str, Any], other_cpu_s: float) -> str:
    """One table line for a loadgen ``result``: deliveries/s, checks, loadgen busy fraction, foreign CPU."""
    return (
        f"{name:<40} {result['deliveries_per_s'] or 0:>8,.0f} deliveries/s "
        f"complete={result['complete']} out_of_order={result['out_of_order']} "
        f"min/max={result['per_connection_min']}/{result['per_connection_max']} "
        f"loadgen_busy={result['busy_fraction'] or 0:.2f} other_cpu={other_cpu_s:.2f}s"
    )


def scenario_row(name: str, scenario: ScenarioResult) -> str:
    """:func:`throughput_row` plus the server's CPU seconds per second of delivery."""
    duration = scenario.loadgen["duration_s"] or float("nan")
    row = throughput_row(name, scenario.loadgen, scenario.other_cpu_s)
    return f"{row} server_busy={scenario.server_cpu_s / duration:.2f}"


def latency_row(name: str, result: dict[str, Any], other_cpu_s: float) -> str:
    """One table line for the publish-to-receipt latency of a loadgen ``result``, in ms."""
    latency = result["latency_ms"]
    return (
        f"{name:<40} latency ms p50={latency['p50']:.2f} p90={latency['p90']:.2f} "
        f"p99={latency['p99']:.2f} max={latency['max']:.2f} "
        f"(samples={latency['samples']}, complete={result['complete']}) other_cpu={other_cpu_s:.2f}s"
    )


def main() -> None:
    """Run the steps listed in the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a fast smoke test")
    args = parser.parse_args()
    sizes = [20, 100] if args.quick else [100, 1000]
    count = 200 if args.quick else 2000
    rate = FixedRate(rate_per_s=20, duration_s=3 if args.quick else 10)
    idle_connections = 100 if args.quick else 2000

    log_dir = Path(tempfile.mkdtemp(prefix="xia-bench-selftest-"))
    report: dict[str, Any] = {"log_dir": str(log_dir)}
    lines: list[str] = []

    for n in sizes:
        wait_until_quiet()
        result = measure_loadgen_capacity(n, count, log_dir=log_dir)
        report[f"loadgen_capacity_{n}"] = result
        name = f"synthetic sender, {n} clients x {count}"
        lines.append(throughput_row(name, result, result["other_cpu_s"]))

    n = sizes[-1]
    wait_until_quiet()
    result = measure_loadgen_capacity(n, rate.count, rate_per_s=rate.rate_per_s, log_dir=log_dir)
    report[f"loadgen_latency_floor_{n}"] = result
    name = f"synthetic {rate.rate_per_s:g}/s for {rate.duration_s:g} s, {n} clients"
    lines.append(latency_row(name, result, result["other_cpu_s"]))

    for n in sizes:
        with ReferenceTarget(log_dir=log_dir) as target:
            wait_until_quiet()
            scenario = run_publish_scenario(target, n, FullSpeed(count), log_dir=log_dir)
        report[f"reference_full_speed_{n}"] = dataclasses.asdict(scenario)
        lines.append(scenario_row(f"reference full speed, {n} clients x {count}", scenario))

    n = sizes[-1]
    with ReferenceTarget(log_dir=log_dir) as target:
        wait_until_quiet()
        scenario = run_publish_scenario(target, n, rate, log_dir=log_dir)
    report[f"reference_rate_{n}"] = dataclasses.asdict(scenario)
    name = f"reference {rate.rate_per_s:g}/s for {rate.duration_s:g} s, {n} clients"
    lines.append(latency_row(name, scenario.loadgen, scenario.other_cpu_s))

    with ReferenceTarget(log_dir=log_dir) as target:
        wait_until_quiet()
        idle = measure_idle_rss(target, idle_connections, log_dir=log_dir)
    report[f"reference_idle_rss_{idle_connections}"] = {
        **dataclasses.asdict(idle),
        "kib_per_connection": idle.kib_per_connection,
    }
    lines.append(
        f"{f'reference RSS, {idle_connections} idle clients':<40} {idle.rss_kib_before} KiB -> "
        f"{idle.rss_kib_after} KiB = {idle.kib_per_connection:.1f} KiB per connection"
    )

    results_dir = BENCH_DIR / "results"
    results_dir.mkdir(exist_ok=True)
    out = results_dir / f"selftest-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    print("\n".join(lines))
    print(f"full results: {out}")


if __name__ == "__main__":
    main()
