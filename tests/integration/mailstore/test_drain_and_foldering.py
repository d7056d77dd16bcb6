"""Drain releases accounts to the other mailstore; a domain's foldering switched while mail
keeps arriving moves every account with nothing lost or duplicated."""

from __future__ import annotations

import asyncio
import uuid

from cluster_harness import wait_until
from mailworld import DOMAIN, publish_many, world  # noqa: F401  (world is a fixture)

from colony.cluster.control import ask_controller
from colony.storage.layout import StorageLayout, account_paths


async def test_drained_mailstore_releases_its_accounts_and_the_other_delivers(world):
    await world.domain()
    users = [f"u{i}@{DOMAIN}" for i in range(6)]
    for u in users:
        await world.account(u)
    world.cluster.start("controller", "controller-1")
    for node in ("mailstore-1", "mailstore-2"):
        world.start(node)
    await world.cluster.wait_controller(timeout=30)
    for node in ("mailstore-1", "mailstore-2"):
        await world.cluster.wait_state(node, "READY", timeout=30)
    first = [([u], uuid.uuid4().hex) for u in users]
    await publish_many(world, first, connections=2)
    await wait_until(lambda: _all(world, users, [m for _, m in first]), 60, "the first round")
    owners = {u: await world.owner(u) for u in users}
    drained = owners[users[0]]
    other = "mailstore-2" if drained == "mailstore-1" else "mailstore-1"

    reply = await ask_controller(await world.cluster.client(), "drain", drained)
    assert reply.ok, reply.error
    await world.cluster.wait_state(drained, "NOT_READY", drained=True, timeout=60)

    async def released():
        return all([await world.owner(u) != drained for u in users])
    await wait_until(released, 30, f"{drained} to hold no account")
    second = [([u], uuid.uuid4().hex) for u in users]
    await publish_many(world, second, connections=2)
    ids = [m for _, m in first + second]
    await wait_until(lambda: _all(world, users, ids), 60, "the second round, delivered by the other")
    assert {await world.owner(u) for u in users} == {other}
    assert all(set(world.stored_ids(u).values()) == {1} for u in users)


async def test_foldering_switched_while_a_burst_is_delivered(world):
    await world.domain()
    users = [f"{n}@{DOMAIN}" for n in ("anna", "bert", "cleo", "dirk")]
    for u in users:
        await world.account(u)
    await world.start_ready("mailstore-1", "mailstore-2")
    jobs = [([users[i % 4], users[(i + 1) % 4]], uuid.uuid4().hex) for i in range(1200)]
    publishing = asyncio.create_task(publish_many(world, jobs, connections=4))

    async def some():
        return sum(sum(world.stored_ids(u).values()) for u in users) >= 100
    await wait_until(some, 60, "part of the burst stored")
    await world.domain(account_foldering="1-1", domain_foldering=True)   # the live switch
    await publishing
    expected = {u: {m for rcpts, m in jobs if u in rcpts} for u in users}

    async def everything():
        return all(set(world.stored_ids(u)) == expected[u] for u in users)
    await wait_until(everything, 120, "every message of the burst", interval=0.3)
    assert all(set(world.stored_ids(u).values()) == {1} for u in users)

    # Mail after the switch moves each account (its owner does, under its lease, once its
    # directory cache has the new layout): keep sending until every account has moved.
    new, old = StorageLayout("1-1", 1), StorageLayout()

    async def moved():
        waiting = [u for u in users
                   if not account_paths(world.root, DOMAIN, u.partition("@")[0], new).account_dir.is_dir()]
        for u in waiting:
            mid = await world.publish([u])
            expected[u].add(mid)
        return not waiting
    await wait_until(moved, 60, "every account under the new layout", interval=0.5)
    await wait_until(everything, 60, "mail after the switch")
    assert all(set(world.stored_ids(u).values()) == {1} for u in users)
    for u in users:
        assert not account_paths(world.root, DOMAIN, u.partition("@")[0], old).account_dir.exists(), u
    anna = account_paths(world.root, DOMAIN, "anna", new).account_dir
    assert str(anna.relative_to(world.root)) == "SharedDomains/e.sub/example.com/a.sub/n.sub/anna.macnt"


async def _all(world, users, ids) -> bool:
    wanted = set(ids)
    have = set()
    for u in users:
        have |= set(world.stored_ids(u))
    return wanted <= have
