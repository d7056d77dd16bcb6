"""Imported password hashes: Dovecot's {SCHEME} notation, verification, when to re-hash."""

from __future__ import annotations

import base64
import hashlib

import bcrypt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from argon2 import PasswordHasher, Type
from passlib.hash import des_crypt, md5_crypt, sha256_crypt, sha512_crypt

from colony_admin.auth import passwords
from colony_admin.auth.secrets import password_hasher

PW = "correct horse"
HASHER = password_hasher(fast=True)


def _ssha(algo: str, salt: bytes, encoding: str = "b64") -> str:
    digest = hashlib.new(algo, PW.encode() + salt).digest() + salt
    return base64.b64encode(digest).decode() if encoding == "b64" else digest.hex()


def every_scheme() -> dict[str, str]:
    """One hash per accepted scheme, as the old system's export would carry it."""
    argon2i = PasswordHasher(type=Type.I, time_cost=1, memory_cost=1024, parallelism=1).hash(PW)
    argon2id = PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1).hash(PW)
    return {
        "{SHA512-CRYPT}": "{SHA512-CRYPT}" + sha512_crypt.hash(PW, rounds=5000),
        "{SHA256-CRYPT}": "{SHA256-CRYPT}" + sha256_crypt.hash(PW, rounds=5000),
        "{MD5-CRYPT}": "{MD5-CRYPT}" + md5_crypt.hash(PW),
        "{BLF-CRYPT}": "{BLF-CRYPT}" + bcrypt.hashpw(PW.encode(), bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$"),
        "bcrypt bare": bcrypt.hashpw(PW.encode(), bcrypt.gensalt(4)).decode(),
        "{ARGON2ID}": "{ARGON2ID}" + argon2id,
        "{ARGON2I}": "{ARGON2I}" + argon2i,
        "{SSHA512}": "{SSHA512}" + _ssha("sha512", b"\x01\x02\x03\x04"),
        "{SSHA512.hex}": "{SSHA512.HEX}" + _ssha("sha512", b"saltsalt", "hex"),
        "{SSHA256}": "{SSHA256}" + _ssha("sha256", b"abcd"),
        "{SSHA}": "{SSHA}" + _ssha("sha1", b"wxyz"),
        "{CRYPT} des": "{CRYPT}" + des_crypt.hash(PW),
        "{CRYPT} sha512": "{CRYPT}" + sha512_crypt.hash(PW, rounds=5000),
        "bare $6$": sha512_crypt.hash(PW, rounds=5000),
    }


@pytest.mark.parametrize("label", list(every_scheme()))
def test_every_scheme_verifies_and_asks_for_argon2id(label):
    stored, _ = passwords.normalise(every_scheme()[label])
    verdict = passwords.verify(HASHER, stored, PW)
    assert verdict.ok and verdict.rehash
    assert not passwords.verify(HASHER, stored, "wrong password").ok


def test_weak_schemes_are_flagged_strong_ones_are_not():
    hashes = every_scheme()
    weak = {label for label, h in hashes.items() if passwords.normalise(h)[1] is not None}
    assert weak == {"{MD5-CRYPT}", "{SSHA512}", "{SSHA512.hex}", "{SSHA256}", "{SSHA}", "{CRYPT} des"}


def test_own_argon2id_needs_no_rehash_and_is_stored_bare():
    own = HASHER.hash(PW)
    assert passwords.normalise("{ARGON2ID}" + own) == (own, None)
    assert passwords.verify(HASHER, own, PW) == passwords.Verdict(True, False)


@pytest.mark.parametrize("bad", [
    "", "{PLAIN}secret", "{MD5}abc", "{SHA512-CRYPT}$5$abc$def", "{SSHA}!!!", "{SSHA}" + base64.b64encode(b"x" * 21).decode(),
    "{CRYPT}nope", "plainly not a hash", "{SHA512-CRYPT}$6$rounds=999999999$salt$" + "a" * 86,
    "$2y$31$" + "a" * 53, "$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo", "{BLF-CRYPT}$2y$10$short", "{ARGON2ID}$argon2id$garbage", "x" * 5000,
])
def test_unusable_hashes_are_refused_with_a_reason(bad):
    with pytest.raises(passwords.UnsupportedHash) as info:
        passwords.normalise(bad)
    assert str(info.value)


def test_a_stored_hash_that_cannot_be_read_fails_the_check_quietly():
    assert passwords.verify(HASHER, "{NOPE}xyz", PW) == passwords.Verdict(False, False)
    assert passwords.verify(HASHER, None, PW) == passwords.Verdict(False, False)


def test_long_passwords_against_bcrypt_follow_the_72_byte_rule():
    long = "p" * 100
    stored = "{BLF-CRYPT}" + bcrypt.hashpw(long.encode()[:72], bcrypt.gensalt(4)).decode()
    assert passwords.verify(HASHER, stored, long).ok


_PREFIXES = ["", "{SSHA}", "{SSHA512.HEX}", "{CRYPT}", "{BLF-CRYPT}", "{SHA512-CRYPT}", "{ARGON2ID}", "$6$", "$2y$10$",
             "$argon2id$v=19$m=1024,t=1,p=1$"]


@settings(max_examples=300, deadline=None)
@given(prefix=st.sampled_from(_PREFIXES), rest=st.text(max_size=200))
def test_any_input_is_a_hash_or_a_reasoned_refusal_never_a_crash(prefix, rest):
    text = prefix + rest
    try:
        stored, _ = passwords.normalise(text)
    except passwords.UnsupportedHash:
        assert passwords.verify(HASHER, text, PW) == passwords.Verdict(False, False)
        return
    passwords.verify(HASHER, stored, PW)  # whatever it answers, it answers
