"""The shell's hand-over of a new transaction to its Call-ID's owner, over a bus faked in
process: the asker's request reaches the owner's handler, its reply comes back; frames that
do not decode are dropped with a log line, never a traceback."""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace

from prometheus_client import CollectorRegistry

from colony.bus import names
from colony.metrics import BusRequestMetrics
from colony.protocols.sip.parser import parse_message
from colony.settings import Settings

from colony_sipfarm.spread_frames import SpreadPacket
from colony_sipfarm import workload
from colony_sipfarm.workload import SipWorkload
from test_farm import PHONE, answer, farm, invite, register, registered  # noqa: F401 (farm: the fixture)


class Bus:
    """Core NATS request/reply between shells: ``reply`` replaces the owner's answer if set."""

    def __init__(self) -> None:
        self.served: dict[str, SipWorkload] = {}
        self.requests: list[tuple[str, bytes, dict | None]] = []
        self.reply: bytes | None = None
        self.late = False       # the owner does not answer in time

    async def request(self, subject, payload, timeout, headers=None):
        self.requests.append((subject, payload, headers))
        if self.late:
            raise TimeoutError
        answered: list[bytes] = []

        async def respond(data: bytes) -> None:
            answered.append(data)
        await self.served[subject]._on_handle(SimpleNamespace(data=payload, headers=headers, respond=respond))
        if self.reply is not None:
            return SimpleNamespace(data=self.reply)
        if not answered:
            raise TimeoutError
        return SimpleNamespace(data=answered[0])


def _shell(farm, bus: Bus, node_id: str) -> SipWorkload:
    shell = SipWorkload(Settings())
    shell.farm, shell.farm_address = farm, ("192.0.2.100", 5060)
    shell._runtime = SimpleNamespace(node_id=node_id, nc=bus)
    shell._bus_metrics = BusRequestMetrics(CollectorRegistry())
    bus.served[names.sip_spread_subject(node_id)] = shell
    return shell


def _outcome(shell: SipWorkload, outcome: str) -> float:
    return shell._bus_metrics.requests.labels(names.SIP_SPREAD, outcome)._value.get()


async def test_the_owner_answers_and_the_asker_gets_what_to_send(farm):
    bus = Bus()
    asker, owner = _shell(farm, bus, "sipfarm-1"), _shell(farm, bus, "sipfarm-2")
    packet = register()
    out = await asker._ask_owner("sipfarm-2", packet, PHONE)
    assert [(parse_message(o.data).status, o.destination) for o in out] == [(401, PHONE)]
    subject, frame, headers = bus.requests[0]
    assert subject == "colony.sip.spread.sipfarm-2" and headers is None      # no tracer provider
    assert SpreadPacket.from_frame(frame) == SpreadPacket(packet, PHONE, "sipfarm-1", ("192.0.2.100", 5060))
    assert _outcome(owner, "ok") == 1 and farm.metrics.relays._value.get() == 1


async def test_a_request_frame_that_does_not_decode_is_dropped_with_a_log_line(farm, caplog):
    bus = Bus()
    owner = _shell(farm, bus, "sipfarm-2")
    answered: list[bytes] = []

    async def respond(data: bytes) -> None:
        answered.append(data)
    with caplog.at_level(logging.INFO, logger="colony.sipfarm"):
        await owner._on_handle(SimpleNamespace(data=b"UDP 1.2.3.4 not-a-port m h 1\nREGISTER", headers=None,
                                               respond=respond))
    assert answered == [] and _outcome(owner, "bad_request") == 1
    assert "does not decode" in caplog.text and "Traceback" not in caplog.text


async def test_an_answer_that_does_not_decode_has_the_packet_handled_here_and_the_owner_passed_over(farm, caplog):
    bus = Bus()
    asker, _ = _shell(farm, bus, "sipfarm-1"), _shell(farm, bus, "sipfarm-2")
    bus.reply = b"99 UDP 192.0.2.7 5062 -\nshort"
    with caplog.at_level(logging.INFO, logger="colony.sipfarm"):
        assert await asker._ask_owner("sipfarm-2", register(), PHONE) is None
    assert "sipfarm-2" in asker._suspect and "FrameError" in caplog.text


async def test_with_tracing_on_the_hand_over_still_answers(farm):
    # The span and header path (no provider here, so the span records nothing and the
    # headers stay empty): it must hand over the same answers.
    bus = Bus()
    asker, owner = _shell(farm, bus, "sipfarm-1"), _shell(farm, bus, "sipfarm-2")
    asker._traced = owner._traced = True
    out = await asker._ask_owner("sipfarm-2", register(), PHONE)
    assert [parse_message(o.data).status for o in out] == [401] and _outcome(owner, "ok") == 1


def _ready(shell: SipWorkload, *members: str) -> None:
    shell._ready, shell._ready_until = list(members), float("inf")


