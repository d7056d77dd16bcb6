"""Signed Record-Routes on the wire: two real members on a real bus, phones as UDP sockets.
A stranger who writes the farm's Record-Route into a Route (unsigned, with a made-up MAC,
or a real dialog's Route on a Call-ID of its own) gets 404 and the service it aimed at
hears nothing; the real dialog's requests pass from either side, through the member that
did not record-route it.  The service is the control: it hears what a party of the dialog
aims at it, so its silence towards the stranger is the rule's."""

from __future__ import annotations

import asyncio
import uuid

from colony.protocols.sip.parser import parse_message
from colony.settings import SIP_CONTACT_DENY_LOOPBACK_SERVED

from cluster_harness import wait_until
from test_contact_networks import heard, inner_service
from test_scanners import member
from test_sipfarm import DOMAIN, Udp, digest_answer, udp_exchange


async def next_request(queue: asyncio.Queue, method: str):
    """The next ``method`` request a phone socket got (copies and other traffic skipped)."""
    while True:
        message = parse_message(await asyncio.wait_for(queue.get(), 10))
        if getattr(message, "method", None) == method:
            return message


async def next_response(queue: asyncio.Queue, status: int):
    while True:
        message = parse_message(await asyncio.wait_for(queue.get(), 10))
        if getattr(message, "status", None) == status:
            return message


def answer_to(request, status: int, tag: str, extra: str = "") -> bytes:
    head = [f"Via: {v}" for v in request.headers.get_all("Via")]
    head += [f"{n}: {request.headers.get(n)}" for n in ("From", "Call-ID", "CSeq")]
    head.append(f"To: {request.headers.get('To')};tag={tag}")
    return (f"SIP/2.0 {status} OK\r\n" + "\r\n".join(head) + f"\r\n{extra}Content-Length: 0\r\n\r\n").encode()


