"""The POP3 table of tests/unit/protocols/pop3/test_pop3_differential.py replayed against
Debian's Dovecot (a private instance, set up as the benchmarks set it up: bench/peers.py),
so the table stays what it claims to be: the answers Colony gives are Dovecot's, except in the
rows that name Dovecot's different answer and why the RFC sides with Colony there.  Each row
logs in as a user of its own (a fresh maildrop) from a loopback address of its own (Dovecot
slows down repeated failed logins per address)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest

from tools import free_ports, need_tool

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "unit" / "protocols" / "pop3"))

from peers import Dovecot, wait_port  # noqa: E402
from test_pop3_differential import (  # noqa: E402
    MAILDROP, PASSWORD, ROWS, TOTAL, expected_of, lines_of, raw, split_answers, status, unstuffed,
)

pytestmark = pytest.mark.slow

STEP_TIMEOUT = 60.0     # Dovecot delays the answer after a failed login by seconds


class _Dovecot(Dovecot):
    def config(self) -> str:
        return super().config() + "auth_failure_delay = 0\n"


@pytest.fixture(scope="module")
def dovecot(tmp_path_factory):
    need_tool("dovecot", "dovecot-core")
    need_tool("/usr/lib/dovecot/pop3", "dovecot-pop3d")
    need_tool("/usr/lib/dovecot/lmtp", "dovecot-lmtpd")     # bench/peers.py's instance listens for LMTP too
    if os.geteuid() != 0:
        pytest.skip("Dovecot is started as root and drops to its own users (as bench/peers.py runs it)")
    pop3_port, lmtp_port = free_ports(2)
    server = _Dovecot(tmp_path_factory.mktemp("dovecot"), lmtp_port=lmtp_port, pop3_port=pop3_port,
                      password=PASSWORD)
    server.start()
    try:
        wait_port(pop3_port)
        yield server
    finally:
        server.stop()


def maildrop(server: Dovecot, user: str) -> None:
    """``user``'s Maildir holding MAILDROP's messages, octet for octet, in order."""
    local, _, domain = user.partition("@")
    box = server.mail_dir / domain / local
    for sub in ("cur", "new", "tmp"):
        (box / sub).mkdir(parents=True)
    for n, message in enumerate(MAILDROP, 1):
        path = box / "cur" / f"{1000 + n}.M{n}P1.colony:2,"
        path.write_bytes(message)
        os.utime(path, (1000 + n, 1000 + n))   # Dovecot numbers a Maildir by delivery time
    owner = pwd.getpwnam("dovecot")
    for path in [server.mail_dir / domain, box, *box.rglob("*")]:
        shutil.chown(path, owner.pw_uid, owner.pw_gid)


class Client:
    def __init__(self, port: int, source: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), 30, source_address=(source, 0))
        self.buf = b""
        self.greeting = self.read_answers([b"greeting"], 1)[0]

    def read_answers(self, lines: list[bytes], count: int) -> list[bytes]:
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            answers = split_answers(self.buf, lines)
            if len(answers) >= count and b"".join(answers) == self.buf and _whole(answers[-1], lines[count - 1]):
                self.buf = b""
                return answers
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no complete answer to {lines!r} within {STEP_TIMEOUT}s: {self.buf!r}"
            self.sock.settimeout(remaining)
            data = self.sock.recv(65536)
            assert data, f"Dovecot closed the connection; had {self.buf!r}"
            self.buf += data

    def step(self, data: bytes, count: int) -> list[bytes]:
        self.sock.sendall(data)
        return self.read_answers(lines_of(data), count)

    def closed(self) -> bool:
        self.sock.settimeout(STEP_TIMEOUT)
        return self.sock.recv(1) == b""


def _whole(answer: bytes, line: bytes) -> bool:
    """A multi-line answer has its end (split_answers returns a cut-off one whole)."""
    return len(split_answers(answer + b"-ERR x\r\n", [line, b"x"])) == 2


@pytest.mark.parametrize("index", range(len(ROWS)), ids=[r.name for r in ROWS])
def test_dovecot_answers_as_the_table_says(dovecot, index):
    row = ROWS[index]
    user = f"row{index}@acme.example"
    maildrop(dovecot, user)
    client = Client(dovecot.pop3_port, f"127.0.{index // 200 + 1}.{index % 200 + 10}")
    try:
        for i, (sent, expected) in enumerate(row.steps):
            want = list(expected_of(row.dovecot.get(i, expected)))
            answers = client.step(raw(sent, user), len(want))
            assert [status(a) for a in answers] == want, (i, sent, answers, row.why)
        if row.closes:
            assert client.closed()
        else:
            assert client.step(b"CAPA\r\n", 1)[0].startswith(b"+OK"), row.why
    finally:
        client.sock.close()


def test_dovecot_sends_the_octets_the_table_expects(dovecot):
    """What test_retr_sends_what_list_and_stat_count and test_top_sends_the_header_and_n_body_lines
    expect of Colony, Dovecot does: LIST/STAT count the stored octets, RETR sends them (a last
    line without its line end gets one), a CR before a CRLF is kept, TOP n=0 is the header."""
    user = "octets@acme.example"
    maildrop(dovecot, user)
    client = Client(dovecot.pop3_port, "127.0.3.1")
    try:
        client.step(f"USER {user}\r\nPASS {PASSWORD}\r\n".encode(), 2)
        assert client.step(b"STAT\r\n", 1)[0] == f"+OK {len(MAILDROP)} {TOTAL}\r\n".encode()
        listing = lines_of(client.step(b"LIST\r\n", 1)[0])[1:-1]
        for n, message in enumerate(MAILDROP, 1):
            assert listing[n - 1] == f"{n} {len(message)}".encode()
            sent = unstuffed(client.step(f"RETR {n}\r\n".encode(), 1)[0])
            assert sent == (message if message.endswith(b"\r\n") else message + b"\r\n"), n
        assert unstuffed(client.step(b"TOP 4 0\r\n", 1)[0]) == b"Subject: ten\r\nX-A: b\r\n\r\n"
        assert unstuffed(client.step(b"TOP 3 5\r\n", 1)[0]) == MAILDROP[2] + b"\r\n"
    finally:
        client.sock.close()
