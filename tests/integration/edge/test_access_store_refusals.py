"""A store's refusal of a hand-off reaches the client as one tagged NO / -ERR with the store's
response code once (RFC 3501 §7.1, RFC 2449 §8), over real sockets: client -> edge -> store.
Before login the edge answers in each protocol's own words (the gate's refusal, the login
deadline, a drain)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from colony.contracts.auth import AuthCheckReply
from colony.settings import Settings
from colony_edge.access_proxy import AccessProxy, LoginThrottle
from colony_edge.security.gate import Refusal


class _Auth:
    async def check(self, user, password, service=None, remote_addr=None):
        return AuthCheckReply(ok=True, account=user, domain=user.rpartition("@")[2])


class _Finder:
    domain = None
    nc = None

    def __init__(self, target: str) -> None:
        self.addr = target

    async def target(self, account, listener, force=False):
        return self.addr


class _Gate:
    async def on_connect(self, ip, block_lists=True):
        return None

    def on_disconnect(self, ip):
        pass

    def on_login(self, ip, account):
        return None

    async def refund_connection(self, ip):
        pass

    def on_logout(self, ip, account):
        pass

    def trusted(self, ip):
        return True


class _Tracker:
    @contextlib.contextmanager
    def track(self, proto, ip, goodbye):
        yield


class _Metrics:
    class _C:
        def labels(self, *a):
            return self

        def inc(self):
            pass
    logins = _C()


@contextlib.asynccontextmanager
async def _listen(handler):
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


async def _store_refusing(answer: bytes):
    async def handle(reader, writer):
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\n")  # the signed hand-off line
            writer.write(answer)
            await writer.drain()
        writer.close()
    return handle


async def _client_login(proto: str, store_answer: bytes, command: list[bytes]) -> bytes:
    """Log in through a real edge listener whose one store refuses with ``store_answer``; the
    client's answer to the last command."""
    settings = Settings(access_plaintext_auth=True)
    async with _listen(await _store_refusing(store_answer)) as store:
        proxy = AccessProxy(settings, b"s" * 32, _Auth(), _Finder(store), LoginThrottle(settings, None, _Gate()),
                            _Gate(), None, _Tracker(), _Metrics(), "edge.test")
        serve = proxy.imap if proto == "imap" else proxy.pop3

        async with _listen(lambda r, w: serve(r, w, False)) as edge:
            host, _, port = edge.rpartition(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                await asyncio.wait_for(reader.readline(), 5)  # greeting
                answer = b""
                for line in command:
                    writer.write(line)
                    await writer.drain()
                    answer = await asyncio.wait_for(reader.readline(), 10)
                return answer
            finally:
                writer.close()


@pytest.mark.parametrize("store_answer, expected", [
    (b"NO [UNAVAILABLE] This mailbox is being moved to another region; try again shortly\r\n",
     b"a1 NO [UNAVAILABLE] This mailbox is being moved to another region; try again shortly\r\n"),
    (b"NO [AUTHENTICATIONFAILED] Bad hand-off\r\n", b"a1 NO [AUTHENTICATIONFAILED] Bad hand-off\r\n"),
    (b"* BYE [UNAVAILABLE] Server shutting down\r\n", b"a1 NO [UNAVAILABLE] Server shutting down\r\n"),
    (b"NO Mailbox locked\r\n", b"a1 NO [UNAVAILABLE] Mailbox locked\r\n"),
])
async def test_an_imap_store_refusal_carries_its_code_once(store_answer, expected):
    answer = await _client_login("imap", store_answer, [b"a1 LOGIN alice@acme.example secret\r\n"])
    assert answer == expected


async def test_a_pop3_store_refusal_carries_its_code_once():
    answer = await _client_login("pop3", b"-ERR [SYS/TEMP] This mailbox is being moved; try again shortly\r\n",
                                 [b"USER alice@acme.example\r\n", b"PASS secret\r\n"])
    assert answer == b"-ERR [SYS/TEMP] This mailbox is being moved; try again shortly\r\n"


# --- before login: each protocol's own words for the gate's refusal, the login deadline and a drain


class _RefusingGate(_Gate):
    async def on_connect(self, ip, block_lists=True):
        return Refusal(421, "4.7.0", "Too many connections from your address", "concurrency")


class _Tracking(_Tracker):
    def __init__(self) -> None:
        self.goodbyes: list = []

    @contextlib.contextmanager
    def track(self, proto, ip, goodbye):
        self.goodbyes.append(goodbye)
        yield


async def _before_login(proto: str, gate=None, login_timeout: float = 60.0, drain: bool = False) -> list[bytes]:
    """What a client that only connects hears from a real edge listener, up to the edge's
    closing the connection."""
    settings = Settings(access_plaintext_auth=True, access_login_timeout=login_timeout)
    tracker = _Tracking()
    gate = gate or _Gate()
    proxy = AccessProxy(settings, b"s" * 32, _Auth(), _Finder("127.0.0.1:1"), LoginThrottle(settings, None, gate),
                        gate, None, tracker, _Metrics(), "edge.test")
    serve = proxy.imap if proto == "imap" else proxy.pop3

    async def handle(reader, writer):
        try:
            await serve(reader, writer, False)
        finally:
            writer.close()      # as the edge's listener does when a handler returns

    async with _listen(handle) as edge:
        host, _, port = edge.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            lines = [await asyncio.wait_for(reader.readline(), 10)]
            if drain:   # the greeting came from the session, so it is tracked already
                await tracker.goodbyes[0]()
            while lines[-1]:
                lines.append(await asyncio.wait_for(reader.readline(), 10))
            return lines[:-1]
        finally:
            writer.close()


@pytest.mark.parametrize("proto, refused, too_slow, shutting_down", [
    ("pop3", b"-ERR [SYS/TEMP] Too many connections from your address\r\n", b"-ERR Too slow to log in; closing\r\n",
     b"-ERR [SYS/TEMP] Server shutting down\r\n"),
    ("imap", b"* BYE [UNAVAILABLE] Too many connections from your address\r\n", b"* BYE Too slow to log in\r\n",
     b"* BYE [UNAVAILABLE] Server shutting down\r\n"),
])
async def test_before_login_each_protocol_speaks_its_own_words(proto, refused, too_slow, shutting_down):
    assert await _before_login(proto, gate=_RefusingGate()) == [refused]
    greeting, *rest = await _before_login(proto, login_timeout=0.5)
    assert greeting.startswith(b"+OK" if proto == "pop3" else b"* OK") and rest == [too_slow]
    greeting, *rest = await _before_login(proto, drain=True)
    assert rest == [shutting_down]


class _DenyingGate(_Gate):
    async def on_connect(self, ip, block_lists=True):
        return Refusal(554, "5.7.1", "Access denied: your network is not allowed here", "denied-network", close=True)


@pytest.mark.parametrize("proto, refused", [
    ("pop3", b"-ERR [SYS/PERM] Access denied: your network is not allowed here\r\n"),
    ("imap", b"* BYE Access denied: your network is not allowed here\r\n"),
])
async def test_a_denied_network_is_told_it_is_no_temporary_failure(proto, refused):
    # The SMTP side says 554; POP3's RFC 3206 has SYS/PERM for "do not retry", and IMAP's
    # UNAVAILABLE (RFC 5530) is a temporary failure of a subsystem, which a deny list is not.
    assert await _before_login(proto, gate=_DenyingGate()) == [refused]


@pytest.mark.parametrize("proto, command", [("imap", b"a CAPABILITY\r\n"), ("pop3", b"CAPA\r\n")])
async def test_a_client_that_never_reads_cannot_hold_a_session_before_login(proto, command):
    """A client pipelines commands before login and never reads the answers: once the
    kernel's buffers are full the edge's write waits, but not past the login deadline plus
    the grace: the connection is aborted and the handler ends quietly (no failure)."""
    import socket
    import time

    from colony_edge import access_proxy

    settings = Settings(access_plaintext_auth=True, access_login_timeout=1.0)
    proxy = AccessProxy(settings, b"s" * 32, _Auth(), _Finder("127.0.0.1:1"), LoginThrottle(settings, None, _Gate()),
                        _Gate(), None, _Tracker(), _Metrics(), "edge.test")
    serve = proxy.imap if proto == "imap" else proxy.pop3
    ended: asyncio.Future = asyncio.get_running_loop().create_future()

    async def handle(reader, writer):
        try:
            await serve(reader, writer, False)
            ended.set_result(None)
        except BaseException as exc:        # the handler must not fail: record what escaped
            ended.set_exception(exc)
            raise
        finally:
            writer.close()

    async with _listen(handle) as edge:
        host, _, port = edge.rpartition(":")
        client = socket.create_connection((host, int(port)))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.setblocking(False)
        start = time.monotonic()
        try:
            # Enough answers to fill both kernel buffers and the edge's transport many times over.
            pending = command * (400_000 // len(command) + 1)
            limit = settings.access_login_timeout + access_proxy._WRITE_GRACE + 30

            async def feed():
                with contextlib.suppress(OSError):   # the edge aborts the connection mid-send
                    await asyncio.get_running_loop().sock_sendall(client, pending)

            feeder = asyncio.ensure_future(feed())
            await asyncio.wait_for(asyncio.shield(ended), limit)
            feeder.cancel()
            assert time.monotonic() - start >= settings.access_login_timeout
        finally:
            client.close()
