"""The outbound decision rules, DSN format and DKIM signing, without sockets or sleeps."""

from __future__ import annotations

import email
import random
from datetime import UTC, datetime, timedelta

import dkim
import pytest

from colony.contracts.outbound import OutboundMail, OutboundRecipient
from colony.outbound.dsn import build_dsn
from colony.outbound.rules import (NullMx, RecipientResult, Unsendable, check_binary, decide, mail_exchangers,
                                   retry_delay, transfer_options)
from colony.outbound.signing import generate_key, sign
from colony.settings import Settings

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
SETTINGS = Settings(outbound_retry_initial=60, outbound_retry_max=3600, outbound_max_age=5 * 86400,
                    outbound_delay_warning=4 * 3600)
ORIGINAL = b"From: alice@example.com\r\nTo: bob@remote.test\r\nSubject: hello\r\nMessage-ID: <m1@example.com>\r\n\r\nbody\r\n"


def job(*addresses: str, mail_from="alice@example.com", **more) -> OutboundMail:
    return OutboundMail(at=T0, queued_at=T0, message_id="m1", destination="remote.test", mail_from=mail_from,
                        recipients=[OutboundRecipient(address=a) for a in addresses], size=len(ORIGINAL),
                        edge_node="edge-1", body=ORIGINAL, **more)


def test_contract_round_trip_and_msg_id_per_generation():
    j = job("bob@remote.test")
    assert OutboundMail.from_bytes(j.encode()) == j
    nxt = j.next_generation(attempts=3)
    assert j.msg_id() == "m1/remote_2etest" and nxt.msg_id() == "m1/remote_2etest/1"
    with pytest.raises(ValueError):
        job()


def test_mail_exchangers_by_preference_implicit_and_null_mx():
    hosts = mail_exchangers([(20, "b.remote.test."), (10, "a.remote.test."), (20, "c.remote.test.")],
                            "remote.test", random.Random(1))
    assert hosts[0] == "a.remote.test" and set(hosts[1:]) == {"b.remote.test", "c.remote.test"}
    assert mail_exchangers([], "Remote.Test.") == ["remote.test"]
    with pytest.raises(NullMx):
        mail_exchangers([(0, ".")], "remote.test")


def test_backoff_doubles_up_to_the_maximum():
    assert [retry_delay(n, SETTINGS) for n in (1, 2, 3, 7, 50)] == [60, 120, 240, 3600, 3600]


def test_all_delivered_is_finished_without_dsn():
    d = decide(job("bob@remote.test"), [RecipientResult("bob@remote.test", 250, "2.0.0 ok")], 1, T0, SETTINGS)
    assert d.finished and d.delivered == ["bob@remote.test"] and not d.dsn and d.retry_after is None


def test_temporary_failure_retries_the_same_job():
    d = decide(job("bob@remote.test"), [RecipientResult("bob@remote.test", 451, "4.3.0 later")], 2, T0, SETTINGS)
    assert not d.finished and d.requeue is None and d.retry_after == 120 and not d.dsn


def test_mixed_outcome_requeues_the_deferred_and_bounces_the_failed_once():
    j = job("a@remote.test", "b@remote.test", "c@remote.test")
    d = decide(j, [RecipientResult("a@remote.test", 250, "ok"), RecipientResult("b@remote.test", 550, "5.1.1 no user"),
                   RecipientResult("c@remote.test", 421, "4.4.2 busy")], 1, T0 + timedelta(seconds=5), SETTINGS)
    assert [f.recipient.address for f in d.dsn] == ["b@remote.test"] and d.dsn[0].status == "5.1.1"
    assert d.requeue is not None and [r.address for r in d.requeue.recipients] == ["c@remote.test"]
    assert d.requeue.generation == 1 and d.requeue.attempts == 1 and d.requeue.queued_at == T0
    assert d.requeue.not_before == T0 + timedelta(seconds=65)


def test_expiry_fails_everything_deferred_with_4_4_7():
    late = T0 + timedelta(seconds=SETTINGS.outbound_max_age + 1)
    d = decide(job("a@remote.test", "b@remote.test"), [RecipientResult("a@remote.test", 0, "connection refused")],
               30, late, SETTINGS)
    assert d.finished and {f.status for f in d.dsn} == {"4.4.7"} and len(d.dsn) == 2


