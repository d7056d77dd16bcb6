"""The farm's answers to RFC 4475's application-layer torture messages (§3.3) that are the
farm's, not the parser's, to decide -- the RFC's own bytes, with the bus faked as in
test_farm.py (tests/integration/sipfarm/test_rfc4475.py sends all 49 to real members)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from colony.protocols.sip.parser import parse_message
from colony.settings import Settings
from colony_sipfarm.farm import SipFarm
from rfc4475_messages import BY_NAME

from test_farm import DOMAIN, ME, PHONE, Auth, Clock, Counters, Dialogs, Store, one


@pytest.fixture
def farm():
    clock = Clock()
    return SipFarm(Settings(), "sipfarm-1", store=Store(clock), dialogs=Dialogs(), auth=Auth(), counters=Counters(),
                   secret=b"k" * 32, address=ME, registry=CollectorRegistry(), meter=lambda event: None, clock=clock)


async def test_3_3_11_max_forwards_of_zero_gets_483_before_any_challenge(farm):
    answer, _ = await one(farm, BY_NAME["zeromf"].data)
    assert answer.status == 483
    # For the farm itself an OPTIONS is answered all the same (RFC 3261 §16.3 step 3).
    own = (BY_NAME["zeromf"].data.replace(b"OPTIONS sip:user@example.com", f"OPTIONS sip:{DOMAIN}".encode())
           .replace(b"branch=z9hG4bKkdjuw2349i", b"branch=z9hG4bKown"))
    answer, _ = await one(farm, own)
    assert answer.status == 200


async def test_3_3_5_proxy_require_gets_420_naming_the_unsupported_tags(farm):
    answer, _ = await one(farm, BY_NAME["bext01"].data)
    assert answer.status == 420
    assert answer.headers.get_all("Unsupported") == ["noProxiesSupportThis", "norDoAnyProxiesSupportThis"]


async def test_require_of_what_the_farm_answers_itself_gets_420(farm):
    # A UAS checks Require (RFC 3261 §8.2.2.3): the registrar, and an OPTIONS for the farm.
    register = BY_NAME["cparam01"].data.replace(b"l: 0\r\n", b"Require: nothingSupportsThis\r\nl: 0\r\n")
    answer, _ = await one(farm, register)
    assert answer.status == 420 and answer.headers.get("Unsupported") == "nothingSupportsThis"
    options = (f"OPTIONS sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bKo1\r\n"
               f"From: <sip:x@{DOMAIN}>;tag=1\r\nTo: <sip:{DOMAIN}>\r\nCall-ID: o1\r\nCSeq: 1 OPTIONS\r\n"
               f"Require: foo, bar\r\nContent-Length: 0\r\n\r\n").encode()
    answer, _ = await one(farm, options)
    assert answer.status == 420 and answer.headers.get_all("Unsupported") == ["foo", "bar"]


async def test_3_3_4_a_register_whose_to_is_no_sip_uri_gets_400(farm):
    answer, _ = await one(farm, BY_NAME["unksm2"].data)
    assert answer.status == 400


async def test_a_request_without_extensions_is_challenged_as_before(farm):
    answer, _ = await one(farm, BY_NAME["lwsdisp"].data, PHONE)
    assert answer.status == 407
    assert parse_message(BY_NAME["lwsdisp"].data).headers.get("Max-Forwards") == "70"


async def test_two_requests_that_share_a_branch_are_two_transactions(farm):
    # RFC 4475's escnull and regescrt share branch, sent-by, method and CSeq; their Call-IDs
    # differ.  Each gets its own answer, at its own address -- never the other's.
    first, second = ("UDP", "192.0.2.31", 5060), ("UDP", "192.0.2.32", 5060)
    for name, source in (("escnull", first), ("regescrt", second)):
        answer, item = await one(farm, BY_NAME[name].data, source)
        assert answer.status == 401 and answer.call_id.startswith(name + ".")
        assert item.destination[1] == source[1]
    # A true copy is still a copy: the same answer again.
    again, item = await one(farm, BY_NAME["regescrt"].data, second)
    assert again.call_id.startswith("regescrt.") and item.destination[1] == second[1]
