"""Failover on a 3-server NATS cluster with R3 buckets, not only on one server.

NATS-NOTES: a TTL on an R3 bucket was once seen not expiring on every replica, and a
client whose server dies reconnects elsewhere; both must leave exactly one controller.
"""

from __future__ import annotations

import signal
import threading

import pytest

from colony.natsd import EmbeddedNats, NatsServerError
from tools import free_ports

pytestmark = pytest.mark.slow




def start_cluster(tmp_path, attempt: int) -> list[EmbeddedNats]:
    client_ports, route_ports = free_ports(3), free_ports(3)
    routes = tuple(f"nats-route://127.0.0.1:{p}" for p in route_ports)
    # The authenticated bus: one set of identities (tmp_path/bus) admitted by every server.
    servers = [
        EmbeddedNats.authenticated(tmp_path / f"a{attempt}" / f"n{i}", tmp_path / "bus", port=client_ports[i],
                                   server_name=f"n{i}", sync_always=False, cluster_name="colony-test",
                                   cluster_port=route_ports[i], routes=routes)
        for i in range(3)
    ]
    errors = []

    def start(server):
        try:
            server.start(timeout=60)
        except Exception as exc:  # reported below
            errors.append(exc)

    # A clustered server is ready only once its peers are up: start them together.
    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for s in servers:
            s.stop()
        raise errors[0]
    return servers


@pytest.fixture
def nats_cluster(tmp_path):
    # The ports were free when chosen; something else may take one before the servers bind
    # it, so a failed start is tried again on other ports rather than failing the test.
    for attempt in range(3):
        try:
            servers = start_cluster(tmp_path, attempt)
            break
        except NatsServerError:
            if attempt == 2:
                raise
    yield servers
    for server in servers:
        server.stop()


async def test_controller_failover_and_a_dead_nats_server(nats_cluster, tmp_path):
    from cluster_harness import ClusterHarness

    urls = [s.url for s in nats_cluster]
    harness = ClusterHarness(nats_url=urls[0], workdir=tmp_path, extra_env={"COLONY_STREAM_REPLICAS": "3"},
                             identities=nats_cluster[0].identities)
    try:
        # Each instance starts on a different server; all know every server for reconnects.
        for i, node in enumerate(("controller-1", "controller-2", "controller-3")):
            ordered = urls[i:] + urls[:i]
            harness.start("controller", node, COLONY_NATS_URL=",".join(ordered))
        harness.start("edge", "edge-1", COLONY_NATS_URL=",".join(urls[1:] + urls[:1]))
        first = await harness.wait_controller(timeout=60)
        for node in ("controller-1", "controller-2", "controller-3", "edge-1"):
            await harness.wait_state(node, "READY", timeout=60)

        harness.nodes[first.id].signal(signal.SIGKILL)
        second = await harness.wait_controller(not_id=first.id, min_epoch=first.epoch, timeout=30)
        await harness.wait_state(first.id, "FAILED", timeout=30)

        # Kill a NATS server that is not the test's own connection: R3 keeps quorum, clients
        # on it reconnect to the others, and there is still exactly one controller.
        nats_cluster[2].kill()
        await harness.wait_state("edge-1", "READY", timeout=30)
        third = await harness.wait_controller(timeout=30, min_epoch=second.epoch - 1)
        views = await harness.view()
        assert [v.id for v in views.values() if v.controller and v.state == "READY"] == [third.id]
        assert third.epoch >= second.epoch
    finally:
        await harness.close()
