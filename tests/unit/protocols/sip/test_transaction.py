"""The four transaction machines (RFC 3261 §17 + RFC 6026) driven by a fake clock: every
timer, retransmission, and the reliable-transport shortcuts."""

from __future__ import annotations

from colony.protocols.sip.message import make_response
from colony.protocols.sip.parser import parse_message
from colony.protocols.sip.transaction import (
    ClientTransaction, ServerTransaction, State, TimedOut, Timers, TransactionTable,
    Transmit, build_ack, client_key, response_destination, server_key, stamp_via,
)

DEST = ("UDP", "192.0.2.9", 5060)


def request(method: str = "INVITE", branch: str = "z9hG4bK-abc", via_extra: str = "") -> object:
    return parse_message((
        f"{method} sip:bob@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.1:5070;branch={branch}{via_extra}\r\n"
        "From: <sip:alice@example.com>;tag=a\r\nTo: <sip:bob@example.com>\r\n"
        f"Call-ID: call-1\r\nCSeq: 7 {method}\r\nMax-Forwards: 70\r\nRoute: <sip:p1.example.com;lr>\r\n\r\n").encode())


def kinds(actions):
    return [type(a).__name__ for a in actions]


def run_timers(tx, until: float):
    """Fire every timer up to ``until`` in order; returns (time, actions) pairs."""
    fired = []
    while (t := tx.next_timer()) is not None and t <= until:
        fired.append((t, tx.handle_timer(t)))
    return fired


def test_invite_client_retransmits_with_timer_a_and_times_out_with_b():
    tx = ClientTransaction(request(), DEST, reliable=False)
    assert kinds(tx.start(0.0)) == ["Transmit"] and tx.state == State.CALLING
    fired = run_timers(tx, 100)
    retransmit_times = [t for t, acts in fired if any(isinstance(a, Transmit) for a in acts)]
    assert retransmit_times == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]         # A doubles: 0.5, 1, 2, 4, 8, 16
    last_time, last = fired[-1]
    assert last_time == 32.0 and kinds(last) == ["TimedOut", "Terminated"]  # B = 64*T1


def test_invite_client_non_2xx_is_acked_and_absorbs_retransmissions():
    tx = ClientTransaction(request(), DEST, reliable=False)
    tx.start(0.0)
    assert kinds(tx.on_response(make_response(tx.request, 180, to_tag="b"), 0.1)) == ["Deliver"]
    assert tx.state == State.PROCEEDING and tx.next_timer() is None        # A and B stopped (B: Calling only)
    busy = make_response(tx.request, 486, to_tag="b")
    actions = tx.on_response(busy, 0.2)
    assert kinds(actions) == ["Transmit", "Deliver"] and tx.state == State.COMPLETED
    ack = actions[0].message
    assert ack.method == "ACK" and ack.cseq().number == 7 and ack.cseq().method == "ACK"
    assert ack.address("To").tag == "b" and ack.headers.get_all("Route") == ["<sip:p1.example.com;lr>"]
    assert ack.top_via().branch == "z9hG4bK-abc"
    assert kinds(tx.on_response(busy, 1.0)) == ["Transmit"]                # retransmitted 486: ACK again
    assert kinds(tx.handle_timer(32.2)) == ["Terminated"]                  # Timer D


def test_invite_client_2xx_goes_to_accepted_and_passes_forked_answers():
    tx = ClientTransaction(request(), DEST, reliable=True)
    assert tx.start(0).__len__() == 1 and tx.next_timer() == 32.0          # reliable: no Timer A
    assert kinds(tx.on_response(make_response(tx.request, 200, to_tag="x"), 1)) == ["Deliver"]
    assert tx.state == State.ACCEPTED
    assert kinds(tx.on_response(make_response(tx.request, 200, to_tag="y"), 2)) == ["Deliver"]
    assert kinds(tx.handle_timer(33.0)) == ["Terminated"]                  # Timer M


