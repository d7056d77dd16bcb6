"""The proxy's client transactions over UDP, on a fake clock: Timer A/E retransmissions,
B/F timeouts turned into an untagged 408, provisional answers stopping an INVITE's timers."""

from __future__ import annotations

from colony.protocols.sip.message import make_response
from colony.protocols.sip.parser import parse_message
from colony.protocols.sip.transaction import Timers

from colony_sipfarm.farm import _made_for_timeout
from colony_sipfarm.retransmission import ProxyClientTransactions

CALLEE = ("UDP", "192.0.2.9", 5064)


def forwarded(method: str = "INVITE", branch: str = "z9hG4bK-cfabc-0") -> tuple:
    data = (f"{method} sip:bob@192.0.2.9:5064 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5060;branch={branch};m=sipfarm-1\r\n"
            "Via: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bKcaller\r\n"
            "From: <sip:alice@acme.example>;tag=a\r\nTo: <sip:bob@acme.example>\r\n"
            f"Call-ID: c1\r\nCSeq: 2 {method}\r\nMax-Forwards: 69\r\nContent-Length: 0\r\n\r\n").encode()
    return parse_message(data), data


def run(table: ProxyClientTransactions, until: float) -> list:
    fired = []
    while (t := table.next_deadline()) is not None and t <= until:
        fired.append((t, table.expire(t)))
    return fired


def test_an_unanswered_invite_is_sent_again_at_t1_doubling_then_fails_408():
    table = ProxyClientTransactions(Timers(t1=0.5))
    request, data = forwarded()
    assert table.sent(request, data, CALLEE, 0.0)
    fired = run(table, 100)
    sends = [t for t, due in fired for _ in due.retransmit]
    assert sends == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert all(d == data and dest == CALLEE for _, due in fired for d, dest, _ in due.retransmit)
    [(t, last)] = [(t, due) for t, due in fired if due.timed_out]
    assert t == 32.0
    [(response, where)] = last.timed_out
    assert response.status == 408 and where == CALLEE and _made_for_timeout(response)
    assert response.headers.get_all("Via")[0].startswith("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-cfabc-0")
    assert len(table) == 0 and table.next_deadline() is None


def test_a_provisional_stops_an_invites_retransmission_and_its_timeout():
    table = ProxyClientTransactions(Timers(t1=0.5))
    request, data = forwarded()
    table.sent(request, data, CALLEE, 0.0)
    assert table.received(make_response(request, 100), 0.2)
    assert table.next_deadline() is None               # ringing may last; Timer C is the farm's
    assert table.received(make_response(request, 200, to_tag="b"), 5.0)
    assert table.received(make_response(request, 200, to_tag="b"), 5.5)   # 2xx copies go on (end to end)
    assert run(table, 1000)[-1][1].timed_out == []     # Timer M ends it quietly
    assert len(table) == 0


def test_a_non_invite_goes_on_at_t2_while_proceeding_and_ends_on_its_final():
    table = ProxyClientTransactions(Timers(t1=0.5, t2=4.0))
    request, data = forwarded("MESSAGE")
    table.sent(request, data, CALLEE, 0.0)
    run(table, 2.0)                                    # sent again at 0.5 and 1.5
    table.received(make_response(request, 100), 2.0)
    fired = run(table, 10.0)
    assert [t for t, due in fired if due.retransmit] == [3.5, 7.5]   # the due one, then T2 apart (§17.1.2.2)
    assert table.received(make_response(request, 200, to_tag="b"), 10.0)
    assert not table.received(make_response(request, 200, to_tag="b"), 10.5)   # a retransmission: absorbed
    assert all(not due.retransmit and not due.timed_out for _, due in run(table, 100))
    assert len(table) == 0
    assert table.received(make_response(request, 200, to_tag="b"), 200)        # after Timer K: passed on


