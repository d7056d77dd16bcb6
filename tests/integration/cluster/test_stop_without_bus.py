"""An instance told to stop exits within a bounded time even when the bus is gone.

With the bus gone, every bus write of a graceful stop (the NOT_READY and STOPPED records, the
controller lease's release, the drain of the connection) waited out a request timeout: 15-21 s
in all, past the 20 s after which `colony up` kills an instance. Those steps are now skipped
when the connection is down (the record's and the lease's TTLs tell the cluster instead)."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from cluster_harness import wait_until

# With the bus gone a stop skips its record writes: 1-2 s, an edge ~6 s (its rate counters
# retry their flush for 5 s). The stop that waited on the bus took 15-21 s for every role.
EXIT_WITHIN = 12.0


@pytest.mark.parametrize("role", ["edge", "mailstore", "sipfarm", "controller"])
async def test_sigterm_after_the_bus_died_still_exits(cluster, nats_server, role):
    node = cluster.start(role, f"{role}-1")
    await cluster.wait_state(f"{role}-1", "READY", timeout=60)
    await cluster._nc.close()  # the harness's own connection: the server is going away
    cluster._nc = None
    nats_server.kill()

    async def noticed() -> bool:   # it reconnects forever: the stop must find the bus gone
        return "nats disconnected" in node.log()
    await wait_until(noticed, 30, f"{role} to notice the bus is gone")
    node.signal(signal.SIGTERM)
    started = time.monotonic()
    try:
        code = node.process.wait(EXIT_WITHIN)
    except subprocess.TimeoutExpired:
        node.process.kill()
        pytest.fail(f"{role} still ran {EXIT_WITHIN}s after SIGTERM with the bus gone; its log ends:\n"
                    f"{node.log()[-3000:]}")
    took = time.monotonic() - started
    assert code == 0, f"{role} exited with {code} after {took:.1f}s; its log ends:\n{node.log()[-3000:]}"
