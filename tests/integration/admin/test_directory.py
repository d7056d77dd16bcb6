"""The directory KV the edges read: current state, no secrets, deletions as tombstones."""

from __future__ import annotations

import json

from conftest import unique_domain, wait_until

from colony.bus import names


async def _entry(stack, kind: str, name: str) -> dict | None:
    kv = await stack.ctx.js.key_value(names.BUCKET_DIRECTORY)
    try:
        return json.loads((await kv.get(names.directory_key(kind, name))).value)
    except Exception:
        return None


async def test_directory_follows_creates_updates_and_deletes(stack):
    c, h = stack.client, stack.as_(stack.sys_token)
    d = unique_domain("dir")
    await c.post("/v1/domains", json={"name": d}, headers=h)
    await c.post(f"/v1/domains/{d}/accounts", json={"name": "amy", "password": "a-long-password"}, headers=h)
    await c.post(f"/v1/domains/{d}/aliases", json={"name": "team", "targets": [f"amy@{d}"]}, headers=h)
    await c.post(f"/v1/domains/{d}/domain-aliases", json={"name": f"alt-{d}"}, headers=h)
    await c.post(f"/v1/domains/{d}/suspend", headers=h)
    await c.delete(f"/v1/domains/{d}/aliases/team", headers=h)

    async def settled() -> bool:
        dom, amy, team, alt = (await _entry(stack, "domain", d), await _entry(stack, "address", f"amy@{d}"),
                               await _entry(stack, "address", f"team@{d}"), await _entry(stack, "domain_alias", f"alt-{d}"))
        return bool(dom and dom.get("state") == "suspended" and amy and team and team.get("deleted") and alt)

    await wait_until(settled, what="directory entries for the domain, account, alias and domain alias")
    amy = await _entry(stack, "address", f"amy@{d}")
    assert amy["kind"] == "account" and amy["state"] == "active"
    assert "password_hash" not in amy and "sip_ha1" not in amy
    assert (await _entry(stack, "domain_alias", f"alt-{d}"))["domain"] == d


async def test_login_through_a_domain_alias_reaches_the_real_account(stack):
    c, h = stack.client, stack.as_(stack.sys_token)
    d = unique_domain("real")
    await c.post("/v1/domains", json={"name": d}, headers=h)
    await c.post(f"/v1/domains/{d}/domain-aliases", json={"name": f"alias-{d}"}, headers=h)
    await c.post(f"/v1/domains/{d}/accounts", json={"name": "kim", "password": "kims-password"}, headers=h)
    msg = await stack.nc.request(names.AUTH_CHECK, json.dumps(
        {"user": f"kim@alias-{d}", "password": "kims-password"}).encode(), timeout=5)
    reply = json.loads(msg.data)
    assert reply["ok"] and reply["account"] == f"kim@{d}"


async def test_directory_projection_in_its_own_process(make_stack):
    """The default of create_app: the directory runs in a child process, stopped with the app."""
    stack = await make_stack(directory="process")
    proc = stack.ctx.directory_process
    assert proc is not None and proc.is_alive()
    c, h = stack.client, stack.as_(stack.sys_token)
    d = unique_domain("proc")
    await c.post("/v1/domains", json={"name": d}, headers=h)

    async def there() -> bool:
        return await _entry(stack, "domain", d) is not None

    await wait_until(there, timeout=20, what="the child process to write the directory entry")

    # a crashed child is replaced and the directory keeps following
    proc.kill()

    async def replaced() -> bool:
        new = stack.ctx.directory_process
        return new is not proc and new.is_alive()

    await wait_until(replaced, timeout=10, what="a new directory process")
    d2 = unique_domain("proc")
    await c.post("/v1/domains", json={"name": d2}, headers=h)

    async def there_too() -> bool:
        return await _entry(stack, "domain", d2) is not None

    await wait_until(there_too, timeout=20, what="the replacement to write the directory entry")
