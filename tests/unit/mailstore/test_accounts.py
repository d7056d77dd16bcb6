"""The mailstore's account manager without a bus: group commit, dedupe, quota, a foldering
move under the lease, and fencing by a newer owner."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from colony.storage.layout import StorageLayout, account_paths
from colony.storage.mailbox import AccountMail
from colony_mailstore import accounts
from colony_mailstore.accounts import AccountManager, NotOwner, OverQuota
from colony_mailstore.metrics import MailstoreMetrics


class FakeLease:
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.held = True


class FakeOwnership:
    def __init__(self) -> None:
        self.leases: dict = {}
        self.released: list[tuple[str, str]] = []

    async def release(self, address: str, reason: str) -> None:
        lease = self.leases.pop(address, None)
        if lease is not None:
            lease.held = False
        self.released.append((address, reason))

    def still_holds(self, address: str, lease) -> bool:
        return lease.held

    async def rotate(self, address: str):
        lease = self.leases[address]
        lease.epoch += 10
        return lease


class FakeDirectory:
    def __init__(self) -> None:
        self.layouts = {"example.com": StorageLayout()}
        self.quotas: dict[str, int] = {}

    async def layout(self, domain):
        return self.layouts[domain]

    async def account(self, address):
        return None

    async def quota(self, address):
        return self.quotas.get(address)


@pytest.fixture
def manager(tmp_path):
    metrics = MailstoreMetrics(CollectorRegistry())
    return AccountManager(tmp_path, FakeOwnership(), FakeDirectory(), metrics), metrics


NOW = datetime(2026, 11, 25, tzinfo=UTC)


async def test_concurrent_deliveries_share_fsyncs_and_redeliveries_are_recognised(manager):
    mgr, metrics = manager
    lease = FakeLease(7)
    results = await asyncio.gather(*(mgr.deliver("ann@example.com", lease, b"m%d" % i, f"id{i}/ann", NOW)
                                     for i in range(30)))
    assert sorted(r.uid for r in results) == list(range(1, 31))
    commits = metrics.commits._value.get()
    assert commits < 30, "deliveries waiting on one account share a commit"
    again = await mgr.deliver("ann@example.com", lease, b"m3", "id3/ann", NOW)
    assert again.duplicate and again.uid == results[3].uid
    assert mgr.open["ann@example.com"].mail.body("INBOX", again.uid) == b"m3"


async def test_over_quota_is_refused_without_failing_the_batch(manager):
    mgr, _ = manager
    mgr.directory.quotas["bo@example.com"] = 10
    lease = FakeLease(3)
    ok = await mgr.deliver("bo@example.com", lease, b"12345", "a/bo", NOW)
    with pytest.raises(OverQuota):
        await mgr.deliver("bo@example.com", lease, b"1234567890", "b/bo", NOW)
    assert ok.uid == 1 and mgr.usage("bo@example.com") == (5, 1)


async def test_foldering_switch_moves_the_account_under_its_lease(manager, tmp_path):
    mgr, _ = manager
    lease = FakeLease(3)
    await mgr.deliver("cleo@example.com", lease, b"before", "1/cleo", NOW)
    old = account_paths(tmp_path, "example.com", "cleo", StorageLayout())
    new_layout = StorageLayout("1-1", 1, 1)
    mgr.directory.layouts["example.com"] = new_layout
    await mgr.deliver("cleo@example.com", lease, b"after", "2/cleo", NOW)
    new = account_paths(tmp_path, "example.com", "cleo", new_layout)
    assert not old.account_dir.exists() and new.account_dir.is_dir()
    assert new.info_file.exists() and "fast" in new.info_file.parts
    await mgr.close("cleo@example.com", "idle")
    reopened = AccountMail(new.mail_dir, 9)
    reopened.open()
    assert [reopened.body("INBOX", m.uid) for m in reopened.messages("INBOX")] == [b"before", b"after"]


async def test_a_newer_owner_fences_this_one(manager, tmp_path):
    mgr, metrics = manager
    lease = FakeLease(3)
    await mgr.deliver("dan@example.com", lease, b"one", "1/dan", NOW)
    paths = account_paths(tmp_path, "example.com", "dan", StorageLayout())
    AccountMail(paths.mail_dir, 5).open()   # another instance took the account over
    with pytest.raises(NotOwner):
        await mgr.deliver("dan@example.com", lease, b"two", "2/dan", NOW)
    assert "dan@example.com" not in mgr.open and metrics.fenced._value.get() == 1


async def test_a_lapsed_lease_writes_nothing(manager):
    mgr, _ = manager
    lease = FakeLease(3)
    await mgr.deliver("eve@example.com", lease, b"one", "1/eve", NOW)
    lease.held = False
    with pytest.raises(NotOwner):
        await mgr.deliver("eve@example.com", lease, b"two", "2/eve", NOW)


async def test_a_long_tenure_rotates_to_a_new_segment(tmp_path):
    from colony.storage import journal as j

    ownership = FakeOwnership()
    mgr = AccountManager(tmp_path, ownership, FakeDirectory(), MailstoreMetrics(CollectorRegistry()),
                         segment_max_bytes=4096)
    lease = ownership.leases["fay@example.com"] = FakeLease(3)
    for i in range(60):
        await mgr.deliver("fay@example.com", lease, b"message %d" % i, f"{i}/fay", NOW)
    assert lease.epoch > 3
    journal_dir = account_paths(tmp_path, "example.com", "fay", StorageLayout()).mail_dir / "journal"
    assert set(j.list_segments(journal_dir)) == {lease.epoch}
    assert (await mgr.deliver("fay@example.com", lease, b"message 7", "7/fay", NOW)).duplicate
    await mgr.close("fay@example.com", "idle")
    after = AccountMail(journal_dir.parent, lease.epoch + 1)
    after.open()
    assert [after.body("INBOX", m.uid) for m in after.messages("INBOX")] == [b"message %d" % i for i in range(60)]


async def test_an_account_closed_during_the_switch_moves_when_next_opened(manager, tmp_path):
    mgr, _ = manager
    await mgr.deliver("gus@example.com", FakeLease(3), b"before", "1/gus", NOW)
    await mgr.close("gus@example.com", "idle")
    layout = StorageLayout("2-2")
    mgr.directory.layouts["example.com"] = layout
    await mgr.deliver("gus@example.com", FakeLease(8), b"after", "2/gus", NOW)
    new = account_paths(tmp_path, "example.com", "gus", layout)
    assert str(new.account_dir.relative_to(tmp_path)) == "SharedDomains/example.com/gu.sub/s_.sub/gus.macnt"
    assert not account_paths(tmp_path, "example.com", "gus", StorageLayout()).account_dir.exists()
    assert [m.uid for m in mgr.open["gus@example.com"].mail.messages("INBOX")] == [1, 2]


async def test_idle_release_spares_accounts_with_sessions_and_closing_ends_them(tmp_path):
    clock = [100.0]
    ownership = FakeOwnership()
    mgr = AccountManager(tmp_path, ownership, FakeDirectory(), MailstoreMetrics(CollectorRegistry()),
                         clock=lambda: clock[0])
    await mgr.deliver("hal@example.com", FakeLease(3), b"x", "1/hal", NOW)
    await mgr.deliver("ida@example.com", FakeLease(4), b"y", "1/ida", NOW)
    ended = []
    hal = mgr.open["hal@example.com"]
    hal.sessions += 1
    hal.on_close.append(lambda: ended.append("hal"))
    clock[0] += 1000
    await mgr.release_idle(300)
    assert list(mgr.open) == ["hal@example.com"]
    assert ownership.released == [("ida@example.com", "idle")]
    await mgr.release_all("drain")
    assert ended == ["hal"] and not mgr.open


async def test_an_account_released_while_it_opens_is_not_kept_open(tmp_path):
    """A drain's release_all while an IMAP login's open of the account is still reading the
    directory: the close finds nothing open, the release ends the lease, and the open that
    finishes after must not leave the account open here beside its next owner's."""
    ownership, directory = FakeOwnership(), FakeDirectory()
    reading, go_on = asyncio.Event(), asyncio.Event()
    layout = directory.layout

    async def slow_layout(domain):
        reading.set()
        await go_on.wait()
        return await layout(domain)
    directory.layout = slow_layout
    metrics = MailstoreMetrics(CollectorRegistry())
    mgr = AccountManager(tmp_path, ownership, directory, metrics)
    lease = ownership.leases["kim@example.com"] = FakeLease(3)
    opening = asyncio.create_task(mgr.get("kim@example.com", lease))
    await reading.wait()
    await mgr.release_all("drain")
    go_on.set()
    with pytest.raises(NotOwner):
        await opening
    assert not mgr.open and metrics.open_accounts._value.get() == 0
    assert ownership.released == [("kim@example.com", "drain")]


