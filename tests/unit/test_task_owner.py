"""colony.tasks.TaskOwner: a failing task is logged with context, recorded, never lost."""

import asyncio
import logging

import pytest

from colony.tasks import FAULTS_KEPT, TaskFault, TaskOwner


async def test_a_one_shot_task_that_raises_is_logged_recorded_and_reported(caplog):
    seen: list[TaskFault] = []
    owner = TaskOwner(logging.getLogger("t"), on_fault=seen.append)

    async def drain():
        raise RuntimeError("hand-over refused\nsecond line")

    with caplog.at_level(logging.ERROR):
        task = owner.spawn("drain", drain, context=lambda: "3 sessions left")
        await asyncio.wait_for(task, 5)
    assert not task.cancelled() and task.exception() is None, "the failure is taken out of the task"
    assert [f.task for f in seen] == ["drain"]
    fault = seen[0]
    assert fault.error == "RuntimeError: hand-over refused"
    assert fault.context == "3 sessions left" and fault.count == 1 and not fault.restarting
    assert owner.fault_count == 1 and list(owner.faults) == [fault]
    record = caplog.records[-1]
    assert record.getMessage() == "drain (3 sessions left) failed"
    assert record.exc_info and record.exc_info[0] is RuntimeError, "the traceback is logged"


async def test_a_restarting_loop_records_every_failure_and_keeps_going_until_closed():
    faults: list[TaskFault] = []
    runs = []
    healthy = asyncio.Event()

    async def on_fault(fault):  # an async hook is awaited
        faults.append(fault)

    async def watcher():
        runs.append(1)
        if len(runs) >= 3:
            healthy.set()
            await asyncio.Event().wait()
        raise ConnectionError(f"gone {len(runs)}")

    owner = TaskOwner(logging.getLogger("t"), on_fault=on_fault, first_backoff=0.001)
    task = owner.spawn("watch-nodes", watcher, restart=True)
    await asyncio.wait_for(healthy.wait(), 5)
    assert [(f.error, f.count, f.restarting) for f in faults] == [
        ("ConnectionError: gone 1", 1, True), ("ConnectionError: gone 2", 2, True)]
    assert owner.running() == ["watch-nodes"]
    await owner.close()
    assert task.cancelled() and owner.running() == []
    with pytest.raises(RuntimeError):
        owner.spawn("late", watcher)


async def test_faults_kept_are_bounded_and_a_broken_hook_or_context_does_not_hide_the_failure(caplog):
    def broken_hook(fault):
        raise ValueError("hook broke")

    def broken_context():
        raise KeyError("pos")

    owner = TaskOwner(logging.getLogger("t"), on_fault=broken_hook)

    async def fail():
        raise OSError("disk")

    with caplog.at_level(logging.ERROR):
        for _ in range(FAULTS_KEPT + 3):
            await owner.spawn("job", fail, context=broken_context)
    assert owner.fault_count == FAULTS_KEPT + 3
    assert len(owner.faults) == FAULTS_KEPT
    assert owner.faults[-1].count == FAULTS_KEPT + 3
    assert owner.faults[-1].context.startswith("(context unavailable")
    assert any("recording the failure of job failed" in r.getMessage() for r in caplog.records)


async def test_cancellation_is_not_a_fault():
    seen = []
    owner = TaskOwner(logging.getLogger("t"), on_fault=seen.append)
    task = owner.spawn("idle", lambda: asyncio.Event().wait())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == [] and owner.fault_count == 0
