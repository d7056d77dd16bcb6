"""Forwarded copies, without a bus: which OutboundMail messages submission and the MX's
forwarding acceptor publish for hosted recipients that forward outside the cluster (the
targets, the sender, ORCPT naming the recipient the sender wrote)."""

from __future__ import annotations

from pathlib import Path

from colony.contracts.outbound import OutboundMail
from colony.contracts.recipients import Mailbox
from colony.outbound.srs import Srs
from colony.protocols.smtp import events as E
from colony.settings import Settings
from colony_edge.forwarding import ForwardingAcceptor
from colony_edge.acceptance import MailAcceptor
from colony_edge.smtp_policy import AcceptedRecipient, IncomingMessage, SmtpSession
from colony_edge.submission import SubmissionAcceptor
from test_edge_recipients import FakeJs


class LocalAcceptor:
    """Stands in for MailAcceptor: records which recipients were stored locally."""

    hostname, tracer = "mx.test", None

    def __init__(self) -> None:
        self.stored: list[list[str]] = []

    async def accept(self, session, message) -> str:
        self.stored.append([r.rcpt.address for r in session.recipients])
        return "m1"

    accept_for = MailAcceptor.accept_for  # the real narrowing around the fake accept


def transaction(tmp_path: Path, sender: str) -> tuple[SmtpSession, IncomingMessage]:
    spool = tmp_path / "spool"
    spool.write_bytes(b"From: x\r\nSubject: s\r\n\r\nbody\r\n")
    s = SmtpSession(id="1", peer_ip="192.0.2.1", peer_port=1, local_port=587, helo="c.test", extended=True)
    s.mail_from = E.MailFrom(sender)
    box = Mailbox("copy@b.test", "b.test", "local")
    s.recipients = [AcceptedRecipient(E.RcptTo("fwd@b.test"), (), ("out@remote.test",)),
                    AcceptedRecipient(E.RcptTo("dave@remote.test"), (), ()),
                    AcceptedRecipient(E.RcptTo("copy@b.test"), (box,), ("out2@other.test", "out@remote.test"))]
    return s, IncomingMessage(size=spool.stat().st_size, spool=spool)


def published(js: FakeJs) -> dict[str, OutboundMail]:
    mails = [OutboundMail.from_bytes(payload) for _, payload, _ in js.published]
    return {m.destination: m for m in mails}


async def test_submission_sends_forwarding_targets_with_the_accounts_own_sender(tmp_path):
    local, js = LocalAcceptor(), FakeJs()
    session, message = transaction(tmp_path, "kim@b.test")
    await SubmissionAcceptor(local, js, Settings(), "edge-1").accept(session, message)
    assert local.stored == [["copy@b.test"]]
    out = published(js)
    assert sorted(out) == ["other.test", "remote.test"]
    remote = {r.address: r.orcpt for r in out["remote.test"].recipients}
    assert remote == {"out@remote.test": "rfc822;fwd@b.test", "dave@remote.test": None}   # out@ once
    assert [r.orcpt for r in out["other.test"].recipients] == ["rfc822;copy@b.test"]
    assert {m.mail_from for m in out.values()} == {"kim@b.test"}


async def test_the_mx_forwards_with_an_srs_sender_in_the_forwarding_domain(tmp_path):
    local, js = LocalAcceptor(), FakeJs()
    srs = Srs(b"sixteen bytes or more of secret", max_age_days=21)
    session, message = transaction(tmp_path, "alice@origin.test")
    session.recipients = [r for r in session.recipients if r.remote]
    await ForwardingAcceptor(local, js, Settings(), "edge-1", srs, clock=lambda: 1.0e9).accept(session, message)
    assert local.stored == [["copy@b.test"]]
    out = published(js)
    assert sorted(out) == ["other.test", "remote.test"]
    sender = out["remote.test"].mail_from
    assert sender.startswith("SRS0=") and sender.endswith("=origin.test=alice@b.test")
    assert srs.reverse(sender, 1.0e9) == "alice@origin.test"
    assert not out["remote.test"].sender_local and out["remote.test"].body.startswith(b"Received: ")