async def test_commits_of_several_accounts_share_a_worker_thread_hop(manager, monkeypatch):
    mgr, _ = manager
    for name in ("jo", "ken", "lee"):   # opened first: opening has hops of its own
        await mgr.deliver(f"{name}@example.com", FakeLease(2), b"first", f"0/{name}", NOW)
    hops = []
    real = accounts._sync_all
    monkeypatch.setattr(accounts, "_sync_all", lambda batch: (hops.append(len(batch)), real(batch))[1])
    stored = await asyncio.gather(*(mgr.deliver(f"{name}@example.com", mgr.open[f"{name}@example.com"].lease,
                                                b"m%d" % i, f"{i}/{name}", NOW)
                                    for i in range(1, 5) for name in ("jo", "ken", "lee")))
    assert [s.uid for s in stored] == [2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5]
    assert sum(hops) < 12 and max(hops) > 1, hops   # accounts' commits went together


async def test_commits_queued_in_one_loop_pass_go_in_one_hop(monkeypatch):
    hops = []
    monkeypatch.setattr(accounts, "_sync_all", lambda batch: hops.append(len(batch)))
    syncer = accounts.Syncer()
    # gather's tasks take their first step in the same pass: three commits queued at once
    await asyncio.gather(*(syncer.sync(object()) for _ in range(3)))
    assert hops == [3]   # the first did not leave with a hop of its own
    await asyncio.gather(*(syncer.sync(object()) for _ in range(2)))
    assert hops == [3, 2]


