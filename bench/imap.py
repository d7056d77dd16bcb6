"""IMAP client access: idle sessions per edge process and IMAP throughput, Colony against Dovecot.

    .venv/bin/python bench/imap.py [--idle 300] [--clients 8] [--seconds 20] [--messages 200] [--no-peer]
                                   [--logins 8] [--mailstores 1]

Colony runs as `colony up` (1 edge, ``--mailstores`` mail stores) with plaintext login allowed (loopback), the
clients going through the edge's IMAP listener (plaintext) and IMAPS listener (TLS);
Dovecot (Debian's, configured here by ``bench/peers.py``) gets the same load on its own
loopback IMAP port.

(a) **Idle sessions**: ``--idle`` sessions log in, SELECT INBOX and enter IDLE, over plain
    TCP and then over TLS; the resident memory of the edge process and of the mail store
    before and after, divided by the sessions, is the memory per session.  The file
    descriptor limit is raised to the hard limit first (every instance inherits it).
(b) **Throughput**: ``--clients`` sessions, one account each holding ``--messages``
    messages, loop for ``--seconds``: SELECT INBOX, FETCH 1:20 headers, FETCH one body,
    STORE +FLAGS \\Seen, SEARCH UNSEEN.  Operations per second and p50/p99 per operation;
    the ratio Colony/Dovecot; and the servers' CPU per operation over the loop (Colony: the
    edge and the mail store, the processes every command crosses; Dovecot: all its
    processes), the steadier figure on a shared machine.  ``--by-process`` also prints
    Colony's CPU per operation for every process of ``colony up`` (nats-server included: a
    command that reads the directory or a lease goes over the bus), and how much of it is
    the process's idle CPU (measured for ``--idle-seconds`` just before the loop) spread
    over the operations -- a share that shrinks as the rate grows.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import resource
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from colony_up import ColonyUp, process_label  # noqa: E402
from peers import Dovecot, have, process_cpu, wait_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = "bench.test"
PASSWORD = "benchpass"
console = Console(width=120)
_LITERAL = re.compile(rb"\{(\d+)\}\r\n$")


class Imap:
    """A minimal IMAP client: one command at a time, literals read, responses kept whole."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.n = reader, writer, 0

    @classmethod
    async def open(cls, port: int, tls: ssl.SSLContext | None = None) -> Imap:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls, limit=1 << 20)
        client = cls(reader, writer)
        greeting = await reader.readline()
        if not greeting.startswith(b"* OK"):
            raise RuntimeError(f"greeting: {greeting!r}")
        return client

    async def _response(self, tag: bytes) -> bytes:
        out = bytearray()
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("closed")
            out += line
            m = _LITERAL.search(line)
            if m:
                out += await self.reader.readexactly(int(m.group(1)))
                continue
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise RuntimeError(line.decode(errors="replace").strip())
                return bytes(out)

    async def cmd(self, text: str, literal: bytes | None = None) -> bytes:
        self.n += 1
        tag = f"c{self.n}".encode()
        if literal is None:
            self.writer.write(tag + b" " + text.encode() + b"\r\n")
        else:
            self.writer.write(tag + b" " + text.encode() + f" {{{len(literal)}}}\r\n".encode())
            cont = await self.reader.readline()
            if not cont.startswith(b"+"):
                raise RuntimeError(f"no continuation: {cont!r}")
            self.writer.write(literal + b"\r\n")
        return await self._response(tag)

    async def login(self, user: str) -> None:
        # Colony checks every login with argon2id in the admin API (about 8 a second on 2
        # cores): a burst of logins may meet "unavailable"; try again as a client would.
        for attempt in range(20):
            try:
                await self.cmd(f'LOGIN "{user}" "{PASSWORD}"')
                return
            except RuntimeError as exc:
                if "UNAVAILABLE" not in str(exc) or attempt == 19:
                    raise
                await asyncio.sleep(0.5)

    async def idle(self) -> None:
        self.writer.write(b"i1 IDLE\r\n")
        line = await self.reader.readline()
        if not line.startswith(b"+"):
            raise RuntimeError(f"IDLE: {line!r}")

    def close(self) -> None:
        self.writer.close()


