"""`colony`: start a cluster on this machine, watch it, drain and ready its instances.

Provisioning commands (domain, account, cos, token, usage) talk to the admin API and live
in ``colony.cli.provisioning``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from colony.bus.connection import connect
from colony.cluster.control import ask_controller
from colony.cluster.membership import NodeState
from colony.cluster.view import NodeView, cluster_view
from colony.monitoring import targets_for
from colony.ports import DEFAULT_BASE_PORT
from colony.settings import ConfigError, Settings, load_settings

app = typer.Typer(help="Colony: a mail and VoIP cluster that behaves as one system.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

DataDir = Annotated[Path, typer.Option("--data-dir", help="Where `colony up` keeps everything it writes.", envvar="COLONY_DATA_DIR")]
NatsOpt = Annotated[Optional[str], typer.Option("--nats", help="Bus URL; default: the cluster started from --data-dir, else COLONY_NATS_URL.")]


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def _settings(**overrides) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        _fail(str(exc), 2)


def resolve_nats_url(nats: str | None, data_dir: Path) -> str:
    if nats:
        return nats
    info = data_dir / "cluster.json"
    if info.exists():
        with_url = json.loads(info.read_text()).get("nats_url")
        if with_url:
            return with_url
    return _settings().nats_url


def operator_seed(nats: str | None, data_dir: Path) -> Path | None:
    """The operator's bus identity of the cluster `colony up` started in ``data_dir`` (unless
    --nats names another bus: then COLONY_NATS_NKEY_SEED_FILE, if set, says who we are)."""
    info = data_dir / "cluster.json"
    if nats or not info.exists():
        return None
    seed = json.loads(info.read_text()).get("operator_seed")
    return Path(seed) if seed else None


def _cli_settings(url: str, seed: Path | None, **more) -> Settings:
    if seed is not None:
        more["nats_nkey_seed_file"] = seed
    return _settings(nats_url=url, nats_connect_timeout=3, **more)


STATE_STYLE = {NodeState.READY: "green", NodeState.NOT_READY: "yellow", NodeState.STARTING: "cyan",
               NodeState.STOPPED: "dim", NodeState.FAILED: "bold red"}


def status_table(views: list[NodeView], bus: str) -> Table:
    table = Table(title=f"Colony cluster on {bus}", title_justify="left")
    for col in ("instance", "role", "state", "controller", "pid", "listens on", "work", "epoch", "faults"):
        table.add_column(col)
    for v in views:
        ctl = "[bold]CONTROLLER[/bold]" if v.controller else ("backup" if v.backup else "")
        state = f"[{STATE_STYLE.get(v.state, '')}]{v.state}[/]" + (" (drained)" if v.drained and v.state == NodeState.NOT_READY else "")
        listens = ", ".join(f"{k} {a}" for k, a in sorted(v.addresses.items()))
        if v.drain_error:  # error texts are data, not rich markup
            state += f" [red](drain failed: {escape(v.drain_error)})[/red]"
        faults = f"[red]{v.fault_count}[/red]: {escape(v.faults[-1].task)}: {escape(v.faults[-1].error)}" if v.faults else ""
        table.add_row(v.id, v.role, state, ctl, str(v.pid), listens, f"{v.load.get('work', 0):g}", str(v.epoch), faults)
    return table


async def _view(url: str, seed: Path | None = None) -> list[NodeView]:
    nc = await connect(_cli_settings(url, seed), name="colony-cli", persistent=False)
    try:
        return await cluster_view(nc)
    finally:
        await nc.close()


@app.command()
def status(
    data_dir: DataDir = Path("colony-data"),
    nats: NatsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable: a list of nodes.")] = False,
) -> None:
    """Every instance: role, READY / NOT_READY, controller and backup, where it listens."""
    if nats is None and (data_dir / "supercluster.json").exists():
        _status_regions(data_dir, as_json)
        return
    url = resolve_nats_url(nats, data_dir)
    try:
        views = asyncio.run(_view(url, operator_seed(nats, data_dir)))
    except Exception as exc:
        _fail(f"cannot reach the bus at {url}: {exc or type(exc).__name__}. Is the cluster up (`colony up`)?")
    if as_json:
        print(json.dumps([v.model_dump(mode="json") for v in views], indent=2))
    else:
        console.print(status_table(views, url))


def _status_regions(data_dir: Path, as_json: bool) -> None:
    """`colony up --regions`: every region's instances, each region's bus asked in turn."""
    info = json.loads((data_dir / "supercluster.json").read_text())
    nodes = []
    for region, r in info["regions"].items():
        region_dir = Path(r["data_dir"])
        url = resolve_nats_url(None, region_dir)
        try:
            views = asyncio.run(_view(url, operator_seed(None, region_dir)))
        except Exception as exc:
            err.print(f"[yellow]region {region}: cannot reach its bus at {url}: {exc or type(exc).__name__}[/yellow]")
            continue
        if as_json:
            nodes += [{**v.model_dump(mode="json"), "region": region} for v in views]
        else:
            console.print(status_table(views, f"{url} (region {region}{', primary' if region == info['primary'] else ''})"))
    if as_json:
        print(json.dumps(nodes, indent=2))


def _command(command: str, node: str, data_dir: Path, nats: str | None, wait: bool, timeout: float) -> None:
    url = resolve_nats_url(nats, data_dir)
    seed = operator_seed(nats, data_dir)

    async def run() -> tuple[bool, str]:
        nc = await connect(_cli_settings(url, seed), name="colony-cli", persistent=False)
        try:
            reply = await ask_controller(nc, command, node)
            if not reply.ok:
                return False, reply.error or "failed"
            if command == "drain" and wait:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    mine = [v for v in await cluster_view(nc) if v.id == node]
                    if mine and mine[0].drain_error:
                        return False, f"{node} could not drain: {mine[0].drain_error} (it stays NOT_READY; `colony drain` again or `colony ready`)"
                    if mine and mine[0].drained:
                        return True, f"{node} is drained (NOT_READY, no work left); it can be stopped"
                    await asyncio.sleep(0.2)
                return False, f"{node} is NOT_READY but still has work after {timeout:g}s"
            return True, f"{node} is {reply.data.get('state', '?')}"
        finally:
            await nc.close()

    try:
        ok, message = asyncio.run(run())
    except Exception as exc:
        _fail(f"cannot reach the bus at {url}: {exc or type(exc).__name__}")
    if not ok:
        _fail(message)
    console.print(message)


@app.command()
def drain(
    node: Annotated[str, typer.Argument(help="Instance id, as `colony status` shows it.")],
    data_dir: DataDir = Path("colony-data"),
    nats: NatsOpt = None,
    wait: Annotated[bool, typer.Option(help="Wait until the instance has no work left.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for it to empty.")] = 600.0,
) -> None:
    """Make Not-Ready: the instance takes no new work, finishes what it has, reports empty."""
    _command("drain", node, data_dir, nats, wait, timeout)


@app.command()
def ready(
    node: Annotated[str, typer.Argument(help="Instance id, as `colony status` shows it.")],
    data_dir: DataDir = Path("colony-data"),
    nats: NatsOpt = None,
) -> None:
    """Make Ready: a drained instance takes work again."""
    _command("ready", node, data_dir, nats, False, 0)


# How many instances of each role `colony up` starts; `colony ports` takes the same options.
Controllers = Annotated[int, typer.Option(min=1, help="Controller instances.")]
Edges = Annotated[int, typer.Option(min=0, help="Edge instances (SMTP, submission, IMAP, POP3, autoconfiguration).")]
Mailstores = Annotated[int, typer.Option(min=0, help="Mail store instances.")]
Sipfarms = Annotated[int, typer.Option(min=0, help="SIP farm members.")]
AdminApis = Annotated[int, typer.Option("--admin-apis", min=0, max=10, help="Admin API instances.")]
Projectors = Annotated[Optional[int], typer.Option(
    min=0, help="Projector instances (the admin API's read model and directory). Default: 1 if there is an admin API.")]


def _counts(controllers: int, edges: int, mailstores: int, sipfarms: int, admin_apis: int,
            projectors: int | None) -> dict[str, int]:
    if projectors is None:
        projectors = 1 if admin_apis else 0
    return {"controller": controllers, "edge": edges, "mailstore": mailstores, "sipfarm": sipfarms,
            "projector": projectors, "admin-api": admin_apis}


@app.command()
def up(
    data_dir: DataDir = Path("colony-data"),
    base_port: Annotated[int, typer.Option(help="Every port is derived from this one (see `colony ports`).")] = DEFAULT_BASE_PORT,
    controllers: Controllers = 2,
    edges: Edges = 1,
    mailstores: Mailstores = 2,
    sipfarms: Sipfarms = 1,
    admin_apis: AdminApis = 1,
    projectors: Projectors = None,
    host: Annotated[str, typer.Option(help="Address every listener binds to.")] = "127.0.0.1",
    live: Annotated[bool, typer.Option(help="Show a live status table (default: when on a terminal).")] = sys.stdout.isatty(),
    restart: Annotated[bool, typer.Option(help="Restart an instance that dies.")] = True,
    monitoring: Annotated[bool, typer.Option(
        help="Also start Prometheus (Debian's `prometheus`) scraping every instance, targets kept current.")] = False,
    regions: Annotated[Optional[str], typer.Option(
        help="Run a super cluster: these regions (comma separated, the first is the primary) and their "
             "leafnode hub, each region a whole cluster with its ports from base-port + 200*n.")] = None,
) -> None:
    """Start the whole cluster here: embedded NATS, SQLite, shared storage under --data-dir."""
    from colony.monitoring import MonitoringError, Prometheus
    from colony.supervisor import Cluster, SupervisorError

    counts = _counts(controllers, edges, mailstores, sipfarms, admin_apis, projectors)
    if regions:
        _up_regions(data_dir, base_port, [r.strip() for r in regions.split(",") if r.strip()], counts, host, restart)
        return
    cluster = Cluster(data_dir=data_dir, base_port=base_port, counts=counts, host=host, restart=restart)
    had_token = (cluster.data_dir / "admin.token").exists()  # only a token made by this start is printed
    stop = {"now": False}

    def on_signal(signum, frame):
        stop["now"] = True

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # HUP: the terminal went away
        signal.signal(sig, on_signal)
    try:
        cluster.start()
    except SupervisorError as exc:
        _fail(str(exc))
    except Exception as exc:
        cluster.stop()
        _fail(f"could not start: {exc}")
    prometheus = None
    if monitoring:
        prometheus = Prometheus(cluster.data_dir / "prometheus", host, cluster.plan.prometheus)
        try:
            prometheus.start()
        except (MonitoringError, OSError) as exc:
            cluster.stop()
            _fail(str(exc))
    try:
        _announce(cluster, stop, had_token)
        if prometheus:
            console.print(f"  Prometheus: {prometheus.url}   (targets from {prometheus.targets_file})")
        _watch(cluster, stop, live, prometheus)
    finally:
        if prometheus:
            prometheus.stop()
        console.print("stopping: edges and APIs first, controllers last, then the bus ...")
        killed = cluster.stop()
        if killed:
            err.print(f"[yellow]{', '.join(killed)} did not stop within 20 s and were killed[/yellow]")
        console.print("stopped; no process left behind.")


def _postmaster_address() -> str:
    """The postmaster_address the instances will read (same environment and config file), or
    "" also when the settings do not load: the instances report that themselves."""
    from colony.settings import Settings

    try:
        return Settings().postmaster_address
    except Exception:
        return ""


def _announce(cluster, stop, had_token: bool) -> None:
    info = cluster.describe()
    console.print(f"[bold]Colony is starting[/bold] in {info['data_dir']}")
    console.print(f"  bus:        {info['nats_url']}   (monitoring {info['nats_monitor']})")
    for url in info["admin_api"]:
        console.print(f"  admin API:  {url}   (OpenAPI at {url}/docs)")
    console.print(f"  logs:       {cluster.data_dir / 'logs'}")
    for address in info.get("smtp") or []:
        console.print(f"  SMTP MX:    {address}")
    if info.get("smtp") and not _postmaster_address():
        # RFC 5321 4.5.1: RCPT TO:<Postmaster> MUST be accepted; there is no mailbox to take it
        # until the operator names one, so say so where the listeners are announced.
        console.print("  [yellow]postmaster: none set -- RCPT TO:<Postmaster> is refused (RFC 5321 4.5.1 wants it "
                      "taken); name a mailbox: COLONY_POSTMASTER_ADDRESS=postmaster@<your domain>[/yellow]")
    for label, key in (("submission", "submission"), ("SMTPS", "submissions")):
        for address in info.get(key) or []:
            console.print(f"  {label + ':':<11} {address}" + ("   (STARTTLS, AUTH)" if key == "submission" else "   (TLS, AUTH)"))
    for url in info.get("autoconfig") or []:
        console.print(f"  autoconfig: {url}   (Thunderbird /mail/config-v1.1.xml, Outlook /autodiscover/autodiscover.xml)")
    for address in info.get("sip") or []:
        console.print(f"  SIP (UDP+TCP): {address}")
    for label, key in (("SIP (TLS)", "sip_tls"), ("SIP (WS)", "sip_ws"), ("SIP (WSS)", "sip_wss")):
        for address in info.get(key) or []:
            console.print(f"  {label + ':':<14} {address}" + ("   (RFC 7118, Sec-WebSocket-Protocol: sip)" if "ws" in key else ""))
    for address in info.get("sip_inner") or []:
        console.print(f"  SIP inner relay: {address}   (UDP, between farm members only)")
    for label, key in (("IMAP", "imap"), ("IMAPS", "imaps"), ("POP3", "pop3"), ("POP3S", "pop3s")):
        for address in info.get(key) or []:
            console.print(f"  {label + ':':<11} {address}" + ("   (STARTTLS)" if key in ("imap", "pop3") else "   (TLS)"))
    if info.get("tls_ca"):
        console.print(f"  TLS:        certificates from a local CA; clients that verify trust {info['tls_ca']}")
        console.print(f"              e.g. curl --cacert {info['tls_ca']} ..., openssl s_client -CAfile {info['tls_ca']}, "
                      f"or system-wide: cp {info['tls_ca']} /usr/local/share/ca-certificates/colony.crt && update-ca-certificates")
    expected = sum(cluster.counts.values())
    deadline = time.monotonic() + 60
    views: list[NodeView] = []
    while time.monotonic() < deadline and not stop["now"]:
        try:
            views = asyncio.run(_view(info["nats_url"], cluster.operator_seed))
        except Exception:
            views = []
        if sum(1 for v in views if v.state == NodeState.READY) >= expected and any(v.controller for v in views):
            break
        time.sleep(0.3)
    else:
        if not stop["now"]:
            err.print("[yellow]not every instance became READY within 60s; see the logs[/yellow]")
    _bootstrap_token(cluster, had_token)
    for v in views:
        listens = ", ".join(f"{k} {a}" for k, a in sorted(v.addresses.items()))
        console.print(f"  {v.id:<14} {v.state:<9} {listens}")
    console.print("[bold green]Colony is up.[/bold green] Ctrl-C stops it.  `colony status` from another shell.")
    sys.stdout.flush()


def _bootstrap_token(cluster, had_token: bool, timeout: float = 30.0) -> None:
    """First start: print the system-admin token the first admin API wrote (0600) into the
    data directory (the admin API makes it: this CLI imports no service)."""
    token_file = cluster.data_dir / "admin.token"
    if had_token or not cluster.counts.get("admin-api"):
        return
    deadline = time.monotonic() + timeout
    while not token_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # an admin API writes it before it reports READY; this covers a slow start
    if token_file.exists():
        token = token_file.read_text().strip()
        console.print(f"  admin token: {token}   (saved to {token_file}, mode 0600)")


def _up_regions(data_dir: Path, base_port: int, regions: list[str], counts: dict, host: str, restart: bool) -> None:
    """``colony up --regions``: the hub and every region (colony.supercluster), which port is whose."""
    from colony.supercluster import SuperCluster
    from colony.supervisor import SupervisorError

    stop = {"now": False}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: stop.update(now=True))
    try:
        sc = SuperCluster(data_dir=data_dir, base_port=base_port, regions=regions, counts=counts, host=host, restart=restart)
    except SupervisorError as exc:
        _fail(str(exc))
    try:
        sc.start()
    except SupervisorError as exc:
        _fail(str(exc))
    except Exception as exc:
        sc.stop()
        _fail(f"could not start: {exc}")
    try:
        info = sc.describe()
        (sc.data_dir / "supercluster.json").write_text(json.dumps(info, indent=2))
        console.print(f"[bold]Colony super cluster[/bold] in {sc.data_dir}: regions {', '.join(regions)} "
                      f"(primary {regions[0]})")
        console.print(f"  hub:        {info['hub']['nats_url']}   (leafnodes {info['hub']['leafnodes']})")
        for region, r in info["regions"].items():
            console.print(f"  [bold]{region}[/bold]  bus {r['nats_url']}   data {r['data_dir']}")
            for label, key in (("admin API", "admin_api"), ("SMTP MX", "smtp"), ("submission", "submission"),
                               ("IMAP", "imap"), ("POP3", "pop3"), ("SIP", "sip")):
                for address in r.get(key) or []:
                    console.print(f"    {label + ':':<12} {address}")
        console.print("[bold green]Regions are up.[/bold green] Ctrl-C stops them.  "
                      "`colony status --data-dir <data-dir>` shows every region.")
        sys.stdout.flush()
        while not stop["now"]:
            for note in sc.reap():
                console.print(note)
            time.sleep(0.2)
    finally:
        console.print("stopping every region, then the hub ...")
        killed = sc.stop()
        if killed:
            err.print(f"[yellow]{', '.join(killed)} did not stop within 20 s and were killed[/yellow]")
        console.print("stopped; no process left behind.")


def _watch(cluster, stop, live: bool, prometheus=None) -> None:
    url = cluster.nats.url
    if not live:
        last = 0.0
        while not stop["now"]:
            for note in cluster.reap():
                console.print(note)
            if prometheus and time.monotonic() - last >= 2.0:
                last = time.monotonic()
                _update_targets(prometheus, url, cluster.operator_seed)
            time.sleep(0.2)
        return
    with Live(console=console, refresh_per_second=2, transient=False) as screen:
        last = 0.0
        while not stop["now"]:
            for note in cluster.reap():
                console.print(note)
            if time.monotonic() - last >= 1.0:
                last = time.monotonic()
                try:
                    views = asyncio.run(_view(url, cluster.operator_seed))
                    screen.update(status_table(views, url))
                    if prometheus:
                        prometheus.update(targets_for(views))
                except Exception as exc:
                    screen.update(f"bus unreachable: {exc}")
            time.sleep(0.1)


def _update_targets(prometheus, url: str, seed) -> None:
    """Prometheus's file_sd targets follow the NODES bucket (``colony.monitoring``)."""
    try:
        prometheus.update(targets_for(asyncio.run(_view(url, seed))))
    except Exception as exc:  # noqa: BLE001 - the bus may be restarting: keep the last targets
        err.print(f"[yellow]Prometheus targets not updated: {exc}[/yellow]")


