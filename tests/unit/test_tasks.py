import asyncio
import logging

from colony.tasks import keep_running


async def test_a_failing_loop_is_logged_and_restarted_until_cancelled(caplog):
    runs = []
    third_run = asyncio.Event()

    async def body():
        runs.append(1)
        if len(runs) >= 3:
            third_run.set()
            await asyncio.Event().wait()  # healthy from now on
        raise RuntimeError(f"boom {len(runs)}")

    with caplog.at_level(logging.ERROR):
        task = asyncio.create_task(keep_running("watcher", body, logging.getLogger("t"), first_backoff=0.001))
        await asyncio.wait_for(third_run.wait(), 5)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
    assert len(runs) == 3
    assert [r.getMessage() for r in caplog.records][:2] == ["watcher failed; restarting in 0.0s"] * 2
    assert task.cancelled()
