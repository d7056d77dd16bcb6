"""The shell's overload rule: a request that starts new work and waited too long for its turn
is answered 503 + Retry-After without being worked on; what finishes work goes on."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from colony.protocols.sip.parser import parse_message
from colony.settings import Settings

from colony_sipfarm.workload import LATE, TURN_PROBE, SipWorkload
from test_farm import PHONE, farm, register  # noqa: F401 (farm: the fixture)


def _shell(farm) -> tuple[SipWorkload, list]:
    shell = SipWorkload(Settings())
    shell.farm, shell._runtime = farm, SimpleNamespace(node_id="sipfarm-1")
    sent: list = []

    async def send(item) -> None:
        sent.append(parse_message(item.data))
    shell._send = send
    return shell, sent


async def test_new_work_that_waited_too_long_gets_503_and_fresh_work_is_done(farm):
    shell, sent = _shell(farm)
    await shell._handle(register(branch="z9hG4bKold"), PHONE, arrived=time.monotonic() - LATE - 0.5)
    await shell._handle(register(branch="z9hG4bKnew"), PHONE, arrived=time.monotonic())
    assert [m.status for m in sent] == [503, 401]
    assert sent[0].headers.get("Retry-After")
    assert farm.metrics.overloaded._value.get() == 1


async def test_a_late_response_is_still_worked_on(farm):
    shell, sent = _shell(farm)
    stray = (b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKx\r\n"
             b"From: <sip:a@acme.example>;tag=1\r\nTo: <sip:b@acme.example>;tag=2\r\nCall-ID: late-1\r\n"
             b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    await shell._handle(stray, PHONE, arrived=time.monotonic() - 10)
    assert sent == [] and farm.metrics.overloaded._value.get() == 0


async def test_new_work_is_refused_while_the_event_loop_is_slow_to_come_round(farm):
    # Packets are worked on in the callback that reads them: their own age shows no queue,
    # the loop's measured turn does.
    shell, sent = _shell(farm)
    shell._turn = LATE + 0.5
    await shell._handle(register(branch="z9hG4bKslow"), PHONE, arrived=time.monotonic())
    shell._turn = 0.01
    await shell._handle(register(branch="z9hG4bKquick"), PHONE, arrived=time.monotonic())
    assert [m.status for m in sent] == [503, 401]


async def test_the_turn_is_measured_while_the_loop_is_held(farm):
    shell, _ = _shell(farm)
    probe = asyncio.create_task(shell._measure_turns())
    try:
        await asyncio.sleep(TURN_PROBE / 2)            # the probe waits for its timer
        time.sleep(0.3)                                 # a callback that holds the loop past it
        deadline = time.monotonic() + 5
        while shell._turn < 0.15 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert shell._turn >= 0.15
        deadline = time.monotonic() + 5                 # and it comes down once the loop is free
        while shell._turn > 0.1 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert shell._turn <= 0.1
    finally:
        probe.cancel()


async def test_an_overloaded_member_passes_on_what_another_member_owns_instead_of_refusing_it(farm):
    """A late packet the Call-ID's owner (another member) handles may be a copy of a request
    that member is working on -- an INVITE ringing there: a 503 from here would end the
    caller's call while the callee rings.  It goes to its owner; the owner judges its load."""
    from datetime import datetime, timedelta, timezone

    from colony.cluster.membership import NodeRecord, NodeState
    from colony.hashing import choose

    shell, sent = _shell(farm)
    now = datetime.now(timezone.utc)
    shell._members = {m: NodeRecord(id=m, role="sipfarm", state=NodeState.READY, host="h", pid=1, version="v",
                                    started_at=now - timedelta(hours=1), heartbeat_at=now)
                      for m in ("sipfarm-1", "sipfarm-2")}
    shell._ready_until = 0.0
    n = 0
    while choose(call_id := f"owned-{n}", ["sipfarm-1", "sipfarm-2"]) != "sipfarm-2":
        n += 1
    passed_on = []

    async def route(data, source, parsed):
        passed_on.append(parsed.call_id)
        return []
    shell._route = route
    shell._turn = LATE + 0.5
    await shell._handle(register(branch="z9hG4bKelse", call_id=call_id), PHONE, arrived=time.monotonic())
    assert passed_on == [call_id] and sent == [] and farm.metrics.overloaded._value.get() == 0
