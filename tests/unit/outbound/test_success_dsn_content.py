"""Success DSNs (RFC 3461 NOTIFY=SUCCESS): "delivered" reports of the mail store, "relayed"
reports of the outbound queue, their content (RFC 3464) and who gets none."""

from __future__ import annotations

import email
from datetime import UTC, datetime

from colony.contracts.mail import InboundMail, MailRecipient
from colony.contracts.outbound import OutboundMail, OutboundRecipient
from colony.outbound.dsn import build_dsn, delivered_report_id, delivered_reports
from colony.outbound.rules import RecipientResult, decide
from colony.settings import Settings

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
ORIGINAL = (b"Return-Path: <alice@example.com>\r\nFrom: alice@example.com\r\nTo: bob@acme.example\r\n"
            b"Subject: hello\r\nMessage-ID: <m1@example.com>\r\n\r\nthe body\r\n")


def inbound(*recipients: MailRecipient, mail_from="alice@example.com", **more) -> InboundMail:
    return InboundMail(at=T0, message_id="m1", domain="acme.example", mail_from=mail_from,
                       recipients=list(recipients), size=len(ORIGINAL), edge_node="edge-1", body=ORIGINAL, **more)


def rcpt(mailbox: str, notify=("SUCCESS",), original: str | None = None, orcpt: str | None = None) -> MailRecipient:
    return MailRecipient(mailbox=mailbox, original=original or mailbox, notify=list(notify) if notify else None,
                         orcpt=orcpt)


def parts(raw: bytes):
    assert b"\n" not in raw.replace(b"\r\n", b""), "CRLF line ends only"
    msg = email.message_from_bytes(raw)
    assert msg.get_content_type() == "multipart/report" and msg.get_param("report-type") == "delivery-status"
    human, status, returned = msg.get_payload()
    assert status.get_content_type() == "message/delivery-status"
    return msg, human.get_payload(decode=True).decode(), status.as_string(), returned


def test_only_stored_recipients_that_asked_for_success_are_reported():
    mail = inbound(rcpt("bob@acme.example"), rcpt("carol@acme.example", notify=("FAILURE",)),
                   rcpt("dave@acme.example", notify=None), rcpt("erin@acme.example"),
                   rcpt("fred@acme.example", notify=("NEVER",)))
    reports = delivered_reports(mail, ["bob@acme.example", "carol@acme.example", "dave@acme.example",
                                       "fred@acme.example"])   # erin not stored (over quota)
    assert [(r.recipient.address, r.action, r.status) for r in reports] == [("bob@acme.example", "delivered", "2.0.0")]


def test_no_report_for_mail_from_the_null_sender():
    assert delivered_reports(inbound(rcpt("bob@acme.example"), mail_from=""), ["bob@acme.example"]) == []


def test_delivered_report_content_echoes_envid_orcpt_and_returns_the_headers():
    mail = inbound(rcpt("bob@acme.example", orcpt="rfc822;Bob@Acme.example"), envid="env-42", ret="HDRS")
    reports = delivered_reports(mail, ["bob@acme.example"])
    msg, human, status, returned = parts(build_dsn(mail, reports, ORIGINAL, "store-1.example.net", T0))
    assert msg["To"] == "<alice@example.com>" and msg["Subject"] == "Successful Mail Delivery Report"
    assert msg["Auto-Submitted"] == "auto-replied" and msg["From"].endswith("<MAILER-DAEMON@store-1.example.net>")
    assert "<bob@acme.example>: delivered to the mailbox" in human
    for line in ("Reporting-MTA: dns; store-1.example.net", "Original-Envelope-Id: env-42",
                 "Arrival-Date: Wed, 25 Nov 2026 12:00:00 +0000", "Original-Recipient: rfc822;Bob@Acme.example",
                 "Final-Recipient: rfc822; bob@acme.example", "Action: delivered", "Status: 2.0.0"):
        assert line in status
    assert "Diagnostic-Code" not in status and "Remote-MTA" not in status
    assert returned.get_content_type() == "text/rfc822-headers"
    assert b"the body" not in build_dsn(mail, reports, ORIGINAL, "store-1.example.net", T0)


def test_ret_full_returns_the_whole_message():
    mail = inbound(rcpt("bob@acme.example"), ret="FULL")
    raw = build_dsn(mail, delivered_reports(mail, ["bob@acme.example"]), ORIGINAL, "store-1", T0)
    _, _, _, returned = parts(raw)
    assert returned.get_content_type() == "message/rfc822" and b"the body" in raw


def test_an_alias_names_the_address_the_sender_wrote_as_original_recipient():
    mail = inbound(rcpt("bob@acme.example", original="Sales@Acme.example"))
    _, _, status, _ = parts(build_dsn(mail, delivered_reports(mail, ["bob@acme.example"]), ORIGINAL, "s", T0))
    assert "Original-Recipient: rfc822;Sales@Acme.example" in status and "Final-Recipient: rfc822; bob@acme.example" in status
    # a plain recipient without ORCPT gets no Original-Recipient (nothing to add)
    plain = inbound(rcpt("bob@acme.example"))
    assert "Original-Recipient" not in parts(build_dsn(plain, delivered_reports(plain, ["bob@acme.example"]),
                                                       ORIGINAL, "s", T0))[2]


