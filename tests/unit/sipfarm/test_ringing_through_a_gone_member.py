"""A call ringing on a phone whose connection a member held fails when that member dies, not
after Timer C: the member that sent the INVITE fails every branch without a final answer that
went through the dead member as if it had answered 430 Flow Failed (RFC 5626 §5.3), the fork
goes on with the other branches, and the caller hears the best answer once all are done --
480 for a 430 (RFC 5626 §11.5: 430 is said between proxies).  The table (sent_invites.py), the
farm's fork (farm.py) and the shell's watch of members (workload.py) each on their own;
end to end with two real members in tests/integration/sipfarm/test_ringing_member_death.py."""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from colony.bus import names
from colony.cluster.membership import NodeRecord, NodeState
from colony.protocols.sip.message import Headers, SipRequest
from colony.protocols.sip.parser import parse_message
from colony.settings import Settings

from colony_sipfarm.farm import LOCAL_TAG
from colony_sipfarm.inner_frames import RelayKey
from colony_sipfarm.sent_invites import SentInvites
from colony_sipfarm.workload import SipWorkload

from test_farm import DOMAIN, answer, invite, one, registered, reply, plain_farm

CALLER = ("UDP", "198.51.100.9", 5060)
DESK = ("UDP", "192.0.2.7", 5062)
MOBILE = ("TCP", "203.0.113.5", 40123)     # its connection held by member 2
MEMBER_2 = names.node_key("sipfarm-2")


@pytest.fixture
def farm():
    return plain_farm()


def tcp_register(cseq: int, auth: str = "") -> bytes:
    return (f"REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TCP 203.0.113.5:5060;branch=z9hG4bKtcp{cseq}\r\n"
            f"From: <sip:bob@{DOMAIN}>;tag=t1\r\nTo: <sip:bob@{DOMAIN}>\r\nCall-ID: tcp-reg\r\n"
            f"CSeq: {cseq} REGISTER\r\nContact: <sip:bob@203.0.113.5:5060;transport=tcp>;q=0.9\r\nExpires: 300\r\n"
            f"{auth}Content-Length: 0\r\n\r\n").encode()


async def mobile_on_member_2(farm) -> None:
    """bob's mobile registers over TCP at member 2, which holds its connection."""
    challenge = parse_message((await farm.handle(tcp_register(1), MOBILE, flow_member="sipfarm-2"))[0].data)
    [ok] = await farm.handle(tcp_register(2, answer(challenge, "bob")), MOBILE, flow_member="sipfarm-2")
    assert parse_message(ok.data).status == 200


async def alice_calls_bob(farm) -> dict:
    """alice (UDP, at this member) calls bob; his branches by where they went."""
    challenge, _ = await one(farm, invite(), CALLER)
    auth = answer(challenge, "alice", method="INVITE", uri=f"sip:bob@{DOMAIN}", header="Proxy-Authorization")
    trying, *out = await farm.handle(invite(cseq=2, auth=auth, branch="z9hG4bKinv2"), CALLER)
    assert parse_message(trying.data).status == 100
    return {o.destination: (parse_message(o.data), o.member) for o in out}


def sent(out) -> list[tuple]:
    messages = [(o.destination, parse_message(o.data)) for o in out]
    return [(where, m.method if isinstance(m, SipRequest) else m.status) for where, m in messages]


async def lose_member_2(farm) -> list:
    """Member 2 is gone: what the farm makes of the branches through it, handled as answers."""
    out = []
    for data, destination in farm.flows_lost_with(MEMBER_2):
        out += await farm.handle(data, destination)
    return out


async def test_a_ringing_branch_on_a_dead_members_flow_fails_and_the_caller_hears_480_at_once(farm):
    await mobile_on_member_2(farm)
    branches = await alice_calls_bob(farm)
    mobile, member = branches[MOBILE]
    assert member == MEMBER_2 and farm.sent_invites.members() == [MEMBER_2]
    assert sent(await farm.handle(reply(mobile, 180, "m"), MOBILE, flow_member="sipfarm-2")) == [(CALLER, 180)]
    [(data, destination)] = farm.flows_lost_with(MEMBER_2)
    lost = parse_message(data)
    # The branch's answer as the phone's would be: its Vias, untagged (made here, never ACKed).
    assert lost.status == 430 and destination == MOBILE and "tag=" not in lost.headers.get("To")
    assert lost.headers.get_all("Via") == mobile.headers.get_all("Via")
    out = await farm.handle(data, destination)
    # Nothing to ACK downstream; the caller gets 480 (RFC 5626 §11.5: no endpoint sees a 430).
    assert sent(out) == [(CALLER, 480)]
    final = parse_message(out[0].data)
    assert final.reason == "Temporarily Unavailable" and final.call_id == "call-1"
    # A final answer carries a To tag (§8.2.6.2): the farm's own, as for the answers it makes.
    assert (final.address("To").tag or "").startswith(LOCAL_TAG)
    assert farm.flows_lost_with(MEMBER_2) == [] and farm.sent_invites.members() == []     # once
    # alice's ACK of the 480 ends here, and Timer C has nothing left to say.
    ack = invite(cseq=2, branch="z9hG4bKinv2").replace(b"INVITE sip", b"ACK sip").replace(b"2 INVITE", b"2 ACK")
    assert await farm.handle(ack, CALLER) == []
    farm.clock_.now += 300
    assert farm.expire_forks() == []


