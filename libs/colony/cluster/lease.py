"""A lease in a KV bucket whose max age is the lease length.

Leadership is decided by compare-and-set writes only, never by a read: ``acquire`` is a
``create`` (or an ``update`` on the revision we saw, to take over from a holder proven gone),
``renew`` is an ``update(last=my revision)``.  The revision of the winning acquisition is the
**epoch**; it only grows, so a receiver can refuse anything stamped with an older one.

The holder measures the lease on its own monotonic clock from the moment it *sent* the
write (the server's clock started later than that, so our deadline is never past the
server's) and stops acting ``safety_margin`` before that.  See NATS-NOTES "Leases".
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel, Field

from colony.events import utcnow


class LeaseRecord(BaseModel):
    holder: str
    epoch: int = 0  # 0 in the acquiring write itself (the revision is not known before it)
    acquired_at: datetime = Field(default_factory=utcnow)
    renewed_at: datetime = Field(default_factory=utcnow)

    def encode(self) -> bytes:
        return self.model_dump_json().encode()


@dataclass
class LeaseEntry:
    record: LeaseRecord
    revision: int

    @property
    def epoch(self) -> int:
        return self.record.epoch or self.revision


class LeaseLost(Exception):
    pass


async def read_lease(kv: KeyValue, key: str) -> LeaseEntry | None:
    """The current lease, if any.  For display and for choosing whom to probe, never for deciding."""
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return None
    if entry.value is None or entry.operation in ("DEL", "PURGE"):
        return None
    return LeaseEntry(LeaseRecord.model_validate_json(entry.value), entry.revision)


class Lease:
    def __init__(self, kv: KeyValue, key: str, holder: str, ttl: float, safety_margin: float,
                 clock=time.monotonic) -> None:
        if safety_margin >= ttl:
            raise ValueError("the safety margin must be shorter than the lease")
        self._kv, self._key, self._holder = kv, key, holder
        self._ttl, self._margin, self._clock = ttl, safety_margin, clock
        self.revision = 0
        self.epoch = 0
        self._valid_until = 0.0
        self._acquired_at = utcnow()

    @property
    def held(self) -> bool:
        """True while we may act: our lease cannot have expired yet, by our own clock."""
        return self.epoch > 0 and self._clock() < self._valid_until

    @property
    def remaining(self) -> float:
        return max(0.0, self._valid_until - self._clock()) if self.epoch else 0.0

    async def try_acquire(self, take_over_revision: int | None = None) -> bool:
        """Create the key, or replace the revision we were told is abandoned.  True if we won."""
        sent = self._clock()
        self._acquired_at = utcnow()
        record = LeaseRecord(holder=self._holder, acquired_at=self._acquired_at).encode()
        try:
            if take_over_revision is None:
                rev = await self._kv.create(self._key, record)
            else:
                rev = await self._kv.update(self._key, record, last=take_over_revision)
        except KeyWrongLastSequenceError:
            return False
        self.revision = self.epoch = rev
        self._valid_until = sent + self._ttl - self._margin
        return True

    async def renew(self) -> None:
        """Extend the lease; raises LeaseLost if someone else holds it now."""
        if not self.epoch:
            raise LeaseLost("not held")
        sent = self._clock()
        if sent >= self._valid_until:
            self._drop()
            raise LeaseLost("our own deadline passed before we could renew")
        record = LeaseRecord(holder=self._holder, epoch=self.epoch, acquired_at=self._acquired_at).encode()
        try:
            self.revision = await self._kv.update(self._key, record, last=self.revision)
        except (KeyWrongLastSequenceError, KeyNotFoundError) as exc:
            self._drop()
            raise LeaseLost(f"lease taken or expired: {exc}") from exc
        self._valid_until = sent + self._ttl - self._margin

    async def release(self) -> None:
        """Give the lease up at once (graceful stop or drain), so a successor need not wait."""
        if self.epoch:
            try:
                await self._kv.delete(self._key, last=self.revision)
            except (KeyWrongLastSequenceError, KeyNotFoundError):
                pass
        self._drop()

    def _drop(self) -> None:
        self.epoch = 0
        self.revision = 0
        self._valid_until = 0.0
