"""An account's automatic reply through the admin API: set and cleared with the account's PATCH,
shown by GET and the list, event-sourced (a rebuilt read model equals the live one), in the
directory the mail store reads; invalid settings are RFC 7807 problems naming the field."""

from __future__ import annotations

import json

import pytest
from admin_stack import unique_domain, wait_until

from colony import events as ev
from colony.bus import names
from colony.contracts import directory as contract
from colony_admin import aggregates
from colony_admin.projections.readmodel import dump_provisioning
from colony_admin.routes.accounts import account_out

AWAY = {"body": "Back on Monday — ça va.", "subject": "Out of office", "start": "2026-12-24T09:00:00+01:00",
        "end": "2027-01-04T08:00:00Z", "days": 3, "addresses": ["Sales@Example.com"]}


async def _directory_vacation(stack, address: str):
    kv = await stack.ctx.js.key_value(names.BUCKET_DIRECTORY)
    try:
        value = json.loads((await kv.get(names.directory_key("address", address))).value)
    except Exception:
        return "missing"
    return value.get("vacation", "absent")


async def test_vacation_is_set_shown_in_the_directory_and_cleared(stack):
    c, h = stack.client, stack.as_(stack.sys_token)
    d = unique_domain("away")
    await c.post("/v1/domains", json={"name": d}, headers=h)
    assert (await c.post(f"/v1/domains/{d}/accounts", json={"name": "amy"}, headers=h)).status_code == 201
    assert (await c.get(f"/v1/domains/{d}/accounts/amy", headers=h)).json()["vacation"] is None

    r = await c.patch(f"/v1/domains/{d}/accounts/amy", json={"vacation": AWAY}, headers=h)
    assert r.status_code == 200, r.text
    want = {**AWAY, "enabled": True, "start": "2026-12-24T08:00:00Z", "addresses": ["sales@example.com"]}
    shown = (await c.get(f"/v1/domains/{d}/accounts/amy", headers=h)).json()["vacation"]
    assert shown == want
    await stack.ctx.readmodel.wait_for((await stack.ctx.js.stream_info(names.STREAM_PROVISIONING)).state.last_seq, 30)
    listed = (await c.get(f"/v1/domains/{d}/accounts", headers=h)).json()["items"]
    assert listed[0]["vacation"] == want

    async def in_directory() -> bool:
        return isinstance(await _directory_vacation(stack, f"amy@{d}"), dict)
    await wait_until(in_directory, what="the vacation in the directory entry")
    kv = await stack.ctx.js.key_value(names.BUCKET_DIRECTORY)
    entry = contract.parse_entry((await kv.get(names.directory_key("address", f"amy@{d}"))).value)
    vacation = entry.info().vacation
    assert vacation.body == AWAY["body"] and vacation.days == 3 and vacation.addresses == ("sales@example.com",)
    assert vacation.start.isoformat() == "2026-12-24T08:00:00+00:00"

    r = await c.patch(f"/v1/domains/{d}/accounts/amy", json={"vacation": None}, headers=h)
    assert r.status_code == 200 and r.json()["vacation"] is None, r.text
    assert (await c.get(f"/v1/domains/{d}/accounts/amy", headers=h)).json()["vacation"] is None

    async def cleared() -> bool:
        return await _directory_vacation(stack, f"amy@{d}") is None
    await wait_until(cleared, what="the vacation gone from the directory entry")
    # Leaving the field out changes nothing.
    r = await c.patch(f"/v1/domains/{d}/accounts/amy", json={"vacation": AWAY}, headers=h)
    r = await c.patch(f"/v1/domains/{d}/accounts/amy", json={"real_name": "Amy"}, headers=h)
    assert r.json()["vacation"]["body"] == AWAY["body"]


