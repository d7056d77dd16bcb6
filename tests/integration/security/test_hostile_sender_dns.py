"""SPF and DKIM against DNS answers a hostile sender publishes for its own domain, served by
the real loopback DNS server: SPF include loops, chains and fans past RFC 7208 §4.6.4's ten
lookups, void lookups past two, an MX mechanism naming more than ten hosts, a 45 KB SPF
record; DKIM key records that are malformed, 100 KB long, or an RSA key whose exponent is
thousands of octets (dkimpy verifies with Python's pow(), so that key cost minutes of CPU
per message while holding the GIL).  Each check must end with a result, quickly, after a
bounded number of queries."""

from __future__ import annotations

import base64
import secrets
import time

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from colony.settings import Settings
from colony_edge.security.authentication import authenticate, use_configured_dns

MESSAGE = b"From: a@x.test\r\nTo: b@acme.example\r\nSubject: s\r\n\r\nbody\r\n"


def _check(sender_domain: str, message: bytes = MESSAGE):
    return authenticate(message, message.split(b"\r\n\r\n")[0], "mx.colony.test", "192.0.2.1",
                        f"alice@{sender_domain}", "helo.test", dns_timeout=1.0)


@pytest.fixture
def dns(dns_server):
    use_configured_dns(Settings(dns_servers=dns_server.address, dns_timeout=1.0))
    return dns_server


def test_spf_records_that_never_end_are_permerror_within_the_lookup_limits(dns):
    dns.add('loop1.test. IN TXT "v=spf1 include:loop2.test -all"',
            'loop2.test. IN TXT "v=spf1 include:loop1.test -all"')
    dns.add(*[f'c{i}.test. IN TXT "v=spf1 include:c{i + 1}.test -all"' for i in range(30)])
    dns.add('void.test. IN TXT "v=spf1 a:v1.void.test a:v2.void.test a:v3.void.test a:v4.void.test -all"')
    dns.add('mx.test. IN TXT "v=spf1 mx -all"', *[f"mx.test. IN MX {i} m{i}.mx.test." for i in range(40)])
    dns.add('wide.test. IN TXT "v=spf1 ' + " ".join(f"include:w{i}.test" for i in range(10)) + ' -all"',
            *[f'w{i}.test. IN TXT "v=spf1 ' + " ".join(f"a:x{j}.w{i}.test" for j in range(10)) + ' -all"'
              for i in range(10)])
    for domain in ("loop1.test", "c0.test", "void.test", "mx.test", "wide.test"):
        before, started = len(dns.queries), time.monotonic()
        outcome = _check(domain)
        assert outcome.spf == "permerror", domain
        assert len(dns.queries) - before <= 2 + 10 + 2, f"{domain}: RFC 7208 §4.6.4 allows ten lookups"
        assert time.monotonic() - started < 5


def test_a_45kb_spf_record_is_evaluated_not_choked_on(dns):
    dns.add_txt("huge.test.", "v=spf1 " + " ".join(f"ip4:10.{i // 256}.{i % 256}.1" for i in range(3000)) + " -all")
    started = time.monotonic()
    assert _check("huge.test").spf == "fail"
    assert time.monotonic() - started < 5


def _signed(dns, domain: str, record: str | None = None) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    if record is None:
        public = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        record = f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"
    dns.add_txt(f"sel._domainkey.{domain}", record)
    message = (f"From: Alice <alice@{domain}>\r\nTo: bob@acme.example\r\nSubject: invoice\r\n\r\nPay.\r\n").encode()
    return dkim.sign(message, b"sel", domain.encode(), private, include_headers=[b"from", b"subject"]) + message


def _der_integer(value: int) -> bytes:
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return b"\x02" + _der_length(len(body)) + body


def _der_length(n: int) -> bytes:
    if n < 128:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _rsa_public_key(modulus: int, exponent: int) -> str:
    """An RFC 8017 RSAPublicKey (which dkimpy takes as well as SubjectPublicKeyInfo)."""
    body = _der_integer(modulus) + _der_integer(exponent)
    return base64.b64encode(b"\x30" + _der_length(len(body)) + body).decode()


def test_a_dkim_key_with_a_huge_exponent_costs_no_cpu_to_speak_of(dns):
    """A 16 kbit modulus with a 32 kbit exponent: ~20 s of CPU in pow() before (a 4 KiB
    exponent with a 4 KiB modulus, still a 16 KB record, ~170 s)."""
    modulus = secrets.randbits(16_384) | 1 | (1 << 16_383)
    exponent = secrets.randbits(32_768) | 1
    message = _signed(dns, "heavy.test", f"v=DKIM1; k=rsa; p={_rsa_public_key(modulus, exponent)}")
    started = time.process_time()
    outcome = _check("heavy.test", message)
    assert time.process_time() - started < 3
    assert outcome.dkim in ("fail", "permerror") and "dkim=" in outcome.header


@pytest.mark.parametrize("record", [
    "v=DKIM1; k=rsa; p=" + "A" * 60_000,                             # 60 KB (as much as DNS carries), no key
    "v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA",   # cut short
    "v=DKIM1; k=rsa; p=%%%not base64%%%",
    "v=DKIM1; k=rsa",
    "v=DKIM1; k=rsa; p=" + _rsa_public_key((1 << 16_400) + 1, 65537),   # a modulus past 16 kbit
])
def test_a_malformed_or_oversized_dkim_key_is_a_result_not_a_crash(dns, record):
    message = _signed(dns, "broken.test", record)
    started = time.monotonic()
    outcome = _check("broken.test", message)
    assert outcome.dkim in ("fail", "permerror", "temperror", "neutral")
    assert time.monotonic() - started < 5


def test_a_sound_dkim_key_still_passes(dns):
    assert _check("good.test", _signed(dns, "good.test")).dkim == "pass"
