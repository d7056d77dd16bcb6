"""Who a client's IMAP and POP3 sessions count against at the edge gate, over real sockets
(client -> edge -> a stand-in store) with the real ``EdgeGate`` and shared counters on a real
nats-server: before login the client's address (``edge_max_sessions_per_ip``), once logged
in the account at that address (``edge_max_sessions_per_account_ip``).  A small company's mail
users share one NAT address and each desktop client keeps several sessions, so a limit on the
address alone turned away the tenth colleague's Thunderbird; strangers still hold at most the
address's share of unauthenticated connections.  And the block lists are the MX's: a mail
user on a dynamic address that Spamhaus's PBL lists reads and submits mail as anyone else."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import trustme
from prometheus_client import CollectorRegistry

from colony.cluster.sessions import ConnectionWorkload
from colony.counters import SharedCounters
from colony.dns import make_resolver
from colony.settings import Settings
from colony.tlsfiles import server_context
from colony_edge.access_proxy import AccessProxy, LoginThrottle
from colony_edge.security.gate import EdgeGate

from test_access_splice import _Store
from test_access_store_refusals import _Auth, _Finder, _listen, _Metrics, _Tracker

CLIENT = "127.0.0.88"       # every client here comes from this address (a company's NAT)


@contextlib.asynccontextmanager
async def _edge(js, **limits):
    """An edge's IMAP (plain) and IMAPS listeners over a real gate (no trusted networks, so
    loopback counts), in front of a store that takes every login: (imap port, imaps port,
    client TLS context, the gate)."""
    settings = Settings(access_plaintext_auth=True, edge_allow_networks="", **limits)
    counters = SharedCounters(js, "edge-sessions", flush_interval=0.05)
    await counters.start()
    gate = EdgeGate(settings, counters, make_resolver(settings), CollectorRegistry())
    ca = trustme.CA()
    issued = ca.issue_cert("localhost")
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    with issued.cert_chain_pems[0].tempfile() as cert, issued.private_key_pem.tempfile() as key:
        server_tls = server_context(cert, key)
    store = _Store()
    workload = ConnectionWorkload("edge")
    try:
        async with _listen(store.handle) as store_addr:
            proxy = AccessProxy(settings, b"s" * 32, _Auth(), _Finder(store_addr), LoginThrottle(settings, counters, gate),
                                gate, server_tls, _Tracker(), _Metrics(), "edge.test")
            ports = []
            for implicit in (False, True):
                async def handler(reader, writer, implicit=implicit):
                    await proxy.imap(reader, writer, implicit)
                address = await workload.listen("imaps" if implicit else "imap", "127.0.0.1", 0, handler,
                                                ssl=server_tls if implicit else None,
                                                gate=gate.for_clients() if implicit else None,
                                                advertised_host="127.0.0.1")
                ports.append(int(address.rpartition(":")[2]))
            yield ports[0], ports[1], client_tls, gate
    finally:
        for server in workload._servers:
            server.close()
        await counters.stop()


class _Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, greeting: bytes) -> None:
        self.reader, self.writer, self.greeting = reader, writer, greeting

    async def login(self, user: str) -> bytes:
        self.writer.write(f"a1 LOGIN {user} secret\r\n".encode())
        return await asyncio.wait_for(self.reader.readline(), 10)

    def close(self) -> None:
        self.writer.close()


async def _connect(port: int, tls: ssl.SSLContext | None = None) -> _Client:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", port, ssl=tls, server_hostname="localhost" if tls else None, local_addr=(CLIENT, 0)), 10)
    return _Client(reader, writer, await asyncio.wait_for(reader.readline(), 10))


async def test_logged_in_sessions_count_against_the_account_not_the_address(js):
    async with _edge(js, edge_max_sessions_per_ip=2, edge_max_sessions_per_account_ip=3) as (imap, imaps, tls, gate):
        clients = []
        try:
            # Six colleagues' sessions from one address, three times the address's limit: each
            # logs in, and its share goes from the address to its account.
            for n, user in enumerate(["alice@acme.example", "bob@acme.example"] * 3):
                client = await _connect(imaps if n % 2 else imap, tls if n % 2 else None)
                clients.append(client)
                assert client.greeting.startswith(b"* OK"), (n, client.greeting)
                assert (await client.login(user)).startswith(b"a1 OK"), n
            # A fourth of alice's from that address is one too many: refused after the
            # password, temporarily, and the connection may log in as someone else.
            fourth = await _connect(imap)
            clients.append(fourth)
            refused = await fourth.login("alice@acme.example")
            assert refused.startswith(b"a1 NO [UNAVAILABLE] Too many sessions of this account"), refused
            assert (await fourth.login("carol@acme.example")).startswith(b"a1 OK")
            assert gate.metrics.refusals.labels("login", "account-sessions")._value.get() == 1
            # Before login the address's limit holds: two connections that say nothing, and a
            # third is turned away (IMAP's BYE in the clear, a closed socket over TLS).
            idle = [await _connect(imap), await _connect(imaps, tls)]
            clients += idle
            assert all(c.greeting.startswith(b"* OK") for c in idle)
            turned_away = await _connect(imap)
            assert turned_away.greeting.startswith(b"* BYE"), turned_away.greeting
            turned_away.close()
            # One of alice's sessions ends: her next login from there is taken again.
            clients[0].close()

            async def alice_again() -> bool:
                return gate.counters.concurrent("account-sessions", f"alice@acme.example {CLIENT}") < 3
            async with asyncio.timeout(10):
                while not await alice_again():
                    await asyncio.sleep(0.02)
            idle[0].writer.write(b"a1 LOGIN alice@acme.example secret\r\n")
            assert (await asyncio.wait_for(idle[0].reader.readline(), 10)).startswith(b"a1 OK")
        finally:
            for client in clients:
                client.close()


async def test_a_mail_user_on_a_block_listed_address_logs_in_while_the_mx_refuses_it(js, dns_server):
    dns_server.add(f"{'.'.join(reversed(CLIENT.split('.')))}.pbl.example. IN A 127.0.0.10")
    async with _edge(js, dns_servers=dns_server.address, dnsbl_zones="pbl.example", dnsbl_threshold=1) \
            as (imap, imaps, tls, gate):
        assert (await gate.on_connect(CLIENT)).reason == "dnsbl"       # as the MX asks (nothing owed)
        for port, context in ((imap, None), (imaps, tls)):
            client = await _connect(port, context)
            try:
                assert client.greeting.startswith(b"* OK"), client.greeting
                assert (await client.login("alice@acme.example")).startswith(b"a1 OK")
            finally:
                client.close()
        assert gate.metrics.refusals.labels("connect", "dnsbl")._value.get() == 1


async def test_connections_that_log_in_do_not_use_up_the_addresss_connection_rate(js):
    """``edge_connections_per_minute_per_ip`` is for connections nobody logs in on: a company's
    users behind one address open one per folder check and per phone, all day."""
    async with _edge(js, edge_connections_per_minute_per_ip=3) as (imap, imaps, tls, gate):
        for n in range(6):          # twice the rate, each one logged in and gone again
            client = await _connect(imaps if n % 2 else imap, tls if n % 2 else None)
            try:
                assert client.greeting.startswith(b"* OK"), (n, client.greeting)
                assert (await client.login("alice@acme.example")).startswith(b"a1 OK"), n
            finally:
                client.close()
        # Connections that say nothing are counted: three, and a fourth is refused.
        silent = [await _connect(imap) for _ in range(3)]
        try:
            assert all(c.greeting.startswith(b"* OK") for c in silent)
            refused = await _connect(imap)
            assert refused.greeting.startswith(b"* BYE") and b"Too many connections" in refused.greeting
            refused.close()
        finally:
            for client in silent:
                client.close()
        assert gate.metrics.refusals.labels("connect", "connection-rate")._value.get() == 1
