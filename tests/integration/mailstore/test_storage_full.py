"""A mail store whose shared storage fills up, or is read-only, holds the mail it was given
until it takes writes again: nothing dead-lettered, nothing lost, nothing stored twice or
truncated.

The storage is a real tmpfs that runs full (ENOSPC from the kernel, not a mock), so the test
needs root to mount it.  With a short retry schedule and three deliveries, mail was
dead-lettered within a second of the disk filling before delivery held it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid

import pytest

from cluster_harness import wait_progress, wait_until
from mailworld import DOMAIN, world  # noqa: F401  (world is a fixture)

from colony.bus import names

pytestmark = pytest.mark.slow


def _tmpfs(path, size: str, remount: bool = False) -> None:
    options = f"remount,size={size}" if remount else f"size={size}"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True, capture_output=True)


@pytest.fixture
def small_storage(world):
    """The mail stores' shared storage root as a 1 MiB tmpfs."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs as the mail storage")
    world.root.mkdir(parents=True, exist_ok=True)
    try:
        _tmpfs(world.root, "1m")
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {getattr(exc, 'stderr', exc)!r}")
    yield world.root
    subprocess.run(["umount", "-l", str(world.root)], capture_output=True)   # lazily: the store may hold files


async def test_a_full_disk_holds_mail_until_space_returns(world, small_storage):
    await world.domain()
    users = [f"u{i}@{DOMAIN}" for i in range(4)]
    for u in users:
        await world.account(u)
    node = world.start("mailstore-1", COLONY_QUEUE_MAX_DELIVER="3", COLONY_QUEUE_RETRY_BACKOFF="0.2")
    await world.cluster.wait_state("mailstore-1", "READY", timeout=30)
    js = world.nc.jetstream()

    # ~3 MB of mail for a 1 MiB disk.
    ids = {u: set() for u in users}
    for n in range(150):
        u = users[n % len(users)]
        ids[u].add(await world.publish([u], message_id=uuid.uuid4().hex, size=20_000))

    # Full as the store sees it: a write refused with ENOSPC.  (Not the free space left: a
    # refused write's partial files are removed again, so what statvfs shows then depends on
    # which write the kernel refused -- a 20 kB body, or a larger journal write.)
    await wait_until(lambda: _logged(node, "shared storage refuses writes"), 60, "the disk to fill up")
    # Held, not failed: over several of the old retry schedules (0.2 s, three deliveries) and
    # past a held job's redelivery, nothing goes to the dead letters and the jobs stay queued.
    until = time.monotonic() + 15
    while time.monotonic() < until:
        assert (await js.stream_info(names.STREAM_DEAD_LETTERS)).state.messages == 0
        await asyncio.sleep(0.5)
    assert (await js.stream_info(names.STREAM_MAIL)).state.messages > 0

    _tmpfs(small_storage, "64m", remount=True)
    total = sum(len(v) for v in ids.values())

    async def left():
        stored = sum(len(ids[u] & set(world.stored_ids(u))) for u in users)
        mail = (await js.stream_info(names.STREAM_MAIL)).state.messages
        return total - stored, f"{stored}/{total} stored, MAIL holds {mail}"
    # Stall deadline: a probe every 5 s, a held job back after 10 s; four times that.
    await wait_progress(left, 4 * (5 + 10), "every held message stored once space returned")
    await wait_until(lambda: _logged(node, "takes writes again"), 10, "the store to say delivery resumed")
    assert (await js.stream_info(names.STREAM_DEAD_LETTERS)).state.messages == 0
    for u in users:
        counts = world.stored_ids(u)
        assert set(counts) == ids[u] and set(counts.values()) == {1}, u
        state = world.state(u)
        inbox = state.box("INBOX")
        assert all(m.size > 20_000 for m in inbox.messages.values())   # whole, none cut off by the full disk


async def _logged(node, text: str) -> bool:
    return _logged_now(node, text)


def _logged_now(node, text: str) -> bool:
    return text in node.log()


async def test_a_read_only_storage_holds_mail_until_it_is_writable(world, small_storage):
    """The share mounted read-only (an NFS server that went read-only, a remount after an
    error): EROFS holds the mail the same way, and a remount read-write delivers it."""
    _tmpfs(small_storage, "16m,ro", remount=True)
    await world.domain()
    users = [f"r{i}@{DOMAIN}" for i in range(3)]
    for u in users:
        await world.account(u)
    node = world.start("mailstore-1", COLONY_QUEUE_MAX_DELIVER="3", COLONY_QUEUE_RETRY_BACKOFF="0.2")
    await world.cluster.wait_state("mailstore-1", "READY", timeout=30)
    js = world.nc.jetstream()
    ids = {u: {await world.publish([u]) for _ in range(5)} for u in users}

    await wait_until(lambda: _logged(node, "shared storage refuses writes"), 60, "the store to find its storage read-only")
    until = time.monotonic() + 12
    while time.monotonic() < until:
        assert (await js.stream_info(names.STREAM_DEAD_LETTERS)).state.messages == 0
        await asyncio.sleep(0.5)

    _tmpfs(small_storage, "16m,rw", remount=True)

    async def all_stored():
        return all(world.stored_ids(u) == {m: 1 for m in ids[u]} for u in users)
    await wait_until(all_stored, 60, "every held message stored once the storage is writable")
    assert (await js.stream_info(names.STREAM_DEAD_LETTERS)).state.messages == 0
