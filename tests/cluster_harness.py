"""Real processes on a real nats-server, for the integration and end-to-end rings.

Everything waits on a condition with a deadline (``wait_until``); nothing sleeps hoping.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from colony.bus.connection import BUS_UNAVAILABLE, connect
from colony.cluster.view import NodeView, cluster_view
from colony.settings import SIP_CONTACT_DENY_LOOPBACK_SERVED, Settings
from colony.supervisor import ROLE_MODULES, die_with_parent

T = TypeVar("T")

# Short timings so fault tests finish quickly; the mechanisms are the production ones.
FAST_TIMINGS = {
    "COLONY_HEARTBEAT_INTERVAL": "0.5",
    "COLONY_NODE_TTL": "3",
    "COLONY_CONTROLLER_LEASE_TTL": "3",
    "COLONY_CONTROLLER_RENEW_INTERVAL": "0.5",
    "COLONY_CONTROLLER_SAFETY_MARGIN": "1",
    # Only standbys behind a live Backup Controller wait this long: it keeps "the backup shown
    # is the one that takes over" true on a loaded machine, and costs a failover nothing.
    "COLONY_CONTROLLER_RANK_DELAY": "5",
    "COLONY_DRAIN_TIMEOUT": "20",
}


# The tests' phones are on loopback, which the production sip_contact_deny_networks refuses
# (a Contact of 127.0.0.1 would have the farm send into its own host): relaxed here, as
# `colony up` on loopback does, the rest of the default kept.  A test of the refusal sets
# its own (tests/integration/sipfarm/test_contact_networks.py).
TEST_NETWORKS = {"COLONY_SIP_CONTACT_DENY_NETWORKS": SIP_CONTACT_DENY_LOOPBACK_SERVED}


def _listener_ports() -> dict[str, str]:
    """Every listener on a port the kernel picks (the record shows which): a fixed default
    (SMTP 25, the admin API's 8080) collides with another test or process on a shared
    machine.  A port setting that refuses 0 names a remote port (e.g. the outbound MX port)
    and is left alone.  An explicit ``env`` of a test still wins."""
    ports = {}
    for name in Settings.model_fields:
        if name.endswith("_port"):
            try:
                Settings(**{name: 0})
            except ValueError:
                continue
            ports[f"COLONY_{name.upper()}"] = "0"
    return ports


ANY_PORT = _listener_ports()


async def wait_until(probe: Callable[[], Awaitable[T]], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        try:
            last = await probe()
        except BUS_UNAVAILABLE as exc:  # JetStream busy (a time-out, or 503 while a stream elects its leader): not an answer yet
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last seen: {last!r}")
        await asyncio.sleep(interval)


async def wait_progress(probe: Callable[[], Awaitable[tuple[int, str]]], stall: float, what: str,
                        interval: float = 0.5) -> None:
    """Poll ``probe`` -- ``(work left, what to show if it stalls)`` -- until nothing is left;
    fail naming ``what`` once the work left has not shrunk for ``stall`` seconds.

    For a large amount of work on a machine whose speed nobody knows (a CI box running other
    suites): a fixed deadline for the whole would fail a slow run that is still moving, while
    a stall deadline -- sized from the mechanism's own timers, e.g. node_ttl + ack_wait +
    margin -- fails only when the system stopped making progress."""
    best: int | None = None
    since = time.monotonic()
    detail = ""
    while True:
        try:
            left, detail = await probe()
        except BUS_UNAVAILABLE as exc:  # JetStream busy: not an answer yet
            left, detail = best if best is not None else 1, repr(exc)
        if left <= 0:
            return
        if best is None or left < best:
            best, since = left, time.monotonic()
        elif time.monotonic() - since >= stall:
            raise AssertionError(f"no progress for {stall}s waiting for {what}: {left} left; {detail}")
        await asyncio.sleep(interval)


@dataclass
class Node:
    node_id: str
    role: str
    process: subprocess.Popen
    log_path: Path

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class ClusterHarness:
    nats_url: str
    workdir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    identities: dict = field(default_factory=dict)  # role -> bus identity; empty: an open bus
    nodes: dict[str, Node] = field(default_factory=dict)
    _nc = None

    def start(self, role: str, node_id: str, **env: str) -> Node:
        """Spawn an instance; wait for it with ``wait_state(node_id, ..., pid=node.process.pid)``
        when an earlier process of the same id may have left a record behind."""
        full_env = dict(os.environ)
        full_env.update(FAST_TIMINGS)
        full_env.update(TEST_NETWORKS)
        full_env.update({
            "COLONY_NATS_URL": self.nats_url,
            "COLONY_NODE_ID": node_id,
            "COLONY_DATA_DIR": str(self.workdir),
            **ANY_PORT,
        })
        if role in self.identities:  # each instance connects as its role, never as the operator
            full_env["COLONY_NATS_NKEY_SEED_FILE"] = str(self.identities[role].seed_file)
        full_env.update(self.extra_env)
        full_env.update(env)
        log_path = self.workdir / f"{node_id}.log"
        # die_with_parent: an instance outlives no test run, even one killed by SIGKILL.
        proc = subprocess.Popen([sys.executable, "-m", ROLE_MODULES[role]], env=full_env, preexec_fn=die_with_parent,
                                stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        node = Node(node_id, role, proc, log_path)
        self.nodes[node_id] = node
        return node

    async def client(self):
        if self._nc is None:
            self._nc = await connect(self._settings(), name="test-harness")
        return self._nc

    def _settings(self) -> Settings:
        if "operator" in self.identities:
            return Settings(nats_url=self.nats_url, nats_nkey_seed_file=self.identities["operator"].seed_file)
        return Settings(nats_url=self.nats_url)

    async def ensure_schema(self) -> None:
        from colony.bus.schema import ensure_schema

        await ensure_schema((await self.client()).jetstream(), self._settings())

    async def view(self) -> dict[str, NodeView]:
        return {v.id: v for v in await cluster_view(await self.client())}

    async def wait_state(self, node_id: str, state: str, timeout: float = 30.0, **extra) -> NodeView:
        node = self.nodes.get(node_id)

        async def probe():
            v = (await self.view()).get(node_id)
            if v and v.state == state and all(getattr(v, k) == val for k, val in extra.items()):
                return v
            if state in ("STARTING", "READY", "NOT_READY") and node and node.process.poll() is not None:
                # It will never get there: say why now instead of at the deadline.
                raise AssertionError(f"{node_id} exited with {node.process.returncode} while we waited for "
                                     f"{state}; its log ends:\n{node.log()[-3000:]}")
            return None
        return await wait_until(probe, timeout, f"{node_id} to be {state} {extra or ''}")

    async def wait_controller(self, timeout: float = 30.0, not_id: str | None = None, min_epoch: int = 0) -> NodeView:
        async def probe():
            for v in (await self.view()).values():
                if v.controller and v.id != not_id and v.epoch > min_epoch and v.state == "READY":
                    return v
            return None
        try:
            return await wait_until(probe, timeout, "an active controller", interval=0.01)
        except AssertionError as exc:
            # Say what each controller was doing: the election's own log lines, not a bare "None".
            tails = "\n".join(f"--- {n.node_id} (exit {n.process.poll()}) ends:\n{n.log()[-2500:]}"
                              for n in self.nodes.values() if n.role == "controller")
            raise AssertionError(f"{exc}\n{tails}") from None

    async def close(self) -> None:
        for node in self.nodes.values():
            if node.process.poll() is None:
                try:
                    node.process.send_signal(signal.SIGCONT)
                    node.process.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for node in self.nodes.values():
            try:
                node.process.wait(15)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()
        if self._nc is not None:
            await self._nc.close()
