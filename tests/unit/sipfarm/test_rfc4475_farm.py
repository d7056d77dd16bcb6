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

from test_farm import ME, PHONE, Auth, Clock, Counters, Dialogs, Store, one


@pytest.fixture
def farm():
    clock = Clock()
    return SipFarm(Settings(), "sipfarm-1", store=Store(clock), dialogs=Dialogs(), auth=Auth(), counters=Counters(),
                   secret=b"k" * 32, address=ME, registry=CollectorRegistry(), meter=lambda event: None, clock=clock)


async def test_3_3_4_a_register_whose_to_is_no_sip_uri_gets_400(farm):
    answer, _ = await one(farm, BY_NAME["unksm2"].data)
    assert answer.status == 400


async def test_a_request_without_extensions_is_challenged_as_before(farm):
    answer, _ = await one(farm, BY_NAME["lwsdisp"].data, PHONE)
    assert answer.status == 407
    assert parse_message(BY_NAME["lwsdisp"].data).headers.get("Max-Forwards") == "70"
