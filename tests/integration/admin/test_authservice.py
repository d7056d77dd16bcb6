"""The cluster's auth service over NATS request/reply: PLAIN checks and SIP digest HA1."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import time

import pytest

from admin_stack import connect, unique_domain, wait_until

from colony.bus import names


async def ask(stack, subject: str, **request) -> dict:
    msg = await stack.nc.request(subject, json.dumps(request).encode(), timeout=5)
    return json.loads(msg.data)


async def _provision(stack):
    c, h = stack.client, stack.as_(stack.sys_token)
    d = unique_domain("auth")
    cos = f"voice-{d[:10]}"
    await c.post("/v1/cos", json={"name": cos, "limits": {"services": ["mail", "imap", "sip"], "quota_bytes": 5000,
                                                            "max_message_bytes": 100}}, headers=h)
    await c.post("/v1/domains", json={"name": d, "cos": cos}, headers=h)
    await c.post(f"/v1/domains/{d}/accounts", json={"name": "alice", "password": "wonderland", "quota_bytes": 9999},
                 headers=h)
    await c.post(f"/v1/domains/{d}/accounts", json={"name": "mute", "password": "wonderland", "services": ["mail"]},
                 headers=h)
    return d


async def test_plain_check_returns_what_the_account_may_use(stack):
    d = await _provision(stack)
    ok = await ask(stack, names.AUTH_CHECK, user=f"Alice@{d.upper()}", password="wonderland", service="imap")
    assert ok["ok"] and ok["account"] == f"alice@{d}"
    assert ok["services"] == ["mail", "imap", "sip"] and ok["quota_bytes"] == 5000  # capped by the CoS
    assert ok["max_message_bytes"] == 100
    bad = await ask(stack, names.AUTH_CHECK, user=f"alice@{d}", password="nope")
    unknown = await ask(stack, names.AUTH_CHECK, user=f"nobody@{d}", password="nope")
    assert bad == unknown == {"ok": False, "reason": "invalid credentials"}
    pop = await ask(stack, names.AUTH_CHECK, user=f"alice@{d}", password="wonderland", service="pop")
    assert pop == {"ok": False, "reason": "service not enabled"}

    await stack.client.post(f"/v1/domains/{d}/suspend", headers=stack.as_(stack.sys_token))
    suspended = await ask(stack, names.AUTH_CHECK, user=f"alice@{d}", password="wonderland")
    assert suspended["ok"] is False


async def test_password_guessing_is_throttled(stack):
    d = await _provision(stack)
    stack.ctx.auth_service.throttle.max_failures = 3
    answers = [await ask(stack, names.AUTH_CHECK, user=f"alice@{d}", password=f"guess{i}", remote_addr="203.0.113.9")
               for i in range(4)]
    assert [a["reason"] for a in answers] == ["invalid credentials"] * 3 + ["throttled"]
    # even the right password waits out the lockout
    right = await ask(stack, names.AUTH_CHECK, user=f"alice@{d}", password="wonderland")
    assert right["reason"] == "throttled" and right["retry_after"] > 0


async def test_a_client_familiar_to_the_account_is_not_held_by_its_lock(stack):
    """Strangers' failures lock the account for strangers only: a client the edge says logged
    in to it before (``familiar``) is held by its own address's lock alone."""
    d = await _provision(stack)
    stack.ctx.auth_service.throttle.max_failures = 3
    for i in range(3):
        await ask(stack, names.AUTH_CHECK, user=f"alice@{d}", password=f"guess{i}", remote_addr=f"203.0.113.{20 + i}")
    stranger = await ask(stack, names.AUTH_CHECK, user=f"alice@{d}", password="wonderland", remote_addr="198.51.100.5")
    assert stranger["reason"] == "throttled"
    owner = await ask(stack, names.AUTH_CHECK, user=f"alice@{d}", password="wonderland", remote_addr="198.51.100.6",
                      familiar=True)
    assert owner["ok"] and owner["account"] == f"alice@{d}"
    # ... but not past a lock of its own address
    for i in range(3):
        await ask(stack, names.AUTH_CHECK, user=f"other{i}@{d}", password="x", remote_addr="198.51.100.7")
    locked = await ask(stack, names.AUTH_CHECK, user=f"alice@{d}", password="wonderland", remote_addr="198.51.100.7",
                       familiar=True)
    assert locked["reason"] == "throttled"


async def test_an_unknown_account_costs_the_same_hash_as_a_wrong_password(stack, monkeypatch):
    """Same answer and same work: a name that does not exist is verified against a decoy hash
    made as an account's is, so the time does not tell real accounts apart.  Counted, not timed."""
    d = await _provision(stack)
    svc = stack.ctx.auth_service
    real_check, checked = svc.provisioning.check_password, []

    async def counted_check(stored, password):
        checked.append(stored)
        return await real_check(stored, password)
    monkeypatch.setattr(svc.provisioning, "check_password", counted_check)

    wrong = await ask(stack, names.AUTH_CHECK, user=f"alice@{d}", password="nope")
    unknown = await ask(stack, names.AUTH_CHECK, user=f"nobody@{d}", password="nope")
    elsewhere = await ask(stack, names.AUTH_CHECK, user="nobody@no-such-domain.example", password="nope")
    assert wrong == unknown == elsewhere == {"ok": False, "reason": "invalid credentials"}
    assert len(checked) == 3 and all(stored and stored.startswith("$argon2id$") for stored in checked)
    assert checked[1] == checked[2] != checked[0]     # one decoy, not alice's hash
    # ... and the decoy never lets anyone in, whatever the password.
    assert (await ask(stack, names.AUTH_CHECK, user=f"nobody@{d}", password=""))["ok"] is False


