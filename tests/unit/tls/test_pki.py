"""The CA and certificate ``colony.pki`` makes (``colony up``'s local CA, the bus's, the admin
API's) pass strict path validation: OpenSSL's X509_STRICT (on by default in Python 3.13's
``ssl.create_default_context``) and the RFC 5280 verifier of ``cryptography`` (what sslyze
checks with) -- both need the key identifiers of RFC 5280 §4.2.1.1-2."""

from __future__ import annotations

import datetime
import ssl

import pytest
from cryptography import x509
from cryptography.x509 import verification

from colony.pki import CertificateFiles, make_ca_and_certificate
from colony.tlsfiles import server_context


@pytest.fixture(scope="module", params=[False, True], ids=["server", "server+client"])
def files(request, tmp_path_factory) -> CertificateFiles:
    directory = tmp_path_factory.mktemp("pki")
    files = CertificateFiles(directory / "ca.pem", directory / "cert.pem", directory / "key.pem", directory / "ca.key")
    make_ca_and_certificate(files, ca_name="Test CA", hosts=["mx.test", "127.0.0.1"], client_auth=request.param)
    return files


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str) -> ssl.SSLObject:
    to_server, from_server = ssl.MemoryBIO(), ssl.MemoryBIO()
    to_client, from_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_end = server.wrap_bio(to_server, from_server, server_side=True)
    client_end = client.wrap_bio(to_client, from_client, server_hostname=hostname)
    for _ in range(10):
        for end in (client_end, server_end):
            try:
                end.do_handshake()
            except ssl.SSLWantReadError:
                pass
        to_server.write(from_client.read())
        to_client.write(from_server.read())
    return client_end


@pytest.mark.parametrize("hostname", ["mx.test", "127.0.0.1"])
def test_a_strict_openssl_client_verifies_the_chain(files, hostname):
    client = ssl.create_default_context(cafile=str(files.ca))
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    client_end = _handshake(server_context(files.cert, files.key), client, hostname)
    assert client_end.version() in ("TLSv1.2", "TLSv1.3")
    assert client_end.getpeercert()["subject"] == ((("commonName", "mx.test"),),)


def test_the_rfc5280_verifier_of_cryptography_builds_the_path(files):
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    leaf = x509.load_pem_x509_certificates(files.cert.read_bytes())[0]
    verifier = (verification.PolicyBuilder().store(verification.Store([ca]))
                .time(datetime.datetime.now(datetime.UTC)).build_server_verifier(x509.DNSName("mx.test")))
    chain = verifier.verify(leaf, [])
    assert [c.subject for c in chain] == [leaf.subject, ca.subject]
