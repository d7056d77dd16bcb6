"""Pull requests for a work-queue runner: jobs handed over the moment they arrive, and never
more outstanding than there are free slots.

Theory of operation.  A JetStream pull consumer delivers only on request: a message to
``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`` (``names.consumer_next_subject``) with the
body ``{"batch": N, "expires": <ns>}`` and a reply subject.  The server sends up to N messages
to the reply subject as they become available and ends the request silently once N were sent,
or with one status message (headers only): ``408`` it expired, ``409`` it was refused or cut
short (max waiting, leadership change, and "Consumer Deleted"), ``503`` (no responders) the
consumer does not exist; ``100`` is an idle heartbeat and ends nothing.

``JobPuller`` subscribes one private wildcard inbox, ``<inbox>.*``, and gives every request a
reply subject of its own, ``<inbox>.<request number>``.  So a status -- sent to the request's
reply subject -- always names the request it ends: one left over from a request given up
earlier cannot end a newer one.  A job names no request: the server delivers it on the inbox
subscription but under the subject it was published to.  It fills the oldest open request
first (the server serves its waiting requests in order, each until its batch is complete:
checked on nats-server 2.15, where a 408 then reports what the younger request still lacked),
so the ledger counts each job against the oldest request it has open.  (That is the
flaw this module replaces: nats-py 2.16's ``PullSubscription.fetch`` shares one reply subject
between its requests, takes a stale ``408`` as the answer to its first request, and then holds
a job that arrives for its second request until the fetch's deadline -- the "tail stall" of
bench/README.md, up to a whole long poll late.)  Messages go to the runner from the
subscription's callback as they arrive, one at a time, whatever request brought them.

``PullLedger`` is the bookkeeping, pure and clock-injected: which requests are outstanding,
how many messages each may still bring, when to give one up.  Its invariant is the runner's
concurrency bound: jobs in flight + messages still owed by outstanding requests <= free slots
at the moment each request was sent.  A request is sent when a slot is free and none is
outstanding (so a lone job is fetched at once), or when at least ``refill`` more slots are free
than outstanding requests may fill (so a busy runner keeps the server a batch ahead rather
than asking for one job each time one ends).  An idle runner keeps one long poll of
``expires`` seconds outstanding: a cost of one request and one ``408`` per ``expires`` seconds.

A request the server never ends (a lost connection) is given up ``grace`` seconds after it
should have expired; if it got no reply at all the shell asks whether the consumer still
exists.  A ``409`` that ended a request with nothing delivered holds new requests for
``hold`` seconds, so a server that refuses (too many waiting requests) is not asked in a
tight loop.  Messages that arrive for a request already given up are still handed over: they
are deliveries, and an unhandled one would only come back after ``ack_wait``.

Memory: the subscription's pending limit is the runner's concurrency plus slack; nothing is
buffered here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from colony.bus import names
from colony.bus.connection import unsubscribe_all

log = logging.getLogger("colony.queue.pull")

_STATUS = "Status"
_DESCRIPTION = "Description"
_HEARTBEAT = "100"


class ConsumerGone(RuntimeError):
    """The server says the consumer does not exist (deleted, or never created): create it again."""


@dataclass
class Request:
    number: int
    batch: int
    remaining: int          # messages it may still bring
    deadline: float         # give it up after this (expires + grace)
    answered: bool = False  # any reply at all: a message or a status


class PullLedger:
    """Outstanding pull requests of one consumer; no I/O, time passed in."""

    def __init__(self, *, expires: float, grace: float = 1.0, refill: int = 1, hold: float = 0.5) -> None:
        self.expires, self.grace, self.refill, self.hold = expires, grace, max(1, refill), hold
        self.outstanding: dict[int, Request] = {}
        self._numbers = 0
        self._hold_until = 0.0

    def owed(self) -> int:
        """Messages the outstanding requests may still bring."""
        owed = 0
        for r in self.outstanding.values():   # a plain loop: asked for every finished job
            owed += r.remaining
        return owed

    def plan(self, free: int, now: float) -> int:
        """How many messages to ask for now (0: send nothing), given ``free`` slots."""
        want = self._want(free, now)
        if self._hold_until and now >= self._hold_until:
            self._hold_until = 0.0
        return want

    def wants(self, free: int, now: float) -> bool:
        """Whether ``plan(free, now)`` would send a request, without changing anything: a
        freed slot is worth waking the runner for only then (``JobPuller.wake``)."""
        return self._want(free, now) > 0

    def _want(self, free: int, now: float) -> int:
        if self._hold_until and now < self._hold_until:
            return 0
        want = free - self.owed()
        return want if want > 0 and (not self.outstanding or want >= self.refill) else 0

    def sent(self, batch: int, now: float) -> Request:
        self._numbers += 1
        request = Request(self._numbers, batch, batch, now + self.expires + self.grace)
        self.outstanding[request.number] = request
        return request

    def delivered(self) -> bool:
        """A job arrived: it filled the oldest open request (the server's order).  True when
        that completed the request (the server ends it without a status)."""
        if not self.outstanding:
            return False  # for a request given up before: still a delivery, but it changes nothing here
        request = self.outstanding[min(self.outstanding)]
        request.answered = True
        request.remaining -= 1
        if request.remaining <= 0:
            del self.outstanding[request.number]
            return True
        return False

    def ended(self, number: int, status: str, now: float) -> bool:
        """Request ``number`` ended with ``status``; False if it was not outstanding (stale)."""
        request = self.outstanding.pop(number, None)
        if request is None:
            return False
        if status == "409" and request.remaining == request.batch:
            self._hold_until = now + self.hold
        return True

    def expire(self, now: float) -> list[Request]:
        """Give up requests past their deadline; the ones returned got no reply at all when
        ``answered`` is False (is the consumer still there?)."""
        late = [r for r in self.outstanding.values() if r.deadline <= now]
        for r in late:
            del self.outstanding[r.number]
        return late

    def next_deadline(self) -> float | None:
        """When ``expire`` or ``plan`` may next change its answer without a message arriving."""
        times = [r.deadline for r in self.outstanding.values()]
        if self._hold_until:
            times.append(self._hold_until)
        return min(times) if times else None


class JobPuller:
    """The asyncio shell: one inbox, requests sized by ``free()``, each message to ``on_job``.

    ``run()`` loops until cancelled: it sends what the ledger plans and sleeps until a slot is
    freed (``wake()``), a request ends, or a deadline passes.  It raises ``ConsumerGone`` when
    the server says the consumer is gone; the caller recreates it and runs again."""

    def __init__(self, nc: Client, stream: str, consumer: str, *, on_job: Callable[[Msg], None],
                 free: Callable[[], int], expires: float, concurrency: int,
                 consumer_exists: Callable[[], Awaitable[object]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.nc, self.stream, self.consumer = nc, stream, consumer
        self.on_job, self.free, self.consumer_exists, self.clock = on_job, free, consumer_exists, clock
        self.ledger = PullLedger(expires=expires, refill=max(1, concurrency // 2))
        self.statuses: Counter[str] = Counter()  # status replies seen, by code
        self.wakeups = 0  # times wake() woke the loop (tests and benchmarks read it)
        self._subject = names.consumer_next_subject(stream, consumer)
        self._expires_ns = int(expires * 1e9)
        self._concurrency = concurrency
        self._wake = asyncio.Event()
        self._gone: str | None = None
        self._inbox = ""
        self._sub: Subscription | None = None

    def wake(self) -> None:
        """Something changed what may be asked for (a slot freed, accepting again): the loop
        runs only if the ledger would now send a request.  A busy runner's outstanding request
        usually still owes more than the slots a finished job frees, and every runner sharing
        a ``JobBudget`` is told of every freed slot, fetching or not: waking each of them for
        nothing was the largest count of event-loop callbacks per job in a mail store (about
        five), and more of them per job the fewer jobs a store has in flight at once."""
        if self._wake.is_set() or not self.ledger.wants(self.free(), self.clock()):
            return
        self.wakeups += 1
        self._wake.set()

    async def open(self) -> None:
        self._inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(f"{self._inbox}.*", cb=self._on_msg,
                                            pending_msgs_limit=2 * self._concurrency + 100)

    async def close(self) -> None:
        await unsubscribe_all([self._sub])
        self._sub = None

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get(_STATUS) if msg.headers else None
        if not status:
            if self.ledger.delivered():
                self._wake.set()
            self.on_job(msg)
            return
        if status == _HEARTBEAT:
            return
        self.statuses[status] += 1
        if not self.ledger.ended(_request_number(msg.subject), status, self.clock()):
            return  # a request given up earlier: it ends nothing now
        description = (msg.headers or {}).get(_DESCRIPTION, "")
        if status == "503":
            self._gone = "no responders: the consumer does not exist"
        elif status == "409" and "deleted" in description.lower():
            self._gone = description
        elif status not in ("408", "409", "404"):
            log.warning("pull %s/%s: unexpected status %s %s", self.stream, self.consumer, status, description)
        self._wake.set()

    async def run(self) -> None:
        while True:
            if self._gone:
                raise ConsumerGone(f"{self.stream}/{self.consumer}: {self._gone}")
            now = self.clock()
            if any(not r.answered for r in self.ledger.expire(now)):
                await self.consumer_exists()  # raises if it is gone
            batch = self.ledger.plan(self.free(), now)
            if batch:
                request = self.ledger.sent(batch, now)
                body = json.dumps({"batch": batch, "expires": self._expires_ns}).encode()
                await self.nc.publish(self._subject, body, reply=f"{self._inbox}.{request.number}")
                continue
            self._wake.clear()
            deadline = self.ledger.next_deadline()
            try:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a
                # cancellation that coincides with the wake-up.
                async with asyncio.timeout(None if deadline is None else max(deadline - self.clock(), 0.0)):
                    await self._wake.wait()
            except TimeoutError:
                pass


def _request_number(subject: str) -> int:
    try:
        return int(subject.rsplit(".", 1)[1])
    except (IndexError, ValueError):
        return 0  # not one of ours: counts against no request
