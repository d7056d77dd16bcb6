"""A request for a phone's connection held by a member that is gone (SIGKILLed: the bus says
nobody reads its relay subject, or its heartbeat is stale, or its record deleted) fails at
once with 430 Flow Failed (RFC 5626 §5.3).  Published to the dead member's relay subject, it
reached nobody and the caller rang into silence until Timer C (baresip in
tests/integration/sipfarm/test_softphones.py)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

from prometheus_client import CollectorRegistry

from colony.bus import names
from colony.cluster.membership import NodeRecord, NodeState
from colony.settings import Settings

from colony_sipfarm.farm import Outbound, SipFarm
from colony_sipfarm.workload import SipWorkload
from test_farm import ME, Auth, Clock, Counters, Dialogs, Store

INVITE = (b"INVITE sip:alice@198.51.100.7:5070;transport=tcp SIP/2.0\r\n"
          b"Via: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK-cfabc-0;m=sipfarm-1\r\n"
          b"Via: SIP/2.0/UDP 192.0.2.9:5062;branch=z9hG4bKcaller;rport=5062;received=192.0.2.9\r\n"
          b"From: <sip:bob@acme.example>;tag=b1\r\nTo: <sip:alice@acme.example>\r\nCall-ID: gone-1\r\n"
          b"CSeq: 2 INVITE\r\nMax-Forwards: 69\r\nContent-Length: 0\r\n\r\n")
RINGING = (b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 192.0.2.9:5062;branch=z9hG4bKcaller\r\n"
           b"From: <sip:bob@acme.example>;tag=b1\r\nTo: <sip:alice@acme.example>;tag=a1\r\nCall-ID: gone-1\r\n"
           b"CSeq: 2 INVITE\r\nContent-Length: 0\r\n\r\n")
ALICE = ("TCP", "198.51.100.7", 40500)


class Bus:
    def __init__(self) -> None:
        self.published: list[str] = []
        self.replies: list[str] = []

    async def publish(self, subject, payload, reply="", headers=None) -> None:
        self.published.append(subject)
        self.replies.append(reply)


def record(node_id: str, beat_ago: float) -> NodeRecord:
    now = datetime.now(timezone.utc)
    return NodeRecord(id=node_id, role="sipfarm", state=NodeState.READY, host="h", pid=1, version="v",
                      started_at=now - timedelta(hours=1), heartbeat_at=now - timedelta(seconds=beat_ago))


def shell() -> tuple[SipWorkload, Bus, list]:
    settings = Settings(node_ttl=5)
    farm = SipFarm(settings, "sipfarm-1", store=Store(Clock()), dialogs=Dialogs(), auth=Auth(), counters=Counters(),
                   secret=b"k" * 32, address=ME, registry=CollectorRegistry(), meter=lambda c: None)
    workload = SipWorkload(settings)
    bus = Bus()
    workload.farm, workload._runtime = farm, SimpleNamespace(node_id="sipfarm-1", nc=bus)
    workload._relay_inbox = "_INBOX.me.relays"
    failed: list = []
    workload._flow_failed = lambda data, destination: failed.append((data, destination))
    return workload, bus, failed


async def test_a_request_for_a_stale_members_flow_fails_at_once_and_is_not_published():
    workload, bus, failed = shell()
    workload._members = {"sipfarm-1": record("sipfarm-1", 0), "sipfarm-2": record("sipfarm-2", 30)}
    await workload._send(Outbound(INVITE, ALICE, names.node_key("sipfarm-2")))
    assert bus.published == [] and failed == [(INVITE, ALICE)]
    # A response for it is lost as on any dead connection (_flow_failed makes no 430 of it).
    await workload._send(Outbound(RINGING, ALICE, names.node_key("sipfarm-2")))
    assert bus.published == []


async def test_a_member_whose_record_is_gone_is_gone_and_a_live_one_is_relayed_to():
    workload, bus, failed = shell()
    workload._members = {"sipfarm-1": record("sipfarm-1", 0), "sipfarm-3": record("sipfarm-3", 1)}
    await workload._send(Outbound(INVITE, ALICE, names.node_key("sipfarm-2")))      # deleted record
    assert bus.published == [] and len(failed) == 1
    await workload._send(Outbound(INVITE, ALICE, names.node_key("sipfarm-3")))      # beating
    assert bus.published == [names.sip_relay_subject("sipfarm-3")] and len(failed) == 1


async def test_before_the_nodes_watch_delivered_anything_a_relay_goes_out():
    workload, bus, failed = shell()
    await workload._send(Outbound(INVITE, ALICE, names.node_key("sipfarm-2")))
    assert bus.published == [names.sip_relay_subject("sipfarm-2")] and failed == []


async def test_the_bus_saying_nobody_reads_a_live_looking_members_relay_subject_fails_the_request():
    """Member 2 was SIGKILLed a moment ago: its heartbeat is still fresh, but its connection to
    the bus is closed, and the bus answers a relayed request's reply subject "no responders"."""
    workload, bus, failed = shell()
    workload._members = {"sipfarm-1": record("sipfarm-1", 0), "sipfarm-2": record("sipfarm-2", 0)}
    await workload._send(Outbound(INVITE, ALICE, names.node_key("sipfarm-2")))
    await workload._send(Outbound(RINGING, ALICE, names.node_key("sipfarm-2")))
    assert bus.published == [names.sip_relay_subject("sipfarm-2")] * 2
    invite_reply, ringing_reply = bus.replies
    assert invite_reply.startswith("_INBOX.me.relays.") and ringing_reply == ""     # a response: nothing to fail
    # A message without the status (nobody should send one) fails nothing; the 503 does, once.
    await workload._on_relay_unread(SimpleNamespace(subject=invite_reply, headers=None, data=b"x"))
    assert failed == []
    for _ in range(2):
        await workload._on_relay_unread(SimpleNamespace(subject=invite_reply, headers={"Status": "503"}, data=b""))
    assert failed == [(INVITE, ALICE)]


async def test_relayed_requests_are_watched_for_a_while_and_in_a_bounded_number(monkeypatch):
    from colony_sipfarm import workload as module

    monkeypatch.setattr(module, "RELAY_WATCHED", 3)
    workload, bus, failed = shell()
    for _ in range(5):
        await workload._send(Outbound(INVITE, ALICE, names.node_key("sipfarm-2")))
    assert len(workload._relays_watched) == 3
    for token, (sent, data, destination) in workload._relays_watched.items():     # as if sent long ago
        workload._relays_watched[token] = (sent - module.RELAY_WATCH - 1, data, destination)
    await workload._send(Outbound(INVITE, ALICE, names.node_key("sipfarm-2")))
    assert len(workload._relays_watched) == 1        # the old ones went: no "no responders" now fails them
    await workload._on_relay_unread(SimpleNamespace(subject=bus.replies[0], headers={"Status": "503"}, data=b""))
    assert failed == []
