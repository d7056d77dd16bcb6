"""Cross-region mail delivery as a user sees it, against the same load delivered within one
region, and provisioning replication lag between regions (issue #11).

    .venv/bin/python bench/regions.py [--messages 400] [--clients 16] [--size 1536] [--repeat 2]
                                      [--events 100] [--mailstores 1] [--base-port 15000]
                                      [--no-bus | --no-delivery] [--bus-messages 2000] [--bus-events 300]
                                      [--bus-in-flight 100] [--bus-sync] [--bus-direct] [--bus-publish-home]
                                      [--bus-store-acks]

**Delivery (the main table).** ``colony up --regions eu,us`` (hub and two regions on this
machine, every process as an operator starts it, nats-servers syncing every write) with one
controller, edge, mail store, projector and admin API per region and no SIP farm; a domain
homed in eu with 20 accounts, provisioned through eu's admin API.  The same SMTP load --
``--clients`` concurrent clients, one connection each, ``--messages`` messages of
``--size`` octets of text between them (the client and messages of ``bench/smtp_inbound.py``)
-- goes (a) to eu's edge: in-region, or (b) to us's edge: cross-region, accepted in us and
published through the hub straight into eu's MAIL (its ``250`` means stored in eu; in us's
MAIL, sourced into eu's, only when eu does not answer in time), stored by eu's mail store.
A message counts as stored when its body file is in eu's mail store on disk.
Per run:

* stored msgs/s: the messages over the time from the first MAIL FROM to the last body stored;
* SMTP transaction p50/p99: MAIL FROM to the ``250`` after the data, as the client sees it;
* end-to-end p50/p99: MAIL FROM to the message's body stored in eu (the body file's ctime:
  set when the store renames the fsync'd file into place; the store's journal commit
  follows within milliseconds), and "after the 250": the part of it after the client's
  ``250``.  File times are the kernel's coarse wall clock (a few ms of granularity), the
  client's times ``time.time()``: both wall clock on one machine;
* CPU ms per message of every process of both regions, the hub and ``colony up`` itself
  (user+system from /proc, over the run), and extra copies stored (should be 0).

The runs alternate in ABBA order (in, cross, cross, in, ...; ``--repeat`` runs of each on one
``colony up``) so a drift of the shared machine weighs on both; the summary gives medians and
the median of the adjacent pairs' ratios.  Before them (not measured): the first message from
each edge, timed to tell whether the first cross-region delivery still waits.

**Replication lag.** ``--events`` accounts created one at a time through eu's admin API; each
PROVISIONING event is timed from its delivery to a consumer of eu's stream to its delivery to
a consumer of us's mirror (both in this process, matched by stream sequence).

**Bus only (second table, ``--no-bus`` skips it).** What the delivery is made of, without
Colony's processes: three nats-servers of their own (hub, eu, us; no fsync), the streams as
``colony.bus.schema`` makes them, a Python client publishing ``--bus-messages`` jobs into eu's
MAIL (in-region) or us's (cross-region) and pulling them from eu's MAIL as eu's stores do,
with each server's CPU per 1,000 messages, and the same replication lag measured on them.
``--bus-sync`` has those servers fsync every write as ``colony up``'s do (the synced writes
are the largest part of a server's CPU per job); ``--bus-direct`` adds a row where eu's
consumer pulls us's MAIL itself through us's JetStream domain (no second copy in eu, but
every pull request, job, ack and ack reply crosses the hub), to weigh that against the
source; ``--bus-publish-home`` adds one where us's client publishes straight into eu's MAIL
across the link (no copy in us, the ack from eu); ``--bus-store-acks`` makes the consumer pull
and acknowledge as the mail stores do (8 at a time, every ack confirmed).  ``--no-delivery``
runs the bus-only table alone.
Goals (issue #11): cross-region throughput >= 0.9x in-region, replication lag p99 < 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import smtplib
import socket
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "libs"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import nats  # noqa: E402
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy  # noqa: E402

from colony.bus import names  # noqa: E402
from colony.bus.connection import connect_options  # noqa: E402
from colony.bus.schema import ensure_schema  # noqa: E402
from colony.natsd import EmbeddedNats  # noqa: E402
from colony.settings import Settings  # noqa: E402
from colony_up import ColonyUp, process_label  # noqa: E402
from peers import process_cpu  # noqa: E402
from smtp_inbound import ACCOUNTS, DOMAIN, make_message, smtp_session  # noqa: E402

REGIONS = ("eu", "us")  # eu is the primary and the domain's home
HOME_PREFIX = "bench-home-mail"  # --bus-publish-home: a subject the leafnode links do not deny
LAG_DOMAIN = "lag.test"
MESSAGE_ID = re.compile(rb"^Message-ID:\s*<([^>]+)>", re.MULTILINE | re.IGNORECASE)


# --- delivery through `colony up --regions` -----------------------------------------------------

class Submissions(list):
    """The latency list ``smtp_session`` appends to after each message's final ``250``; this one
    also notes the wall-clock time of that ``250``, so every message's MAIL FROM and ``250`` can
    be set against the time its body file was stored (a file time: wall clock too)."""

    def __init__(self) -> None:
        super().__init__()
        self.done_at: list[float] = []

    def append(self, latency: float) -> None:
        self.done_at.append(time.time())
        super().append(latency)


async def send_load(port: int, count: int, size: int, clients: int) -> dict[bytes, tuple[float, float]]:
    """``count`` messages over ``clients`` connections: Message-ID -> (MAIL FROM, 250), wall clock."""
    messages = [(f"{ACCOUNTS[n % len(ACCOUNTS)]}@{DOMAIN}", make_message(size, n)) for n in range(count)]
    shares = [messages[i::clients] for i in range(clients)]
    records = [Submissions() for _ in shares]
    await asyncio.gather(*(smtp_session(port, share, rec) for share, rec in zip(shares, records) if share))
    sent = {}
    for share, rec in zip(shares, records):
        if len(rec) != len(share):  # smtp_session notes one latency per message, after its 250
            raise RuntimeError(f"{len(rec)} timings for {len(share)} messages: has smtp_session changed?")
        for (_, data), latency, done in zip(share, rec, rec.done_at):
            sent[MESSAGE_ID.search(data).group(1)] = (done - latency, done)
    return sent


class Store:
    """A region's mail store on disk: the body files of the benchmark domain's accounts."""

    def __init__(self, region_dir: Path) -> None:
        self.root = region_dir / "storage" / "SharedDomains" / DOMAIN
        self.dirs: list[Path] = []  # the accounts' bodies directories, once every account has mail

    def refresh(self) -> None:
        self.dirs = sorted(self.root.glob("**/*.macnt/mail/bodies"))

    def all_files(self) -> set[Path]:
        return set(self.root.glob("**/*.macnt/mail/bodies/[!.]*"))  # .tmp-*: being written

    def files(self) -> set[Path]:
        if not self.dirs:
            return self.all_files()
        out = set()
        for d in self.dirs:
            with os.scandir(d) as entries:
                out.update(d / e.name for e in entries if not e.name.startswith("."))
        return out

    def count(self) -> int:
        if not self.dirs:
            return len(self.all_files())
        return sum(1 for d in self.dirs for name in os.listdir(d) if not name.startswith("."))


def stored_times(paths: set[Path]) -> dict[bytes, list[float]]:
    """Message-ID -> when each copy's body file was stored (ctime: renamed into place after its fsync)."""
    out: dict[bytes, list[float]] = {}
    for path in paths:
        found = MESSAGE_ID.search(path.read_bytes())
        if found:
            out.setdefault(found.group(1), []).append(path.stat().st_ctime)
    return out


