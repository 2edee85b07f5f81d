"""The snapshot guarantee (DESIGN.md section 9), as a property, on every backend and across two nodes.

Random publishers (inserts, inserts over a stored document, updates that move documents in and out of
scopes and ACLs, deletes) publish concurrently while subscribers with random scopes, catalogs, ACLs and
show_hidden join at random moments with ``"snapshot": true`` over real sockets; some disconnect and resume
(``after_seq`` and ``epoch``), some resume from a position that is gone (they must get ``reset`` and a fresh
snapshot). Each subscriber keeps a collection: snapshot documents and ``I``/``U`` are upserts, ``D``/``X``
removals, ``reset`` clears it.

Checked against a reference written here from the documented semantics (it shares no code with the library):

* after every ``snapshot_done`` and after every later document message, the collection is exactly the
  documents at that seq in the subscriber's scope that its ACL reads, projected by its catalog;
* no version of a document ever arrives after a newer one (until a ``reset``);
* no hidden field ever arrives without show_hidden, no field outside the catalog;
* at the end, every collection equals the expected one computed from the final documents.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

import xia_broadcast.snapshot as snapshot_module
from helpers import REGIONS, until, ws_connect
from xia_broadcast.journal.redis import delete_prefix
from xia_broadcast.server.native import NativeServer

SECRET = "s" * 32
CUSTOMERS = ["acme", "globex", "initech"]
STATUSES = ["new", "paid", "shipped"]
FIELDS = ["order_id", "customer", "region", "amount", "status", "note", "margin"]
IDS = [f"O-{i:06d}" for i in range(1, 41)]

# -- the reference -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """What a subscriber asks for, and the reference of what it may see."""

    scope: tuple[tuple[str, str, Any], ...]
    catalog: tuple[str, ...] | None  # None: every field
    show_hidden: bool
    acl: tuple[str, ...] | None  # object patterns with read: "*" (every order), "customer:<c>", "key:<id>"

    def request(self) -> dict[str, Any]:
        return {"data_scope": [{"fn": f, "op": o, "val": v} for f, o, v in self.scope],
                "catalog": None if self.catalog is None else {name: None for name in self.catalog},
                "show_hidden": self.show_hidden, "snapshot": True}

    def acl_claim(self) -> dict[str, Any]:
        content = []
        for item in self.acl or ("*",):
            if item == "*":
                content.append({"obj": "Order/*", "act": "read"})
            elif item.startswith("customer:"):
                content.append({"obj": f"Order/customer/{item[9:]}", "act": "read"})
            else:
                content.append({"obj": f"Order/key/{item[4:]}", "act": "read"})
        return {"content": content}

    def sees(self, doc: dict[str, Any]) -> bool:
        allowed = self.acl is None or any(
            item == "*" or item == f"customer:{doc['customer']}" or item == f"key:{doc['order_id']}"
            for item in self.acl)
        return allowed and all(_holds(doc.get(f), o, v) for f, o, v in self.scope)

    def project(self, doc: dict[str, Any]) -> dict[str, Any]:
        names = FIELDS if self.catalog is None else self.catalog
        out = {"_id": doc["_id"]}
        for name in names:
            if name == "margin" and not self.show_hidden:
                continue
            if name in doc:
                out[name] = doc[name]
        return out

    def expected(self, state: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {i: self.project(d) for i, d in state.items() if self.sees(d)}


def _holds(value: Any, op: str, val: Any) -> bool:
    if op == "==":
        return value == val
    if op == "!=":
        return value != val
    if op == "in":
        return value in val
    if value is None or isinstance(value, str) != isinstance(val, str):
        return False  # a type mismatch is out of scope
    return {"<": value < val, "<=": value <= val, ">": value > val, ">=": value >= val}[op]


def random_spec(rng: random.Random) -> Spec:
    conditions = [("region", "==", rng.choice(REGIONS)), ("amount", ">=", float(rng.randrange(0, 100, 10))),
                  ("region", "in", rng.sample(REGIONS, 2)), ("customer", "!=", rng.choice(CUSTOMERS)),
                  ("status", "==", "new"), ("amount", "<", float(rng.randrange(20, 100, 10)))]
    scope = tuple(rng.sample(conditions, rng.choice([0, 1, 1, 2])))
    catalog = rng.choice([None, ("region", "amount"), ("customer", "status", "note"), ("amount", "margin")])
    acl = rng.choice([None, ("*",), ("customer:acme",), ("customer:acme", "customer:globex"),
                      tuple(f"key:{i}" for i in rng.sample(IDS, 8))])
    return Spec(scope, catalog, rng.random() < 0.4, acl)


class Published:
    """Every change published, by seq: the state of the documents at any seq."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, str, dict[str, Any]]] = []

    def state_at(self, seq: str) -> dict[str, dict[str, Any]]:
        state: dict[str, dict[str, Any]] = {}
        for s, op, doc in sorted(self.changes, key=lambda c: c[0]):
            if s > seq:
                break
            if op == "D":
                state.pop(doc["_id"], None)
            else:
                state[doc["_id"]] = doc
        return state


