"""The SIP farm's per-source limits count an IPv6 client by its /64, as the edges do: an
attacker holds a whole /64, so a fresh address per request must not mean a fresh budget."""

from __future__ import annotations

from colony.protocols.sip.parser import parse_message

from test_farm import answer, farm, register  # noqa: F401  (farm: the fixture)


async def test_failed_authentications_from_one_slash_64_share_one_budget(farm):  # noqa: F811
    for n in range(1, 4):
        source = ("UDP", f"2001:db8:1:2::{n:x}", 5060)
        challenge = parse_message((await farm.handle(register(), source))[0].data)
        wrong = register(cseq=2, auth=answer(challenge, "alice", password="not-it"))
        assert parse_message((await farm.handle(wrong, source))[0].data).status == 401
    assert farm.counters.counts[("sip-authfail", "2001:db8:1:2::/64")] == 3
    assert farm.counters.counts[("sip-req", "2001:db8:1:2::/64")] == 6
    assert not any(subject.startswith("2001:db8:1:2::") and "/" not in subject
                   for _, subject in farm.counters.counts)