async def test_a_small_hop_runs_on_the_loop_and_a_larger_one_in_the_thread(monkeypatch):
    where = []
    monkeypatch.setattr(accounts, "_sync_all",
                        lambda batch: where.append((len(batch), threading.current_thread() is threading.main_thread())))
    syncer = accounts.Syncer(inline_commits=2)
    await syncer.sync(object())
    await asyncio.gather(*(syncer.sync(object()) for _ in range(2)))
    await asyncio.gather(*(syncer.sync(object()) for _ in range(3)))
    assert where == [(1, True), (2, True), (3, False)]
    assert syncer.hops == {"loop": 2, "thread": 1}


async def test_slow_hops_on_the_loop_send_small_hops_to_the_thread_until_a_probe_is_quick(monkeypatch):
    slow = [True]

    def sync_all(batch):
        if slow[0] and threading.current_thread() is threading.main_thread():
            time.sleep(0.01)     # a slow disk (NFS): the loop must not wait on it again
    monkeypatch.setattr(accounts, "_sync_all", sync_all)
    syncer = accounts.Syncer(inline_commits=2, cost=accounts.CommitCost(limit=0.002, samples=2, probe_every=3))
    await syncer.sync(object())                   # the first is tried on the loop: slow
    for _ in range(3):
        await syncer.sync(object())               # so the next ones go to the thread
    assert syncer.hops == {"loop": 1, "thread": 3}
    slow[0] = False
    await syncer.sync(object())                   # the third in the thread earned a probe on the loop
    await syncer.sync(object())                   # median of (slow, quick) still over the limit
    assert syncer.hops == {"loop": 2, "thread": 4}
    for _ in range(3):
        await syncer.sync(object())               # two in the thread, then a probe: quick again
    assert syncer.hops == {"loop": 3, "thread": 6}
    await syncer.sync(object())                   # the median of two quick ones: the loop's again
    await syncer.sync(object())
    assert syncer.hops == {"loop": 5, "thread": 6}


