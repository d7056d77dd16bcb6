"""The outbound SMTP client's asyncio shell over real loopback sockets: against aiosmtpd
(advertising PIPELINING or not) and against scripted servers for what a real MX seldom does
on cue -- a client that must not wait between pipelined commands, 421 mid-session, octets
injected after the reply to STARTTLS, a server that never answers, EHLO refused."""

from __future__ import annotations

import asyncio
import re
import ssl

import pytest

from colony_edge.smtp_client import SmtpClient, SmtpError
from test_outbound_connections import CountingSink, _CountingController
from test_outbound_delivery import free_port

MESSAGE = b"From: a@b.test\r\nMessage-ID: <m1@b.test>\r\n\r\n.leading dot\r\nbody\r\n"


@pytest.fixture(params=["plain", "pipelining"])
def sink(request):
    handler = CountingSink(pipelining=request.param == "pipelining")
    controller = _CountingController(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    handler.port = controller.port
    yield handler
    controller.stop()


async def test_a_transaction_with_a_refused_recipient_against_aiosmtpd(sink):
    client = await SmtpClient.connect("127.0.0.1", sink.port, local_hostname="edge.test", timeout=10)
    assert client.supports("PIPELINING") == sink.pipelining
    tx = await client.send("a@b.test", ["bob@remote.test", "nobody@remote.test", "carol@remote.test"], MESSAGE)
    assert tx.delivered == ["bob@remote.test", "carol@remote.test"]
    assert tx.rcpts[1].code == 550 and tx.rcpts[1].text == "5.1.1 No such user"
    assert tx.final.code == 250 and not tx.left_open
    tx = await client.send("a@b.test", ["nobody@remote.test"], MESSAGE)   # all refused: open, RSET ends it
    assert tx.delivered == [] and tx.left_open and not tx.message_sent
    await client.rset()
    tx = await client.send("a@b.test", ["dave@remote.test"], MESSAGE)
    assert tx.delivered == ["dave@remote.test"]
    await client.quit()
    assert sink.message_ids == ["m1@b.test", "m1@b.test"]
    assert sink.commands == ["MAIL", "MAIL", "RSET", "MAIL"]


class Scripted:
    """A loopback server that runs ``script(reader, writer)`` for each connection."""

    def __init__(self, script) -> None:
        self.script = script
        self.server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._run, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _run(self, reader, writer) -> None:
        try:
            await self.script(reader, writer)
        finally:
            writer.close()

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()


async def greet(reader, writer, extensions=(b"PIPELINING",)) -> None:
    writer.write(b"220 mx.test ESMTP\r\n")
    assert (await reader.readline()).startswith(b"EHLO ")
    writer.write(b"250-mx.test\r\n" + b"".join(b"250-" + e + b"\r\n" for e in extensions) + b"250 8BITMIME\r\n")


async def test_pipelined_commands_do_not_wait_for_replies():
    """The server answers nothing until it has read MAIL, both RCPTs and DATA: a client that
    waited for the reply to MAIL would hang here."""
    seen = []

    async def script(reader, writer):
        await greet(reader, writer)
        group = await asyncio.wait_for(reader.readuntil(b"DATA\r\n"), 5)
        seen.append(group)
        writer.write(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 unknown\r\n354 go\r\n")
        body = await reader.readuntil(b"\r\n.\r\n")
        seen.append(body)
        writer.write(b"250-2.0.0 queued as\r\n250 2.0.0 X1\r\n")
        await reader.readline()

    async with Scripted(script) as port:
        client = await SmtpClient.connect("127.0.0.1", port, local_hostname="edge.test", timeout=10)
        tx = await client.send("a@b.test", ["c@d.test", "x@d.test"], MESSAGE)
        client.close()
    assert seen[0] == b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nRCPT TO:<x@d.test>\r\nDATA\r\n"
    assert seen[1].endswith(b"\r\n..leading dot\r\nbody\r\n.\r\n")
    assert tx.delivered == ["c@d.test"] and tx.final.text == "2.0.0 queued as\n2.0.0 X1"


async def test_421_mid_session_ends_the_transaction_and_the_session():
    async def script(reader, writer):
        await greet(reader, writer)
        await reader.readuntil(b"DATA\r\n")
        writer.write(b"250 2.1.0 ok\r\n421 4.3.2 shutting down\r\n")
        await writer.drain()

    async with Scripted(script) as port:
        client = await SmtpClient.connect("127.0.0.1", port, local_hostname="edge.test", timeout=10)
        tx = await client.send("a@b.test", ["c@d.test", "e@d.test"], MESSAGE)
    assert tx.closing.code == 421 and tx.rcpts == [(421, "4.3.2 shutting down"), None]
    assert not tx.message_sent and tx.delivered == [] and not client.is_connected


async def test_a_session_closed_mid_transaction_says_how_far_it_got():
    async def script(reader, writer):
        await greet(reader, writer)
        await reader.readuntil(b"DATA\r\n")
        writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")
        await reader.readuntil(b"\r\n.\r\n")   # the message, then the connection drops

    async with Scripted(script) as port:
        client = await SmtpClient.connect("127.0.0.1", port, local_hostname="edge.test", timeout=10)
        with pytest.raises(SmtpError) as caught:
            await client.send("a@b.test", ["c@d.test"], MESSAGE)
    assert caught.value.transaction.message_sent, "the server may have the message: RFC 1047's window"


async def test_octets_after_the_reply_to_starttls_are_refused():
    async def script(reader, writer):
        await greet(reader, writer, (b"STARTTLS",))
        await reader.readline()
        writer.write(b"220 2.0.0 go ahead\r\n250-mx.test\r\n250 PIPELINING\r\n")   # a plaintext injection
        await writer.drain()
        await reader.read(100)

    async with Scripted(script) as port:
        client = await SmtpClient.connect("127.0.0.1", port, local_hostname="edge.test", timeout=10)
        with pytest.raises(SmtpError, match="injection"):
            await client.starttls(ssl.create_default_context())
        client.close()


async def test_a_server_that_never_answers_times_out():
    async def script(reader, writer):
        await greet(reader, writer)
        await reader.read(1000)
        await asyncio.sleep(5)

    async with Scripted(script) as port:
        client = await SmtpClient.connect("127.0.0.1", port, local_hostname="edge.test", timeout=0.5)
        with pytest.raises(SmtpError, match="no reply within"):
            await asyncio.wait_for(client.send("a@b.test", ["c@d.test"], MESSAGE), 5)
        client.close()


async def test_a_server_that_stops_reading_the_message_times_out():
    """It takes the data phase, then reads nothing more: the message's write must end within
    the timeout too (a write that waited for the socket to drain, with no deadline, held the
    destination's slot and the job for as long as the MX kept the connection open)."""
    async def script(reader, writer):
        await greet(reader, writer)
        await reader.readuntil(b"DATA\r\n")
        writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")
        await asyncio.sleep(10)

    big = b"From: a@b.test\r\n\r\n" + (b"y" * 998 + b"\r\n") * 32_000   # 32 MB: more than the sockets buffer
    async with Scripted(script) as port:
        client = await SmtpClient.connect("127.0.0.1", port, local_hostname="edge.test", timeout=0.5)
        with pytest.raises(SmtpError, match="within") as caught:
            await asyncio.wait_for(client.send("a@b.test", ["c@d.test"], big), 8)
        assert caught.value.transaction.message_sent   # the server may hold part of it: not stale
        client.close()


async def test_ehlo_refused_falls_back_to_helo_without_pipelining():
    commands = []

    async def script(reader, writer):
        writer.write(b"220 old.test SMTP\r\n")
        commands.append(await reader.readline())
        writer.write(b"502 5.5.1 EHLO not implemented\r\n")
        commands.append(await reader.readline())
        writer.write(b"250 old.test\r\n")
        commands.append(await reader.readline())   # MAIL alone: no pipelining after HELO
        writer.write(b"250 ok\r\n")
        commands.append(await reader.readline())
        writer.write(b"250 ok\r\n")
        commands.append(await reader.readline())
        writer.write(b"354 go\r\n")
        await reader.readuntil(b"\r\n.\r\n")
        writer.write(b"250 ok\r\n")
        await reader.readline()

    async with Scripted(script) as port:
        client = await SmtpClient.connect("127.0.0.1", port, local_hostname="edge.test", timeout=10)
        assert client.extensions == {}
        tx = await client.send("a@b.test", ["c@d.test"], MESSAGE)
        client.close()
    assert [re.sub(rb" .*", b"", c.strip()) for c in commands] == [b"EHLO", b"HELO", b"MAIL", b"RCPT", b"DATA"]
    assert tx.delivered == ["c@d.test"]


@pytest.mark.parametrize("host, said", [("192.0.2.7", b"EHLO [192.0.2.7]\r\n"),
                                        ("2001:db8::7", b"EHLO [IPv6:2001:db8::7]\r\n"),
                                        ("edge.test", b"EHLO edge.test\r\n")])
async def test_an_edge_named_by_an_ip_address_says_ehlo_with_an_address_literal(host, said):
    """An edge whose advertised host is an address (COLONY_HOST=10.0.0.5, colony up's
    127.0.0.1) said ``EHLO 10.0.0.5``, which filters read as a client with no name; RFC 5321
    §4.1.3 writes an address as a literal."""
    seen = []

    async def script(reader, writer):
        writer.write(b"220 mx.test ESMTP\r\n")
        seen.append(await reader.readline())
        writer.write(b"250 mx.test\r\n")
        await reader.readline()

    async with Scripted(script) as port:
        client = await SmtpClient.connect("127.0.0.1", port, local_hostname=host, timeout=10)
        client.close()
    assert seen == [said]
