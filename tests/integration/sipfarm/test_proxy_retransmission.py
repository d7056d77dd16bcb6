"""The farm's own client transactions for requests it forwards over UDP: a phone that loses
the first copy of an INVITE still gets the call, one that never answers gives the caller 408,
a failed re-INVITE is ACKed at the device in the call (§17.1.1.3), not the user's first.
Real member process, real bus, real UDP sockets on 127.0.0.1 (the phones are Python sockets
speaking SIP text, so the test controls which packet is lost)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from colony.protocols.sip.parser import parse_message
from test_sipfarm import DOMAIN, Udp, digest_answer, serve_credentials

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


@pytest.fixture
async def patient_member(cluster):
    """A member whose own retransmissions come late (T1 = 4 s): a request the callee sees
    twice in these tests was forwarded twice, not sent again by the member's Timer A/E."""
    nc = await cluster.client()
    await serve_credentials(nc)
    cluster.start("sipfarm", "sipfarm-1", COLONY_SIP_PORT="0", COLONY_OUTBOUND_SMTP_PORT="25", COLONY_SIP_TIMER_T1="4")
    view = await cluster.wait_state("sipfarm-1", "READY", timeout=60)
    host, _, port = view.addresses["sip"].rpartition(":")
    yield host, int(port)


async def next_message(queue: asyncio.Queue, wanted, timeout: float = 10.0):
    """The next message ``wanted`` (a method or a status) takes, and the ones skipped before it."""
    skipped = []
    while True:
        message = await receive(queue, timeout)
        if getattr(message, "method", None) == wanted or getattr(message, "status", None) == wanted:
            return message, skipped
        skipped.append(message)


