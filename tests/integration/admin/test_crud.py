"""CRUD through the API, RFC 7807 errors, pagination and prefix search."""

from __future__ import annotations

from admin_stack import unique_domain


async def test_domain_account_alias_lifecycle(stack):
    c, h = stack.client, stack.as_(stack.sys_token)
    d = unique_domain("life")
    r = await c.post("/v1/domains", json={"name": d.upper(), "branding": {"display_name": "Life Inc"}}, headers=h)
    assert r.status_code == 201, r.text
    assert r.json()["name"] == d  # normalised
    assert r.headers["etag"] == f'"{r.json()["version"]}"'

    r = await c.post(f"/v1/domains/{d}/accounts", json={"name": "Alice", "password": "correct horse", "real_name": "Alice A"}, headers=h)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["address"] == f"alice@{d}" and body["has_password"] and "password" not in body

    r = await c.post(f"/v1/domains/{d}/aliases", json={"name": "sales", "targets": [f"alice@{d}"]}, headers=h)
    assert r.status_code == 201, r.text
    # an alias and an account share one namespace
    r = await c.post(f"/v1/domains/{d}/accounts", json={"name": "sales"}, headers=h)
    assert r.status_code == 409
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["status"] == 409 and r.json()["title"]

    r = await c.get(f"/v1/domains/{d}/accounts", headers=h)
    assert [a["address"] for a in r.json()["items"]] == [f"alice@{d}"]

    r = await c.delete(f"/v1/domains/{d}", headers=h)
    assert r.status_code == 409  # still has addresses
    assert (await c.delete(f"/v1/domains/{d}/aliases/sales", headers=h)).status_code == 204
    assert (await c.delete(f"/v1/domains/{d}/accounts/alice", headers=h)).status_code == 204
    assert (await c.delete(f"/v1/domains/{d}", headers=h)).status_code == 204
    r = await c.get(f"/v1/domains/{d}", headers=h)
    assert r.status_code == 404 and r.json()["type"].endswith("not-found")


async def test_home_region_of_a_domain_with_accounts_changes_only_by_a_move(stack):
    c, h = stack.client, stack.as_(stack.sys_token)
    d = unique_domain("rehome")
    assert (await c.post("/v1/domains", json={"name": d, "home_region": "eu"}, headers=h)).status_code == 201
    # empty: nothing stored anywhere yet, so the home is a plain setting
    r = await c.patch(f"/v1/domains/{d}", json={"home_region": "us"}, headers=h)
    assert r.status_code == 200 and r.json()["home_region"] == "us", r.text
    r = await c.post(f"/v1/domains/{d}/aliases", json={"name": "info", "targets": ["x@elsewhere.example"]}, headers=h)
    assert r.status_code == 201, r.text
    r = await c.patch(f"/v1/domains/{d}", json={"home_region": "eu"}, headers=h)
    assert r.status_code == 200 and r.json()["home_region"] == "eu", r.text  # an alias stores nothing

    assert (await c.post(f"/v1/domains/{d}/accounts", json={"name": "bob"}, headers=h)).status_code == 201
    r = await c.patch(f"/v1/domains/{d}", json={"home_region": "us"}, headers=h)
    assert r.status_code == 409, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["type"].endswith("/domain-move-required") and problem["operation"] == f"/v1/domains/{d}/move"
    assert problem["home_region"] == "eu" and "move" in problem["detail"]
    r = await c.get(f"/v1/domains/{d}", headers=h)
    assert r.json()["home_region"] == "eu"  # nothing changed
    # the same home, or other settings, still go through
    r = await c.patch(f"/v1/domains/{d}", json={"home_region": "eu", "dmarc_enforcement": "none"}, headers=h)
    assert r.status_code == 200 and r.json()["dmarc_enforcement"] == "none", r.text

    assert (await c.delete(f"/v1/domains/{d}/accounts/bob", headers=h)).status_code == 204
    r = await c.patch(f"/v1/domains/{d}", json={"home_region": "us"}, headers=h)
    assert r.status_code == 200 and r.json()["home_region"] == "us", r.text


async def test_problem_details_for_validation_and_auth(stack):
    c = stack.client
    r = await c.get("/v1/domains")
    assert r.status_code == 401 and r.headers["content-type"].startswith("application/problem+json")
    r = await c.post("/v1/domains", json={"name": "not a domain"}, headers=stack.as_(stack.sys_token))
    assert r.status_code == 422
    assert r.json()["errors"] and r.json()["status"] == 422


async def test_cursor_pagination_and_prefix_search(stack):
    c, h = stack.client, stack.as_(stack.sys_token)
    d = unique_domain("page")
    await c.post("/v1/domains", json={"name": d}, headers=h)
    names = [f"user{i:03d}" for i in range(25)] + ["boss"]
    for n in names:
        r = await c.post(f"/v1/domains/{d}/accounts", json={"name": n}, headers=h)
        assert r.status_code == 201
    seen, cursor = [], None
    while True:
        params = {"limit": 10} | ({"cursor": cursor} if cursor else {})
        page = (await c.get(f"/v1/domains/{d}/accounts", params=params, headers=h)).json()
        seen += [a["name"] for a in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == sorted(names)
    r = await c.get(f"/v1/domains/{d}/accounts", params={"prefix": "user01"}, headers=h)
    assert [a["name"] for a in r.json()["items"]] == [f"user{i:03d}" for i in range(10, 20)]
    r = await c.get("/v1/domains", params={"prefix": d[:9]}, headers=h)
    assert d in [x["name"] for x in r.json()["items"]]
    r = await c.get("/v1/domains", params={"cursor": "!!!"}, headers=h)
    assert r.status_code == 400


async def test_domain_dmarc_choice_reaches_the_directory(stack):
    """A domain's DMARC choice for its inbound mail: set, read back, in the directory the
    edges read, changed, and cleared back to the cluster default."""
    import json

    from colony.bus import names
    from colony.contracts.directory import DomainEntry
    c, h = stack.client, stack.as_(stack.sys_token)
    d = unique_domain("dmarc")
    r = await c.post("/v1/domains", json={"name": d, "dmarc_enforcement": "quarantine"}, headers=h)
    assert r.status_code == 201, r.text
    assert r.json()["dmarc_enforcement"] == "quarantine"
    assert (await c.post("/v1/domains", json={"name": unique_domain("x"), "dmarc_enforcement": "maybe"},
                         headers=h)).status_code == 422
    kv = await stack.nc.jetstream().key_value(names.BUCKET_DIRECTORY)

    async def entry():
        return DomainEntry.model_validate(json.loads((await kv.get(names.directory_key("domain", d))).value))
    from cluster_harness import wait_until
    await wait_until(lambda: _is(entry(), "quarantine"), 30, "the directory to show the choice")
    r = await c.patch(f"/v1/domains/{d}", json={"dmarc_enforcement": "none"}, headers=h)
    assert r.status_code == 200, r.text
    assert (await c.get(f"/v1/domains/{d}", headers=h)).json()["dmarc_enforcement"] == "none"
    await wait_until(lambda: _is(entry(), "none"), 30, "the directory to follow the change")
    r = await c.patch(f"/v1/domains/{d}", json={"dmarc_enforcement": None}, headers=h)
    assert r.status_code == 200 and r.json()["dmarc_enforcement"] is None


async def _is(awaitable, choice):
    try:
        return (await awaitable).dmarc_enforcement == choice
    except Exception:
        return False
