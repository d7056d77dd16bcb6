"""Everything a production bus needs that must not be typed or committed: `colony bus init`.

One directory holds, for a NATS cluster whose servers are reached by the host names given:

* ``<role>.nk`` for every role of ``names.GRANTS`` (nkey seeds, 0600): each Colony process
  gets only its own role's file (``COLONY_NATS_NKEY_SEED_FILE``);
* ``auth.conf``: the servers' ``authorization`` block (public keys and the permissions of
  each role), included by ``infra/nats/*.conf``;
* ``ca.pem`` / ``ca.key`` (0600): a private CA, and ``server.pem`` / ``server.key`` (0600):
  one certificate for every server, valid for client, route and leafnode connections in
  both directions (server and client auth, since routes and leafnodes dial each other).
  Clients verify the servers with ``ca.pem`` (``COLONY_NATS_TLS_CA_FILE``).

Running it again keeps what exists (identities do not change under a running cluster) and
rewrites ``auth.conf`` from the current grant table, so a new grant reaches the servers on
their next reload.  Bring your own certificates by putting them in place first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from colony.bus.permissions import Identity, authorization_config, generate_identities
from colony.pki import CertificateFiles, make_ca_and_certificate, write_file


@dataclass(frozen=True)
class BusFiles:
    directory: Path
    identities: dict[str, Identity]
    auth_conf: Path
    ca: Path
    cert: Path
    key: Path


def init_bus(directory: Path, hosts: list[str]) -> BusFiles:
    identities = generate_identities(directory)
    auth_conf = directory / "auth.conf"
    write_file(auth_conf, authorization_config(identities).encode(), 0o600)
    files = BusFiles(directory, identities, auth_conf, directory / "ca.pem", directory / "server.pem",
                     directory / "server.key")
    if not (files.ca.exists() and files.cert.exists() and files.key.exists()):
        _make_certificates(files, hosts)
    return files


def _make_certificates(files: BusFiles, hosts: list[str]) -> None:
    # Routes and leafnodes dial as clients and verify each other: both usages.
    make_ca_and_certificate(CertificateFiles(files.ca, files.cert, files.key, files.directory / "ca.key"),
                            ca_name="Colony bus CA", hosts=[*hosts, "localhost", "127.0.0.1"], client_auth=True)
