"""Bulk import from CSV/JSON with progress and per-company admin tokens; the bootstrap token."""

from __future__ import annotations

import uuid

from admin_stack import connect, unique_domain, wait_until

from colony_admin.bootstrap import ensure_bootstrap_token


async def _finish(stack, job_id: str) -> dict:
    h = stack.as_(stack.sys_token)
    job: dict = {}

    async def done() -> bool:
        nonlocal job
        job = (await stack.client.get(f"/v1/imports/{job_id}", headers=h)).json()
        return job["state"] != "running"

    await wait_until(done, timeout=60, what=f"import {job_id}")
    return job


async def test_csv_import_creates_companies_accounts_and_their_admin_tokens(stack):
    c, h = stack.client, stack.as_(stack.sys_token)
    tag = uuid.uuid4().hex[:6]
    domains = [f"co{i}-{tag}.example" for i in range(20)]
    lines = ["domain,display_name,account,real_name,password,services"]
    for d in domains:
        lines.append(f"{d},Company {d},boss,The Boss,pass-{d},mail imap")
        lines.append(f"{d},,staff,,,")
    lines.append(f"{domains[0]},,boss,Someone Else,,")  # exists and differs: a row error
    lines.append("not a domain,,x,,,")     # invalid: a row error
    r = await c.post("/v1/imports?admin_tokens=true", content="\n".join(lines).encode(),
                     headers=h | {"Content-Type": "text/csv"})
    assert r.status_code == 202, r.text
    job = await _finish(stack, r.json()["id"])
    assert job["state"] == "done", job
    assert (job["domains_created"], job["accounts_created"], job["failed"]) == (20, 40, 2)
    assert job["done"] == job["total"] == 42
    assert len(job["tokens"]) == 20

    # each company's admin sees its own domain and nobody else's
    tokens = {t["domain"]: t["token"] for t in job["tokens"]}
    mine, other = domains[3], domains[4]
    own = stack.as_(tokens[mine])
    listed = (await c.get(f"/v1/domains/{mine}/accounts", headers=own)).json()["items"]
    assert [a["name"] for a in listed] == ["boss", "staff"] and listed[0]["services"] == ["mail", "imap"]
    assert (await c.get(f"/v1/domains/{other}/accounts", headers=own)).status_code == 403
    assert [d["name"] for d in (await c.get("/v1/domains", headers=own)).json()["items"]] == [mine]


async def test_json_import_and_bad_input(stack):
    c, h = stack.client, stack.as_(stack.sys_token)
    d = unique_domain("json")
    rows = [{"domain": d}, {"domain": d, "account": f"a@{d}", "quota_bytes": 10}]
    r = await c.post("/v1/imports", json=rows, headers=h)
    job = await _finish(stack, r.json()["id"])
    assert (job["state"], job["domains_created"], job["accounts_created"], job["failed"]) == ("done", 1, 1, 0)
    assert (await c.get(f"/v1/domains/{d}/accounts/a", headers=h)).json()["quota_bytes"] == 10
    r = await c.post("/v1/imports?format=csv", content=b"name,x\n1,2\n", headers=h)
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/problem+json")


async def test_bootstrap_token_is_made_once(nats_url, make_stack):
    stack = await make_stack()
    nc = await connect(nats_url)
    try:
        first = await ensure_bootstrap_token(stack.settings, nc)
        second = await ensure_bootstrap_token(stack.settings, nc)
    finally:
        await nc.close()
    if first is None:  # another test of this session made it: it must still be exactly one
        return
    assert second is None
    who = (await stack.client.get("/v1/whoami", headers=stack.as_(first))).json()
    assert who["role"] == "system-admin" and who["name"] == "bootstrap"
