"""The Sender Rewriting Scheme (SRS, Shevek's "guarded" scheme as libsrs2 and postsrsd
implement it): forwarded mail leaves with an envelope sender in the forwarding domain, so
SPF at the destination checks our servers, and a bounce to that address comes back to us
and is sent on to the original sender.  No I/O; time is an argument.

Theory of operation
-------------------
Forwarding ``alice@origin.example``'s message through ``fwd.example``::

    forward("alice@origin.example", "fwd.example", now)
      -> SRS0=HHHH=TT=origin.example=alice@fwd.example

``TT`` is the day number mod 1024 in base32 (two characters), ``HHHH`` the first
``hash_length`` characters of base64(HMAC-SHA1(secret, lower(TT + host + local))).  A
sender that is already SRS0 (someone forwarded it to us) becomes SRS1, which names the
first forwarder and keeps its opaque part, so a bounce goes back there directly::

    forward("SRS0=HHHH=TT=origin.example=alice@first.example", "fwd.example", now)
      -> SRS1=GGGG=first.example==HHHH=TT=origin.example=alice@fwd.example

``reverse(address, now)`` undoes one step: SRS0 -> the original sender (hash and age
checked: at most ``max_age_days`` old, not from the future); SRS1 -> the first forwarder's
SRS0 address (hash checked).  Anything else raises ``SrsError`` with a ``reason``
(``malformed``, ``forged``, ``expired``): the MX answers those 550 so nobody can use our
domain as an open relay by guessing addresses.

Why not ``srslib``: its ``check_hash`` compares only as many characters as the address
carries, so a one-character hash is accepted after at most 64 guesses; its clock is a
private attribute; and it compares hashes in non-constant time.  The format here is the
same as srslib's, libsrs2's and postsrsd's, so a bounce to an address another
implementation made with the same secret reverses too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_DAY = 86_400
_TIME_SLOTS = 1024        # the timestamp is the day number mod 1024 (two base32 characters)
SEPARATOR = "="


class SrsError(ValueError):
    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason


def is_srs(address: str) -> bool:
    local = address.rpartition("@")[0]
    return len(local) > 5 and local[:4].upper() in ("SRS0", "SRS1") and local[4] in "=+-"


class Srs:
    def __init__(self, secret: bytes, previous: tuple[bytes, ...] = (), hash_length: int = 4,
                 max_age_days: int = 21) -> None:
        if len(secret) < 16:
            raise ValueError("an SRS secret needs at least 16 bytes")
        if not 4 <= hash_length <= 27:
            raise ValueError("hash_length is 4 to 27 characters")
        self.secrets = (secret, *previous)   # the first signs; all verify (secret rotation)
        self.hash_length, self.max_age_days = hash_length, max_age_days

    # --- rewriting ------------------------------------------------------------------------

    def forward(self, sender: str, domain: str, now: float) -> str:
        """The envelope sender to use when forwarding ``sender``'s mail through ``domain``.
        The null sender stays null (a bounce is never rewritten)."""
        if not sender:
            return sender
        local, _, host = sender.rpartition("@")
        if not local or not host:
            raise SrsError("malformed", f"{sender!r} is not an address")
        domain = domain.lower()
        if host.lower() == domain:
            return sender               # our own address: SPF passes already
        upper = local[:5].upper()
        if upper[:4] == "SRS1" and len(local) > 5 and local[4] in "=+-":
            # Keep the first forwarder and its opaque part; sign them for ourselves.
            parts = local[5:].split(SEPARATOR, 2)
            if len(parts) == 3:
                _, first_host, opaque = parts
                return self._srs1(first_host, opaque, domain)
        if upper[:4] == "SRS0" and len(local) > 5 and local[4] in "=+-":
            return self._srs1(host, local[4:], domain)
        stamp = self._timestamp(now)
        digest = self._hash(stamp + host + local)
        return f"SRS0={digest}={stamp}={host}={local}@{domain}"

    def _srs1(self, first_host: str, opaque: str, domain: str) -> str:
        # opaque keeps its leading separator ("=HHHH=TT=host=local"), hence "==" in the address.
        return f"SRS1={self._hash(first_host + opaque)}={first_host}={opaque}@{domain}"

    # --- reversing ------------------------------------------------------------------------

    def reverse(self, address: str, now: float) -> str:
        local, _, _ = address.rpartition("@")
        if not is_srs(address):
            raise SrsError("malformed", f"{address!r} is not an SRS address")
        tag, body = local[:4].upper(), local[5:]
        if tag == "SRS1":
            parts = body.split(SEPARATOR, 2)
            if len(parts) != 3 or not parts[1] or not parts[2]:
                raise SrsError("malformed", f"{address!r} is not a well-formed SRS1 address")
            digest, first_host, opaque = parts
            self._check_hash(digest, first_host + opaque, address)
            return f"SRS0{opaque}@{first_host}"
        parts = body.split(SEPARATOR, 3)
        if len(parts) != 4 or not all(parts):
            raise SrsError("malformed", f"{address!r} is not a well-formed SRS0 address")
        digest, stamp, host, original_local = parts
        self._check_hash(digest, stamp + host + original_local, address)
        self._check_timestamp(stamp, now, address)
        return f"{original_local}@{host}"

    # --- the pieces -----------------------------------------------------------------------

    def _hash(self, text: str, secret: bytes | None = None) -> str:
        mac = hmac.new(secret or self.secrets[0], text.lower().encode("utf-8"), hashlib.sha1).digest()
        return base64.b64encode(mac).decode("ascii")[: self.hash_length]

    def _check_hash(self, digest: str, text: str, address: str) -> None:
        # Never fewer characters than we write: a short hash would be guessable.
        if len(digest) != self.hash_length:
            raise SrsError("forged", f"{address!r}: the hash has the wrong length")
        for secret in self.secrets:
            # Case-insensitive like libsrs2: some MTAs lower-case local parts on the way back.
            if hmac.compare_digest(self._hash(text, secret).lower().encode(), digest.lower().encode()):
                return
        raise SrsError("forged", f"{address!r}: the hash does not match")

    @staticmethod
    def _timestamp(now: float) -> str:
        day = int(now // _DAY) % _TIME_SLOTS
        return _BASE32[day >> 5] + _BASE32[day & 31]

    def _check_timestamp(self, stamp: str, now: float, address: str) -> None:
        stamp = stamp.upper()
        if len(stamp) != 2 or any(c not in _BASE32 for c in stamp):
            raise SrsError("malformed", f"{address!r}: bad timestamp")
        then = _BASE32.index(stamp[0]) << 5 | _BASE32.index(stamp[1])
        today = int(now // _DAY) % _TIME_SLOTS
        age = (today - then) % _TIME_SLOTS     # days since, modulo the 1024-day wrap
        if age > self.max_age_days:
            raise SrsError("expired", f"{address!r}: older than {self.max_age_days} days")


def srs_key(cluster_secret: bytes) -> bytes:
    """The SRS key derived from the cluster secret (domain-separated, so neither use can
    stand in for the other)."""
    return hmac.new(cluster_secret, b"colony-srs-v1", hashlib.sha256).digest()


__all__ = ["SEPARATOR", "Srs", "SrsError", "is_srs", "srs_key"]
