"""What the mailstore reads from the ``directory`` bucket: a domain's storage layout and an
account's quota, with a short cache so a burst of deliveries costs one read per key."""

from __future__ import annotations

import time
from collections import OrderedDict

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from colony.bus import names
from colony.contracts import entitlements
from colony.contracts.directory import AccountEntry, CosEntry, DomainAliasEntry, DomainEntry, parse_entry
from colony.storage.layout import StorageLayout

_CACHE_SECONDS = 2.0
_CACHE_ENTRIES = 10_000


class Directory:
    def __init__(self, kv: KeyValue, clock=time.monotonic,
                 default_cos: str | None = entitlements.DEFAULT_COS) -> None:
        self.kv = kv
        self.clock = clock
        self.default_cos = default_cos  # Settings.default_cos: the class of a domain that has none
        self._cache: OrderedDict[str, tuple[float, object]] = OrderedDict()
        # address -> (read time of the oldest entry it was computed from, quota): an IMAP
        # session asks at every command, and computing it (three cached reads, each with its
        # key's encoding, and the class-of-service rule) cost more than many a command's own
        # work.  Kept no longer than the entries it came from, so it is never staler than they.
        self._quotas: dict[str, tuple[float, int | None]] = {}

    async def _read(self, kind: str, name: str) -> tuple[float, object]:
        """The entry (None: no such key) and when it was read from the bucket."""
        key = names.directory_key(kind, name)
        hit = self._cache.get(key)
        now = self.clock()
        if hit is not None and now - hit[0] < _CACHE_SECONDS:
            return hit
        try:
            entry = await self.kv.get(key)
            value = parse_entry(entry.value) if entry.value else None
        except KeyNotFoundError:
            value = None
        self._cache[key] = (now, value)
        self._cache.move_to_end(key)
        while len(self._cache) > _CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return now, value

    async def _get(self, kind: str, name: str):
        return (await self._read(kind, name))[1]

    async def domain(self, domain: str) -> DomainEntry | None:
        value = await self._get(names.AGG_DOMAIN, domain)
        return value if isinstance(value, DomainEntry) else None

    async def hosted(self, domain: str) -> bool:
        """Whether ``domain`` is one of ours, itself or as a domain alias."""
        if await self.domain(domain) is not None:
            return True
        return isinstance(await self._get(names.AGG_DOMAIN_ALIAS, domain), DomainAliasEntry)

    async def domain_alias(self, name: str) -> str | None:
        """The hosted domain ``name`` is an alias of, or None."""
        value = await self._get(names.AGG_DOMAIN_ALIAS, name)
        return value.domain if isinstance(value, DomainAliasEntry) else None

    async def sealed(self, address: str) -> bool:
        """Whether the account's domain is moving to another region and in its ``sealing``
        phase: no session may change its mail until the move flips (``colony.domain_move``)."""
        entry = await self.domain(address.rpartition("@")[2])
        return entry is not None and entry.move is not None and entry.move.phase == "sealing"

    async def account(self, address: str) -> AccountEntry | None:
        value = await self._get(names.AGG_ADDRESS, address)
        return value if isinstance(value, AccountEntry) else None

    async def layout(self, domain: str) -> StorageLayout:
        entry = await self.domain(domain)
        return StorageLayout.from_provisioning(entry.storage.model_dump() if entry else None)

    async def quota(self, address: str) -> int | None:
        """Bytes the account may store (None: unlimited): the same rule as every other door
        (``entitlements``): its class of service -- its own, else its domain's, else the
        cluster's default -- capped by the account's own quota."""
        hit = self._quotas.get(address)
        if hit is not None and self.clock() - hit[0] < _CACHE_SECONDS:
            return hit[1]
        oldest, account = await self._read(names.AGG_ADDRESS, address)
        if not isinstance(account, AccountEntry):
            quota = None
        else:
            domain_cos = None
            if account.cos is None:
                read_at, domain = await self._read(names.AGG_DOMAIN, account.domain)
                oldest = min(oldest, read_at)
                domain_cos = domain.cos if isinstance(domain, DomainEntry) else None
            cos_name = entitlements.cos_name(account.cos, domain_cos, self.default_cos)
            cos = None
            if cos_name:
                read_at, cos = await self._read(names.AGG_COS, cos_name)
                oldest = min(oldest, read_at)
            limits = cos.limits if isinstance(cos, CosEntry) else None
            quota = entitlements.effective({"services": None, "quota_bytes": account.quota_bytes}, limits)["quota_bytes"]
        if len(self._quotas) >= _CACHE_ENTRIES:
            self._quotas.clear()
        self._quotas[address] = (oldest, quota)
        return quota
