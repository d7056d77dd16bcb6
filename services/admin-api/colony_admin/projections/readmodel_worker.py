"""The read-model projection (PROVISIONING -> SQL) in a child process of the admin API.

Why: in one CPython process the projection (decode every event, write it to SQL) and the
API (bulk imports above all) share one core through the GIL; in its own process the
projection gets the other core, so an import is appended and projected in parallel.

What stays the same: the projection is the same ``StreamProjection`` with the same
checkpoint in the same transaction as the rows, so restarts, several instances on one
database and bad events behave exactly as inline.  Read-your-writes: the child publishes
every position it reaches (and its current position every half second) on a core NATS
subject private to its parent; the parent's ``RemoteProjection`` offers the same
``position`` / ``wait_for`` as an inline projection, starting from the checkpoint in the
database.  The child exits when told to (SIGTERM) and on its own when its parent is gone;
the parent restarts it if it dies (it resumes from its checkpoint).
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

from nats.aio.client import Client
from nats.aio.msg import Msg
from sqlalchemy import Engine

from colony_admin.projections.directory_worker import Child
from colony_admin.projections.runner import PositionTracker

log = logging.getLogger("colony.admin.readmodel")

HEARTBEAT = 0.5  # seconds between position reports when nothing moves


def can_run_apart(database_url: str) -> bool:
    """An in-memory SQLite database exists only in the process that opened it."""
    return not (database_url.startswith("sqlite") and (":memory:" in database_url or database_url.rstrip("/") == "sqlite:"))


def start(nats_servers: list[str], connect_timeout: float, log_level: str, database_url: str,
          progress_subject: str) -> Child:
    args = json.dumps([nats_servers, connect_timeout, log_level, database_url, progress_subject, os.getpid()])
    return Child(subprocess.Popen([sys.executable, "-m", __name__, args], stdin=subprocess.DEVNULL))


class RemoteProjection(PositionTracker):
    """The parent's view of the child's projection: ``position`` and ``wait_for``."""

    def __init__(self, nc: Client, engine: Engine, name: str, progress_subject: str) -> None:
        super().__init__()
        self.nc, self.engine, self.name, self.progress_subject = nc, engine, name, progress_subject
        self._sub = None
        self.heard = asyncio.Event()  # set by the child's first report: it is following the stream

    async def start(self) -> None:
        from colony_admin.projections.readmodel import checkpoint

        self._sub = await self.nc.subscribe(self.progress_subject, cb=self._on_progress)

        def load() -> int:
            with self.engine.connect() as conn:
                return checkpoint(conn, self.name)

        await self._advance_to(await asyncio.to_thread(load))

    async def stop(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:  # noqa: BLE001 - the connection may be closing
                pass

    async def _on_progress(self, msg: Msg) -> None:
        try:
            seq = int(msg.data)
        except ValueError:
            return
        self.heard.set()
        await self._advance_to(seq)



def _main(nats_servers: list[str], connect_timeout: float, log_level: str, database_url: str,
          progress_subject: str, parent: int) -> None:
    logging.basicConfig(level=log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(_run(nats_servers, connect_timeout, database_url, progress_subject, parent))
    except KeyboardInterrupt:
        pass


async def _run(nats_servers: list[str], connect_timeout: float, database_url: str, progress_subject: str,
               parent: int) -> None:
    import nats

    from colony.bus import names
    from colony_admin import db
    from colony_admin.projections import readmodel
    from colony_admin.projections.runner import StreamProjection

    nc = await nats.connect(servers=nats_servers, name="colony-admin-readmodel", connect_timeout=connect_timeout,
                            max_reconnect_attempts=-1, reconnect_time_wait=0.5)
    engine = db.make_engine(database_url)
    gc.freeze()  # modules, models and tables live as long as the process: out of the GC's way

    async def report(seq: int) -> None:
        await nc.publish(progress_subject, str(seq).encode())

    projection = StreamProjection(js=nc.jetstream(timeout=10.0), engine=engine, stream=names.STREAM_PROVISIONING,
                                  subjects=names.SUBJECTS_PROVISIONING, name=readmodel.READ_MODEL,
                                  apply=readmodel.apply_provisioning, on_advance=report)
    task = asyncio.create_task(projection.run())
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        while not task.done():
            if os.getppid() != parent:  # the admin API died without stopping us
                task.cancel()
                break
            await asyncio.wait({task}, timeout=HEARTBEAT)
            if projection.position:
                await report(projection.position)
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await nc.close()
        engine.dispose()


if __name__ == "__main__":
    _main(*json.loads(sys.argv[1]))
