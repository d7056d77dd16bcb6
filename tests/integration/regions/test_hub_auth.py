"""The hub of `colony up --regions` (colony.supercluster) is authenticated: a region's server
attaches only with its own leafnode password, the hub's client port admits only the regions'
operator identities, and the region-local subjects stay denied on the link."""

from __future__ import annotations

import asyncio
import socket

import nats
import pytest

from cluster_harness import wait_until
from colony.bus import names
from colony.bus.connection import connect_options
from colony.natsd import EmbeddedNats
from colony.supercluster import SuperCluster


def _free_base() -> int:
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1] - 3
        if base > 1024 and all(_free(base + off) for off in (2, 3)):
            return base
    raise RuntimeError("no free ports")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def hub(tmp_path):
    sc = SuperCluster(data_dir=tmp_path / "sc", base_port=_free_base(), regions=["eu", "us"], counts={}, restart=False)
    sc.start_hub()
    servers: list[EmbeddedNats] = []

    def region_server(name: str, domain: str, remote: str) -> EmbeddedNats:
        server = EmbeddedNats(tmp_path / name, server_name=name, jetstream_domain=domain,
                              leafnode_remotes=(remote,), leafnode_deny=names.REGION_LOCAL_SUBJECTS, sync_always=False)
        server.start()
        servers.append(server)
        return server

    yield sc, region_server
    for server in servers:
        server.stop()
    sc.hub.stop()


async def _domain_answers(nc, domain: str) -> bool:
    try:
        await nc.request(f"$JS.{domain}.API.INFO", b"", timeout=1)
        return True
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        return False


async def test_regions_attach_with_their_password_and_strangers_do_not(hub):
    sc, region_server = hub
    eu = region_server("eu", "eu", sc.clusters["eu"].leaf_remote)
    us = region_server("us", "us", sc.clusters["us"].leaf_remote)
    assert sc.leaf_password("eu") in sc.clusters["eu"].leaf_remote
    wrong = sc.clusters["us"].leaf_remote.replace(sc.leaf_password("us"), "not-the-password")
    stranger = region_server("stranger", "xx", wrong)
    anonymous = region_server("anonymous", "yy", f"nats-leaf://127.0.0.1:{sc.leaf_port}")
    nc_eu, nc_us = await nats.connect(eu.url), await nats.connect(us.url)
    nc_x = await nats.connect(stranger.url)
    try:
        await wait_until(lambda: _domain_answers(nc_eu, "us"), 30, "us's JetStream seen from eu through the hub")
        assert await _domain_answers(nc_us, "eu")
        # The refused servers keep retrying; they have had the same time to attach as us.
        async def refused():
            return "authorization violation" in stranger.log_path.read_text().lower()
        await wait_until(refused, 30, "the hub to refuse the wrong password")
        assert not await _domain_answers(nc_eu, "xx")
        assert not await _domain_answers(nc_eu, "yy")
        assert not await _domain_answers(nc_x, "eu")

        # The region-local subjects do not cross the link; others do.
        got: list[str] = []

        async def heard(msg):
            got.append(msg.subject)
        sub = await nc_eu.subscribe(">", cb=heard)
        await nc_eu.flush()

        async def probe_arrives():
            await nc_us.publish(names.mail_subject("eu", "acme.example"), b"x")
            await nc_us.publish(names.provisioning_subject("domain", "acme.example"), b"x")
            await nc_us.publish("probe.link", b"x")
            await nc_us.flush()
            await asyncio.sleep(0.05)
            return "probe.link" in got
        await wait_until(probe_arrives, 30, "a plain subject to cross from us to eu")
        await sub.unsubscribe()
        assert not [s for s in got if s.startswith(("colony.mail.", "colony.prov."))]
    finally:
        for nc in (nc_eu, nc_us, nc_x):
            await nc.close()
    anonymous.stop()


async def test_hub_client_port_admits_only_the_regions_operators(hub):
    sc, _ = hub
    with pytest.raises(Exception):
        await nats.connect(sc.hub.url, max_reconnect_attempts=0, allow_reconnect=False, connect_timeout=3)
    for region in sc.regions:
        seed = sc.data_dir / region / "bus" / "operator.nk"
        nc = await nats.connect(sc.hub.url, allow_reconnect=False, connect_timeout=3, **connect_options(seed))
        assert nc.is_connected
        await nc.close()
