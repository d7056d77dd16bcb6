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

_UNSAFE = re.compile(r"[^a-z0-9-]+")
_ESCAPED_RUN = re.compile(r"(?:_[0-9a-f]{2})+")
_VALID = re.compile(r"(?:[a-z0-9-]|_[0-9a-f]{2})+")


class TokenError(ValueError):
    pass


def _escape(match: re.Match[str]) -> str:
    return "".join(f"_{byte:02x}" for byte in match.group().encode("utf-8"))


# Every ASCII character that is not safe, mapped to its escape: an ASCII name (nearly every
# domain and account) is encoded by one ``str.translate`` in C, with no Python per run.
_ASCII_ESCAPES = {code: f"_{code:02x}" for code in range(128) if _UNSAFE.fullmatch(chr(code))}


# What is left unsafe once a lower-case address or domain had its "_", "." and "@" escaped.
_UNSAFE_AFTER_COMMON = re.compile(r"[^a-z0-9_-]")


def to_token(name: str) -> str:
    # Hot path (every subject and key of a bulk import, e.g. the directory projection's
    # keys): a lower-case address or domain needs only "_", "." and "@" escaped, which three
    # str.replace do in C about 4x faster than the translate table (whose escapes are longer
    # than one character, so CPython looks each character up in the dict); "_" goes first
    # because the others' escapes contain it.  Any other ASCII name goes through the table,
    # the rest through the regex, where runs of safe characters are copied by the regex
    # engine and only unsafe runs go through Python (a character's escape is that of every
    # byte of its UTF-8 form).
    if not name:
        raise TokenError("an empty name has no token")
    if name.isascii():
        common = name.replace("_", "_5f").replace(".", "_2e").replace("@", "_40")
        if _UNSAFE_AFTER_COMMON.search(common) is None:
            return common
        return name.translate(_ASCII_ESCAPES)
    return _UNSAFE.sub(_escape, name)


def _unescape(match: re.Match[str]) -> str:
    # An escaped run holds whole characters: to_token escapes every byte of a character.
    return bytes.fromhex(match.group().replace("_", "")).decode("utf-8")


def from_token(token: str) -> str:
    if not token or not _VALID.fullmatch(token):
        raise TokenError(f"{token!r} is not a Colony name token")
    try:
        return _ESCAPED_RUN.sub(_unescape, token)
    except UnicodeDecodeError as exc:
        raise TokenError(f"{token!r} does not decode to UTF-8") from exc


def normalise_domain(domain: str) -> str:
    """Domains compare case-insensitively and without a trailing dot; IDNs in A-label form."""
    domain = domain.strip().rstrip(".").lower()
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain
