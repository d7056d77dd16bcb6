"""CPU of the edge's SPF/DKIM/DMARC check per message (``colony_edge.security.authentication``).

    .venv/bin/python bench/edge_auth.py [--messages 200]

Runs ``authenticate`` (what the edge does for every message from an untrusted client) in
this process against a real authoritative DNS server on loopback (tests/dnsserver.py, the
one the tests use) that publishes the sender's SPF, DKIM key and DMARC records, for a
DKIM-signed and an unsigned message, two ways:

* ``authheaders as shipped``: the library's org-domain lookup, which parses the whole
  Public Suffix List on every call, and no resolver cache;
* ``Colony``: the list parsed once per process and a TTL-bound resolver cache.

CPU is this process's user+system time (``time.process_time``) divided by the messages; DNS
answers come over real UDP on loopback.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import time
from pathlib import Path

import dkim
import dns.resolver
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from publicsuffix2 import PublicSuffixList
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from dnsserver import LoopbackDNS  # noqa: E402

import authheaders.dmarc_lookup as lookup  # noqa: E402

from colony.settings import Settings  # noqa: E402
from colony_edge.security import authentication  # noqa: E402


def _shipped(location, domain: str) -> str:
    """authheaders' own get_org_domain_from_suffix_list, as the library ships it."""
    with open(location) as suffix_list:
        return PublicSuffixList(suffix_list).get_public_suffix(domain)


def measure(message: bytes, count: int) -> float:
    header = message.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    start = time.process_time()
    for _ in range(count):
        authentication.authenticate(message, header, "mx.bench", "127.0.0.5", "alice@signer.test",
                                    "mail.signer.test")
    return (time.process_time() - start) / count * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200)
    args = parser.parse_args()
    server = LoopbackDNS().start()
    try:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = base64.b64encode(key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
        server.add_txt("sel._domainkey.signer.test", f"v=DKIM1; k=rsa; p={public}")
        server.add('signer.test. IN TXT "v=spf1 ip4:127.0.0.5 -all"', '_dmarc.signer.test. IN TXT "v=DMARC1; p=reject"')
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        unsigned = (b"From: Alice <alice@signer.test>\r\nTo: bob@example.com\r\nSubject: bench\r\n"
                    b"Message-ID: <b1@signer.test>\r\n\r\n" + b"The quick brown fox.\r\n" * 40)
        signed = dkim.sign(unsigned, b"sel", b"signer.test", private,
                           include_headers=[b"from", b"to", b"subject"]) + unsigned
        settings = Settings(dns_servers=server.address)
        rows = []
        for label, shipped in (("authheaders as shipped", True), ("Colony", False)):
            authentication.use_configured_dns(settings)
            if shipped:
                lookup.get_org_domain_from_suffix_list = _shipped
                dns.resolver.default_resolver.cache = None
            else:
                lookup.get_org_domain_from_suffix_list = authentication._org_domain_from_shared_list
            outcome = authentication.authenticate(signed, signed.split(b"\r\n\r\n", 1)[0] + b"\r\n", "mx.bench",
                                                  "127.0.0.5", "alice@signer.test", "mail.signer.test")
            assert (outcome.spf, outcome.dkim, outcome.dmarc) == ("pass", "pass", "pass"), outcome
            count = max(10, args.messages // 10) if shipped else args.messages
            rows.append((label, measure(signed, count), measure(unsigned, count)))
    finally:
        server.stop()
    table = Table(title=f"SPF + DKIM + DMARC check, CPU per message, {os.cpu_count()} cores")
    for column in ("path", "DKIM-signed ms", "unsigned ms"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for label, signed_ms, unsigned_ms in rows:
        table.add_row(label, f"{signed_ms:.2f}", f"{unsigned_ms:.2f}")
    Console(width=100).print(table)


if __name__ == "__main__":
    main()
