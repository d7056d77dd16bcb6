"""Secrets out of the clear event log (colony_admin/auth/sealing.py): PROVISIONING read whole
with every bus right shows no password hash, SIP HA1 or token digest; a replaced one is
shredded; logins, SIP digest, token checks and a rebuilt read model still work."""

from __future__ import annotations

import hashlib
import json

from admin_stack import PublicOnly, unique_domain, wait_until
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyDeletedError, KeyNotFoundError
from passlib.hash import sha512_crypt

from colony import events as ev
from colony.bus import names
from colony.bus.permissions import permissions_for
from colony_admin.auth import sealing
from colony_admin.projections.readmodel import dump_provisioning


async def ask(stack, subject: str, **request) -> dict:
    # argon2 checks on a busy 2-core machine can take seconds each: a generous deadline.
    msg = await stack.nc.request(subject, json.dumps(request).encode(), timeout=60)
    return json.loads(msg.data)


async def whole_stream(stack) -> list[bytes]:
    """Every PROVISIONING message, read with the operator's (full) rights, to the stream's end
    (the end is where the consumer has nothing pending: sequences have gaps where other tests
    deleted messages, so counting up to the last sequence could wait forever).  No acks: an
    unacknowledged message would come back after ack_wait and the reading never end."""
    js = stack.nc.jetstream()
    sub = await js.pull_subscribe(names.SUBJECTS_PROVISIONING, stream=names.STREAM_PROVISIONING,
                                  config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE))
    out: list[bytes] = []
    try:
        while True:
            batch = await sub.fetch(500, timeout=30)
            out += [m.data for m in batch]
            if batch and batch[-1].metadata.num_pending == 0:
                return out
    finally:
        await sub.unsubscribe()


async def has_key(stack, key: str) -> bool:
    """Whether the secret-keys bucket holds ``key`` (a get, not ``kv.keys()``: nats-py's
    listing watches the bucket and, seen in CI, answered "no keys" for one that held some)."""
    kv = await stack.nc.jetstream().key_value(names.BUCKET_SECRET_KEYS)
    try:
        await kv.get(key)
    except (KeyNotFoundError, KeyDeletedError):
        return False
    return True


def ha1(local: str, realm: str, password: str) -> list[str]:
    material = f"{local}:{realm}:{password}".encode()
    return [hashlib.md5(material).hexdigest(), hashlib.sha256(material).hexdigest()]


async def _provision(stack) -> str:
    c, h = stack.client, stack.as_(stack.sys_token)
    d = unique_domain("seal")
    cos = f"sealed-{d[:10]}"
    assert (await c.post("/v1/cos", json={"name": cos, "limits": {"services": ["mail", "imap", "sip"]}},
                         headers=h)).status_code == 201
    assert (await c.post("/v1/domains", json={"name": d, "cos": cos}, headers=h)).status_code == 201
    r = await c.post(f"/v1/domains/{d}/accounts", json={"name": "alice", "password": "first-pass"}, headers=h)
    assert r.status_code == 201, r.text
    return d


async def test_provisioning_holds_no_secret_in_the_clear_and_replaced_ones_are_shredded(stack):
    c, h = stack.client, stack.as_(stack.sys_token)
    d = await _provision(stack)
    address = f"alice@{d}"
    first = await stack.ctx.provisioning.load(names.AGG_ADDRESS, address)
    first_hash = first.state["password_hash"]
    assert first_hash.startswith("$argon2id$")  # opened for the admin API itself
    r = await c.patch(f"/v1/domains/{d}/accounts/alice", json={"password": "second-pass"}, headers=h)
    assert r.status_code == 200, r.text
    created = await c.post("/v1/tokens", json={"name": "ops", "role": "system-admin"}, headers=h)
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    token_secret = token.rsplit("_", 1)[1]

    # The auth check and SIP digest work with the new password, not the old one.
    ok = await ask(stack, names.AUTH_CHECK, user=address, password="second-pass", service="imap")
    assert ok["ok"], ok
    old = await ask(stack, names.AUTH_CHECK, user=address, password="first-pass")
    assert not old["ok"]
    sip = await ask(stack, names.AUTH_SIP_CREDENTIALS, user=address, algorithm="MD5")
    assert sip["ok"] and sip["ha1"] == ha1("alice", d, "second-pass")[0]
    # A token created now is accepted (keyed digest), and refused once revoked.
    assert (await c.get("/v1/whoami", headers=stack.as_(token))).status_code == 200

    stream = b"\n".join(await whole_stream(stack))
    clear = [first_hash, (await stack.ctx.provisioning.load(names.AGG_ADDRESS, address)).state["password_hash"],
             *ha1("alice", d, "first-pass"), *ha1("alice", d, "second-pass"),
             hashlib.sha256(token_secret.encode()).hexdigest()]
    for secret in clear:
        assert secret.encode() not in stream, "a secret is readable from PROVISIONING"
    assert f"col_{created.json()['id']}".encode() not in stream

    # The first password's sealed value names a key that is gone: it can never be opened.
    subject = names.provisioning_subject(names.AGG_ADDRESS, address)
    events = [ev.decode(m.data) for m in await stack.ctx.store.read(subject)]
    sealed_first = next(e.password_hash for e in events if isinstance(e, ev.AccountCreated))
    assert sealing.is_sealed(sealed_first)
    assert await stack.ctx.provisioning.keys.open(sealed_first) is None
    current = next(e for e in reversed(events) if isinstance(e, ev.AccountPasswordSet))
    assert await stack.ctx.provisioning.keys.open(current.password_hash) is not None

    # Revoking the token shreds its key; deleting the account shreds its credentials' key.
    assert (await c.delete(f"/v1/tokens/{created.json()['id']}", headers=h)).status_code == 204
    assert not await has_key(stack, sealing.token_key(created.json()["id"]))
    current_key = sealing.cred_key(sealing.key_id_of(current.password_hash))
    assert await has_key(stack, current_key)
    assert (await c.delete(f"/v1/domains/{d}/accounts/alice", headers=h)).status_code == 204
    assert not await has_key(stack, current_key)


