"""The projector role: the admin API's projections as their own cluster member.

``python -m colony_admin.projector`` runs the projections of the admin API's streams --
PROVISIONING into the SQL read model and into the ``directory`` KV the edges read, USAGE
and AUDIT into SQL -- under the node runtime like every other service: registered in
``cluster_nodes`` (so ``colony status`` shows it), scaled by starting more, drained with
``colony drain``.

Why a role of its own rather than work inside the admin API: the projections cost more CPU
per event than anything else the admin API does, and in one CPython process they compete
with the API for one core.  Measured with ``bench/provisioning.py`` on 2 cores, a bulk import
becomes visible about 1.6x faster with the projections in another process (see
``bench/README.md``); a role gets that without the admin API managing child processes.

* Read model: every projector follows PROVISIONING from the checkpoint in the database
  (ephemeral consumer, checkpoint in the same transaction as the rows), so several
  projectors on one database are safe (a batch already applied is skipped) -- they give
  availability, not more throughput.  It announces its position
  (``projections.position.ReadModelPosition``); an admin API answers a command only once an
  announcement shows the command's event.
* Directory: fed by the read model's consumer (each event read and decoded once), its
  checkpoint kept in the directory bucket; several projectors may write one key, and every
  write only moves it forward.
* Drain ("Make Not-Ready"): each projection finishes the batches in hand (at most two: they
  are pipelined) and asks for no more; the active work is those in-flight batches.  ``colony ready`` resumes where it was.
"""

from __future__ import annotations

import asyncio
import logging

from colony.bus import names
from colony.cluster.node import NodeRuntime
from colony.cluster.service_main import run_service
from colony.eventstore import EventStore
from colony.settings import Settings
from colony_admin import db, gcpolicy
from colony_admin.projections import readmodel
from colony_admin.projections.directory import DirectoryProjection
from colony_admin.projections.position import ANNOUNCE_EVERY, ReadModelPosition
from colony_admin.projections.runner import ProjectionMetrics, StreamProjection

log = logging.getLogger("colony.admin.projector")


class ProjectorWorkload:
    role = "projector"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.gate = asyncio.Event()  # set: take new batches; cleared by a drain
        self.gate.set()
        self.readmodel: StreamProjection | None = None
        self.projections: list[StreamProjection] = []
        self._engine = None
        self._runtime: NodeRuntime | None = None

    async def start(self, runtime: NodeRuntime) -> dict[str, str]:
        self._runtime = runtime
        nc = runtime.nc
        engine = self._engine = db.make_engine(self.settings.sqlalchemy_url)
        await asyncio.to_thread(db.migrate, engine)
        js = nc.jetstream(timeout=10.0)

        metrics = runtime.metrics.once(ProjectionMetrics)

        def follow(stream: str, subjects: str, name: str, apply, **kw) -> StreamProjection:
            return StreamProjection(nc=nc, js=js, engine=engine, stream=stream, subjects=subjects, name=name,
                                    apply=apply, gate=self.gate, metrics=metrics, **kw)

        self.readmodel = follow(names.STREAM_PROVISIONING, names.SUBJECTS_PROVISIONING, readmodel.READ_MODEL,
                                readmodel.apply_provisioning, on_advance=self._announce,
                                directory=DirectoryProjection(nc, js, EventStore(js, names.STREAM_PROVISIONING, nc=nc)))
        self.projections = [
            self.readmodel,
            follow(names.STREAM_USAGE, names.SUBJECTS_USAGE, readmodel.USAGE, readmodel.apply_usage),
            follow(names.STREAM_AUDIT, names.SUBJECTS_AUDIT, readmodel.AUDIT, readmodel.apply_audit),
        ]
        for name, projection in zip(("readmodel", "usage", "audit"), self.projections, strict=True):
            runtime.spawn(f"projection-{name}", projection.follow, restart=True,
                          context=lambda p=projection: f"at seq {getattr(p, 'position', '?')}; resumes from its checkpoint")
        runtime.spawn("announce-position", self._announce_every, restart=True)
        gcpolicy.after_start_up()  # modules, models and tables frozen out of the GC's way; a larger young generation
        return {}

    async def _announce(self, seq: int) -> None:
        assert self._runtime is not None and self._runtime.nc is not None
        await self._runtime.nc.publish(names.ADMIN_READMODEL_POSITIONS, ReadModelPosition(
            projection=readmodel.READ_MODEL, seq=seq, node=self._runtime.node_id).encode())

    async def _announce_every(self) -> None:
        while True:
            await asyncio.sleep(ANNOUNCE_EVERY)
            if self.readmodel is not None and self.readmodel.position:
                await self._announce(self.readmodel.position)

    def set_accepting(self, accepting: bool) -> None:
        if accepting:
            self.gate.set()
        else:
            self.gate.clear()

    def active_work(self) -> int:
        return sum(p.in_flight for p in self.projections)

    async def hand_over(self) -> None:
        return None  # a batch is short; one cut off is projected again from the checkpoints

    async def stop(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def main() -> None:
    run_service("projector", ProjectorWorkload)


if __name__ == "__main__":
    main()