async def test_one_stalled_hop_on_the_loop_sends_the_next_ones_to_the_thread_at_once(monkeypatch):
    # Quick hops before it keep the median low: without the stall rule the next hops would
    # hold the loop (its sessions, the node's heartbeat) for as long each, half the samples.
    stalled = [False]

    def sync_all(batch):
        if stalled[0] and threading.current_thread() is threading.main_thread():
            time.sleep(0.03)
    monkeypatch.setattr(accounts, "_sync_all", sync_all)
    syncer = accounts.Syncer(inline_commits=2, cost=accounts.CommitCost(limit=0.01, samples=16, probe_every=3,
                                                                        stall=0.02))
    for _ in range(8):
        await syncer.sync(object())
    stalled[0] = True
    await syncer.sync(object())                   # the disk stalls, on the loop: 30 ms
    for _ in range(3):
        await syncer.sync(object())               # not again: the thread
    assert syncer.hops == {"loop": 9, "thread": 3}
    await syncer.sync(object())                   # a probe on the loop: stalled still
    for _ in range(3):
        await syncer.sync(object())
    assert syncer.hops == {"loop": 10, "thread": 6}
    stalled[0] = False
    await syncer.sync(object())                   # a quick probe: the median (of quick ones) decides
    await syncer.sync(object())
    assert syncer.hops == {"loop": 12, "thread": 6}


async def test_a_hop_on_the_loop_that_raises_still_wakes_its_deliveries(monkeypatch):
    def sync_all(batch):
        raise RuntimeError("a bug: sync() keeps its failures on the commit")
    monkeypatch.setattr(accounts, "_sync_all", sync_all)
    syncer = accounts.Syncer(inline_commits=2)
    delivery = asyncio.ensure_future(syncer.sync(object()))
    await asyncio.wait([delivery], timeout=1)      # not left waiting for good
    assert delivery.done()
    assert syncer.hops == {"loop": 1, "thread": 0}


async def test_a_delivery_cancelled_during_its_commit_finishes_the_batch_first(manager, monkeypatch):
    mgr, _ = manager
    mgr.syncer.inline_commits = 0    # every hop in the Syncer's thread, as a busy store's are
    lease = FakeLease(4)
    await mgr.deliver("max@example.com", lease, b"first", "0/max", NOW)
    release = threading.Event()
    started = threading.Event()
    real = accounts._sync_all

    def slow(batch):
        started.set()
        release.wait(10)
        real(batch)
    monkeypatch.setattr(accounts, "_sync_all", slow)
    first = asyncio.ensure_future(mgr.deliver("max@example.com", lease, b"one", "1/max", NOW))
    second = asyncio.ensure_future(mgr.deliver("max@example.com", lease, b"two", "2/max", NOW))
    await asyncio.to_thread(started.wait, 10)
    first.cancel()
    await asyncio.sleep(0)
    assert not first.done()          # its fsyncs are still running: the handle is mid-commit
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert (await second).uid == 3   # the next batch, once the cancelled one had finished
    mail = mgr.open["max@example.com"].mail
    assert mail.usable and [mail.body("INBOX", m.uid) for m in mail.messages("INBOX")] == [b"first", b"one", b"two"]
    assert (await mgr.deliver("max@example.com", lease, b"one", "1/max", NOW)).duplicate


