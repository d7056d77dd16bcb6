"""A draining member finishes the INVITEs it forked before it reports empty (issue #9: "a
draining member finishes its transactions ... before it reports empty"): the answers to its
forks reach it -- our Via names it (``o``) and the shell sends them there while it lives,
NOT_READY too, though the Call-ID now hashes elsewhere -- and its work counts the forks still
ringing.  Reported empty at once, it stopped, and every call still ringing through it was
cancelled by the members keeping its branches."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

from colony.bus import names
from colony.cluster.membership import NodeRecord, NodeState
from colony.hashing import choose
from colony.protocols.sip.parser import parse_message

from colony_sipfarm.farm import SipFarm
from colony_sipfarm.workload import SipWorkload
from test_farm import DOMAIN, answer, invite, one, plain_farm, registered, reply

CALLER, CALLEE = ("UDP", "198.51.100.9", 5060), ("UDP", "192.0.2.7", 5062)


async def ringing_fork(farm):
    """alice calls bob (UDP), forked here; bob's phone has the INVITE: (the INVITE it got)."""
    await registered(farm, user="bob", contact="sip:bob@192.0.2.7:5062")
    challenge, _ = await one(farm, invite(), CALLER)
    auth = answer(challenge, "alice", method="INVITE", uri=f"sip:bob@{DOMAIN}", header="Proxy-Authorization")
    out = await farm.handle(invite(cseq=2, auth=auth, branch="z9hG4bKinv2"), CALLER)
    [sent] = [parse_message(o.data) for o in out if o.destination == CALLEE]
    return sent


async def test_a_forks_answers_name_the_forker_and_it_counts_its_ringing_forks():
    farm = plain_farm()
    sent = await ringing_fork(farm)
    ours = sent.top_via()
    assert ours.params.get("o") == names.node_key("sipfarm-1")
    assert farm.ringing() == 1
    ringing = parse_message(reply(sent, 180, "b1"))
    assert SipFarm.forker_of(ringing) == names.node_key("sipfarm-1")
    await farm.handle(reply(sent, 180, "b1"), CALLEE)
    assert farm.ringing() == 1                                 # ringing is no final answer
    await farm.handle(reply(sent, 200, "b1"), CALLEE)
    assert farm.ringing() == 0                                 # answered: nothing left to wait for
    # Timer C ends one nobody answers: it is not waited for longer than that.
    farm2 = plain_farm()
    await ringing_fork(farm2)
    farm2.clock_.now += 201
    assert farm2.ringing() == 0


