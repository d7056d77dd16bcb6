"""The local CA `colony up` makes is usable: a client trusting ca.pem completes a TLS 1.2+ handshake;
the server context issues no session tickets."""

import ssl

import pytest

from colony.settings import ConfigError, Settings
from colony.tlsfiles import configured, ensure_local_ca, server_context


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """A TLS session between the two contexts, in memory, after the server sent one record."""
    a, b = ssl.MemoryBIO(), ssl.MemoryBIO()
    c, d = ssl.MemoryBIO(), ssl.MemoryBIO()
    s_obj = server.wrap_bio(a, b, server_side=True)
    c_obj = client.wrap_bio(c, d, server_hostname="mx.test")
    for _ in range(10):
        for obj in (c_obj, s_obj):
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
        a.write(d.read())
        c.write(b.read())
    s_obj.write(b"* OK\r\n")
    c.write(b.read())
    assert c_obj.read(100) == b"* OK\r\n"
    return s_obj, c_obj


def test_local_ca_and_server_certificate(tmp_path):
    files = ensure_local_ca(tmp_path / "tls", ["mx.test"])
    again = ensure_local_ca(tmp_path / "tls", ["mx.test"])
    assert again == files and files.cert.read_bytes() == again.cert.read_bytes()
    assert oct(files.key.stat().st_mode & 0o777) == "0o600"
    server = server_context(files.cert, files.key)
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    client = ssl.create_default_context(cafile=str(files.ca))
    _, c_obj = handshake(server, client)
    assert c_obj.version() in ("TLSv1.2", "TLSv1.3")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["TLSv1.2", "TLSv1.3"])
def test_no_session_tickets(tmp_path, version):
    """Neither TLS 1.3's NewSessionTicket nor a TLS 1.2 ticket: their key can be neither set
    nor rotated from Python, and imaplib2 clients hang on the tickets after STARTTLS."""
    files = ensure_local_ca(tmp_path / "tls", ["mx.test"])
    client = ssl.create_default_context(cafile=str(files.ca))
    client.minimum_version = client.maximum_version = version
    _, c_obj = handshake(server_context(files.cert, files.key), client)
    assert c_obj.version() == version.name.replace("v1_", "v1.")
    assert not c_obj.session.has_ticket
    # what the test would see from a context with tickets (the default)
    ticketing = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ticketing.load_cert_chain(str(files.cert), str(files.key))
    _, c_obj = handshake(ticketing, client)
    assert c_obj.session.has_ticket


def test_settings_must_name_both_files(tmp_path):
    assert configured(Settings()) is None
    with pytest.raises(ConfigError, match="COLONY_TLS_KEY_FILE"):
        configured(Settings(tls_cert_file=tmp_path / "x.pem"))
    with pytest.raises(ConfigError, match="COLONY_TLS_CERT_FILE"):
        server_context(tmp_path / "x.pem", tmp_path / "x.key")
