"""The read model is a pure function of PROVISIONING: rebuilt from the stream, it is identical."""

from __future__ import annotations

from admin_stack import unique_domain, wait_until

from colony.bus import names
from colony_admin.projections.readmodel import dump_provisioning


async def test_rebuilt_read_model_equals_the_live_one(make_stack, databases):
    live = await make_stack()
    c, h = live.client, live.as_(live.sys_token)
    d = unique_domain("rebuild")
    await c.post("/v1/cos", json={"name": f"c-{d[:12]}", "limits": {"services": ["mail", "imap"]}}, headers=h)
    await c.post("/v1/domains", json={"name": d, "cos": f"c-{d[:12]}"}, headers=h)
    await c.post(f"/v1/domains/{d}/domain-aliases", json={"name": f"alias-{d}"}, headers=h)
    for n in ("a", "b", "c"):
        await c.post(f"/v1/domains/{d}/accounts", json={"name": n, "password": "secret-pass"}, headers=h)
    await c.patch(f"/v1/domains/{d}/accounts/b", json={"quota_bytes": 1000, "services": ["mail"]}, headers=h)
    await c.delete(f"/v1/domains/{d}/accounts/c", headers=h)
    await c.post(f"/v1/domains/{d}/aliases", json={"name": "all", "targets": [f"a@{d}", f"b@{d}"]}, headers=h)
    await c.post(f"/v1/domains/{d}/suspend", json={"reason": "unpaid"}, headers=h)
    await c.put(f"/v1/domains/{d}/branding", json={"display_name": "R", "primary_colour": "#112233"}, headers=h)

    # a second instance with an empty database projects the whole stream from the start
    rebuilt = await make_stack()
    info = await live.ctx.js.stream_info(names.STREAM_PROVISIONING)
    last = info.state.last_seq
    for s in (live, rebuilt):
        assert await s.ctx.readmodel.wait_for(last, timeout=30)

    def dump(stack):
        async def read():
            return await stack.ctx.db(dump_provisioning)
        return read()

    live_rows, rebuilt_rows = await dump(live), await dump(rebuilt)
    assert live_rows == rebuilt_rows
    assert any(r["name"] == d and r["state"] == "suspended" for r in live_rows["domains"])
    assert {r["address"] for r in live_rows["accounts"] if r["domain"] == d} == {f"a@{d}", f"b@{d}"}

    async def directory_has_it() -> bool:
        kv = await live.ctx.js.key_value(names.BUCKET_DIRECTORY)
        try:
            entry = await kv.get(names.directory_key("address", f"b@{d}"))
        except Exception:
            return False
        import json
        value = json.loads(entry.value)
        return value.get("services") == ["mail"] and "password_hash" not in value

    await wait_until(directory_has_it, what="the directory KV to show b@ with its services")
