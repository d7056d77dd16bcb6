"""The farm's Record-Route names it on the transport each party uses (RFC 5658 §3.1,
double Record-Routing): a dialog's requests of a phone on TLS go to a TLS listener, of one on
TCP over TCP.  One URI naming the SIP port without a transport had them sent as UDP
datagrams (RFC 3263 §4.1): a TLS phone's ACK, BYE and re-INVITE -- its digest answer, its
SDP -- in the clear (baresip did so in tests/integration/sipfarm/test_softphones.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from colony.bus import names
from colony.protocols.sip.parser import parse_message
from colony.protocols.sip.uri import parse_address
from colony.settings import Settings

from colony_sipfarm.farm import SipFarm
from test_farm import DOMAIN, ME, Auth, Clock, Counters, Dialogs, Store, answer, invite, register, reply

LISTENERS = {
    names.node_key("sipfarm-1"): {"sip": "127.0.0.1:5060", "sip_tls": "127.0.0.1:5061"},
    names.node_key("sipfarm-2"): {"sip": "127.0.0.2:5060", "sip_tls": "127.0.0.2:5061"},
}
CALLER_TLS = ("TLS", "198.51.100.9", 40001)      # the caller's connection
CALLEE_UDP = ("UDP", "192.0.2.7", 5062)


def farm() -> SipFarm:
    return SipFarm(Settings(), "sipfarm-1", store=Store(Clock()), dialogs=Dialogs(), auth=Auth(), counters=Counters(),
                   secret=b"k" * 32, address=ME, registry=CollectorRegistry(), meter=lambda c: None,
                   listeners=lambda member: LISTENERS.get(member, {}))


async def register_bob(f: SipFarm, source, flow_member: str | None = None) -> None:
    via = f"SIP/2.0/{source[0]} {source[1]}:{source[2]}"

    def message(cseq: int, auth: str = "") -> bytes:
        return register("bob", f"sip:bob@{source[1]}:{source[2]}", cseq=cseq, auth=auth).replace(
            b"SIP/2.0/UDP 192.0.2.7:5062", via.encode())
    [challenge] = await f.handle(message(1), source, flow_member=flow_member)
    [ok] = await f.handle(message(2, answer(parse_message(challenge.data), "bob")), source, flow_member=flow_member)
    assert parse_message(ok.data).status == 200


async def call(f: SipFarm, caller) -> tuple:
    """alice's INVITE from ``caller``, authenticated: the INVITE as forwarded and where to."""
    def message(**kw) -> bytes:
        return invite(**kw).replace(b"SIP/2.0/UDP 198.51.100.9:5060", f"SIP/2.0/{caller[0]} 198.51.100.9:5060".encode())
    [challenge] = await f.handle(message(), caller)
    auth = answer(parse_message(challenge.data), "alice", method="INVITE", uri=f"sip:bob@{DOMAIN}",
                  header="Proxy-Authorization")
    trying, out = await f.handle(message(cseq=2, auth=auth, branch="z9hG4bKinv2"), caller)
    assert parse_message(trying.data).status == 100
    return parse_message(out.data), out


