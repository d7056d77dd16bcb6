"""TLS material: the server context every TLS listener uses, and a local CA for `colony up`.

Production configures ``tls_cert_file``/``tls_key_file`` (a certificate from a real CA).
A development cluster has none, so ``ensure_local_ca`` makes, once, a private CA and a
server certificate for localhost/127.0.0.1/::1 and the advertised host, in
``<data_dir>/tls/`` (``ca.pem``, ``server.pem``, ``server.key``, key files 0600); clients
that should verify the server trust ``ca.pem``.  Every context is TLS 1.2 or newer.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from colony.settings import ConfigError, Settings


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path | None = None   # set when Colony made the CA itself


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"COLONY_TLS_CERT_FILE/COLONY_TLS_KEY_FILE: cannot load {cert} / {key} ({exc}); "
                          "point them at a PEM certificate chain and its private key") from exc
    return context


def sni_context(cert: Path, key: Path, sni_dir: Path | None) -> ssl.SSLContext:
    """``server_context`` that picks a per-domain certificate by SNI from ``sni_dir``:
    ``<name>.pem`` (chain and key in one file, or the key beside it in ``<name>.key``).  A name
    without a file of its own, or no SNI at all, gets ``cert``.  The directory is read once,
    here: a new domain's certificate takes effect on the next start of the edge."""
    default = server_context(cert, key)
    if sni_dir is None:
        return default
    if not sni_dir.is_dir():
        raise ConfigError(f"COLONY_TLS_SNI_DIR: {sni_dir} is not a directory; create it or unset the key")
    by_name: dict[str, ssl.SSLContext] = {}
    for pem in sorted(sni_dir.glob("*.pem")):
        key_file = pem.with_suffix(".key")
        by_name[pem.stem.lower()] = server_context(pem, key_file if key_file.exists() else pem)

    def choose(sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        if name:
            name = name.lower().rstrip(".")
            # an exact name first, then the parent domain (imap.acme.example -> acme.example)
            context = by_name.get(name) or by_name.get(name.partition(".")[2])
            if context is not None:
                sock.context = context
        return None

    default.sni_callback = choose
    return default


def configured(settings: Settings) -> TlsFiles | None:
    """The files the settings name, None when none are configured."""
    if settings.tls_cert_file is None and settings.tls_key_file is None:
        return None
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        raise ConfigError("COLONY_TLS_CERT_FILE and COLONY_TLS_KEY_FILE go together; set both or neither")
    return TlsFiles(settings.tls_cert_file, settings.tls_key_file)


def ensure_local_ca(directory: Path, hostnames: list[str]) -> TlsFiles:
    """Create (if missing) a local CA and a server certificate signed by it in ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "server.pem", directory / "server.key", directory / "ca.pem")
    if files.cert.exists() and files.key.exists() and files.ca.exists():
        return files

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Colony local CA")])
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
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(["localhost", "127.0.0.1", "::1", *hostnames]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0] if hostnames else "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    _write(directory / "ca.key", ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), 0o600)
    _write(files.key, key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), 0o600)
    _write(files.ca, ca_cert.public_bytes(pem), 0o644)
    _write(files.cert, cert.public_bytes(pem) + ca_cert.public_bytes(pem), 0o644)
    return files


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
