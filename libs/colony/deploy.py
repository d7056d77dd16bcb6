"""The secrets a compose deployment needs and nobody should type: `colony deploy init`.

``docker-compose.yml`` has no password in it and no default for one: every secret is a file
under ``infra/secrets/`` (ignored by git and Docker builds) that compose hands to the one
container that needs it as a Docker secret (``/run/secrets/<name>``), so it is never in an
environment variable (``docker inspect``) or on a command line (``ps``):

* ``postgres-password``: the read-model database's password (``POSTGRES_PASSWORD_FILE``);
* ``database-url``: the SQLAlchemy URL with that password, for the admin API and the
  projector (``COLONY_DATABASE_URL_FILE``);
* ``grafana-admin-password`` (``GF_SECURITY_ADMIN_PASSWORD__FILE``);
* ``admin-tls/``: a private CA (``ca.pem``, what the operator's client trusts) and one
  certificate for the names ``admin-api`` and ``admin-balancer`` (``server.pem`` /
  ``server.key``; ``admin-api.pem`` is both in one file, for haproxy): the admin API is
  reached over TLS on the management network only, and the balancer reaches it over TLS;
* ``public-tls/``: the certificate of everything the public reaches, ``public.pem`` (chain
  and key in one file): the balancer's HTTPS (443: mail clients' autoconfiguration), and the
  edges' and SIP farm's TLS (IMAPS, POP3S, SMTPS, every STARTTLS, SIP over TLS and WSS).  Made
  from a throwaway CA for ``mail``, ``autoconfig`` and ``autodiscover`` so everything starts;
  mail clients trust none of it: replace it with a certificate for the provider's mail host
  and ``autoconfig.<domain>``/``autodiscover.<domain>`` of the hosted domains (a running
  deployment keeps the file; ``tls_sni_dir`` serves a domain's own);
* ``cluster-secret``: random bytes every edge, mail store and admin API share
  (``COLONY_CLUSTER_SECRET_FILE``): it signs the edge's hand-off of an IMAP or POP3 session to
  the mail store, keys SRS for forwarded mail and the monitor page's feed -- without it the
  edges open no IMAP or POP3 listener;
* ``bootstrap/``: where the one-shot ``admin-bootstrap`` job writes the first system-admin
  token (``admin.token``), for the operator to read on the host;
* the bus identities and TLS of ``colony bus init`` (``infra/nats/secrets/``).

The directory is 0700 and owned by whoever ran the command (root), so nobody else on the
host reads it.  Compose bind-mounts each secret file with its host mode and owner, and the
containers run as different users (postgres, grafana, the image's uid 10001), so files
read by a container are owned by that container's user (``--owner``) or world-readable
inside the closed directory.  Running it again keeps every file that exists: a password
that changed under a running database would lock the cluster out.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from colony.bus.secrets import BusFiles, _make_certificates, init_bus
from colony.pki import CertificateFiles, make_ca_and_certificate
from colony.pki import write_file as _write

NATS_HOSTS = ["nats-1", "nats-2", "nats-3"]
ADMIN_HOSTS = ["admin-api", "admin-balancer"]
PUBLIC_TLS_HOSTS = ["mail", "autoconfig", "autodiscover"]   # placeholders; see the module docstring


@dataclass(frozen=True)
class DeployFiles:
    directory: Path
    postgres_password: Path
    database_url: Path
    grafana_password: Path
    admin_ca: Path
    admin_pem: Path
    bootstrap_dir: Path
    bus: BusFiles
    public_pem: Path | None = None
    cluster_secret: Path | None = None

    @property
    def token_file(self) -> Path:
        return self.bootstrap_dir / "admin.token"

    def secret_values(self) -> list[str]:
        """Every generated secret's text, for checks that none leaks anywhere."""
        values = [self.postgres_password.read_text().strip(), self.grafana_password.read_text().strip()]
        if self.cluster_secret is not None:
            values.append(self.cluster_secret.read_text().strip())
        return values


def _secret_file(path: Path, text: str, mode: int, owner: tuple[int, int] | None) -> None:
    if path.exists():
        return
    _write(path, text.encode(), mode)
    if owner is not None:
        os.chown(path, *owner)


def init_deploy(directory: Path, bus_directory: Path, *, admin_hosts: list[str] | None = None,
                colony_owner: tuple[int, int] | None = None) -> DeployFiles:
    """Generate what is missing under ``directory`` (and the bus's under ``bus_directory``).

    ``colony_owner`` (uid, gid of the image's user, 10001) owns the files Colony processes
    read; without it (tests, a rootless host) they are left to whoever runs this.
    """
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    password = secrets.token_urlsafe(24)  # URL-safe: it goes into the database URL unquoted
    pg = directory / "postgres-password"
    # postgres reads its password file after dropping to its own user: readable inside the
    # closed directory (0700) only.
    _secret_file(pg, password + "\n", 0o644, None)
    password = pg.read_text().strip()
    url = directory / "database-url"
    _secret_file(url, f"postgresql+psycopg://colony:{password}@postgres:5432/colony\n", 0o600, colony_owner)
    grafana = directory / "grafana-admin-password"
    _secret_file(grafana, secrets.token_urlsafe(18) + "\n", 0o644, None)
    cluster_secret = directory / "cluster-secret"
    _secret_file(cluster_secret, secrets.token_urlsafe(48) + "\n", 0o600, colony_owner)

    tls = directory / "admin-tls"
    tls.mkdir(exist_ok=True)
    os.chmod(tls, 0o700)
    hosts = list(dict.fromkeys([*(admin_hosts or []), *ADMIN_HOSTS]))
    admin = BusFiles(tls, {}, tls / "unused", tls / "ca.pem", tls / "server.pem", tls / "server.key")
    combined = tls / "admin-api.pem"
    if not combined.exists():
        _make_certificates(admin, hosts)
        # haproxy takes the chain and the key in one file. The official image runs as its own
        # user (uid 99), so the file is readable inside the closed (0700) directories only.
        _write(combined, admin.cert.read_bytes() + admin.key.read_bytes(), 0o644)
    if colony_owner is not None:
        # The admin API (uid 10001) serves HTTPS with the same certificate.
        os.chown(admin.key, *colony_owner)

    public = directory / "public-tls"
    public.mkdir(exist_ok=True)
    os.chmod(public, 0o700)
    public_pem = public / "public.pem"
    if not public_pem.exists():
        placeholder = CertificateFiles(public / "ca.pem", public / "server.pem", public / "server.key", public / "ca.key")
        make_ca_and_certificate(placeholder, ca_name="Colony placeholder CA (replace)", hosts=PUBLIC_TLS_HOSTS)
        # haproxy (uid 99) and the edges and farm members (uid 10001) read it inside the
        # closed directory, as admin-api.pem
        _write(public_pem, placeholder.cert.read_bytes() + placeholder.key.read_bytes(), 0o644)

    bootstrap = directory / "bootstrap"
    bootstrap.mkdir(exist_ok=True)
    os.chmod(bootstrap, 0o700)
    if colony_owner is not None:
        os.chown(bootstrap, *colony_owner)  # the admin-bootstrap job writes the token here

    bus = init_bus(bus_directory, NATS_HOSTS)
    if colony_owner is not None:
        for identity in bus.identities.values():
            if identity.role != "operator":  # the operator's seed stays with whoever ran this
                os.chown(identity.seed_file, *colony_owner)
    return DeployFiles(directory, pg, url, grafana, admin.ca, combined, bootstrap, bus, public_pem, cluster_secret)
