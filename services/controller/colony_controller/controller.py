"""The cluster controller: one active, the others standing by.

Election
    The lease lives in ``cluster_leases`` (bucket max age = lease length).  A standby takes
    it with ``create`` when it is vacant.  It does not wait for the lease of a *dead*
    controller to run out: every controller answers on its own ``colony.ctl.alive.<id>``
    subject from start to stop, so a request that gets "no responders" proves the holder's
    connection is gone (the server drops a closed connection's subscriptions at once) and
    the Backup Controller replaces the lease by ``update(last=<holder's revision>)`` right
    away.  A holder that is alive but silent (paused, partitioned) answers nothing either,
    so then the standby waits until it has seen the same lease revision for a whole lease
    length -- by then the holder has fenced itself -- and replaces it the same way.  Either way the new acquisition has a higher revision:
    the new epoch.  The deposed holder finds out on its next renewal (CAS fails) or from its
    own monotonic deadline, whichever comes first, and stops acting.

Duties while active
    * declare instances FAILED when their heartbeats stop for ``node_ttl``;
    * serve ``colony.ctl.api`` (drain / ready / whoami) and pass the command on to the
      instance stamped with the epoch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import suppress

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from colony import tasks
from colony.bus import names
from colony.cluster.commands import ControllerRequest, NodeCommand
from colony.cluster.lease import Lease, LeaseLost, read_lease
from colony.cluster.membership import LIVE_STATES, NodeRecord, NodeState
from colony.cluster.node import NodeRuntime
from colony.cluster.view import standby_order
from colony.events import ControllerElected, NodeStateChanged

log = logging.getLogger("colony.controller")


class Controller:
    role = "controller"

    def __init__(self) -> None:
        self.runtime: NodeRuntime | None = None
        self.lease: Lease | None = None
        self.accepting = True
        self._tasks: list[asyncio.Task] = []
        self._api_sub: Subscription | None = None
        self._nodes: dict[str, tuple[NodeRecord, int]] = {}  # id -> (record, revision)
        self._last_seen: dict[str, float] = {}  # id -> monotonic time we last saw a heartbeat
        self._absent_since: float | None = None
        self._seen_revision = 0  # the lease revision we last saw, and since when (monotonic)
        self._seen_at = 0.0
        self._releasing: asyncio.Task | None = None  # keeps the step-down task referenced until done

    # --- Workload ---------------------------------------------------------------------------

    async def start(self, runtime: NodeRuntime) -> dict[str, str]:
        self.runtime = runtime
        s = runtime.settings
        js = runtime.nc.jetstream()
        self._leases: KeyValue = await js.key_value(names.BUCKET_LEASES)
        self._nodes_kv: KeyValue = await js.key_value(names.BUCKET_NODES)
        self.lease = Lease(self._leases, names.CONTROLLER_LEASE_KEY, runtime.node_id,
                           ttl=s.controller_lease_ttl, safety_margin=s.controller_safety_margin)
        await runtime.nc.subscribe(names.controller_alive_subject(runtime.node_id), cb=self._on_alive)
        self._tasks = [
            tasks.start("watch-nodes", self._watch_nodes, log),
            tasks.start("election", self._election_loop, log),
            tasks.start("failure-detector", self._failure_detector, log),
        ]
        return {}

    def set_accepting(self, accepting: bool) -> None:
        """A drained controller gives the lease up and stops standing for election."""
        self.accepting = accepting
        if not accepting and self.lease and self.lease.epoch:
            self._releasing = asyncio.create_task(self._step_down("not ready (drain or stop)"))

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
        last_renew = 0.0
        while True:
            try:
                if self.lease.epoch:
                    if time.monotonic() - last_renew >= s.controller_renew_interval:
                        last_renew = time.monotonic()
                        try:
                            await self.lease.renew()
                        except LeaseLost as exc:
                            await self._on_deposed(str(exc))
                elif self.accepting:
                    if await self._try_to_win():
                        last_renew = time.monotonic()
            except asyncio.CancelledError:
                raise
            except (NatsTimeout, NatsError) as exc:  # the bus is busy or reconnecting: try again
                log.warning("election step: %s; retrying", exc or type(exc).__name__)
            except Exception:
                log.exception("election step failed; retrying")
            await asyncio.sleep(s.controller_probe_interval)

    async def _try_to_win(self) -> bool:
        me = self.runtime.node_id
        current = await read_lease(self._leases, names.CONTROLLER_LEASE_KEY)
        if current is not None and current.record.holder == me:
            # A lease of ours from an earlier incarnation: it is abandoned by definition.
            return await self._acquire(current.revision, "taken-over", previous=me)
        if current is None:
            return await self._my_turn(None) and await self._acquire(None, "vacant")
        now = time.monotonic()
        if current.revision != self._seen_revision:
            self._seen_revision, self._seen_at = current.revision, now
        # A revision unchanged for a whole lease length (on our clock, which started no
        # earlier than the holder's) means the holder has already fenced itself off; we need
        # not wait for the server to expire the key, and the CAS below fails if it renewed.
        stale = now - self._seen_at >= self.runtime.settings.controller_lease_ttl
        if stale:
            how = "expired"
        elif await self._holder_alive(current.record.holder, current.epoch):
            self._absent_since = None
            return False
        else:
            how = "taken-over"
        return await self._my_turn(current.record.holder) and await self._acquire(
            current.revision, how, previous=current.record.holder)

    async def _my_turn(self, holder: str | None) -> bool:
        """The Backup Controller moves at once; the others give it a head start by rank.

        Standbys ranked ahead of us that are provably gone (no responders) do not count, so
        a dead backup whose record is not yet FAILED does not delay the takeover.
        """
        order = [r.id for r in standby_order((r for r, _ in self._nodes.values()), holder)]
        ahead = order[: order.index(self.runtime.node_id)] if self.runtime.node_id in order else order
        rank = 0
        for other in ahead:
            if await self._reachable(other):
                rank += 1
        if rank == 0:
            return True
        if self._absent_since is None:
            self._absent_since = time.monotonic()
        return time.monotonic() - self._absent_since >= rank * 1.0

    async def _probe(self, node_id: str) -> dict | None:
        """The controller's answer on its alive subject; None when its connection is provably
        gone (no responders), {} when it is silent (paused or partitioned: not provably gone)."""
        try:
            reply = await self.runtime.nc.request(names.controller_alive_subject(node_id), b"", timeout=0.5)
        except NoRespondersError:
            return None
        except NatsTimeout:
            return {}
        with suppress(ValueError):
            return json.loads(reply.data)
        return {}

    async def _reachable(self, node_id: str) -> bool:
        return await self._probe(node_id) is not None

    async def _holder_alive(self, holder: str, epoch: int) -> bool:
        answer = await self._probe(holder)
        if answer is None:
            return False
        # A live process of that name that no longer holds this epoch has abandoned it.
        return answer.get("epoch", epoch) == epoch

    async def _acquire(self, revision: int | None, how: str, previous: str | None = None) -> bool:
        if not await self.lease.try_acquire(take_over_revision=revision):
            return False
        self._absent_since = None
        rt = self.runtime
        rt.epochs.observe(self.lease.epoch)
        now = time.monotonic()
        # We only know heartbeats from now on: give every instance a full TTL before judging.
        self._last_seen = {node_id: now for node_id in self._nodes}
        self._api_sub = await rt.nc.subscribe(names.CONTROLLER_API, cb=self._on_api)
        log.warning("%s is the controller now (epoch %d, %s%s)", rt.node_id, self.lease.epoch, how,
                    f", after {previous}" if previous else "")
        await rt.publish_event(names.cluster_event_subject("controller"), ControllerElected(
            node_id=rt.node_id, epoch=self.lease.epoch, previous=previous, how=how))
        return True

    async def _on_deposed(self, why: str) -> None:
        log.warning("%s stops acting as controller: %s", self.runtime.node_id, why)
        await self._drop_duties()

    async def _step_down(self, why: str) -> None:
        log.info("%s gives up the controller lease: %s", self.runtime.node_id, why)
        await self._drop_duties()
        await self.lease.release()

    async def _drop_duties(self) -> None:
        if self._api_sub is not None:
            with suppress(Exception):
                await self._api_sub.unsubscribe()
            self._api_sub = None

    async def _on_alive(self, msg: Msg) -> None:
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
        try:
            # CAS: if the instance wrote in the meantime it is alive after all.
            await self._nodes_kv.update(names.node_key(record.id), failed.encode(), last=revision)
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            return
        log.warning("%s declared %s FAILED (was %s)", self.runtime.node_id, record.id, old)
        await self.runtime.publish_event(names.cluster_event_subject("node"), NodeStateChanged(
            node_id=record.id, role=record.role, old=old, new=NodeState.FAILED, reason=failed.reason,
            by=self.runtime.node_id, epoch=self.lease.epoch))

    # --- the controller API -----------------------------------------------------------------

    async def _on_api(self, msg: Msg) -> None:
        try:
            request = ControllerRequest.model_validate_json(msg.data)
        except ValidationError as exc:
            return await self._reply(msg, False, 400, f"bad request: {exc.errors()[0]['msg']}")
        if not self.is_active:
            return await self._reply(msg, False, 503, "this instance is no longer the controller; retry")
        if request.command == "whoami":
            return await self._reply(msg, True, 200, data={"controller": self.runtime.node_id, "epoch": self.lease.epoch})
        target = self._nodes.get(request.node or "")
        if target is None:
            return await self._reply(msg, False, 404, f"no instance named {request.node!r}; see `colony status`")
        record, _ = target
        if record.state not in (NodeState.READY, NodeState.NOT_READY):
            return await self._reply(msg, False, 409, f"{record.id} is {record.state}; only READY or NOT_READY instances can be drained or made ready")
        command = NodeCommand(command=request.command, epoch=self.lease.epoch)
        try:
            reply = await self.runtime.nc.request(names.node_command_subject(record.id), command.model_dump_json().encode(), timeout=5)
        except (NoRespondersError, NatsTimeout):
            return await self._reply(msg, False, 504, f"{record.id} did not answer")
        await msg.respond(reply.data)

    async def _reply(self, msg: Msg, ok: bool, status: int, error: str | None = None, data: dict | None = None) -> None:
        await msg.respond(json.dumps({"ok": ok, "status": status, "error": error, "data": data or {}}).encode())
