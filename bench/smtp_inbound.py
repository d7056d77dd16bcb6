"""Inbound mail: Colony (edge -> MAIL stream -> mail stores) against Postfix -> Dovecot LMTP.

    .venv/bin/python bench/smtp_inbound.py [--messages 2000] [--clients 16] [--sizes 1k,100k]
                                           [--mailstores 1,3] [--no-peer] [--by-process]

Both systems run on this machine on loopback, configured by this script, with the same
durability: Colony's embedded nats-server syncs every acknowledged write
(``sync_interval: always``) and its mail stores fsync before they acknowledge; Postfix
fsyncs its queue files and Dovecot runs with ``mail_fsync = always``.  The same load goes
to both: ``--clients`` concurrent SMTP sessions sending ``--messages`` messages of each size
to 20 accounts in one domain, one connection per client reused for all its messages.

A message counts as *stored* when it is in a mailbox on disk (a body file in the account's
mail store, a file in the user's Maildir).  The table prints messages/s from the first
MAIL FROM to the last message stored, p50/p99 of the SMTP transaction time as the client
sees it (MAIL FROM to the 250 after the data), and CPU per message: user+system time of
every process of the system under test (for Colony all of `colony up`'s processes,
nats-server and idle roles included), divided by the messages; for Colony also how many
deliveries a mail store had to forward to the account's owner over the bus
(``--by-process``: the CPU of each process).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from colony_up import ColonyUp, process_label  # noqa: E402
from peers import Dovecot, Postfix, have, process_cpu, wait_port  # noqa: E402

DOMAIN = "bench.test"
ACCOUNTS = [f"user{i}" for i in range(20)]
console = Console(width=120)


def make_message(size: int, n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = "sender@remote.test"
    msg["To"] = f"{ACCOUNTS[n % len(ACCOUNTS)]}@{DOMAIN}"
    msg["Subject"] = f"bench message {n}"
    msg["Message-ID"] = f"<bench-{n}-{time.time_ns()}@remote.test>"
    line = ("The quick brown fox jumps over the lazy dog. " * 2).strip() + "\n"
    body = (line * (size // len(line) + 1))[:size]
    msg.set_content(body)
    return msg.as_bytes().replace(b"\n", b"\r\n")


async def smtp_session(port: int, messages: list[tuple[str, bytes]], latencies: list[float]) -> None:
    """One client: one connection, its messages one after another (EHLO once, RSET-free)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> bytes:
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            if line[3:4] != b"-":
                return line

    async def command(text: bytes, expect: bytes) -> None:
        writer.write(text)
        await writer.drain()
        line = await reply()
        if not line.startswith(expect):
            raise RuntimeError(f"{text[:40]!r}: {line!r}")

    await reply()  # greeting
    await command(b"EHLO bench.client\r\n", b"250")
    for rcpt, data in messages:
        start = time.perf_counter()
        await command(b"MAIL FROM:<sender@remote.test>\r\n", b"250")
        await command(f"RCPT TO:<{rcpt}>\r\n".encode(), b"250")
        await command(b"DATA\r\n", b"354")
        stuffed = data.replace(b"\r\n.", b"\r\n..")
        await command(stuffed + (b"" if stuffed.endswith(b"\r\n") else b"\r\n") + b".\r\n", b"250")
        latencies.append(time.perf_counter() - start)
    await command(b"QUIT\r\n", b"221")
    writer.close()


async def run_load(port: int, count: int, size: int, clients: int) -> tuple[float, list[float]]:
    bodies = [(f"{ACCOUNTS[n % len(ACCOUNTS)]}@{DOMAIN}", make_message(size, n)) for n in range(count)]
    shares = [bodies[i::clients] for i in range(clients)]
    latencies: list[float] = []
    start = time.perf_counter()
    await asyncio.gather(*(smtp_session(port, share, latencies) for share in shares if share))
    return start, latencies


