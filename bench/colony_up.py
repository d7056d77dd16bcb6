"""`colony up` for the benchmarks: start it in a private data directory, wait until its admin
API answers, provision a domain and accounts, measure its processes' CPU, stop it.

    with ColonyUp(data_dir, base_port, "--mailstores", "3", "--sipfarms", "0") as colony:
        colony.provision("bench.test", ["user0", "user1"], password="secret")
        cpu0 = colony.cpu_seconds()
        ...

One copy of what every benchmark that runs Colony needs, so they start it the same way.
With ``--regions eu,us`` among the arguments it is the super cluster: the token and the admin
API are the primary region's (the first named; provisioning is written there), ``info`` is
``supercluster.json`` (each region's addresses under ``info["regions"]``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from peers import descendants, process_cpu, wait_port

ROOT = Path(__file__).resolve().parent.parent
COLONY = str(ROOT / ".venv/bin/colony")


def process_label(pid: int) -> str:
    """A process's role as `colony up` started it (``colony_edge``, ``nats-server``, ...)."""
    try:
        argv = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return str(pid)
    if "-m" in argv[:-1]:
        return argv[argv.index("-m") + 1]                    # colony_edge, colony_mailstore, ...
    if COLONY in argv[:2]:
        return "colony up"
    return Path(argv[0]).name if argv else str(pid)         # nats-server


class ColonyUp:
    """``colony up --data-dir DATA --base-port BASE [args...]`` as a context manager."""

    def __init__(self, data_dir: Path, base_port: int, *args: str, env: dict[str, str] | None = None,
                 timeout: float = 180.0) -> None:
        self.data_dir = Path(data_dir)
        self.base_port = base_port
        self.args = args
        self.env = env
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        # The primary region of a super cluster, None for one cluster.
        self.primary = args[args.index("--regions") + 1].split(",")[0] if "--regions" in args[:-1] else None
        self.info: dict = {}
        self.api = ""
        self.headers: dict[str, str] = {}

    def __enter__(self) -> ColonyUp:
        self.proc = subprocess.Popen([COLONY, "up", "--data-dir", str(self.data_dir), "--base-port",
                                      str(self.base_port), *self.args], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            primary_dir = self.data_dir / self.primary if self.primary else self.data_dir
            token_file = primary_dir / "admin.token"
            # A super cluster writes supercluster.json once every region has started, which
            # can be after the primary's admin API wrote its token.
            info_file = self.data_dir / ("supercluster.json" if self.primary else "cluster.json")
            deadline = time.monotonic() + self.timeout
            while not (token_file.exists() and token_file.read_text().strip() and self._read_info(info_file)):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"colony up did not come up (see the logs under {self.data_dir})")
                time.sleep(0.2)
            self.api = (self.info["regions"][self.primary] if self.primary else self.info)["admin_api"][0]
            wait_port(int(self.api.rsplit(":", 1)[1]), self.timeout)
            self.headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        except BaseException:
            self.stop()
            raise
        return self

    def _read_info(self, path: Path) -> bool:
        try:
            self.info = json.loads(path.read_text())  # it may be read half written
        except (OSError, ValueError):
            return False
        return True

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)

    def http(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.api, headers=self.headers, timeout=timeout)

    def provision(self, domain: str, accounts: list[str], password: str | None = None, **domain_fields) -> None:
        """The domain (retried while the admin API is still catching up; ``domain_fields`` such
        as ``home_region="eu"`` go into its creation) and its accounts."""
        with self.http() as client:
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    client.post("/v1/domains", json={"name": domain, **domain_fields}).raise_for_status()
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            body = {"password": password} if password else {}
            for name in accounts:
                client.post(f"/v1/domains/{domain}/accounts", json={"name": name, **body}).raise_for_status()

    def status(self) -> list[dict]:
        """``colony status --json``: every instance's record (role, state, addresses)."""
        out = subprocess.run([COLONY, "status", "--json", "--data-dir", str(self.data_dir)],
                             capture_output=True, text=True, timeout=60).stdout
        return json.loads(out or "[]")

    def pids(self) -> list[int]:
        return descendants(self.proc.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU of every process of this `colony up` (nats-server included)."""
        return process_cpu(self.pids())
