"""Soak: every process of `colony up` under a mixed, partly hostile load for a while, its
resident memory and open descriptors sampled throughout and after the load stops.

    .venv/bin/python bench/soak.py [--minutes 12] [--settle 330] [--base-port 6000] [--tracemalloc]

The load, all at once, from many loopback source addresses (127.x.y.z; the cluster's
``edge_allow_networks`` and ``sip_allow_networks`` are narrowed to 127.0.0.1 so that every
other address meets the per-address limits and their bookkeeping, as strangers would):

* SMTP on the MX: whole messages, sessions dropped in the middle of DATA, bad and
  out-of-order commands and over-long lines, unknown recipients, RSET, no QUIT;
* IMAPS: log-in, SELECT, FETCH, IDLE, then mostly dropped without LOGOUT;
* POP3S: log-in, STAT, LIST, RETR, half of them dropped without QUIT;
* failed IMAP log-ins and SMTPS AUTH from many addresses;
* SIP with sipp: REGISTER with digest auth for many users from many source addresses and
  ports, and calls (INVITE, 407, INVITE, 200, ACK, BYE) to a sipp UAS; over TCP, OPTIONS,
  requests cut off in their headers and silent connections, all dropped without a goodbye;
* admin API: reads, a bad token, accounts created and deleted.

Every ``--interval`` seconds each process's RSS and descriptor count (/proc) and, from its
ops listener's /metrics, ``colony_tasks_running``, are written to ``<workdir>/samples.jsonl``;
after the load the cluster idles ``--settle`` seconds and is sampled again, so descriptors
can be compared with the baseline.  Printed: start (after provisioning and a warm-up), peak,
end of load and after settling, per process.

``--tracemalloc`` loads ``bench/soak_hook`` into every Python process (PYTHONPATH): tracing
starts after the warm-up, a snapshot is taken at the middle and at the end of the load, and
the top growths between them are printed per process (tracing slows the processes down).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import ssl
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.request
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from colony_up import ColonyUp, process_label  # noqa: E402
from peers import have  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SIPP_DIR = Path(__file__).resolve().parent / "sipp"
DOMAIN = "soak.test"
PASSWORD = "soak-password-long-enough"
USERS = [f"u{i}" for i in range(40)]
SIP_USERS = [f"s{i}" for i in range(200)]
CALLEES = [f"callee{i}" for i in range(4)]
# Failed log-ins go to accounts of their own: after access_login_failures_per_account a
# stranger's log-ins to an account are refused, which would stop the good sessions' load.
VICTIMS = [f"victim{i}" for i in range(5)]


def source() -> str:
    """A loopback address other than 127.0.0.1: a stranger the limits count."""
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


class Counts:
    def __init__(self) -> None:
        self.c: dict[str, int] = {}

    def add(self, key: str, n: int = 1) -> None:
        self.c[key] = self.c.get(key, 0) + n


COUNTS = Counts()


# -- line protocols over asyncio streams -------------------------------------------------

async def connect(port: int, tls: ssl.SSLContext | None = None, src: str | None = None):
    return await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", port, ssl=tls, server_hostname="localhost" if tls else None,
        local_addr=(src or source(), 0)), 15)


async def smtp_reply(reader) -> str:
    while True:
        line = await asyncio.wait_for(reader.readline(), 30)
        if not line:
            raise ConnectionError("closed")
        if len(line) < 4 or line[3:4] != b"-":
            return line.decode(errors="replace")


async def smtp_cmd(reader, writer, cmd: str) -> str:
    writer.write(cmd.encode() + b"\r\n")
    await writer.drain()
    return await smtp_reply(reader)


async def smtp_session(port: int) -> None:
    kind = random.choice(["full", "full", "full", "abort_data", "bad", "rset", "unknown", "silent"])
    reader, writer = await connect(port)
    try:
        banner = await smtp_reply(reader)
        if not banner.startswith("220"):
            COUNTS.add(f"smtp refused {banner[:3]}")
            return
        if kind == "silent":                       # connects, says nothing, goes
            return
        await smtp_cmd(reader, writer, f"EHLO soak{random.randint(0, 999)}.example.org")
        if kind == "bad":
            for cmd in ["FOO BAR", "RCPT TO:<u1@soak.test>", "MAIL FROM:bogus", "DATA", "X" * 2000,
                        "MAIL FROM:<a@b.example> SIZE=notanumber", "\x00\x01\x02", "VRFY u1"]:
                await smtp_cmd(reader, writer, cmd)
            COUNTS.add("smtp bad")
            return                                 # no QUIT
        sender = random.choice(["<>", "<sender@example.org>", f"<x{random.randint(0, 99)}@example.net>"])
        await smtp_cmd(reader, writer, f"MAIL FROM:{sender}")
        rcpt = f"nobody{random.randint(0, 10**6)}@{DOMAIN}" if kind == "unknown" else f"{random.choice(USERS)}@{DOMAIN}"
        r = await smtp_cmd(reader, writer, f"RCPT TO:<{rcpt}>")
        if kind == "rset":
            await smtp_cmd(reader, writer, "RSET")
            await smtp_cmd(reader, writer, "QUIT")
            COUNTS.add("smtp rset")
            return
        if not r.startswith("250"):
            COUNTS.add(f"smtp rcpt {r[:3]}")
            await smtp_cmd(reader, writer, "QUIT")
            return
        r = await smtp_cmd(reader, writer, "DATA")
        if not r.startswith("354"):
            COUNTS.add(f"smtp data {r[:3]}")
            return
        body = (f"From: {sender}\r\nTo: <{rcpt}>\r\nSubject: soak {random.random()}\r\n"
                f"Message-ID: <{random.getrandbits(64)}@soak>\r\n\r\n" + ("line of text\r\n" * random.randint(1, 400)))
        if kind == "abort_data":
            writer.write(body[: len(body) // 2].encode())
            await writer.drain()
            COUNTS.add("smtp abort_data")
            return                                 # dropped mid-DATA
        writer.write(body.encode() + b".\r\n")
        r = await smtp_reply(reader)
        COUNTS.add(f"smtp data-end {r[:3]}")
        if random.random() < 0.7:
            await smtp_cmd(reader, writer, "QUIT")
    finally:
        writer.close()


async def imap_cmd(reader, writer, tag: str, cmd: str) -> list[bytes]:
    writer.write(f"{tag} {cmd}\r\n".encode())
    await writer.drain()
    lines = []
    while True:
        try:
            line = await asyncio.wait_for(reader.readline(), 30)
        except asyncio.TimeoutError:
            raise asyncio.TimeoutError(cmd.split()[0]) from None    # counted with the command that waited
        if not line:
            raise ConnectionError("closed")
        lines.append(line)
        if line.startswith(tag.encode() + b" "):
            return lines


async def imap_session(port: int, tls: ssl.SSLContext, bad: bool) -> None:
    reader, writer = await connect(port, tls)
    try:
        await asyncio.wait_for(reader.readline(), 30)
        user = random.choice(VICTIMS + ["nosuchuser"]) if bad else random.choice(USERS)
        r = await imap_cmd(reader, writer, "a1", f'LOGIN {user}@{DOMAIN} "{"wrong" if bad else PASSWORD}"')
        ok = r[-1].split()[1] == b"OK"
        COUNTS.add(f"imap login {'ok' if ok else 'no'}{' (bad)' if bad else ''}")
        if not ok:
            return
        await imap_cmd(reader, writer, "a2", "SELECT INBOX")
        await imap_cmd(reader, writer, "a3", "UID FETCH 1:* (FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        if random.random() < 0.3:
            await imap_cmd(reader, writer, "a4", "FETCH 1 BODY.PEEK[]")
        idling = random.random() < 0.5
        if idling:
            writer.write(b"a5 IDLE\r\n")
            await writer.drain()
            await asyncio.wait_for(reader.readline(), 30)
            await asyncio.sleep(random.uniform(1, 8))
            COUNTS.add("imap idle")
        if random.random() < 0.2:
            if idling:     # RFC 2177: only DONE ends an IDLE (a LOGOUT then is its BAD, and never answered)
                writer.write(b"DONE\r\n")
                while not (await asyncio.wait_for(reader.readline(), 30)).startswith(b"a5 "):
                    pass
            await imap_cmd(reader, writer, "a6", "LOGOUT")
        # otherwise dropped without LOGOUT
    finally:
        writer.close()


async def pop3_line(reader) -> bytes:
    line = await asyncio.wait_for(reader.readline(), 30)
    if not line:
        raise ConnectionError("closed")
    return line


async def pop3_multi(reader) -> None:
    while (await pop3_line(reader)) != b".\r\n":
        pass


async def pop3_session(port: int, tls: ssl.SSLContext) -> None:
    reader, writer = await connect(port, tls)
    try:
        await pop3_line(reader)
        writer.write(f"USER {random.choice(USERS)}@{DOMAIN}\r\n".encode())
        await pop3_line(reader)
        writer.write(f"PASS {PASSWORD}\r\n".encode())
        r = await pop3_line(reader)
        COUNTS.add(f"pop3 login {r[:3].decode(errors='replace')}")
        if not r.startswith(b"+OK"):
            return
        writer.write(b"STAT\r\n")
        stat = await pop3_line(reader)
        writer.write(b"LIST\r\n")
        if (await pop3_line(reader)).startswith(b"+OK"):
            await pop3_multi(reader)
        if stat.split()[1:2] != [b"0"]:
            writer.write(b"RETR 1\r\n")
            if (await pop3_line(reader)).startswith(b"+OK"):
                await pop3_multi(reader)
        if random.random() < 0.5:
            writer.write(b"QUIT\r\n")
            await pop3_line(reader)
    finally:
        writer.close()


async def smtps_bad_auth(port: int, tls: ssl.SSLContext) -> None:
    import base64
    reader, writer = await connect(port, tls)
    try:
        await smtp_reply(reader)
        await smtp_cmd(reader, writer, "EHLO attacker.example")
        cred = base64.b64encode(f"\0{random.choice(VICTIMS)}@{DOMAIN}\0guess{random.randint(0, 9999)}".encode()).decode()
        r = await smtp_cmd(reader, writer, f"AUTH PLAIN {cred}")
        COUNTS.add(f"smtps auth {r[:3]}")
    finally:
        writer.close()


async def sip_stream_session(port: int) -> None:
    """A phone over TCP: an OPTIONS (answered), a request cut off in its headers, or a
    connection that says nothing; then gone without a goodbye."""
    reader, writer = await connect(port)
    try:
        kind = random.choice(["options", "partial", "silent"])
        if kind == "silent":
            await asyncio.sleep(random.uniform(0, 2))
            return
        branch = f"z9hG4bK{random.getrandbits(48):x}"
        local = writer.get_extra_info("sockname")
        message = (f"OPTIONS sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TCP {local[0]}:{local[1]};branch={branch}\r\n"
                   f"Max-Forwards: 70\r\nFrom: <sip:probe@example.org>;tag={random.getrandbits(32):x}\r\n"
                   f"To: <sip:{DOMAIN}>\r\nCall-ID: {random.getrandbits(64):x}\r\nCSeq: 1 OPTIONS\r\n"
                   f"Content-Length: 0\r\n\r\n").encode()
        if kind == "partial":
            writer.write(message[: random.randint(10, len(message) - 10)])
            await writer.drain()
            COUNTS.add("sip tcp partial")
            return
        writer.write(message)
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 30)
        COUNTS.add(f"sip tcp {status[8:11].decode(errors='replace')}")
    finally:
        writer.close()


async def api_request(client: httpx.AsyncClient) -> None:
    roll = random.random()
    if roll < 0.4:
        r = await client.get(f"/v1/domains/{DOMAIN}/accounts", params={"limit": 50})
    elif roll < 0.55:
        r = await client.get("/v1/domains")
    elif roll < 0.7:
        r = await client.get("/v1/whoami", headers={"Authorization": "Bearer not-a-token"})
    elif roll < 0.95:
        r = await client.get(f"/v1/domains/{DOMAIN}/accounts/nobody{random.randint(0, 10**6)}")
    else:   # rarely: a new account's password costs the API an argon2 hash, as a log-in does
        name = f"tmp{random.getrandbits(32)}"
        r = await client.post(f"/v1/domains/{DOMAIN}/accounts", json={"name": name, "password": PASSWORD})
        if r.status_code == 201:
            r = await client.delete(f"/v1/domains/{DOMAIN}/accounts/{name}")
    COUNTS.add(f"api {r.status_code}")


async def loop_of(name: str, stop: asyncio.Event, concurrency: int, make, pause: float = 0.2) -> None:
    """``concurrency`` workers each running ``make()`` until ``stop``, up to ``pause`` s apart."""
    async def worker():
        while not stop.is_set():
            try:
                await make()
            except (OSError, ConnectionError, asyncio.TimeoutError, ssl.SSLError, httpx.HTTPError, IndexError) as e:
                COUNTS.add(f"{name} error {type(e).__name__}" + (f" ({e})" if isinstance(e, asyncio.TimeoutError)
                                                                   and str(e) else ""))
            await asyncio.sleep(random.uniform(0, pause))
    await asyncio.gather(*(worker() for _ in range(concurrency)))


# -- SIP with sipp, in a thread ----------------------------------------------------------

def write_inf(path: Path, rows: list[str]) -> Path:
    path.write_text("SEQUENTIAL\n" + "".join(r + "\n" for r in rows))
    return path


def sipp_loop(target: str, workdir: Path, stop: threading.Event, sip_port_base: int) -> None:
    """REGISTER rounds from changing source addresses and ports, and calls to a UAS."""
    workdir.mkdir(parents=True, exist_ok=True)
    auth = lambda u: f"{u};{DOMAIN};[authentication username={u} password={PASSWORD}]"  # noqa: E731
    # Two halves registered in turn, each user from a new address and port every other
    # round, with the shortest expiry the registrar takes (sip_min_expires): bindings come
    # and go, and no account reaches sip_max_bindings.
    half = len(SIP_USERS) // 2
    users = [write_inf(workdir / f"users{k}.csv", [auth(u) for u in SIP_USERS[k * half:(k + 1) * half]]) for k in (0, 1)]
    scenario = workdir / "register60.xml"
    scenario.write_text((SIPP_DIR / "register.xml").read_text().replace("Expires: 3600", "Expires: 60"))
    callees = write_inf(workdir / "callees.csv", [auth(u) for u in CALLEES])
    callers = write_inf(workdir / "callers.csv", [f"{auth(u)};{CALLEES[i % 4]}" for i, u in enumerate(SIP_USERS)])
    # The callees' contact is the UAS's address and port: registered from there before the
    # UAS takes the port (register.xml's Contact is [local_ip]:[local_port]); an hour's expiry
    # outlasts the soak.
    uas_addr = source()
    uas_port = sip_port_base + 99
    _sipp(target, "register.xml", callees, len(CALLEES), uas_addr, uas_port, workdir, "callee")
    uas = subprocess.Popen(["sipp", "-sf", str(SIPP_DIR / "uas.xml"), "-i", uas_addr, "-p", str(uas_port), "-nostdin"],
                           cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    round_ = 0
    try:
        while not stop.is_set():
            port = sip_port_base + (round_ % 90)
            ok = _sipp(target, str(scenario), users[round_ % 2], half, source(), port, workdir, "reg")
            COUNTS.add("sip register ok", ok)
            ok = _sipp(target, "uac_auth.xml", callers, 20, source(), port, workdir, "call")
            COUNTS.add("sip call ok", ok)
            round_ += 1
    finally:
        uas.terminate()
        try:
            uas.wait(5)
        except subprocess.TimeoutExpired:
            uas.kill()


def _sipp(target: str, scenario: str, inf: Path, count: int, addr: str, port: int, workdir: Path, label: str) -> int:
    run_dir = workdir / label
    run_dir.mkdir(exist_ok=True)
    try:
        subprocess.run(["sipp", target, "-sf", str(SIPP_DIR / scenario), "-inf", str(inf), "-m", str(count),
                        "-r", "50", "-l", "20", "-i", addr, "-p", str(port), "-nostdin", "-timeout", "60s",
                        "-trace_screen", "-max_recv_loops", "1000"],
                       cwd=run_dir, capture_output=True, timeout=120)
    except subprocess.TimeoutExpired:
        return 0
    ok = 0
    for log in run_dir.glob("*_screen.log"):
        for line in log.read_text(errors="replace").splitlines():
            if line.strip().startswith("Successful call"):
                parts = [p.strip() for p in line.split("|")]
                try:
                    ok = int(parts[-1] or parts[-2])
                except (ValueError, IndexError):
                    pass
        log.unlink()
    return ok


# -- sampling ----------------------------------------------------------------------------

def proc_figures(pid: int) -> tuple[int, int] | None:
    try:
        rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS:"))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return None
    return rss, fds


def metric(ops: str, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://{ops}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    return float(line.rsplit(" ", 1)[1])
    except (OSError, ValueError):
        return None
    return None


def sample(colony: ColonyUp, phase: str) -> dict:
    nodes = {n.get("pid"): n for n in colony.status()}
    seen: dict[str, int] = {}
    out = {"t": time.time(), "phase": phase, "procs": {}}
    for pid in colony.pids():
        if pid == colony.proc.pid:
            continue
        figs = proc_figures(pid)
        if figs is None:
            continue
        node = nodes.get(pid)
        if node:
            key = node["id"]                       # mailstore-1, sipfarm-1, ...
        else:
            label = process_label(pid)
            if label in ("python", str(pid)):
                continue
            seen[label] = seen.get(label, 0) + 1
            key = f"{label}-{seen[label]}"
        row = {"pid": pid, "rss_kb": figs[0], "fds": figs[1]}
        if node and node["addresses"].get("ops"):
            row["tasks"] = metric(node["addresses"]["ops"], "colony_tasks_running")
        out["procs"][key] = row
    return out


def report(samples: list[dict]) -> None:
    keys = sorted({k for s in samples for k in s["procs"]})
    by_phase = lambda ph: [s for s in samples if s["phase"] == ph]  # noqa: E731
    start = by_phase("start")[0]
    load = by_phase("load")
    end_load = load[-1] if load else start
    settled = by_phase("settled")[-1] if by_phase("settled") else end_load
    print(f"{'process':<14} {'RSS MiB start/peak/end-load/settled':<40} {'fds start/peak/end-load/settled':<34} tasks start/peak/settled")
    for k in keys:
        rows = [s["procs"].get(k) for s in samples]
        rows = [r for r in rows if r]
        if not rows:
            continue
        g = lambda s, f: (s["procs"].get(k) or {}).get(f)  # noqa: E731
        mib = lambda v: f"{v / 1024:.0f}" if v is not None else "-"  # noqa: E731
        rss = f"{mib(g(start, 'rss_kb'))}/{mib(max(r['rss_kb'] for r in rows))}/{mib(g(end_load, 'rss_kb'))}/{mib(g(settled, 'rss_kb'))}"
        fds = f"{g(start, 'fds')}/{max(r['fds'] for r in rows)}/{g(end_load, 'fds')}/{g(settled, 'fds')}"
        tks = [r.get("tasks") for r in rows if r.get("tasks") is not None]
        tasks = f"{g(start, 'tasks')}/{max(tks) if tks else '-'}/{g(settled, 'tasks')}"
        print(f"{k:<14} {rss:<40} {fds:<34} {tasks}")


def snapshot_all(colony: ColonyUp) -> None:
    for pid in colony.pids():
        if process_label(pid).startswith("colony_"):
            try:
                os.kill(pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass


def print_growth(snap_dir: Path, colony: ColonyUp, top: int = 12) -> None:
    by_pid: dict[int, list[Path]] = {}
    for p in snap_dir.glob("*.snap"):
        pid, n = p.stem.split("-")
        by_pid.setdefault(int(pid), []).append(p)
    for pid, paths in sorted(by_pid.items()):
        paths.sort(key=lambda p: int(p.stem.split("-")[1]))
        if len(paths) < 2:
            continue
        first, last = tracemalloc.Snapshot.load(str(paths[0])), tracemalloc.Snapshot.load(str(paths[-1]))
        diff = last.compare_to(first, "traceback")
        print(f"\n== {process_label(pid)} pid {pid}: traced {sum(s.size for s in first.statistics('filename')) / 1e6:.1f} -> "
              f"{sum(s.size for s in last.statistics('filename')) / 1e6:.1f} MB")
        for stat in diff[:top]:
            if stat.size_diff <= 0:
                continue
            frames = [f"{f.filename.replace(str(ROOT) + '/', '')}:{f.lineno}" for f in stat.traceback[-4:]]
            print(f"  {stat.size_diff / 1024:+8.0f} KiB {stat.count_diff:+7d} blocks  {' <- '.join(reversed(frames))}")


# -- main --------------------------------------------------------------------------------

async def drive(colony: ColonyUp, args, workdir: Path, samples: list[dict], out) -> None:
    status = colony.status()
    edge = next(n for n in status if n["role"] == "edge")["addresses"]
    sip = next(n for n in status if n["role"] == "sipfarm")["addresses"]["sip"]
    port = lambda a: int(a.rsplit(":", 1)[1])  # noqa: E731
    tls = ssl.create_default_context(cafile=str(colony.data_dir / "tls" / "ca.pem"))
    tls.check_hostname = False

    def record(phase: str) -> None:
        s = sample(colony, phase)
        samples.append(s)
        out.write(json.dumps(s) + "\n")
        out.flush()
        print(f"{time.strftime('%H:%M:%S')} {phase:<8} " + "  ".join(
            f"{k}:{v['rss_kb'] // 1024}M/{v['fds']}fd" + (f"/{int(v['tasks'])}t" if v.get("tasks") is not None else "")
            for k, v in sorted(s["procs"].items())), flush=True)

    record("idle")
    stop = asyncio.Event()
    tstop = threading.Event()
    sip_thread = threading.Thread(target=sipp_loop, args=(sip, workdir / "sipp", tstop, args.sip_port_base), daemon=True)
    async with httpx.AsyncClient(base_url=colony.api, headers=colony.headers, timeout=30) as api:
        loads = [
            loop_of("smtp", stop, 6, lambda: smtp_session(port(edge["smtp"]))),
            loop_of("imap", stop, 4, lambda: imap_session(port(edge["imaps"]), tls, False)),
            # Each failed log-in costs the admin API an argon2 hash: a trickle, so that on a
            # small machine the good log-ins still get their checks.
            loop_of("imap-bad", stop, 1, lambda: imap_session(port(edge["imaps"]), tls, True), pause=2.0),
            loop_of("pop3", stop, 2, lambda: pop3_session(port(edge["pop3s"]), tls)),
            loop_of("smtps-bad", stop, 1, lambda: smtps_bad_auth(port(edge["submissions"]), tls), pause=4.0),
            loop_of("api", stop, 2, lambda: api_request(api)),
            loop_of("sip-tcp", stop, 2, lambda: sip_stream_session(port(sip))),
        ]
        tasks = [asyncio.ensure_future(x) for x in loads]
        sip_thread.start()
        t0 = time.monotonic()
        await asyncio.sleep(args.warmup)
        record("start")
        if args.tracemalloc:
            snapshot_all(colony)                   # starts tracing
        half_done = False
        while time.monotonic() - t0 < args.minutes * 60:
            await asyncio.sleep(args.interval)
            record("load")
            if args.tracemalloc and not half_done and time.monotonic() - t0 > args.minutes * 30:
                snapshot_all(colony)
                half_done = True
            print("   ", dict(sorted(COUNTS.c.items())), flush=True)
        if args.tracemalloc:
            snapshot_all(colony)
        stop.set()
        tstop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.to_thread(sip_thread.join, 150)
    settle_end = time.monotonic() + args.settle
    while time.monotonic() < settle_end:
        await asyncio.sleep(min(args.interval, max(settle_end - time.monotonic(), 0)))
        record("settled")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=12.0, help="Length of the load.")
    parser.add_argument("--warmup", type=float, default=60.0, help="Seconds of load before the 'start' sample.")
    parser.add_argument("--settle", type=float, default=330.0,
                        help="Seconds sampled after the load stops (a mail store closes an idle account's files "
                             "after account_idle_release, 300 s).")
    parser.add_argument("--interval", type=float, default=30.0, help="Seconds between samples.")
    parser.add_argument("--base-port", type=int, default=6000)
    parser.add_argument("--sip-port-base", type=int, default=7600, help="sipp's local ports: this and the 99 above.")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/colony-soak"))
    parser.add_argument("--tracemalloc", action="store_true", help="Trace allocations (bench/soak_hook) and print growth.")
    args = parser.parse_args()
    if have("sipp"):
        sys.exit("sipp is needed (apt-get install sip-tester)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, COLONY_EDGE_ALLOW_NETWORKS="127.0.0.1/32", COLONY_SIP_ALLOW_NETWORKS="127.0.0.1/32")
    snap_dir = args.workdir / "snapshots"
    if args.tracemalloc:
        snap_dir.mkdir(exist_ok=True)
        for p in snap_dir.glob("*.snap"):
            p.unlink()
        env["COLONY_SOAK_SNAPSHOTS"] = str(snap_dir)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "bench" / "soak_hook"), env.get("PYTHONPATH")]))
    data_dir = args.workdir / "data"
    if data_dir.exists():
        subprocess.run(["rm", "-rf", str(data_dir)], check=True)
    samples: list[dict] = []
    with ColonyUp(data_dir, args.base_port, "--no-live", env=env) as colony:
        colony.provision(DOMAIN, USERS + VICTIMS + SIP_USERS + CALLEES, password=PASSWORD)
        time.sleep(5)
        with open(args.workdir / "samples.jsonl", "w") as out:
            asyncio.run(drive(colony, args, args.workdir, samples, out))
        if args.tracemalloc:
            print_growth(snap_dir, colony)
    print()
    print("counts:", dict(sorted(COUNTS.c.items())))
    report(samples)


if __name__ == "__main__":
    main()
