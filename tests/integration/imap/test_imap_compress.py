"""COMPRESS=DEFLATE (RFC 4978) over real connections: a client using Python's zlib, through an
edge's IMAPS listener (TLS at the edge, the signed hand-off, the splice) to a mail store
process on a real nats-server, which compresses inside the TLS the edge speaks.  After
``COMPRESS DEFLATE`` everything both ways is raw DEFLATE: SELECT, FETCH, APPEND with a
synchronizing literal, IDLE hearing a delivery, LOGOUT; a decompression bomb costs the store
no memory to speak of, corrupt input ends only its own session, quietly.  What else talks to
a session keeps working once it is compressed: the BYE of an account that moved away, the
autologout, and the write back-pressure against a client that does not read (those two on
the store's ``imap-inner``, where no edge is needed)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import os
import re
import socket
import ssl
import struct
import termios
import time
import urllib.request
import zlib
from pathlib import Path

import pytest

from cluster_harness import wait_until
from test_imap_mailstore import BOB, PASSWORD, imap, world  # noqa: F401  (fixtures)
from test_imapclient_livetest import _edge_imaps

# The deployed account-lease timings, not MailWorld's short ones (a 4 s lease the store stops
# writing 2.5 s after its last renewal): these tests are about compression, and a store starved
# of CPU for that long on a busy machine let its lease lapse and ended the session under test
# ("account unavailable"), as it must when it is not sure it still owns the account.
LEASE_AS_DEPLOYED = {"COLONY_ACCOUNT_LEASE_TTL": "10", "COLONY_ACCOUNT_RENEW_INTERVAL": "2",
                     "COLONY_ACCOUNT_LEASE_SAFETY_MARGIN": "3"}

from colony.bus import names
from colony.contracts import handoff

TIMEOUT = 30


class Client:
    """A blocking IMAP client over TLS that can turn COMPRESS=DEFLATE on: what it sends goes
    through a zlib compressor flushed per command, what it reads through an inflater.  It
    counts the octets on the wire and the plaintext they carried."""

    def __init__(self, port: int, tls: ssl.SSLContext | None, first: bytes = b"") -> None:
        """``tls``: the edge's IMAPS; None: a store's ``imap-inner``, ``first`` the hand-off."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname="127.0.0.1")
        self.sock.sendall(first)
        self.buf = b""
        self.deflater: zlib._Compress | None = None
        self.inflater: zlib._Decompress | None = None
        self.wire_in = self.plain_in = 0
        self.greeting = self.line()

    def compress(self, tag: str = "z") -> bytes:
        self.send(f"{tag} COMPRESS DEFLATE\r\n".encode())
        answer = self.line()
        if answer.startswith(f"{tag} OK".encode()):
            # RFC 4978 §3: the server compresses from right after that CRLF, so octets read
            # behind it are compressed already.
            rest, self.buf = self.buf, b""
            self.deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
            self.inflater = zlib.decompressobj(-15)
            self.buf = self.inflater.decompress(rest)
        return answer

    def send(self, data: bytes) -> None:
        if self.deflater is not None:
            data = self.deflater.compress(data) + self.deflater.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the server closed the connection")
        self.wire_in += len(data)
        if self.inflater is not None:
            data = self.inflater.decompress(data)
        self.plain_in += len(data)
        self.buf += data

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line + b"\r\n"

    def response(self) -> bytes:
        """One response line with the literals it carries."""
        out = self.line()
        while (m := re.search(rb"\{(\d+)\}\r\n$", out)):
            size = int(m.group(1))
            while len(self.buf) < size:
                self._fill()
            out += self.buf[:size]
            self.buf = self.buf[size:]
            out += self.line()
        return out

    def command(self, tag: str, text: bytes) -> tuple[list[bytes], bytes]:
        """Send ``tag text``; the untagged responses and the tagged one."""
        self.send(tag.encode() + b" " + text + b"\r\n")
        return self.until_tagged(tag)

    def until_tagged(self, tag: str) -> tuple[list[bytes], bytes]:
        untagged = []
        while True:
            response = self.response()
            if response.startswith(tag.encode() + b" "):
                return untagged, response
            untagged.append(response)

    def closed(self) -> bool:
        """Whether the server ends the connection (within the socket's timeout)."""
        try:
            while True:
                self._fill()
        except (EOFError, ConnectionError, ssl.SSLError):
            return True
        except (zlib.error, socket.timeout):
            return False

    def close(self) -> None:
        self.sock.close()


