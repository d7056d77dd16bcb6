"""POST/GET /v1/domains/{d}/dkim: a key made and rotated through the admin API, the DNS
record to publish and the check that it is published (a real loopback DNS server), the
private key in the history-less dkim_keys bucket and never in the audit trail."""

from __future__ import annotations


import asyncio

import dkim
from nats.js.errors import NoKeysError

from colony.bus import names
from colony.bus.tokens import to_token
from colony.outbound.signing import from_json, sign
from colony_admin.models import Role

from admin_stack import unique_domain, wait_until


async def test_dkim_key_made_published_checked_and_rotated(stack, dns_server):
    stack.ctx.settings = stack.ctx.settings.model_copy(update={"dns_servers": dns_server.address})
    c, h = stack.client, stack.as_(stack.sys_token)
    d = unique_domain("dkim")
    assert (await c.post("/v1/domains", json={"name": d}, headers=h)).status_code == 201
    assert (await c.get(f"/v1/domains/{d}/dkim", headers=h)).status_code == 404

    r = await c.post(f"/v1/domains/{d}/dkim", headers=h)
    assert r.status_code == 201, r.text
    first = r.json()
    assert first["record_name"] == f"{first['selector']}._domainkey.{d}"
    assert first["record_value"].startswith("v=DKIM1; k=rsa; p=") and first["published"] is False

    dns_server.add_txt(first["record_name"] + ".", first["record_value"])
    r = await c.get(f"/v1/domains/{d}/dkim", headers=h)
    assert r.status_code == 200 and r.json()["published"] is True and r.json()["selector"] == first["selector"]

    # The key the edges read signs mail that verifies against the published record.
    kv = await stack.nc.jetstream().key_value(names.BUCKET_DKIM_KEYS)
    key = from_json((await kv.get(to_token(d))).value)
    message = f"From: a@{d}\r\nTo: b@remote.test\r\nSubject: s\r\n\r\nbody\r\n".encode()
    record = first["record_value"].encode()
    assert dkim.verify(sign(message, key) + message, dnsfunc=lambda name, timeout=5: record)

    # Rotation: a new selector, the old key gone (history 1), not yet published.
    await asyncio.sleep(1.1)   # selectors are per second
    r = await c.post(f"/v1/domains/{d}/dkim", headers=h)
    second = r.json()
    assert second["selector"] != first["selector"] and second["published"] is False
    async def only_the_new_key():
        try:
            history = await kv.history(to_token(d))
        except NoKeysError:      # between the old key's purge and the new key's write
            return False
        return len(history) == 1 and from_json(history[0].value).selector == second["selector"]
    await wait_until(only_the_new_key, what="the bucket to hold only the new key")

    # A domain admin of another domain may not touch it; nothing private is in AUDIT.
    other = await stack.token(Role.DOMAIN_ADMIN, unique_domain("other"))
    assert (await c.post(f"/v1/domains/{d}/dkim", headers=stack.as_(other))).status_code == 403
    js = stack.nc.jetstream()
    info = await js.stream_info(names.STREAM_AUDIT)
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        assert b"PRIVATE KEY" not in (await js.get_msg(names.STREAM_AUDIT, seq)).data

