"""PROVISIONING -> the ``directory`` KV bucket the edges read (DESIGN §3).

Keys (``names.directory_key``): ``domain.<d>``, ``address.<local@d>``, ``domain_alias.<d>``,
``cos.<name>``.  Each value is the aggregate's current state as JSON, without secrets
(password hashes and HA1s stay behind the auth service), plus ``seq``: the PROVISIONING
sequence it reflects.  A deleted aggregate becomes ``{"deleted": true, "seq": N}``; edges
treat that like a missing key.  Tokens and a domain move's per-account progress
(``domain_move.<d>``) are not in the directory.

The directory is not read from the stream on its own: it rides on the read model's pull
consumer (``runner.StreamProjection`` with ``directory=``), which decodes each event once and
hands every batch to both, the SQL transaction in its worker thread and these writes on the
event loop at the same time.  Its checkpoint lives with the directory, in the bucket itself
(``contracts.directory.POSITION_KEY``: every event at or below it is in the directory), so a
read-model database rebuilt from scratch does not rewrite a directory that is current, and a
directory purged or restored from a backup is caught up from where it is.

Within a batch, a creation alone on its subject is written as is and a deletion as the deleted
marker, pipelined -- except a deletion that opens its subject (appended expecting an empty
subject: the aggregate never lived), which leaves the key missing, as edges read the marker
anyway; any other event makes us read the aggregate back and write its newest state.  The
position is written (``advance``) only once a batch's writes and those of every batch before
it are acknowledged; the writes of consecutive batches may overlap.  Every projector follows the whole stream, so two of them may write one key, or one
may write a key behind another (events of one aggregate in different batches): every write
is a compare-and-set that only moves ``seq`` forward, and the position only moves forward,
so the directory never goes back to an older state.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Container
from typing import Any

import orjson

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from colony import events as ev
from colony.bus import names
from colony.bus.pipelined import landed, publish_pipelined
from colony.bus.tokens import from_token
from colony.contracts.directory import POSITION_KEY
from colony.eventstore import EXPECTED_LAST_SUBJECT_SEQUENCE, EventStore
from colony_admin import aggregates

log = logging.getLogger("colony.admin.directory")

# The durable consumer through which the directory once read the stream on its own; a durable
# never expires, so a projector removes it at start.
_RETIRED_DURABLE = "admin-directory"
_SECRET_FIELDS = ("password_hash", "sip_ha1", "secret_sha256")
_SUBJECT_PREFIX = "colony.prov."
_ACK_TIMEOUT = 5.0  # seconds for a batch's pipelined first writes; late ones are settled one by one


_CREATIONS = (ev.DomainCreated, ev.AccountCreated, ev.AliasCreated, ev.DomainAliasCreated, ev.CosCreated,
              ev.ApiTokenCreated)
# Every one of these folds to None (``aggregates.apply``), whatever the aggregate held before.
_DELETIONS = (ev.DomainDeleted, ev.DomainAliasDeleted, ev.AccountDeleted, ev.AliasDeleted, ev.CosDeleted)
_CREATION, _DELETION, _OTHER = 1, 2, 0
_SORT: dict[type, int] = {}  # event class -> which of the three, decided once per class


def _sort_of(event: ev.Event) -> int:
    """``_DELETION``, ``_CREATION`` or ``_OTHER``, as isinstance against the tuples above says,
    remembered per class: on pydantic models (ABCMeta) each missed isinstance costs ~0.1 us, and
    the tuples took ~0.6 us of every account a bulk import writes."""
    sort = _SORT.get(type(event))
    if sort is None:
        sort = _SORT[type(event)] = _DELETION if isinstance(event, _DELETIONS) else \
            _CREATION if isinstance(event, _CREATIONS) else _OTHER
    return sort


def _json(value: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        # orjson refuses integers beyond 64 bits; an event holding one (appended before the API
        # refused them) stopped this projection -- and the read model's, on the same consumer --
        # at its sequence for good.  The standard library writes any integer.
        return json.dumps(value, separators=(",", ":")).encode()


_UNPUBLISHED = (names.AGG_TOKEN, names.AGG_DOMAIN_MOVE)


def directory_entry(kind: str, name: str, state: aggregates.State, seq: int) -> tuple[str, dict[str, Any]] | None:
    """Pure: the key and value the directory holds for an aggregate; None if not published."""
    if kind in _UNPUBLISHED:
        return None
    return names.directory_key(kind, name), _value(state, seq)


def subject_entry(subject: str, state: aggregates.State, seq: int) -> tuple[str, dict[str, Any]] | None:
    """``directory_entry`` of the aggregate of a PROVISIONING subject, keyed straight from the
    subject: ``colony.prov.<kind>.<token>`` and ``<kind>.<token>`` carry the same token
    (``names.provisioning_subject``, ``names.directory_key``), so a bulk import's hot path
    decodes and encodes no name."""
    key = subject[len(_SUBJECT_PREFIX):]
    if key.partition(".")[0] in _UNPUBLISHED:
        return None
    return key, _value(state, seq)


def _value(state: aggregates.State, seq: int) -> dict[str, Any]:
    if state is None:
        return {"deleted": True, "seq": seq}
    value = dict(state)  # a copy and three pops: cheaper than a comprehension over every field
    for secret in _SECRET_FIELDS:
        value.pop(secret, None)
    value["seq"] = seq
    return value


def parse_subject(subject: str) -> tuple[str, str]:
    kind, _, token = subject[len(_SUBJECT_PREFIX):].partition(".")
    return kind, from_token(token)


Item = tuple[int, str, ev.Event]  # stream sequence, subject, the event decoded


class DirectoryProjection:
    """The directory's side of the read model's feed: ``open()`` once per feed (answers the
    position to start after), then ``handle()`` for every batch in stream order."""

    def __init__(self, nc: Client, js: JetStreamContext, store: EventStore) -> None:
        self.nc, self.js, self.store = nc, js, store
        self.position = 0  # every event at or below it is in the directory
        self._position_revision: int | None = None  # of the position key, as last read or written here
        self._kv: KeyValue | None = None

    async def open(self) -> int:
        self._kv = await self.js.key_value(names.BUCKET_DIRECTORY)
        try:
            await self.js.delete_consumer(names.STREAM_PROVISIONING, _RETIRED_DURABLE)
        except NotFoundError:
            pass
        try:
            entry = await self._kv.get(POSITION_KEY)
            self.position = int(json.loads(entry.value or b"{}").get("seq", 0))
            self._position_revision = entry.revision
        except KeyNotFoundError:
            self.position, self._position_revision = 0, None
        return self.position

    async def handle(self, items: list[Item], opened: Container[int] = ()) -> None:
        """``write`` a batch, then ``advance`` past it: for a caller with one batch at a time."""
        if items:
            await self.write(items, opened)
            await self.advance(items[-1][0])

    async def write(self, items: list[Item], opened: Container[int] = ()) -> None:
        """Write a batch's events above the position (not the position itself: ``advance``).
        Writes of several batches may be in flight at once: each write only moves its key's
        ``seq`` forward, whichever lands first.  ``opened``: the sequences of events appended
        expecting an empty subject (the server refused them otherwise), i.e. the first event of
        their aggregate.  Raises on a transient error (the bus unreachable): the caller's loop
        starts again from the position, and writing an event twice is harmless."""
        if not items or items[-1][0] <= self.position:
            return
        by_subject: dict[str, list[Item]] = {}
        for item in items:
            if item[0] > self.position:
                by_subject.setdefault(item[1], []).append(item)
        fresh: list[tuple[str, dict[str, Any]]] = []
        others: list[str] = []
        for subject, group in by_subject.items():
            # The batch's last event of the subject: a deletion ends the aggregate whatever
            # came before it, a creation alone in the batch is its whole state.
            seq, _, event = group[-1]
            sort = _sort_of(event)
            if sort == _DELETION or (len(group) == 1 and sort == _CREATION):
                if len(group) == 1 and seq in opened and sort == _DELETION:
                    # A deletion that opens its subject (a bulk import's fence of each new
                    # domain's name): the aggregate never lived, so its key is missing for every
                    # projector at every position, which edges read as the deleted marker
                    # would say.  Not writing it saves a KV write and its ack per new domain.
                    continue
                # No need to read the aggregate back (a bulk import fences every new domain's
                # name with a deletion on its domain-alias subject: reading each of those back
                # cost a stream read per domain and halved the import's visible rate).
                state = None if sort == _DELETION else aggregates.apply(None, event)
                entry = subject_entry(subject, state, seq)
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

    async def advance(self, last: int) -> None:
        """Move the position to ``last``.  Only once every event up to ``last`` is written (the
        caller's order: a batch's writes, and those of every batch before it, acknowledged).
        One compare-and-set on the revision this projector wrote last; another projector's
        write in between makes it read the key and move forward only (``_put_forward``)."""
        if last <= self.position:
            return
        assert self._kv is not None
        if self._position_revision is not None:
            try:
                self._position_revision = await self._kv.update(POSITION_KEY, _json({"seq": last}),
                                                                last=self._position_revision)
                self.position = last
                return
            except KeyWrongLastSequenceError:
                pass
        self._position_revision = None
        self.position = max(last, await self._put_forward(POSITION_KEY, {"seq": last}))

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

    async def _put_forward(self, key: str, value: dict[str, Any]) -> int:
        """Write ``value`` unless the key holds its ``seq`` or a newer one; answers the ``seq``
        the key holds afterwards (another projector's, when it was ahead)."""
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
                    return value["seq"]
                held = json.loads(current.value).get("seq", 0) if current.value else 0
                if held >= value["seq"]:
                    return held  # someone already wrote this state or a newer one
                await self._kv.update(key, data, last=current.revision)
                return value["seq"]
            except KeyWrongLastSequenceError:
                continue  # raced with another instance: re-read and decide again
        log.warning("directory: gave up writing %s after repeated races", key)
        return 0
