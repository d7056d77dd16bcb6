"""sip_contact_deny_networks on the wire: a real member refuses a REGISTER whose contact it
would reach in a denied network (403 with a Warning), and carries no in-dialog request
there -- the inner service listening in that network hears nothing.  The tests' phones are
on loopback, which the production default refuses outright: one member runs with that
default, another with the harness's relaxed list plus 127.0.0.2 as the "inner network"."""

from __future__ import annotations

import asyncio
import socket
import uuid

from colony.protocols.sip.parser import parse_message
from colony.settings import SIP_CONTACT_DENY_DEFAULT, SIP_CONTACT_DENY_LOOPBACK_SERVED

from signed_routes import signed_route
from test_scanners import member
from test_sipfarm import DOMAIN, Udp, digest_answer, udp_exchange

INNER = "127.0.0.2"      # stands in for the provider's inner network (all of 127/8 is loopback)


def register(phone_port: int, contact: str, cseq: int = 1, auth: str = "", call_id: str = "", rport: bool = False) -> bytes:
    return (f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{phone_port}{';rport' if rport else ''};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:alice@{DOMAIN}>;tag=r1\r\nTo: <sip:alice@{DOMAIN}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nContact: {contact}\r\nExpires: 300\r\n"
            f"{auth}Content-Length: 0\r\n\r\n").encode()


async def register_from_phone(farm: tuple[str, int], contact: str, rport: bool = False):
    """A REGISTER with digest from one phone socket (its Via names the port it sends from)."""
    loop = asyncio.get_running_loop()
    transport, phone = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
    port, call_id = transport.get_extra_info("sockname")[1], uuid.uuid4().hex
    try:
        transport.sendto(register(port, contact, call_id=call_id, rport=rport), farm)
        challenge = parse_message(await asyncio.wait_for(phone.queue.get(), 10))
        assert challenge.status == 401, challenge.status
        auth = digest_answer(challenge, "alice", "REGISTER", f"sip:{DOMAIN}", "Authorization")
        transport.sendto(register(port, contact, cseq=2, auth=auth, call_id=call_id, rport=rport), farm)
        return parse_message(await asyncio.wait_for(phone.queue.get(), 10))
    finally:
        transport.close()


def inner_service() -> socket.socket:
    """A UDP service in the 'inner network' that must hear nothing from the farm."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((INNER, 0))
    sock.setblocking(False)
    return sock


def heard(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(65536))
        except BlockingIOError:
            return out


async def test_the_production_default_refuses_a_loopback_contact(cluster):
    farm = await member(cluster, "sipfarm-1", COLONY_SIP_CONTACT_DENY_NETWORKS=SIP_CONTACT_DENY_DEFAULT)
    refused = await register_from_phone(farm, "<sip:alice@127.0.0.1:5432>")
    assert refused.status == 403, refused.status
    code, _, text = refused.headers.get("Warning").split(" ", 2)
    assert code == "399" and "does not send to" in text


async def test_a_contact_in_the_inner_network_is_refused_and_the_inner_service_hears_nothing(cluster):
    farm = await member(cluster, "sipfarm-1",
                        COLONY_SIP_CONTACT_DENY_NETWORKS=f"{SIP_CONTACT_DENY_LOOPBACK_SERVED}, {INNER}/32")
    service = inner_service()
    try:
        target = f"{INNER}:{service.getsockname()[1]}"
        refused = await register_from_phone(farm, f"<sip:alice@{target}>")
        assert refused.status == 403 and refused.headers.get("Warning").startswith("399 ")
        # The same phone with its own address registers; behind NAT (rport) the address its
        # packets come from is what counts, whatever its Contact says.
        assert (await register_from_phone(farm, "<sip:alice@127.0.0.1:5062>")).status == 200
        assert (await register_from_phone(farm, f"<sip:alice@{target}>", rport=True)).status == 200
        # An in-dialog request aimed at the inner service -- by a party of a dialog the farm
        # record-routed (its Route signed), or by a stranger (404, test_route_signatures.py):
        # never forwarded.
        for transport in ("", ";transport=tcp"):
            call_id = uuid.uuid4().hex
            for route, status in ((await signed_route(cluster, farm, call_id, "m1"), 403),
                                  (f"<sip:{farm[0]}:{farm[1]};lr;cf=sipfarm-1>", 404)):
                bye = (f"BYE sip:x@{target}{transport} SIP/2.0\r\n"
                       f"Via: SIP/2.0/UDP 127.0.0.1:9;rport;branch=z9hG4bK{uuid.uuid4().hex}\r\n"
                       f"Route: {route}\r\nMax-Forwards: 70\r\n"
                       f"From: <sip:mallory@{DOMAIN}>;tag=m1\r\nTo: <sip:x@{DOMAIN}>;tag=x1\r\n"
                       f"Call-ID: {call_id}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n").encode()
                answer = await udp_exchange(farm, bye)
                assert answer is not None and parse_message(answer).status == status
        await asyncio.sleep(0.5)    # anything the farm had sent would be there by now
        assert heard(service) == []
    finally:
        service.close()


async def test_without_the_inner_network_in_the_list_the_same_bye_reaches_it(cluster):
    # The control: the inner service does hear what the farm forwards when nothing denies it,
    # so the silence above is the rule's, not a test that could not have heard anything.
    farm = await member(cluster, "sipfarm-1", COLONY_SIP_CONTACT_DENY_NETWORKS=SIP_CONTACT_DENY_LOOPBACK_SERVED)
    service = inner_service()
    try:
        target = f"{INNER}:{service.getsockname()[1]}"
        call_id = uuid.uuid4().hex       # a dialog's party: its Route is signed
        bye = (f"BYE sip:x@{target} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;rport;branch=z9hG4bK{uuid.uuid4().hex}\r\n"
               f"Route: {await signed_route(cluster, farm, call_id, 'm1')}\r\nMax-Forwards: 70\r\n"
               f"From: <sip:mallory@{DOMAIN}>;tag=m1\r\nTo: <sip:x@{DOMAIN}>;tag=x1\r\n"
               f"Call-ID: {call_id}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n").encode()
        await udp_exchange(farm, bye, timeout=0.5)
        got: list[bytes] = []
        for _ in range(100):
            got += heard(service)
            if got:
                break
            await asyncio.sleep(0.05)
        assert got and got[0].startswith(b"BYE sip:x@")
    finally:
        service.close()
