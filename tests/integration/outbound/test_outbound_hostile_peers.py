"""The outbound queue against remote MXs that misbehave on purpose (an attacker owns the
destination domain) or by bug: real loopback sockets, a real nats-server and the loopback
DNS server.  What is checked is what the queue promises whatever the peer does: bounded
time per attempt, no message counted delivered that the server did not take, nothing sent
twice, a session out of step with its replies not used again, a DSN that is RFC 3464-correct
whatever octets the peer put in its replies, opportunistic TLS that falls back to plaintext
as RFC 7435 allows, and 8-bit or UTF-8 mail never sent raw to a server that did not offer
8BITMIME or SMTPUTF8 (RFC 6152 §3, RFC 6531 §3.2: bounced, not mangled)."""

from __future__ import annotations

import asyncio
import email
import logging
import socket
import ssl
import struct
import time

import pytest
import trustme

from cluster_harness import wait_until
from colony.bus import names
from colony.contracts.outbound import OutboundMail, OutboundRecipient
from colony.dns import make_resolver
from colony_edge.mta_sts import MtaSts
from colony_edge.smtp_client import SmtpClient, SmtpError
from test_outbound_delivery import ORIGINAL, dsns, owner, queued, settings_for, start_queue, submit  # noqa: F401
from test_outbound_smtp_client import Scripted, greet


class HostileMX:
    """A small SMTP server in the test's event loop: answers each command line as it comes
    (so a pipelined group too), records what it took, and misbehaves as ``quirk`` says:

    * ``250-to-data``: DATA is answered 250, as if the message had been taken;
    * ``extra-reply``: the reply to the message's end is followed by a second 250;
    * ``late-reply``: a 550 nobody asked for, 0.3 s after the reply to the message's end
      (the client has put the session aside by then);
    * ``refuse-starttls``: STARTTLS (advertised) is answered 454;
    * ``broken-tls``: STARTTLS is answered 220, then the "handshake" is plaintext garbage;
    * ``554-greeting``: greets with 554 (RFC 5321 §3.1: no SMTP service here);
    * ``silent``: accepts the connection and never says a word;
    * ``bad-utf8-5xx``: every RCPT is refused with a multi-line 550 of invalid UTF-8 that
      tries to inject DSN fields and MIME boundaries.
    """

    def __init__(self, quirk: str = "", extensions: tuple[str, ...] = ("PIPELINING", "8BITMIME"),
                 name: str = "mx.hostile.test") -> None:
        self.quirk, self.extensions, self.name = quirk, list(extensions), name
        self.connections = 0
        self.messages: list[bytes] = []
        self.mail_commands: list[str] = []
        self.tls_tried = 0
        self.late_sent = False
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> HostileMX:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if self.quirk == "silent":   # never greets
                await reader.read()
                return
            if self.quirk == "554-greeting":
                writer.write(b"554 5.3.2 mx.hostile.test no SMTP service here\r\n")
                await writer.drain()
                await reader.readline()   # QUIT, or nothing
                return
            writer.write(f"220 {self.name} ESMTP\r\n".encode())
            while line := await reader.readline():
                verb = line[:8].split(b" ")[0].strip().upper()
                if verb in (b"EHLO", b"HELO"):
                    lines = ["mx.hostile.test"] + self.extensions
                    writer.write("".join(f"250{'-' if i < len(lines) - 1 else ' '}{t}\r\n"
                                         for i, t in enumerate(lines)).encode())
                elif verb == b"STARTTLS":
                    self.tls_tried += 1
                    if self.quirk == "refuse-starttls":
                        writer.write(b"454 4.7.0 TLS not available due to temporary reason\r\n")
                    else:   # broken-tls: "go ahead", then no TLS at all
                        writer.write(b"220 2.0.0 go ahead\r\n")
                        await writer.drain()
                        await reader.read(1000)
                        writer.write(b"this is not a TLS server hello\r\n" * 4)
                        await writer.drain()
                        return
                elif verb == b"MAIL":
                    self.mail_commands.append(line.decode("utf-8", "replace").strip())
                    writer.write(b"250 2.1.0 ok\r\n")
                elif verb == b"RCPT":
                    if self.quirk == "bad-utf8-5xx":
                        writer.write(b"550-5.1.1 \xff\xfe\xc3 unknown\r\n550-Final-Recipient: rfc822; forged@x\r\n"
                                     b"550---=_colony_dsn_\r\n550 5.1.1 \xe2\x80 bye\r\n")
                    else:
                        writer.write(b"250 2.1.5 ok\r\n")
                elif verb == b"DATA":
                    if self.quirk == "250-to-data":
                        writer.write(b"250 2.0.0 ok, taken\r\n")
                        continue
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    self.messages.append(await reader.readuntil(b"\r\n.\r\n"))
                    writer.write(b"250 2.0.0 queued\r\n")
                    if self.quirk == "extra-reply":
                        writer.write(b"250 2.0.0 and again\r\n")
                    elif self.quirk == "late-reply":   # the same, once the client went idle
                        await writer.drain()
                        await asyncio.sleep(0.3)
                        writer.write(b"550 5.7.1 a refusal nobody asked for\r\n")
                        self.late_sent = True
                elif verb == b"RSET":
                    writer.write(b"250 2.0.0 ok\r\n")
                elif verb == b"QUIT":
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


