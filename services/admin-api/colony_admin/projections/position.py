"""How far the read model is: a position that only moves forward, announced over core NATS.

Read-your-writes across processes: a command answers only once the read model shows its
event.  Where the read model is written by a projector instance (another process, maybe
another machine), the projector announces every position it reaches -- and its current one
every ``ANNOUNCE_EVERY`` seconds, so an admin API that starts later learns it -- as a
``ReadModelPosition`` on ``names.ADMIN_READMODEL_POSITIONS``.  Each admin API follows those
announcements with a ``RemoteReadModel``, which offers the same ``position`` / ``wait_for``
as a projection running in the admin API itself.

All projectors and admin APIs of a cluster share one read-model database, so any
projector's position is a position of that database: a projector that finds a batch
already applied by another (the checkpoint is in the database) announces it too.
Announcements are fire-and-forget; a lost one only delays a waiter until the next.
"""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Engine

from colony.bus import names
from colony.bus.connection import unsubscribe_all

log = logging.getLogger("colony.admin.readmodel")

ANNOUNCE_EVERY = 0.5  # seconds between announcements when nothing moves


class ReadModelPosition(BaseModel):
    """Core NATS, ``names.ADMIN_READMODEL_POSITIONS`` (``colony.admin.readmodel.position``),
    published by projectors, no reply::

        {"projection": "readmodel", "seq": 1234, "node": "projector-1"}

    ``seq`` is the last PROVISIONING stream sequence the read-model database holds;
    ``node`` the announcing projector (for logs).
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    projection: str
    seq: int = Field(ge=0)
    node: str = ""

    def encode(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def decode(cls, data: bytes) -> ReadModelPosition:
        return cls.model_validate_json(data)


class PositionTracker:
    """A stream position that only moves forward, and a wait for it (read-your-writes)."""

    def __init__(self) -> None:
        self.position = 0  # last stream sequence known to be applied
        self._moved = asyncio.Condition()

    async def _advance_to(self, seq: int) -> None:
        async with self._moved:
            if seq > self.position:
                self.position = seq
                self._moved.notify_all()

    async def wait_for(self, seq: int, timeout: float = 10.0) -> bool:
        """Wait until the read model includes stream sequence ``seq``."""
        async with self._moved:
            try:
                await asyncio.wait_for(self._moved.wait_for(lambda: self.position >= seq), timeout)
            except TimeoutError:
                return False
        return True


class RemoteReadModel(PositionTracker):
    """An admin API's view of the read model projectors write: ``position`` and ``wait_for``."""

    def __init__(self, nc: Client, engine: Engine, name: str) -> None:
        super().__init__()
        self.nc, self.engine, self.name = nc, engine, name
        self._sub: Subscription | None = None
        self.heard = asyncio.Event()  # set by the first announcement: a projector is following

    async def start(self) -> None:
        from colony_admin.projections.readmodel import checkpoint

        self._sub = await self.nc.subscribe(names.ADMIN_READMODEL_POSITIONS, cb=self._on_position)

        def load() -> int:
            with self.engine.connect() as conn:
                return checkpoint(conn, self.name)

        await self._advance_to(await asyncio.to_thread(load))

    async def stop(self) -> None:
        await unsubscribe_all([self._sub])
        self._sub = None

    async def _on_position(self, msg: Msg) -> None:
        try:
            position = ReadModelPosition.decode(msg.data)
        except ValidationError:
            log.warning("ignoring a malformed read-model position on %s", msg.subject)
            return
        if position.projection != self.name:
            return
        self.heard.set()
        await self._advance_to(position.seq)
