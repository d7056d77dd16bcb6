"""Cheaper message handling for the projections' pull consumers (nats-py 2.16).

``PullSubscription.fetch(n)`` takes each of its n messages with ``Subscription.next_msg``,
which creates an asyncio task and a timer per message, even when the message is already
in the subscription's queue (a batch arrives in a burst, so it nearly always is).  At bulk
rates that bookkeeping cost more than decoding the events.  ``speed_up`` gives the
subscription a ``next_msg`` that takes a queued message directly and falls back to the
library's own for anything else (an empty queue, a closed connection), so fetch keeps its
exact protocol and semantics.

``fetch`` is the one polling step both projections use; ``stream_seq`` reads a message's stream sequence from its ack subject without building the
whole ``Msg.Metadata`` (timestamp, dataclasses) that only this number is needed from.
"""

from __future__ import annotations

import asyncio
from typing import Any

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError

_V1_TOKENS = 9  # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>


def speed_up(psub: Any) -> Any:
    sub = getattr(psub, "_sub", None)
    queue = getattr(sub, "_pending_queue", None)
    if sub is None or queue is None or getattr(sub, "_cb", None) is not None:
        return psub  # not the nats-py internals this was written for: leave it alone
    library_next_msg = sub.next_msg

    async def next_msg(timeout: float | None = 1.0) -> Msg:
        if not queue.empty() and not sub._conn.is_closed:
            msg = queue.get_nowait()
            sub._pending_size -= len(msg.data)
            queue.task_done()
            return msg
        return await library_next_msg(timeout)

    sub.next_msg = next_msg
    return psub


def stream_seq(msg: Msg) -> int:
    reply = msg.reply
    if reply:
        tokens = reply.split(".")
        if len(tokens) == _V1_TOKENS and tokens[0] == "$JS" and tokens[1] == "ACK":
            return int(tokens[5])
    return msg.metadata.sequence.stream


async def fetch(sub: Any, batch: int, timeout: float = 0.5) -> list[Msg]:
    """Up to ``batch`` messages, or [] when none came within ``timeout``."""
    try:
        return await sub.fetch(batch, timeout=timeout)
    except (NatsTimeoutError, asyncio.TimeoutError):
        # nats-py's fetch() can turn our cancellation into a TimeoutError; without this
        # check a stopping projection would swallow it and poll forever.
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError from None
        return []
