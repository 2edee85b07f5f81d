"""Micro-benchmark of the fan-out engine, in-process, no sockets.

    .venv/bin/python -m bench.engine [--subscribers 1000] [--changes 2000]

For V in {1, 10, 100} distinct views (different scopes) over 1,000 subscribers, publishes changes into a
Hub as the server does (the change checked, then journal append, last versions, view evaluation,
projection, encoding, queueing) and reports changes/s and deliveries/s. Its transport takes each
connection's queue and drops it (what a transport would write), so the figure is the engine's own cost.
A scope of view ``v`` is ``amount >= v`` so every view matches (each change reaches every subscriber): the
worst case for deliveries. Loops are bounded by ``--changes``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from typing import Any

from xia_broadcast.core.change import Change, check_change
from xia_broadcast.fanout import Connection
from xia_broadcast.hub import Hub, HubSettings
from xia_broadcast.server.demo import ORDER_SCHEMA
from xia_broadcast.transport import NoTransport


class TakeAtOnce(NoTransport[Any]):
    """A transport that takes every queued message at once (nothing is written: only the engine costs)."""

    def writable(self, conn: Connection[Any]) -> None:
        conn.take()
        conn.scheduled = False


async def run(subscribers: int, views: int, changes: int) -> dict[str, Any]:
    hub: Hub[str] = Hub(settings=HubSettings(queue_messages=10_000_000, queue_bytes=1 << 40),
                         transport=TakeAtOnce(), schemas={"Order": ORDER_SCHEMA})
    for i in range(subscribers):
        v = i % views
        hub.subscribe(f"ws{i}", "Order", {"data_scope": [{"fn": "amount", "op": ">=", "val": v}],
                                          "catalog": {"order_id": None, "customer": None, "amount": None,
                                                      "status": None}})
    assert hub.view_count("Order") == views
    docs = [{"_id": f"O{i % 500}", "order_id": f"O{i % 500}", "customer": "acme", "region": "EU",
             "amount": 1000.0 + i, "status": "paid", "margin": 1.0} for i in range(changes)]
    stats = hub.stats
    d0 = stats.deliveries
    t0 = time.perf_counter()
    for doc in docs:
        hub.publish_nowait(Change("Order", "U", "", doc, check_change(ORDER_SCHEMA, "Order", "U", doc)))
    elapsed = time.perf_counter() - t0
    deliveries = stats.deliveries - d0
    assert deliveries == changes * subscribers, (deliveries, changes * subscribers)
    return {"subscribers": subscribers, "views": views, "changes": changes, "seconds": round(elapsed, 4),
            "changes_per_s": round(changes / elapsed), "deliveries_per_s": round(deliveries / elapsed),
            "encodings": stats.encodings}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--subscribers", type=int, default=1000)
    p.add_argument("--changes", type=int, default=2000)
    args = p.parse_args()
    rows = [asyncio.run(run(args.subscribers, v, args.changes)) for v in (1, 10, 100)]
    print(f"engine micro-benchmark, {platform.python_implementation()} {platform.python_version()}, "
          f"{platform.machine()}")
    print(f"{'subs':>6} {'views':>6} {'changes/s':>10} {'deliveries/s':>13}")
    for r in rows:
        print(f"{r['subscribers']:>6} {r['views']:>6} {r['changes_per_s']:>10} {r['deliveries_per_s']:>13}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
