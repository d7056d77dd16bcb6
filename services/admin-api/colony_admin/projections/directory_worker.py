"""The directory projection in a child process of the admin API.

Why: the directory projection costs more CPU per event than anything else the admin API
does (one KV write and ack per object), and in one CPython process it competes with the
API and the read model for a single core; in its own process it gets another one (bulk
imports become visible about 1.6x faster on 2 cores).  Its durable consumer is shared, so
the child is just one more worker on it; nothing else changes.

The child exits when told to (SIGTERM), and on its own when its parent is gone, so a
SIGKILLed admin-api leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import subprocess
import sys

log = logging.getLogger("colony.admin.directory")


class Child:
    """The child process, with the part of ``multiprocessing.Process``'s interface we use."""

    def __init__(self, popen: subprocess.Popen) -> None:
        self._popen = popen
        self.pid = popen.pid

    def is_alive(self) -> bool:
        return self._popen.poll() is None

    @property
    def exitcode(self) -> int | None:
        return self._popen.poll()

    def terminate(self) -> None:
        if self.is_alive():
            self._popen.terminate()

    def kill(self) -> None:
        if self.is_alive():
            self._popen.kill()

    def join(self, timeout: float | None = None) -> None:
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass


def start(nats_servers: list[str], connect_timeout: float, log_level: str) -> Child:
    # A plain interpreter running this module, not multiprocessing's "spawn": spawn re-imports
    # the parent's __main__ (the whole CLI or API app, ~2 s of CPU) in the child, which at
    # start-up competes with the parent for the cores.
    args = json.dumps([nats_servers, connect_timeout, log_level, os.getpid()])
    return Child(subprocess.Popen([sys.executable, "-m", __name__, args], stdin=subprocess.DEVNULL))


def stop(proc: Child, timeout: float = 5.0) -> None:
    if proc.is_alive():
        proc.terminate()
        proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join(timeout)


def _main(nats_servers: list[str], connect_timeout: float, log_level: str, parent: int) -> None:
    logging.basicConfig(level=log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.nice(10)  # background work: the API process and the read model come first (see module doc)
    try:
        asyncio.run(_run(nats_servers, connect_timeout, parent))
    except KeyboardInterrupt:
        pass


async def _run(nats_servers: list[str], connect_timeout: float, parent: int) -> None:
    import nats

    from colony.bus import names
    from colony.eventstore import EventStore
    from colony_admin.projections.directory import DirectoryProjection

    nc = await nats.connect(servers=nats_servers, name="colony-admin-directory", connect_timeout=connect_timeout,
                            max_reconnect_attempts=-1, reconnect_time_wait=0.5)
    js = nc.jetstream(timeout=10.0)
    gc.freeze()  # modules and models live as long as the process: out of the GC's way
    task = asyncio.create_task(DirectoryProjection(js, EventStore(js, names.STREAM_PROVISIONING)).run())
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        while not task.done():
            if os.getppid() != parent:  # the admin API died without stopping us
                task.cancel()
                break
            await asyncio.wait({task}, timeout=1.0)
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await nc.close()


if __name__ == "__main__":
    _main(*json.loads(sys.argv[1]))
