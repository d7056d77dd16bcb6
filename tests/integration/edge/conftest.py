"""Fixtures of the edge suites (their harness: edge_harness)."""

from __future__ import annotations

import ssl

import pytest

from cluster_harness import ClusterHarness, wait_until
from colony.tlsfiles import ensure_local_ca

from edge_harness import Edge, provision


@pytest.fixture
def loopback_tls(tmp_path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context (``colony.tlsfiles.server_context``, as the edge builds it) with a
    certificate for localhost and 127.0.0.1 from a throwaway CA, and a client context that
    trusts that CA."""
    import trustme

    from colony.tlsfiles import server_context

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server_context(tmp_path / "cert.pem", tmp_path / "key.pem"), client


@pytest.fixture
async def edge(cluster: ClusterHarness, tmp_path) -> Edge:
    await cluster.ensure_schema()
    await provision(cluster)
    files = ensure_local_ca(tmp_path / "tls", ["mx.test"])
    node = cluster.start("edge", "edge-1", COLONY_SMTP_PORT="0", COLONY_SMTP_HOSTNAME="mx.test",
                         COLONY_TLS_CERT_FILE=str(files.cert), COLONY_TLS_KEY_FILE=str(files.key))
    view = await cluster.wait_state("edge-1", "READY", timeout=180)
    host, _, port = view.addresses["smtp"].rpartition(":")
    e = Edge(cluster, node.node_id, host, int(port), files.ca)

    async def directory_loaded():
        with e.smtp() as client:
            client.ehlo()
            client.mail("probe@remote.test")
            code, _ = client.rcpt("bob@example.com")
            return code == 250
    await wait_until(directory_loaded, 180, "the edge's directory cache to load")
    return e

