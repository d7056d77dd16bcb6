"""A call ringing on a phone whose TCP connection member 1 holds, forked by member 2, ends
when member 1 is SIGKILLed -- not after Timer C (200 s): member 2 fails the branch as if it
had answered 430 Flow Failed once member 1 is gone, and the caller hears the best answer when
every branch has one (480 for a lone lost branch; a device still ringing elsewhere can still
answer).  Two real members on a real bus; the phones are Python sockets speaking SIP text on
127.0.0.1, so the test controls who answers what."""

from __future__ import annotations

import asyncio
import re
import signal
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from cluster_harness import wait_until
from colony.bus import names
from colony.hashing import choose
from colony.protocols.sip.parser import parse_message
from test_proxy_retransmission import register_udp
from test_sipfarm import DOMAIN, Udp, digest_answer, read_sip, serve_credentials
from test_transports import TlsPhone, register

pytestmark = pytest.mark.slow

MEMBERS = ["sipfarm-1", "sipfarm-2"]
FINAL_WITHIN = 60.0     # Timer C would be 200 s; how soon is not what is asserted


@pytest.fixture
async def pair(cluster):
    await serve_credentials(await cluster.client())
    for node_id in MEMBERS:
        cluster.start("sipfarm", node_id, COLONY_SIP_PORT="0", COLONY_OUTBOUND_SMTP_PORT="25")
    views = {n: await cluster.wait_state(n, "READY", timeout=60) for n in MEMBERS}
    yield views


def sip_address(view) -> tuple[str, int]:
    host, _, port = view.addresses["sip"].rpartition(":")
    return host, int(port)


def a_call_id_owned_by(owner: str) -> str:
    """The Call-ID's owner forks the INVITE and keeps its branches (rendezvous hashing over the
    READY members, as the farm spreads new work)."""
    while choose(call_id := uuid.uuid4().hex, MEMBERS) != owner:
        pass
    return call_id


def responses_proxied(view, code: int) -> float:
    """colony_sip_responses_total{method="INVITE",code=...} at the member of ``view``."""
    text = urllib.request.urlopen(f"http://{view.addresses['ops']}/metrics", timeout=10).read().decode()
    pattern = re.compile(r'^colony_sip_responses_total\{[^}]*\} (\S+)$')
    return sum(float(m.group(1)) for line in text.splitlines()
               if (m := pattern.match(line)) and 'method="INVITE"' in line and f'code="{code}"' in line)


async def tcp_phone_at(member: tuple[str, int], user: str):
    """``user``'s phone on a TCP connection to ``member``, registered; its reader and writer."""
    reader, writer = await asyncio.open_connection(*member)
    phone = TlsPhone(reader, writer)        # SIP over a stream; no TLS here
    await register(phone, "TCP", user, f"127.0.0.1:{phone.port}", f"sip:{user}@127.0.0.1:{phone.port};transport=tcp")
    return reader, writer


