"""A private CA and one certificate signed by it: the one way Colony makes its own TLS material.

Three callers need it: ``colony up``'s local CA for the client listeners (``tlsfiles``), the
bus's CA for client, route and leafnode TLS (``bus.secrets``), and the admin API's
management-network certificate (``deploy``).  They differ only in the CA's name, the host
names, and whether the certificate also authenticates as a client (routes and leafnodes
dial each other).  Both certificates carry the key identifiers RFC 5280 §4.2.1.1-2 asks of a
CA (subject key identifier on the CA, authority key identifier on what it signs): strict
verifiers -- OpenSSL's X509_V_FLAG_X509_STRICT, on by default in Python 3.13's
``ssl.create_default_context``, and the verifier of ``cryptography`` (sslyze) -- reject a
chain without them.  Keys are P-256; files are written temp-then-rename with their mode set at
creation, so a private key is never readable by others, not even for a moment.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

CA_DAYS = 3650
CERT_DAYS = 825  # what browsers accept for a certificate from a private CA


@dataclass(frozen=True)
class CertificateFiles:
    ca: Path      # the CA certificate (0644): what clients trust
    cert: Path    # the server certificate followed by the CA (0644)
    key: Path     # the server key (0600)
    ca_key: Path  # the CA key (0600): kept to sign later certificates by hand


def make_ca_and_certificate(files: CertificateFiles, *, ca_name: str, hosts: list[str],
                            client_auth: bool = False) -> None:
    """Write a new CA and a certificate for ``hosts`` (DNS names or IP addresses; the first is
    the subject's common name) into ``files``, replacing what is there."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca_cert = (
        x509.CertificateBuilder().subject_name(issuer).issuer_name(issuer)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client_auth else [])
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "localhost")]))
        .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    private = serialization.PrivateFormat.PKCS8
    write_file(files.ca_key, ca_key.private_bytes(pem, private, serialization.NoEncryption()), 0o600)
    write_file(files.key, key.private_bytes(pem, private, serialization.NoEncryption()), 0o600)
    write_file(files.ca, ca_cert.public_bytes(pem), 0o644)
    write_file(files.cert, cert.public_bytes(pem) + ca_cert.public_bytes(pem), 0o644)


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write-to-temp-then-rename, the mode set at creation (a secret is never readable by others)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
