"""Inbound mail: Colony (edge -> MAIL stream -> mail stores) against Postfix -> Dovecot LMTP.

    .venv/bin/python bench/smtp_inbound.py [--messages 2000] [--clients 16] [--sizes 1k,100k]
                                           [--mailstores 1,3] [--no-peer] [--by-process]
                                           [--repeat N] [--idle-seconds 5] [--accounts 20]

Both systems run on this machine on loopback, configured by this script, with the same
durability: Colony's embedded nats-server syncs every acknowledged write
(``sync_interval: always``) and its mail stores fsync before they acknowledge; Postfix
fsyncs its queue files and Dovecot runs with ``mail_fsync = always``.  The same load goes
to both: ``--clients`` concurrent SMTP sessions sending ``--messages`` messages of each size
to ``--accounts`` accounts (20 by default) in one domain, round robin, one connection per
client reused for all its messages.  Deliveries to one account in flight together share its
journal's fsync, so few accounts make every figure cheaper (20 against 1,000: 6.3 against
9.9 ms CPU per message with one store); the growth from 1 to 3 stores came out the same with
either (bench/README.md, last section).

A message counts as *stored* when it is in a mailbox on disk (a body file in the account's
mail store, a file in the user's Maildir).  The table prints messages/s from the first
MAIL FROM to the last message stored, p50/p99 of the SMTP transaction time as the client
sees it (MAIL FROM to the 250 after the data), and CPU per message: user+system time of
every process of the system under test (for Colony all of `colony up`'s processes,
nats-server and idle roles included), divided by the messages; for Colony also how many
deliveries a mail store had to forward to the account's owner over the bus
(``--by-process``: the CPU of each process).

Each run's data goes where creating a file is cheap (``bench/scratch.py``): on this VM's
journal-less ext4 a new inode near recently deleted ones cost up to 20x more CPU, a body file
per message, and which run of a series got such a place was chance.  ``file create`` (``create
us``) is the CPU of a 1 KiB create where the run's data is; ``--no-spread`` keeps the old
placement.

``--repeat N`` runs every mail store count N times in ABBA order (1, 3, 3, 1, 1, 3, ...: a
drift of the machine's speed during the series weighs on both alike), prints each run as it
ends, and then the median of every figure per count and the growth from the first count to
the last, both from the medians and as the median of the growths of adjacent pairs.  The
goal's figure is always ``CPU ms/msg`` (every process of `colony up`).  Beside it, labelled,
figures less sensitive to what else the VM does:

* ``stores+nats``: the CPU of the mail stores and nats-server only, per message (the
  processes whose number or load changes with the mail store count);
* ``net of idle``: every process's CPU per message minus what it spent per second when
  idle, measured for ``--idle-seconds`` just before the load, times the load's duration
  (the fixed cost of being up, separated from the cost of the messages);
* ``calibrated``: ``CPU ms/msg`` divided by the CPU time of a fixed pure-Python loop in
  this process, measured before and after the run, times that loop's time on the first run
  (the VM's speed moved by 50 % between runs on the shared machine: this divides it out,
  as far as the loop feels what the services feel);
* ``bus in``/``bus out`` per message: messages clients published to nats-server and
  messages it delivered to clients (its ``/varz``), and ``--by-process`` shows them per
  connection (``/connz``, named by node id) beside each process's CPU.
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
from scratch import quiet_directory, spread_out  # noqa: E402

DOMAIN = "bench.test"
ACCOUNTS = [f"user{i}" for i in range(20)]  # --accounts replaces it
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

def run_colony(workdir: Path, count: int, size: int, clients: int, mailstores: int, base: int,
               idle_seconds: float = 0.0, tag: str = "", stay: bool = False) -> dict:
    # Where a new file is cheap (bench/scratch.py): on this VM a create's CPU moved by 20x
    # with deletions nearby, and a mail store creates one body file per message.
    data_dir, create_us = quiet_directory(workdir, f"colony-{mailstores}{tag}", tries=1 if stay else 8)
    with ColonyUp(data_dir, base, "--mailstores", str(mailstores), "--sipfarms", "0", timeout=120) as colony:
        colony.provision(DOMAIN, ACCOUNTS)
        smtp_port = base + 25
        wait_port(smtp_port, 60)
        storage = data_dir / "storage" / "SharedDomains"

        def stored() -> int:
            return sum(1 for _ in storage.glob("**/*.macnt/mail/bodies/*"))

        # The edge learns new accounts from its directory cache, in the order they were
        # created: wait until it accepts the last one.
        asyncio.run(smtp_session(smtp_port, [(f"{ACCOUNTS[-1]}@{DOMAIN}", make_message(100, len(ACCOUNTS) - 1))], []))
        wait_stored(stored, 1, 60)
        forwarded0 = forwarded_deliveries(colony)
        pids = colony.pids()
        # What each process spends per second with nothing to do (timers, heartbeats, long
        # polls), measured right before the load: subtracted for the "net of idle" figure.
        idle_rate: dict[int, float] = {}
        if idle_seconds > 0:
            idle0 = {pid: process_cpu([pid]) for pid in pids}
            t0 = time.monotonic()
            time.sleep(idle_seconds)
            idle_rate = {pid: (process_cpu([pid]) - idle0[pid]) / (time.monotonic() - t0) for pid in pids}
        monitor = colony.info.get("nats_monitor", "")
        bus0, conns0 = bus_counts(monitor)
        load_at_start = os.getloadavg()[0]
        cpu0 = process_cpu(pids)
        before = {pid: process_cpu([pid]) for pid in pids}
        t_start = time.monotonic()
        start, latencies = asyncio.run(run_load(smtp_port, count, size, clients))
        end = wait_stored(stored, count + 1, 600)
        elapsed = time.monotonic() - t_start
        after = colony.pids()
        cpu = process_cpu(after) - cpu0
        bus1, conns1 = bus_counts(monitor)
        result = summarise("Colony", str(mailstores), size, count, start, end, latencies, cpu)
        result["forwarded"] = forwarded_deliveries(colony) - forwarded0
        result["load"] = load_at_start
        result["create_us"] = create_us
        per_pid = {pid: process_cpu([pid]) - before.get(pid, 0.0) for pid in after}
        labels = {pid: process_label(pid) for pid in after}
        result["stores_nats_ms"] = sum(c for pid, c in per_pid.items()
                                       if labels[pid] in ("colony_mailstore", "nats-server")) / count * 1000
        if idle_rate:
            result["net_idle_ms"] = sum(c - idle_rate.get(pid, 0.0) * elapsed for pid, c in per_pid.items()) / count * 1000
        if bus0 is not None and bus1 is not None:
            result["bus_in"] = (bus1[0] - bus0[0]) / count
            result["bus_out"] = (bus1[1] - bus0[1]) / count
            result["bus_by_conn"] = sorted(((name, (conns1[name][0] - conns0.get(name, (0, 0))[0]) / count,
                                             (conns1[name][1] - conns0.get(name, (0, 0))[1]) / count)
                                            for name in conns1), key=lambda item: -(item[1] + item[2]))
        # Where the CPU went, per process (--by-process prints it): what scale-out costs.
        result["by_process"] = sorted(((labels[pid], c / count * 1000,
                                        idle_rate[pid] * 1000 if pid in idle_rate else None)
                                       for pid, c in per_pid.items()), key=lambda item: -item[1])
        return result


def bus_counts(monitor: str) -> tuple[tuple[int, int] | None, dict[str, tuple[int, int]]]:
    """nats-server's messages in (published by clients) and out (delivered to clients) in
    total (``/varz``) and per named connection (``/connz``; Colony names a connection by its
    node id).  (None, {}) without a monitoring port."""
    if not monitor:
        return None, {}
    try:
        varz = httpx.get(f"{monitor}/varz", timeout=10).json()
        connz = httpx.get(f"{monitor}/connz", params={"limit": 4096}, timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return None, {}
    conns: dict[str, tuple[int, int]] = {}
    for c in connz.get("connections", []):
        name = c.get("name") or f"cid {c.get('cid')}"
        old = conns.get(name, (0, 0))
        conns[name] = (old[0] + c.get("in_msgs", 0), old[1] + c.get("out_msgs", 0))
    return (varz.get("in_msgs", 0), varz.get("out_msgs", 0)), conns


def calibrate() -> float:
    """CPU seconds of a fixed pure-Python loop in this process (median of three): how fast
    the VM runs Python right now.  The services are CPython too, so their CPU per message
    moves with it when other guests or helpers take the host's cores or caches."""
    times = []
    for _ in range(3):
        t0 = time.process_time()
        acc = 0
        for i in range(400_000):
            acc = (acc + i * i) % 1_000_003
        d = {}
        for i in range(100_000):
            d[i & 1023] = str(i)
        times.append(time.process_time() - t0)
    return statistics.median(times)


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


