"""The farm's own ACK of a failed INVITE (RFC 3261 §17.1.1.3) is the ACK of the INVITE it sent:
its Request-URI, top Via, Route header fields, to where that INVITE went -- for a re-INVITE the
device in the call, not another device of the user (nor nobody, the user being unregistered)
-- and the caller's own ACK of that failure ends at the farm (§17.2.1)."""

from __future__ import annotations

import pytest


from colony.protocols.sip.message import Headers, SipRequest
from colony.protocols.sip.parser import parse_message

from colony_sipfarm.farm import SipFarm
from colony_sipfarm.sent_invites import SentInvites

from test_farm import DOMAIN, answer, invite, one, registered, reply, plain_farm

CALLER = ("UDP", "198.51.100.9", 5060)
DESK = ("UDP", "192.0.2.7", 5062)
MOBILE = ("UDP", "192.0.2.8", 5062)


@pytest.fixture
def farm():
    return plain_farm()


def sent(out) -> list[tuple]:
    messages = [(o.destination, parse_message(o.data)) for o in out]
    return [(where, m.method if isinstance(m, SipRequest) else m.status) for where, m in messages]


async def call_answered_on_the_mobile(farm) -> str:
    """bob has a desk phone (preferred) and a mobile; alice calls, the mobile answers."""
    await registered(farm, user="bob", contact="<sip:bob@192.0.2.7:5062>;q=0.9", call_id="desk")
    await registered(farm, user="bob", contact="<sip:bob@192.0.2.8:5062>;q=0.5", call_id="mobile")
    challenge, _ = await one(farm, invite(), CALLER)
    auth = answer(challenge, "alice", method="INVITE", uri=f"sip:bob@{DOMAIN}", header="Proxy-Authorization")
    _, *branches = await farm.handle(invite(cseq=2, auth=auth, branch="z9hG4bKinv2"), CALLER)
    mobile = next(parse_message(b.data) for b in branches if b.destination == MOBILE)
    out = await farm.handle(reply(mobile, 200, "m1"), MOBILE)
    assert (CALLER, 200) in sent(out)
    return mobile.headers.get("Record-Route")


