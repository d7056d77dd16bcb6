"""``DirectoryCache``: a local, watch-fed copy of the ``directory`` bucket, so an edge answers
``RCPT TO`` (and anything else ``recipients.resolve`` needs) with no round trip.

Theory of operation
-------------------
``DirectoryIndex`` is the pure part: ``apply(key, value)`` takes one bucket entry (its key
and its bytes, or None for a delete) and keeps four dicts: domains, domain aliases,
addresses and classes of service.  It implements ``recipients.DirectoryView``.  Memory is
what keeps an edge small with a million accounts, so an address is a small tuple
(``AccountInfo``/``AliasInfo``) keyed by its address, never a pydantic object;
repeated values (states, class names, service lists, quotas) are interned, so a million
accounts share a handful of those objects.

``DirectoryCache`` is the asyncio shell: one push consumer on the bucket's stream
(``KV_directory``), ``deliver_policy=last_per_subject`` so the cold start reads each key's
newest value once, then keeps following live writes on the same consumer: no gap between
"loaded" and "following".  nats-py's KV watcher does the same over an ordered consumer but
builds an ``Entry`` per key and answers flow control late (see ``DirectoryCache``); a plain
subscription that answers flow control in order is what makes a million keys load in
seconds.  ``FeedPosition`` checks every delivery follows the last one; on a gap (or
silence) the consumer is recreated from the last stream sequence applied, so the copy
never silently diverges.  During the cold start an address is kept as its JSON and parsed
on first use or by a background compaction.

``loaded`` is set once the consumer has delivered everything that was in the bucket when it
started (the ``pending`` count of the ack subject reaches 0, or the bucket was empty).
Until then answers may be incomplete: an edge says 451 4.3.0 rather than 550 before it.

Consistency: a write reaches every cache within the consumer's delivery latency
(milliseconds on a healthy bus); a deletion or suspension is a write like any other.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client.core import GaugeMetricFamily, Metric

from colony.bus import names
from colony.bus.connection import unsubscribe_all
from colony.bus.tokens import TokenError, from_token
from colony.tasks import TaskOwner
from colony.contracts.directory import AccountInfo, AliasInfo, DomainInfo, VacationEntry
from colony.contracts.recipients import Limits, Resolution, account_limits, resolve

log = logging.getLogger("colony.contracts.cache")

_KV_PREFIX = f"$KV.{names.BUCKET_DIRECTORY}."
_OPERATION = "KV-Operation"  # DEL or PURGE on a KV delete; absent on a put
_STATUS = "Status"           # "100" on the server's control messages (flow control, heartbeats)
_STALLED = "Nats-Consumer-Stalled"
_LAST_CONSUMER = "Nats-Last-Consumer"


def _vacation(raw: Any) -> VacationEntry | None:
    """An account's automatic reply (rare: None, shared, for nearly every account); one that
    does not parse is left out rather than the whole entry refused."""
    if not raw:
        return None
    try:
        return VacationEntry.model_validate(raw)
    except ValueError:
        return None


def _name(token: str) -> str:
    # Addresses and domains escape only '@' and '.' in the common case: two replaces are a
    # fifth of from_token's cost, and a bulk start decodes a million keys.  An '_' left over
    # means some other escape: let from_token do it properly.
    quick = token.replace("_40", "@").replace("_2e", ".")
    return quick if "_" not in quick else from_token(token)


class DirectoryIndex:
    """The pure in-memory directory; see the module docstring."""

    __slots__ = ("_domains", "_domain_aliases", "_addresses", "_cos", "_interned", "_deferred", "bad_entries",
                 "on_change")

    def __init__(self) -> None:
        self._domains: dict[str, DomainInfo] = {}
        self._domain_aliases: dict[str, str] = {}
        # An address's value is its tuple, or (loaded but not yet compacted) its raw JSON.
        self._addresses: dict[str, AccountInfo | AliasInfo | bytes] = {}
        self._deferred: list[str] = []  # addresses that may still hold raw JSON
        self._cos: dict[str, dict[str, Any]] = {}
        # value -> the one shared copy (states, class names, service tuples, quotas)
        self._interned: dict[Any, Any] = {}
        self.bad_entries = 0
        # Told (kind, name) of every key written or deleted, e.g. so the edge's login cache
        # forgets an account whose password, state or services changed.
        self.on_change: Callable[[str, str], None] | None = None

    # --- DirectoryView ---------------------------------------------------------------------
    def domain(self, name: str) -> DomainInfo | None:
        return self._domains.get(name)

    def domain_alias(self, name: str) -> str | None:
        return self._domain_aliases.get(name)

    def address(self, address: str) -> AccountInfo | AliasInfo | None:
        entry = self._addresses.get(address)
        if entry.__class__ is bytes:
            return self._inflate(address, entry)
        return entry

    def cos(self, name: str) -> dict[str, Any] | None:
        return self._cos.get(name)

    def __len__(self) -> int:
        return len(self._addresses)

    @property
    def uncompacted(self) -> int:
        """Addresses that may still be raw JSON (0 once ``compact()`` has caught up)."""
        return len(self._deferred)

    def counts(self) -> dict[str, int]:
        return {"domains": len(self._domains), "domain_aliases": len(self._domain_aliases),
                "addresses": len(self._addresses), "cos": len(self._cos)}

    # --- updates ------------------------------------------------------------------------------
    def _intern(self, value: Any) -> Any:
        return self._interned.setdefault(value, value)

    def apply(self, key: str, value: bytes | None, defer: bool = False) -> None:
        """One bucket entry: ``key`` as in the bucket (``address.<token>``), ``value`` its bytes;
        None, empty or a ``{"deleted": true}`` tombstone removes the key.

        ``defer``: keep an address's JSON as it came and parse it on first use or in
        ``compact()`` (a cold start of a million keys spends its time in the NATS client;
        parsing them later halves it)."""
        kind, _, token = key.partition(".")
        try:
            name = _name(token)
            if self.on_change is not None:
                self.on_change(kind, name)
            if defer and value and kind == names.AGG_ADDRESS and b'"deleted"' not in value:
                self._addresses[name] = value
                self._deferred.append(name)
                return
            raw = orjson.loads(value) if value else None
            if raw is not None and not isinstance(raw, dict):
                raise ValueError("not a JSON object")
            if raw is None or raw.get("deleted"):
                self._remove(kind, name)
                return
            self._put(kind, name, raw)
        except (ValueError, TypeError, KeyError, TokenError) as exc:
            # One bad value must not stop the edge from following the rest of the directory.
            self.bad_entries += 1
            log.warning("directory cache: ignoring %s: %s", key, exc)

    def _inflate(self, name: str, value: bytes) -> AccountInfo | AliasInfo | None:
        try:
            raw = orjson.loads(value)
            if not isinstance(raw, dict):
                raise ValueError("not a JSON object")
            self._put(names.AGG_ADDRESS, name, raw)
        except (ValueError, TypeError, KeyError) as exc:
            self.bad_entries += 1
            log.warning("directory cache: ignoring address %s: %s", name, exc)
            self._addresses.pop(name, None)
            return None
        return self._addresses[name]

    def compact(self, budget: int = 10_000) -> int:
        """Parse up to ``budget`` deferred addresses into their tuples; returns how many are left."""
        deferred, addresses = self._deferred, self._addresses
        for _ in range(min(budget, len(deferred))):
            name = deferred.pop()
            value = addresses.get(name)
            if value.__class__ is bytes:
                self._inflate(name, value)
        if not deferred:
            self._deferred = []  # give the list's memory back
        return len(deferred)

    def _remove(self, kind: str, name: str) -> None:
        if kind == names.AGG_ADDRESS:
            self._addresses.pop(name, None)
        elif kind == names.AGG_DOMAIN:
            self._domains.pop(name, None)
        elif kind == names.AGG_DOMAIN_ALIAS:
            self._domain_aliases.pop(name, None)
        elif kind == names.AGG_COS:
            self._cos.pop(name, None)

    def _put(self, kind: str, name: str, raw: dict[str, Any]) -> None:
        intern = self._intern
        if kind == names.AGG_ADDRESS:
            if raw["kind"] == "alias":
                self._addresses[name] = AliasInfo(name, tuple(raw["targets"]))
                return
            if raw["kind"] != "account":
                raise ValueError(f"address of kind {raw['kind']!r}")
            services = raw.get("services")
            forwarding = raw.get("forwarding") or ()
            self._addresses[name] = AccountInfo(
                name, sys.intern(raw.get("state", "active")), intern(raw.get("cos")), intern(raw.get("quota_bytes")),
                intern(tuple(services)) if services is not None else None,
                tuple(forwarding) if forwarding else (), bool(raw.get("forward_keep_copy", False)),
                _vacation(raw.get("vacation")))
        elif kind == names.AGG_DOMAIN:
            move = raw.get("move") or {}
            moving = bool(move) and move.get("phase") not in ("done", "cancelled")
            self._domains[name] = DomainInfo(name, sys.intern(raw.get("state", "active")),
                                             intern(raw.get("home_region", "")), intern(raw.get("cos")),
                                             intern(raw.get("dmarc_enforcement")),
                                             intern(move.get("phase")) if moving else None,
                                             intern(move.get("target", "")) if moving else "",
                                             str((raw.get("branding") or {}).get("display_name") or ""))
        elif kind == names.AGG_DOMAIN_ALIAS:
            self._domain_aliases[name] = intern(raw["domain"])
        elif kind == names.AGG_COS:
            self._cos[name] = dict(raw.get("limits") or {})
        # other kinds: a newer writer's; ignore them rather than fail


class FeedPosition:
    """Pure: where the cache's consumer is, and whether a delivery follows the last one.

    Every data message's reply subject carries the consumer sequence (``cseq``, +1 per
    delivery), the stream sequence and what is still pending::

        $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>.<token>

    A ``cseq`` that is not the next one means a message was lost on the way (a slow
    consumer, a reconnect): the consumer must be recreated from ``stream_seq + 1``.
    """

    __slots__ = ("stream_seq", "consumer_seq")

    def __init__(self, stream_seq: int = 0) -> None:
        self.stream_seq, self.consumer_seq = stream_seq, 0

    def accept(self, reply: str) -> int | None:
        """The pending count after this delivery, or None if it is out of order (reset)."""
        tokens = reply.split(".")
        if len(tokens) == 9:
            sseq, cseq, pending = tokens[5], tokens[6], tokens[8]
        elif len(tokens) >= 12:
            sseq, cseq, pending = tokens[7], tokens[8], tokens[10]
        else:
            raise ValueError(f"not a JetStream delivery: {reply!r}")
        if int(cseq) != self.consumer_seq + 1:
            return None
        self.consumer_seq, self.stream_seq = self.consumer_seq + 1, int(sseq)
        return int(pending)

    def heard_up_to(self, last_consumer_seq: int) -> bool:
        """A heartbeat's ``Nats-Last-Consumer``: False if it sent more than we got."""
        return last_consumer_seq == self.consumer_seq


