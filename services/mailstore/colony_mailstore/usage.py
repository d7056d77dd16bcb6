"""Metering of stored mail, batched: ``UsageRecorded`` events per account and flush.

Every stored message adds to its account's ``messages_in`` and sets its ``storage_bytes``
(the gauge the admin API keeps the latest of); ``flush`` publishes one event per account and
metric for everything since the last flush.  Publishing two JetStream messages per delivery
instead would double the bus work of the delivery path.  The flush runs every
``usage_flush_interval`` and on stop; a crash loses at most one interval of counts (the
mail itself is safe), a bounded under-count the billing period absorbs.

A flush's events go out pipelined (``publish_many``: all sent, then one wait for their
acks), not one publish awaited after another: sent one by one, each after the previous
one's fsync, they reached USAGE a millisecond or more apart, and the projector, whose long
poll returns from the first message on, applied nearly every one as a batch of its own (a
SQL transaction each) -- CPU the projector spent per inbound message.  Pipelined, a flush
lands in USAGE at once and is projected in one or two batches.

An event the bus did not confirm (no ack in time, an error, the connection away) is kept as
it was, with its ``Nats-Msg-Id``, and sent again first at the next flush: USAGE's duplicate
window (2 minutes) makes a resend of an event that had landed after all count once.  Merged
back into the counts instead, a landed-but-unconfirmed event would be counted twice.  At most
``max_unsent`` events wait (the oldest are dropped with a warning beyond that), so memory
stays bounded while the bus is away; an event still unconfirmed after the duplicate window
may count twice when it finally lands, a bounded over-count of an outage.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from colony.bus import names
from colony.bus.pipelined import Outgoing, landed
from colony.events import UsageRecorded

log = logging.getLogger("colony.mailstore.usage")

PublishMany = Callable[[Sequence[Outgoing]], Awaitable[list[dict[str, Any] | None]]]
MAX_UNSENT = 10_000


class UsageMeter:
    def __init__(self, publish_many: PublishMany, source: str, max_unsent: int = MAX_UNSENT) -> None:
        self.publish_many = publish_many
        self.source = source
        self.max_unsent = max_unsent
        self._messages: dict[str, int] = {}
        self._bytes: dict[str, int] = {}
        self._unsent: list[Outgoing] = []
        # Message ids unique across restarts of the same node id (colony up reuses them).
        self._run = uuid.uuid4().hex[:12]
        self._flushes = 0

    def stored(self, address: str, bytes_used: int | None) -> None:
        self._messages[address] = self._messages.get(address, 0) + 1
        if bytes_used is not None:
            self._bytes[address] = bytes_used

    @property
    def pending(self) -> int:
        """Counts not yet published plus events waiting for a confirmed resend."""
        return len(self._messages) + len(self._bytes) + len(self._unsent)

    async def flush(self) -> None:
        messages, self._messages = self._messages, {}
        sizes, self._bytes = self._bytes, {}
        facts = [("messages_in", a, n) for a, n in messages.items()] + [("storage_bytes", a, b) for a, b in sizes.items()]
        self._flushes += 1
        batch = self._unsent
        self._unsent = []
        for i, (metric, address, amount) in enumerate(facts):
            domain = address.rpartition("@")[2]
            event = UsageRecorded(domain=domain, account=address, metric=metric, amount=amount, source=self.source)
            msg_id = f"usage/{self.source}/{self._run}/{self._flushes}/{i}"
            batch.append((names.usage_subject(domain), event.encode(), {"Nats-Msg-Id": msg_id}))
        if not batch:
            return
        try:
            answers = await self.publish_many(batch)
        except Exception as exc:  # the connection is away: everything waits for the next flush
            log.warning("usage not recorded yet (%d events): %s", len(batch), exc)
            answers = [None] * len(batch)
        failed = [msg for msg, answer in zip(batch, answers, strict=True) if not landed(answer)]
        if failed:
            log.warning("usage: %d of %d events not confirmed; sent again with the next flush", len(failed),
                        len(batch))
            if len(failed) > self.max_unsent:
                log.warning("usage: %d unconfirmed events dropped (more than %d waiting)",
                            len(failed) - self.max_unsent, self.max_unsent)
                failed = failed[-self.max_unsent:]
            self._unsent = failed