class Caller:
    """alice on UDP, calling bob through ``member``."""

    def __init__(self, transport, inbox: Udp, member: tuple[str, int]) -> None:
        self.transport, self.inbox, self.member = transport, inbox, member
        self.port = transport.get_extra_info("sockname")[1]

    @classmethod
    async def open(cls, member: tuple[str, int]) -> Caller:
        transport, inbox = await asyncio.get_running_loop().create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
        return cls(transport, inbox, member)

    def invite(self, call_id: str, cseq: int, auth: str = "") -> bytes:
        return (f"INVITE sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{call_id[:8]}{cseq}\r\n"
                f"From: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: <sip:bob@{DOMAIN}>\r\nCall-ID: {call_id}\r\n"
                f"CSeq: {cseq} INVITE\r\nContact: <sip:alice@127.0.0.1:{self.port}>\r\nMax-Forwards: 70\r\n{auth}"
                "Content-Length: 0\r\n\r\n").encode()

    async def receive(self, timeout: float = 10.0):
        return parse_message(await asyncio.wait_for(self.inbox.queue.get(), timeout))

    async def call(self, call_id: str) -> None:
        self.transport.sendto(self.invite(call_id, 1), self.member)
        challenge = await self.receive()
        assert challenge.status == 407
        auth = digest_answer(challenge, "alice", "INVITE", f"sip:bob@{DOMAIN}", "Proxy-Authorization")
        self.transport.sendto(self.invite(call_id, 2, auth), self.member)
        assert (await self.receive()).status == 100           # the farm took it over (§16.2)

    async def final(self, timeout: float):
        """The first final answer (provisionals and copies before it skipped)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"no final answer within {timeout} s")
            try:
                answer = await self.receive(left)
            except TimeoutError:
                continue
            if answer.status >= 200:
                return answer

    def close(self) -> None:
        self.transport.close()


def ringing(request) -> bytes:
    return answered(request, 180, "Ringing")


def answered(request, status: int, reason: str) -> bytes:
    headers = [f"Via: {v}" for v in request.headers.get_all("Via")]
    headers += [f"From: {request.headers.get('From')}", f"To: {request.headers.get('To')};tag=b{status}",
                f"Call-ID: {request.call_id}", f"CSeq: {request.headers.get('CSeq')}"]
    return (f"SIP/2.0 {status} {reason}\r\n" + "\r\n".join(headers) + "\r\nContent-Length: 0\r\n\r\n").encode()


async def kill(cluster, node_id: str) -> None:
    cluster.nodes[node_id].signal(signal.SIGKILL)
    await asyncio.to_thread(cluster.nodes[node_id].process.wait, 10)


async def test_a_call_ringing_on_a_phone_whose_member_dies_gets_its_final_answer_well_before_timer_c(pair, cluster):
    member_1, member_2 = sip_address(pair["sipfarm-1"]), sip_address(pair["sipfarm-2"])
    reader, writer = await tcp_phone_at(member_1, "bob")
    alice = await Caller.open(member_2)
    try:
        await alice.call(call_id := a_call_id_owned_by("sipfarm-2"))
        invite = await read_sip(reader)           # relayed to member 1, on bob's connection
        assert invite.method == "INVITE" and invite.call_id == call_id
        writer.write(ringing(invite))
        assert (await alice.receive()).status == 180
        await kill(cluster, "sipfarm-1")          # bob's connection goes with it, while he rings
        final = await alice.final(FINAL_WITHIN)
        # The lost branch's 430 is said between proxies (RFC 5626 §11.5): alice hears 480.
        assert final.status == 480 and final.call_id == call_id, final
    finally:
        alice.close()
        writer.close()


async def stale(cluster, node_id: str) -> None:
    """Until ``node_id``'s heartbeat is older than node_ttl (3 s) and a sweep of the others."""
    async def probe():
        beat = datetime.fromisoformat((await cluster.view())[node_id].heartbeat_at)
        return datetime.now(timezone.utc) - beat > timedelta(seconds=4)
    await wait_until(probe, 30, f"{node_id}'s heartbeat to go stale")


async def test_a_call_ringing_on_a_phone_whose_member_is_only_paused_is_not_failed_and_can_be_answered(pair, cluster):
    """As above, but member 1 is SIGSTOPped past node_ttl, then resumes, bob's connection
    intact: its heartbeat went stale exactly as after a SIGKILL, but its inner listener is still
    bound (no ICMP port-unreachable), so bob's branch is not failed -- failed, alice heard 480
    for a call bob then picked up.  Member 1 resumes; bob answers, alice hears his 200."""
    member_1, member_2 = sip_address(pair["sipfarm-1"]), sip_address(pair["sipfarm-2"])
    reader, writer = await tcp_phone_at(member_1, "bob")
    alice = await Caller.open(member_2)
    node = cluster.nodes["sipfarm-1"]
    try:
        await alice.call(call_id := a_call_id_owned_by("sipfarm-2"))
        invite = await read_sip(reader)
        writer.write(ringing(invite))
        assert (await alice.receive()).status == 180
        node.signal(signal.SIGSTOP)
        try:
            await stale(cluster, "sipfarm-1")
            with pytest.raises(TimeoutError):       # member 2 sweeps every second: three of them
                extra = await alice.receive(3)
                raise AssertionError(f"alice got {extra}")
        finally:
            node.signal(signal.SIGCONT)
        writer.write(answered(invite, 200, "OK"))
        final = await alice.final(FINAL_WITHIN)
        assert final.status == 200 and final.call_id == call_id, final
    finally:
        alice.close()
        writer.close()


