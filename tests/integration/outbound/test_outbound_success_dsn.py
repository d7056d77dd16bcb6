"""NOTIFY=SUCCESS through the outbound queue on a real nats-server, DNS server and loopback
MX: the client passes no DSN parameters on, so a delivered recipient that asked for SUCCESS
is reported "relayed" (RFC 3461 §5.2.2) -- in a report of its own, beside the bounce of a
recipient that failed, which comes as before."""

from __future__ import annotations

import email
import logging

import pytest

from cluster_harness import wait_until
from test_outbound_delivery import ORIGINAL, Sink, _is, dsns, queued, settings_for, start_queue

from colony.bus import names
from colony.contracts.outbound import OutboundMail, OutboundRecipient
from colony.tasks import TaskOwner


@pytest.fixture
def sink(smtp_mx):
    return smtp_mx(Sink())


@pytest.fixture
async def owner():
    owner = TaskOwner(logging.getLogger("test"))
    yield owner
    await owner.close()


async def submit(js, message_id: str, *recipients: OutboundRecipient, mail_from="alice@example.com",
                 account: str | None = None) -> None:
    body = ORIGINAL % message_id.encode()
    mail = OutboundMail.new(message_id=message_id, destination="remote.test", mail_from=mail_from,
                            recipients=list(recipients), size=len(body), edge_node="edge-1", body=body,
                            account=mail_from if account is None else account, envid="env-7")
    await js.publish(names.outbound_subject("remote.test"), mail.encode(), headers={"Nats-Msg-Id": mail.msg_id()})


def status_of(dsn) -> str:
    return email.message_from_bytes(dsn.body).get_payload()[1].as_string()


async def test_success_is_reported_relayed_and_a_failure_bounced_as_before(nc, js, owner, nats_server, dns_server,
                                                                          sink, tmp_path):
    settings = settings_for(nats_server, dns_server, sink, tmp_path)
    await start_queue(nc, owner, settings)
    await submit(js, "m-relayed", OutboundRecipient(address="bob@remote.test", notify=["SUCCESS", "FAILURE"],
                                                    orcpt="rfc822;Bob@remote.test"),
                 OutboundRecipient(address="nobody@remote.test", notify=["SUCCESS", "FAILURE"]),
                 OutboundRecipient(address="carol@remote.test"))
    found = await wait_until(lambda: _two(dsns(js)), 30, "the two DSNs in MAIL")
    await wait_until(lambda: _is(queued(js), 0), 30, "the job acked out of OUTBOUND")
    by_action = {("relayed" if "Action: relayed" in status_of(d) else "failed"): d for d in found}
    relayed, failed = status_of(by_action["relayed"]), status_of(by_action["failed"])
    assert "Final-Recipient: rfc822; bob@remote.test" in relayed and "Original-Recipient: rfc822;Bob@remote.test" in relayed
    assert "Original-Envelope-Id: env-7" in relayed and "Remote-MTA: dns; mx.remote.test" in relayed
    assert "nobody@" not in relayed and "carol@" not in relayed     # carol asked for nothing: FAILURE,DELAY
    assert "Final-Recipient: rfc822; nobody@remote.test" in failed and "Status: 5.1.1" in failed
    assert "Action: failed" in failed and "bob@" not in failed
    for d in found:
        assert d.mail_from == "" and [r.mailbox for r in d.recipients] == ["alice@example.com"]
    [(_, rcpts, _)] = sink.messages
    assert sorted(rcpts) == ["bob@remote.test", "carol@remote.test"]
    assert len(await dsns(js)) == 2


async def test_no_success_report_without_success_or_to_the_null_sender(nc, js, owner, nats_server, dns_server,
                                                                      sink, tmp_path):
    settings = settings_for(nats_server, dns_server, sink, tmp_path)
    await start_queue(nc, owner, settings)
    await submit(js, "m-plain", OutboundRecipient(address="bob@remote.test", notify=["FAILURE"]))
    await submit(js, "m-null", OutboundRecipient(address="bob@remote.test", notify=["SUCCESS"]), mail_from="")
    await wait_until(lambda: _is(queued(js), 0), 30, "both jobs acked out of OUTBOUND")
    assert len(sink.messages) == 2 and not await dsns(js)


async def test_a_report_to_an_alias_sender_goes_into_the_submitting_accounts_mailbox(nc, js, owner, nats_server,
                                                                                    dns_server, sink, tmp_path):
    """Submission lets an account send as one of its aliases; no mail store holds the alias as
    an account, so a report put into MAIL for it was rejected to DEAD_LETTERS."""
    settings = settings_for(nats_server, dns_server, sink, tmp_path)
    await start_queue(nc, owner, settings)
    await submit(js, "m-alias", OutboundRecipient(address="nobody@remote.test"),
                 OutboundRecipient(address="bob@remote.test", notify=["SUCCESS"]),
                 mail_from="Sales@Example.com", account="alice@example.com")
    found = await wait_until(lambda: _two(dsns(js)), 30, "the bounce and the relayed report in MAIL")
    for dsn in found:
        assert [(r.mailbox, r.original) for r in dsn.recipients] == [("alice@example.com", "Sales@Example.com")]
        assert dsn.domain == "example.com" and email.message_from_bytes(dsn.body)["To"] == "<Sales@Example.com>"


async def _two(awaitable):
    found = await awaitable
    return found if len(found) == 2 else None
