"""colony.eventstore against a real JetStream: versions, conflicts, and the Msg-Id retry case."""

from __future__ import annotations

import uuid

import pytest
from admin_stack import PublicOnly, connect

from colony.bus import names
from colony.eventstore import MSG_ID, ConcurrencyConflict, EventStore


@pytest.fixture
async def store(nats_url):
    nc = await connect(nats_url)
    yield EventStore(nc.jetstream(), names.STREAM_PROVISIONING, nc=nc)
    await nc.close()


def subject() -> str:
    return names.provisioning_subject("test", uuid.uuid4().hex)


async def test_append_read_and_conflict(store):
    s = subject()
    assert await store.version(s) == 0
    v1 = await store.append(s, [b"one", b"two"], 0)
    assert [e.data for e in await store.read(s)] == [b"one", b"two"]
    assert await store.version(s) == v1
    with pytest.raises(ConcurrencyConflict) as info:
        await store.append(s, [b"stale"], 0)
    assert info.value.actual == v1
    assert [e.data for e in await store.read(s)] == [b"one", b"two"]


async def test_retry_of_a_landed_append_is_recognised_as_ours(store, monkeypatch):
    """NATS-NOTES: a retry carrying Msg-Id and the expected sequence answers 10071, not duplicate."""
    s = subject()
    real_publish = store._js.publish
    calls = []

    async def publish_then_lose_the_ack(subj, payload, **kw):
        calls.append(kw["headers"][MSG_ID])
        ack = await real_publish(subj, payload, **kw)
        if len(calls) == 1:
            import nats.errors
            raise nats.errors.TimeoutError  # the append landed, its ack was "lost"
        return ack

    monkeypatch.setattr(store._js, "publish", publish_then_lose_the_ack)
    version = await store.append(s, [b"once"], 0)
    assert len(calls) == 2 and calls[0] == calls[1]
    events = await store.read(s)
    assert [e.data for e in events] == [b"once"] and events[0].seq == version


async def test_create_many_creates_new_aggregates_and_reports_existing_ones(store):
    existing = subject()
    await store.append(existing, [b"first"], 0)
    fresh = [subject() for _ in range(50)]
    items = [(s, f"event {i}".encode()) for i, s in enumerate(fresh)] + [(existing, b"again")]
    results = await store.create_many(items)
    assert all(isinstance(r, int) for r in results[:50]) and len(set(results[:50])) == 50
    assert isinstance(results[50], ConcurrencyConflict)
    assert [e.data for e in await store.read(fresh[7])] == [b"event 7"]
    assert [e.data for e in await store.read(existing)] == [b"first"]


async def test_create_many_settles_a_lost_ack_by_content(store):
    """The careful path: the first attempt landed but its ack never came."""
    s = subject()
    await store.append(s, [b"landed"], 0)  # as if create_many's own publish had landed
    assert await store._careful(s, b"landed") == (await store.read(s))[0].seq
    assert isinstance(await store._careful(s, b"someone else"), ConcurrencyConflict)


async def test_create_many_and_its_recovery_work_on_a_stream_without_direct_gets(nats_url):
    """A stream created without allow_direct (by an operator, an older deployment): the
    conflict and lost-ack recovery read from the leader, which any stream answers."""
    from nats.js.api import StreamConfig

    nc = await connect(nats_url)
    name = f"NODIRECT_{uuid.uuid4().hex[:8]}"
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.>"], allow_direct=False))
    try:
        store = EventStore(js, name, nc=nc, timeout=2.0)
        existing, landed, fresh = (f"{name}.{n}" for n in ("existing", "landed", "fresh"))
        await store.append(existing, [b"first"], 0)
        await store.append(landed, [b"ours"], 0)   # as if create_many's own publish had landed
        results = await store.create_many([(fresh, b"new"), (existing, b"again"), (landed, b"ours")])
        assert isinstance(results[0], int)
        assert isinstance(results[1], ConcurrencyConflict) and results[1].actual == (await store.read(existing))[0].seq
        assert results[2] == (await store.read(landed))[0].seq
        assert [e.data for e in await store.read(fresh)] == [b"new"] and await store.version(fresh) == results[0]
    finally:
        await js.delete_stream(name)
        await nc.close()


async def test_create_many_uses_the_connection_it_was_given_not_a_nats_py_private(nats_url):
    nc = await connect(nats_url)
    try:
        store = EventStore(PublicOnly(nc.jetstream()), names.STREAM_PROVISIONING, nc=nc)
        fresh = [subject() for _ in range(3)]
        results = await store.create_many([(s, b"made") for s in fresh])
        assert all(isinstance(r, int) for r in results)
        assert [e.data for e in await store.read(fresh[1])] == [b"made"]
    finally:
        await nc.close()
