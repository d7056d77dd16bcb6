"""A UDP caller's copies of a MESSAGE through the farm, with the callee's phone on a TCP
connection another member holds: each copy is absorbed by the Call-ID owner's server
transaction and, once the callee answered, gets that answer -- the callee's phone sees one
MESSAGE.  The answer arrives on the connection at the other member; our Via names the member
that forwarded the request (``o``), so it is sent on to the owner.  Before, such copies went
down the TCP connection again, where the phone's transaction had ended with its answer
(RFC 3261 §17.2.2: no Timer J over TCP) and it showed the message twice.  Two real members on a
real bus; the phones are Python sockets speaking SIP text on 127.0.0.1."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from test_ringing_member_death import MEMBERS, Caller, a_call_id_owned_by, answered, sip_address, tcp_phone_at
from test_sipfarm import DOMAIN, digest_answer, read_sip, serve_credentials

pytestmark = pytest.mark.slow


@pytest.fixture
async def pair(cluster):
    await serve_credentials(await cluster.client())
    for node_id in MEMBERS:
        cluster.start("sipfarm", node_id, COLONY_SIP_PORT="0", COLONY_OUTBOUND_SMTP_PORT="25")
    yield {n: await cluster.wait_state(n, "READY", timeout=60) for n in MEMBERS}


def message(caller: Caller, call_id: str, cseq: int, branch: str, auth: str = "") -> bytes:
    return (f"MESSAGE sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{caller.port};branch={branch}\r\n"
            f"From: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: <sip:bob@{DOMAIN}>\r\nCall-ID: {call_id}\r\n"
            f"CSeq: {cseq} MESSAGE\r\nMax-Forwards: 70\r\n{auth}Content-Type: text/plain\r\n"
            "Content-Length: 5\r\n\r\nhello").encode()


async def test_copies_of_a_message_to_a_phone_on_another_members_connection_reach_it_once(pair):
    member_1, member_2 = sip_address(pair["sipfarm-1"]), sip_address(pair["sipfarm-2"])
    reader, writer = await tcp_phone_at(member_1, "bob")
    alice = await Caller.open(member_2)
    try:
        call_id = a_call_id_owned_by("sipfarm-2")
        alice.transport.sendto(message(alice, call_id, 1, f"z9hG4bK{uuid.uuid4().hex}"), member_2)
        challenge = await alice.receive()
        assert challenge.status == 407
        auth = digest_answer(challenge, "alice", "MESSAGE", f"sip:bob@{DOMAIN}", "Proxy-Authorization")
        request = message(alice, call_id, 2, f"z9hG4bK{uuid.uuid4().hex}", auth)
        alice.transport.sendto(request, member_2)
        delivered = await read_sip(reader)                     # on bob's connection, via member 1
        assert delivered.method == "MESSAGE" and delivered.body == b"hello"
        alice.transport.sendto(request, member_2)              # Timer E: a copy before bob answers
        writer.write(answered(delivered, 200, "OK"))
        assert (await alice.receive()).status == 200
        alice.transport.sendto(request, member_2)              # a copy that crossed the answer
        assert (await alice.receive()).status == 200            # the owner's transaction says it again
        with pytest.raises(TimeoutError):                      # and bob's phone saw the MESSAGE once
            extra = await asyncio.wait_for(read_sip(reader), 3)
            raise AssertionError(f"bob got {extra.method} again")
    finally:
        alice.close()
        writer.close()
