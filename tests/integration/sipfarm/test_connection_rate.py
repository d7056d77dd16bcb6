"""New connections per source address across the farm (``sip_connections_per_minute_per_ip``),
against two real members on a real nats-server: a client that connects, handshakes and
closes in a loop is counted in the shared counters whichever member it reaches, and once
over the rate it is closed before its TLS handshake (no ServerHello: the handshake is what
it costs a member), counted as ``colony_sip_dropped{reason="connection rate"}``; another
source is still served."""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
import uuid

from colony.tlsfiles import ensure_local_ca
from test_sipfarm import DOMAIN, read_sip, serve_credentials

RATE = 4
PHONE, OTHER = "127.0.0.21", "127.0.0.22"


def options() -> bytes:
    return (f"OPTIONS sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TCP 10.1.2.3:5062;rport;branch=z9hG4bK{uuid.uuid4().hex}\r\n"
            f"From: <sip:probe@{DOMAIN}>;tag=p1\r\nTo: <sip:{DOMAIN}>\r\nCall-ID: {uuid.uuid4().hex}\r\nCSeq: 1 OPTIONS\r\n"
            f"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


def hostport(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


async def visit(address: str, source: str, tls: ssl.SSLContext | None = None) -> int:
    """Connect (and handshake), one OPTIONS, close: the answer's status."""
    host, port = hostport(address)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        host, port, local_addr=(source, 0), ssl=tls, server_hostname="127.0.0.1" if tls else None), 10)
    try:
        writer.write(options())
        return (await read_sip(reader)).status
    finally:
        writer.close()


def client_hello(context: ssl.SSLContext) -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    try:
        context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1").do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


async def refused(address: str, source: str, first: bytes) -> bool:
    """Whether the member closes a connection that sent ``first`` without a byte back."""
    host, port = hostport(address)
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    try:
        writer.write(first)
        return await asyncio.wait_for(reader.read(65536), 10) == b""
    except ConnectionResetError:
        return True     # closed with what we sent unread
    finally:
        writer.close()


def dropped(addresses: dict) -> float:
    text = urllib.request.urlopen(f"http://{addresses['ops']}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('colony_sip_dropped_total{reason="connection rate"}'))


async def test_a_sources_new_connections_are_held_to_one_rate_across_members(cluster, tmp_path):
    await serve_credentials(await cluster.client())
    tls = ensure_local_ca(tmp_path / "tls", ["127.0.0.1"])
    members = []
    for node in ("sipfarm-1", "sipfarm-2"):
        # Loopback is exempt by default: exempt no one; counts exact across members at once.
        cluster.start("sipfarm", node, COLONY_SIP_PORT="0", COLONY_OUTBOUND_SMTP_PORT="25",
                      COLONY_TLS_CERT_FILE=str(tls.cert), COLONY_TLS_KEY_FILE=str(tls.key),
                      COLONY_SIP_ALLOW_NETWORKS="", COLONY_SIP_CONNECTIONS_PER_MINUTE_PER_IP=str(RATE),
                      COLONY_RATE_COUNTER_FLUSH_INTERVAL="0")
    for node in ("sipfarm-1", "sipfarm-2"):
        members.append((await cluster.wait_state(node, "READY", timeout=60)).addresses)
    first, second = members
    context = ssl.create_default_context(cafile=str(tls.ca))

    # RATE visits, over TLS to one member and TCP to the other, are served ...
    statuses = [await visit(first["sip_tls"], PHONE, context), await visit(second["sip"], PHONE),
                await visit(second["sip_tls"], PHONE, context), await visit(first["sip"], PHONE)]
    assert statuses == [200] * RATE
    # ... and the next, on either member, is closed before its handshake or its request.
    assert await refused(first["sip_tls"], PHONE, client_hello(context))
    assert await refused(second["sip"], PHONE, options())
    assert dropped(first) == 1 and dropped(second) == 1
    # Per source: another address is served.
    assert await visit(second["sip_tls"], OTHER, context) == 200
