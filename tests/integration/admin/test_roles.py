"""Who may do what: domain admins stay in their domain and away from CoS; billing reads usage only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from admin_stack import unique_domain

from colony_admin.models import Role


async def _two_domains(stack):
    c, h = stack.client, stack.as_(stack.sys_token)
    mine, theirs = unique_domain("mine"), unique_domain("theirs")
    for d in (mine, theirs):
        assert (await c.post("/v1/domains", json={"name": d}, headers=h)).status_code == 201
        assert (await c.post(f"/v1/domains/{d}/accounts", json={"name": "bob"}, headers=h)).status_code == 201
    assert (await c.post("/v1/cos", json={"name": f"gold-{mine[:8]}", "limits": {"quota_bytes": 10}},
                         headers=h)).status_code == 201
    return mine, theirs


async def test_domain_admin_is_confined_to_its_domain_and_never_touches_cos(stack):
    c = stack.client
    mine, theirs = await _two_domains(stack)
    da = stack.as_(await stack.token(Role.DOMAIN_ADMIN, mine, name=f"admin@{mine}"))
    cos = f"gold-{mine[:8]}"

    # allowed: own accounts, aliases, branding
    assert (await c.post(f"/v1/domains/{mine}/accounts", json={"name": "carol"}, headers=da)).status_code == 201
    assert (await c.patch(f"/v1/domains/{mine}/accounts/bob", json={"real_name": "Bob"}, headers=da)).status_code == 200
    assert (await c.post(f"/v1/domains/{mine}/aliases", json={"name": "info", "targets": [f"bob@{mine}"]},
                         headers=da)).status_code == 201
    assert (await c.put(f"/v1/domains/{mine}/branding", json={"display_name": "Mine"}, headers=da)).status_code == 200
    listed = (await c.get("/v1/domains", headers=da)).json()["items"]
    assert [d["name"] for d in listed] == [mine]

    # another domain: 403 on everything, existing or not
    for method, url, body in [
        ("GET", f"/v1/domains/{theirs}", None),
        ("GET", f"/v1/domains/{theirs}/accounts", None),
        ("GET", f"/v1/domains/{theirs}/accounts/bob", None),
        ("POST", f"/v1/domains/{theirs}/accounts", {"name": "mallory"}),
        ("PATCH", f"/v1/domains/{theirs}/accounts/bob", {"real_name": "pwned"}),
        ("DELETE", f"/v1/domains/{theirs}/accounts/bob", None),
        ("PUT", f"/v1/domains/{theirs}/branding", {"display_name": "pwned"}),
        ("GET", f"/v1/domains/{unique_domain('nobody')}", None),
        ("GET", f"/v1/usage?domain={theirs}&from=2020-01-01T00:00:00Z&to=2030-01-01T00:00:00Z", None),
        ("GET", f"/v1/audit?domain={theirs}", None),
    ]:
        r = await c.request(method, url, json=body, headers=da)
        assert r.status_code == 403, (method, url, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")

    # classes of service and their limits: never
    for method, url, body in [
        ("GET", "/v1/cos", None),
        ("POST", "/v1/cos", {"name": "platinum"}),
        ("PATCH", f"/v1/cos/{cos}", {"limits": {"quota_bytes": 10**12}}),
        ("DELETE", f"/v1/cos/{cos}", None),
        ("PATCH", f"/v1/domains/{mine}", {"cos": cos}),
        ("PATCH", f"/v1/domains/{mine}/accounts/bob", {"cos": cos}),
        ("POST", f"/v1/domains/{mine}/accounts", {"name": "dave", "cos": cos}),
        ("POST", f"/v1/domains/{mine}/suspend", None),
        ("POST", "/v1/tokens", {"name": "x", "role": "system-admin"}),
        ("POST", "/v1/domains", {"name": unique_domain("new")}),
    ]:
        r = await c.request(method, url, json=body, headers=da)
        assert r.status_code == 403, (method, url, r.status_code, r.text)

    # nothing of theirs changed
    h = stack.as_(stack.sys_token)
    assert (await c.get(f"/v1/domains/{theirs}/accounts/bob", headers=h)).json()["real_name"] == ""
    assert (await c.get(f"/v1/cos/{cos}", headers=h)).json()["limits"]["quota_bytes"] == 10


async def test_billing_reader_reads_usage_and_nothing_else(stack):
    c = stack.client
    mine, _ = await _two_domains(stack)
    billing = stack.as_(await stack.token(Role.BILLING_READER, name="billing"))
    now = datetime.now(UTC)
    params = {"from": (now - timedelta(hours=1)).isoformat(), "to": (now + timedelta(hours=1)).isoformat()}
    assert (await c.get("/v1/usage", params=params, headers=billing)).status_code == 200
    assert (await c.get("/v1/usage", params=params | {"domain": mine, "format": "csv"}, headers=billing)).status_code == 200
    for method, url, body in [
        ("GET", "/v1/domains", None),
        ("GET", f"/v1/domains/{mine}", None),
        ("GET", f"/v1/domains/{mine}/accounts", None),
        ("POST", f"/v1/domains/{mine}/accounts", {"name": "eve"}),
        ("GET", "/v1/cos", None),
        ("GET", "/v1/tokens", None),
        ("GET", "/v1/audit", None),
        ("POST", "/v1/imports", [{"domain": unique_domain()}]),
    ]:
        r = await c.request(method, url, json=body, headers=billing)
        assert r.status_code == 403, (method, url, r.status_code, r.text)


async def test_unknown_revoked_and_guessed_tokens(stack):
    c, h = stack.client, stack.as_(stack.sys_token)
    r = await c.post("/v1/tokens", json={"name": "temp", "role": "system-admin"}, headers=h)
    assert r.status_code == 201
    token, token_id = r.json()["token"], r.json()["id"]
    assert (await c.get("/v1/whoami", headers=stack.as_(token))).json()["role"] == "system-admin"
    assert (await c.delete(f"/v1/tokens/{token_id}", headers=h)).status_code == 204
    assert (await c.get("/v1/whoami", headers=stack.as_(token))).status_code == 401
    # the stored form is a hash, never the token
    row = (await c.get(f"/v1/tokens/{token_id}", headers=h)).json()
    assert "token" not in row and row["revoked"] is True


async def test_brute_force_on_tokens_is_throttled(stack):
    c = stack.client
    stack.ctx.throttle.max_failures = 5
    codes = [(await c.get("/v1/whoami", headers={"Authorization": f"Bearer col_{'0' * 16}_guess{i}"})).status_code
             for i in range(8)]
    assert codes[:5] == [401] * 5 and codes[5:] == [429] * 3
    r = await c.get("/v1/whoami", headers=stack.as_(stack.sys_token))
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1  # the address is locked out
