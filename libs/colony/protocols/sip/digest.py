"""Server-side HTTP Digest authentication for SIP (RFC 3261 §22, RFC 7616, RFC 8760).

The farm never sees a password: it checks responses against the account's HA1
(``H(user:realm:password)``), which the auth contract hands out per algorithm.

Theory of operation
-------------------
*Nonces are stateless and farm-wide.*  A nonce is ``base64(issued-at || random ||
HMAC(secret, issued-at || random || realm))``: any member holding the cluster secret can
tell that a nonce is ours, for this realm, and how old it is, without shared state.  One
older than ``nonce_ttl`` is *stale*: the client is challenged again with ``stale=true``, so
it retries with the same credentials and no prompt (RFC 7616 §3.4.1.3).

*Replays are refused.*  With ``qop=auth`` every use of a nonce carries a nonce-count that
must grow; the highest count seen per nonce is kept while the nonce can still be accepted:
one older than ``nonce_ttl`` is stale whatever its count, so its entry goes as soon as it is
the least recently used, and the table holds the nonces used within ``nonce_ttl`` -- not,
after a busy hour, ``max_tracked`` of them for as long as the member runs.  It never holds
more than ``max_tracked`` (oldest first out); a forgotten nonce is treated as stale, never
as fresh.  Without
qop (RFC 2069 clients) a nonce is good for one request only.  The farm sends every request
of one Call-ID to the same member, so the member that checks a REGISTER refresh is the one
that saw the last one.

Time is an argument (``now``), never read here.  Algorithms: SHA-256 and MD5 (and their
``-sess`` forms); challenges offer SHA-256 first (RFC 8760 §2.4).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import struct
from collections import OrderedDict
from dataclasses import dataclass

ALGORITHMS = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


def h(algorithm: str, text: str) -> str:
    return ALGORITHMS[algorithm.upper().removesuffix("-SESS")](text.encode("utf-8")).hexdigest()


def ha1(algorithm: str, user: str, realm: str, password: str) -> str:
    return h(algorithm, f"{user}:{realm}:{password}")


_ESCAPED = re.compile(r"\\(.)")
_NC = re.compile(r"[0-9a-fA-F]{8}")
# A quoted value as runs between escapes ("unrolled"): half the time of an alternation per character.
_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("[^"\\]*(?:\\.[^"\\]*)*"|[^\s,"]*)\s*(?:,|$)')


def parse_credentials(value: str) -> dict[str, str] | None:
    """``Digest username="a", realm="b", ...`` -> {"username": "a", ...}; None if not Digest
    or malformed."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    end = len(rest)
    # Parameter after parameter, each where the last ended; the first that does not match
    # ends it (a search for the next match would cost quadratic time on a long bad value).
    while pos < end:
        match = _PARAM.match(rest, pos)
        if match is None:
            return None
        name, raw = match.groups()
        if raw[:1] == '"':
            raw = raw[1:-1]
            if "\\" in raw:
                raw = _ESCAPED.sub(r"\1", raw)
        params[name.lower()] = raw
        pos = match.end()
    return params


@dataclass(frozen=True)
class Verdict:
    ok: bool
    stale: bool = False
    reason: str = ""


