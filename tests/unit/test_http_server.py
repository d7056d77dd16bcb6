"""The embedded uvicorn server's main loop: it ticks once a second instead of uvicorn's ten
times (an idle process's largest timer), refreshes the Date header on every tick, and stops
at once when asked rather than at the next tick.  No socket: only the loop is driven."""

from __future__ import annotations

import asyncio

import uvicorn

from colony.http_server import _QuietSignalsServer


async def _app(scope, receive, send):  # never called: nothing connects
    raise AssertionError("no requests here")


async def test_the_loop_ticks_with_the_date_header_and_stops_when_asked():
    server = _QuietSignalsServer(uvicorn.Config(_app, log_level="warning"))
    server.config.load()
    ticks: list[int] = []
    on_tick = server.on_tick

    async def counting(counter: int) -> bool:
        ticks.append(counter)
        return await on_tick(counter)

    server.on_tick = counting
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(server.main_loop())
    while not ticks:
        await asyncio.sleep(0)
    assert any(name == b"date" for name, _ in server.server_state.default_headers)
    assert all(t % 10 == 0 for t in ticks)  # uvicorn refreshes the Date header on tenths
    started = loop.time()
    server.should_exit = True
    server.exit_requested.set()
    await asyncio.wait_for(task, 30)
    assert loop.time() - started < 0.9  # woken, not the next one-second tick
    assert len(ticks) <= 2


def test_invalid_requests_pass_once_a_minute_with_a_count_of_the_rest():
    import logging

    from colony.http_server import INVALID_REQUEST, InvalidRequestsSummarised

    now = [0.0]
    summary = InvalidRequestsSummarised(every=60.0, clock=lambda: now[0])

    def passes(msg: str) -> str | None:
        record = logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1, msg, None, None)
        return record.getMessage() if summary.filter(record) else None

    assert passes(INVALID_REQUEST) == INVALID_REQUEST
    assert [passes(INVALID_REQUEST) for _ in range(3)] == [None, None, None]
    assert passes("Something else went wrong") == "Something else went wrong"     # never held
    now[0] = 61.0
    assert passes(INVALID_REQUEST) == f"{INVALID_REQUEST} (3 more since the last such warning, not logged)"
    assert passes(INVALID_REQUEST) is None
    now[0] = 200.0
    assert passes(INVALID_REQUEST) == f"{INVALID_REQUEST} (1 more since the last such warning, not logged)"