def wait_stored(store: Store, before: set[Path], sent: dict, timeout: float) -> dict[bytes, list[float]]:
    """Every sent message's body in the store (the new files' times), or RuntimeError."""
    deadline = time.monotonic() + timeout
    while True:
        if store.count() - len(before) >= len(sent):
            times = stored_times(store.files() - before)
            if all(mid in times for mid in sent):
                return times
        if time.monotonic() > deadline:
            times = stored_times(store.files() - before)
            raise RuntimeError(f"only {sum(mid in times for mid in sent)} of {len(sent)} messages stored in eu "
                               f"after {timeout:.0f} s")
        time.sleep(0.05)


def smtp_accepts(port: int, rcpt: str) -> bool:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
            s.ehlo("probe.test")
            s.mail("probe@remote.test")
            return s.rcpt(rcpt)[0] == 250
    except (smtplib.SMTPException, OSError):
        return False


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def process_names(colony: ColonyUp, pids: list[int]) -> dict[int, str]:
    """pid -> "<region> <instance>" (``eu edge-1``, ``us nats-server``, ``hub nats-server``)."""
    known = {colony.proc.pid: "colony up", colony.info["hub"]["pid"]: "hub nats-server"}
    for region, r in colony.info["regions"].items():
        known[r["nats_pid"]] = f"{region} nats-server"
        known.update({i["pid"]: f"{region} {node}" for node, i in r["instances"].items()})
    out = {}
    for pid in pids:
        if pid not in known:  # restarted since supercluster.json was written, or a child of one
            try:
                env = dict(v.split(b"=", 1) for v in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in v)
            except OSError:
                env = {}
            known[pid] = f"{env.get(b'COLONY_REGION', b'?').decode()} {process_label(pid)}"
        out[pid] = known[pid]
    return out


