"""CPU per outbound SMTP transaction of the edge's client (``colony_edge.smtp_client``)
against aiosmtplib (the client it replaced), both over one kept loopback session to a
minimal in-process server that answers from a script (no policy, no storage), with and
without PIPELINING advertised.

    .venv/bin/python bench/smtp_client.py [--transactions 3000] [--size 2048] [--rounds 3]

Each round runs every client kind once, in turn (ABAB...), and prints the process CPU time
(``time.process_time``: client and server together, as they share the process) per
transaction and the transactions per second; the median of the rounds is the figure.  The
server costs the same for every kind except that a pipelined group arrives as one read.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for sub in ("libs", "services/edge"):
    sys.path.insert(0, str(ROOT / sub))

import aiosmtplib  # noqa: E402

from colony_edge.smtp_client import SmtpClient  # noqa: E402


class Server(asyncio.Protocol):
    """Answers MAIL/RCPT/RSET/NOOP 250, DATA 354, the message's end 250, QUIT 221."""

    def __init__(self, pipelining: bool) -> None:
        self.pipelining = pipelining
        self.buffer = b""
        self.in_data = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(b"220 sink.test ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out = []
        while True:
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    break
                self.buffer = self.buffer[end + 5:]
                self.in_data = False
                out.append(b"250 2.0.0 Queued\r\n")
                continue
            eol = self.buffer.find(b"\r\n")
            if eol < 0:
                break
            line, self.buffer = self.buffer[:eol], self.buffer[eol + 2:]
            verb = line[:4].upper()
            if verb == b"EHLO":
                out.append(b"250-sink.test\r\n" + (b"250-PIPELINING\r\n" if self.pipelining else b"")
                           + b"250 8BITMIME\r\n")
            elif verb == b"DATA":
                out.append(b"354 go ahead\r\n")
                self.in_data = True
                self.buffer = b"\r\n" + self.buffer   # the end marker may be the first line
            elif verb == b"QUIT":
                out.append(b"221 bye\r\n")
            else:
                out.append(b"250 2.1.0 OK\r\n")
        if out:
            self.transport.write(b"".join(out))


def message(size: int) -> bytes:
    line = b"Outbound benchmark line of text, seventy-odd characters long, for you.\r\n"
    body = (line * (size // len(line) + 1))[:size].rstrip(b"\r\n")
    return b"From: a@bench.test\r\nTo: b@remote.test\r\nSubject: bench\r\n\r\n" + body + b"\r\n"


async def run_ours(port: int, count: int, data: bytes) -> None:
    client = await SmtpClient.connect("127.0.0.1", port, local_hostname="edge.test", timeout=30)
    for _ in range(count):
        tx = await client.send("a@bench.test", ["b@remote.test"], data)
        assert tx.delivered
    await client.quit()


async def run_aiosmtplib(port: int, count: int, data: bytes) -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, local_hostname="edge.test", timeout=30,
                             start_tls=False)
    await client.connect()
    await client.ehlo()
    for _ in range(count):
        # What the outbound queue did with it: MAIL, RCPT, DATA, one command per round trip.
        await client.mail("a@bench.test")
        await client.rcpt("b@remote.test")
        await client.data(data)
    await client.quit()


async def measure(kind: str, pipelining: bool, count: int, data: bytes) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Server(pipelining), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    run = run_ours if kind == "ours" else run_aiosmtplib
    await run(port, 50, data)   # warm-up
    cpu, wall = time.process_time(), time.perf_counter()
    await run(port, count, data)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    server.close()
    await server.wait_closed()
    return cpu / count * 1e6, count / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transactions", type=int, default=3000)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    data = message(args.size)
    kinds = [("aiosmtplib", False), ("ours", False), ("aiosmtplib", True), ("ours", True)]
    results: dict[tuple[str, bool], list[tuple[float, float]]] = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for kind, pipelining in kinds:
            results[(kind, pipelining)].append(asyncio.run(measure(kind, pipelining, args.transactions, data)))
    print(f"{args.transactions} transactions of {len(data)} B per run, {args.rounds} rounds, "
          f"load {open('/proc/loadavg').read().split()[0]}")
    for (kind, pipelining), runs in results.items():
        cpu = statistics.median(r[0] for r in runs)
        rate = statistics.median(r[1] for r in runs)
        print(f"{kind:10s} server {'with' if pipelining else 'without'} PIPELINING: "
              f"median {cpu:6.0f} us CPU/transaction ({', '.join(f'{r[0]:.0f}' for r in runs)}), "
              f"{rate:6.0f} transactions/s")


if __name__ == "__main__":
    main()
