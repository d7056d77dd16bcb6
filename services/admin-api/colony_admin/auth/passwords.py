"""Password hashes as mail systems store them, so a migration needs no plaintext.

Theory of operation
-------------------
Colony hashes the passwords it is given with argon2id (a PHC string, ``$argon2id$…``).  A
migration brings hashes from the old system instead, in Dovecot's notation: a scheme prefix
in braces, then the scheme's own string::

    {SHA512-CRYPT}$6$salt$…      {SHA256-CRYPT}$5$salt$…      {MD5-CRYPT}$1$salt$…
    {BLF-CRYPT}$2y$10$…          {ARGON2ID}$argon2id$v=19$…   {ARGON2I}$argon2i$v=19$…
    {SSHA512}base64(sha512(pw+salt)+salt)   {SSHA256}…   {SSHA}…   (also .b64 / .hex)
    {CRYPT}<any crypt(3) string: DES, $1$, $5$, $6$, $2y$>

A crypt or PHC string without a prefix is recognised by its ``$id$``.  ``parse`` turns any of
these into a ``StoredHash`` (canonical scheme, the value its verifier takes, whether it is
weak), or raises ``UnsupportedHash`` saying what is accepted.  ``normalise`` is what an
import stores: argon2id stays a bare PHC string (Colony's own format), everything else keeps
``{SCHEME}`` so the verifier never has to guess.

``verify`` checks a password against a stored hash and says whether a re-hash to argon2id is
due: for every scheme but argon2id, and for argon2id made with other parameters than the
cluster's hasher.  The auth check re-hashes on the next successful login, so migrated
accounts converge on argon2id without anyone knowing their passwords.

Weak schemes (accepted, flagged in the import report): one salted SHA round (SSHA*),
DES crypt and MD5-crypt — fast enough to brute-force if the old database leaked.

The crypto itself is the libraries': libpass (the maintained passlib fork) for the crypt
and LDAP-style schemes, ``bcrypt`` and ``argon2-cffi``.  Only the Dovecot notation is parsed
here.  Pure and blocking (bcrypt/argon2/sha-crypt take milliseconds): call from a thread.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

import bcrypt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from passlib.hash import (
    des_crypt,
    ldap_salted_sha1,
    ldap_salted_sha256,
    ldap_salted_sha512,
    md5_crypt,
    sha256_crypt,
    sha512_crypt,
)

MAX_HASH_LENGTH = 1024  # no real scheme comes near; bounds what an import row can make us parse
# Work a stored hash may demand of one login (real systems stay far below): beyond these an
# imported hash would make the auth check a denial of service, or exhaust memory (argon2).
MAX_BCRYPT_COST = 16
MAX_CRYPT_ROUNDS = 1_000_000
MAX_ARGON2_KIB, MAX_ARGON2_TIME, MAX_ARGON2_LANES = 262_144, 16, 16

ARGON2ID = "ARGON2ID"
WEAK = frozenset({"SSHA", "SSHA256", "SSHA512", "DES-CRYPT", "MD5-CRYPT"})
# Scheme -> (digest size of the SSHA family, passlib handler).
_SSHA = {"SSHA": (20, ldap_salted_sha1), "SSHA256": (32, ldap_salted_sha256), "SSHA512": (64, ldap_salted_sha512)}
_CRYPT_IDS = (("$argon2id$", ARGON2ID), ("$argon2i$", "ARGON2I"), ("$2y$", "BLF-CRYPT"), ("$2b$", "BLF-CRYPT"),
              ("$2a$", "BLF-CRYPT"), ("$6$", "SHA512-CRYPT"), ("$5$", "SHA256-CRYPT"), ("$1$", "MD5-CRYPT"))
_DES = re.compile(r"^[./0-9A-Za-z]{13}$")
_ARGON2 = re.compile(r"^\$argon2i?d?\$v=\d+\$m=(\d+),t=(\d+),p=(\d+)\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+$")
_BCRYPT = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")
_CRYPT_FORMATS = {
    "SHA512-CRYPT": re.compile(r"^\$6\$(?:rounds=(\d{1,9})\$)?[^$:\n]{0,16}\$[./0-9A-Za-z]{86}$"),
    "SHA256-CRYPT": re.compile(r"^\$5\$(?:rounds=(\d{1,9})\$)?[^$:\n]{0,16}\$[./0-9A-Za-z]{43}$"),
    "MD5-CRYPT": re.compile(r"^\$1\$[^$:\n]{0,8}\$[./0-9A-Za-z]{22}$"),
    "DES-CRYPT": _DES,
}
_PREFIX = re.compile(r"^\{([A-Za-z0-9-]+)(?:\.([A-Za-z0-9]+))?\}")
ACCEPTED = ("SHA512-CRYPT, SHA256-CRYPT, MD5-CRYPT, BLF-CRYPT, ARGON2ID, ARGON2I, SSHA512, SSHA256, SSHA, CRYPT "
            "(Dovecot {SCHEME} prefix), or a bare $argon2id$/$2y$/$6$/$5$/$1$ string")


class UnsupportedHash(ValueError):
    """Not a hash this module can verify; the message says what is accepted."""


@dataclass(frozen=True)
class StoredHash:
    scheme: str  # canonical: ARGON2ID, ARGON2I, BLF-CRYPT, SHA512-CRYPT, SHA256-CRYPT, MD5-CRYPT, DES-CRYPT, SSHA*
    value: str   # what the scheme's verifier takes (PHC/crypt string, or passlib's {SSHA…}base64)

    @property
    def weak(self) -> bool:
        return self.scheme in WEAK

    def stored(self) -> str:
        """The canonical stored form (see module docstring)."""
        if self.scheme == ARGON2ID:
            return self.value
        if self.scheme in _SSHA:
            return self.value  # passlib's form already starts with {SSHA…}
        if self.scheme == "DES-CRYPT":
            return f"{{CRYPT}}{self.value}"  # Dovecot has no name of its own for DES crypt
        return f"{{{self.scheme}}}{self.value}"


@dataclass(frozen=True)
class Verdict:
    ok: bool
    rehash: bool  # the password is right and the stored hash should become argon2id


def parse(text: str) -> StoredHash:
    text = text.strip()
    if not text or len(text) > MAX_HASH_LENGTH:
        raise UnsupportedHash(f"a password hash is 1 to {MAX_HASH_LENGTH} characters")
    match = _PREFIX.match(text)
    if match is None:
        scheme = _crypt_scheme(text)
        if scheme is None:
            raise UnsupportedHash(f"unrecognised password hash; accepted: {ACCEPTED}")
        return _checked(scheme, text)
    scheme, encoding, rest = match.group(1).upper(), (match.group(2) or "").lower(), text[match.end():]
    if scheme in ("PLAIN", "CLEAR", "CLEARTEXT"):
        raise UnsupportedHash("a plaintext password goes in the password column, not password_hash")
    if scheme in _SSHA:
        return _ssha(scheme, encoding, rest)
    if encoding:
        raise UnsupportedHash(f"{{{scheme}}} takes no .{encoding} encoding")
    if scheme == "CRYPT":
        inner = _crypt_scheme(rest) or ("DES-CRYPT" if _DES.match(rest) else None)
        if inner is None:
            raise UnsupportedHash("{CRYPT} needs a crypt(3) string (DES, $1$, $5$, $6$ or $2y$)")
        return _checked(inner, rest)
    expected = {s for _, s in _CRYPT_IDS}
    if scheme not in expected:
        raise UnsupportedHash(f"password scheme {{{scheme}}} is not supported; accepted: {ACCEPTED}")
    if _crypt_scheme(rest) != scheme:
        raise UnsupportedHash(f"{{{scheme}}} is followed by something that is not a {scheme} hash")
    return _checked(scheme, rest)


def stored_scheme(stored: str) -> str:
    """The scheme of a hash in its stored (normalised) form, without validating it again."""
    if stored.startswith("{"):
        scheme = stored[1:stored.find("}")]
        return "DES-CRYPT" if scheme == "CRYPT" else scheme
    return _crypt_scheme(stored) or "unknown"


def normalise(text: str) -> tuple[str, str | None]:
    """What an import stores for this hash, and a warning if its scheme is weak."""
    parsed = parse(text)
    warning = (f"{parsed.scheme} is a weak password scheme; it is re-hashed to argon2id at the account's "
               "next login") if parsed.weak else None
    return parsed.stored(), warning


def verify(hasher: PasswordHasher, stored: str | None, password: str) -> Verdict:
    """Check ``password``; a hash this module cannot read is a failed check, never an error."""
    if not stored:
        return Verdict(False, False)
    try:
        parsed = parse(stored)
    except UnsupportedHash:
        return Verdict(False, False)
    ok = _verify(parsed, password)
    if not ok:
        return Verdict(False, False)
    if parsed.scheme != ARGON2ID:
        return Verdict(True, True)
    return Verdict(True, hasher.check_needs_rehash(parsed.value))


def _crypt_scheme(text: str) -> str | None:
    for prefix, scheme in _CRYPT_IDS:
        if text.startswith(prefix):
            return scheme
    return None


def _checked(scheme: str, value: str) -> StoredHash:
    """Reject a malformed string at import, not at the first login, and a cost that would
    turn every login into a denial of service (the parameters come from the hash)."""
    if scheme in (ARGON2ID, "ARGON2I"):
        match = _ARGON2.match(value)
        ok = match is not None
        if match is not None and (int(match[1]) > MAX_ARGON2_KIB or int(match[2]) > MAX_ARGON2_TIME
                                  or int(match[3]) > MAX_ARGON2_LANES):
            raise UnsupportedHash(f"{scheme} parameters above m={MAX_ARGON2_KIB},t={MAX_ARGON2_TIME},"
                                  f"p={MAX_ARGON2_LANES} are refused (each login would cost that much)")
    elif scheme == "BLF-CRYPT":
        match = _BCRYPT.match(value)
        ok = match is not None
        if match is not None and not 4 <= int(match[1]) <= MAX_BCRYPT_COST:
            raise UnsupportedHash(f"bcrypt cost must be 4 to {MAX_BCRYPT_COST}")
    else:
        # The crypt formats by pattern (passlib's from_string does the same check at ~10x the
        # cost, and a migration validates every row's hash).
        match = _CRYPT_FORMATS[scheme].match(value)
        ok = match is not None
        if match is not None and match.lastindex and int(match[1]) > MAX_CRYPT_ROUNDS:
            raise UnsupportedHash(f"{scheme} rounds above {MAX_CRYPT_ROUNDS:,} are refused")
    if not ok:
        raise UnsupportedHash(f"malformed {scheme} hash")
    return StoredHash(scheme, value)


def _ssha(scheme: str, encoding: str, rest: str) -> StoredHash:
    size, handler = _SSHA[scheme]
    try:
        if encoding == "hex":
            raw = bytes.fromhex(rest)
        elif encoding in ("", "b64", "base64"):
            raw = base64.b64decode(rest, validate=True)
        else:
            raise UnsupportedHash(f"{{{scheme}.{encoding}}}: the encoding is b64 or hex")
    except (ValueError, binascii.Error):
        raise UnsupportedHash(f"{{{scheme}}} is not followed by valid {encoding or 'base64'}") from None
    salt = len(raw) - size
    if salt < handler.min_salt_size or salt > handler.max_salt_size:
        raise UnsupportedHash(f"{{{scheme}}} needs a {size}-byte digest and a {handler.min_salt_size}-"
                              f"{handler.max_salt_size} byte salt")
    return StoredHash(scheme, f"{{{scheme}}}{base64.b64encode(raw).decode()}")


def _verify(parsed: StoredHash, password: str) -> bool:
    scheme, value = parsed.scheme, parsed.value
    try:
        if scheme in (ARGON2ID, "ARGON2I"):
            # The type and parameters come from the PHC string, not from the hasher's settings.
            return PasswordHasher().verify(value, password)
        if scheme == "BLF-CRYPT":
            # bcrypt reads 72 bytes at most; older libraries truncated silently, bcrypt 5 refuses.
            return bcrypt.checkpw(password.encode()[:72], value.encode())
        handler = {"SHA512-CRYPT": sha512_crypt, "SHA256-CRYPT": sha256_crypt, "MD5-CRYPT": md5_crypt,
                   "DES-CRYPT": des_crypt, "SSHA": ldap_salted_sha1, "SSHA256": ldap_salted_sha256,
                   "SSHA512": ldap_salted_sha512}[scheme]
        return bool(handler.verify(password, value))
    except (VerificationError, InvalidHashError, ValueError):
        return False
