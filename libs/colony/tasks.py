"""Background work that must not die quietly: one owner for every long-lived task.

Theory of operation
-------------------
An instance runs a few long-lived loops (a KV watcher, a queue consumer, a heartbeat) and a
few one-shot jobs (a drain).  A bare ``asyncio.create_task`` loses a failure: the exception
sits in a task object nobody awaits, and the instance looks alive while doing nothing.
``TaskOwner`` is the one way to start such work:

* ``owner.spawn(name, body, restart=True)`` keeps a loop running: when ``body`` raises it
  is logged with its name (and ``context()``, e.g. its position), recorded as a fault, and
  started again after a back-off (0.2 s doubling to 5 s); only cancellation ends it.
* ``owner.spawn(name, body)`` runs ``body`` once; if it raises, the failure is logged,
  recorded and handed to ``on_fault`` - it is never left unretrieved in a task object.
* Every fault is a ``TaskFault`` (task, error, when, how many times); the owner keeps the
  last few (bounded, whatever fails how often) and counts them all.  The node runtime
  (``runtime.spawn``) passes an ``on_fault`` that counts it on ``runtime.metrics``, puts it
  on the instance's ``NodeRecord.faults`` (so ``colony status`` shows it) and publishes a
  ``TaskFailed`` event on the CLUSTER stream.
* ``await owner.close()`` cancels everything it owns and waits for it.

Short per-request tasks that their caller awaits or tracks (a reply to one request) do not
need an owner; anything whose failure nobody would otherwise see does.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import suppress
from datetime import datetime

from pydantic import BaseModel, Field

from colony.events import utcnow

FAULTS_KEPT = 5  # per owner: enough to see what is failing, bounded however often it fails


class TaskFault(BaseModel):
    """One failure of an owned task, as shown by ``colony status`` (``faults`` of a node)."""

    task: str
    error: str                      # "RuntimeError: boom", first line only, at most 300 chars
    context: str = ""               # what the task was doing (its position, its peer...)
    at: datetime = Field(default_factory=utcnow)
    count: int = 1                  # failures of this task since the instance started
    restarting: bool = False        # True: a loop that is being restarted


def describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:300]


FaultHook = Callable[[TaskFault], Awaitable[None] | None]


class TaskOwner:
    def __init__(self, log: logging.Logger, on_fault: FaultHook | None = None,
                 first_backoff: float = 0.2, max_backoff: float = 5.0) -> None:
        self.log = log
        self.on_fault = on_fault
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.faults: deque[TaskFault] = deque(maxlen=FAULTS_KEPT)
        self.fault_count = 0
        self._counts: dict[str, int] = {}
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    def spawn(self, name: str, body: Callable[[], Awaitable[None]], *, restart: bool = False,
              context: Callable[[], str] | None = None) -> asyncio.Task:
        """Start ``body()`` as an owned task; ``context`` describes it when it fails."""
        if self._closed:
            raise RuntimeError(f"cannot start {name}: its owner is closed")
        coro = self._keep(name, body, context) if restart else self._once(name, body, context)
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def running(self) -> list[str]:
        return sorted(t.get_name() for t in self._tasks if not t.done())

    async def close(self) -> None:
        """Cancel every owned task and wait for it to end."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with suppress(asyncio.CancelledError, Exception):
                await task

    # --- internals ------------------------------------------------------------------------

    async def _once(self, name: str, body: Callable[[], Awaitable[None]], context: Callable[[], str] | None) -> None:
        try:
            await body()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._fault(name, exc, context, restarting=False)

    async def _keep(self, name: str, body: Callable[[], Awaitable[None]], context: Callable[[], str] | None) -> None:
        backoff = self.first_backoff
        while True:
            try:
                await body()
                backoff = self.first_backoff  # returned normally (e.g. a watcher ended): start over
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._fault(name, exc, context, restarting=True, backoff=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            await asyncio.sleep(backoff)

    async def _fault(self, name: str, exc: Exception, context: Callable[[], str] | None,
                     restarting: bool, backoff: float = 0.0) -> None:
        where = ""
        if context is not None:
            try:
                where = context()
            except Exception as ctx_exc:  # a broken description must not hide the failure
                where = f"(context unavailable: {describe(ctx_exc)})"
        self.fault_count += 1
        self._counts[name] = self._counts.get(name, 0) + 1
        fault = TaskFault(task=name, error=describe(exc), context=where, count=self._counts[name], restarting=restarting)
        self.faults.append(fault)
        label = f"{name} ({where})" if where else name
        if restarting:
            self.log.error("%s failed; restarting in %.1fs", label, backoff, exc_info=exc)
        else:
            self.log.error("%s failed", label, exc_info=exc)
        if self.on_fault is not None:
            try:
                result = self.on_fault(fault)
                if asyncio.iscoroutine(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("recording the failure of %s failed", name)


async def keep_running(name: str | Callable[[], str], body: Callable[[], Awaitable[None]], log: logging.Logger,
                       first_backoff: float = 0.2, max_backoff: float = 5.0) -> None:
    """One restarting loop without an owner (a projection child process runs exactly one).

    ``name`` may be a callable, to describe the loop as it is when it fails (e.g. its position).
    """
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
