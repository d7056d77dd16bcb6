"""Metering of stored mail, batched: ``UsageRecorded`` events per account and flush.

Every stored message adds to its account's ``messages_in`` and sets its ``storage_bytes``
(the gauge the admin API keeps the latest of); ``flush`` publishes one event per account and
metric for everything since the last flush.  Publishing two JetStream messages per delivery
instead would double the bus work of the delivery path.  The flush runs every
``usage_flush_interval`` and on stop; a crash loses at most one interval of counts (the
mail itself is safe), a bounded under-count the billing period absorbs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from colony.bus import names
from colony.events import UsageRecorded

log = logging.getLogger("colony.mailstore.usage")

Publish = Callable[[str, bytes], Awaitable[object]]


class UsageMeter:
    def __init__(self, publish: Publish, source: str) -> None:
        self.publish = publish
        self.source = source
        self._messages: dict[str, int] = {}
        self._bytes: dict[str, int] = {}

    def stored(self, address: str, bytes_used: int | None) -> None:
        self._messages[address] = self._messages.get(address, 0) + 1
        if bytes_used is not None:
            self._bytes[address] = bytes_used

    @property
    def pending(self) -> int:
        return len(self._messages) + len(self._bytes)

    async def flush(self) -> None:
        messages, self._messages = self._messages, {}
        sizes, self._bytes = self._bytes, {}
        events = [("messages_in", a, n) for a, n in messages.items()] + [("storage_bytes", a, b) for a, b in sizes.items()]
        for metric, address, amount in events:
            domain = address.rpartition("@")[2]
            event = UsageRecorded(domain=domain, account=address, metric=metric, amount=amount, source=self.source)
            try:
                await self.publish(names.usage_subject(domain), event.encode())
            except Exception as exc:  # keep it for the next flush rather than lose it
                log.warning("usage for %s not recorded yet: %s", address, exc)
                if metric == "messages_in":
                    self._messages[address] = self._messages.get(address, 0) + int(amount)
                else:
                    self._bytes.setdefault(address, int(amount))
