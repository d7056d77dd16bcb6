"""The hang report (tests/hangreport.py) names the coroutine each task of the test's loop waits in."""

import asyncio
import threading

from hangreport import report_hang


async def test_a_hang_report_names_where_each_task_waits(capfd):
    async def stuck_waiting_for_an_event_never_set():
        await asyncio.Event().wait()

    stuck = asyncio.create_task(stuck_waiting_for_an_event_never_set())
    await asyncio.sleep(0)
    reporter = threading.Thread(target=report_hang, args=("tests/x.py::test_y",))
    reporter.start()
    await asyncio.to_thread(reporter.join, 30)     # the loop keeps running while it reports
    err = capfd.readouterr().err
    stuck.cancel()
    assert "tests/x.py::test_y is about to time out" in err
    assert "in stuck_waiting_for_an_event_never_set" in err
    assert "in test_a_hang_report_names_where_each_task_waits" in err   # the test's own task


def test_without_a_running_loop_it_says_so(capfd):
    reporter = threading.Thread(target=report_hang, args=("t",))
    reporter.start()
    reporter.join()
    assert "no running event loop" in capfd.readouterr().err