def group_of(label: str) -> str:
    first = label.split(" ", 1)[0]
    return first if first in (*REGIONS, "hub") else "colony up"


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


def delivery_run(colony: ColonyUp, store: Store, kind: str, port: int, args) -> dict:
    pids = colony.pids()
    labels = process_names(colony, pids)
    before = store.files()
    load0 = os.getloadavg()[0]
    cpu0 = {pid: process_cpu([pid]) for pid in pids}
    own0 = process_cpu([os.getpid()])
    sent = asyncio.run(send_load(port, args.messages, args.size, args.clients))
    times = wait_stored(store, before, sent, 600)
    cpu = {pid: process_cpu([pid]) - cpu0[pid] for pid in pids}
    own = process_cpu([os.getpid()]) - own0
    n = len(sent)
    first_stored = {mid: min(times[mid]) for mid in sent}
    start = min(mail_from for mail_from, _ in sent.values())
    by_label: dict[str, float] = {}
    for pid, used in cpu.items():
        by_label[labels[pid]] = by_label.get(labels[pid], 0.0) + used * 1000 / n
    return {
        "kind": kind, "n": n, "load": (load0, os.getloadavg()[0]),
        "rate": n / (max(first_stored.values()) - start),
        "smtp": [(done - mail_from) * 1000 for mail_from, done in sent.values()],
        "e2e": [(first_stored[mid] - mail_from) * 1000 for mid, (mail_from, _) in sent.items()],
        "after": [(first_stored[mid] - done) * 1000 for mid, (_, done) in sent.items()],
        "extra": sum(len(copies) for copies in times.values()) - n,
        "cpu": by_label, "cpu_total": sum(by_label.values()), "client_cpu": own * 1000 / n,
    }


def run_line(i: int, r: dict) -> str:
    groups: dict[str, float] = {}
    for label, ms in r["cpu"].items():
        groups[group_of(label)] = groups.get(group_of(label), 0.0) + ms
    return (f"run {i} {r['kind']:<12} load {r['load'][0]:.2f}->{r['load'][1]:.2f}: {r['rate']:6.1f} stored msgs/s, "
            f"SMTP p50/p99 {statistics.median(r['smtp']):.0f}/{pct(r['smtp'], 0.99):.0f} ms, "
            f"end-to-end p50/p99 {statistics.median(r['e2e']):.0f}/{pct(r['e2e'], 0.99):.0f} ms, "
            f"CPU {r['cpu_total']:.2f} ms/msg (" + ", ".join(f"{g} {ms:.2f}" for g, ms in sorted(groups.items()))
            + f"), extra copies {r['extra']}")


def abba(repeat: int) -> list[str]:
    order: list[str] = []
    for i in range(repeat):
        order += ["in-region", "cross-region"] if i % 2 == 0 else ["cross-region", "in-region"]
    return order