def _session(port: int, tls: ssl.SSLContext, deliver) -> dict:
    out: dict = {}
    c = Client(port, tls)
    try:
        out["greeting"] = c.greeting
        _, out["login"] = c.command("a", f'LOGIN {BOB} "{PASSWORD}"'.encode())
        out["compress"] = c.compress("b")
        out["select"] = c.command("c", b"SELECT INBOX")
        out["fetch"] = c.command("d", b"FETCH 1:* (UID FLAGS BODY.PEEK[])")
        message = (b"From: bob@example.com\r\nSubject: appended while compressed\r\n\r\n"
                   + b"compressible text\r\n" * 200)
        c.send(b"e APPEND INBOX (\\Seen) {%d}\r\n" % len(message))
        out["continuation"] = c.line()
        c.send(message + b"\r\n")
        out["append"] = c.until_tagged("e")
        out["appended"] = c.command("f", b"UID FETCH 4 (BODY.PEEK[])")
        c.send(b"g IDLE\r\n")
        out["idling"] = c.line()
        started = time.monotonic()
        deliver()
        heard = []
        while not any(re.match(rb"\* \d+ EXISTS", line) for line in heard):
            heard.append(c.line())       # the socket's timeout turns silence into a failure
        out["idle_seconds"] = time.monotonic() - started
        out["idle"] = heard
        c.send(b"DONE\r\n")
        out["done"] = c.until_tagged("g")
        out["again"] = c.command("h", b"COMPRESS DEFLATE")
        out["logout"] = c.command("i", b"LOGOUT")
        out["eof"] = c.closed()
        out["wire_in"], out["plain_in"] = c.wire_in, c.plain_in
    finally:
        c.close()
    return out


def _metrics_once_no_session_is_open(view) -> str | None:
    with urllib.request.urlopen(f"http://{view.addresses['ops']}/metrics", timeout=10) as r:
        text = r.read().decode()
    return text if "colony_mailstore_imap_sessions 0.0" in text else None


async def test_a_compressed_session_through_the_edge(imap, tmp_path):
    world, _host, _port, view, secret = imap
    loop = asyncio.get_running_loop()

    def deliver():
        asyncio.run_coroutine_threadsafe(world.publish([BOB]), loop).result(30)

    async with _edge_imaps(world, secret, tmp_path) as (port, tls):
        r = await asyncio.to_thread(_session, port, tls, deliver)
    # Offered after login only: the edge's greeting does not, the store's line relayed as the
    # LOGIN answer does.
    assert b"COMPRESS" not in r["greeting"]
    assert r["login"].startswith(b"a OK [CAPABILITY ") and b" COMPRESS=DEFLATE" in r["login"], r["login"]
    assert r["compress"] == b"b OK DEFLATE active\r\n"
    untagged, tagged = r["select"]
    assert b"* 3 EXISTS\r\n" in untagged and tagged.startswith(b"c OK [READ-WRITE]"), r["select"]
    untagged, tagged = r["fetch"]
    assert len(untagged) == 3 and all(b"Subject: test" in u for u in untagged) and tagged.startswith(b"d OK")
    assert r["continuation"].startswith(b"+ ")
    assert r["append"][1].startswith(b"e OK [APPENDUID "), r["append"]
    assert b"compressible text\r\n" * 200 in r["appended"][0][0] and r["appended"][1].startswith(b"f OK")
    assert r["idling"].startswith(b"+ ")
    assert any(line == b"* 5 EXISTS\r\n" for line in r["idle"]), r["idle"]
    assert r["idle_seconds"] < 20, r["idle_seconds"]    # flushed at once, not held in the compressor
    assert r["done"][1].startswith(b"g OK")
    assert r["again"][1] == b"h NO [COMPRESSIONACTIVE] DEFLATE is active already\r\n"
    assert r["logout"][0][0].startswith(b"* BYE") and r["logout"][1].startswith(b"i OK")
    assert r["eof"]
    assert r["wire_in"] * 2 < r["plain_in"], (r["wire_in"], r["plain_in"])     # it did compress
    text = await wait_until(lambda: asyncio.to_thread(_metrics_once_no_session_is_open, view), 30,
                            "the session to end")
    assert 'colony_mailstore_imap_compression_total{event="started"} 1.0' in text


