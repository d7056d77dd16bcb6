"""Vacation auto-replies on a real mail store: the owner answers a stored message once per
sender, never a redelivery, a list's mail or mail filed as Junk; remembers whom it answered
across a restart of the store; a hosted sender's reply lands in their INBOX; metrics count
replies and the reasons for none."""

from __future__ import annotations

import asyncio
import email
import email.policy
import signal
import urllib.request
import uuid

import orjson
import pytest

from cluster_harness import wait_until
from mailworld import DOMAIN, MailWorld

from colony.bus import names
from colony.contracts.mail import InboundMail, MailRecipient
from colony.contracts.outbound import OutboundMail

ALICE, BOB = f"alice@{DOMAIN}", f"bob@{DOMAIN}"
VACATION = {"enabled": True, "body": "Away until the 4th.", "subject": None, "days": 7, "addresses": []}


@pytest.fixture
async def world(cluster, tmp_path):
    w = MailWorld(cluster, tmp_path / "shared")
    await w.setup()
    yield w
    await w.close()


def mail(sender: str, message_id: str, *fields: str, to: str = ALICE, **more) -> InboundMail:
    body = "\r\n".join([f"Return-Path: <{sender}>", f"From: {sender}", f"To: {to}", f"Message-Id: <{message_id}@test>",
                        "Subject: the plan", *fields]) + "\r\n\r\nbody\r\n"
    return InboundMail(message_id=message_id, domain=DOMAIN, mail_from=sender,
                       recipients=[MailRecipient(mailbox=to, original=to)], size=len(body), edge_node="test",
                       body=body.encode(), **more)


TRACE_ID = uuid.uuid4().hex


async def publish(world, item: InboundMail, stream_id: str | None = None) -> None:
    """As an edge publishes, in a trace of the test's (the edge's span as the parent)."""
    subject = names.mail_subject("local", DOMAIN, names.mail_partition(item.recipients[0].mailbox))
    headers = {"Nats-Msg-Id": stream_id or item.msg_id(), "traceparent": f"00-{TRACE_ID}-{uuid.uuid4().hex[:16]}-01"}
    await world.nc.jetstream().publish(subject, item.encode(), headers=headers, timeout=10)


async def outbound(world, with_headers: bool = False) -> list:
    js = world.nc.jetstream()
    info = await js.stream_info(names.STREAM_OUTBOUND)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1) if info.state.messages else ():
        msg = await js.get_msg(names.STREAM_OUTBOUND, seq)
        item = OutboundMail.from_bytes(msg.data)
        out.append((item, msg.headers or {}) if with_headers else item)
    return out


async def stored_all(world, address: str, *message_ids: str) -> bool:
    """Every one of ``message_ids`` stored once, in any mailbox (Junk too)."""
    try:
        state = world.state(address)
    except (FileNotFoundError, ValueError):   # a snapshot replaced while read
        return False
    keys = [m.key.split("/")[0] for box in (state.boxes.values() if state else ()) for m in box.messages.values()]
    return all(keys.count(m) == 1 for m in message_ids)


async def metrics_of(world, node_id: str) -> list[str]:
    view = await world.cluster.wait_state(node_id, "READY", timeout=30)
    text = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://{view.addresses['ops']}/metrics", timeout=10).read().decode())
    return text.splitlines()