async def _true(value):
    return value


# --- the client alone -----------------------------------------------------------------------

async def test_a_reply_dripped_a_byte_at_a_time_is_bounded_by_one_deadline():
    """1 byte per 0.1 s, well inside the 0.5 s timeout for each read: only a deadline for the
    whole reply ends it (one per read let the MX hold the session and the slot forever)."""
    async def script(reader, writer):
        for octet in b"220 " + b"x" * 200 + b"\r\n":
            writer.write(bytes([octet]))
            await writer.drain()
            await asyncio.sleep(0.1)

    async with Scripted(script) as port:
        started = time.monotonic()
        with pytest.raises(SmtpError, match="no reply within"):
            await asyncio.wait_for(SmtpClient.connect("127.0.0.1", port, local_hostname="edge.test", timeout=0.5),
                                   15)
        assert time.monotonic() - started < 3


@pytest.mark.parametrize("chunk", [b"220-" + b"y" * 1020 + b"\r\n", b"y" * 1024],
                         ids=["endless continuation lines", "one line without CRLF"])
async def test_a_1gb_banner_is_refused_after_one_reply_s_worth(chunk):
    """The banner never ends: the client stops at 64 KiB, and the server got to write
    little more than the sockets' buffers hold."""
    sent = 0

    async def script(reader, writer):
        nonlocal sent
        if chunk.startswith(b"y"):
            writer.write(b"220 ")
        try:
            while sent < 1024 ** 3:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
        except ConnectionError:
            pass

    async with Scripted(script) as port:
        with pytest.raises(SmtpError, match="longer than"):
            await asyncio.wait_for(SmtpClient.connect("127.0.0.1", port, local_hostname="edge.test", timeout=5), 15)
    assert sent < 16 * 1024 * 1024


@pytest.mark.parametrize("pipelining", [False, True])
async def test_a_250_to_data_sends_no_message_and_delivers_nothing(pipelining):
    async with HostileMX("250-to-data", ("PIPELINING",) if pipelining else ()) as mx:
        client = await SmtpClient.connect("127.0.0.1", mx.port, local_hostname="edge.test", timeout=5)
        with pytest.raises(SmtpError, match="250 to DATA") as caught:
            await client.send("a@b.test", ["c@d.test"], b"Subject: x\r\n\r\nbody\r\n")
        client.close()
    tx = caught.value.transaction
    assert not tx.message_sent and tx.delivered == [] and not mx.messages


async def test_replies_beyond_the_commands_stop_the_message_before_it_is_sent():
    """A pipelining server answers the group with one reply too many: the one after the 354
    would be read as the message's answer before the message is even sent."""
    async def script(reader, writer):
        await greet(reader, writer)
        await reader.readuntil(b"DATA\r\n")
        writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 queued before it came\r\n")
        await writer.drain()
        await reader.read(1000)

    async with Scripted(script) as port:
        client = await SmtpClient.connect("127.0.0.1", port, local_hostname="edge.test", timeout=5)
        with pytest.raises(SmtpError, match="after the 354") as caught:
            await client.send("a@b.test", ["c@d.test"], b"Subject: x\r\n\r\nbody\r\n")
        client.close()
    assert not caught.value.transaction.message_sent


# --- the queue ------------------------------------------------------------------------------

