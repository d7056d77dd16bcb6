"""Subject-safe tokens for domain and account names.

Domain names contain dots and account names may contain anything, so neither may appear raw
in a NATS subject (where ``.`` separates tokens and ``*``/``>`` are wildcards) or in a KV key.
``to_token`` maps any string to ``[a-z0-9-]`` plus ``_XX`` hex escapes for every other byte of
its UTF-8 form (``_`` itself included), so the mapping is injective and ``from_token`` inverts
it exactly.  Upper-case letters are escaped too: the mapping never folds case, callers
normalise (``normalise_domain``) before they encode.
"""

from __future__ import annotations

import re

_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-")
_ESCAPE = re.compile(r"_([0-9a-f]{2})")


class TokenError(ValueError):
    pass


def to_token(name: str) -> str:
    if not name:
        raise TokenError("an empty name has no token")
    out = []
    for byte in name.encode("utf-8"):
        out.append(chr(byte) if byte in _SAFE else f"_{byte:02x}")
    return "".join(out)


def from_token(token: str) -> str:
    if not token or not re.fullmatch(r"(?:[a-z0-9-]|_[0-9a-f]{2})+", token):
        raise TokenError(f"{token!r} is not a Colony name token")
    raw = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "_":
            raw.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.append(ord(token[i]))
            i += 1
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TokenError(f"{token!r} does not decode to UTF-8") from exc


def normalise_domain(domain: str) -> str:
    """Domains compare case-insensitively and without a trailing dot; IDNs in A-label form."""
    domain = domain.strip().rstrip(".").lower()
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain
