"""Outbound mail: Colony (submission with AUTH over TLS -> OUTBOUND -> an edge's delivery)
against Postfix relaying the same load, both delivering to one loopback SMTP sink.

    .venv/bin/python bench/smtp_outbound.py [--messages 1000] [--clients 16] [--size 2k] [--no-peer] [--dkim]

Colony: `colony up` (one edge), a domain with 20 accounts made through the admin API; each
client opens one submission session (587-equivalent port, STARTTLS, AUTH PLAIN) and sends
its share of the messages to remote recipients, one after another.  The remote domain's MX
is found through a loopback DNS server (dnslib, as the tests use) and points at the sink
(aiosmtpd on loopback, counting messages).  Postfix (Debian's, configured by
``bench/peers.py``) gets the same messages over plain SMTP from mynetworks (no TLS, no
AUTH: less work than Colony does per message) and relays them to the same sink.

Every session connects (and for Colony authenticates) before the clock starts.  Printed per
system: submissions/s (first MAIL FROM to the last 250), delivered/s (first MAIL FROM to the
last message at the sink), p50/p99 of one submission transaction, CPU
milliseconds per message (user+system of every process of the system under test: for
Colony `colony up` and all it runs, nats-server included; for Postfix its master and every
daemon; the sink and the clients are this process and count for neither), and the ratio
Colony / Postfix of delivered/s.  On a machine shared with other work the rates move with
the load; CPU per message is the steadier figure.  Also printed for Colony: its CPU per
message by process, and the bus messages per message (nats-server's ``/varz`` ``in_msgs`` and
``out_msgs`` over the timed part: every publish, request, reply, ack and JetStream-internal
message the server took in or handed out).  ``--dkim`` makes a DKIM key for the sending
domain first (through the admin API), so every delivery is signed, and has Postfix sign too,
through Debian's OpenDKIM as a milter on a unix socket (2048-bit RSA, relaxed/relaxed, its
CPU counted with Postfix's; ``--postfix-unsigned`` for the older rows' setup).  The "signed" column counts
the messages that reached the sink with a DKIM-Signature header.  Both systems open at most
``--destination-concurrency`` connections to the one destination (default 20, Postfix's
default_destination_concurrency_limit).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import resource
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiosmtplib
import httpx
from aiosmtpd.controller import Controller
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))
from dnsserver import LoopbackDNS  # noqa: E402
from colony_up import ColonyUp, process_label  # noqa: E402
from peers import OpenDKIM, Postfix, have, process_cpu, wait_port  # noqa: E402

DOMAIN = "bench.test"
REMOTE = "remote.test"
ACCOUNTS = [f"user{i}" for i in range(20)]
PASSWORD = "bench password 1"
console = Console(width=120)


class Sink:
    def __init__(self, pipelining: bool = False) -> None:
        self.count = 0
        self.signed = 0   # of them, how many arrived with a DKIM-Signature header
        self.lock = threading.Lock()
        self.pipelining = pipelining

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.pipelining:   # as Postfix, Exim and the large providers' MX hosts do
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_DATA(self, server, session, envelope):
        signed = b"\nDKIM-Signature:" in b"\n" + envelope.original_content.split(b"\r\n\r\n", 1)[0]
        with self.lock:
            self.count += 1
            self.signed += signed
        return "250 2.0.0 Queued"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def message(n: int, size: int, sender: str) -> bytes:
    line = "Outbound benchmark line of text, seventy-odd characters long, for you.\r\n"
    body = (line * (size // len(line) + 1))[:size].rstrip("\r\n")
    text = (f"From: {sender}\r\nTo: rcpt{n}@{REMOTE}\r\nSubject: bench {n}\r\n"
            f"Message-ID: <out-{n}-{time.time_ns()}@{DOMAIN}>\r\n\r\n{body}\r\n")
    return text.encode()


async def client(port: int, sender: str, share: list[int], size: int, latencies: list[float], tls_auth: bool,
                 ready: asyncio.Barrier, logins: asyncio.Lock) -> None:
    """One session (STARTTLS and AUTH for Colony), its messages one after another once every
    session is ready (the timed part starts at the first MAIL FROM)."""
    deadline = time.monotonic() + 180
    for attempt in itertools.count(1):
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=tls_auth, validate_certs=False, timeout=120)
        await smtp.connect()
        if not tls_auth:
            break
        try:
            async with logins:
                await smtp.login(sender, PASSWORD)
            break
        except aiosmtplib.SMTPAuthenticationError as exc:
            # 454: the auth service did not answer in time (each check is an argon2 hash; on a
            # loaded machine that takes seconds).  A real client tries again too, on a new
            # session.  One login at a time: checks whose client gave up are still computed,
            # so eight clients retrying at once can keep the service behind for minutes.
            if exc.code != 454 or time.monotonic() > deadline:
                raise
            smtp.close()
            await asyncio.sleep(min(0.5 * attempt, 3.0))
    await ready.wait()
    for n in share:
        data = message(n, size, sender)
        start = time.perf_counter()
        await smtp.sendmail(sender, [f"rcpt{n}@{REMOTE}"], data)
        latencies.append(time.perf_counter() - start)
    await smtp.quit()


async def load(port: int, count: int, clients: int, size: int, tls_auth: bool,
               on_start=lambda: None) -> tuple[float, float, list[float]]:
    """Client i sends as account i (mod 20): one AUTH per session.  Sessions are opened and
    authenticated first, untimed (each AUTH is an argon2 check: eight of them cost more CPU
    than a few hundred messages, and Postfix gets no AUTH); ``on_start`` runs the moment the
    last one is ready, before the first MAIL FROM."""
    latencies: list[float] = []
    n = min(clients, count)
    ready, logins = asyncio.Barrier(n + 1), asyncio.Lock()
    sessions = asyncio.gather(*(client(port, f"{ACCOUNTS[i % len(ACCOUNTS)]}@{DOMAIN}", list(range(i, count, clients)),
                                       size, latencies, tls_auth, ready, logins) for i in range(n)))
    waiting = asyncio.ensure_future(ready.wait())
    await asyncio.wait([sessions, waiting], return_when=asyncio.FIRST_COMPLETED)
    if sessions.done():   # a session failed before it was ready
        waiting.cancel()
        await sessions
    on_start()
    start = time.perf_counter()
    await sessions
    return start, time.perf_counter(), latencies


def wait_delivered(sink: Sink, expected: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sink.count >= expected:
            return time.perf_counter()
        time.sleep(0.02)
    raise RuntimeError(f"only {sink.count} of {expected} messages delivered after {timeout}s")


def own_cpu() -> float:
    """This process's CPU seconds: the clients and the sink run here, and a load generator near
    one core (the GIL's limit) would measure itself, not the system under test."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def summary(system: str, count: int, start: float, submitted: float, delivered: float, latencies: list[float],
            cpu: float, generator_cpu: float = 0.0) -> dict:
    latencies.sort()
    return {"generator": generator_cpu / (delivered - start), "system": system, "submit": count / (submitted - start), "deliver": count / (delivered - start),
            "p50": statistics.median(latencies) * 1000, "p99": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
            "cpu_ms": cpu / count * 1000, "load": os.getloadavg()[0]}