async def test_checks_of_unknown_names_at_once_share_one_decoy_made_on_the_argon2_pool(stack, monkeypatch):
    """The first checks needing the decoy each made one, on the default executor (where every
    check's database lookup runs): a spray of unknown names after a start queued a hash per
    check there, none of them shed.  Eight first callers at once: one hash, on the pool."""
    import threading

    svc = stack.ctx.auth_service
    made: list[str] = []

    class CountedHasher:  # argon2's PasswordHasher has slots: wrapped, not patched
        def __init__(self, real):
            self.real = real

        def hash(self, password):
            made.append(threading.current_thread().name)
            return self.real.hash(password)

        def __getattr__(self, name):
            return getattr(self.real, name)
    monkeypatch.setattr(svc.provisioning, "hasher", CountedHasher(svc.provisioning.hasher))
    monkeypatch.setattr(svc, "_decoy_hash", None)   # as just after a start

    decoys = await asyncio.gather(*(svc._decoy() for _ in range(8)))
    assert len(made) == 1 and made[0].startswith("argon2"), made
    assert len(set(decoys)) == 1 and decoys[0].startswith("$argon2id$")
    checks = await asyncio.gather(*(ask(stack, names.AUTH_CHECK, user=f"nobody{i}@nowhere.example", password="x")
                                    for i in range(4)))
    assert checks == [{"ok": False, "reason": "invalid credentials"}] * 4 and len(made) == 1


async def test_failed_checks_from_one_ipv6_64_count_together(stack, monkeypatch):
    """Each address of a /64 had its own budget: one guess per name per address, for ever.
    Counted per /64 as every per-source limit is; the next /64 is someone else."""
    monkeypatch.setattr(stack.ctx.auth_service.throttle, "max_failures", 3)
    d = unique_domain("v6")
    answers = [await ask(stack, names.AUTH_CHECK, user=f"guess{i}@{d}", password="x", remote_addr=f"2001:db8:5:6::{i + 1}")
               for i in range(4)]
    assert [a["reason"] for a in answers] == ["invalid credentials"] * 3 + ["throttled"], answers
    other = await ask(stack, names.AUTH_CHECK, user=f"guess9@{d}", password="x", remote_addr="2001:db8:5:7::1")
    assert other == {"ok": False, "reason": "invalid credentials"}


async def test_sip_farm_gets_ha1_never_the_password(stack):
    d = await _provision(stack)
    for algorithm, h in (("MD5", hashlib.md5), ("SHA-256", hashlib.sha256)):
        reply = await ask(stack, names.AUTH_SIP_CREDENTIALS, user="alice", realm=d, algorithm=algorithm)
        assert reply == {"ok": True, "username": "alice", "realm": d, "algorithm": algorithm,
                         "ha1": h(f"alice:{d}:wonderland".encode()).hexdigest()}
    assert "wonderland" not in json.dumps(reply)
    no_sip = await ask(stack, names.AUTH_SIP_CREDENTIALS, user=f"mute@{d}", algorithm="MD5")
    assert no_sip == {"ok": False, "reason": "service not enabled"}
    # the password change reaches the farm as a new HA1
    await stack.client.patch(f"/v1/domains/{d}/accounts/alice", json={"password": "looking-glass"},
                             headers=stack.as_(stack.sys_token))
    reply = await ask(stack, names.AUTH_SIP_CREDENTIALS, user=f"alice@{d}", algorithm="MD5")
    assert reply["ha1"] == hashlib.md5(f"alice:{d}:looking-glass".encode()).hexdigest()