async def _cancel_while_held(mgr, monkeypatch, target, name: str):
    """Two deliveries in one batch, the first cancelled while ``target`` (a function of the
    commit, run in a worker thread) is held: the lock stays held until the thread is done,
    and the other delivery gets its answer."""
    lease = FakeLease(5)
    address = f"{name}@example.com"
    await mgr.deliver(address, lease, b"first", f"0/{name}", NOW)
    acct = mgr.open[address]
    release, started = threading.Event(), threading.Event()
    owner, attr = target
    real = getattr(owner, attr)

    def held(*args):
        started.set()
        release.wait(10)
        return real(*args)
    monkeypatch.setattr(owner, attr, held)
    async with acct.lock:   # both queue up, so the first to take the lock stores both
        first = asyncio.ensure_future(mgr.deliver(address, lease, b"one", f"1/{name}", NOW))
        second = asyncio.ensure_future(mgr.deliver(address, lease, b"two", f"2/{name}", NOW))
        await asyncio.sleep(0)
        assert len(acct.queue) == 2
    await asyncio.to_thread(started.wait, 10)
    first.cancel()
    for _ in range(5):
        await asyncio.sleep(0)
    assert not first.done() and acct.lock.locked(), "the lock was released with a thread still writing the handle"
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert (await second).uid == 3, "the batch's other delivery is answered with what was stored"
    mail = mgr.open[address].mail
    assert mail.usable and [mail.body("INBOX", m.uid) for m in mail.messages("INBOX")] == [b"first", b"one", b"two"]


async def test_a_delivery_cancelled_during_the_snapshot_its_commit_brought_due_answers_the_batch(manager, monkeypatch):
    from colony.storage import mailbox
    mgr, _ = manager
    monkeypatch.setattr(mailbox, "SNAPSHOT_EVERY", 2)
    await _cancel_while_held(mgr, monkeypatch, (AccountMail, "snapshot"), "nan")


async def test_a_large_batch_cancelled_in_its_worker_thread_answers_the_batch(manager, monkeypatch):
    mgr, _ = manager
    monkeypatch.setattr(accounts, "STAGE_ON_LOOP_BYTES", 0)   # every batch staged in a thread
    await _cancel_while_held(mgr, monkeypatch, (accounts, "_store_sync"), "oda")


async def test_work_in_a_thread_under_an_accounts_lock_is_waited_out_when_the_caller_is_cancelled():
    """A command's or a snapshot's worker thread works on the account's handle under its lock:
    a cancelled caller (the store stopping) must not release the lock before the thread ends."""
    from colony_mailstore.accounts import thread_to_the_end

    lock, started, release, ended = asyncio.Lock(), threading.Event(), threading.Event(), []

    def work():
        started.set()
        release.wait(10)
        ended.append(True)
        return "done"

    async def command():
        async with lock:
            return await thread_to_the_end(work)

    task = asyncio.create_task(command())
    while not started.is_set():
        await asyncio.sleep(0.001)
    task.cancel()
    for _ in range(10):                           # plain to_thread ends at the cancellation's first turn
        await asyncio.sleep(0)
    assert not task.done() and lock.locked()      # still waiting for the thread, lock held
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ended == [True] and not lock.locked()
    assert await thread_to_the_end(lambda: 7) == 7


async def test_open_accounts_stay_under_the_limit_the_least_recently_used_idle_ones_released(tmp_path):
    """Mail to ever more accounts opened them all (descriptors, memory, a lease renewed each):
    past ``max_open`` the least recently used idle accounts are closed and released, never
    one with a client session."""
    clock = [100.0]
    ownership = FakeOwnership()
    mgr = AccountManager(tmp_path, ownership, FakeDirectory(), MailstoreMetrics(CollectorRegistry()),
                         clock=lambda: clock[0], max_open=10)
    for i in range(10):
        clock[0] += 1
        await mgr.deliver(f"u{i}@example.com", FakeLease(3), b"x", f"1/u{i}", NOW)
    mgr.open["u0@example.com"].sessions += 1                 # oldest, but a client has it open
    clock[0] += 1
    await mgr.deliver("u10@example.com", FakeLease(3), b"x", "1/u10", NOW)
    assert len(mgr.open) == 9                                 # down to nine tenths
    assert "u0@example.com" in mgr.open and "u10@example.com" in mgr.open
    assert [a for a, why in ownership.released] == ["u1@example.com", "u2@example.com"]
    assert {why for _, why in ownership.released} == {"idle"}
