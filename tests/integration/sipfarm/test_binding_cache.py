"""A member's remembered binding sets on the real bus: what another member writes reaches
them through the watch, a stale one never loses a change, and nothing is trusted without a
running watch."""

from __future__ import annotations

import asyncio

from cluster_harness import wait_until
from colony.bus import names

from colony_sipfarm.bindings import Binding, BindingStore


def _contact(uri: str, expires_at: float = 2_000_000_000.0) -> Binding:
    return Binding(contact=uri, expires_at=expires_at, call_id=uri, cseq=1)


class _CountingKV:
    """The bucket, counting the reads that reach the bus."""

    def __init__(self, kv) -> None:
        self.kv, self.gets = kv, 0

    async def get(self, key):
        self.gets += 1
        return await self.kv.get(key)

    def __getattr__(self, name):
        return getattr(self.kv, name)


async def _watching(store: BindingStore) -> asyncio.Task:
    task = asyncio.create_task(store.watch())

    async def started() -> bool:
        return store._watching
    await wait_until(started, timeout=10, what="the bindings watch to start")
    return task


async def test_remembered_bindings_follow_other_members_writes(cluster):
    js = (await cluster.client()).jetstream()
    kv = await js.key_value(names.BUCKET_SIP_BINDINGS)
    counted = _CountingKV(kv)
    mine = BindingStore(counted, clock=lambda: 1_000.0, js=js, trust_seconds=30)
    other = BindingStore(kv, clock=lambda: 1_000.0)           # another member, remembering nothing
    task = await _watching(mine)
    try:
        account = "cache-alice@acme.example"
        await mine.change(account, lambda live: [*live, _contact("sip:desk@192.0.2.7")])
        reads = counted.gets
        assert [b.contact for b in await mine.lookup(account)] == ["sip:desk@192.0.2.7"]
        assert counted.gets == reads          # answered from what it wrote

        await other.change(account, lambda live: [*live, _contact("sip:mobile@192.0.2.8")])

        async def seen() -> bool:
            return len(await mine.lookup(account)) == 2
        await wait_until(seen, timeout=10, what="the other member's write to reach the watch")
        assert counted.gets == reads

        # An un-REGISTER elsewhere empties the set; this member sees that too.
        await other.change(account, lambda live: [])

        async def emptied() -> bool:
            return await mine.lookup(account) == []
        await wait_until(emptied, timeout=10, what="the removal to reach the watch")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_stale_remembered_set_costs_a_retry_never_a_lost_change(cluster):
    js = (await cluster.client()).jetstream()
    kv = await js.key_value(names.BUCKET_SIP_BINDINGS)
    mine = BindingStore(kv, clock=lambda: 1_000.0, js=js, trust_seconds=30)
    other = BindingStore(kv, clock=lambda: 1_000.0)
    task = await _watching(mine)
    try:
        account = "cache-bob@acme.example"
        await mine.change(account, lambda live: [*live, _contact("sip:desk@192.0.2.7")])
        key = names.sip_binding_key(account)
        remembered = mine._cache[key]
        await other.change(account, lambda live: [*live, _contact("sip:mobile@192.0.2.8")])
        # As if the watch had not delivered yet (nothing yields before change() reads it).
        mine._cache[key] = remembered
        stored = await mine.change(account, lambda live: [*live, _contact("sip:soft@192.0.2.9")])
        assert sorted(b.contact for b in stored) == ["sip:desk@192.0.2.7", "sip:mobile@192.0.2.8", "sip:soft@192.0.2.9"]
        entry = await kv.get(key)
        assert b"mobile" in entry.value and b"soft" in entry.value
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_nothing_is_remembered_without_a_watch(cluster):
    js = (await cluster.client()).jetstream()
    kv = await js.key_value(names.BUCKET_SIP_BINDINGS)
    counted = _CountingKV(kv)
    store = BindingStore(counted, clock=lambda: 1_000.0, js=js, trust_seconds=30)
    account = "cache-carol@acme.example"
    await store.change(account, lambda live: [*live, _contact("sip:desk@192.0.2.7")])
    before = counted.gets
    await store.lookup(account)
    await store.lookup(account)
    assert counted.gets == before + 2

    task = await _watching(store)
    await store.lookup(account)
    await store.lookup(account)
    assert counted.gets == before + 3
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert not store._cache                                # a stopped watch forgets everything
    await store.lookup(account)
    assert counted.gets == before + 4


async def test_remembered_sets_are_read_again_after_the_trust_period(cluster):
    js = (await cluster.client()).jetstream()
    kv = await js.key_value(names.BUCKET_SIP_BINDINGS)
    counted = _CountingKV(kv)
    now = [100.0]
    store = BindingStore(counted, clock=lambda: 1_000.0, js=js, trust_seconds=5, monotonic=lambda: now[0])
    task = await _watching(store)
    try:
        account = "cache-dave@acme.example"
        await store.change(account, lambda live: [*live, _contact("sip:desk@192.0.2.7")])
        before = counted.gets
        await store.lookup(account)
        assert counted.gets == before
        now[0] += 6
        await store.lookup(account)
        assert counted.gets == before + 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
