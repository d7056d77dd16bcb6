"""The cluster as one picture: every instance with its state, the controller and the backup.

``colony status`` and ``GET /v1/cluster/nodes`` both show ``cluster_view``; the controller
uses ``standby_order`` to decide which standby moves first when the controller is gone, so
the Backup Controller shown is the one that takes over.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from nats.aio.client import Client
from nats.js.errors import NotFoundError
from pydantic import BaseModel, ValidationError

from colony.bus import names
from colony.cluster.lease import LeaseEntry, read_lease
from colony.cluster.membership import NodeRecord, NodeState
from colony.settings import Role
from colony.tasks import TaskFault


class NodeView(BaseModel):
    id: str
    role: str
    state: NodeState
    pid: int
    host: str
    version: str
    incarnation: int
    controller: bool
    backup: bool
    epoch: int
    addresses: dict[str, str]
    load: dict[str, float]
    drained: bool
    started_at: str
    heartbeat_at: str
    reason: str
    faults: list[TaskFault] = []
    fault_count: int = 0
    drain_error: str = ""
    region: str = ""  # in a super cluster, the instance's region (colony.regions)


def standby_order(records: Iterable[NodeRecord], holder: str | None) -> list[NodeRecord]:
    """READY controllers other than the holder, oldest first: the first is the Backup Controller."""
    standbys = [r for r in records if r.role == Role.CONTROLLER and r.state == NodeState.READY and r.id != holder]
    return sorted(standbys, key=lambda r: (r.started_at, r.id))


async def read_nodes(nc: Client, domain: str | None = None, timeout: float | None = None) -> list[NodeRecord]:
    """Every record, read key by key (of another region with its JetStream ``domain``).

    Not ``kv.keys()``: nats-py's key listing waits for a watcher to catch up with the
    stream, which never happens while many instances heartbeat (seen: `colony status`
    hanging under load).  The stream's subject list plus one direct get per key is bounded.
    """
    js = nc.jetstream(domain=domain, **({"timeout": timeout} if timeout else {}))
    prefix = f"$KV.{names.BUCKET_NODES}."
    try:
        kv = await js.key_value(names.BUCKET_NODES)
        info = await js.stream_info(f"KV_{names.BUCKET_NODES}", subjects_filter=prefix + ">")
    except NotFoundError:
        return []
    keys = [subject[len(prefix):] for subject in (info.state.subjects or {})]

    async def one(key: str) -> NodeRecord | None:
        try:
            entry = await kv.get(key)
        except NotFoundError:  # deleted between the listing and the get
            return None
        if not entry.value:
            return None
        try:
            return NodeRecord.decode(entry.value)
        except ValidationError:
            return None

    return [r for r in await asyncio.gather(*(one(k) for k in keys)) if r is not None]


async def read_controller_lease(nc: Client, domain: str | None = None) -> LeaseEntry | None:
    try:
        kv = await nc.jetstream(domain=domain).key_value(names.BUCKET_LEASES)
    except NotFoundError:
        return None
    return await read_lease(kv, names.CONTROLLER_LEASE_KEY)


def build_view(records: list[NodeRecord], lease: LeaseEntry | None) -> list[NodeView]:
    holder = lease.record.holder if lease else None
    epoch = lease.epoch if lease else 0
    order = standby_order(records, holder)
    backup = order[0].id if order else None
    views = []
    for r in sorted(records, key=lambda r: (r.role, r.id)):
        views.append(NodeView(
            id=r.id, role=r.role, state=r.state, pid=r.pid, host=r.host, version=r.version,
            incarnation=r.incarnation, controller=r.id == holder and r.state in (NodeState.READY, NodeState.NOT_READY),
            backup=r.id == backup, epoch=epoch, addresses=r.addresses, load=r.load, drained=r.drained,
            started_at=r.started_at.isoformat(), heartbeat_at=r.heartbeat_at.isoformat(), reason=r.reason,
            faults=r.faults, fault_count=r.fault_count, drain_error=r.drain_error,
        ))
    return views


async def cluster_view(nc: Client, domain: str | None = None) -> list[NodeView]:
    """One region's instances: this one's, or another region's read through its JetStream ``domain``."""
    return build_view(await read_nodes(nc, domain), await read_controller_lease(nc, domain))


async def regions_view(nc: Client, here: str, regions: list[str],
                       timeout: float = 3.0) -> tuple[list[NodeView], list[str]]:
    """Every region's instances, each row carrying its region: this region's read locally, the
    others' through their JetStream domains over the leafnode link.  Also the regions that did
    not answer within ``timeout`` (cut off): the caller says so rather than show them empty."""
    async def one(region: str) -> list[NodeView] | None:
        domain = None if region == here else names.js_domain(region)
        try:
            views = await asyncio.wait_for(cluster_view(nc, domain), timeout)
        except Exception:  # noqa: BLE001 - no responders, timeouts: the region is out of reach
            return None
        return [v.model_copy(update={"region": region}) for v in views]

    results = await asyncio.gather(*(one(r) for r in regions or [here]))
    views = [v for got in results if got is not None for v in got]
    return views, [r for r, got in zip(regions or [here], results) if got is None]
