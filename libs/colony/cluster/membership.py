"""Membership: the record every instance keeps in ``cluster_nodes``.

An instance writes its record on start and on every heartbeat with a compare-and-set on the
revision it last wrote.  If the CAS fails, someone else wrote the record: normally the
controller declaring it FAILED after its heartbeats stopped (a SIGSTOP, a long GC pause, a
partition).  The instance then re-registers with a new incarnation instead of overwriting
blindly, so the FAILED transition stays in the bucket's history and the cluster's event log.

States::

    STARTING -> READY <-> NOT_READY -> STOPPED
        \\________\\__________\\-------> FAILED (decided by the controller)
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from colony.events import utcnow
from colony.tasks import TaskFault


class NodeState(StrEnum):
    STARTING = "STARTING"
    READY = "READY"
    NOT_READY = "NOT_READY"
    STOPPED = "STOPPED"
    FAILED = "FAILED"


LIVE_STATES = frozenset({NodeState.STARTING, NodeState.READY, NodeState.NOT_READY})


class NodeRecord(BaseModel):
    id: str
    role: str
    state: NodeState
    host: str
    pid: int
    version: str
    started_at: datetime
    heartbeat_at: datetime = Field(default_factory=utcnow)
    incarnation: int = 1
    addresses: dict[str, str] = Field(default_factory=dict)  # protocol -> host:port
    load: dict[str, float] = Field(default_factory=dict)      # e.g. {"sessions": 3}
    drained: bool = False  # NOT_READY and nothing left to finish
    reason: str = ""       # why the last transition happened
    faults: list[TaskFault] = Field(default_factory=list)  # last failures of owned tasks (colony.tasks)
    fault_count: int = 0   # every failure of an owned task since this process started
    drain_error: str = ""  # set when a requested drain failed; cleared by the next drain or ready

    def encode(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def decode(cls, data: bytes) -> NodeRecord:
        return cls.model_validate_json(data)
