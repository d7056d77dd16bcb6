"""Optimistic concurrency: of two conflicting updates one wins, the other gets 409, nothing is lost."""

from __future__ import annotations

import asyncio

from admin_stack import unique_domain

from colony import events as ev
from colony.bus import names


async def _account_events(stack, address):
    stored = await stack.ctx.store.read(names.provisioning_subject(names.AGG_ADDRESS, address))
    return [ev.decode(s.data) for s in stored]


async def test_two_updates_from_the_same_version_one_wins_one_gets_409(stack):
    c, h = stack.client, stack.as_(stack.sys_token)
    d = unique_domain("occ")
    await c.post("/v1/domains", json={"name": d}, headers=h)
    r = await c.post(f"/v1/domains/{d}/accounts", json={"name": "ann"}, headers=h)
    version = r.json()["version"]
    pinned = h | {"If-Match": f'"{version}"'}
    first, second = await asyncio.gather(
        c.patch(f"/v1/domains/{d}/accounts/ann", json={"real_name": "Ann One"}, headers=pinned),
        c.patch(f"/v1/domains/{d}/accounts/ann", json={"real_name": "Ann Two"}, headers=pinned),
    )
    codes = sorted([first.status_code, second.status_code])
    assert codes == [200, 409], (first.text, second.text)
    loser = first if first.status_code == 409 else second
    winner = second if loser is first else first
    assert loser.headers["content-type"].startswith("application/problem+json")
    assert loser.json()["current_version"] == winner.json()["version"]
    final = (await c.get(f"/v1/domains/{d}/accounts/ann", headers=h)).json()
    assert final["real_name"] == winner.json()["real_name"]
    updates = [e for e in await _account_events(stack, f"ann@{d}") if isinstance(e, ev.AccountUpdated)]
    assert [u.changes for u in updates] == [{"real_name": winner.json()["real_name"]}]


async def test_many_concurrent_unconditional_updates_lose_nothing(stack):
    c, h = stack.client, stack.as_(stack.sys_token)
    d = unique_domain("race")
    await c.post("/v1/domains", json={"name": d}, headers=h)
    await c.post(f"/v1/domains/{d}/accounts", json={"name": "zed"}, headers=h)
    results = await asyncio.gather(*(
        c.patch(f"/v1/domains/{d}/accounts/zed", json={"real_name": f"Zed {i}"}, headers=h) for i in range(12)))
    ok = [r for r in results if r.status_code == 200]
    assert ok and all(r.status_code in (200, 409) for r in results)
    updates = [e for e in await _account_events(stack, f"zed@{d}") if isinstance(e, ev.AccountUpdated)]
    # every 200 is an event in the stream, every 409 is not: no update vanished silently
    assert sorted(u.changes["real_name"] for u in updates) == sorted(r.json()["real_name"] for r in ok)
    final = (await c.get(f"/v1/domains/{d}/accounts/zed", headers=h)).json()
    assert final["real_name"] == updates[-1].changes["real_name"]


async def test_concurrent_creates_of_one_name_create_it_once(stack):
    c, h = stack.client, stack.as_(stack.sys_token)
    d = unique_domain("dup")
    results = await asyncio.gather(*(c.post("/v1/domains", json={"name": d}, headers=h) for _ in range(6)))
    assert sorted(r.status_code for r in results) == [201] + [409] * 5
