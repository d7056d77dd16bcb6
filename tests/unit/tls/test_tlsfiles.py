"""The local CA `colony up` makes is usable: a client trusting ca.pem completes a TLS 1.2+ handshake."""

import ssl

import pytest

from colony.settings import ConfigError, Settings
from colony.tlsfiles import configured, ensure_local_ca, server_context


def test_local_ca_and_server_certificate(tmp_path):
    files = ensure_local_ca(tmp_path / "tls", ["mx.test"])
    again = ensure_local_ca(tmp_path / "tls", ["mx.test"])
    assert again == files and files.cert.read_bytes() == again.cert.read_bytes()
    assert oct(files.key.stat().st_mode & 0o777) == "0o600"
    server = server_context(files.cert, files.key)
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    client = ssl.create_default_context(cafile=str(files.ca))
    a, b = ssl.MemoryBIO(), ssl.MemoryBIO()
    c, d = ssl.MemoryBIO(), ssl.MemoryBIO()
    s_obj = server.wrap_bio(a, b, server_side=True)
    c_obj = client.wrap_bio(c, d, server_hostname="mx.test")
    for _ in range(10):  # shuttle the handshake between the two in memory
        for obj in (c_obj, s_obj):
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
        a.write(d.read())
        c.write(b.read())
    assert c_obj.version() in ("TLSv1.2", "TLSv1.3")


def test_settings_must_name_both_files(tmp_path):
    assert configured(Settings()) is None
    with pytest.raises(ConfigError, match="COLONY_TLS_KEY_FILE"):
        configured(Settings(tls_cert_file=tmp_path / "x.pem"))
    with pytest.raises(ConfigError, match="COLONY_TLS_CERT_FILE"):
        server_context(tmp_path / "x.pem", tmp_path / "x.key")
