"""The asyncio shell on real loopback sockets, with a stand-in acceptor (no bus): policy
failures, early talkers, BDAT, timeouts and acceptance failures all end in SMTP replies."""

from __future__ import annotations

import asyncio
import socket

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from prometheus_client import CollectorRegistry

from cluster_harness import wait_until

from colony.cluster.sessions import SessionTracker
from colony.contracts.recipients import Mailbox
from colony_edge.acceptance import AcceptanceFailed, SmtpMetrics
from colony_edge.smtp_policy import ACCEPT, AcceptedRecipient, BasePolicy
from colony_edge.smtp_server import MEMORY_SPOOL, SmtpServer, SmtpServerConfig


class Policy(BasePolicy):
    async def rcpt_to(self, session, rcpt):
        if rcpt.address.startswith("boom"):
            raise RuntimeError("policy bug")
        session.recipients.append(AcceptedRecipient(rcpt, (Mailbox(rcpt.address, "x.test", "local"),)))
        return ACCEPT


class Acceptor:
    def __init__(self, fail: bool = False) -> None:
        self.fail, self.messages, self.traces, self.spooled = fail, [], [], []
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = provider.get_tracer("test")

    async def accept(self, session, message):
        self.traces.append(trace.get_current_span().get_span_context().trace_id)
        if self.fail:
            raise AcceptanceFailed("bus down")
        self.messages.append((session.mail_from.address, [r.rcpt.address for r in session.recipients],
                              message.read_bytes()))
        # Where the octets were: in memory, or a spool file (and what the file held then).
        self.spooled.append(None if message.spool is None else message.spool.read_bytes())
        return f"id{len(self.messages)}"


async def serve(tmp_path, acceptor=None, tracker=None, **config):
    registry = CollectorRegistry()
    metrics = SmtpMetrics(registry)
    cfg = dict(hostname="mx.test", spool_dir=tmp_path / "spool", max_message_size=10_000_000, max_recipients=100,
               max_errors=10, timeout=60.0)
    cfg.update(config)
    server = SmtpServer(SmtpServerConfig(**cfg), Policy(), acceptor or Acceptor(), metrics, tracker or SessionTracker())
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    return listener, listener.sockets[0].getsockname()[1], registry


class Client:
    @classmethod
    async def open(cls, port: int, greet: bool = True) -> "Client":
        self = cls()
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        if greet:
            assert (await self.reply()).startswith(b"220 ")
        return self

    async def reply(self) -> bytes:
        out = b""
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 30)
            out += line
            if not line or line[3:4] == b" ":
                return out

    async def cmd(self, data: bytes) -> bytes:
        self.writer.write(data)
        return await self.reply()

    def close(self) -> None:
        self.writer.close()


async def test_policy_exception_is_451_and_session_goes_on(tmp_path):
    listener, port, registry = await serve(tmp_path)
    async with listener:
        c = await Client.open(port)
        await c.cmd(b"EHLO c.test\r\n")
        await c.cmd(b"MAIL FROM:<a@b.test>\r\n")
        assert (await c.cmd(b"RCPT TO:<boom@x.test>\r\n")).startswith(b"451 4.3.0")
        assert (await c.cmd(b"RCPT TO:<ok@x.test>\r\n")).startswith(b"250 2.1.5")
        c.close()
    assert registry.get_sample_value("colony_smtp_rejected_total", {"stage": "rcpt", "reason": "temporary_failure"}) == 1


async def test_early_talker_through_the_shell(tmp_path):
    listener, port, registry = await serve(tmp_path, greeting_delay=1.0)
    async with listener:
        c = await Client.open(port, greet=False)
        c.writer.write(b"EHLO fast.test\r\n")
        assert (await c.reply()).startswith(b"554 5.5.0")
        assert await asyncio.wait_for(c.reader.read(), 30) == b""
    assert registry.get_sample_value("colony_smtp_rejected_total", {"stage": "protocol", "reason": "early_talker"}) == 1


