"""A SIP request for a subscriber of another region is redirected to a farm member there."""

from __future__ import annotations

import orjson
import pytest

from colony.bus import names
from colony.protocols.sip.parser import parse_message
from colony.settings import Settings
from colony_sipfarm.home_region import HomeRegions

DIRECTORY = {
    names.directory_key("domain", "us.example"): {"kind": "domain", "name": "us.example", "home_region": "us"},
    names.directory_key("domain", "eu.example"): {"kind": "domain", "name": "eu.example", "home_region": "eu"},
    names.directory_key("domain", "nohome.example"): {"kind": "domain", "name": "nohome.example", "home_region": ""},
    names.directory_key("domain_alias", "us-alias.example"): {"kind": "domain_alias", "name": "us-alias.example",
                                                              "domain": "us.example"},
}
US_FARM = {"sipfarm-1": {"sip": "10.0.2.1:5060", "sip_tls": "10.0.2.1:5061", "sip_ws": "10.0.2.1:8080"}}


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def regions(region="eu", regions="eu,us", farms=US_FARM, reachable=True):
    reads = []

    async def get(key):
        reads.append(key)
        value = DIRECTORY.get(key)
        return orjson.dumps(value) if value is not None else None

    clock = Clock()
    h = HomeRegions(Settings(region=region, regions=regions), None, get, clock=clock)

    async def member_reader(region, account, transport):
        if not reachable:
            raise TimeoutError("the link is cut")
        return await HomeRegions.member(h, region, account, transport)
    h._farms["us"] = (clock(), farms)  # as read from us's node records a moment ago
    h.member = member_reader
    h.reads = reads
    return h


def request(method="REGISTER", ruri="sip:us.example", to="<sip:lee@us.example>", extra=""):
    return parse_message((
        f"{method} {ruri} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-1\r\n"
        "Max-Forwards: 70\r\n"
        f"To: {to}\r\n"
        "From: <sip:kim@eu.example>;tag=a1\r\n"
        "Call-ID: c1@phone\r\n"
        f"CSeq: 1 {method}\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n").encode())


async def test_a_register_for_a_us_domain_at_an_eu_member_is_sent_to_us():
    h = regions()
    assert await h.answer(request(), "UDP") == (302, [("Contact", "<sip:lee@10.0.2.1:5060>")])
    assert await h.answer(request(), "TCP") == (302, [("Contact", "<sip:lee@10.0.2.1:5060;transport=tcp>")])
    assert await h.answer(request(), "TLS") == (302, [("Contact", "<sips:lee@10.0.2.1:5061>")])
    assert await h.answer(request(), "WS") == (302, [("Contact", "<sip:lee@10.0.2.1:8080;transport=ws>")])
    # the address of record decides a REGISTER, not the Request-URI
    assert await h.answer(request(ruri="sip:eu.example"), "UDP") is not None


async def test_calls_go_to_the_callees_region_and_local_ones_stay():
    h = regions()
    invite = request("INVITE", ruri="sip:lee@us.example", to="<sip:lee@us.example>")
    assert (await h.answer(invite, "UDP"))[0] == 302
    local = request("INVITE", ruri="sip:kim@eu.example", to="<sip:kim@eu.example>")
    assert await h.answer(local, "UDP") is None
    assert await h.answer(request("INVITE", ruri="sip:x@nohome.example", to="<sip:x@nohome.example>"), "UDP") is None
    assert await h.answer(request("INVITE", ruri="sip:x@unknown.example", to="<sip:x@unknown.example>"), "UDP") is None
    aliased = request("MESSAGE", ruri="sip:lee@us-alias.example", to="<sip:lee@us-alias.example>")
    assert (await h.answer(aliased, "UDP"))[0] == 302


@pytest.mark.parametrize("method,to,extra", [
    ("INVITE", "<sip:lee@us.example>;tag=b2", ""),                        # in a dialog
    ("CANCEL", "<sip:lee@us.example>", ""),                               # follows its INVITE
    ("ACK", "<sip:lee@us.example>", ""),
    ("BYE", "<sip:lee@us.example>", ""),
    ("INVITE", "<sip:lee@us.example>", "Route: <sip:10.0.1.1;lr>\r\n"),  # loose-routed through us
])
async def test_what_belongs_to_a_dialog_or_transaction_is_never_redirected(method, to, extra):
    h = regions()
    assert await h.answer(request(method, ruri="sip:lee@us.example", to=to, extra=extra), "UDP") is None


async def test_a_home_region_out_of_reach_or_without_members_is_a_503_not_a_local_registration():
    assert await regions(reachable=False).answer(request(), "UDP") == (503, [("Retry-After", "30")])
    assert await regions(farms={}).answer(request(), "UDP") == (503, [("Retry-After", "30")])


async def test_one_region_or_a_cached_home_asks_nothing():
    h = regions(region="eu", regions="")
    assert await h.answer(request(), "UDP") is None and h.reads == []
    h = regions()
    await h.answer(request(), "UDP")
    await h.answer(request(), "UDP")
    assert h.reads == [names.directory_key("domain", "us.example")]  # the domain's home is cached


async def test_one_subscriber_keeps_going_to_the_same_member():
    farms = {f"sipfarm-{n}": {"sip": f"10.0.2.{n}:5060"} for n in range(1, 5)}
    h = regions(farms=farms)
    first = await h.answer(request(), "UDP")
    for _ in range(5):
        assert await h.answer(request(), "UDP") == first
    others = set()
    for i in range(40):
        others.add((await h.answer(request(to=f"<sip:u{i}@us.example>"), "UDP"))[1][0][1].split("@")[1])
    assert len(others) > 1  # accounts spread over the members