def message(n: int) -> bytes:
    body = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 20 + "\r\n") * 8
    return (f"From: sender{n}@remote.test\r\nTo: someone@{DOMAIN}\r\nSubject: bench message {n}\r\n"
            f"Message-ID: <imap-bench-{n}-{time.time_ns()}@remote.test>\r\nDate: Wed, 25 Nov 2026 12:00:00 +0000\r\n"
            f"\r\n{body}").encode()


async def fill(port: int, users: list[str], count: int) -> None:
    async def one(user: str) -> None:
        c = await Imap.open(port)
        await c.login(user)
        for n in range(count):
            await c.cmd("APPEND INBOX ()", message(n))
        await c.cmd("LOGOUT")
        c.close()
    await asyncio.gather(*(one(u) for u in users))


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def idle_sessions(port: int, users: list[str], count: int, tls: ssl.SSLContext | None,
                        pids: dict[str, list[int]], logins: int = 8) -> dict:
    before = {k: sum(rss_kb(p) for p in group) for k, group in pids.items()}
    clients: list[Imap] = []
    # Logins at once: every one is an argon2id check in the admin API, and on a loaded machine
    # more at once only makes each take longer than the edge waits for it (then the client
    # retries and the checks pile up), so a busy box wants fewer.
    sem = asyncio.Semaphore(logins)
    failures = 0

    async def one(i: int) -> None:
        nonlocal failures
        async with sem:
            try:
                c = await Imap.open(port, tls)
                await c.login(users[i % len(users)])
                await c.cmd("SELECT INBOX")
                await c.idle()
                clients.append(c)
            except Exception:
                failures += 1

    start = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(count)))
    took = time.monotonic() - start
    await asyncio.sleep(2)
    after = {k: sum(rss_kb(p) for p in group) for k, group in pids.items()}
    for c in clients:
        c.close()
    n = max(len(clients), 1)
    return {"sessions": len(clients), "failed": failures, "seconds": took,
            **{f"{k}_kb_per_session": (after[k] - before[k]) / n for k in pids}}


async def throughput(port: int, users: list[str], seconds: float, messages: int,
                     cpu: Callable[[], float] = lambda: 0.0) -> tuple[dict[str, list[float]], float]:
    """The operations' latencies, and the server's CPU seconds (``cpu``) over the loop."""
    ops: dict[str, list[float]] = {"SELECT": [], "FETCH headers": [], "FETCH body": [], "STORE flags": [], "SEARCH": []}
    # Everyone logs in first: the clock measures the operations, not the password checks.
    clients = []
    for user in users:
        c = await Imap.open(port)
        await c.login(user)
        clients.append((user, c))
    cpu_start = cpu()
    stop = time.monotonic() + seconds

    async def client(user: str, c: Imap) -> None:
        rnd = random.Random(user)
        while time.monotonic() < stop:
            for name, text in (("SELECT", "SELECT INBOX"),
                               ("FETCH headers", "FETCH 1:20 (UID FLAGS BODY.PEEK[HEADER])"),
                               ("FETCH body", f"FETCH {rnd.randint(1, messages)} (BODY.PEEK[])"),
                               ("STORE flags", f"STORE {rnd.randint(1, messages)} {rnd.choice('+-')}FLAGS (\\Seen)"),
                               ("SEARCH", "SEARCH UNSEEN")):
                t = time.perf_counter()
                await c.cmd(text)
                ops[name].append(time.perf_counter() - t)

    await asyncio.gather(*(client(u, c) for u, c in clients))
    used = cpu() - cpu_start
    for _, c in clients:
        await c.cmd("LOGOUT")
        c.close()
    return ops, used


def summarise(measured: tuple[dict[str, list[float]], float], seconds: float) -> dict[str, tuple[float, float, float]]:
    """Per operation (ops/s, p50 ms, p99 ms); "all" carries the server's CPU ms per operation
    in place of p50."""
    ops, cpu = measured
    out = {}
    for name, lat in ops.items():
        lat = sorted(lat)
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan")
        out[name] = (len(lat) / seconds, statistics.median(lat) * 1000 if lat else float("nan"), p99 * 1000)
    total = sum(len(v) for v in ops.values())
    out["all"] = (total / seconds, cpu * 1000 / total if total else float("nan"), float("nan"))
    return out