async def test_a_callers_copy_of_an_in_dialog_request_is_answered_by_the_farm_not_forwarded_again(patient_member):
    """RFC 3261 §17.2.3: a copy of a re-INVITE or UPDATE matches the transaction the farm
    forwarded; it gets that transaction's answer (§17.2.1, §17.2.2) and the callee hears the
    request once."""
    member = patient_member
    bob, bob_in, bob_port = await register_udp(member, "bob")
    alice, alice_in = await invite_bob(member, "copies-in-dialog")
    alice_port = alice.get_extra_info("sockname")[1]
    try:
        invite, _ = await next_message(bob_in, "INVITE")
        bob.sendto(answer(invite, 200, "OK"), member)
        ok, _ = await next_message(alice_in, 200)
        route = ok.headers.get("Record-Route")

        def in_dialog(method: str, cseq: int, branch: str) -> bytes:
            return (f"{method} sip:bob@127.0.0.1:{bob_port} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP 127.0.0.1:{alice_port};rport;branch=z9hG4bK{branch}\r\nRoute: {route}\r\n"
                    f"From: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: <sip:bob@{DOMAIN}>;tag=bob1\r\n"
                    f"Call-ID: copies-in-dialog\r\nCSeq: {cseq} {method}\r\nContact: <sip:alice@127.0.0.1:{alice_port}>\r\n"
                    "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
        alice.sendto(in_dialog("ACK", 2, "ack2"), member)
        await next_message(bob_in, "ACK")

        # A re-INVITE: 100 Trying at once; bob answers; alice's late copy goes nowhere.
        reinvite = in_dialog("INVITE", 3, "reinvite3")
        alice.sendto(reinvite, member)
        assert (await receive(alice_in)).status == 100
        forwarded, _ = await next_message(bob_in, "INVITE")
        bob.sendto(answer(forwarded, 200, "OK"), member)
        await next_message(alice_in, 200)
        alice.sendto(in_dialog("ACK", 3, "ack3"), member)
        await next_message(bob_in, "ACK")
        alice.sendto(reinvite, member)                               # the copy

        # An UPDATE: the next thing bob hears, not the re-INVITE again.
        update = in_dialog("UPDATE", 4, "update4")
        alice.sendto(update, member)
        forwarded, skipped = await next_message(bob_in, "UPDATE")
        assert [m.method for m in skipped] == []
        bob.sendto(answer(forwarded, 200, "OK"), member)
        await next_message(alice_in, 200)
        # Its copy is answered by the farm with bob's 200, and bob hears only the BYE after it.
        alice.sendto(update, member)
        again, _ = await next_message(alice_in, 200)
        assert again.cseq().method == "UPDATE" and again.call_id == "copies-in-dialog"
        alice.sendto(in_dialog("BYE", 5, "bye5"), member)
        _, skipped = await next_message(bob_in, "BYE")
        assert [m.method for m in skipped] == []
    finally:
        alice.close()
        bob.close()


def in_dialog_answer(request, status: int, reason: str) -> bytes:
    """A UAS's answer in its dialog: the To has the tag it already carries."""
    headers = [f"Via: {v}" for v in request.headers.get_all("Via")]
    headers += [f"From: {request.headers.get('From')}", f"To: {request.headers.get('To')}",
                f"Call-ID: {request.call_id}", f"CSeq: {request.headers.get('CSeq')}"]
    return (f"SIP/2.0 {status} {reason}\r\n" + "\r\n".join(headers) + "\r\nContent-Length: 0\r\n\r\n").encode()


async def test_a_failed_reinvite_is_acked_at_the_device_in_the_call_not_the_users_first(member):
    """The callee has two devices, and the one its registrations put first is not the one in
    the call: the farm's ACK of the re-INVITE's failure is built from the re-INVITE it sent and
    goes where that went, and the caller's ACK of the failure ends at the farm (§17.2.1)."""
    desk, desk_in, desk_port = await register_udp(member, "bob")
    mobile, mobile_in, _ = await register_udp(member, "bob")      # the newest: bob's first binding
    alice, alice_in = await invite_bob(member, "reinvite-fails")
    alice_port = alice.get_extra_info("sockname")[1]
    try:
        # Both ring; the desk answers, the mobile is cancelled (and its 487 ACKed by the farm).
        invite, _ = await next_message(desk_in, "INVITE")
        mobiles, _ = await next_message(mobile_in, "INVITE")
        desk.sendto(answer(invite, 200, "OK", tag="desk"), member)
        ok, _ = await next_message(alice_in, 200)
        cancel, _ = await next_message(mobile_in, "CANCEL")
        mobile.sendto(answer(cancel, 200, "OK", tag="mob"), member)
        mobile.sendto(answer(mobiles, 487, "Request Terminated", tag="mob"), member)
        await next_message(mobile_in, "ACK")
        route = ok.headers.get("Record-Route")

        def alices(method: str, cseq: int, branch: str) -> bytes:
            return (f"{method} sip:bob@127.0.0.1:{desk_port} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP 127.0.0.1:{alice_port};rport;branch=z9hG4bK{branch}\r\nRoute: {route}\r\n"
                    f"From: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: <sip:bob@{DOMAIN}>;tag=desk\r\n"
                    f"Call-ID: reinvite-fails\r\nCSeq: {cseq} {method}\r\nContact: <sip:alice@127.0.0.1:{alice_port}>\r\n"
                    "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
        alice.sendto(alices("ACK", 2, "ack2"), member)
        await next_message(desk_in, "ACK")

        # alice re-INVITEs (hold); the desk refuses the offer.
        alice.sendto(alices("INVITE", 3, "re3"), member)
        reinvite, _ = await next_message(desk_in, "INVITE")
        desk.sendto(in_dialog_answer(reinvite, 488, "Not Acceptable Here"), member)
        # The farm ACKs the 488 at the desk, from the re-INVITE it sent (§17.1.1.3).
        ack, skipped = await next_message(desk_in, "ACK")
        assert skipped == []
        assert ack.top_via().branch == reinvite.top_via().branch and ack.cseq().number == 3
        assert str(ack.uri) == str(reinvite.uri) and ack.headers.get("To").endswith("tag=desk")
        refused, _ = await next_message(alice_in, 488)
        # alice ACKs the 488 (her re-INVITE's branch): it ends at the farm, so the next thing
        # the desk hears is her BYE.
        alice.sendto(alices("ACK", 3, "re3"), member)
        alice.sendto(alices("BYE", 4, "bye4"), member)
        _, skipped = await next_message(desk_in, "BYE")
        assert [m.method for m in skipped] == []
        # The mobile, bob's first binding, heard nothing of the re-INVITE.
        while not mobile_in.empty():
            stray = await receive(mobile_in)
            assert stray.cseq().number != 3, stray.encode()
    finally:
        alice.close()
        desk.close()
        mobile.close()
