"""Projections resume from their checkpoint and skip what they cannot understand."""

from __future__ import annotations

import json

from conftest import unique_domain, wait_until

from colony.bus import names
from colony_admin.projections.readmodel import READ_MODEL, checkpoint


async def test_a_restarted_instance_resumes_from_its_checkpoint(make_stack, databases):
    url = databases.new()
    first = await make_stack(url)
    h = first.as_(first.sys_token)
    d1, d2 = unique_domain("before"), unique_domain("after")
    await first.client.post("/v1/domains", json={"name": d1}, headers=h)
    other = await make_stack()  # writes while "first"'s successor is not running yet
    await other.client.post("/v1/domains", json={"name": d2}, headers=h)
    # a second instance on the first one's database starts where that database left off
    successor = await make_stack(url)
    for d in (d1, d2):
        assert (await successor.client.get("/v1/domains", params={"prefix": d}, headers=h)).json()["items"]
    last = (await successor.ctx.js.stream_info(names.STREAM_PROVISIONING)).state.last_seq
    assert await successor.ctx.readmodel.wait_for(last, timeout=30)
    seq = await successor.ctx.db(checkpoint, READ_MODEL)
    assert seq == last


async def test_an_event_of_an_unknown_version_is_skipped_not_guessed(stack):
    c, h = stack.client, stack.as_(stack.sys_token)
    future = json.dumps({"type": "prov.domain_created", "v": 99, "domain": "from-the-future.example"}).encode()
    ack = await stack.nc.jetstream().publish(names.provisioning_subject(names.AGG_DOMAIN, "from-the-future.example"),
                                             future)
    d = unique_domain("later")
    assert (await c.post("/v1/domains", json={"name": d}, headers=h)).status_code == 201  # projection still runs
    assert await stack.ctx.readmodel.wait_for(ack.seq, timeout=30)
    listed = (await c.get("/v1/domains", params={"prefix": "from-the-future"}, headers=h)).json()["items"]
    assert listed == []
    r = await c.get("/v1/domains/from-the-future.example", headers=h)
    assert r.status_code == 500 and r.json()["type"].endswith("unknown-event-version")

    # the directory stays alive too: a later domain still reaches it
    async def in_directory() -> bool:
        kv = await stack.ctx.js.key_value(names.BUCKET_DIRECTORY)
        try:
            await kv.get(names.directory_key("domain", d))
            return True
        except Exception:
            return False

    await wait_until(in_directory, what="the later domain in the directory")


async def test_an_event_the_database_refuses_is_skipped_and_the_rest_applied(stack):
    from colony import events as ev

    c, h = stack.client, stack.as_(stack.sys_token)
    d = unique_domain("poison")
    await c.post("/v1/domains", json={"name": d}, headers=h)
    await c.post(f"/v1/domains/{d}/accounts", json={"name": "pat", "real_name": "Pat"}, headers=h)
    # an event the API would never write (real_name is NOT NULL), appended behind its back
    bad = ev.AccountUpdated(address=f"pat@{d}", changes={"real_name": None})
    subject = names.provisioning_subject(names.AGG_ADDRESS, f"pat@{d}")
    await stack.ctx.store.append(subject, [bad.encode()], await stack.ctx.store.version(subject))
    r = await c.post(f"/v1/domains/{d}/accounts", json={"name": "quinn"}, headers=h)
    assert r.status_code == 201
    assert await stack.ctx.readmodel.wait_for(r.json()["version"], timeout=30)
    names_listed = [a["name"] for a in (await c.get(f"/v1/domains/{d}/accounts", headers=h)).json()["items"]]
    assert names_listed == ["pat", "quinn"]
    # and a null sent through the API for a field that cannot be empty changes nothing
    r = await c.patch(f"/v1/domains/{d}/accounts/quinn", json={"real_name": None, "state": None}, headers=h)
    assert r.status_code == 200 and r.json()["real_name"] == ""