async def test_the_vacation_sub_resource_sets_and_removes_it(stack):
    c, h = stack.client, stack.as_(stack.sys_token)
    d = unique_domain("sub")
    await c.post("/v1/domains", json={"name": d}, headers=h)
    await c.post(f"/v1/domains/{d}/accounts", json={"name": "amy"}, headers=h)
    r = await c.put(f"/v1/domains/{d}/accounts/amy/vacation", json={"body": "Away."}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["vacation"] == {"enabled": True, "subject": None, "body": "Away.", "start": None, "end": None,
                                    "days": 7, "addresses": []}
    assert r.headers["etag"] == f'"{r.json()["version"]}"'
    r = await c.put(f"/v1/domains/{d}/accounts/amy/vacation", json={"body": "Away.", "days": 400}, headers=h)
    assert r.status_code == 422 and ["body", "days"] in [e["loc"] for e in r.json()["errors"]], r.text
    stale = {**h, "If-Match": '"1"'}
    assert (await c.delete(f"/v1/domains/{d}/accounts/amy/vacation", headers=stale)).status_code in (409, 412)
    r = await c.delete(f"/v1/domains/{d}/accounts/amy/vacation", headers=h)
    assert r.status_code == 200 and r.json()["vacation"] is None, r.text
    r = await c.put(f"/v1/domains/{d}/accounts/nobody/vacation", json={"body": "Away."}, headers=h)
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("change,field", [
    ({"body": "x" * (16 * 1024 + 1)}, "body"),
    ({"body": "é" * (8 * 1024 + 1)}, "body"),              # bounded in UTF-8 bytes, not characters
    ({"body": ""}, "body"),
    ({"subject": "Away\r\nBcc: everyone@example.com"}, "subject"),
    ({"start": "2026-12-24T09:00:00"}, "start"),             # no UTC offset
    ({"start": "2027-01-05T00:00:00Z"}, None),               # after the end
    ({"days": 0}, "days"),
    ({"addresses": ["not an address"]}, "addresses"),
    ({"surprise": 1}, "surprise"),
])
async def test_invalid_vacation_settings_are_problems_naming_the_field(stack, change, field):
    c, h = stack.client, stack.as_(stack.sys_token)
    d = unique_domain("bad")
    await c.post("/v1/domains", json={"name": d}, headers=h)
    await c.post(f"/v1/domains/{d}/accounts", json={"name": "amy"}, headers=h)
    r = await c.patch(f"/v1/domains/{d}/accounts/amy", json={"vacation": {**AWAY, **change}}, headers=h)
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json"), r.text
    locs = [e["loc"] for e in r.json()["errors"]]
    assert any(loc[:3] == ["body", "vacation", field] if field else loc[:2] == ["body", "vacation"] for loc in locs), locs
    assert (await c.get(f"/v1/domains/{d}/accounts/amy", headers=h)).json()["vacation"] is None


async def test_the_read_model_rebuilt_from_the_events_has_the_vacation(make_stack):
    live = await make_stack()
    c, h = live.client, live.as_(live.sys_token)
    d = unique_domain("replay")
    await c.post("/v1/domains", json={"name": d}, headers=h)
    for n in ("a", "b"):
        await c.post(f"/v1/domains/{d}/accounts", json={"name": n}, headers=h)
    await c.patch(f"/v1/domains/{d}/accounts/a", json={"vacation": AWAY}, headers=h)
    await c.patch(f"/v1/domains/{d}/accounts/b", json={"vacation": AWAY}, headers=h)
    await c.patch(f"/v1/domains/{d}/accounts/b", json={"vacation": None}, headers=h)
    rebuilt = await make_stack()
    last = (await live.ctx.js.stream_info(names.STREAM_PROVISIONING)).state.last_seq
    for s in (live, rebuilt):
        assert await s.ctx.readmodel.wait_for(last, timeout=30)
    live_rows, rebuilt_rows = await live.ctx.db(dump_provisioning), await rebuilt.ctx.db(dump_provisioning)
    assert live_rows == rebuilt_rows
    mine = {r["address"]: r["vacation"] for r in rebuilt_rows["accounts"] if r["domain"] == d}
    assert mine[f"b@{d}"] is None and mine[f"a@{d}"]["end"] == "2027-01-04T08:00:00Z"


def test_events_from_before_vacation_still_fold():
    """An AccountCreated as older versions stored it (no vacation anywhere) folds to an account
    without one, and a later AccountUpdated sets it."""
    old = ev.decode(json.dumps({"type": "prov.account_created", "v": 1, "at": "2026-11-01T00:00:00Z",
                                "address": "amy@old.example", "domain": "old.example", "name": "amy",
                                "forwarding": [], "state": "active"}).encode())
    state = aggregates.apply(None, old)
    assert account_out({**state, "version": 1}).vacation is None
    state = aggregates.apply(state, ev.AccountUpdated(address="amy@old.example", changes={"vacation": {"body": "away"}}))
    assert account_out({**state, "version": 2}).vacation.body == "away"