def test_non_invite_client_timer_e_caps_at_t2_and_k():
    tx = ClientTransaction(request("OPTIONS"), DEST, reliable=False)
    tx.start(0.0)
    fired = run_timers(tx, 16)
    assert [t for t, _ in fired] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5]       # E doubles to T2 = 4, then stays
    tx2 = ClientTransaction(request("OPTIONS"), DEST, reliable=False)
    tx2.start(0.0)
    tx2.on_response(make_response(tx2.request, 100), 0.1)
    tx2.handle_timer(0.5)
    assert tx2.next_timer() == 4.5                                         # in PROCEEDING, E fires at T2
    assert kinds(tx2.on_response(make_response(tx2.request, 200, to_tag="t"), 1.0)) == ["Deliver"]
    assert tx2.on_response(make_response(tx2.request, 200, to_tag="t"), 1.1) == []   # absorbed
    assert tx2.next_timer() == 6.0 and kinds(tx2.handle_timer(6.0)) == ["Terminated"]  # K = T4
    tx3 = ClientTransaction(request("OPTIONS"), DEST, reliable=False)
    tx3.start(0.0)
    assert kinds(run_timers(tx3, 40)[-1][1]) == ["TimedOut", "Terminated"]   # F = 64*T1


def test_invite_server_retransmits_final_until_ack_then_waits_i():
    tx = ServerTransaction(request(), reliable=False, source=("UDP", "192.0.2.1", 5070))
    trying = make_response(tx.request, 100)
    assert kinds(tx.respond(trying, 0.0)) == ["Transmit"]
    assert [a.message.status for a in tx.on_request(request(), 0.1)] == [100]   # retransmitted INVITE
    final = make_response(tx.request, 404, to_tag="s")
    assert kinds(tx.respond(final, 0.2)) == ["Transmit"] and tx.state == State.COMPLETED
    fired = run_timers(tx, 3.0)
    assert [round(t, 2) for t, _ in fired] == [0.7, 1.7]                   # G: T1, 2*T1
    ack = build_ack(tx.request, final)
    assert tx.on_request(ack, 2.0) == [] and tx.state == State.CONFIRMED
    assert tx.next_timer() == 7.0 and kinds(tx.handle_timer(7.0)) == ["Terminated"]   # I = T4


def test_invite_server_without_ack_times_out_with_h():
    tx = ServerTransaction(request(), reliable=True)
    tx.respond(make_response(tx.request, 500), 0.0)
    assert tx.next_timer() == 32.0                                         # reliable: no G, H runs
    assert kinds(tx.handle_timer(32.0)) == ["TimedOut", "Terminated"]


def test_invite_server_2xx_accepted_state():
    tx = ServerTransaction(request(), reliable=False)
    assert kinds(tx.respond(make_response(tx.request, 200, to_tag="s"), 0.0)) == ["Transmit"]
    assert tx.state == State.ACCEPTED
    assert tx.on_request(request(), 1.0) == []                             # retransmitted INVITE absorbed
    assert kinds(tx.respond(make_response(tx.request, 200, to_tag="s"), 1.0)) == ["Transmit"]  # TU's 2xx retransmission
    assert kinds(tx.handle_timer(32.0)) == ["Terminated"]                  # L


def test_non_invite_server_j_and_reliable_shortcut():
    tx = ServerTransaction(request("REGISTER"), reliable=False)
    tx.respond(make_response(tx.request, 200, to_tag="r"), 0.0)
    assert [a.message.status for a in tx.on_request(request("REGISTER"), 1.0)] == [200]
    assert tx.next_timer() == 32.0 and kinds(tx.handle_timer(32.0)) == ["Terminated"]
    reliable = ServerTransaction(request("REGISTER"), reliable=True)
    assert kinds(reliable.respond(make_response(reliable.request, 200, to_tag="r"), 0.0)) == ["Transmit", "Terminated"]


def test_matching_keys():
    invite = request()
    ack = build_ack(invite, make_response(invite, 486, to_tag="t"))
    assert server_key(ack) == server_key(invite)
    assert server_key(request("BYE")) != server_key(invite)
    assert client_key(make_response(invite, 180)) == client_key(invite)
    old = request(branch="1")           # RFC 2543 peer: no magic cookie
    assert server_key(old) == server_key(request(branch="1")) and server_key(old)[0] == "2543"


