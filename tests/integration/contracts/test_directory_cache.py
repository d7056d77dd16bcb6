"""DirectoryCache on a real bus: cold start from a filled bucket, and it follows creations,
changes, suspensions and deletions within a second (writes straight to the bucket, as the
admin API's projection does), and end to end from the admin API."""

from __future__ import annotations

import asyncio
import time
import uuid

import orjson
from cluster_harness import wait_until

from colony.bus import names
from colony.contracts.cache import DirectoryCache
from colony.contracts.recipients import Refusal

FOLLOW_WITHIN = 1.0  # seconds: the promise for a write to reach every edge's cache


async def bus(connect_bus, nats_url: str):
    nc = await connect_bus(nats_url)
    return nc, nc.jetstream(), await nc.jetstream().key_value(names.BUCKET_DIRECTORY)


def domain_value(name: str, state: str = "active") -> bytes:
    return orjson.dumps({"kind": "domain", "name": name, "state": state, "home_region": "eu", "cos": None, "seq": 1})


def account_value(address: str, state: str = "active", forwarding=()) -> bytes:
    local, _, domain = address.partition("@")
    return orjson.dumps({"kind": "account", "address": address, "domain": domain, "name": local, "state": state,
                         "forwarding": list(forwarding), "seq": 1})


async def followed(cache: DirectoryCache, check, what: str) -> float:
    """Seconds until ``check()`` holds (fails beyond FOLLOW_WITHIN, with a generous wait to say how late)."""
    t = time.monotonic()
    while not check():
        if time.monotonic() - t > 10 * FOLLOW_WITHIN:
            raise AssertionError(f"the cache never showed {what}")
        await asyncio.sleep(0.005)
    took = time.monotonic() - t
    assert took <= FOLLOW_WITHIN, f"the cache showed {what} after {took:.2f}s"
    return took


async def test_cold_start_then_follows_every_kind_of_change(connect_bus, nats_url):
    nc, js, kv = await bus(connect_bus, nats_url)
    d = f"cache-{uuid.uuid4().hex[:8]}.example"
    await kv.put(names.directory_key("domain", d), domain_value(d))
    for i in range(300):
        await kv.put(names.directory_key("address", f"u{i}@{d}"), account_value(f"u{i}@{d}"))
    cache = DirectoryCache(nc)
    try:
        await cache.start()
        await cache.wait_loaded(timeout=30)
        # loaded means complete: every entry written before start() is there
        assert all(cache.address(f"u{i}@{d}") is not None for i in range(300))
        assert cache.resolve(f"u7@{d}").mailboxes[0].home_region == "eu"

        new = f"new@{d}"
        await kv.put(names.directory_key("address", new), account_value(new))
        await followed(cache, lambda: cache.resolve(new).ok, "a creation")

        await kv.put(names.directory_key("address", new), account_value(new, forwarding=[f"u1@{d}"]))
        await followed(cache, lambda: [m.address for m in cache.resolve(new).mailboxes] == [f"u1@{d}"], "a change")

        await kv.put(names.directory_key("address", new), account_value(new, state="disabled"))
        await followed(cache, lambda: cache.resolve(new).reason is Refusal.ACCOUNT_DISABLED, "a disabled account")

        await kv.put(names.directory_key("domain", d), domain_value(d, state="suspended"))
        await followed(cache, lambda: cache.resolve(f"u1@{d}").reason is Refusal.DOMAIN_SUSPENDED, "a suspension")

        await kv.put(names.directory_key("address", f"u2@{d}"), b'{"deleted":true,"seq":9}')
        await followed(cache, lambda: cache.address(f"u2@{d}") is None, "a tombstone")

        await kv.delete(names.directory_key("address", f"u3@{d}"))
        await followed(cache, lambda: cache.address(f"u3@{d}") is None, "a KV delete")
        await kv.purge(names.directory_key("address", f"u4@{d}"))
        await followed(cache, lambda: cache.address(f"u4@{d}") is None, "a KV purge")
    finally:
        await cache.stop()
        await nc.close()


async def test_a_second_cache_starts_with_the_newest_state_only(connect_bus, nats_url):
    nc, js, kv = await bus(connect_bus, nats_url)
    d = f"newest-{uuid.uuid4().hex[:8]}.example"
    await kv.put(names.directory_key("domain", d), domain_value(d))
    a = f"amy@{d}"
    for state in ("active", "disabled", "active", "disabled"):
        await kv.put(names.directory_key("address", a), account_value(a, state=state))
    await kv.delete(names.directory_key("address", f"gone@{d}"))
    cache = DirectoryCache(nc)
    try:
        await cache.start()
        await cache.wait_loaded(timeout=30)
        assert cache.address(a).state == "disabled" and cache.address(f"gone@{d}") is None
    finally:
        await cache.stop()
        await nc.close()


async def test_the_cache_follows_the_admin_api(stack):
    cache = DirectoryCache(stack.nc)
    await cache.start()
    try:
        await cache.wait_loaded(timeout=30)
        c, h = stack.client, stack.as_(stack.sys_token)
        d = f"api-{uuid.uuid4().hex[:8]}.example"
        assert (await c.post("/v1/domains", json={"name": d}, headers=h)).status_code == 201
        await c.post(f"/v1/domains/{d}/domain-aliases", json={"name": f"alt-{d}"}, headers=h)
        await c.post(f"/v1/domains/{d}/accounts", json={"name": "kim"}, headers=h)
        await c.post(f"/v1/domains/{d}/aliases", json={"name": "all", "targets": [f"kim@alt-{d}"]}, headers=h)

        async def resolved():
            r = cache.resolve(f"all@alt-{d}")
            return r.ok and [m.address for m in r.mailboxes] == [f"kim@{d}"]

        await wait_until(resolved, 20, "the alias through the domain alias to reach the cache")
        await c.delete(f"/v1/domains/{d}/accounts/kim", headers=h)

        async def deleted():
            return cache.resolve(f"kim@{d}").reason is Refusal.UNKNOWN_USER

        await wait_until(deleted, 20, "the deletion to reach the cache")
    finally:
        await cache.stop()


async def test_a_lost_delivery_or_a_lost_consumer_is_recovered(connect_bus, nats_url):
    nc, js, kv = await bus(connect_bus, nats_url)
    d = f"gap-{uuid.uuid4().hex[:8]}.example"
    await kv.put(names.directory_key("domain", d), domain_value(d))
    cache = DirectoryCache(nc, heartbeat=0.5)
    try:
        await cache.start()
        await cache.wait_loaded(timeout=30)

        # a delivery that does not follow the last one (as if one was dropped): start again
        # after the last one applied, so the write that looked out of order is not lost
        cache._position.consumer_seq -= 1
        await kv.put(names.directory_key("address", f"a@{d}"), account_value(f"a@{d}"))
        await wait_until(lambda: _async(cache.address(f"a@{d}") is not None), 10, "the write after a gap")
        assert cache.resets == 1

        # the consumer vanishes (a server restart loses in-memory consumers): heartbeats stop
        await js.delete_consumer(f"KV_{names.BUCKET_DIRECTORY}", cache._consumer)
        await kv.put(names.directory_key("address", f"b@{d}"), account_value(f"b@{d}"))
        await wait_until(lambda: _async(cache.address(f"b@{d}") is not None), 15,
                         "the write made while the consumer was gone")
        assert cache.resets == 2 and cache.address(f"a@{d}") is not None
    finally:
        await cache.stop()
        await nc.close()


async def _async(value):
    return value
