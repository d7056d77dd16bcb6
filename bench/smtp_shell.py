"""CPU per SMTP transaction through the edge's asyncio shell and sans-IO core, no bus.

    .venv/bin/python bench/smtp_shell.py [--transactions 3000] [--runs 1]

One process: ``colony_edge.smtp_server.SmtpServer`` on a loopback port with a policy that
accepts every recipient and an acceptor that answers at once (no spool reader, no bus), and
one raw asyncio client on one connection sending MAIL, RCPT, DATA and a 2 KiB message,
waiting for each reply (as aiosmtplib and the other benchmarks' clients do).  After 200
warm-up transactions it prints the process's CPU time (user+system) per transaction: the
server's and the client's together, so a change to the shell shows as a smaller share of
it than of the server alone.  Compare two codes by running this script with each first on
``PYTHONPATH``, interleaved (ABBA): single runs move by 10-30 % on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from opentelemetry import trace
from prometheus_client import CollectorRegistry

from colony.cluster.sessions import SessionTracker
from colony.contracts.recipients import Mailbox
from colony_edge.acceptance import SmtpMetrics
from colony_edge.smtp_policy import ACCEPT, AcceptedRecipient, BasePolicy
from colony_edge.smtp_server import SmtpServer, SmtpServerConfig

LINE = b"Outbound benchmark line of text, seventy-odd characters long, for you.\r\n"
MESSAGE = b"From: a@b.test\r\nTo: ok@x.test\r\nSubject: s\r\n\r\n" + LINE * 28 + b".\r\n"


class Policy(BasePolicy):
    async def rcpt_to(self, session, rcpt):
        session.recipients.append(AcceptedRecipient(rcpt, (Mailbox(rcpt.address, "x.test", "local"),)))
        return ACCEPT


class Acceptor:
    tracer = trace.get_tracer("bench.smtp_shell")

    async def accept(self, session, message):
        return "id"


async def run(transactions: int) -> float:
    with tempfile.TemporaryDirectory(prefix="colony-bench-shell-") as tmp:
        return await _run(transactions, Path(tmp) / "spool")


async def _run(transactions: int, spool: Path) -> float:
    server = SmtpServer(SmtpServerConfig(hostname="mx.test", spool_dir=spool, max_message_size=10_000_000,
                                         max_recipients=100, max_errors=10, timeout=60.0),
                        Policy(), Acceptor(), SmtpMetrics(CollectorRegistry()), SessionTracker())
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.sockets[0].getsockname()[1])

    async def command(data: bytes) -> bytes:
        writer.write(data)
        while True:
            line = await reader.readline()
            if line[3:4] != b"-":
                return line

    async def transaction() -> None:
        await command(b"MAIL FROM:<a@b.test>\r\n")
        await command(b"RCPT TO:<ok@x.test>\r\n")
        await command(b"DATA\r\n")
        reply = await command(MESSAGE)
        if not reply.startswith(b"250"):
            raise RuntimeError(reply)

    await command(b"")   # the greeting
    await command(b"EHLO c.test\r\n")
    for _ in range(200):
        await transaction()
    start = time.process_time()
    for _ in range(transactions):
        await transaction()
    cpu = time.process_time() - start
    await command(b"QUIT\r\n")
    writer.close()
    listener.close()
    return cpu / transactions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transactions", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    for _ in range(args.runs):
        print(f"{asyncio.run(run(args.transactions)) * 1e6:.0f} us CPU per transaction")


if __name__ == "__main__":
    main()
