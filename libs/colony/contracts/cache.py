"""``DirectoryCache``: a local, watch-fed copy of the ``directory`` bucket, so an edge answers
``RCPT TO`` (and anything else ``recipients.resolve`` needs) with no round trip.

Theory of operation
-------------------
``DirectoryIndex`` is the pure part: ``apply(key, value)`` takes one bucket entry (its key
and its bytes, or None for a delete) and keeps four dicts: domains, domain aliases,
addresses and classes of service.  It implements ``recipients.DirectoryView``.  Memory is
what keeps an edge small with a million accounts, so an address is a small tuple
(``AccountInfo``/``AliasInfo``) keyed by its address, never a pydantic object or the JSON;
repeated values (states, class names, service lists, quotas) are interned, so a million
accounts share a handful of those objects.

``DirectoryCache`` is the asyncio shell: one ordered push consumer on the bucket's stream
(``KV_directory``), ``deliver_policy=last_per_subject`` so the cold start reads each key's
newest value once, then keeps following live writes on the same consumer: no gap between
"loaded" and "following".  nats-py's KV watcher does the same over the same consumer, but
builds an ``Entry`` and goes through an extra queue per key; a direct subscription with
flow control is what makes a million keys load in seconds.  The ordered consumer is
recreated from the last stream sequence seen if a message goes missing (nats-py does that),
so the copy never silently diverges.

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
from collections.abc import Iterable
from typing import Any

import orjson
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from prometheus_client.core import GaugeMetricFamily, Metric

from colony.bus import names
from colony.bus.tokens import TokenError, from_token
from colony.tasks import TaskOwner
from colony.contracts.directory import AccountInfo, AliasInfo, DomainInfo
from colony.contracts.recipients import Limits, Resolution, account_limits, resolve

log = logging.getLogger("colony.contracts.cache")

_KV_PREFIX = f"$KV.{names.BUCKET_DIRECTORY}."
_OPERATION = "KV-Operation"  # DEL or PURGE on a KV delete; absent on a put


def _name(token: str) -> str:
    # Addresses and domains escape only '@' and '.' in the common case: two replaces are a
    # fifth of from_token's cost, and a bulk start decodes a million keys.  An '_' left over
    # means some other escape: let from_token do it properly.
    quick = token.replace("_40", "@").replace("_2e", ".")
    return quick if "_" not in quick else from_token(token)


class DirectoryIndex:
    """The pure in-memory directory; see the module docstring."""

    __slots__ = ("_domains", "_domain_aliases", "_addresses", "_cos", "_interned", "_deferred", "bad_entries")

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
                tuple(forwarding) if forwarding else (), bool(raw.get("forward_keep_copy", False)))
        elif kind == names.AGG_DOMAIN:
            self._domains[name] = DomainInfo(name, sys.intern(raw.get("state", "active")),
                                             intern(raw.get("home_region", "")), intern(raw.get("cos")))
        elif kind == names.AGG_DOMAIN_ALIAS:
            self._domain_aliases[name] = intern(raw["domain"])
        elif kind == names.AGG_COS:
            self._cos[name] = dict(raw.get("limits") or {})
        # other kinds: a newer writer's; ignore them rather than fail


class DirectoryCache(DirectoryIndex):
    """A ``DirectoryIndex`` kept up to date from the bus.  ``start()``, then ``await
    wait_loaded()``; ``resolve(rcpt)`` and the view methods answer from memory."""

    __slots__ = ("js", "limits", "loaded", "_sub", "_stream", "_owner", "_own_owner")

    def __init__(self, js: JetStreamContext, limits: Limits = Limits(), owner: TaskOwner | None = None) -> None:
        """``owner``: where the background compaction runs (``runtime.tasks`` in a service, so
        a failure reaches ``colony status``); default: an owner of its own that logs."""
        super().__init__()
        self.js, self.limits = js, limits
        self.loaded = asyncio.Event()
        self._sub: Any = None
        self._stream = f"KV_{names.BUCKET_DIRECTORY}"
        self._own_owner = owner is None
        self._owner = owner or TaskOwner(log)

    async def start(self) -> None:
        info = await self.js.stream_info(self._stream)
        if not info.state.messages:
            self.loaded.set()
        # Large pending limits: during the cold start the server pushes faster than one
        # Python thread applies; flow control (ordered consumers use it) bounds what is
        # in flight, these limits only keep nats-py from dropping what is.
        self._sub = await self.js.subscribe(
            _KV_PREFIX + ">", stream=self._stream, cb=self._on_msg, ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT, pending_msgs_limit=1_000_000,
            pending_bytes_limit=512 * 1024 * 1024)
        if not self.loaded.is_set():
            # Emptied between the two calls (everything purged): nothing will come to say so.
            consumer = await self._sub.consumer_info()
            if consumer.num_pending == 0 and consumer.delivered.consumer_seq == 0:
                self.loaded.set()

    async def wait_loaded(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self.loaded.wait(), timeout)

    async def stop(self) -> None:
        if self._own_owner:
            await self._owner.close()
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception as exc:  # the connection may already be closed; nothing to undo
                log.debug("directory cache: unsubscribe failed: %s", exc)
            self._sub = None

    async def _on_msg(self, msg: Msg) -> None:
        headers = msg.headers
        deleted = headers is not None and headers.get(_OPERATION) in ("DEL", "PURGE")
        loading = not self.loaded.is_set()
        self.apply(msg.subject[len(_KV_PREFIX):], None if deleted else msg.data, defer=loading)
        if loading:
            reply = msg.reply
            # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
            if reply and reply.endswith(".0"):
                self.loaded.set()
                self._owner.spawn("directory cache compaction", self._compact)

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

    def resolve(self, recipient: str) -> Resolution:
        return resolve(self, recipient, self.limits)

    def limits_of(self, address: str) -> dict[str, Any] | None:
        """What a final mailbox may use (quota, message size, recipients, services)."""
        return account_limits(self, address)
