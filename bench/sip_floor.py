"""SIP: the floor -- registrations per CPU-second of a Python process that does no SIP work.

    .venv/bin/python bench/sip_floor.py [--registrations 10000] [--rounds 3] [--colony] [--base-port 9000]

Issue #9 asks for >= 1.0x Kamailio's registrations per CPU-second.  Before cutting the farm
member further, this measures what CPython's I/O alone costs per registration: the same sipp
REGISTER-with-digest scenario as ``bench/sip.py`` (its ``run_system`` and ``run_kamailio``,
imported, not copied) against

- Kamailio, as ``bench/sip.py`` configures it (every Kamailio process's CPU counted);
- a responder that does no SIP work: a REGISTER without Authorization gets a canned 401 with a
  fixed nonce, one with Authorization a canned 200, each carrying only the request's
  Via/From/To/Call-ID/CSeq lines copied byte for byte (what sipp matches answers by) -- run
  three ways: ``protocol`` (asyncio ``DatagramProtocol``: one datagram per event-loop pass),
  ``reader`` (``loop.add_reader`` + ``sock.recvfrom`` until ``BlockingIOError``: the socket
  drained per readiness) and ``thread`` (a blocking ``recvfrom``/``sendto`` loop in a plain
  thread, no event loop at all); and a fourth, ``reader-one`` (``add_reader``, one 64 KiB
  ``recvfrom`` per readiness), which tells the two costs of ``protocol`` apart: its pass per
  datagram, and asyncio's 256 KiB receive buffer per datagram (``max_size``), which in this
  small process cost more than the pass (measured: bench/README.md, "SIP: the floor");
- with ``--colony``, Colony's member (``bench/sip.py``'s ``run_colony`` with ``--by-process``;
  the member's CPU only, not the cluster's).

Each responder runs in a process of its own (``--serve MODE``); its CPU is psutil's
``cpu_times`` (user + system) before and after the sipp run.  Printed per round and as medians:
registrations per CPU-second (REGISTERs answered 200 / CPU seconds) and the ratio to Kamailio's
of the same round.  Rounds interleave the systems (K, protocol, reader, thread, [colony], ...)
so a change in the machine's load hits all of them alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
from pathlib import Path

REALM = b"bench.test"
NONCE = b"0123456789abcdef0123456789abcdef"
# The headers sipp matches an answer to its transaction by, full and compact forms (RFC 3261
# §7.3.3), lower-cased up to the colon.
_COPIED = (b"via", b"v", b"from", b"f", b"to", b"t", b"call-id", b"i", b"cseq")
_UNAUTHORIZED = (b"SIP/2.0 401 Unauthorized\r\n", b'WWW-Authenticate: Digest realm="' + REALM + b'", nonce="' + NONCE
                 + b'", algorithm=MD5\r\nContent-Length: 0\r\n\r\n')
_OK = (b"SIP/2.0 200 OK\r\n", b"Expires: 3600\r\nContent-Length: 0\r\n\r\n")
MODES = ("protocol", "reader", "thread", "reader-one")


def answer(data: bytes) -> bytes | None:
    """The canned answer to one datagram: 401 to a REGISTER without Authorization, 200 to one
    with it, None to anything else (no SIP work: no parsing beyond finding header lines)."""
    if not data.startswith(b"REGISTER "):
        return None
    head = data.split(b"\r\n\r\n", 1)[0]
    copied = []
    authorized = False
    for line in head.split(b"\r\n")[1:]:
        name = line.split(b":", 1)[0].strip().lower()
        if name in _COPIED:
            copied.append(line)
        elif name == b"authorization":
            authorized = True
    start, end = _OK if authorized else _UNAUTHORIZED
    return start + b"\r\n".join(copied) + b"\r\n" + end


# --- the responders (run as ``--serve MODE --port P``) ---------------------------------------

def _bound(port: int, blocking: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)    # as the farm member asks
    sock.bind(("127.0.0.1", port))
    sock.setblocking(blocking)
    return sock


class _Protocol(asyncio.DatagramProtocol):
    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        out = answer(data)
        if out is not None:
            self.transport.sendto(out, addr)


async def _serve_asyncio(mode: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    sock = _bound(port, blocking=False)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if mode == "protocol":
        transport, _ = await loop.create_datagram_endpoint(_Protocol, sock=sock)
    else:
        reads = 1 if mode == "reader-one" else 1 << 62

        def drain() -> None:
            for _ in range(reads):
                try:
                    data, addr = sock.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    return
                out = answer(data)
                if out is not None:
                    try:
                        sock.sendto(out, addr)
                    except (BlockingIOError, InterruptedError):
                        pass        # a full send buffer: lost, as on the wire
        loop.add_reader(sock.fileno(), drain)
    print("ready", flush=True)
    await stop.wait()


def _serve_thread(port: int) -> None:
    sock = _bound(port, blocking=True)

    def run() -> None:
        while True:
            data, addr = sock.recvfrom(65535)
            out = answer(data)
            if out is not None:
                sock.sendto(out, addr)
    threading.Thread(target=run, daemon=True).start()
    print("ready", flush=True)
    signal.sigwait({signal.SIGTERM})


def serve(mode: str, port: int) -> None:
    if mode == "thread":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})   # sigwait'ed by the main thread
        _serve_thread(port)
    else:
        asyncio.run(_serve_asyncio(mode, port))


# --- the driver ------------------------------------------------------------------------------

def run_responder(sip, mode: str, args, workdir: Path) -> dict:
    import psutil

    port = args.base_port + 810
    proc = subprocess.Popen([sys.executable, __file__, "--serve", mode, "--port", str(port)],
                            stdout=subprocess.PIPE, text=True)
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {mode} responder did not start")
        me = psutil.Process(proc.pid)

        def cpu() -> float:
            t = me.cpu_times()
            return t.user + t.system
        return sip.run_system(f"floor: {mode}", [f"127.0.0.1:{port}"], cpu, args, workdir, cores=1)
    finally:
        sip.stop_process(proc, 10)


def run_member(sip, args, workdir: Path) -> dict:
    """Colony's member alone: ``run_colony``'s per-process figures, the sipfarm process's row."""
    args.by_process = True
    row = sip.run_colony(args, workdir, 1)
    member = dict(row["detail"]["processes"]).get("colony_sipfarm")
    row = dict(row, system="Colony member (colony_sipfarm)")
    if member is not None:
        row["reg_cpu_ms"] = member
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--registrations", type=int, default=10000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES), help="responders to run, comma separated")
    parser.add_argument("--colony", action="store_true", help="also Colony's member (bench/sip.py --by-process)")
    parser.add_argument("--kamailio-children", type=int, default=2)
    parser.add_argument("--base-port", type=int, default=5500)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return

    import tempfile

    from rich.table import Table
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import sip   # bench/sip.py: the scenario, the sipp driver and Kamailio's set-up

    missing = sip.have("sipp", "kamailio")
    if missing:
        sys.exit(f"needs Debian's {' and '.join(missing)}: apt-get install sip-tester kamailio")
    args.calls, args.by_process = 0, False      # registrations only
    modes = [m for m in args.modes.split(",") if m]
    rounds: list[dict[str, dict]] = []
    with tempfile.TemporaryDirectory(prefix="colony-sip-floor-") as tmp:
        for n in range(args.rounds):
            rows: dict[str, dict] = {}
            workdir = Path(tmp) / f"round-{n}"
            workdir.mkdir()
            sip.console.print(f"[dim]round {n + 1}: Kamailio ...[/dim]")
            rows["Kamailio"] = sip.run_kamailio(args, workdir)
            for mode in modes:
                sip.console.print(f"[dim]round {n + 1}: {mode} ...[/dim]")
                row = run_responder(sip, mode, args, workdir)
                rows[row["system"]] = row
            if args.colony:
                sip.console.print(f"[dim]round {n + 1}: Colony's member ...[/dim]")
                row = run_member(sip, args, workdir)
                rows[row["system"]] = row
            rounds.append(rows)
            _table(Table, f"round {n + 1} of {args.rounds}: {args.registrations} REGISTERs, load "
                          f"{os.getloadavg()[0]:.1f}", [rows])
    _table(Table, f"medians over {len(rounds)} rounds, {args.registrations} REGISTERs each, {os.cpu_count()} cores",
           rounds)


def _table(Table, title: str, rounds: list[dict[str, dict]]) -> None:
    import sip

    table = Table(title=title)
    for column in ("system", "reg/s", "failed", "CPU ms/reg", "reg per CPU-s", "vs Kamailio per CPU-s"):
        table.add_column(column, justify="left" if column == "system" else "right")
    for name in rounds[0]:
        rows = [r[name] for r in rounds if name in r]
        cpu_ms = statistics.median(r["reg_cpu_ms"] for r in rows)
        # The ratio per round (same minutes as that round's Kamailio), then its median.
        ratios = [r["Kamailio"]["reg_cpu_ms"] / r[name]["reg_cpu_ms"] for r in rounds
                  if name in r and r[name]["reg_cpu_ms"] > 0]
        table.add_row(name, f"{statistics.median(r['reg_rate'] for r in rows):,.0f}",
                      str(sum(r["reg_failed"] for r in rows)), f"{cpu_ms:.4f}",
                      f"{1000 / cpu_ms:,.0f}" if cpu_ms > 0 else "",
                      f"{statistics.median(ratios):.2f}x" if ratios else "")
    sip.console.print(table)


if __name__ == "__main__":
    main()
