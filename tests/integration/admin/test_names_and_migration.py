"""Tenant-safe names (a name is a domain or a domain alias; domain admins prove names by DNS),
the default class of service, and migration-grade import (foreign password hashes, SIP HA1,
idempotent re-runs)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid

import bcrypt
from argon2 import PasswordHasher, Type
from admin_stack import unique_domain, wait_until
from passlib.hash import des_crypt, sha256_crypt, sha512_crypt

from colony.bus import names
from colony_admin.models import Role

PW = "migrated-secret"


async def ask(stack, subject: str, **request) -> dict:
    msg = await stack.nc.request(subject, json.dumps(request).encode(), timeout=10)
    return json.loads(msg.data)


async def _finish(stack, job_id: str) -> dict:
    job: dict = {}

    async def done() -> bool:
        nonlocal job
        job = (await stack.client.get(f"/v1/imports/{job_id}", headers=stack.as_(stack.sys_token))).json()
        return job["state"] != "running"

    await wait_until(done, timeout=90, what=f"import {job_id}")
    return job


async def _import(stack, rows: list[dict], update: bool = False) -> dict:
    r = await stack.client.post(f"/v1/imports?update={str(update).lower()}", json=rows,
                                headers=stack.as_(stack.sys_token))
    assert r.status_code == 202, r.text
    return await _finish(stack, r.json()["id"])


# --- names -----------------------------------------------------------------------------------------

async def test_domain_admin_claims_a_name_only_with_the_dns_proof(stack, dns_server):
    stack.ctx.settings = stack.ctx.settings.model_copy(update={"dns_servers": dns_server.address})
    c, sys_h = stack.client, stack.as_(stack.sys_token)
    mine, theirs = unique_domain("owner"), unique_domain("other")
    for d in (mine, theirs):
        assert (await c.post("/v1/domains", json={"name": d}, headers=sys_h)).status_code == 201
    admin = stack.as_(await stack.token(Role.DOMAIN_ADMIN, mine))
    other_admin = stack.as_(await stack.token(Role.DOMAIN_ADMIN, theirs))
    wanted = unique_domain("future-customer")

    refused = await c.post(f"/v1/domains/{mine}/domain-aliases", json={"name": wanted}, headers=admin)
    assert refused.status_code == 403 and "TXT" in refused.json()["detail"]

    proof = (await c.get(f"/v1/domains/{mine}/domain-aliases/{wanted}/verification", headers=admin)).json()
    assert proof["record_name"] == wanted and proof["record_type"] == "TXT" and proof["verified"] is False
    assert proof["record_value"].startswith("colony-verification=")
    # Another tenant's token for the same name proves nothing for this one.
    theirs_proof = (await c.get(f"/v1/domains/{theirs}/domain-aliases/{wanted}/verification",
                                headers=other_admin)).json()
    assert theirs_proof["record_value"] != proof["record_value"]
    dns_server.add(f'{wanted}. 300 IN TXT "v=spf1 -all"', f'{wanted}. 300 IN TXT "{theirs_proof["record_value"]}"')
    assert (await c.post(f"/v1/domains/{mine}/domain-aliases", json={"name": wanted}, headers=admin)).status_code == 403

    dns_server.add(f'{wanted}. 300 IN TXT "{proof["record_value"]}"')
    again = (await c.get(f"/v1/domains/{mine}/domain-aliases/{wanted}/verification", headers=admin)).json()
    assert again["verified"] is True
    created = await c.post(f"/v1/domains/{mine}/domain-aliases", json={"name": wanted}, headers=admin)
    assert created.status_code == 201, created.text

    # ...and the name is taken: not by the other tenant, not as a domain of its own.
    r = await c.post(f"/v1/domains/{theirs}/domain-aliases", json={"name": wanted}, headers=other_admin)
    assert r.status_code == 409
    r = await c.post("/v1/domains", json={"name": wanted}, headers=sys_h)
    assert r.status_code == 409 and "domain alias" in r.json()["detail"]


async def test_a_name_is_a_domain_or_a_domain_alias_never_both(stack):
    c, h = stack.client, stack.as_(stack.sys_token)
    d, other = unique_domain("real"), unique_domain("taken")
    for name in (d, other):
        assert (await c.post("/v1/domains", json={"name": name}, headers=h)).status_code == 201
    # A domain cannot become an alias (system administrators skip the DNS proof, not this rule).
    r = await c.post(f"/v1/domains/{d}/domain-aliases", json={"name": other}, headers=h)
    assert r.status_code == 409 and "is a domain" in r.json()["detail"]
    # An alias cannot become a domain, until the alias is gone.
    alias = unique_domain("alias")
    assert (await c.post(f"/v1/domains/{d}/domain-aliases", json={"name": alias}, headers=h)).status_code == 201
    assert (await c.post("/v1/domains", json={"name": alias}, headers=h)).status_code == 409
    assert (await c.delete(f"/v1/domains/{d}/domain-aliases/{alias}", headers=h)).status_code == 204
    assert (await c.post("/v1/domains", json={"name": alias}, headers=h)).status_code == 201

    # Racing creations of one name as a domain and as an alias: never both.
    for _ in range(6):
        name = unique_domain("race")
        as_domain, as_alias = await asyncio.gather(
            c.post("/v1/domains", json={"name": name}, headers=h),
            c.post(f"/v1/domains/{d}/domain-aliases", json={"name": name}, headers=h))
        codes = sorted((as_domain.status_code, as_alias.status_code))
        assert codes != [201, 201], (as_domain.text, as_alias.text)
        assert set(codes) <= {201, 409}
        domain_exists = (await c.get(f"/v1/domains/{name}", headers=h)).status_code == 200
        alias_exists = (await stack.ctx.provisioning.load(names.AGG_DOMAIN_ALIAS, name)).state is not None
        assert not (domain_exists and alias_exists)


async def test_an_import_cannot_make_a_domain_of_an_alias(stack):
    c, h = stack.client, stack.as_(stack.sys_token)
    d, alias = unique_domain("imp"), unique_domain("imp-alias")
    assert (await c.post("/v1/domains", json={"name": d}, headers=h)).status_code == 201
    assert (await c.post(f"/v1/domains/{d}/domain-aliases", json={"name": alias}, headers=h)).status_code == 201
    fresh = unique_domain("imp-new")
    job = await _import(stack, [{"domain": alias, "account": "x"}, {"domain": fresh}])
    assert job["domains_created"] == 1 and any("domain alias" in e for e in job["errors"]), job
    assert (await c.get(f"/v1/domains/{alias}", headers=h)).status_code == 404


async def test_domains_without_a_class_get_the_default_one(stack):
    c, h = stack.client, stack.as_(stack.sys_token)
    d = unique_domain("cos")
    created = (await c.post("/v1/domains", json={"name": d}, headers=h)).json()
    assert created["cos"] == stack.settings.default_cos
    cos = (await c.get(f"/v1/cos/{stack.settings.default_cos}", headers=h)).json()
    assert cos["limits"]["quota_bytes"] == stack.settings.default_cos_quota_bytes
    patched = (await c.patch(f"/v1/domains/{d}", json={"cos": None}, headers=h)).json()
    assert patched["cos"] == stack.settings.default_cos
    # A domain administrator's "unlimited" account is capped by the default class.
    admin = stack.as_(await stack.token(Role.DOMAIN_ADMIN, d))
    await c.post(f"/v1/domains/{d}/accounts", json={"name": "big", "password": "big-password"}, headers=admin)
    ok = await ask(stack, names.AUTH_CHECK, user=f"big@{d}", password="big-password")
    assert ok["ok"] and ok["quota_bytes"] == stack.settings.default_cos_quota_bytes
    job = await _import(stack, [{"domain": unique_domain("cos-imp")}])
    assert job["domains_created"] == 1


# --- migration-grade import -----------------------------------------------------------------------------

def _ssha(algo: str, salt: bytes) -> str:
    return base64.b64encode(hashlib.new(algo, PW.encode() + salt).digest() + salt).decode()


def foreign_hashes() -> dict[str, str]:
    """One hash per scheme a mail system stores (Dovecot notation), keyed by account name."""
    return {
        "sha512crypt": "{SHA512-CRYPT}" + sha512_crypt.hash(PW, rounds=5000),
        "sha256crypt": "{SHA256-CRYPT}" + sha256_crypt.hash(PW, rounds=5000),
        "blfcrypt": "{BLF-CRYPT}" + bcrypt.hashpw(PW.encode(), bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$"),
        "argon2id": "{ARGON2ID}" + PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1).hash(PW),
        "argon2i": "{ARGON2I}" + PasswordHasher(type=Type.I, time_cost=1, memory_cost=1024, parallelism=1).hash(PW),
        "ssha512": "{SSHA512}" + _ssha("sha512", b"salt"),
        "ssha256": "{SSHA256}" + _ssha("sha256", b"salt"),
        "ssha": "{SSHA}" + _ssha("sha1", b"salt"),
        "crypt": "{CRYPT}" + des_crypt.hash(PW),
        "bare": sha512_crypt.hash(PW, rounds=5000),
    }


async def test_imported_hashes_of_every_scheme_log_in_then_are_argon2id(stack):
    d = unique_domain("migr")
    hashes = foreign_hashes()
    ha1 = hashlib.md5(f"ssha:{d}:a-phone-secret".encode()).hexdigest()
    rows = [{"domain": d, "account": name, "password_hash": h} for name, h in hashes.items()]
    rows[5] |= {"sip_ha1_md5": ha1, "sip_realm": d}  # ssha512 brings its phone's HA1
    job = await _import(stack, rows)
    assert (job["state"], job["accounts_created"], job["failed"]) == ("done", len(hashes), 0), job
    weak = sorted(w.split(":")[0] for w in job["warnings"])
    assert weak == sorted(f"row {i}" for i, name in enumerate(hashes, 1) if name in ("ssha512", "ssha256", "ssha",
                                                                                        "crypt"))

    for name in hashes:
        address = f"{name}@{d}"
        ok = await ask(stack, names.AUTH_CHECK, user=address, password=PW)
        assert ok["ok"], (name, ok)

        async def upgraded(address=address) -> bool:
            state = (await stack.ctx.provisioning.load(names.AGG_ADDRESS, address)).state
            # None while the re-hash lands: a read of the events from just before it opens the
            # old sealed hash after its key was shredded (replaced secrets cannot be opened).
            return (state["password_hash"] or "").startswith("$argon2id$")

        await wait_until(upgraded, timeout=30, what=f"{name}'s hash re-hashed to argon2id")

    async def read_model_has_argon2id() -> bool:
        checks = [await ask(stack, names.AUTH_CHECK, user=f"{n}@{d}", password=PW) for n in ("ssha", "crypt")]
        return all(c["ok"] for c in checks)

    await wait_until(read_model_has_argon2id, timeout=30, what="logins after the re-hash")
    assert not (await ask(stack, names.AUTH_CHECK, user=f"ssha@{d}", password="wrong"))["ok"]
    # The imported HA1 stays (the phone's secret may not be the mailbox password).
    sip = await ask(stack, names.AUTH_SIP_CREDENTIALS, user="ssha512", realm=d, algorithm="MD5")
    assert sip["ok"] and sip["ha1"] == ha1


async def test_account_api_takes_a_foreign_hash_and_sip_credentials(stack):
    c, h = stack.client, stack.as_(stack.sys_token)
    d = unique_domain("api")
    await c.post("/v1/domains", json={"name": d}, headers=h)
    ha1 = hashlib.sha256(f"bob:{d}:phone".encode()).hexdigest()
    r = await c.post(f"/v1/domains/{d}/accounts", headers=h, json={
        "name": "bob", "password_hash": foreign_hashes()["sha512crypt"], "sip_ha1": {"sha256": ha1, "realm": d}})
    assert r.status_code == 201 and r.json()["has_password"], r.text
    assert (await ask(stack, names.AUTH_CHECK, user=f"bob@{d}", password=PW))["ok"]
    sip = await ask(stack, names.AUTH_SIP_CREDENTIALS, user="bob", realm=d, algorithm="SHA-256")
    assert sip["ha1"] == ha1
    bad = await c.post(f"/v1/domains/{d}/accounts", headers=h, json={"name": "eve", "password_hash": "{MD5}abc"})
    assert bad.status_code == 422
    wrong_realm = await c.post(f"/v1/domains/{d}/accounts", headers=h,
                               json={"name": "eve", "sip_ha1": {"md5": "0" * 32, "realm": "elsewhere.example"}})
    assert wrong_realm.status_code == 422


async def test_running_the_same_import_again_is_safe(stack):
    d = unique_domain("again")
    tag = uuid.uuid4().hex[:4]
    rows = [{"domain": d, "account": f"u{i}-{tag}", "real_name": f"User {i}", "quota_bytes": 1000,
             "password_hash": foreign_hashes()["ssha"], "sip_ha1_md5": "ab" * 16} for i in range(5)]
    rows.append({"domain": d})
    first = await _import(stack, rows)
    assert (first["accounts_created"], first["failed"], first["unchanged"]) == (5, 0, 0), first

    second = await _import(stack, rows)
    assert (second["accounts_created"], second["domains_created"], second["failed"], second["unchanged"],
            second["updated"]) == (0, 0, 0, 6, 0), second  # the domain-only row too

    rows[0] = rows[0] | {"real_name": "Renamed"}
    rows[1] = rows[1] | {"password_hash": foreign_hashes()["sha512crypt"]}
    third = await _import(stack, rows)
    assert (third["failed"], third["unchanged"], third["updated"]) == (2, 4, 0), third
    assert any("real_name" in e and "update" in e for e in third["errors"]), third["errors"]

    fourth = await _import(stack, rows, update=True)
    assert (fourth["failed"], fourth["unchanged"], fourth["updated"]) == (0, 4, 2), fourth
    acct = (await stack.client.get(f"/v1/domains/{d}/accounts/u0-{tag}", headers=stack.as_(stack.sys_token))).json()
    assert acct["real_name"] == "Renamed"
    assert (await ask(stack, names.AUTH_CHECK, user=f"u1-{tag}@{d}", password=PW))["ok"]


async def test_an_account_deleted_and_imported_again_logs_in_with_its_imported_credentials(stack):
    """The import builds an account's event with its credentials already sealed; a name deleted
    before (its subject has history) is then created through the command path with that same
    event, whose data key must therefore survive the lost "new subject" append."""
    d = unique_domain("reimp")
    ha1 = hashlib.md5(f"carol:{d}:phone".encode()).hexdigest()
    rows = [{"domain": d, "account": "carol", "password_hash": foreign_hashes()["sha512crypt"], "sip_ha1_md5": ha1}]
    assert (await _import(stack, rows))["accounts_created"] == 1
    r = await stack.client.delete(f"/v1/domains/{d}/accounts/carol", headers=stack.as_(stack.sys_token))
    assert r.status_code in (200, 204), r.text
    again = await _import(stack, rows)
    assert (again["accounts_created"], again["failed"]) == (1, 0), again
    assert (await ask(stack, names.AUTH_CHECK, user=f"carol@{d}", password=PW))["ok"]
    sip = await ask(stack, names.AUTH_SIP_CREDENTIALS, user="carol", realm=d, algorithm="MD5")
    assert sip["ok"] and sip["ha1"] == ha1


async def test_a_dns_failure_is_neither_proof_nor_a_traceback(stack):
    # Nothing answers on this address: the lookup times out.
    stack.ctx.settings = stack.ctx.settings.model_copy(update={"dns_servers": "127.0.0.1:1", "dns_timeout": 0.5})
    c, h = stack.client, stack.as_(stack.sys_token)
    d = unique_domain("dnsfail")
    await c.post("/v1/domains", json={"name": d}, headers=h)
    admin = stack.as_(await stack.token(Role.DOMAIN_ADMIN, d))
    r = await c.post(f"/v1/domains/{d}/domain-aliases", json={"name": unique_domain("x")}, headers=admin)
    assert r.status_code == 403 and "try again" in r.json()["detail"]
