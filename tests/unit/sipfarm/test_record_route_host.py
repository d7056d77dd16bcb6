"""``sip_record_route_host``: the farm's Record-Route names its public name (the balancer's, or
a DNS name with SRV records for every member) instead of the member that routed the call, so
a dialog's later requests reach any live member (RFC 3263) and a call can be ended after that
member died.  The member's own address died with it (a real phone sent its BYE there), and in
compose named a container no phone can resolve.

Each party gets the name with its own transport: ``transport=udp`` too, since without one a
phone may take any transport the name's SRV records offer.  Without a port in the name the
phone finds the port by SRV; with one (a balancer on a non-default port) it is the UDP and
TCP port, and a TLS party gets ``sip_record_route_tls_port`` (the balancer's TLS listener),
so a TLS phone's in-dialog requests reach a port that speaks TLS.  A WebSocket party
keeps the member's address (a browser sends everything on its own connection).  The name is
the farm's own (a preloaded Route naming it is removed), and Routes stay signed: another
member routes the dialog's requests by the signature, never by the name."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from colony.bus import names
from colony.protocols.sip.parser import parse_message
from colony.protocols.sip.uri import parse_address
from colony.settings import Settings

from colony_sipfarm.farm import SipFarm
from test_farm import DOMAIN, ME, Auth, Clock, Counters, Dialogs, Store, answer, invite, reply
from test_record_route_transports import LISTENERS, call, in_dialog, register_bob

NAME = "sip.provider.example"
CALLER_UDP = ("UDP", "198.51.100.9", 5060)
CALLEE_UDP = ("UDP", "192.0.2.7", 5062)


def farm(node: str = "sipfarm-1", host: str = NAME, store: Store | None = None, dialogs: Dialogs | None = None,
         address: tuple[str, int] = ME, tls_port: int = 0) -> SipFarm:
    return SipFarm(Settings(sip_record_route_host=host, sip_record_route_tls_port=tls_port), node, store=store or Store(Clock()), dialogs=dialogs or Dialogs(),
                   auth=Auth(), counters=Counters(), secret=b"k" * 32, address=address, registry=CollectorRegistry(),
                   meter=lambda c: None, listeners=lambda member: LISTENERS.get(member, {}))


def uris(forwarded) -> list[str]:
    return [str(parse_address(r).uri) for r in forwarded.headers.get_all("Record-Route")]


async def test_udp_parties_get_the_public_name_with_transport_udp_and_no_port():
    f = farm()
    await register_bob(f, CALLEE_UDP)
    forwarded, out = await call(f, CALLER_UDP)
    assert out.destination == CALLEE_UDP
    [route] = forwarded.headers.get_all("Record-Route")
    assert route.startswith(f"<sip:{NAME};transport=udp;lr;cf=sipfarm-1;dm="), route
    uri = parse_address(route).uri
    assert uri.host == NAME and uri.port is None and uri.transport == "udp"     # RFC 3263: SRV _sip._udp


@pytest.mark.parametrize("caller, callee, expected", [
    (("TCP", "198.51.100.9", 40003), ("TCP", "192.0.2.7", 40002), [f"{NAME};transport=tcp"]),
    (("TLS", "198.51.100.9", 40003), ("TLS", "192.0.2.7", 40002), [f"{NAME};transport=tls"]),
    # Double Record-Routing, the callee's on top: each party its own transport (_sips._tcp for TLS).
    (("TLS", "198.51.100.9", 40003), ("UDP", "192.0.2.7", 5062), [f"{NAME};transport=udp", f"{NAME};transport=tls"]),
    (("UDP", "198.51.100.9", 5060), ("TCP", "192.0.2.7", 40002), [f"{NAME};transport=tcp", f"{NAME};transport=udp"]),
    # A browser sends every request on its WebSocket: it keeps the member's address.
    (("WS", "198.51.100.9", 40005), ("UDP", "192.0.2.7", 5062), [f"{NAME};transport=udp", f"{ME[0]}:{ME[1]}"]),
    (("UDP", "198.51.100.9", 5060), ("WSS", "192.0.2.7", 40006), [f"{ME[0]}:{ME[1]}", f"{NAME};transport=udp"]),
])
async def test_each_transport_gets_the_public_name_on_its_own_transport(caller, callee, expected):
    f = farm()
    await register_bob(f, callee)
    forwarded, out = await call(f, caller)
    assert out.destination == callee
    routes = forwarded.headers.get_all("Record-Route")
    assert [r.partition(";lr;")[0].removeprefix("<sip:") for r in routes] == expected, routes
    # Still signed, both alike: the flows (fc for a caller on a connection, fe for such a
    # callee) ride in the Route, so the member holding a phone's connection is still found.
    assert len({r.partition(";lr")[2] for r in routes}) == 1
    params = parse_address(routes[0]).uri.params
    assert params["cf"] == "sipfarm-1" and params["dm"]
    assert ("fc" in params) == (caller[0] != "UDP") and ("fe" in params) == (callee[0] != "UDP")


async def test_the_tls_callee_s_connection_is_still_reached_through_the_member_holding_it():
    """The name brings the dialog's requests to any member; the flow token (signed) still
    sends them out on the connection of the member that holds it."""
    f = farm()
    await register_bob(f, ("TLS", "192.0.2.7", 40004), flow_member="sipfarm-2")
    forwarded, out = await call(f, CALLER_UDP)
    assert out.member == names.node_key("sipfarm-2")
    callee_facing, caller_facing = forwarded.headers.get_all("Record-Route")
    assert callee_facing.startswith(f"<sip:{NAME};transport=tls;lr;cf=sipfarm-1;")
    assert caller_facing.startswith(f"<sip:{NAME};transport=udp;lr;cf=sipfarm-1;")
    caller_route = [caller_facing, callee_facing]
    # alice's BYE reaches member 3 (the one the name's SRV gave her): out on member 2's flow.
    other = farm("sipfarm-3", address=("127.0.0.3", 5060))
    [bye] = await other.handle(in_dialog("BYE", "sip:bob@192.0.2.7:40004;transport=tls", "alice", caller_route, 3, "UDP"),
                               CALLER_UDP)
    assert bye.member == names.node_key("sipfarm-2") and bye.destination == ("TLS", "192.0.2.7", 40004)
    assert "Route" not in parse_message(bye.data).headers


async def test_the_dialog_is_ended_through_another_member_by_either_party():
    """The member that routed the call is gone; the name brought both parties' BYEs to
    another, which routes them by the Route's signature and meters the call once."""
    store, dialogs = Store(Clock()), Dialogs()
    first = farm(store=store, dialogs=dialogs)
    await register_bob(first, CALLEE_UDP)
    forwarded, _ = await call(first, CALLER_UDP)
    [route] = forwarded.headers.get_all("Record-Route")
    ok = reply(forwarded, 200, "b1").replace(b"Content-Length", b"Record-Route: %s\r\nContent-Length" % route.encode())
    [passed] = await first.handle(ok, CALLEE_UDP)
    assert passed.destination == CALLER_UDP and dialogs.data       # the call's record

    second = farm("sipfarm-2", store=store, dialogs=dialogs, address=("127.0.0.2", 5060))
    # bob (the callee) hangs up: his BYE goes to alice's Contact.
    [bye] = await second.handle(in_dialog("BYE", "sip:alice@198.51.100.9:5060", "bob", [route], 3, "UDP"), CALLEE_UDP)
    sent = parse_message(bye.data)
    assert sent.method == "BYE" and bye.destination == CALLER_UDP and "Route" not in sent.headers
    assert sent.top_via().host == "127.0.0.2"            # the answer comes back to the member that sent it
    assert not dialogs.data                               # metered and ended by the BYE
    # alice's (the caller's) in-dialog request the same way, to bob's Contact.
    [info] = await second.handle(in_dialog("INFO", "sip:bob@192.0.2.7:5062", "alice", [route], 4, "UDP"), CALLER_UDP)
    assert parse_message(info.data).method == "INFO" and info.destination == CALLEE_UDP

    # The name is no pass: a Route naming it with another dialog's signature is refused.
    forged = route.replace("call-1", "x").replace(parse_address(route).uri.params["dm"], "0" * 24)
    [refused] = await second.handle(in_dialog("BYE", "sip:alice@198.51.100.9:5060", "bob", [forged], 5, "UDP"),
                                    CALLEE_UDP)
    assert parse_message(refused.data).status == 404 and refused.destination[1] == CALLEE_UDP[1]


