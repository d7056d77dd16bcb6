"""The monitor's session cookie and CSRF token: signed, expiring, bound to each other."""

from __future__ import annotations

from hypothesis import given, strategies as st

from colony_admin.monitor import session

KEY = b"k" * 32


def test_cookie_names_its_token_until_it_expires():
    cookie = session.issue(KEY, "abcdef0123456789", now=1000.0)
    assert session.verify(KEY, cookie, now=1000.0 + session.LIFETIME - 1) == "abcdef0123456789"
    assert session.verify(KEY, cookie, now=1000.0 + session.LIFETIME) is None


def test_another_key_or_a_changed_payload_is_refused():
    cookie = session.issue(KEY, "abcdef0123456789", now=0.0)
    assert session.verify(b"x" * 32, cookie, now=1.0) is None
    payload, _, signature = cookie.partition(".")
    forged = session.issue(KEY, "0000000000000000", now=0.0).partition(".")[0]
    assert session.verify(KEY, f"{forged}.{signature}", now=1.0) is None


def test_csrf_token_belongs_to_one_cookie():
    one, two = session.issue(KEY, "a" * 16, now=0.0), session.issue(KEY, "b" * 16, now=0.0)
    assert session.csrf_ok(KEY, one, session.csrf_token(KEY, one))
    assert not session.csrf_ok(KEY, two, session.csrf_token(KEY, one))
    assert not session.csrf_ok(KEY, one, None)
    assert not session.csrf_ok(KEY, None, session.csrf_token(KEY, one))


def test_session_key_follows_the_cluster_secret(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 32)
    assert session.session_key(secret) == session.session_key(secret)  # every instance agrees
    assert session.session_key(None) != session.session_key(None)      # no secret: per process


@given(st.text(max_size=600))
def test_garbage_cookies_are_no_session(cookie):
    assert session.verify(KEY, cookie, now=0.0) is None
