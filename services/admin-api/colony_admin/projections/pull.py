"""Batches from a JetStream pull consumer, through nats-py's public API only.

Theory of operation.  A pull consumer hands out messages only when asked: a request
published to ``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`` (``names.consumer_next_subject``)
with the JSON body ``{"batch": N, "expires": <ns>}`` or ``{"batch": N, "no_wait": true}`` and a
reply subject.  The server sends up to N messages to that reply subject and, when it ends
the request early, one status message (headers only): ``404`` nothing to deliver (no_wait),
``408`` the request expired, ``409`` the request was refused or cut short (max waiting
exceeded, leadership change, consumer deleted); ``100`` is an idle heartbeat; ``503`` (no
responders) means the consumer does not exist.  A request that got all N messages ends
without a status.

``PullBatches`` keeps one private inbox subscribed with a callback that only appends to a
buffer, and at most one request outstanding:

* while messages are waiting (a bulk import), it asks with ``no_wait`` and returns the
  batch as soon as the request ends (N messages, or the 404/408 after fewer); a batch
  that came full is likely followed by more, so the next ``no_wait`` request goes out as
  it is handed over, and the server sends it while the caller applies this one;
* when a ``no_wait`` request found nothing, it asks again with ``expires`` (a long poll)
  and returns from the first message on, so a single command's event is projected at once;
  the rest of that request's messages are taken by the next call;
* a consumer that is gone (503, or 409 "Consumer Deleted") raises ``ConsumerGone``, and
  the caller's restarting loop creates it again; a request the server never ends (a lost
  connection) is given up after its deadline, and if a long poll got no answer at all the
  consumer is looked up (which raises if it is gone).

Why not ``PullSubscription.fetch``: in nats-py 2.16 it takes each message of a batch with
``Subscription.next_msg`` -- an asyncio task and a timer per message -- which at bulk rates
cost more than decoding the events.  The callback here costs one list append per message.

Memory is bounded by the requests: at most ``batch`` messages per request, one request
outstanding, so at most two batches (the one handed out, the one arriving) at a time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from colony.bus import names
from colony.bus.connection import unsubscribe_all

log = logging.getLogger("colony.admin.pull")

_V1_TOKENS = 9  # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>
_STATUS = "Status"
_DESCRIPTION = "Description"
_HEARTBEAT = "100"
_NO_WAIT_DEADLINE = 5.0  # seconds: a no_wait request is answered at once unless the link is gone


class ConsumerGone(RuntimeError):
    """The server says the consumer was deleted: create it again."""


def stream_seq(msg: Msg) -> int:
    """A message's stream sequence, read from its ack subject (without building the whole
    ``Msg.Metadata``: timestamp, dataclasses) -- the only part of it a projection needs."""
    reply = msg.reply
    if reply:
        tokens = reply.split(".")
        if len(tokens) == _V1_TOKENS and tokens[0] == "$JS" and tokens[1] == "ACK":
            return int(tokens[5])
    return msg.metadata.sequence.stream


class PullBatches:
    def __init__(self, nc: Client, js: JetStreamContext, stream: str, consumer: str, batch: int = 1000, *,
                 expires: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        self.nc, self.js, self.stream, self.consumer = nc, js, stream, consumer
        self.batch, self.expires, self.clock = batch, expires, clock
        self.statuses: Counter[str] = Counter()  # status replies seen, by code (what the server said)
        self._subject = names.consumer_next_subject(stream, consumer)
        self._buffer: list[Msg] = []
        self._open = False  # a request is outstanding
        self._long = False  # ... and it is a long poll
        self._asked = 0
        self._full = False  # the last request ended with all it asked for: more are likely waiting
        self._delivered = 0
        self._answered = False  # the outstanding request got any reply
        self._deadline = 0.0
        self._wake = asyncio.Event()
        self._gone: str | None = None
        self._inbox = ""
        self._sub: Subscription | None = None

    async def open(self) -> None:
        self._inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(self._inbox, cb=self._on_msg,
                                            pending_msgs_limit=4 * self.batch + 100)

    async def close(self) -> None:
        await unsubscribe_all([self._sub])
        self._sub = None

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get(_STATUS) if msg.headers else None
        if not status:
            self._buffer.append(msg)
            self._answered = True
            self._delivered += 1
            if self._delivered >= self._asked:
                self._open = False  # the request got all it asked for: the server ends it silently
                self._full = True
            if self._long or not self._open:
                self._wake.set()
            return
        if status == _HEARTBEAT:
            return
        self.statuses[status] += 1
        self._answered = True
        self._open = False
        if status == "503":
            self._gone = "no responders: the consumer does not exist"
        elif status == "409":
            description = (msg.headers or {}).get(_DESCRIPTION, "")
            if "deleted" in description.lower():
                self._gone = description
            else:
                log.debug("pull %s/%s: 409 %s", self.stream, self.consumer, description)
        self._wake.set()

    async def _request(self, long: bool) -> None:
        body: dict[str, object] = {"batch": self.batch}
        if long:
            body["expires"] = int(self.expires * 1e9)
        else:
            body["no_wait"] = True
        self._open, self._long, self._answered = True, long, False
        self._asked, self._delivered, self._full = self.batch, 0, False
        self._deadline = self.clock() + (self.expires + 1.0 if long else _NO_WAIT_DEADLINE)
        self._wake.clear()
        await self.nc.publish(self._subject, json.dumps(body).encode(), reply=self._inbox)

    async def _take(self, ask: bool) -> list[Msg]:
        msgs, self._buffer = self._buffer, []
        if ask and self._full and not self._open:
            await self._request(long=False)  # prefetch: the next batch arrives while this one is applied
        return msgs

    async def _wait(self) -> None:
        """Until the request ends, or (a long poll) a message came, or its deadline passed."""
        while self._open and not (self._long and self._buffer):
            remaining = self._deadline - self.clock()
            if remaining <= 0:
                self._open = False  # never answered in time: give it up
                break
            self._wake.clear()
            try:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a
                # cancellation that coincides with the wake-up, and a stopping projection
                # would then poll forever.
                async with asyncio.timeout(remaining):
                    await self._wake.wait()
            except TimeoutError:
                pass

    @property
    def busy(self) -> bool:
        """A request is outstanding or messages wait to be taken."""
        return self._open or bool(self._buffer)

    async def next(self, ask: bool = True) -> list[Msg]:
        """The next batch in stream order; [] when a long poll expired with nothing new.

        ``ask=False`` (pausing): send no new request, only take what is buffered or still
        arriving for the outstanding one."""
        if self._gone:
            raise ConsumerGone(f"{self.stream}/{self.consumer}: {self._gone}")
        if self._buffer and (not self._open or self._long):
            return await self._take(ask)
        if not ask:
            await self._wait()
            return await self._take(ask)
        if not self._open:
            await self._request(long=False)
            await self._wait()
            if self._buffer:
                return await self._take(ask)
            await self._request(long=True)
        await self._wait()
        if not self._answered and not self._open:
            # Not even the 408 of an expired long poll: is the consumer still there?
            await self.js.consumer_info(self.stream, self.consumer)  # raises NotFoundError if not
        if self._gone:
            raise ConsumerGone(f"{self.stream}/{self.consumer}: {self._gone}")
        return await self._take(ask)