async def test_the_other_devices_still_ring_and_the_caller_hears_the_best_answer_when_all_are_done(farm):
    await registered(farm, user="bob", contact="<sip:bob@192.0.2.7:5062>;q=0.5", call_id="desk")
    await mobile_on_member_2(farm)
    branches = await alice_calls_bob(farm)
    assert set(branches) == {MOBILE, DESK}
    # Member 2 dies while both ring: the caller hears nothing yet, the desk phone rings on.
    assert await lose_member_2(farm) == []
    desk, _ = branches[DESK]
    assert sent(await farm.handle(reply(desk, 180, "d"), DESK)) == [(CALLER, 180)]
    # The desk is busy: 486 is better than the lost branch's 430 (§16.7 step 6).
    assert sent(await farm.handle(reply(desk, 486, "d"), DESK)) == [(DESK, "ACK"), (CALLER, 486)]


async def test_the_desk_phone_answering_after_the_loss_gets_the_call(farm):
    await registered(farm, user="bob", contact="<sip:bob@192.0.2.7:5062>;q=0.5", call_id="desk")
    await mobile_on_member_2(farm)
    branches = await alice_calls_bob(farm)
    assert await lose_member_2(farm) == []
    desk, _ = branches[DESK]
    # The lost branch had its final answer: nothing is cancelled there.
    assert sent(await farm.handle(reply(desk, 200, "d"), DESK)) == [(CALLER, 200)]


async def test_a_lost_branch_and_a_failed_one_give_the_caller_the_better_failure(farm):
    await registered(farm, user="bob", contact="<sip:bob@192.0.2.7:5062>;q=0.5", call_id="desk")
    await mobile_on_member_2(farm)
    branches = await alice_calls_bob(farm)
    desk, _ = branches[DESK]
    assert sent(await farm.handle(reply(desk, 480, "d"), DESK)) == [(DESK, "ACK")]
    out = await lose_member_2(farm)
    assert sent(out) == [(CALLER, 480)]


async def test_an_answered_branch_is_not_lost_and_a_live_members_branches_are_left_alone(farm):
    await mobile_on_member_2(farm)
    branches = await alice_calls_bob(farm)
    mobile, _ = branches[MOBILE]
    assert farm.flows_lost_with(names.node_key("sipfarm-3")) == []
    assert sent(await farm.handle(reply(mobile, 200, "m"), MOBILE, flow_member="sipfarm-2")) == [(CALLER, 200)]
    assert farm.flows_lost_with(MEMBER_2) == [] and farm.sent_invites.members() == []


async def test_a_branch_that_timed_out_or_failed_before_is_not_failed_again(farm):
    await mobile_on_member_2(farm)
    branches = await alice_calls_bob(farm)
    mobile, _ = branches[MOBILE]
    assert sent(await farm.handle(reply(mobile, 486, "m"), MOBILE, flow_member="sipfarm-2")) \
        == [(MOBILE, "ACK"), (CALLER, 486)]
    assert farm.flows_lost_with(MEMBER_2) == []


