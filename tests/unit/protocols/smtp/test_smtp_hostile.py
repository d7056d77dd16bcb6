"""Hostile input found by probing a running edge: each case once broke the core (a traceback
that dropped the connection, or a limit that did not hold) and must end in a protocol reply."""

from __future__ import annotations

import pytest

from colony.protocols.smtp import events as E
from smtp_driver import Driver, codes


@pytest.mark.parametrize("number", ["²", "٣", "１", "1²"])
def test_a_size_of_non_ascii_digits_is_a_syntax_error(number):
    # str.isdigit() holds for these; int() raises on "²" (a traceback, the session gone)
    # and reads "٣" as 3.
    d = Driver()
    d.feed(b"EHLO c.test\r\n")
    out = d.feed(f"MAIL FROM:<a@b.test> SIZE={number}\r\n".encode())
    assert codes(out) == ["501 5.5.4"] and not d.of(E.MailFrom) and not d.conn.closed


@pytest.mark.parametrize("number", ["²", "٣", "１", "1²"])
def test_a_bdat_size_of_non_ascii_digits_is_a_syntax_error(number):
    d = Driver()
    d.session()
    out = d.feed(f"BDAT {number} LAST\r\n".encode())
    assert codes(out) == ["501 5.5.4"] and d.conn.closed and not d.messages


@pytest.mark.parametrize("params", [b"ENVID=id+0D+0AX-Injected:+20yes", b"ENVID=+00", b"ENVID=a+7Fb"])
def test_an_envid_that_decodes_to_control_characters_is_refused(params):
    # The ENVID goes verbatim into a DSN's Original-Envelope-Id: field; CR LF would add lines.
    d = Driver()
    d.feed(b"EHLO c.test\r\n")
    assert codes(d.feed(b"MAIL FROM:<a@b.test> " + params + b"\r\n")) == ["501 5.5.4"]
    assert not d.of(E.MailFrom)
    assert codes(d.feed(b"MAIL FROM:<a@b.test> ENVID=id+2B+20ok\r\n")) == ["250 2.1.0"]
    assert d.of(E.MailFrom)[-1].envid == "id+ ok"


@pytest.mark.parametrize("orcpt", [b"rfc822;a+0D+0AX-Injected:+20yes@b.test", b"rfc822;a+09b@b.test",
                                   b"x-local;a\x01b", b"utf-8;a\x7fb"])
def test_an_orcpt_with_control_characters_is_refused(orcpt):
    # ORCPT goes into the DSN's Original-Recipient: field.
    d = Driver()
    d.feed(b"EHLO c.test\r\n")
    d.feed(b"MAIL FROM:<a@b.test>\r\n")
    assert codes(d.feed(b"RCPT TO:<x@y.test> ORCPT=" + orcpt + b"\r\n")) == ["501 5.5.4"]
    assert not d.of(E.RcptTo)
    assert codes(d.feed(b"RCPT TO:<x@y.test> ORCPT=rfc822;+22a+20b+22@y.test\r\n")) == ["250 2.1.5"]
    assert d.of(E.RcptTo)[-1].orcpt == 'rfc822;"a b"@y.test'


def test_xtext_octets_that_spell_utf8_are_read_as_utf8():
    # RFC 3461 §4: "+XX" is an octet. "J+C3+B6rg" was read an octet per character ("JÃ¶rg"),
    # which the delivery and failure reports then showed.
    d = Driver()
    d.feed(b"EHLO c.test\r\n")
    assert codes(d.feed(b"MAIL FROM:<a@b.test> ENVID=J+C3+B6rg-1\r\n")) == ["250 2.1.0"]
    assert d.of(E.MailFrom)[-1].envid == "J\u00f6rg-1"
    assert codes(d.feed(b"RCPT TO:<x@y.test> ORCPT=rfc822;J+C3+B6rg@y.test\r\n")) == ["250 2.1.5"]
    assert d.of(E.RcptTo)[-1].orcpt == "rfc822;J\u00f6rg@y.test"
    # Octets that are not UTF-8 stay one character each; C1 controls are refused like C0 ones.
    assert codes(d.feed(b"RCPT TO:<z@y.test> ORCPT=rfc822;J+F6rg@y.test\r\n")) == ["250 2.1.5"]
    assert d.of(E.RcptTo)[-1].orcpt == "rfc822;J\u00f6rg@y.test"
    assert codes(d.feed(b"RCPT TO:<w@y.test> ORCPT=rfc822;a+C2+85b@y.test\r\n")) == ["501 5.5.4"]
    assert codes(d.feed(b"RCPT TO:<v@y.test> ORCPT=rfc822;a+E2+80+A8b@y.test\r\n")) == ["501 5.5.4"]


def test_made_up_verbs_are_not_reported_as_commands():
    # Rejected.command labels the shell's refusal metric: a verb per made-up command was a
    # new time series each (3,000 random verbs: /metrics from 10 KB to 594 KB), never freed.
    d = Driver(max_errors=100)
    d.feed(b"XYZZY1\r\n")
    d.feed(b"EHLO c.test\r\n")
    d.feed(b"NOTAVERB with arguments\r\nFOOBARBAZQUUXPLUGH\r\n")
    before = Driver()
    before.feed(b"MADEUP\r\nNOOP\r\n")   # pipelined before EHLO: refused and closed
    rejected = d.of(E.Rejected) + before.of(E.Rejected)
    assert [r.reply.code for r in rejected] == [500, 500, 500, 554]
    assert {r.command for r in rejected} == {""}


def test_help_lists_the_commands_this_session_can_use():
    # HELP offered STARTTLS on the implicit-TLS port and after STARTTLS, where EHLO rightly does not.
    def helped(**config) -> str:
        return Driver(**config).feed(b"HELP\r\n").decode()

    assert "STARTTLS" in helped(tls_available=True) and "AUTH" not in helped(tls_available=True)
    on_465 = helped(tls_available=True, tls_active=True, auth_mechanisms=("PLAIN",))
    assert on_465.startswith("214 2.0.0") and "STARTTLS" not in on_465 and " AUTH" in on_465
    assert "STARTTLS" not in helped(tls_available=False)