async def test_bdat_binarymime_through_the_shell(tmp_path):
    acceptor = Acceptor()
    listener, port, _ = await serve(tmp_path, acceptor)
    async with listener:
        c = await Client.open(port)
        assert b"CHUNKING" in await c.cmd(b"EHLO c.test\r\n")
        await c.cmd(b"MAIL FROM:<a@b.test> BODY=BINARYMIME\r\n")
        await c.cmd(b"RCPT TO:<ok@x.test>\r\n")
        c.writer.write(b"BDAT 4\r\n\x00\r\n.BDAT 3 LAST\r\n\n\xff.")
        assert (await c.reply()).startswith(b"250 2.0.0 4 octets")
        assert (await c.reply()).startswith(b"250 2.0.0 OK queued as id1")
        # A small message is never written to a file.
        assert [f.stat().st_size for f in (tmp_path / "spool").iterdir()] in ([], [0])
        c.close()

        async def spool_gone() -> bool:
            return list((tmp_path / "spool").iterdir()) == []
        await wait_until(spool_gone, 30, "the spool file removed at the session's end")
    assert acceptor.messages == [("a@b.test", ["ok@x.test"], b"\x00\r\n.\n\xff.")]


async def test_acceptance_failure_is_451_and_nothing_is_kept(tmp_path):
    listener, port, _ = await serve(tmp_path, Acceptor(fail=True))
    async with listener:
        c = await Client.open(port)
        await c.cmd(b"EHLO c.test\r\n")
        await c.cmd(b"MAIL FROM:<a@b.test>\r\n")
        await c.cmd(b"RCPT TO:<ok@x.test>\r\n")
        assert (await c.cmd(b"DATA\r\n")).startswith(b"354")
        assert (await c.cmd(b"hello\r\n.\r\n")).startswith(b"451 4.3.0")
        assert [f.stat().st_size for f in (tmp_path / "spool").iterdir()] in ([], [0])
        c.close()

        async def spool_gone() -> bool:
            return list((tmp_path / "spool").iterdir()) == []
        await wait_until(spool_gone, 30, "the spool file removed at the session's end")


