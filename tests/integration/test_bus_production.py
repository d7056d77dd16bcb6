"""The production NATS configuration (infra/nats/nats-1.conf) with the secrets `colony bus
init` generates: clients need TLS trusting the bus CA *and* a Colony identity, and each role
keeps its permissions.  One server stands in for the cluster (the route block is dropped:
its peers do not exist here); TLS on routes and leafnodes is checked by
tests/unit/test_deployment_files.py with `nats-server -t`."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
from nats.errors import Error as NatsError

from cluster_harness import wait_until
from colony.bus import names
from colony.bus.connection import connect
from colony.bus.schema import ensure_schema
from colony.bus.secrets import init_bus
from colony.natsd import nats_server_binary
from colony.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _without_block(text: str, name: str) -> str:
    start = re.search(rf"(?m)^{name}\s*\{{", text)
    if not start:
        return text
    depth, i = 1, start.end()
    while depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[:start.start()] + text[i:]


@pytest.fixture
def production_server(tmp_path):
    secrets = init_bus(tmp_path / "secrets", ["nats-1"])
    text = (ROOT / "infra" / "nats" / "nats-1.conf").read_text().replace("/etc/nats/", f"{tmp_path}/")
    text = _without_block(text, "cluster")
    text = re.sub(r"(?m)^listen: .*$", "listen: 127.0.0.1:-1", text)
    text = re.sub(r"(?m)^http: .*$", "", text)
    text = text.replace('"/data/jetstream"', f'"{tmp_path}/jetstream"')
    config = tmp_path / "nats.conf"
    config.write_text(text)
    log = tmp_path / "nats.log"
    proc = subprocess.Popen([nats_server_binary(), "-c", str(config), "-l", str(log)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        port = None
        while time.monotonic() < deadline and port is None:
            found = re.search(r"Listening for client connections on [\d.]+:(\d+)", log.read_text() if log.exists() else "")
            if found and "Server is ready" in log.read_text():
                port = int(found.group(1))
            elif proc.poll() is not None:
                raise AssertionError(f"nats-server exited: {log.read_text() if log.exists() else ''}")
            else:
                time.sleep(0.05)
        assert port, "nats-server did not become ready"
        yield f"tls://127.0.0.1:{port}", secrets
    finally:
        proc.terminate()
        proc.wait(10)


async def test_tls_and_an_identity_are_both_required(production_server):
    url, secrets = production_server
    operator = await connect(Settings(nats_url=url, nats_nkey_seed_file=secrets.identities["operator"].seed_file,
                                      nats_tls_ca_file=secrets.ca), persistent=False)
    await ensure_schema(operator.jetstream(), Settings(nats_url=url))

    with pytest.raises(Exception):  # an identity, but a server certificate it cannot verify
        await connect(Settings(nats_url=url, nats_nkey_seed_file=secrets.identities["edge"].seed_file), persistent=False)
    with pytest.raises(Exception):  # TLS, but no identity
        await connect(Settings(nats_url=url, nats_tls_ca_file=secrets.ca), persistent=False)

    edge = await connect(Settings(nats_url=url, nats_nkey_seed_file=secrets.identities["edge"].seed_file,
                                  nats_tls_ca_file=secrets.ca), persistent=False)
    js = edge.jetstream(timeout=1.0)
    await js.publish(names.mail_subject("local", "acme.example"), b"mail")
    with pytest.raises(NatsError):
        await js.publish(names.provisioning_subject(names.AGG_DOMAIN, "evil.example"), b"{}")

    async def untouched():
        return (await operator.jetstream().stream_info(names.STREAM_PROVISIONING)).state.messages == 0
    assert await wait_until(untouched, 5, "PROVISIONING to stay empty")
    await edge.close()
    await operator.close()
