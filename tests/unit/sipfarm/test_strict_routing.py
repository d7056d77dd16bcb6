"""Strict routers (RFC 2543 phones and proxies that ignore ``lr``) on either side of the farm.

* From one (RFC 3261 §16.4): its in-dialog request names our Record-Route in the Request-URI
  and the dialog's remote target as the last Route.  The farm restores the target as the
  Request-URI and routes the request like a loose router's -- the Route's signature still
  checked, so a forged one is still refused.
* To one (§16.6 step 6): a next hop without ``lr`` gets its own URI as the Request-URI, and
  the Request-URI goes last in Route."""

from __future__ import annotations

import pytest

from colony.protocols.sip.parser import parse_message
from colony.protocols.sip.uri import parse_address


from test_farm import DOMAIN, answered_call, one, plain_farm

CALLER = ("UDP", "198.51.100.9", 5060)
CALLEE = ("UDP", "192.0.2.7", 5062)


@pytest.fixture
def farm():
    return plain_farm()


async def call(farm) -> str:
    """alice calls bob, bob answers; the dialog's Record-Route (its URI, as a strict router keeps it)."""
    return str(parse_address(await answered_call(farm)).uri)


def request(method: str, uri: str, routes: list[str], cseq: int, sender: str = "alice") -> bytes:
    tags = (f"<sip:alice@{DOMAIN}>;tag=a1", f"<sip:bob@{DOMAIN}>;tag=b1")
    frm, to = tags if sender == "alice" else tags[::-1]
    via = "198.51.100.9:5060" if sender == "alice" else "192.0.2.7:5062"
    return (f"{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bK{method.lower()}{cseq}\r\n"
            + "".join(f"Route: {r}\r\n" for r in routes)
            + f"From: {frm}\r\nTo: {to}\r\nCall-ID: call-1\r\nCSeq: {cseq} {method}\r\n"
              "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


@pytest.mark.parametrize("method", ["BYE", "INFO", "ACK"])
async def test_a_strict_routing_callers_request_reaches_the_remote_target(farm, method):
    our_uri = await call(farm)
    out = await farm.handle(request(method, our_uri, ["<sip:bob@192.0.2.7:5062>"], 3), CALLER)
    [passed] = [o for o in out if o.destination == CALLEE]
    forwarded = parse_message(passed.data)
    assert forwarded.method == method and str(forwarded.uri) == "sip:bob@192.0.2.7:5062"
    assert "Route" not in forwarded.headers                         # ours was used up, the target restored


async def test_a_strict_routing_callees_request_reaches_the_caller(farm):
    our_uri = await call(farm)
    forwarded, out = await one(farm, request("BYE", our_uri, ["<sip:alice@198.51.100.9:5060>"], 7, sender="bob"),
                               CALLEE)
    assert out.destination == CALLER and str(forwarded.uri) == "sip:alice@198.51.100.9:5060"


async def test_a_strict_routed_request_keeps_the_routes_between_us_and_the_target(farm):
    """Route set [ours, P2;lr] strict-routed: Request-URI ours, Route P2, target -- the target
    comes back to the Request-URI and P2 is the next hop, loose."""
    our_uri = await call(farm)
    routes = ["<sip:203.0.113.5:5070;lr>", "<sip:bob@192.0.2.7:5062>"]
    forwarded, out = await one(farm, request("INFO", our_uri, routes, 3), CALLER)
    assert out.destination == ("UDP", "203.0.113.5", 5070)
    assert str(forwarded.uri) == "sip:bob@192.0.2.7:5062"
    assert forwarded.headers.get_all("Route") == ["<sip:203.0.113.5:5070;lr>"]


@pytest.mark.parametrize("forge", [lambda uri: uri.replace(";dm=", ";dm=0"),                     # a MAC that is not ours
                                   lambda uri: uri.split(";dm=")[0] + ";dm=" + "0" * 24,
                                   lambda uri: uri.replace("cf=sipfarm-1", "cf=sipfarm-2")])  # a signed field changed
async def test_a_forged_record_route_in_the_request_uri_is_still_refused(farm, forge):
    our_uri = await call(farm)
    refused, out = await one(farm, request("BYE", forge(our_uri), ["<sip:bob@192.0.2.7:5062>"], 3), CALLER)
    assert (refused.status, refused.reason) == (404, "Not Here") and out.destination == CALLER
    assert farm.metrics.dropped.labels(reason="forged route")._value.get() == 1


async def test_another_dialogs_record_route_in_the_request_uri_is_refused(farm):
    """Signed for call-1, used on a Call-ID of a stranger's own: 404, as a loose Route would be."""
    our_uri = await call(farm)
    data = request("BYE", our_uri, ["<sip:bob@192.0.2.7:5062>"], 3).replace(b"Call-ID: call-1", b"Call-ID: other")
    refused, _ = await one(farm, data, ("UDP", "203.0.113.66", 5060))
    assert refused.status == 404


async def test_a_request_to_a_strict_router_next_hop_carries_its_uri_and_the_target_last(farm):
    """§16.6 step 6: Route [ours, P2 without lr] -- P2 gets Request-URI P2 and Route [..., target]."""
    our_uri = await call(farm)
    routes = [f"<{our_uri}>", "<sip:203.0.113.5:5070>", "<sip:203.0.113.6;lr>"]
    forwarded, out = await one(farm, request("INFO", "sip:bob@192.0.2.7:5062", routes, 3), CALLER)
    assert out.destination == ("UDP", "203.0.113.5", 5070)
    assert str(forwarded.uri) == "sip:203.0.113.5:5070"
    assert forwarded.headers.get_all("Route") == ["<sip:203.0.113.6;lr>", "<sip:bob@192.0.2.7:5062>"]


async def test_a_loose_router_next_hop_is_left_as_it_is(farm):
    our_uri = await call(farm)
    routes = [f"<{our_uri}>", "<sip:203.0.113.5:5070;lr>"]
    forwarded, out = await one(farm, request("INFO", "sip:bob@192.0.2.7:5062", routes, 3), CALLER)
    assert out.destination == ("UDP", "203.0.113.5", 5070)
    assert str(forwarded.uri) == "sip:bob@192.0.2.7:5062"
    assert forwarded.headers.get_all("Route") == ["<sip:203.0.113.5:5070;lr>"]