def first_delivery(store: Store, port: int, size: int) -> str:
    """One message alone, MAIL FROM to stored in eu, and how much of it came after the 250."""
    before = store.files()
    sent = asyncio.run(send_load(port, 1, size, 1))
    times = wait_stored(store, before, sent, 300)
    (mid, (mail_from, done)), = sent.items()
    return f"{min(times[mid]) - mail_from:.2f} s ({min(times[mid]) - done:.2f} s of it after the 250)"


async def replication_lag(colony: ColonyUp, events: int) -> list[float]:
    """Seconds from each PROVISIONING event's delivery in eu to its delivery from us's mirror."""
    seen: dict[str, dict[int, float]] = {r: {} for r in REGIONS}
    ncs = []
    try:
        for region in REGIONS:
            r = colony.info["regions"][region]
            nc = await nats.connect(r["nats_url"], **connect_options(r["operator_seed"]), name=f"bench-lag-{region}")
            ncs.append(nc)

            async def note(msg, region=region):
                seen[region][msg.metadata.sequence.stream] = time.perf_counter()  # a mirror keeps the sequence
            await nc.jetstream().subscribe(names.SUBJECTS_PROVISIONING, stream=names.STREAM_PROVISIONING, cb=note,
                                           ordered_consumer=True, deliver_policy=DeliverPolicy.NEW)
        async with httpx.AsyncClient(base_url=colony.api, headers=colony.headers, timeout=60) as http:
            (await http.post("/v1/domains", json={"name": LAG_DOMAIN, "home_region": REGIONS[0]})).raise_for_status()
            for i in range(events):  # one at a time: each waits for the last to be written
                (await http.post(f"/v1/domains/{LAG_DOMAIN}/accounts", json={"name": f"lag{i}"})).raise_for_status()
        deadline = time.monotonic() + 60
        while not seen["eu"] or not set(seen["eu"]) <= set(seen["us"]):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        return [seen["us"][s] - t for s, t in seen["eu"].items() if s in seen["us"]]
    finally:
        for nc in ncs:
            await nc.close()


def delivery(args) -> None:
    counts = ("--controllers", "1", "--edges", "1", "--mailstores", str(args.mailstores), "--sipfarms", "0",
              "--admin-apis", "1")
    print(f"Delivery through `colony up --regions eu,us` ({' '.join(counts)}), {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f} at the start")
    with tempfile.TemporaryDirectory(prefix="colony-bench-regions-") as tmp:
        data_dir = Path(tmp) / "sc"
        t0 = time.monotonic()
        with ColonyUp(data_dir, args.base_port, "--regions", ",".join(REGIONS), *counts, timeout=240) as colony:
            colony.provision(DOMAIN, ACCOUNTS, home_region=REGIONS[0])
            ports = {r: int(colony.info["regions"][r]["smtp"][0].rsplit(":", 1)[1]) for r in REGIONS}
            for region, port in ports.items():  # provisioning reached the region's directory
                wait_until(lambda port=port: smtp_accepts(port, f"{ACCOUNTS[-1]}@{DOMAIN}"), 180,
                           f"{region}'s edge to accept {ACCOUNTS[-1]}@{DOMAIN}")
            print(f"  up and provisioned in {time.monotonic() - t0:.0f} s (domain {DOMAIN} homed in eu, "
                  f"{len(ACCOUNTS)} accounts)")
            eu_store = Store(data_dir / "eu")
            first_in = first_delivery(eu_store, ports["eu"], args.size)
            first_cross = first_delivery(eu_store, ports["us"], args.size)
            print(f"  first message, MAIL FROM to stored in eu (not measured below): in-region {first_in}, "
                  f"cross-region {first_cross}")
            # Every account gets mail (its bodies directory exists) before the runs count files.
            before = eu_store.files()
            wait_stored(eu_store, before, asyncio.run(send_load(ports["us"], len(ACCOUNTS), args.size, 4)), 300)
            eu_store.refresh()
            runs = []
            for i, kind in enumerate(abba(args.repeat), 1):
                port = ports["eu"] if kind == "in-region" else ports["us"]
                runs.append(delivery_run(colony, eu_store, kind, port, args))
                print("  " + run_line(i, runs[-1]))
            in_us = len(Store(data_dir / "us").all_files())
            lags = asyncio.run(replication_lag(colony, args.events)) if args.events else []
        load_end = os.getloadavg()[0]
    print_delivery(runs, args, in_us, load_end)
    if lags:
        print(f"\nProvisioning replication eu -> us through colony up, {len(lags)} events ({args.events} accounts "
              f"created one at a time through eu's admin API), from delivery in eu to delivery from us's mirror: "
              f"p50 {statistics.median(lags) * 1000:.1f} ms, p99 {pct(lags, 0.99) * 1000:.1f} ms, "
              f"min {min(lags) * 1000:.1f} ms, max {max(lags) * 1000:.1f} ms (goal: p99 < 1 s), load {os.getloadavg()[0]:.2f}")


