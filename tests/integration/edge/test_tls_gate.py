"""The edge gate comes before the TLS handshake on every implicit-TLS listener (IMAPS, POP3S,
submissions on 465), over real sockets against a real edge: a client the gate refuses (a
denied network, one over its connection rate) gets no ServerHello -- the connection closes
without a byte, the refusal counted with its reason; silent connections from one address
count as its sessions at once, the ones over ``edge_max_sessions_per_ip`` are closed at once
and the others when the handshake timeout passes (not asyncio's minute), and their sessions
are released so the address can log in again; a client the gate admits is served as before,
by the same TLS (a TLS 1.1 ClientHello still gets its fatal alert)."""

from __future__ import annotations

import asyncio
import imaplib
import poplib
import smtplib
import socket
import ssl
import time

from cluster_harness import ClusterHarness, wait_until
from colony.cluster.sessions import TLS_HANDSHAKE_TIMEOUT
from test_edge_proxy_protocol import metric, start_edge
from test_tls_alerts import ALERT, FATAL, PROTOCOL_VERSION, old_client_hello

IMPLICIT = ("imaps", "pop3s", "submissions")
DENIED = "127.0.0.66"      # on start_edge's deny list
RATED = "127.0.0.70"       # opens more connections a minute than allowed
SILENT = "127.0.0.71"      # opens connections and says nothing
WELCOME = "127.0.0.72"     # an ordinary client
OLD = "127.0.0.73"         # a client offering only TLS 1.1
MAX_SESSIONS = 4


def server_hello(port: int, source: str, context: ssl.SSLContext) -> bytes:
    """Send a real ClientHello from ``source``; what the edge sends back until it closes or
    10 s pass (a ServerHello and the rest of the server's flight, or nothing)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="mx.test")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as sock:
        sock.sendall(outgoing.read())
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
                if len(answer) > 100:      # a whole TLS record header and more: a ServerHello
                    return answer
        except ConnectionResetError:
            pass
        return answer


def alert_for_tls_1_1(port: int, source: str) -> bytes:
    """What the edge answers a TLS 1.1 ClientHello with: its fatal alert, sent before it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as sock:
        sock.sendall(old_client_hello())
        answer = b""
        try:
            while len(answer) < 7 and (chunk := sock.recv(64)):
                answer += chunk
        except ConnectionResetError:
            pass
        return answer[:7]


def greeting(name: str, port: int, source: str, context: ssl.SSLContext) -> str:
    """The protocol's greeting to a real client over implicit TLS from ``source``."""
    if name == "imaps":
        class Imap(imaplib.IMAP4_SSL):
            def _create_socket(self, timeout):
                raw = socket.create_connection((self.host, self.port), timeout, source_address=(source, 0))
                return self.ssl_context.wrap_socket(raw, server_hostname="mx.test")
        client = Imap("127.0.0.1", port, ssl_context=context, timeout=10)
        try:
            return client.welcome.decode()
        finally:
            client.logout()
    if name == "pop3s":
        class Pop(poplib.POP3_SSL):
            def _create_socket(self, timeout):
                raw = socket.create_connection((self.host, self.port), timeout, source_address=(source, 0))
                return self.context.wrap_socket(raw, server_hostname="mx.test")
        client = Pop("127.0.0.1", port, context=context, timeout=10)
        try:
            return client.getwelcome().decode()
        finally:
            client.quit()
    with smtplib.SMTP_SSL("127.0.0.1", port, context=context, timeout=10,
                          source_address=(source, 0)) as client:
        return str(client.noop()[0])


async def test_the_gate_comes_before_the_tls_handshake(cluster: ClusterHarness, tmp_path, dns_server):
    edge, addresses = await start_edge(cluster, tmp_path, dns_server,
                                       COLONY_EDGE_CONNECTIONS_PER_MINUTE_PER_IP="4",
                                       COLONY_EDGE_MAX_SESSIONS_PER_IP=str(MAX_SESSIONS))
    ports = {name: int(addresses[name].rpartition(":")[2]) for name in IMPLICIT}
    context = edge.tls_context()
    context.check_hostname = False   # the certificate names mx.test; poplib and smtplib name 127.0.0.1

    # An admitted client: the handshake and the protocol as before.
    for name, port in ports.items():
        said = await asyncio.to_thread(greeting, name, port, WELCOME, context)
        assert said.startswith(("* OK", "+OK", "250")), (name, said)

    # The handshake is still the listener's TLS: a refused one ends with its fatal alert.
    for name, port in ports.items():
        alert = await asyncio.to_thread(alert_for_tls_1_1, port, OLD)
        assert alert[0] == ALERT and alert[5:7] == bytes([FATAL, PROTOCOL_VERSION]), (name, alert)

    # A denied network: closed before a ServerHello, on every implicit-TLS port.
    for name, port in ports.items():
        assert await asyncio.to_thread(server_hello, port, DENIED, context) == b"", name
    assert metric(addresses, 'colony_edge_refusals_total{reason="denied-network",stage="connect"}') == 3

    # Over the connection rate (4 a minute, across the three ports): four sessions are served
    # (the gate counts each connection once, not again in the handler), the fifth gets no handshake.
    for i in range(4):
        name = IMPLICIT[i % 3]
        said = await asyncio.to_thread(greeting, name, ports[name], RATED, context)
        assert said.startswith(("* OK", "+OK", "250")), (name, said)
    for name in IMPLICIT:
        assert await asyncio.to_thread(server_hello, ports[name], RATED, context) == b"", name
    assert metric(addresses, 'colony_edge_refusals_total{reason="connection-rate",stage="connect"}') == 3


async def test_silent_connections_count_as_sessions_before_their_handshake(cluster: ClusterHarness, tmp_path,
                                                                              dns_server):
    edge, addresses = await start_edge(cluster, tmp_path, dns_server,
                                       COLONY_EDGE_MAX_SESSIONS_PER_IP=str(MAX_SESSIONS))
    port = int(addresses["imaps"].rpartition(":")[2])
    opened = time.monotonic()
    silent = []
    for _ in range(3 * MAX_SESSIONS):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(SILENT, 0))
        sock.setblocking(False)
        silent.append(sock)

    def closed(sock: socket.socket) -> bool:
        try:
            return sock.recv(1) == b""
        except BlockingIOError:
            return False
        except ConnectionError:
            return True

    async def closed_count(at_least: int):
        count = sum(closed(s) for s in silent)     # a closed socket keeps answering b""
        return count if count >= at_least else None

    try:
        # Those over the address's sessions are closed at once, without waiting for a handshake ...
        await wait_until(lambda: closed_count(2 * MAX_SESSIONS), 5, "the connections over the sessions limit closed")
        # ... and the others once the handshake timeout passes, far sooner than asyncio's 60 s.
        await wait_until(lambda: closed_count(3 * MAX_SESSIONS), TLS_HANDSHAKE_TIMEOUT + 10,
                         "the silent connections closed by the handshake timeout")
        assert time.monotonic() - opened < TLS_HANDSHAKE_TIMEOUT + 10
        assert metric(addresses, 'colony_edge_refusals_total{reason="concurrent-sessions",stage="connect"}') \
            == 2 * MAX_SESSIONS
    finally:
        for sock in silent:
            sock.close()

    # Their sessions were released: the address is served again.
    context = edge.tls_context()
    context.check_hostname = False
    said = await asyncio.to_thread(greeting, "imaps", port, SILENT, context)
    assert said.startswith("* OK")
