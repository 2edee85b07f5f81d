"""What a change costs the Hub with many views, with and without the view index and shared compiled scopes.

    .venv/bin/python -m bench.views [--views 1000] [--changes 300]

In-process (the Hub on the memory journal, a transport that writes nothing: this measures deciding,
projecting and encoding, not sockets), one subscriber per view, every change an update of one of 100
documents (but in ``distinct catalogs, inserts``). Each scenario runs three ways in the same process,
alternated, best of 7 rounds:

* ``scan``: every view tested by every change (the view index files nothing, as it did for ranges and
  ``in`` before), each view with a compiled scope of its own;
* ``own scopes``: the view index on, each view with a compiled scope and an ACL of its own;
* ``shared``: the view index on, compiled scopes shared between views with the same scope and ACL decisions
  between views whose ACLs grant the same on the class (the server).

Scenarios (N = ``--views``):

* ``distinct catalogs``: the throughput benchmark's costly row: view k has scope ``amount >= -k``, its own
  ACL and its own catalog; every change matches every view (nothing for an index to skip);
* ``distinct catalogs, inserts``: the same views, every change an insert of a new document, as in the
  throughput benchmark: a change without a previous state is not tested again against a view whose scope is
  the one condition the index found it by;
* ``ranges, 1% match``: view k has ``10 k <= amount < 10 k + 10``; it is filed by its lower bound, so a
  change with amount a is tested against the views whose lower bound is at most a (the index's candidates),
  and one of those holds;
* ``in, 2 of N``: view k has ``customer in [c<k>, c<k+1>]``;
* ``one scope, N ACLs``: every view has the same two-condition scope and its own ACL (one user each): the
  scope is tested once per change when shared, N times when not.

Prints one markdown table: microseconds per change and per view, and the ratio of each way to ``scan``.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from typing import Any

import xia_broadcast.hub as hub_module
from xia_broadcast.core.change import Change
from xia_broadcast.core.schema import DocSchema
from xia_broadcast.fanout import SharedAcl, SharedScope
from xia_broadcast.hub import Hub, HubSettings
from xia_broadcast.transport import NoTransport

ORDER = DocSchema.from_dict({"fields": {"customer": "str", "amount": "float", "status": "str", "ts": "int"}},
                            "Order")


def scenario_params(name: str, n: int) -> Callable[[int], dict[str, Any]]:
    def acl(k: int) -> dict[str, Any]:
        return {"content": [{"obj": "Order/*", "act": "read"}, {"obj": f"Report/key/{k}", "act": "read"}]}

    if name.startswith("distinct catalogs"):
        return lambda k: {"data_scope": [{"fn": "amount", "op": ">=", "val": -k}], "acl": acl(k),
                          "catalog": {"ts": None, "customer": None, "amount": None, "status": None,
                                      f"absent_{k}": None}}
    if name == "ranges, 1% match":
        return lambda k: {"data_scope": [{"fn": "amount", "op": ">=", "val": 10.0 * k},
                                         {"fn": "amount", "op": "<", "val": 10.0 * k + 10}]}
    if name == "in, 2 of N":
        return lambda k: {"data_scope": [{"fn": "customer", "op": "in", "val": [f"c{k}", f"c{(k + 1) % n}"]}]}
    if name == "one scope, N ACLs":
        return lambda k: {"data_scope": [{"fn": "status", "op": "==", "val": "new"},
                                         {"fn": "amount", "op": ">=", "val": 0}], "acl": acl(k)}
    raise ValueError(name)


SCENARIOS = ("distinct catalogs", "distinct catalogs, inserts", "ranges, 1% match", "in, 2 of N", "one scope, N ACLs")
WAYS = ("scan", "own scopes", "shared")


def build(name: str, way: str, n: int) -> Hub[str]:
    """A Hub with ``n`` subscribers of scenario ``name``, set up the ``way`` asked."""
    saved_key = hub_module.index_key
    if way == "scan":
        hub_module.index_key = lambda scope: None  # type: ignore[assignment]
    try:
        hub: Hub[str] = Hub(transport=NoTransport(), schemas={"Order": ORDER},
                            settings=HubSettings(queue_messages=10 ** 6, queue_bytes=10 ** 9,
                                                 total_queue_bytes=10 ** 11))
        if way in ("scan", "own scopes"):  # each view its own compiled scope and ACL: nothing decided once
            hub.sharing.scope = lambda canonical, compile_scope: SharedScope(compile_scope())  # type: ignore
            hub.sharing.acl = lambda acl, class_name: SharedAcl(acl)  # type: ignore
        params = scenario_params(name, n)
        for k in range(n):
            hub.subscribe(f"c{k}", "Order", params(k))
    finally:
        hub_module.index_key = saved_key
    return hub


def run(hub: Hub[str], n: int, changes: int, start: int, inserts: bool = False) -> int:
    """Publish ``changes`` updates (or inserts of new documents); returns the deliveries. Queues are emptied
    after each change."""
    delivered = 0
    for i in range(start, start + changes):
        doc = {"_id": f"n{i}" if inserts else f"o{i % 100}", "customer": f"c{i % n}",
               "amount": float((i * 7919) % (10 * n)), "status": "new", "ts": i}
        hub.publish_nowait(Change("Order", "I" if inserts else "U", "", data=doc, schema=ORDER))
        for conn in hub.connections.values():
            if conn.queue:
                delivered += len(conn.queue)
                conn.queue.clear()
                conn.queued_bytes = 0
            conn.scheduled = False
        hub.queued.queued = 0
    return delivered


def measure(n: int, changes: int, rounds: int = 7) -> list[dict[str, Any]]:
    rows = []
    for name in SCENARIOS:
        hubs = {way: build(name, way, n) for way in WAYS}
        gc.collect()
        gc.freeze()
        best = dict.fromkeys(WAYS, float("inf"))
        deliveries: dict[str, int] = {}
        for r in range(rounds):
            for way in WAYS:
                t = time.perf_counter()
                deliveries[way] = run(hubs[way], n, changes, r * changes, inserts=name.endswith("inserts"))
                best[way] = min(best[way], (time.perf_counter() - t) / changes)
        gc.unfreeze()
        assert len(set(deliveries.values())) == 1, f"{name}: the three ways delivered differently {deliveries}"
        rows.append({"scenario": name, "views": n, "deliveries_per_change": deliveries["shared"] / changes,
                     **{f"us_{w}": best[w] * 1e6 for w in WAYS}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--views", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=300, help="changes per round (7 rounds per way)")
    args = parser.parse_args()
    rows = measure(args.views, args.changes)
    print(f"\n{args.views:,} views, one subscriber each; microseconds per change (best of 7 rounds of "
          f"{args.changes}); ratio: scan time / this way's time\n")
    print("| scenario | deliveries per change | scan | own scopes (index on) | shared (the server) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        scan = r["us_scan"]
        print(f"| {r['scenario']} | {r['deliveries_per_change']:.1f} | {scan:,.0f} us "
              f"({scan / r['views']:.2f} us/view) | {r['us_own scopes']:,.0f} us ({scan / r['us_own scopes']:.2f}x) "
              f"| {r['us_shared']:,.0f} us ({scan / r['us_shared']:.2f}x) |")


if __name__ == "__main__":
    main()
