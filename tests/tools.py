"""Debian tools the tests drive as real peers: present, skipped with the reason on a
developer's machine without them, a failure in CI (``.ci/apt-packages`` installs them)."""

from __future__ import annotations

import os
import random
import shutil

import pytest


def need_tool(name: str, package: str | None = None) -> str:
    path = shutil.which(name)
    if path is None:
        package = package or name
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is required in CI (apt-get install {package}; listed in .ci/apt-packages)")
        pytest.skip(f"{name} is not installed (apt-get install {package})")
    return path


# Ports a test plans itself (a `colony up` base port, a nats-server's route port) come from
# below the kernel's ephemeral range (32768+), where no process's outgoing connection can
# take them.  Checking that a port is free and binding it are two steps, so under
# pytest-xdist each worker plans from its own slice of the band: two workers never pick
# the same port, and the free check only races with processes outside the run.
PORT_BAND = (10000, 32000)


def port_band(span: int = 1) -> range:
    """The first ports this test process may plan ``span`` consecutive ports from."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    width = (PORT_BAND[1] - PORT_BAND[0]) // workers // 1000 * 1000  # slices on 1000s: bases stay round
    low = PORT_BAND[0] + worker * width
    if span > width:
        raise RuntimeError(f"{span} ports do not fit in a worker's {width}")
    return range(low, low + width - span + 1)


_planned: set[int] = set()  # every single port free_ports handed out in this test process


def free_ports(count: int) -> list[int]:
    """``count`` free single ports from this worker's slice of the band, none handed out
    before in this process: a test that plans a server's ports in several calls (routes, then
    each server's client and monitor ports) would otherwise be given one port twice, since
    nothing binds them between the calls."""
    from colony.ports import port_is_free  # the tests' sys.path has libs/ by now

    band = port_band()
    found: list[int] = []
    while len(found) < count:
        port = random.choice(band)
        if port not in _planned and port_is_free("127.0.0.1", port):
            _planned.add(port)
            found.append(port)
    return found


def stop_process(pid: int, timeout: float = 10.0) -> None:
    """SIGSTOP ``pid`` and return once the kernel shows it stopped (``/proc/<pid>/stat`` state
    T): a process still running out the moment after ``kill`` (a thread busy elsewhere) would
    let a test's next step through as if it had not been stopped."""
    import signal
    import time

    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while True:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
        if state in ("T", "t"):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} not stopped {timeout}s after SIGSTOP (state {state})")
        time.sleep(0.01)
