"""Start a coroutine at once, and make it a task only if it has to wait.

Why: a SIP farm member handles each packet in a task of its own, yet most packets (a
REGISTER whose credentials and bindings it remembers, a challenge, a retransmission answered
from the cache) never wait on anything: creating, scheduling and stepping a task for each was
several per cent of a busy member's CPU.  Python 3.12's ``asyncio.eager_task_factory`` does
this for every task of a loop; on 3.11 ``start_eagerly`` does it for the coroutines handed to
it.

Theory of operation
-------------------
``start_eagerly(coro)`` runs ``coro`` in a copy of the current context up to its first
suspension.  If it finishes there, it returns None (its result is dropped: use it for work
whose effects are what counts, and which catches its own errors -- an exception is raised
to the caller).  Otherwise it returns a task that drives the rest: it waits for the future
the coroutine yielded (whatever its outcome: the coroutine reads the result or the error
itself, as after any ``await``), then resumes the coroutine, in the same context, until it
finishes.  Cancelling the task cancels the future waited on, which the coroutine then sees
as a ``CancelledError`` at its ``await``, as with any task.

What differs from a task: during its first step the coroutine runs inside its caller, so
``asyncio.current_task()`` is the caller's task (None in a protocol callback) -- code that
needs a task of its own there (``asyncio.timeout``) must not be started this way.

On Python 3.12 and later ``asyncio.wait_for`` is built on ``asyncio.timeout`` and needs that
task (nats-py's requests use it), so there the first step runs in a real task started
eagerly (``asyncio.Task(..., eager_start=True)``, which is current during that step) and the
same contract holds: None if it finished, its error raised to the caller.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Coroutine
from typing import Any


def start_eagerly(coro: Coroutine[Any, Any, Any]) -> asyncio.Task | None:
    """Run ``coro`` until it first waits; None if it finished, else the task running the rest."""
    if sys.version_info >= (3, 12):
        task = asyncio.Task(coro, loop=asyncio.get_running_loop(), eager_start=True)  # type: ignore[call-arg]
        if not task.done():
            return task
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()
        return None
    context = contextvars.copy_context()
    try:
        waiting = _claimed(context.run(coro.send, None))
    except StopIteration:
        return None
    return asyncio.get_running_loop().create_task(_rest(coro, waiting), context=context)


def _claimed(waiting: Any) -> Any:
    """Take the future a coroutine yielded, as a task's step does: an awaited asyncio future
    is marked blocking until whoever drives the coroutine takes it (else awaiting it again
    raises "await wasn't used with future")."""
    if getattr(waiting, "_asyncio_future_blocking", False):
        waiting._asyncio_future_blocking = False
    return waiting


async def _rest(coro: Coroutine[Any, Any, Any], waiting: Any) -> Any:
    """What a task does after its first step: wait for the yielded future, resume, repeat."""
    while True:
        error: BaseException | None = None
        try:
            if waiting is None:          # a bare yield (asyncio.sleep(0)): give the loop a turn
                await asyncio.sleep(0)
            else:
                await waiting
        except asyncio.CancelledError as exc:
            # This task was cancelled.  If the future was cancelled with it, the coroutine
            # sees that at its own await; if not (it was done already), pass it on.
            if waiting is None or not waiting.cancelled():
                error = exc
        except BaseException:            # the future's error: the coroutine's own await raises it
            pass
        try:
            waiting = _claimed(coro.send(None) if error is None else coro.throw(error))
        except StopIteration as stop:
            return stop.value
