"""Connection reuse in the outbound queue, against a real nats-server, the loopback DNS
server and an aiosmtpd MX that counts its connections: several messages for one destination
go over one SMTP session (no RSET after a finished transaction, RSET after one left open),
the per-destination limit holds, a session carries at most ``outbound_messages_per_connection``
messages, and a kept session the MX dropped is replaced by a new one with each message
delivered exactly once.  Every test runs against an MX without PIPELINING and one that
advertises it (RFC 2920: MAIL, the RCPTs and DATA then go out in one write)."""

from __future__ import annotations

import logging
import re
import threading
import time

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from cluster_harness import wait_until
from colony.tasks import TaskOwner
from test_outbound_delivery import free_port, queued, settings_for, start_queue, submit

pytestmark = pytest.mark.slow


@pytest.fixture
async def owner():
    owner = TaskOwner(logging.getLogger("test"))
    yield owner
    await owner.close()


class CountingSink:
    """The remote MX: counts connections (open now, most at once, all) and RSETs; with
    ``drop_next_mail`` it closes a session when the next MAIL comes, without a reply (an
    MX whose idle timeout fired just as the client came back); refuses ``nobody@``."""

    def __init__(self, pipelining: bool = False) -> None:
        self.pipelining = pipelining
        self.lock = threading.Lock()
        self.connections = self.open = self.most_open = self.rsets = 0
        self.message_ids: list[str] = []
        self.drop_next_mail = False
        self.commands: list[str] = []

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            found = re.search(rb"Message-ID: <([^>]+)>", envelope.original_content)
            self.message_ids.append(found.group(1).decode() if found else "?")
        return "250 2.0.0 Queued"

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.pipelining:   # aiosmtpd reads line by line, so it serves a pipelining client as it is
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("nobody@"):
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"


class _CountingSMTP(SMTP):
    def connection_made(self, transport):
        sink = self.event_handler
        with sink.lock:
            sink.connections += 1
            sink.open += 1
            sink.most_open = max(sink.most_open, sink.open)
        super().connection_made(transport)

    def connection_lost(self, error):
        with self.event_handler.lock:
            self.event_handler.open -= 1
        super().connection_lost(error)

    async def smtp_RSET(self, arg):
        sink = self.event_handler
        with sink.lock:
            sink.rsets += 1
            sink.commands.append("RSET")
        await super().smtp_RSET(arg)

    async def smtp_MAIL(self, arg):
        sink = self.event_handler
        with sink.lock:
            sink.commands.append("MAIL")
            drop, sink.drop_next_mail = sink.drop_next_mail, False
        if drop:
            self.transport.close()
            return
        await super().smtp_MAIL(arg)


class _CountingController(Controller):
    def factory(self):
        return _CountingSMTP(self.handler, **self.SMTP_kwargs)


@pytest.fixture(params=["plain", "pipelining"])
def mx(request):
    handler = CountingSink(pipelining=request.param == "pipelining")
    controller = _CountingController(handler, hostname="127.0.0.1", port=free_port())
    controller.start()   # aiosmtpd connects once itself to see that the server is up: not ours to count
    deadline = time.monotonic() + 10
    while handler.open and time.monotonic() < deadline:
        time.sleep(0.01)
    with handler.lock:
        handler.connections = handler.most_open = handler.rsets = 0
        handler.commands.clear()
    handler.port = controller.port
    yield handler
    controller.stop()


async def _delivered(mx: CountingSink, count: int) -> bool:
    return len(mx.message_ids) >= count


async def _empty(js) -> bool:
    return await queued(js) == 0


async def test_messages_for_one_destination_share_one_connection(nc, js, owner, nats_server, dns_server, mx, tmp_path):
    settings = settings_for(nats_server, dns_server, mx, tmp_path, outbound_destination_concurrency=1,
                            outbound_connection_idle=30.0)
    await start_queue(nc, owner, settings)
    for n in range(8):
        await submit(js, f"reuse-{n}", "bob@remote.test")
    await wait_until(lambda: _delivered(mx, 8), 60, "eight messages at the MX")
    await wait_until(lambda: _empty(js), 30, "the jobs acked")
    assert sorted(mx.message_ids) == sorted(f"reuse-{n}@example.com" for n in range(8))
    assert mx.connections == 1, "one session carried every message"
    assert mx.rsets == 0, "no RSET after a finished transaction: it would be a NOOP and a round trip"


async def test_a_transaction_left_open_is_reset_before_the_next(nc, js, owner, nats_server, dns_server, mx, tmp_path):
    """Every RCPT refused: MAIL was accepted and no DATA followed, so the session still
    holds that transaction; the next message on it starts with RSET."""
    settings = settings_for(nats_server, dns_server, mx, tmp_path, outbound_destination_concurrency=1,
                            outbound_connection_idle=30.0)
    await start_queue(nc, owner, settings)
    await submit(js, "open-1", "nobody@remote.test")
    await wait_until(lambda: _empty(js), 30, "the refused job done (a DSN, no retry)")
    await submit(js, "open-2", "bob@remote.test")
    await wait_until(lambda: _delivered(mx, 1), 30, "the second message at the MX")
    assert mx.message_ids == ["open-2@example.com"]
    assert mx.connections == 1 and mx.commands == ["MAIL", "RSET", "MAIL"]


async def test_the_message_cap_and_the_destination_limit_hold(nc, js, owner, nats_server, dns_server, mx, tmp_path):
    settings = settings_for(nats_server, dns_server, mx, tmp_path, outbound_destination_concurrency=2,
                            outbound_messages_per_connection=3, outbound_connection_idle=30.0)
    await start_queue(nc, owner, settings)
    for n in range(12):
        await submit(js, f"cap-{n}", "bob@remote.test")
    await wait_until(lambda: _delivered(mx, 12), 60, "twelve messages at the MX")
    await wait_until(lambda: _empty(js), 30, "the jobs acked")
    assert len(set(mx.message_ids)) == 12 and len(mx.message_ids) == 12
    assert mx.most_open <= 2, f"{mx.most_open} connections at once to a destination limited to 2"
    assert mx.connections >= 4, "at most three messages per connection: twelve need four or more"