# -- a subscriber keeping a collection -------------------------------------------------------------------


@dataclass
class Subscriber:
    name: str
    spec: Spec
    token: str
    #: the documents held, and the seq of the version held of each
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    complete: bool = False
    last_seq: str = ""
    epoch: str = ""
    snapshots: int = 0
    resets: int = 0
    checks: int = 0
    failures: list[str] = field(default_factory=list)
    #: (seq, the collection at it) for every check
    held: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def handshake(self, *, resume: bool, bogus: bool = False) -> bytes:
        request = self.spec.request()
        if resume and self.complete:
            request["after_seq"] = self.last_seq
            request["epoch"] = "0000000000000-deadbeef" if bogus else self.epoch
        return orjson.dumps({"Order": request, "_header": {"Authorization": f"Bearer {self.token}"}})

    def start_over(self) -> None:
        self.docs.clear()
        self.versions.clear()
        self.complete = False

    def apply(self, msg: dict[str, Any], published: Published) -> None:
        control = msg.get("_control")
        if control == "reset":
            self.resets += 1
            self.start_over()
            return
        if control == "snapshot_done":
            self.snapshots += 1
            self.complete, self.last_seq, self.epoch = True, msg["seq"], msg["epoch"]
            self.check(msg["seq"], published)
            return
        if control is not None:
            return
        if "doc_class" not in msg:  # the confirmation
            return
        body, seq, op = msg["message"], msg["seq"], msg["op"]
        if not self.spec.show_hidden and "margin" in body:
            self.failures.append(f"{self.name}: hidden field margin arrived: {msg}")
        allowed = set(FIELDS if self.spec.catalog is None else self.spec.catalog) | {"_id"}
        if set(body) - allowed:
            self.failures.append(f"{self.name}: fields outside the catalog: {msg}")
        doc_id = body["_id"]
        held = self.versions.get(doc_id)
        if held is not None and seq < held:
            self.failures.append(f"{self.name}: {doc_id} at {seq} arrived after its version {held}")
        if op in ("I", "U"):
            self.docs[doc_id], self.versions[doc_id] = body, seq
        else:
            self.docs.pop(doc_id, None)
            self.versions.pop(doc_id, None)
        if self.complete:
            self.last_seq = seq
            self.check(seq, published)

    def check(self, seq: str, published: Published) -> None:
        """Keep the collection as it is at ``seq``, to compare once every publish has answered (a change
        may reach a subscriber before its publisher hears its seq)."""
        self.checks += 1
        self.held.append((seq, dict(self.docs)))

    def verify(self, published: Published) -> None:
        for seq, docs in self.held:
            expected = self.spec.expected(published.state_at(seq))
            if docs != expected:
                missing = sorted(set(expected) - set(docs))
                extra = sorted(set(docs) - set(expected))
                wrong = sorted(i for i in set(expected) & set(docs) if expected[i] != docs[i])
                self.failures.append(f"{self.name} at {seq}: missing {missing}, extra {extra}, wrong {wrong} "
                                     f"(spec {self.spec})")


async def run_subscriber(sub: Subscriber, urls: list[str], published: Published, rng: random.Random,
                         stop: asyncio.Event) -> None:
    """Connect, keep the collection; now and then drop the connection and resume (on any node)."""
    resume = False
    while not stop.is_set():
        bogus = resume and sub.complete and rng.random() < 0.25
        if resume and not sub.complete:
            sub.start_over()  # dropped before snapshot_done: start over with a fresh snapshot
        ws: ClientConnection
        async with ws_connect(rng.choice(urls)) as ws:
            await ws.send(sub.handshake(resume=resume, bogus=bogus))
            stay = rng.uniform(0.05, 0.3)
            deadline = time.monotonic() + stay
            try:
                while not stop.is_set():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        raw = await asyncio.wait_for(ws.recv(), left)
                    except TimeoutError:
                        break
                    sub.apply(orjson.loads(raw), published)
            except ConnectionClosed as closed:
                sub.failures.append(f"{sub.name}: closed by the server: {closed}")
                return
        if stop.is_set():
            return
        resume = True
        await asyncio.sleep(rng.uniform(0, 0.1))


async def settle(sub: Subscriber, url: str, published: Published, final_seq: str) -> None:
    """Reconnect a last time and read until the collection is complete at the final seq."""
    async with ws_connect(url) as ws:
        if not sub.complete:
            sub.start_over()
        await ws.send(sub.handshake(resume=True))
        final = sub.spec.expected(published.state_at(final_seq))
        deadline = time.monotonic() + 15
        while not (sub.complete and sub.docs == final):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                sub.apply(orjson.loads(await asyncio.wait_for(ws.recv(), min(left, 0.5))), published)
        if sub.docs != final:
            sub.failures.append(f"{sub.name}: final collection differs: missing {sorted(set(final) - set(sub.docs))}, "
                                f"extra {sorted(set(sub.docs) - set(final))}")


