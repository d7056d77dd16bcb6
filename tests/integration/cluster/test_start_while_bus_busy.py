"""An instance whose start meets a bus that does not answer for a while still comes up.

On a fresh 3-server cluster beside a CPU hog, every controller starting together met a
JetStream time-out (or a 503) in a step of its start after the schema -- opening a bucket,
registering, recording READY -- and exited; none was left to be elected.  Each such step is
now tried again while the bus does not answer.  Here the server is stopped (SIGSTOP) for
longer than a request's time-out at the moment a step is asked, then let go.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest

from colony.bus import names
from colony.cluster.membership import NodeRecord, NodeState
from colony.cluster.node import NodeRuntime
from colony.settings import Settings
from colony_controller.controller import Controller
from tools import stop_process

PAUSE = 8.0  # longer than a JetStream request's 5 s time-out


class PausesTheBus:
    """Stops the nats-server at a chosen point of the workload's start, for ``PAUSE`` seconds."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.timer: threading.Timer | None = None

    def pause(self) -> None:
        stop_process(self.pid)
        self.timer = threading.Timer(PAUSE, self.resume)
        self.timer.start()

    def resume(self) -> None:
        try:
            os.kill(self.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


class ControllerOpeningItsBuckets(Controller):
    """The bus stops answering just as the controller opens its buckets."""

    def __init__(self, bus: PausesTheBus) -> None:
        super().__init__()
        self.bus = bus

    async def start(self, runtime):
        self.bus.pause()
        return await super().start(runtime)


class RecordingReady(Controller):
    """The bus stops answering just as the runtime records READY."""

    def __init__(self, bus: PausesTheBus) -> None:
        super().__init__()
        self.bus = bus

    async def start(self, runtime):
        addresses = await super().start(runtime)
        self.bus.pause()
        return addresses


@pytest.mark.parametrize("workload", [ControllerOpeningItsBuckets, RecordingReady])
async def test_a_start_waits_out_a_bus_that_does_not_answer(nats_server, tmp_path, workload):
    bus = PausesTheBus(nats_server.process.pid)
    settings = Settings(nats_url=nats_server.url, node_id="controller-1", data_dir=tmp_path, ops_port=0)
    runtime = NodeRuntime(settings, workload(bus))
    try:
        await runtime.start()
        assert bus.timer is not None, "the bus was stopped during the start"
        assert runtime.state == NodeState.READY
        entry = await runtime._nodes.get(names.node_key("controller-1"))
        assert NodeRecord.decode(entry.value).state == NodeState.READY, "and the bucket says so"
    finally:
        if bus.timer is not None:
            bus.timer.cancel()
        bus.resume()
        await runtime.shutdown()
