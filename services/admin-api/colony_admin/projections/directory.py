"""PROVISIONING -> the ``directory`` KV bucket the edges read (DESIGN §3).

Keys (``names.directory_key``): ``domain.<d>``, ``address.<local@d>``, ``domain_alias.<d>``,
``cos.<name>``.  Each value is the aggregate's current state as JSON, without secrets
(password hashes and HA1s stay behind the auth service), plus ``seq``: the PROVISIONING
sequence it reflects.  A deleted aggregate becomes ``{"deleted": true, "seq": N}``; edges
treat that like a missing key.  Tokens and a domain move's per-account progress
(``domain_move.<d>``) are not in the directory.

All projectors (``colony_admin.projector``) share one durable consumer, so each event is
handled once somewhere (in batches: a creation event is written as is and a deletion as the deleted marker,
pipelined; any other event makes us read the aggregate back and write its newest state).  Two projectors may still race on one key (events of one aggregate handled by
different projectors), so every write is a compare-and-set that only moves ``seq`` forward:
the directory never goes back to an older state.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import orjson

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from colony import events as ev
from colony.tasks import keep_running
from colony.bus import names
from colony.bus.pipelined import landed, publish_pipelined
from colony.bus.tokens import from_token
from colony.eventstore import EXPECTED_LAST_SUBJECT_SEQUENCE, EventStore
from colony_admin import aggregates
from colony_admin.projections.pull import PullBatches, stream_seq

log = logging.getLogger("colony.admin.directory")

DURABLE = "admin-directory"
_SECRET_FIELDS = ("password_hash", "sip_ha1", "secret_sha256")
_SUBJECT_PREFIX = "colony.prov."
_ACK_TIMEOUT = 5.0  # seconds for a batch's pipelined first writes; late ones are settled one by one


_CREATIONS = (ev.DomainCreated, ev.AccountCreated, ev.AliasCreated, ev.DomainAliasCreated, ev.CosCreated,
              ev.ApiTokenCreated)
# Every one of these folds to None (``aggregates.apply``), whatever the aggregate held before.
_DELETIONS = (ev.DomainDeleted, ev.DomainAliasDeleted, ev.AccountDeleted, ev.AliasDeleted, ev.CosDeleted)


def _json(value: dict[str, Any]) -> bytes:
    return orjson.dumps(value)


def directory_entry(kind: str, name: str, state: aggregates.State, seq: int) -> tuple[str, dict[str, Any]] | None:
    """Pure: the key and value the directory holds for an aggregate; None if not published."""
    if kind in (names.AGG_TOKEN, names.AGG_DOMAIN_MOVE):
        return None
    key = names.directory_key(kind, name)
    if state is None:
        return key, {"deleted": True, "seq": seq}
    value = {k: v for k, v in state.items() if k not in _SECRET_FIELDS}
    value["seq"] = seq
    return key, value


def parse_subject(subject: str) -> tuple[str, str]:
    kind, _, token = subject[len(_SUBJECT_PREFIX):].partition(".")
    return kind, from_token(token)


class DirectoryProjection:
    def __init__(self, nc: Client, js: JetStreamContext, store: EventStore, batch: int = 1000,
                 gate: asyncio.Event | None = None) -> None:
        self.nc, self.js, self.store, self._batch = nc, js, store, batch
        self._gate = gate  # cleared: finish the batch in hand, take no new one (a drained projector)
        self.in_flight = 0  # events of the batch being written (a projector's active work)
        self._kv: KeyValue | None = None

    async def run(self) -> None:
        await keep_running("directory projection (resumes from the durable consumer)", self.follow, log)

    async def follow(self) -> None:
        self._kv = await self.js.key_value(names.BUCKET_DIRECTORY)
        config = ConsumerConfig(durable_name=DURABLE, filter_subject=names.SUBJECTS_PROVISIONING,
                                ack_policy=AckPolicy.ALL, deliver_policy=DeliverPolicy.ALL, ack_wait=60.0,
                                max_ack_pending=20_000)
        await self.js.add_consumer(names.STREAM_PROVISIONING, config=config)
        pull = PullBatches(self.nc, self.js, names.STREAM_PROVISIONING, DURABLE, self._batch)
        await pull.open()
        try:
            while True:
                ask = self._gate is None or self._gate.is_set()
                if not ask and not pull.busy:
                    await self._gate.wait()
                    continue
                msgs = await pull.next(ask)
                if not msgs:
                    continue
                self.in_flight = len(msgs)
                try:
                    await self._handle(msgs)
                    await msgs[-1].ack()  # ack-all: the whole batch is in the directory
                finally:
                    self.in_flight = 0
        finally:
            await pull.close()

    async def _handle(self, msgs) -> None:
        by_subject: dict[str, list] = {}
        for m in msgs:
            by_subject.setdefault(m.subject, []).append(m)
        fresh: list[tuple[str, dict[str, Any]]] = []
        others: list[str] = []
        for subject, group in by_subject.items():
            try:
                # The batch's last event of the subject: a deletion ends the aggregate whatever
                # came before it, a creation alone in the batch is its whole state.
                event = ev.decode(group[-1].data)
            except ev.UnknownEvent as exc:
                # A newer producer's event: say so and leave the key alone rather than guess
                # (and rather than stall the directory on one message forever).
                log.error("directory: skipping %s: %s", subject, exc)
                continue
            if isinstance(event, _DELETIONS) or (len(group) == 1 and isinstance(event, _CREATIONS)):
                # No need to read the aggregate back (a bulk import fences every new domain's
                # name with a deletion on its domain-alias subject: reading each of those back
                # cost a stream read per domain and halved the import's visible rate).
                kind, name = parse_subject(subject)
                state = None if isinstance(event, _DELETIONS) else aggregates.apply(None, event)
                entry = directory_entry(kind, name, state, stream_seq(group[-1]))
                if entry is not None:
                    fresh.append(entry)
            else:
                others.append(subject)
        if fresh:
            written = await self._create_many(fresh)
            await asyncio.gather(*(self._put_forward(key, value)
                                   for (key, value), ok in zip(fresh, written, strict=True) if not ok))
        # Only the newest state of each aggregate matters: one write per subject per batch.
        await asyncio.gather(*(self._publish(subject) for subject in others))

    async def _create_many(self, entries: list[tuple[str, dict[str, Any]]]) -> list[bool]:
        """Write each entry as a new key, pipelined on one reply subscription (expected last
        subject sequence 0); per entry, whether that write landed.  Anything else (the key
        exists -- a deletion marker over a live entry --, a lost ack, an error) is settled by
        ``_put_forward``, which only moves ``seq`` forward, so settling twice is harmless.

        Not ``EventStore.create_many``: its settling reads the subject back with direct gets,
        which the directory bucket's stream does not allow (no responders)."""
        acks = await publish_pipelined(
            self.nc, [(names.kv_subject(names.BUCKET_DIRECTORY, key), _json(value), {EXPECTED_LAST_SUBJECT_SEQUENCE: "0"})
                      for key, value in entries], _ACK_TIMEOUT)
        return [landed(ack) for ack in acks]

    async def _publish(self, subject: str) -> None:
        kind, name = parse_subject(subject)
        if kind == names.AGG_DOMAIN_MOVE:
            return  # a move's progress: nothing an edge reads
        stored = await self.store.read(subject)
        if not stored:
            return
        try:
            state = aggregates.fold(ev.decode(s.data) for s in stored)
        except ev.UnknownEvent as exc:
            log.error("directory: leaving %s as it is: %s", subject, exc)
            return
        entry = directory_entry(kind, name, state, stored[-1].seq)
        if entry is not None:
            await self._put_forward(*entry)

    async def _put_forward(self, key: str, value: dict[str, Any]) -> None:
        assert self._kv is not None
        data = _json(value)
        for _ in range(10):
            try:
                current = await self._kv.get(key)
            except KeyNotFoundError:
                current = None
            try:
                if current is None:
                    await self._kv.create(key, data)
                    return
                if current.value and json.loads(current.value).get("seq", 0) >= value["seq"]:
                    return  # someone already wrote this state or a newer one
                await self._kv.update(key, data, last=current.revision)
                return
            except KeyWrongLastSequenceError:
                continue  # raced with another instance: re-read and decide again
        log.warning("directory: gave up writing %s after repeated races", key)

