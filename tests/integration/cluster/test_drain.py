"""Make Not-Ready / Ready for every kind of instance, through the controller."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from colony.cluster.control import ask_controller

pytestmark = pytest.mark.slow


async def _readyz(view) -> int:
    async with httpx.AsyncClient(timeout=30) as client:
        return (await client.get(f"http://{view.addresses['ops']}/readyz")).status_code


@pytest.mark.parametrize("role", ["edge", "mailstore", "sipfarm", "admin-api", "projector"])
async def test_drain_then_ready(cluster, role):
    cluster.start("controller", "controller-1")
    if role == "admin-api":  # it serves what a projector writes, and starts once one reports
        cluster.start("projector", "projector-1")
    cluster.start(role, f"{role}-1")
    await cluster.wait_controller()
    node = await cluster.wait_state(f"{role}-1", "READY")
    assert await _readyz(node) == 200
    nc = await cluster.client()

    reply = await ask_controller(nc, "drain", f"{role}-1", deadline=30)
    assert reply.ok, reply.error
    drained = await cluster.wait_state(f"{role}-1", "NOT_READY", drained=True)
    assert await _readyz(drained) == 503, "a balancer's health check must see the drain"
    if role == "admin-api":
        async with httpx.AsyncClient(timeout=30) as client:
            refused = await client.get(f"http://{drained.addresses['http']}/v1/cluster/nodes")
        assert refused.status_code == 503
        assert refused.headers["content-type"].startswith("application/problem+json")

    reply = await ask_controller(nc, "ready", f"{role}-1", deadline=30)
    assert reply.ok, reply.error
    back = await cluster.wait_state(f"{role}-1", "READY", drained=False)
    assert await _readyz(back) == 200
    # Both commands were answered bus requests, counted (RED) under the subjects' pattern.
    async with httpx.AsyncClient(timeout=30) as client:
        metrics = (await client.get(f"http://{back.addresses['ops']}/metrics")).text
    counted = sum(sample.value for family in text_string_to_metric_families(metrics) for sample in family.samples
                  if sample.name == "colony_bus_requests_total"
                  and sample.labels == {"subject": "colony.node.cmd.*", "outcome": "ok"})
    assert counted >= 2, metrics
    if role == "admin-api":
        async with httpx.AsyncClient(timeout=30) as client:
            served = await client.get(f"http://{back.addresses['http']}/v1/cluster/nodes")
        assert served.status_code == 401, "served again (and asks who is calling)"


async def test_draining_the_active_controller_hands_the_lease_to_the_backup(cluster):
    cluster.start("controller", "controller-1")
    cluster.start("controller", "controller-2")
    active = await cluster.wait_controller()
    other = "controller-2" if active.id == "controller-1" else "controller-1"
    await cluster.wait_state(other, "READY")
    nc = await cluster.client()

    reply = await ask_controller(nc, "drain", active.id, deadline=30)
    assert reply.ok, reply.error
    await cluster.wait_state(active.id, "NOT_READY", drained=True)
    successor = await cluster.wait_controller(not_id=active.id, min_epoch=active.epoch)
    assert successor.id == other

    # The drained one can come back; it stands by and is shown as the backup.
    reply = await ask_controller(nc, "ready", active.id, deadline=30)
    assert reply.ok, reply.error
    await cluster.wait_state(active.id, "READY", backup=True)


async def test_unknown_instance_is_a_clear_error(cluster):
    cluster.start("controller", "controller-1")
    await cluster.wait_controller()
    reply = await ask_controller(await cluster.client(), "drain", "no-such-node", deadline=30)
    assert not reply.ok and reply.status == 404 and "no-such-node" in reply.error
