"""Draining a SIP farm member while a call it forked still rings (every rolling upgrade's step):
the member stays NOT_READY and not drained until the call has its final answer, the callee's
answer reaches the caller through it, and nobody cancels the callee.  Reported empty at once,
the member stopped and the members keeping its branches cancelled every call still ringing
(the caller heard 480 for a phone about to be picked up).  Two real members and a controller
on a real bus; the phones are Python sockets speaking SIP text on 127.0.0.1."""

from __future__ import annotations

import asyncio

import pytest

from colony.cluster.control import ask_controller
from colony.protocols.sip.parser import parse_message
from test_ringing_member_death import MEMBERS, answered, ringing_udp_call, sip_address
from test_sipfarm import serve_credentials

pytestmark = pytest.mark.slow


@pytest.fixture
async def farm(cluster):
    await serve_credentials(await cluster.client())
    cluster.start("controller", "controller-1")
    await cluster.wait_controller(timeout=60)
    for node_id in MEMBERS:
        cluster.start("sipfarm", node_id, COLONY_SIP_PORT="0", COLONY_OUTBOUND_SMTP_PORT="25")
    yield {n: await cluster.wait_state(n, "READY", timeout=60) for n in MEMBERS}


async def test_a_draining_member_keeps_a_call_it_forked_until_the_callee_answers(farm, cluster):
    member_1 = sip_address(farm["sipfarm-1"])
    bob, bob_inbox, alice, invite, call_id = await ringing_udp_call(member_1, member_1, "sipfarm-1")
    try:
        reply = await ask_controller(await cluster.client(), "drain", "sipfarm-1")
        assert reply.ok, reply.error
        await cluster.wait_state("sipfarm-1", "NOT_READY", timeout=30)
        # The call rings on: the member has work, and reports nothing drained for a while.
        for _ in range(30):
            view = (await cluster.view())["sipfarm-1"]
            assert view.state == "NOT_READY" and not view.drained, view
            await asyncio.sleep(0.1)
        # Its fork's answers go to it, though the Call-ID now hashes to member 2.
        bob.sendto(answered(invite, 200, "OK"), member_1)
        final = await alice.final(30)
        assert final.status == 200 and final.call_id == call_id, final
        await cluster.wait_state("sipfarm-1", "NOT_READY", drained=True, timeout=30)
        # Nobody cancelled bob's phone (what reached it after the INVITE: copies of it at most).
        while not bob_inbox.empty():
            later = parse_message(bob_inbox.get_nowait())
            assert getattr(later, "method", None) != "CANCEL", later
    finally:
        alice.close()
        bob.close()