def colony(data_dir: Path, *args: str) -> None:
    subprocess.run([str(ROOT / ".venv/bin/colony"), *args, "--data-dir", str(data_dir)], check=True,
                   capture_output=True, timeout=300)


def run_colony(workdir: Path, args) -> tuple[dict, dict, dict | None]:
    # All the bench's sessions come from one address: lift the per-address session and
    # connection-rate limits of the edge gate, which would otherwise cap the count.
    env = dict(os.environ, COLONY_ACCESS_PLAINTEXT_AUTH="true", COLONY_EDGE_MAX_SESSIONS_PER_IP="1000000",
               COLONY_EDGE_MAX_SESSIONS_PER_ACCOUNT_IP="1000000", COLONY_EDGE_CONNECTIONS_PER_MINUTE_PER_IP="1000000")
    with ColonyUp(workdir / "colony", args.base_port, "--edges", "1", "--mailstores", str(args.mailstores), "--sipfarms", "0",
                  env=env) as cluster:
        data_dir, info = cluster.data_dir, cluster.info
        imap_port = int(info["imap"][0].rsplit(":", 1)[1])
        imaps_port = int(info["imaps"][0].rsplit(":", 1)[1])
        wait_port(imap_port, 120)
        colony(data_dir, "domain", "add", DOMAIN)
        users = [f"user{i}@{DOMAIN}" for i in range(args.clients)]
        for user in users:
            colony(data_dir, "account", "add", user, "--password", PASSWORD)
        deadline = time.monotonic() + 120
        while True:      # the auth service learns new accounts from its projection
            try:
                asyncio.run(fill(imap_port, users[-1:], 0))
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        console.log(f"filling {len(users)} mailboxes with {args.messages} messages each")
        asyncio.run(fill(imap_port, users, args.messages))
        console.log("idle sessions")
        pids = {"edge": [info["instances"]["edge-1"]["pid"]],
                "store": [info["instances"][f"mailstore-{i + 1}"]["pid"] for i in range(args.mailstores)]}
        tls = ssl.create_default_context(cafile=info["tls_ca"])
        idle_plain = asyncio.run(idle_sessions(imap_port, users, args.idle, None, pids, args.logins))
        idle_tls = asyncio.run(idle_sessions(imaps_port, users, args.idle, tls, pids, args.logins))
        if args.no_throughput:
            return idle_plain, idle_tls, None
        console.log("throughput")
        # Colony's CPU: the edge and the mail store, the two processes every command crosses.
        every = cluster.pids()
        # What each process spends with nothing to do (timers, heartbeats, long polls), so
        # that its share of a run's CPU per operation can be told apart: at 100 ops/s a
        # process idling at 10 ms/s adds 0.1 ms to every operation, at 300 ops/s 0.03.
        idle_start = {pid: process_cpu([pid]) for pid in every}
        time.sleep(args.idle_seconds)
        idle_rate = {pid: (process_cpu([pid]) - idle_start[pid]) / args.idle_seconds for pid in every}
        before = {pid: process_cpu([pid]) for pid in every}
        ops = asyncio.run(throughput(imap_port, users, args.seconds, args.messages,
                                     lambda: process_cpu([pid for group in pids.values() for pid in group])))
        result = summarise(ops, args.seconds)
        count = sum(len(v) for v in ops[0].values()) or 1
        result["by_process"] = sorted(((process_label(pid), (process_cpu([pid]) - before[pid]) / count * 1000,
                                        idle_rate[pid] * args.seconds / count * 1000)
                                       for pid in every), key=lambda r: -r[1])
        return idle_plain, idle_tls, result