@app.command()
def settings() -> None:
    """Every configuration key: environment variable, default, meaning."""
    table = Table(title="COLONY_* settings (environment, or a TOML file named by COLONY_CONFIG)")
    for col in ("variable", "default", "meaning"):
        table.add_column(col)
    for name, f in Settings.model_fields.items():
        default = f.default if f.default is not None else ""
        table.add_row(f"COLONY_{name.upper()}", str(default), f.description or "")
    console.print(table)


@app.command()
def ports(
    base_port: Annotated[int, typer.Option(help="As for `colony up`.")] = DEFAULT_BASE_PORT,
    controllers: Controllers = 2,
    edges: Edges = 1,
    mailstores: Mailstores = 2,
    sipfarms: Sipfarms = 1,
    admin_apis: AdminApis = 1,
    projectors: Projectors = None,
    monitoring: Annotated[bool, typer.Option(help="With `colony up --monitoring`'s Prometheus.")] = False,
) -> None:
    """The ports `colony up` opens with the same options (with --regions: region n's are these
    + 200*n, the hub's base-port + 2 and + 3)."""
    from colony.ports import PortPlan

    counts = _counts(controllers, edges, mailstores, sipfarms, admin_apis, projectors)
    plan = PortPlan(base_port)
    table = Table(title=f"ports for --base-port {base_port}")
    table.add_column("what")
    table.add_column("port")
    planned = plan.all_ports(sum(counts.values()), counts["admin-api"], counts["edge"], counts["sipfarm"],
                             counts["mailstore"])
    if monitoring:
        planned.append(("Prometheus", plan.prometheus))
    for what, port in planned:
        table.add_row(what, str(port))
    console.print(table)


