"""SIGKILL an edge in the middle of 500 outbound deliveries: afterwards every message was
delivered exactly once to the loopback MX (counted by Message-ID) or is still queued.

The one exception SMTP itself leaves (RFC 1047, RFC 5321 §6.1): a message whose final
250 the killed edge had not yet read and recorded (``outbound_delivered``) when it died is
sent again by the edge that takes over.  The edge records a delivery the moment the 250
arrives, so that window is a bus round trip long; a duplicate is tolerated only if its
first copy was accepted by the sink within a moment of the kill, and never more than the
deliveries that were in flight."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter

import pytest

from cluster_harness import ClusterHarness, wait_until
from colony.bus import names
from colony.contracts.outbound import OutboundMail, OutboundRecipient

MESSAGES = 500
CONCURRENCY = 16
IN_FLIGHT_WINDOW = 0.5   # seconds: a 250 sent this shortly before the kill may not have been read
MESSAGE_ID = re.compile(rb"^Message-ID: <([^>]+)>", re.MULTILINE | re.IGNORECASE)


class CountingSink:
    def __init__(self) -> None:
        self.ids: Counter[str] = Counter()
        self.first_at: dict[str, float] = {}
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        found = MESSAGE_ID.search(envelope.original_content)
        mid = found.group(1).decode() if found else "?"
        with self.lock:
            self.ids[mid] += 1
            self.first_at.setdefault(mid, time.monotonic())
        return "250 2.0.0 Queued"


@pytest.fixture
def sink(smtp_mx):
    return smtp_mx(CountingSink())


def start_edge(cluster: ClusterHarness, node_id: str, dns_server, sink):
    return cluster.start("edge", node_id, COLONY_DNS_SERVERS=dns_server.address,
                         COLONY_OUTBOUND_SMTP_PORT=str(sink.port), COLONY_QUEUE_ACK_WAIT="3",
                         COLONY_OUTBOUND_CONCURRENCY=str(CONCURRENCY),
                         COLONY_OUTBOUND_DESTINATION_CONCURRENCY=str(CONCURRENCY))


async def test_sigkill_mid_delivery_loses_and_duplicates_nothing(cluster, dns_server, sink):
    await cluster.ensure_schema()
    dns_server.add("remote.test. 60 IN MX 10 mx.remote.test.", "mx.remote.test. 60 IN A 127.0.0.1")
    js = (await cluster.client()).jetstream()
    expected = set()
    for i in range(MESSAGES):
        mid = f"crash-{i}@example.com"
        expected.add(mid)
        body = f"From: a@example.com\r\nTo: b@remote.test\r\nMessage-ID: <{mid}>\r\nSubject: {i}\r\n\r\nx\r\n".encode()
        mail = OutboundMail.new(message_id=f"crash-{i}", destination="remote.test", mail_from="a@example.com",
                                recipients=[OutboundRecipient(address="b@remote.test")], size=len(body),
                                edge_node="test", body=body, sender_local=True)
        await js.publish(names.outbound_subject("remote.test"), mail.encode(), headers={"Nats-Msg-Id": mail.msg_id()})

    first = start_edge(cluster, "edge-1", dns_server, sink)

    async def some_delivered():
        return sum(sink.ids.values()) >= 60
    await wait_until(some_delivered, 180, "the first edge to deliver some of the queue")
    first.process.kill()
    killed_at = time.monotonic()
    await asyncio.to_thread(first.process.wait, 30)
    at_kill = sum(sink.ids.values())
    assert at_kill < MESSAGES, "the kill came too late to test anything; make the queue longer"

    start_edge(cluster, "edge-2", dns_server, sink)

    async def settled():
        queued = (await js.stream_info(names.STREAM_OUTBOUND)).state.messages
        return queued == 0 and set(sink.ids) >= expected
    await wait_until(settled, 240, "every message delivered and the queue empty")
    duplicates = {mid: n for mid, n in sink.ids.items() if n > 1}
    # Octets the edge wrote before it died still reach the sink after the kill, hence both sides.
    unexplained = {mid: round(sink.first_at[mid] - killed_at, 3) for mid in duplicates
                   if abs(sink.first_at[mid] - killed_at) > IN_FLIGHT_WINDOW}
    assert not unexplained, f"delivered more than once (first copy at kill time + s): {unexplained}"
    assert all(n == 2 for n in duplicates.values()) and len(duplicates) <= CONCURRENCY, duplicates
    assert set(sink.ids) == expected
