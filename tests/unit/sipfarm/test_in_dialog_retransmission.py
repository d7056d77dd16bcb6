"""A caller's retransmission of an in-dialog request (re-INVITE, UPDATE, INFO, BYE, ...) over
UDP matches the transaction the farm forwarded (RFC 3261 §17.2.3) and is absorbed: it gets the
last answer that transaction has (§17.2.1, §17.2.2), and the callee sees one request -- the
member's own client transaction retransmits downstream (retransmission.py)."""

from __future__ import annotations

import pytest


from colony.protocols.sip.message import SipRequest
from colony.protocols.sip.parser import parse_message

from colony_sipfarm.server_transactions import ProxyServerTransactions

from test_farm import DOMAIN, answered_call, plain_farm, reply

CALLER = ("UDP", "198.51.100.9", 5060)
CALLEE = ("UDP", "192.0.2.7", 5062)


@pytest.fixture
def farm():
    return plain_farm()


async def call(farm) -> str:
    """alice calls bob, bob answers; the dialog's Record-Route."""
    return await answered_call(farm)


def in_dialog(method: str, route: str, cseq: int, branch: str | None = None) -> bytes:
    return (f"{method} sip:bob@192.0.2.7:5062 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 198.51.100.9:5060;branch={branch or f'z9hG4bK{method.lower()}{cseq}'}\r\n"
            f"Route: {route}\r\nFrom: <sip:alice@{DOMAIN}>;tag=a1\r\nTo: <sip:bob@{DOMAIN}>;tag=b1\r\n"
            f"Call-ID: call-1\r\nCSeq: {cseq} {method}\r\nContact: <sip:alice@198.51.100.9:5060>\r\n"
            "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


def sent(out) -> list[tuple]:
    """What went where: (destination, method or status)."""
    messages = [(o.destination, parse_message(o.data)) for o in out]
    return [(where, m.method if isinstance(m, SipRequest) else m.status) for where, m in messages]


async def test_a_retransmitted_reinvite_gets_100_trying_again_and_is_not_forwarded_twice(farm):
    route = await call(farm)
    reinvite = in_dialog("INVITE", route, 3)
    first = await farm.handle(reinvite, CALLER)
    assert sent(first) == [(CALLER, 100), (CALLEE, "INVITE")]        # §17.2.1: 100 quenches the copies
    assert sent(await farm.handle(reinvite, CALLER)) == [(CALLER, 100)]
    forwarded = parse_message(first[1].data)
    # The callee answers 2xx: passed on; a late copy is absorbed (RFC 6026 Accepted: the 2xx
    # is the callee's to send again), never forwarded.
    assert sent(await farm.handle(reply(forwarded, 200, "b1"), CALLEE)) == [(CALLER, 200)]
    assert await farm.handle(reinvite, CALLER) == []
    assert farm.metrics.retransmissions._value.get() >= 2


async def test_a_retransmitted_reinvite_after_a_failure_gets_the_failure_again(farm):
    route = await call(farm)
    reinvite = in_dialog("INVITE", route, 3)
    forwarded = parse_message((await farm.handle(reinvite, CALLER))[1].data)
    out = await farm.handle(reply(forwarded, 486, "b1"), CALLEE)
    assert (CALLER, 486) in sent(out)
    assert sent(await farm.handle(reinvite, CALLER)) == [(CALLER, 486)]


@pytest.mark.parametrize("method", ["UPDATE", "INFO", "BYE", "MESSAGE", "OPTIONS"])
async def test_a_retransmitted_in_dialog_request_is_absorbed_and_gets_the_last_answer(farm, method):
    route = await call(farm)
    request = in_dialog(method, route, 3)
    first = await farm.handle(request, CALLER)
    assert sent(first) == [(CALLEE, method)]                         # no 100 for a non-INVITE (§16.2)
    assert await farm.handle(request, CALLER) == []                  # nothing to say yet: absorbed
    forwarded = parse_message(first[0].data)
    assert sent(await farm.handle(reply(forwarded, 200, "b1"), CALLEE)) == [(CALLER, 200)]
    again = await farm.handle(request, CALLER)
    assert sent(again) == [(CALLER, 200)]                            # §17.2.2: the final again
    assert parse_message(again[0].data).call_id == "call-1"


async def test_a_new_transaction_of_the_dialog_is_forwarded(farm):
    """Only a copy is absorbed: the next request (a new CSeq and branch) goes to the callee."""
    route = await call(farm)
    first = await farm.handle(in_dialog("UPDATE", route, 3), CALLER)
    await farm.handle(reply(parse_message(first[0].data), 200, "b1"), CALLEE)
    assert sent(await farm.handle(in_dialog("UPDATE", route, 4), CALLER)) == [(CALLEE, "UPDATE")]


async def test_a_copy_after_the_transaction_is_over_is_forwarded_as_before(farm):
    """Kept for a transaction's longest life (64*T1); a copy later still is forwarded and the
    callee's own transaction answers it, as through a stateless proxy."""
    route = await call(farm)
    request = in_dialog("INFO", route, 3)
    await farm.handle(request, CALLER)
    farm.clock_.now += 33
    assert sent(await farm.handle(request, CALLER)) == [(CALLEE, "INFO")]


async def test_an_ack_is_never_absorbed(farm):
    """The ACK of a re-INVITE's 2xx is its own transaction: never taken for a copy of the
    INVITE (one of a failure ends at the farm, which ACKed it: test_hop_by_hop_acks.py)."""
    route = await call(farm)
    reinvite = in_dialog("INVITE", route, 3)
    forwarded = parse_message((await farm.handle(reinvite, CALLER))[1].data)
    await farm.handle(reply(forwarded, 200, "b1"), CALLEE)
    ack = in_dialog("ACK", route, 3, branch="z9hG4bKack3")
    assert sent(await farm.handle(ack, CALLER)) == [(CALLEE, "ACK")]
    assert sent(await farm.handle(ack, CALLER)) == [(CALLEE, "ACK")]   # end to end: the callee's to absorb


async def test_a_request_from_a_connection_is_not_kept(farm):
    """A caller on TCP never retransmits (§17.1.1.2): nothing is kept for its requests."""
    route = await call(farm)
    await farm.handle(in_dialog("INFO", route, 3).replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP"), ("TCP", "198.51.100.9", 40000))
    assert len(farm.server_transactions) == 0


def test_the_table_keeps_the_newest_transactions_and_forgets_old_ones():
    table = ProxyServerTransactions(lifetime=32.0, limit=2)
    for n in range(3):
        table.forwarded(n, invite=False, now=float(n))
    assert len(table) == 2 and table.copy(0, 3.0) is None and table.copy(1, 3.0) == []
    table.answered(2, 180, ["ringing"], 3.0)
    table.answered(2, 200, ["ok"], 4.0)
    table.answered(2, 200, ["ok again"], 5.0)              # a copy of the final changes nothing
    assert table.copy(2, 35.0) == ["ok"]                    # 32 s from the final answer
    assert table.copy(2, 36.0) is None
    table.forwarded(9, invite=False, now=100.0)             # the expired go as new ones come
    assert len(table) == 1
