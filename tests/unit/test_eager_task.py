"""start_eagerly: a coroutine that never waits finishes in the call, one that waits goes on
in a task that behaves like one created for it (results, errors, cancellation, context)."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from colony.eager_task import start_eagerly

var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="outer")


async def test_work_that_never_waits_finishes_in_the_call():
    done = []

    async def work():
        done.append(asyncio.current_task())

    assert start_eagerly(work()) is None
    assert done == [asyncio.current_task()]      # ran inside the caller, no task of its own


async def test_work_that_waits_goes_on_in_a_task_with_the_results_of_its_awaits():
    first, second = asyncio.get_running_loop().create_future(), asyncio.get_running_loop().create_future()
    seen = []

    async def work():
        seen.append("started")
        seen.append(await first)
        try:
            await second
        except KeyError as exc:
            seen.append(f"caught {exc}")
        await asyncio.sleep(0)                   # a bare yield
        return "finished"

    task = start_eagerly(work())
    assert isinstance(task, asyncio.Task) and seen == ["started"]
    first.set_result("one")
    second.set_exception(KeyError("two"))
    assert await asyncio.wait_for(task, 5) == "finished"
    assert seen == ["started", "one", "caught 'two'"]


async def test_an_error_after_the_first_wait_fails_the_task():
    gate = asyncio.get_running_loop().create_future()

    async def work():
        await gate
        raise ValueError("boom")

    task = start_eagerly(work())
    gate.set_result(None)
    with pytest.raises(ValueError, match="boom"):
        await asyncio.wait_for(task, 5)


async def test_an_error_before_any_wait_reaches_the_caller():
    async def work():
        raise ValueError("early")

    with pytest.raises(ValueError, match="early"):
        start_eagerly(work())


async def test_cancelling_the_task_reaches_the_coroutine_at_its_await():
    gate = asyncio.get_running_loop().create_future()
    seen = []

    async def work():
        try:
            await gate
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    task = start_eagerly(work())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert seen == ["cancelled"] and gate.cancelled() and task.cancelled()


async def test_context_changes_stay_with_the_work_from_start_to_end():
    gate = asyncio.get_running_loop().create_future()
    seen = []

    async def work(name):
        var.set(name)
        await gate
        seen.append((name, var.get()))

    tasks = [start_eagerly(work("a")), start_eagerly(work("b"))]
    assert var.get() == "outer"                  # the caller's context is untouched
    gate.set_result(None)
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert sorted(seen) == [("a", "a"), ("b", "b")]
