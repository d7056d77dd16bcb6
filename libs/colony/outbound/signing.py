"""DKIM signing (RFC 6376, dkimpy) with per-domain keys kept outside the event log.

Key stores, both without history: the ``dkim_keys`` bucket (history 1; one JSON value per
domain, ``to_json``/``from_json``), written by the admin API's ``POST /v1/domains/{d}/dkim``,
and, for operators who manage keys by hand, ``<dkim_key_dir>/<domain>/<selector>.pem``
(PKCS#8 PEM, mode 0600, ``write_key``; the newest file of a domain).  A rotation makes a key
under a new selector; the next message uses it while the old record stays published for
mail still in flight.  Nothing about a private key ever goes into a stream.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

SIGNED_HEADERS = [b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to", b"mime-version",
                  b"content-type", b"content-transfer-encoding", b"in-reply-to", b"references"]


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    private_pem: bytes

    def dns_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def dns_record(self) -> str:
        """The TXT record to publish: ``v=DKIM1; k=rsa; p=<base64 public key>``."""
        key = serialization.load_pem_private_key(self.private_pem, password=None)
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def to_json(key: DkimKey) -> bytes:
    """The ``dkim_keys`` bucket's value (key: ``to_token(domain)``)."""
    return json.dumps({"domain": key.domain, "selector": key.selector, "private_pem": key.private_pem.decode()}).encode()


def from_json(data: bytes) -> DkimKey:
    raw = json.loads(data)
    return DkimKey(raw["domain"], raw["selector"], raw["private_pem"].encode())


def generate_key(domain: str, selector: str, bits: int = 2048) -> DkimKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return DkimKey(domain.lower(), selector, pem)


def write_key(key_dir: Path, key: DkimKey) -> Path:
    folder = key_dir / key.domain
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{key.selector}.pem"
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_pem)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    return path


def current_key(key_dir: Path, domain: str) -> DkimKey | None:
    folder = key_dir / domain.lower()
    try:
        files = [p for p in folder.iterdir() if p.suffix == ".pem"]
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not files:
        return None
    newest = max(files, key=lambda p: (p.stat().st_mtime_ns, p.name))
    return DkimKey(domain.lower(), newest.stem, newest.read_bytes())


def sign(message: bytes, key: DkimKey) -> bytes:
    """The DKIM-Signature field (with CRLF) to prepend to ``message`` (relaxed/relaxed)."""
    present = {line.split(b":", 1)[0].strip().lower() for line in message.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
               if line and line[:1] not in b" \t" and b":" in line}
    headers = [h for h in SIGNED_HEADERS if h in present] or [b"from"]
    signature = dkim.sign(message, key.selector.encode(), key.domain.encode(), key.private_pem,
                          canonicalize=(b"relaxed", b"relaxed"), include_headers=headers)
    return signature.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
