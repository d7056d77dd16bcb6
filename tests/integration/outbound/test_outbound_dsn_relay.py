"""DSN parameters passed on (RFC 3461 §5.2.1) by the outbound queue on a real nats-server and
loopback DNS, to a small SMTP server on a loopback socket that records every command line
exactly as it came: when it advertises DSN, MAIL carries RET and ENVID and each RCPT its
NOTIFY and ORCPT (xtext; RFC 6533's utf-8 form for a UTF-8 address under SMTPUTF8), and no
"relayed" report is made -- the remote server reports success now; a refusal at RCPT is
still bounced by us.  Without DSN the commands carry none of them and a success is reported
"relayed" as before (§5.2.2)."""

from __future__ import annotations

import asyncio
import email
import json
import logging

import pytest

from cluster_harness import wait_until
from test_outbound_delivery import ORIGINAL, dsns, queued, settings_for, start_queue

from colony.bus import names
from colony.bus.tokens import to_token
from colony.contracts.outbound import OutboundMail, OutboundRecipient
from colony.tasks import TaskOwner


@pytest.fixture
async def owner():
    owner = TaskOwner(logging.getLogger("test"))
    yield owner
    await owner.close()


class RecordingMX:
    """Answers each command line as it comes (a pipelined group too) and records MAIL and
    RCPT lines verbatim; refuses RCPT to ``nobody@`` with 550."""

    def __init__(self, extensions: tuple[str, ...]) -> None:
        self.extensions = list(extensions)
        self.commands: list[str] = []
        self.messages: list[bytes] = []
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> RecordingMX:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"220 mx.remote.test ESMTP\r\n")
            while line := await reader.readline():
                text = line.decode("utf-8").rstrip("\r\n")
                verb = text.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    lines = ["mx.remote.test"] + self.extensions
                    writer.write("".join(f"250{'-' if i < len(lines) - 1 else ' '}{t}\r\n"
                                         for i, t in enumerate(lines)).encode())
                elif verb == "MAIL":
                    self.commands.append(text)
                    writer.write(b"250 2.1.0 ok\r\n")
                elif verb == "RCPT":
                    self.commands.append(text)
                    writer.write(b"550 5.1.1 no such user\r\n" if text.startswith("RCPT TO:<nobody@")
                                 else b"250 2.1.5 ok\r\n")
                elif verb == "DATA":
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    self.messages.append(await reader.readuntil(b"\r\n.\r\n"))
                    writer.write(b"250 2.0.0 queued\r\n")
                elif verb == "RSET":
                    writer.write(b"250 2.0.0 ok\r\n")
                elif verb == "QUIT":
                    writer.write(b"221 2.0.0 bye\r\n")
                    await writer.drain()
                    return
                else:
                    writer.write(b"500 5.5.1 what\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


ASKED = ["SUCCESS", "FAILURE"]


async def submit(js, message_id: str, *recipients: OutboundRecipient, **fields) -> None:
    body = ORIGINAL % message_id.encode()
    mail = OutboundMail.new(message_id=message_id, destination="remote.test", mail_from="alice@example.com",
                            recipients=list(recipients), size=len(body), edge_node="edge-1", body=body,
                            account="alice@example.com", **fields)
    await js.publish(names.outbound_subject("remote.test"), mail.encode(), headers={"Nats-Msg-Id": mail.msg_id()})


def actions(found) -> list[str]:
    return sorted(email.message_from_bytes(d.body).get_payload()[1].get_payload()[1]["Action"] for d in found)


async def _acked(js) -> bool:
    return await queued(js) == 0


async def test_a_server_with_dsn_gets_the_parameters_and_no_relayed_report_is_made(nc, js, owner, nats_server,
                                                                                dns_server, tmp_path):
    async with RecordingMX(("PIPELINING", "8BITMIME", "DSN")) as mx:
        await start_queue(nc, owner, settings_for(nats_server, dns_server, mx, tmp_path))
        await submit(js, "r-dsn", OutboundRecipient(address="bob@remote.test", notify=ASKED, orcpt="rfc822;Bob+1@remote.test"),
                     OutboundRecipient(address="nobody@remote.test", notify=ASKED),
                     OutboundRecipient(address="carol@remote.test"),
                     ret="HDRS", envid="env 7+=")
        [bounce] = await wait_until(lambda: dsns(js), 30, "the bounce of nobody@")
        await wait_until(lambda: _acked(js), 30, "the job acked out of OUTBOUND")
        assert mx.commands == [
            "MAIL FROM:<alice@example.com> RET=HDRS ENVID=env+207+2B+3D",
            "RCPT TO:<bob@remote.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob+2B1@remote.test",
            "RCPT TO:<nobody@remote.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;nobody@remote.test",
            "RCPT TO:<carol@remote.test> ORCPT=rfc822;carol@remote.test",   # no NOTIFY given: none passed on
        ]
        assert len(mx.messages) == 1
        # The remote server reports bob's delivery itself: ours is only the 5xx at RCPT.
        found = await dsns(js)
        assert actions(found) == ["failed"] and "nobody@remote.test" in bounce.body.decode()


async def test_under_smtputf8_a_utf8_recipient_gets_a_utf8_orcpt(nc, js, owner, nats_server, dns_server, tmp_path):
    async with RecordingMX(("PIPELINING", "8BITMIME", "SMTPUTF8", "DSN")) as mx:
        await start_queue(nc, owner, settings_for(nats_server, dns_server, mx, tmp_path))
        await submit(js, "r-utf8", OutboundRecipient(address="jörg@remote.test", notify=ASKED), smtputf8=True)
        await wait_until(lambda: _acked(js), 30, "the job acked out of OUTBOUND")
        assert mx.commands == ["MAIL FROM:<alice@example.com> SMTPUTF8",
                               "RCPT TO:<jörg@remote.test> NOTIFY=SUCCESS,FAILURE ORCPT=utf-8;jörg@remote.test"]
        assert not await dsns(js)


async def test_a_server_without_dsn_gets_no_parameters_and_a_success_is_reported_relayed(nc, js, owner, nats_server,
                                                                                      dns_server, tmp_path):
    async with RecordingMX(("PIPELINING", "8BITMIME")) as mx:
        await start_queue(nc, owner, settings_for(nats_server, dns_server, mx, tmp_path))
        await submit(js, "r-plain", OutboundRecipient(address="bob@remote.test", notify=ASKED, orcpt="rfc822;Bob@remote.test"),
                     OutboundRecipient(address="nobody@remote.test", notify=ASKED), ret="HDRS", envid="env-7")
        found = await wait_until(lambda: _two(dsns(js)), 30, "the relayed report and the bounce")
        await wait_until(lambda: _acked(js), 30, "the job acked out of OUTBOUND")
        assert mx.commands == ["MAIL FROM:<alice@example.com>", "RCPT TO:<bob@remote.test>",
                               "RCPT TO:<nobody@remote.test>"]
        assert actions(found) == ["failed", "relayed"]


async def _two(awaitable):
    found = await awaitable
    return found if len(found) == 2 else None


async def test_after_a_restart_a_recipient_whose_server_had_dsn_is_not_reported_relayed(nc, js, owner, nats_server,
                                                                                       dns_server, tmp_path):
    """The delivery marker of an edge that died between the remote 250 and its ack says which
    recipients went to a server with DSN: the redelivery reports "relayed" only the others."""
    marks = await js.key_value(names.BUCKET_OUTBOUND_DELIVERED)
    await marks.put(to_token("r-restart/remote.test"),
                    json.dumps(["bob@remote.test", "carol@remote.test", "dsn-passed:bob@remote.test"]).encode())
    async with RecordingMX(("PIPELINING", "8BITMIME")) as mx:
        await start_queue(nc, owner, settings_for(nats_server, dns_server, mx, tmp_path))
        body = ORIGINAL % b"r-restart"
        mail = OutboundMail.new(message_id="r-restart", destination="remote.test", mail_from="alice@example.com",
                                recipients=[OutboundRecipient(address=a, notify=ASKED)
                                            for a in ("bob@remote.test", "carol@remote.test", "dave@remote.test")],
                                size=len(body), edge_node="edge-1", body=body, account="alice@example.com",
                                generation=1)
        await js.publish(names.outbound_subject("remote.test"), mail.encode(), headers={"Nats-Msg-Id": mail.msg_id()})
        [report] = await wait_until(lambda: dsns(js), 30, "the relayed report")
        await wait_until(lambda: _acked(js), 30, "the job acked out of OUTBOUND")
        assert mx.commands == ["MAIL FROM:<alice@example.com>", "RCPT TO:<dave@remote.test>"]
        status = email.message_from_bytes(report.body).get_payload()[1].as_string()
        assert status.count("Action: relayed") == 2 and "bob@" not in status
        assert "rfc822; carol@remote.test" in status and "rfc822; dave@remote.test" in status