async def publisher(publish: Callable[..., Any], published: Published, state: dict[str, Any],
                    rng: random.Random, count: int) -> None:
    stale: dict[str, dict[str, Any]] = {}  # an older version of each document, for stale previous states
    for _ in range(count):
        doc_id = rng.choice(IDS)
        current = state.get(doc_id)
        if current is None:
            op = "I"
            doc = {"_id": doc_id, "order_id": doc_id, "customer": rng.choice(CUSTOMERS), "region": rng.choice(REGIONS),
                   "amount": float(rng.randrange(0, 100)), "status": "new", "note": "n", "margin": rng.random()}
        else:
            r = rng.random()
            doc = dict(current)
            if r < 0.15:
                op = "D"
            else:
                op = "I" if r < 0.2 else "U"  # an insert over a stored document, now and then
                for name in rng.sample(["customer", "region", "amount", "status", "note"], rng.randint(1, 2)):
                    doc[name] = {"customer": lambda: rng.choice(CUSTOMERS), "region": lambda: rng.choice(REGIONS),
                                 "amount": lambda: float(rng.randrange(0, 100)),
                                 "status": lambda: rng.choice(STATUSES), "note": lambda: rng.choice("abc")}[name]()
        if op == "D":
            state.pop(doc_id, None)
        else:
            state[doc_id] = doc
        # now and then a stale previous state (two publishers racing): what subscribers hold must win
        previous = stale.get(doc_id) if current is not None and rng.random() < 0.1 else None
        if current is not None:
            stale[doc_id] = current
        seq = await publish("Order", op, doc, previous)
        published.changes.append((seq, op, doc))
        await asyncio.sleep(rng.uniform(0, 0.01))


# -- the runs ------------------------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "redis", "redis-two-nodes"])
async def nodes(request: pytest.FixtureRequest, make_server: Callable[..., Any], tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[NativeServer]]:
    kind: str = request.param
    # a short journal: subscribers that stay away for a while find their position gone (reset); small store
    # pages: a snapshot is read over many pages while publishers publish
    monkeypatch.setattr(snapshot_module, "PAGE", 3)
    base: dict[str, Any] = {"jwt_secret": SECRET, "show_hidden_requires_grant": True, "journal_max_count": 150}
    if kind == "memory":
        yield [await make_server(**base)]
    elif kind == "sqlite":
        yield [await make_server(data=str(tmp_path / "data"), **base)]
    else:
        url = request.getfixturevalue("redis_url")
        prefix = f"xia-test:{uuid.uuid4().hex[:12]}:"
        count = 2 if kind == "redis-two-nodes" else 1
        servers = [await make_server(redis_url=url, redis_prefix=prefix, **base) for _ in range(count)]
        for s in servers:
            await until(lambda s=s: s.service.hub.ready, what="the node tails Redis")
        try:
            yield servers
        finally:
            await delete_prefix(url, prefix)


@pytest.mark.parametrize("seed", [1, 2])
async def test_every_snapshot_subscriber_holds_exactly_its_documents_at_every_seq(
        nodes: list[NativeServer], seed: int) -> None:
    rng = random.Random(seed)
    urls = [f"ws://127.0.0.1:{s.port}/ws" for s in nodes]
    published = Published()
    state: dict[str, Any] = {}
    publish = nodes[0].service.publish
    # documents before anyone subscribes, so that the first snapshots are not empty
    await publisher(publish, published, state, random.Random(seed + 100), 60)
    subscribers = []
    for i in range(8):
        spec = random_spec(rng)
        claims = {"sub": f"u{i}", "exp": int(time.time()) + 600, "show_hidden": spec.show_hidden}
        if spec.acl is not None:
            claims["acl"] = spec.acl_claim()
        else:
            claims["acl"] = {"content": [{"obj": "*", "act": "read"}]}
        subscribers.append(Subscriber(f"s{i}({seed})", spec, jwt.encode(claims, SECRET, algorithm="HS256")))
    stop = asyncio.Event()

    async def late(sub: Subscriber) -> None:
        await asyncio.sleep(rng.uniform(0, 0.5))  # joins at a random moment while publishers publish
        await run_subscriber(sub, urls, published, random.Random(rng.random()), stop)

    tasks = [asyncio.ensure_future(late(sub)) for sub in subscribers]
    await asyncio.gather(publisher(publish, published, state, random.Random(seed + 1), 250),
                         publisher(publish, published, state, random.Random(seed + 2), 250))
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    final_seq = max(seq for seq, _, _ in published.changes)
    await asyncio.gather(*(settle(sub, rng.choice(urls), published, final_seq) for sub in subscribers))
    for sub in subscribers:
        sub.verify(published)
    failures = [f for sub in subscribers for f in sub.failures]
    assert not failures, "\n".join(failures[:10])
    # the run exercised what it claims to: snapshots, resumes through them, resets, checks at many seqs
    assert sum(sub.snapshots for sub in subscribers) >= 2 * len(subscribers)
    assert sum(sub.resets for sub in subscribers) >= 1
    assert sum(sub.checks for sub in subscribers) >= 100