def bus_messages(monitor: str) -> tuple[int, int]:
    """nats-server's counts of messages taken in and handed out since it started (``/varz``)."""
    varz = httpx.get(f"{monitor}/varz", timeout=30).json()
    return int(varz["in_msgs"]), int(varz["out_msgs"])


def run_colony(workdir: Path, sink: Sink, sink_port: int, dns: LoopbackDNS, count: int, clients: int, size: int,
               base: int, dkim: bool = False, idle: float = 10.0, concurrency: int = 20) -> dict:
    env = {**os.environ, "COLONY_DNS_SERVERS": dns.address, "COLONY_OUTBOUND_SMTP_PORT": str(sink_port),
           "COLONY_OUTBOUND_DESTINATION_CONCURRENCY": str(concurrency)}
    with ColonyUp(workdir / "colony", base, "--sipfarms", "0", env=env, timeout=120) as colony:
        colony.provision(DOMAIN, ACCOUNTS, password=PASSWORD)
        if dkim:
            with colony.http() as api:
                api.post(f"/v1/domains/{DOMAIN}/dkim").raise_for_status()
        port = int(colony.info["submission"][0].rsplit(":", 1)[1])
        wait_port(port, 120)
        deadline = time.monotonic() + 120
        while True:   # the edge learns the accounts from its directory cache
            try:
                asyncio.run(load(port, 1, 1, 100, True))
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        wait_delivered(sink, 1, 120)
        sink.count = sink.signed = 0
        pids = colony.pids()
        idle0 = {pid: process_cpu([pid]) for pid in pids}
        time.sleep(idle)   # what the cluster spends doing nothing, per second, for the split below
        idle_rates = {pid: (process_cpu([pid]) - idle0[pid]) / idle for pid in pids}
        before: dict[int, float] = {}
        bus0: list[tuple[int, int]] = []

        generator: list[float] = []

        def started() -> None:
            generator.append(own_cpu())
            before.update({pid: process_cpu([pid]) for pid in pids})
            bus0.append(bus_messages(colony.info["nats_monitor"]))
        start, submitted, latencies = asyncio.run(load(port, count, clients, size, True, on_start=started))
        delivered = wait_delivered(sink, count, 600)
        bus1 = bus_messages(colony.info["nats_monitor"])
        result = summary("Colony", count, start, submitted, delivered, latencies,
                         process_cpu(pids) - sum(before.values()), own_cpu() - generator[0])
        result["bus"] = ((bus1[0] - bus0[0][0]) / count, (bus1[1] - bus0[0][1]) / count)
        result["signed"] = sink.signed
        # The idle rate times the timed part's length is what the cluster would have spent anyway.
        seconds = delivered - start
        result["idle_ms_per_s"] = sum(idle_rates.values()) * 1000
        result["idle_share_ms"] = sum(idle_rates.values()) * seconds / count * 1000
        result["idle_by_process"] = sorted(((process_label(pid), rate * 1000) for pid, rate in idle_rates.items()),
                                           key=lambda item: -item[1])
        result["by_process"] = sorted(((process_label(pid), (process_cpu([pid]) - before[pid]) / count * 1000)
                                       for pid in pids), key=lambda item: -item[1])
        return result


