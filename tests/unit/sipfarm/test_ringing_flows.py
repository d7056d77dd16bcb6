"""What a connection keeps of the INVITEs ringing on it (colony_sipfarm.workload._Flow): each
until its final answer comes on that connection, the newest RINGING_PER_FLOW at most, and
none Timer C has ended -- those are what fail with 430 when the connection closes."""

from colony_sipfarm.farm import FORK_LIFETIME
from colony_sipfarm.workload import CANCELLED_KEPT, RINGING_PER_FLOW, _Flow


def test_an_invite_rings_until_its_final_answer_comes_on_the_flow():
    flow = _Flow("TCP", writer=None)
    flow.sent_invite("z9hG4bK-a", b"INVITE a", now=0.0)
    flow.sent_invite("z9hG4bK-b", b"INVITE b", now=1.0)
    assert flow.unanswered(now=2.0) == [b"INVITE a", b"INVITE b"]
    flow.answered("z9hG4bK-a")
    flow.answered("z9hG4bK-unknown")          # another transaction's answer: nothing to do
    assert flow.unanswered(now=2.0) == [b"INVITE b"]


def test_timer_c_has_ended_what_rang_longer_than_a_fork_lives():
    flow = _Flow("WSS", writer=None)
    flow.sent_invite("z9hG4bK-old", b"INVITE old", now=0.0)
    flow.sent_invite("z9hG4bK-new", b"INVITE new", now=FORK_LIFETIME - 1)
    assert flow.unanswered(now=FORK_LIFETIME + 0.5) == [b"INVITE new"]


def test_a_flow_keeps_the_newest_invites_only():
    flow = _Flow("TLS", writer=None)
    for n in range(RINGING_PER_FLOW + 10):
        flow.sent_invite(f"z9hG4bK-{n}", f"INVITE {n}".encode(), now=float(n))
    kept = flow.unanswered(now=float(RINGING_PER_FLOW + 10))
    assert len(kept) == RINGING_PER_FLOW and kept[0] == b"INVITE 10" and kept[-1] == f"INVITE {RINGING_PER_FLOW + 9}".encode()


def test_the_invites_a_gone_member_forked_move_to_cancelled_and_the_rest_ring_on():
    flow = _Flow("TCP", writer=None)
    flow.sent_invite("z9hG4bK-a", b"INVITE a", now=0.0, forker="sipfarm-2")
    flow.sent_invite("z9hG4bK-b", b"INVITE b", now=1.0, forker="sipfarm-3")
    flow.sent_invite("z9hG4bK-c", b"INVITE c", now=2.0)              # forked where the flow is
    assert flow.forked_by("sipfarm-2", now=3.0) == [b"INVITE a"]
    assert flow.forked_by("sipfarm-2", now=3.0) == []                 # once
    assert flow.unanswered(now=3.0) == [b"INVITE b", b"INVITE c"]
    # The phone's answer to the cancelled INVITE is recognised once, within CANCELLED_KEPT.
    assert flow.cancel_answered("z9hG4bK-a", now=4.0) == b"INVITE a"
    assert flow.cancel_answered("z9hG4bK-a", now=4.0) is None
    assert flow.cancel_answered("z9hG4bK-b", now=4.0) is None         # not cancelled: ringing on


def test_a_cancelled_invite_is_forgotten_after_its_answer_had_time_to_come():
    flow = _Flow("TCP", writer=None)
    flow.sent_invite("z9hG4bK-a", b"INVITE a", now=0.0, forker="sipfarm-2")
    flow.forked_by("sipfarm-2", now=1.0)
    assert flow.cancel_answered("z9hG4bK-a", now=1.0 + CANCELLED_KEPT + 1) is None
    for n in range(RINGING_PER_FLOW + 5):
        flow.sent_invite(f"z9hG4bK-{n}", b"INVITE", now=2.0, forker="sipfarm-2")
    flow.forked_by("sipfarm-2", now=3.0)
    assert len(flow.cancelled) <= RINGING_PER_FLOW