class SlowAcceptor(Acceptor):
    """Makes a message durable only once ``release`` is set (a slow bus)."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting, self.release = asyncio.Event(), asyncio.Event()

    async def accept(self, session, message):
        self.waiting.set()
        await self.release.wait()
        return await super().accept(session, message)


async def test_a_drain_while_a_message_is_made_durable_answers_250_before_421(tmp_path):
    # The hand-over of a drain used to answer 421 at once: the client, told to try again,
    # sent again the message that was kept meanwhile (a duplicate).
    acceptor, tracker = SlowAcceptor(), SessionTracker()
    listener, port, _ = await serve(tmp_path, acceptor, tracker=tracker)
    async with listener:
        c = await Client.open(port)
        await c.cmd(b"EHLO c.test\r\n")
        await c.cmd(b"MAIL FROM:<a@b.test>\r\n")
        await c.cmd(b"RCPT TO:<ok@x.test>\r\n")
        assert (await c.cmd(b"DATA\r\n")).startswith(b"354")
        c.writer.write(b"hello\r\n.\r\n")
        await asyncio.wait_for(acceptor.waiting.wait(), 30)
        hand_over = asyncio.create_task(tracker.hand_over(timeout=30))
        core = tracker.sessions()[0].goodbye.__self__.conn

        async def goodbye_said() -> bool:   # before the message is kept: the race under test
            return core.closed or core._shutdown_requested
        await wait_until(goodbye_said, 30, "the session's goodbye to have run")
        acceptor.release.set()
        assert (await c.reply()).startswith(b"250 2.0.0 OK queued as id1")
        assert (await c.reply()).startswith(b"421 4.3.2")
        assert await asyncio.wait_for(c.reader.read(), 30) == b""
        assert await asyncio.wait_for(hand_over, 30) == 1
    assert len(acceptor.messages) == 1


async def test_a_drain_of_an_idle_session_is_421_at_once(tmp_path):
    tracker = SessionTracker()
    listener, port, _ = await serve(tmp_path, tracker=tracker)
    async with listener:
        c = await Client.open(port)
        await c.cmd(b"EHLO c.test\r\n")
        assert await asyncio.wait_for(tracker.hand_over(timeout=30), 30) == 1
        assert (await c.reply()).startswith(b"421 4.3.2")
        assert await asyncio.wait_for(c.reader.read(), 30) == b""


async def test_idle_client_gets_421_timeout(tmp_path):
    listener, port, _ = await serve(tmp_path, timeout=0.5)
    async with listener:
        c = await Client.open(port)
        assert (await c.reply()).startswith(b"421 4.4.2")


async def test_spool_left_by_a_dead_process_is_removed(tmp_path):
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / "old.1.spool").write_bytes(b"x")
    listener, _, _ = await serve(tmp_path)
    listener.close()
    assert list((tmp_path / "spool").iterdir()) == []


async def test_one_span_per_message_from_data_to_acceptance(tmp_path):
    acceptor = Acceptor()
    listener, port, _ = await serve(tmp_path, acceptor)
    async with listener:
        c = await Client.open(port)
        await c.cmd(b"EHLO c.test\r\n")
        for n in range(2):
            await c.cmd(b"MAIL FROM:<a@b.test>\r\n")
            await c.cmd(b"RCPT TO:<ok@x.test>\r\n")
            await c.cmd(b"DATA\r\n")
            assert (await c.cmd(b"m\r\n.\r\n")).startswith(b"250")
        c.close()
    spans = [s for s in acceptor.exporter.get_finished_spans() if s.name == "smtp.message"]
    assert len(spans) == 2 and len(set(acceptor.traces)) == 2
    assert sorted(s.context.trace_id for s in spans) == sorted(acceptor.traces)


async def test_small_messages_stay_in_memory_large_ones_spool_to_a_file_removed_once_answered(tmp_path):
    """A message up to MEMORY_SPOOL octets never touches the disk; a larger one goes to a
    spool file of its own, gone once the message is answered, and a smaller one after it
    carries none of its octets."""
    acceptor = Acceptor()
    listener, port, _ = await serve(tmp_path, acceptor)
    line = b"0123456789" * 7 + b"\r\n"
    large = line * (MEMORY_SPOOL // len(line) * 3)
    bodies = [b"small one\r\n", large, b"after the large one\r\n", line * (MEMORY_SPOOL // len(line) - 2)]
    async with listener:
        c = await Client.open(port)
        await c.cmd(b"EHLO c.test\r\n")
        for body in bodies:
            await c.cmd(b"MAIL FROM:<a@b.test>\r\n")
            await c.cmd(b"RCPT TO:<ok@x.test>\r\n")
            assert (await c.cmd(b"DATA\r\n")).startswith(b"354")
            assert (await c.cmd(body + b".\r\n")).startswith(b"250 2.0.0 OK queued")
            assert list((tmp_path / "spool").iterdir()) == []
        c.close()
    assert [m[2] for m in acceptor.messages] == bodies
    assert acceptor.spooled == [None, large, None, None]


async def test_a_spooled_message_leaves_no_file_however_it_ends(tmp_path):
    """Past MEMORY_SPOOL a message has a file; RSET between BDAT chunks, a message over the
    size limit, a refused acceptance and a client gone mid-DATA each remove it, and a BDAT
    message crossing the boundary in its LAST chunk arrives whole."""
    acceptor = Acceptor()
    listener, port, _ = await serve(tmp_path, acceptor, max_message_size=4 * MEMORY_SPOOL)
    spool = tmp_path / "spool"
    half = b"y" * (MEMORY_SPOOL - 10)
    big = (b"x" * 998 + b"\r\n") * (MEMORY_SPOOL // 1000 + 5)

    async def spool_gone() -> bool:
        return list(spool.iterdir()) == []

    async def spooled() -> bool:
        return len(list(spool.iterdir())) == 1

    async with listener:
        c = await Client.open(port)
        await c.cmd(b"EHLO c.test\r\n")
        await c.cmd(b"MAIL FROM:<a@b.test>\r\n")
        await c.cmd(b"RCPT TO:<ok@x.test>\r\n")
        assert (await c.cmd(b"BDAT %d\r\n%s" % (len(half), half))).startswith(b"250")
        assert list(spool.iterdir()) == []
        assert (await c.cmd(b"BDAT 100\r\n" + b"z" * 100)).startswith(b"250")
        assert len(list(spool.iterdir())) == 1
        assert (await c.cmd(b"RSET\r\n")).startswith(b"250")
        assert list(spool.iterdir()) == []

        await c.cmd(b"MAIL FROM:<a@b.test>\r\n")
        await c.cmd(b"RCPT TO:<ok@x.test>\r\n")
        assert (await c.cmd(b"DATA\r\n")).startswith(b"354")
        assert (await c.cmd(big * 5 + b".\r\n")).startswith(b"552")
        assert list(spool.iterdir()) == []

        await c.cmd(b"MAIL FROM:<a@b.test>\r\n")
        await c.cmd(b"RCPT TO:<ok@x.test>\r\n")
        assert (await c.cmd(b"BDAT %d\r\n%s" % (len(half), half))).startswith(b"250")
        assert (await c.cmd(b"BDAT 100 LAST\r\n" + b"z" * 100)).startswith(b"250 2.0.0 OK queued")
        assert list(spool.iterdir()) == []

        acceptor.fail = True
        await c.cmd(b"MAIL FROM:<a@b.test>\r\n")
        await c.cmd(b"RCPT TO:<ok@x.test>\r\n")
        assert (await c.cmd(b"DATA\r\n")).startswith(b"354")
        assert (await c.cmd(big + b".\r\n")).startswith(b"451")
        assert list(spool.iterdir()) == []

        await c.cmd(b"MAIL FROM:<a@b.test>\r\n")
        await c.cmd(b"RCPT TO:<ok@x.test>\r\n")
        assert (await c.cmd(b"DATA\r\n")).startswith(b"354")
        c.writer.write(big)
        await wait_until(spooled, 30, "the message spooled")
        c.close()
        await wait_until(spool_gone, 30, "the spool file removed when the client went mid-DATA")
    assert acceptor.messages == [("a@b.test", ["ok@x.test"], half + b"z" * 100)]
    assert acceptor.spooled == [half + b"z" * 100]


async def test_a_client_that_never_reads_its_replies_is_cut_off_after_the_timeout(tmp_path):
    """Pipelined commands whose replies are never read fill the socket buffers; the session
    waited in drain() for ever (the core's timer runs only while reading) and held its slot."""
    tracker = SessionTracker()
    server = SmtpServer(SmtpServerConfig(hostname="mx.test", spool_dir=tmp_path / "spool", max_message_size=10_000,
                                         max_recipients=10, max_errors=10, timeout=1.0),
                        Policy(), Acceptor(), SmtpMetrics(CollectorRegistry()), tracker)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    async with listener:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # a client that reads nothing
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, listener.sockets[0].getsockname())
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(b"EHLO c.test\r\n")
        while not (await asyncio.wait_for(reader.readline(), 10)).startswith(b"250 "):
            pass
        writer.write(b"NOOP\r\n" * 1_000_000)   # ~14 MB of replies, never read

        async def session_over() -> bool:
            return tracker.active_work() == 0
        await wait_until(session_over, 20, "the session that read nothing ended")
        writer.transport.abort()