async def test_a_kept_connection_the_mx_dropped_is_replaced_without_loss_or_duplicate(nc, js, owner, nats_server,
                                                                                       dns_server, mx, tmp_path):
    settings = settings_for(nats_server, dns_server, mx, tmp_path, outbound_destination_concurrency=1,
                            outbound_connection_idle=30.0, outbound_retry_initial=60.0, outbound_retry_max=60.0)
    await start_queue(nc, owner, settings)
    await submit(js, "drop-1", "bob@remote.test")
    await wait_until(lambda: _delivered(mx, 1), 30, "the first message")
    mx.drop_next_mail = True     # the kept session dies when it is used again
    await submit(js, "drop-2", "bob@remote.test")
    # Retries wait 60 s here, so delivery within the deadline means the same attempt
    # moved to a new connection instead of deferring the message.
    await wait_until(lambda: _delivered(mx, 2), 30, "the second message, on a new connection")
    await wait_until(lambda: _empty(js), 30, "the jobs acked")
    assert mx.message_ids == ["drop-1@example.com", "drop-2@example.com"]
    assert mx.connections == 2 and mx.rsets == 0


async def test_no_reuse_when_the_idle_time_is_zero(nc, js, owner, nats_server, dns_server, mx, tmp_path):
    settings = settings_for(nats_server, dns_server, mx, tmp_path, outbound_destination_concurrency=1,
                            outbound_connection_idle=0.0)
    await start_queue(nc, owner, settings)
    for n in range(3):
        await submit(js, f"single-{n}", "bob@remote.test")
    await wait_until(lambda: _delivered(mx, 3), 60, "three messages at the MX")
    assert mx.connections == 3 and mx.rsets == 0


async def test_messages_out_are_metered_in_batches(nc, js, owner, nats_server, dns_server, mx, tmp_path):
    """USAGE messages_out counts every delivered recipient, summed per account and flush
    (not one event per message: each event costs the admin API's read model a write)."""
    from colony.bus import names
    from colony.events import decode
    from colony_edge.outbound import OutboundDelivery

    settings = settings_for(nats_server, dns_server, mx, tmp_path, outbound_destination_concurrency=1)
    runner = await start_queue(nc, owner, settings)
    for n in range(6):
        await submit(js, f"meter-{n}", "bob@remote.test", "carol@remote.test")
    await wait_until(lambda: _delivered(mx, 6), 60, "six messages at the MX")
    await wait_until(lambda: _empty(js), 30, "the jobs acked")
    delivery: OutboundDelivery = runner.handler.__self__
    await delivery.flush_usage()

    info = await js.stream_info(names.STREAM_USAGE)
    events = [decode((await js.get_msg(names.STREAM_USAGE, seq)).data)
              for seq in range(info.state.first_seq, info.state.last_seq + 1)] if info.state.messages else []
    out = [e for e in events if e.metric == "messages_out"]
    assert sum(e.amount for e in out) == 12 and {(e.domain, e.account) for e in out} == {("example.com",
                                                                                           "alice@example.com")}
    assert len(out) < 6, "summed, not one event per message"


async def test_the_destination_slot_is_free_while_a_delivery_is_recorded(js, nats_server, dns_server, mx, tmp_path):
    """With one connection allowed per destination, the next message goes out on the kept
    session while the first one's delivery record (the ack, or the marker) is still under
    way: the slot covers the SMTP exchange, not the bus write after the remote 250."""
    import asyncio

    from prometheus_client import CollectorRegistry

    from colony.contracts.outbound import OutboundMail, OutboundRecipient
    from colony.dns import make_resolver
    from colony_edge.outbound import OutboundDelivery, OutboundMetrics
    from test_outbound_delivery import ORIGINAL

    settings = settings_for(nats_server, dns_server, mx, tmp_path, outbound_destination_concurrency=1,
                            outbound_connection_idle=30.0)
    delivery = OutboundDelivery(js, settings, "edge-1", "edge1.example.com", make_resolver(settings),
                                OutboundMetrics(CollectorRegistry()))

    def mail(n: str) -> tuple[OutboundMail, bytes]:
        body = ORIGINAL % n.encode()
        return OutboundMail.new(message_id=n, destination="remote.test", mail_from="alice@example.com",
                                recipients=[OutboundRecipient(address="bob@remote.test")], size=len(body),
                                edge_node="edge-1", body=body), body

    release, recorded = asyncio.Event(), []

    async def slow_record(addresses: list[str], dsn_passed: bool) -> None:
        recorded.append(addresses)
        await release.wait()

    async def record(addresses: list[str], dsn_passed: bool) -> None:
        recorded.append(addresses)

    first = asyncio.ensure_future(delivery._attempt(*mail("slot-1"), slow_record))
    try:
        await wait_until(lambda: _true(len(recorded) == 1), 10, "the first message taken by the MX")
        results = await asyncio.wait_for(delivery._attempt(*mail("slot-2"), record), 10)
        assert [r.code for r in results] == [250] and not first.done()
    finally:
        release.set()
        results = await first
    assert [r.code for r in results] == [250] and recorded == [["bob@remote.test"], ["bob@remote.test"]]
    assert mx.message_ids == ["slot-1@example.com", "slot-2@example.com"] and mx.connections == 1
    delivery.pool.close()


async def _true(value: bool) -> bool:
    return value
