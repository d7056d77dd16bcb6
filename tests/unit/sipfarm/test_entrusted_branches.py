"""A UDP branch the Call-ID's owner forked and put on the wire from its own socket is entrusted
to the Call-ID's next owner, which cancels it when the forker dies and fails it with 430 (the
caller hears 480); a copy of the caller's INVITE or its CANCEL that reaches that member goes
out under the entrusted INVITE's Via, so the phone sees the same transaction (§17.2.3), not a
merged request (§8.2.2.2).  The farm core with injected clocks here; the frames and the
forker's bookkeeping on their own; end to end with two real members in
tests/integration/sipfarm/test_ringing_member_death.py."""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from colony.bus import names
from colony.cluster.membership import NodeRecord, NodeState
from colony.protocols.sip.message import Headers, SipRequest, make_response
from colony.protocols.sip.parser import parse_message
from colony.settings import Settings

from colony_sipfarm.entrusted_branches import FORGOTTEN_PER_FRAME, EntrustedBranches, Entrustments
from colony_sipfarm.farm import FORK_LIFETIME, LOCAL_TAG, SipFarm
from colony_sipfarm.inner_frames import Entrusted, InnerFrameError, RelayKey, open_frame, seal_entrusted
from colony_sipfarm.sent_invites import cancel_of, kept_of
from colony_sipfarm.workload import SipWorkload, _bind_udp, _UdpSocket

from test_farm import DOMAIN, Auth, Clock, Counters, Dialogs, Store, answer, invite, one, registered, reply
from test_ringing_through_a_gone_member import Nodes   # the nodes bucket's watch, faked

CALLER = ("UDP", "198.51.100.9", 5060)
BOB = ("UDP", "192.0.2.7", 5062)
FORKER = names.node_key("sipfarm-2")


def member(node_id: str, address: tuple[str, int], store: Store) -> SipFarm:
    """A member with its own clock and address; the bindings are the farm's (one store)."""
    clock = Clock()
    farm = SipFarm(Settings(), node_id, store=store, dialogs=Dialogs(), auth=Auth(), counters=Counters(),
                   secret=b"k" * 32, address=address, registry=CollectorRegistry(), meter=lambda usage: None,
                   clock=clock)
    farm.clock_ = clock
    return farm


@pytest.fixture
async def members():
    """(the forker sipfarm-2, the Call-ID's next owner sipfarm-1, alice's authenticated INVITE,
    the INVITE the forker put on the wire to bob's UDP phone)."""
    store = Store(Clock())
    forker = member("sipfarm-2", ("127.0.0.2", 5060), store)
    keeper = member("sipfarm-1", ("127.0.0.1", 5060), store)
    await registered(forker, user="bob", contact="sip:bob@192.0.2.7:5062")
    challenge, _ = await one(forker, invite(), CALLER)
    auth = answer(challenge, "alice", method="INVITE", uri=f"sip:bob@{DOMAIN}", header="Proxy-Authorization")
    alices = invite(cseq=2, auth=auth, branch="z9hG4bKinv2")
    trying, sent = await forker.handle(alices, CALLER)
    assert parse_message(trying.data).status == 100 and sent.destination == BOB and sent.member is None
    return forker, keeper, alices, parse_message(sent.data)


def entrust(keeper: SipFarm, sent: SipRequest) -> None:
    """What the forker's shell tells the keeper (one inner-relay datagram), as the keeper reads it."""
    key = RelayKey.from_secret(b"k" * 32)
    frame = open_frame(key, seal_entrusted(key, Entrusted([], BOB, kept_of(sent).encode()), "sipfarm-1",
                                           "sipfarm-2", ("127.0.0.2", 5064)))
    assert frame.entrusted.destination == BOB
    assert keeper.entrust(names.node_key(frame.sender), frame.entrusted.invite, frame.entrusted.destination)


