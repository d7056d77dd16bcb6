"""The production shape's server-to-server links, run for real: the three servers of
infra/nats/nats-{1,2,3}.conf form one JetStream cluster over mutually verified TLS routes,
and infra/nats/regions/{hub,eu}.conf attach a region over a TLS leafnode, each with the
secrets `colony bus init` generates.  A server without a certificate of the bus CA, or
without TLS at all, cannot join as a route or attach as a leafnode.

Only addresses change (loopback ports instead of the compose host names; the generated
certificate also names 127.0.0.1); every TLS and authorization block is the shipped one.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx
import pytest

from cluster_harness import wait_until
from colony.bus.connection import connect
from colony.bus.secrets import init_bus
from colony.natsd import nats_server_binary
from tools import free_ports
from colony.settings import Settings

pytestmark = pytest.mark.slow

NATS_DIR = Path(__file__).resolve().parents[2] / "infra" / "nats"
START_TIMEOUT = 60




class ConfServer:
    """One nats-server run from a shipped config file, rewritten to loopback ports. The config
    is written beside ``secrets/`` in ``root`` (its ``include "secrets/auth.conf"`` is relative)."""

    def __init__(self, root: Path, name: str, text: str) -> None:
        self.dir = root / name
        self.dir.mkdir(parents=True)
        self.client_port, self.monitor_port = free_ports(2)
        text = re.sub(r"(?m)^listen: .*$", f"listen: 127.0.0.1:{self.client_port}", text)
        text = re.sub(r"(?m)^http: .*$", f"http: 127.0.0.1:{self.monitor_port}", text)
        text = text.replace('"/data/jetstream"', f'"{self.dir / "jetstream"}"')
        assert "0.0.0.0" not in text, f"{name}: a listener was not moved to loopback"
        self.config = root / f"{name}.conf"
        self.config.write_text(text)
        self.log = self.dir / "nats.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([nats_server_binary(), "-c", str(self.config), "-l", str(self.log)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def assert_running(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"{self.dir.name} exited: {self.log_text()[-2000:]}")

    def monitor(self, endpoint: str) -> dict:
        self.assert_running()
        try:
            return httpx.get(f"http://127.0.0.1:{self.monitor_port}/{endpoint}", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return {}

    def route_peers(self) -> set[str]:
        return {r.get("remote_name", "") for r in self.monitor("routez").get("routes") or []}

    def leaf_count(self) -> int:
        return len(self.monitor("leafz").get("leafs") or [])

    @property
    def url(self) -> str:
        return f"tls://127.0.0.1:{self.client_port}"


def shipped(path: Path, secrets_parent: Path) -> str:
    # Compose mounts the generated secrets at /etc/nats/secrets and the config at
    # /etc/nats/nats.conf (its include is relative to the config); here both sit under one
    # directory, and every config names that directory instead.
    return path.read_text().replace("/etc/nats/", f"{secrets_parent}/")


async def until(probe, timeout: float, what: str, servers: list[ConfServer] = ()):
    """``wait_until`` for a synchronous probe; a timeout carries the tail of each server's log,
    since a cluster that does not form says why only there; a server of ``servers`` that has
    exited (a port it could not bind) fails the wait at once."""
    async def check():
        for server in servers:
            server.assert_running()
        return probe()
    try:
        return await wait_until(check, timeout, what, interval=0.2)
    except AssertionError as exc:
        logs = "".join(f"\n--- {s.dir.name}:\n{s.log_text()[-3000:]}"
                       for s in servers)
        raise AssertionError(f"{exc}{logs}") from None


def handshake_refused(server: ConfServer, since: int, kind: str) -> bool:
    """The server logged a failed TLS handshake on a ``kind`` link ("route" or "leafnode")
    after ``since`` bytes of its log."""
    text = server.log_text()[since:].lower()
    return any(f"tls {kind} handshake error" in line for line in text.splitlines())


def trust_the_bus_ca(root: Path, hosts: list[str], bus_ca: Path) -> None:
    """Secrets of an outsider: a certificate of another CA for the right names, trusting the
    bus CA (so the outsider accepts our server and it is our server that must refuse it)."""
    foreign = init_bus(root / "secrets", hosts)
    foreign.ca.write_bytes(bus_ca.read_bytes())


@pytest.fixture
def servers():
    started: list[ConfServer] = []
    yield started
    for server in started:
        server.stop()


async def test_the_three_servers_cluster_over_verified_tls_routes_only(tmp_path, servers):
    secrets = init_bus(tmp_path / "secrets", ["nats-1", "nats-2", "nats-3"])
    route_ports = free_ports(3)
    for i in range(3):
        text = shipped(NATS_DIR / f"nats-{i + 1}.conf", tmp_path)
        text = re.sub(r"(?m)^(\s*)listen: 0\.0\.0\.0:6222$", rf"\g<1>listen: 127.0.0.1:{route_ports[i]}", text)
        for j in range(3):
            text = text.replace(f"nats-route://nats-{j + 1}:6222", f"nats-route://127.0.0.1:{route_ports[j]}")
        assert "nats-route://nats-" not in text, "a route was not rewritten"
        servers.append(ConfServer(tmp_path, f"nats-{i + 1}", text))
    # A clustered JetStream server waits for its peers: start the three together.
    for server in servers:
        server.start()
    names = {f"nats-{i + 1}" for i in range(3)}
    for i, server in enumerate(servers):
        await until(lambda s=server, me=f"nats-{i + 1}": s.route_peers() == names - {me}, START_TIMEOUT,
                    f"nats-{i + 1} routed to both peers over TLS", servers)
    await until(lambda: (servers[0].monitor("jsz").get("meta_cluster") or {}).get("cluster_size") == 3
                and (servers[0].monitor("jsz").get("meta_cluster") or {}).get("leader"), START_TIMEOUT,
                "a JetStream meta leader of the three")

    # An R3 stream acknowledges through the TLS routes; a message crosses them to a subscriber.
    def operator(server: ConfServer) -> Settings:
        return Settings(nats_url=server.url, nats_nkey_seed_file=secrets.identities["operator"].seed_file,
                        nats_tls_ca_file=secrets.ca)
    first = await connect(operator(servers[0]), persistent=False)
    third = await connect(operator(servers[2]), persistent=False)
    try:
        sub = await third.subscribe("colony.test.routes")
        await third.flush()
        js = first.jetstream(timeout=30)
        await js.add_stream(name="ROUTES_TLS", subjects=["colony.test.stored"], num_replicas=3)
        ack = await js.publish("colony.test.stored", b"kept by a quorum")
        assert ack.seq == 1

        async def crossed():
            await first.publish("colony.test.routes", b"over the route")
            await first.flush()
            try:
                return (await sub.next_msg(timeout=0.5)).data
            except Exception:
                return None
        assert await wait_until(crossed, 30, "a message from nats-1 to a subscriber on nats-3") == b"over the route"
    finally:
        await first.close()
        await third.close()

    # Outsiders dial nats-1's route port: one with a certificate of another CA, one without TLS.
    target = f"nats-route://127.0.0.1:{route_ports[0]}"
    foreign_root = tmp_path / "foreign"
    trust_the_bus_ca(foreign_root, ["nats-1"], secrets.ca)
    for name, cluster_tls in (("rogue-cert", True), ("rogue-plain", False)):
        rogue_route = free_ports(1)[0]
        text = shipped(NATS_DIR / "nats-1.conf", foreign_root)
        text = text.replace("server_name: nats-1", f"server_name: {name}")
        text = re.sub(r"(?m)^(\s*)listen: 0\.0\.0\.0:6222$", rf"\g<1>listen: 127.0.0.1:{rogue_route}", text)
        text = re.sub(r"routes: \[[^\]]*\]", f"routes: [{target}]", text)
        if not cluster_tls:
            cluster = text[text.index("cluster {"):]
            text = text.replace(cluster, re.sub(r"\n  tls \{.*?\n  \}", "", cluster, flags=re.S))
        since = len(servers[0].log_text())
        rogue = ConfServer(foreign_root, name, text)
        servers.append(rogue)
        rogue.start()
        await until(lambda: handshake_refused(servers[0], since, "route"), 30,
                    f"nats-1 to refuse the route of {name}")
        assert servers[0].route_peers() == {"nats-2", "nats-3"}
        assert rogue.route_peers() == set()
        rogue.stop()


async def test_a_region_attaches_to_the_hub_over_a_verified_tls_leafnode_only(tmp_path, servers):
    secrets = init_bus(tmp_path / "secrets", ["hub-1", "eu-1"])
    leaf_port = free_ports(1)[0]
    hub_text = shipped(NATS_DIR / "regions" / "hub.conf", tmp_path)
    hub_text = re.sub(r"(?m)^(\s*)listen: 0\.0\.0\.0:7422$", rf"\g<1>listen: 127.0.0.1:{leaf_port}", hub_text)
    hub = ConfServer(tmp_path, "hub-1", hub_text)
    eu_text = shipped(NATS_DIR / "regions" / "eu.conf", tmp_path).replace(
        "nats-leaf://hub-1:7422", f"nats-leaf://127.0.0.1:{leaf_port}")
    eu = ConfServer(tmp_path, "eu-1", eu_text)
    for server in (hub, eu):
        servers.append(server)
        server.start()
    await until(lambda: hub.leaf_count() == 1 and eu.leaf_count() == 1, START_TIMEOUT,
                "eu attached to the hub over its TLS leafnode")

    foreign_root = tmp_path / "foreign"
    trust_the_bus_ca(foreign_root, ["eu-1"], secrets.ca)
    for name, remote_tls in (("rogue-cert", True), ("rogue-plain", False)):
        text = shipped(NATS_DIR / "regions" / "eu.conf", foreign_root)
        text = text.replace("server_name: eu-1", f"server_name: {name}")
        text = text.replace("domain: eu", f"domain: {name.replace('-', '')}")
        text = text.replace("nats-leaf://hub-1:7422", f"nats-leaf://127.0.0.1:{leaf_port}")
        if not remote_tls:
            text = re.sub(r", tls: \{.*?\n      \}", "", text, flags=re.S)
            assert "cert_file" not in text.split("\nleafnodes {", 1)[1], "the remote still has its tls block"
        since = len(hub.log_text())
        rogue = ConfServer(foreign_root, name, text)
        servers.append(rogue)
        rogue.start()
        await until(lambda: handshake_refused(hub, since, "leafnode"), 30, f"the hub to refuse the leafnode of {name}")
        assert hub.leaf_count() == 1
        assert rogue.leaf_count() == 0
        rogue.stop()