def in_dialog(method: str, target: str, route: str, via_port: int, call_id: str, from_tag: str, to_tag: str,
              sender: str = "alice", receiver: str = "bob", cseq: int = 3) -> bytes:
    return (f"{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{via_port};rport;branch=z9hG4bK{uuid.uuid4().hex}\r\n"
            f"Route: {route}\r\nMax-Forwards: 70\r\nFrom: <sip:{sender}@{DOMAIN}>;tag={from_tag}\r\n"
            f"To: <sip:{receiver}@{DOMAIN}>;tag={to_tag}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


async def test_a_forged_route_relays_nothing_and_a_real_dialog_passes_on_any_member(cluster):
    networks = {"COLONY_SIP_CONTACT_DENY_NETWORKS": SIP_CONTACT_DENY_LOOPBACK_SERVED}   # 127.0.0.2 is not denied
    first = await member(cluster, "sipfarm-1", **networks)
    second = await member(cluster, "sipfarm-2", **networks)
    loop = asyncio.get_running_loop()
    bob, bob_in = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
    alice, alice_in = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
    service = inner_service()
    try:
        bob_port, alice_port = bob.get_extra_info("sockname")[1], alice.get_extra_info("sockname")[1]
        target = f"sip:x@127.0.0.2:{service.getsockname()[1]}"
        # bob registers through member 1.
        reg_call = uuid.uuid4().hex

        def register(cseq: int, auth: str = "") -> bytes:
            return (f"REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{bob_port};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
                    f"Max-Forwards: 70\r\nFrom: <sip:bob@{DOMAIN}>;tag=r1\r\nTo: <sip:bob@{DOMAIN}>\r\n"
                    f"Call-ID: {reg_call}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:bob@127.0.0.1:{bob_port}>\r\n"
                    f"Expires: 300\r\n{auth}Content-Length: 0\r\n\r\n").encode()
        bob.sendto(register(1), first)
        challenge = await next_response(bob_in.queue, 401)
        bob.sendto(register(2, digest_answer(challenge, "bob", "REGISTER", f"sip:{DOMAIN}", "Authorization")), first)
        await next_response(bob_in.queue, 200)

        # alice calls bob through member 1 (407, then with credentials); bob answers.
        call_id = uuid.uuid4().hex

        def invite(cseq: int, auth: str = "") -> bytes:
            return (f"INVITE sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{alice_port};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
                    f"Max-Forwards: 70\r\nFrom: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: <sip:bob@{DOMAIN}>\r\n"
                    f"Call-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\nContact: <sip:alice@127.0.0.1:{alice_port}>\r\n"
                    f"{auth}Content-Length: 0\r\n\r\n").encode()
        alice.sendto(invite(1), first)
        challenge = await next_response(alice_in.queue, 407)
        alice.sendto(invite(2, digest_answer(challenge, "alice", "INVITE", f"sip:bob@{DOMAIN}", "Proxy-Authorization")),
                     first)
        ringing = await next_request(bob_in.queue, "INVITE")
        route = ringing.headers.get("Record-Route")
        assert ";dm=" in route
        bob.sendto(answer_to(ringing, 200, "b1", f"Record-Route: {route}\r\nContact: <sip:bob@127.0.0.1:{bob_port}>\r\n"),
                   first)
        assert (await next_response(alice_in.queue, 200)).call_id == call_id

        # A stranger aims "in-dialog" requests at the service: unsigned, a made-up MAC, and
        # the real Route on a Call-ID of its own.  Each gets 404 from either member.
        unsigned = f"<sip:{first[0]}:{first[1]};lr;cf=sipfarm-1>"
        made_up = f"<sip:{first[0]}:{first[1]};lr;cf=sipfarm-1;dm={'ab' * 12}>"
        for forged in (unsigned, made_up, route):
            for at in (first, second):
                for method in ("BYE", "MESSAGE"):
                    request = in_dialog(method, target, forged, 9, uuid.uuid4().hex, "m1", "x1", sender="mallory",
                                        receiver="x")
                    refusal = await udp_exchange(at, request)
                    assert refusal is not None and parse_message(refusal).status == 404, (forged, at, method)

        # alice, a party of the dialog, aims an INFO at the service through member 2: it
        # arrives (the control), and it is all the service ever heard.
        alice.sendto(in_dialog("INFO", target, route, alice_port, call_id, "a1", "b1"), second)
        got: list[bytes] = []

        async def service_heard() -> bool:
            got.extend(heard(service))
            return bool(got)
        await wait_until(service_heard, timeout=10, what="the dialog's INFO at the service")
        assert all(parse_message(g).method == "INFO" and parse_message(g).call_id == call_id for g in got), got

        # bob hangs up through member 2: his BYE carries the tags swapped.
        bob.sendto(in_dialog("BYE", f"sip:alice@127.0.0.1:{alice_port}", route, bob_port, call_id, "b1", "a1",
                             sender="bob", receiver="alice", cseq=1), second)
        bye = await next_request(alice_in.queue, "BYE")
        assert bye.call_id == call_id and "Route" not in bye.headers
    finally:
        service.close()
        bob.close()
        alice.close()


def strict_routed(method: str, route: str, target: str, via_port: int, call_id: str, from_tag: str, to_tag: str,
                  sender: str = "alice", receiver: str = "bob", cseq: int = 3) -> bytes:
    """An in-dialog request as a strict router (RFC 2543, ignoring lr) sends it (§12.2.1.1):
    the first route's URI as the Request-URI, the remote target as the last Route."""
    uri = route.strip("<>")
    return in_dialog(method, uri, f"<{target}>", via_port, call_id, from_tag, to_tag, sender, receiver, cseq)


async def test_a_strict_routing_phones_requests_reach_the_other_party_and_a_forged_one_does_not(cluster):
    """RFC 3261 §16.4: a Request-URI that is our (signed) Record-Route came from a strict
    router; the farm takes the remote target from the last Route and routes the request on."""
    farm = await member(cluster, "sipfarm-1")
    loop = asyncio.get_running_loop()
    bob, bob_in = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
    alice, alice_in = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
    try:
        bob_port, alice_port = bob.get_extra_info("sockname")[1], alice.get_extra_info("sockname")[1]
        reg_call = uuid.uuid4().hex

        def register(cseq: int, auth: str = "") -> bytes:
            return (f"REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{bob_port};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
                    f"Max-Forwards: 70\r\nFrom: <sip:bob@{DOMAIN}>;tag=r1\r\nTo: <sip:bob@{DOMAIN}>\r\n"
                    f"Call-ID: {reg_call}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:bob@127.0.0.1:{bob_port}>\r\n"
                    f"Expires: 300\r\n{auth}Content-Length: 0\r\n\r\n").encode()
        bob.sendto(register(1), farm)
        challenge = await next_response(bob_in.queue, 401)
        bob.sendto(register(2, digest_answer(challenge, "bob", "REGISTER", f"sip:{DOMAIN}", "Authorization")), farm)
        await next_response(bob_in.queue, 200)
        call_id = uuid.uuid4().hex

        def invite(cseq: int, auth: str = "") -> bytes:
            return (f"INVITE sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{alice_port};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
                    f"Max-Forwards: 70\r\nFrom: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: <sip:bob@{DOMAIN}>\r\n"
                    f"Call-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\nContact: <sip:alice@127.0.0.1:{alice_port}>\r\n"
                    f"{auth}Content-Length: 0\r\n\r\n").encode()
        alice.sendto(invite(1), farm)
        challenge = await next_response(alice_in.queue, 407)
        alice.sendto(invite(2, digest_answer(challenge, "alice", "INVITE", f"sip:bob@{DOMAIN}", "Proxy-Authorization")),
                     farm)
        ringing = await next_request(bob_in.queue, "INVITE")
        route = ringing.headers.get("Record-Route")
        bob.sendto(answer_to(ringing, 200, "b1", f"Record-Route: {route}\r\nContact: <sip:bob@127.0.0.1:{bob_port}>\r\n"),
                   farm)
        await next_response(alice_in.queue, 200)

        # A forged MAC in the Request-URI: refused as on a Route, bob hears nothing of it.
        forged = route.split(";dm=")[0] + ";dm=" + "ab" * 12 + ">"
        alice.sendto(strict_routed("INFO", forged, f"sip:bob@127.0.0.1:{bob_port}", alice_port, call_id, "a1", "b1"),
                     farm)
        assert (await next_response(alice_in.queue, 404)).call_id == call_id
        # alice's strict-routed INFO reaches bob, addressed to him again.
        alice.sendto(strict_routed("INFO", route, f"sip:bob@127.0.0.1:{bob_port}", alice_port, call_id, "a1", "b1",
                                   cseq=4), farm)
        info = await next_request(bob_in.queue, "INFO")
        assert str(info.uri) == f"sip:bob@127.0.0.1:{bob_port}" and "Route" not in info.headers
        assert info.cseq().number == 4                       # not the forged one (CSeq 3)
        # bob, a strict router too, hangs up.
        bob.sendto(strict_routed("BYE", route, f"sip:alice@127.0.0.1:{alice_port}", bob_port, call_id, "b1", "a1",
                                 sender="bob", receiver="alice", cseq=1), farm)
        bye = await next_request(alice_in.queue, "BYE")
        assert bye.call_id == call_id and str(bye.uri) == f"sip:alice@127.0.0.1:{alice_port}"
    finally:
        bob.close()
        alice.close()
