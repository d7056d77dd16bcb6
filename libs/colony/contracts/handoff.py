"""The session hand-off: how an edge passes an authenticated IMAP/POP3 client to a mail store.

Theory of operation
-------------------
The edge speaks the pre-authentication part of IMAP and POP3 itself and checks the password
through the auth contract.  It then opens a TCP connection to the account owner's inner
listener (``imap-inner`` / ``pop3-inner`` in the owner's node record) and sends one line::

    COLONY-HANDOFF 1 <proto> <account> <session> <client-ip> <issued-ms> <mac>\\r\\n

``proto`` is ``imap`` or ``pop3`` (or ``export``: an account's mail pulled by another
store, or ``mailbody``: one large body of the object store fetched by a store of another
region, both ``colony.contracts.account_export``, on the ``imap-inner`` listener); ``account``
the canonical address the auth contract answered; ``session`` a random id (hex) unique per
hand-off; ``client-ip`` the client's address (for logs and usage); ``issued-ms`` the
edge's wall clock in milliseconds; ``mac`` HMAC-SHA256 (hex) over the other fields joined
by ``|`` with the cluster secret (``Settings.cluster_secret_file``).  Only a cluster member holds the secret, so only a
cluster member can open a session as somebody; a captured line is good once (the store
remembers the session ids it accepted within the clock window) and only for ``MAX_SKEW``
seconds.

The store answers with **one line** in the session's own protocol and, on success, goes on
in the authenticated state (no greeting):

* POP3: ``+OK <maildrop status>`` (the edge relays it as the answer to PASS / AUTH), or
  ``-ERR [SYS/TEMP] <text>``;
* IMAP: ``OK [CAPABILITY ...] <text>`` (the edge sends it tagged as the LOGIN /
  AUTHENTICATE answer), or ``NO [UNAVAILABLE] <text>``.

A refusal whose text contains ``NOT-OWNER`` means "not mine, ask the lease again": the edge
re-reads the owner and retries; any other refusal goes to the client.  From then on the edge
copies bytes both ways; when the store closes (drain, owner change) it first sends the
protocol's goodbye (``* BYE`` / ``-ERR``), and the edge closes the client connection.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from colony.settings import ConfigError

PREFIX = "COLONY-HANDOFF"
VERSION = "1"
PROTOCOLS = ("imap", "pop3", "export", "mailbody")   # export, mailbody: colony.contracts.account_export
MAX_SKEW = 30.0          # seconds a hand-off line stays good (clocks of cluster members agree this well)
MAX_LINE = 1024          # octets: the store reads no more before it has a verified line
NOT_OWNER = "NOT-OWNER"  # in a store's refusal: "not mine, ask the lease again"
MIN_SECRET = 16          # octets


class HandoffError(ValueError):
    """A hand-off line that is malformed, forged, stale or replayed."""


@dataclass(frozen=True)
class Handoff:
    proto: str
    account: str
    session: str
    client_ip: str
    issued_ms: int


def load_secret(path: Path, key: str = "COLONY_CLUSTER_SECRET_FILE",
                shared_by: str = "every edge, mail store and admin API") -> bytes:
    """A secret from its file: the cluster secret (``colony up`` writes one; production mounts
    one) unless ``key`` names another setting, which the errors then name.  A file that does
    not serve is a ``ConfigError``: the settings name it, so the service stops at start."""
    try:
        data = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path} ({exc.strerror or exc}); "
                          f"point it at a file of random bytes shared by {shared_by}") from None
    if len(data) < MIN_SECRET:
        raise ConfigError(f"{key}: {path} holds {len(data)} octets; write at least {MIN_SECRET} random "
                          f"ones into it (e.g. `openssl rand -hex 32 > {path}`), the same file for {shared_by}")
    return data


def ensure_secret(path: Path) -> Path:
    """Create a random secret file (0600) if there is none; ``colony up`` uses this."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        import os

        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    return path


def _mac(secret: bytes, fields: list[str]) -> str:
    return hmac.new(secret, "|".join(fields).encode(), hashlib.sha256).hexdigest()


def _clean(value: str, what: str) -> str:
    if not value or len(value) > 320 or any(c.isspace() or ord(c) < 0x21 or c == "|" for c in value):
        raise HandoffError(f"bad {what}: {value[:40]!r}")
    return value


def sign(secret: bytes, proto: str, account: str, client_ip: str, now_ms: int, session: str | None = None) -> bytes:
    """The hand-off line for one session (with its CRLF)."""
    if proto not in PROTOCOLS:
        raise HandoffError(f"unknown protocol {proto!r}")
    fields = [VERSION, proto, _clean(account, "account"), session or secrets.token_hex(12),
              _clean(client_ip or "-", "client address"), str(int(now_ms))]
    return f"{PREFIX} {' '.join(fields)} {_mac(secret, fields)}\r\n".encode()


class Verifier:
    """The store's side: checks lines and remembers accepted session ids for the window.
    Memory is bounded: at most ``max_remembered`` ids (the oldest are forgotten first, and
    a forgotten id is older than the window anyway at any sane connection rate)."""

    def __init__(self, secret: bytes, clock_ms: Callable[[], int], max_skew: float = MAX_SKEW,
                 max_remembered: int = 200_000) -> None:
        self.secret = secret
        self.clock_ms = clock_ms
        self.max_skew_ms = int(max_skew * 1000)
        self.max_remembered = max_remembered
        self._seen: OrderedDict[str, int] = OrderedDict()

    def verify(self, line: bytes, proto: str) -> Handoff:
        if len(line) > MAX_LINE:
            raise HandoffError("line too long")
        try:
            parts = line.decode("ascii").rstrip("\r\n").split(" ")
        except UnicodeDecodeError:
            raise HandoffError("not ASCII") from None
        if len(parts) != 8 or parts[0] != PREFIX:
            raise HandoffError("not a hand-off line")
        version, got_proto, account, session, client_ip, issued, mac = parts[1:]
        if version != VERSION:
            raise HandoffError(f"unknown version {version!r}")
        if not hmac.compare_digest(_mac(self.secret, parts[1:7]), mac):
            raise HandoffError("bad signature")
        if got_proto != proto:
            raise HandoffError(f"a {got_proto} hand-off on the {proto} listener")
        if not issued.isdigit():
            raise HandoffError("bad time")
        now = self.clock_ms()
        if abs(now - int(issued)) > self.max_skew_ms:
            raise HandoffError("stale hand-off (or clocks out of step)")
        self._forget_older_than(now - self.max_skew_ms)
        if session in self._seen:
            raise HandoffError("replayed hand-off")
        self._seen[session] = now
        while len(self._seen) > self.max_remembered:
            self._seen.popitem(last=False)
        return Handoff(got_proto, account, session, client_ip, int(issued))

    def _forget_older_than(self, limit: int) -> None:
        while self._seen:
            session, at = next(iter(self._seen.items()))
            if at >= limit:
                return
            del self._seen[session]
