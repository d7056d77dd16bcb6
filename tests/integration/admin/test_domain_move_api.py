"""POST|GET /v1/domains/{d}/move: asking for a move records it on the domain (every reader
sees the phase), the refusals are RFC 7807 problems of their own types, and the progress
follows the events the controller appends."""

from __future__ import annotations

from admin_stack import unique_domain

from colony import events as ev
from colony.bus import names
from colony.eventstore import EventStore


async def _append(stack, subject: str, event: ev.Event) -> None:
    store = EventStore(stack.nc.jetstream(), names.STREAM_PROVISIONING)
    stored = await store.read(subject)
    await store.append(subject, [event.encode()], stored[-1].seq if stored else 0)


async def test_a_move_is_asked_for_followed_and_refused_while_under_way(make_stack):
    stack = await make_stack(region="eu", regions="eu,us", primary_region="eu")
    c, h = stack.client, stack.as_(stack.sys_token)
    d = unique_domain("move")
    assert (await c.post("/v1/domains", json={"name": d, "home_region": "eu"}, headers=h)).status_code == 201
    assert (await c.post(f"/v1/domains/{d}/accounts", json={"name": "amy"}, headers=h)).status_code == 201
    r = await c.get(f"/v1/domains/{d}/move", headers=h)
    assert r.status_code == 404 and "never been moved" in r.json()["detail"]

    for body, status, kind in [({"region": "ap"}, 422, "unknown-region"), ({"region": "eu"}, 409, "already-in-region"),
                               ({"region": ""}, 422, "invalid")]:
        r = await c.post(f"/v1/domains/{d}/move", json=body, headers=h)
        assert r.status_code == status and r.json()["type"].endswith("/" + kind), r.text
        assert r.headers["content-type"].startswith("application/problem+json")
    r = await c.post(f"/v1/domains/nosuch-{d}/move", json={"region": "us"}, headers=h)
    assert r.status_code == 404

    r = await c.post(f"/v1/domains/{d}/move", json={"region": "us"}, headers=h)
    assert r.status_code == 202, r.text
    moved = r.json()
    assert (moved["source"], moved["target"], moved["phase"], moved["accounts"]) == ("eu", "us", "requested", 0)
    assert r.headers["location"] == f"/v1/domains/{d}/move"
    domain = (await c.get(f"/v1/domains/{d}", headers=h)).json()
    assert domain["move"] == {"move_id": moved["move_id"], "source": "eu", "target": "us", "phase": "requested"}
    assert domain["home_region"] == "eu"
    listed = (await c.get("/v1/domains", params={"prefix": d}, headers=h)).json()["items"]
    assert listed[0]["move"]["phase"] == "requested"  # the read model has it too

    # while it moves: a second move, a home_region change and a deletion are refused
    r = await c.post(f"/v1/domains/{d}/move", json={"region": "us"}, headers=h)
    assert r.status_code == 409 and r.json()["type"].endswith("/domain-move-in-progress"), r.text
    r = await c.patch(f"/v1/domains/{d}", json={"home_region": "us"}, headers=h)
    assert r.status_code == 409 and r.json()["type"].endswith("/domain-move-in-progress"), r.text
    r = await c.delete(f"/v1/domains/{d}", headers=h)
    assert r.status_code == 409 and r.json()["type"].endswith("/domain-move-in-progress"), r.text

    # the controller's events (appended here as it would) show as progress
    ids = {"domain": d, "move_id": moved["move_id"], "epoch": 3}
    domain_subject = names.provisioning_subject(names.AGG_DOMAIN, d)
    progress_subject = names.provisioning_subject(names.AGG_DOMAIN_MOVE, d)
    await _append(stack, domain_subject, ev.DomainMoveRouting(**ids))
    await _append(stack, domain_subject, ev.DomainMoveCopying(**ids, accounts=[f"amy@{d}"]))
    for digest in ("a", "b", "c"):  # three passes that do not verify: stuck, and said so
        await _append(stack, progress_subject, ev.DomainMoveAccountCopied(
            **ids, address=f"amy@{d}", copy_pass=1, source_messages=2, target_messages=1, source_digest=digest,
            target_digest="x"))
    r = await c.get(f"/v1/domains/{d}/move", headers=h)
    assert r.status_code == 200, r.text
    progress = r.json()
    assert (progress["phase"], progress["accounts"], progress["accounts_verified"], progress["copy_pass"]) \
        == ("copying", 1, 0, 1)
    assert progress["stuck"] and f"amy@{d}" in progress["stuck"]
    await _append(stack, progress_subject, ev.DomainMoveAccountCopied(
        **ids, address=f"amy@{d}", copy_pass=1, source_messages=2, target_messages=2, source_digest="y",
        target_digest="y", source_position=9))
    progress = (await c.get(f"/v1/domains/{d}/move", headers=h)).json()
    assert progress["accounts_verified"] == 1 and progress["stuck"] is None


async def test_a_single_region_cluster_has_nowhere_to_move_and_domain_admins_may_not(stack):
    c, h = stack.client, stack.as_(stack.sys_token)
    d = unique_domain("solo")
    assert (await c.post("/v1/domains", json={"name": d}, headers=h)).status_code == 201
    r = await c.post(f"/v1/domains/{d}/move", json={"region": "us"}, headers=h)
    assert r.status_code == 422 and r.json()["type"].endswith("/unknown-region") and "one region" in r.json()["detail"]
    r = await c.post("/v1/tokens", json={"name": "da", "role": "domain-admin", "domain": d}, headers=h)
    assert r.status_code == 201, r.text
    da = stack.as_(r.json()["token"])
    assert (await c.post(f"/v1/domains/{d}/move", json={"region": "us"}, headers=da)).status_code == 403
    assert (await c.get(f"/v1/domains/{d}/move", headers=da)).status_code == 403


async def test_a_move_not_yet_started_can_be_cancelled_and_one_under_way_cannot(make_stack):
    stack = await make_stack(region="eu", regions="eu,us", primary_region="eu")
    c, h = stack.client, stack.as_(stack.sys_token)
    d = unique_domain("cancel")
    assert (await c.post("/v1/domains", json={"name": d, "home_region": "eu"}, headers=h)).status_code == 201
    r = await c.delete(f"/v1/domains/{d}/move", headers=h)
    assert r.status_code == 409 and r.json()["type"].endswith("/no-move-in-progress"), r.text
    first = (await c.post(f"/v1/domains/{d}/move", json={"region": "us"}, headers=h)).json()
    r = await c.delete(f"/v1/domains/{d}/move", headers=h)
    assert r.status_code == 200 and r.json()["phase"] == "cancelled", r.text
    domain = (await c.get(f"/v1/domains/{d}", headers=h)).json()
    assert domain["move"]["phase"] == "cancelled" and domain["home_region"] == "eu"
    # no longer moving: it may move again, and once that one routes mail it cannot be withdrawn
    second = (await c.post(f"/v1/domains/{d}/move", json={"region": "us"}, headers=h)).json()
    assert second["phase"] == "requested" and second["move_id"] != first["move_id"]
    await _append(stack, names.provisioning_subject(names.AGG_DOMAIN, d),
                  ev.DomainMoveRouting(domain=d, move_id=second["move_id"], epoch=1))
    r = await c.delete(f"/v1/domains/{d}/move", headers=h)
    assert r.status_code == 409 and r.json()["type"].endswith("/domain-move-in-progress"), r.text
    assert (await c.get(f"/v1/domains/{d}/move", headers=h)).json()["phase"] == "routing"