def _rss(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)


def _compressed(client: zlib._Compress, chunks) -> bytes:
    return b"".join(client.compress(chunk) for chunk in chunks) + client.flush(zlib.Z_SYNC_FLUSH)


def _bomb_and_corruption(port: int, tls: ssl.SSLContext, pid: int) -> dict:
    out: dict = {}
    bystander, line_bomber, literal_bomber, corrupt = clients = [Client(port, tls) for _ in range(4)]
    try:
        for c in clients:
            assert c.command("a", f'LOGIN {BOB} "{PASSWORD}"'.encode())[1].startswith(b"a OK")
            assert c.compress("b") == b"b OK DEFLATE active\r\n"
            assert c.command("c", b"SELECT INBOX")[1].startswith(b"c OK")
        # Peak RSS from here on (Linux: "5" resets VmHWM to the current RSS).
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        out["rss_before"] = _rss(pid, "VmRSS")
        mib = b"A" * (1 << 20)
        # 256 MiB of a line without an end, and a literal of 256 MiB: ~0.5 MB on the wire.
        line_bomb = _compressed(line_bomber.deflater, [b"x1 NOOP "] + [mib] * 256 + [b"\r\nx2 NOOP\r\n"])
        literal_bomb = _compressed(literal_bomber.deflater, [b"x3 APPEND INBOX {268435456+}\r\n"] + [mib] * 256
                                   + [b"\r\nx4 NOOP\r\n"])
        out["bomb_octets"] = len(line_bomb) + len(literal_bomb)
        started = time.monotonic()
        for name, bomber, bomb in (("line", line_bomber, line_bomb), ("literal", literal_bomber, literal_bomb)):
            # The store answers and closes as soon as the limit is passed: the rest of the bomb
            # may meet a closed connection (and a reset may cut what it said before closing).
            heard = []
            with contextlib.suppress(EOFError, ConnectionError, ssl.SSLError):
                bomber.sock.sendall(bomb)
            with contextlib.suppress(EOFError, ConnectionError, ssl.SSLError):
                while True:      # until the store closes: the socket's timeout turns a hang into a failure
                    heard.append(bomber.response())
            out[name] = heard
        out["bomb_seconds"] = time.monotonic() - started
        out["peak"] = _rss(pid, "VmHWM")
        out["bystander"] = bystander.command("d", b"UID SEARCH ALL")
        # Octets that are no DEFLATE stream (BTYPE 11, reserved): the store just closes.
        corrupt.sock.sendall(b"\xff" * 64)
        out["corrupt_closed"] = corrupt.closed()
        out["bystander_after"] = bystander.command("e", b"FETCH 1 (FLAGS)")
        bystander.command("z", b"LOGOUT")
    finally:
        for c in clients:
            c.close()
    return out