async def test_a_strict_router_s_request_naming_the_public_name_is_routed():
    """RFC 3261 §16.4: our Record-Route (the name) as the Request-URI, the target last."""
    f = farm()
    await register_bob(f, CALLEE_UDP)
    forwarded, _ = await call(f, CALLER_UDP)
    [ours] = uris(forwarded)
    [bye] = await f.handle(in_dialog("BYE", ours, "alice", ["<sip:bob@192.0.2.7:5062>"], 3, "UDP"), CALLER_UDP)
    sent = parse_message(bye.data)
    assert str(sent.uri) == "sip:bob@192.0.2.7:5062" and bye.destination == CALLEE_UDP and "Route" not in sent.headers


@pytest.mark.parametrize("route", [f"<sip:{NAME};lr>", f"<sip:{NAME.upper()};transport=tcp;lr>",
                                   f"<sip:{NAME}:5060;lr>"])
async def test_a_preloaded_route_naming_the_public_name_is_the_farm_s_own(route):
    """A phone given the name as outbound proxy (not the caller's domain, not an alias)."""
    f = farm()
    await register_bob(f, CALLEE_UDP)
    routed = invite().replace(b"Via:", f"Route: {route}\r\nVia:".encode(), 1)
    [challenge] = await f.handle(routed, CALLER_UDP)
    assert parse_message(challenge.data).status == 407          # asked who calls, not "Not A Relay"
    auth = answer(parse_message(challenge.data), "alice", method="INVITE", uri=f"sip:bob@{DOMAIN}",
                  header="Proxy-Authorization")
    _, out = await f.handle(invite(cseq=2, auth=auth).replace(b"Via:", f"Route: {route}\r\nVia:".encode(), 1), CALLER_UDP)
    assert out.destination == CALLEE_UDP and "Route" not in parse_message(out.data).headers