async def test_a_domain_without_a_class_of_service_gets_the_default_everywhere(make_stack, nats_url, monkeypatch):
    """A domain from before every domain got a class (cos=None in its event) is not unlimited:
    the admin API creates the default class at start-up, the auth check and the mail store's
    quota read apply it."""
    from colony import events as ev
    from colony.eventstore import EventStore
    from colony_mailstore.directory import Directory

    default = "dflt-" + unique_domain("c")[2:12]
    monkeypatch.setenv("COLONY_DEFAULT_COS", default)
    monkeypatch.setenv("COLONY_DEFAULT_COS_QUOTA_BYTES", "4242")
    d = unique_domain("classless")
    nc = await connect(nats_url)
    try:
        store = EventStore(nc.jetstream(), names.STREAM_PROVISIONING)
        await store.append(names.provisioning_subject(names.AGG_DOMAIN, d),
                           [ev.DomainCreated(domain=d, cos=None).encode()], 0)
    finally:
        await nc.close()

    stack = await make_stack()   # catches up, sees a domain without a class, creates the default
    c, h = stack.client, stack.as_(stack.sys_token)
    cos = await c.get(f"/v1/cos/{default}", headers=h)
    assert cos.status_code == 200 and cos.json()["limits"]["quota_bytes"] == 4242
    assert (await c.get(f"/v1/domains/{d}", headers=h)).json()["cos"] is None   # the domain itself is unchanged
    r = await c.post(f"/v1/domains/{d}/accounts", json={"name": "old", "password": "old-password"}, headers=h)
    assert r.status_code == 201, r.text

    ok = await ask(stack, names.AUTH_CHECK, user=f"old@{d}", password="old-password", service="imap")
    assert ok["ok"] and ok["quota_bytes"] == 4242

    ticks = itertools.count(step=60)   # a clock that moves a minute per read: no cached answers
    directory = Directory(await stack.nc.jetstream().key_value(names.BUCKET_DIRECTORY),
                          clock=lambda: next(ticks), default_cos=default)

    async def mailstore_quota() -> bool:
        return await directory.quota(f"old@{d}") == 4242

    await wait_until(mailstore_quota, 30, "the mail store to read the default class's quota")


async def test_a_flood_of_checks_is_shed_and_a_fresh_check_is_answered_after_it(stack, monkeypatch):
    """A password spray or a crowd of retrying clients: the service hashes one check at a
    time here (one slot, a hasher the test holds), keeps two waiting, answers the rest
    "temporarily unavailable" at once, and drops unhashed the waiting checks whose requesters
    gave up -- so a check after the flood waits for no backlog.  Counted, not timed."""
    from nats.errors import TimeoutError as NatsTimeoutError
    from prometheus_client import CollectorRegistry

    from colony.contracts.auth import TIMEOUT_HEADER, AuthClient, AuthUnavailable
    from colony.metrics import BusRequestMetrics

    d = await _provision(stack)
    svc = stack.ctx.auth_service
    registry = CollectorRegistry()
    monkeypatch.setattr(svc, "metrics", BusRequestMetrics(registry))
    monkeypatch.setattr(svc, "max_queued_checks", 2)
    monkeypatch.setattr(svc, "_hash_slots", asyncio.Semaphore(1))
    real_check = svc.provisioning.check_password
    gate, hashed = asyncio.Event(), []

    async def held_hash(stored, password):   # the slow hasher: as slow as the test says
        hashed.append(password)
        await gate.wait()
        return await real_check(stored, password)
    monkeypatch.setattr(svc.provisioning, "check_password", held_hash)

    def send(password: str, timeout: float):
        body = json.dumps({"user": f"alice@{d}", "password": password}).encode()
        return asyncio.create_task(stack.nc.request(names.AUTH_CHECK, body, timeout=timeout,
                                                    headers={TIMEOUT_HEADER: f"{timeout:g}"}))

    async def counted(outcome: str) -> float:
        return registry.get_sample_value("colony_bus_requests_total",
                                         {"subject": names.AUTH_CHECK, "outcome": outcome}) or 0.0

    first = send("wonderland", 60)                          # takes the one slot
    await wait_until(lambda: _true(len(hashed) == 1), what="the first check hashing")
    impatient = [send(f"guess{i}", 0.5) for i in range(2)]  # wait in the queue, give up there
    await wait_until(lambda: _true(svc.queued_checks == 2), what="two checks queued")
    given_up = time.monotonic() + 0.5   # received before now: their waits are over by then

    # (a) the excess is shed at once, with the typed answer, while the hasher is still held
    for i in range(5):
        msg = await send(f"spray{i}", 60)
        assert json.loads(msg.data) == {"ok": False, "reason": "temporarily unavailable"}
    with pytest.raises(AuthUnavailable):                    # what the edges see: a temporary failure
        await AuthClient(stack.nc, timeout=60).check(f"alice@{d}", "wonderland")
    assert await counted("shed") == 6

    for task in impatient:
        with pytest.raises(NatsTimeoutError):
            await task
    await wait_until(lambda: _true(time.monotonic() > given_up), what="the queued checks' deadlines")
    gate.set()
    # (c) the check it took gets the right answer
    assert json.loads((await first).data)["ok"] is True
    await wait_until(lambda: _true(svc.queued_checks == 0), what="the queue drained")
    await wait_until(counted_is(counted, "expired", 2), what="two expired checks dropped")
    # (b) a fresh check is hashed next: the two abandoned ones were never hashed
    fresh = await send("wonderland", 60)
    assert json.loads(fresh.data)["ok"] is True
    assert hashed == ["wonderland", "wonderland"]
    # shed and dropped checks are no failed attempts: nothing was throttled
    assert not svc.throttle.retry_after(f"acct:alice@{d}", time.monotonic())


async def _true(value: bool) -> bool:
    return value


def counted_is(counted, outcome: str, n: float):
    async def check() -> bool:
        return await counted(outcome) == n
    return check