async def test_the_keeper_cancels_a_branch_whose_forker_died_and_the_caller_hears_480(members):
    forker, keeper, _, sent = members
    entrust(keeper, sent)
    assert keeper.entrusted.forkers() == [FORKER]
    keeper.clock_.now += 150                     # bob rang a while; then the forker is gone
    [(kept, destination)] = keeper.entrusted_by(FORKER)
    assert destination == BOB
    # The CANCEL is the INVITE's (§9.1): its Request-URI, its top Via alone, From, To, Call-ID, CSeq number.
    cancel = cancel_of(kept)
    assert cancel.headers.get_all("Via") == [sent.headers.get("Via")]
    assert str(cancel.uri) == str(sent.uri) and cancel.call_id == sent.call_id
    assert cancel.cseq().number == sent.cseq().number and cancel.headers.get("To") == sent.headers.get("To")
    # Failed with 430 made from it (all its Vias): the keeper, which has no fork, tells alice 480.
    out = await keeper.handle(make_response(kept, 430, to_tag=None).encode(), destination)
    assert [(o.destination, parse_message(o.data).status) for o in out] == [(CALLER, 480)]
    assert (parse_message(out[0].data).address("To").tag or "").startswith(LOCAL_TAG)
    assert keeper.entrusted_by(FORKER) == [] and keeper.entrusted.forkers() == []      # once


async def test_a_branch_older_than_a_fork_lives_or_answered_is_not_cancelled(members):
    forker, keeper, _, sent = members
    entrust(keeper, sent)
    keeper.clock_.now += FORK_LIFETIME + 64 * Settings().sip_timer_t1 + 1     # Timer C ended it at the forker
    assert keeper.entrusted_by(FORKER) == []
    entrust(keeper, sent)
    # Another member cannot make it forget the forker's branches; the forker can (its answer came).
    keeper.entrusted.forget(names.node_key("sipfarm-3"), [sent.top_via().branch])
    keeper.entrusted.forget(FORKER, [sent.top_via().branch])
    assert keeper.entrusted_by(FORKER) == []


def test_the_keeper_holds_the_newest_branches_only():
    table = EntrustedBranches(lifetime=200, limit=2)
    for n in range(3):
        headers = Headers()
        headers.add("Via", f"SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bK-cf{n}")
        kept = SipRequest(headers=headers, method="INVITE", uri="sip:bob@192.0.2.7:5062")
        table.entrust(FORKER, kept, BOB, 1000.0 + n)
    assert table.forkers() == [FORKER] and len(table) == 2
    assert [e.invite.top_via().branch for e in table.orphaned_by(FORKER, 1003.0)] == ["z9hG4bK-cf1", "z9hG4bK-cf2"]
    assert table.forkers() == [] and len(table) == 0


async def test_the_callers_copy_at_the_next_owner_is_the_same_transaction_to_the_phone_not_a_merged_request(members):
    """alice's INVITE again (her 100 was lost), at the keeper -- the Call-ID's owner now: the
    branch has the same id on every member, and under the keeper's own Via bob's phone would
    see a second INVITE of the same call (§8.2.2.2: 482, or a second ringing).  It goes out
    under the Via bob has, so it is a copy of the INVITE he rings for, and the branch is the
    keeper's own from then on: not cancelled when the forker is seen gone."""
    forker, keeper, alices, sent = members
    entrust(keeper, sent)
    trying, again = await keeper.handle(alices, CALLER)
    assert parse_message(trying.data).status == 100 and again.destination == BOB
    copy = parse_message(again.data)
    assert copy.headers.get("Via") == sent.headers.get("Via")
    assert copy.headers.get_all("Via")[1:] == sent.headers.get_all("Via")[1:]
    assert keeper.entrusted_by(FORKER) == []
    # bob's answers (to the shared address the Via names) reach the keeper's fork: alice hears them.
    assert [parse_message(o.data).status for o in await keeper.handle(reply(copy, 180, "b1"), BOB)] == [180]
    out = await keeper.handle(reply(copy, 486, "b1"), BOB)
    assert [(o.destination, getattr(m := parse_message(o.data), "method", None) or m.status) for o in out] == [
        (BOB, "ACK"), (CALLER, 486)]


