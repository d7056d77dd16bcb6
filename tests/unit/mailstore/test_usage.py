"""The mail store's usage metering: one flush is one pipelined batch (one event per account
and metric), and what the bus did not confirm is sent again as it was -- same payload, same
Nats-Msg-Id, so USAGE's duplicate window counts an event that had landed after all once."""

from __future__ import annotations

import orjson

from colony.bus import names
from colony_mailstore.usage import UsageMeter

A, B = "ann@example.com", "bob@example.org"


class FakeBus:
    """publish_many as publish_pipelined answers it: an ack, an error or None per message."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, bytes, dict]]] = []
        self.answer = lambda i, msg: {"stream": names.STREAM_USAGE, "seq": i + 1}
        self.raise_exc: Exception | None = None

    async def __call__(self, batch):
        self.batches.append(list(batch))
        if self.raise_exc is not None:
            raise self.raise_exc
        return [self.answer(i, msg) for i, msg in enumerate(batch)]


def facts(batch):
    return {(orjson.loads(p)["account"], orjson.loads(p)["metric"]): orjson.loads(p)["amount"] for _, p, _ in batch}


async def test_a_flush_is_one_batch_of_one_event_per_account_and_metric():
    bus = FakeBus()
    meter = UsageMeter(bus, "mailstore-1")
    for _ in range(3):
        meter.stored(A, 100)
    meter.stored(A, 250)
    meter.stored(B, None)  # usage of an account not open: the count only
    await meter.flush()
    assert len(bus.batches) == 1
    (batch,) = bus.batches
    assert facts(batch) == {(A, "messages_in"): 4, (A, "storage_bytes"): 250, (B, "messages_in"): 1}
    assert {s for s, _, _ in batch} == {names.usage_subject("example.com"), names.usage_subject("example.org")}
    ids = [h["Nats-Msg-Id"] for _, _, h in batch]
    assert len(set(ids)) == len(ids)
    assert meter.pending == 0
    await meter.flush()  # nothing new: nothing sent
    assert len(bus.batches) == 1


async def test_unconfirmed_events_are_sent_again_unchanged_and_new_counts_separately():
    bus = FakeBus()
    meter = UsageMeter(bus, "mailstore-1")
    meter.stored(A, 100)
    meter.stored(B, 7)
    # the first event got no ack in time (it may have landed), the rest an error or an ack
    bus.answer = lambda i, msg: None if i == 0 else ({"error": {"code": 503}} if i == 1 else {"seq": 9})
    await meter.flush()
    first = bus.batches[0]
    assert meter.pending == 2
    bus.answer = lambda i, msg: {"stream": names.STREAM_USAGE, "seq": 10 + i, "duplicate": i == 0}
    meter.stored(A, 200)
    await meter.flush()
    second = bus.batches[1]
    assert second[:2] == first[:2]  # resent first, byte for byte, under the same message ids
    assert facts(second[2:]) == {(A, "messages_in"): 1, (A, "storage_bytes"): 200}
    assert {h["Nats-Msg-Id"] for _, _, h in second[2:]}.isdisjoint(h["Nats-Msg-Id"] for _, _, h in first)
    assert meter.pending == 0


async def test_a_bus_away_keeps_the_events_and_the_wait_is_bounded():
    bus = FakeBus()
    meter = UsageMeter(bus, "mailstore-1", max_unsent=5)
    bus.raise_exc = ConnectionError("not connected")
    for n in range(4):
        meter.stored(f"u{n}@example.com", n)
    await meter.flush()  # 8 events, none confirmed: the newest 5 wait
    assert meter.pending == 5
    bus.raise_exc = None
    await meter.flush()
    assert len(bus.batches[-1]) == 5 and bus.batches[-1] == bus.batches[0][-5:]
    assert meter.pending == 0


async def test_message_ids_differ_between_runs_of_one_node_id():
    bus = FakeBus()
    one, two = UsageMeter(bus, "mailstore-1"), UsageMeter(bus, "mailstore-1")
    one.stored(A, 1)
    two.stored(A, 1)
    await one.flush()
    await two.flush()
    assert bus.batches[0][0][2]["Nats-Msg-Id"] != bus.batches[1][0][2]["Nats-Msg-Id"]