async def test_one_reply_per_sender_none_for_redeliveries_lists_or_junk(world):
    await world.domain()
    await world.account(ALICE, real_name="Alice Liddell", vacation=VACATION)
    await world.start_ready("mailstore-1")
    first, second, listed, junk, bcc = (uuid.uuid4().hex for _ in range(5))
    await publish(world, m1 := mail("Carol@Remote.test", first))
    await publish(world, mail("carol@remote.test", second))
    await publish(world, mail("news@remote.test", listed, "List-Id: <news.remote.test>"))
    await publish(world, mail("dave@remote.test", junk, special_use="\\Junk"))
    await publish(world, mail("erin@remote.test", bcc, to=ALICE).model_copy(
        update={"body": mail("erin@remote.test", bcc).body.replace(f"To: {ALICE}".encode(), b"To: team@remote.test")}))
    await publish(world, m1, stream_id=f"{m1.msg_id()}/redelivered")    # the store died before its ack
    await wait_until(lambda: stored_all(world, ALICE, first, second, listed, junk, bcc), 60, "all five stored")
    await wait_until(lambda: _mail_empty(world), 60, "MAIL drained")

    [(reply, headers)] = await outbound(world, with_headers=True)
    assert headers["traceparent"].split("-")[1] == TRACE_ID         # in the trace of the job it answers
    assert reply.mail_from == "" and reply.destination == "remote.test" and reply.sign_domain == DOMAIN
    assert [r.address for r in reply.recipients] == ["Carol@Remote.test"]
    assert reply.message_id == f"{first}.vacation-" + reply.message_id.rsplit("-", 1)[1]
    message = email.message_from_bytes(reply.body, policy=email.policy.default)
    assert message["Auto-Submitted"] == "auto-replied" and message["In-Reply-To"] == f"<{first}@test>"
    assert message["Subject"] == "Auto: the plan" and message["To"] == "Carol@Remote.test"
    assert message["From"].addresses[0].display_name == "Alice Liddell"
    assert message.get_content().strip() == "Away until the 4th."
    lines = await metrics_of(world, "mailstore-1")
    assert "colony_mailstore_auto_replies_sent_total 1.0" in lines
    for reason in ("already_replied", "list", "junk", "not_addressed"):
        assert f'colony_mailstore_auto_replies_suppressed_total{{reason="{reason}"}} 1.0' in lines, reason


async def test_whom_it_answered_survives_a_new_owner_and_a_hosted_sender_gets_the_reply_in_mail(world):
    await world.domain()
    await world.account(ALICE, vacation=VACATION)
    await world.account(BOB)
    first_owner = world.start("mailstore-1")
    await world.cluster.wait_state("mailstore-1", "READY", timeout=30)
    first = uuid.uuid4().hex
    await publish(world, mail("carol@remote.test", first))
    await wait_until(lambda: _outbound_count(world, 1), 60, "the first reply")
    first_owner.signal(signal.SIGKILL)
    await world.start_ready("mailstore-2")       # takes the account over, reads the file
    again, hosted = uuid.uuid4().hex, uuid.uuid4().hex
    await publish(world, mail("carol@remote.test", again))
    await publish(world, mail(BOB, hosted))
    await wait_until(lambda: stored_all(world, ALICE, again, hosted), 60, "both stored by the new owner")

    async def bob_has_reply() -> bool:
        return any(k.startswith(f"{hosted}.vacation-") for k in world.stored_ids(BOB))
    await wait_until(bob_has_reply, 60, "the reply to a hosted sender in bob's INBOX")
    await wait_until(lambda: _mail_empty(world), 60, "MAIL drained")
    assert len(await outbound(world)) == 1       # carol was answered by the first owner already


async def test_mail_to_the_user_through_a_domain_alias_is_answered(world):
    await world.domain()
    await world.directory.put(names.directory_key(names.AGG_DOMAIN_ALIAS, "alias.example"), orjson.dumps(
        {"kind": "domain_alias", "name": "alias.example", "domain": DOMAIN}))
    await world.account(ALICE, vacation=VACATION)
    await world.start_ready("mailstore-1")
    via_alias, other = uuid.uuid4().hex, uuid.uuid4().hex
    # As the edge resolves it: RCPT TO:<alice@alias.example> is ALICE's mailbox.
    item = mail("carol@remote.test", via_alias, to="alice@alias.example")
    await publish(world, item.model_copy(update={"recipients": [MailRecipient(mailbox=ALICE,
                                                                              original="Alice@Alias.example")]}))
    # Not the user under another name: a distribution alias's RCPT is no address of hers.
    item = mail("dave@remote.test", other, to="team@alias.example")
    await publish(world, item.model_copy(update={"recipients": [MailRecipient(mailbox=ALICE,
                                                                              original="team@alias.example")]}))
    await wait_until(lambda: stored_all(world, ALICE, via_alias, other), 60, "both stored")
    await wait_until(lambda: _mail_empty(world), 60, "MAIL drained")
    [reply] = await outbound(world)
    assert [r.address for r in reply.recipients] == ["carol@remote.test"]
    lines = await metrics_of(world, "mailstore-1")
    assert 'colony_mailstore_auto_replies_suppressed_total{reason="not_addressed"} 1.0' in lines


async def _outbound_count(world, n: int) -> bool:
    return len(await outbound(world)) == n


async def _mail_empty(world) -> bool:
    return (await world.nc.jetstream().stream_info(names.STREAM_MAIL)).state.messages == 0