async def test_without_the_setting_the_member_s_address_is_named_and_the_name_is_a_relay():
    f = farm(host="")
    await register_bob(f, CALLEE_UDP)
    forwarded, _ = await call(f, CALLER_UDP)
    assert uris(forwarded)[0].startswith(f"sip:{ME[0]}:{ME[1]};lr;cf=sipfarm-1;")
    [refused] = await f.handle(invite(call_id="call-2", branch="z9hG4bKinv9").replace(b"Via:", f"Route: <sip:{NAME};lr>\r\nVia:".encode(), 1),
                               CALLER_UDP)
    assert parse_message(refused.data).status == 403


async def test_an_ipv6_public_address_is_bracketed():
    f = farm(host="2001:DB8::5")
    await register_bob(f, CALLEE_UDP)
    forwarded, _ = await call(f, CALLER_UDP)
    [route] = forwarded.headers.get_all("Record-Route")
    assert route.startswith("<sip:[2001:db8::5];transport=udp;lr;"), route


@pytest.mark.parametrize("value, kept", [("SIP.Provider.Example.", NAME), ("192.0.2.1", "192.0.2.1"),
                                         ("[2001:db8::1]", "[2001:db8::1]"), (" ", ""),
                                         ("2001:DB8::1", "[2001:db8::1]"),
                                         (f"{NAME.upper()}.:5080", f"{NAME}:5080"), ("192.0.2.1:05070", "192.0.2.1:5070"),
                                         ("[2001:DB8::1]:5080", "[2001:db8::1]:5080")])
def test_the_setting_takes_a_host_name_or_address_with_or_without_a_port(value, kept):
    assert Settings(sip_record_route_host=value).sip_record_route_host == kept


@pytest.mark.parametrize("value", [f"{NAME}:", f"{NAME}:0", f"{NAME}:65536", f"{NAME}:50x", f"sip:{NAME}",
                                   f"{NAME};transport=tls", "two words", "-bad.example", "a_b.example",
                                   "[2001:db8::1", "[2001:db8::1]5060", "[2001:db8::1]:", "[sip.example]:5060",
                                   f"{NAME}:5060:5061"])
def test_the_setting_refuses_what_is_no_hostport_naming_the_key_and_the_fix(value):
    with pytest.raises(ValidationError, match=r"COLONY_SIP_RECORD_ROUTE_HOST=.*write host or host:port.*\[v6\]:port"):
        Settings(sip_record_route_host=value)


@pytest.mark.parametrize("port", [-1, 65536])
def test_the_tls_port_is_a_port(port):
    with pytest.raises(ValidationError, match="sip_record_route_tls_port"):
        Settings(sip_record_route_tls_port=port)


# --- a port on the name: a balancer on another port, a TLS listener on its own -------------

