"""The mail store's vacation bookkeeping (``colony_mailstore.auto_replies``) without a bus: a
changed reply starts a new round of senders, written to the account's file, and the RCPT
that named the user under a domain alias counts as her address."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest

from colony.contracts.directory import AccountEntry, VacationEntry
from colony.contracts.mail import InboundMail, MailRecipient
from colony.outbound.vacation import Reply, Suppressed, handle_of
from colony_mailstore.auto_replies import REPLIED_FILE, AutoReplies, settings_of

ALICE = "alice@acme.example"
T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@dataclass
class Account:
    paths: SimpleNamespace
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    replied: object = None


class Directory:
    async def domain_alias(self, name: str) -> str | None:
        return "acme.example" if name == "alias.example" else None


def store(tmp_path: Path, clock) -> tuple[AutoReplies, Account]:
    acct = Account(SimpleNamespace(account_dir=tmp_path))
    accounts = SimpleNamespace(open={ALICE: acct}, directory=Directory())
    return AutoReplies(accounts, reports=None, metrics=None, clock=clock), acct


def entry(body: str) -> AccountEntry:
    return AccountEntry(address=ALICE, domain="acme.example", name="alice", vacation=VacationEntry(body=body))


def mail(n: int, rcpt: str = ALICE, to: str = ALICE) -> tuple[InboundMail, bytes]:
    body = f"From: carol@remote.test\r\nTo: {to}\r\nMessage-ID: <m{n}@remote.test>\r\n\r\nhi\r\n".encode()
    return InboundMail(message_id=f"m{n}", domain="acme.example", mail_from="carol@remote.test",
                       recipients=[MailRecipient(mailbox=ALICE, original=rcpt)], size=len(body), edge_node="t",
                       body=body), body


async def test_a_changed_reply_starts_a_new_round_and_the_file_says_which(tmp_path):
    now = [T0]
    replies, acct = store(tmp_path, lambda: now[0])
    first, again, changed = mail(1), mail(2), mail(3)
    assert isinstance(await replies._decide(first[0], ALICE, entry("Back Monday."), first[1]), Reply)
    now[0] = T0 + timedelta(hours=1)
    assert await replies._decide(again[0], ALICE, entry("Back Monday."), again[1]) == Suppressed("already_replied")
    assert isinstance(await replies._decide(changed[0], ALICE, entry("Back on the 12th."), changed[1]), Reply)
    written = orjson.loads((tmp_path / REPLIED_FILE).read_bytes())
    assert written["handle"] == acct.replied.handle and [s for s, _ in written["senders"]] == ["carol@remote.test"]
    acct.replied = None                                   # a new owner reads the file
    later = mail(4)
    assert await replies._decide(later[0], ALICE, entry("Back on the 12th."), later[1]) == Suppressed("already_replied")


@pytest.mark.parametrize("content", [b"[]", b"null", b'"x"', b'{"senders": [["carol@remote.test", 5]]}'])
async def test_a_file_of_another_form_is_forgotten_not_an_error_at_every_message(tmp_path, content):
    (tmp_path / REPLIED_FILE).write_bytes(content)
    replies, _ = store(tmp_path, lambda: T0)
    first = mail(1)
    assert isinstance(await replies._decide(first[0], ALICE, entry("Away."), first[1]), Reply)


async def test_a_time_written_without_an_offset_is_utc(tmp_path):
    replies, _ = store(tmp_path, lambda: T0)
    first = mail(1)
    handle = handle_of(settings_of(entry("Away.").vacation))
    (tmp_path / REPLIED_FILE).write_bytes(orjson.dumps(
        {"handle": handle, "senders": [["carol@remote.test", "2026-11-27T11:00:00"]]}))
    assert await replies._decide(first[0], ALICE, entry("Away."), first[1]) == Suppressed("already_replied")


async def test_the_rcpt_through_a_domain_alias_is_the_users_address(tmp_path):
    replies, _ = store(tmp_path, lambda: T0)
    via_alias = mail(1, rcpt="Alice@Alias.example", to="alice@alias.example")
    assert isinstance(await replies._decide(via_alias[0], ALICE, entry("Away."), via_alias[1]), Reply)
    team = mail(2, rcpt="team@alias.example", to="team@alias.example")
    assert await replies._decide(team[0], ALICE, entry("Away."), team[1]) == Suppressed("not_addressed")
    elsewhere = mail(3, rcpt="alice@other.example", to="alice@other.example")
    assert await replies._decide(elsewhere[0], ALICE, entry("Away."), elsewhere[1]) == Suppressed("not_addressed")


async def test_a_reply_to_an_internationalised_sender_travels_with_smtputf8(tmp_path):
    published = []

    class JetStream:
        async def publish(self, subject, data, headers, timeout):
            published.append(data)

    async def route(sender):   # one hosted, one remote recipient: both kinds of job
        return ["jörg@acme.example"], ["jörg@bücher.example"]

    reports = SimpleNamespace(settings=SimpleNamespace(region="local", mail_publish_timeout=5), node_id="store-1",
                              route=route, js=JetStream())
    replies = AutoReplies(SimpleNamespace(open={}), reports, metrics=None)
    for sender, utf8 in (("jörg@bücher.example", True), ("carol@remote.test", False)):
        published.clear()
        await replies._publish(mail(1)[0], ALICE, Reply(sender, b"To: x\r\n\r\nx\r\n"))
        assert [orjson.loads(d)["smtputf8"] for d in published] == [utf8, utf8]