def in_dialog(method: str, target: str, sender: str, routes: list[str], cseq: int, transport: str) -> bytes:
    tags = (f"<sip:alice@{DOMAIN}>;tag=a1", f"<sip:bob@{DOMAIN}>;tag=b1")
    frm, to = tags if sender == "alice" else tags[::-1]
    return (f"{method} {target} SIP/2.0\r\nVia: SIP/2.0/{transport} 10.9.9.9:5060;branch=z9hG4bK{method}{cseq}\r\n"
            + "".join(f"Route: {r}\r\n" for r in routes)
            + f"From: {frm}\r\nTo: {to}\r\nCall-ID: call-1\r\nCSeq: {cseq} {method}\r\n"
              f"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


async def test_a_tls_caller_and_a_udp_callee_each_get_the_farm_on_their_own_transport():
    f = farm()
    await register_bob(f, CALLEE_UDP)
    forwarded, out = await call(f, CALLER_TLS)
    assert out.destination == CALLEE_UDP
    callee_facing, caller_facing = forwarded.headers.get_all("Record-Route")
    assert callee_facing.startswith("<sip:127.0.0.1:5060;lr;cf=sipfarm-1;")           # UDP, as before
    assert caller_facing.startswith("<sip:127.0.0.1:5061;transport=tls;lr;cf=sipfarm-1;")
    # One dialog, signed alike: the same parameters after the address.
    assert callee_facing.partition(";lr")[2] == caller_facing.partition(";lr")[2]

    # The 200 goes back to the caller on its connection with both (it reverses them).
    ok = reply(forwarded, 200, "b1").replace(
        b"Content-Length", b"".join(b"Record-Route: %s\r\n" % r.encode() for r in (callee_facing, caller_facing))
        + b"Content-Length")
    [passed] = await f.handle(ok, CALLEE_UDP)
    assert passed.destination == CALLER_TLS
    assert parse_message(passed.data).headers.get_all("Record-Route") == [callee_facing, caller_facing]
    caller_route = [caller_facing, callee_facing]
    assert parse_address(caller_route[0]).uri.transport == "tls"       # where the caller's BYE goes

    # The caller's BYE (routes reversed) reaches the callee with neither Route left.
    [bye] = await f.handle(in_dialog("BYE", "sip:bob@192.0.2.7:5062", "alice", caller_route, 3, "TLS"), CALLER_TLS)
    sent = parse_message(bye.data)
    assert sent.method == "BYE" and bye.destination == CALLEE_UDP and "Route" not in sent.headers
    # The callee's request (routes in order) reaches the caller on its connection.
    _, reinvite = await f.handle(in_dialog("INVITE", "sip:alice@198.51.100.9:5060", "bob", [callee_facing, caller_facing],
                                           4, "UDP"), CALLEE_UDP)
    assert reinvite.destination == CALLER_TLS and "Route" not in parse_message(reinvite.data).headers


async def test_tcp_parties_get_one_record_route_with_transport_tcp_and_tls_the_flow_members_listener():
    f = farm()
    await register_bob(f, ("TCP", "192.0.2.7", 40002))
    forwarded, _ = await call(f, ("TCP", "198.51.100.9", 40003))
    [route] = forwarded.headers.get_all("Record-Route")
    assert route.startswith("<sip:127.0.0.1:5060;transport=tcp;lr;cf=sipfarm-1;")

    # A TLS callee whose connection member 2 holds is given member 2's TLS listener, which
    # its connection goes to; the UDP caller the member the INVITE reached.
    f = farm()
    await register_bob(f, ("TLS", "192.0.2.7", 40004), flow_member="sipfarm-2")
    forwarded, out = await call(f, ("UDP", "198.51.100.9", 5060))
    assert out.member == names.node_key("sipfarm-2")
    callee_facing, caller_facing = forwarded.headers.get_all("Record-Route")
    assert callee_facing.startswith("<sip:127.0.0.2:5061;transport=tls;lr;cf=sipfarm-1;")
    assert caller_facing.startswith("<sip:127.0.0.1:5060;lr;cf=sipfarm-1;")


async def test_without_a_tls_listener_known_the_record_route_is_the_sip_address():
    """A member whose record names no TLS listener (a previous version's): the old form."""
    f = SipFarm(Settings(), "sipfarm-1", store=Store(Clock()), dialogs=Dialogs(), auth=Auth(), counters=Counters(),
                secret=b"k" * 32, address=ME, registry=CollectorRegistry(), meter=lambda c: None)
    await register_bob(f, CALLEE_UDP)
    forwarded, _ = await call(f, CALLER_TLS)
    [route] = forwarded.headers.get_all("Record-Route")
    assert route.startswith("<sip:127.0.0.1:5060;lr;cf=sipfarm-1;")


async def test_an_ipv6_tls_listener_is_bracketed():
    f = SipFarm(Settings(), "sipfarm-1", store=Store(Clock()), dialogs=Dialogs(), auth=Auth(), counters=Counters(),
                secret=b"k" * 32, address=ME, registry=CollectorRegistry(), meter=lambda c: None,
                listeners=lambda member: {"sip": "2001:db8::1:5060", "sip_tls": "2001:db8::1:5061"})
    await register_bob(f, CALLEE_UDP)
    forwarded, _ = await call(f, CALLER_TLS)
    caller_facing = forwarded.headers.get_all("Record-Route")[1]
    assert caller_facing.startswith("<sip:[2001:db8::1]:5061;transport=tls;lr;")
    assert parse_address(caller_facing).uri.host.strip("[]") == "2001:db8::1"
