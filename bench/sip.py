"""SIP: Colony's farm (1, 2, 3 members) against Kamailio, with sipp as the load on both.

    .venv/bin/python bench/sip.py [--registrations 5000] [--calls 500] [--members 1,2,3] [--no-peer]

Both sides are authenticating registrars and proxies on loopback UDP: REGISTER is answered
401 and then 200 (digest auth, MD5), INVITE is answered 407 and then routed to the callee's
binding with Record-Route; the callee is a sipp UAS registered for every callee user. The
load is the same sipp scenarios (bench/sipp/register.xml, bench/sipp/uac_auth.xml) driven as
fast as the system answers, at most ``--concurrency`` transactions in flight.

Printed: registrations/s and calls/s (completed / wall time of the sipp run), p50/p99 of the
response time sipp measured (REGISTER: from the authenticated REGISTER to its 200; call:
from the authenticated INVITE to its 200), CPU per registration of the system under test,
registrations per CPU-second (1 / CPU per registration: every process of the system counted)
and its ratio to Kamailio's -- the goal's comparison -- and, labelled as such, the older ratio
of rates per worker (Kamailio runs ``--kamailio-children`` UDP workers, Colony one process per
member; it assumes each worker keeps a core busy, which sipp-bound Kamailio's do not).
For the farm, sipp spreads its load over the members by sending to each member's port in turn
(one sipp process per member, as a layer-4 balancer would).

``--by-process`` also prints, for Colony's registrations, the CPU per REGISTER of each process
of ``colony up`` (the member, nats-server, the admin API answering credential lookups, the
projector, ...), the bus messages per REGISTER each connection published and was delivered
(nats-server's ``/connz``, by connection name = node id), and the cluster's idle CPU (per
second, measured before the load): the whole cluster's CPU per REGISTER includes what every
process spends anyway, spread over the registrations of the run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from colony_up import process_label  # noqa: E402
from peers import Kamailio, descendants, have, process_cpu  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SIPP_DIR = Path(__file__).resolve().parent / "sipp"
DOMAIN = "bench.test"
PASSWORD = "benchpass-long-enough"
console = Console(width=180)


def write_users(path: Path, users: list[str]) -> Path:
    path.write_text("SEQUENTIAL\n" + "".join(
        f"{u};{DOMAIN};[authentication username={u} password={PASSWORD}]\n" for u in users))
    return path


def write_callers(path: Path, callers: list[str], callees: list[str]) -> Path:
    path.write_text("SEQUENTIAL\n" + "".join(
        f"{c};{DOMAIN};[authentication username={c} password={PASSWORD}];{callees[i % len(callees)]}\n"
        for i, c in enumerate(callers)))
    return path


def sipp(target: str, scenario: str, inf: Path, count: int, concurrency: int, local_port: int, workdir: Path,
         rate: int = 20000) -> dict:
    """Run one sipp client to completion; (successful, failed, wall seconds, response times in ms)."""
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    proc = subprocess.run(
        ["sipp", target, "-sf", str(SIPP_DIR / scenario), "-inf", str(inf), "-m", str(count), "-r", str(rate),
         "-l", str(concurrency), "-i", "127.0.0.1", "-p", str(local_port), "-nostdin", "-timeout", "300s",
         "-trace_rtt", "-rtt_freq", "1", "-trace_screen", "-trace_err", "-max_recv_loops", "10000"],
        capture_output=True, text=True, cwd=workdir, timeout=600)
    wall = time.perf_counter() - start
    screen = "".join(p.read_text(errors="replace") for p in workdir.glob("*_screen.log"))
    ok = _count(screen, "Successful call")
    failed = _count(screen, "Failed call")
    rtts = []
    for rtt_file in workdir.glob("*_rtt.csv"):
        with open(rtt_file) as f:
            for row in csv.reader(f, delimiter=";"):
                if len(row) >= 2 and row[1].replace(".", "", 1).isdigit():
                    rtts.append(float(row[1]))
        rtt_file.unlink()
    for log in workdir.glob("*_screen.log"):
        log.unlink()
    if proc.returncode not in (0, 1):
        console.print(f"[yellow]sipp exited with {proc.returncode}: {proc.stderr[-300:]}[/yellow]")
    return {"ok": ok, "failed": failed, "wall": wall, "rtts": rtts}


def _count(screen: str, label: str) -> int:
    for line in reversed(screen.splitlines()):
        if line.strip().startswith(label):
            parts = [p.strip() for p in line.split("|")]
            try:
                return int(parts[-1] or parts[-2])
            except (ValueError, IndexError):
                return 0
    return 0


def uas(port: int, workdir: Path) -> subprocess.Popen:
    # Not sipp's built-in uas: that one drops the proxy's Record-Route from its answers.
    # In the foreground (no -bg: a daemonised sipp outlives its handle and kept the port from
    # the next system's run), stopped through this handle.
    return subprocess.Popen(["sipp", "-sf", str(SIPP_DIR / "uas.xml"), "-i", "127.0.0.1", "-p", str(port), "-nostdin"],
                            cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def run_system(name: str, targets: list[str], cpu, args, workdir: Path, cores: float, probe=None) -> dict:
    """``probe``: called before the registrations, it returns what to call after them (the
    per-process figures of ``--by-process``, given the number of REGISTERs answered 200)."""
    users = [f"u{i}" for i in range(args.users)]
    callees = [f"callee{i}" for i in range(4)]
    inf = write_users(workdir / f"{name}-users.csv", users)
    finish = probe() if probe is not None else None
    cpu0 = cpu()
    per_target = args.registrations // len(targets)
    results = []
    procs = []
    # One sipp per member, in parallel, like a layer-4 balancer spreading phones.
    for k, target in enumerate(targets):
        procs.append((target, k))
    start = time.perf_counter()
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(len(targets)) as pool:
        results = list(pool.map(lambda tk: sipp(tk[0], "register.xml", inf, per_target, args.concurrency,
                                                args.base_port + 900 + tk[1], workdir / f"{name}-reg-{tk[1]}"),
                                procs))
    wall = time.perf_counter() - start
    reg_cpu = cpu() - cpu0
    ok = sum(r["ok"] for r in results)
    rtts = [x for r in results for x in r["rtts"]]
    row = {"system": name, "reg_ok": ok, "reg_failed": sum(r["failed"] for r in results),
           "reg_rate": ok / wall, "reg_p50": percentile(rtts, 0.5), "reg_p99": percentile(rtts, 0.99),
           "reg_cpu_ms": reg_cpu / max(ok, 1) * 1000, "cores": cores, "wall": wall}
    if finish is not None:
        row["detail"] = finish(max(ok, 1))
    if args.calls:
        # Callees: a sipp UAS on one port, registered for every callee user.
        uas_port = args.base_port + 950
        callee_inf = write_users(workdir / f"{name}-callees.csv", callees)
        sipp(targets[0], "register.xml", callee_inf, len(callees), 4, uas_port, workdir / f"{name}-callee-reg")
        server = uas(uas_port, workdir)
        try:
            time.sleep(0.5)
            callers = write_callers(workdir / f"{name}-callers.csv", users, callees)
            cpu0 = cpu()
            call = sipp(targets[0], "uac_auth.xml", callers, args.calls, args.concurrency, args.base_port + 960,
                        workdir / f"{name}-calls", rate=2000)
            row.update({"call_ok": call["ok"], "call_failed": call["failed"], "call_rate": call["ok"] / call["wall"],
                        "call_p50": percentile(call["rtts"], 0.5), "call_p99": percentile(call["rtts"], 0.99),
                        "call_cpu_ms": (cpu() - cpu0) / max(call["ok"], 1) * 1000})
        finally:
            stop_process(server, 5)
    return row


def stop_process(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def colony_probe(root: int, monitor: str, idle_seconds: float):
    """``run_system``'s probe for ``colony up`` (``--by-process``): the idle CPU of the cluster
    first, then per process and per bus connection what the registrations cost."""
    def connz() -> dict[str, tuple[int, int]]:
        found: dict[str, tuple[int, int]] = {}
        for c in httpx.get(f"{monitor}/connz", params={"limit": 4096}, timeout=10).json().get("connections") or []:
            name = c.get("name") or f"cid {c.get('cid')}"
            old = found.get(name, (0, 0))
            found[name] = (old[0] + int(c.get("in_msgs", 0)), old[1] + int(c.get("out_msgs", 0)))
        return found

    def varz() -> tuple[int, int]:
        v = httpx.get(f"{monitor}/varz", timeout=10).json()
        return int(v["in_msgs"]), int(v["out_msgs"])

    def by_label(pids: list[int]) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid in pids:
            label = process_label(pid)
            out[label] = out.get(label, 0.0) + process_cpu([pid])
        return out

    def start():
        pids = descendants(root)
        idle0, t0 = process_cpu(pids), time.perf_counter()
        time.sleep(idle_seconds)
        idle = (process_cpu(pids) - idle0) / (time.perf_counter() - t0)
        cpu0, conn0, varz0, started = by_label(pids), connz(), varz(), time.perf_counter()

        def finish(count: int) -> dict:
            wall = time.perf_counter() - started
            cpu1, conn1, varz1 = by_label(descendants(root)), connz(), varz()
            processes = sorted(((label, (cpu1[label] - cpu0.get(label, 0.0)) / count * 1000) for label in cpu1),
                               key=lambda item: -item[1])
            connections = sorted(((name, (conn1[name][0] - conn0.get(name, (0, 0))[0]) / count,
                                   (conn1[name][1] - conn0.get(name, (0, 0))[1]) / count) for name in conn1),
                                 key=lambda item: -(item[1] + item[2]))
            return {"idle_cpu_per_s": idle, "idle_ms_per_reg": idle * wall / count * 1000,
                    "processes": processes, "connections": connections,
                    "server_in": (varz1[0] - varz0[0]) / count, "server_out": (varz1[1] - varz0[1]) / count}
        return finish
    return start


def print_detail(row: dict) -> None:
    detail = row.get("detail")
    if not detail:
        return
    table = Table(title=f"{row['system']}: per REGISTER answered 200, by process and by bus connection")
    for column in ("process / connection", "CPU ms", "msgs published", "msgs delivered"):
        table.add_column(column, justify="left" if column.startswith("process") else "right")
    for label, ms in detail["processes"]:
        if ms >= 0.005:
            table.add_row(label, f"{ms:.3f}", "", "")
    for name, pub, sub in detail["connections"]:
        if pub + sub >= 0.005:
            table.add_row(f"bus: {name}", "", f"{pub:.2f}", f"{sub:.2f}")
    table.add_row("nats-server /varz", "", f"{detail['server_in']:.2f}", f"{detail['server_out']:.2f}")
    console.print(table)
    console.print(f"idle: the cluster spends {detail['idle_cpu_per_s'] * 1000:.0f} ms CPU per second with no load, "
                  f"{detail['idle_ms_per_reg']:.3f} ms per REGISTER over this run's wall time")


def run_kamailio(args, workdir: Path) -> dict:
    kam = Kamailio(workdir, args.base_port + 800, password=PASSWORD, children=args.kamailio_children)
    kam.start()
    try:
        return run_system("Kamailio", [f"127.0.0.1:{args.base_port + 800}"], kam.cpu_seconds, args, workdir,
                          cores=min(args.kamailio_children, os.cpu_count() or 1))
    finally:
        kam.stop()


def run_colony(args, workdir: Path, members: int) -> dict:
    data_dir = workdir / f"colony-{members}"
    proc = subprocess.Popen([str(ROOT / ".venv/bin/colony"), "up", "--data-dir", str(data_dir), "--base-port",
                             str(args.base_port), "--sipfarms", str(members), "--mailstores", "1", "--no-live"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        token_file = data_dir / "admin.token"
        deadline = time.monotonic() + 180
        while not (token_file.exists() and token_file.read_text().strip()):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("colony up did not come up (see its logs)")
            time.sleep(0.3)
        info = json.loads((data_dir / "cluster.json").read_text())
        api = info["admin_api"][0]
        headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        with httpx.Client(base_url=api, headers=headers, timeout=60) as client:
            for _ in range(120):
                try:
                    client.post("/v1/domains", json={"name": DOMAIN}).raise_for_status()
                    break
                except httpx.HTTPError:
                    time.sleep(0.5)
            for user in [f"u{i}" for i in range(args.users)] + [f"callee{i}" for i in range(4)]:
                client.post(f"/v1/domains/{DOMAIN}/accounts", json={"name": user, "password": PASSWORD}).raise_for_status()
        status = json.loads(subprocess.run([str(ROOT / ".venv/bin/colony"), "status", "--json", "--data-dir",
                                            str(data_dir)], capture_output=True, text=True, timeout=60).stdout)
        targets = [n["addresses"].get("sip") or n["addresses"].get("sip-udp") for n in status if n["role"] == "sipfarm"]
        targets = [t for t in targets if t]
        if len(targets) != members:
            raise RuntimeError(f"expected {members} SIP farm listeners, colony status shows {targets}")
        time.sleep(2)  # let the farm's credential caches and the directory settle
        probe = colony_probe(proc.pid, info["nats_monitor"], idle_seconds=5.0) if args.by_process else None
        return run_system(f"Colony ({members})", targets, lambda: process_cpu(descendants(proc.pid)), args, workdir,
                          cores=min(members, os.cpu_count() or 1), probe=probe)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registrations", type=int, default=5000)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--members", default="1,2,3", help="farm sizes to run, comma separated (0: the peer only)")
    parser.add_argument("--kamailio-children", type=int, default=2)
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--base-port", type=int, default=5500)
    parser.add_argument("--by-process", action="store_true",
                        help="also print Colony's CPU and bus messages per REGISTER by process, and its idle CPU")
    parser.add_argument("--keep", type=Path, help="Work in this directory and keep it (sipp's *_errors.log, the cluster's logs).")
    args = parser.parse_args()
    missing = have("sipp") + ([] if args.no_peer else have("kamailio"))
    if missing:
        sys.exit(f"needs Debian's {' and '.join(missing)}: apt-get install sip-tester kamailio")
    rows = []
    with tempfile.TemporaryDirectory(prefix="colony-sip-bench-") as tmp:
        workdir = Path(tmp) if args.keep is None else args.keep
        workdir.mkdir(parents=True, exist_ok=True)
        peer = None
        if not args.no_peer:
            console.print("[dim]Kamailio ...[/dim]")
            peer = run_kamailio(args, workdir)
            rows.append(peer)
        for members in (int(m) for m in args.members.split(",") if int(m) > 0):   # 0: Kamailio only
            console.print(f"[dim]Colony with {members} farm member(s) ...[/dim]")
            rows.append(run_colony(args, workdir, members))
    table = Table(title=f"SIP, {args.registrations} REGISTERs and {args.calls} calls, {os.cpu_count()} cores")
    for column in ("system", "reg/s", "reg p50 ms", "reg p99 ms", "CPU ms/reg", "reg per CPU-s", "per CPU-s vs Kamailio",
                   "calls/s", "call p99 ms", "failed", "reg/s per worker vs Kamailio"):
        table.add_column(column, justify="left" if column == "system" else "right")
    for r in rows:
        per_cpu = per_worker = ""
        if peer and r is not peer:
            # What the goal compares: registrations per second of CPU the system used (every
            # process of it), i.e. 1 / CPU per REGISTER.  The rate divided by workers or
            # members assumes each keeps a core busy; Kamailio's two workers mostly waited on
            # sipp (together a quarter of a core), so that ratio showed Colony ~10x closer than
            # the CPU each spends.
            per_cpu = f"{peer['reg_cpu_ms'] / r['reg_cpu_ms']:.2f}x" if r["reg_cpu_ms"] > 0 else ""
            per_worker = f"{(r['reg_rate'] / r['cores']) / (peer['reg_rate'] / peer['cores']):.2f}x"
        table.add_row(r["system"], f"{r['reg_rate']:.0f}", f"{r['reg_p50']:.1f}", f"{r['reg_p99']:.1f}",
                      f"{r['reg_cpu_ms']:.3f}", f"{1000 / r['reg_cpu_ms']:,.0f}" if r["reg_cpu_ms"] > 0 else "",
                      per_cpu, f"{r.get('call_rate', 0):.0f}", f"{r.get('call_p99', float('nan')):.1f}",
                      f"{r['reg_failed'] + r.get('call_failed', 0)}", per_worker)
    console.print(table)
    console.print("reg per CPU-s: registrations per second of CPU the system used (1 / CPU per REGISTER), the "
                  "goal's measure; reg/s per worker: the rate divided by Kamailio's workers or Colony's members, "
                  "whether or not they kept a core busy")
    for r in rows:
        print_detail(r)


if __name__ == "__main__":
    main()