def run_dovecot(workdir: Path, args) -> dict:
    port = args.base_port + 900
    dovecot = Dovecot(workdir, lmtp_port=port + 1, imap_port=port, password=PASSWORD)
    dovecot.start()
    try:
        users = [f"user{i}@{DOMAIN}" for i in range(args.clients)]
        asyncio.run(fill(port, users, args.messages))
        return summarise(asyncio.run(throughput(port, users, args.seconds, args.messages, dovecot.cpu_seconds)),
                         args.seconds)
    finally:
        dovecot.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--base-port", type=int, default=21000)
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--mailstores", type=int, default=1,
                        help="mail stores in colony up (accounts spread over them; Dovecot runs a "
                             "process per session and uses every core, one store one core at most)")
    parser.add_argument("--logins", type=int, default=8, help="concurrent logins in (a)")
    parser.add_argument("--no-throughput", action="store_true", help="only (a), the idle sessions")
    parser.add_argument("--by-process", action="store_true",
                        help="also print Colony's CPU per operation for each process of colony up, with "
                             "the share its idle CPU (measured just before the loop) makes of it")
    parser.add_argument("--idle-seconds", type=float, default=5.0,
                        help="how long each process's idle CPU is measured before (b)")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))   # colony up and its instances inherit it
    with tempfile.TemporaryDirectory(prefix="colony-imap-bench-") as tmp:
        workdir = Path(tmp)
        idle_plain, idle_tls, colony_ops = run_colony(workdir, args)
        peer = None
        if not args.no_peer and not args.no_throughput and not have("dovecot"):
            peer = run_dovecot(workdir, args)
    table = Table(title=f"(a) idle IMAP sessions through one edge process (fd limit {hard})")
    for col in ("transport", "sessions", "failed", "login+SELECT+IDLE s", "edge KB/session", "store KB/session"):
        table.add_column(col, justify="right")
    for name, r in (("plain", idle_plain), ("TLS", idle_tls)):
        table.add_row(name, str(r["sessions"]), str(r["failed"]), f"{r['seconds']:.1f}",
                      f"{r['edge_kb_per_session']:.1f}", f"{r['store_kb_per_session']:.1f}")
    console.print(table)
    if colony_ops is None:
        return
    table = Table(title=f"(b) throughput: {args.clients} clients, {args.seconds:g} s, {args.messages} messages each")
    for col in ("operation", "Colony ops/s", "p50 ms", "p99 ms", "Dovecot ops/s", "p50 ms", "p99 ms", "ratio"):
        table.add_column(col, justify="right")
    for name, figures in colony_ops.items():
        if name in ("all", "by_process"):
            continue
        rate, p50, p99 = figures
        if peer:
            prate, pp50, pp99 = peer[name]
            table.add_row(name, f"{rate:.0f}", f"{p50:.1f}", f"{p99:.1f}", f"{prate:.0f}", f"{pp50:.1f}",
                          f"{pp99:.1f}", f"{rate / prate:.2f}x" if prate else "-")
        else:
            table.add_row(name, f"{rate:.0f}", f"{p50:.1f}", f"{p99:.1f}", "-", "-", "-", "-")
    rate, cpu_ms, _ = colony_ops["all"]
    prate, pcpu_ms, _ = peer["all"] if peer else (float("nan"),) * 3
    table.add_row("all", f"{rate:.0f}", "", "", f"{prate:.0f}", "", "", f"{rate / prate:.2f}x" if peer else "-")
    console.print(table)
    console.print(f"server CPU per operation: Colony (edge + store) {cpu_ms:.2f} ms, Dovecot {pcpu_ms:.2f} ms"
                  + (f" ({pcpu_ms / cpu_ms:.2f}x)" if peer and cpu_ms else "")
                  + f"; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if args.by_process:
        table = Table(title="Colony's CPU per operation by process (ms)")
        for col in ("process", "ms/op", "of which idle", "net of idle"):
            table.add_column(col, justify="right" if col != "process" else "left")
        rows = colony_ops["by_process"]
        for label, ms, idle in rows:
            table.add_row(label, f"{ms:.3f}", f"{idle:.3f}", f"{ms - idle:.3f}")
        total, idle = sum(r[1] for r in rows), sum(r[2] for r in rows)
        table.add_row("all of colony up", f"{total:.3f}", f"{idle:.3f}", f"{total - idle:.3f}")
        console.print(table)


if __name__ == "__main__":
    main()