def test_delay_notice_once_then_never_again():
    later = T0 + timedelta(hours=4, seconds=1)
    d = decide(job("a@remote.test"), [RecipientResult("a@remote.test", 450, "4.2.0 greylisted")], 5, later, SETTINGS)
    assert [f.action for f in d.dsn] == ["delayed"] and d.requeue is not None and d.requeue.delay_notified
    again = decide(d.requeue, [RecipientResult("a@remote.test", 450, "4.2.0 greylisted")], 6, later, SETTINGS)
    assert not again.dsn and again.requeue is None


def test_no_dsn_to_the_null_sender_or_against_notify():
    d = decide(job("a@remote.test", mail_from=""), [RecipientResult("a@remote.test", 550, "5.1.1 no")], 1, T0, SETTINGS)
    assert d.finished and d.failed and not d.dsn
    never = job("a@remote.test").model_copy(update={"recipients": [OutboundRecipient(address="a@remote.test", notify=["NEVER"])]})
    d = decide(never, [RecipientResult("a@remote.test", 550, "5.1.1 no")], 1, T0, SETTINGS)
    assert d.failed and not d.dsn


def test_dsn_is_a_multipart_report_with_every_failed_recipient():
    j = job("a@remote.test", "b@remote.test")
    d = decide(j, [RecipientResult("a@remote.test", 550, "5.1.1 unknown", "mx.remote.test"),
                   RecipientResult("b@remote.test", 552, "5.2.2 full", "mx.remote.test")], 1, T0, SETTINGS)
    raw = build_dsn(j, d.dsn, ORIGINAL, "edge.example.com", T0)
    assert b"\n" not in raw.replace(b"\r\n", b"")
    msg = email.message_from_bytes(raw)
    assert msg.get_content_type() == "multipart/report" and msg.get_param("report-type") == "delivery-status"
    assert msg["To"] == "<alice@example.com>" and msg["Auto-Submitted"] == "auto-replied"
    human, status, returned = msg.get_payload()
    assert status.get_content_type() == "message/delivery-status"
    text = status.as_string()
    assert "Final-Recipient: rfc822; a@remote.test" in text and "Final-Recipient: rfc822; b@remote.test" in text
    assert "Status: 5.1.1" in text and "Status: 5.2.2" in text and "Remote-MTA: dns; mx.remote.test" in text
    assert returned.get_content_type() == "text/rfc822-headers" and b"body\r\n" not in raw.split(b"rfc822-headers")[1]


@pytest.mark.parametrize("code, text, status", [
    (550, "5.1.1 unknown", "5.1.1"),
    (550, "2.0.0 ok?", "5.0.0"),             # not the reply's class (RFC 2034)
    (552, "5.1234.1 x", "5.0.0"),            # 1-3 digits per part (RFC 3463)
    (554, "5.1.1x", "5.0.0"),
    (553, "5.7.1 refused", "5.7.1"),
])
def test_the_status_of_a_remote_reply_is_taken_only_when_well_formed_and_of_its_class(code, text, status):
    d = decide(job("a@remote.test"), [RecipientResult("a@remote.test", code, text)], 1, T0 + timedelta(days=9),
               SETTINGS)
    assert [f.status for f in d.failed] == [status]


EIGHT_BIT = "Subject: hi\r\n\r\nGrüße\r\n".encode()
UTF8_HEADER = "Subject: Grüße\r\n\r\nhi\r\n".encode()


