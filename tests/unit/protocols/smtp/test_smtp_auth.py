"""AUTH on the submission core (RFC 4954): never before TLS, PLAIN and LOGIN exchanges,
cancel, bad base64, bounded response lines, MAIL only once authenticated."""

from __future__ import annotations

import base64

from colony.protocols.smtp import events as E, replies as R

from smtp_driver import Driver, codes

SUBMISSION = dict(auth_mechanisms=("PLAIN", "LOGIN"), auth_required=True, tls_available=True)


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


def tls_driver(answer=R.AUTH_OK, **config) -> Driver:
    d = Driver(answers={E.Auth: answer}, **{**SUBMISSION, "tls_active": True, **config})
    d.feed(b"EHLO client.test\r\n")
    return d


def test_auth_is_neither_advertised_nor_accepted_before_tls():
    d = Driver(answers={E.Auth: R.AUTH_OK}, **SUBMISSION)
    ehlo = d.feed(b"EHLO client.test\r\n")
    assert b"AUTH" not in ehlo and b"STARTTLS" in ehlo
    out = d.feed(b"AUTH PLAIN " + b64("\0alice@example.com\0secret") + b"\r\n")
    assert codes(out) == ["538 5.7.11"]
    assert not d.of(E.Auth) and not d.conn.authenticated


def test_auth_is_advertised_on_a_continuation_line():
    """Not on the EHLO reply's last line, where clients that look for "250-AUTH" (nmap's
    smtp-brute among them) do not see it."""
    ehlo = bytes(tls_driver().out).split(b"\r\n")
    assert b"250-AUTH PLAIN LOGIN" in ehlo, ehlo


def test_mail_before_auth_is_refused_on_submission():
    d = tls_driver()
    assert codes(d.feed(b"MAIL FROM:<alice@example.com>\r\n")) == ["530 5.7.0"]


def test_plain_with_initial_response():
    d = tls_driver()
    assert b"AUTH PLAIN LOGIN" in bytes(d.out)
    out = d.feed(b"AUTH PLAIN " + b64("\0alice@example.com\0secret") + b"\r\n")
    assert codes(out) == ["235 2.7.0"]
    [auth] = d.of(E.Auth)
    assert (auth.mechanism, auth.username, auth.password, auth.authzid) == ("PLAIN", "alice@example.com", "secret", "")
    assert "secret" not in repr(auth)
    assert d.conn.authenticated
    assert codes(d.feed(b"MAIL FROM:<alice@example.com>\r\n")) == ["250 2.1.0"]
    assert codes(d.feed(b"AUTH PLAIN " + b64("\0a\0b") + b"\r\n")) == ["503 5.5.1"]


def test_plain_after_challenge_and_login_exchange():
    d = tls_driver()
    assert d.feed(b"AUTH PLAIN\r\n") == b"334 \r\n"
    assert codes(d.feed(b64("\0bob@example.com\0pw") + b"\r\n")) == ["235 2.7.0"]
    d = tls_driver()
    assert d.feed(b"AUTH LOGIN\r\n") == b"334 VXNlcm5hbWU6\r\n"
    assert d.feed(b64("carol@example.com") + b"\r\n") == b"334 UGFzc3dvcmQ6\r\n"
    assert codes(d.feed(b64("pa ss") + b"\r\n")) == ["235 2.7.0"]
    [auth] = d.of(E.Auth)
    assert (auth.mechanism, auth.username, auth.password) == ("LOGIN", "carol@example.com", "pa ss")


def test_wrong_password_cancel_bad_encoding_unknown_mechanism():
    d = tls_driver(answer=R.AUTH_FAILED)
    assert codes(d.feed(b"AUTH PLAIN " + b64("\0a@b.c\0wrong") + b"\r\n")) == ["535 5.7.8"]
    assert not d.conn.authenticated
    assert codes(d.feed(b"MAIL FROM:<a@b.c>\r\n")) == ["530 5.7.0"]
    d = tls_driver()
    d.feed(b"AUTH LOGIN\r\n")
    assert codes(d.feed(b"*\r\n")) == ["501 5.0.0"]
    assert codes(d.feed(b"AUTH PLAIN !!!notbase64\r\n")) == ["501 5.5.2"]
    assert codes(d.feed(b"AUTH PLAIN " + b64("no-nuls") + b"\r\n")) == ["501 5.5.2"]
    assert codes(d.feed(b"AUTH CRAM-MD5\r\n")) == ["504 5.5.4"]
    assert not d.of(E.Auth)


def test_overlong_response_line_is_refused_without_being_kept():
    d = tls_driver(max_auth_line=100)
    d.feed(b"AUTH PLAIN\r\n")
    out = d.feed(b"A" * 5000)
    assert codes(out) == ["500 5.5.6"]
    assert len(d.conn._buf) <= 100
    d.feed(b"A" * 5000 + b"\r\n")
    assert codes(d.feed(b"NOOP\r\n")) == ["250 2.0.0"]


def test_the_mx_still_answers_auth_502():
    d = Driver(tls_active=True)
    d.feed(b"EHLO client.test\r\n")
    assert codes(d.feed(b"AUTH PLAIN " + b64("\0a\0b") + b"\r\n")) == ["502 5.5.1"]