@pytest.mark.timeout(300)
async def test_a_decompression_bomb_and_corrupt_input_cost_the_store_nothing(imap, tmp_path):
    world, _host, _port, view, secret = imap
    pid = world.cluster.nodes["mailstore-1"].process.pid
    async with _edge_imaps(world, secret, tmp_path) as (port, tls):
        r = await asyncio.to_thread(_bomb_and_corruption, port, tls, pid)
    assert r["bomb_octets"] < 1_000_000, r["bomb_octets"]
    # The bombs are valid DEFLATE: the reader's own limits answer them, and what the reader
    # would then skip as it arrives is not inflated at all -- the session ends (RFC 7888 §4).
    for name, answer in (("line", b"x1 BAD Command line too long\r\n"), ("literal", b"x3 NO [TOOBIG]")):
        heard = r[name]
        assert heard[:1] in ([], [answer]) or heard[0].startswith(answer), (name, heard)
        assert all(not line.startswith((b"x2 ", b"x4 ")) for line in heard), (name, heard)
        assert len(heard) < 2 or heard[1].startswith(b"* BYE "), (name, heard)
    # 512 MiB sent inflated; what the store held at its peak grew by far less than one bomb.
    growth = r["peak"] - r["rss_before"]
    assert growth < 32 * 1024 * 1024, (growth, r["bomb_seconds"])
    assert r["corrupt_closed"]
    assert r["bystander_after"][1].startswith(b"e OK")
    assert r["bystander"][0][0].startswith(b"* SEARCH 1 2 3"), r["bystander"]
    text = await wait_until(lambda: asyncio.to_thread(_metrics_once_no_session_is_open, view), 30,
                            "the sessions to end")
    assert 'colony_mailstore_imap_compression_total{event="corrupt"} 1.0' in text
    assert 'colony_mailstore_imap_compression_total{event="started"} 4.0' in text
    log = world.cluster.nodes["mailstore-1"].log()
    assert "compressed input does not inflate" in log and "Traceback" not in log


def _idle_until_bye(port: int, tls: ssl.SSLContext, lose) -> list[bytes]:
    c = Client(port, tls)
    try:
        c.command("a", f'LOGIN {BOB} "{PASSWORD}"'.encode())
        assert c.compress("b") == b"b OK DEFLATE active\r\n"
        c.command("c", b"SELECT INBOX")
        c.send(b"d IDLE\r\n")
        assert c.line().startswith(b"+ ")
        lose()
        heard = []
        with contextlib.suppress(EOFError, ConnectionError, ssl.SSLError):
            while True:       # until the store closes: the socket's timeout turns a hang into a failure
                heard.append(c.line())
        return heard
    finally:
        c.close()


async def test_a_compressed_idle_session_hears_bye_when_the_account_moves_away(imap, tmp_path):
    """The store's BYE (its lease lost, a drain) is compressed and flushed before it closes."""
    world, _host, _port, _view, secret = imap
    loop = asyncio.get_running_loop()

    def lose():
        async def purge():
            kv = await world.nc.jetstream().key_value(names.BUCKET_ACCOUNT_OWNERS)
            await kv.purge(names.account_owner_key(BOB))
        asyncio.run_coroutine_threadsafe(purge(), loop).result(30)

    async with _edge_imaps(world, secret, tmp_path) as (port, tls):
        heard = await asyncio.to_thread(_idle_until_bye, port, tls, lose)
    assert heard and heard[-1].startswith(b"* BYE [UNAVAILABLE]"), heard


def _compressed_then_silent(port: int, first: bytes) -> tuple[list[bytes], float]:
    c = Client(port, None, first)
    try:
        assert c.greeting.startswith(b"OK [CAPABILITY ") and b" COMPRESS=DEFLATE" in c.greeting
        assert c.compress("a") == b"a OK DEFLATE active\r\n"
        assert c.command("b", b"NOOP")[1] == b"b OK NOOP completed\r\n"
        last = time.monotonic()
        heard = []
        with contextlib.suppress(EOFError, ConnectionError):
            while True:
                heard.append(c.line())
        return heard, time.monotonic() - last
    finally:
        c.close()


