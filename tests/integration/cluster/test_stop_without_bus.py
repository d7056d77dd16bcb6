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

# With the bus gone a stop skips its record writes; the rate counters retry theirs for 5 s.
EXIT_WITHIN = 20.0  # `colony up` kills an instance that takes longer


@pytest.mark.parametrize("role", ["edge", "mailstore", "sipfarm", "controller"])
async def test_sigterm_after_the_bus_died_still_exits(cluster, nats_server, role):
    node = cluster.start(role, f"{role}-1")
    await cluster.wait_state(f"{role}-1", "READY", timeout=60)
    await cluster._nc.close()  # the harness's own connection: the server is going away
    cluster._nc = None
    nats_server.kill()
    time.sleep(0.5)  # let the instance notice the lost connection (it reconnects forever)
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
