"""``sip_record_route_host`` with a port, and ``sip_record_route_tls_port``, on a real farm
member: a balancer on non-default ports, its TLS listener on another port than UDP and TCP.
A call from a phone on TLS to a phone on UDP is Record-Routed twice (RFC 5658), each entry
naming the configured name with the port and transport of its party -- the TLS caller is
given the TLS port, so its in-dialog requests go to the balancer's TLS listener, not to the
member's own address (which it may not reach) nor to a port that speaks no TLS.  The caller's
BYE, sent on its TLS connection with that Route as a balancer would hand it in, ends the call
at the callee."""

from __future__ import annotations

import asyncio
import ssl
import uuid

import pytest

from colony.protocols.sip.parser import parse_message
from colony.protocols.sip.uri import parse_address
from colony.tlsfiles import ensure_local_ca
from test_sipfarm import DOMAIN, Udp, bindings, digest_answer, serve_credentials
from test_transports import TlsPhone, answer, hostport, register

pytestmark = pytest.mark.slow

NAME = "sip.balancer.test"
UDP_TCP_PORT, TLS_PORT = 13080, 13081        # the balancer's: written, never listened on here


class UdpPhone:
    """``register``'s phone over UDP: sends to the member, receives what comes back."""

    def __init__(self, transport, protocol, member: tuple[str, int]) -> None:
        self.transport, self.protocol, self.member = transport, protocol, member
        self.port = transport.get_extra_info("sockname")[1]

    def send(self, data: bytes) -> None:
        self.transport.sendto(data, self.member)

    async def receive(self, timeout: float = 10.0):
        return parse_message(await asyncio.wait_for(self.protocol.queue.get(), timeout))


@pytest.fixture
async def member(cluster, tmp_path):
    nc = await cluster.client()
    await serve_credentials(nc)
    tls = ensure_local_ca(tmp_path / "tls", ["127.0.0.1"])
    cluster.start("sipfarm", "sipfarm-1", COLONY_SIP_PORT="0", COLONY_OUTBOUND_SMTP_PORT="25",
                  COLONY_TLS_CERT_FILE=str(tls.cert), COLONY_TLS_KEY_FILE=str(tls.key),
                  COLONY_SIP_RECORD_ROUTE_HOST=f"{NAME}:{UDP_TCP_PORT}", COLONY_SIP_RECORD_ROUTE_TLS_PORT=str(TLS_PORT))
    view = await cluster.wait_state("sipfarm-1", "READY", timeout=60)
    yield view.addresses, ssl.create_default_context(cafile=str(tls.ca))


def hop(route: str) -> tuple[str, int | None, str | None]:
    uri = parse_address(route).uri
    return uri.host, uri.port, uri.transport


async def test_a_call_from_a_tls_phone_is_record_routed_to_the_name_and_tls_port(member, cluster):
    addresses, context = member
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
    bob = UdpPhone(transport, protocol, hostport(addresses["sip"]))
    bob_contact = f"sip:bob@127.0.0.1:{bob.port}"
    reader, writer = await asyncio.open_connection(*hostport(addresses["sip_tls"]), ssl=context,
                                                   server_hostname="127.0.0.1")
    alice = TlsPhone(reader, writer)
    try:
        await register(bob, "UDP", "bob", f"127.0.0.1:{bob.port}", bob_contact)
        assert [b["transport"] for b in await bindings(cluster, "bob")] == ["UDP"]

        def invite(cseq: int, auth: str = "") -> bytes:
            return (f"INVITE sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:{alice.port};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
                    f"From: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: <sip:bob@{DOMAIN}>\r\nCall-ID: rr-port-call\r\n"
                    f"CSeq: {cseq} INVITE\r\nContact: <sip:alice@127.0.0.1:{alice.port};transport=tls>\r\n"
                    f"Max-Forwards: 70\r\n{auth}Content-Length: 0\r\n\r\n").encode()
        alice.send(invite(1))
        challenge = await alice.receive()
        assert challenge.status == 407
        alice.send(invite(2, digest_answer(challenge, "alice", "INVITE", f"sip:bob@{DOMAIN}", "Proxy-Authorization")))
        assert (await alice.receive()).status == 100

        got = await bob.receive()
        assert got.method == "INVITE" and got.call_id == "rr-port-call"
        # RFC 5658 double Record-Route, the callee's (bob, UDP) on top, the caller's (alice, TLS) below.
        routes = got.headers.get_all("Record-Route")
        assert [hop(r) for r in routes] == [(NAME, UDP_TCP_PORT, "udp"), (NAME, TLS_PORT, "tls")], routes
        bob.send(answer(got, 200, "OK", contact=bob_contact))
        ok = await alice.receive()
        assert ok.status == 200
        # alice's route set is the Record-Route reversed (RFC 3261 §12.1.2): her first hop is the TLS port.
        route_set = ok.headers.get_all("Record-Route")[::-1]
        assert hop(route_set[0]) == (NAME, TLS_PORT, "tls"), route_set

        # The balancer hands her BYE to the member on its TLS connection; the member routes it by the Route.
        alice.send((f"BYE {bob_contact} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:{alice.port};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
                    + "".join(f"Route: {r}\r\n" for r in route_set)
                    + f"From: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: {ok.headers.get('To')}\r\nCall-ID: rr-port-call\r\n"
                      f"CSeq: 3 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode())
        bye = await bob.receive()
        assert bye.method == "BYE" and bye.call_id == "rr-port-call" and "Route" not in bye.headers
        bob.send(answer(bye, 200, "OK"))
        assert (await alice.receive()).status == 200
    finally:
        transport.close()
        writer.close()
