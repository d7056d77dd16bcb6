"""What one client can hold of a member's connections (workload._connection, _ws_connection),
over real sockets on 127.0.0.1: connections per source are capped, a connection must send
its first message, and finish each message, within MESSAGE_TIMEOUT, and a peer that does not
read what it asks for (pongs to a ping flood) is closed instead of growing the member's
memory.  Before these, 10,000 silent connections from one address locked every phone out of
TCP, TLS and WebSocket, and a WebSocket ping flood that read nothing grew the member by tens
of MB a second."""

from __future__ import annotations

import asyncio
import socket
import ssl
import uuid
from types import SimpleNamespace

from prometheus_client import CollectorRegistry

from colony.protocols.sip.parser import StreamFramer, parse_message
from colony.settings import Settings
from colony.tlsfiles import ensure_local_ca, server_context

from colony_sipfarm import workload
from colony_sipfarm.farm import SipFarm
from colony_sipfarm.workload import SipWorkload
from test_farm import Auth, Clock, Counters, Dialogs, Store

WS_UPGRADE = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
              b"Sec-WebSocket-Protocol: sip\r\n\r\n")


def options() -> bytes:
    call_id = uuid.uuid4().hex
    return (f"OPTIONS sip:acme.example SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK{call_id[:10]}\r\n"
            f"From: <sip:alice@acme.example>;tag=a\r\nTo: <sip:acme.example>\r\nCall-ID: {call_id}\r\n"
            f"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()


async def _wait_for(condition, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline
        await asyncio.sleep(0.01)


async def _shell(allow: str = "", counters=None, **settings):
    settings = Settings(sip_allow_networks=allow, **settings)
    farm = SipFarm(settings, "sipfarm-1", store=Store(Clock()), dialogs=Dialogs(), auth=Auth(),
                   counters=counters or Counters(),
                   secret=b"k" * 32, address=("127.0.0.1", 5060), registry=CollectorRegistry(), meter=lambda c: None)
    shell = SipWorkload(settings)
    shell.farm, shell._runtime = farm, SimpleNamespace(node_id="sipfarm-1")
    tcp = await asyncio.start_server(lambda r, w: shell._admitted(r, w, "TCP", shell._connection), "127.0.0.1", 0)
    ws = await asyncio.start_server(lambda r, w: shell._admitted(r, w, "WS", shell._ws_connection), "127.0.0.1", 0)
    return shell, tcp.sockets[0].getsockname()[1], ws.sockets[0].getsockname()[1], (tcp, ws)


async def _closed(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    """Whether the member closed the connection (EOF or reset) within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def _non_reading_peer(shell, transport: str, handler, accepted: list | None = None):
    """A listener of the shell's whose accepted sockets get a small, fixed send buffer
    (loopback would autotune it to MBs), and a connected client socket with a small receive
    buffer that the test never reads: what the member writes piles up at once."""
    def small_send_buffer(reader, writer):
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        if accepted is not None:
            accepted.append(writer)
        return shell._admitted(reader, writer, transport, handler)

    server = await asyncio.start_server(small_send_buffer, "127.0.0.1", 0)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.sockets[0].getsockname()[1]))
    sock.setblocking(False)
    return server, sock


async def _answer(reader: asyncio.StreamReader):
    framer = StreamFramer()
    while (data := framer.next_message()) is None:
        chunk = await asyncio.wait_for(reader.read(65536), 5)
        assert chunk, "connection closed"
        framer.feed(chunk)
    return parse_message(data)


async def test_one_source_holds_at_most_its_connections_and_allowed_networks_only_the_total():
    shell, port, ws_port, servers = await _shell(sip_max_connections_per_ip=3)
    held = [await asyncio.open_connection("127.0.0.1", p) for p in (port, port, ws_port)]
    try:
        await _wait_for(lambda: shell._per_source.get("127.0.0.1") == 3)
        for p in (port, ws_port):     # the fourth, over TCP or WebSocket alike, is closed at once
            reader, writer = await asyncio.open_connection("127.0.0.1", p)
            assert await _closed(reader)
            writer.close()
        assert shell.farm.metrics.dropped.labels(reason="connections per source")._value.get() == 2
        held.pop()[1].close()          # one goes: a new one is taken, and answered
        await _wait_for(lambda: shell._per_source.get("127.0.0.1") == 2)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(options())
        assert (await _answer(reader)).status == 200
        held.append((reader, writer))
    finally:
        for _, writer in held:
            writer.close()
        for server in servers:
            server.close()
    await _wait_for(lambda: not shell._per_source and not shell.connections)

    shell, port, _, servers = await _shell(allow="127.0.0.0/8", sip_max_connections_per_ip=3)
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(6)]
    try:
        await _wait_for(lambda: len(shell.connections) == 6)
    finally:
        for _, writer in held:
            writer.close()
        for server in servers:
            server.close()


async def test_connections_still_in_their_handshake_count_towards_the_members_total(monkeypatch):
    """MAX_CONNECTIONS bounds every connection a member holds for phones: one still in its
    WebSocket upgrade (or TLS handshake) has no flow in ``connections`` yet, and went uncounted
    -- sources enough could hold any number of them."""
    monkeypatch.setattr(workload, "MAX_CONNECTIONS", 2)
    shell, port, ws_port, servers = await _shell()
    silent = [await asyncio.open_connection("127.0.0.1", ws_port) for _ in range(2)]     # no upgrade yet
    try:
        await _wait_for(lambda: shell._admitted_count == 2)
        assert not shell.connections
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await _closed(reader)
        writer.close()
        for _, silent_writer in silent:
            silent_writer.close()
        await _wait_for(lambda: shell._admitted_count == 0 and not shell._per_source)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(options())
        assert (await _answer(reader)).status == 200
        writer.close()
    finally:
        for server in servers:
            server.close()


async def test_a_connection_reset_before_it_is_served_is_closed_without_a_traceback():
    """Reset between its accept and the handler: asyncio has no peer address for it (None)."""
    shell, _, _, servers = await _shell()
    closed: list[bool] = []
    writer = SimpleNamespace(get_extra_info=lambda name: None, close=lambda: closed.append(True))
    try:
        await shell._admitted(None, writer, "TCP", shell._connection)
        assert closed == [True] and not shell._per_source and shell._admitted_count == 0
    finally:
        for server in servers:
            server.close()


async def test_connections_in_their_tls_handshake_count_against_their_source(tmp_path):
    """The source is counted before the TLS handshake: the listener's own handshake came
    first, uncounted, so 3,000 silent connections to the TLS port from one address held 1,500
    descriptors and 120 MB for the handshake timeout."""
    files = ensure_local_ca(tmp_path / "tls", ["127.0.0.1"])
    shell, _, _, servers = await _shell(sip_max_connections_per_ip=3)
    tls = await asyncio.start_server(
        lambda r, w: shell._admitted(r, w, "TLS", shell._connection, server_context(files.cert, files.key)), "127.0.0.1", 0)
    port = tls.sockets[0].getsockname()[1]
    silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]   # no ClientHello
    try:
        await _wait_for(lambda: shell._per_source.get("127.0.0.1") == 3)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await _closed(reader)
        writer.close()
        for _, writer in silent:
            writer.close()
        await _wait_for(lambda: not shell._per_source)
        context = ssl.create_default_context(cafile=str(files.ca))
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)   # a phone
        writer.write(options())
        assert (await _answer(reader)).status == 200
        assert shell._per_source == {"127.0.0.1": 1}
        writer.close()
    finally:
        tls.close()
        for server in servers:
            server.close()


class SlowCounters(Counters):
    """The shared counters as the bus answers them: a round trip, during which the client's
    first bytes (a ClientHello) arrive."""

    async def hit(self, kind, subject, n=1):
        await asyncio.sleep(0.05)
        return await super().hit(kind, subject, n)


def _client_hello(context: ssl.SSLContext) -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    try:
        context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1").do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


async def _tls_options(port: int, context: ssl.SSLContext) -> int:
    """A phone's visit over TLS: connect, handshake, one OPTIONS, close; the answer's status."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=context), 5)
    try:
        writer.write(options())
        return (await asyncio.wait_for(_answer(reader), 5)).status
    finally:
        writer.close()


async def test_new_connections_per_source_are_held_to_a_rate_shared_by_members_before_tls(tmp_path):
    """A client that connects, handshakes and closes in a loop cost a member a handshake
    (~0.8 ms of CPU) each time without limit: now the source's new connections are counted in
    the shared counters (as its requests), across members, and one over the rate is closed
    before its handshake.  The ClientHello that arrives while the count is asked is the TLS
    layer's, not lost."""
    files = ensure_local_ca(tmp_path / "tls", ["127.0.0.1"])
    context = ssl.create_default_context(cafile=str(files.ca))
    shared = SlowCounters()
    members, listeners = [], []
    for _ in range(2):
        shell, _, _, servers = await _shell(counters=shared, sip_connections_per_minute_per_ip=3)
        tls = await asyncio.start_server(lambda r, w, shell=shell: shell._admitted(
            r, w, "TLS", shell._connection, server_context(files.cert, files.key)), "127.0.0.1", 0)
        members.append((shell, tls.sockets[0].getsockname()[1]))
        listeners += [*servers, tls]
    (first, first_port), (second, second_port) = members
    try:
        assert [await _tls_options(p, context) for p in (first_port, second_port, first_port)] == [200, 200, 200]
        # The fourth, to either member: closed without a ServerHello, nothing spent on it.
        for shell, port in members:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_client_hello(context))
            try:
                assert await asyncio.wait_for(reader.read(65536), 5) == b""
            except ConnectionResetError:
                pass     # closed with the ClientHello unread
            writer.close()
            assert shell.farm.metrics.dropped.labels(reason="connection rate")._value.get() == 1
        assert shared.counts[("sip-conn", "127.0.0.1")] == 5
        await _wait_for(lambda: not first._per_source and not second._per_source)
    finally:
        for server in listeners:
            server.close()

    # sip_allow_networks are not held to it.
    shell, port, _, servers = await _shell(allow="127.0.0.0/8", counters=SlowCounters(),
                                           sip_connections_per_minute_per_ip=1)
    try:
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(options())
            assert (await _answer(reader)).status == 200
            writer.close()
    finally:
        for server in servers:
            server.close()


async def test_a_connection_must_send_its_first_message_and_finish_each_in_time(monkeypatch):
    monkeypatch.setattr(workload, "MESSAGE_TIMEOUT", 0.5)
    shell, port, _, servers = await _shell()
    try:
        silent, silent_writer = await asyncio.open_connection("127.0.0.1", port)
        assert await _closed(silent, 3)
        # A byte at a time, each well within the timeout: the message as a whole is not.
        slow, slow_writer = await asyncio.open_connection("127.0.0.1", port)
        closed = asyncio.ensure_future(_closed(slow, 3))
        for byte in options():
            if closed.done():
                break
            slow_writer.write(bytes([byte]))
            await asyncio.sleep(0.05)
        assert closed.done() and closed.result(), "a message trickled in a byte at a time held the connection"
        assert shell.farm.metrics.dropped.labels(reason="stream too slow")._value.get() == 2
        # A phone that has sent its message may be quiet between messages (keep-alive CRLFs
        # included), and is answered on the same connection afterwards.
        phone, phone_writer = await asyncio.open_connection("127.0.0.1", port)
        phone_writer.write(options())
        assert (await _answer(phone)).status == 200
        phone_writer.write(b"\r\n")
        assert not await _closed(phone, 1.5)
        phone_writer.write(options())
        assert (await _answer(phone)).status == 200
        for writer in (silent_writer, slow_writer, phone_writer):
            writer.close()
    finally:
        for server in servers:
            server.close()


async def test_a_websocket_upgrade_and_each_message_must_come_in_time_not_each_read(monkeypatch):
    monkeypatch.setattr(workload, "HANDSHAKE_TIMEOUT", 0.5)
    monkeypatch.setattr(workload, "MESSAGE_TIMEOUT", 0.5)
    shell, _, ws_port, servers = await _shell()
    try:
        # The upgrade a byte at a time, each well within the timeout: the upgrade is not.
        slow, slow_writer = await asyncio.open_connection("127.0.0.1", ws_port)
        closed = asyncio.ensure_future(_closed(slow, 3))
        for byte in WS_UPGRADE:
            if closed.done():
                break
            slow_writer.write(bytes([byte]))
            await asyncio.sleep(0.05)
        assert closed.done() and closed.result(), "an upgrade trickled in a byte at a time held the connection"
        # Open, quiet: kept.  A message whose last fragment never comes: closed.
        browser, writer = await asyncio.open_connection("127.0.0.1", ws_port)
        writer.write(WS_UPGRADE)
        assert (await browser.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        assert not await _closed(browser, 1.2)
        writer.write(bytes([0x01, 0x80 | 5]) + b"\0\0\0\0" + b"OPTIO")      # a first fragment only
        assert await _closed(browser, 3)
        assert shell.farm.metrics.dropped.labels(reason="stream too slow")._value.get() == 2
        slow_writer.close()
        writer.close()
    finally:
        for server in servers:
            server.close()


async def test_a_websocket_ping_flood_that_reads_no_pong_is_closed_not_buffered(monkeypatch):
    """Deterministic however loaded the machine: the member's side of the connection gets a
    small, fixed kernel send buffer (loopback otherwise autotunes it to MBs, which a time-bound
    flood at load ~12 did not fill), so a bounded number of pongs fills the kernel's buffers
    and then MAX_WRITE_BUFFER.  The flood is bounded by bytes, many times what that takes; the
    time deadline is only a backstop -- a slow machine makes the test slower, not red."""
    monkeypatch.setattr(workload, "MAX_WRITE_BUFFER", 64 * 1024)
    shell, _, _, servers = await _shell()

    ws, sock = await _non_reading_peer(shell, "WS", shell._ws_connection)
    servers += (ws,)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(sock, WS_UPGRADE)
        await _wait_for(lambda: len(shell.connections) == 1)
        flow = next(iter(shell.connections.values()))
        ping = bytes([0x89, 0x80 | 125]) + b"\0\0\0\0" + b"p" * 125
        # Kernel buffers of some 10-30 KB and 64 KiB of ours fill after ~100 KB of pings.
        budget, sent = 8 << 20, 0
        backstop = loop.time() + 300
        while shell.connections and sent < budget:
            assert loop.time() < backstop, f"still open after {sent} bytes of pings"
            try:
                sent += sock.send(ping * 256)
            except BlockingIOError:
                await asyncio.sleep(0.01)
            except ConnectionError:
                break
            await asyncio.sleep(0)
            assert flow.writer.transport.get_write_buffer_size() <= workload.MAX_WRITE_BUFFER + 64 * 1024
        await _wait_for(lambda: not shell.connections, 60)    # the member aborted it (a reset reached us)
    finally:
        sock.close()
        for server in servers:
            server.close()


async def test_a_request_the_stream_cannot_carry_gets_its_answer_before_the_close():
    """RFC 3261 §18.3: a stream needs Content-Length.  A request without one, with a bad one or
    one larger than sip_max_message_size cannot be cut from the stream, so the connection
    ends -- after the protocol's own answer (400, 513), when the head can address one."""
    shell, port, _, servers = await _shell(sip_max_message_size=2048)
    try:
        for head_end, status in [(b"\r\n", 400),                                   # no Content-Length
                                 (b"Content-Length: -5\r\n\r\n", 400),
                                 (b"Content-Length: 99999999999\r\n\r\n", 400),
                                 (b"Content-Length: 5000\r\n\r\n" + b"x" * 10, 513)]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(options().replace(b"Content-Length: 0\r\n\r\n", head_end))
            answer = await _answer(reader)
            assert answer.status == status and answer.call_id, head_end
            assert await _closed(reader)
            writer.close()
        # A head without an end addresses nothing: the connection just closes at the limit.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"OPTIONS sip:acme.example SIP/2.0\r\nX: " + b"a" * 5000)
        assert await _closed(reader)
        writer.close()
    finally:
        for server in servers:
            server.close()


async def test_a_connection_pipelining_past_the_members_capacity_is_read_later_not_dropped(monkeypatch):
    """A datagram past MAX_INFLIGHT packets in hand is dropped (its phone sends it again); a
    connection's message never is sent again, so the connection is read no further until
    there is room.  One TCP client pipelining 20,000 REGISTERs had half of them dropped."""
    monkeypatch.setattr(workload, "MAX_INFLIGHT", 3)
    shell, port, _, servers = await _shell()
    release, handled = asyncio.Event(), []

    async def handle(data, source, **kw):       # the farm waiting on the bus for each
        handled.append(data)
        await release.wait()
        return []
    monkeypatch.setattr(shell.farm, "handle", handle)
    sent = [options() for _ in range(10)]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"".join(sent))
        await _wait_for(lambda: len(handled) == 3)
        await asyncio.sleep(0.2)               # (nothing more is taken meanwhile)
        assert len(handled) == 3 and len(shell._inflight) == 3
        release.set()
        await _wait_for(lambda: len(handled) == 10)
        assert handled == sent
    finally:
        writer.close()
        for server in servers:
            server.close()


async def test_a_connection_whose_peer_reads_nothing_is_aborted_when_it_closes_not_held(monkeypatch):
    """A client that pipelines requests, reads none of the answers and sends its FIN: close()
    waited for ever to write out what was queued for it, holding the descriptor and the bytes
    after the connection had left its source's count -- one address could pile them up."""
    monkeypatch.setattr(workload, "CLOSE_TIMEOUT", 0.5)
    shell, _, _, servers = await _shell()
    accepted: list[asyncio.StreamWriter] = []

    tcp, sock = await _non_reading_peer(shell, "TCP", shell._connection, accepted)
    servers += (tcp,)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(sock, b"".join(options() for _ in range(400)))    # ~150 KB of answers
        await _wait_for(lambda: accepted and accepted[0].transport.get_write_buffer_size() > 32 * 1024)
        sock.shutdown(socket.SHUT_WR)
        transport = accepted[0].transport
        await _wait_for(lambda: not shell._per_source and transport.is_closing())
        # Aborted: nothing of ours is held for the peer (a close() would still hold it all).
        await _wait_for(lambda: transport.get_write_buffer_size() == 0)
        # A handler cancelled as the process ends waits on no peer (asyncio.run waits for it).
        monkeypatch.setattr(workload, "CLOSE_TIMEOUT", 60)
        other = socket.socket()
        other.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        other.connect(("127.0.0.1", tcp.sockets[0].getsockname()[1]))
        other.setblocking(False)
        await loop.sock_sendall(other, b"".join(options() for _ in range(400)))
        await _wait_for(lambda: len(accepted) == 2 and accepted[1].transport.get_write_buffer_size() > 32 * 1024)
        [handler] = [t for t in asyncio.all_tasks() if "_admitted" in repr(t.get_coro())]
        handler.cancel()
        async with asyncio.timeout(5):
            await asyncio.gather(handler, return_exceptions=True)
        other.close()
    finally:
        sock.close()
        for server in servers:
            server.close()


def _ws_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A client's frame (masked with a zero key, so the payload is as it is)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    if len(payload) < 126:
        head += bytes([0x80 | len(payload)])
    else:
        head += bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
    return head + b"\0\0\0\0" + payload


async def test_a_websocket_message_waiting_for_the_members_capacity_is_not_timed_as_the_clients(monkeypatch):
    """A message whose last fragment came in time, held while MAX_INFLIGHT packets are in
    hand: the wait is the member's, and the client's message timer must not close it."""
    monkeypatch.setattr(workload, "MAX_INFLIGHT", 1)
    monkeypatch.setattr(workload, "MESSAGE_TIMEOUT", 0.3)
    shell, _, ws_port, servers = await _shell()
    release, handled = asyncio.Event(), []

    async def handle(data, source, **kw):       # the farm waiting on the bus
        handled.append(data)
        await release.wait()
        return []
    monkeypatch.setattr(shell.farm, "handle", handle)
    first, second = options(), options()
    browser, writer = await asyncio.open_connection("127.0.0.1", ws_port)
    try:
        writer.write(WS_UPGRADE)
        assert (await browser.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        writer.write(_ws_frame(0x1, first))
        await _wait_for(lambda: len(handled) == 1)          # the member is full now
        writer.write(_ws_frame(0x1, second[:20], fin=False))
        ws = next(iter(shell.connections.values())).ws
        await _wait_for(lambda: ws.pending)                 # read: the message's timer runs
        writer.write(_ws_frame(0x0, second[20:]))           # in time: the message is whole
        assert not await _closed(browser, 1.0)
        release.set()
        await _wait_for(lambda: len(handled) == 2)
        assert handled == [first, second]
    finally:
        writer.close()
        for server in servers:
            server.close()


async def test_a_response_for_a_connection_that_is_gone_is_lost_not_dialled():
    """Answers to a client that pipelined requests and hung up: the connection's address is
    the client's own port of it, so dialling it (once per answer) reached nothing."""
    shell, _, _, servers = await _shell()
    dialled: list = []
    bait = await asyncio.start_server(lambda r, w: dialled.append(w), "127.0.0.1", 0)
    where = ("TCP", "127.0.0.1", bait.sockets[0].getsockname()[1])
    try:
        answer = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bKx\r\nContent-Length: 0\r\n\r\n"
        await shell._emit(answer, where)
        assert not shell.connections
        await shell._emit(options(), where)          # a request is still dialled (a phone's Contact)
        await _wait_for(lambda: len(dialled) == 1)
    finally:
        for flow in list(shell.connections.values()):
            flow.close()
        bait.close()
        for server in servers:
            server.close()


def test_connections_are_counted_per_ipv4_address_and_ipv6_64():
    assert workload.counting_unit("192.0.2.7") == "192.0.2.7"
    assert workload.counting_unit("2001:db8:1:2:aaaa::1") == workload.counting_unit("2001:db8:1:2::ffff") == "2001:db8:1:2::/64"
    assert workload.counting_unit("::ffff:192.0.2.7") == "192.0.2.7"
    assert workload.counting_unit("fe80::1%eth0") == "fe80::/64"


def test_the_framer_tells_a_part_read_message_from_keep_alives():
    framer = StreamFramer()
    assert not framer.pending
    framer.feed(b"\r\n")                 # perhaps half a ping
    assert framer.next_message() is None and not framer.pending
    framer.feed(b"\r\nOPT")
    assert framer.next_message() is None and framer.pending and framer.pings == 1
