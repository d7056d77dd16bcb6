"""Which asyncio task a test is stuck in, said before pytest-timeout ends it.

A test that hangs only in CI is hard to reproduce by hand, and pytest-timeout's report shows
only where the main thread is: in the event loop's select(), for every asyncio test.  So
``HANG_REPORT_AHEAD`` seconds before a test's timeout, a timer thread writes what each task of
the main thread's running loop is waiting on to stderr (captured, and shown with the failure).
tests/conftest.py wraps every test in ``hang_report``."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading

HANG_REPORT_AHEAD = 20.0     # seconds before pytest-timeout's deadline


def main_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running on the main thread, found from its stack (from another thread)."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, asyncio.AbstractEventLoop):
            return candidate
        frame = frame.f_back
    return None


def report_hang(nodeid: str) -> None:
    loop = main_loop()
    lines = [f"\n--- {nodeid} is about to time out; the main thread's asyncio tasks ---\n"]
    tasks: list[asyncio.Task] = []
    if loop is None:
        lines.append("(no running event loop on the main thread)\n")
    else:
        for _ in range(3):   # the set of tasks may change while it is read from this thread
            try:
                tasks = list(asyncio.all_tasks(loop))
                break
            except RuntimeError:
                continue
    for task in tasks:
        lines.append(f"{task!r}\n")
        lines.extend(f"    {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}\n"
                     for frame in task.get_stack())
    sys.stderr.write("".join(lines))
    sys.stderr.flush()


@contextlib.contextmanager
def hang_report(item):
    """Report the asyncio tasks ``HANG_REPORT_AHEAD`` seconds before ``item``'s timeout."""
    marker = item.get_closest_marker("timeout")
    if marker and marker.args:
        timeout = float(marker.args[0])
    else:
        timeout = float(item.config.getoption("timeout", None) or item.config.getini("timeout") or 0)
    if timeout <= HANG_REPORT_AHEAD:
        yield
        return
    timer = threading.Timer(timeout - HANG_REPORT_AHEAD, report_hang, args=(item.nodeid,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
