"""New work that arrives over UDP at a member that is not its Call-ID's owner is handed over
member to member by UDP (the inner relay), not over the bus: two real farm members on a real
bus, a phone that is a UDP socket on 127.0.0.1."""

from __future__ import annotations

import asyncio
import signal
import uuid

import pytest

from cluster_harness import wait_until
from colony.hashing import choose
from colony.protocols.sip.parser import parse_message
from test_proxy_retransmission import answer, in_dialog_answer, invite_bob, next_message, register_udp
from test_sipfarm import DOMAIN, Udp, digest_answer, metric, serve_credentials

MEMBERS = ["sipfarm-1", "sipfarm-2"]


@pytest.fixture
async def pair(cluster):
    """Two members whose heartbeats stay fresh for 30 s after a death: a test of how a dead
    owner is noticed must not be passed by its record going stale (node_ttl)."""
    await serve_credentials(await cluster.client())
    for node_id in MEMBERS:
        cluster.start("sipfarm", node_id, COLONY_SIP_PORT="0", COLONY_OUTBOUND_SMTP_PORT="25", COLONY_NODE_TTL="30")
    views = {n: await cluster.wait_state(n, "READY", timeout=60) for n in MEMBERS}
    yield views


def hostport(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def call_ids_owned_by(owner: str, count: int) -> list[str]:
    found = []
    while len(found) < count:
        call_id = uuid.uuid4().hex
        if choose(call_id, MEMBERS) == owner:
            found.append(call_id)
    return found


class Phone:
    def __init__(self, transport, inbox: Udp) -> None:
        self.transport, self.inbox = transport, inbox
        self.port = transport.get_extra_info("sockname")[1]

    @classmethod
    async def open(cls) -> Phone:
        transport, inbox = await asyncio.get_running_loop().create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
        return cls(transport, inbox)

    def options(self, call_id: str) -> bytes:
        return (f"OPTIONS sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{self.port};rport;branch=z9hG4bK{uuid.uuid4().hex}\r\n"
                f"From: <sip:x@{DOMAIN}>;tag=1\r\nTo: <sip:{DOMAIN}>\r\nCall-ID: {call_id}\r\n"
                f"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()

    def register(self, call_id: str, cseq: int, auth: str = "") -> bytes:
        return (f"REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{self.port};rport;branch=z9hG4bK{uuid.uuid4().hex}\r\n"
                f"From: <sip:alice@{DOMAIN}>;tag=t1\r\nTo: <sip:alice@{DOMAIN}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\n"
                f"Contact: <sip:alice@127.0.0.1:{self.port}>\r\nExpires: 300\r\n{auth}Content-Length: 0\r\n\r\n").encode()

    async def ask(self, member: tuple[str, int], data: bytes, timeout: float = 10.0):
        """Send ``data`` until answered, as a phone retransmits (T1 = 0.5 s)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            self.transport.sendto(data, member)
            try:
                return parse_message(await asyncio.wait_for(self.inbox.queue.get(), 0.5))
            except TimeoutError:
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(f"no answer from {member} within {timeout}s") from None

    def close(self) -> None:
        self.transport.close()


async def relay_ready(cluster, asker: str = "sipfarm-1", owner: str = "sipfarm-2") -> None:
    """Member 1 hands over only once it has seen member 2 (and its inner listener) in the
    nodes bucket; until then it answers itself.  Probed with OPTIONS owned by member 2."""
    view = await cluster.view()
    phone = await Phone.open()
    try:
        async def relayed() -> bool:
            before = await asyncio.to_thread(metric, view[asker].addresses, "colony_sip_relays_total")
            await phone.ask(hostport(view[asker].addresses["sip"]), phone.options(call_ids_owned_by(owner, 1)[0]))
            return await asyncio.to_thread(metric, view[asker].addresses, "colony_sip_relays_total") > before
        await wait_until(relayed, 30, f"{asker} to hand work over to {owner}", interval=0.2)
    finally:
        phone.close()


async def test_a_register_at_the_wrong_member_is_handed_over_by_udp_not_the_bus(pair, cluster):
    views = pair
    for n in MEMBERS:     # the inner listener is in the node record, as every listener
        assert hostport(views[n].addresses["sip_inner"])[1] > 0
    await relay_ready(cluster)
    nc = await cluster.client()
    spread: list[str] = []

    async def seen(msg) -> None:
        spread.append(msg.subject)
    sub = await nc.subscribe("colony.sip.spread.*", cb=seen)
    member1 = hostport(views["sipfarm-1"].addresses["sip"])
    ops1, ops2 = views["sipfarm-1"].addresses, views["sipfarm-2"].addresses
    relays_before = await asyncio.to_thread(metric, ops1, "colony_sip_relays_total")
    phone = await Phone.open()
    try:
        call_id = call_ids_owned_by("sipfarm-2", 1)[0]
        challenge = await phone.ask(member1, phone.register(call_id, 1))
        assert challenge.status == 401
        ok = await phone.ask(member1, phone.register(call_id, 2, digest_answer(challenge, "alice", "REGISTER",
                                                                              f"sip:{DOMAIN}", "Authorization")))
        assert ok.status == 200
    finally:
        phone.close()
    await nc.flush()
    assert spread == []      # not one hand-over on the bus
    assert await asyncio.to_thread(metric, ops1, "colony_sip_relays_total") >= relays_before + 2
    # The owner did the work: its registrar answered the 200 (member 1 only sent it).
    assert await asyncio.to_thread(metric, ops2, 'colony_sip_answers_total{code="200",method="REGISTER"}') >= 1
    assert await asyncio.to_thread(metric, ops1, 'colony_sip_answers_total{code="200",method="REGISTER"}') == 0
    await sub.unsubscribe()


async def test_a_forged_frame_gets_no_answer_and_is_counted(pair, cluster):
    views = pair
    inner = hostport(views["sipfarm-2"].addresses["sip_inner"])
    phone = await Phone.open()
    try:
        # A well-formed frame, sent to member 2, with a MAC under a key we guessed.
        from colony_sipfarm.inner_frames import RelayKey, seal_packet
        from colony_sipfarm.spread_frames import SpreadPacket

        packet = SpreadPacket(phone.options(uuid.uuid4().hex), ("UDP", "127.0.0.1", phone.port), "sipfarm-1",
                              ("127.0.0.1", phone.port))
        forged = seal_packet(RelayKey.from_secret(b"guess" * 8), packet, "sipfarm-2", "sipfarm-1", ("127.0.0.1", phone.port))
        # A frame signed with the farm's own key (the test may read the secret, as the
        # operator), but for another member: a replay from elsewhere, refused all the same.
        import base64
        from colony.bus import names

        kv = await (await cluster.client()).jetstream().key_value(names.BUCKET_SIP_BINDINGS)
        secret = base64.b64decode((await kv.get(names.SIP_NONCE_SECRET_KEY)).value)
        misaddressed = seal_packet(RelayKey.from_secret(secret), packet, "sipfarm-1", "sipfarm-1",
                                   ("127.0.0.1", phone.port))
        for data in (forged, misaddressed, b"CIR1 garbage", b"\x00" * 100):
            phone.transport.sendto(data, inner)

        async def counted() -> float:
            return await asyncio.to_thread(metric, views["sipfarm-2"].addresses, 'colony_sip_dropped_total{reason="inner')
        await wait_until(counted, 10, "the forged frames counted")
        for reason in ("bad mac", "misaddressed", "foreign"):
            await wait_until(lambda: asyncio.to_thread(metric, views["sipfarm-2"].addresses,
                                                       f'colony_sip_dropped_total{{reason="inner {reason}"}}'),
                             10, f"a datagram dropped as {reason}")
        # ... and nothing came back, to the address in the frame or anywhere: the phone's
        # socket is where every answer would have gone.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(phone.inbox.queue.get(), 1.0)
    finally:
        phone.close()
    assert cluster.nodes["sipfarm-2"].process.poll() is None


async def test_a_killed_owner_is_passed_over_at_the_next_packet(pair, cluster):
    """Its heartbeat is fresh for 30 s more; the ICMP port-unreachable its dead port sends back
    has the next hand-over refused, and member 1 handles the packet itself."""
    views = pair
    await relay_ready(cluster)
    member1 = hostport(views["sipfarm-1"].addresses["sip"])
    cluster.nodes["sipfarm-2"].signal(signal.SIGKILL)
    await asyncio.to_thread(cluster.nodes["sipfarm-2"].process.wait, 10)
    phone = await Phone.open()
    started = asyncio.get_running_loop().time()
    try:
        answer = await phone.ask(member1, phone.options(call_ids_owned_by("sipfarm-2", 1)[0]), timeout=5)
        assert answer.status == 200
    finally:
        phone.close()
    took = asyncio.get_running_loop().time() - started
    assert took < 5      # well before node_ttl (30 s) could have taken member 2 out
    assert "inner relay refused" in cluster.nodes["sipfarm-1"].log()


async def test_a_reinvites_failure_reaching_the_other_member_is_acked_by_the_one_that_routed_it(pair, cluster):
    """The member that routed a re-INVITE kept what the ACK of its failure is made from
    (RFC 3261 §17.1.1.3); an answer that reaches another member -- a callee on a connection
    that member holds, or behind a balancer -- is handed to it, not to the Call-ID's owner."""
    views = pair
    await relay_ready(cluster)
    await relay_ready(cluster, "sipfarm-2", "sipfarm-1")
    member1, member2 = (hostport(views[n].addresses["sip"]) for n in MEMBERS)
    call_id = call_ids_owned_by("sipfarm-2", 1)[0]
    desk, desk_in, desk_port = await register_udp(member1, "bob")
    alice, alice_in = await invite_bob(member1, call_id)
    alice_port = alice.get_extra_info("sockname")[1]
    try:
        invite, _ = await next_message(desk_in, "INVITE")
        desk.sendto(answer(invite, 200, "OK", tag="desk"), member1)
        ok, _ = await next_message(alice_in, 200)
        route = ok.headers.get("Record-Route")

        def alices(method: str, cseq: int, branch: str) -> bytes:
            return (f"{method} sip:bob@127.0.0.1:{desk_port} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP 127.0.0.1:{alice_port};rport;branch=z9hG4bK{branch}\r\nRoute: {route}\r\n"
                    f"From: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: <sip:bob@{DOMAIN}>;tag=desk\r\n"
                    f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContact: <sip:alice@127.0.0.1:{alice_port}>\r\n"
                    "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
        alice.sendto(alices("ACK", 2, "ack2"), member1)
        await next_message(desk_in, "ACK")
        alice.sendto(alices("INVITE", 3, "re3"), member1)            # routed by member 1
        reinvite, _ = await next_message(desk_in, "INVITE")
        desk.sendto(in_dialog_answer(reinvite, 488, "Not Acceptable Here"), member2)
        ack, _ = await next_message(desk_in, "ACK")
        assert ack.top_via().branch == reinvite.top_via().branch and ack.cseq().number == 3
        await next_message(alice_in, 488)
    finally:
        alice.close()
        desk.close()
