"""An edge behind a balancer that sends the PROXY protocol (``proxy_protocol_from``), over
real sockets: the header's client is the address the edge's rules and Received: line see
(a CIDR deny of 203.0.113.0/24 refuses 203.0.113.7 arriving from the balancer's address);
a header from an address not listed is SMTP garbage; a listed balancer's connection without
a valid header is closed; implicit TLS follows the header; and a real haproxy with
send-proxy-v2 in front of the SMTP listener."""

from __future__ import annotations

import asyncio
import imaplib
import smtplib
import ssl
import subprocess
import time

import pytest

from cluster_harness import ClusterHarness, wait_until
from colony.contracts import handoff
from colony.contracts.mail import InboundMail
from colony.protocols.proxy_header import encode_v1, encode_v2
from colony.tlsfiles import ensure_local_ca
from edge_harness import Edge, provision
from tools import free_ports, need_tool

BALANCER = "127.0.0.8"      # the only address allowed to send a header
OTHER = "127.0.0.9"         # any other client
FRONT = ("192.0.2.10", 25)  # the balancer's public address, as its header names it
DENIED = ("203.0.113.7", 40001)
ALLOWED = ("198.51.100.9", 40002)


class ProxiedSMTP(smtplib.SMTP):
    """smtplib with ``first`` written as soon as the connection is up, before the greeting
    is read: what a balancer with send-proxy does."""

    def __init__(self, first: bytes, **kw) -> None:
        self.first = first
        super().__init__(**kw)

    def _get_socket(self, host, port, timeout):
        sock = super()._get_socket(host, port, timeout)
        sock.sendall(self.first)
        return sock


def smtp(edge: Edge, first: bytes = b"", source: str = BALANCER, port: int | None = None) -> smtplib.SMTP:
    return ProxiedSMTP(first, host=edge.host, port=port or edge.port, local_hostname="client.test", timeout=30,
                       source_address=(source, 0))


async def start_edge(cluster: ClusterHarness, tmp_path, dns_server, **env: str) -> tuple[Edge, dict[str, str]]:
    await provision(cluster)
    files = ensure_local_ca(tmp_path / "tls", ["mx.test"])
    secret = tmp_path / "cluster.secret"     # without it the edge serves no IMAP/POP3
    handoff.ensure_secret(secret)
    # Loopback is trusted by default (edge_allow_networks): trust no one here, so the deny
    # list decides; the balancer has one second to send its header.
    cluster.start("edge", "edge-1", COLONY_SMTP_HOSTNAME="mx.test", COLONY_EDGE_ALLOW_NETWORKS="",
                  COLONY_EDGE_DENY_NETWORKS="203.0.113.0/24, 127.0.0.66/32",
                  COLONY_PROXY_PROTOCOL_FROM=f"{BALANCER}/32", COLONY_PROXY_PROTOCOL_TIMEOUT="1",
                  COLONY_DNS_SERVERS=dns_server.address, COLONY_CLUSTER_SECRET_FILE=str(secret),
                  COLONY_TLS_CERT_FILE=str(files.cert), COLONY_TLS_KEY_FILE=str(files.key), **env)
    view = await cluster.wait_state("edge-1", "READY", timeout=60)
    host, _, port = view.addresses["smtp"].rpartition(":")
    edge = Edge(cluster, "edge-1", host, int(port), files.ca)

    def directory_loaded():
        try:
            with smtp(edge, source=OTHER) as client:
                client.ehlo()
                client.mail("probe@remote.test")
                return client.rcpt("bob@example.com")[0] == 250
        except smtplib.SMTPException:
            return False

    async def loaded():
        return await asyncio.to_thread(directory_loaded)
    await wait_until(loaded, 60, "the edge's directory cache to load")
    return edge, view.addresses


def refused_at_connect(edge: Edge, first: bytes) -> tuple[int, bytes]:
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtp(edge, first)
    return refused.value.smtp_code, refused.value.smtp_error


def closed_without_a_word(edge: Edge, first: bytes) -> bool:
    try:
        smtp(edge, first).close()
    except (smtplib.SMTPServerDisconnected, ConnectionResetError):
        return True
    return False


