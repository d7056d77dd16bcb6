"""Long-running background work that must not die quietly.

``keep_running`` owns one loop (a KV watcher, a consumer, a heartbeat): if it raises, the
failure is logged with its name and it starts again after a back-off; only cancellation
ends it.  Every such task in Colony is started through here and cancelled on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable


async def keep_running(name: str | Callable[[], str], body: Callable[[], Awaitable[None]], log: logging.Logger,
                       first_backoff: float = 0.2, max_backoff: float = 5.0) -> None:
    """``name`` may be a callable, to describe the loop as it is when it fails (e.g. its position)."""
    backoff = first_backoff
    while True:
        try:
            await body()
            backoff = first_backoff  # returned normally (e.g. a watcher ended): start over
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; restarting in %.1fs", name() if callable(name) else name, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)
            continue
        await asyncio.sleep(backoff)


def start(name: str, body: Callable[[], Awaitable[None]], log: logging.Logger) -> asyncio.Task:
    return asyncio.create_task(keep_running(name, body, log), name=name)