async def test_a_device_still_ringing_elsewhere_answers_and_the_caller_hears_the_best_answer(pair, cluster):
    member_1, member_2 = sip_address(pair["sipfarm-1"]), sip_address(pair["sipfarm-2"])
    reader, writer = await tcp_phone_at(member_1, "bob")
    desk, desk_in, _ = await register_udp(member_2, "bob")
    alice = await Caller.open(member_2)
    lost_before = await asyncio.to_thread(responses_proxied, pair["sipfarm-2"], 430)
    try:
        await alice.call(call_id := a_call_id_owned_by("sipfarm-2"))
        on_tcp = await read_sip(reader)
        on_desk = parse_message(await asyncio.wait_for(desk_in.get(), 10))
        assert on_tcp.method == on_desk.method == "INVITE"
        writer.write(ringing(on_tcp))
        desk.sendto(ringing(on_desk), member_2)
        await kill(cluster, "sipfarm-1")

        async def branch_failed() -> bool:
            return await asyncio.to_thread(responses_proxied, pair["sipfarm-2"], 430) > lost_before
        await wait_until(branch_failed, FINAL_WITHIN, "member 2 to fail the branch lost with member 1", interval=0.5)
        # The desk phone rings on: alice has heard no final answer.
        while not alice.inbox.queue.empty():
            assert parse_message(alice.inbox.queue.get_nowait()).status < 200
        desk.sendto(answered(on_desk, 486, "Busy Here"), member_2)
        # Every branch has its answer now: the best goes to alice at once (486 over a lost flow).
        final = await alice.final(FINAL_WITHIN)
        assert final.status == 486 and final.call_id == call_id, final
    finally:
        alice.close()
        desk.close()
        writer.close()


async def test_a_member_restarted_before_its_heartbeat_goes_stale_ends_the_calls_ringing_through_it(cluster):
    """Member 1 is SIGKILLed and started again at once under its name (as a supervisor does),
    with a node_ttl longer than the deadline: its record never looks stale, but the new
    process's record (a new start time) tells member 2 that bob's connection died with the
    old one."""
    await serve_credentials(await cluster.client())
    slow_ttl = {"COLONY_SIP_PORT": "0", "COLONY_OUTBOUND_SMTP_PORT": "25", "COLONY_NODE_TTL": "300"}
    for node_id in MEMBERS:
        cluster.start("sipfarm", node_id, **slow_ttl)
    views = {n: await cluster.wait_state(n, "READY", timeout=60) for n in MEMBERS}
    reader, writer = await tcp_phone_at(sip_address(views["sipfarm-1"]), "bob")
    alice = await Caller.open(sip_address(views["sipfarm-2"]))
    try:
        await alice.call(call_id := a_call_id_owned_by("sipfarm-2"))
        invite = await read_sip(reader)
        writer.write(ringing(invite))
        assert (await alice.receive()).status == 180
        await kill(cluster, "sipfarm-1")
        cluster.start("sipfarm", "sipfarm-1", **slow_ttl)
        final = await alice.final(FINAL_WITHIN)
        assert final.status == 480 and final.call_id == call_id, final
    finally:
        alice.close()
        writer.close()


@pytest.mark.parametrize("forked_by", ["sipfarm-1", "sipfarm-2"], ids=["forked-where-the-flow-is", "relayed-to-the-flow"])
async def test_a_phone_that_closes_its_connection_while_ringing_gives_the_caller_480_at_once(pair, forked_by):
    """bob's phone rings, then closes its TCP connection (hung up by the app, a browser tab
    closed, a NAT binding gone): nothing will answer on that flow any more.  The member
    holding it fails the INVITE with 430 Flow Failed (RFC 5626 §5.3) as the connection
    closes, whichever member forked the call, and alice hears 480 at once, not Timer C's 408
    minutes later.  Both members live."""
    member_1, member_2 = sip_address(pair["sipfarm-1"]), sip_address(pair["sipfarm-2"])
    reader, writer = await tcp_phone_at(member_1, "bob")
    alice = await Caller.open(member_2)
    try:
        await alice.call(call_id := a_call_id_owned_by(forked_by))
        invite = await read_sip(reader)
        assert invite.method == "INVITE" and invite.call_id == call_id
        writer.write(ringing(invite))
        assert (await alice.receive()).status == 180
        writer.close()                            # bob's phone is gone, the members are not
        final = await alice.final(FINAL_WITHIN)
        assert final.status == 480 and final.call_id == call_id, final
    finally:
        alice.close()
        writer.close()


