"""The outbound queue on a real nats-server, a real loopback DNS server (MX, A, DKIM TXT)
and a real SMTP server on loopback (aiosmtpd) as the remote destination: delivery with a
DKIM signature dkimpy verifies, 4xx retried with back-off until the destination recovers,
5xx -> exactly one DSN, a destination that never answers -> expiry with a DSN (times
shortened through settings), and a null-sender message is never bounced."""

from __future__ import annotations

import asyncio
import email
import logging
import socket
import threading

import dkim
import pytest

from cluster_harness import wait_until
from colony.bus import names
from colony.contracts.mail import InboundMail
from colony.contracts.outbound import OutboundMail, OutboundRecipient
from colony.dns import make_resolver, make_sync_resolver
from colony.metrics import Metrics
from colony.outbound.signing import generate_key, write_key
from colony.queue import QueueMetrics
from colony.settings import Settings
from colony.tasks import TaskOwner
from colony_edge.outbound import OutboundDelivery, OutboundMetrics, outbound_runner
from tools import free_ports


def free_port() -> int:
    """A free port below the kernel's ephemeral range (tests/tools.py: one the kernel handed out
    for a bind may go to the next outgoing connection before the server binds it)."""
    return free_ports(1)[0]


class Sink:
    """The remote MX: records what it accepted; ``mode`` decides its answers."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.rcpt_calls = 0
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.lock:
            self.rcpt_calls += 1
        if self.mode == "4xx":
            return "451 4.3.0 Try again later"
        if address.startswith("nobody@"):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 Queued"


@pytest.fixture
def sink(smtp_mx):
    return smtp_mx(Sink())


@pytest.fixture
async def owner():
    owner = TaskOwner(logging.getLogger("test"))
    yield owner
    await owner.close()


ORIGINAL = (b"From: Alice <alice@example.com>\r\nTo: bob@remote.test\r\nSubject: outbound test\r\n"
            b"Date: Wed, 25 Nov 2026 12:00:00 +0000\r\nMessage-ID: <%s@example.com>\r\n\r\nHello there.\r\n")


async def start_queue(nc, owner, settings: Settings):
    metrics = Metrics(with_process=False)
    delivery = OutboundDelivery(nc.jetstream(), settings, "edge-1", "edge1.example.com", make_resolver(settings),
                                OutboundMetrics(metrics.registry))
    runner = outbound_runner(nc, delivery, settings, metrics.once(QueueMetrics))
    await runner.start(owner.spawn)
    return runner


async def submit(js, message_id: str, *recipients: str, mail_from: str = "alice@example.com") -> None:
    body = ORIGINAL % message_id.encode()
    mail = OutboundMail.new(message_id=message_id, destination="remote.test", mail_from=mail_from,
                            recipients=[OutboundRecipient(address=r) for r in recipients], size=len(body),
                            edge_node="edge-1", body=body, account=mail_from, sign_domain="example.com")
    await js.publish(names.outbound_subject("remote.test"), mail.encode(), headers={"Nats-Msg-Id": mail.msg_id()})


async def dsns(js) -> list[InboundMail]:
    """DSNs the queue put into MAIL for local senders (read without consuming)."""
    info = await js.stream_info(names.STREAM_MAIL)
    out = []
    if info.state.messages:
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                out.append(InboundMail.from_bytes((await js.get_msg(names.STREAM_MAIL, seq)).data))
            except Exception:
                continue
    return out


def settings_for(nats_server, dns_server, sink, tmp_path, **more) -> Settings:
    dns_server.add("remote.test. 60 IN MX 10 mx.remote.test.", "mx.remote.test. 60 IN A 127.0.0.1")
    values = dict(nats_url=nats_server.url, dns_servers=dns_server.address, outbound_smtp_port=sink.port,
                  outbound_retry_initial=0.2, outbound_retry_max=0.5, outbound_connect_timeout=5.0,
                  data_dir=tmp_path, dkim_key_dir=tmp_path / "dkim")
    values.update(more)
    return Settings(**values)


async def queued(js) -> int:
    return (await js.stream_info(names.STREAM_OUTBOUND)).state.messages


async def test_remote_mail_is_found_by_mx_delivered_once_and_dkim_signed(nc, js, owner, nats_server, dns_server, sink, tmp_path):
    settings = settings_for(nats_server, dns_server, sink, tmp_path)
    key = generate_key("example.com", "s2026", 1024)
    write_key(settings.dkim_key_dir, key)
    dns_server.add_txt("s2026._domainkey.example.com.", key.dns_record())
    await start_queue(nc, owner, settings)
    await submit(js, "m-ok", "bob@remote.test", "carol@remote.test")

    await wait_until(lambda: _true(sink.messages), 30, "the message at the remote MX")
    await wait_until(lambda: _is(queued(js), 0), 30, "the job acked out of OUTBOUND")
    [(mail_from, rcpts, content)] = sink.messages
    assert mail_from == "alice@example.com" and sorted(rcpts) == ["bob@remote.test", "carol@remote.test"]
    assert content.startswith(b"DKIM-Signature:") and b"<m-ok@example.com>" in content
    resolver = make_sync_resolver(settings)

    def lookup(name, timeout=5):
        answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        return b"".join(b"".join(r.strings) for r in answer)

    assert dkim.verify(content, dnsfunc=lookup)
    assert not await dsns(js)


async def test_4xx_is_retried_with_backoff_and_delivered_when_the_destination_recovers(nc, js, owner, nats_server, dns_server, sink, tmp_path):
    settings = settings_for(nats_server, dns_server, sink, tmp_path)
    sink.mode = "4xx"
    await start_queue(nc, owner, settings)
    await submit(js, "m-later", "bob@remote.test")
    await wait_until(lambda: _true(sink.rcpt_calls >= 3), 30, "three refused attempts")
    assert not sink.messages
    sink.mode = "ok"
    await wait_until(lambda: _true(sink.messages), 30, "delivery after recovery")
    await wait_until(lambda: _is(queued(js), 0), 30, "the job acked out of OUTBOUND")
    assert len(sink.messages) == 1 and not await dsns(js)


async def test_5xx_gives_exactly_one_dsn_listing_the_failed_recipients(nc, js, owner, nats_server, dns_server, sink, tmp_path):
    settings = settings_for(nats_server, dns_server, sink, tmp_path)
    await start_queue(nc, owner, settings)
    await submit(js, "m-bounce", "bob@remote.test", "nobody@remote.test")
    await wait_until(lambda: _true(sink.messages), 30, "the good recipient delivered")
    [dsn] = await wait_until(lambda: dsns(js), 30, "the DSN in MAIL")
    await wait_until(lambda: _is(queued(js), 0), 30, "the job acked out of OUTBOUND")
    assert dsn.mail_from == "" and [r.mailbox for r in dsn.recipients] == ["alice@example.com"]
    report = email.message_from_bytes(dsn.body)
    assert report.get_content_type() == "multipart/report"
    status = report.get_payload()[1].as_string()
    assert "Final-Recipient: rfc822; nobody@remote.test" in status and "Status: 5.1.1" in status
    assert "bob@remote.test" not in status
    assert sink.messages[0][1] == ["bob@remote.test"]
    # Nothing more comes: one DSN, one delivery.
    await asyncio.sleep(0)
    assert len(await dsns(js)) == 1 and len(sink.messages) == 1


async def test_a_destination_that_never_answers_expires_with_a_dsn(nc, js, owner, nats_server, dns_server, sink, tmp_path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(100)   # accepts connections (the kernel does) and never says a word
    try:
        settings = settings_for(nats_server, dns_server, sink, tmp_path, outbound_smtp_port=silent.getsockname()[1],
                                outbound_connect_timeout=0.5, outbound_max_age=3.0)
        await start_queue(nc, owner, settings)
        await submit(js, "m-expire", "bob@remote.test")
        [dsn] = await wait_until(lambda: dsns(js), 60, "the expiry DSN")
        status = email.message_from_bytes(dsn.body).get_payload()[1].as_string()
        assert "Action: failed" in status and "Status: 4.4.7" in status
        await wait_until(lambda: _is(queued(js), 0), 30, "the expired job out of OUTBOUND")
    finally:
        silent.close()


async def test_a_bounce_is_never_bounced(nc, js, owner, nats_server, dns_server, sink, tmp_path):
    settings = settings_for(nats_server, dns_server, sink, tmp_path)
    await start_queue(nc, owner, settings)
    await submit(js, "m-null", "nobody@remote.test", mail_from="")
    await wait_until(lambda: _is(queued(js), 0), 30, "the job acked out of OUTBOUND")
    assert sink.rcpt_calls == 1 and not await dsns(js)


async def _true(value):
    return value


async def _is(awaitable, expected):
    return (await awaitable) == expected


async def test_the_delivery_is_a_span_in_the_submitters_trace_with_the_remote_reply(nc, js, owner, nats_server, dns_server,
                                                                                    sink, tmp_path):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from colony.telemetry import inject_headers

    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    tracer = provider.get_tracer("test")
    settings = settings_for(nats_server, dns_server, sink, tmp_path)
    metrics = Metrics(with_process=False)
    delivery = OutboundDelivery(js, settings, "edge-1", "edge1.example.com", make_resolver(settings),
                                OutboundMetrics(metrics.registry), tracer=tracer)
    await outbound_runner(nc, delivery, settings, metrics.once(QueueMetrics)).start(owner.spawn)
    body = ORIGINAL % b"m-traced"
    mail = OutboundMail.new(message_id="m-traced", destination="remote.test", mail_from="alice@example.com",
                            recipients=[OutboundRecipient(address="bob@remote.test")], size=len(body),
                            edge_node="edge-1", body=body)
    with tracer.start_as_current_span("smtp.accept") as parent:
        headers = inject_headers({"Nats-Msg-Id": mail.msg_id()})
    await js.publish(names.outbound_subject("remote.test"), mail.encode(), headers=headers)

    async def delivered_span():
        return [s for s in exported.get_finished_spans() if s.name == "outbound.deliver"]
    [span] = await wait_until(delivered_span, 30, "the delivery span")
    assert span.context.trace_id == parent.get_span_context().trace_id
    assert span.attributes["colony.delivered"] == 1
    assert span.attributes["colony.remote_replies"][0].startswith("bob@remote.test: 250")