def run_postfix(workdir: Path, sink: Sink, sink_port: int, count: int, clients: int, size: int, base: int,
                concurrency: int = 20, dkim: bool = False) -> dict:
    """Postfix relaying to the sink; with ``dkim``, signing through an OpenDKIM milter (its
    CPU counted with Postfix's), so that both systems do the same work per message."""
    extra = f"default_destination_concurrency_limit = {concurrency}\n"
    milter = OpenDKIM(workdir, DOMAIN) if dkim else None
    if milter is not None:
        milter.start()
        extra += f"smtpd_milters = {milter.milter}\nmilter_default_action = tempfail\n"
    postfix = Postfix(workdir, smtp_port=base + 25, domain=DOMAIN, relay_to=f"127.0.0.1:{sink_port}", extra=extra)
    try:
        postfix.start()

        def cpu() -> float:
            return postfix.cpu_seconds() + (milter.cpu_seconds() if milter is not None else 0.0)
        sink.count = sink.signed = 0
        cpu0: list[float] = []
        start, submitted, latencies = asyncio.run(load(base + 25, count, clients, size, False,
                                                       on_start=lambda: cpu0.extend((cpu(), own_cpu()))))
        delivered = wait_delivered(sink, count, 600)
        result = summary("Postfix (relay)" + (" + OpenDKIM" if milter else ""), count, start, submitted, delivered,
                         latencies, cpu() - cpu0[0], own_cpu() - cpu0[1])
        result["signed"] = sink.signed
        return result
    finally:
        postfix.stop()
        if milter is not None:
            milter.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--no-peer", action="store_true", help="skip Postfix")
    parser.add_argument("--base-port", type=int, default=5500)
    parser.add_argument("--dkim", action="store_true", help="sign every delivery (a DKIM key for the sending domain)")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds the idle cluster's CPU is measured first")
    parser.add_argument("--sink-pipelining", action="store_true",
                        help="the sink advertises PIPELINING (RFC 2920), as real MX hosts do; both systems then pipeline")
    parser.add_argument("--postfix-unsigned", action="store_true",
                        help="with --dkim, Postfix still signs nothing (the older rows' setup); by default it signs "
                             "through Debian's OpenDKIM milter, so both systems do the same work")
    parser.add_argument("--destination-concurrency", type=int, default=20,
                        help="connections each system may open to the one destination (Postfix's "
                             "default_destination_concurrency_limit is 20; Colony's outbound_destination_concurrency "
                             "defaults to 4 per edge, set to this for the run so both work under the same limit)")
    args = parser.parse_args()
    if not args.no_peer and have("postfix", "/usr/sbin/postfix") == ["postfix", "/usr/sbin/postfix"]:
        sys.exit("the peer needs Debian's postfix: apt-get install postfix (or --no-peer)")
    if args.dkim and not (args.no_peer or args.postfix_unsigned) and have("opendkim", "opendkim-genkey"):
        sys.exit("Postfix signs through Debian's OpenDKIM: apt-get install opendkim opendkim-tools "
                 "(or --postfix-unsigned)")
    sink = Sink(args.sink_pipelining)
    sink_port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=sink_port)
    controller.start()
    dns = LoopbackDNS().start()
    dns.add(f"{REMOTE}. 60 IN MX 10 mx.{REMOTE}.", f"mx.{REMOTE}. 60 IN A 127.0.0.1")
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="colony-bench-out-") as tmp:
            work = Path(tmp)
            rows.append(run_colony(work, sink, sink_port, dns, args.messages, args.clients, args.size, args.base_port,
                                   args.dkim, args.idle, args.destination_concurrency))
            if not args.no_peer:
                rows.append(run_postfix(work, sink, sink_port, args.messages, args.clients, args.size, args.base_port + 100,
                                        args.destination_concurrency, args.dkim and not args.postfix_unsigned))
    finally:
        dns.stop()
        controller.stop()
    table = Table("system", "submissions/s", "delivered/s", "p50 ms", "p99 ms", "CPU ms/msg", "load after",
                  "generator cores", "signed",
                  title=f"{args.messages} messages of {args.size} B, {args.clients} clients"
                  + (", the sink offers PIPELINING" if args.sink_pipelining else "")
                  + f", {args.destination_concurrency} connections per destination")
    for r in rows:
        table.add_row(r["system"], f"{r['submit']:.0f}", f"{r['deliver']:.0f}", f"{r['p50']:.1f}", f"{r['p99']:.1f}",
                      f"{r['cpu_ms']:.1f}", f"{r['load']:.1f}", f"{r['generator']:.2f}", f"{r['signed']}")
    console.print(table)
    for r in rows:
        if "by_process" in r:
            console.print("Colony CPU ms per message by process: " + ", ".join(
                f"{label} {ms:.1f}" for label, ms in r["by_process"] if ms >= 0.05))
            console.print(f"Colony bus messages per message: {r['bus'][0]:.1f} into nats-server, "
                          f"{r['bus'][1]:.1f} out of it")
            console.print(f"Colony idle (before the load): {r['idle_ms_per_s']:.0f} ms CPU per second, "
                          f"{r['idle_share_ms']:.1f} ms of the CPU per message at this rate: " + ", ".join(
                              f"{label} {ms:.1f}" for label, ms in r["idle_by_process"] if ms >= 0.05))
    if len(rows) == 2:
        console.print(f"Colony / Postfix (delivered/s): {rows[0]['deliver'] / rows[1]['deliver']:.2f}x; "
                      f"CPU per message: {rows[0]['cpu_ms'] / rows[1]['cpu_ms']:.1f}x Postfix's")


if __name__ == "__main__":
    main()
