"""The admin API's HTTPS listener (``colony.http_server.EmbeddedHttpServer`` with a
certificate, as on the management network) negotiates what every other TLS listener does:
TLS 1.2+ and, in TLS 1.2, ECDHE with AEAD only (RFC 9325 §4.2); uvicorn's own default would
be Python's list with its CBC suites."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest

from colony.http_server import EmbeddedHttpServer
from colony.tlsfiles import ensure_local_ca


def _handshake(port: int, context: ssl.SSLContext) -> tuple[str, str, int]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with context.wrap_socket(sock, server_hostname="localhost") as tls:
            return tls.cipher()


@pytest.fixture
async def https(tmp_path):
    from fastapi import FastAPI

    files = ensure_local_ca(tmp_path / "tls", [])
    server = EmbeddedHttpServer(FastAPI(), "127.0.0.1", 0, tls_cert_file=files.cert, tls_key_file=files.key)
    port = await server.start()
    try:
        yield port, files.ca
    finally:
        await server.stop()


async def test_tls12_client_gets_an_aead_suite(https):
    port, ca = https
    client = ssl.create_default_context(cafile=str(ca))
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    name, version, _ = await asyncio.wait_for(asyncio.to_thread(_handshake, port, client), 30)
    assert version == "TLSv1.2" and ("GCM" in name or "CHACHA20" in name), name


async def test_a_client_offering_only_cbc_suites_is_refused(https):
    port, _ = https
    cbc_only = ssl.create_default_context()
    cbc_only.check_hostname, cbc_only.verify_mode = False, ssl.CERT_NONE
    cbc_only.maximum_version = ssl.TLSVersion.TLSv1_2
    cbc_only.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError, match="ALERT_HANDSHAKE_FAILURE"):   # told why, not a bare EOF
        await asyncio.wait_for(asyncio.to_thread(_handshake, port, cbc_only), 30)
