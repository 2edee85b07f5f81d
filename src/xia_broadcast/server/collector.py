"""The garbage-collector policy of a running server: long-lived objects kept out of the collector's passes.

CPython's cycle collector now and then makes a full pass over every object it tracks, and the event loop
waits for it: with 19,000 subscribers (about 50 tracked objects each) and a full journal, one pass holds the
loop for close to half a second. Nearly all of those objects live as long as their connection (the socket,
its parser, queue, member, view, compiled scope) or their retention (journaled changes), and none of them is
ever freed by the collector: they are freed by reference counting when their connection goes or their change
is dropped.

So every ``gc_freeze_interval`` seconds (more often while that collection would take over 5 ms, and after
every 256 subscriptions, for connection storms) the server collects the young generations
(``gc.collect(1)``: they hold only what was made since the last freeze) and then moves every object that
survived into the collector's permanent generation (``gc.freeze()``, a constant-time splice). Frozen
objects are still freed by reference counting; the collector just never visits them again. The full passes
that remain visit only what became long-lived within one interval.

While the policy runs, CPython's own young collections start at :data:`YOUNG_THRESHOLD` tracked allocations
in excess of deallocations, not 700: a fan-out makes one tracked message per distinct view and change,
held until the next write (thousands at a time, all still alive), so at 700 the collector walked them
several times per change and moved them to older generations only for them to die there. At 20,000 it
rarely starts between two freezes, and one such collection walks at most about that many objects (20,000
queued messages: 0.8 ms on the 2-core machine of docs/benchmarks.md).

The price: an object frozen and later dropped *in a reference cycle* is never reclaimed. The server's own
long-lived objects break their cycles when they go (tests/test_collector.py churns connections, views,
snapshots and refusals with freezing on and fails on any leaked cycle of them); a cycle made by an
application's hooks (an ACL callback, a document object) could leak. ``xia_gc_frozen_objects`` in
``/metrics`` shows the frozen count: it follows the connections and the journal, and grows without bound
only when something leaks. ``gc_freeze_interval = 0`` leaves the collector as Python sets it.

Freezing and the threshold are process-wide. When the last server of a process stops, its objects are
unfrozen and the thresholds it found are set again, so that a process that goes on (a test suite, an
application that embeds the server) gets its collector back as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time

#: subscriptions after which what they made is frozen at once, not at the end of the interval: in a
#: connection storm (thousands a second, about 50 long-lived objects each) a full pass between two freezes
#: would otherwise walk up to a second's worth of new connections
FREEZE_AFTER_SUBSCRIPTIONS = 256

#: a freeze's young collection should take at most this long: past it the interval is halved (down to
#: :data:`MIN_INTERVAL`), under a fifth of it doubled again (up to ``gc_freeze_interval``). CPython starts a
#: young collection when tracked allocations outnumber deallocations by its threshold, and a server that frees old
#: objects (changes leaving the journal) as fast as it makes new ones never gets there: everything made since
#: the last freeze is young (80,000 objects, 19 ms to collect, after a second at 19,000 changes/s)
YOUNG_COLLECTION_BUDGET = 0.005
#: the shortest interval the policy adapts down to, in seconds
MIN_INTERVAL = 0.05

#: CPython's first collection threshold while a policy runs (its own default is 700; a larger one set by the
#: application is kept, and 0, automatic collection off): see the module's docstring
YOUNG_THRESHOLD = 20_000

#: servers of this process whose policy is running (freezing is process-wide: unfreeze when none is left)
_running = 0
#: the collector's thresholds when the first of them started (set again when the last stops)
_thresholds: tuple[int, int, int] | None = None


class CollectorPolicy:
    """Freezes what survived the young generations every ``interval`` seconds (0: does nothing)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        #: the interval in force: ``interval``, shortened while young collections take longer than
        #: :data:`YOUNG_COLLECTION_BUDGET`
        self.current = interval
        #: freezes made by this policy
        self.freezes = 0
        #: subscriptions since the last freeze
        self._fresh = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        global _running, _thresholds
        if self.interval <= 0 or self._task is not None:
            return
        if _running == 0:
            _thresholds = gc.get_threshold()
            if _thresholds[0]:  # 0: the application turned automatic collection off; it stays off
                gc.set_threshold(max(_thresholds[0], YOUNG_THRESHOLD), *_thresholds[1:])
        _running += 1
        self.freeze()  # what the process built to start (modules, settings, schemas) is never visited again
        self._task = asyncio.get_running_loop().create_task(self._run(), name="xia-gc-freeze")

    def freeze(self) -> None:
        """Collect the young generations, then freeze everything that survived; adapt the interval to how long
        the collection took."""
        started = time.perf_counter()
        gc.collect(1)
        gc.freeze()
        took = time.perf_counter() - started
        self.freezes += 1
        self._fresh = 0
        if took > YOUNG_COLLECTION_BUDGET:
            self.current = max(min(MIN_INTERVAL, self.interval), self.current / 2)
        elif took < YOUNG_COLLECTION_BUDGET / 5:
            self.current = min(self.interval, self.current * 2)

    def note_subscribed(self) -> None:
        """A subscription was made: freeze now when :data:`FREEZE_AFTER_SUBSCRIPTIONS` were since the last."""
        if self._task is not None:
            self._fresh += 1
            if self._fresh >= FREEZE_AFTER_SUBSCRIPTIONS:
                self.freeze()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.current)
            self.freeze()

    async def stop(self) -> None:
        global _running, _thresholds
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        _running -= 1
        if _running == 0:
            gc.unfreeze()
            if _thresholds is not None:
                gc.set_threshold(*_thresholds)
                _thresholds = None