async def test_a_migrated_hash_is_rehashed_on_login_and_its_key_shredded(stack):
    c, h = stack.client, stack.as_(stack.sys_token)
    d = await _provision(stack)
    imported = "{SHA512-CRYPT}" + sha512_crypt.hash("old-system", rounds=5000)
    r = await c.post(f"/v1/domains/{d}/accounts", json={"name": "bob", "password_hash": imported}, headers=h)
    assert r.status_code == 201, r.text
    assert (await ask(stack, names.AUTH_CHECK, user=f"bob@{d}", password="old-system"))["ok"]

    async def rehashed() -> bool:
        state = (await stack.ctx.provisioning.load(names.AGG_ADDRESS, f"bob@{d}")).state
        return state["password_hash"].startswith("$argon2id$")

    await wait_until(rehashed, what="the re-hash to argon2id after login")
    assert (await ask(stack, names.AUTH_CHECK, user=f"bob@{d}", password="old-system"))["ok"]
    events = [ev.decode(m.data) for m in
              await stack.ctx.store.read(names.provisioning_subject(names.AGG_ADDRESS, f"bob@{d}"))]
    sealed_import = next(e.password_hash for e in events if isinstance(e, ev.AccountCreated))
    assert sealing.is_sealed(sealed_import) and imported.split("}")[1].encode() not in b"".join(
        e.encode() for e in events)
    assert await stack.ctx.provisioning.keys.open(sealed_import) is None


async def test_rebuilt_read_model_equals_the_live_one_with_sealed_secrets(make_stack):
    live = await make_stack()
    d = await _provision(live)
    r = await live.client.patch(f"/v1/domains/{d}/accounts/alice", json={"password": "again-pass"},
                                headers=live.as_(live.sys_token))
    assert r.status_code == 200, r.text
    rebuilt = await make_stack()
    last = (await live.ctx.js.stream_info(names.STREAM_PROVISIONING)).state.last_seq
    for s in (live, rebuilt):
        assert await s.ctx.readmodel.wait_for(last, timeout=30)
    live_rows = await live.ctx.db(dump_provisioning)
    assert live_rows == await rebuilt.ctx.db(dump_provisioning)
    row = next(r for r in live_rows["accounts"] if r["address"] == f"alice@{d}")
    assert sealing.is_sealed(row["password_hash"]) and all(sealing.is_sealed(v) for v in row["sip_ha1"].values())
    # The rebuilt instance answers logins from its own read model.
    answer = await ask(rebuilt, names.AUTH_CHECK, user=f"alice@{d}", password="again-pass")
    assert answer["ok"], answer


def test_only_the_admin_api_may_touch_the_key_bucket():
    for role in names.GRANTS:
        if role in ("admin-api", names.ROLE_OPERATOR):
            continue
        perms = json.dumps(permissions_for(names.GRANTS[role], "UKEY"), default=str)
        assert names.BUCKET_SECRET_KEYS not in perms, f"{role} may reach {names.BUCKET_SECRET_KEYS}"
    assert names.BUCKET_SECRET_KEYS in json.dumps(permissions_for(names.GRANTS["admin-api"], "UKEY"), default=str)


async def test_sealing_many_creations_stores_every_key_before_returning(stack):
    """The bulk import's pipelined key writes: each account's credentials sealed under its own
    key, every key readable at once, other events sealed as one by one."""
    keys = stack.ctx.provisioning.keys
    d = unique_domain()
    hashes = [sha512_crypt.hash(f"pw-{i}", rounds=5000) for i in range(3)]
    events = [ev.AccountCreated(address=f"u{i}@{d}", domain=d, name=f"u{i}", password_hash="{SHA512-CRYPT}" + h,
                                sip_ha1={"MD5": f"{i:032x}"}) for i, h in enumerate(hashes)]
    events += [ev.AccountCreated(address=f"nopw@{d}", domain=d, name="nopw"), ev.DomainCreated(domain=d)]
    sealed = await keys.seal_creations(events)
    assert len(sealed) == len(events)
    kids = set()
    for i in range(3):
        event = sealed[i].events[0]
        assert sealing.is_sealed(event.password_hash) and sealing.is_sealed(event.sip_ha1["MD5"])
        assert await keys.open(event.password_hash) == "{SHA512-CRYPT}" + hashes[i]
        assert await keys.open(event.sip_ha1["MD5"]) == f"{i:032x}"
        assert sealed[i].fresh == [sealing.cred_key(sealing.key_id_of(event.password_hash))]
        assert await has_key(stack, sealed[i].fresh[0])
        kids.add(sealing.key_id_of(event.password_hash))
    assert len(kids) == 3  # a key per account: shredding one never touches another
    assert sealed[3].events[0].password_hash is None and sealed[3].fresh == []
    assert sealed[4].events[0] == events[4] and sealed[4].fresh == []


async def test_bulk_sealing_uses_the_connection_it_was_given_not_a_nats_py_private(stack):
    keys = sealing.SecretKeys(PublicOnly(stack.nc.jetstream()), stack.nc)
    d = unique_domain()
    event = ev.AccountCreated(address=f"u@{d}", domain=d, name="u", password_hash="{PLAIN}pw")
    sealed = await keys.seal_creations([event])
    assert await keys.open(sealed[0].events[0].password_hash) == "{PLAIN}pw"
    assert await has_key(stack, sealed[0].fresh[0])
