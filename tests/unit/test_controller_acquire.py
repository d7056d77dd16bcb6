"""The controller's shell around a won election, without sockets: winning the lease does not
wait on the CLUSTER stream.  After a NATS server dies that stream may take a 5 s request
time-out to answer, longer than a tenure (lease TTL minus safety margin): a new holder that
waited for it before its first renewal would lose the lease it had just won."""

from __future__ import annotations

import asyncio
import logging

from colony.cluster.election import Acquire, Election
from colony.cluster.epoch import EpochGuard
from colony.metrics import Metrics
from colony.settings import Settings
from colony.tasks import TaskOwner
from colony_controller.controller import Controller
from colony_controller.metrics import ControllerMetrics


class WinningLease:
    epoch = 0

    async def try_acquire(self, take_over_revision=None):
        self.epoch = 7
        return True


class FakeNC:
    async def subscribe(self, subject, cb=None):
        return None


class StalledBusRuntime:
    """A runtime whose event publishes never get an answer."""

    def __init__(self) -> None:
        self.node_id = "controller-1"
        self.settings = Settings(node_id=self.node_id)
        self.nc = FakeNC()
        self.epochs = EpochGuard()
        self.tasks = TaskOwner(logging.getLogger("test"))
        self.publishing = asyncio.Event()

    def spawn(self, name, body, *, restart=False, context=None):
        return self.tasks.spawn(name, body, restart=restart, context=context)

    async def publish_event(self, subject, event):
        self.publishing.set()
        await asyncio.Event().wait()  # the stream never answers


async def test_a_won_election_does_not_wait_for_its_event_to_be_published():
    rt = StalledBusRuntime()
    controller = Controller()
    controller.runtime, controller.lease = rt, WinningLease()
    controller.election = Election(rt.node_id, ttl=3, renew_interval=0.5)
    controller.metrics = Metrics().once(ControllerMetrics)
    await asyncio.wait_for(controller._acquire(Acquire(None, "vacant")), 10)
    assert rt.epochs.highest == 7
    await asyncio.wait_for(rt.publishing.wait(), 10)  # the event is still said, beside the loop
    await rt.tasks.close()