async def test_a_250_to_data_is_deferred_not_counted_delivered(nc, js, owner, nats_server, dns_server, tmp_path):
    """The message was never sent: it stays queued, is retried, and goes out once when the
    MX behaves; no DSN."""
    async with HostileMX("250-to-data") as mx:
        settings = settings_for(nats_server, dns_server, mx, tmp_path)
        await start_queue(nc, owner, settings)
        await submit(js, "h-250data", "bob@remote.test")
        await wait_until(lambda: _true(mx.connections >= 2), 30, "a retry after the 250 to DATA")
        assert await queued(js) == 1 and not mx.messages
        mx.quirk = ""
        await wait_until(lambda: _true(mx.messages), 30, "the message delivered once the MX behaves")
        await wait_until(lambda: _zero(queued(js)), 30, "the job acked")
    assert len(mx.messages) == 1 and not await dsns(js)


async def test_a_554_greeting_defers_and_does_not_bounce(nc, js, owner, nats_server, dns_server, tmp_path):
    """As Postfix's default (smtp_skip_5xx_greeting): a server that will not talk now is
    no verdict on the recipients; the mail waits, and goes once the server greets."""
    async with HostileMX("554-greeting") as mx:
        settings = settings_for(nats_server, dns_server, mx, tmp_path)
        await start_queue(nc, owner, settings)
        await submit(js, "h-554", "bob@remote.test")
        await wait_until(lambda: _true(mx.connections >= 3), 30, "three attempts refused at the greeting")
        assert not await dsns(js) and await queued(js) == 1
        mx.quirk = ""
        await wait_until(lambda: _true(mx.messages), 30, "the message delivered once the MX greets")
        await wait_until(lambda: _zero(queued(js)), 30, "the job acked")
    assert len(mx.messages) == 1 and not await dsns(js)


async def test_a_session_that_answered_twice_is_not_reused(nc, js, owner, nats_server, dns_server, tmp_path):
    """The stale second 250 would be read as the next transaction's reply to MAIL."""
    async with HostileMX("extra-reply") as mx:
        settings = settings_for(nats_server, dns_server, mx, tmp_path, outbound_connection_idle=30.0,
                                outbound_destination_concurrency=1)
        await start_queue(nc, owner, settings)
        await submit(js, "h-twice-1", "bob@remote.test")
        await wait_until(lambda: _true(len(mx.messages) == 1), 30, "the first message")
        await submit(js, "h-twice-2", "bob@remote.test")
        await wait_until(lambda: _true(len(mx.messages) == 2), 30, "the second message")
        await wait_until(lambda: _zero(queued(js)), 30, "both jobs acked")
    assert mx.connections == 2, "the session out of step was closed, not kept"
    assert [b"<h-twice-1@" in m for m in mx.messages] == [True, False]
    assert not await dsns(js)


async def test_a_kept_session_on_which_the_server_speaks_unasked_is_dropped(nc, js, owner, nats_server, dns_server,
                                                                           tmp_path):
    """The reply too many comes after the session went back to the pool: it is not left
    waiting there for the next transaction's MAIL to read (a 550 that bounced the next
    message, which the server never refused)."""
    async with HostileMX("late-reply", ("8BITMIME",)) as mx:   # without PIPELINING: MAIL refused ends it
        settings = settings_for(nats_server, dns_server, mx, tmp_path, outbound_connection_idle=30.0,
                                outbound_destination_concurrency=1)
        await start_queue(nc, owner, settings)
        await submit(js, "h-late-1", "bob@remote.test")
        await wait_until(lambda: _true(mx.late_sent), 30, "the late reply")
        mx.quirk = ""
        await submit(js, "h-late-2", "bob@remote.test")
        await wait_until(lambda: _true(len(mx.messages) == 2), 30, "the second message")
        await wait_until(lambda: _zero(queued(js)), 30, "both jobs acked")
    assert mx.connections == 2 and [b"<h-late-1@" in m for m in mx.messages] == [True, False]
    assert not await dsns(js)


async def test_a_refusal_in_invalid_utf8_gives_one_well_formed_dsn(nc, js, owner, nats_server, dns_server, tmp_path):
    """Invalid UTF-8 in a remote reply made building the DSN raise (surrogates), so the job
    failed until DEAD_LETTERS and the sender never heard; the reply's lines must not become
    fields or boundaries of the report either."""
    async with HostileMX("bad-utf8-5xx") as mx:
        settings = settings_for(nats_server, dns_server, mx, tmp_path)
        await start_queue(nc, owner, settings)
        await submit(js, "h-utf8", "bob@remote.test")
        [dsn] = await wait_until(lambda: dsns(js), 30, "the DSN")
        await wait_until(lambda: _zero(queued(js)), 30, "the job acked")
    report = email.message_from_bytes(dsn.body)
    assert report.get_content_type() == "multipart/report" and len(report.get_payload()) == 3
    status = report.get_payload()[1]
    [per_message, per_recipient] = status.get_payload()
    assert per_recipient.get_all("Final-Recipient") == ["rfc822; bob@remote.test"]
    assert per_recipient["Status"] == "5.1.1" and per_recipient["Action"] == "failed"
    diagnostic = per_recipient["Diagnostic-Code"]
    assert diagnostic.startswith("smtp; 550 5.1.1") and diagnostic.isascii() and "\n" not in diagnostic
    human = report.get_payload()[0].get_payload(decode=True)
    assert b"\r\n550" not in human and b"\nFinal-Recipient" not in human
    assert not mx.messages


