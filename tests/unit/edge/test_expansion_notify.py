"""RFC 3461 §5.2.7 at the edge: which RCPTs are reported "expanded", and the NOTIFY their
targets carry on (pure, no bus)."""

from __future__ import annotations

from colony.contracts.recipients import Mailbox
from colony.protocols.smtp import events as E
from colony_edge.acceptance import outbound_recipients, passed_on_notify
from colony_edge.expansion_reports import expanded_reports
from colony_edge.smtp_policy import AcceptedRecipient, SmtpSession

BOB, CAROL = Mailbox("bob@acme.example", "acme.example", "eu"), Mailbox("carol@acme.example", "acme.example", "eu")


def accepted(address: str, notify, mailboxes=(), remote=(), orcpt=None) -> AcceptedRecipient:
    return AcceptedRecipient(E.RcptTo(address, notify=notify, orcpt=orcpt), tuple(mailboxes), tuple(remote))


def test_an_expansion_to_several_passes_notify_on_without_success():
    team = accepted("team@acme.example", ("SUCCESS", "FAILURE"), [BOB, CAROL])
    assert passed_on_notify(team) == ["FAILURE"]
    assert passed_on_notify(accepted("team@acme.example", ("SUCCESS",), [BOB, CAROL])) == ["NEVER"]
    keeps_copy = accepted("bob@acme.example", ("SUCCESS", "DELAY"), [BOB], ["bob@elsewhere.test"])
    assert passed_on_notify(keeps_copy) == ["DELAY"]
    assert [r.notify for r in outbound_recipients([keeps_copy])["elsewhere.test"]] == [["DELAY"]]


def test_one_target_passes_notify_on_unchanged():
    assert passed_on_notify(accepted("sales@acme.example", ("SUCCESS", "FAILURE"), [BOB])) == ["SUCCESS", "FAILURE"]
    forwards = accepted("bob@acme.example", ("SUCCESS",), [], ["bob@elsewhere.test"])
    assert passed_on_notify(forwards) == ["SUCCESS"]
    assert passed_on_notify(accepted("team@acme.example", None, [BOB, CAROL])) is None
    assert passed_on_notify(accepted("team@acme.example", ("NEVER",), [BOB, CAROL])) == ["NEVER"]


def session(mail_from: str, *recipients: AcceptedRecipient) -> SmtpSession:
    s = SmtpSession(id="s1", peer_ip="192.0.2.1", peer_port=1, local_port=25)
    s.mail_from = E.MailFrom(mail_from)
    s.recipients = list(recipients)
    return s


def test_only_expansions_that_asked_for_success_are_reported_and_never_to_the_null_sender():
    team = accepted("team@acme.example", ("SUCCESS",), [BOB, CAROL], orcpt="rfc822;Team@acme.example")
    plain = accepted("bob@acme.example", ("SUCCESS",), [BOB])
    quiet = accepted("all@acme.example", ("FAILURE",), [BOB, CAROL])
    [report] = expanded_reports(session("alice@remote.test", team, plain, quiet))
    assert (report.recipient.address, report.recipient.orcpt, report.action, report.status) == (
        "team@acme.example", "rfc822;Team@acme.example", "expanded", "2.0.0")
    assert expanded_reports(session("", team)) == []
