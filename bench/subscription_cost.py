"""What expensive subscriptions cost every change, in-process on one core (no sockets).

    .venv/bin/python -m bench.subscription_cost

Publishes 2,000 changes of one class into a Hub whose views are (a) none, (b) 50 views with the costliest
scope the default limits allow (32 conditions on 8-part paths, all evaluated), (c) 5,000 views each scoped
to its own customer with ``==`` (indexed: a change tests one of them), and shows that scopes over the limits
(a 20,000-part path, 1,500 conditions) are refused at subscribe. Prints changes/s for each.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from xia_broadcast.core.change import Change
from xia_broadcast.errors import SubscriptionError
from xia_broadcast.hub import Hub

from .engine import TakeAtOnce

DOC = {"_id": "d", "a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": "y"}}}}}}}, "customer": "c7", "n": 1}


def changes_per_second(views: int, scope_of: Callable[[int], list[dict[str, Any]]] | None,
                       count: int = 2000) -> float:
    """Changes/s through a Hub with ``views`` views (one subscriber each, its queue taken at once)."""
    hub: Hub[object] = Hub(transport=TakeAtOnce())
    for i in range(views):
        assert scope_of is not None
        hub.subscribe(object(), "Doc", {"data_scope": scope_of(i)}, None)
    start = time.perf_counter()
    for _ in range(count):
        hub.publish_nowait(Change("Doc", "U", "", dict(DOC)))
    return count / (time.perf_counter() - start)


def main() -> None:
    print(f"no views: {changes_per_second(0, None):,.0f} changes/s")
    worst = changes_per_second(50, lambda i: [{"fn": "a.b.c.d.e.f.g.h", "op": "!=", "val": f"x{j}"}
                                              for j in range(32)])
    print(f"50 views x 32 conditions on 8-part paths: {worst:,.0f} changes/s")
    indexed = changes_per_second(5000, lambda i: [{"fn": "customer", "op": "==", "val": f"c{i}"}])
    print(f"5,000 views, customer == c<i> each: {indexed:,.0f} changes/s")
    for label, scope in [("a 20,000-part path", [{"fn": ".".join(["p"] * 20000), "op": "==", "val": 1}]),
                         ("1,500 conditions", [{"fn": "n", "op": ">", "val": j} for j in range(1500)])]:
        try:
            Hub[object]().subscribe(object(), "Doc", {"data_scope": scope})
            print(f"{label}: accepted")
        except SubscriptionError as exc:
            print(f"{label}: refused {exc.code} ({str(exc)[:70]})")


if __name__ == "__main__":
    main()
