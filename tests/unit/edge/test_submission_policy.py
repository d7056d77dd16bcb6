"""The submission policy's decisions without sockets: which senders belong to an account
(its address, aliases that deliver to it, through domain aliases), the null sender, the
From: header check, and remote recipients marked for OUTBOUND."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from colony.contracts.directory import AccountInfo, AliasInfo, DomainInfo
from colony.protocols.smtp import events as E
from colony.settings import Settings
from colony_edge.smtp_policy import IncomingMessage, SmtpSession
from colony_edge.submission import NOT_YOUR_FROM, NOT_YOUR_SENDER, NULL_SENDER, SubmissionPolicy


class Directory:
    def __init__(self) -> None:
        self.loaded = asyncio.Event()
        self.loaded.set()
        self.domains = {"example.com": DomainInfo("example.com", "active", "local", None)}
        self.aliases = {"example-mail.com": "example.com"}
        self.addresses = {
            "bob@example.com": AccountInfo("bob@example.com", "active", None, None, None, (), False),
            "carol@example.com": AccountInfo("carol@example.com", "active", None, None, None, (), False),
            "team@example.com": AliasInfo("team@example.com", ("bob@example.com", "frank@example.org")),
        }

    def domain(self, name):
        return self.domains.get(name)

    def domain_alias(self, name):
        return self.aliases.get(name)

    def address(self, address):
        return self.addresses.get(address)


@pytest.fixture
def policy() -> SubmissionPolicy:
    return SubmissionPolicy(Directory(), auth=None, counters=None, js=None, settings=Settings(), metrics=None,
                            node_id="edge-1")


def session() -> SmtpSession:
    s = SmtpSession(id="s1", peer_ip="192.0.2.1", peer_port=1, local_port=587)
    s.notes.update(account="bob@example.com", account_domain="example.com", rate_per_hour=None)
    return s


@pytest.mark.parametrize("address, mine", [
    ("bob@example.com", True), ("BOB@Example.COM", True), ("team@example.com", True),
    ("bob@example-mail.com", True), ("team@example-mail.com", True),
    ("carol@example.com", False), ("bob@example.org", False), ("nobody@example.com", False), ("bob", False),
])
def test_which_senders_belong_to_the_account(policy, address, mine):
    assert policy.owns("bob@example.com", address) is mine


async def test_envelope_sender_checks(policy):
    assert (await policy.mail_from(session(), E.MailFrom(address="team@example.com"))).accept
    assert (await policy.mail_from(session(), E.MailFrom(address=""))).reply == NULL_SENDER
    assert (await policy.mail_from(session(), E.MailFrom(address="carol@example.com"))).reply == NOT_YOUR_SENDER


async def test_from_header_must_be_the_accounts_too(policy, tmp_path: Path):
    def spooled(head: str) -> IncomingMessage:
        path = tmp_path / "m.spool"
        path.write_bytes(head.encode() + b"\r\nbody\r\n")
        return IncomingMessage(size=path.stat().st_size, spool=path)

    s = session()
    assert (await policy.data_complete(s, spooled("From: Bob <bob@example.com>\r\nSubject: x\r\n"))).accept
    assert s.notes["from_domain"] == "example.com"
    for head in ("From: carol@example.com\r\n", "From: bob@example.com, carol@example.com\r\n", "Subject: no from\r\n"):
        assert (await policy.data_complete(session(), spooled(head))).reply == NOT_YOUR_FROM


async def test_remote_recipients_are_accepted_without_a_mailbox(policy):
    s = session()
    assert (await policy.rcpt_to(s, E.RcptTo(address="dave@remote.test"))).accept
    assert [(r.rcpt.address, r.mailboxes) for r in s.recipients] == [("dave@remote.test", ())]


def _whole_section_parse(head: bytes) -> tuple[str, ...]:
    """What data_complete did before ``from_addresses``: the whole header section through
    ``email.policy.SMTP``; the fast path must read every header section the same way."""
    import email.utils
    from email.parser import BytesHeaderParser
    from email.policy import SMTP

    end = head.find(b"\r\n\r\n")
    headers = BytesHeaderParser(policy=SMTP).parsebytes(head if end < 0 else head[: end + 4])
    return tuple(a for _, a in email.utils.getaddresses([str(v) for v in headers.get_all("From", [])]))


@pytest.mark.parametrize("head", [
    b"From: Bob <bob@example.com>\r\nSubject: x\r\n\r\nbody\r\n",
    b"Subject: x\r\nFROM: bob@example.com\r\n\r\n",
    b"From: \"Bob, the builder\" <bob@example.com>,\r\n\tcarol@example.com\r\nTo: x@y\r\n\r\n",
    b"From: bob@example.com\r\nFrom: carol@example.com\r\n\r\n",
    b"From: =?utf-8?q?alice=40example.com?= <bob@example.com>\r\n\r\n",
    b"From bob@example.com Mon Jan  1 00:00:00 2024\r\nFrom: carol@example.com\r\n\r\n",
    b"Subject: x\r\nthis line is no header\r\nFrom: bob@example.com\r\n\r\n",
    b"Subject: x\r\n\r\nFrom: bob@example.com\r\n",
    b"From: bob@example.com\nSubject: bare LF\n\n",
    b"From : bob@example.com\r\n\r\n",
    b"From: bob@example.com",
    b"From: J\xc3\xb6rg <j\xc3\xb6rg@example.com>\r\n\r\n",
    b"From: bob@example.com)<evil@other.example>\r\n\r\n",
    b"Subject: none\r\n\r\n",
    b"From: " + b"x" * 2000 + b"@example.com\r\n\r\n",   # too long to cache
    b"",
])
def test_from_addresses_reads_a_header_section_as_the_email_package_does(head):
    from colony_edge.submission import from_addresses

    assert from_addresses(head) == _whole_section_parse(head)
    assert from_addresses(head) == _whole_section_parse(head), "the cached answer too"


async def test_a_from_header_too_long_to_parse_on_the_loop_is_refused_unparsed(policy, monkeypatch):
    """The email package's address parser ran on the event loop: a From: of 12,000 addresses
    (the 256 KiB scanned) held the whole edge for 1.6 s of CPU per submitted message."""
    import time

    from colony_edge import submission

    parsed = []
    monkeypatch.setattr(submission, "_parse_from", lambda raw: parsed.append(raw) or ("bob@example.com",))
    bomb = "From: " + ",\r\n ".join(["bob@example.com"] * 12_000) + "\r\nSubject: x\r\n\r\nbody\r\n"
    started = time.process_time()
    verdict = await policy.data_complete(session(), IncomingMessage(size=len(bomb), data=bomb.encode()))
    assert verdict.reply == submission.FROM_TOO_LONG and not parsed
    assert time.process_time() - started < 0.5
    # A long but honest one is still read.
    monkeypatch.undo()
    head = "From: " + ", ".join(["Bob Example <bob@example.com>"] * 100) + "\r\n\r\nbody\r\n"
    assert len(head) < submission.MAX_FROM
    assert (await policy.data_complete(session(), IncomingMessage(size=len(head), data=head.encode()))).accept


async def test_results_under_our_authserv_id_are_deleted_from_submitted_mail_too(tmp_path: Path):
    """RFC 8601 §5: a logged-in user's message claiming our verdicts would be shown as ours by a
    colleague's mail client once delivered here; deleted in memory and in the spool file alike,
    others' results kept.  A header section too long to check every field is refused."""
    from colony_edge.security.policy import HEADER_SECTION_MAX, HEADER_TOO_LARGE

    policy = SubmissionPolicy(Directory(), auth=None, counters=None, js=None,
                              settings=Settings(edge_authserv_id="mx.example.com"), metrics=None, node_id="edge-1")
    head = (b"Authentication-Results: other.example; spf=pass\r\nFrom: bob@example.com\r\n"
            b"Authentication-Results: (ours?) \"MX.Example.com\"; dkim=pass header.d=bank.example\r\n"
            b"Subject: x\r\n\r\n")
    body = b"Authentication-Results: mx.example.com; in the body, not a field\r\n"
    expected = b"Authentication-Results: other.example; spf=pass\r\nFrom: bob@example.com\r\nSubject: x\r\n\r\n" + body
    in_memory = IncomingMessage(size=len(head + body), data=head + body)
    assert (await policy.data_complete(session(), in_memory)).accept
    assert in_memory.data == expected
    path = tmp_path / "m.spool"
    path.write_bytes(head + body)
    spooled = IncomingMessage(size=path.stat().st_size, spool=path)
    assert (await policy.data_complete(session(), spooled)).accept
    assert path.read_bytes() == expected

    filler = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"f" * 1000) for i in range(HEADER_SECTION_MAX // 1000 + 1))
    long_head = b"From: bob@example.com\r\n" + filler + b"Authentication-Results: mx.example.com; dkim=pass\r\n\r\nbody\r\n"
    verdict = await policy.data_complete(session(), IncomingMessage(size=len(long_head), data=long_head))
    assert verdict.reply == HEADER_TOO_LARGE


async def test_auth_plain_acting_as_another_user_is_refused():
    """RFC 4616 §2: PLAIN with authzid bob and carol's credentials logged in as carol while the
    client asked to act as bob (the edge's IMAP and POP3 refuse it since 1793a25). An authzid
    equal to the user but for case is the user."""
    from prometheus_client import CollectorRegistry

    from colony.contracts.auth import AuthCheckReply
    from colony.protocols.smtp import replies as R
    from colony_edge.submission import SubmissionMetrics

    checked = []

    class Auth:
        async def check(self, user, password, service, remote_addr):
            checked.append(user)
            return AuthCheckReply(ok=True, account=user, domain="example.com")

    policy = SubmissionPolicy(Directory(), auth=Auth(), counters=None, js=None, settings=Settings(),
                              metrics=SubmissionMetrics(CollectorRegistry()), node_id="edge-1")
    s = SmtpSession(id="s1", peer_ip="192.0.2.1", peer_port=1, local_port=587)
    verdict = await policy.auth(s, E.Auth("PLAIN", "carol@example.com", "pw", "bob@example.com"))
    assert verdict.reply == R.AUTH_FAILED and checked == [] and "account" not in s.notes
    verdict = await policy.auth(s, E.Auth("PLAIN", "carol@example.com", "pw", "Carol@Example.com"))
    assert verdict.accept and checked == ["carol@example.com"] and s.notes["account"] == "carol@example.com"
