"""The runtime every Colony instance shares: membership, heartbeats, commands, drain.

A service supplies a ``Workload`` (what it listens on, how much work it has, how to stop
taking more); ``NodeRuntime`` does the rest:

* registers the instance in ``cluster_nodes`` (STARTING, then READY once the workload runs),
* heartbeats with a compare-and-set on its own last revision, and re-registers with a new
  incarnation if the controller declared it FAILED while it was silent,
* serves epoch-stamped commands from the controller on ``colony.node.cmd.<id>`` and refuses
  stale epochs (it also learns the current epoch by watching the lease bucket),
* drains on command ("Make Not-Ready"): NOT_READY, no new work, waits until the workload is
  empty (or hands over what is left after ``drain_timeout``), then reports ``drained``,
* on SIGTERM: drains briefly, writes STOPPED, closes,
* owns the instance's background work (``runtime.spawn``, a ``colony.tasks.TaskOwner``): a
  task that fails is logged, counted (``colony_task_failures_total``), kept on the record's
  ``faults`` (``colony status`` shows them) and published as ``TaskFailed``; a drain that
  fails sets ``drain_error`` and publishes ``DrainFailed`` instead of hanging NOT_READY.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from contextlib import suppress
from typing import Protocol

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from prometheus_client import Counter
from pydantic import ValidationError

from colony import __version__
from colony.bus import names
from colony.bus.connection import BUS_UNAVAILABLE, connect, while_unavailable
from colony.bus.schema import ensure_schema, manages_schema
from colony.cluster.commands import NodeCommand, Reply
from colony.cluster.epoch import EpochGuard, StaleEpoch
from colony.cluster.lease import LeaseRecord
from colony.cluster.membership import NodeRecord, NodeState
from colony.cluster.ops_http import OpsServer
from colony.metrics import BusRequestMetrics, Metrics
from colony.events import DrainFailed, Event, NodeDrained, NodeStateChanged, TaskFailed, utcnow
from colony.metrics import gauge
from colony.settings import Settings
from colony.tasks import FAULTS_KEPT, TaskFault, TaskOwner, describe
from colony.telemetry import inject_headers

log = logging.getLogger("colony.node")


class Workload(Protocol):
    """What a service plugs into the runtime."""

    role: str

    async def start(self, runtime: NodeRuntime) -> dict[str, str]:
        """Open listeners and background work; return {protocol: "host:port"}."""

    def set_accepting(self, accepting: bool) -> None:
        """Stop (False) or resume (True) taking new work."""

    def active_work(self) -> int:
        """Sessions, requests or jobs still in progress."""

    async def hand_over(self) -> None:
        """Drain timed out: move or end what is left so the instance can stop."""

    async def stop(self) -> None:
        """Close everything; called once, after the instance left the cluster."""


# How long each bus step of a start is tried again while the bus does not answer, as each
# step of ``ensure_schema`` is.
START_STEP_DEADLINE = 60.0


def default_node_id(role: str) -> str:
    return f"{role}-{socket.gethostname()}-{os.getpid()}"


class NodeRuntime:
    def __init__(self, settings: Settings, workload: Workload, nc: Client | None = None) -> None:
        self.settings = settings
        self.workload = workload
        self.role = workload.role
        self.node_id = settings.node_id or default_node_id(self.role)
        self.nc: Client | None = nc
        self.epochs = EpochGuard()
        self.state = NodeState.STARTING
        self.stopping = asyncio.Event()
        self._own_nc = nc is None
        self._bus_failed_while_stopping = False
        self._nodes: KeyValue | None = None
        self._revision = 0
        self._record: NodeRecord | None = None
        self._drain_task: asyncio.Task | None = None
        self._write_lock = asyncio.Lock()
        self._wake_heartbeat = asyncio.Event()  # a fault to show: write the record now
        self.metrics = Metrics()
        self.task_owner = TaskOwner(log, on_fault=self._on_fault)
        self._task_failures = Counter("colony_task_failures", "Failures of owned background tasks.",
                                      ["task"], registry=self.metrics.registry)
        self.metrics.add_callback(lambda: [gauge(
            "colony_tasks_running", "Owned background tasks running.", {}, len(self.task_owner.running()))])
        self.ops = OpsServer(self)

    def spawn(self, name: str, body, *, restart: bool = False, context=None) -> asyncio.Task:
        """Start owned background work (see ``colony.tasks.TaskOwner.spawn``); its failures
        are logged, counted and shown by ``colony status``."""
        return self.task_owner.spawn(name, body, restart=restart, context=context)

    # --- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT (or ``stopping`` is set), then leave cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stopping.set)
        starting = asyncio.ensure_future(self.start())
        stop_requested = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({starting, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # run() itself cancelled while starting: as before, no stop
            starting.cancel()
            stop_requested.cancel()
            raise
        stop_requested.cancel()
        if starting.done():
            starting.result()  # a failed start raises: nothing registered to take down
        else:  # SIGTERM while starting (the bus may be gone, start waiting on it): stop now
            starting.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await starting
        try:
            await self.stopping.wait()
        finally:
            await self.shutdown()

    async def start(self) -> None:
        if self.nc is None:
            self.nc = await connect(self.settings, name=self.node_id)
        js = self.nc.jetstream()
        await ensure_schema(js, self.settings, manage=manages_schema(self.settings, self.role))
        # Each step below is tried again while the bus does not answer (``while_unavailable``):
        # on a busy cluster every instance starting together meets the same time-out, and an
        # instance that gave up would exit -- all three controllers did, and none was elected.
        self._nodes = await while_unavailable(lambda: js.key_value(names.BUCKET_NODES), names.BUCKET_NODES,
                                              START_STEP_DEADLINE, logger=log)
        self._js = js
        addresses = {"ops": await self.ops.start(self.settings.host, self.settings.ops_port, self.settings.advertised_host)}
        self._record = NodeRecord(
            id=self.node_id, role=self.role, state=NodeState.STARTING, host=socket.gethostname(),
            pid=os.getpid(), version=__version__, started_at=utcnow(), addresses=addresses,
        )
        await while_unavailable(self._register, f"registering {self.node_id}", START_STEP_DEADLINE, logger=log)
        await self.nc.subscribe(names.node_command_subject(self.node_id), cb=self._on_command)
        self.spawn("watch-epochs", self._watch_epochs, restart=True)
        # Heartbeat from registration on: a workload that takes long to start (an admin API
        # catching up with its read model on a busy machine) must not be declared FAILED.
        self.spawn("heartbeat", self._heartbeat_loop, restart=True)
        addresses.update(await self.workload.start(self))
        self._record.addresses = addresses
        await self._transition(NodeState.READY, "started", deadline=START_STEP_DEADLINE)
        log.info("%s READY at %s", self.node_id, addresses)

    async def shutdown(self) -> None:
        """Graceful stop: take no new work, let short work finish, say STOPPED, close.

        The whole stop takes at most ``stop_timeout``: whoever sent SIGTERM may be gone (a
        supervisor killed by SIGKILL signals its instances through PR_SET_PDEATHSIG, and the
        embedded nats-server gets the same signal), so nobody may come to kill an instance
        whose stop waits on a bus that no longer answers. Each step is attempted whatever the
        one before did, and a failure is logged: a stop always gets as far as closing. Once a
        record write fails (or the bus is gone), the rest are skipped: each would wait out a
        request timeout for nothing, and the record's TTL tells the cluster instead.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.stop_timeout
        # The last seconds are kept for stopping the workload and closing the bus.
        wind_down_until = deadline - min(5.0, self.settings.stop_timeout / 3)
        try:
            self.workload.set_accepting(False)
            if self.state in (NodeState.READY, NodeState.NOT_READY):
                await self._record_while_stopping(NodeState.NOT_READY, "stopping", wind_down_until, keep_drained=True)
                async with asyncio.timeout_at(wind_down_until):
                    await self._wait_empty(min(self.settings.drain_timeout, 10.0))
        except TimeoutError:
            log.warning("%s: stopping with %s sessions still open (stop_timeout %.0f s)",
                        self.node_id, self._active_work_or_unknown(), self.settings.stop_timeout)
        except Exception:
            log.exception("%s: could not finish work before stopping", self.node_id)
        await self.task_owner.close()  # the drain task too
        await self._record_while_stopping(NodeState.STOPPED, "stopped", min(deadline, loop.time() + 2.0))
        try:
            async with asyncio.timeout_at(max(deadline, loop.time() + 1.0)):
                await self.workload.stop()
        except TimeoutError:
            log.warning("%s: the %s workload did not stop within stop_timeout (%.0f s); what it still held "
                        "is left to its leases' TTLs", self.node_id, self.role, self.settings.stop_timeout)
        except Exception:
            log.exception("%s: the %s workload failed to stop cleanly", self.node_id, self.role)
        with suppress(TimeoutError):
            await asyncio.wait_for(self.ops.stop(), 2.0)
        if self._own_nc and self.nc is not None:
            with suppress(Exception):
                if self._bus_up() and not self._bus_failed_while_stopping:
                    await asyncio.wait_for(self.nc.drain(), 5.0)  # the client's own drain_timeout is 3 s
                else:  # drain() refuses a reconnecting client, which would keep trying
                    await asyncio.wait_for(self.nc.close(), 2.0)

    async def _record_while_stopping(self, state: NodeState, reason: str, until: float, keep_drained: bool = False) -> None:
        """One record write of a stop, given up at ``until`` (a loop time); skipped once one failed."""
        if self._record is None:  # stopped while starting, before it registered
            return
        if not self._bus_up() or self._bus_failed_while_stopping:
            self.state = self.record.state = state
            return
        try:
            async with asyncio.timeout_at(until):
                await self._transition(state, reason, keep_drained=keep_drained)
        except Exception as exc:
            self._bus_failed_while_stopping = True
            log.warning("%s: could not record %s on the bus (%s); its TTL tells the cluster instead",
                        self.node_id, state.value, type(exc).__name__)

    def _active_work_or_unknown(self) -> str:
        try:
            return str(self.workload.active_work())
        except Exception:
            return "some"

    def _bus_up(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    # --- record keeping -------------------------------------------------------------------

    @property
    def record(self) -> NodeRecord:
        assert self._record is not None
        return self._record

    async def _register(self) -> None:
        """First write of this incarnation: overwrite whatever an earlier process left."""
        self.record.heartbeat_at = utcnow()
        self._revision = await self._nodes.put(names.node_key(self.node_id), self.record.encode())
        await self.publish_event(names.cluster_event_subject("node"), NodeStateChanged(
            node_id=self.node_id, role=self.role, old=None, new=self.state, reason="registered", by=self.node_id))

    async def _write(self) -> None:
        """CAS on our own last revision; on conflict, find out who wrote and re-register."""
        async with self._write_lock:
            self.record.heartbeat_at = utcnow()
            try:
                self.record.load = {"work": float(self.workload.active_work())}
            except Exception:  # a workload still starting may not know yet: the heartbeat goes on
                self.record.load = {"work": 0.0}
            try:
                self._revision = await self._nodes.update(
                    names.node_key(self.node_id), self.record.encode(), last=self._revision)
            except (KeyWrongLastSequenceError, KeyNotFoundError):
                await self._rejoin()

    async def _rejoin(self) -> None:
        try:
            entry = await self._nodes.get(names.node_key(self.node_id))
            seen = NodeRecord.decode(entry.value).state if entry.value else None
        except (KeyNotFoundError, ValidationError):
            seen = None
        self.record.incarnation += 1
        self.record.reason = f"re-registered after the cluster saw us as {seen or 'gone'}"
        log.warning("%s: %s (incarnation %d)", self.node_id, self.record.reason, self.record.incarnation)
        self._revision = await self._nodes.put(names.node_key(self.node_id), self.record.encode())
        await self.publish_event(names.cluster_event_subject("node"), NodeStateChanged(
            node_id=self.node_id, role=self.role, old=seen, new=self.state, reason=self.record.reason, by=self.node_id))

    async def _transition(self, new: NodeState, reason: str, keep_drained: bool = False, deadline: float = 0.0) -> None:
        """Record ``new``; with a ``deadline``, the write is tried again for that long while
        the bus does not answer (a CAS that landed unseen is a conflict ``_write`` resolves)."""
        old = self.state
        self.state = new
        self.record.state = new
        self.record.reason = reason
        if not keep_drained:
            self.record.drained = False
        if deadline:
            await while_unavailable(self._write, f"recording {new.value}", deadline, logger=log)
        else:
            await self._write()
        if old != new:
            await self.publish_event(names.cluster_event_subject("node"), NodeStateChanged(
                node_id=self.node_id, role=self.role, old=old, new=new, reason=reason, by=self.node_id))

    async def publish_event(self, subject: str, event: Event) -> None:
        try:
            await self._js.publish(subject, event.encode(), headers=inject_headers() or None)
        except Exception as exc:  # an event we cannot log must not stop the node
            log.warning("could not publish %s: %s", event.type, exc)

    async def _heartbeat_loop(self) -> None:
        """Beat every ``heartbeat_interval``, also while the bus does not answer.

        A beat the bus did not take (``BUS_UNAVAILABLE``: for seconds after a NATS server
        dies, the nodes bucket's stream has no leader) is tried again at the next turn, not
        given to the task owner's restart: its back-off grows to 5 s, as long as the default
        ``node_ttl``, so this live instance's first beat after the stream is back would come
        too late and the controller would declare it FAILED (seen after killing one of three
        servers: an edge and a standby controller FAILED, then re-registered)."""
        failing = False
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake_heartbeat.wait(), self.settings.heartbeat_interval)
            self._wake_heartbeat.clear()
            try:
                await self._write()
            except BUS_UNAVAILABLE as exc:
                if not failing:
                    log.warning("%s: heartbeat not taken (%s); trying again every %gs", self.node_id,
                                describe(exc), self.settings.heartbeat_interval)
                failing = True
                continue
            if failing:
                log.info("%s: heartbeats are taken again", self.node_id)
                failing = False

    async def _on_fault(self, fault: TaskFault) -> None:
        """An owned task failed: count it, show it on the record, say it on the CLUSTER stream."""
        self._task_failures.labels(task=fault.task).inc()
        if self._record is None:  # failed before the instance registered: the log has it
            return
        self.record.faults = [*self.record.faults, fault][-FAULTS_KEPT:]
        self.record.fault_count += 1
        self._wake_heartbeat.set()
        await self.publish_event(names.cluster_event_subject("task"), TaskFailed(
            node_id=self.node_id, role=self.role, task=fault.task, error=fault.error, context=fault.context,
            count=fault.count, restarting=fault.restarting))

    async def _watch_epochs(self) -> None:
        """Learn the controller epoch from the lease bucket, so stale commands are refused
        even if this node never heard from the new controller."""
        kv = await self._js.key_value(names.BUCKET_LEASES)
        watcher = await kv.watch(names.CONTROLLER_LEASE_KEY)
        try:
            async for entry in watcher:
                if entry is None or not entry.value:
                    continue
                with suppress(ValidationError):
                    self.epochs.observe(LeaseRecord.model_validate_json(entry.value).epoch or entry.revision)
        finally:
            with suppress(Exception):
                await watcher.stop()

    # --- commands -------------------------------------------------------------------------

    async def _on_command(self, msg: Msg) -> None:
        # Counted like every answered bus request (RED), under the subjects' pattern: one
        # series per process, not one per node id.
        with self.metrics.once(BusRequestMetrics).observe(names.NODE_COMMANDS) as request:
            try:
                cmd = NodeCommand.model_validate_json(msg.data)
                self.epochs.admit(cmd.epoch)
            except StaleEpoch as exc:
                log.warning("%s refused a command: %s", self.node_id, exc)
                request.refused()
                await msg.respond(Reply(ok=False, status=409, error=str(exc)).model_dump_json().encode())
                return
            except ValidationError as exc:
                request.refused()
                await msg.respond(Reply(ok=False, status=400, error=f"bad command: {exc.errors()[0]['msg']}").model_dump_json().encode())
                return
            if cmd.command == "drain":
                await self.begin_drain()
            elif cmd.command == "ready":
                await self.make_ready()
            await msg.respond(Reply(ok=True, data=self.record.model_dump(mode="json")).model_dump_json().encode())

    async def begin_drain(self) -> None:
        # A drain that failed may be asked for again; one still running is left alone.
        retry = self.state == NodeState.NOT_READY and self.record.drain_error and not (
            self._drain_task and not self._drain_task.done())
        if self.state != NodeState.READY and not retry:
            return
        self.workload.set_accepting(False)
        self.record.drain_error = ""
        await self._transition(NodeState.NOT_READY, "drain requested")
        self._drain_task = self.spawn("drain", self._finish_drain)

    async def make_ready(self) -> None:
        if self.state != NodeState.NOT_READY:
            return
        if self._drain_task:
            self._drain_task.cancel()
        self.record.drain_error = ""
        self.workload.set_accepting(True)
        await self._transition(NodeState.READY, "made ready")

    async def _wait_empty(self, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.workload.active_work() > 0:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def _finish_drain(self) -> None:
        try:
            if not await self._wait_empty(self.settings.drain_timeout):
                log.warning("%s: drain timed out with %d in progress; handing over", self.node_id, self.workload.active_work())
                await self.workload.hand_over()
        except Exception as exc:
            # Report, then re-raise so the task owner logs and records it as a fault too:
            # `colony drain` sees drain_error and stops waiting.
            self.record.drain_error = describe(exc)
            await self._transition(NodeState.NOT_READY, f"drain failed: {self.record.drain_error}", keep_drained=True)
            await self.publish_event(names.cluster_event_subject("drain"), DrainFailed(
                node_id=self.node_id, role=self.role, error=self.record.drain_error))
            raise
        self.record.drained = True
        await self._transition(NodeState.NOT_READY, "drained", keep_drained=True)
        await self.publish_event(names.cluster_event_subject("drain"), NodeDrained(node_id=self.node_id, role=self.role))
        log.info("%s drained", self.node_id)
