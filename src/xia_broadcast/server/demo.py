"""The demo: a built-in ``Order`` class and a stream of realistic inserts, updates and deletes of it."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Any

from ..core.schema import DocSchema
from ..journal import BackendUnavailable

if TYPE_CHECKING:
    from .service import Service

ORDER_SCHEMA = DocSchema.from_dict({
    "key": ["order_id"],
    "privilege_keys": {"customer": ["customer"]},
    "fields": {
        "order_id": "str",
        "customer": "str",
        "region": "str",
        "amount": "float",
        "status": "str",
        "margin": {"type": "float", "hidden": True},
    },
}, "Order")

_CUSTOMERS = ["acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka"]
_REGIONS = ["EU", "US", "APAC"]
_NEXT = {"new": "paid", "paid": "shipped", "shipped": "delivered"}

log = logging.getLogger("xia_broadcast.demo")


class OrderStream:
    """Generates plausible order life cycles: created (its amount sometimes revised before payment, so that
    it may leave or enter a view scoped on the amount), paid, shipped, delivered, sometimes cancelled."""

    def __init__(self, seed: int | None = None) -> None:
        self.rng = random.Random(seed)
        self.open: dict[str, dict[str, Any]] = {}
        self.counter = 0

    def next_change(self) -> tuple[str, dict[str, Any]]:
        rng = self.rng
        if len(self.open) < 5 or rng.random() < 0.35:
            self.counter += 1
            oid = f"O-{self.counter:06d}"
            amount = round(rng.uniform(10, 2000), 2)
            doc: dict[str, Any] = {"_id": oid, "order_id": oid, "customer": rng.choice(_CUSTOMERS),
                   "region": rng.choice(_REGIONS), "amount": amount, "status": "new",
                   "margin": round(amount * rng.uniform(0.05, 0.4), 2)}
            self.open[oid] = doc
            return "I", dict(doc)
        oid = rng.choice(list(self.open))
        doc = self.open[oid]
        if doc["status"] == "delivered" or rng.random() < 0.05:
            del self.open[oid]
            return "D", dict(doc)
        if doc["status"] == "new" and rng.random() < 0.3:  # the amount is revised before payment
            doc["amount"] = round(float(doc["amount"]) * rng.uniform(0.5, 1.5), 2)
            return "U", dict(doc)
        doc["status"] = _NEXT.get(str(doc["status"]), "delivered")
        return "U", dict(doc)


async def run_demo(service: Service[Any], rate: float, seed: int | None = None) -> None:
    """Publish ``rate`` Order changes per second until cancelled."""
    stream = OrderStream(seed)
    delay = 1.0 / rate if rate > 0 else 1.0
    while True:
        op, doc = stream.next_change()
        try:
            await service.publish("Order", op, doc)
        except BackendUnavailable as exc:  # cluster mode with Redis away: the demo waits for it
            log.warning("demo change not published: %s", exc)
        await asyncio.sleep(delay)
