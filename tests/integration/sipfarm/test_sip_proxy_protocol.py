"""A farm member behind a PROXY protocol balancer (``proxy_protocol_from``), over real
sockets: over TCP, TLS and WebSocket the phone the header names is the source the member answers
(Via received=/rport) and counts (``sip_max_connections_per_ip`` per phone, not per
balancer); a listed balancer's connection without a header is closed; an unlisted sender's
header is not believed."""

from __future__ import annotations

import asyncio
import ssl
import uuid

import pytest
from wsproto.events import AcceptConnection, Request

from colony.protocols.proxy_header import encode_v1, encode_v2
from colony.tlsfiles import ensure_local_ca
from test_sipfarm import DOMAIN, read_sip, serve_credentials
from test_transports import WsPhone

BALANCER = "127.0.0.8"
FRONT = ("192.0.2.10", 5060)


@pytest.fixture
async def member(cluster, tmp_path):
    nc = await cluster.client()
    await serve_credentials(nc)
    tls = ensure_local_ca(tmp_path / "tls", ["127.0.0.1"])
    # Loopback is exempt from the SIP limits by default: exempt no one, so the cap applies.
    cluster.start("sipfarm", "sipfarm-1", COLONY_SIP_PORT="0", COLONY_OUTBOUND_SMTP_PORT="25",
                  COLONY_TLS_CERT_FILE=str(tls.cert), COLONY_TLS_KEY_FILE=str(tls.key),
                  COLONY_SIP_ALLOW_NETWORKS="", COLONY_SIP_MAX_CONNECTIONS_PER_IP="1",
                  COLONY_PROXY_PROTOCOL_FROM=f"{BALANCER}/32", COLONY_PROXY_PROTOCOL_TIMEOUT="1")
    view = await cluster.wait_state("sipfarm-1", "READY", timeout=60)
    context = ssl.create_default_context(cafile=str(tls.ca))
    yield view.addresses, context


def hostport(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def options(transport: str = "TCP") -> bytes:
    return (f"OPTIONS sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/{transport} 10.1.2.3:5062;rport;branch=z9hG4bK{uuid.uuid4().hex}\r\n"
            f"From: <sip:probe@{DOMAIN}>;tag=p1\r\nTo: <sip:{DOMAIN}>\r\nCall-ID: {uuid.uuid4().hex}\r\nCSeq: 1 OPTIONS\r\n"
            f"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


async def connect(address: str, header: bytes, source: str = BALANCER, tls: ssl.SSLContext | None = None):
    host, port = hostport(address)
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    writer.write(header)
    await writer.drain()
    if tls is not None:
        await writer.start_tls(tls, server_hostname="127.0.0.1")
    return reader, writer


async def closed(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(65536), 10) == b""
    except ConnectionResetError:
        return True


async def test_the_headers_phone_is_the_source_over_tcp_and_tls(member):
    addresses, context = member
    open_ = []
    try:
        reader, writer = await connect(addresses["sip"], encode_v1(("203.0.113.7", 5070), FRONT))
        open_.append(writer)
        writer.write(options())
        ok = await read_sip(reader)
        assert ok.status == 200
        via = ok.headers.get("Via")
        assert "received=203.0.113.7" in via and "rport=5070" in via

        # One connection per phone (sip_max_connections_per_ip=1): the phone's second is
        # closed, another phone's through the same balancer is served.
        again, w2 = await connect(addresses["sip"], encode_v2(("203.0.113.7", 5071), FRONT))
        open_.append(w2)
        assert await closed(again)
        other, w3 = await connect(addresses["sip"], encode_v2(("203.0.113.8", 5072), FRONT))
        open_.append(w3)
        w3.write(options())
        assert "received=203.0.113.8" in (await read_sip(other)).headers.get("Via")

        # TLS begins after the header (haproxy's send-proxy-v2 in front of port 5061).
        secure, w4 = await connect(addresses["sip_tls"], encode_v2(("2001:db8::9", 5073), ("2001:db8::1", 5061)), tls=context)
        open_.append(w4)
        w4.write(options("TLS"))
        via = (await read_sip(secure)).headers.get("Via")
        assert "received=2001:db8::9" in via and "rport=5073" in via

        # WebSocket (RFC 7118): the header, then the HTTP upgrade.
        ws_reader, w5 = await connect(addresses["sip_ws"], encode_v1(("203.0.113.10", 5074), FRONT))
        open_.append(w5)
        phone = WsPhone(ws_reader, w5)
        w5.write(phone.ws.send(Request(host="127.0.0.1", target="/", subprotocols=["sip"])))
        assert isinstance(await phone.next_event(), AcceptConnection)
        phone.send(options("WS"))
        via = (await phone.receive()).headers.get("Via")
        assert "received=203.0.113.10" in via and "rport=5074" in via
    finally:
        for w in open_:
            w.close()


async def test_without_a_header_from_the_balancer_closed_and_from_others_not_believed(member):
    addresses, _ = member
    reader, writer = await connect(addresses["sip"], options())      # a request where the header was due
    try:
        assert await closed(reader)
    finally:
        writer.close()
    # Not the balancer: the header is no header but the start of an unparseable message,
    # dropped as SIP drops garbage; the connection still serves the next request, as
    # coming from where it really comes from.
    reader, writer = await connect(addresses["sip"], encode_v1(("203.0.113.7", 5070), FRONT) + options(),
                                   source="127.0.0.9")
    try:
        writer.write(options())
        ok = await read_sip(reader)
        assert ok.status == 200 and "received=127.0.0.9" in ok.headers.get("Via")
    finally:
        writer.close()