def test_requests_and_answers_to_others_name_no_forker():
    message = parse_message(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bK-cfab-0;o=x\r\n"
                            b"From: <sip:a@x>;tag=1\r\nTo: <sip:a@x>;tag=2\r\nCall-ID: c\r\nCSeq: 1 MESSAGE\r\n"
                            b"Content-Length: 0\r\n\r\n")
    assert SipFarm.forker_of(message) == "x"                    # a MESSAGE's too: its server transaction
    assert SipFarm.forker_of(parse_message(b"OPTIONS sip:a@x SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7;branch=z9hG4bK-cfab-0;o=x\r\n"
                                           b"From: <sip:a@x>;tag=1\r\nTo: <sip:a@x>\r\nCall-ID: c\r\n"
                                           b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")) is None  # a request
    foreign = parse_message(b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bKxyz;o=x\r\n"
                            b"From: <sip:a@x>;tag=1\r\nTo: <sip:a@x>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n"
                            b"Content-Length: 0\r\n\r\n")
    assert SipFarm.forker_of(foreign) is None                   # not our branch


def record(node_id: str, state: NodeState, beat_ago: float = 0.0) -> NodeRecord:
    now = datetime.now(timezone.utc)
    return NodeRecord(id=node_id, role="sipfarm", state=state, host="h", pid=1, version="v",
                      started_at=now - timedelta(hours=1), heartbeat_at=now - timedelta(seconds=beat_ago))


def a_call_id_hashing_to(member: str, members: list[str]) -> str:
    n = 0
    while choose(call_id := f"call-{n}", members) != member:
        n += 1
    return call_id


def answer_forked_by(forker: str, call_id: str) -> object:
    return parse_message(
        f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;rport;branch=z9hG4bK-cfab-0;m={names.node_key(forker)}"
        f";o={names.node_key(forker)}\r\nVia: SIP/2.0/UDP 198.51.100.9:5060;branch=z9hG4bKinv2\r\n"
        f"From: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: <sip:bob@{DOMAIN}>;tag=b1\r\nCall-ID: {call_id}\r\n"
        "CSeq: 2 INVITE\r\nContent-Length: 0\r\n\r\n".encode())


def test_an_answer_goes_to_its_forker_while_it_lives_draining_too_and_by_the_call_id_once_it_is_gone():
    shell = SipWorkload(plain_farm().settings)
    shell._runtime = SimpleNamespace(node_id="sipfarm-3")
    call_id = a_call_id_hashing_to("sipfarm-2", ["sipfarm-2", "sipfarm-3"])
    answer_ = answer_forked_by("sipfarm-1", call_id)
    for state, beat_ago, expected in ((NodeState.READY, 0, "sipfarm-1"), (NodeState.NOT_READY, 0, "sipfarm-1"),
                                      (NodeState.NOT_READY, 60, "sipfarm-2"), (NodeState.FAILED, 0, "sipfarm-2"),
                                      (NodeState.STOPPED, 0, "sipfarm-2")):
        shell._members = {"sipfarm-1": record("sipfarm-1", state, beat_ago),
                          "sipfarm-2": record("sipfarm-2", NodeState.READY),
                          "sipfarm-3": record("sipfarm-3", NodeState.READY)}
        shell._ready_until = 0.0
        assert shell._owner(answer_) == expected, (state, beat_ago)
    # Forked here: handled here, whoever the Call-ID hashes to.
    shell._runtime = SimpleNamespace(node_id="sipfarm-1")
    shell._members["sipfarm-1"] = record("sipfarm-1", NodeState.NOT_READY)
    shell._ready_until = 0.0
    assert shell._owner(answer_) is None


async def test_a_draining_member_has_work_while_a_fork_rings():
    farm = plain_farm()
    shell = SipWorkload(farm.settings)
    shell.farm = farm
    assert shell.active_work() == 0
    sent = await ringing_fork(farm)
    assert shell.active_work() == 1
    await farm.handle(reply(sent, 486, "b1"), CALLEE)          # the only branch failed: the caller has 486
    assert shell.active_work() == 0


async def test_a_draining_member_that_no_ready_member_relieves_takes_no_new_call():
    """A farm of one drains (or every member at once): no READY member takes its new calls.
    Forked here, each rang on as its work, so under steady calls it never reported empty
    before drain_timeout; a new call is refused 503 + Retry-After (§21.5.4) instead, while the
    call it forked before rings on and a copy of its INVITE still gets its 100."""
    farm = plain_farm()
    shell = SipWorkload(farm.settings)
    shell.farm = farm
    shell._runtime = SimpleNamespace(node_id="sipfarm-1")
    await ringing_fork(farm)
    assert shell.active_work() == 1
    shell.set_accepting(False)                                 # the drain begins
    challenge, _ = await one(farm, invite(call_id="call-2", branch="z9hG4bKnew1"), CALLER)
    auth = answer(challenge, "alice", method="INVITE", uri=f"sip:bob@{DOMAIN}", header="Proxy-Authorization",
                  nc=2)
    data = invite(cseq=2, auth=auth, branch="z9hG4bKnew2", call_id="call-2")
    [refused] = await shell._route(data, CALLER, farm.parse(data))
    response = parse_message(refused.data)
    assert response.status == 503 and response.headers.get("Retry-After") and refused.destination == CALLER
    assert shell.active_work() == 1                            # only the call forked before
    assert farm.metrics.overloaded._value.get() == 0
    # A copy of the INVITE forked before the drain is that call's: its 100, not a 503.
    copy = invite(cseq=2, auth="", branch="z9hG4bKinv2")
    [trying] = await shell._route(copy, CALLER, farm.parse(copy))
    assert parse_message(trying.data).status == 100
    shell.set_accepting(True)                                  # made READY again: calls are forked
    again = invite(cseq=3, auth=answer(challenge, "alice", method="INVITE", uri=f"sip:bob@{DOMAIN}",
                                       header="Proxy-Authorization", nc=3), branch="z9hG4bKnew3", call_id="call-2")
    out = await shell._route(again, CALLER, farm.parse(again))
    assert [parse_message(o.data).status for o in out if o.destination == CALLER] == [100]
    assert shell.active_work() == 2
