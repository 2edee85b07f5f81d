"""Running a handler eagerly (``server/eager.py``): at once when it does not wait, in a task when it does."""

from __future__ import annotations

import asyncio

import pytest

from xia_broadcast.server.eager import run_eagerly


async def test_a_coroutine_that_never_waits_is_done_before_run_eagerly_returns() -> None:
    steps: list[str] = []

    async def handler() -> str:
        steps.append("ran")
        return "answer"

    outcome = run_eagerly(handler())
    assert steps == ["ran"] and outcome.done() and not isinstance(outcome, asyncio.Task)
    assert outcome.result() == "answer"


async def test_an_exception_raised_before_any_wait_is_in_the_done_future() -> None:
    async def handler() -> str:
        raise ValueError("bad")

    outcome = run_eagerly(handler())
    assert outcome.done()
    with pytest.raises(ValueError, match="bad"):
        outcome.result()


async def test_a_coroutine_that_waits_runs_its_first_part_now_and_the_rest_in_a_task() -> None:
    gate: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    steps: list[str] = []

    async def handler() -> int:
        steps.append("before")
        value = await gate  # a real wait: the caller's loop turn ends here
        steps.append("after")
        await asyncio.sleep(0)  # a bare yield in the rest is handed to the task as well
        try:
            await asyncio.sleep(0.01)
        finally:
            steps.append("slept")
        return value + 1

    outcome = run_eagerly(handler())
    assert steps == ["before"] and isinstance(outcome, asyncio.Task) and not outcome.done()
    gate.set_result(41)
    assert await asyncio.wait_for(outcome, 5) == 42
    assert steps == ["before", "after", "slept"]


async def test_an_exception_of_what_it_waits_for_reaches_the_coroutine() -> None:
    gate: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def handler() -> str:
        try:
            await gate
        except KeyError:
            return "handled"
        return "not reached"

    outcome = run_eagerly(handler())
    gate.set_exception(KeyError("x"))
    assert await asyncio.wait_for(outcome, 5) == "handled"


async def test_cancelling_the_task_cancels_the_coroutine_where_it_waits() -> None:
    seen: list[str] = []

    async def handler() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return "not reached"

    outcome = run_eagerly(handler())
    await asyncio.sleep(0)
    outcome.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outcome
    assert seen == ["cancelled"]
