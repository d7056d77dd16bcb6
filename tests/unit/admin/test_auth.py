"""Tokens, passwords, HA1, throttling, roles and entitlements (pure)."""

from __future__ import annotations

import hashlib

import pytest

from colony_admin.auth import roles, secrets
from colony_admin.auth.roles import Principal
from colony_admin.auth.throttle import Throttle
from colony.contracts.entitlements import effective
from colony_admin.models import Role
from colony_admin.problems import Forbidden


def test_tokens_are_stored_as_hashes_and_split_back():
    token_id, token, digest = secrets.new_token()
    assert token.startswith("col_") and digest not in token
    tid, secret = secrets.split_token(token)
    assert tid == token_id and secrets.secret_matches(secret, digest)
    assert not secrets.secret_matches(secret + "x", digest)
    for bad in ("", "Bearer x", "col_short_x", f"col_{token_id}"):
        with pytest.raises(secrets.MalformedToken):
            secrets.split_token(bad)


def test_passwords_are_argon2_and_ha1_is_per_realm():
    hasher = secrets.password_hasher(fast=True)
    stored = hasher.hash("s3cret!")
    assert stored.startswith("$argon2id$") and "s3cret" not in stored
    assert secrets.verify_password(hasher, stored, "s3cret!")
    assert not secrets.verify_password(hasher, stored, "wrong")
    assert not secrets.verify_password(hasher, None, "s3cret!")
    assert not secrets.verify_password(hasher, "garbage", "s3cret!")
    ha1 = secrets.sip_ha1("alice", "acme.example", "pw")
    assert ha1["MD5"] == hashlib.md5(b"alice:acme.example:pw").hexdigest()
    assert ha1["SHA-256"] == hashlib.sha256(b"alice:acme.example:pw").hexdigest()


def test_throttle_locks_out_after_failures_and_releases_with_time():
    t = Throttle(max_failures=3, window=10, lockout=30)
    for i in range(2):
        t.failed("k", now=i)
    assert t.retry_after("k", now=2) == 0
    t.failed("k", now=2)
    assert t.retry_after("k", now=3) == 29
    assert t.retry_after("k", now=32) == 0
    # failures spread wider than the window never lock
    for i in range(10):
        t.failed("slow", now=100 + i * 11)
    assert t.retry_after("slow", now=300) == 0


def test_a_key_locked_again_and_again_is_locked_longer_each_time_up_to_an_hour():
    """A fixed lock let a patient guesser make max_failures guesses every window + lockout for
    ever; each lock of a repeat offender doubles, up to max_lockout, and is forgiven after a
    max_lockout without one."""
    t = Throttle(max_failures=3, window=60, lockout=60, max_lockout=3600)
    now, lengths = 0.0, []
    for _ in range(9):
        for _ in range(3):
            t.failed("ip:x", now=now)
        lengths.append(t.retry_after("ip:x", now))
        now += lengths[-1]          # the guesser comes back the moment the lock ends
        assert t.retry_after("ip:x", now) == 0
    assert lengths == [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]
    now += 3600                      # an hour without a lock: back to the first length
    for _ in range(3):
        t.failed("ip:x", now=now)
    assert t.retry_after("ip:x", now) == 60
    for _ in range(3):               # a login that succeeds forgives as well
        t.failed("acct:a", now=now)
    now += 60
    t.succeeded("acct:a")
    for _ in range(3):
        t.failed("acct:a", now=now)
    assert t.retry_after("acct:a", now) == 60
    # other keys' strikes stay bounded
    t = Throttle(max_failures=1, lockout=60, max_keys=50)
    for i in range(500):
        t.failed(f"ip:{i}", now=float(i))
    assert len(t._strikes) <= 50


def test_throttle_memory_is_bounded():
    t = Throttle(max_keys=100)
    for i in range(1000):
        t.failed(f"k{i}", now=float(i))
    assert len(t._failures) <= 100