def print_delivery(runs: list[dict], args, in_us: int, load_end: float) -> None:
    kinds = ("in-region", "cross-region")
    by_kind = {k: [r for r in runs if r["kind"] == k] for k in kinds}
    pairs = [(runs[i], runs[i + 1]) for i in range(0, len(runs) - 1, 2)]

    def med(kind: str, fn) -> float:
        return statistics.median(fn(r) for r in by_kind[kind])

    def paired(fn) -> str:
        ratios = []
        for a, b in pairs:
            inn, cross = (a, b) if a["kind"] == "in-region" else (b, a)
            if fn(inn):
                ratios.append(fn(cross) / fn(inn))
        return f"{statistics.median(ratios):.2f}x" if ratios else "-"

    loads = [x for r in runs for x in r["load"]]
    print(f"\nDelivery: {args.messages} messages of ~{len(make_message(args.size, 0))} B per run over "
          f"{args.clients} SMTP connections; medians of {len(by_kind['in-region'])} in-region and "
          f"{len(by_kind['cross-region'])} cross-region runs (ABBA order); load average {min(loads):.2f}-"
          f"{max(loads):.2f} during the runs, {load_end:.2f} at the end")
    rows = [("stored msgs/s (first MAIL FROM to last stored in eu)", lambda r: r["rate"], "{:.1f}"),
            ("SMTP transaction p50 ms (MAIL FROM to 250)", lambda r: statistics.median(r["smtp"]), "{:.1f}"),
            ("SMTP transaction p99 ms", lambda r: pct(r["smtp"], 0.99), "{:.1f}"),
            ("end-to-end p50 ms (MAIL FROM to stored in eu)", lambda r: statistics.median(r["e2e"]), "{:.1f}"),
            ("end-to-end p99 ms", lambda r: pct(r["e2e"], 0.99), "{:.1f}"),
            ("  of it after the 250, p50 ms", lambda r: statistics.median(r["after"]), "{:.1f}"),
            ("  of it after the 250, p99 ms", lambda r: pct(r["after"], 0.99), "{:.1f}"),
            ("  of it after the 250, max ms (a stalled job shows here)", lambda r: max(r["after"]), "{:.1f}"),
            ("CPU ms/msg, every process of both regions and the hub", lambda r: r["cpu_total"], "{:.2f}")]
    for group in (*REGIONS, "hub", "colony up"):
        rows.append((f"  of it {group}", lambda r, g=group: sum(ms for label, ms in r["cpu"].items()
                                                                if group_of(label) == g), "{:.2f}"))
    # Here both regions share one machine, so every region's CPU counts against the rate above.
    # Deployed, a region has machines of its own and the busiest region bounds the rate: this
    # row is that bound with os.cpu_count() cores per region (the SMTP clients not counted).
    rows.append((f"msgs/s bound with {os.cpu_count()} cores per region (cores / busiest region's CPU)",
                 lambda r: os.cpu_count() * 1000 / max(sum(ms for label, ms in r["cpu"].items() if group_of(label) == g)
                                                       for g in REGIONS), "{:.1f}"))
    rows += [("the SMTP clients' CPU ms/msg (this process; not in the total)", lambda r: r["client_cpu"], "{:.2f}"),
             ("extra copies stored", lambda r: r["extra"], "{:.0f}")]
    width = 64
    print(f"{'':<{width}} {'in-region':>10} {'cross-region':>12} {'cross/in':>9} {'paired':>7}")
    for title, fn, fmt in rows:
        a, b = med("in-region", fn), med("cross-region", fn)
        ratio = f"{b / a:.2f}x" if a else "-"
        print(f"{title:<{width}} {fmt.format(a):>10} {fmt.format(b):>12} {ratio:>9} {paired(fn):>7}")
    print("(paired: the median of the ratios of adjacent in/cross runs; goal: cross/in stored msgs/s >= 0.9x)")
    print("CPU ms/msg by process (medians):")
    labels = sorted({label for r in runs for label in r["cpu"]},
                    key=lambda label: (group_of(label), -max(r["cpu"].get(label, 0) for r in runs)))
    for label in labels:
        a = med("in-region", lambda r: r["cpu"].get(label, 0.0))
        b = med("cross-region", lambda r: r["cpu"].get(label, 0.0))
        if max(a, b) >= 0.01:
            print(f"  {label:<{width - 2}} {a:>10.2f} {b:>12.2f} {b - a:>+9.2f}")
    print(f"bodies of {DOMAIN} stored in us (should be 0: mail is stored in its home region): {in_us}")