class DirectoryCache(DirectoryIndex):
    """A ``DirectoryIndex`` kept up to date from the bus.  ``start()``, then ``await
    wait_loaded()``; ``resolve(rcpt)`` and the view methods answer from memory.

    The feed is a push consumer of its own on ``KV_directory`` (ack none, flow control,
    idle heartbeats, in memory, removed by the server when this process is gone), delivered
    to this connection's inbox.  nats-py's ordered consumer does the same, but answers a
    flow-control request from a task that looks every 0.25 s, so a cold start of a million
    keys spent much of its time waiting; here every control message is answered when it
    reaches the callback, which is exactly when everything before it has been applied.
    Losing a message (``FeedPosition``), a heartbeat that says more was sent, or silence
    for three heartbeats recreates the consumer from the last stream sequence applied.
    """

    __slots__ = ("nc", "limits", "loaded", "heartbeat", "_sub", "_consumer", "_position", "_last_heard",
                 "_generation", "_resetting", "_owner", "_own_owner", "_tasks", "_stream", "resets")

    def __init__(self, nc: Client, limits: Limits = Limits(), owner: TaskOwner | None = None,
                 heartbeat: float = 5.0) -> None:
        """``owner``: where the background work runs (``runtime.task_owner`` in a service, so a
        failure reaches ``colony status``); default: an owner of its own that logs."""
        super().__init__()
        self.nc, self.limits, self.heartbeat = nc, limits, heartbeat
        self.loaded = asyncio.Event()
        self._sub: Any = None
        self._consumer: str | None = None
        self._position = FeedPosition()
        self._last_heard = 0.0
        self._generation = 0  # one per consumer: deliveries of an older one are ignored
        self._resetting = False
        self._tasks: set[asyncio.Task] = set()
        self._stream = f"KV_{names.BUCKET_DIRECTORY}"
        self._own_owner = owner is None
        self._owner = owner or TaskOwner(log)
        self.resets = 0

    async def start(self) -> None:
        js = self.nc.jetstream()
        info = await js.stream_info(self._stream)
        if not info.state.messages:
            self.loaded.set()
        await self._follow()
        if not self.loaded.is_set():
            # Emptied between the two calls (everything purged): nothing will come to say so.
            consumer = await js.consumer_info(self._stream, self._consumer)
            if consumer.num_pending == 0 and consumer.delivered.consumer_seq == 0:
                self.loaded.set()
        self._spawn("directory cache watchdog", self._watch, restart=True)

    def _spawn(self, name: str, body, restart: bool = False) -> None:
        task = self._owner.spawn(name, body, restart=restart)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _follow(self) -> None:
        """(Re)create the subscription and the consumer, from where the last one stopped."""
        self._generation += 1
        generation = self._generation
        await self._unfollow()
        start = self._position.stream_seq
        self._position = FeedPosition(start)
        inbox = self.nc.new_inbox()

        async def on_msg(msg: Msg) -> None:
            if generation == self._generation:  # else: a replaced consumer's leftovers
                await self._on_msg(msg)

        # Large pending limits: during the cold start the server pushes faster than one
        # Python thread applies; flow control bounds what is in flight, these limits only
        # keep nats-py from dropping what is (a drop would be seen as a gap and reset).
        self._sub = await self.nc.subscribe(inbox, cb=on_msg, pending_msgs_limit=1_000_000,
                                            pending_bytes_limit=512 * 1024 * 1024)
        config = ConsumerConfig(
            deliver_subject=inbox, filter_subject=_KV_PREFIX + ">", ack_policy=AckPolicy.NONE,
            flow_control=True, idle_heartbeat=self.heartbeat, mem_storage=True, num_replicas=1,
            inactive_threshold=max(30.0, 6 * self.heartbeat),
            # From scratch: each key's newest value once.  After a gap: everything after the
            # last message applied (the bucket keeps one value per key, so that is newest too).
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT if start == 0 else DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=None if start == 0 else start + 1)
        self._last_heard = asyncio.get_running_loop().time()
        self._consumer = (await self.nc.jetstream().add_consumer(self._stream, config)).name

    async def _unfollow(self) -> None:
        sub, consumer, self._sub, self._consumer = self._sub, self._consumer, None, None
        await unsubscribe_all([sub])
        if consumer is not None and not self.nc.is_closed:
            try:
                await self.nc.jetstream().delete_consumer(self._stream, consumer)
            except Exception as exc:  # already gone (inactive threshold, server restart)
                log.debug("directory cache: deleting consumer %s failed: %s", consumer, exc)

    async def _watch(self) -> None:
        """Silence for three heartbeats means the consumer is gone (server restart, a lost
        connection): follow again from the last message applied."""
        while True:
            await asyncio.sleep(self.heartbeat)
            if asyncio.get_running_loop().time() - self._last_heard > 3 * self.heartbeat:
                await self._reset("no heartbeat", self._generation)

    async def _reset(self, why: str, generation: int) -> None:
        if self._resetting or generation != self._generation:
            return  # already being replaced, or replaced since this was asked for
        self._resetting = True
        try:
            self.resets += 1
            log.warning("directory cache: %s; following again after stream sequence %d", why,
                        self._position.stream_seq)
            await self._follow()
        finally:
            self._resetting = False

    def _reset_later(self, why: str) -> None:
        # Not from inside the subscription's callback: the reset unsubscribes that very callback.
        generation = self._generation
        self._spawn("directory cache reset", lambda: self._reset(why, generation))

    async def wait_loaded(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self.loaded.wait(), timeout)

    async def stop(self) -> None:
        self._generation += 1  # nothing delivered from now on is applied
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._own_owner:
            await self._owner.close()
        await self._unfollow()

    async def _on_msg(self, msg: Msg) -> None:
        self._last_heard = asyncio.get_running_loop().time()
        data, headers = msg.data, msg.headers
        if not data and headers is not None and headers.get(_STATUS) == "100":
            await self._on_control(msg, headers)
            return
        pending = self._position.accept(msg.reply)
        if pending is None:
            self._reset_later("a delivery went missing")
            return
        deleted = headers is not None and headers.get(_OPERATION) in ("DEL", "PURGE")
        loading = not self.loaded.is_set()
        self.apply(msg.subject[len(_KV_PREFIX):], None if deleted else data, defer=loading)
        if loading and pending == 0:
            self.loaded.set()
            self._spawn("directory cache compaction", self._compact)

    async def _on_control(self, msg: Msg, headers: dict[str, str]) -> None:
        if msg.reply:  # a flow-control request: everything before it is applied
            await self.nc.publish(msg.reply)
            return
        stalled = headers.get(_STALLED)
        if stalled:  # a heartbeat saying the server waits for a flow-control answer
            await self.nc.publish(stalled)
        last = headers.get(_LAST_CONSUMER)
        if last is not None and not self._position.heard_up_to(int(last)):
            self._reset_later("a heartbeat says more was sent than received")

    async def _compact(self) -> None:
        """Parse what the cold start kept as JSON, a slice at a time between deliveries."""
        while self.compact(5_000):
            await asyncio.sleep(0)

    def metrics(self) -> Iterable[Metric]:
        """Scrape-time gauges; register with ``runtime.metrics.add_callback(cache.metrics)``."""
        entries = GaugeMetricFamily("colony_directory_cache_entries", "Entries in this process's directory cache.",
                                    labels=["kind"])
        for kind, n in self.counts().items():
            entries.add_metric([kind], n)
        yield entries
        yield GaugeMetricFamily("colony_directory_cache_loaded", "1 once the directory cache holds the whole bucket.",
                                value=1 if self.loaded.is_set() else 0)
        yield GaugeMetricFamily("colony_directory_cache_bad_entries",
                                "Directory values this cache could not read and ignored.", value=self.bad_entries)
        yield GaugeMetricFamily("colony_directory_cache_resets",
                                "Times the cache's consumer was recreated (a lost message or silence).",
                                value=self.resets)

    def resolve(self, recipient: str) -> Resolution:
        return resolve(self, recipient, self.limits)

    def limits_of(self, address: str) -> dict[str, Any] | None:
        """What a final mailbox may use (quota, message size, recipients, services)."""
        return account_limits(self, address, self.limits.default_cos)
