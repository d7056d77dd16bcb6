"""The mailstore as a ``Workload`` of the node runtime: delivery from MAIL, forwarded
deliveries from other mailstores, account leases, drain.

Drain ("Make Not-Ready"): the queue runner stops fetching, forwarded deliveries are answered
"retry" (the sender routes them again), and once no job is in flight every account is
closed and its lease released, so the other mailstores take the accounts at once instead of
waiting for leases to lapse.  ``active_work`` counts jobs, forwarded deliveries and accounts
still held, so the runtime reports "drained" only when this instance owns nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import suppress

from colony.bus import names
from colony.bus.connection import unsubscribe_all
from colony.bus.pipelined import publish_pipelined
from colony.metrics import BusRequestMetrics
from colony.contracts.auth import AuthClient
from colony.contracts.handoff import Verifier, load_secret
from colony.cluster.ownership import AccountOwnership, MailstoreMembers
from colony.queue import QueueMetrics
from colony.settings import Settings
from colony_mailstore.accounts import AccountManager
from colony_mailstore.delivery import Delivery
from colony_mailstore.directory import Directory
from colony_mailstore.export import AccountExporter
from colony_mailstore.metrics import MailstoreMetrics
from colony_mailstore.moves import MoveServer
from colony_mailstore.partitions import PartitionRunners
from colony_mailstore.imap_server import ImapServer
from colony_mailstore.pop3_server import Pop3InnerServer
from colony_mailstore.sharing import GrantIndex, Sharing
from colony_mailstore.usage import UsageMeter

log = logging.getLogger("colony.mailstore")

_TICK = 0.25  # upkeep period while draining: the release follows the last job this fast
_MEMBERS_EVERY = 1.0  # seconds between recomputations of the READY stores (partitions to fetch)
_MEMBERS_READ = 30.0  # seconds between full reads of cluster_nodes beside the watch (MailstoreMembers)
_USAGE_ACK_WAIT = 5.0  # seconds a usage flush waits for its acks; the unconfirmed are sent again (usage.py)


class MailstoreWorkload:
    role = "mailstore"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.accepting = True
        self.runner: PartitionRunners | None = None   # MAIL, one consumer per partition (partitions.py)
        self.delivery: Delivery | None = None
        self.accounts: AccountManager | None = None
        self._sub = None
        self._shared_sub = None
        self.sharing: Sharing | None = None
        self._forward_tasks: set[asyncio.Task] = set()
        self.pop3: Pop3InnerServer | None = None
        self.imap: ImapServer | None = None
        self._imap_listeners: list[asyncio.Server] = []
        self._pop3_listener: asyncio.Server | None = None
        self.moves: MoveServer | None = None
        self._upkeep_wake = asyncio.Event()

    async def start(self, runtime) -> dict[str, str]:
        nc = runtime.nc
        js = nc.jetstream()
        settings = self.settings
        self.metrics = metrics = MailstoreMetrics(runtime.metrics.registry)
        ownership = AccountOwnership(await js.key_value(names.BUCKET_ACCOUNT_OWNERS), runtime.node_id, settings,
                                     runtime.publish_event)
        directory = Directory(await js.key_value(names.BUCKET_DIRECTORY), default_cos=settings.default_cos)
        self.members = MailstoreMembers(nc, stale_after=settings.node_ttl)
        self.accounts = AccountManager(settings.shared_storage, ownership, directory, metrics,
                                       segment_max_bytes=settings.mail_segment_max_bytes,
                                       max_open=settings.account_max_open)
        self.usage = UsageMeter(lambda batch: publish_pipelined(nc, batch, timeout=_USAGE_ACK_WAIT), runtime.node_id)
        self.delivery = Delivery(nc, runtime.node_id, settings, self.accounts, ownership, self.members, metrics,
                                 self.usage)
        await self.members.refresh()
        self.bus_metrics = runtime.metrics.once(BusRequestMetrics)
        self._sub = await nc.subscribe(names.mailstore_deliver_subject(runtime.node_id), cb=self._on_forward)
        # Renewals get a loop of their own: nothing else (a slow usage flush, a drain's
        # releases) may delay them past the lease.
        runtime.spawn("account leases", self._renew_leases, restart=True)
        runtime.spawn("mailstore upkeep", self._upkeep, restart=True)
        runtime.spawn("mailstore members", self.members.watch, restart=True)
        self.runner = PartitionRunners(nc, settings, runtime.node_id, self.delivery.handle,
                                       QueueMetrics(runtime.metrics.registry))
        await self.runner.start(runtime.spawn, self.members.ready)
        addresses = {**await self._open_access(runtime), **await self._open_imap(runtime)}
        if settings.region_list:
            # a domain move's questions to this region (moves.py); the pull needs the cluster secret
            secret = load_secret(settings.cluster_secret_file) if settings.cluster_secret_file else None
            self.moves = MoveServer(nc, runtime.node_id, settings.region, self.accounts, self.delivery, self.members,
                                    secret, self._sessions_of_domain, runtime.metrics.registry)
            await self.moves.start()
        return addresses

    def _sessions_of_domain(self, domain: str) -> int:
        return sum(server.sessions_of_domain(domain) for server in (self.imap, self.pop3) if server is not None)

    async def _open_access(self, runtime) -> dict[str, str]:
        """The inner POP3 listener for sessions edges hand over (off without a cluster secret)."""
        settings = self.settings
        if settings.cluster_secret_file is None:
            log.warning("no COLONY_CLUSTER_SECRET_FILE: IMAP/POP3 client access is off on this mail store")
            return {}
        verifier = Verifier(load_secret(settings.cluster_secret_file), lambda: int(time.time() * 1000))
        self.pop3 = Pop3InnerServer(verifier, self.accounts, self.delivery.claim, runtime.nc.jetstream().publish,
                                    runtime.node_id, settings.pop3_idle_timeout, lambda: self.accepting)
        self._pop3_listener = await asyncio.start_server(self.pop3.handle, settings.host, settings.pop3_inner_port)
        port = self._pop3_listener.sockets[0].getsockname()[1]
        return {"pop3-inner": f"{settings.advertised_host}:{port}"}

    async def _open_imap(self, runtime) -> dict[str, str]:
        """IMAP: ``imap-inner`` for sessions edges hand over (with a cluster secret) and
        ``imap-direct`` with its own LOGIN (``imap_direct_login``); see ``imap_server``."""
        settings = self.settings
        verifier = None
        if settings.cluster_secret_file is not None:
            verifier = Verifier(load_secret(settings.cluster_secret_file), lambda: int(time.time() * 1000))
        js = runtime.nc.jetstream()
        self.sharing = Sharing(runtime.nc, runtime.node_id, self.accounts, self.delivery,
                               GrantIndex(await js.key_value(names.BUCKET_ACL_GRANTS)), lambda: self.accepting)
        self.imap = ImapServer(self.accounts, self.delivery.claim, runtime.node_id, settings.imap_idle_timeout,
                               lambda: self.accepting, verifier, AuthClient(runtime.nc), runtime.metrics.registry,
                               sharing=self.sharing,
                               exporter=AccountExporter(self.accounts, verifier, runtime.metrics.registry, js=js)
                               if verifier is not None else None,
                               max_mailboxes=settings.imap_max_mailboxes, idle_notify=settings.imap_idle_notify)
        self.sharing.marks_for = self.imap.marks_for
        # Grantees' calls on this store's accounts' shared folders (sharing.py).
        self._shared_sub = await runtime.nc.subscribe(names.mailstore_shared_subject(runtime.node_id),
                                                      cb=self._on_shared)
        runtime.spawn("imap watch", self.imap.watch, restart=True)
        addresses = {}
        for key, handler, port, wanted in (
                ("imap-inner", self.imap.handle_handoff, settings.imap_inner_port, verifier is not None),
                ("imap-direct", self.imap.handle_direct, 0, settings.imap_direct_login)):
            if wanted:
                listener = await asyncio.start_server(handler, settings.host, port)
                self._imap_listeners.append(listener)
                addresses[key] = f"{settings.advertised_host}:{listener.sockets[0].getsockname()[1]}"
        return addresses

    async def _on_forward(self, msg) -> None:
        # nats-py runs one subscription's callbacks one after another: a task per request lets
        # forwarded deliveries to one account share a group commit.
        task = asyncio.create_task(self._serve_forward(msg), name="forwarded delivery")
        self._forward_tasks.add(task)
        task.add_done_callback(self._forward_tasks.discard)  # serve_forward logs its own failures

    async def _on_shared(self, msg) -> None:
        task = asyncio.create_task(self._serve_shared(msg), name="shared-folder call")
        self._forward_tasks.add(task)
        task.add_done_callback(self._forward_tasks.discard)

    async def _serve_shared(self, msg) -> None:
        with self.bus_metrics.observe(names.MAILSTORE_SHARED):
            try:
                await self.sharing.handle(msg)
            except Exception:
                log.exception("shared-folder call failed")

    async def _serve_forward(self, msg) -> None:
        with self.bus_metrics.observe(names.MAILSTORE_DELIVER):
            await self.delivery.serve_forward(msg)

    async def _renew_leases(self) -> None:
        while True:
            await self.accounts.renew()
            await asyncio.sleep(self.settings.account_renew_interval)

    async def _upkeep(self) -> None:
        """Membership, usage flushes, idle release and a drain's release, each on its own
        deadline: the loop sleeps until the nearest one (about once a second) instead of
        ticking every 0.25 s, which was four wake-ups a second each store paid while idle.
        Only a drain needs the short tick (releasing as soon as the last job ends), and
        ``set_accepting`` wakes the loop at once when one begins."""
        loop = asyncio.get_running_loop()
        next_members = next_idle = next_usage = loop.time()
        next_read = loop.time() + _MEMBERS_READ
        while True:
            now = loop.time()
            if now >= next_members:
                next_members = now + _MEMBERS_EVERY
                if now >= next_read:  # the watch keeps the view; a full read now and then in case it missed one
                    next_read = now + _MEMBERS_READ
                    try:
                        await self.members.refresh()
                    except Exception as exc:  # placement keeps the last view meanwhile
                        log.warning("could not read the cluster's mailstores: %s", exc)
                self.runner.rebalance(self.members.update())
            if now >= next_usage:
                next_usage = now + self.settings.usage_flush_interval
                await self.usage.flush()
            if now >= next_idle:
                next_idle = now + min(self.settings.account_idle_release / 4, 30.0)
                await self.accounts.release_idle(self.settings.account_idle_release)
            await self._watch_storage()
            if not self.accepting and self.runner.active_work() == 0 and not self._forward_tasks:
                if self.accounts.ownership.leases:
                    await self.accounts.release_all("drain")
            wake_at = min(next_members, next_usage, next_idle)
            if not self.accepting:
                wake_at = min(wake_at, loop.time() + _TICK)
            self._upkeep_wake.clear()
            with suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wake_at - loop.time())):
                    await self._upkeep_wake.wait()

    async def _watch_storage(self) -> None:
        """Hold delivery while the storage refuses writes; probe it and resume (storage_health)."""
        storage = self.delivery.storage
        if storage.down and not self.runner.paused:
            self.runner.set_paused(True, self.members.ready)
            self.metrics.storage_unavailable.set(1)
        if storage.probe_due():
            down_for = storage.probed(await asyncio.to_thread(storage.probe))
            if down_for is not None:
                log.warning("shared storage takes writes again after %.0fs: delivery resumes", down_for)
                self.runner.set_paused(False, self.members.ready)
                self.metrics.storage_unavailable.set(0)

    def set_accepting(self, accepting: bool) -> None:
        self.accepting = accepting
        self._upkeep_wake.set()
        if self.delivery is not None:
            self.delivery.accepting = accepting
        if self.runner is not None:
            self.runner.set_accepting(accepting, self.members.ready)

    def active_work(self) -> int:
        if self.runner is None:
            return 0
        moving = len(self.moves.tasks) if self.moves is not None else 0
        return self.runner.active_work() + len(self._forward_tasks) + len(self.accounts.ownership.leases) + moving

    async def hand_over(self) -> None:
        await self.accounts.release_all("drain")

    async def stop(self) -> None:
        if self.moves is not None:
            await self.moves.stop()
        for listener in self._imap_listeners:
            listener.close()
        if self.imap is not None:
            self.imap.close()
        if self._pop3_listener is not None:
            self._pop3_listener.close()
        if self.runner is not None:
            await self.runner.stop()
        await unsubscribe_all([self._sub, self._shared_sub])
        if self._forward_tasks:
            await asyncio.wait(set(self._forward_tasks), timeout=5.0)
        if self.accounts is not None:
            await self.accounts.release_all("stopping")
            await self.usage.flush()
