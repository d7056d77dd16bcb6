"""Familiar clients: which client networks have logged in to an account before.

Why: failed logins are limited per account as well as per client address, so a guesser with
many addresses cannot try an account's password at the speed of its addresses.  A per-account
limit alone is a lock anyone can turn: ten wrong passwords every ten minutes, from anywhere,
kept the account's owner out of IMAP, POP3 and SMTP AUTH for good.  So the per-account limit
applies only to clients that are strangers to the account; a client whose network (its
``counting_unit``: the address, an IPv6 /64) logged in to the account successfully within
``login_familiar_days`` is held only by the per-address limit, which a stranger cannot
exhaust for it.  (Dovecot has no per-account lock at all; directory services that have one
learnt to exempt familiar locations for the same reason.)

Every edge learns of a success on any edge through the ``login_familiar`` bucket (max age
``login_familiar_days``; each edge writes a pair again at most once a day, so the bucket
forgets a network that stopped logging in).  Keys are SHA-256 digests of the pair, so the
bucket holds no addresses.  Reads happen only when the account's limit is reached -- the
common login reads nothing -- and anything the bus does not answer counts as a stranger:
the lock then holds as it did before, it never opens.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from colony.bus import names
from colony.netaddr import counting_unit

log = logging.getLogger("colony.edge.familiar")

REWRITE_AFTER = 86_400.0   # a pair this edge wrote (or read) is written again after a day


def familiar_key(account: str, ip: str) -> str:
    """The bucket key of (account, the client's network): a digest, not the pair itself."""
    pair = f"{account.strip().lower()}\0{counting_unit(ip)}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(pair).hexdigest()


class FamiliarClients:
    def __init__(self, js: JetStreamContext | None, max_age: float, size: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        # js None: remembered by this edge only (tests, or a bus without the bucket)
        self.js, self.max_age, self.size, self.clock = js, max_age, size, clock
        # key -> (when this edge last wrote it, or None: only read; until when it is known here).
        # A pair read from the bucket is trusted here for a day at most: the entry read may
        # have been close to its max age.
        self._seen: OrderedDict[str, tuple[float | None, float]] = OrderedDict()
        self._bucket = None

    async def _open(self):
        if self._bucket is None and self.js is not None:
            self._bucket = await self.js.key_value(names.BUCKET_LOGIN_FAMILIAR)
        return self._bucket

    def _note(self, key: str, written: float | None, until: float) -> None:
        self._seen.pop(key, None)
        self._seen[key] = (written, until)
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)

    async def remember(self, account: str, ip: str) -> None:
        """A login of ``account`` from ``ip`` succeeded."""
        if self.max_age <= 0:
            return
        key, now = familiar_key(account, ip), self.clock()
        written, _ = self._seen.get(key, (None, 0.0))
        if written is not None and now - written < REWRITE_AFTER:
            self._seen.move_to_end(key)
            return
        self._note(key, now, now + self.max_age)
        try:
            bucket = await self._open()
            if bucket is not None:
                await bucket.put(key, b"1")
        except Exception as exc:  # other edges learn it at the next success; this one knows now
            log.info("could not share a familiar client of %s: %r", account, exc)

    async def known(self, account: str, ip: str) -> bool:
        """Whether ``ip``'s network logged in to ``account`` within the max age (as far as the
        bus answers: unknown counts as a stranger)."""
        if self.max_age <= 0:
            return False
        key, now = familiar_key(account, ip), self.clock()
        written, until = self._seen.get(key, (None, 0.0))
        if now < until:
            return True
        try:
            bucket = await self._open()
            if bucket is None:
                return False
            await bucket.get(key)   # a deleted or purged key raises KeyNotFoundError too
        except KeyNotFoundError:
            return False
        except Exception as exc:
            log.info("could not read whether a client of %s is familiar: %r", account, exc)
            return False
        self._note(key, written, now + min(REWRITE_AFTER, self.max_age))
        return True


def edge_familiar(workload, settings, js: JetStreamContext | None) -> FamiliarClients:
    """The edge's one memory of familiar clients, shared by IMAP, POP3 and submission AUTH."""
    familiar = getattr(workload, "familiar", None)
    if familiar is None:
        familiar = FamiliarClients(js, settings.login_familiar_days * 86_400.0)
        workload.familiar = familiar
    return familiar
