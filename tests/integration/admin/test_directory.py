"""The directory KV the edges read: current state, no secrets, deletions as tombstones."""

from __future__ import annotations

import asyncio
import json

from admin_stack import connect, unique_domain, wait_until

from colony.bus import names
from colony.contracts import directory as contract
from colony.cluster.node import NodeRuntime
from colony.settings import Settings
from colony_admin.projector import ProjectorWorkload


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


async def test_a_name_deleted_and_created_again_is_live_in_the_directory(stack):
    """A creation over a deleted marker (the key exists) and a deletion over a live entry both
    conflict with the pipelined first write and are settled by the forward-only put."""
    c, h = stack.client, stack.as_(stack.sys_token)
    d = unique_domain("again")
    await c.post("/v1/domains", json={"name": d}, headers=h)
    r = await c.post(f"/v1/domains/{d}/accounts", json={"name": "bo", "real_name": "first"}, headers=h)
    assert r.status_code == 201, r.text

    async def live(real_name: str):
        async def check() -> bool:
            entry = await _entry(stack, "address", f"bo@{d}")
            return bool(entry and not entry.get("deleted") and entry.get("real_name") == real_name)
        return check

    await wait_until(await live("first"), what="the account in the directory")
    assert (await c.delete(f"/v1/domains/{d}/accounts/bo", headers=h)).status_code == 204

    async def deleted() -> bool:
        return bool((await _entry(stack, "address", f"bo@{d}") or {}).get("deleted"))

    await wait_until(deleted, what="the deleted marker")
    r = await c.post(f"/v1/domains/{d}/accounts", json={"name": "bo", "real_name": "second"}, headers=h)
    assert r.status_code == 201, r.text
    await wait_until(await live("second"), what="the account created again in the directory")


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


async def test_projector_role_writes_what_the_admin_api_serves_and_drains(make_stack, databases, nats_url, tmp_path):
    """The layout of a cluster: an admin API that runs no projection, and a projector
    instance (its own cluster member, here in this process) that writes the read model and
    the directory; commands still answer only once the read model shows them."""
    url = databases.new()
    # The schema first, as a controller would have made it: the projector role may not.
    await (await connect(nats_url)).close()
    settings = Settings(nats_url=nats_url, data_dir=tmp_path, node_id="projector-t", database_url=url)
    runtime = NodeRuntime(settings, ProjectorWorkload(settings))
    await runtime.start()
    try:
        stack = await make_stack(url, projections="projector")
        assert stack.ctx.projections == [], "the admin API runs no projection itself"
        c, h = stack.client, stack.as_(stack.sys_token)
        d = unique_domain("proj")
        assert (await c.post("/v1/domains", json={"name": d}, headers=h)).status_code == 201
        listed = (await c.get("/v1/domains", params={"prefix": d}, headers=h)).json()["items"]
        assert [x["name"] for x in listed] == [d], "read-your-writes through the projector's announced position"

        async def there(name: str) -> bool:
            return await _entry(stack, "domain", name) is not None

        await wait_until(lambda: there(d), timeout=20, what="the projector to write the directory entry")

        # Make Not-Ready: the in-flight batch finishes, no new one is taken; ready resumes.
        await runtime.begin_drain()

        async def drained() -> bool:
            return runtime.record.drained and runtime.workload.active_work() == 0

        await wait_until(drained, timeout=20, what="the projector to drain")
        await runtime.make_ready()
        d2 = unique_domain("proj")
        assert (await c.post("/v1/domains", json={"name": d2}, headers=h)).status_code == 201
        listed = (await c.get("/v1/domains", params={"prefix": d2}, headers=h)).json()["items"]
        assert [x["name"] for x in listed] == [d2]
        await wait_until(lambda: there(d2), timeout=20, what="the resumed projector to write the directory entry")
    finally:
        await runtime.shutdown()