@pytest.mark.parametrize("quirk", ["refuse-starttls", "broken-tls"])
async def test_opportunistic_tls_that_fails_falls_back_to_plaintext(nc, js, owner, nats_server, dns_server, tmp_path,
                                                                    quirk):
    """RFC 3207 §4.1 / RFC 7435: with no policy requiring TLS, STARTTLS refused (454) or a
    handshake that fails is no reason to keep the mail: it goes in the clear (as Postfix's
    "may" level does), not deferred for days and then bounced."""
    async with HostileMX(quirk, ("PIPELINING", "8BITMIME", "STARTTLS")) as mx:
        settings = settings_for(nats_server, dns_server, mx, tmp_path)
        await start_queue(nc, owner, settings)
        await submit(js, f"h-{quirk}", "bob@remote.test")
        await wait_until(lambda: _true(mx.messages), 30, "the message delivered in plaintext")
        await wait_until(lambda: _zero(queued(js)), 30, "the job acked")
    assert len(mx.messages) == 1 and mx.tls_tried >= 1 and not await dsns(js)


async def _submit_body(js, message_id: str, body: bytes, **fields) -> None:
    mail = OutboundMail.new(message_id=message_id, destination="remote.test", mail_from="alice@example.com",
                            recipients=[OutboundRecipient(address="bob@remote.test")], size=len(body),
                            edge_node="edge-1", body=body, account="alice@example.com", **fields)
    await js.publish(names.outbound_subject("remote.test"), mail.encode(), headers={"Nats-Msg-Id": mail.msg_id()})


async def test_8bit_mail_to_a_server_without_8bitmime_is_bounced_not_sent_raw(nc, js, owner, nats_server, dns_server,
                                                                            tmp_path):
    """RFC 6152 §3: convert or bounce; never 8-bit octets to a 7-bit server.  A message
    declared 8BITMIME that holds only 7-bit octets still goes."""
    async with HostileMX("", ("PIPELINING",)) as mx:
        settings = settings_for(nats_server, dns_server, mx, tmp_path)
        await start_queue(nc, owner, settings)
        eight = ORIGINAL.replace(b"Hello there.", "Grüße aus Köln.".encode()) % b"h-8bit"
        await _submit_body(js, "h-8bit", eight, body_type="8BITMIME")
        await _submit_body(js, "h-7bit", ORIGINAL % b"h-7bit", body_type="8BITMIME")
        [dsn] = await wait_until(lambda: dsns(js), 30, "the DSN for the 8-bit message")
        await wait_until(lambda: _zero(queued(js)), 30, "both jobs acked")
    status = email.message_from_bytes(dsn.body).get_payload()[1].get_payload()[1]
    assert status["Status"] == "5.6.3" and status["Action"] == "failed"
    assert len(mx.messages) == 1 and b"<h-7bit@" in mx.messages[0]
    assert all("BODY=8BITMIME" not in c for c in mx.mail_commands)


async def test_utf8_mail_to_a_server_without_smtputf8_is_bounced(nc, js, owner, nats_server, dns_server, tmp_path):
    """RFC 6531 §3.2: a message that needs SMTPUTF8 (a UTF-8 header here) is not sent to a
    server that did not offer it; one that merely declared it but is all ASCII goes, without
    the parameter."""
    async with HostileMX("", ("PIPELINING", "8BITMIME")) as mx:
        settings = settings_for(nats_server, dns_server, mx, tmp_path)
        await start_queue(nc, owner, settings)
        utf8 = ORIGINAL.replace(b"Subject: outbound test", "Subject: Grüße".encode()) % b"h-utf8hdr"
        await _submit_body(js, "h-utf8hdr", utf8, smtputf8=True, body_type="8BITMIME")
        await _submit_body(js, "h-ascii", ORIGINAL % b"h-ascii", smtputf8=True)
        [dsn] = await wait_until(lambda: dsns(js), 30, "the DSN for the UTF-8 message")
        await wait_until(lambda: _zero(queued(js)), 30, "both jobs acked")
    status = email.message_from_bytes(dsn.body).get_payload()[1].get_payload()[1]
    assert status["Status"] == "5.6.7" and status["Action"] == "failed"
    assert len(mx.messages) == 1 and b"<h-ascii@" in mx.messages[0]
    assert all("SMTPUTF8" not in c for c in mx.mail_commands)