# --- bus only: the delivery's bus part, three nats-servers of this benchmark's own ----------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU of a process (this one without a pid), from /proc/<pid>/stat."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


class CpuMeter:
    """CPU seconds of each named process between start() and stop()."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids, self.before, self.used = pids, {}, {}

    def start(self) -> None:
        self.before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        self.used = {name: cpu_seconds(pid) - self.before[name] for name, pid in self.pids.items()}
        return self.used


async def run_mail(js_pub, js_eu, label: str, n: int, size: int, cpu: CpuMeter | None = None,
                   store_acks: bool = False, prefix: str | None = None, in_flight: int = 100) -> dict:
    """``store_acks``: pull 8 at a time and confirm every ack (``ack_sync``) as the mail stores'
    queue runner does, instead of batches of 200 acked without confirmation.  ``prefix``: jobs
    go to ``<prefix>.eu.<domain>`` instead of eu's mail subjects (``--bus-publish-home``)."""
    durable = f"bench-{label}"
    sub = await js_eu.pull_subscribe(f"{prefix}.eu.>" if prefix else names.mail_region_filter("eu"), durable=durable,
                                     config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=10000))
    latencies: list[float] = []
    pad = b"x" * max(0, size - 8)
    done = asyncio.Event()

    async def consume():
        while len(latencies) < n:
            try:
                msgs = await sub.fetch(8 if store_acks else 200, timeout=5)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            now = time.perf_counter()
            for m in msgs:
                latencies.append(now - struct.unpack("d", m.data[:8])[0])
                await (m.ack_sync() if store_acks else m.ack())
        done.set()

    task = asyncio.create_task(consume())
    if cpu:
        cpu.start()
    start = time.perf_counter()
    subject = f"{prefix}.eu.{label}.example" if prefix else names.mail_subject("eu", f"{label}.example")
    acks = []
    for i in range(n):
        # Nats-Msg-Id as an edge sets it: the sourcing stream drops a copy it already has.
        acks.append(js_pub.publish(subject, struct.pack("d", time.perf_counter()) + pad,
                                   headers={"Nats-Msg-Id": f"{label}-{i}"}))
        if len(acks) >= in_flight:  # an edge has many sessions in flight, each waiting for its ack
            await asyncio.gather(*acks)
            acks = []
    await asyncio.gather(*acks)
    await asyncio.wait_for(done.wait(), 300)
    elapsed = time.perf_counter() - start
    used = cpu.stop() if cpu else {}
    await task
    await sub.unsubscribe()
    await js_eu.delete_consumer(names.STREAM_MAIL, durable)  # a work queue takes one consumer per filter
    return {"label": label, "n": len(latencies), "extra": len(latencies) - n, "p50": pct(latencies, 0.5) * 1000, "p99": pct(latencies, 0.99) * 1000,
            "rate": n / elapsed, "cpu": {k: v * 1000 / n * 1000 for k, v in used.items()}}  # CPU ms per 1,000 msgs