async def test_the_callers_cancel_at_the_next_owner_matches_the_invite_the_phone_rings_for(members):
    forker, keeper, _, sent = members
    entrust(keeper, sent)
    cancel = (f"CANCEL sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.9:5060;branch=z9hG4bKinv2\r\n"
              f"From: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: <sip:bob@{DOMAIN}>\r\nCall-ID: call-1\r\n"
              f"CSeq: 2 CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
    [out] = await keeper.handle(cancel, CALLER)
    forwarded = parse_message(out.data)
    assert forwarded.method == "CANCEL" and out.destination == BOB
    assert forwarded.headers.get("Via") == sent.headers.get("Via")        # §9.1: the INVITE's top Via
    # Still kept: if nothing answers alice's INVITE, the forker's death ends it as before.
    assert [d for _, d in keeper.entrusted_by(FORKER)] == [BOB]


def test_an_entrusted_frame_carries_the_branches_to_forget_and_refuses_what_is_not_one():
    key = RelayKey.from_secret(b"k" * 32)
    forgotten = [f"z9hG4bK-cf{n:024x}-0" for n in range(FORGOTTEN_PER_FRAME)]
    frame = open_frame(key, seal_entrusted(key, Entrusted(forgotten), "sipfarm-1", "sipfarm-2", ("10.0.0.2", 2564)))
    assert frame.entrusted == Entrusted(forgotten) and frame.sender == "sipfarm-2"
    with pytest.raises(ValueError):
        Entrusted(forgotten + ["one-more"]).to_frame()
    for body in (b"no line", b"-\nUDP 192.0.2.7\nINVITE", b"-\nUDP 192.0.2.7 99999\nINVITE", b"a  b\n"):
        data = b"CIR1 E sipfarm-1 sipfarm-2 10.0.0.2 2564 -\n" + body
        with pytest.raises(InnerFrameError):
            open_frame(key, data + key.mac(data))


def test_the_forker_tells_each_answered_branch_once_on_its_next_frame_to_that_member():
    told = Entrustments(lifetime=200)
    assert told.entrusted("b1", "sipfarm-1", 0.0) and told.entrusted("b2", "sipfarm-3", 0.0)
    assert not told.entrusted("b1", "sipfarm-1", 1.0)            # a copy: told already
    told.answered("b1")
    told.answered("b1")                                            # a copy of the answer
    told.answered("unknown")
    assert told.waiting() == ["sipfarm-1"]
    assert told.to_forget("sipfarm-3") == [] and told.to_forget("sipfarm-1") == ["b1"]
    assert told.to_forget("sipfarm-1") == [] and told.waiting() == []
    for n in range(FORGOTTEN_PER_FRAME + 1):
        told.entrusted(f"c{n}", "sipfarm-1", 2.0)
        told.answered(f"c{n}")
    assert len(told.to_forget("sipfarm-1")) == FORGOTTEN_PER_FRAME and told.to_forget("sipfarm-1") == [f"c{FORGOTTEN_PER_FRAME}"]
    # Old branches are not remembered past the lifetime: their answers tell nobody.
    told.entrusted("d", "sipfarm-1", 10.0)
    told.entrusted("e", "sipfarm-1", 300.0)
    told.answered("d")
    assert told.waiting() == []


async def _shell(node_id: str, farm: SipFarm) -> SipWorkload:
    shell = SipWorkload(Settings())
    shell.farm, shell.farm_address = farm, ("192.0.2.100", 5060)
    shell._runtime = SimpleNamespace(node_id=node_id, nc=None)
    shell._relay_key = RelayKey.from_secret(b"k" * 32)
    shell.inner = _UdpSocket(asyncio.get_running_loop(), await _bind_udp("127.0.0.1", 0), shell._inner_received)
    shell.inner_address = ("127.0.0.1", shell.inner.get_extra_info("sockname")[1])
    shell.udp = SimpleNamespace(sendto=lambda data, addr: None, close=lambda: None)
    shell.ready_members = lambda: ["sipfarm-1", "sipfarm-2"]
    return shell


async def _until(probe, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_the_forkers_shell_entrusts_each_branch_once_and_has_it_forgotten_once_answered(members):
    """Over real UDP sockets on 127.0.0.1: the INVITE the forker puts on the wire itself goes to
    the Call-ID's next owner in one datagram (not again for its retransmission), and bob's final
    answer has it forgotten there (the frame of the second's flush)."""
    forker, keeper, _, sent = members
    forking, keeping = await _shell("sipfarm-2", forker), await _shell("sipfarm-1", keeper)
    forking._inner_peers["sipfarm-1"] = (socket.AF_INET, keeping.inner_address)
    try:
        data = sent.encode()
        forking._start_client_transaction(data, BOB)
        forking._start_client_transaction(data, BOB)          # a copy: nothing new to tell
        await _until(lambda: len(keeper.entrusted) == 1)
        assert keeper.entrusted.forkers() == [FORKER]
        forking._start_client_transaction(data.replace(b"INVITE sip:", b"OPTIONS sip:", 1), BOB)   # not an INVITE
        forking.received(reply(sent, 486, "b1"), BOB)
        forking._tell_forgotten()
        await _until(lambda: len(keeper.entrusted) == 0)
        # An INVITE another member forked (this one puts it on the wire for it) is that one's to entrust.
        forking._start_client_transaction(data.replace(b"z9hG4bK-cf", b"z9hG4bK-cfx"), BOB, forker="sipfarm-9")
        forking._start_client_transaction(data.replace(b"z9hG4bK-cf", b"z9hG4bK-cfy"), BOB)     # after it, on one socket
        await _until(lambda: len(keeper.entrusted) == 1)
        [(kept, _)] = keeper.entrusted_by(FORKER)
        assert kept.top_via().branch.startswith("z9hG4bK-cfy")
    finally:
        for shell in (forking, keeping):
            shell.inner.close()
            shell._close_inner_sockets()


async def test_a_forker_that_stops_tells_what_was_answered_in_its_last_second(members):
    """A STOPPED record has the keeper cancel whatever it still holds of that member: a branch
    answered just before would cost a CANCEL that does nothing and a late 480."""
    forker, keeper, _, sent = members
    forking, keeping = await _shell("sipfarm-2", forker), await _shell("sipfarm-1", keeper)
    forking._inner_peers["sipfarm-1"] = (socket.AF_INET, keeping.inner_address)
    try:
        forking._start_client_transaction(sent.encode(), BOB)
        await _until(lambda: len(keeper.entrusted) == 1)
        forking.received(reply(sent, 200, "b1"), BOB)
        await forking.stop()
        await _until(lambda: len(keeper.entrusted) == 0)
    finally:
        keeping.inner.close()
        keeping._close_inner_sockets()


# --- a forker gone by its heartbeat alone may be paused, not dead ------------------------------

def _record(node_id: str, state: NodeState = NodeState.READY, beat_ago: float = 0.0) -> NodeRecord:
    now = datetime.now(timezone.utc)
    return NodeRecord(id=node_id, role="sipfarm", state=state, host="h", pid=1, version="v",
                      started_at=now - timedelta(hours=1), heartbeat_at=now - timedelta(seconds=beat_ago))


async def _keeper_of_a_ringing_branch(keeper: SipFarm, sent: SipRequest, settings: Settings | None = None):
    """The keeper's shell holding ``sent`` for sipfarm-2, whose inner listener is a socket nobody
    reads (a process that is paused); what the keeper sends over UDP and fails with 430."""
    keeping = await _shell("sipfarm-1", keeper)
    keeping.settings = settings or Settings(node_ttl=5)
    sent_out: list = []
    failed: list = []
    keeping.udp = SimpleNamespace(sendto=lambda data, addr: sent_out.append(parse_message(data)), close=lambda: None)
    keeping._flow_failed = lambda data, destination: failed.append(destination)
    paused = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    paused.bind(("127.0.0.1", 0))
    keeping._inner_peers["sipfarm-2"] = (socket.AF_INET, paused.getsockname())
    entrust(keeper, sent)
    return keeping, paused, sent_out, failed


def _cancels(sent_out: list) -> list:
    return [m for m in sent_out if getattr(m, "method", None) == "CANCEL"]


@pytest.mark.parametrize("verdict", [_record("sipfarm-2", NodeState.FAILED), _record("sipfarm-2", beat_ago=30)],
                         ids=["failed", "heartbeat stale"])
async def test_a_paused_forker_keeps_its_ringing_branches_and_a_dead_one_has_them_cancelled(members, verdict):
    """The controller declares a member FAILED when its heartbeats stop for node_ttl -- a SIGKILL,
    or a SIGSTOP, a stalled VM, a bus that did not take them.  A paused forker comes back with
    its fork: cancelled meanwhile, bob's phone stopped ringing for a call that was still there,
    and an answer just before the CANCEL connected bob to a caller who had heard 480.  Its
    inner listener is asked: still bound (paused), its branches ring on; closed (the process
    died), they are cancelled and fail with 430, once."""
    forker, keeper, _, sent = members
    keeping, paused, sent_out, failed = await _keeper_of_a_ringing_branch(keeper, sent)
    try:
        keeping._members = {"sipfarm-1": _record("sipfarm-1"), "sipfarm-2": verdict}
        for _ in range(3):                    # three sweeps, a second apart in the member
            keeping._fail_lost_branches()
            await asyncio.sleep(0.05)
        assert _cancels(sent_out) == [] and failed == [] and len(keeper.entrusted) == 1
        # It was paused: back, beating, nothing was cancelled -- and its death later still is.
        keeping._members["sipfarm-2"] = _record("sipfarm-2")
        keeping._fail_lost_branches()
        assert keeping._gone_since == {} and len(keeper.entrusted) == 1
        keeping._members["sipfarm-2"] = verdict
        paused.close()                        # SIGKILL: nobody has its port any more

        def swept() -> bool:
            keeping._fail_lost_branches()
            return bool(failed)
        await _until(swept)
        [cancel] = _cancels(sent_out)
        assert cancel.headers.get_all("Via") == [sent.headers.get("Via")] and failed == [BOB]
        keeping._fail_lost_branches()
        assert len(_cancels(sent_out)) == 1 and len(keeper.entrusted) == 0 and keeping._gone_since == {}
    finally:
        paused.close()
        keeping.inner.close()
        keeping._close_inner_sockets()


async def test_a_probe_this_member_cannot_send_for_want_of_descriptors_is_no_proof_of_death(members):
    """The probe's socket cannot be made (EMFILE: this member is out of descriptors) -- our own
    trouble, not the forker's death: its branches ring on; a refused probe still ends them."""
    import errno

    forker, keeper, _, sent = members
    keeping, paused, sent_out, failed = await _keeper_of_a_ringing_branch(keeper, sent)
    real = keeping._inner_socket

    def no_descriptors(peer):
        raise OSError(errno.EMFILE, "Too many open files")
    try:
        keeping._members = {"sipfarm-1": _record("sipfarm-1"), "sipfarm-2": _record("sipfarm-2", NodeState.FAILED)}
        keeping._inner_socket = no_descriptors
        for _ in range(3):
            keeping._fail_lost_branches()
        assert _cancels(sent_out) == [] and failed == [] and len(keeper.entrusted) == 1
        keeping._inner_socket = real
        paused.close()

        def swept() -> bool:
            keeping._fail_lost_branches()
            return bool(failed)
        await _until(swept)
        assert len(_cancels(sent_out)) == 1 and failed == [BOB]
    finally:
        paused.close()
        keeping.inner.close()
        keeping._close_inner_sockets()


async def test_a_forker_that_stopped_or_whose_record_is_gone_has_its_branches_cancelled_at_once(members):
    forker, keeper, _, sent = members
    keeping, paused, sent_out, failed = await _keeper_of_a_ringing_branch(keeper, sent)
    try:
        keeping._members = {"sipfarm-1": _record("sipfarm-1"), "sipfarm-2": _record("sipfarm-2", NodeState.STOPPED)}
        keeping._fail_lost_branches()
        assert len(_cancels(sent_out)) == 1 and failed == [BOB]
        entrust(keeper, sent)
        del keeping._members["sipfarm-2"]
        keeping._fail_lost_branches()
        assert len(_cancels(sent_out)) == 2 and failed == [BOB, BOB]
    finally:
        paused.close()
        keeping.inner.close()
        keeping._close_inner_sockets()


async def test_a_forker_gone_by_its_heartbeat_that_never_refuses_has_its_branches_cancelled_after_64_t1(members):
    """A host that is gone answers nothing at all (nor does a pause that lasts): its branches
    are cancelled 64*T1 after it was first found gone."""
    forker, keeper, _, sent = members
    settings = Settings(node_ttl=5, sip_timer_t1=0.05)           # 64*T1 = 3.2 s
    keeping, paused, sent_out, failed = await _keeper_of_a_ringing_branch(keeper, sent, settings)
    try:
        keeping._members = {"sipfarm-1": _record("sipfarm-1"), "sipfarm-2": _record("sipfarm-2", NodeState.FAILED)}
        started = time.monotonic()

        def swept() -> bool:
            keeping._fail_lost_branches()
            return bool(failed)
        await _until(swept, timeout=10)
        assert time.monotonic() - started >= 64 * settings.sip_timer_t1 - 0.1
        assert len(_cancels(sent_out)) == 1 and failed == [BOB]
    finally:
        paused.close()
        keeping.inner.close()
        keeping._close_inner_sockets()


async def test_the_branches_a_keeper_held_are_entrusted_again_when_it_stops(members):
    """The keeper drains and stops (a rolling upgrade), or dies: what it held went with it, and
    should the forker die next bob's phone would ring on unguarded.  The forker, seeing it gone,
    entrusts the branch still ringing to the next choice -- not one that had its answer."""
    forker, keeper, _, sent = members
    third = member("sipfarm-3", ("127.0.0.3", 5060), Store(Clock()))
    forking, keeping, thirding = (await _shell("sipfarm-2", forker), await _shell("sipfarm-1", keeper),
                                  await _shell("sipfarm-3", third))
    forking._inner_peers["sipfarm-1"] = (socket.AF_INET, keeping.inner_address)
    forking._inner_peers["sipfarm-3"] = (socket.AF_INET, thirding.inner_address)
    try:
        forking.ready_members = lambda: ["sipfarm-1", "sipfarm-2"]
        forking._start_client_transaction(sent.encode(), BOB)
        await _until(lambda: len(keeper.entrusted) == 1)
        forking._members = {n: _record(n) for n in ("sipfarm-1", "sipfarm-2", "sipfarm-3")}
        forking._tell_forgotten()
        assert len(third.entrusted) == 0                         # its keeper is there: nothing new
        forking._members["sipfarm-1"] = _record("sipfarm-1", NodeState.STOPPED)
        forking.ready_members = lambda: ["sipfarm-2", "sipfarm-3"]
        forking._tell_forgotten()
        await _until(lambda: len(third.entrusted) == 1)
        [(kept, destination)] = third.entrusted_by(FORKER)
        assert destination == BOB and kept.headers.get_all("Via") == sent.headers.get_all("Via")
        # Answered now: sipfarm-3 is told to forget it, and the forker has nothing left with anyone.
        forking._start_client_transaction(sent.encode(), BOB)     # a copy: told already
        forking.received(reply(sent, 486, "b1"), BOB)
        third.entrust(FORKER, kept_of(sent).encode(), BOB)
        forking._tell_forgotten()
        await _until(lambda: len(third.entrusted) == 0)
        assert forking._entrustments.keepers() == []
    finally:
        for shell in (forking, keeping, thirding):
            shell.inner.close()
            shell._close_inner_sockets()


def test_a_forker_knows_which_member_holds_what_and_takes_back_a_gone_ones_branches():
    told = Entrustments(lifetime=200, limit=3)
    for n, keeper in enumerate(["k1", "k1", "k2"]):
        told.entrusted(f"b{n}", keeper, float(n))
    assert sorted(told.keepers()) == ["k1", "k2"]
    told.answered("b0")
    assert told.taken_back("k1") == ["b1"] and told.keepers() == ["k2"] and told.taken_back("k1") == []
    for n in range(3, 7):                                      # the oldest go past the limit
        told.entrusted(f"b{n}", "k3", float(n))
    assert told.keepers() == ["k3"] and len(told.taken_back("k3")) == 3


async def test_the_branches_a_keeper_held_are_entrusted_again_when_it_restarts_before_it_is_seen_gone(members):
    """The keeper is killed and its supervisor starts it again before its heartbeat goes stale
    (a new started_at, STARTING): the new process holds nothing, and it is never seen gone --
    its branches must go to the next choice then, or bob rings on unguarded should the forker
    die next."""
    forker, keeper, _, sent = members
    third = member("sipfarm-3", ("127.0.0.3", 5060), Store(Clock()))
    forking, keeping, thirding = (await _shell("sipfarm-2", forker), await _shell("sipfarm-1", keeper),
                                  await _shell("sipfarm-3", third))
    forking._inner_peers["sipfarm-1"] = (socket.AF_INET, keeping.inner_address)
    forking._inner_peers["sipfarm-3"] = (socket.AF_INET, thirding.inner_address)
    try:
        forking.ready_members = lambda: ["sipfarm-1", "sipfarm-2"]
        forking._start_client_transaction(sent.encode(), BOB)
        await _until(lambda: len(keeper.entrusted) == 1)
        def at(record: NodeRecord, shell: SipWorkload) -> NodeRecord:
            return record.model_copy(update={"addresses": {"sip_inner": "127.0.0.1:%d" % shell.inner_address[1]}})

        old = at(_record("sipfarm-1"), keeping)
        nodes = Nodes([old, at(_record("sipfarm-2"), forking), at(_record("sipfarm-3"), thirding)])
        forking._runtime.nc = SimpleNamespace(jetstream=lambda: nodes)
        await forking._watch_members()
        assert len(third.entrusted) == 0                         # its keeper is there: nothing new
        restarted = old.model_copy(update={"started_at": datetime.now(timezone.utc), "state": NodeState.STARTING})
        nodes.records = [restarted]
        forking.ready_members = lambda: ["sipfarm-2", "sipfarm-3"]
        await forking._watch_members()
        forking._tell_forgotten()
        await _until(lambda: len(third.entrusted) == 1)
        [(kept, destination)] = third.entrusted_by(FORKER)
        assert destination == BOB and kept.top_via().branch == sent.top_via().branch
        assert forking._entrustments.keepers() == ["sipfarm-3"]
    finally:
        for shell in (forking, keeping, thirding):
            shell.inner.close()
            shell._close_inner_sockets()
