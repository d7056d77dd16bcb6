"""The farm's own client transactions for requests it forwards over UDP: a phone that loses
the first copy of an INVITE still gets the call, one that never answers gives the caller 408.
Real member process, real bus, real UDP sockets on 127.0.0.1 (the phones are Python sockets
speaking SIP text, so the test controls which packet is lost)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from colony.protocols.sip.parser import parse_message
from test_sipfarm import DOMAIN, Udp, digest_answer, free_udp_port, serve_credentials

pytestmark = pytest.mark.slow

T1 = 0.1     # so an unanswered branch fails after 64*T1 = 6.4 s


@pytest.fixture
async def member(cluster):
    nc = await cluster.client()
    await serve_credentials(nc)
    cluster.start("sipfarm", "sipfarm-1", COLONY_SIP_PORT="0", COLONY_OUTBOUND_SMTP_PORT="25",
                  COLONY_SIP_TIMER_T1=str(T1))
    view = await cluster.wait_state("sipfarm-1", "READY", timeout=60)
    host, _, port = view.addresses["sip"].rpartition(":")
    yield host, int(port)


async def receive(queue: asyncio.Queue, timeout: float = 10.0):
    return parse_message(await asyncio.wait_for(queue.get(), timeout))


async def udp_phone():
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
    return transport, proto.queue, transport.get_extra_info("sockname")[1]


async def register_udp(member, user: str) -> tuple:
    """A UDP phone registers ``user`` with digest authentication; returns its socket."""
    transport, queue, port = await udp_phone()

    def register(cseq: int, auth: str = "") -> bytes:
        return (f"REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
                f"From: <sip:{user}@{DOMAIN}>;tag=r{port}\r\nTo: <sip:{user}@{DOMAIN}>\r\nCall-ID: reg-{port}\r\n"
                f"CSeq: {cseq} REGISTER\r\nContact: <sip:{user}@127.0.0.1:{port}>\r\nExpires: 300\r\n{auth}"
                "Content-Length: 0\r\n\r\n").encode()
    transport.sendto(register(1), member)
    challenge = await receive(queue)
    assert challenge.status == 401
    transport.sendto(register(2, digest_answer(challenge, user, "REGISTER", f"sip:{DOMAIN}", "Authorization")), member)
    assert (await receive(queue)).status == 200
    return transport, queue, port


async def invite_bob(member, call_id: str) -> tuple:
    """alice (a UDP socket) sends an authenticated INVITE for bob; returns her socket."""
    transport, queue, port = await udp_phone()

    def invite(cseq: int, auth: str = "") -> bytes:
        return (f"INVITE sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
                f"From: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: <sip:bob@{DOMAIN}>\r\nCall-ID: {call_id}\r\n"
                f"CSeq: {cseq} INVITE\r\nContact: <sip:alice@127.0.0.1:{port}>\r\nMax-Forwards: 70\r\n{auth}"
                "Content-Length: 0\r\n\r\n").encode()
    transport.sendto(invite(1), member)
    challenge = await receive(queue)
    assert challenge.status == 407
    transport.sendto(invite(2, digest_answer(challenge, "alice", "INVITE", f"sip:bob@{DOMAIN}", "Proxy-Authorization")),
                     member)
    assert (await receive(queue)).status == 100       # the farm took it over (§16.2): alice stops retransmitting
    return transport, queue


def answer(request, status: int, reason: str, tag: str = "bob1") -> bytes:
    headers = [f"Via: {v}" for v in request.headers.get_all("Via")]
    headers += [f"Record-Route: {r}" for r in request.headers.get_all("Record-Route")]
    headers += [f"From: {request.headers.get('From')}", f"To: {request.headers.get('To')};tag={tag}",
                f"Call-ID: {request.call_id}", f"CSeq: {request.headers.get('CSeq')}"]
    return (f"SIP/2.0 {status} {reason}\r\n" + "\r\n".join(headers) + "\r\nContent-Length: 0\r\n\r\n").encode()


async def test_a_phone_that_loses_the_first_invite_still_gets_the_call(member):
    bob, bob_in, _ = await register_udp(member, "bob")
    alice, alice_in = await invite_bob(member, "lost-first-copy")
    try:
        first = await receive(bob_in)
        assert first.method == "INVITE"                      # lost: bob does not answer it
        again = await receive(bob_in, timeout=5 * T1 + 5)    # the farm sends it again (Timer A)
        assert again.method == "INVITE" and again.top_via().branch == first.top_via().branch
        bob.sendto(answer(again, 180, "Ringing"), member)
        assert (await receive(alice_in)).status == 180
        bob.sendto(answer(again, 200, "OK"), member)
        ok = await receive(alice_in)
        assert ok.status == 200 and ok.call_id == "lost-first-copy"
        # Ringing stopped the retransmissions: nothing but copies sent before the 180 came.
        while not bob_in.empty():
            assert parse_message(bob_in.get_nowait()).method == "INVITE"
    finally:
        alice.close()
        bob.close()


async def test_a_phone_that_never_answers_gives_the_caller_408(member):
    bob, bob_in, _ = await register_udp(member, "bob")
    alice, alice_in = await invite_bob(member, "never-answered")
    try:
        copies = 0
        timed_out = asyncio.ensure_future(receive(alice_in, timeout=64 * T1 + 20))
        while not timed_out.done():
            try:
                got = await receive(bob_in, timeout=0.5)
            except TimeoutError:
                continue
            assert got.method == "INVITE"                    # copies only: nobody ACKs a 408 bob never sent
            copies += 1
        response = timed_out.result()
        assert response.status == 408 and response.call_id == "never-answered"
        assert copies >= 5                                   # 0, T1, 3 T1, 7 T1, 15 T1, 31 T1, ... within 64 T1
    finally:
        alice.close()
        bob.close()