async def test_directory_values_are_what_the_contract_documents(stack):
    """Every value the projection writes parses as the edge's contract model, and has no
    field that model (and so colony.contracts.directory's wire docstring) does not name."""
    c, h = stack.client, stack.as_(stack.sys_token)
    d, cos = unique_domain("wire"), f"cos-{unique_domain('c')[:14]}"
    assert (await c.post("/v1/cos", json={"name": cos}, headers=h)).status_code == 201
    assert (await c.post("/v1/domains", json={"name": d, "cos": cos}, headers=h)).status_code == 201
    await c.post(f"/v1/domains/{d}/accounts", json={"name": "amy", "password": "a-long-password"}, headers=h)
    await c.post(f"/v1/domains/{d}/aliases", json={"name": "team", "targets": [f"amy@{d}"]}, headers=h)
    await c.post(f"/v1/domains/{d}/domain-aliases", json={"name": f"alt-{d}"}, headers=h)
    wanted = {("cos", cos): contract.CosEntry, ("domain", d): contract.DomainEntry,
              ("address", f"amy@{d}"): contract.AccountEntry, ("address", f"team@{d}"): contract.AliasEntry,
              ("domain_alias", f"alt-{d}"): contract.DomainAliasEntry}

    async def all_there() -> bool:
        return all([await _entry(stack, kind, name) for kind, name in wanted])

    await wait_until(all_there, what="every directory entry")
    for (kind, name), model in wanted.items():
        value = await _entry(stack, kind, name)
        parsed = contract.parse_entry(json.dumps(value))
        assert isinstance(parsed, model), (kind, value)
        undocumented = set(value) - set(model.model_fields)
        assert not undocumented, f"{kind}: {sorted(undocumented)} are written but not in the contract"


async def test_a_command_answers_only_once_the_directory_has_it(stack):
    """The directory rides on the read model's consumer and the position moves once both have
    a batch: what a command answered is what an edge reads, with no wait."""
    c, h = stack.client, stack.as_(stack.sys_token)
    d = unique_domain("ryw")
    assert (await c.post("/v1/domains", json={"name": d}, headers=h)).status_code == 201
    assert (await _entry(stack, "domain", d) or {}).get("name") == d
    r = await c.post(f"/v1/domains/{d}/accounts", json={"name": "amy"}, headers=h)
    assert r.status_code == 201, r.text
    assert (await _entry(stack, "address", f"amy@{d}") or {}).get("seq") == r.json()["version"]
    assert (await c.post(f"/v1/domains/{d}/suspend", headers=h)).status_code == 200
    assert (await _entry(stack, "domain", d) or {}).get("state") == "suspended"


async def _position(stack) -> tuple[int, int]:
    kv = await stack.ctx.js.key_value(names.BUCKET_DIRECTORY)
    entry = await kv.get(contract.POSITION_KEY)
    return json.loads(entry.value)["seq"], entry.revision


async def test_the_directory_keeps_its_own_checkpoint(stack, make_stack):
    """A read model rebuilt from an empty database leaves a current directory as it is (its
    checkpoint is in the bucket, not in the database); a directory set back to an earlier
    checkpoint is written again from there."""
    c, h = stack.client, stack.as_(stack.sys_token)
    d = unique_domain("ckpt")
    assert (await c.post("/v1/domains", json={"name": d}, headers=h)).status_code == 201
    r = await c.post(f"/v1/domains/{d}/accounts", json={"name": "bea"}, headers=h)
    created = r.json()["version"]
    last = (await stack.ctx.js.stream_info(names.STREAM_PROVISIONING)).state.last_seq
    assert (await _position(stack))[0] >= last
    kv = await stack.ctx.js.key_value(names.BUCKET_DIRECTORY)
    key = names.directory_key("address", f"bea@{d}")
    revision = (await kv.get(key)).revision

    rebuilt = await make_stack()  # an empty database: the read model starts from the stream's first event
    assert await rebuilt.ctx.readmodel.wait_for(last, timeout=30)
    assert (await kv.get(key)).revision == revision, "a current directory entry was written again"

    # Stop both projections (another one would move the directory's checkpoint on at the next
    # event), set the directory back to just before the account's creation and lose the entry.
    for task in stack.ctx.projections + rebuilt.ctx.projections:
        task.cancel()
    await asyncio.gather(*stack.ctx.projections, *rebuilt.ctx.projections, return_exceptions=True)
    await kv.put(contract.POSITION_KEY, json.dumps({"seq": created - 1}).encode())
    await kv.delete(key)
    later = await make_stack()  # reads the directory's checkpoint when its feed opens

    async def restored() -> bool:
        entry = await _entry(later, "address", f"bea@{d}")
        return bool(entry and entry.get("seq") == created and (await _position(later))[0] >= last)

    await wait_until(restored, what="the entry written again from the directory's checkpoint")
