"""``CredentialCache``: the SIP digest credentials (HA1) a farm member looked up lately.

Why: checking a REGISTER needs the account's HA1, which only the auth service hands out
(``colony.auth.sip``: a round trip, a read-model query and the opening of a sealed secret in
the admin API).  A phone registers again every few minutes to an hour, so remembering the
HA1 for seconds saves nothing in real use: every refresh asked again.  Remembered for as
long as the edge's login cache keeps a login, a refresh needs no round trip at all.

Why that is safe: every change of an account the auth service's answer depends on (a new
password or SIP credentials, disabling, deleting, its services) rewrites the account's entry
in the ``directory`` bucket, a change of its domain the domain's entry, and a class of service
or a domain alias changes what many accounts may do.  The member watches the bucket's writes
(only those made after it started) and calls ``on_directory_change`` for each, which drops
what the write may have made wrong -- the edge's login cache does the same.  Nothing is
remembered while that watch is not running (``watching``), and ``ttl`` bounds what a stalled
watch could hide.

The directory write and the read model's transaction of one change are made side by side by
the projector, so a lookup right after the directory write can still read the old row:
an answer to a lookup that began less than ``SETTLE`` seconds before a change of its account
(or after it) is used once and not kept.  The same rule covers a lookup that began before
the watch started.

Bounded: ``size`` entries, least recently used dropped first; only successful lookups are
kept (an unknown user may be created any moment).  An HA1 is a credential: it is kept in
this process's memory only, never written anywhere.

Pure: an injected clock (monotonic), no I/O; the farm asks and tells, the shell watches.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import NamedTuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from colony.bus import names

SETTLE = 2.0          # seconds a directory write may lead the read model's commit of the same change
_HISTORY = 4096       # invalidations remembered to judge lookups in flight
_ALL = "*"            # the name of an invalidation of everything


class _Entry(NamedTuple):
    expires: float
    ha1: str


def _domain_of(account: str) -> str:
    return account.rpartition("@")[2]


class CredentialCache:
    def __init__(self, size: int, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.size, self.ttl, self.clock = size, ttl, clock
        self._entries: OrderedDict[tuple[str, str, str], _Entry] = OrderedDict()
        self._by_account: dict[str, set[tuple[str, str, str]]] = {}
        # name ("a:<account>", "d:<domain>", "*") -> when it was last invalidated
        self._recent: OrderedDict[str, float] = OrderedDict()
        self._floor = float("-inf")    # lookups begun before this (+ SETTLE) are never kept
        self._watching = False
        self.hits = self.misses = self.invalidated = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def watching(self) -> bool:
        return self._watching

    @watching.setter
    def watching(self, value: bool) -> None:
        """The shell's directory watch started (True) or stopped (False): either way what
        is remembered may have missed a change."""
        self._watching = value
        self.clear()

    # --- lookups ---------------------------------------------------------------------------

    def get(self, account: str, realm: str, algorithm: str) -> str | None:
        """The remembered HA1 (a hit), or None: ask the auth service (``begin`` first)."""
        key = (account, realm, algorithm)
        entry = self._entries.get(key)
        if entry is not None and entry.expires > self.clock():
            self._entries.move_to_end(key)
            self.hits += 1
            return entry.ha1
        if entry is not None:
            self._drop(key)
        self.misses += 1
        return None

    def begin(self) -> float:
        """Call before asking the auth service; give the answer to ``put`` with this."""
        return self.clock()

    def put(self, account: str, realm: str, algorithm: str, ha1: str | None, begun: float) -> None:
        """The auth service's answer to a lookup begun at ``begun`` (None: no HA1)."""
        key = (account, realm, algorithm)
        if ha1 is None:
            if key in self._entries:
                self._drop(key)
            return
        if not self._watching or self.ttl <= 0 or self.size <= 0 or self._overtaken(account, realm, begun):
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = _Entry(self.clock() + self.ttl, ha1)
        self._by_account.setdefault(account, set()).add(key)
        while len(self._entries) > self.size:
            self._drop(next(iter(self._entries)))

    def _overtaken(self, account: str, realm: str, begun: float) -> bool:
        since = begun - SETTLE
        if since <= self._floor:
            return True
        recent = self._recent
        return any(recent.get(name, float("-inf")) >= since
                   for name in (_ALL, "a:" + account, "d:" + _domain_of(account), "d:" + realm))

    def _drop(self, key: tuple[str, str, str]) -> None:
        del self._entries[key]
        keys = self._by_account.get(key[0])
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_account[key[0]]

    # --- invalidation ----------------------------------------------------------------------

    def _note(self, name: str) -> None:
        self._recent[name] = self.clock()
        self._recent.move_to_end(name)
        while len(self._recent) > _HISTORY:
            _, when = self._recent.popitem(last=False)
            self._floor = max(self._floor, when)

    def clear(self) -> None:
        self.invalidated += len(self._entries)
        self._entries.clear()
        self._by_account.clear()
        self._note(_ALL)

    def on_directory_change(self, kind: str, name: str) -> None:
        """A write to the ``directory`` bucket (``kind``, the name it is about): drop what it
        may have made wrong."""
        name = name.lower()
        if kind == names.AGG_ADDRESS:
            self._note("a:" + name)
            for key in list(self._by_account.get(name, ())):
                self._drop(key)
                self.invalidated += 1
        elif kind == names.AGG_DOMAIN:
            self._note("d:" + name)
            for key in [k for k in self._entries if _domain_of(k[0]) == name or k[1] == name]:
                self._drop(key)
                self.invalidated += 1
        elif kind in (names.AGG_COS, names.AGG_DOMAIN_ALIAS):
            self.clear()

    # --- metrics ---------------------------------------------------------------------------

    def metrics(self) -> Iterable[Metric]:
        """Scrape-time metrics; register with ``runtime.metrics.add_callback(cache.metrics)``."""
        lookups = CounterMetricFamily("colony_sip_credentials_cache_lookups",
                                      "HA1 lookups of the SIP farm: hit (remembered), miss (asked colony.auth.sip).",
                                      labels=["result"])
        lookups.add_metric(["hit"], self.hits)
        lookups.add_metric(["miss"], self.misses)
        yield lookups
        yield CounterMetricFamily("colony_sip_credentials_cache_invalidated",
                                  "Remembered HA1s dropped because the directory changed their account, domain, "
                                  "a class of service or an alias (or the directory watch restarted).",
                                  value=self.invalidated)
        yield GaugeMetricFamily("colony_sip_credentials_cache_entries", "HA1s the SIP farm member remembers.",
                                value=len(self._entries))
        yield GaugeMetricFamily("colony_sip_credentials_cache_watching",
                                "1 while the member watches the directory (HA1s are remembered only then).",
                                value=1 if self._watching else 0)
