"""What a delivered message costs each process of `colony up`, counted rather than timed.

    .venv/bin/python bench/smtp_inbound_counts.py --stores 3 [--messages 3000] [--clients 16]
        [--accounts 20] [--idle 5] [--loop-counts [--call-counts]] [--perf FILE] [--py-spy FILE] [--base-port 21000]

The load of ``bench/smtp_inbound.py`` (1 KiB messages, ``--clients`` SMTP sessions, round
robin over ``--accounts``), and per process, divided by the messages: CPU (user and system, and of the main thread -- the event loop -- alone: loop_u, loop_s
apart), voluntary and involuntary context switches of all its threads, read- and write-like
system calls (``/proc/<pid>/io``: file writes and fsyncs' writes, not socket sends), and the
mail stores' own counters (commits, stored, account acquisitions).  On a shared VM the CPU
of one run moves by tens of percent; these counts do not, so they say whether a process does
more *work* per message or the same work more slowly.

``--idle N`` measures every process's CPU per second for N seconds before the load and
prints CPU per message net of it.  ``--loop-counts`` starts `colony up` with
``bench/loop_counts`` on PYTHONPATH: event-loop passes, callbacks run by name, executor jobs,
KV reads and the stores' bus messages by kind (pull requests, acks, jobs, statuses ...) per
message (its wrappers cost CPU: take CPU from a run without it); ``--call-counts`` adds the
stores' Python calls on the loop's thread by function (cProfile, very dear; its own times are
wall-clock).  Every run prints nats-server's messages to and from each kind of client
(``/connz`` on the monitor port, base port + 1).  ``--perf
FILE`` records the mail stores with ``perf record -e cpu-clock -g`` during the load (CPU
only, kernel included; ``perf report -i FILE --sort dso,sym``).  ``--py-spy FILE`` records each
store's Python stacks (``FILE.<pid>``, collapsed, 250 Hz, non-blocking): wall time of threads
not idle, so a thread waiting for the GIL or in an fsync counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import smtp_inbound as S  # noqa: E402
from colony_up import ColonyUp, process_label  # noqa: E402
from peers import process_cpu, wait_port  # noqa: E402
from scratch import quiet_directory, spread_out  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
COLUMNS = ("cpu", "utime", "stime", "loop_u", "loop_s", "vcs", "ics", "syscr", "syscw", "select", "nonzero", "submit", "handles")
STORE_METRICS = ("colony_mailstore_commits_total", "colony_mailstore_messages_stored_total",
                 "colony_mailstore_forwarded_total", "colony_mailstore_account_acquired_total")


def counters(pid: int, counts_dir: Path | None) -> dict[str, float]:
    """Cumulative counters of one process (CPU in ms)."""
    out: dict[str, float] = {}
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        out["utime"], out["stime"] = int(stat[11]) / CLK_TCK * 1000, int(stat[12]) / CLK_TCK * 1000
        out["cpu"] = process_cpu([pid]) * 1000
        main = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        out["loop_u"], out["loop_s"] = int(main[11]) / CLK_TCK * 1000, int(main[12]) / CLK_TCK * 1000
        for task in Path(f"/proc/{pid}/task").iterdir():
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches"):
                    out["vcs"] = out.get("vcs", 0) + int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches"):
                    out["ics"] = out.get("ics", 0) + int(line.split()[1])
        io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
        out["syscr"], out["syscw"] = int(io["syscr"]), int(io["syscw"])
    except (OSError, ValueError, IndexError):
        pass
    if counts_dir is not None:
        try:
            loop = json.loads((counts_dir / f"{pid}.json").read_text())
        except (OSError, ValueError):
            loop = {}
        loop.pop("argv", None)
        out.update({f"by:{k}": v for k, v in loop.pop("by", {}).items()})
        out.update(loop)
    return out


def store_metrics(colony: ColonyUp) -> Counter:
    total: Counter = Counter()
    for node in colony.status():
        ops = node.get("addresses", {}).get("ops") if node.get("role") == "mailstore" else None
        if ops:
            for line in httpx.get(f"http://{ops}/metrics", timeout=10).text.splitlines():
                if line.startswith(STORE_METRICS):
                    name, value = line.rsplit(" ", 1)
                    total[name] += float(value)
    return total


def bus_counts(monitor: int) -> Counter:
    """nats-server's view, cumulative: messages each client connection sent the server (>) and
    the server sent it (<), summed by connection name (the process's role)."""
    out: Counter = Counter()
    try:
        conns = httpx.get(f"http://127.0.0.1:{monitor}/connz?limit=1024", timeout=10).json().get("connections", [])
    except (httpx.HTTPError, ValueError):
        return out
    for c in conns:
        name = (c.get("name") or "?").split("-")[0].split(" ")[0]
        out[f"{name} >"] += c.get("in_msgs", 0)
        out[f"{name} <"] += c.get("out_msgs", 0)
    return out


def call_counts(counts_dir: Path | None, pids: list[int], on: bool) -> Counter:
    """The stores' cumulative Python calls by function (bench/loop_counts: cProfile, SIGUSR2)."""
    total: Counter = Counter()
    if not on or counts_dir is None:
        return total
    import marshal
    import signal
    for pid in pids:
        before = set(counts_dir.glob(f"{pid}.calls.*"))
        os.kill(pid, signal.SIGUSR2)
        for _ in range(100):
            new = set(counts_dir.glob(f"{pid}.calls.*")) - before
            if new:
                break
            time.sleep(0.1)
        time.sleep(0.3)  # written by now
        for path in new:
            for k, (_cc, nc, _tt, _ct) in marshal.loads(path.read_bytes()).items():
                k = k.replace(str(Path(__file__).resolve().parents[1]), "")
                total[k] += nc
                total["us:" + k] += _tt * 1e6   # own time, profiler's overhead included
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", type=int, default=1)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--accounts", type=int, default=20)
    parser.add_argument("--base-port", type=int, default=4500)
    parser.add_argument("--idle", type=float, default=0.0, help="seconds of idle CPU measured before the load")
    parser.add_argument("--loop-counts", action="store_true", help="count event-loop work (costs CPU)")
    parser.add_argument("--perf", default="", help="perf record the mail stores into this file")
    parser.add_argument("--call-counts", action="store_true",
                        help="with --loop-counts: the stores' Python calls by function (cProfile; costs much CPU)")
    parser.add_argument("--py-spy", default="",
                        help="py-spy record each mail store (collapsed stacks, non-blocking) into FILE.<pid>")
    parser.add_argument("--json", default="", help="write the raw counters here")
    parser.add_argument("--no-spread", action="store_true",
                        help="leave the data beside the scratch directory's neighbours (bench/scratch.py)")
    args = parser.parse_args()
    S.ACCOUNTS[:] = [f"user{i}" for i in range(args.accounts)]
    n = args.messages
    with tempfile.TemporaryDirectory(prefix="colony-counts-") as tmp:
        if not args.no_spread:
            spread_out(Path(tmp))
        counts_dir = Path(tmp) / "loop" if args.loop_counts else None
        env = None
        if counts_dir is not None:
            counts_dir.mkdir()
            site = str(Path(__file__).resolve().parent / "loop_counts")
            env = {**os.environ, "COLONY_LOOP_COUNTS": str(counts_dir),
                   **({"COLONY_CALL_COUNTS": "1"} if args.call_counts else {}),
                   "PYTHONPATH": os.pathsep.join(p for p in (site, os.environ.get("PYTHONPATH", "")) if p)}
        # Where a new file is cheap (bench/scratch.py): a body file per message.
        data_dir, create_us = quiet_directory(Path(tmp), "colony", tries=1 if args.no_spread else 8)
        with ColonyUp(data_dir, args.base_port, "--mailstores", str(args.stores), "--sipfarms", "0",
                      env=env, timeout=120) as colony:
            colony.provision(S.DOMAIN, S.ACCOUNTS)
            port = args.base_port + 25
            wait_port(port, 60)
            storage = data_dir / "storage" / "SharedDomains"

            def stored() -> int:
                return sum(1 for _ in storage.glob("**/*.macnt/mail/bodies/*"))

            last = S.ACCOUNTS[-1]
            asyncio.run(S.smtp_session(port, [(f"{last}@{S.DOMAIN}", S.make_message(100, len(S.ACCOUNTS) - 1))], []))
            S.wait_stored(stored, 1, 60)
            time.sleep(1.0)  # the loop counters are written twice a second
            pids = colony.pids()
            labels = {pid: process_label(pid) for pid in pids}
            idle: dict[int, float] = {}
            if args.idle > 0:
                i0, t0 = {pid: counters(pid, None)["cpu"] for pid in pids}, time.monotonic()
                time.sleep(args.idle)
                idle = {pid: (counters(pid, None)["cpu"] - i0[pid]) / (time.monotonic() - t0) for pid in pids}
            m0 = store_metrics(colony)
            b0 = bus_counts(args.base_port + 1)
            c0 = {pid: counters(pid, counts_dir) for pid in pids}
            calls0 = call_counts(counts_dir, [p for p in pids if labels[p] == "colony_mailstore"], args.call_counts)
            load = os.getloadavg()[0]
            perf = None
            if args.perf:
                stores = ",".join(str(pid) for pid in pids if labels[pid] == "colony_mailstore")
                perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "997", "-g", "-o", args.perf,
                                         "-p", stores], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)
            spies = []
            if args.py_spy:
                spy = str(Path(sys.executable).with_name("py-spy"))
                spies = [subprocess.Popen([spy, "record", "--nonblocking", "-r", "250", "-f", "raw", "-o",
                                           f"{args.py_spy}.{pid}", "-p", str(pid)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                         for pid in pids if labels[pid] == "colony_mailstore"]
                time.sleep(1.0)
            t0 = time.monotonic()
            start, _ = asyncio.run(S.run_load(port, n, 1024, args.clients))
            end = S.wait_stored(stored, n + 1, 600)
            elapsed = time.monotonic() - t0
            for spy in spies:
                spy.send_signal(2)
            for spy in spies:
                spy.wait(timeout=60)
            if perf is not None:
                perf.send_signal(2)
                perf.wait(timeout=60)
            time.sleep(1.0)
            c1 = {pid: counters(pid, counts_dir) for pid in pids}
            calls1 = call_counts(counts_dir, [p for p in pids if labels[p] == "colony_mailstore"], args.call_counts)
            m1 = store_metrics(colony)
            b1 = bus_counts(args.base_port + 1)
    print(f"{args.stores} mail store(s), {args.clients} clients, {n} messages: {n / (end - start):.0f} msgs/s, "
          f"load {load:.2f} at start, a 1 KiB file create {create_us:.0f} us where the mail lands")
    print(f"{'process':24}" + "".join(f"{c:>9}" for c in COLUMNS) + "   per message (CPU in ms)")
    by_role: dict[str, Counter] = {}
    per_pid = {pid: {k: c1[pid].get(k, 0) - c0[pid].get(k, 0) for k in c1[pid]} for pid in pids}
    for pid in sorted(pids, key=lambda p: -per_pid[p].get("cpu", 0)):
        d = per_pid[pid]
        if d.get("cpu", 0) / n < 0.01:
            continue
        role = by_role.setdefault(labels[pid], Counter())
        role.update({k: v for k, v in d.items()})
        net = f"  net of idle {(d['cpu'] - idle[pid] * elapsed) / n:.3f} (idle {idle[pid]:.1f} ms/s)" \
            if pid in idle else ""
        print(f"{labels[pid][:17] + ' ' + str(pid):24}" + "".join(f"{d.get(c, 0) / n:9.3f}" for c in COLUMNS) + net)
    print("summed by role")
    for role, d in by_role.items():
        print(f"{role[:24]:24}" + "".join(f"{d.get(c, 0) / n:9.3f}" for c in COLUMNS))
    bus = sorted(((k, v) for k, v in by_role.get("colony_mailstore", Counter()).items() if k.startswith("bus") and v), key=lambda kv: kv[0])
    if bus:
        print("mail stores' bus messages per message (bus> sent, bus< received): " +
              ", ".join(f"{k[3:]} {v / n:.3f}" for k, v in bus))
    print("mail stores' metrics: " + ", ".join(f"{k} {(m1[k] - m0[k]) / n:.3f}" for k in sorted(m1) if m1[k] - m0[k]))
    print("nats-server, messages per message by connection name (> sent by it, < to it): " +
          ", ".join(f"{k} {(b1[k] - b0[k]) / n:.2f}" for k in sorted(b1) if b1[k] - b0[k]))
    stores = by_role.get("colony_mailstore", Counter())
    extra = sorted(((k, v) for k, v in stores.items() if k.startswith(("by:", "kv:")) and v), key=lambda kv: -kv[1])
    if extra:
        print("mail stores' callbacks (by:) and KV reads (kv:) per message: " +
              ", ".join(f"{k} {v / n:.3f}" for k, v in extra[:24]))
    if args.call_counts:
        calls = Counter({k: v - calls0.get(k, 0) for k, v in calls1.items() if not k.startswith("us:")})
        print(f"mail stores' Python calls on the loop's thread per message: {sum(calls.values()) / n:.0f}; most:")
        for k, v in calls.most_common(40):
            print(f"  {v / n:8.2f}  {k}")
    if args.json:
        Path(args.json).write_text(json.dumps({"stores": args.stores, "clients": args.clients, "n": n, "load": load,
                                               "rows": [(labels[p], p, per_pid[p], idle.get(p)) for p in pids],
                                               "metrics": [m0, m1],
                                               "calls": {k: v - calls0.get(k, 0) for k, v in calls1.items()}}))


if __name__ == "__main__":
    main()