def metric(addresses: dict, name: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"http://{addresses['ops']}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def test_smtp_behind_a_proxy_protocol_balancer(cluster: ClusterHarness, tmp_path, dns_server):
    edge, addresses = await start_edge(cluster, tmp_path, dns_server)

    # The header's client is the one the deny list judges, in v1 and v2.
    for header in (encode_v1(DENIED, FRONT), encode_v2(DENIED, FRONT)):
        code, text = await asyncio.to_thread(refused_at_connect, edge, header)
        assert code == 554 and b"5.7.1" in text

    # ... and the one the Received: line names.
    def send() -> None:
        with smtp(edge, encode_v2(ALLOWED, FRONT, tlvs=((0x05, b"unique-id"),))) as client:
            client.sendmail("alice@remote.test", ["bob@example.com"],
                            b"From: alice@remote.test\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\nvia the balancer\r\n")
    await asyncio.to_thread(send)

    async def stored():
        msgs = await edge.stream_messages()
        return msgs or None
    (message,) = await wait_until(stored, 30, "the message in the mail stream")
    body = InboundMail.from_bytes(message.data).body
    assert b"([198.51.100.9])" in body and b"127.0.0.8" not in body.split(b"\r\n\r\n")[0]

    # Not the balancer: a PROXY line is an unknown command, and the session goes on.
    def garbage() -> tuple[int, int]:
        with smtp(edge, source=OTHER) as client:
            code, _ = client.docmd(encode_v1(DENIED, FRONT).decode().rstrip("\r\n"))
            return code, client.noop()[0]
    code, after = await asyncio.to_thread(garbage)
    assert 500 <= code < 600 and after == 250

    # The balancer without a valid header: closed before any greeting, at once for garbage,
    # after proxy_protocol_timeout for silence.
    assert await asyncio.to_thread(closed_without_a_word, edge, b"EHLO client.test\r\n")
    assert await asyncio.to_thread(closed_without_a_word, edge, b"PROXY TCP4 203.0.113.7 192.0.2.10 1 99999\r\n")
    started = time.monotonic()
    assert await asyncio.to_thread(closed_without_a_word, edge, b"")
    assert time.monotonic() - started < 15
    # Counted, so a balancer that does not send the header shows on /metrics.
    refusals = 'colony_proxy_header_refusals_total{listener="smtp",reason='
    assert metric(addresses, refusals + '"malformed"}') == 2 and metric(addresses, refusals + '"timeout"}') == 1


async def test_imaps_header_before_the_tls_handshake(cluster: ClusterHarness, tmp_path, dns_server):
    edge, addresses = await start_edge(cluster, tmp_path, dns_server)
    port = int(addresses["imaps"].rpartition(":")[2])
    context = ssl.create_default_context(cafile=str(edge.ca))
    context.check_hostname = False   # the certificate names mx.test; the connection goes to 127.0.0.1

    class ProxiedIMAP4_SSL(imaplib.IMAP4_SSL):
        def __init__(self, first: bytes, **kw) -> None:
            self.first = first
            super().__init__(**kw)

        def _create_socket(self, timeout):
            import socket
            raw = socket.create_connection((self.host, self.port), timeout, source_address=(BALANCER, 0))
            raw.sendall(self.first)
            return self.ssl_context.wrap_socket(raw, server_hostname=self.host)

    def greeting(header: bytes) -> bytes:
        try:
            client = ProxiedIMAP4_SSL(header, host=edge.host, port=port, ssl_context=context, timeout=30)
        except (imaplib.IMAP4.error, ConnectionError, ssl.SSLError) as exc:
            return exc.args[0] if exc.args and isinstance(exc.args[0], bytes) else str(exc).encode()
        try:
            return client.welcome
        finally:
            client.shutdown()

    assert (await asyncio.to_thread(greeting, encode_v1(ALLOWED, FRONT))).startswith(b"* OK")
    assert (await asyncio.to_thread(greeting, encode_v2(ALLOWED, FRONT))).startswith(b"* OK")
    # The deny list judges the header's client, as on SMTP, before the TLS handshake: no
    # ServerHello, the connection just closes.
    refused = await asyncio.to_thread(greeting, encode_v2(DENIED, FRONT))
    assert b"EOF" in refused or b"reset" in refused.lower(), refused


async def test_a_real_haproxy_with_send_proxy_v2(cluster: ClusterHarness, tmp_path, dns_server):
    haproxy = need_tool("haproxy")
    edge, _ = await start_edge(cluster, tmp_path, dns_server)
    (port,) = free_ports(1)
    config = tmp_path / "haproxy.cfg"
    config.write_text(f"""
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend smtp
    bind 127.0.0.1:{port}
    default_backend edge

backend edge
    server edge1 {edge.host}:{edge.port} send-proxy-v2 source {BALANCER}
""")
    log = tmp_path / "haproxy.log"    # a file, not a pipe nobody reads while it runs
    proc = subprocess.Popen([haproxy, "-f", str(config), "-db"], stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        def greeting(source: str) -> int:
            try:
                with smtp(edge, source=source, port=port) as client:
                    return client.noop()[0]
            except smtplib.SMTPConnectError as exc:
                return exc.smtp_code
            except (OSError, smtplib.SMTPServerDisconnected):
                return 0

        async def up():
            assert proc.poll() is None, log.read_text()
            return await asyncio.to_thread(greeting, "127.0.0.67") == 250
        await wait_until(up, 30, "haproxy to forward to the edge")
        # 127.0.0.66 is on the deny list: refused only if the edge sees it, not haproxy's 127.0.0.8.
        assert await asyncio.to_thread(greeting, "127.0.0.66") == 554
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
