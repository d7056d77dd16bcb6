"""Per-domain certificates by SNI, TLS 1.2+ only (in-memory handshakes, no sockets)."""

from __future__ import annotations

import ssl

import pytest
import trustme

from colony.settings import ConfigError
from colony.tlsfiles import sni_context


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, name: str) -> ssl.SSLObject:
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    cli = client.wrap_bio(c_in, c_out, server_hostname=name)
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for obj in (cli, srv):
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    cli.do_handshake()
    return cli


@pytest.fixture
def pki(tmp_path):
    ca = trustme.CA()
    default = ca.issue_cert("mail.provider.example")
    default.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "default.pem"))
    sni = tmp_path / "sni"
    sni.mkdir()
    ca.issue_cert("acme.example", "imap.acme.example").private_key_and_cert_chain_pem.write_to_path(
        str(sni / "acme.example.pem"))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return tmp_path / "default.pem", sni, client


def test_the_client_gets_its_domains_certificate_or_the_default(pki):
    default, sni, client = pki
    server = sni_context(default, default, sni)
    assert handshake(server, client, "imap.acme.example").getpeercert()["subjectAltName"][0][1] == "acme.example"
    assert handshake(server, client, "acme.example").getpeercert()["subjectAltName"][0][1] == "acme.example"
    assert handshake(server, client, "mail.provider.example").getpeercert()["subjectAltName"][0][1] == \
        "mail.provider.example"


def test_tls_below_1_2_is_refused(pki):
    default, sni, client = pki
    server = sni_context(default, default, None)
    client.minimum_version = ssl.TLSVersion.TLSv1
    client.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError):
        handshake(server, client, "mail.provider.example")


def test_a_missing_directory_names_the_setting(pki, tmp_path):
    default, _, _ = pki
    with pytest.raises(ConfigError, match="COLONY_TLS_SNI_DIR"):
        sni_context(default, default, tmp_path / "nope")


def test_a_domain_file_that_does_not_load_names_the_sni_directory(pki):
    """A broken <domain>.pem in the SNI directory was reported as COLONY_TLS_CERT_FILE /
    COLONY_TLS_KEY_FILE, the files that were fine."""
    default, sni, _ = pki
    (sni / "broken.example.pem").write_text("not a certificate\n")
    with pytest.raises(ConfigError) as info:
        sni_context(default, default, sni)
    message = str(info.value)
    assert message.startswith("COLONY_TLS_SNI_DIR") and "broken.example.pem" in message
    assert "COLONY_TLS_CERT_FILE" not in message
