"""DSN parameters passed on to a next server that advertises DSN (RFC 3461 §5.2.1): xtext
and RFC 6533's UTF-8 forms, ORCPT made from the received address when none was given,
length limits, nothing a job carries can break a command line; the RCPT lines the client
core writes with them; and no "relayed" report for a recipient the server took with them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from colony.contracts.outbound import OutboundMail, OutboundRecipient
from colony.outbound.dsn_relay import (mail_parameters, orcpt_value, rcpt_parameters, utf8_addr_unitext,
                                       utf8_addr_xtext, xtext)
from colony.outbound.rules import RecipientResult, decide
from colony.protocols.smtp.client import RemoteReply, Transaction, encode_message
from colony.protocols.smtp.syntax import parse_mail, parse_rcpt, xtext_decode
from colony.settings import Settings

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
SETTINGS = Settings(outbound_retry_initial=60, outbound_retry_max=3600, outbound_max_age=5 * 86400,
                    outbound_delay_warning=4 * 3600)
BODY = b"Subject: hi\r\n\r\nbody\r\n"


def job(*recipients: OutboundRecipient, **more) -> OutboundMail:
    return OutboundMail(at=T0, queued_at=T0, message_id="m1", destination="remote.test",
                        mail_from="alice@example.com", recipients=list(recipients), size=len(BODY),
                        edge_node="edge-1", body=BODY, **more)


@pytest.mark.parametrize("plain, encoded", [
    ("env-7", "env-7"),
    ("a+b=c", "a+2Bb+3Dc"),                  # "+" and "=" are never themselves
    ("two words", "two+20words"),
    ("tab\there", "tab+09here"),
    ("\r\nRCPT TO:<x@evil>", "+0D+0ARCPT+20TO:<x@evil>"),
    ("caf\u00e9", "caf+E9"),                  # an octet xtext_decode made a character of
    ("\u20ac", "+E2+82+AC"),                  # beyond U+00FF: its UTF-8 octets
    ("~!", "~!"),
])
def test_xtext_escapes_plus_equals_and_everything_outside_33_to_126(plain, encoded):
    assert xtext(plain) == encoded
    if ord(max(plain)) <= 0xFF and plain.isprintable():
        assert xtext_decode(encoded) == plain   # what our own server reads back


def test_utf8_address_forms_of_rfc6533():
    assert utf8_addr_xtext("j\u00f6rg+x=y\\z@b\u00fccher.example") == \
        "j\\x{F6}rg\\x{2B}x\\x{3D}y\\x{5C}z@b\\x{FC}cher.example"
    assert utf8_addr_xtext("\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a").isascii()
    assert utf8_addr_unitext("j\u00f6rg+1@b\u00fccher.example") == "j\u00f6rg\\x{2B}1@b\u00fccher.example"
    assert utf8_addr_unitext("a\u2028b c@x") == "a\\x{2028}b\\x{20}c@x"   # no line or space of any kind


@pytest.mark.parametrize("orcpt, smtputf8, value", [
    ("rfc822;Bob@remote.test", False, "rfc822;Bob@remote.test"),
    ("RFC822;bob+tag@remote.test", False, "RFC822;bob+2Btag@remote.test"),
    ("rfc822;j\u00f6rg@remote.test", False, "utf-8;j\\x{F6}rg@remote.test"),
    ("rfc822;j\u00f6rg@remote.test", True, "utf-8;j\u00f6rg@remote.test"),
    ("rfc822;\u7528@remote.test", False, "utf-8;\\x{7528}@remote.test"),
    ("rfc822;J\u00c3\u00b6rg@remote.test", True, "utf-8;J\u00f6rg@remote.test"),   # xtext-decoded "J+C3+B6rg"
    ("utf-8;j\\x{F6}rg@remote.test", True, "utf-8;j\u00f6rg@remote.test"),      # as received, either form
    ("utf-8;j\u00f6rg@remote.test", False, "utf-8;j\\x{F6}rg@remote.test"),
    ("x400;c+3Dus+3Ba+3Dx", False, "x400;c+3Dus+3Ba+3Dx"),                      # unknown type: as received
    ("x400;not xtext", False, None),
    ("rfc822;", False, None),
    ("no-semicolon", False, None),
    ("bad type;x@y", False, None),
    ("utf-8;\\x{110000}@x", False, None),
    ("rfc822;" + "a" * 481 + "@remote.test", False, "rfc822;" + "a" * 481 + "@remote.test"),   # 500 characters
    ("rfc822;" + "a" * 482 + "@remote.test", False, None),                      # 501
    ("rfc822;" + "+" * 170 + "@remote.test", False, None),                      # 189 characters, 529 encoded
    ("rfc822;x@y\r\nRSET", False, None),                                       # no client could send it
    ("utf-8;x\\x{D}@y", True, None),                                          # a CR, escaped
])
def test_orcpt_value(orcpt, smtputf8, value):
    assert orcpt_value(orcpt, smtputf8) == value


def test_rcpt_parameters_pass_notify_as_given_and_orcpt_as_given_or_the_received_address():
    given = OutboundRecipient(address="bob@remote.test", notify=["SUCCESS", "FAILURE"], orcpt="rfc822;Bob@Remote.test")
    assert rcpt_parameters(given, False) == ("NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Bob@Remote.test")
    # No NOTIFY given: none goes on (RFC 3461 §5.2.1 (b)); ORCPT made from the address as received.
    assert rcpt_parameters(OutboundRecipient(address="carol@remote.test"), False) == ("ORCPT=rfc822;carol@remote.test",)
    assert rcpt_parameters(OutboundRecipient(address="d@remote.test", notify=["NEVER"]), False) == \
        ("NOTIFY=NEVER", "ORCPT=rfc822;d@remote.test")
    utf8 = OutboundRecipient(address="j\u00f6rg@remote.test", notify=["FAILURE"])
    assert rcpt_parameters(utf8, True) == ("NOTIFY=FAILURE", "ORCPT=utf-8;j\u00f6rg@remote.test")
    # A job on the bus with a NOTIFY no client could have sent: left out, not passed on.
    assert rcpt_parameters(OutboundRecipient(address="e@remote.test", notify=["NEVER", "SUCCESS"]), False) == \
        ("ORCPT=rfc822;e@remote.test",)


def test_mail_parameters_ret_and_envid_in_xtext_within_100_characters():
    assert mail_parameters(job(OutboundRecipient(address="b@remote.test"))) == ()
    assert mail_parameters(job(OutboundRecipient(address="b@remote.test"), ret="HDRS", envid="id 1+2")) == \
        ("RET=HDRS", "ENVID=id+201+2B2")
    assert mail_parameters(job(OutboundRecipient(address="b@remote.test"), ret="FULL", envid="=" * 34)) == ("RET=FULL",)
    assert mail_parameters(job(OutboundRecipient(address="b@remote.test"), envid="=" * 33)) == ("ENVID=" + "+3D" * 33,)


def test_what_a_job_carries_cannot_add_a_line_and_our_server_reads_back_what_went_out():
    hostile = job(OutboundRecipient(address="b@remote.test", orcpt="rfc822;x@y\r\nRSET", notify=["SUCCESS"]),
                  envid="e\r\nQUIT", ret="FULL")
    # Values with control characters (no client could have sent them: the edge refuses
    # them) are left out, not escaped: a server would refuse the whole MAIL or RCPT.
    assert mail_parameters(hostile) == ("RET=FULL",)
    assert rcpt_parameters(hostile.recipients[0], False) == ("NOTIFY=SUCCESS",)
    options = mail_parameters(hostile)
    [rcpt] = [rcpt_parameters(r, False) for r in hostile.recipients]
    tx = Transaction("alice@example.com", ["b@remote.test"], encode_message(BODY), options, pipelining=True,
                     rcpt_options=[rcpt])
    wire = tx.start()
    assert wire.count(b"\r\n") == 3
    mail, rcpt_line, _ = wire.decode().split("\r\n")[:3]
    assert parse_mail(mail[len("MAIL "):], 10_000_000)["ret"] == "FULL"
    assert parse_rcpt(rcpt_line[len("RCPT "):], False)["notify"] == ("SUCCESS",)


def test_the_client_core_writes_each_recipients_parameters_with_and_without_pipelining():
    rcpts = ["a@remote.test", "b@remote.test"]
    params = [("NOTIFY=SUCCESS", "ORCPT=rfc822;A@remote.test"), ()]
    piped = Transaction("s@example.com", rcpts, encode_message(BODY), ("RET=HDRS",), pipelining=True,
                        rcpt_options=params)
    assert piped.start() == (b"MAIL FROM:<s@example.com> RET=HDRS\r\n"
                             b"RCPT TO:<a@remote.test> NOTIFY=SUCCESS ORCPT=rfc822;A@remote.test\r\n"
                             b"RCPT TO:<b@remote.test>\r\nDATA\r\n")
    step = Transaction("s@example.com", rcpts, encode_message(BODY), pipelining=False, rcpt_options=params)
    assert step.start() == b"MAIL FROM:<s@example.com>\r\n"
    assert step.receive(RemoteReply(250, "ok")) == b"RCPT TO:<a@remote.test> NOTIFY=SUCCESS ORCPT=rfc822;A@remote.test\r\n"
    assert step.receive(RemoteReply(250, "ok")) == b"RCPT TO:<b@remote.test>\r\n"
    with pytest.raises(ValueError):
        Transaction("s@example.com", rcpts, encode_message(BODY), rcpt_options=[()])


def test_no_relayed_report_for_a_recipient_the_server_took_with_dsn_but_failures_stay_ours():
    asked = ["SUCCESS", "FAILURE"]
    j = job(OutboundRecipient(address="a@remote.test", notify=asked),
            OutboundRecipient(address="b@remote.test", notify=asked),
            OutboundRecipient(address="c@remote.test", notify=asked))
    with_dsn = [RecipientResult("a@remote.test", 250, "2.0.0 ok", "mx.remote.test", dsn_passed=True),
                RecipientResult("b@remote.test", 550, "5.1.1 unknown", "mx.remote.test", dsn_passed=True),
                RecipientResult("c@remote.test", 250, "2.0.0 ok", "mx.remote.test")]
    d = decide(j, with_dsn, 1, T0, SETTINGS)
    assert d.delivered == ["a@remote.test", "c@remote.test"]
    assert [f.recipient.address for f in d.success] == ["c@remote.test"]          # c's server had no DSN
    assert [(f.recipient.address, f.action) for f in d.dsn] == [("b@remote.test", "failed")]
