"""Which partitions of a region's MAIL this mail store fetches: one queue runner each.

Why: with one consumer shared by every mail store, a job went to whichever store fetched it
first, and with three stores two jobs in three were then forwarded to the account's owner
over the bus (a request and a reply carrying the message, decoded on both sides): CPU per
message rose about 30 % from one mail store to three.  Now the edge publishes each job in
the partition of its first recipient (``names.mail_partition``), every partition has a
durable consumer of its own, and a store fetches its share of the partitions among the
READY stores (``ownership.consumes_partition``: rendezvous hashing with bounded loads, so
three stores take 3, 3 and 2 of the 8 rather than 4, 3 and 1) -- the same choice that places an
unowned account (``ownership.place``).  So a job is normally fetched by the owner of its
accounts and stored without a forward.

Correctness does not rest on this: the single writer is whoever holds the account's lease,
and a job fetched by another store is forwarded to the owner exactly as before (after a
membership change, until the leases follow, and for the other recipients of a job).  While
two stores' views of the membership differ, both may fetch one partition (a shared pull
consumer splits its jobs between them); a partition whose store died or drains is fetched by
its next choice as soon as the members' heartbeats say so (``MailstoreMembers``), and its
jobs wait in the stream meanwhile.

The unpartitioned subject of older edges keeps its consumer (``mailstore-<region>``), which
every store fetches.

Memory: the partition runners share one ``JobBudget`` of ``mailstore_delivery_concurrency``
jobs in flight, so a store holds about that many whatever the membership, and one busy
partition may use all of it (its fetches stay as large as one shared runner's were: splitting
the concurrency evenly made every fetch small and doubled nats-server's CPU per message with
one store).  Runners fetching at the same moment may exceed the budget by their batches;
each runner's own concurrency (the same number) is the hard bound.  The unpartitioned
consumer has a small concurrency of its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from colony.bus import names
from colony.cluster.ownership import consumes_partition
from colony.queue import JobBudget, QueueMetrics, QueuePolicy, QueueRunner
from colony.settings import Settings

_MIN_SHARE = 4
# Seconds an idle partition's long poll waits on the server before it is asked again: one
# pull request and one 408 per partition fetched per LONG_POLL is what an idle store costs the
# bus.  A job that arrives meanwhile is handed over at once (colony.queue.pull).  When a runner
# stops fetching (a drain, a partition passed on), its open poll may still bring jobs until it
# expires: they are handled (forwarded if need be) as any; once the runner has stopped, the
# server sees no subscriber for the poll and passes it over.
LONG_POLL = 5.0


class PartitionRunners:
    def __init__(self, nc, settings: Settings, node_id: str, handler, metrics: QueueMetrics) -> None:
        self.node_id = node_id
        self.total = settings.mailstore_delivery_concurrency
        policy = QueuePolicy.from_settings(settings, concurrency=self.total)
        region = settings.region

        self.budget = JobBudget(self.total)

        def runner(durable: str, filter_subject: str, concurrency: int, budget: JobBudget | None) -> QueueRunner:
            return QueueRunner(nc, stream=names.STREAM_MAIL, durable=durable, filter_subject=filter_subject,
                               handler=handler, policy=replace(policy, concurrency=concurrency), metrics=metrics,
                               name="mail", budget=budget, fetch_timeout=LONG_POLL)

        self.unpartitioned = runner(f"{names.MAILSTORE_CONSUMER}-{region}", names.mail_unpartitioned_filter(region),
                                    max(_MIN_SHARE, self.total // 8), None)
        self.partitions = [runner(f"{names.MAILSTORE_CONSUMER}-{region}-p{p}", names.mail_partition_filter(region, p),
                                  self.total, self.budget) for p in range(names.MAIL_PARTITIONS)]
        self.accepting = True
        self.paused = False   # the storage refuses writes (storage_health): fetch nothing
        self.fetching: frozenset[int] = frozenset()
        for r in self.partitions:
            r.set_accepting(False)  # until rebalance() says which are ours

    @property
    def runners(self) -> list[QueueRunner]:
        return [self.unpartitioned, *self.partitions]

    async def start(self, spawn, ready: Iterable[str]) -> None:
        for r in self.runners:
            await r.start(spawn)
        self.rebalance(ready)

    def rebalance(self, ready: Iterable[str]) -> frozenset[int]:
        """Fetch the partitions that are ours among ``ready`` (the READY mail stores; we count
        ourselves in even while starting, so a store alone fetches everything at once)."""
        ready = tuple(ready)
        wanted = frozenset(p for p in range(names.MAIL_PARTITIONS)
                           if consumes_partition(p, self.node_id, ready)) if self.fetches else frozenset()
        for p, r in enumerate(self.partitions):
            r.set_accepting(p in wanted)
        self.fetching = wanted
        return wanted

    @property
    def fetches(self) -> bool:
        return self.accepting and not self.paused

    def set_accepting(self, accepting: bool, ready: Iterable[str] = ()) -> None:
        self.accepting = accepting
        self.unpartitioned.set_accepting(self.fetches)
        self.rebalance(ready)

    def set_paused(self, paused: bool, ready: Iterable[str] = ()) -> None:
        """Stop (or resume) fetching while the store stays READY: its partitions' jobs wait
        in the stream.  Unlike a drain, the accounts stay here: the storage is usually shared,
        so another store could not write them either."""
        self.paused = paused
        self.unpartitioned.set_accepting(self.fetches)
        self.rebalance(ready)

    def active_work(self) -> int:
        return sum(r.active_work() for r in self.runners)

    async def stop(self) -> None:
        for r in self.runners:
            await r.stop()