@pytest.mark.parametrize("fields, message, offered, expected", [
    ({}, ORIGINAL, {"8BITMIME"}, ()),
    ({"body_type": "8BITMIME"}, ORIGINAL, set(), ()),                       # declared, but 7-bit: goes
    ({"body_type": "8BITMIME"}, ORIGINAL, {"8BITMIME"}, ("BODY=8BITMIME",)),
    ({}, EIGHT_BIT, {"8BITMIME"}, ("BODY=8BITMIME",)),                      # 8-bit though undeclared
    ({}, EIGHT_BIT, set(), "5.6.3"),
    ({"smtputf8": True}, ORIGINAL, set(), ()),                               # declared, all ASCII
    ({"smtputf8": True}, UTF8_HEADER, {"8BITMIME"}, "5.6.7"),
    ({"smtputf8": True}, UTF8_HEADER, {"8BITMIME", "SMTPUTF8"}, ("BODY=8BITMIME", "SMTPUTF8")),
    ({"smtputf8": True, "mail_from": "jörg@example.com"}, ORIGINAL, {"8BITMIME"}, "5.6.7"),
    # Undeclared (a report or forwarded copy made here) but UTF-8: the parameter all the same.
    ({}, UTF8_HEADER, {"8BITMIME", "SMTPUTF8"}, ("BODY=8BITMIME", "SMTPUTF8")),
    ({}, UTF8_HEADER, {"8BITMIME"}, "5.6.7"),
    ({"mail_from": "jörg@example.com"}, ORIGINAL, {"SMTPUTF8"}, ("SMTPUTF8",)),
])
def test_transfer_options_bounce_rather_than_send_8bit_or_utf8_raw(fields, message, offered, expected):
    j = job("a@remote.test", **fields)
    if isinstance(expected, tuple):
        assert transfer_options(j, message, offered.__contains__, "mx.remote.test") == expected
    else:
        with pytest.raises(Unsendable) as caught:
            transfer_options(j, message, offered.__contains__, "mx.remote.test")
        assert caught.value.text.startswith(expected) and "mx.remote.test" in caught.value.text


def test_a_report_to_a_utf8_address_goes_with_smtputf8():
    """A DSN from the null sender to müller@ (RFC 6531 §3.4: a UTF-8 address in RCPT needs
    the SMTPUTF8 parameter on MAIL), which nobody declared: Postfix, strict, would refuse it."""
    report = job("müller@remote.test", mail_from="")
    assert transfer_options(report, ORIGINAL, {"SMTPUTF8", "8BITMIME"}.__contains__, "mx.remote.test") == ("SMTPUTF8",)
    with pytest.raises(Unsendable):
        transfer_options(report, ORIGINAL, {"8BITMIME"}.__contains__, "mx.remote.test")


@pytest.mark.parametrize("body, sendable", [
    (b"Subject: x\r\n\r\nbinary\x00data\r\n", False),
    (b"Subject: x\r\n\r\nbare\nline feed\r\n", False),
    (b"Subject: x\r\n\r\nbare\rcarriage return\r\n", False),
    ("Subject: x\r\n\r\n8-bit text, Grüße\r\n".encode(), True),
])
def test_a_binarymime_message_goes_by_data_only_if_data_can_carry_it(body, sendable):
    j = job("a@remote.test", body_type="BINARYMIME")
    if sendable:
        check_binary(j, body)
    else:
        with pytest.raises(Unsendable, match="5.6.3"):
            check_binary(j, body)
    check_binary(job("a@remote.test", body_type="8BITMIME"), b"\x00")   # only BINARYMIME is judged


def test_a_dsn_stays_small_whatever_the_remote_server_said():
    """A hostile MX answers each of 100 RCPTs with a 64 KiB multi-line 550: the DSN quotes
    each reply on one bounded line, so it stays far below what the bus carries."""
    addresses = [f"u{i}@remote.test" for i in range(100)]
    text = "5.1.1 " + "\n".join("x" * 70 for _ in range(900))
    j = job(*addresses)
    d = decide(j, [RecipientResult(a, 550, text, "mx.remote.test") for a in addresses], 1, T0, SETTINGS)
    raw = build_dsn(j, d.dsn, ORIGINAL, "edge.example.com", T0)
    assert len(raw) < 300_000
    human, status, _ = email.message_from_bytes(raw).get_payload()
    assert human.get_payload(decode=True).count(b"\n") < 110 and status.as_string().count("Status: 5.1.1") == 100


def test_dkim_signature_verifies_against_the_published_record():
    key = generate_key("example.com", "s2026", 1024)
    signed = sign(ORIGINAL, key) + ORIGINAL
    record = key.dns_record().encode()
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: record if name == b"s2026._domainkey.example.com." else None)
