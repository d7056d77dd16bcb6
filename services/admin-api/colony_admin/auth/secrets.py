"""API tokens and account passwords, as stored: never the plaintext.

Tokens look like ``col_<id>_<secret>``: the id names the token aggregate (so any admin-api
instance finds it in PROVISIONING or the read model) and the 256-bit random secret is kept
only as SHA-256 (a fast hash is enough for a high-entropy secret; argon2 is for passwords
that people choose).

SIP digest (RFC 8760): the farm needs H(username:realm:password) per algorithm, not the
password.  We store HA1 for realm = the domain, username = the local part, for MD5 and
SHA-256; a leaked HA1 opens SIP in that realm only, never the mailbox login.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from argon2 import PasswordHasher

from colony_admin.auth import passwords

TOKEN_PREFIX = "col_"
DIGEST_ALGORITHMS = ("MD5", "SHA-256")


class MalformedToken(ValueError):
    pass


def new_token() -> tuple[str, str, str]:
    """A fresh token: (token id, plaintext token, sha256 of its secret)."""
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return token_id, f"{TOKEN_PREFIX}{token_id}_{secret}", secret_digest(secret)


def split_token(token: str) -> tuple[str, str]:
    if not token.startswith(TOKEN_PREFIX):
        raise MalformedToken("not a Colony token")
    token_id, sep, secret = token[len(TOKEN_PREFIX):].partition("_")
    if not sep or len(token_id) != 16 or not secret:
        raise MalformedToken("not a Colony token")
    return token_id, secret


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_sha256: str) -> bool:
    return hmac.compare_digest(secret_digest(secret), stored_sha256)


def password_hasher(fast: bool = False) -> PasswordHasher:
    """argon2id with the library's defaults; ``fast`` only for tests and benchmarks."""
    if fast:
        return PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    return PasswordHasher()


def verify_password(hasher: PasswordHasher, stored: str | None, password: str) -> bool:
    """Any scheme an account may hold: Colony's argon2id or an imported one (``passwords``)."""
    return passwords.verify(hasher, stored, password).ok


def sip_ha1(local: str, realm: str, password: str) -> dict[str, str]:
    material = f"{local}:{realm}:{password}".encode()
    return {"MD5": hashlib.md5(material).hexdigest(), "SHA-256": hashlib.sha256(material).hexdigest()}
