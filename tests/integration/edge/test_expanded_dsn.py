"""NOTIFY=SUCCESS to an alias with several targets, through a real edge process: the edge
reports it "expanded" (RFC 3461 §5.2.7.3) into the hosted sender's mailbox and passes NOTIFY
on to the targets without SUCCESS; a RCPT that reaches one mailbox keeps SUCCESS, for the mail
store's "delivered" report."""

from __future__ import annotations

import email

from cluster_harness import wait_until
from colony import events
from colony.contracts.mail import InboundMail

MESSAGE = (b"From: carol@example.com\r\nTo: team@example.com\r\nSubject: to the team\r\n"
           b"Message-ID: <t1@example.com>\r\n\r\nthe text\r\n")


async def test_an_alias_to_several_is_reported_expanded_and_its_targets_are_not_asked_for_success(edge):
    with edge.smtp() as client:
        client.ehlo()
        assert client.has_extn("dsn")
        client.starttls(context=edge.tls_context())
        client.ehlo()
        code, _ = client.mail("carol@example.com", ["RET=HDRS", "ENVID=team-1"])
        assert code == 250
        assert client.rcpt("team@example.com", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Team@example.com"])[0] == 250
        assert client.rcpt("dave@example.com", ["NOTIFY=SUCCESS"])[0] == 250
        assert client.data(MESSAGE)[0] == 250

    async def three():
        mails = [events.decode(m.data) for m in await edge.stream_messages()]
        return mails if len(mails) == 3 else None
    mails: list[InboundMail] = await wait_until(three, 30, "two domain copies and the report in MAIL")
    [report] = [m for m in mails if m.message_id.endswith(".dsn-expanded")]
    copies = {r.mailbox: r for m in mails if m is not report for r in m.recipients}
    assert copies["bob@example.com"].notify == ["FAILURE"] and copies["frank@example.org"].notify == ["FAILURE"]
    assert copies["dave@example.com"].notify == ["SUCCESS"]           # one mailbox: reported where stored
    assert report.mail_from == "" and [r.mailbox for r in report.recipients] == ["carol@example.com"]
    parsed = email.message_from_bytes(report.body)
    assert parsed["To"] == "<carol@example.com>" and parsed.get_content_type() == "multipart/report"
    status = parsed.get_payload()[1].as_string()
    assert "Action: expanded" in status and "Final-Recipient: rfc822; team@example.com" in status
    assert "Original-Recipient: rfc822;Team@example.com" in status and "Original-Envelope-Id: team-1" in status
    assert "dave@" not in status and b"the text" not in report.body and b"Subject: to the team" in report.body
