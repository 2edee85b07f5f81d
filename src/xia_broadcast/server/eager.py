"""Running a coroutine eagerly: at once, up to its first wait, in the caller's loop turn.

An HTTP handler is a coroutine (a publish may wait for a backend), but on the memory journal it never
waits. Run in a task, it would start one loop turn later and its answer be written one turn after that:
every request would cross the loop twice, and the writes of what it fanned out would no longer share
the turn in which its request was read. :func:`run_eagerly` runs it now; only a handler that really waits
continues in a task (what Python 3.12's ``asyncio.eager_task_factory`` does for every task).

What runs before the first wait runs outside any task, so it must not need one (``asyncio.timeout``,
``asyncio.current_task``): a handler that does I/O awaits it in a task of its own, as ``Hub.publish`` does
for a backend that waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


def run_eagerly(coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
    """Run ``coro`` now until it finishes or first waits; returns its outcome as a future.

    Finished (returned, or raised an :class:`Exception`): the future is done already. Waiting: the rest of
    ``coro`` runs in a task, which is the future returned (cancel it to cancel the coroutine).
    """
    loop = asyncio.get_running_loop()
    try:
        waiting = coro.send(None)
    except StopIteration as stop:
        done: asyncio.Future[T] = loop.create_future()
        done.set_result(stop.value)
        return done
    except Exception as exc:
        done = loop.create_future()
        done.set_exception(exc)
        return done
    return loop.create_task(_rest(coro, waiting))


async def _rest(coro: Coroutine[Any, Any, T], waiting: Any) -> T:
    result: T = await _Resumed(coro, waiting)
    return result


class _Resumed:
    """The rest of a coroutine that was started by hand and is suspended on ``waiting`` (what it yielded:
    a future, or None for a bare yield). Awaited in a task, it hands ``waiting`` to the task as if the
    coroutine itself had yielded it, then drives the coroutine on, as ``await`` would have."""

    __slots__ = ("coro", "waiting")

    def __init__(self, coro: Coroutine[Any, Any, Any], waiting: Any) -> None:
        self.coro = coro
        self.waiting = waiting

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, waiting = self.coro, self.waiting
        while True:
            try:
                sent = yield waiting
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # the task was cancelled, or a future raised: the coroutine sees it
                try:
                    waiting = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    waiting = coro.send(sent)
                except StopIteration as stop:
                    return stop.value
