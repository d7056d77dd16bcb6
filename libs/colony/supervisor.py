"""`colony up`: a whole cluster on one machine, each instance its own process.

The supervisor owns the embedded nats-server and the instances: it refuses to start when
the data directory is in use or a port it needs is taken, restarts an instance that dies
unexpectedly (the cluster sees a FAILED node and then a new incarnation), restarts the bus
itself when it dies -- same port, same JetStream directory, so every instance reconnects
on its own and nothing acknowledged is lost (``sync_interval: always``) -- and on Ctrl-C or
SIGTERM stops the instances in order -- edges and APIs first, controllers last -- and the
bus after them, leaving no process behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from colony.bus import names
from colony.bus.permissions import Identity, authorization_config, generate_identities
from colony.natsd import EmbeddedNats, NatsServerError
from colony.ports import PortPlan, ephemeral_overlap, port_is_free
from colony.settings import CONFIG_ERROR_EXIT, SIP_CONTACT_DENY_LOOPBACK_SERVED

# The order instances start in; they stop in the reverse order.
ROLE_MODULES = {
    "controller": "colony_controller",
    "mailstore": "colony_mailstore",
    "sipfarm": "colony_sipfarm",
    "edge": "colony_edge",
    "projector": "colony_admin.projector",  # the admin API's projections; stops after the admin APIs
    "admin-api": "colony_admin",
}


def _find_prctl():
    """libc's prctl, looked up here in the parent: a child between fork and exec must not
    import or dlopen (another thread of the parent may have held the import or the loader
    lock at the fork, which the child then waits on for ever)."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the supervisor's own signal handling is all there is
        return None


_PRCTL = _find_prctl()
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child, before exec: SIGTERM us if the supervisor dies, even by SIGKILL.

    The instances run in their own sessions (so Ctrl-C reaches only the supervisor, which
    stops them in order); without this, a supervisor killed or hung up on would leave them
    running with nobody to stop them.  Only a call into the prctl found at import: nothing
    here may import, load a library or take a lock (``subprocess``'s preexec_fn warning).
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


class SupervisorError(RuntimeError):
    """Refusal to start; the message says what is in the way and how to fix it."""


def config_error_in(log_path: Path, tail: int = 4096) -> str:
    """The configuration error a service printed as it stopped (the end of its log, from its
    ``colony <role>:`` line), on one line: the operator reads why beside the restart notice
    instead of opening the log, as in the usual case (a key to fix) restarting cannot help."""
    try:
        with open(log_path, "rb") as log:
            log.seek(max(0, log.seek(0, 2) - tail))
            text = log.read().decode(errors="replace")
    except OSError:
        return "a configuration error (its log could not be read)"
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("colony ")]
    words = [line.strip() for line in lines[starts[-1]:] if line.strip()] if starts else []
    return " ".join(words)[:1000] or "a configuration error"


@dataclass
class Instance:
    node_id: str
    role: str
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen | None = None
    restarts: int = 0
    next_restart: float = 0.0

    def spawn(self) -> None:
        log = open(self.log_path, "ab", buffering=0)
        self.process = subprocess.Popen(
            [sys.executable, "-m", ROLE_MODULES[self.role]],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # the terminal's Ctrl-C reaches only us; we stop them in order
            preexec_fn=die_with_parent,
        )
        log.close()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@dataclass
