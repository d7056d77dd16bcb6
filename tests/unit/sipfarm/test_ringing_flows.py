"""What a connection keeps of the INVITEs ringing on it (colony_sipfarm.workload._Flow): each
until its final answer comes on that connection, the newest RINGING_PER_FLOW at most, and
none Timer C has ended -- those are what fail with 430 when the connection closes."""

from colony.protocols.sip.parser import parse_message

from colony_sipfarm.farm import FORK_LIFETIME
from colony_sipfarm.workload import CANCELLED_KEPT, RINGING_PER_FLOW, CancelledInvites, _Flow


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


def test_the_invites_a_gone_member_forked_stop_ringing_and_the_rest_ring_on():
    flow = _Flow("TCP", writer=None)
    flow.sent_invite("z9hG4bK-a", b"INVITE a", now=0.0, forker="sipfarm-2")
    flow.sent_invite("z9hG4bK-b", b"INVITE b", now=1.0, forker="sipfarm-3")
    flow.sent_invite("z9hG4bK-c", b"INVITE c", now=2.0)              # forked where the flow is
    assert flow.forked_by("sipfarm-2", now=3.0) == [b"INVITE a"]
    assert flow.forked_by("sipfarm-2", now=3.0) == []                 # once
    assert flow.unanswered(now=3.0) == [b"INVITE b", b"INVITE c"]


def invite(branch: str):
    return parse_message((f"INVITE sip:bob@192.0.2.9 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch={branch}\r\n"
                          "From: <sip:alice@acme.example>;tag=a\r\nTo: <sip:bob@acme.example>\r\nCall-ID: c1\r\n"
                          "CSeq: 2 INVITE\r\nMax-Forwards: 69\r\nContent-Length: 0\r\n\r\n").encode())


def test_a_cancelled_invite_is_recognised_for_each_copy_of_its_answer_until_that_had_time_to_come():
    cancelled = CancelledInvites()
    assert not cancelled
    cancelled.add(invite("z9hG4bK-a"), ("TCP", "192.0.2.9", 5070), now=1.0)
    assert cancelled
    request, destination = cancelled.get("z9hG4bK-a", now=4.0)
    assert request.top_via().branch == "z9hG4bK-a" and destination == ("TCP", "192.0.2.9", 5070)
    assert cancelled.get("z9hG4bK-a", now=5.0) is not None               # a copy of the 487: ACKed again
    assert cancelled.get("z9hG4bK-b", now=4.0) is None                   # not cancelled: ringing on
    assert cancelled.get("z9hG4bK-a", now=1.0 + CANCELLED_KEPT + 1) is None


def test_the_cancelled_invites_are_bounded():
    cancelled = CancelledInvites(limit=3)
    for n in range(5):
        cancelled.add(invite(f"z9hG4bK-{n}"), ("UDP", "192.0.2.9", 5070), now=float(n))
    assert [n for n in range(5) if cancelled.get(f"z9hG4bK-{n}", now=5.0)] == [2, 3, 4]