async def test_binary_mail_is_bounced_not_mangled_into_lines(nc, js, owner, nats_server, dns_server, tmp_path):
    """RFC 3030 §3: BODY=BINARYMIME mail (taken with BDAT) whose octets DATA cannot carry is
    not sent by DATA, where its NULs and bare line ends would be rewritten; one that is
    text after all goes, as 8BITMIME."""
    async with HostileMX() as mx:
        settings = settings_for(nats_server, dns_server, mx, tmp_path)
        await start_queue(nc, owner, settings)
        binary = (ORIGINAL % b"h-binary").replace(b"Hello there.", b"\x00\x01\n\r\xff")
        await _submit_body(js, "h-binary", binary, body_type="BINARYMIME")
        await _submit_body(js, "h-bintext", ORIGINAL % b"h-bintext", body_type="BINARYMIME")
        [dsn] = await wait_until(lambda: dsns(js), 30, "the DSN for the binary message")
        await wait_until(lambda: _zero(queued(js)), 30, "both jobs acked")
    status = email.message_from_bytes(dsn.body).get_payload()[1].get_payload()[1]
    assert status["Status"] == "5.6.3"
    assert len(mx.messages) == 1 and b"<h-bintext@" in mx.messages[0]
    assert mx.mail_commands == ["MAIL FROM:<alice@example.com> BODY=8BITMIME"]


async def _zero(awaitable) -> bool:
    return (await awaitable) == 0


# --- where the MX records point -------------------------------------------------------------

async def _status_of_the_dsn(js) -> str:
    [dsn] = await wait_until(lambda: dsns(js), 30, "the DSN")
    return email.message_from_bytes(dsn.body).get_payload()[1].get_payload()[1]["Status"]


@pytest.mark.parametrize("address", ["0.0.0.0", "169.254.169.254"])
async def test_an_mx_in_outbound_deny_networks_is_never_connected_to(nc, js, owner, nats_server, dns_server, tmp_path,
                                                                      address):
    """0.0.0.0 is this host (Linux connects it to loopback), 169.254.169.254 the cloud's
    metadata service: a domain's owner must not aim the edges there.  Nothing is tried, and
    the sender hears at once (5.4.4), not after five days of retries."""
    async with HostileMX() as mx:
        settings = settings_for(nats_server, dns_server, mx, tmp_path)
        dns_server.remove("mx.remote.test", "A")
        dns_server.add(f"mx.remote.test. 60 IN A {address}")
        await start_queue(nc, owner, settings)
        await submit(js, f"h-deny-{address}", "bob@remote.test")
        assert await _status_of_the_dsn(js) == "5.4.4"
        await wait_until(lambda: _zero(queued(js)), 30, "the job acked")
    assert mx.connections == 0


async def test_an_mx_that_greets_with_our_own_name_is_a_loop_not_a_delivery(nc, js, owner, nats_server, dns_server,
                                                                            tmp_path):
    """An MX record aimed at our own edges (127.0.0.1 in production is the edge's own MX):
    the greeting names us, so the mail would come straight back (Postfix: "loops back to
    myself", 5.4.6)."""
    async with HostileMX(name="edge1.example.com") as mx:
        settings = settings_for(nats_server, dns_server, mx, tmp_path)
        await start_queue(nc, owner, settings)
        await submit(js, "h-loop", "bob@remote.test")
        assert await _status_of_the_dsn(js) == "5.4.6"
        await wait_until(lambda: _zero(queued(js)), 30, "the job acked")
    assert not mx.messages and not mx.mail_commands


