"""The POP3 table (tests/unit/protocols/pop3/test_pop3_differential.py) through the shells: a
client on an edge's POP3 listener (the access proxy, in this process, plaintext allowed),
logins handed over with the signed hand-off to a mail store process whose INBOX holds the
table's maildrop.  The answers must be the table's: the edge's core before login, the
store's after it, commands pipelined behind a login passed on, QUIT ending both sides.
Each row logs in as an account of its own (a fresh maildrop)."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(TESTS / "integration" / "mailstore"))
sys.path.insert(0, str(TESTS / "unit" / "protocols" / "pop3"))

from cluster_harness import wait_until  # noqa: E402
from mailworld import DOMAIN, world  # noqa: E402,F401  (world is a fixture)
from test_access_store_refusals import _Finder, _Gate, _listen, _Metrics, _Tracker  # noqa: E402
from test_pop3_differential import (  # noqa: E402
    MAILDROP, PASSWORD, ROWS, expected_of, lines_of, raw, split_answers, status,
)

from colony.contracts import handoff  # noqa: E402
from colony.contracts.auth import AuthCheckReply, AuthFailure  # noqa: E402
from colony.settings import Settings  # noqa: E402
from colony_edge.access_proxy import AccessProxy, LoginThrottle  # noqa: E402

pytestmark = pytest.mark.slow

USERS = [f"row{i}@{DOMAIN}" for i in range(len(ROWS))]


class _Auth:
    """The auth contract's answers for the rows' accounts and PASSWORD."""

    async def check(self, user, password, service=None, remote_addr=None, familiar=False):
        if user in USERS and password == PASSWORD:
            return AuthCheckReply.granted(user, DOMAIN, {})
        return AuthCheckReply.refused(AuthFailure.INVALID)


@pytest.fixture
async def edge(world, tmp_path):
    secret = tmp_path / "cluster.secret"
    handoff.ensure_secret(secret)
    await world.domain()
    for user in USERS:
        await world.account(user)
    # (an outbound port of 0, which the harness gives every *_port, is refused by Settings)
    world.start("mailstore-1", COLONY_CLUSTER_SECRET_FILE=str(secret), COLONY_OUTBOUND_SMTP_PORT="25")
    view = await world.cluster.wait_state("mailstore-1", "READY", timeout=60)
    for n, text in enumerate(MAILDROP, 1):      # message n of every maildrop is MAILDROP[n - 1]
        for user in USERS:
            await world.publish([user], text=text)

        async def stored(n=n) -> bool:
            return all(sum(world.stored_ids(user).values()) == n for user in USERS)
        await wait_until(stored, 120, f"message {n} in every row's INBOX")
    settings = Settings(access_plaintext_auth=True)
    proxy = AccessProxy(settings, handoff.load_secret(secret), _Auth(), _Finder(view.addresses["pop3-inner"]),
                        LoginThrottle(settings, None, _Gate()), _Gate(), None, _Tracker(), _Metrics(), "edge.test")
    async def serve(reader, writer):
        try:
            await proxy.pop3(reader, writer, False)
        finally:
            writer.close()        # as the edge's listener does (ConnectionWorkload.listen)

    async with _listen(serve) as address:
        host, _, port = address.rpartition(":")
        yield host, int(port)


def _replay(host: str, port: int, index: int) -> list:
    """Each step's statuses, then whether the session ended (QUIT rows) or still answers CAPA."""
    row, user = ROWS[index], USERS[index]
    seen: list = []
    with socket.create_connection((host, port), 30) as sock:
        buf = b""

        def answers(lines: list[bytes], count: int) -> list[bytes]:
            nonlocal buf
            while True:
                got = split_answers(buf, lines)
                if len(got) >= count and b"".join(got) == buf and \
                        len(split_answers(got[-1] + b"+OK\r\n", [lines[count - 1], b"x"])) == 2:
                    buf = b""
                    return got
                data = sock.recv(65536)
                if not data:
                    return got + [b"<closed>"]
                buf += data

        seen.append(status(answers([b"greeting"], 1)[0]))
        for sent, expected in row.steps:
            data = raw(sent, user)
            sock.sendall(data)
            seen.append([status(a) for a in answers(lines_of(data), len(expected_of(expected)))])
        if row.closes:
            seen.append(sock.recv(1) == b"")
        else:
            sock.sendall(b"CAPA\r\n")
            seen.append(answers([b"CAPA"], 1)[0].startswith(b"+OK"))
    return seen


async def test_every_row_through_an_edge_and_a_store(edge):
    host, port = edge
    for index, row in enumerate(ROWS):
        seen = await asyncio.wait_for(asyncio.to_thread(_replay, host, port, index), 60)
        want = ["+OK", *[list(expected_of(e)) for _, e in row.steps], True]
        assert seen == want, (row.name, row.why)
