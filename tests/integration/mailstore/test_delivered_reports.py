"""NOTIFY=SUCCESS on a real mail store: the "delivered" report (RFC 3461 §5.2.3) lands once in a
hosted sender's INBOX, however often the job is delivered; one for a remote sender goes to
OUTBOUND; none without SUCCESS or for the null sender."""

from __future__ import annotations

import email
import uuid

import pytest

from cluster_harness import wait_until
from mailworld import DOMAIN, MailWorld

from colony.bus import names
from colony.contracts.mail import InboundMail, MailRecipient
from colony.contracts.outbound import OutboundMail

ALICE, BOB, CAROL = f"alice@{DOMAIN}", f"bob@{DOMAIN}", f"carol@{DOMAIN}"


@pytest.fixture
async def world(cluster, tmp_path):
    w = MailWorld(cluster, tmp_path / "shared")
    await w.setup()
    yield w
    await w.close()


def mail_to(recipients: list[MailRecipient], mail_from: str, message_id: str, text_pad: int = 0,
            **more) -> InboundMail:
    body = (f"Return-Path: <{mail_from}>\r\nFrom: {mail_from or 'daemon@remote.test'}\r\n"
            f"Message-Id: <{message_id}@test>\r\nSubject: please confirm\r\n\r\nthe body text\r\n"
            + "x" * text_pad).encode()
    return InboundMail(message_id=message_id, domain=DOMAIN, mail_from=mail_from, recipients=recipients,
                       size=len(body), edge_node="test", body=body, **more)


async def publish(world, mail: InboundMail, stream_id: str | None = None) -> None:
    """As an edge publishes; ``stream_id`` other than the mail's own makes a second stream
    message of the same job, as the redelivery after a store died before its ack is."""
    subject = names.mail_subject("local", DOMAIN, names.mail_partition(mail.recipients[0].mailbox))
    await world.nc.jetstream().publish(subject, mail.encode(), headers={"Nats-Msg-Id": stream_id or mail.msg_id()},
                                       timeout=10)


def reports_in(world, address: str, message_id: str) -> int:
    return sum(n for key, n in world.stored_ids(address).items() if key.startswith(f"{message_id}.dsn-delivered-"))


def report_bodies(world, address: str, message_id: str) -> list[bytes]:
    from colony.storage.layout import StorageLayout, find_account
    name, _, domain = address.partition("@")
    account_dir = find_account(world.root, domain, name, StorageLayout())[0]
    inbox = world.state(address).box("INBOX")
    return [(account_dir.mail_dir / "bodies" / m.body).read_bytes() for m in inbox.messages.values()
            if m.key.startswith(f"{message_id}.dsn-delivered-")]


async def test_hosted_sender_gets_one_delivered_report_however_often_the_job_comes(world):
    await world.domain()
    for address in (ALICE, BOB, CAROL):
        await world.account(address)
    await world.start_ready("mailstore-1")
    mid = uuid.uuid4().hex
    mail = mail_to([MailRecipient(mailbox=BOB, original="Bob@Example.com", notify=["SUCCESS", "FAILURE"],
                                  orcpt="rfc822;Bob@Example.com"),
                    MailRecipient(mailbox=CAROL, original=CAROL)],            # no NOTIFY: no report of her
                   ALICE, mid, envid="env-1", ret="HDRS")
    await publish(world, mail)

    async def reported():
        return reports_in(world, ALICE, mid) == 1 and world.stored_ids(BOB)[mid] == 1
    await wait_until(reported, 60, "bob's copy and alice's delivery report")
    [raw] = report_bodies(world, ALICE, mid)
    report = email.message_from_bytes(raw)
    assert report.get_content_type() == "multipart/report" and report["To"] == f"<{ALICE}>"
    status = report.get_payload()[1].as_string()
    assert "Final-Recipient: rfc822; bob@example.com" in status and "Action: delivered" in status
    assert "Status: 2.0.0" in status and "Original-Envelope-Id: env-1" in status
    assert "Original-Recipient: rfc822;Bob@Example.com" in status and CAROL not in status
    assert b"the body text" not in raw and b"Subject: please confirm" in raw      # RET=HDRS

    # The same job again (the store died after the report, before its ack): nothing doubles.
    await publish(world, mail, stream_id=f"{mail.msg_id()}/redelivered")
    marker = uuid.uuid4().hex    # a later message to alice proves the repeat was handled
    await publish(world, mail_to([MailRecipient(mailbox=ALICE, original=ALICE)], "x@remote.test", marker))
    await wait_until(lambda: _async(world.stored_ids(ALICE)[marker] == 1), 60, "the marker in alice's INBOX")
    await wait_until(lambda: _stream_empty(world), 60, "MAIL drained")
    assert reports_in(world, ALICE, mid) == 1 and world.stored_ids(BOB)[mid] == 1


