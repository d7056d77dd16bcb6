"""Usage as services publish it (UsageRecorded on usage_subject) summed for billing; the audit trail."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

from admin_stack import unique_domain, wait_until

from colony.bus import names
from colony.events import UsageRecorded, UsageSummed
from colony_admin.models import Role


async def _publish(stack, **fields) -> int:
    event = UsageRecorded(**fields)
    ack = await stack.nc.jetstream().publish(names.usage_subject(fields["domain"]), event.encode())
    return ack.seq


async def test_usage_is_summed_per_domain_and_account_for_a_period(stack):
    c = stack.client
    d1, d2 = unique_domain("bill"), unique_domain("bill")
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    inside, before = t0 + timedelta(hours=1), t0 - timedelta(hours=5)
    last = 0
    for fields in [
        dict(domain=d1, account=f"alice@{d1}", metric="messages_in", amount=3, at=inside),
        dict(domain=d1, account="alice", metric="messages_in", amount=2, at=inside),  # local part only
        dict(domain=d1, account=f"bob@{d1}", metric="messages_out", amount=7, at=inside),
        dict(domain=d1, account=f"bob@{d1}", metric="sip_call_seconds", amount=120.5, at=inside),
        dict(domain=d1, account=f"bob@{d1}", metric="sip_registrations", amount=1, at=inside),
        dict(domain=d1, account=f"alice@{d1}", metric="storage_bytes", amount=1000, at=inside),
        dict(domain=d1, account=f"alice@{d1}", metric="storage_bytes", amount=1500, at=inside + timedelta(minutes=5)),
        dict(domain=d1, account=f"bob@{d1}", metric="storage_bytes", amount=500, at=inside),
        dict(domain=d1, account=f"alice@{d1}", metric="messages_in", amount=100, at=before),  # outside the period
        dict(domain=d2.upper(), account=None, metric="messages_in", amount=4, at=inside),
    ]:
        last = await _publish(stack, source="mailstore-1", **fields)
    assert await stack.ctx.usage_projection.wait_for(last, timeout=30)

    billing = stack.as_(await stack.token(Role.BILLING_READER, name="billing"))
    period = {"from": t0.isoformat(), "to": (t0 + timedelta(days=1)).isoformat()}
    r = await c.get("/v1/usage", params=period | {"domain": d1, "per_account": "true"}, headers=billing)
    assert r.status_code == 200, r.text
    rows = {(row["domain"], row["account"]): row for row in r.json()["rows"]}
    total = rows[(d1, None)]
    assert (total["messages_in"], total["messages_out"], total["sip_call_seconds"], total["sip_registrations"]) == (5, 7, 120.5, 1)
    assert total["storage_bytes"] == 2000  # latest per account: 1500 + 500
    assert rows[(d1, f"alice@{d1}")]["messages_in"] == 5
    assert rows[(d1, f"alice@{d1}")]["storage_bytes"] == 1500

    r = await c.get("/v1/usage", params=period | {"format": "csv"}, headers=billing)
    assert r.headers["content-type"].startswith("text/csv")
    by_domain = {row["domain"]: row for row in csv.DictReader(io.StringIO(r.text))}
    assert float(by_domain[d2]["messages_in"]) == 4 and float(by_domain[d1]["messages_in"]) == 5

    r = await c.get("/v1/usage", params={"from": period["to"], "to": period["from"]}, headers=billing)
    assert r.status_code == 400


async def test_summed_and_single_usage_events_are_reported_alike(stack):
    """A cluster mid-upgrade has producers of both events on USAGE: the report sums a
    UsageSummed's entries with the UsageRecorded facts (one row per entry under one sequence)."""
    d = unique_domain("bill")
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    inside = t0 + timedelta(hours=1)
    await _publish(stack, domain=d, account=f"alice@{d}", metric="sip_registrations", amount=2, at=inside,
                   source="sipfarm-old")
    summed = UsageSummed(domain=d.upper(), at=inside, source="sipfarm-new", sums=[
        (f"alice@{d}", "sip_registrations", 3), ("bob", "sip_registrations", 1),   # local part only
        (f"bob@{d}", "sip_call_seconds", 61.5), (None, "sip_registrations", 4)])
    last = (await stack.nc.jetstream().publish(names.usage_subject(d), summed.encode())).seq
    assert await stack.ctx.usage_projection.wait_for(last, timeout=30)

    billing = stack.as_(await stack.token(Role.BILLING_READER, name="billing"))
    period = {"from": t0.isoformat(), "to": (t0 + timedelta(days=1)).isoformat(), "domain": d, "per_account": "true"}
    r = await stack.client.get("/v1/usage", params=period, headers=billing)
    assert r.status_code == 200, r.text
    rows = {row["account"]: row for row in r.json()["rows"]}
    assert rows[None]["sip_registrations"] == 10 and rows[None]["sip_call_seconds"] == 61.5
    assert rows[f"alice@{d}"]["sip_registrations"] == 5
    assert (rows[f"bob@{d}"]["sip_registrations"], rows[f"bob@{d}"]["sip_call_seconds"]) == (1, 61.5)


async def test_every_change_is_audited_with_who_what_when_where(stack):
    c, h = stack.client, stack.as_(stack.sys_token)
    d = unique_domain("audit")
    await c.post("/v1/domains", json={"name": d}, headers=h)
    da = stack.as_(await stack.token(Role.DOMAIN_ADMIN, d, name=f"admin@{d}"))
    await c.post(f"/v1/domains/{d}/accounts", json={"name": "x"}, headers=da)
    await c.patch(f"/v1/domains/{d}/accounts/x", json={"real_name": "X"}, headers=da)

    async def three_entries() -> bool:
        r = await c.get("/v1/audit", params={"domain": d}, headers=h)
        return len(r.json()["items"]) >= 3

    await wait_until(three_entries, what="three audit entries")
    items = (await c.get("/v1/audit", params={"domain": d}, headers=da)).json()["items"]
    assert [i["action"] for i in items] == ["account.update", "account.create", "domain.create"]
    assert items[0]["actor"].startswith(f"admin@{d}") and items[0]["role"] == "domain-admin"
    assert items[0]["remote_addr"] == "127.0.0.1" and items[0]["target"] == f"x@{d}"
    assert items[2]["actor"].startswith("sysadmin")
    page = (await c.get("/v1/audit", params={"domain": d, "limit": 2}, headers=h)).json()
    rest = (await c.get("/v1/audit", params={"domain": d, "cursor": page["next_cursor"]}, headers=h)).json()
    assert [i["seq"] for i in page["items"] + rest["items"]] == [i["seq"] for i in items]
