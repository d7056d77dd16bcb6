"""``ConnectionWorkload.listen`` with ``ssl`` and ``gate`` on real loopback sockets: the gate is
asked once per connection, before the TLS handshake; a refused connection is closed without
a ServerHello and its handler never runs; an admitted one's session is released however it
ends (served, handler failed, handshake failed or too slow); the ClientHello that arrives
while the gate thinks is the TLS layer's; a draining listener asks no gate."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

import pytest
import trustme

from colony.cluster import sessions
from colony.cluster.sessions import ConnectionWorkload
from colony.tlsfiles import server_context


class Gate:
    """Admits every address but ``refused``, after a moment (the shared counters' round trip)."""

    def __init__(self, refused: str = "") -> None:
        self.refused = refused
        self.asked: list[str] = []
        self.open = 0

    async def on_connect(self, ip: str):
        self.asked.append(ip)
        await asyncio.sleep(0.05)
        if ip == self.refused:
            return "refused"
        self.open += 1
        return None

    def on_disconnect(self, ip: str) -> None:
        self.open -= 1


@pytest.fixture
def contexts(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server_context(tmp_path / "cert.pem", tmp_path / "key.pem"), client


async def _listen(server_tls, gate: Gate, handler):
    workload = ConnectionWorkload("test")
    address = await workload.listen("imaps", "127.0.0.1", 0, handler, ssl=server_tls, gate=gate,
                                    advertised_host="127.0.0.1",
                                    refuse=lambda writer: writer.write(b"* BYE shutting down\r\n"))
    return workload, int(address.rpartition(":")[2])


async def _released(gate: Gate) -> None:
    async with asyncio.timeout(5):
        while gate.open:
            await asyncio.sleep(0.01)


async def _answer(port: int, client_tls, source: str = "127.0.0.1") -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", port, ssl=client_tls, server_hostname="localhost", local_addr=(source, 0)), 5)
    try:
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()


async def test_the_gate_is_asked_once_before_the_handshake_and_released_on_every_path(contexts, monkeypatch):
    server_tls, client_tls = contexts
    monkeypatch.setattr(sessions, "TLS_HANDSHAKE_TIMEOUT", 0.5)
    gate = Gate(refused="127.0.0.66")
    served = []

    async def handler(reader, writer):
        served.append(writer.get_extra_info("peername")[0])
        if served[-1] == "127.0.0.3":
            raise RuntimeError("a handler's bug")
        writer.write(b"* OK ready\r\n")
        await writer.drain()

    workload, port = await _listen(server_tls, gate, handler)
    try:
        # Admitted: TLS (its ClientHello sent while the gate was asked), then the handler.
        assert await _answer(port, client_tls) == b"* OK ready\r\n"
        assert gate.asked == ["127.0.0.1"]
        await _released(gate)

        # Refused: nothing comes back, not even a ServerHello, and the handler never runs.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await _answer(port, client_tls, source="127.0.0.66")
        assert served == ["127.0.0.1"]

        # A handler that fails, a handshake that fails, one that never starts: all released.
        assert await _answer(port, client_tls, source="127.0.0.3") == b""
        await _released(gate)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.4", 0))
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await _released(gate)
        loop = asyncio.get_running_loop()
        started = loop.time()
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.5", 0))
        assert await asyncio.wait_for(reader.read(), 5) == b""       # silent: closed at the timeout
        assert loop.time() - started < 3
        writer.close()
        await _released(gate)
        assert gate.asked == ["127.0.0.1", "127.0.0.66", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
        assert served == ["127.0.0.1", "127.0.0.3"]

        # Draining: no gate, the protocol's goodbye over TLS.
        workload.set_accepting(False)
        assert await _answer(port, client_tls, source="127.0.0.6") == b"* BYE shutting down\r\n"
        assert "127.0.0.6" not in gate.asked and gate.open == 0
    finally:
        await workload.stop()


async def test_a_client_that_closes_right_after_its_handshake_is_no_warning(contexts, caplog):
    # A TLS probe (monitoring's openssl s_client, testssl.sh, nmap's ssl scripts) finishes its
    # handshake and sends close_notify in the same flight.  The listener began TLS itself, so
    # that close reaches the stream before start_tls has returned; it must not cost a WARNING
    # line per probe in the log.
    server_tls, client_tls = contexts
    gate = Gate()
    workload, port = await _listen(server_tls, gate, lambda reader, writer: reader.read())
    try:
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = client_tls.wrap_bio(incoming, outgoing, server_hostname="localhost")
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    writer.write(outgoing.read())
                    incoming.write(await asyncio.wait_for(reader.read(65536), 5))
            with contextlib.suppress(ssl.SSLWantReadError):
                tls.unwrap()
            writer.write(outgoing.read())      # the client's Finished and its close_notify at once
            await asyncio.wait_for(reader.read(), 5)
            writer.close()
            await _released(gate)
    finally:
        await workload.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not warnings, warnings