async def test_a_silent_compressed_session_is_logged_out(world, tmp_path):
    """Autologout after COMPRESS: its BYE comes compressed, after the timeout, then the close."""
    secret = tmp_path / "cluster.secret"
    handoff.ensure_secret(secret)
    await world.domain()
    await world.account(BOB)
    world.start("mailstore-1", COLONY_CLUSTER_SECRET_FILE=str(secret), COLONY_IMAP_IDLE_TIMEOUT="2.5",
                COLONY_OUTBOUND_SMTP_PORT="25", **LEASE_AS_DEPLOYED)
    view = await world.cluster.wait_state("mailstore-1", "READY", timeout=60)
    port = int(view.addresses["imap-inner"].rpartition(":")[2])
    line = handoff.sign(handoff.load_secret(secret), "imap", BOB, "198.51.100.7", int(time.time() * 1000))
    heard, after = await asyncio.wait_for(asyncio.to_thread(_compressed_then_silent, port, line), 40)
    assert heard == [b"* BYE Autologout; idle for too long\r\n"], heard
    assert after >= 2.4, after


def _unread(sock: socket.socket) -> int:
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


def _fetch_without_reading(port: int, first: bytes, pid: int) -> dict:
    """32 bodies of 1 MiB that hardly compress (base64 of random octets) are APPENDed, then
    fetched by a client that reads nothing until the store has stopped sending."""
    out: dict = {}
    c = Client(port, None, first)
    try:
        assert c.compress("a") == b"a OK DEFLATE active\r\n"
        for n in range(32):
            body = (b"Subject: incompressible %d\r\n\r\n" % n
                    + base64.encodebytes(os.urandom(768 * 1024)).replace(b"\n", b"\r\n"))
            c.send(b"b%d APPEND INBOX {%d+}\r\n" % (n, len(body)) + body + b"\r\n")
            assert c.until_tagged(f"b{n}")[1].startswith(b"b%d OK" % n)
        assert c.command("c", b"SELECT INBOX")[1].startswith(b"c OK")
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        out["rss_before"] = _rss(pid, "VmRSS")
        c.send(b"d FETCH 1:* (BODY.PEEK[])\r\n")
        # The store has stopped once nothing more arrives for a second (TCP's buffers full).
        deadline, seen, still = time.monotonic() + 60, -1, 0
        while still < 4 and time.monotonic() < deadline:
            now = _unread(c.sock)
            still, seen = (still + 1 if now == seen else 0), now
            time.sleep(0.25)
        out["stalled"] = still >= 4
        out["peak"] = _rss(pid, "VmHWM")
        out["fetched"] = c.until_tagged("d")
        out["wire_in"], out["plain_in"] = c.wire_in, c.plain_in
        c.command("e", b"LOGOUT")
    finally:
        c.close()
    return out


@pytest.mark.timeout(300)
async def test_a_compressed_fetch_to_a_client_that_does_not_read_holds_the_store_back(world, tmp_path):
    """The write back-pressure after COMPRESS: a FETCH of 32 MiB (~25 MB compressed) to a
    client that reads nothing grows the store by a fraction of that; once it reads, it all
    comes, in order."""
    secret = tmp_path / "cluster.secret"
    handoff.ensure_secret(secret)
    await world.domain()
    await world.account(BOB)
    node = world.start("mailstore-1", COLONY_CLUSTER_SECRET_FILE=str(secret), COLONY_OUTBOUND_SMTP_PORT="25",
                       **LEASE_AS_DEPLOYED)
    view = await world.cluster.wait_state("mailstore-1", "READY", timeout=60)
    port = int(view.addresses["imap-inner"].rpartition(":")[2])
    line = handoff.sign(handoff.load_secret(secret), "imap", BOB, "198.51.100.7", int(time.time() * 1000))
    r = await asyncio.to_thread(_fetch_without_reading, port, line, node.process.pid)
    assert r["stalled"]
    untagged, tagged = r["fetched"]
    assert tagged.startswith(b"d OK") and len(untagged) == 32, tagged
    assert all(b"Subject: incompressible %d\r\n" % n in u for n, u in enumerate(untagged))
    assert r["wire_in"] > 24 * 1024 * 1024       # it hardly compressed: the store had it all to send
    growth = r["peak"] - r["rss_before"]
    assert growth < 12 * 1024 * 1024, growth