def test_throttle_locks_are_bounded_too():
    """Every key locked once and never seen again (a spray from many addresses) stayed."""
    t = Throttle(max_keys=100, max_failures=1, lockout=60.0)
    for i in range(1000):
        t.failed(f"ip:{i}", now=float(i))
    assert len(t._locked_until) <= 100
    assert t.retry_after("ip:999", 999.0) > 0  # the newest locks are the ones kept


def test_a_key_locked_again_is_not_the_first_lock_dropped():
    """Locks are dropped oldest first when too many; one renewed kept its first place."""
    t = Throttle(max_keys=4, max_failures=1, lockout=60.0)
    for i, key in enumerate(("a", "b", "c", "a", "d", "e")):  # "a" locked again at 3; "e" is one too many
        t.failed(key, now=float(i))
    assert t.retry_after("a", 6.0) > 0 and t.retry_after("b", 6.0) == 0
    assert all(t.retry_after(key, 6.0) > 0 for key in "cde")


def test_throttle_forgets_keys_whose_window_is_over_without_waiting_for_max_keys():
    # A spray from many addresses, one failure each, for an hour: what stays is the last
    # window's keys and the locks still running, not max_keys of each.
    t = Throttle(max_failures=3, window=60.0, lockout=60.0, max_keys=100_000)
    for i in range(3600):
        t.failed(f"ip:{i}", now=float(i))
        t.failed(f"ip:{i}", now=float(i))
        t.failed(f"ip:{i}", now=float(i))          # locked
    assert len(t._failures) <= 61 and len(t._locked_until) <= 61
    assert t.retry_after("ip:3599", 3600.0) > 0
    # A key failing again moves behind the others: its window is counted from its last failure.
    t = Throttle(max_failures=3, window=10.0)
    t.failed("old", now=0.0)
    t.failed("new", now=5.0)
    t.failed("old", now=9.0)
    t.failed("other", now=16.0)                   # "new"'s window is over; "old"'s last failure's is not
    assert sorted(t._failures) == ["old", "other"]
    t.failed("old", now=18.0)                     # 9 and 18 in its window (0 fell out): not locked
    assert t.retry_after("old", 18.5) == 0


def test_roles():
    sys = Principal("a", "root", Role.SYSTEM_ADMIN)
    da = Principal("b", "boss", Role.DOMAIN_ADMIN, "acme.example")
    bill = Principal("c", "billing", Role.BILLING_READER)
    roles.require_domain(sys, "x.example")
    roles.require_domain(da, "acme.example")
    for call in (lambda: roles.require_domain(da, "other.example"), lambda: roles.require_system(da, "x"),
                 lambda: roles.require_domain(bill, "acme.example"), lambda: roles.require_usage(da, None),
                 lambda: roles.require_usage(da, "other.example"), lambda: roles.visible_domain_filter(bill),
                 lambda: roles.require_audit(bill, None)):
        with pytest.raises(Forbidden):
            call()
    roles.require_usage(bill, None)
    roles.require_usage(da, "acme.example")
    assert roles.visible_domain_filter(da) == "acme.example" and roles.visible_domain_filter(sys) is None


def test_entitlements_are_capped_by_the_class_of_service():
    cos = {"services": ["mail", "imap"], "quota_bytes": 100, "max_message_bytes": 10}
    assert effective({"services": None, "quota_bytes": None}, cos)["services"] == ["mail", "imap"]
    got = effective({"services": ["imap", "sip"], "quota_bytes": 500}, cos)
    assert got["services"] == ["imap"] and got["quota_bytes"] == 100  # an account cannot exceed its CoS
    assert effective({"services": None, "quota_bytes": 5}, None)["services"] == ["mail", "imap", "pop", "sip"]


def test_if_match_takes_a_version_or_star_and_refuses_anything_else_as_400():
    from colony_admin.deps import if_match
    from colony_admin.problems import BadRequest

    assert if_match(None) is None and if_match("*") is None
    assert if_match('"7"') == 7 and if_match('W/"12"') == 12
    for bad in ("9" * 5000, "²", "٣", "1, 2", "abc", '"-1"', "9" * 20):
        with pytest.raises(BadRequest):
            if_match(bad)