def _dropped(farm, reason: str) -> float:
    return farm.metrics.dropped.labels(reason=reason)._value.get()


async def test_a_register_the_live_owner_answers_late_is_left_to_the_phones_copy(farm):
    # The owner is waiting on the auth service: handling the packet here too would do the
    # work twice and pass a live member over.  Nothing is sent; the copy gets the answer.
    bus = Bus()
    asker, _ = _shell(farm, bus, "sipfarm-1"), _shell(farm, bus, "sipfarm-2")
    _ready(asker, "sipfarm-1", "sipfarm-2")
    assert await asker._ask_owner("sipfarm-2", register(), PHONE, answered_again=True)   # it answers
    bus.late = True
    packet = register()
    assert await asker._ask_owner("sipfarm-2", packet, PHONE, answered_again=True) == []
    assert "sipfarm-2" not in asker._suspect and _dropped(farm, "owner slow") == 1
    bus.late = False
    out = await asker._ask_owner("sipfarm-2", packet, PHONE, answered_again=True)
    assert [parse_message(o.data).status for o in out] == [401]


async def test_an_owner_that_has_answered_nothing_lately_is_not_slow_but_passed_over(farm, monkeypatch):
    # Hung, or unreachable on the spread subject (a bus whose permissions predate it): its
    # heartbeat may still be fresh, but leaving its REGISTERs to the phones' copies would
    # lose every one of them.
    bus = Bus()
    asker, _ = _shell(farm, bus, "sipfarm-1"), _shell(farm, bus, "sipfarm-2")
    _ready(asker, "sipfarm-1", "sipfarm-2")
    bus.late = True
    assert await asker._ask_owner("sipfarm-2", register(), PHONE, answered_again=True) is None   # never answered
    assert "sipfarm-2" in asker._suspect
    asker._suspect.clear()
    _ready(asker, "sipfarm-1", "sipfarm-2")
    asker._answered_at["sipfarm-2"] = time.monotonic() - workload.SLOW_OWNER_GRACE - 1      # long ago
    assert await asker._ask_owner("sipfarm-2", register(), PHONE, answered_again=True) is None
    assert "sipfarm-2" in asker._suspect and _dropped(farm, "owner slow") == 0


async def test_a_late_answer_is_handled_here_for_a_connection_a_proxied_request_or_a_stale_owner(farm):
    bus = Bus()
    asker, _ = _shell(farm, bus, "sipfarm-1"), _shell(farm, bus, "sipfarm-2")
    bus.late = True
    cases = [(("TCP", "192.0.2.7", 5062), True, ("sipfarm-1", "sipfarm-2")),   # no copy will come
             (PHONE, False, ("sipfarm-1", "sipfarm-2")),                      # an INVITE's forwarding is not kept
             (PHONE, True, ("sipfarm-1",))]                                   # its heartbeat went stale
    for source, answered_again, ready in cases:
        _ready(asker, *ready)
        asker._suspect.clear()
        assert await asker._ask_owner("sipfarm-2", register(), source, answered_again=answered_again) is None
        assert "sipfarm-2" in asker._suspect
    assert _dropped(farm, "owner slow") == 0


async def test_route_leaves_only_a_register_to_the_phones_copy(farm):
    bus = Bus()
    asker, _ = _shell(farm, bus, "sipfarm-1"), _shell(farm, bus, "sipfarm-2")
    asked = []

    async def ask(owner, data, source, answered_again=False):
        asked.append(answered_again)
        return []
    asker._ask_owner = ask
    asker._owner = lambda parsed: "sipfarm-2"
    await asker._route(register(), PHONE, farm.parse(register()))
    invite = register().replace(b"REGISTER sip:", b"INVITE sip:bob@").replace(b"1 REGISTER", b"1 INVITE")
    await asker._route(invite, PHONE, farm.parse(invite))
    assert asked == [True, False]