async def test_a_reinvite_ringing_through_a_dead_member_gets_the_caller_480_and_her_ack_ends_here(farm):
    await mobile_on_member_2(farm)
    mobile, _ = (await alice_calls_bob(farm))[MOBILE]
    ok = reply(mobile, 200, "m").replace(b"Content-Length", b"Record-Route: " + mobile.headers.get("Record-Route").encode()
                                          + b"\r\nContent-Length")
    assert sent(await farm.handle(ok, MOBILE, flow_member="sipfarm-2")) == [(CALLER, 200)]
    route = mobile.headers.get("Record-Route")

    def alices(method: str) -> bytes:
        return (f"{method} sip:bob@203.0.113.5:5060;transport=tcp SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 198.51.100.9:5060;branch=z9hG4bKre3\r\nRoute: {route}\r\n"
                f"From: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: <sip:bob@{DOMAIN}>;tag=m\r\nCall-ID: call-1\r\n"
                f"CSeq: 3 {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
    out = await farm.handle(alices("INVITE"), CALLER)
    assert [(o.destination, o.member) for o in out if o.destination == MOBILE] == [(MOBILE, MEMBER_2)]
    answers = await lose_member_2(farm)
    # Its To is the dialog's (tagged): the ACK the farm makes of it goes to the dead member and
    # is dropped there by the shell; alice hears 480, and her ACK of it ends at the farm.
    assert sent(answers) == [(MOBILE, "ACK"), (CALLER, 480)] and answers[0].member == MEMBER_2
    assert await farm.handle(alices("ACK"), CALLER) == []


def test_the_table_knows_the_unanswered_branches_by_the_member_holding_their_flow_and_forgets_them_as_they_end():
    table = SentInvites(lifetime=200.0, after_final=32.0, limit=3)

    def request(branch: str) -> SipRequest:
        headers = Headers()
        for via in (f"SIP/2.0/TCP 127.0.0.1:5060;branch={branch}", "SIP/2.0/UDP 198.51.100.9:5060;branch=z9hG4bKc"):
            headers.add("Via", via)
        headers.add("Call-ID", "c")
        headers.add("CSeq", "1 INVITE")
        return SipRequest(headers=headers, method="INVITE")

    for branch, member in (("b0", "m2"), ("b1", "m2"), ("b2", "m3")):
        table.sent(branch, request(branch), ("TCP", "h", 1), member, now=0.0)
    assert sorted(table.members()) == ["m2", "m3"]
    table.answered("b1")
    table.failed("b2", now=1.0)
    assert table.members() == ["m2"]
    [lost] = table.lost_with("m2", now=2.0)
    # Every Via kept, for the 430 to find its way up; an ACK or CANCEL still takes the top one.
    assert lost.request.headers.get_all("Via") == request("b0").headers.get_all("Via") and lost.failed
    assert table.acked("b0", now=3.0)       # the caller's ACK of what it gets ends at the farm
    assert table.members() == [] and table.lost_with("m2", now=3.0) == []
    # One sent again through another member moves; one forgotten (the oldest, past the limit)
    # is waited for nowhere; one past its lifetime is not lost any more (Timer C has it).
    table.sent("b3", request("b3"), ("TCP", "h", 1), "m2", now=3.0)
    table.sent("b3", request("b3"), ("TCP", "h", 1), "m4", now=3.0)
    assert table.members() == ["m4"]
    for n in range(4, 8):
        table.sent(f"b{n}", request(f"b{n}"), ("TCP", "h", 1), "m5", now=4.0)
    assert "m4" not in table.members() and len(table) == 3
    assert table.lost_with("m5", now=500.0) == []
    # Over UDP no member holds the branch: its answers go to our Via's address, which may be
    # the members' shared one.
    table.sent("u0", request("u0"), ("UDP", "h", 1), "m6", now=500.0)
    assert table.members() == [] and table.lost_with("m6", now=500.0) == []


# --- the shell: which members are gone, and when ------------------------------------------------

def record(node_id: str, beat_ago: float, state: NodeState = NodeState.READY) -> NodeRecord:
    now = datetime.now(timezone.utc)
    return NodeRecord(id=node_id, role="sipfarm", state=state, host="h", pid=1, version="v",
                      started_at=now - timedelta(hours=1), heartbeat_at=now - timedelta(seconds=beat_ago))


def shell(farm) -> tuple[SipWorkload, list]:
    workload = SipWorkload(Settings(node_ttl=5))
    workload.farm, workload._runtime = farm, SimpleNamespace(node_id="sipfarm-1")
    handled: list = []

    async def handle(data, source, parsed=None, arrived=None) -> None:
        handled.append((parse_message(data).status, source))
    workload._handle = handle
    return workload, handled


@pytest.mark.parametrize("member_2", [record("sipfarm-2", 30), record("sipfarm-2", 0, NodeState.FAILED),
                                      record("sipfarm-2", 0, NodeState.STOPPED), None],
                         ids=["heartbeat stale", "failed", "stopped", "record deleted"])
async def test_the_shell_fails_the_branches_of_a_gone_member_once(farm, member_2):
    await mobile_on_member_2(farm)
    await alice_calls_bob(farm)
    workload, handled = shell(farm)
    workload._members = {"sipfarm-1": record("sipfarm-1", 0), "sipfarm-2": record("sipfarm-2", 0)}
    workload._fail_lost_branches()
    assert handled == []                                  # member 2 beats: its phone rings on
    workload._members = {"sipfarm-1": record("sipfarm-1", 0), **({"sipfarm-2": member_2} if member_2 else {})}
    workload._fail_lost_branches()
    workload._fail_lost_branches()
    assert handled == [(430, MOBILE)]


@pytest.mark.parametrize("member_2", [record("sipfarm-2", 30), record("sipfarm-2", 0, NodeState.FAILED)],
                         ids=["heartbeat stale", "failed"])
async def test_a_member_only_paused_keeps_the_calls_ringing_through_it(farm, member_2):
    """Gone by its heartbeat alone, member 2 may be paused (SIGSTOP, a stalled VM) and come back
    with bob's connection, on which his mobile still rings and may answer: failed meanwhile,
    alice heard 480 for a call bob could then pick up.  Its inner listener still bound, its
    branches ring on; once nothing has its port (the process died), they fail, once."""
    await mobile_on_member_2(farm)
    await alice_calls_bob(farm)
    workload, handled = shell(farm)
    workload._relay_key = RelayKey.from_secret(b"k" * 32)
    workload.inner_address = ("127.0.0.1", 2564)
    paused = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    paused.bind(("127.0.0.1", 0))
    workload._inner_peers["sipfarm-2"] = (socket.AF_INET, paused.getsockname())
    try:
        workload._members = {"sipfarm-1": record("sipfarm-1", 0), "sipfarm-2": member_2}
        for _ in range(3):
            workload._fail_lost_branches()
            await asyncio.sleep(0.05)
        assert handled == []
        paused.close()                        # SIGKILL: nobody has its port any more
        deadline = time.monotonic() + 5
        while not handled:
            assert time.monotonic() < deadline, "member 2's death was not seen"
            workload._fail_lost_branches()
            await asyncio.sleep(0.01)
        workload._fail_lost_branches()
        assert handled == [(430, MOBILE)]
    finally:
        paused.close()
        workload._close_inner_sockets()


async def test_the_shell_gives_no_verdict_before_it_has_seen_the_members(farm):
    await mobile_on_member_2(farm)
    await alice_calls_bob(farm)
    workload, handled = shell(farm)
    workload._fail_lost_branches()
    assert handled == []


class Nodes:
    """The nodes bucket's watch as the shell reads it: these records, written in this order."""

    def __init__(self, records: list[NodeRecord]) -> None:
        self.records = records

    async def key_value(self, bucket):
        return self

    async def watchall(self):
        return self

    async def _entries(self):
        for r in self.records:
            yield SimpleNamespace(key=names.node_key(r.id), value=r.encode(), operation="PUT")

    def __aiter__(self):
        return self._entries()

    async def stop(self) -> None:
        pass


async def test_a_member_restarted_before_its_heartbeat_went_stale_lost_its_phones_with_the_old_process(farm):
    await mobile_on_member_2(farm)
    await alice_calls_bob(farm)
    workload, handled = shell(farm)
    old = record("sipfarm-2", 0)
    beat = old.model_copy(update={"heartbeat_at": datetime.now(timezone.utc)})
    rejoined = old.model_copy(update={"incarnation": 2})       # after a pause: the same process, its phones
    nodes = Nodes([record("sipfarm-1", 0), old, beat, rejoined])
    workload._runtime.nc = SimpleNamespace(jetstream=lambda: nodes)
    await workload._watch_members()
    assert handled == []
    restarted = record("sipfarm-2", 0).model_copy(update={"started_at": datetime.now(timezone.utc)})
    nodes.records = [restarted, restarted.model_copy(update={"state": NodeState.STARTING})]
    await workload._watch_members()
    assert handled == [(430, MOBILE)]


async def test_a_request_whose_tcp_connection_cannot_be_opened_fails_its_branch_at_once():
    """A TCP phone's binding names its connection's own port: when that connection is gone
    (its member restarted, the phone dropped it) a dial there reaches nothing, and the
    branch fails as a gone flow does (430) instead of waiting for Timer C."""
    workload = SipWorkload(Settings())
    failed: list = []
    workload._flow_failed = lambda data, destination: failed.append(destination)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        where = ("TCP", "127.0.0.1", s.getsockname()[1])        # nobody listens there
    invite_data = invite()
    await workload._emit(invite_data, where)
    assert failed == [where] and not workload.connections