def test_envelope_values_cannot_write_lines_into_the_report():
    """ENVID and ORCPT are checked where the edge parses them; a job on the bus that still
    carries CR/LF writes no field of its own into the report."""
    mail = inbound(rcpt("bob@acme.example", orcpt="rfc822;x\r\nAction: failed"), envid="e\r\nStatus: 5.0.0")
    raw = build_dsn(mail, delivered_reports(mail, ["bob@acme.example"]), ORIGINAL, "s", T0)
    _, _, status, _ = parts(raw)
    assert "\nAction: failed" not in status and "\nStatus: 5.0.0" not in status
    assert status.count("Action: delivered") == 1


def test_report_id_is_the_same_on_every_delivery_of_the_job():
    mail = inbound(rcpt("bob@acme.example"), rcpt("erin@acme.example"))
    first = delivered_report_id(mail, delivered_reports(mail, ["bob@acme.example", "erin@acme.example"]))
    again = delivered_report_id(mail, delivered_reports(mail, ["erin@acme.example", "bob@acme.example"]))
    fewer = delivered_report_id(mail, delivered_reports(mail, ["bob@acme.example"]))
    assert first == again != fewer and first.startswith("m1.dsn-delivered-")


def test_one_block_per_mailbox_however_many_rcpts_led_there():
    mail = inbound(rcpt("bob@acme.example"), rcpt("bob@acme.example", original="sales@acme.example"))
    assert len(delivered_reports(mail, ["bob@acme.example"])) == 1


# --- relayed, by the outbound queue ------------------------------------------------------

SETTINGS = Settings(outbound_retry_initial=60, outbound_retry_max=3600, outbound_max_age=5 * 86400,
                    outbound_delay_warning=4 * 3600)


def outbound(*recipients: OutboundRecipient, mail_from="alice@example.com") -> OutboundMail:
    return OutboundMail(at=T0, queued_at=T0, message_id="m2", destination="remote.test", mail_from=mail_from,
                        recipients=list(recipients), size=len(ORIGINAL), edge_node="edge-1", body=ORIGINAL)


def test_delivered_to_a_remote_server_that_asked_for_success_is_reported_relayed():
    j = outbound(OutboundRecipient(address="a@remote.test", notify=["SUCCESS", "FAILURE"]),
                 OutboundRecipient(address="b@remote.test"),
                 OutboundRecipient(address="c@remote.test", notify=["SUCCESS"]))
    d = decide(j, [RecipientResult("a@remote.test", 250, "2.1.5 ok", "mx.remote.test"),
                   RecipientResult("b@remote.test", 250, "ok", "mx.remote.test"),
                   RecipientResult("c@remote.test", 550, "5.1.1 unknown", "mx.remote.test")], 1, T0, SETTINGS)
    assert [(r.recipient.address, r.action, r.status) for r in d.success] == [("a@remote.test", "relayed", "2.1.5")]
    assert d.dsn == [] and d.finished    # c asked only for SUCCESS: its failure is not reported
    _, human, status, _ = parts(build_dsn(j, d.success, ORIGINAL, "edge.example.com", T0))
    assert "Action: relayed" in status and "Remote-MTA: dns; mx.remote.test" in status
    assert "Diagnostic-Code: smtp; 250 2.1.5 ok" in status and "does not report delivery" in human


def test_no_success_report_by_default_nor_for_the_null_sender():
    ok = [RecipientResult("a@remote.test", 250, "ok")]
    assert decide(outbound(OutboundRecipient(address="a@remote.test")), ok, 1, T0, SETTINGS).success == []
    dsn = outbound(OutboundRecipient(address="a@remote.test", notify=["SUCCESS"]), mail_from="")
    assert decide(dsn, ok, 1, T0, SETTINGS).success == []


def test_failure_and_delay_reports_are_unchanged_by_success():
    j = outbound(OutboundRecipient(address="a@remote.test", notify=["SUCCESS", "FAILURE"]))
    d = decide(j, [RecipientResult("a@remote.test", 550, "5.1.1 unknown")], 1, T0, SETTINGS)
    assert [f.action for f in d.dsn] == ["failed"] and d.success == []
    _, _, status, _ = parts(build_dsn(j, d.dsn, ORIGINAL, "edge.example.com", T0))
    assert "Action: failed" in status and "Status: 5.1.1" in status


def test_a_reporting_mta_named_by_an_ip_address_writes_it_as_an_address_literal():
    """Under colony up on loopback the store's name is 127.0.0.1: the report came from
    ``MAILER-DAEMON@127.0.0.1``, not an address (RFC 5322 §3.4.1 wants a domain or a literal)."""
    mail = inbound(rcpt("bob@acme.example"))
    msg, _, status, _ = parts(build_dsn(mail, delivered_reports(mail, ["bob@acme.example"]), ORIGINAL, "127.0.0.1", T0))
    assert msg["From"].endswith("<MAILER-DAEMON@[127.0.0.1]>") and msg["Message-ID"].endswith("@[127.0.0.1]>")
    assert "Reporting-MTA: dns; 127.0.0.1" in status