class SlowBus(Bus):
    """As ``Bus``, but the owner goes on working after the asker's timeout, as over NATS."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout

    async def request(self, subject, payload, timeout, headers=None):
        answered = asyncio.get_running_loop().create_future()

        async def respond(data: bytes) -> None:
            if not answered.done():
                answered.set_result(data)
        await self.served[subject]._on_handle(SimpleNamespace(data=payload, headers=headers, respond=respond))
        return SimpleNamespace(data=await asyncio.wait_for(asyncio.shield(answered), self.timeout))


async def test_the_copy_of_a_register_a_slow_owner_answered_late_gets_its_remembered_answer(farm):
    # The owner waits on the auth service past the asker's timeout: the first packet's answer
    # is lost, a copy while it still works gets nothing, and a copy after it is done gets the
    # 200 it made (not a second credential check: the nonce count would look replayed).
    bus = SlowBus(timeout=0.05)
    asker, owner = _shell(farm, bus, "sipfarm-1"), _shell(farm, bus, "sipfarm-2")
    _ready(asker, "sipfarm-1", "sipfarm-2")
    [challenge] = await asker._ask_owner("sipfarm-2", register(), PHONE, answered_again=True)
    released = asyncio.Event()
    lookup = farm.auth.sip_credentials

    async def slow_lookup(*args):
        await released.wait()
        return await lookup(*args)
    farm.auth.sip_credentials = slow_lookup
    packet = register(cseq=2, auth=answer(parse_message(challenge.data), "alice"))
    assert await asker._ask_owner("sipfarm-2", packet, PHONE, answered_again=True) == []
    assert _dropped(farm, "owner slow") == 1
    assert await asker._ask_owner("sipfarm-2", packet, PHONE, answered_again=True) == []   # still working
    released.set()
    while owner._inflight:
        await asyncio.sleep(0)
    out = await asker._ask_owner("sipfarm-2", packet, PHONE, answered_again=True)
    assert [parse_message(o.data).status for o in out] == [200]
    assert farm.auth.asked == 1 and farm.metrics.retransmissions._value.get() == 2
    assert "sipfarm-2" not in asker._suspect and _dropped(farm, "owner slow") == 1


async def test_an_answer_to_where_no_frame_can_go_is_left_out_and_the_owner_answers_in_time(farm):
    # A destination no frame can carry comes from a phone's packet -- here a registered Contact
    # whose maddr is not ASCII, where the caller's INVITE is forwarded: the owner used to send
    # no answer at all, and the asker, after a second, passed a live member over for 10 s.
    # The item is left out and the rest (the 100 Trying) answered.
    bus = Bus()
    asker, _ = _shell(farm, bus, "sipfarm-1"), _shell(farm, bus, "sipfarm-2")
    _ready(asker, "sipfarm-1", "sipfarm-2")
    await registered(farm, user="bob", contact="<sip:bob@192.0.2.7:5062;maddr=ex\u00e4mple.com>")
    caller = ("UDP", "198.51.100.9", 5060)
    [challenge] = await asker._ask_owner("sipfarm-2", invite(), caller)
    auth = answer(parse_message(challenge.data), "alice", method="INVITE", uri="sip:bob@acme.example",
                  header="Proxy-Authorization")
    out = await asker._ask_owner("sipfarm-2", invite(cseq=2, auth=auth, branch="z9hG4bKinv2"), caller)
    assert [(parse_message(o.data).status, o.destination) for o in out] == [(100, caller)]
    assert "sipfarm-2" not in asker._suspect and _dropped(farm, "unsendable") == 1
    out = await asker._ask_owner("sipfarm-2", register(), PHONE)
    assert [parse_message(o.data).status for o in out] == [401]


async def test_an_answer_handed_over_by_the_member_it_reached_moves_this_members_client_transaction_on(farm):
    """Behind a shared public address a phone's answer reaches whichever member the balancer
    picks, which hands it to the member our Via's ``o`` names.  That member put the request on
    the wire and runs its client transaction: handed over, the answer once went straight to
    the farm, the transaction kept resending and Timer F/B failed an answered request."""
    shell = _shell(farm, Bus(), "sipfarm-1")
    bob = ("UDP", "192.0.2.7", 5062)
    request = parse_message(
        b"MESSAGE sip:bob@192.0.2.7:5062 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.100:5060;rport;branch=z9hG4bK-cfmsg-0;m=x;o=x\r\n"
        b"Via: SIP/2.0/UDP 198.51.100.9:5060;branch=z9hG4bKcaller\r\nMax-Forwards: 69\r\n"
        b"From: <sip:alice@acme.example>;tag=a1\r\nTo: <sip:bob@acme.example>\r\nCall-ID: handed-1\r\n"
        b"CSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n")
    now = time.monotonic()
    assert shell.proxy_transactions.sent(request, request.encode(), bob, now)
    ok = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.100:5060;rport;branch=z9hG4bK-cfmsg-0;m=x;o=x\r\n"
          b"Via: SIP/2.0/UDP 198.51.100.9:5060;branch=z9hG4bKcaller\r\n"
          b"From: <sip:alice@acme.example>;tag=a1\r\nTo: <sip:bob@acme.example>;tag=b1\r\nCall-ID: handed-1\r\n"
          b"CSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n")
    await shell._handle_for(SpreadPacket(ok, bob, "sipfarm-2", ("192.0.2.100", 5060)))
    due = shell.proxy_transactions.expire(now + 5)         # past Timer E's copies at 0.5, 1, 2, 4 s
    assert due.retransmit == [] and due.timed_out == []
    # The phone repeats its final answer (our copies crossed it): absorbed here, not passed on.
    again = await shell._handle_for(SpreadPacket(ok, bob, "sipfarm-2", ("192.0.2.100", 5060)))
    assert again == []
