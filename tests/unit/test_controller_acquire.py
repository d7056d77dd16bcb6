"""The controller's election shell, without sockets, when a NATS server just died and streams
answer nothing for seconds (a 5 s request time-out is longer than a tenure, lease TTL minus
safety margin): winning the lease does not wait on the CLUSTER stream (a new holder that
waited before its first renewal would lose the lease it had just won), and a standby's read of
the nodes before it acts gives up within a second."""

from __future__ import annotations

import asyncio
import logging

from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import KeyNotFoundError

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


class KV:
    async def get(self, key):
        raise KeyNotFoundError


class SilentJetStream:
    """The nodes bucket's stream has no leader: every request waits out its time-out."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    async def key_value(self, bucket):
        await asyncio.sleep(0)  # the time-out itself is not waited for here: only who set it
        raise NatsTimeout


class SilentNodesNC(FakeNC):
    def __init__(self) -> None:
        self.asked: list[float] = []

    def jetstream(self, timeout: float = 5.0, **_):
        self.asked.append(timeout)
        return SilentJetStream(timeout)


async def test_a_standby_ranks_on_a_read_of_the_nodes_that_gives_up_within_a_second():
    # After a NATS server dies the nodes bucket's stream may answer nothing for seconds; a
    # standby that gave that read the JetStream default of 5 s would start every takeover late.
    rt = StalledBusRuntime()
    rt.nc = SilentNodesNC()
    controller = Controller()
    controller.runtime, controller._leases = rt, KV()
    controller.election = Election(rt.node_id, ttl=3, renew_interval=0.5)
    action = await controller._standby_action()
    assert isinstance(action, Acquire) and action.how == "vacant", "the watch's order stands"
    assert rt.nc.asked and max(rt.nc.asked) <= 1.0
