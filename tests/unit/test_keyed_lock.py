"""KeyedLock: one holder per key at a time, even when a release and a newcomer meet a waiter
(the race of the ``setdefault(key, Lock())`` + ``if not lock.locked(): drop`` pattern it
replaced), and no entry left for a key nobody uses."""

from __future__ import annotations

import asyncio

import pytest

from colony.keyed_lock import KeyedLock


async def test_a_newcomer_never_enters_beside_a_woken_waiter():
    locks = KeyedLock()
    inside: list[str] = []
    overlaps: list[tuple[str, ...]] = []

    async def critical(name: str) -> None:
        async with locks.hold("k"):
            inside.append(name)
            if len(inside) > 1:
                overlaps.append(tuple(inside))
            await asyncio.sleep(0)
            inside.remove(name)

    first = asyncio.create_task(critical("first"))
    waiter = asyncio.create_task(critical("waiter"))
    await asyncio.sleep(0)           # first holds the lock, the waiter queues behind it
    await asyncio.sleep(0)           # first leaves: the waiter is woken but has not run yet
    newcomer = asyncio.create_task(critical("newcomer"))  # arrives in that very gap
    await asyncio.gather(first, waiter, newcomer)
    assert overlaps == []
    assert len(locks) == 0


async def test_many_tasks_one_key_one_holder_and_nothing_left():
    locks = KeyedLock()
    # Two keys plus a shared one: holders of *different* keys may overlap, so count per key.
    per_key: dict[str, int] = {}
    bad: list[str] = []

    async def checked(n: int) -> None:
        for i in range(30):
            key = f"k{n % 2}" if i % 3 else "shared"
            async with locks.hold(key):
                per_key[key] = per_key.get(key, 0) + 1
                if per_key[key] > 1:
                    bad.append(key)
                await asyncio.sleep(0)
                per_key[key] -= 1
            await asyncio.sleep(0)

    await asyncio.gather(*(checked(n) for n in range(12)))
    assert bad == []
    assert len(locks) == 0


async def test_a_waiter_cancelled_leaves_no_entry():
    locks = KeyedLock()
    release = asyncio.Event()

    async def holder() -> None:
        async with locks.hold("k"):
            await release.wait()

    h = asyncio.create_task(holder())
    await asyncio.sleep(0)
    w = asyncio.create_task(holder())
    await asyncio.sleep(0)
    w.cancel()
    with pytest.raises(asyncio.CancelledError):
        await w
    release.set()
    await h
    assert len(locks) == 0