bus_app = typer.Typer(help="The bus's identities, permissions and TLS material (production).", no_args_is_help=True)
app.add_typer(bus_app, name="bus")


@bus_app.command("init")
def bus_init(
    out: Annotated[Path, typer.Option(help="Directory for the secrets (docker-compose.yml reads infra/nats/secrets).")] = Path("infra/nats/secrets"),
    host: Annotated[list[str], typer.Option("--host", help="A name the NATS servers are reached by (repeat); goes into their certificate.")] = ["nats-1", "nats-2", "nats-3"],  # noqa: B006 - typer reads it, never mutated
    owner: Annotated[Optional[str], typer.Option(help="UID[:GID] to own the role seeds, e.g. 10001 (the image's colony user), so the containers can read them.")] = None,
) -> None:
    """Generate one nkey per role, the servers' authorization block and a CA with a server
    certificate; keeps identities and certificates that already exist."""
    from colony.bus.secrets import init_bus

    files = init_bus(out, host)
    if owner:
        uid, _, gid = owner.partition(":")
        try:
            for identity in files.identities.values():
                if identity.role != "operator":  # the operator's seed stays with whoever ran this
                    os.chown(identity.seed_file, int(uid), int(gid or uid))
        except (ValueError, PermissionError) as exc:
            _fail(f"--owner {owner}: {exc}; give a numeric UID[:GID] and run as root (e.g. with sudo)")
    console.print(f"bus secrets in {out}:")
    for role, identity in files.identities.items():
        console.print(f"  {role:<10} {identity.seed_file}   {identity.public_key}")
    console.print(f"  servers    {files.auth_conf} (authorization), {files.cert} + {files.key} (TLS), CA {files.ca}")
    console.print("Give each process only its own role's seed (COLONY_NATS_NKEY_SEED_FILE) and the CA "
                  "(COLONY_NATS_TLS_CA_FILE); reload the servers after a change of the grant table.")