async def test_one_attempt_tries_a_bounded_number_of_mx_addresses(nc, js, owner, nats_server, dns_server, tmp_path,
                                                                    caplog):
    """Forty MX hosts, none of which ever greets: one attempt tries five addresses (as
    Postfix and Exim do) and ends, instead of holding the job and the destination's slot for
    forty connection timeouts (or thousands: DNS carries that many MX records)."""
    caplog.set_level(logging.INFO, logger="colony.edge.outbound")
    async with HostileMX("silent") as mx:
        settings = settings_for(nats_server, dns_server, mx, tmp_path, outbound_connect_timeout=0.3,
                                outbound_retry_initial=600.0, outbound_retry_max=600.0)
        dns_server.remove("remote.test", "MX")
        dns_server.add(*[f"remote.test. 60 IN MX {i} mx{i}.remote.test." for i in range(40)],
                       *[f"mx{i}.remote.test. 60 IN A 127.0.0.1" for i in range(40)])
        await start_queue(nc, owner, settings)
        started = time.monotonic()
        await submit(js, "h-many", "bob@remote.test")
        await wait_until(lambda: _true("outbound h-many to remote.test (attempt 1): 0 delivered, 0 failed, 1 deferred"
                                       in caplog.text), 30, "the first attempt's end")
        assert time.monotonic() - started < 10
    assert mx.connections == 5


async def test_a_null_mx_fails_at_once_with_5_1_10(nc, js, owner, nats_server, dns_server, tmp_path):
    async with HostileMX() as mx:
        settings = settings_for(nats_server, dns_server, mx, tmp_path)
        dns_server.remove("remote.test", "MX")
        dns_server.add("remote.test. 60 IN MX 0 .")
        await start_queue(nc, owner, settings)
        await submit(js, "h-nullmx", "bob@remote.test")
        assert await _status_of_the_dsn(js) == "5.1.10"
    assert mx.connections == 0


# --- the MTA-STS policy server ----------------------------------------------------------------

class HostilePolicyServer:
    """https://mta-sts.remote.test/ on loopback (trustme certificate, valid), in the test's
    event loop; after reading the request it does what ``quirk`` says."""

    def __init__(self, ca: trustme.CA, quirk: str) -> None:
        self.quirk, self.fetches = quirk, 0
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("mta-sts.remote.test").configure_cert(self.context)

    async def __aenter__(self) -> HostilePolicyServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()

    async def _serve(self, reader, writer) -> None:
        self.fetches += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            if self.quirk == "reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            if self.quirk == "drip":
                writer.write(head + b"Content-Length: 100\r\n\r\n")
                for octet in b"version: STSv1\r\nmode: enforce\r\n" * 3:
                    writer.write(bytes([octet]))
                    await writer.drain()
                    await asyncio.sleep(0.1)
            elif self.quirk in ("endless", "continue"):
                # Floods for 10 s (the client gives up after 1); pausing between writes, as
                # a write to a TLS stream the client dropped neither raises nor blocks here.
                if self.quirk == "endless":
                    writer.write(head + b"Transfer-Encoding: chunked\r\n\r\n")
                chunk = (b"4000\r\n" + b"mx: a.test\r\n".ljust(0x4000, b"#") + b"\r\n" if self.quirk == "endless"
                         else b"HTTP/1.1 100 Continue\r\n\r\n" * 500)
                until = time.monotonic() + 10
                while time.monotonic() < until and not writer.is_closing():
                    writer.write(chunk)
                    await writer.drain()
                    await asyncio.sleep(0.001)
            elif self.quirk == "garbage":
                body = b"\x00\xff" * 1000
                writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@pytest.mark.parametrize("quirk", ["reset", "drip", "endless", "continue", "garbage"])
async def test_a_hostile_policy_server_means_no_policy_soon_and_once(dns_server, tmp_path, nats_server, quirk):
    """RFC 8461 §3.3: a fetch that fails is no policy (delivery as without MTA-STS), within
    ``mta_sts_fetch_timeout`` whatever the server does, and it is not repeated for every
    message."""
    ca = trustme.CA()
    async with HostilePolicyServer(ca, quirk) as server:
        ca_file = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        dns_server.add('_mta-sts.remote.test. 60 IN TXT "v=STSv1; id=p1;"', "mta-sts.remote.test. 60 IN A 127.0.0.1")
        settings = settings_for(nats_server, dns_server, server, tmp_path, outbound_tls_ca_file=ca_file,
                                mta_sts_port=server.port, mta_sts_fetch_timeout=1.0)
        sts = MtaSts(settings, make_resolver(settings))
        started = time.monotonic()
        assert await sts.policy("remote.test") is None
        assert time.monotonic() - started < 3
        assert await sts.policy("remote.test") is None and server.fetches == 1
