"""The accounts this mailstore owns and has open: opening under a lease, group-committed
delivery, foldering moves, renewals, idle and drain release.

One ``OpenAccount`` per owned account.  Deliveries to it queue up; whoever takes the
account's lock stores everything queued so far in one batch that ends with a single journal
fsync (``AccountMail.commit``), so concurrent deliveries share an fsync and none is answered
before it.  A batch of small messages is staged on the event loop (bodies written, records
encoded and applied) and only its fsyncs go to a worker thread: the thread then holds the
GIL for a handful of system calls instead of the whole batch's Python work, which it had to
win back from the loop after every call (~20 context switches per delivered message, half
the store's CPU).  The fsyncs of every account go through one ``Syncer``: one worker-thread
hop at a time for all the commits waiting, so with 16 jobs in flight over 20 accounts (a
commit seldom holds more than one message) the hops, and the loop's wake-ups for their
ends, are shared across accounts.  The lock also serialises opening, relocating and
closing, so the account has one writer inside this process too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import statistics
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson

from colony.cluster.lease import Lease
from colony.cluster.ownership import AccountOwnership
from colony.keyed_lock import KeyedLock
from colony.storage import journal
from colony.storage.layout import AccountPaths, StorageLayout, account_paths, find_account
from colony.storage.mailbox import INBOX, AccountMail, PendingCommit, Stored
from colony_mailstore.directory import Directory
from colony_mailstore.metrics import MailstoreMetrics

log = logging.getLogger("colony.mailstore.accounts")
T = TypeVar("T")


# A batch whose messages together exceed this is staged in the worker thread (a large body's
# write would hold up the loop); below it, writing to the page cache costs less than a hop.
STAGE_ON_LOOP_BYTES = 256 * 1024


# Where a command's commit (the journal's write, fsync and fence check) runs: on the event
# loop while this store's commits have been quick, else in a worker thread with the rest of
# the command.  Handing a STORE to a thread and back cost it 1-1.7 ms more than a SEARCH in
# bench/imap.py on a loaded 2-core machine (the thread waits for a CPU and, after each system
# call, for the GIL), where the fsync itself took ~0.06 ms; but a slow sync (NFS: a round
# trip to the server) on the loop would stall every session of the store.
INLINE_COMMIT_MAX = 0.0005   # seconds: the median of recent commits timed on the loop, at most
COMMIT_SAMPLES = 16          # commits that median is taken over (a rare slow one does not count)
COMMIT_PROBE_EVERY = 16      # while commits go to threads, one in this many is timed on the loop again
# One commit (or hop) on the loop this long sends the next ones to threads at once, whatever the
# median says: a disk that stalls (writeback, an NFS server away) stalls the fsyncs after it
# too, and waiting for the median to turn (half of COMMIT_SAMPLES slow ones) held the loop that
# many times -- its sessions, the node's heartbeat (node_ttl) and the lease renewals with it.
COMMIT_STALL = 0.1

# A delivery hop of at most this many commits runs on the loop (Syncer), while such hops have
# taken at most INLINE_HOP_MAX there.  The limit is looser than a session command's: a hop
# this small means the store has next to nothing else to do, so the loop it holds has no
# session waiting on it as a rule, and what it saves is two wake-ups of a process that
# would otherwise sleep in between.  Slow storage (NFS) still keeps its hops in the thread.
INLINE_HOP_COMMITS = 2
INLINE_HOP_MAX = 0.010


class CommitCost:
    """How long this store's commits take when run on the event loop, and so whether the next
    one may (``on_loop``).  Only commits timed on the loop count: one in a thread also waits
    for the GIL, which would keep commits in threads for good on a busy store.  While they
    go to threads, every ``probe_every``-th is tried on the loop again, so a store whose
    disk was slow for a while comes back.  A single commit over ``stall`` sends the next ones
    to threads at once: a rare slow one among quick ones does not move the median, but a
    stalled disk stalls the next fsyncs too."""

    def __init__(self, limit: float = INLINE_COMMIT_MAX, samples: int = COMMIT_SAMPLES,
                 probe_every: int = COMMIT_PROBE_EVERY, stall: float = COMMIT_STALL) -> None:
        self.limit, self.probe_every, self.stall = limit, probe_every, stall
        self._samples: deque[float] = deque(maxlen=samples)
        self._median = 0.0
        self._threaded = 0

    def on_loop(self) -> bool:
        return self._median <= self.limit or self._threaded >= self.probe_every

    def timed(self, seconds: float) -> None:
        self._samples.append(seconds)
        self._median = statistics.median(self._samples)
        if seconds > self.stall:    # to threads until a probe (then the median decides again)
            self._median = max(self._median, seconds)
        self._threaded = 0

    def threaded(self) -> None:
        self._threaded += 1


class Syncer:
    """Runs ``PendingCommit.sync()`` for every commit waiting, one hop at a time: the commits
    that come in while a hop runs go together in the next.  A hop's fsyncs run one after
    another (a 1 KiB body's fsync takes ~0.2 ms on ext4, and eight threads at once got no
    more through than one), so waiting for the running hop costs less than a thread hand-off
    and a loop wake-up per account.

    A hop starts on the loop pass after the one that queued its first commit, not inside it:
    the jobs of one read from the bus reach their commits in the same pass, and a hop started
    by the first of them left the rest to wait for the next (with three stores, ~5 jobs in
    flight each, a hop carried 1.7 commits).  The start costs one callback; a hop saved is a
    thread wake-up, a self-pipe write and a loop wake-up.

    *Where a hop runs.*  A busy store's hops carry many commits, and run on a thread of the
    Syncer's own, so the loop stages the next batch meanwhile; the hop ends with one callback
    on the loop that wakes the waiting deliveries (through ``run_in_executor`` and
    ``asyncio.shield`` each hop and each commit cost two more loop passes of chained
    callbacks).  A hop of at most ``inline_commits`` commits runs on the loop itself while
    ``cost`` says such hops are quick: that is a store with little to do -- each of three
    stores sharing what one would take -- and there the thread bought no overlap, only a
    sleep and two wake-ups per message (the thread's, then the loop's for its end), which
    made three lightly loaded stores spend more CPU per message than one busy one.  While
    the loop is held, arriving jobs wait in the socket; the next pass reads them together,
    so a store that gets busier moves its hops back to the thread by itself."""

    def __init__(self, inline_commits: int = INLINE_HOP_COMMITS, cost: CommitCost | None = None) -> None:
        self.inline_commits = inline_commits
        self.cost = cost if cost is not None else CommitCost(limit=INLINE_HOP_MAX)
        self.hops = {"loop": 0, "thread": 0}   # hops run, by where (tests and benchmarks read it)
        self._waiting: list[_Wait] = []
        self._running = False
        self._starting = False   # a start is scheduled for the next loop pass
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="syncer")

    async def sync(self, pending: PendingCommit) -> None:
        """Returns when ``pending`` is synced (its outcome is on it, for ``finish_commit``).
        Cancelling the caller does not stop it: the fsyncs run on, and the caller is
        cancelled once they are done, so the handle is never left mid-commit."""
        loop = asyncio.get_running_loop()
        wait = _Wait(pending, loop.create_future())
        self._waiting.append(wait)
        if not self._running and not self._starting:
            self._starting = True
            loop.call_soon(self._start)
        cancelled = False
        while not wait.ended:
            try:
                await wait.future
            except asyncio.CancelledError:   # the cancellation took the future with it
                cancelled = True
                if not wait.ended:
                    wait.future = loop.create_future()
        if cancelled:
            raise asyncio.CancelledError

    def _start(self) -> None:
        self._starting = False
        self._next()

    def _next(self) -> None:
        if self._running or not self._waiting:
            return
        batch, self._waiting = self._waiting, []
        if len(batch) <= self.inline_commits:
            if self.cost.on_loop():
                started = time.perf_counter()
                try:
                    _sync_all([wait.pending for wait in batch])
                finally:     # as the thread's hop: whatever happens, nobody is left waiting
                    self.cost.timed(time.perf_counter() - started)
                    self.hops["loop"] += 1
                    self._wake(batch)
                return
            self.cost.threaded()
        self.hops["thread"] += 1
        try:
            self._thread.submit(self._hop, asyncio.get_running_loop(), batch)
        except Exception as exc:  # the interpreter is shutting down
            for wait in batch:
                wait.pending.error = exc
            self._wake(batch)
            return
        self._running = True

    def _hop(self, loop: asyncio.AbstractEventLoop, batch: list[_Wait]) -> None:
        """In the worker thread."""
        try:
            _sync_all([wait.pending for wait in batch])
        finally:
            with contextlib.suppress(RuntimeError):   # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(self._ended, batch)

    def _ended(self, batch: list[_Wait]) -> None:
        self._running = False
        self._wake(batch)
        self._next()

    @staticmethod
    def _wake(batch: list[_Wait]) -> None:
        for wait in batch:
            wait.ended = True
            if not wait.future.done():   # cancelled with its caller, who is waiting on anew
                wait.future.set_result(None)


@dataclass(slots=True)
class _Wait:
    pending: PendingCommit
    future: asyncio.Future
    ended: bool = False


async def _wait_out(work: asyncio.Future) -> bool:
    """Wait for a worker thread's ``work`` on an account's handle to end, even if the caller
    is cancelled meanwhile (returns True then: the caller finishes its batch and raises
    ``CancelledError`` itself).  Stopping at the cancellation would release the account's
    lock with the thread still writing the handle, and leave the batch's deliveries without
    an answer: each waiter then found its item taken and no result on it."""
    cancelled = False
    while not work.done():
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            cancelled = True
        except BaseException:
            break     # the work's own error: the caller reads it with ``work.result()``
    return cancelled


async def thread_to_the_end(fn: Callable[..., T], *args: Any) -> T:
    """``asyncio.to_thread(fn, *args)`` for work on an account's handle under its lock: if the
    caller is cancelled meanwhile, it still waits for the thread to end (``_wait_out``), then
    raises ``CancelledError`` (the work's own error, if any, chained to it)."""
    work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    if await _wait_out(work):
        raise asyncio.CancelledError() from work.exception()
    return work.result()


def _sync_all(batch: list[PendingCommit]) -> None:
    for pending in batch:
        pending.sync()   # never raises: the failure is kept on the commit


class OverQuota(Exception):
    pass


class NotOwner(Exception):
    """We do not (or no longer) hold the account's lease: the work goes back to routing."""


@dataclass
class _Item:
    data: bytes
    key: str
    date: datetime
    quota: int | None
    future: asyncio.Future
    special_use: str | None = None   # file into the mailbox with this special-use (\\Junk), else INBOX


@dataclass
class OpenAccount:
    address: str
    domain: str
    name: str
    lease: Lease
    layout: StorageLayout
    paths: AccountPaths
    mail: AccountMail
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    queue: list[_Item] = field(default_factory=list)
    last_used: float = 0.0
    sessions: int = 0  # client sessions (IMAP, POP) using it: never released as idle meanwhile
    on_close: list[Callable[[], None]] = field(default_factory=list)  # sessions end when it closes
    replied: Any = None   # vacation.RepliedSenders, read from the account's file at its first auto-reply


def split_address(address: str) -> tuple[str, str]:
    name, _, domain = address.rpartition("@")
    return name, domain


class AccountManager:
    def __init__(self, root: Path, ownership: AccountOwnership, directory: Directory, metrics: MailstoreMetrics,
                 clock: Callable[[], float] = time.monotonic, segment_max_bytes: int = 64 * 1024 * 1024,
                 max_open: int = 2000) -> None:
        self.root = root
        # Accounts open at once (account_max_open): each holds descriptors (its journal), its
        # state in memory and a lease renewed on the bus every account_renew_interval.  Idle
        # release alone let mail to ever more accounts open them all until EMFILE.
        self.max_open = max_open
        self.segment_max_bytes = segment_max_bytes
        self.ownership = ownership
        self.directory = directory
        self.metrics = metrics
        self.clock = clock
        self.open: dict[str, OpenAccount] = {}
        self._opening = KeyedLock()  # one open per account at a time
        self.syncer = Syncer()

    # --- open / close ----------------------------------------------------------------------

    async def get(self, address: str, lease: Lease) -> OpenAccount:
        """The open account for a lease we hold; opens it (claiming the journal) if needed."""
        acct = self.open.get(address)
        if acct is not None and acct.lease is lease:
            return acct
        async with self._opening.hold(address):
            acct = self.open.get(address)
            if acct is not None and acct.lease is lease:
                return acct
            if acct is not None and acct.lease.epoch > lease.epoch:
                # A delivery that took its lease before a newer one of ours opened the account
                # (a takeover from ourselves): the newer handle stays, this one retries.
                raise NotOwner(f"{address} is open under a newer epoch ({acct.lease.epoch} > {lease.epoch})")
            if acct is not None:  # an older tenure's handle: it must not write any more
                await self._discard(address)
            name, domain = split_address(address)
            layout = await self.directory.layout(domain)
            settings = await self.directory.account(address)
            info = settings.model_dump(mode="json") if settings else {"address": address}
            acct = await asyncio.to_thread(self._open_sync, address, name, domain, layout, lease, info)
            if not self.ownership.still_holds(address, lease):
                # Released (a drain, idle) or lost while it opened: a close then found nothing
                # to close, so keeping this handle would hold the account open here, unowned,
                # beside its new owner's.
                raise NotOwner(f"lease on {address} ended while it opened")
            self.open[address] = acct
            self.metrics.open_accounts.set(len(self.open))
        if len(self.open) > self.max_open:
            await self._make_room(keep=address)
        return acct

    def _open_sync(self, address: str, name: str, domain: str, layout: StorageLayout, lease: Lease,
                   settings: dict) -> OpenAccount:
        found = find_account(self.root, domain, name, layout)
        paths = account_paths(self.root, domain, name, layout)
        if found is not None and found[1] != layout:
            # An interrupted foldering switch (or one made while nobody had it open): we are
            # the single writer now, so finish the move before anyone reads it.
            _move(found[0], paths)
        paths.account_dir.mkdir(parents=True, exist_ok=True)
        mail = AccountMail(paths.mail_dir, lease.epoch)
        mail.open()
        _write_fast_files(paths, settings, mail)
        return OpenAccount(address, domain, name, lease, layout, paths, mail, last_used=self.clock())

    async def close(self, address: str, reason: str, release: bool = True) -> None:
        acct = self.open.get(address)
        if acct is not None:
            async with acct.lock:
                await self._discard(address)
        if release:
            await self.ownership.release(address, reason)

    async def _discard(self, address: str) -> None:
        acct = self.open.pop(address, None)
        self.metrics.open_accounts.set(len(self.open))
        if acct is None:
            return
        for item in acct.queue:
            if not item.future.done():
                item.future.set_exception(NotOwner(f"{address} closed"))
        acct.queue.clear()
        for callback in list(acct.on_close):  # a change of owner ends the account's sessions
            try:
                callback()
            except Exception:
                log.exception("%s: a close callback failed", address)
        try:
            await asyncio.to_thread(_close_sync, acct)
        except Exception as exc:
            log.warning("closing %s: %s", address, exc)

    # --- delivery --------------------------------------------------------------------------

    async def deliver(self, address: str, lease: Lease, data: bytes, key: str, date: datetime,
                      special_use: str | None = None) -> Stored:
        """Store into the account's INBOX (or its ``special_use`` mailbox, e.g. Junk); returns
        once the journal record is fsynced."""
        acct = await self.get(address, lease)
        quota = await self.directory.quota(address)
        layout = await self.directory.layout(acct.domain)
        item = _Item(data, key, date, quota, asyncio.get_running_loop().create_future(), special_use)
        acct.queue.append(item)
        async with acct.lock:
            if not item.future.done():
                if self.open.get(address) is not acct:
                    raise NotOwner(f"{address} was closed")
                if layout != acct.layout:
                    await asyncio.to_thread(self._relocate_sync, acct, layout)
                batch, acct.queue = acct.queue, []
                await self._store(acct, batch)
        return item.future.result()

    async def _store(self, acct: OpenAccount, batch: list[_Item]) -> None:
        if not acct.lease.held:
            # Past our own deadline: write nothing now.  The handle stays open: a late renewal
            # that nobody beat keeps the same epoch (Lease.renew), and a lost lease closes it.
            for item in batch:
                item.future.set_exception(NotOwner(f"lease on {acct.address} not held"))
            return
        cancelled = False
        try:
            if sum(len(item.data) for item in batch) <= STAGE_ON_LOOP_BYTES:
                results = _stage(acct.mail, batch)
                pending = acct.mail.prepare_commit()
                if pending is not None:
                    try:
                        await self.syncer.sync(pending)
                    except asyncio.CancelledError:
                        cancelled = True   # synced all the same: finish the batch, then stop
                    acct.mail.finish_commit(pending)
                if acct.mail.snapshot_due:
                    snapshot = asyncio.ensure_future(asyncio.to_thread(acct.mail.snapshot))
                    cancelled = await _wait_out(snapshot) or cancelled
                    snapshot.result()
            else:
                work = asyncio.ensure_future(asyncio.to_thread(_store_sync, acct.mail, batch))
                cancelled = await _wait_out(work)
                results = work.result()
        except journal.Fenced as exc:
            self.metrics.fenced.inc()
            log.warning("%s: %s", acct.address, exc)
            for item in batch:
                item.future.set_exception(NotOwner(str(exc)))
            await self._discard(acct.address)
            self.ownership.leases.pop(acct.address, None)
            if cancelled:
                raise asyncio.CancelledError from None
            return
        except Exception as exc:
            for item in batch:
                item.future.set_exception(exc)
            await self._discard(acct.address)  # the handle is broken; reopen next time
            if cancelled:
                raise asyncio.CancelledError from None
            return
        self.metrics.commits.inc()
        acct.last_used = self.clock()
        for item, result in zip(batch, results):
            if isinstance(result, Exception):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)
        if cancelled:
            raise asyncio.CancelledError
        if acct.mail.segment_bytes >= self.segment_max_bytes:
            await self._rotate(acct)

    async def _rotate(self, acct: OpenAccount) -> None:
        """Start a new segment under a new epoch of our own lease (called under the lock)."""
        lease = await self.ownership.rotate(acct.address)
        if lease is None:
            await self._discard(acct.address)
            return
        try:
            acct.mail = await asyncio.to_thread(_reopen_sync, acct.mail, lease.epoch)
        except Exception as exc:
            log.warning("%s: could not start a new segment: %s", acct.address, exc)
            await self._discard(acct.address)

    def _relocate_sync(self, acct: OpenAccount, layout: StorageLayout) -> None:
        new = account_paths(self.root, acct.domain, acct.name, layout)
        _move(acct.paths, new)
        acct.mail.relocate(new.mail_dir)
        acct.paths, acct.layout = new, layout
        log.info("%s moved to %s", acct.address, new.account_dir)

    # --- upkeep ----------------------------------------------------------------------------

    async def renew(self) -> None:
        for address in await self.ownership.renew_all():
            await self.close(address, "lost", release=False)

    async def release_idle(self, idle_for: float) -> None:
        now = self.clock()
        for address, acct in list(self.open.items()):
            if (now - acct.last_used >= idle_for and not acct.queue and not acct.lock.locked()
                    and acct.sessions == 0):
                await self.close(address, "idle")

    async def _make_room(self, keep: str) -> None:
        """Over ``max_open``: close the accounts used least recently among those nobody is
        using (no deliveries queued or committing, no client session), down to nine tenths of
        it, so the sort is paid once per tenth of the limit opened, not per account."""
        idle = sorted((acct.last_used, address) for address, acct in self.open.items()
                      if address != keep and not acct.queue and not acct.lock.locked() and acct.sessions == 0)
        for _, address in idle[:max(0, len(self.open) - self.max_open * 9 // 10)]:
            if address in self.open:
                await self.close(address, "idle")

    async def release_all(self, reason: str) -> None:
        for address in list(self.open):
            await self.close(address, reason)
        for address in list(self.ownership.leases):  # leases taken but never opened
            await self.ownership.release(address, reason)

    def usage(self, address: str) -> tuple[int, int] | None:
        acct = self.open.get(address)
        if acct is None:
            return None
        return acct.mail.bytes_used, acct.mail.state.messages_total


def _target(mail: AccountMail, special_use: str | None) -> str:
    """The mailbox with that special-use (the user may have renamed Junk), else INBOX."""
    if special_use:
        for box in mail.mailboxes():
            if box.special_use == special_use:
                return box.name
    return INBOX


def _store_sync(mail: AccountMail, batch: list[_Item]) -> list[Stored | Exception]:
    out = _stage(mail, batch)
    mail.commit()
    return out


def _stage(mail: AccountMail, batch: list[_Item]) -> list[Stored | Exception]:
    out: list[Stored | Exception] = []
    for item in batch:
        target = _target(mail, item.special_use)
        if item.key in mail.state.dedupe:
            out.append(mail.append(target, item.data, key=item.key))
        elif item.quota is not None and mail.bytes_used + len(item.data) > item.quota:
            out.append(OverQuota(f"{mail.bytes_used + len(item.data)} bytes would exceed the quota of {item.quota}"))
        else:
            out.append(mail.append(target, item.data, date=item.date, key=item.key))
    return out


def _reopen_sync(old: AccountMail, epoch: int) -> AccountMail:
    old.close()
    mail = AccountMail(old.dir, epoch)
    mail.open()
    return mail


def _close_sync(acct: OpenAccount) -> None:
    try:
        if acct.mail.usable:
            acct.mail.snapshot()
            _write_info(acct.paths, acct.mail)
    finally:
        acct.mail.close()


def _move(old: AccountPaths, new: AccountPaths) -> None:
    """Rename the account directory (atomic on one file system) and its fast-storage files."""
    if old.account_dir != new.account_dir:
        new.account_dir.parent.mkdir(parents=True, exist_ok=True)
        os.rename(old.account_dir, new.account_dir)
        journal.fsync_dir(new.account_dir.parent)
        journal.fsync_dir(old.account_dir.parent)
    for a, b in ((old.settings_file, new.settings_file), (old.info_file, new.info_file)):
        if a.parent == old.account_dir:
            a = new.account_dir / a.name  # it moved with the directory
        if a != b and a.exists():
            b.parent.mkdir(parents=True, exist_ok=True)
            os.replace(a, b)


def _write_fast_files(paths: AccountPaths, settings: dict, mail: AccountMail) -> None:
    """``account.settings`` (the provisioning view) and ``account.info`` (usage): small files
    read on every open, under ``fast/`` when the domain has a fast-storage index."""
    for path in (paths.settings_file, paths.info_file):
        path.parent.mkdir(parents=True, exist_ok=True)
    journal.write_atomically(paths.settings_file, orjson.dumps(settings), sync_dir=False)
    _write_info(paths, mail)


def _write_info(paths: AccountPaths, mail: AccountMail) -> None:
    journal.write_atomically(paths.info_file, orjson.dumps({
        "bytes_used": mail.bytes_used, "messages": mail.state.messages_total, "epoch": mail.epoch,
        "updated_at": datetime.now(UTC).isoformat(),
    }), sync_dir=False)
