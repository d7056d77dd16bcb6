"""The embedded bus of `colony up` is supervised like the instances.

SIGKILL the nats-server while an operator keeps provisioning: the supervisor says the bus
went down, starts it again with its data within seconds and says it is back; every
instance reconnects by itself and stays READY (same process, no restart), and every
provisioning command that was acknowledged before, during or after the outage is there.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import pytest

from test_colony_up import UP_LOGS, all_ready, free_base_port, pid_alive, start_up, status_json, wait_for

pytestmark = pytest.mark.slow

INSTANCES = 6  # 2 controllers, a mailstore, an edge, an admin API and its projector


class Provisioner(threading.Thread):
    """Creates domains one after another; remembers which ones the API acknowledged."""

    def __init__(self, api: str, token: str) -> None:
        super().__init__(daemon=True)
        self.api, self.token = api, token
        self.acked: list[str] = []
        self.failed = 0
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.api, headers={"Authorization": f"Bearer {self.token}"}, timeout=10) as http:
            n = 0
            while not self.halt.is_set():
                name = f"d{n}.example"
                try:
                    reply = http.post("/v1/domains", json={"name": name})
                except httpx.HTTPError:
                    reply = None
                if reply is not None and reply.status_code == 201:
                    self.acked.append(name)
                    n += 1
                elif reply is not None and reply.status_code == 409:
                    n += 1  # an earlier attempt was committed after all; not counted as acknowledged
                else:
                    self.failed += 1
                    time.sleep(0.1)


class Output:
    """What `colony up` printed so far (start_up sends it to a file)."""

    def __init__(self, proc) -> None:
        self.path = UP_LOGS[proc.pid]

    def text(self) -> str:
        return self.path.read_text(errors="replace") if self.path.exists() else ""

    def has(self, text: str) -> bool:
        return text in self.text()


def test_a_killed_bus_comes_back_and_nothing_acknowledged_is_lost(tmp_path):
    data_dir, base = tmp_path / "bus", free_base_port()
    proc = start_up(data_dir, base, "--controllers", "2", "--mailstores", "1", "--edges", "1",
                    "--sipfarms", "0", "--admin-apis", "1", "--projectors", "1")
    out = Output(proc)
    provisioner = None
    try:
        nodes = wait_for(lambda: all_ready(data_dir, INSTANCES), 120, f"{INSTANCES} READY instances")
        pids = {n["id"]: n["pid"] for n in nodes}
        token_file = data_dir / "admin.token"
        wait_for(lambda: token_file.exists() and token_file.read_text().strip(), 30, "the bootstrap token")
        api = "http://" + [n for n in nodes if n["role"] == "admin-api"][0]["addresses"]["http"]
        provisioner = Provisioner(api, token_file.read_text().strip())
        provisioner.start()
        wait_for(lambda: len(provisioner.acked) >= 5, 60, "provisioning to run")

        info = json.loads((data_dir / "cluster.json").read_text())
        old_bus = info["nats_pid"]
        os.kill(old_bus, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: out.has("bus DOWN"), 30, "the terminal to say the bus went down")
        wait_for(lambda: out.has("bus UP"), 30, "the terminal to say the bus is back")
        assert time.monotonic() - killed_at < 30
        new_bus = json.loads((data_dir / "cluster.json").read_text())["nats_pid"]
        assert new_bus != old_bus and pid_alive(new_bus)
        assert json.loads((data_dir / "cluster.json").read_text())["nats_url"] == info["nats_url"]

        # Every instance reconnects on its own: READY again, in the same process.
        def reconnected():
            now = all_ready(data_dir, INSTANCES)
            return now and {n["id"]: n["pid"] for n in now} == pids
        wait_for(reconnected, 60, "every instance READY again in its own process")
        before = len(provisioner.acked)
        wait_for(lambda: len(provisioner.acked) >= before + 5, 60, "provisioning to work again")
        provisioner.halt.set()
        provisioner.join(30)

        # Stays READY: every look over several heartbeats shows the same processes READY.
        watch_until = time.monotonic() + 3
        while time.monotonic() < watch_until:
            assert {n["id"]: (n["pid"], n["state"]) for n in status_json(data_dir)} == {i: (p, "READY") for i, p in pids.items()}

        # Nothing acknowledged is lost: every acked domain is readable through the API.
        with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {provisioner.token}"}, timeout=10) as http:
            missing = set(provisioner.acked)

            def all_there():
                missing.difference_update([d for d in list(missing) if http.get(f"/v1/domains/{d}").status_code == 200])
                return not missing
            wait_for(all_there, 60, f"all {len(provisioner.acked)} acknowledged domains")
    finally:
        if provisioner is not None:
            provisioner.halt.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
    text = out.text()
    assert proc.returncode == 0, text
    assert "no process left behind" in text
