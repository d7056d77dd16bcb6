"""An initial request whose phone names the farm as its outbound proxy carries a Route the
farm must remove (RFC 3261 §16.4, §8.1.2), not refuse as a relay: by the member's address, a
configured alias (the balancer's name) or the caller's own domain.  A Route naming anyone
else is still "Not A Relay"."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from colony.protocols.sip.parser import parse_message
from colony.settings import Settings
from colony_sipfarm.farm import SipFarm

from test_farm import DOMAIN, ME, PHONE, Auth, Clock, Counters, Dialogs, Store, answer, invite, registered


@pytest.fixture
def farm():
    clock = Clock()
    f = SipFarm(Settings(sip_route_aliases="sip.provider.example, edge.provider.example:5080"), "sipfarm-1",
                store=Store(clock), dialogs=Dialogs(), auth=Auth(), counters=Counters(), secret=b"k" * 32,
                address=ME, registry=CollectorRegistry(), meter=lambda event: None, clock=clock)
    f.clock_ = clock
    return f


def with_route(data: bytes, route: str) -> bytes:
    return data.replace(b"Via:", f"Route: {route}\r\nVia:".encode(), 1)


async def first_answer(farm, data):
    out = await farm.handle(data, PHONE)
    return parse_message(out[0].data)


@pytest.mark.parametrize("route", [f"<sip:{ME[0]}:{ME[1]};lr>", f"<sip:{DOMAIN};lr>", "<sip:sip.provider.example;lr>",
                                   "<sip:SIP.Provider.Example:5060;transport=udp;lr>",
                                   "<sip:edge.provider.example:5080;lr>"])
async def test_a_route_to_the_farm_is_removed_and_the_call_goes_on(farm, route):
    await registered(farm, "bob", contact="sip:bob@192.0.2.9:5062")
    challenge = await first_answer(farm, with_route(invite(), route))
    assert challenge.status == 407, challenge.status           # asked who calls: not refused as a relay
    out = await farm.handle(with_route(invite(cseq=2, auth=answer(challenge, "alice", method="INVITE",
                                                                    uri=f"sip:bob@{DOMAIN}",
                                                                    header="Proxy-Authorization")), route), PHONE)
    forwarded = [parse_message(o.data) for o in out if o.destination[1] == "192.0.2.9"]
    assert forwarded and forwarded[0].method == "INVITE"
    assert "Route" not in forwarded[0].headers                  # removed, not passed on


@pytest.mark.parametrize("route", ["<sip:198.51.100.77;lr>", "<sip:edge.provider.example:5090;lr>",
                                   "<sip:somebody@sip.provider.example;lr>"])
async def test_a_route_to_anyone_else_is_not_relayed(farm, route):
    answer_ = await first_answer(farm, with_route(invite(), route))
    assert (answer_.status, answer_.reason) == (403, "Not A Relay")


def test_an_initial_request_with_a_preloaded_route_is_spread_by_its_call_id():
    routed = with_route(invite(), "<sip:sip.provider.example;lr>")
    assert SipFarm.spread_key(routed) == "call-1"
    assert SipFarm.spread_key(with_route(invite(), "<sip:10.0.0.1;cf=abc;lr>")) is None