class SipStream:
    """The messages a phone reads from its connection, in order (one framer for all)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        from colony.protocols.sip.parser import StreamFramer

        self.reader, self.framer = reader, StreamFramer()

    async def next(self, timeout: float):
        deadline = asyncio.get_running_loop().time() + timeout
        while (data := self.framer.next_message()) is None:
            chunk = await asyncio.wait_for(self.reader.read(65536), max(0.01, deadline - asyncio.get_running_loop().time()))
            assert chunk, "connection closed"
            self.framer.feed(chunk)
        return parse_message(data)


async def test_a_call_whose_forking_member_dies_while_ringing_is_cancelled_and_the_caller_hears_480(pair, cluster):
    """Member 2 forked alice's call (her Call-ID is its own) to bob's phone, whose TCP
    connection member 1 holds, and dies while bob rings.  The fork died with it: nobody could
    gather bob's answer or cancel his ringing, and alice heard no final answer from the farm.
    Member 1, seeing member 2 gone, CANCELs the INVITE on bob's connection (§9.1), ACKs his
    487 itself, and alice hears 480 -- with a To tag, as every final answer carries, and her
    ACK of it ends at the farm (bob never sees it)."""
    member_1 = sip_address(pair["sipfarm-1"])
    reader, writer = await tcp_phone_at(member_1, "bob")
    bob = SipStream(reader)
    alice = await Caller.open(member_1)       # her packets reach member 1, which hands them to member 2
    try:
        await alice.call(call_id := a_call_id_owned_by("sipfarm-2"))
        invite = await bob.next(10)
        assert invite.method == "INVITE" and invite.call_id == call_id
        writer.write(ringing(invite))
        assert (await alice.receive()).status == 180
        await kill(cluster, "sipfarm-2")

        cancel = await bob.next(FINAL_WITHIN)
        assert cancel.method == "CANCEL" and cancel.call_id == call_id, cancel
        assert cancel.top_via().branch == invite.top_via().branch and cancel.cseq().number == invite.cseq().number
        assert str(cancel.uri) == str(invite.uri)
        final = await alice.final(FINAL_WITHIN)
        assert final.status == 480 and final.call_id == call_id, final
        to_tag = final.address("To").tag
        assert to_tag, final
        alice.transport.sendto((
            f"ACK sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{alice.port};branch=z9hG4bK{call_id[:8]}2\r\n"
            f"From: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: <sip:bob@{DOMAIN}>;tag={to_tag}\r\nCall-ID: {call_id}\r\n"
            "CSeq: 2 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode(), member_1)

        writer.write(answered(cancel, 200, "OK"))
        writer.write(answered(invite, 487, "Request Terminated"))
        ack = await bob.next(10)
        # The hop-by-hop ACK of his 487 (§17.1.1.3): the INVITE's branch and CSeq number, his To tag.
        assert ack.method == "ACK" and ack.call_id == call_id, ack
        assert ack.top_via().branch == invite.top_via().branch and ack.cseq().number == invite.cseq().number
        assert ack.address("To").tag == "b487"
        # Nothing else reaches bob (alice's ACK ended at the farm), nor alice (his 487 ended at member 1).
        with pytest.raises(TimeoutError):
            extra = await bob.next(2)
            raise AssertionError(f"bob got {extra}")
        while not alice.inbox.queue.empty():
            late = parse_message(alice.inbox.queue.get_nowait())
            assert late.status == 480, late      # a copy of hers at most
    finally:
        alice.close()
        writer.close()


async def test_a_udp_phone_ringing_for_a_call_whose_forking_member_died_is_cancelled_and_the_caller_hears_480(pair, cluster):
    """The same over UDP: alice's and bob's packets reach member 1, which hands alice's INVITE to
    member 2 (her Call-ID's owner) and puts member 2's fork on the wire to bob, running its
    client transaction.  Member 2 dies while bob rings: member 1 CANCELs bob's INVITE, ACKs his
    487 (each copy), and alice hears 480."""
    member_1 = sip_address(pair["sipfarm-1"])
    bob, bob_in, alice, invite, call_id = await ringing_udp_call(member_1, member_1, "sipfarm-2")
    try:
        await kill(cluster, "sipfarm-2")
        cancel = await next_request(bob_in, "CANCEL", ("INVITE",))    # (a copy before his 180 came)
        assert cancel.call_id == call_id and cancel.top_via().branch == invite.top_via().branch
        await cancelled_with_480(bob, bob_in, alice, invite, cancel, member_1, ("INVITE",))
    finally:
        alice.close()
        bob.close()


async def ringing_udp_call(register_at: tuple[str, int], call_at: tuple[str, int], owner: str):
    """bob's UDP phone, registered through ``register_at``, rings for alice's call through
    ``call_at`` whose Call-ID ``owner`` owns: (bob, his inbox, alice, the INVITE, the Call-ID)."""
    bob, bob_in, _ = await register_udp(register_at, "bob")
    alice = await Caller.open(call_at)
    try:
        await alice.call(call_id := a_call_id_owned_by(owner))
        invite = parse_message(await asyncio.wait_for(bob_in.get(), 10))
        assert invite.method == "INVITE" and invite.call_id == call_id
        bob.sendto(ringing(invite), register_at)
        assert (await alice.receive()).status == 180
    except BaseException:
        alice.close()
        bob.close()
        raise
    return bob, bob_in, alice, invite, call_id


async def next_request(bob_in: asyncio.Queue, method: str, copies: tuple[str, ...]):
    """The next ``method`` request bob's phone gets; before it only copies of ``copies``."""
    while True:
        message = parse_message(await asyncio.wait_for(bob_in.get(), FINAL_WITHIN))
        if getattr(message, "method", None) == method:
            return message
        assert getattr(message, "method", None) in copies, message


async def cancelled_with_480(bob, bob_in, alice: Caller, invite, cancel, member: tuple[str, int],
                             copies: tuple[str, ...]) -> None:
    """After bob's CANCEL: alice hears 480 (tagged), bob's 487 and its copy (Timer G) sent to
    ``member`` are each ACKed, and nothing but the 480 reaches alice."""
    final = await alice.final(FINAL_WITHIN)
    assert final.status == 480 and final.call_id == invite.call_id and final.address("To").tag, final
    bob.sendto(answered(cancel, 200, "OK"), member)
    for _ in range(2):
        bob.sendto(answered(invite, 487, "Request Terminated"), member)
        ack = await next_request(bob_in, "ACK", copies)
        assert ack.top_via().branch == invite.top_via().branch and ack.address("To").tag == "b487"
    await asyncio.sleep(1)
    while not alice.inbox.queue.empty():
        late = parse_message(alice.inbox.queue.get_nowait())
        assert late.status == 480, late      # his 487 went no further


async def test_a_udp_phone_the_dead_forker_sent_the_invite_to_itself_is_cancelled_by_the_next_owner(pair, cluster):
    """alice and bob talk to member 2 itself, which owns alice's Call-ID: it forks her INVITE and
    puts it on the wire to bob from its own socket -- nobody else took part, so nobody else knew
    where it went.  It entrusts the INVITE's makings to the Call-ID's next owner, member 1 (one
    inner-relay datagram), which, seeing member 2 gone, CANCELs bob's INVITE from its own socket
    under that INVITE's Via (§9.1: bob matches by branch and sent-by), and alice hears 480.  His
    487 goes where that Via says -- member 2's address here, with the members behind one shared
    address a live member: sent to member 1 as such, it is ACKed (each copy) and goes no further."""
    member_1, member_2 = sip_address(pair["sipfarm-1"]), sip_address(pair["sipfarm-2"])
    bob, bob_in, alice, invite, call_id = await ringing_udp_call(member_2, member_2, "sipfarm-2")
    try:
        assert invite.top_via().params.get("m") == names.node_key("sipfarm-2")     # member 2 sent it itself
        await kill(cluster, "sipfarm-2")
        cancel = await next_request(bob_in, "CANCEL", ("INVITE", "CANCEL"))      # (copies)
        assert cancel.call_id == call_id and cancel.headers.get_all("Via") == [invite.headers.get("Via")]
        assert str(cancel.uri) == str(invite.uri) and cancel.cseq().number == invite.cseq().number
        await cancelled_with_480(bob, bob_in, alice, invite, cancel, member_1, ("INVITE", "CANCEL"))
    finally:
        alice.close()
        bob.close()


async def test_a_udp_phone_ringing_for_a_forker_that_is_only_paused_is_not_cancelled_and_can_answer(pair, cluster):
    """As above, but member 2 is SIGSTOPped while bob rings, past node_ttl, then resumes.  Member 1
    sees its heartbeat go stale exactly as after a SIGKILL -- but its inner listener is still
    bound (no ICMP port-unreachable comes back), so bob's INVITE is not cancelled: cancelled, his
    phone stopped ringing for a call whose forker came back, and an answer just before the
    CANCEL connected him to a caller who had heard 480.  Member 2 resumes; bob answers, alice
    hears his 200."""
    member_2 = sip_address(pair["sipfarm-2"])
    node = cluster.nodes["sipfarm-2"]
    bob, bob_in, alice, invite, call_id = await ringing_udp_call(member_2, member_2, "sipfarm-2")
    try:
        assert invite.top_via().params.get("m") == names.node_key("sipfarm-2")
        node.signal(signal.SIGSTOP)
        try:
            await stale(cluster, "sipfarm-2")
            # Member 1 sweeps every second: three of them, and nothing reaches bob.
            with pytest.raises(TimeoutError):
                extra = parse_message(await asyncio.wait_for(bob_in.get(), 3))
                raise AssertionError(f"bob got {extra}")
        finally:
            node.signal(signal.SIGCONT)
        bob.sendto(answered(invite, 200, "OK"), member_2)
        final = await alice.final(FINAL_WITHIN)
        assert final.status == 200 and final.call_id == call_id, final
    finally:
        alice.close()
        bob.close()
