"""What every TLS listener negotiates (``colony.tlsfiles.server_context``): TLS 1.2 or 1.3,
and in TLS 1.2 only ECDHE key exchange with an AEAD cipher (RFC 9325 §4.2).  The handshakes
run in memory, client and server shuttled by hand."""

from __future__ import annotations

import ssl

import pytest

from colony.tlsfiles import ensure_local_ca, server_context


@pytest.fixture(scope="module")
def contexts(tmp_path_factory):
    files = ensure_local_ca(tmp_path_factory.mktemp("tls"), ["mx.test"])
    return server_context(files.cert, files.key), files.ca


def client_context(ca, *, maximum=ssl.TLSVersion.TLSv1_3, ciphers: str | None = None) -> ssl.SSLContext:
    client = ssl.create_default_context(cafile=str(ca))
    client.maximum_version = maximum
    if ciphers is not None:
        client.set_ciphers(ciphers)
    return client


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> ssl.SSLObject:
    """The client's end of a completed handshake; the server's error if it refused."""
    to_server, from_server = ssl.MemoryBIO(), ssl.MemoryBIO()
    to_client, from_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_end = server.wrap_bio(to_server, from_server, server_side=True)
    client_end = client.wrap_bio(to_client, from_client, server_hostname="mx.test")
    done = set()
    for _ in range(10):
        for name, end in (("client", client_end), ("server", server_end)):
            if name in done:
                continue
            try:
                end.do_handshake()
                done.add(name)
            except ssl.SSLWantReadError:
                pass
        to_server.write(from_client.read())
        to_client.write(from_server.read())
        if done == {"client", "server"}:
            return client_end
    raise AssertionError("the handshake neither finished nor failed")


def test_tls12_offers_only_ecdhe_with_aead(contexts):
    server, _ = contexts
    tls12 = [c for c in server.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12, "no TLS 1.2 suites at all"
    for cipher in tls12:
        assert cipher["aead"] and cipher["kea"] == "kx-ecdhe", cipher["name"]


@pytest.mark.parametrize("maximum", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_a_modern_client_gets_an_aead_suite(contexts, maximum):
    server, ca = contexts
    name, version, _ = handshake(server, client_context(ca, maximum=maximum)).cipher()
    assert version == maximum.name.replace("_", "."), version
    assert "GCM" in name or "CHACHA20" in name, name


@pytest.mark.parametrize("cbc", ["ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256",
                                 "ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES256-SHA384",
                                 "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA"])
def test_a_tls12_client_offering_only_cbc_suites_is_refused(contexts, cbc):
    server, ca = contexts
    client = client_context(ca, maximum=ssl.TLSVersion.TLSv1_2, ciphers=cbc + ":@SECLEVEL=0")
    with pytest.raises(ssl.SSLError, match="NO_SHARED_CIPHER|HANDSHAKE_FAILURE"):
        handshake(server, client)