async def run_lag(js_eu, js_us, events: int) -> list[float]:
    sub = await js_us.pull_subscribe(names.SUBJECTS_PROVISIONING, durable="bench-lag", stream=names.STREAM_PROVISIONING)
    lags = []
    for i in range(events):
        t0 = time.perf_counter()
        await js_eu.publish(names.provisioning_subject("domain", f"d{i}.example"), b"{}")
        while True:
            try:
                msgs = await sub.fetch(1, timeout=5)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            await msgs[0].ack()
            break
        lags.append(time.perf_counter() - t0)
    return lags


async def bus_only(args) -> None:
    sync = "fsync on every write, as colony up's" if args.bus_sync else "no fsync"
    print(f"\nBus only (no Colony processes): hub, eu and us nats-servers of this benchmark's own, {sync}; "
          f"{args.bus_messages} jobs of {args.size} B published {args.bus_in_flight} in flight, pulled from eu's MAIL; "
          f"load average {os.getloadavg()[0]:.2f}")
    tmp = Path(tempfile.mkdtemp(prefix="colony-bench-regions-bus-"))
    leaf = _free_port()
    hub = EmbeddedNats(tmp / "hub", server_name="hub", jetstream_domain=names.HUB_JS_DOMAIN,
                       leafnode_listen=f"127.0.0.1:{leaf}", sync_always=args.bus_sync)
    servers = {r: EmbeddedNats(tmp / r, server_name=r, jetstream_domain=names.js_domain(r),
                               leafnode_remotes=(f"nats-leaf://127.0.0.1:{leaf}",),
                               leafnode_deny=names.REGION_LOCAL_SUBJECTS, sync_always=args.bus_sync)
               for r in ("eu", "us")}
    hub.start()
    for s in servers.values():
        s.start()
    ncs = {}
    try:
        for r, s in servers.items():
            ncs[r] = await nats.connect(s.url)
            await ensure_schema(ncs[r].jetstream(), Settings(region=r, regions="eu,us"))
        eu, us = ncs["eu"].jetstream(), ncs["us"].jetstream()
        # Warm-up, not measured: the first cross-region message after the streams are created
        # can wait for the source to (re)start once the leafnode's interest has propagated.
        await run_mail(us, eu, "warm-up", 1, args.size)
        cpu = CpuMeter({"hub": hub.process.pid, "eu": servers["eu"].process.pid, "us": servers["us"].process.pid,
                        "bench": None})
        how = {"store_acks": args.bus_store_acks, "in_flight": args.bus_in_flight}
        rows = [await run_mail(eu, eu, "in-region", args.bus_messages, args.size, cpu, **how),
                await run_mail(us, eu, "cross-region", args.bus_messages, args.size, cpu, **how)]
        if args.bus_publish_home:
            # The other alternative: us's client publishes straight into eu's MAIL across the
            # link, its ack coming from eu (no copy in us; 250 would then depend on the link).
            # eu's mail subjects are denied on the link, so eu's MAIL also takes a subject
            # that is not (these servers are thrown away afterwards).
            config = (await eu.stream_info(names.STREAM_MAIL)).config
            config.subjects = [*config.subjects, f"{HOME_PREFIX}.eu.>"]
            await eu.update_stream(config)
            # us hears of eu's new interest over the link a moment later: probe until a
            # publish from us is answered, then remove the probe.
            deadline = time.monotonic() + 30
            while True:
                try:
                    await us.publish(f"{HOME_PREFIX}.eu.probe", b"probe", timeout=2)
                    break
                except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError, nats.errors.TimeoutError):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
            await eu.purge_stream(names.STREAM_MAIL, subject=f"{HOME_PREFIX}.eu.probe")
            rows.append(await run_mail(us, eu, "cross-publish", args.bus_messages, args.size, cpu,
                                       prefix=HOME_PREFIX, **how))
        if args.bus_direct:
            # The alternative to the second copy: eu's consumer reads us's MAIL itself, through
            # us's JetStream domain.  A work queue takes one consumer per filter, so eu's MAIL
            # first loses its source of us (these servers are thrown away afterwards).
            config = (await eu.stream_info(names.STREAM_MAIL)).config
            config.sources = None
            await eu.update_stream(config)
            rows.append(await run_mail(us, ncs["eu"].jetstream(domain=names.js_domain("us")), "cross-direct",
                                       args.bus_messages, args.size, cpu, **how))
        for row in rows:
            print(f"{row['label']:<13} {row['n']} msgs of {args.size} B: {row['rate']:8.0f} msg/s, "
                  f"latency p50 {row['p50']:7.1f} ms p99 {row['p99']:7.1f} ms, {row['extra']} extra copies")
        print(f"cross/in throughput: {rows[1]['rate'] / rows[0]['rate']:.2f}x")
        print("CPU ms per 1,000 messages:  " + "  ".join(f"{name:>6}" for name in cpu.pids) + "   total")
        for row in rows:
            print(f"  {row['label']:<24} " + "  ".join(f"{row['cpu'][name]:6.0f}" for name in cpu.pids)
                  + f"  {sum(row['cpu'].values()):6.0f}")
        total_in, total_cross = (sum(r["cpu"].values()) for r in rows[:2])
        print(f"cross/in CPU per message: {total_cross / total_in:.2f}x   (bench = this process, the client)")
        print("servers' CPU ms per message (hub + eu + us): "
              + ", ".join(f"{r['label']} {sum(v for k, v in r['cpu'].items() if k != 'bench') / 1000:.3f}" for r in rows))
        lags = await run_lag(eu, us, args.bus_events)
        print(f"provisioning replication eu -> us on the bus, {len(lags)} events published one at a time: "
              f"p50 {statistics.median(lags) * 1000:.1f} ms, p99 {pct(lags, 0.99) * 1000:.1f} ms, "
              f"max {max(lags) * 1000:.1f} ms; load average {os.getloadavg()[0]:.2f}")
    finally:
        for nc in ncs.values():
            await nc.close()
        for s in (*servers.values(), hub):
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=400, help="messages per delivery run")
    parser.add_argument("--clients", type=int, default=16, help="concurrent SMTP connections per run")
    parser.add_argument("--size", type=int, default=1536, help="octets of body text per message")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each of in-region and cross-region (ABBA)")
    parser.add_argument("--events", type=int, default=100, help="accounts created for the replication lag (0: skip)")
    parser.add_argument("--mailstores", type=int, default=1, help="mail stores per region")
    parser.add_argument("--base-port", type=int, default=15000, help="eu from here, us from +200, the hub at +2/+3")
    parser.add_argument("--no-bus", action="store_true", help="skip the bus-only table")
    parser.add_argument("--no-delivery", action="store_true", help="skip the delivery table (bus only)")
    parser.add_argument("--bus-messages", type=int, default=2000)
    parser.add_argument("--bus-events", type=int, default=300)
    parser.add_argument("--bus-in-flight", type=int, default=100,
                        help="bus-only jobs published at once, each round waiting for all their acks (an edge: its sessions)")
    parser.add_argument("--bus-sync", action="store_true",
                        help="the bus-only servers fsync every write (sync_interval: always), as colony up's do")
    parser.add_argument("--bus-direct", action="store_true",
                        help="add a bus-only row where eu's consumer pulls us's MAIL directly instead of its source's copy")
    parser.add_argument("--bus-publish-home", action="store_true",
                        help="add a bus-only row where us's client publishes straight into eu's MAIL across the link")
    parser.add_argument("--bus-store-acks", action="store_true",
                        help="the bus-only consumer pulls 8 at a time and confirms each ack, as the mail stores do")
    args = parser.parse_args()
    if args.repeat < 1 or args.messages < 1 or args.clients < 1:
        parser.error("--repeat, --messages and --clients must be at least 1")
    if args.bus_in_flight < 1:
        parser.error("--bus-in-flight must be at least 1")
    if args.no_bus and args.no_delivery:
        parser.error("--no-bus and --no-delivery together leave nothing to run")
    print(f"bench/regions.py {' '.join(sys.argv[1:])}  ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    if not args.no_delivery:
        delivery(args)
    if not args.no_bus:
        asyncio.run(bus_only(args))


if __name__ == "__main__":
    main()
