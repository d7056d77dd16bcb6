"""A CANCEL that arrives while its INVITE is still being worked on (the callee's bindings
being read from the bus) is answered 200 and the INVITE ends 487 without ringing anyone
(RFC 3261 §16.10): passed on at once, it met no transaction at the phones (481) and the
INVITE after it rang until Timer C."""

from __future__ import annotations

import asyncio

from colony.protocols.sip.parser import parse_message

from test_farm import DOMAIN, answer, farm, invite, registered  # noqa: F401  (farm: the fixture)

CALLER = ("UDP", "198.51.100.9", 5060)


def cancel_of(data: bytes) -> bytes:
    text = data.decode()
    head = text.split("\r\n\r\n", 1)[0].split("\r\n")
    keep = [line for line in head[1:] if line.split(":", 1)[0] in ("Via", "From", "To", "Call-ID", "Max-Forwards")]
    cseq = next(line for line in head if line.startswith("CSeq:")).split()[1]
    return ("\r\n".join([f"CANCEL sip:bob@{DOMAIN} SIP/2.0", *keep, f"CSeq: {cseq} CANCEL", "Content-Length: 0"])
            + "\r\n\r\n").encode()


async def test_a_cancel_during_the_invites_lookup_ends_it_487_and_rings_nobody(farm):  # noqa: F811
    await registered(farm, "bob", contact="sip:bob@192.0.2.9:5062")
    challenge = parse_message((await farm.handle(invite(), CALLER))[0].data)
    authed = invite(cseq=2, auth=answer(challenge, "alice", method="INVITE", uri=f"sip:bob@{DOMAIN}",
                                        header="Proxy-Authorization"))
    store, reading, go_on = farm.store, asyncio.Event(), asyncio.Event()
    lookup = store.lookup

    async def slow_lookup(account):
        reading.set()
        await go_on.wait()
        return await lookup(account)
    store.lookup = slow_lookup
    invite_task = asyncio.create_task(farm.handle(authed, CALLER))
    await reading.wait()
    # answered at once, without waiting for the INVITE's lookup (else: a CANCEL passed on)
    cancelled = [parse_message(o.data) for o in await asyncio.wait_for(farm.handle(cancel_of(authed), CALLER), 10)]
    assert [(m.status, m.cseq().method) for m in cancelled] == [(200, "CANCEL")]
    go_on.set()
    out = await invite_task
    assert all(o.destination[1] != "192.0.2.9" for o in out), "the phone was rung"
    assert [parse_message(o.data).status for o in out] == [487]
    # the INVITE's retransmission gets the same 487; a later CANCEL finds nothing pending
    again = [parse_message(o.data).status for o in await farm.handle(authed, CALLER)]
    assert again == [487]
    assert not farm._cancelled and not farm._pending


async def test_a_cancel_after_the_invite_was_forwarded_goes_to_its_branches(farm):  # noqa: F811
    await registered(farm, "bob", contact="sip:bob@192.0.2.9:5062")
    challenge = parse_message((await farm.handle(invite(), CALLER))[0].data)
    authed = invite(cseq=2, auth=answer(challenge, "alice", method="INVITE", uri=f"sip:bob@{DOMAIN}",
                                        header="Proxy-Authorization"))
    out = await farm.handle(authed, CALLER)
    assert any(o.destination[1] == "192.0.2.9" for o in out)
    out = await farm.handle(cancel_of(authed), CALLER)
    assert [parse_message(o.data).method for o in out if o.destination[1] == "192.0.2.9"] == ["CANCEL"]