def test_via_stamping_and_response_routing():
    req = request(via_extra=";rport")
    stamp_via(req, ("UDP", "203.0.113.5", 40000))
    via = req.top_via()
    assert via.params["rport"] == "40000" and via.params["received"] == "203.0.113.5"
    assert response_destination(via, None) == ("UDP", "203.0.113.5", 40000)
    plain = request()
    stamp_via(plain, ("UDP", "203.0.113.5", 40000))
    assert response_destination(plain.top_via(), None) == ("UDP", "203.0.113.5", 5070)
    over_tcp = request(via_extra=";maddr=203.0.113.99")        # a Via of UDP on a TCP connection
    assert response_destination(over_tcp.top_via(), ("TCP", "198.51.100.1", 40000)) == ("TCP", "198.51.100.1", 40000)
    for rport in ("99999999", "65536", "0"):      # no port: the sent-by's (sendto raised on them)
        bad = request(via_extra=f";rport={rport}")
        stamp_via(bad, ("UDP", "203.0.113.5", 40000))
        assert response_destination(bad.top_via(), None) == ("UDP", "203.0.113.5", 5070)
    # A Via maddr aims no answer at a third party (Kamailio's reply_to_via=0): the answer goes
    # where the request came from, or to its sent-by.
    aimed = request(via_extra=";rport;maddr=198.51.100.77")
    stamp_via(aimed, ("UDP", "203.0.113.5", 40000))
    assert response_destination(aimed.top_via(), None) == ("UDP", "203.0.113.5", 40000)
    assert response_destination(request(via_extra=";maddr=198.51.100.77").top_via(), None) == ("UDP", "192.0.2.1", 5070)
    same = request()
    stamp_via(same, ("UDP", "192.0.2.1", 5070))
    assert "received" not in same.top_via().params
    tcp = parse_message(str(make_response(request(), 200).encode(), "utf-8").replace("UDP", "TCP").encode())
    assert response_destination(tcp.top_via(), ("TCP", "198.51.100.1", 33333)) == ("TCP", "198.51.100.1", 33333)


def test_stamping_changes_the_top_via_only_and_lookups_see_it():
    req = parse_message((
        "OPTIONS sip:bob@example.com SIP/2.0\r\nMax-Forwards: 70\r\n"
        "Via: SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bK-top;rport\r\nVia: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK-2\r\n"
        "From: <sip:alice@example.com>;tag=a\r\nTo: <sip:bob@example.com>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n").encode())
    assert req.top_via().branch == "z9hG4bK-top"          # the header index is built before stamping
    stamp_via(req, ("UDP", "203.0.113.5", 40000))
    vias = req.headers.get_all("Via")
    assert len(vias) == 2 and vias[1] == "SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK-2"
    assert req.top_via().params["received"] == "203.0.113.5" and req.top_via().params["rport"] == "40000"
    again = parse_message(req.encode())                     # what is sent agrees with what was read
    assert again.headers.get_all("Via") == vias and [n for n, _ in again.headers][:2] == ["Max-Forwards", "Via"]


def test_table_expires_in_deadline_order():
    table = TransactionTable()
    a = ClientTransaction(request("OPTIONS", branch="z9hG4bK-1"), DEST, reliable=True)
    b = ClientTransaction(request("OPTIONS", branch="z9hG4bK-2"), DEST, reliable=True)
    a.start(0.0)
    b.start(5.0)
    table.client[client_key(a.request)] = a
    table.client[client_key(b.request)] = b
    assert table.next_timer() == 32.0
    fired = table.expire(32.0)
    assert [tx for tx, _ in fired] == [a] and len(table) == 1
    assert any(isinstance(x, TimedOut) for x in fired[0][1])
    assert table.next_timer() == 37.0
    table.expire(40.0)
    assert len(table) == 0 and table.next_timer() is None


def test_custom_timers():
    tx = ClientTransaction(request("OPTIONS"), DEST, reliable=False, timers=Timers(t1=0.1, t2=0.4, t4=1))
    tx.start(0.0)
    assert tx.next_timer() == 0.1
    assert kinds(run_timers(tx, 10)[-1][1]) == ["TimedOut", "Terminated"]
    assert tx.terminated
