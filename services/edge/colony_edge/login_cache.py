"""``LoginCache``: the edge remembers recent answers of the auth contract, like Dovecot's
``auth_cache_size`` / ``auth_cache_ttl`` / ``auth_cache_negative_ttl``.

Why: every IMAP/POP3 login is a password check in the admin API's auth service, an argon2
hash that is deliberately slow (tens of milliseconds of a core, seconds under load).  Mail
clients log in again and again with the same password (a phone reconnecting after every
network change, a desktop client opening one session per folder), so a crowd of reconnects
after a restart queued minutes of hashing.  With the cache, the second and later logins of
the same user with the same password within the TTL need no round trip at all.

What is kept: the key is HMAC-SHA256, under a random key made per process and never written
anywhere, of (service, user as typed, password); the value is the auth service's reply.
Neither the password nor a plain hash of it is ever kept, so a memory dump of an edge gives
an attacker a MAC he cannot brute-force offline without the process key (which lives in the
same memory: the trade-off is that a full dump of a running edge lets an attacker test
guesses at SHA-256 speed instead of argon2 speed, for the logins of the last TTL).

Bounded: at most ``size`` entries, least recently used dropped first; a success lives for
``ttl`` seconds, an "invalid credentials" answer for ``negative_ttl`` (0: never kept).  Other
refusals (throttled, service not enabled, temporary failures) are never kept.  An entry goes
when it expires, not only when it is looked up or pushed out: each kind of answer has one
lifetime, so the entries of a kind expire in the order they were put, and a queue of
(expiry, key) per kind is trimmed from its front on every lookup and put.  A password spray
of many user names thus leaves the last ``negative_ttl`` seconds of its answers, not ``size``
of them (~1.8 KB each) for as long as the edge runs.

Dropped at once when the account changes: the edge's directory cache calls
``on_directory_change(kind, name)`` for every write it applies.  A password change
(``AccountPasswordSet``) rewrites the account's directory entry (a new ``seq``, secrets left
out), as does a change of its state or services, so any write of ``address.<user>`` drops that
user's entries; a write of the domain drops its accounts' (suspension); a class of service or
a domain alias changes what many users may do, and empties the cache.  A check that was
already on its way when such a change arrived is not kept (``mark`` / ``put``): its answer
may be from before the change.

Pure: an injected clock, no I/O; the asyncio code (``access_proxy``) asks and tells.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import NamedTuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from colony.bus import names
from colony.contracts.auth import AuthCheckReply, AuthFailure

# Invalidations remembered to judge a check in flight; a check older than the oldest one
# remembered is not kept (it cannot be told apart from one the change overtook).
_HISTORY = 4096


class _Entry(NamedTuple):
    expires: float
    reply: AuthCheckReply
    names: tuple[str, ...]   # lowercased user as typed and the account it resolved to
    domains: tuple[str, ...]


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2]


def edge_login_cache(workload, settings, metrics) -> LoginCache | None:
    """The edge's one login cache, shared by IMAP, POP3 (``access_proxy``) and submission AUTH:
    made on first use, only together with the directory cache (whose feed is what drops an
    entry when a password changes), ``None`` when either is off."""
    cache = getattr(workload, "login_cache", None)
    if cache is None and settings.access_auth_cache_size and workload.directory is not None:
        cache = LoginCache(settings.access_auth_cache_size, settings.access_auth_cache_ttl,
                           settings.access_auth_cache_negative_ttl)
        workload.directory.on_change = cache.on_directory_change
        metrics.add_callback(cache.metrics)
        workload.login_cache = cache
    return cache


class LoginCache:
    def __init__(self, size: int, ttl: float, negative_ttl: float = 0.0,
                 clock: Callable[[], float] = time.monotonic, secret: bytes | None = None) -> None:
        if size < 1 or ttl <= 0 or negative_ttl < 0:
            raise ValueError("LoginCache needs size >= 1, ttl > 0 and negative_ttl >= 0")
        self.size, self.ttl, self.negative_ttl, self.clock = size, ttl, negative_ttl, clock
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._by_name: dict[str, set[bytes]] = {}
        # (expiry, key) in the order put, one queue per lifetime (successes, refusals)
        self._expiring: tuple[deque[tuple[float, bytes]], ...] = (deque(), deque())
        # invalidations: name ("a:<address>", "d:<domain>") -> the epoch it happened in
        self._epoch = 0
        self._recent: OrderedDict[str, int] = OrderedDict()
        self._floor = 0  # checks marked before this epoch are never kept
        self._in_flight = 0  # checks marked and not yet put
        self.hits = self.negative_hits = self.misses = self.invalidated = 0

    def __len__(self) -> int:
        return len(self._entries)

    # --- lookups ---------------------------------------------------------------------------
    def key(self, service: str, user: str, password: str) -> bytes:
        # length-prefixed, so no two (service, user, password) triples share an input
        parts = [part.encode("utf-8", "surrogatepass") for part in (service, user, password)]
        message = b"".join(len(p).to_bytes(4, "big") + p for p in parts)
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def get(self, key: bytes) -> AuthCheckReply | None:
        """The remembered reply (counted as a hit), or None (a miss: ask the auth service)."""
        now = self.clock()
        self._expire(now)
        entry = self._entries.get(key)
        if entry is not None and entry.expires > now:
            self._entries.move_to_end(key)
            if entry.reply.ok:
                self.hits += 1
            else:
                self.negative_hits += 1
            return entry.reply
        if entry is not None:
            self._drop(key)
        self.misses += 1
        return None

    def mark(self) -> int:
        """Call before asking the auth service; give the answer to ``put`` with this mark,
        whatever happens (``reply=None``: no answer)."""
        self._in_flight += 1
        return self._epoch

    def put(self, key: bytes, user: str, reply: AuthCheckReply | None, mark: int) -> None:
        self._in_flight = max(0, self._in_flight - 1)
        if reply is None:
            return
        if reply.ok:
            ttl = self.ttl
        elif reply.reason == AuthFailure.INVALID and self.negative_ttl > 0:
            ttl = self.negative_ttl
        else:
            return
        user = user.lower()
        account = (reply.account or user).lower()
        found = (user,) if account == user else (user, account)
        domains = tuple({_domain_of(n) for n in found} | ({reply.domain.lower()} if reply.domain else set()))
        if self._overtaken(mark, found, domains):
            return
        if key in self._entries:
            self._drop(key)
        now = self.clock()
        self._expire(now)
        self._entries[key] = _Entry(now + ttl, reply, found, domains)
        for name in found:
            self._by_name.setdefault(name, set()).add(key)
        queue = self._expiring[0 if reply.ok else 1]
        queue.append((now + ttl, key))
        if len(queue) > 2 * self.size:   # keys put again and again: forget the oldest marks
            queue.popleft()
        while len(self._entries) > self.size:
            self._drop(next(iter(self._entries)))

    def _expire(self, now: float) -> None:
        for queue in self._expiring:
            while queue and queue[0][0] <= now:
                _, key = queue.popleft()
                entry = self._entries.get(key)
                # The key may have gone, or been put again since with a later expiry.
                if entry is not None and entry.expires <= now:
                    self._drop(key)

    def _overtaken(self, mark: int, found: tuple[str, ...], domains: tuple[str, ...]) -> bool:
        if mark < self._floor:
            return True
        if mark == self._epoch:
            return False
        recent = self._recent
        return any(recent.get("a:" + n, -1) > mark for n in found) or \
            any(recent.get("d:" + d, -1) > mark for d in domains)

    def _drop(self, key: bytes) -> None:
        entry = self._entries.pop(key)
        for name in entry.names:
            keys = self._by_name.get(name)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_name[name]

    # --- invalidation ----------------------------------------------------------------------
    def _remember(self, name: str) -> None:
        self._epoch += 1
        self._recent[name] = self._epoch
        self._recent.move_to_end(name)
        while len(self._recent) > _HISTORY:
            _, epoch = self._recent.popitem(last=False)
            self._floor = max(self._floor, epoch)

    def invalidate_address(self, address: str) -> None:
        address = address.lower()
        self._remember("a:" + address)
        for key in list(self._by_name.get(address, ())):
            self._drop(key)
            self.invalidated += 1

    def invalidate_domain(self, domain: str) -> None:
        domain = domain.lower()
        self._remember("d:" + domain)
        for key in [k for k, e in self._entries.items() if domain in e.domains]:
            self._drop(key)
            self.invalidated += 1

    def clear(self) -> None:
        self._epoch += 1
        self._floor = self._epoch
        self._recent.clear()
        self.invalidated += len(self._entries)
        self._entries.clear()
        self._by_name.clear()
        for queue in self._expiring:
            queue.clear()

    def on_directory_change(self, kind: str, name: str) -> None:
        """A directory write (``DirectoryIndex.on_change``): drop what it may have made wrong."""
        if not self._entries and not self._in_flight:
            return  # nothing it could make wrong (and a directory's cold start stays as cheap)
        if kind == names.AGG_ADDRESS:
            self.invalidate_address(name)
        elif kind == names.AGG_DOMAIN:
            self.invalidate_domain(name)
        elif kind in (names.AGG_COS, names.AGG_DOMAIN_ALIAS):
            self.clear()

    # --- metrics ---------------------------------------------------------------------------
    def metrics(self) -> Iterable[Metric]:
        """Scrape-time metrics; register with ``runtime.metrics.add_callback(cache.metrics)``."""
        lookups = CounterMetricFamily("colony_access_auth_cache_lookups",
                                      "Login cache lookups at the edge: hit (a remembered success), negative_hit "
                                      "(a remembered wrong password), miss (asked the auth service).",
                                      labels=["result"])
        lookups.add_metric(["hit"], self.hits)
        lookups.add_metric(["negative_hit"], self.negative_hits)
        lookups.add_metric(["miss"], self.misses)
        yield lookups
        yield CounterMetricFamily("colony_access_auth_cache_invalidated",
                                  "Login cache entries dropped because the directory changed their account.",
                                  value=self.invalidated)
        yield GaugeMetricFamily("colony_access_auth_cache_entries", "Entries in the edge's login cache.",
                                value=len(self._entries))