def abba(counts: list[int], repeat: int) -> list[int]:
    """The run order for ``repeat`` runs of each count: forward, backward, forward, ...
    (1,3 repeated 2 -> 1, 3, 3, 1)."""
    order: list[int] = []
    for i in range(repeat):
        order.extend(counts if i % 2 == 0 else reversed(counts))
    return order


def growth(a: float, b: float) -> str:
    return f"{(b / a - 1) * 100:+.1f} %" if a else "-"


FIGURES = (("cpu_ms", "CPU ms/msg (all)"), ("stores_nats_ms", "stores+nats ms/msg"),
           ("net_idle_ms", "net of idle ms/msg"), ("calibrated_ms", "calibrated ms/msg"),
           ("bus_in", "bus in/msg"), ("bus_out", "bus out/msg"), ("rate", "msgs/s"))


def print_series(runs: list[dict], counts: list[int], size: int) -> None:
    """Median per mail store count of every figure, and the growth first count -> last."""
    table = Table(title=f"Inbound SMTP, {size} octets: medians of {len(runs)} runs (ABBA order)")
    table.add_column("figure")
    for n in counts:
        table.add_column(f"{n} store(s)", justify="right")
    table.add_column(f"growth {counts[0]} -> {counts[-1]} (medians)", justify="right")
    table.add_column("median of paired growths", justify="right")
    by_count = {n: [r for r in runs if r["mailstores"] == str(n)] for n in counts}
    # Adjacent runs of the first and last count (1,3 | 3,1 | 1,3 ...): each pair shares the
    # machine's state of the moment.
    ordered = [r for r in runs if r["mailstores"] in (str(counts[0]), str(counts[-1]))]
    pairs = [(ordered[i], ordered[i + 1]) for i in range(0, len(ordered) - 1, 2)]
    for key, title in FIGURES:
        medians = {}
        for n in counts:
            values = [r[key] for r in by_count[n] if key in r]
            medians[n] = statistics.median(values) if values else None
        paired = []
        for x, y in pairs:
            first, last = (x, y) if x["mailstores"] == str(counts[0]) else (y, x)
            if key in first and key in last and first[key]:
                paired.append(last[key] / first[key] - 1)
        a, b = medians[counts[0]], medians[counts[-1]]
        table.add_row(title, *(f"{medians[n]:.2f}" if medians[n] is not None else "-" for n in counts),
                      growth(a, b) if a is not None and b is not None else "-",
                      f"{statistics.median(paired) * 100:+.1f} %" if paired else "-")
    console.print(table)


