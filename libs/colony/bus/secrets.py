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

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from colony.bus.permissions import Identity, authorization_config, generate_identities


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
    _write(auth_conf, authorization_config(identities).encode(), 0o600)
    files = BusFiles(directory, identities, auth_conf, directory / "ca.pem", directory / "server.pem",
                     directory / "server.key")
    if not (files.ca.exists() and files.cert.exists() and files.key.exists()):
        _make_certificates(files, hosts)
    return files


def _make_certificates(files: BusFiles, hosts: list[str]) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Colony bus CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for host in dict.fromkeys([*hosts, "localhost", "127.0.0.1"]):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        # Routes and leafnodes dial as clients and verify each other: both usages.
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    private = serialization.PrivateFormat.PKCS8
    _write(files.directory / "ca.key", ca_key.private_bytes(pem, private, serialization.NoEncryption()), 0o600)
    _write(files.key, key.private_bytes(pem, private, serialization.NoEncryption()), 0o600)
    _write(files.ca, ca_cert.public_bytes(pem), 0o644)
    _write(files.cert, cert.public_bytes(pem) + ca_cert.public_bytes(pem), 0o644)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write-to-temp-then-rename, the mode set at creation (a secret is never readable by others)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