class DigestAuthenticator:
    def __init__(self, secret: bytes, nonce_ttl: float = 300.0, max_tracked: int = 100_000) -> None:
        self.secret = secret
        self.nonce_ttl = nonce_ttl
        self.max_tracked = max_tracked
        # nonce -> (highest nc seen (0: a use without qop), when the nonce was issued)
        self._counts: OrderedDict[str, tuple[int, float]] = OrderedDict()
        # Nonces issued at or before this time may have been forgotten: treated as stale.
        self._forgotten_before = float("-inf")

    # --- challenges -----------------------------------------------------------------------

    def nonce(self, realm: str, now: float) -> str:
        head = struct.pack(">d", now) + os.urandom(8)
        # hmac.digest: OpenSSL's one-shot HMAC, without the Python HMAC object hmac.new builds.
        mac = hmac.digest(self.secret, head + realm.encode(), "sha256")[:16]
        return base64.urlsafe_b64encode(head + mac).decode().rstrip("=")

    def challenges(self, realm: str, now: float, stale: bool = False,
                   algorithms: tuple[str, ...] = ("SHA-256", "MD5")) -> list[str]:
        """Values for WWW-Authenticate (401) or Proxy-Authenticate (407), one per algorithm."""
        nonce = self.nonce(realm, now)
        extra = ", stale=true" if stale else ""
        return [f'Digest realm="{realm}", nonce="{nonce}", algorithm={alg}, qop="auth"{extra}' for alg in algorithms]

    def _issued_at(self, nonce: str, realm: str) -> float | None:
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except (ValueError, TypeError):
            return None
        if len(raw) != 32:
            return None
        head, mac = raw[:16], raw[16:]
        expected = hmac.digest(self.secret, head + realm.encode(), "sha256")[:16]
        if not hmac.compare_digest(mac, expected):
            return None
        return struct.unpack(">d", head[:8])[0]

    # --- verification ---------------------------------------------------------------------

    def verify(self, credentials: dict[str, str], method: str, realm: str, ha1_hex: str, now: float) -> Verdict:
        """Check parsed credentials for ``method`` against the account's HA1 for the
        credentials' algorithm.  ``stale=True`` means: right password, old nonce; challenge
        again with ``stale=true``."""
        algorithm = credentials.get("algorithm", "MD5").upper()
        if algorithm.removesuffix("-SESS") not in ALGORITHMS:
            return Verdict(False, reason="unsupported algorithm")
        nonce, uri, response = credentials.get("nonce", ""), credentials.get("uri", ""), credentials.get("response", "")
        if credentials.get("realm") != realm or not nonce or not uri or not response:
            return Verdict(False, reason="incomplete credentials")
        issued = self._issued_at(nonce, realm)
        if issued is None:
            return Verdict(False, reason="not our nonce")
        age = now - issued
        qop = credentials.get("qop")
        cnonce = credentials.get("cnonce", "")
        nc_text = credentials.get("nc", "")
        if qop not in (None, "auth"):
            return Verdict(False, reason="unsupported qop")
        if qop and (not cnonce or not _NC.fullmatch(nc_text)):
            return Verdict(False, reason="qop=auth needs cnonce and nc")
        key = ha1_hex
        if algorithm.endswith("-SESS"):
            key = h(algorithm, f"{ha1_hex}:{nonce}:{cnonce}")
        ha2 = h(algorithm, f"{method}:{uri}")
        expected = h(algorithm, f"{key}:{nonce}:{nc_text}:{cnonce}:{qop}:{ha2}") if qop else h(algorithm, f"{key}:{nonce}:{ha2}")
        if not hmac.compare_digest(expected, response.lower()):
            return Verdict(False, reason="wrong response")
        if age > self.nonce_ttl or age < -5:
            return Verdict(False, stale=True, reason="stale nonce")
        # Right password, fresh nonce: refuse a replayed (nonce, nc).
        nc = int(nc_text, 16) if qop else 0
        seen = self._counts.get(nonce)
        if seen is not None and (not qop or nc <= seen[0]):
            return Verdict(False, stale=True, reason="replayed nonce count")
        if seen is None and issued <= self._forgotten_before:
            return Verdict(False, stale=True, reason="nonce history forgotten")
        self._counts[nonce] = (nc, issued)
        self._counts.move_to_end(nonce)
        # Least recently used first.  A nonce is recorded only while fresh (issued after
        # now - nonce_ttl), so once the first entry is fresh every later one was used since:
        # what stays is what was used within nonce_ttl.
        horizon = now - self.nonce_ttl
        counts = self._counts
        while len(counts) > self.max_tracked or (counts and next(iter(counts.values()))[1] < horizon):
            _, (_, evicted_issued) = counts.popitem(last=False)
            # Also for an expired one: should the clock step back, its replay is stale, not fresh.
            self._forgotten_before = max(self._forgotten_before, evicted_issued)
        return Verdict(True)