def test_the_callers_retransmission_starts_no_second_transaction_and_acks_none():
    table = ProxyClientTransactions()
    request, data = forwarded()
    assert table.sent(request, data, CALLEE, 0.0)
    assert not table.sent(request, data, CALLEE, 0.4)
    ack, ack_data = forwarded("ACK")
    assert not table.sent(ack, ack_data, CALLEE, 0.5)
    assert len(table) == 1


def test_the_table_is_bounded():
    table = ProxyClientTransactions(limit=3)
    started = [table.sent(*forwarded(branch=f"z9hG4bK-cf{n}-0"), CALLEE, 0.0) for n in range(5)]
    assert started == [True, True, True, False, False] and len(table) == 3


def test_a_response_of_no_transaction_is_passed_on():
    table = ProxyClientTransactions()
    request, _ = forwarded()
    assert table.received(make_response(request, 180, to_tag="b"), 0.0)


def test_a_real_408_is_acked_as_any_failure():
    request, _ = forwarded()
    assert not _made_for_timeout(make_response(request, 408, to_tag="uas"))
    assert not _made_for_timeout(make_response(request, 486))


def test_an_invite_that_rang_and_never_got_a_final_answer_leaves_the_table_after_its_lifetime():
    """A phone switched off while it rang answers nothing more, and a ringing INVITE's client
    transaction has no timer of its own (§17.1.1.2): it left the table only by a final
    answer, so such entries filled it and then nothing this member forwarded was
    retransmitted any more."""
    table = ProxyClientTransactions(Timers(t1=0.5), limit=3, lifetime=300.0)
    request, data = forwarded(branch="z9hG4bK-cfrang-0")
    assert table.sent(request, data, CALLEE, 0.0)
    table.received(make_response(request, 180, to_tag="b"), 0.1)
    assert len(table) == 1 and table.next_deadline() is None        # proceeding: no timer
    for n in range(2):
        other, other_data = forwarded(branch=f"z9hG4bK-cfother{n}-0")
        assert table.sent(other, other_data, CALLEE, 1.0)
        table.received(make_response(other, 180, to_tag="b"), 1.1)
    late, late_data = forwarded(branch="z9hG4bK-cflate-0")
    assert not table.sent(late, late_data, CALLEE, 299.0)           # full: no retransmission for it
    assert table.sent(late, late_data, CALLEE, 300.5)               # the first one has left
    assert len(table) == 3
    due = table.expire(302.0)                                       # the other two leave at 301.0
    assert [d for d, _, _ in due.retransmit] == [late_data] and len(table) == 1


def test_the_invites_of_a_gone_members_forks_leave_the_table_for_the_shell_to_cancel():
    table = ProxyClientTransactions(Timers(t1=0.5))
    ringing, ringing_data = forwarded(branch="z9hG4bK-cfring-0")
    calling, calling_data = forwarded(branch="z9hG4bK-cfcall-0")
    answered, answered_data = forwarded(branch="z9hG4bK-cfdone-0")
    mine, mine_data = forwarded(branch="z9hG4bK-cfmine-0")
    options, options_data = forwarded("OPTIONS", branch="z9hG4bK-cfopt-0")
    for request, data, forker in ((ringing, ringing_data, "sipfarm-2"), (calling, calling_data, "sipfarm-2"),
                                  (answered, answered_data, "sipfarm-2"), (mine, mine_data, ""),
                                  (options, options_data, "sipfarm-2")):
        assert table.sent(request, data, CALLEE, 0.0, forker)
    table.received(make_response(ringing, 180, to_tag="b"), 0.1)
    table.received(make_response(answered, 486, to_tag="b"), 0.1)      # completed: nothing to cancel
    lost = table.forked_by("sipfarm-2")
    assert sorted(r.top_via().branch for r, _, _ in lost) == ["z9hG4bK-cfcall-0", "z9hG4bK-cfring-0"]
    assert all(dest == CALLEE for _, _, dest in lost)
    assert table.forked_by("sipfarm-2") == []                            # once
    assert len(table) == 3                                               # ours, the OPTIONS, the completed one