@pytest.mark.parametrize("host, tls_port, caller, callee, expected", [
    # The name's port is the UDP and TCP one; TLS gets its own, or none (SRV _sips._tcp / 5061).
    (f"{NAME}:5080", 5081, ("UDP", "198.51.100.9", 5060), ("UDP", "192.0.2.7", 5062), [f"{NAME}:5080;transport=udp"]),
    (f"{NAME}:5080", 5081, ("TCP", "198.51.100.9", 40003), ("TCP", "192.0.2.7", 40002), [f"{NAME}:5080;transport=tcp"]),
    (f"{NAME}:5080", 5081, ("TLS", "198.51.100.9", 40003), ("TLS", "192.0.2.7", 40002), [f"{NAME}:5081;transport=tls"]),
    # RFC 5658 double Record-Route (callee's on top): each party its transport and that one's port.
    (f"{NAME}:5080", 5081, ("TLS", "198.51.100.9", 40003), ("UDP", "192.0.2.7", 5062),
     [f"{NAME}:5080;transport=udp", f"{NAME}:5081;transport=tls"]),
    (f"{NAME}:5080", 5081, ("UDP", "198.51.100.9", 5060), ("TLS", "192.0.2.7", 40002),
     [f"{NAME}:5081;transport=tls", f"{NAME}:5080;transport=udp"]),
    (NAME, 5061, ("TLS", "198.51.100.9", 40003), ("UDP", "192.0.2.7", 5062),
     [f"{NAME};transport=udp", f"{NAME}:5061;transport=tls"]),
    (f"{NAME}:5080", 0, ("TLS", "198.51.100.9", 40003), ("UDP", "192.0.2.7", 5062),
     [f"{NAME}:5080;transport=udp", f"{NAME};transport=tls"]),
    # UDP and TCP share the port (RFC 3261 §18.2.1), yet a transport change is a second entry.
    (f"{NAME}:5080", 0, ("UDP", "198.51.100.9", 5060), ("TCP", "192.0.2.7", 40002),
     [f"{NAME}:5080;transport=tcp", f"{NAME}:5080;transport=udp"]),
    ("[2001:db8::5]:5080", 5081, ("TLS", "198.51.100.9", 40003), ("UDP", "192.0.2.7", 5062),
     ["[2001:db8::5]:5080;transport=udp", "[2001:db8::5]:5081;transport=tls"]),
    # A browser keeps the member's address, port and all.
    (f"{NAME}:5080", 5081, ("WSS", "198.51.100.9", 40005), ("TLS", "192.0.2.7", 40002),
     [f"{NAME}:5081;transport=tls", f"{ME[0]}:{ME[1]}"]),
])
async def test_each_party_gets_the_port_of_its_transport(host, tls_port, caller, callee, expected):
    f = farm(host=host, tls_port=tls_port)
    await register_bob(f, callee)
    forwarded, out = await call(f, caller)
    assert out.destination == callee
    routes = forwarded.headers.get_all("Record-Route")
    assert [r.partition(";lr;")[0].removeprefix("<sip:") for r in routes] == expected, routes
    for route, want in zip(routes, expected):
        uri, wanted = parse_address(route).uri, parse_address(f"<sip:{want}>").uri
        assert (uri.host, uri.port, uri.transport) == (wanted.host, wanted.port, wanted.transport)


async def test_a_tls_party_s_in_dialog_request_to_the_name_and_port_is_routed_by_another_member():
    """The TLS caller's BYE comes back to the name's TLS port (the balancer), to any member."""
    store, dialogs = Store(Clock()), Dialogs()
    first = farm(host=f"{NAME}:5080", tls_port=5081, store=store, dialogs=dialogs)
    await register_bob(first, CALLEE_UDP)
    caller = ("TLS", "198.51.100.9", 40003)
    forwarded, _ = await call(first, caller)
    callee_facing, caller_facing = forwarded.headers.get_all("Record-Route")
    assert parse_address(caller_facing).uri.port == 5081 and parse_address(callee_facing).uri.port == 5080
    second = farm("sipfarm-2", host=f"{NAME}:5080", tls_port=5081, store=store, dialogs=dialogs,
                  address=("127.0.0.2", 5060))
    [bye] = await second.handle(in_dialog("BYE", "sip:bob@192.0.2.7:5062", "alice", [caller_facing, callee_facing], 3,
                                          "TLS"), ("TLS", "198.51.100.9", 40009))
    sent = parse_message(bye.data)
    assert sent.method == "BYE" and bye.destination == CALLEE_UDP and "Route" not in sent.headers


@pytest.mark.parametrize("route", [f"<sip:{NAME}:5080;lr>", f"<sip:{NAME};transport=tls;lr>", f"<sip:{NAME}:5081;lr>"])
async def test_a_preloaded_route_naming_the_public_name_with_a_port_is_the_farm_s_own(route):
    f = farm(host=f"{NAME}:5080", tls_port=5081)
    await register_bob(f, CALLEE_UDP)
    auth_invite = invite().replace(b"Via:", f"Route: {route}\r\nVia:".encode(), 1)
    [challenge] = await f.handle(auth_invite, CALLER_UDP)
    assert parse_message(challenge.data).status == 407
