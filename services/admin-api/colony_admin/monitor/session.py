"""The monitor's log-in session: a signed, expiring cookie naming an API token.

Theory of operation.  A system administrator logs in once with an API token; the page then
keeps a cookie ``colony_monitor`` = ``<payload>.<signature>`` where the payload is
``base64url(json {"t": token_id, "exp": unix seconds})`` and the signature is HMAC-SHA256
under the session key.  The cookie holds the token's id, never its secret, and is
``Secure; HttpOnly; SameSite=Strict`` so scripts cannot read it and other sites cannot
send it.  Every request re-checks the token itself (revoked tokens end their sessions at
once).  POSTs carry an ``X-CSRF-Token`` header derived from the cookie (HMAC of it under the
same key): a cross-site form cannot know it, and SameSite keeps the cookie off such
requests anyway.

Pure functions over an injected clock; the key comes from ``session_key``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from pathlib import Path

COOKIE = "colony_monitor"
CSRF_HEADER = "x-csrf-token"
LIFETIME = 8 * 3600  # a working day; log in again after


def session_key(cluster_secret_file: Path | None) -> bytes:
    """Derived from the cluster secret when one is configured, so every admin-api instance
    behind the balancer accepts the same cookie; without one (a single instance, `colony up`)
    random for this process.  A configured file that does not serve is a ``ConfigError``:
    a random key in its place would log users out whenever the balancer changed instance."""
    if cluster_secret_file is None:
        return os.urandom(32)
    from colony.contracts.handoff import load_secret

    return hmac.new(load_secret(cluster_secret_file), b"colony-monitor-session", hashlib.sha256).digest()


def _sign(key: bytes, data: bytes) -> str:
    return base64.urlsafe_b64encode(hmac.new(key, data, hashlib.sha256).digest()).decode().rstrip("=")


def issue(key: bytes, token_id: str, now: float) -> str:
    payload = base64.urlsafe_b64encode(json.dumps({"t": token_id, "exp": int(now + LIFETIME)}).encode()).decode().rstrip("=")
    return f"{payload}.{_sign(key, payload.encode())}"


def verify(key: bytes, cookie: str | None, now: float) -> str | None:
    """The token id of a valid, unexpired cookie; None for anything else."""
    if not cookie or len(cookie) > 512 or "." not in cookie or not cookie.isascii():
        return None
    payload, _, signature = cookie.rpartition(".")
    if not hmac.compare_digest(signature, _sign(key, payload.encode())):
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        token_id, expires = str(data["t"]), float(data["exp"])
    except (ValueError, KeyError, TypeError):
        return None
    return token_id if now < expires else None


def csrf_token(key: bytes, cookie: str) -> str:
    return _sign(key, b"csrf:" + cookie.encode())


def csrf_ok(key: bytes, cookie: str | None, header: str | None) -> bool:
    return bool(cookie and header) and header.isascii() and hmac.compare_digest(header, csrf_token(key, cookie))
