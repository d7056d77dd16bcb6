"""POP3 in a mail store process (its ``pop3-inner`` listener, sessions opened with the edge's
signed hand-off), where the shell matters: what RETR sends against what LIST counts for
delivered mail, deletions only at QUIT (not on a dropped connection), two sessions on one
maildrop (a shared view, as Dovecot's default: no [IN-USE]), UIDL stable across sessions,
and the idle timeout (RFC 1939 §3: closed without a word, nothing deleted)."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "unit" / "protocols" / "pop3"))

from cluster_harness import wait_until  # noqa: E402
from mailworld import DOMAIN, world  # noqa: E402,F401  (world is a fixture)
from test_pop3_differential import lines_of, split_answers, unstuffed  # noqa: E402

from colony.contracts import handoff  # noqa: E402

BOB = f"bob@{DOMAIN}"
TEXTS = [
    b"Subject: one\r\n\r\nbody one\r\n",
    b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\nx\r\r\nend\r\n",    # stuffed; a CR kept
    b"Subject: ten\r\n\r\n" + b"".join(b"line %d\r\n" % i for i in range(1, 11)),
]


async def _store(world, tmp_path, **env):
    secret = tmp_path / "cluster.secret"
    handoff.ensure_secret(secret)
    await world.domain()
    await world.account(BOB)
    # (an outbound port of 0, which the harness gives every *_port, is refused by Settings)
    world.start("mailstore-1", COLONY_CLUSTER_SECRET_FILE=str(secret), COLONY_OUTBOUND_SMTP_PORT="25", **env)
    view = await world.cluster.wait_state("mailstore-1", "READY", timeout=60)
    for count, text in enumerate(TEXTS, 1):       # one by one: they are numbered in delivery order
        await world.publish([BOB], text=text)

        async def stored(count=count) -> bool:
            return _inbox(world) == count
        await wait_until(stored, 60, f"{count} message(s) stored")
    host, _, port = view.addresses["pop3-inner"].rpartition(":")
    return host, int(port), handoff.load_secret(secret)


@pytest.fixture
async def store(world, tmp_path):
    host, port, key = await _store(world, tmp_path)
    return world, host, port, key


@pytest.fixture
async def impatient_store(world, tmp_path):
    host, port, key = await _store(world, tmp_path, COLONY_POP3_IDLE_TIMEOUT="2")
    return world, host, port, key


class Pop3:
    """A raw session handed over to the store, as an edge opens one."""

    def __init__(self, host: str, port: int, key: bytes, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf:          # a small window: the store's writes wait for what this client reads
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(30)
        self.sock.connect((host, port))
        self.buf = b""
        self.sock.sendall(handoff.sign(key, "pop3", BOB, "198.51.100.7", int(time.time() * 1000)))
        self.status = self.read([b"handoff"])[0]
        assert self.status.startswith(b"+OK"), self.status

    def read(self, lines: list[bytes]) -> list[bytes]:
        while True:
            answers = split_answers(self.buf, lines)
            if len(answers) == len(lines) and b"".join(answers) == self.buf and \
                    len(split_answers(answers[-1] + b"+OK\r\n", [lines[-1], b"x"])) == 2:
                self.buf = b""
                return answers
            data = self.sock.recv(65536)
            assert data, f"the store closed the session; had {self.buf!r}"
            self.buf += data

    def cmd(self, line: str) -> bytes:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.read([line.encode()])[0]

    def rest(self) -> bytes:
        """Everything the store sends until it closes the connection."""
        data = b""
        while chunk := self.sock.recv(65536):
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()


def _inbox(world) -> int:
    return sum(world.stored_ids(BOB).values())


def _sessions(host: str, port: int, key: bytes, world) -> dict:
    out: dict = {}
    a = Pop3(host, port, key)
    out["a_status"] = a.status
    out["a_stat"] = a.cmd("STAT")
    out["a_uidl"] = lines_of(a.cmd("UIDL"))[1:-1]
    out["a_list"] = lines_of(a.cmd("LIST"))[1:-1]
    out["a_retr"] = [unstuffed(a.cmd(f"RETR {n}")) for n in (1, 2, 3)]
    out["a_top"] = unstuffed(a.cmd("TOP 3 2"))
    out["a_stuffed"] = a.cmd("RETR 2")

    b = Pop3(host, port, key)            # a second session on the same maildrop: let in
    out["b_dele"] = b.cmd("DELE 1")
    b.close()                            # dropped without QUIT: nothing deleted
    c = Pop3(host, port, key)
    out["c_stat"] = c.cmd("STAT")
    out["c_dele"] = c.cmd("DELE 1")
    out["c_quit"] = c.cmd("QUIT")        # UPDATE: message 1 goes
    out["c_closed"] = c.rest()
    out["inbox_after_c"] = _inbox(world)

    # a's listing was fixed at its login (RFC 1939 §5: numbers do not change in a session)
    out["a_stat_again"] = a.cmd("STAT")
    out["a_retr_gone"] = a.cmd("RETR 1")
    out["a_still_usable"] = a.cmd("NOOP")
    out["a_dele"] = [a.cmd("DELE 1"), a.cmd("DELE 2")]
    out["a_quit"] = a.cmd("QUIT")
    out["inbox_after_a"] = _inbox(world)

    d = Pop3(host, port, key)
    out["d_uidl"] = lines_of(d.cmd("UIDL"))[1:-1]
    d.cmd("QUIT")
    return out


async def test_sessions_share_the_maildrop_and_delete_only_at_quit(store):
    world, host, port, key = store
    r = await asyncio.wait_for(asyncio.to_thread(_sessions, host, port, key, world), 120)

    # RETR sends exactly the octets LIST counts (and STAT sums); TOP is header + n lines
    sizes = [int(line.split()[1]) for line in r["a_list"]]
    assert [len(m) for m in r["a_retr"]] == sizes
    assert r["a_stat"] == f"+OK 3 {sum(sizes)}\r\n".encode()
    assert [m.endswith(t) for m, t in zip(r["a_retr"], TEXTS)] == [True] * 3
    assert r["a_top"].endswith(b"Subject: ten\r\n\r\nline 1\r\nline 2\r\n")
    assert b"\r\n..leading dot\r\n...two\r\n..\r\nx\r\r\nend\r\n.\r\n" in r["a_stuffed"]

    assert r["b_dele"].startswith(b"+OK")
    assert r["c_stat"] == r["a_stat"]                      # b's DELE died with its connection
    assert r["c_dele"].startswith(b"+OK") and r["c_quit"].startswith(b"+OK") and r["c_closed"] == b""
    assert r["inbox_after_c"] == 2

    assert r["a_stat_again"] == r["a_stat"]
    # gone for good, not a temporary system problem (RFC 3206 §4); the session goes on
    assert r["a_retr_gone"].startswith(b"-ERR ") and b"[SYS/TEMP]" not in r["a_retr_gone"], r["a_retr_gone"]
    assert r["a_still_usable"].startswith(b"+OK")
    assert all(x.startswith(b"+OK") for x in r["a_dele"])
    # message 1 was already gone: the deletions a asked for are done, so +OK (RFC 1939 §6)
    assert r["a_quit"].startswith(b"+OK"), r["a_quit"]
    assert r["inbox_after_a"] == 1

    # UIDL: unique, and the same message keeps its unique-id across sessions (RFC 1939 §7)
    assert len({line.split()[1] for line in r["a_uidl"]}) == 3
    assert [line.split()[1] for line in r["d_uidl"]] == [r["a_uidl"][2].split()[1]]


def _idle(host: str, port: int, key: bytes) -> tuple[bytes, bytes]:
    s = Pop3(host, port, key)
    dele = s.cmd("DELE 1")
    s.sock.settimeout(60)
    return dele, s.rest()


async def test_an_idle_session_is_closed_without_a_word_and_deletes_nothing(impatient_store):
    world, host, port, key = impatient_store
    dele, after = await asyncio.wait_for(asyncio.to_thread(_idle, host, port, key), 90)
    assert dele.startswith(b"+OK")
    assert after == b""              # RFC 1939 §3: no response when the autologout timer fires
    assert _inbox(world) == 3        # ...and no UPDATE


BIG = 5_000_000     # octets: more than the kernel's send buffer (4 MiB at most) and the client's together


async def _with_a_big_message(world) -> int:
    await world.publish([BOB], text=b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * (BIG // 1000))

    async def stored() -> bool:
        return _inbox(world) == len(TEXTS) + 1
    await wait_until(stored, 60, "the big message stored")
    return len(TEXTS) + 1


def _slow_download(host: str, port: int, key: bytes, number: int) -> tuple[int, float, bytes]:
    """RETR of the big message read at ~1 MB/s (longer than the idle timeout), then NOOP."""
    s = Pop3(host, port, key, rcvbuf=16384)
    started = time.monotonic()
    s.sock.sendall(f"RETR {number}\r\n".encode())
    data = b""
    while not data.endswith(b"\r\n.\r\n"):
        chunk = s.sock.recv(16384)
        assert chunk, f"closed after {len(data)} octets"
        data += chunk
        time.sleep(0.015)
    took = time.monotonic() - started
    return len(data), took, s.cmd("NOOP")


async def test_a_download_longer_than_the_idle_timeout_is_no_idleness(impatient_store):
    world, host, port, key = impatient_store
    number = await _with_a_big_message(world)
    size, took, noop = await asyncio.wait_for(asyncio.to_thread(_slow_download, host, port, key, number), 120)
    assert size > BIG
    assert took > 2, "the download must outlast the idle timeout for this test to mean anything"
    assert noop.startswith(b"+OK"), noop


def _stuck(host: str, port: int, key: bytes, number: int) -> tuple[int, bytes]:
    """RETR of the big message, then nothing read for a while; then read all there is and,
    if the message came whole, send NOOP: how many octets came, and what came after them."""
    s = Pop3(host, port, key, rcvbuf=16384)
    s.sock.sendall(f"RETR {number}\r\n".encode())
    time.sleep(8)                 # the idle timeout (2 s) and more: the store gives up
    data, after = b"", b""
    try:
        while chunk := s.sock.recv(65536):
            if data.endswith(b"\r\n.\r\n"):
                after += chunk
                continue
            data += chunk
            if data.endswith(b"\r\n.\r\n"):
                s.sock.sendall(b"NOOP\r\n")
    except ConnectionError:
        pass
    return len(data), after


async def test_a_client_that_takes_nothing_is_dropped_after_the_idle_timeout(impatient_store):
    """Without this the session waited in its write for ever, holding the account open."""
    world, host, port, key = impatient_store
    number = await _with_a_big_message(world)
    received, after = await asyncio.wait_for(asyncio.to_thread(_stuck, host, port, key, number), 120)
    # the octets already in the kernel's queue may still arrive; the session itself is over
    assert after == b"", (received, after)