class Cluster:
    data_dir: Path
    base_port: int
    counts: dict[str, int]
    host: str = "127.0.0.1"
    restart: bool = True
    nats: EmbeddedNats | None = None
    instances: list[Instance] = field(default_factory=list)
    plan: PortPlan = field(init=False)
    identities: dict[str, Identity] = field(default_factory=dict)
    bus_down_since: float | None = None  # monotonic time the bus was found dead, until it is back
    bus_restarts: int = 0
    next_bus_restart: float = 0.0
    tls_ca: Path | None = None  # the local CA made for this cluster, when no certificate is configured
    # One region of a super cluster (colony.supercluster): its JetStream domain, the hub's
    # leafnode URL it joins, and every region's name for the instances' settings.
    region: str | None = None
    regions: tuple[str, ...] = ()
    leaf_remote: str | None = None
    # One secret for every region of a super cluster: an edge hands an IMAP/POP session over to
    # the account's home region's mail store with it (colony.supercluster sets it).
    cluster_secret_file: Path | None = None

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        self.plan = PortPlan(self.base_port)

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "colony.pid"

    @property
    def info_file(self) -> Path:
        return self.data_dir / "cluster.json"

    @property
    def bus_dir(self) -> Path:
        """The bus identities (nkey seeds, 0600 in a 0700 directory): only this user can use the bus."""
        return self.data_dir / "bus"

    # --- start ------------------------------------------------------------------------------

    def check_free(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.pid_file.exists():
            try:
                pid = int(self.pid_file.read_text().strip())
                os.kill(pid, 0)
            except (ValueError, ProcessLookupError):
                self.pid_file.unlink(missing_ok=True)  # left by a cluster that died; not in use
            except PermissionError:
                raise SupervisorError(f"data directory {self.data_dir} is in use by another user's colony up") from None
            else:
                raise SupervisorError(
                    f"data directory {self.data_dir} is in use by `colony up` (pid {pid}); "
                    f"stop that one first or choose another with --data-dir")
        total = sum(self.counts.values())
        planned = self.plan.all_ports(total, self.counts.get("admin-api", 0), self.counts.get("edge", 0),
                                      self.counts.get("sipfarm", 0), self.counts.get("mailstore", 0))
        clash = ephemeral_overlap([port for _, port in planned])
        if clash:
            raise SupervisorError(
                f"ports {clash[0]}-{clash[-1]} lie in the kernel's ephemeral port range "
                f"(/proc/sys/net/ipv4/ip_local_port_range), where outgoing connections may take "
                f"them first; choose a --base-port below it (the default is 2500)")
        for what, port in planned:
            if not port_is_free(self.host, port):
                raise SupervisorError(
                    f"port {port} ({what}) on {self.host} is taken; stop whatever listens there "
                    f"or choose another range with --base-port")

    def start(self) -> None:
        self.check_free()
        self.pid_file.write_text(str(os.getpid()))
        (self.data_dir / "logs").mkdir(exist_ok=True)
        self.identities = generate_identities(self.bus_dir)
        self.nats = EmbeddedNats(store_dir=self.data_dir / "nats", host=self.host, port=self.plan.nats,
                                 monitor_port=self.plan.nats_monitor, server_name=f"colony-{self.base_port}",
                                 preexec_fn=die_with_parent, authorization=authorization_config(self.identities),
                                 **self._region_nats_options())
        self.nats.start()
        self.ensure_schema()
        index = 0
        admin_index = 0
        edge_index = 0
        sip_index = 0
        store_index = 0
        for role in ROLE_MODULES:
            for n in range(1, self.counts.get(role, 0) + 1):
                node_id = f"{role}-{n}"
                env = dict(os.environ)
                env.update({
                    "COLONY_NODE_ID": node_id,
                    "COLONY_NATS_URL": self.nats.url,
                    "COLONY_DATA_DIR": str(self.data_dir),
                    "COLONY_HOST": self.host,
                    "COLONY_OPS_PORT": str(self.plan.ops(index)),
                    "COLONY_NATS_NKEY_SEED_FILE": str(self.identities[role].seed_file),
                })
                if self.region:
                    env.update({"COLONY_REGION": self.region, "COLONY_REGIONS": ",".join(self.regions)})
                if role == "admin-api":
                    env["COLONY_API_PORT"] = str(self.plan.admin_api(admin_index))
                    admin_index += 1
                if role == "edge":
                    env["COLONY_SMTP_PORT"] = str(self.plan.smtp(edge_index))
                    env["COLONY_IMAP_PORT"] = str(self.plan.imap(edge_index))
                    env["COLONY_IMAPS_PORT"] = str(self.plan.imaps(edge_index))
                    env["COLONY_POP3_PORT"] = str(self.plan.pop3(edge_index))
                    env["COLONY_POP3S_PORT"] = str(self.plan.pop3s(edge_index))
                    env["COLONY_SUBMISSION_PORT"] = str(self.plan.submission(edge_index))
                    env["COLONY_SUBMISSIONS_PORT"] = str(self.plan.submissions(edge_index))
                    env["COLONY_AUTOCONFIG_PORT"] = str(self.plan.autoconfig(edge_index))
                    # No balancer in front: clients configured from its answers reach this edge's own ports.
                    env.setdefault("COLONY_AUTOCONFIG_PORTS", "listeners")
                    edge_index += 1
                if role == "sipfarm":
                    env["COLONY_SIP_PORT"] = str(self.plan.sip(sip_index))
                    env["COLONY_SIP_TLS_PORT"] = str(self.plan.sip_tls(sip_index))
                    env["COLONY_SIP_WS_PORT"] = str(self.plan.sip_ws(sip_index))
                    env["COLONY_SIP_WSS_PORT"] = str(self.plan.sip_wss(sip_index))
                    env["COLONY_SIP_INNER_PORT"] = str(self.plan.sip_inner(sip_index))
                    if _is_loopback(self.host) and "COLONY_SIP_CONTACT_DENY_NETWORKS" not in os.environ:
                        # Served on loopback, every phone is on this host and registers a
                        # loopback contact; the rest of the production default holds.
                        env["COLONY_SIP_CONTACT_DENY_NETWORKS"] = SIP_CONTACT_DENY_LOOPBACK_SERVED
                    sip_index += 1
                if role == "mailstore":
                    env["COLONY_IMAP_INNER_PORT"] = str(self.plan.imap_inner(store_index))
                    env["COLONY_POP3_INNER_PORT"] = str(self.plan.pop3_inner(store_index))
                    store_index += 1
                env.update(self.tls_env())
                if role in ("edge", "mailstore") and not os.environ.get("COLONY_CLUSTER_SECRET_FILE"):
                    # signs the edges' IMAP/POP3 session hand-offs to the mail stores
                    from colony.contracts.handoff import ensure_secret
                    env["COLONY_CLUSTER_SECRET_FILE"] = str(ensure_secret(self.cluster_secret_file
                                                                          or self.bus_dir / "cluster.secret"))
                inst = Instance(node_id, role, env, self.data_dir / "logs" / f"{node_id}.log")
                inst.spawn()
                self.instances.append(inst)
                index += 1
        self.info_file.write_text(json.dumps(self.describe(), indent=2))

    def _region_nats_options(self) -> dict:
        if not self.region:
            return {}
        return {"jetstream_domain": names.js_domain(self.region),
                "leafnode_remotes": (self.leaf_remote,) if self.leaf_remote else (),
                "leafnode_deny": names.REGION_LOCAL_SUBJECTS}

    def tls_env(self) -> dict[str, str]:
        """The certificate every TLS listener uses: the configured one, else a local CA's
        (made once in <data_dir>/tls; clients that verify trust its ca.pem)."""
        if os.environ.get("COLONY_TLS_CERT_FILE") or os.environ.get("COLONY_TLS_KEY_FILE"):
            return {}
        from colony.tlsfiles import ensure_local_ca

        files = ensure_local_ca(self.data_dir / "tls", [self.host])
        self.tls_ca = files.ca
        return {"COLONY_TLS_CERT_FILE": str(files.cert), "COLONY_TLS_KEY_FILE": str(files.key)}

    def describe(self) -> dict:
        return {
            "tls_ca": str(self.tls_ca) if self.tls_ca else None,
            "smtp": [f"{self.host}:{self.plan.smtp(i)}" for i in range(self.counts.get("edge", 0))],
            "imap": [f"{self.host}:{self.plan.imap(i)}" for i in range(self.counts.get("edge", 0))],
            "imaps": [f"{self.host}:{self.plan.imaps(i)}" for i in range(self.counts.get("edge", 0))],
            "pop3": [f"{self.host}:{self.plan.pop3(i)}" for i in range(self.counts.get("edge", 0))],
            "pop3s": [f"{self.host}:{self.plan.pop3s(i)}" for i in range(self.counts.get("edge", 0))],
            "submission": [f"{self.host}:{self.plan.submission(i)}" for i in range(self.counts.get("edge", 0))],
            "submissions": [f"{self.host}:{self.plan.submissions(i)}" for i in range(self.counts.get("edge", 0))],
            "autoconfig": [f"http://{self.host}:{self.plan.autoconfig(i)}" for i in range(self.counts.get("edge", 0))],
            "sip": [f"{self.host}:{self.plan.sip(i)}" for i in range(self.counts.get("sipfarm", 0))],
            "sip_tls": [f"{self.host}:{self.plan.sip_tls(i)}" for i in range(self.counts.get("sipfarm", 0))],
            "sip_ws": [f"ws://{self.host}:{self.plan.sip_ws(i)}" for i in range(self.counts.get("sipfarm", 0))],
            "sip_wss": [f"wss://{self.host}:{self.plan.sip_wss(i)}" for i in range(self.counts.get("sipfarm", 0))],
            "sip_inner": [f"{self.host}:{self.plan.sip_inner(i)}" for i in range(self.counts.get("sipfarm", 0))],
            "nats_url": self.nats.url if self.nats else None,
            "nats_pid": self.nats.process.pid if self.nats and self.nats.process else None,
            "operator_seed": str(self.operator_seed) if self.identities else None,
            "nats_monitor": f"http://{self.host}:{self.plan.nats_monitor}",
            "admin_api": [f"http://{self.host}:{self.plan.admin_api(i)}" for i in range(self.counts.get("admin-api", 0))],
            "data_dir": str(self.data_dir),
            "supervisor_pid": os.getpid(),
            "instances": {i.node_id: {"role": i.role, "pid": i.process.pid if i.process else None,
                                      "log": str(i.log_path)} for i in self.instances},
        }

    @property
    def operator_seed(self) -> Path:
        return self.identities[names.ROLE_OPERATOR].seed_file

    def ensure_schema(self) -> None:
        """Create the streams and buckets as the operator before any instance starts: only
        controllers may do it themselves, and the other roles wait for the schema."""
        import asyncio

        from colony.bus.connection import connect, jetstream
        from colony.bus.schema import ensure_schema
        from colony.settings import load_settings

        async def run() -> None:
            regional = {"region": self.region, "regions": ",".join(self.regions)} if self.region else {}
            settings = load_settings(nats_url=self.nats.url, nats_nkey_seed_file=self.operator_seed, **regional)
            nc = await connect(settings, name="colony-up", persistent=False)
            try:
                await ensure_schema(jetstream(nc), settings)
            finally:
                await nc.close()

        asyncio.run(run())

    # --- keep running -----------------------------------------------------------------------

    def reap(self) -> list[str]:
        """Restart the bus or instances that died; returns lines worth telling the operator."""
        notes = self._keep_bus()
        now = time.monotonic()
        for inst in self.instances:
            if inst.process is None or inst.alive:
                continue
            if not self.restart:
                continue
            if inst.next_restart == 0.0:
                code = inst.process.returncode
                inst.next_restart = now + min(30.0, 0.5 * 2 ** min(inst.restarts, 6))
                why = f": {config_error_in(inst.log_path)}" if code == CONFIG_ERROR_EXIT else ""
                notes.append(f"{inst.node_id} exited with {code}{why}; restarting (see {inst.log_path})")
            elif now >= inst.next_restart:
                inst.restarts += 1
                inst.next_restart = 0.0
                inst.spawn()
                self.info_file.write_text(json.dumps(self.describe(), indent=2))
        return notes

    def _keep_bus(self) -> list[str]:
        """The bus is supervised like an instance: when nats-server dies, start it again at
        once with the same configuration and data (the instances' clients reconnect to the
        same URL by themselves); say when it went down and when it came back."""
        nats = self.nats
        if nats is None or not self.restart or nats.process is None:
            return []
        now = time.monotonic()
        notes = []
        if self.bus_down_since is None:
            if nats.process.poll() is None:
                return []
            self.bus_down_since = now
            notes.append(f"{_clock()} bus DOWN: nats-server (pid {nats.process.pid}) exited with "
                         f"{nats.process.returncode}; restarting it with its data (see {nats.log_path})")
        if now < self.next_bus_restart:
            return notes
        try:
            nats.start()
        except NatsServerError as exc:
            self.bus_restarts += 1
            delay = min(30.0, 0.5 * 2 ** min(self.bus_restarts, 6))
            self.next_bus_restart = time.monotonic() + delay
            notes.append(f"{_clock()} bus still down: {exc}; trying again in {delay:g}s")
            return notes
        down_for = time.monotonic() - self.bus_down_since
        self.bus_down_since = None
        self.bus_restarts = 0
        self.next_bus_restart = 0.0
        self.info_file.write_text(json.dumps(self.describe(), indent=2))
        notes.append(f"{_clock()} bus UP again at {nats.url} (pid {nats.process.pid}) after {down_for:.1f}s; "
                     f"instances reconnect by themselves")
        return notes

    # --- stop -------------------------------------------------------------------------------

    def stop(self, timeout: float = 20.0) -> list[str]:
        """Stop everything in order; returns the instances that had to be killed."""
        self.restart = False
        killed = []
        by_role = {role: [i for i in self.instances if i.role == role] for role in ROLE_MODULES}
        for role in reversed(list(ROLE_MODULES)):  # front first, controllers last
            group = [i for i in by_role[role] if i.alive]
            for inst in group:
                inst.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            for inst in group:
                try:
                    inst.process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.killpg(inst.process.pid, signal.SIGKILL)
                    inst.process.wait()
                    killed.append(inst.node_id)
        if self.nats:
            self.nats.stop()
        self.pid_file.unlink(missing_ok=True)
        return killed


def _clock() -> str:
    """Wall-clock time for the terminal: an operator compares it with other logs."""
    return time.strftime("%H:%M:%S")
