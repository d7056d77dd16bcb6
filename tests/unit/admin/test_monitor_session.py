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


def test_a_configured_cluster_secret_that_does_not_serve_stops_the_admin_api(tmp_path):
    """A missing, unreadable or empty COLONY_CLUSTER_SECRET_FILE made a random key for the
    process: behind the balancer every other admin API then refused the cookie, and the
    monitor logged users out at random.  It is a configuration error naming the key."""
    import pytest

    from colony.settings import ConfigError

    empty, short = tmp_path / "empty", tmp_path / "short"
    empty.write_bytes(b"\n")
    short.write_bytes(b"0123456789")
    for path in (tmp_path / "missing", empty, short, tmp_path):
        with pytest.raises(ConfigError) as info:
            session.session_key(path)
        assert str(info.value).startswith("COLONY_CLUSTER_SECRET_FILE: "), str(info.value)
