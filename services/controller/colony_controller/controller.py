"""The cluster controller: one active, the others standing by.

Election
    The asyncio shell of ``colony.cluster.election.Election``: every
    ``controller_probe_interval`` it reads the lease, asks the policy what to do, does it
    (a probe of the alive subjects it names, one CAS write on the lease, or nothing) and
    tells it the outcome.  The rules -- rank delays, fast takeover on proof of absence,
    takeover after an unchanged revision, self-fencing -- are the policy's docstring.  Every
    controller answers on its own ``colony.ctl.alive.<id>`` subject from start to stop; a
    request there that gets "no responders" is the proof of absence.

Duties while active
    * declare instances FAILED when their heartbeats stop for ``node_ttl``: each marking is a
      fenced decision first (``colony.cluster.decisions.publish_decision``, refused by the
      server once the lease is someone else's), then a CAS on the node record it judged;
    * serve ``colony.ctl.api`` (drain / ready / whoami) and pass the command on to the
      instance stamped with the epoch;
    * in the primary region of a super cluster, drive every domain move under way
      (``domain_mover``): the directory's ``domain.*`` entries are watched from start to
      stop (a standby knows the moves too), and while active one driver task runs per move
      not yet finished, stamped with the lease's epoch.  A controller that takes over starts
      the drivers again, which continue from the move's last event; one that loses the lease
      cancels them (an append it still makes carries the old epoch, and the move's events
      of the newer one make the rules stand it down).
    * in a super cluster, keep the region's cross-region sources reading (``source_keeper``):
      a source the server has given up on for now is set up afresh once its region answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import suppress
from datetime import timedelta

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from colony.bus import names
from colony.bus.connection import unsubscribe_all, while_unavailable
from colony.cluster.commands import ControllerRequest, NodeCommand, Reply
from colony.cluster.decisions import NodeFailed, publish_decision
from colony.cluster.election import (
    Acquire,
    Election,
    LeaseSeen,
    Probe,
    ProbeFirst,
    ProbeResult,
    Renew,
    StepDown,
    StopActing,
    Wait,
)
from colony.cluster.lease import Lease, LeaseLost, read_lease
from colony.cluster.membership import LIVE_STATES, NodeRecord, NodeState
from colony.cluster.node import START_STEP_DEADLINE, NodeRuntime
from colony.cluster.view import read_nodes, standby_order
from colony import domain_move as dm
from colony.contracts.clients import DirectoryClient, DirectoryUnavailable
from colony.contracts.directory import DomainEntry, parse_entry
from colony.contracts.move_requests import MoveRequestError
from colony.events import ControllerElected, NodeStateChanged
from colony.eventstore import EventStore
from colony.metrics import BusRequestMetrics
from colony_controller.domain_mover import DomainMover
from colony_controller.metrics import ControllerMetrics
from colony_controller.move_port import BusMovePort
from colony_controller.source_keeper import SourceKeeper

log = logging.getLogger("colony.controller")

# The direct read of the nodes a standby ranks on before it acts only refines the order its
# watch gave; when the nodes bucket's stream does not answer within this (no leader yet after
# a NATS server died), the watch's order stands.  With the JetStream default of 5 s every
# takeover attempt waited that long first.
RANK_READ_TIMEOUT = 1.0


class Controller:
    role = "controller"

    def __init__(self) -> None:
        self.runtime: NodeRuntime | None = None
        self.lease: Lease | None = None
        self.accepting = True
        self._tasks: list[asyncio.Task] = []  # owned by the runtime; cancelled first in stop()
        self._api_sub: Subscription | None = None
        self._nodes: dict[str, tuple[NodeRecord, int]] = {}  # id -> (record, revision)
        self._last_seen: dict[str, float] = {}  # id -> monotonic time we last saw a heartbeat
        self.election: Election | None = None
        self.metrics: ControllerMetrics | None = None
        self._moving: dict[str, str] = {}        # domain -> id of its move under way (the directory's)
        self._finished: set[tuple[str, str]] = set()  # (domain, move id) a driver saw finished
        self._drivers: dict[str, asyncio.Task] = {}   # domain -> its driver, while active

    # --- Workload ---------------------------------------------------------------------------

    async def start(self, runtime: NodeRuntime) -> dict[str, str]:
        self.runtime = runtime
        self.metrics = runtime.metrics.once(ControllerMetrics)
        runtime.metrics.add_callback(ControllerMetrics.node_gauges(
            lambda: self.is_active, lambda: [record for record, _ in self._nodes.values()]))
        s = runtime.settings
        js = runtime.nc.jetstream()
        self._leases: KeyValue = await while_unavailable(lambda: js.key_value(names.BUCKET_LEASES), names.BUCKET_LEASES,
                                                         START_STEP_DEADLINE, logger=log)
        self._nodes_kv: KeyValue = await while_unavailable(lambda: js.key_value(names.BUCKET_NODES), names.BUCKET_NODES,
                                                           START_STEP_DEADLINE, logger=log)
        self.lease = Lease(self._leases, names.CONTROLLER_LEASE_KEY, runtime.node_id,
                           ttl=s.controller_lease_ttl, safety_margin=s.controller_safety_margin,
                           js=js, bucket=names.BUCKET_LEASES)
        self.election = Election(runtime.node_id, ttl=s.controller_lease_ttl, renew_interval=s.controller_renew_interval,
                                 rank_delay=s.controller_rank_delay)
        await runtime.nc.subscribe(names.controller_alive_subject(runtime.node_id), cb=self._on_alive)
        self._tasks = [
            runtime.spawn("watch-nodes", self._watch_nodes, restart=True),
            runtime.spawn("election", self._election_loop, restart=True),
            runtime.spawn("failure-detector", self._failure_detector, restart=True),
        ]
        if len(s.region_list) > 1:
            # A source the server gave up on for now reads again as soon as its region answers.
            keeper = SourceKeeper(runtime.nc, s)
            self._tasks.append(runtime.spawn("region-sources", lambda: keeper.run(active=lambda: self.is_active),
                                             restart=True))
        if s.region_list and s.region == s.primary:
            self._tasks += [runtime.spawn("domain-move-watch", self._watch_moves, restart=True),
                            runtime.spawn("domain-moves", self._run_moves, restart=True)]
        return {}

    def set_accepting(self, accepting: bool) -> None:
        """A drained controller gives the lease up and stops standing for election."""
        self.accepting = accepting
        if not accepting and self.lease and self.lease.epoch:
            self.runtime.spawn("step-down", lambda: self._step_down("not ready (drain or stop)"))

    def active_work(self) -> int:
        # While it still holds the lease a draining controller is not empty.
        return 1 if (not self.accepting and self.lease and self.lease.epoch) else 0

    async def hand_over(self) -> None:
        await self._step_down("drain timed out")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with suppress(asyncio.CancelledError, Exception):
                await task
        if self.lease and self.lease.epoch:
            await self._step_down("stopping")

    # --- election ---------------------------------------------------------------------------

    @property
    def is_active(self) -> bool:
        return bool(self.lease and self.lease.held)

    async def _election_loop(self) -> None:
        s = self.runtime.settings
        while True:
            wait_until = None
            try:
                wait_until = await self._election_step()
            except asyncio.CancelledError:
                raise
            except (NatsTimeout, NatsError) as exc:  # the bus is busy or reconnecting: try again
                log.warning("election step: %s; retrying", exc or type(exc).__name__)
            except Exception:
                log.exception("election step failed; retrying")
            pause = s.controller_probe_interval
            if wait_until is not None:
                pause = min(pause, max(0.0, wait_until - time.monotonic()))
            await asyncio.sleep(pause)

    async def _election_step(self) -> float | None:
        """One round of the policy; returns when it wants to be asked again (None: the usual interval)."""
        if self.lease.epoch:
            action = self.election.holder_step(time.monotonic(), accepting=self.accepting, tenure=self.lease.tenure)
        else:
            action = await self._standby_action()
        if isinstance(action, Renew):
            try:
                await self.lease.renew()
            except LeaseLost as exc:
                await self._on_deposed(str(exc))
        elif isinstance(action, StopActing):
            self.lease.forget()
            await self._on_deposed(action.why)
        elif isinstance(action, StepDown):
            await self._step_down(action.why)
        elif isinstance(action, Acquire):
            await self._acquire(action)
        elif isinstance(action, Wait):
            return action.until
        return None

    async def _standby_action(self) -> Acquire | Wait:
        current = await read_lease(self._leases, names.CONTROLLER_LEASE_KEY)
        lease = LeaseSeen(current.record.holder, current.revision, current.epoch) if current else None
        holder = lease.holder if lease else None
        standbys = [r.id for r in standby_order((r for r, _ in self._nodes.values()), holder)]
        probes: dict[str, ProbeResult] = {}
        fresh = False
        while True:
            action = self.election.standby_step(time.monotonic(), accepting=self.accepting, lease=lease,
                                                standbys=standbys, probes=probes)
            if isinstance(action, Acquire) and not fresh:
                # Our watch of the nodes bucket may lag behind a standby that became READY a
                # moment ago and ranks ahead of us: rank on a direct read before acting, so the
                # Backup Controller shown is the one that moves first.
                fresh = True
                with suppress(Exception):
                    nodes = await read_nodes(self.runtime.nc, timeout=RANK_READ_TIMEOUT)
                    standbys = [r.id for r in standby_order(nodes, holder)]
                continue
            if not isinstance(action, ProbeFirst):
                return action
            answers = await asyncio.gather(*(self._probe(node) for node in action.nodes))
            probes.update(zip(action.nodes, answers))

    async def _probe(self, node_id: str) -> ProbeResult:
        """The controller's answer on its alive subject: GONE when its connection is provably
        closed (no responders), SILENT when it does not answer (paused or partitioned)."""
        try:
            reply = await self.runtime.nc.request(names.controller_alive_subject(node_id), b"", timeout=0.5)
        except NoRespondersError:
            return ProbeResult(Probe.GONE)
        except NatsTimeout:
            return ProbeResult(Probe.SILENT)
        try:
            return ProbeResult(Probe.ANSWERED, epoch=int(json.loads(reply.data).get("epoch", 0)))
        except (ValueError, AttributeError, TypeError):
            return ProbeResult(Probe.SILENT)  # garbled: not proof of anything

    async def _acquire(self, action: Acquire) -> None:
        if not await self.lease.try_acquire(take_over_revision=action.revision):
            return
        self.election.won()
        how, previous = action.how, action.previous
        self.metrics.elections.labels(how or "unknown").inc()
        rt = self.runtime
        rt.epochs.observe(self.lease.epoch)
        now = time.monotonic()
        # We only know heartbeats from now on: give every instance a full TTL before judging.
        self._last_seen = {node_id: now for node_id in self._nodes}
        self._api_sub = await rt.nc.subscribe(names.CONTROLLER_API, cb=self._on_api)
        log.warning("%s is the controller now (epoch %d, %s%s)", rt.node_id, self.lease.epoch, how,
                    f", after {previous}" if previous else "")
        # Said beside the election loop, not in it: with the CLUSTER stream's leader on a server
        # that just died the publish may wait out a 5 s request time-out, longer than the whole
        # tenure, and the first renewal would come too late (the lease lapses, another round).
        elected = ControllerElected(node_id=rt.node_id, epoch=self.lease.epoch, previous=previous, how=how)
        rt.spawn("controller-elected event",
                 lambda: rt.publish_event(names.cluster_event_subject("controller"), elected))

    async def _on_deposed(self, why: str) -> None:
        log.warning("%s stops acting as controller: %s", self.runtime.node_id, why)
        await self._drop_duties()

    async def _step_down(self, why: str) -> None:
        log.info("%s gives up the controller lease: %s", self.runtime.node_id, why)
        await self._drop_duties()
        if self.runtime.nc.is_connected:
            await self.lease.release()
        else:  # a release would wait out a request timeout; the lease's TTL frees it instead
            self.lease.forget()

    async def _drop_duties(self) -> None:
        for task in self._drivers.values():
            task.cancel()
        self._drivers.clear()
        await unsubscribe_all([self._api_sub])
        self._api_sub = None

    async def _on_alive(self, msg: Msg) -> None:
        with self.runtime.metrics.once(BusRequestMetrics).observe(names.CONTROLLER_ALIVE):
            epoch = self.lease.epoch if self.is_active else 0
            await msg.respond(json.dumps({"node": self.runtime.node_id, "epoch": epoch}).encode())

    # --- membership and failure detection ---------------------------------------------------

    async def _watch_nodes(self) -> None:
        watcher = await self._nodes_kv.watchall()
        async for entry in watcher:
            if entry is None:
                continue
            node_id = entry.key
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                self._nodes.pop(node_id, None)
                continue
            try:
                record = NodeRecord.decode(entry.value)
            except ValidationError:
                continue
            self._nodes[record.id] = (record, entry.revision)
            self._last_seen[record.id] = time.monotonic()

    async def _failure_detector(self) -> None:
        s = self.runtime.settings
        while True:
            await asyncio.sleep(min(0.5, s.node_ttl / 4))
            if not self.is_active:
                continue
            now = time.monotonic()
            for record, revision in list(self._nodes.values()):
                if record.state not in LIVE_STATES or record.id == self.runtime.node_id:
                    continue
                if now - self._last_seen.get(record.id, now) > s.node_ttl:
                    await self._declare_failed(record, revision)

    async def _declare_failed(self, record: NodeRecord, revision: int) -> None:
        old = record.state
        failed = record.model_copy(update={"state": NodeState.FAILED, "reason": f"no heartbeat for {self.runtime.settings.node_ttl:g}s"})
        epoch = self.lease.epoch
        decision = NodeFailed(epoch=epoch, by=self.runtime.node_id, node_id=record.id, role=record.role,
                              judged_revision=revision, reason=failed.reason)
        try:
            # Fenced: the server refuses it once the lease is someone else's, however long we slept.
            await publish_decision(self.lease, decision)
        except LeaseLost as exc:
            await self._on_deposed(f"declaring {record.id} FAILED was refused: {exc}")
            return
        try:
            # CAS: if the instance wrote in the meantime it is alive after all.
            await self._nodes_kv.update(names.node_key(record.id), failed.encode(), last=revision)
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            return
        log.warning("%s declared %s FAILED (was %s)", self.runtime.node_id, record.id, old)
        self.metrics.declared_failed.inc()
        await self.runtime.publish_event(names.cluster_event_subject("node"), NodeStateChanged(
            node_id=record.id, role=record.role, old=old, new=NodeState.FAILED, reason=failed.reason,
            by=self.runtime.node_id, epoch=epoch))

    # --- domain moves (primary region only) --------------------------------------------------

    async def _watch_moves(self) -> None:
        """Keep ``_moving`` equal to the directory's domains with a move under way."""
        kv = await self.runtime.nc.jetstream().key_value(names.BUCKET_DIRECTORY)
        watcher = await kv.watch(f"{names.AGG_DOMAIN}.*")
        seen: dict[str, str] = {}   # key -> domain, so a deleted key can be forgotten
        try:
            async for entry in watcher:
                if entry is None:
                    continue
                if entry.operation in ("DEL", "PURGE") or not entry.value:
                    self._moving.pop(seen.pop(entry.key, ""), None)
                    continue
                try:
                    value = parse_entry(entry.value)
                except ValueError:
                    continue
                if not isinstance(value, DomainEntry):
                    continue
                seen[entry.key] = value.name
                if value.move is not None and value.move.phase not in ("done", "cancelled"):
                    self._moving[value.name] = value.move.move_id
                else:
                    self._moving.pop(value.name, None)
        finally:
            with suppress(Exception):
                await watcher.stop()

    def _move_epoch(self) -> int:
        return self.lease.epoch if self.is_active else 0

    async def _run_moves(self) -> None:
        """While active, one driver per move under way (started again after a failover)."""
        nc = self.runtime.nc
        js = nc.jetstream()
        directory = DirectoryClient(nc, timeout=10.0)
        port = BusMovePort(nc, lambda domain: domain_accounts(directory, domain), epoch=self._move_epoch)
        mover = DomainMover(EventStore(js, names.STREAM_PROVISIONING, nc=nc), port, epoch=self._move_epoch,
                            settle=timedelta(seconds=self.runtime.settings.domain_move_settle))
        while True:
            if self.is_active:
                for domain, move_id in list(self._moving.items()):
                    running = self._drivers.get(domain)
                    if (running is None or running.done()) and (domain, move_id) not in self._finished:
                        self._drivers[domain] = self.runtime.spawn(f"domain move {domain}",
                                                                   lambda d=domain, m=move_id: self._drive(mover, d, m))
            await asyncio.sleep(1.0)

    async def _drive(self, mover: DomainMover, domain: str, move_id: str) -> None:
        """Drive one move until it is finished or another controller's; a failed question
        (a region cut off, a store busy) is asked again, a stuck move looked at again later."""
        while self.is_active:
            try:
                step = await mover.drive(domain)
            except (MoveRequestError, NatsTimeout, NatsError, OSError) as exc:
                log.warning("moving %s: %s; trying again", domain, exc or type(exc).__name__)
                await asyncio.sleep(2.0)
                continue
            match step:
                case dm.Stuck():
                    await asyncio.sleep(30.0)   # logged by the driver; an operator acts
                case dm.StandDown():
                    return
                case _:   # finished (or no move any more): not started again for this move
                    self._finished.add((domain, move_id))
                    log.info("the move %s of %s is finished", move_id, domain)
                    return

    # --- the controller API -----------------------------------------------------------------

    async def _on_api(self, msg: Msg) -> None:
        with self.runtime.metrics.once(BusRequestMetrics).observe(names.CONTROLLER_API):
            await self._answer_api(msg)

    async def _answer_api(self, msg: Msg) -> None:
        try:
            request = ControllerRequest.model_validate_json(msg.data)
        except ValidationError as exc:
            return await self._reply(msg, False, 400, f"bad request: {exc.errors()[0]['msg']}")
        if not self.is_active:
            return await self._reply(msg, False, 503, "this instance is no longer the controller; retry",
                                     command=request.command)
        if request.command == "whoami":
            return await self._reply(msg, True, 200, data={"controller": self.runtime.node_id, "epoch": self.lease.epoch},
                                     command=request.command)
        target = self._nodes.get(request.node or "")
        if target is None:
            return await self._reply(msg, False, 404, f"no instance named {request.node!r}; see `colony status`",
                                     command=request.command)
        record, _ = target
        if record.state not in (NodeState.READY, NodeState.NOT_READY):
            return await self._reply(msg, False, 409, f"{record.id} is {record.state}; only READY or NOT_READY instances can be drained or made ready",
                                     command=request.command)
        command = NodeCommand(command=request.command, epoch=self.lease.epoch)
        try:
            reply = await self.runtime.nc.request(names.node_command_subject(record.id), command.model_dump_json().encode(), timeout=5)
        except (NoRespondersError, NatsTimeout):
            return await self._reply(msg, False, 504, f"{record.id} did not answer", command=request.command)
        self._count(request.command, reply.data)
        await msg.respond(reply.data)

    def _count(self, command: str, reply: bytes) -> None:
        try:
            status = str(Reply.model_validate_json(reply).status)
        except ValidationError:
            status = "garbled"
        self.metrics.commands.labels(command, status).inc()

    async def _reply(self, msg: Msg, ok: bool, status: int, error: str | None = None, data: dict | None = None,
                     command: str = "invalid") -> None:
        if self.metrics:
            self.metrics.commands.labels(command, str(status)).inc()
        await msg.respond(Reply(ok=ok, status=status, error=error, data=data or {}).model_dump_json().encode())


async def domain_accounts(directory: DirectoryClient, domain: str) -> list[str]:
    """The domain's accounts, from the admin API's read model (``DIRECTORY_DOMAIN_ACCOUNTS``: a
    range of its (domain, name) index, a page at a time), so the cost is the domain's, not the
    cluster's: the directory bucket cannot be filtered by domain (an ``address.<token>`` key
    ends in the domain).  Asked once per move, when its accounts are fixed at the start of
    ``copying``; no answer is a question to ask again (``MoveRequestError``)."""
    try:
        return sorted(a.lower() for a in await directory.domain_accounts(domain))
    except DirectoryUnavailable as exc:
        raise MoveRequestError(f"the accounts of {domain}: {exc}") from exc
