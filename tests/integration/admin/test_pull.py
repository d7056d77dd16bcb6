"""The projections' pull loop against a real server: batches in order, the long poll, status
replies, a consumer deleted underneath, the prefetch, and pausing without losing what was
asked for."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from admin_stack import connect
from nats.js.api import AckPolicy, ConsumerConfig

from colony.bus import names
from colony.events import UsageRecorded
from colony_admin.projections.pull import ConsumerGone, PullBatches, stream_seq


async def _setup(nats_url: str, events: int):
    nc = await connect(nats_url)
    js = nc.jetstream()
    domain = f"pull-{uuid.uuid4().hex[:10]}.example"
    subject = names.usage_subject(domain)
    acks = [await js.publish(subject, UsageRecorded(domain=domain, metric="messages_in", amount=i).encode())
            for i in range(events)]
    info = await js.add_consumer(names.STREAM_USAGE, config=ConsumerConfig(
        filter_subject=subject, ack_policy=AckPolicy.NONE, inactive_threshold=30.0, max_waiting=1))
    return nc, js, info.name, [a.seq for a in acks], subject


async def test_batches_come_in_stream_order_and_an_empty_stream_long_polls(nats_url):
    nc, js, consumer, seqs, subject = await _setup(nats_url, 5)
    pull = PullBatches(nc, js, names.STREAM_USAGE, consumer, batch=3, expires=0.3)
    await pull.open()
    try:
        first, second = await pull.next(), await pull.next()
        assert [stream_seq(m) for m in first + second] == seqs
        assert len(first) == 3, "a no_wait request returns as soon as its batch is full"
        assert await pull.next() == [], "nothing new: one long poll, expired with a 408"
        assert pull.statuses["408"] >= 1 and pull.statuses["404"] >= 1

        # A message published during the long poll is returned without waiting for its end.
        async def publish_later() -> int:
            await asyncio.sleep(0.05)
            return (await js.publish(subject, UsageRecorded(domain="x.example", metric="m", amount=1).encode())).seq

        later = asyncio.create_task(publish_later())
        got = []
        for _ in range(20):  # a loaded machine may need several polls; each is bounded
            got += await pull.next()
            if got:
                break
        assert [stream_seq(m) for m in got] == [await later]
    finally:
        await pull.close()
        await nc.close()


async def test_a_deleted_consumer_raises_so_the_caller_recreates_it(nats_url):
    nc, js, consumer, _, _ = await _setup(nats_url, 0)
    pull = PullBatches(nc, js, names.STREAM_USAGE, consumer, batch=10, expires=0.3)
    await pull.open()
    try:
        await js.delete_consumer(names.STREAM_USAGE, consumer)
        with pytest.raises(ConsumerGone):
            for _ in range(10):
                await pull.next()
    finally:
        await pull.close()
        await nc.close()


async def test_pausing_sends_no_request_but_takes_what_was_asked_for(nats_url):
    nc, js, consumer, seqs, _ = await _setup(nats_url, 4)
    pull = PullBatches(nc, js, names.STREAM_USAGE, consumer, batch=2, expires=0.3)
    await pull.open()
    try:
        assert [stream_seq(m) for m in await pull.next()] == seqs[:2]
        assert pull.busy, "the batch came full: the next request is already out"
        assert [stream_seq(m) for m in await pull.next(ask=False)] == seqs[2:], "paused: takes what it asked for"
        assert not pull.busy
        assert await pull.next(ask=False) == [], "paused: no new request"
        assert await pull.next() == [], "resumed: nothing is left (and nothing was lost)"
    finally:
        await pull.close()
        await nc.close()