async def test_remote_sender_report_goes_to_outbound_and_null_sender_gets_none(world):
    await world.domain()
    await world.account(BOB)
    await world.start_ready("mailstore-1")
    remote, null = uuid.uuid4().hex, uuid.uuid4().hex
    await publish(world, mail_to([MailRecipient(mailbox=BOB, original=BOB, notify=["SUCCESS"])], "", null))
    await publish(world, mail_to([MailRecipient(mailbox=BOB, original=BOB, notify=["SUCCESS"])],
                                 "Sender@Remote.test", remote))
    js = world.nc.jetstream()

    async def outbound() -> list[OutboundMail]:
        info = await js.stream_info(names.STREAM_OUTBOUND)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1) if info.state.messages else ():
            out.append(OutboundMail.from_bytes((await js.get_msg(names.STREAM_OUTBOUND, seq)).data))
        return out
    [item] = await wait_until(outbound, 60, "the report in OUTBOUND")
    assert item.mail_from == "" and item.destination == "remote.test" and item.message_id.startswith(f"{remote}.")
    assert [r.address for r in item.recipients] == ["Sender@Remote.test"]
    assert "Action: delivered" in email.message_from_bytes(item.body).get_payload()[1].as_string()
    await wait_until(lambda: _async(world.stored_ids(BOB)[null] == 1 and world.stored_ids(BOB)[remote] == 1), 60,
                     "both messages stored")
    await wait_until(lambda: _stream_empty(world), 60, "MAIL drained")
    assert len(await outbound()) == 1     # nothing for the null sender's message


async def test_mail_the_store_cannot_store_is_reported_failed_to_its_sender(world):
    """Over quota (or the account deleted since the edge took it): the edge answered 250, so
    the store reports the failure (RFC 5321 §6.1) -- Status 5.2.2 (5.1.1) -- to the sender
    unless the RCPT said NOTIFY=NEVER, and the job still goes to DEAD_LETTERS for an operator."""
    small, gone = f"small@{DOMAIN}", f"gone@{DOMAIN}"
    await world.domain()
    await world.account(ALICE)
    await world.account(small, quota_bytes=1000)
    await world.start_ready("mailstore-1")
    full, never = uuid.uuid4().hex, uuid.uuid4().hex
    await publish(world, mail_to([MailRecipient(mailbox=small, original="Small@Example.com", notify=["FAILURE"],
                                                orcpt="rfc822;Small@Example.com"),
                                  MailRecipient(mailbox=gone, original=gone)],
                                 ALICE, full, text_pad=2000, envid="env-full"))
    await publish(world, mail_to([MailRecipient(mailbox=small, original=small, notify=["NEVER"])], ALICE, never,
                                 text_pad=2000))
    js = world.nc.jetstream()

    async def dead_lettered():
        return (await js.stream_info(names.STREAM_DEAD_LETTERS)).state.messages == 2
    await wait_until(dead_lettered, 60, "both jobs in DEAD_LETTERS")

    def failed_reports(message_id: str) -> dict[str, int]:
        return {k: n for k, n in world.stored_ids(ALICE).items() if k.startswith(f"{message_id}.dsn-failed-")}
    await wait_until(lambda: _async(len(failed_reports(full)) == 1), 60, "the failure report in alice's INBOX")
    from colony.storage.layout import StorageLayout, find_account
    account_dir = find_account(world.root, DOMAIN, "alice", StorageLayout())[0]
    [raw] = [(account_dir.mail_dir / "bodies" / m.body).read_bytes()
             for m in world.state(ALICE).box("INBOX").messages.values() if m.key.startswith(f"{full}.dsn-failed-")]
    report = email.message_from_bytes(raw)
    assert report["Subject"] == "Undelivered Mail Returned to Sender" and report["To"] == f"<{ALICE}>"
    status = report.get_payload()[1].as_string()
    assert "Original-Envelope-Id: env-full" in status
    for block in (f"Original-Recipient: rfc822;Small@Example.com\nFinal-Recipient: rfc822; {small}\n"
                  "Action: failed\nStatus: 5.2.2\nDiagnostic-Code: x-colony; mailbox full",
                  f"Final-Recipient: rfc822; {gone}\nAction: failed\nStatus: 5.1.1"):
        assert block in status, status
    assert "would exceed" not in status            # the store's own wording stays in the dead letter
    assert failed_reports(never) == {}             # NOTIFY=NEVER: no report


async def _async(value):
    return value


async def _stream_empty(world) -> bool:
    return (await world.nc.jetstream().stream_info(names.STREAM_MAIL)).state.messages == 0
