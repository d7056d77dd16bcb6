"""A lease in a KV bucket, and writes the server refuses once the lease has moved on.

Leadership is decided by compare-and-set writes only, never by a read: ``acquire`` is a
``create`` (or an update on the revision we saw, to take over from a holder proven gone),
``renew`` is an update on my own last revision.  The revision of the winning acquisition is
the **epoch**; it only grows, so a receiver can refuse anything stamped with an older one.

The holder measures the lease on its own monotonic clock from the moment it *sent* the
write (the server's clock started later than that, so our deadline is never past the
server's) and stops acting ``safety_margin`` before that (``colony.cluster.election.Tenure``).
See NATS-NOTES "Leases".

How an unrenewed lease disappears
    With ``js`` and ``bucket`` given, every lease write carries a per-message TTL
    (``Nats-TTL``, the lease length rounded up to whole seconds, which is what the server
    accepts), so the bucket itself may keep other keys for longer: that is how the
    controller's decisions live beside its lease (``colony.cluster.decisions``).  (The other
    way round does not work: a message whose TTL is longer than the stream's max age still
    goes at the max age, seen on nats-server 2.15.)  Without ``js`` and ``bucket`` the writes
    are plain KV updates and the bucket's max age must be the lease length.

Fenced writes
    ``publish_fenced`` writes to another subject of the lease's stream with
    ``Nats-Expected-Last-Subject-Sequence-Subject: <lease subject>`` and
    ``Nats-Expected-Last-Subject-Sequence: <my lease revision>``.  The server checks both in
    the same step as the write, so once anyone else has taken the lease (or it expired, or
    was released) the write is refused (error 10071) whatever this process believes: a paused
    holder waking up cannot act on stale authority.  Renewals change the lease revision, so
    every write on the lease (renew, fenced writes, release) is made under one lock, in
    order: a renewal never lands between a fenced write's choice of revision and its arrival,
    and a refusal therefore always means the lease is lost, never "renewed meanwhile".
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from datetime import datetime

from nats.js import JetStreamContext
from nats.js.api import Header
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel, Field

from colony.bus import names
from colony.cluster.election import Tenure, check_margin
from colony.events import utcnow

EXPECTED_LAST_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"  # nats-py 2.16 has no constant
_WRONG_LAST_SEQUENCE = (10071, 10164)  # JSStreamWrongLastSequence(Constant)Err


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


class FencedWriteRefused(LeaseLost):
    """The server refused a fenced write: the lease is no longer ours (taken, expired or released)."""


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
                 clock=time.monotonic, *, js: JetStreamContext | None = None, bucket: str | None = None) -> None:
        check_margin(ttl, safety_margin)
        if (js is None) != (bucket is None):
            raise ValueError("per-message TTL leases need both js and bucket")
        self._kv, self._key, self._holder = kv, key, holder
        self._ttl, self._margin, self._clock = ttl, safety_margin, clock
        self._js = js
        self.subject = names.kv_subject(bucket, key) if bucket else None
        self.revision = 0
        self.epoch = 0
        self.tenure: Tenure | None = None
        self._acquired_at = utcnow()
        self._writes = asyncio.Lock()  # one write on the lease at a time (see "Fenced writes")

    @property
    def held(self) -> bool:
        """True while we may act: our lease cannot have expired yet, by our own clock."""
        return self.epoch > 0 and self.tenure is not None and self.tenure.acting(self._clock())

    @property
    def remaining(self) -> float:
        return self.tenure.remaining(self._clock()) if self.epoch and self.tenure else 0.0

    async def try_acquire(self, take_over_revision: int | None = None) -> bool:
        """Create the key, or replace the revision we were told is abandoned.  True if we won."""
        async with self._writes:
            sent = self._clock()
            self._acquired_at = utcnow()
            record = LeaseRecord(holder=self._holder, acquired_at=self._acquired_at).encode()
            try:
                if take_over_revision is None:
                    rev = await self._kv.create(self._key, record, msg_ttl=self._msg_ttl())
                else:
                    rev = await self._write(record, last=take_over_revision)
            except KeyWrongLastSequenceError:
                return False
            self.revision = self.epoch = rev
            self.tenure = Tenure(sent, self._ttl, self._margin)
            return True

    async def renew(self, late_ok: bool = False) -> None:
        """Extend the lease; raises LeaseLost if someone else holds it now.

        Past our own deadline the lease is given up (``LeaseLost``): we stopped acting when
        it passed, and from then on a successor may take it.  With ``late_ok`` the renewal is
        still tried, because it is a CAS on our last revision: it succeeds only if nobody took
        the lease meanwhile and the server has not expired it, so we are still the only
        holder, with the same epoch, and act again from now on.  Whoever's CAS on that
        revision lands first wins.  (A mail store on a loaded machine whose renewal ran late
        keeps its accounts open instead of taking them over from itself under a new epoch,
        a rebuild each -- work that made it later still.)"""
        async with self._writes:
            if not self.epoch:
                raise LeaseLost("not held")
            sent = self._clock()
            if not self.held and not late_ok:
                self._drop()
                raise LeaseLost("our own deadline passed before we could renew")
            record = LeaseRecord(holder=self._holder, epoch=self.epoch, acquired_at=self._acquired_at).encode()
            try:
                self.revision = await self._write(record, last=self.revision)
            except (KeyWrongLastSequenceError, KeyNotFoundError) as exc:
                self._drop()
                raise LeaseLost(f"lease taken or expired: {exc}") from exc
            self.tenure = Tenure(sent, self._ttl, self._margin)

    async def publish_fenced(self, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> int:
        """Write ``payload`` to ``subject`` (in the lease's stream) only if the lease is still
        ours, as the server sees it.  Returns the stream sequence.

        Raises ``LeaseLost`` without writing when our own tenure has ended, and
        ``FencedWriteRefused`` (a ``LeaseLost``) when the server refuses it; either way the
        lease is dropped here, so ``held`` is False from then on.  A time-out leaves the
        outcome unknown and the lease as it was: the caller may retry.
        """
        if self._js is None or self.subject is None:
            raise RuntimeError("fenced writes need a lease made with js and bucket")
        async with self._writes:
            if not self.held:
                self._drop()
                raise LeaseLost("not the holder (or our own deadline passed)")
            fence = {EXPECTED_LAST_SUBJECT: self.subject, Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(self.revision)}
            try:
                ack = await self._js.publish(subject, payload, headers={**(headers or {}), **fence})
            except APIError as exc:
                if exc.err_code in _WRONG_LAST_SEQUENCE:
                    self._drop()
                    raise FencedWriteRefused(f"the server refused it: the lease moved on ({exc.description})") from exc
                raise
            return ack.seq

    async def release(self) -> None:
        """Give the lease up at once (graceful stop or drain), so a successor need not wait."""
        async with self._writes:
            try:
                if self.epoch:
                    await self._kv.delete(self._key, last=self.revision)
            except (KeyWrongLastSequenceError, KeyNotFoundError):
                pass
            finally:  # a delete that failed (bus gone) still ends our tenure: the TTL frees it
                self._drop()

    def forget(self) -> None:
        """Stop acting on the lease without a write (our tenure ended): the server expires it."""
        self._drop()

    def _msg_ttl(self) -> int | None:
        # nats-py sends whole seconds (1.9 would become 1): round up, never down.
        return math.ceil(self._ttl) if self._js is not None else None

    async def _write(self, record: bytes, last: int) -> int:
        """A CAS on the lease key; with a per-message TTL when the lease has one."""
        if self._js is None:
            return await self._kv.update(self._key, record, last=last)
        try:
            ack = await self._js.publish(self.subject, record, msg_ttl=self._msg_ttl(),
                                         headers={Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(last)})
        except APIError as exc:
            if exc.err_code in _WRONG_LAST_SEQUENCE:
                raise KeyWrongLastSequenceError(exc.description) from exc
            raise
        return ack.seq

    def _drop(self) -> None:
        self.epoch = 0
        self.revision = 0
        self.tenure = None
