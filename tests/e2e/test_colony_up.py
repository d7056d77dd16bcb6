"""`colony up` as a user starts it: separate processes, the embedded bus, Ctrl-C to stop."""

from __future__ import annotations

import json
import os
import random
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from colony.ports import PortPlan, ephemeral_overlap, port_is_free
from tools import port_band

pytestmark = pytest.mark.slow

COLONY = str(Path(sys.executable).parent / "colony")


def free_base_port() -> int:
    """A base port whose whole plan is free right now, below the kernel's ephemeral range
    (32768+), where the instances' own outgoing connections could take a planned port, and
    in this pytest-xdist worker's own slice of it (tools.port_band)."""
    band = port_band(2000)  # + the second store block (1000 up)
    for _ in range(200):
        base = random.randrange(band.start, band.stop, 100)
        if all(port_is_free("127.0.0.1", p) for _, p in PortPlan(base).all_ports(12, 2)):
            return base
    raise RuntimeError("no free port range")


def status_json(data_dir: Path) -> list[dict]:
    """What `colony status --json` shows; [] while it cannot answer (the callers poll with a deadline)."""
    try:
        out = subprocess.run([COLONY, "status", "--json", "--data-dir", str(data_dir)],
                             capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:  # a loaded machine: not an answer yet
        return []
    if out.returncode != 0:
        return []
    return json.loads(out.stdout)


class UpExited(AssertionError):
    """The `colony up` a test waits on ended by itself (its output says why)."""

    def __init__(self, proc: subprocess.Popen, what: str):
        self.output = UP_LOGS[proc.pid].read_text(errors="replace") if proc.pid in UP_LOGS else ""
        super().__init__(f"`colony up` exited with {proc.returncode} while we waited for {what}:\n{self.output[-3000:]}")


# What a condition saw last, said when its wait times out (``observe``): "timed out waiting
# for every instance READY" alone left a CI failure with nothing to go on.
_observed: list = []


def observe(describe) -> None:
    """For the running ``wait_for``: ``describe()`` tells what this poll saw (called only if
    the wait times out)."""
    _observed[:] = [describe]


def wait_for(condition, timeout: float, what: str, up: subprocess.Popen | None = None):
    """Poll ``condition`` until it holds; with ``up``, fail at once if that `colony up` ended."""
    _observed.clear()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        if up is not None and up.poll() is not None:
            raise UpExited(up, what)
        time.sleep(0.3)
    seen = ""
    if _observed:
        try:
            seen = "\nlast seen: " + _observed[0]()
        except Exception as exc:  # noqa: BLE001 - the timeout is the failure to report
            seen = f"\n(what was seen could not be told: {exc!r})"
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{seen}")


def wait_deliverable(port: int, rcpt: str, timeout: float = 60) -> None:
    """Wait until the edge SMTP listener at ``port`` takes ``rcpt`` (its directory cache has
    heard of the account)."""
    def accepts() -> bool:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
                s.ehlo("probe.test")
                s.mail("probe@remote.test")
                return s.rcpt(rcpt)[0] == 250
        except (smtplib.SMTPException, OSError):
            return False
    wait_for(accepts, timeout, f"the edge at {port} to know {rcpt}")


def ready_nodes(data_dir: Path, expected: int) -> list[dict] | None:
    """The instances, once there are exactly ``expected`` and every one is READY (one reading)."""
    nodes = status_json(data_dir)
    if len(nodes) == expected and all(n["state"] == "READY" for n in nodes):
        return nodes
    observe(lambda: not_ready(data_dir, nodes, expected))
    return None


def not_ready(data_dir: Path, nodes: list[dict], expected: int) -> str:
    """The reading, and the end of the log of each instance not READY in it (or not in it)."""
    ready = {n["id"] for n in nodes if n["state"] == "READY"}
    lines = [f"{len(nodes)} of {expected} instances: " + (", ".join(f"{n['id']} {n['state']}" for n in nodes)
                                                          or "no answer from `colony status`")]
    for log in sorted((data_dir / "logs").glob("*.log")):
        if log.stem not in ready:
            tail = log.read_text(errors="replace").splitlines()[-8:]
            lines += [f"--- {log.name}:", *tail]
    return "\n".join(lines)[-6000:]


def all_ready(data_dir: Path, expected: int):
    nodes = status_json(data_dir)
    if len(nodes) == expected and all(n["state"] == "READY" for n in nodes):
        if sum(n["controller"] for n in nodes) == 1 and sum(n["backup"] for n in nodes) == 1:
            return nodes
    return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie not yet reaped by its parent counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (the admin API runs its projections as child processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


UP_LOGS: dict[int, Path] = {}  # pid of a `colony up` -> the file its output goes to


def start_up(data_dir: Path, base: int, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    # Output to a file, not a pipe nobody reads until the end: a long test whose `colony up`
    # printed more than the pipe holds would block it mid-run.
    log = data_dir.parent / f"{data_dir.name}-colony-up.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([COLONY, "up", "--data-dir", str(data_dir), "--base-port", str(base), "--no-live", *extra],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=None if env is None else {**os.environ, **env})
    UP_LOGS[proc.pid] = log
    return proc


def stop_up(proc: subprocess.Popen) -> str:
    """Ctrl-C, wait for the whole cluster to stop, and return what `colony up` printed."""
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=180)  # every instance drains (up to 10 s each tier) first
    return UP_LOGS.pop(proc.pid).read_text(errors="replace")


def test_up_status_and_ctrl_c_leaves_nothing_behind(tmp_path):
    data_dir, base = tmp_path / "one", free_base_port()
    proc = start_up(data_dir, base)
    try:
        nodes = wait_for(lambda: all_ready(data_dir, 8), 180, "8 READY instances with one controller and one backup")
        roles = sorted(n["role"] for n in nodes)
        assert roles == ["admin-api", "controller", "controller", "edge", "mailstore", "mailstore", "projector", "sipfarm"]
        for n in nodes:
            assert n["pid"] > 0 and n["epoch"] > 0
            assert set(n) >= {"id", "role", "state", "pid", "controller", "backup", "epoch", "addresses"}
            for key, address in n["addresses"].items():
                host, port = address.rsplit(":", 1)
                if key == "sip_inner":   # the farm's inner relay is UDP only: taken, not connectable
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, pytest.raises(OSError):
                        udp.bind((host, int(port)))
                    assert int(port) == PortPlan(base).sip_inner(0)
                    continue
                socket.create_connection((host, int(port)), timeout=5).close()
        info = json.loads((data_dir / "cluster.json").read_text())
        assert info["nats_url"] == f"nats://127.0.0.1:{base}"
        admin = [n for n in nodes if n["role"] == "admin-api"][0]
        assert admin["addresses"]["http"] == f"127.0.0.1:{PortPlan(base).admin_api(0)}"
        pids = [n["pid"] for n in nodes]

        # First start: a bootstrap system-admin token, kept 0600 in the data directory,
        # which sees through the admin API the same cluster `colony status` shows.
        token_file = data_dir / "admin.token"
        wait_for(lambda: token_file.exists() and token_file.read_text().strip(), 60, "the bootstrap token")
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        # No secret on a command line (`ps` shows every user's): not the token, not a bus
        # seed or the cluster secret; instances read them from 0600 files.
        secrets = [token] + [f.read_text().strip() for f in (data_dir / "bus").iterdir() if f.is_file()
                             and f.suffix in (".nk", ".secret")]
        assert len(secrets) > 2
        for pid in [proc.pid, *descendants(proc.pid)]:
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue  # ended meanwhile
            assert not any(secret in argv for secret in secrets), f"a secret on the command line of {pid}: {argv!r}"
        served = httpx.get(f"http://{admin['addresses']['http']}/v1/cluster/nodes",
                           headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert served.status_code == 200
        by_id = {n["id"]: n for n in served.json()}
        assert set(by_id) == {n["id"] for n in nodes}
        for n in nodes:
            assert (by_id[n["id"]]["role"], by_id[n["id"]]["controller"], by_id[n["id"]]["backup"]) == (n["role"], n["controller"], n["backup"])

        # Rolling maintenance from the shell: drain waits until the instance is empty.
        drained = subprocess.run([COLONY, "drain", "mailstore-2", "--data-dir", str(data_dir)],
                                 capture_output=True, text=True, timeout=60)
        assert drained.returncode == 0 and "drained" in drained.stdout, drained.stderr
        assert {n["id"]: n["state"] for n in status_json(data_dir)}["mailstore-2"] == "NOT_READY"
        readied = subprocess.run([COLONY, "ready", "mailstore-2", "--data-dir", str(data_dir)],
                                 capture_output=True, text=True, timeout=60)
        assert readied.returncode == 0 and "READY" in readied.stdout, readied.stderr
        unknown = subprocess.run([COLONY, "drain", "mailstore-9", "--data-dir", str(data_dir)],
                                 capture_output=True, text=True, timeout=60)
        assert unknown.returncode != 0 and "mailstore-9" in unknown.stderr
        # The projector (the admin API's read model and directory) is drained like any role.
        drained = subprocess.run([COLONY, "drain", "projector-1", "--data-dir", str(data_dir)],
                                 capture_output=True, text=True, timeout=60)
        assert drained.returncode == 0 and "drained" in drained.stdout, drained.stderr
        readied = subprocess.run([COLONY, "ready", "projector-1", "--data-dir", str(data_dir)],
                                 capture_output=True, text=True, timeout=60)
        assert readied.returncode == 0 and "READY" in readied.stdout, readied.stderr

        # An instance that dies is started again by the supervisor, as a new process.
        victim = [n for n in nodes if n["id"] == "mailstore-1"][0]
        os.kill(victim["pid"], signal.SIGKILL)
        reborn = wait_for(lambda: [n for n in status_json(data_dir)
                                   if n["id"] == "mailstore-1" and n["state"] == "READY" and n["pid"] != victim["pid"]],
                          120, "mailstore-1 to be restarted")
        pids.append(reborn[0]["pid"])
        # Every process belongs to an instance the cluster shows: the admin API has no children.
        assert descendants(admin["pid"]) == [], "the admin API's projections run as the projector role"
    finally:
        out = stop_up(proc)
    assert proc.returncode == 0, out
    assert f"admin token: {token}" in out, "colony up prints the token the first admin API wrote"
    assert f"nats://127.0.0.1:{base}" in out, "colony up prints the bus URL"
    assert "no process left behind" in out
    killed = [line for line in out.splitlines() if "were killed" in line]
    assert not killed, f"every instance stops by itself on SIGTERM: {killed}"
    wait_for(lambda: not any(pid_alive(p) for p in pids), 30, "every instance to be gone")
    assert all(port_is_free("127.0.0.1", p) for _, p in PortPlan(base).all_ports(8, 1))
    assert not (data_dir / "colony.pid").exists()


def said(result: subprocess.CompletedProcess) -> str:
    """A command's error output as one line: the console wraps it at its width, and a long
    temporary path (a pytest-xdist worker's is longer) moves where the breaks fall."""
    return " ".join(result.stderr.split())


def test_two_clusters_side_by_side_and_clear_refusals(tmp_path):
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    base_a = free_base_port()
    counts = ["--controllers", "1", "--mailstores", "1", "--edges", "1", "--sipfarms", "0", "--admin-apis", "0"]
    a = start_up(first_dir, base_a, *counts)
    try:
        wait_for(lambda: ready_nodes(first_dir, 3), 120, "cluster a")
        # Same data directory: refused, naming the directory and the fix.
        refused = subprocess.run([COLONY, "up", "--data-dir", str(first_dir), "--base-port", str(free_base_port()), "--no-live"],
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0
        assert "in use" in said(refused) and "--data-dir" in said(refused)
        # Same ports: refused, naming the port and the fix.
        refused = subprocess.run([COLONY, "up", "--data-dir", str(second_dir), "--base-port", str(base_a), "--no-live"],
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0
        assert str(base_a) in said(refused) and "--base-port" in said(refused)
        # Ports where the kernel hands out outgoing connections: refused, with the fix.
        inside = ephemeral_overlap([40000])
        if inside:
            refused = subprocess.run([COLONY, "up", "--data-dir", str(tmp_path / "eph"), "--base-port", "40000", "--no-live"],
                                     capture_output=True, text=True, timeout=60)
            assert refused.returncode != 0 and "ephemeral" in said(refused) and "--base-port" in said(refused)
        # Another directory and base port: runs beside the first.
        base_b = free_base_port()
        b = start_up(second_dir, base_b, *counts)
        try:
            # All three, each READY ("every one shown is READY" is also true of the first two to register).
            nodes_b = wait_for(lambda: ready_nodes(second_dir, 3), 120, "cluster b")
            assert len(nodes_b) == 3
            assert len(wait_for(lambda: status_json(first_dir), 60, "cluster a's status")) == 3, "the clusters do not see each other"
        finally:
            assert stop_up(b) and b.returncode == 0
    finally:
        stop_up(a)
    assert a.returncode == 0


def test_killing_the_supervisor_takes_every_instance_with_it(tmp_path):
    data_dir, base = tmp_path / "k", free_base_port()
    proc = start_up(data_dir, base, "--controllers", "1", "--mailstores", "1", "--sipfarms", "0", "--admin-apis", "0")
    try:
        nodes = wait_for(lambda: ready_nodes(data_dir, 3), 120, "three READY instances")
    finally:
        proc.kill()  # SIGKILL: no chance to stop anything in order
        proc.wait()
    wait_all_gone(nodes, data_dir, 30)
    wait_for(lambda: port_is_free("127.0.0.1", base), 30, "the embedded nats-server to stop")


def wait_all_gone(nodes: list[dict], data_dir: Path, timeout: float) -> None:
    """Wait for every instance's process to end; on time-out, say which did not, with their logs."""
    try:
        wait_for(lambda: not any(pid_alive(n["pid"]) for n in nodes), timeout, "the orphaned instances to stop")
    except AssertionError as exc:
        left = [n["id"] for n in nodes if pid_alive(n["pid"])]
        logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in (data_dir / "logs").glob("*.log") if p.stem in left)
        raise AssertionError(f"{exc}: still running {left}\n{logs}") from None


def test_orphaned_instances_stop_though_the_bus_hangs(tmp_path):
    """The supervisor is SIGKILLed while the embedded nats-server is frozen (SIGSTOP): every
    instance gets its SIGTERM (PR_SET_PDEATHSIG) and must stop by itself, within its
    stop_timeout, though each record write and release waits on a bus that never answers
    and nobody is left to SIGKILL it. (Before, a mail store took over 40 s.)"""
    data_dir, base = tmp_path / "h", free_base_port()
    proc = start_up(data_dir, base, "--controllers", "1", "--mailstores", "1", "--sipfarms", "0", "--admin-apis", "0",
                    env={"COLONY_STOP_TIMEOUT": "6"})
    nats_pid = None
    try:
        nodes = wait_for(lambda: ready_nodes(data_dir, 3), 120, "three READY instances")
        nats_pid = json.loads((data_dir / "cluster.json").read_text())["nats_pid"]
        os.kill(nats_pid, signal.SIGSTOP)
    finally:
        proc.kill()
        proc.wait()
    try:
        # stop_timeout (6 s) + the process's own 5 s backstop; the deadline leaves room for a busy machine
        wait_all_gone(nodes, data_dir, 30)
        logs = {p.stem: p.read_text(errors="replace") for p in (data_dir / "logs").glob("*.log")}
        assert "could not record NOT_READY on the bus" in logs["mailstore-1"], logs["mailstore-1"][-3000:]
    finally:
        if nats_pid is not None and pid_alive(nats_pid):
            os.kill(nats_pid, signal.SIGCONT)
    wait_for(lambda: port_is_free("127.0.0.1", base), 30, "the embedded nats-server to stop")