deploy_app = typer.Typer(help="Deploying with docker-compose.yml.", no_args_is_help=True)
app.add_typer(deploy_app, name="deploy")


@deploy_app.command("init")
def deploy_init(
    out: Annotated[Path, typer.Option(help="Directory for the deployment's secrets (docker-compose.yml reads infra/secrets).")] = Path("infra/secrets"),
    bus_out: Annotated[Path, typer.Option(help="Directory for the bus secrets (`colony bus init`).")] = Path("infra/nats/secrets"),
    admin_host: Annotated[list[str], typer.Option("--admin-host", help="A name operators reach the admin API by (repeat); goes into its certificate.")] = [],  # noqa: B006 - typer reads it, never mutated
    owner: Annotated[Optional[str], typer.Option(help="UID[:GID] of the image's user (10001): owns the files Colony containers read. Run as root.")] = None,
) -> None:
    """Generate every secret docker-compose.yml needs (passwords, the admin API's TLS, the bus);
    keeps what exists. Nothing secret is printed: the files are the only copy."""
    from colony.deploy import init_deploy

    colony_owner = None
    if owner:
        uid, _, gid = owner.partition(":")
        if not (uid.isdigit() and (gid.isdigit() or not gid)):
            _fail(f"--owner {owner}: give a numeric UID[:GID], e.g. 10001")
        colony_owner = (int(uid), int(gid or uid))
    try:
        files = init_deploy(out, bus_out, admin_hosts=admin_host, colony_owner=colony_owner)
    except PermissionError as exc:
        _fail(f"{exc}; --owner needs root (run with sudo)")
    console.print(f"deployment secrets in {files.directory} (0700), bus secrets in {files.bus.directory}")
    console.print(f"Trust {files.admin_ca} for the admin API (https://<host>:8443). After `docker compose up -d`, "
                  f"the first system-admin token is in {files.token_file}.")


def _register_provisioning() -> None:
    from colony.cli import provisioning

    provisioning.register(app)


_register_provisioning()


def _register_dlq() -> None:
    from colony.cli import dlq

    dlq.register(app)


_register_dlq()


def _register_queue() -> None:
    from colony.cli import queue

    queue.register(app)


_register_queue()
