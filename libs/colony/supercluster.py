"""``colony up --regions eu,us``: several regions and their hub on one machine, on loopback.

Each region is a whole ``colony.supervisor.Cluster`` (its own nats-server and JetStream
domain, controllers and services, data under ``<data_dir>/<region>``, ports from its own base
port); the hub is one more small nats-server the regions' servers join as leafnodes.  The
first region named is the primary (it owns PROVISIONING, see ``colony.regions``), so it is
started first and the others' mirrors find it.

The hub is authenticated like a region's own server: its leafnode listener admits one user
per region (a generated password in ``<data_dir>/hub/leaf-<region>.secret``, 0600, kept across
restarts; the region's server puts it in its remote URL), and its client port admits only the
regions' operator identities.  Each region's remote denies the region-local subjects both
ways (``names.REGION_LOCAL_SUBJECTS``).  Every region's edges and mail stores share one
hand-off secret (``<data_dir>/cluster.secret``): an edge proxies an IMAP/POP session to the
account's home region's mail store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from colony.bus import names
from colony.bus.permissions import generate_identities
from colony.contracts.handoff import ensure_secret
from colony.natsd import EmbeddedNats
from colony.ports import port_is_free
from colony.supervisor import Cluster, SupervisorError, die_with_parent

REGION_PORT_STRIDE = 200  # region #n's base port is base + 200*n (a region's own ports span base..base+199)
HUB_PORT_OFFSET = 2       # the hub's client port: base + 2 of the first region's range; its leafnode port + 3


@dataclass
class SuperCluster:
    data_dir: Path
    base_port: int
    regions: list[str]
    counts: dict[str, int]
    host: str = "127.0.0.1"
    restart: bool = True
    hub: EmbeddedNats | None = None
    clusters: dict[str, Cluster] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        if len(self.regions) < 2 or len(set(self.regions)) != len(self.regions):
            raise SupervisorError("--regions needs two or more distinct region names, e.g. --regions eu,us")
        if len(self.regions) * REGION_PORT_STRIDE > 1000:
            raise SupervisorError("--regions: at most 5 regions on one machine (each takes 200 ports from --base-port)")
        for i, region in enumerate(self.regions):
            self.clusters[region] = Cluster(
                data_dir=self.data_dir / region, base_port=self.base_port + REGION_PORT_STRIDE * i,
                counts=dict(self.counts), host=self.host, restart=self.restart, region=region,
                regions=tuple(self.regions), cluster_secret_file=self.data_dir / "cluster.secret")

    def leaf_password(self, region: str) -> str:
        """The password ``region``'s server attaches to the hub with (made once, 0600)."""
        return ensure_secret(self.data_dir / "hub" / f"leaf-{region}.secret").read_text().strip()

    def hub_authorization(self) -> str:
        """The hub's client port: the regions' operator identities only (nobody else needs it)."""
        from colony.bus.permissions import public_key_of

        users = []
        for region in self.regions:
            operator = generate_identities(self.data_dir / region / "bus", roles=("operator",))["operator"]
            users.append(f'{{ nkey: "{public_key_of(operator.seed_file)}" }}')
        return "authorization {\n  users: [" + ", ".join(users) + "]\n}"

    @property
    def hub_port(self) -> int:
        return self.base_port + HUB_PORT_OFFSET

    @property
    def leaf_port(self) -> int:
        return self.base_port + HUB_PORT_OFFSET + 1

    def start(self) -> None:
        for cluster in self.clusters.values():  # a taken port refuses before anything starts
            cluster.check_free()
        self.start_hub()
        for region in self.regions:
            self.clusters[region].start()

    def start_hub(self) -> None:
        for port, what in ((self.hub_port, "hub NATS"), (self.leaf_port, "hub leafnodes")):
            if not port_is_free(self.host, port):
                raise SupervisorError(f"port {port} ({what}) on {self.host} is taken; choose another --base-port")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for region, cluster in self.clusters.items():
            cluster.leaf_remote = f"nats-leaf://{region}:{self.leaf_password(region)}@{self.host}:{self.leaf_port}"
        # The hub holds no data of its own: JetStream only so that it has a domain of its own and
        # never answers another region's $JS.API.
        self.hub = EmbeddedNats(store_dir=self.data_dir / "hub", host=self.host, port=self.hub_port,
                                server_name=f"colony-hub-{self.base_port}", jetstream_domain=names.HUB_JS_DOMAIN,
                                leafnode_listen=f"{self.host}:{self.leaf_port}", preexec_fn=die_with_parent,
                                leafnode_users=tuple((r, self.leaf_password(r)) for r in self.regions),
                                authorization=self.hub_authorization())
        self.hub.start()

    def reap(self) -> list[str]:
        notes = []
        if self.restart and self.hub and self.hub.process and self.hub.process.poll() is not None:
            notes.append("hub nats-server exited; restarting it (regions keep serving meanwhile)")
            try:
                self.hub.start()
            except Exception as exc:  # noqa: BLE001 - told to the operator, tried again next round
                notes.append(f"hub did not restart: {exc}")
        for region, cluster in self.clusters.items():
            notes += [f"[{region}] {note}" for note in cluster.reap()]
        return notes

    def describe(self) -> dict:
        return {"hub": {"nats_url": self.hub.url if self.hub else None, "leafnodes": f"{self.host}:{self.leaf_port}",
                        "pid": self.hub.process.pid if self.hub and self.hub.process else None},
                "primary": self.regions[0],
                "regions": {region: cluster.describe() for region, cluster in self.clusters.items()}}

    def stop(self) -> list[str]:
        killed = []
        for region in reversed(self.regions):
            killed += [f"{region}/{k}" for k in self.clusters[region].stop()]
        if self.hub:
            self.hub.stop()
        return killed
