"""Snapshots (``"snapshot": true`` in a subscription) and what keeping the document store costs each change.

    .venv/bin/python -m bench.snapshot [--quick] [--before-python PYTHON]

Each step runs on fresh servers (server pinned to CPU 0; the Node.js snapshot clients, ``bench/node/
snapshot_client.js``, pinned to CPU 1). The store is FILLED with batched publishing (1,000 changes per request:
labelled); nothing is published while a snapshot is measured.

1. ``one_subscriber``: 100,000 documents of about 200 bytes (a JSON record), one subscriber asks for a
   snapshot: seconds from sending the handshake to receiving ``snapshot_done``, and documents/s (goal: under
   1 s); memory backend, then SQLite (``[journal] path``, the setting of ``--data``, in a new temporary
   directory). Three fresh servers of each, one snapshot each: the median is reported, every run beside it.
   Each snapshot must hold exactly 100,000 distinct documents.
2. ``join``: 10,000 documents, 1,000 subscribers of ONE view: the 1,000 WebSockets are opened first, then
   every handshake is sent in one synchronous loop; seconds until every subscriber got ``snapshot_done``
   with exactly 10,000 distinct documents. Server RSS (VmRSS of ``/proc/PID/status`` sampled every 10 ms, and
   VmHWM after resetting it through ``/proc/PID/clear_refs``) with the sockets open, before the handshakes,
   against its peak while the snapshots are sent; the growth is compared with one copy of the encoded
   documents (the bytes one subscriber received). ``xia_encodings`` of ``/metrics`` before and after tells
   how many encodings the 1,000 snapshots took (one per document: one shared pass). ``client_capacity``: the
   same clients against ``bench/synthetic_server.js`` sending pre-built frames of the same sizes, their own
   ceiling; with their CPU seconds per second (``busy_fraction``) it tells whether they were the bottleneck.
3. ``store_cost``: the headline scenario of ``python -m bench`` (one change per request, 8 concurrent
   publishers, N=1000 subscribers, V=1: deliveries/s, as ``bench.durable`` measures it) with this Python's
   ``xia_broadcast`` and with ``--before-python``'s (e.g. a worktree of ``cc13cfa``, the commit before the
   document store, with its own venv), alternately, three runs each (median reported, every run beside it);
   and ``micro``: the in-process publish path, nanoseconds per change of ``MemoryBackend.publish_nowait`` and
   of ``Broadcaster.publish`` (no subscriber) for 100,000 inserts of distinct documents and for 100,000
   updates of 1,000 documents, each Python in its own fresh process pinned to CPU 0, alternately, five
   processes each (median reported, range beside it). Without ``--before-python`` only this Python's code is
   measured. Where each Python imports ``xia_broadcast`` from is printed first and kept in the result.

Every step reports the CPU seconds the rest of the machine used meanwhile (``other_cpu_s``): well above a few
tenths means the step competed with something else. Writes ``bench/results/snapshot-<time>.json`` and prints a
table; ``--quick`` runs small sizes (a smoke test, under a minute on a quiet machine).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.harness import (
    BENCH_DIR,
    LOADGEN_CPU,
    NODE_DIR,
    SERVER_CPU,
    STOP_GRACE_S,
    BenchError,
    Child,
    FullSpeed,
    OnePerRequest,
    XiaTarget,
    cpu_seconds,
    drive,
    fd_limit,
    free_port,
    machine_cpu_seconds,
    make_change,
    measure_loadgen_capacity,
    node_binary,
    own_cpu_seconds,
    rss_kib,
    run_publish_scenario,
    set_niceness,
    wait_until_quiet,
)

from .__main__ import PUBLISHERS, QUIET_WAIT_S, XIA_SETTINGS, checks
from .durable import Journals

ROOT = BENCH_DIR.parent
SNAPSHOT_HANDSHAKE: dict[str, Any] = {"Order": {"data_scope": [], "catalog": {}, "show_hidden": False,
                                                "snapshot": True}}
"""One view: every subscriber of the join step sends this same subscription."""
FILL_BATCH = 1000
"""Changes per request when filling the store (batched publishing: labelled)."""
_quiet_timeout_s = QUIET_WAIT_S


def quiet() -> float:
    """Wait for the machine to be quiet before a measured step (at most 15 s; 3 s with ``--quick``)."""
    return wait_until_quiet(timeout_s=_quiet_timeout_s)


class SnapshotClients:
    """``bench/node/snapshot_client.js`` as a child process: opens ``connections`` sockets, sends every
    handshake at once on :meth:`go`, reports when each holds its snapshot (see that file)."""

    def __init__(self, url: str, connections: int, *, expect: int, id_space: int, timeout_s: float,
                 log_dir: Path, handshake: dict[str, Any] = SNAPSHOT_HANDSHAKE, id_prefix: str = "order-") -> None:
        if connections + 64 > fd_limit():
            raise BenchError(f"{connections} connections need a higher `ulimit -n` than {fd_limit()}")
        self.timeout_s = timeout_s
        argv = [node_binary(), str(NODE_DIR / "snapshot_client.js"), "--url", url,
                "--connections", str(connections), "--handshake", json.dumps(handshake),
                "--expect", str(expect), "--id-space", str(id_space), "--id-prefix", id_prefix,
                "--timeout", str(timeout_s),
                "--connect-timeout", "60"]
        self._child = Child("snapshot-clients", argv, cpu=LOADGEN_CPU, log_dir=log_dir, capture_stdout=True)

    @property
    def pid(self) -> int:
        return self._child.pid

    def wait_open(self) -> dict[str, Any]:
        """Wait until every socket is open (no handshake sent yet)."""
        return self._child.next_event("open", 60 + STOP_GRACE_S)

    def go(self) -> None:
        """Send every handshake now (SIGUSR2)."""
        import signal
        self._child.proc.send_signal(signal.SIGUSR2)

    def wait_result(self) -> dict[str, Any]:
        return self._child.next_event("result", self.timeout_s + STOP_GRACE_S)

    def stop(self) -> None:
        self._child.stop()


class PythonTarget(XiaTarget):
    """``xia-broadcast serve`` run by another Python (e.g. a worktree's venv: the code of another commit)."""

    def __init__(self, python: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.python = python

    def argv(self) -> list[str]:
        return [self.python, *super().argv()[1:]]


def module_file(python: str) -> str:
    """Where ``python`` imports ``xia_broadcast.cli`` (the server's module) from, run in this benchmark's working
    directory as the servers are."""
    code = "import importlib.util; print(importlib.util.find_spec('xia_broadcast.cli').origin)"
    out = subprocess.run([python, "-c", code],
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


class RssPeak:
    """Samples a process's VmRSS every ``interval_s`` in a thread; with :meth:`reset_hwm` the kernel's own peak
    (VmHWM) is read too. :meth:`stop` returns ``(peak KiB, kernel peak KiB or None, samples)``."""

    def __init__(self, pid: int, interval_s: float = 0.01) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak = rss_kib(pid)
        self.samples = 0
        self.hwm_reset = self.reset_hwm()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def reset_hwm(self) -> bool:
        """Reset VmHWM to the current RSS (``echo 5 > /proc/PID/clear_refs``); False where not allowed."""
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.peak = max(self.peak, rss_kib(self.pid))
                self.samples += 1
            except (OSError, BenchError):
                return

    def hwm(self) -> int | None:
        if not self.hwm_reset:
            return None
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return None

    def stop(self) -> tuple[int, int | None, int]:
        self._stop.set()
        self._thread.join(5)
        return self.peak, self.hwm(), self.samples


def scrape(target: XiaTarget) -> dict[str, float]:
    """The counters and gauges of the server's ``/metrics`` (name -> value)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{target.http_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^(xia_[a-z_]+) ([0-9.eE+-]+)$", line)
        if m:
            values[m.group(1)] = float(m.group(2))
    return values


def fill(target: XiaTarget, count: int) -> float:
    """Publish ``count`` distinct documents (batched, :data:`FILL_BATCH` per request); returns the seconds."""
    return drive(target, FullSpeed(count, batch=FILL_BATCH), timeout_s=300).seconds


class CpuSpan:
    """CPU seconds of a server, the snapshot clients and the rest of the machine, from creation to :meth:`close`
    (as :class:`bench.harness.CpuWindow`; "other" well above zero means something else used the cores)."""

    def __init__(self, server_pid: int, client_pid: int) -> None:
        self.server_pid = server_pid
        self.machine, self.own = machine_cpu_seconds(), own_cpu_seconds()
        self.server, self.client = cpu_seconds(server_pid), cpu_seconds(client_pid)

    def close(self, client_result: dict[str, Any]) -> dict[str, float]:
        server = cpu_seconds(self.server_pid) - self.server
        ms = client_result["cpu_ms"]
        client = (ms["user"] + ms["system"]) / 1000 - self.client
        other = machine_cpu_seconds() - self.machine - server - client - (own_cpu_seconds() - self.own)
        return {"server_cpu_s": server, "client_cpu_s": client, "other_cpu_s": other}


def one_subscriber(kind: str, docs: int, runs: int, journals: Journals, log_dir: Path) -> dict[str, Any]:
    """Step 1: ``runs`` fresh servers of ``kind`` (memory, sqlite), each filled with ``docs`` documents, then one
    subscriber's snapshot of them."""
    results = []
    for _ in range(runs):
        with XiaTarget(log_dir=log_dir, journal=journals.settings(kind)) as target:
            fill_s = fill(target, docs)
            quiet()
            clients = SnapshotClients(target.ws_url, 1, expect=docs, id_space=docs, timeout_s=60, log_dir=log_dir)
            try:
                clients.wait_open()
                cpu = CpuSpan(target.pid, clients.pid)
                clients.go()
                res = clients.wait_result()
                res.update(cpu.close(res))
            finally:
                clients.stop()
            res["fill_s"] = fill_s
            results.append(res)
    seconds = [r["done_s"]["max"] if r["done_s"] else float("inf") for r in results]
    median = results[sorted(range(runs), key=lambda k: seconds[k])[runs // 2]]
    return {"documents": docs, "fill_batch": FILL_BATCH, "runs_count": runs,
            "seconds": median["done_s"]["max"] if median["done_s"] else None,
            "documents_per_s": median["documents_per_s"], "seconds_all_runs": seconds,
            "complete_all_runs": all(r["complete"] for r in results),
            "distinct_all_runs": [r["distinct_min"] for r in results],
            "other_cpu_s_max": max(r["other_cpu_s"] for r in results),
            "median_run": median, "runs": results}


def join(connections: int, docs: int, log_dir: Path) -> dict[str, Any]:
    """Step 2: ``connections`` subscribers of one view ask for a snapshot of ``docs`` documents at once."""
    with XiaTarget(log_dir=log_dir, settings=XIA_SETTINGS) as target:
        fill_s = fill(target, docs)
        quiet()
        rss_filled = rss_kib(target.pid)
        clients = SnapshotClients(target.ws_url, connections, expect=docs, id_space=docs, timeout_s=240,
                                  log_dir=log_dir)
        try:
            opened = clients.wait_open()
            time.sleep(0.2)
            rss_open = rss_kib(target.pid)
            before = scrape(target)
            sampler = RssPeak(target.pid)
            cpu = CpuSpan(target.pid, clients.pid)
            clients.go()
            res = clients.wait_result()
            res.update(cpu.close(res))
            peak, hwm, samples = sampler.stop()
            rss_end = rss_kib(target.pid)
            after = scrape(target)
        finally:
            clients.stop()
    one_copy = (res["bytes"] / connections) if connections else 0
    peak_kib = max(peak, hwm or 0)
    growth = (peak_kib - rss_open) * 1024
    return {"connections": connections, "documents": docs, "fill_s": fill_s, "fill_batch": FILL_BATCH,
            "seconds": res["done_s"]["max"] if res["done_s"] else None, "client": res, "open": opened,
            "server_cpu_s": res["server_cpu_s"], "other_cpu_s": res["other_cpu_s"],
            "rss_kib": {"filled_no_connections": rss_filled, "sockets_open": rss_open, "peak_sampled": peak,
                        "peak_hwm": hwm, "peak": peak_kib, "end": rss_end, "samples": samples},
            "peak_growth_bytes": growth, "one_copy_bytes": one_copy,
            "peak_growth_copies": growth / one_copy if one_copy else None,
            "encodings": after.get("xia_encodings_total", 0) - before.get("xia_encodings_total", 0),
            "deliveries_metric": after.get("xia_deliveries_total", 0) - before.get("xia_deliveries_total", 0)}


def client_capacity(connections: int, docs: int, log_dir: Path) -> dict[str, Any]:
    """The snapshot clients' own ceiling: ``bench/synthetic_server.js`` (CPU 0) sends ``docs`` pre-built document
    frames of the benchmark's size, then ``snapshot_done``, to each of ``connections`` clients (CPU 1) once all
    are subscribed, 16 frames per socket write."""
    port = free_port()
    doc = {k: v for k, v in make_change(0, 0)["doc"].items() if k not in ("_id", "ts")}
    last = {"_control": "snapshot_done", "class": "Order", "seq": "", "epoch": ""}
    argv = [node_binary(), str(BENCH_DIR / "synthetic_server.js"), "--port", str(port), "--clients",
            str(connections), "--messages", str(docs), "--doc", json.dumps(doc), "--frames-per-write", "16",
            "--timeout", "300", "--last", json.dumps(last)]
    server = Child("synthetic", argv, cpu=SERVER_CPU, log_dir=log_dir, capture_stdout=True)
    try:
        server.next_event("listening", STOP_GRACE_S)
        quiet()
        clients = SnapshotClients(f"ws://127.0.0.1:{port}/ws", connections, expect=docs, id_space=docs + 1,
                                  id_prefix="synthetic-", timeout_s=240, log_dir=log_dir)
        try:
            clients.wait_open()
            cpu = CpuSpan(server.pid, clients.pid)
            clients.go()
            res = clients.wait_result()
            res.update(cpu.close(res))
        finally:
            clients.stop()
        res["sender"] = server.next_event("sent", STOP_GRACE_S)
        return res
    finally:
        server.stop()


def headline(python: str | None, n: int, count: int, log_dir: Path) -> dict[str, Any]:
    """One run of the headline scenario (V=1) on a fresh server run by ``python`` (None: this one)."""
    kwargs: dict[str, Any] = {"log_dir": log_dir, "settings": XIA_SETTINGS}
    target = XiaTarget(**kwargs) if python is None else PythonTarget(python, **kwargs)
    with target:
        quiet()
        res = run_publish_scenario(target, n, OnePerRequest(count, PUBLISHERS), log_dir=log_dir)
    lg = res.loadgen
    return {"deliveries_per_s": lg["deliveries_per_s"], "server_busy": res.server_cpu_s / (lg["duration_s"] or 1),
            "server_cpu_per_change_us": res.server_cpu_s / count * 1e6, "loadgen_busy": lg["busy_fraction"],
            "loadgen_cpu_s": res.loadgen_cpu_s,
            "publish_requests_per_s": res.publish.published / res.publish.seconds, "other_cpu_s": res.other_cpu_s,
            **checks(lg)}


# -- the in-process micro-measure (run in a child process per Python: ``--micro N``) --------------------------

def micro(n: int) -> dict[str, Any]:
    """Nanoseconds per change of the in-process publish path, with no subscriber, of the ``xia_broadcast`` this
    Python imports: ``MemoryBackend.publish_nowait`` and ``Broadcaster.publish``, for ``n`` inserts of distinct
    documents and for ``n`` updates of 1,000 documents (stored beforehand, untimed). Changes and documents are
    built before the clock starts; the garbage collector runs as in a server."""
    import xia_broadcast
    from xia_broadcast import Broadcaster
    from xia_broadcast.core.change import Change
    from xia_broadcast.journal import MemoryBackend

    docs = [make_change(i, 0)["doc"] for i in range(n)]
    base = docs[:1000]
    updates = [{**base[i % 1000], "lines": i} for i in range(n)]
    out: dict[str, Any] = {"module": xia_broadcast.__file__, "n": n}

    def clock(fn: Any, items: list[Any]) -> float:
        t = time.perf_counter_ns()
        for item in items:
            fn(item)
        return (time.perf_counter_ns() - t) / len(items)

    backend = MemoryBackend()
    out["backend_insert_ns"] = clock(backend.publish_nowait, [Change("Order", "I", "", d) for d in docs])
    backend = MemoryBackend()
    for d in base:
        backend.publish_nowait(Change("Order", "I", "", d))
    out["backend_update_ns"] = clock(backend.publish_nowait, [Change("Order", "U", "", d) for d in updates])

    class Inserts(Broadcaster):
        pass

    out["broadcaster_insert_ns"] = clock(lambda d: Inserts.publish("Order", "I", d), docs)

    class Updates(Broadcaster):
        pass

    for d in base:
        Updates.publish("Order", "I", d)
    out["broadcaster_update_ns"] = clock(lambda d: Updates.publish("Order", "U", d), updates)
    return out


MICRO_KEYS = ("backend_insert_ns", "backend_update_ns", "broadcaster_insert_ns", "broadcaster_update_ns")


def run_micro(python: str, n: int) -> dict[str, Any]:
    """:func:`micro` in a fresh process of ``python`` pinned to the server's CPU."""
    out = subprocess.run(["taskset", "-c", str(SERVER_CPU), python, "-m", "bench.snapshot", "--micro", str(n)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise BenchError(f"micro-measure with {python} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def summarize(values: list[float]) -> dict[str, Any]:
    med = statistics.median(values)
    return {"median": med, "min": min(values), "max": max(values), "all": values,
            "spread": (max(values) - min(values)) / med if med else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="small sizes, a smoke test")
    ap.add_argument("--before-python", help="a Python whose xia_broadcast is the code to compare with "
                    "(e.g. a worktree of cc13cfa, before the document store, with its own venv)")
    ap.add_argument("--micro", type=int, metavar="N", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.micro:
        print(json.dumps(micro(args.micro)))
        return
    set_niceness()
    quick = args.quick
    global _quiet_timeout_s
    _quiet_timeout_s = 3.0 if quick else QUIET_WAIT_S
    one_docs, one_runs = (10_000, 1) if quick else (100_000, 3)
    join_n, join_docs = (100, 2000) if quick else (1000, 10_000)
    head_n, head_count, head_repeats = (200, 300, 1) if quick else (1000, 2000, 3)
    micro_n, micro_repeats = (20_000, 1) if quick else (100_000, 5)
    log_dir = Path(tempfile.mkdtemp(prefix="xia-bench-snapshot-"))
    journals = Journals()
    now = sys.executable
    before = args.before_python
    report: dict[str, Any] = {"quick": quick, "log_dir": str(log_dir),
                              "code": {"current": {"python": now, "module": module_file(now)}}}
    if before:
        report["code"]["before"] = {"python": before, "module": module_file(before)}
    for label, code in report["code"].items():
        print(f"{label} code: xia_broadcast from {code['module']}", file=sys.stderr)
    t_all = time.monotonic()

    def step(name: str) -> float:
        print(f"{name} ...", file=sys.stderr, flush=True)
        return time.monotonic()

    try:
        # 1. one subscriber, a large store
        report["one_subscriber"] = {}
        for kind in ("memory", "sqlite"):
            t = step(f"snapshot of {one_docs:,} documents to 1 subscriber, {kind}")
            r = report["one_subscriber"][kind] = one_subscriber(kind, one_docs, one_runs, journals, log_dir)
            print(f"  {r['seconds']:.3f} s, {r['documents_per_s']:,.0f} documents/s, runs "
                  f"{', '.join(f'{s:.3f}' for s in r['seconds_all_runs'])} s, complete: {r['complete_all_runs']} "
                  f"({time.monotonic() - t:.0f} s)", file=sys.stderr)

        # 2. many subscribers of one view at once
        t = step(f"{join_n:,} subscribers of one view join at once, {join_docs:,} documents")
        j = report["join"] = join(join_n, join_docs, log_dir)
        print(f"  all hold it after {j['seconds']:.2f} s, RSS +{j['peak_growth_bytes'] / 2**20:.1f} MiB at peak "
              f"({j['peak_growth_copies']:.1f} copies), encodings {j['encodings']:,.0f}, complete: "
              f"{j['client']['complete']}, clients busy {j['client']['busy_fraction']:.2f} "
              f"({time.monotonic() - t:.0f} s)", file=sys.stderr)

        t = step(f"the snapshot clients' own ceiling: synthetic sender, {join_n:,} clients x {join_docs:,} documents")
        cap = report["client_capacity"] = client_capacity(join_n, join_docs, log_dir)
        print(f"  {cap['documents_per_s']:,.0f} documents/s, all done after {cap['done_s']['max']:.2f} s, clients "
              f"busy {cap['busy_fraction']:.2f}, complete: {cap['complete']} ({time.monotonic() - t:.0f} s)",
              file=sys.stderr)

        # 3. the store's cost per change: headline scenario, then in-process
        t = step(f"load generator capacity (loadgen.js, synthetic sender), N={head_n}")
        quiet()
        lg_cap = measure_loadgen_capacity(head_n, head_count, log_dir=log_dir)
        print(f"  {lg_cap['deliveries_per_s']:,.0f} deliveries/s ({time.monotonic() - t:.0f} s)", file=sys.stderr)
        pythons = {"current": None, **({"before": before} if before else {})}
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label in pythons}
        for i in range(head_repeats):
            for label, python in reversed(pythons.items()):  # before first in each round
                t = step(f"headline {i + 1}/{head_repeats}, {label} code, one change per request, "
                         f"N={head_n}, V=1")
                r = headline(python, head_n, head_count, log_dir)
                runs[label].append(r)
                print(f"  {r['deliveries_per_s']:,.0f} deliveries/s, server busy {r['server_busy']:.2f} "
                      f"({time.monotonic() - t:.0f} s)", file=sys.stderr)
        report["store_cost"] = {"connections": head_n, "count": head_count, "publishers": PUBLISHERS,
                                "repeats": head_repeats, "headline": {}, "micro": {}, "micro_n": micro_n,
                                "loadgen_capacity": lg_cap,
                                "micro_repeats": micro_repeats}
        for label, results in runs.items():
            report["store_cost"]["headline"][label] = {
                "deliveries_per_s": summarize([r["deliveries_per_s"] for r in results]),
                "server_busy": summarize([r["server_busy"] for r in results]),
                "server_cpu_per_change_us": summarize([r["server_cpu_per_change_us"] for r in results]),
                "loadgen_busy": summarize([r["loadgen_busy"] for r in results]),
                "complete": all(r["complete"] and not r["out_of_order"] for r in results), "runs": results}
        t = step(f"in-process publish path, {micro_n:,} changes, {micro_repeats} processes per code")
        micro_runs: dict[str, list[dict[str, Any]]] = {label: [] for label in pythons}
        for _ in range(micro_repeats):
            for label, python in reversed(pythons.items()):
                micro_runs[label].append(run_micro(python or now, micro_n))
        for label, results in micro_runs.items():
            report["store_cost"]["micro"][label] = {k: summarize([r[k] for r in results]) for k in MICRO_KEYS}
            report["store_cost"]["micro"][label]["module"] = results[0]["module"]
        print(f"  ({time.monotonic() - t:.0f} s)", file=sys.stderr)
    finally:
        journals.cleanup()
    report["seconds"] = time.monotonic() - t_all

    out_dir = BENCH_DIR / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"snapshot-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    print(render(report))
    print(f"full results: {out.relative_to(ROOT)} ({report['seconds']:.0f} s)")


def render(r: dict[str, Any]) -> str:
    one = r["one_subscriber"]
    docs = one["memory"]["documents"]
    lines = [f"1. snapshot of {docs:,} documents (store filled in batches of {FILL_BATCH:,} per request) to ONE "
             "subscriber, handshake sent -> snapshot_done, median of "
             f"{one['memory']['runs_count']} fresh servers:", "",
             "| backend | seconds | documents/s | every run (s) | distinct documents received | server CPU s | "
             "client CPU s | other CPU s (max) |",
             "|---|---:|---:|---|---|---:|---:|---:|"]
    for kind, label in (("memory", "memory"), ("sqlite", "SQLite (--data)")):
        x = one[kind]
        lines.append(f"| {label} | {x['seconds']:.3f} | {x['documents_per_s']:,.0f} | "
                     f"{', '.join(f'{s:.3f}' for s in x['seconds_all_runs'])} | "
                     f"{', '.join(f'{d:,}' for d in x['distinct_all_runs'])}"
                     f"{'' if x['complete_all_runs'] else ' (INCOMPLETE)'} | {x['median_run']['server_cpu_s']:.2f} | "
                     f"{x['median_run']['client_cpu_s']:.2f} | {x['other_cpu_s_max']:.2f} |")
    j = r["join"]
    c = j["client"]
    cap = r["client_capacity"]
    rss = j["rss_kib"]
    lines += ["", f"2. {j['connections']:,} subscribers of ONE view, sockets open, every handshake sent at once, "
              f"{j['documents']:,} documents (memory backend, filled in batches of {FILL_BATCH:,}):", "",
              f"* every subscriber held its snapshot after **{j['seconds']:.2f} s** (snapshot_done: p50 "
              f"{c['done_s']['p50']:.2f} s, first {c['done_s']['min']:.2f} s; confirmations within "
              f"{c['confirmed_s']['max']:.2f} s; handshakes sent in {c['handshakes_sent_s'] * 1000:.1f} ms); "
              f"{c['done']:,}/{c['connections']:,} got snapshot_done, documents per subscriber "
              f"{c['per_connection_min']:,}-{c['per_connection_max']:,}, distinct {c['distinct_min']:,}-"
              f"{c['distinct_max']:,}, duplicates {c['duplicates']}; {c['documents'] / j['seconds']:,.0f} "
              "deliveries/s;",
              f"* server RSS: {rss['filled_no_connections'] / 1024:,.1f} MiB filled, "
              f"{rss['sockets_open'] / 1024:,.1f} MiB with the sockets open, peak {rss['peak'] / 1024:,.1f} MiB "
              f"during the snapshots (sampled {rss['peak_sampled'] / 1024:,.1f}, VmHWM "
              f"{'-' if rss['peak_hwm'] is None else format(rss['peak_hwm'] / 1024, ',.1f')}): growth "
              f"**{j['peak_growth_bytes'] / 2**20:,.1f} MiB = {j['peak_growth_copies']:.1f}x one copy** of the "
              f"encoded documents ({j['one_copy_bytes'] / 2**20:.2f} MiB; {j['connections']:,} copies would be "
              f"{j['one_copy_bytes'] * j['connections'] / 2**30:.2f} GiB);",
              f"* encodings (xia_encodings of /metrics) during the join: {j['encodings']:,.0f} for "
              f"{j['documents']:,} documents; server CPU {j['server_cpu_s']:.1f} s; the rest of the machine "
              f"{j['other_cpu_s']:.1f} CPU s;",
              f"* the snapshot clients (one Node.js process, CPU 1): {c['cpu_s']:.1f} CPU s over "
              f"{c['wall_s']:.1f} s, busy {c['busy_fraction']:.2f}; their own ceiling (synthetic sender of pre-built "
              f"frames, same sizes): {cap['documents_per_s']:,.0f} documents/s, all held after "
              f"{cap['done_s']['max']:.2f} s, busy {cap['busy_fraction']:.2f} (sender CPU "
              f"{cap['server_cpu_s']:.1f} s, other {cap['other_cpu_s']:.1f} s)."]
    sc = r["store_cost"]
    head = sc["headline"]
    lines += ["", f"3. cost of keeping the store: headline scenario (one change per request, {sc['publishers']} "
              f"publishers, N={sc['connections']:,}, V=1, {sc['count']:,} changes), {sc['repeats']} runs each, "
              "alternately:", "",
              "| code | deliveries/s (median) | every run | spread (max-min)/median | server busy | "
              "load generator busy | server CPU per change, us (median) | every run | other CPU s (max) |",
              "|---|---:|---|---:|---:|---:|---:|---|---:|"]
    for label, x in head.items():
        d, cpu = x["deliveries_per_s"], x["server_cpu_per_change_us"]
        lines.append(f"| {label} | {d['median']:,.0f} | {', '.join(f'{v:,.0f}' for v in d['all'])} | "
                     f"{d['spread'] * 100:.1f}% | {x['server_busy']['median']:.2f} | "
                     f"{x['loadgen_busy']['median']:.2f} | {cpu['median']:,.0f} | "
                     f"{', '.join(f'{v:,.0f}' for v in cpu['all'])} | "
                     f"{max(run['other_cpu_s'] for run in x['runs']):.1f} |")
    if "before" in head:
        ratio = head["current"]["deliveries_per_s"]["median"] / head["before"]["deliveries_per_s"]["median"]
        cpu_ratio = (head["current"]["server_cpu_per_change_us"]["median"]
                     / head["before"]["server_cpu_per_change_us"]["median"])
        lines.append(f"\ncurrent / before (medians): deliveries/s {ratio:.3f}x, server CPU per change {cpu_ratio:.3f}x")
    lines.append(f"load generator capacity (loadgen.js against the synthetic sender, N={sc['connections']:,}): "
                 f"{sc['loadgen_capacity']['deliveries_per_s']:,.0f} deliveries/s")
    per_change = head["current"]["server_cpu_per_change_us"]["median"]
    mic = sc["micro"]
    lines += ["", f"in-process publish path, ns per change, {sc['micro_n']:,} changes, no subscriber, median of "
              f"{sc['micro_repeats']} processes (range):", "",
              "| path | " + " | ".join(mic) + (" | current - before (medians) |" if "before" in mic else " |"),
              "|---|" + "---:|" * (len(mic) + ("before" in mic))]
    for key in MICRO_KEYS:
        cells = [f"{mic[label][key]['median']:,.0f} ({mic[label][key]['min']:,.0f}-{mic[label][key]['max']:,.0f})"
                 for label in mic]
        if "before" in mic:
            cells.append(f"{mic['current'][key]['median'] - mic['before'][key]['median']:+,.0f} (minimums: "
                         f"{mic['current'][key]['min'] - mic['before'][key]['min']:+,.0f})")
        lines.append(f"| {key.removesuffix('_ns').replace('_', ' ')} | " + " | ".join(cells) + " |")
    lines.append(f"\nserver CPU per change in the headline scenario (current code, median run): {per_change:,.0f} us")
    complete = (all(x["complete_all_runs"] for x in one.values()) and c["complete"] and cap["complete"]
                and all(x["complete"] for x in head.values()))
    lines.append(f"\nloss and order: {'every check passed' if complete else 'FAILED'}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
