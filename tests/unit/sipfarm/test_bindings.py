"""BindingStore on an in-memory KV: a refresh the remembered set answers needs no bus call,
and one that comes while a change of the account is in flight waits for that change."""

from __future__ import annotations

import asyncio

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from colony_sipfarm.bindings import Binding, BindingStore

NOW = 1_000_000.0


class Kv:
    def __init__(self) -> None:
        self.data: dict[str, tuple[bytes, int]] = {}
        self.seq = 0
        self.calls: list[str] = []
        self.hold: asyncio.Event | None = None      # set: writes wait for it

    async def get(self, key):
        self.calls.append("get")
        if key not in self.data:
            raise KeyNotFoundError

        class Entry:
            value, revision = self.data[key]
        return Entry

    async def _write(self, key, value, last):
        if self.hold is not None:
            await self.hold.wait()
        if self.data.get(key, (b"", 0))[1] != last:
            raise KeyWrongLastSequenceError
        self.seq += 1
        self.data[key] = (value, self.seq)
        return self.seq

    async def create(self, key, value):
        self.calls.append("create")
        return await self._write(key, value, 0)

    async def update(self, key, value, last):
        self.calls.append("update")
        return await self._write(key, value, last)


def store(kv: Kv) -> BindingStore:
    s = BindingStore(kv, lambda: NOW, trust_seconds=30.0)
    s._watching = True          # as once its watch of the bucket runs
    return s


def add(contact: str):
    def edit(current: list[Binding]) -> list[Binding] | None:
        if any(b.contact == contact for b in current):
            return None         # a refresh that changes nothing: keep what is stored
        return [*current, Binding(contact=contact, expires_at=NOW + 600)]
    return edit


async def test_a_refresh_the_remembered_set_answers_costs_no_bus_call():
    kv = Kv()
    bindings = store(kv)
    await bindings.change("alice@acme.example", add("sip:alice@192.0.2.7"))
    assert kv.calls == ["get", "create"]
    kept = await bindings.change("alice@acme.example", add("sip:alice@192.0.2.7"))
    assert [b.contact for b in kept] == ["sip:alice@192.0.2.7"]
    assert kv.calls == ["get", "create"]


async def test_a_change_in_flight_is_waited_for_before_a_refresh_is_answered():
    kv = Kv()
    bindings = store(kv)
    await bindings.change("alice@acme.example", add("sip:a@192.0.2.7"))
    kv.hold = asyncio.Event()
    writing = asyncio.create_task(bindings.change("alice@acme.example", add("sip:b@192.0.2.8")))
    while kv.calls[-1] != "update":                 # the write is in flight, holding the lock
        await asyncio.sleep(0)
    refresh = asyncio.create_task(bindings.change("alice@acme.example", add("sip:a@192.0.2.7")))
    for _ in range(10):                             # an answer from the old set needs one turn
        await asyncio.sleep(0)
    assert not refresh.done()                       # it waits for the write, not the old set
    kv.hold.set()
    await asyncio.wait_for(writing, 5)
    kept = await asyncio.wait_for(refresh, 5)
    assert sorted(b.contact for b in kept) == ["sip:a@192.0.2.7", "sip:b@192.0.2.8"]