def run_line(i: int, r: dict) -> str:
    parts = [f"run {i}: {r['mailstores']} store(s), load {r.get('load', 0):.2f} at start, {r['rate']:.0f} msgs/s",
             f"CPU {r['cpu_ms']:.2f} ms/msg (all)", f"stores+nats {r.get('stores_nats_ms', 0):.2f}"]
    if "net_idle_ms" in r:
        parts.append(f"net of idle {r['net_idle_ms']:.2f}")
    if "calibrated_ms" in r:
        parts.append(f"calibrated {r['calibrated_ms']:.2f} (loop {r['loop_s'] * 1000:.0f} ms)")
    if "bus_in" in r:
        parts.append(f"bus in/out per msg {r['bus_in']:.1f}/{r['bus_out']:.1f}")
    parts.append(f"forwarded {r.get('forwarded', 0)}")
    if "create_us" in r:
        parts.append(f"file create {r['create_us']:.0f} us")
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--sizes", default="1k,100k")
    parser.add_argument("--mailstores", default="1,3")
    parser.add_argument("--no-peer", action="store_true", help="skip Postfix + Dovecot")
    parser.add_argument("--base-port", type=int, default=4500)
    parser.add_argument("--by-process", action="store_true", help="also print Colony's CPU per message per process")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each mail store count this many times, ABBA order; print medians and growth")
    parser.add_argument("--idle-seconds", type=float, default=5.0,
                        help="measure each process's idle CPU this long before the load (0: skip 'net of idle')")
    parser.add_argument("--no-spread", action="store_true",
                        help="put each run's data where the scratch directory's neighbours are, whatever a file "
                             "create costs there (the placement before bench/scratch.py, for A/B)")
    parser.add_argument("--accounts", type=int, default=20,
                        help="accounts the messages go to, round robin (few favour few mail stores: shared fsyncs)")
    args = parser.parse_args()
    if args.accounts < 1:
        parser.error("--accounts must be at least 1")
    ACCOUNTS[:] = [f"user{i}" for i in range(args.accounts)]
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    missing = [] if args.no_peer else have("postfix", "dovecot")
    if missing:
        sys.exit(f"the peer needs Debian's {' and '.join(missing)}: apt-get install postfix dovecot-core "
                 f"dovecot-lmtpd (or run with --no-peer)")
    counts = [int(n) for n in args.mailstores.split(",")]
    rows = []
    series: dict[int, list[dict]] = {}
    reference_loop = None
    with tempfile.TemporaryDirectory(prefix="colony-bench-") as tmp:
        workdir = Path(tmp)
        if not args.no_spread and not spread_out(workdir):
            console.print("[dim]chattr +T not supported here: each run's data stays beside the scratch directory[/dim]")
        for size in map(parse_size, args.sizes.split(",")):
            peer = None
            if not args.no_peer:
                console.print(f"[dim]Postfix + Dovecot, {size} octets ...[/dim]")
                peer = run_peer(workdir, args.messages, size, args.clients, args.base_port + 400)
                rows.append(peer)
            series[size] = []
            for i, n in enumerate(abba(counts, args.repeat), 1):
                console.print(f"[dim]Colony with {n} mail store(s), {size} octets ...[/dim]")
                loop_before = calibrate()
                row = run_colony(workdir, args.messages, size, args.clients, n, args.base_port,
                                 idle_seconds=args.idle_seconds, tag=f"-{size}-{i}", stay=args.no_spread)
                row["loop_s"] = (loop_before + calibrate()) / 2
                reference_loop = reference_loop or row["loop_s"]
                row["calibrated_ms"] = row["cpu_ms"] * reference_loop / row["loop_s"]
                row["ratio"] = row["rate"] / peer["rate"] if peer else None
                rows.append(row)
                series[size].append(row)
                console.print(run_line(i, row))
    table = Table(title=f"Inbound SMTP, {args.messages} messages, {args.clients} clients, {os.cpu_count()} cores")
    for column in ("system", "mail stores", "size", "msgs/s", "p50 ms", "p99 ms", "CPU ms/msg", "stores+nats",
                   "net of idle", "forwarded", "load", "create us", "vs Postfix"):
        table.add_column(column, justify="right" if column not in ("system",) else "left")
    for r in rows:
        ratio = r.get("ratio")
        table.add_row(r["system"], r["mailstores"], str(r["size"]), f"{r['rate']:.0f}", f"{r['p50']:.1f}",
                      f"{r['p99']:.1f}", f"{r['cpu_ms']:.2f}",
                      f"{r['stores_nats_ms']:.2f}" if "stores_nats_ms" in r else "",
                      f"{r['net_idle_ms']:.2f}" if "net_idle_ms" in r else "", str(r.get("forwarded", "")),
                      f"{r['load']:.2f}" if "load" in r else "",
                      f"{r['create_us']:.0f}" if "create_us" in r else "", f"{ratio:.2f}x" if ratio else "")
    console.print(table)
    if args.repeat > 1 or len(counts) > 1:
        for size, runs in series.items():
            print_series(runs, counts, size)
    if args.by_process:
        for i, r in enumerate(rows):
            if "by_process" in r:
                detail = Table(title=f"Per process: {r['mailstores']} mail store(s), {r['size']} octets, row {i}")
                detail.add_column("process")
                detail.add_column("CPU ms/msg", justify="right")
                detail.add_column("idle CPU ms/s (before the load)", justify="right")
                for label, ms, idle in r["by_process"]:
                    if ms >= 0.01 or (idle or 0) >= 0.1:
                        detail.add_row(label, f"{ms:.2f}", f"{idle:.1f}" if idle is not None else "")
                console.print(detail)
                if r.get("bus_by_conn"):
                    console.print("bus messages per delivered message, in/out by connection: " + ", ".join(
                        f"{name} {i_:.2f}/{o_:.2f}" for name, i_, o_ in r["bus_by_conn"] if i_ + o_ >= 0.01))


if __name__ == "__main__":
    main()