def alices(method: str, route: str, cseq: int, branch: str) -> bytes:
    return (f"{method} sip:bob@192.0.2.8:5062 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.9:5060;branch={branch}\r\n"
            f"Route: {route}\r\nFrom: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: <sip:bob@{DOMAIN}>;tag=m1\r\n"
            f"Call-ID: call-1\r\nCSeq: {cseq} {method}\r\nContact: <sip:alice@198.51.100.9:5060>\r\n"
            "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


def failure(request, status: int, reason: str) -> bytes:
    """The answer of a UAS in the dialog: its To carries the tag it already has."""
    return (f"SIP/2.0 {status} {reason}\r\n".encode()
            + b"".join(f"Via: {v}\r\n".encode() for v in request.headers.get_all("Via"))
            + f"From: {request.headers.get('From')}\r\nTo: {request.headers.get('To')}\r\n"
              f"Call-ID: {request.call_id}\r\nCSeq: {request.headers.get('CSeq')}\r\nContent-Length: 0\r\n\r\n".encode())


async def test_a_failed_reinvite_is_acked_at_the_device_in_the_call_and_the_callers_ack_ends_here(farm):
    route = await call_answered_on_the_mobile(farm)
    trying, forwarded = await farm.handle(alices("INVITE", route, 3, "z9hG4bKre3"), CALLER)
    assert forwarded.destination == MOBILE
    reinvite = parse_message(forwarded.data)
    out = await farm.handle(failure(reinvite, 488, "Not Acceptable Here"), MOBILE)
    # The ACK goes where the re-INVITE went (not to bob's preferred desk phone), built from it.
    assert sent(out) == [(MOBILE, "ACK"), (CALLER, 488)]
    ack = parse_message(out[0].data)
    assert str(ack.uri) == str(reinvite.uri) == "sip:bob@192.0.2.8:5062"
    assert ack.headers.get_all("Via") == reinvite.headers.get_all("Via")[:1]
    assert ack.cseq().number == 3 and ack.cseq().method == "ACK" and ack.headers.get("To").endswith("tag=m1")
    assert ack.headers.get_all("Route") == reinvite.headers.get_all("Route")
    # alice's ACK of the 488 (hop by hop: her re-INVITE's branch) ends here.
    assert await farm.handle(alices("ACK", route, 3, "z9hG4bKre3"), CALLER) == []
    # A copy of the 488 (our ACK was lost) is ACKed again, and passed on.
    assert sent(await farm.handle(failure(reinvite, 488, "Not Acceptable Here"), MOBILE)) == [(MOBILE, "ACK"), (CALLER, 488)]


async def test_the_callees_failed_reinvite_is_acked_at_the_caller_who_is_not_registered(farm):
    route = await call_answered_on_the_mobile(farm)
    reinvite = (f"INVITE sip:alice@198.51.100.9:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.8:5062;branch=z9hG4bKbre\r\n"
                f"Route: {route}\r\nFrom: <sip:bob@{DOMAIN}>;tag=m1\r\nTo: <sip:alice@{DOMAIN}>;tag=a1\r\n"
                f"Call-ID: call-1\r\nCSeq: 7 INVITE\r\nContact: <sip:bob@192.0.2.8:5062>\r\n"
                "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
    _, forwarded = await farm.handle(reinvite, MOBILE)
    assert forwarded.destination == CALLER
    out = await farm.handle(failure(parse_message(forwarded.data), 491, "Request Pending"), CALLER)
    assert sent(out) == [(CALLER, "ACK"), (MOBILE, 491)]
    assert str(parse_message(out[0].data).uri) == "sip:alice@198.51.100.9:5060"


async def test_the_ack_of_an_answered_reinvite_is_passed_on(farm):
    """A 2xx's ACK is the caller's own transaction (a new branch), end to end; and a caller that
    reused its INVITE's branch for it is not taken for the ACK of a failure."""
    route = await call_answered_on_the_mobile(farm)
    _, forwarded = await farm.handle(alices("INVITE", route, 3, "z9hG4bKre3"), CALLER)
    ok = failure(parse_message(forwarded.data), 200, "OK")
    assert sent(await farm.handle(ok, MOBILE)) == [(CALLER, 200)]
    assert sent(await farm.handle(alices("ACK", route, 3, "z9hG4bKack3"), CALLER)) == [(MOBILE, "ACK")]
    assert sent(await farm.handle(alices("ACK", route, 3, "z9hG4bKre3"), CALLER)) == [(MOBILE, "ACK")]


async def test_a_member_that_did_not_forward_the_reinvite_acks_nothing_and_passes_the_callers_ack(farm):
    """The farm's ACK is made only from the INVITE it sent; without it (another member sent
    it, or it restarted) the caller's ACK goes on as through a stateless proxy (§16.11)."""
    route = await call_answered_on_the_mobile(farm)
    _, forwarded = await farm.handle(alices("INVITE", route, 3, "z9hG4bKre3"), CALLER)
    farm.sent_invites = SentInvites(200.0, 32.0)       # forgotten
    assert sent(await farm.handle(failure(parse_message(forwarded.data), 488, "Not Acceptable Here"), MOBILE)) \
        == [(CALLER, 488)]
    assert sent(await farm.handle(alices("ACK", route, 3, "z9hG4bKre3"), CALLER)) == [(MOBILE, "ACK")]


async def test_a_forked_invites_failure_is_acked_where_its_branch_went_though_the_bindings_changed(farm):
    await registered(farm, user="bob", contact="<sip:bob@192.0.2.7:5062>;q=0.9", call_id="desk")
    await registered(farm, user="bob", contact="<sip:bob@192.0.2.8:5062>;q=0.5", call_id="mobile")
    challenge, _ = await one(farm, invite(), CALLER)
    auth = answer(challenge, "alice", method="INVITE", uri=f"sip:bob@{DOMAIN}", header="Proxy-Authorization")
    _, desk, mobile = await farm.handle(invite(cseq=2, auth=auth, branch="z9hG4bKinv2"), CALLER)
    # The desk phone unregisters while ringing: branch 0 is the mobile's binding now.
    await registered(farm, user="bob", contact="<sip:bob@192.0.2.7:5062>", call_id="desk", cseq=5, expires="0")
    out = await farm.handle(reply(parse_message(desk.data), 486, "d"), DESK)
    assert sent(out) == [(DESK, "ACK")]
    assert str(parse_message(out[0].data).uri) == "sip:bob@192.0.2.7:5062"
    # The mobile answers: the desk's branch (failed) gets no CANCEL; the 200 goes to alice.
    assert sent(await farm.handle(reply(parse_message(mobile.data), 200, "m"), MOBILE)) == [(CALLER, 200)]


def test_the_table_forgets_answered_and_old_invites():
    table = SentInvites(lifetime=200.0, after_final=32.0, limit=2)
    request = SipRequest(headers=Headers(), method="INVITE")
    for n in range(3):
        table.sent(f"b{n}", request, ("UDP", "192.0.2.7", 5062), "m", now=float(n))
    assert len(table) == 2 and table.get("b0", 3.0) is None
    assert table.failed("b1", 3.0) is not None and table.acked("b1", 3.0) and not table.acked("b2", 3.0)
    assert not table.acked("b1", 36.0)                  # 32 s after its failure
    table.answered("b2")
    assert table.get("b2", 4.0) is None


async def test_a_reinvites_answers_go_to_the_member_that_routed_it_not_the_call_ids_owner(farm):
    """A TCP, TLS or WebSocket callee answers on its connection, which another member may
    hold: that member hands the answer to the one that routed the re-INVITE (its Via's ``m``),
    which kept what the ACK of a failure is made from.  Gone or not READY: handled where it
    arrived (the caller's ACK goes on then)."""
    from test_spread import Bus, _ready, _shell

    route = await call_answered_on_the_mobile(farm)
    _, forwarded = await farm.handle(alices("INVITE", route, 3, "z9hG4bKre3"), CALLER)
    answer_ = farm.parse(failure(parse_message(forwarded.data), 488, "Not Acceptable Here"))
    assert SipFarm.handler_of(answer_) == "sipfarm-1" and SipFarm.spread_key_of(answer_) is None
    other = _shell(farm, Bus(), "sipfarm-2")
    _ready(other, "sipfarm-1", "sipfarm-2")
    assert other._owner(answer_) == "sipfarm-1"
    _ready(other, "sipfarm-2")
    assert other._owner(answer_) is None
    # An initial INVITE's answers still go to the Call-ID's owner (it forked them).
    invite_answer = farm.parse(reply(parse_message(forwarded.data), 486, "x").replace(b";dlg", b""))
    assert SipFarm.handler_of(invite_answer) is None and SipFarm.spread_key_of(invite_answer) == "call-1"


async def test_the_branches_still_ringing_are_cancelled_where_their_invite_went_though_the_bindings_changed(farm):
    await registered(farm, user="bob", contact="<sip:bob@192.0.2.7:5062>;q=0.9", call_id="desk")
    await registered(farm, user="bob", contact="<sip:bob@192.0.2.8:5062>;q=0.5", call_id="mobile")
    challenge, _ = await one(farm, invite(), CALLER)
    auth = answer(challenge, "alice", method="INVITE", uri=f"sip:bob@{DOMAIN}", header="Proxy-Authorization")
    _, desk, mobile = await farm.handle(invite(cseq=2, auth=auth, branch="z9hG4bKinv2"), CALLER)
    await registered(farm, user="bob", contact="<sip:bob@192.0.2.7:5062>", call_id="desk", cseq=5, expires="0")
    out = await farm.handle(reply(parse_message(mobile.data), 200, "m"), MOBILE)
    assert sent(out) == [(DESK, "CANCEL"), (CALLER, 200)]
    cancel, ringing = parse_message(out[0].data), parse_message(desk.data)
    assert str(cancel.uri) == str(ringing.uri) and cancel.headers.get_all("Via") == ringing.headers.get_all("Via")[:1]
    assert cancel.headers.get("To") == ringing.headers.get("To") and cancel.cseq().method == "CANCEL"
    # Its 487 is ACKed there too.
    assert sent(await farm.handle(reply(ringing, 487, "d"), DESK)) == [(DESK, "ACK")]