def wait_stored(count_fn, expected: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if count_fn() >= expected:
            return time.perf_counter()
        time.sleep(0.02)
    raise RuntimeError(f"only {count_fn()} of {expected} messages stored after {timeout}s")


# --- the peer --------------------------------------------------------------------------------

def run_peer(workdir: Path, count: int, size: int, clients: int, base: int) -> dict:
    dovecot = Dovecot(workdir, lmtp_port=base + 24)
    postfix = Postfix(workdir, smtp_port=base + 25, domain=DOMAIN, lmtp_port=base + 24)
    dovecot.start()
    try:
        postfix.start()
        cpu0 = dovecot.cpu_seconds() + postfix.cpu_seconds()
        start, latencies = asyncio.run(run_load(base + 25, count, size, clients))
        end = wait_stored(dovecot.delivered, count, 600)
        cpu = dovecot.cpu_seconds() + postfix.cpu_seconds() - cpu0
        return summarise("Postfix + Dovecot", "-", size, count, start, end, latencies, cpu)
    finally:
        postfix.stop()
        dovecot.stop()


# --- Colony ----------------------------------------------------------------------------------

def run_colony(workdir: Path, count: int, size: int, clients: int, mailstores: int, base: int) -> dict:
    data_dir = workdir / f"colony-{mailstores}"
    with ColonyUp(data_dir, base, "--mailstores", str(mailstores), "--sipfarms", "0", timeout=120) as colony:
        colony.provision(DOMAIN, ACCOUNTS)
        smtp_port = base + 25
        wait_port(smtp_port, 60)
        storage = data_dir / "storage" / "SharedDomains"

        def stored() -> int:
            return sum(1 for _ in storage.glob("**/*.macnt/mail/bodies/*"))

        # The edge learns new accounts from its directory cache: wait until it accepts one.
        asyncio.run(run_load(smtp_port, 1, 100, 1))
        wait_stored(stored, 1, 60)
        forwarded0 = forwarded_deliveries(colony)
        pids = colony.pids()
        cpu0 = process_cpu(pids)
        before = {pid: process_cpu([pid]) for pid in pids}
        start, latencies = asyncio.run(run_load(smtp_port, count, size, clients))
        end = wait_stored(stored, count + 1, 600)
        after = colony.pids()
        cpu = process_cpu(after) - cpu0
        result = summarise("Colony", str(mailstores), size, count, start, end, latencies, cpu)
        result["forwarded"] = forwarded_deliveries(colony) - forwarded0
        # Where the CPU went, per process (--by-process prints it): what scale-out costs.
        result["by_process"] = sorted(((process_label(pid), (process_cpu([pid]) - before.get(pid, 0.0)) / count * 1000)
                                       for pid in after), key=lambda item: -item[1])
        return result


def forwarded_deliveries(colony: ColonyUp) -> int:
    """Deliveries a mail store sent on to the account's owner over the bus (every store's
    ``colony_mailstore_forwarded_total`` on its /metrics): what scale-out costs in messages."""
    total = 0
    for node in colony.status():
        ops = node.get("addresses", {}).get("ops") if node.get("role") == "mailstore" else None
        if not ops:
            continue
        text = httpx.get(f"http://{ops}/metrics", timeout=10).text
        total += sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
                     if line.startswith("colony_mailstore_forwarded_total{"))
    return total


def summarise(system: str, mailstores: str, size: int, count: int, start: float, end: float,
              latencies: list[float], cpu: float) -> dict:
    latencies.sort()
    return {"system": system, "mailstores": mailstores, "size": size, "rate": count / (end - start),
            "p50": statistics.median(latencies) * 1000, "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000,
            "cpu_ms": cpu / count * 1000}


def parse_size(text: str) -> int:
    text = text.strip().lower()
    return int(float(text[:-1]) * 1024) if text.endswith("k") else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--sizes", default="1k,100k")
    parser.add_argument("--mailstores", default="1,3")
    parser.add_argument("--no-peer", action="store_true", help="skip Postfix + Dovecot")
    parser.add_argument("--base-port", type=int, default=4500)
    parser.add_argument("--by-process", action="store_true", help="also print Colony's CPU per message per process")
    args = parser.parse_args()
    missing = [] if args.no_peer else have("postfix", "dovecot")
    if missing:
        sys.exit(f"the peer needs Debian's {' and '.join(missing)}: apt-get install postfix dovecot-core "
                 f"dovecot-lmtpd (or run with --no-peer)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="colony-bench-") as tmp:
        workdir = Path(tmp)
        for size in map(parse_size, args.sizes.split(",")):
            peer = None
            if not args.no_peer:
                console.print(f"[dim]Postfix + Dovecot, {size} octets ...[/dim]")
                peer = run_peer(workdir, args.messages, size, args.clients, args.base_port + 400)
                rows.append(peer)
            for n in map(int, args.mailstores.split(",")):
                console.print(f"[dim]Colony with {n} mail store(s), {size} octets ...[/dim]")
                row = run_colony(workdir, args.messages, size, args.clients, n, args.base_port)
                row["ratio"] = row["rate"] / peer["rate"] if peer else None
                rows.append(row)
    table = Table(title=f"Inbound SMTP, {args.messages} messages, {args.clients} clients, {os.cpu_count()} cores")
    for column in ("system", "mail stores", "size", "msgs/s", "p50 ms", "p99 ms", "CPU ms/msg", "forwarded",
                   "vs Postfix"):
        table.add_column(column, justify="right" if column not in ("system",) else "left")
    for r in rows:
        ratio = r.get("ratio")
        table.add_row(r["system"], r["mailstores"], str(r["size"]), f"{r['rate']:.0f}", f"{r['p50']:.1f}",
                      f"{r['p99']:.1f}", f"{r['cpu_ms']:.2f}", str(r.get("forwarded", "")),
                      f"{ratio:.2f}x" if ratio else "")
    console.print(table)
    if args.by_process:
        for r in rows:
            if "by_process" in r:
                detail = Table(title=f"CPU ms/msg per process: {r['mailstores']} mail store(s), {r['size']} octets")
                detail.add_column("process")
                detail.add_column("CPU ms/msg", justify="right")
                for label, ms in r["by_process"]:
                    if ms >= 0.01:
                        detail.add_row(label, f"{ms:.2f}")
                console.print(detail)


if __name__ == "__main__":
    main()
