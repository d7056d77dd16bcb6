"""Controller decisions the NATS server itself refuses from a deposed controller.

What a decision is
    Something only the active controller may decide and that must not happen twice or
    against its successor's will: an instance declared FAILED today; an account's mailstore
    ownership moved to another backend (a steal) and storage-layout moves next, each as a new
    ``Decision`` subclass here (its kind named in ``colony.bus.names``).  Each is one typed
    model, stored as the value of a key ``decision.<kind>.<target>``
    (``names.decision_key``) in the ``cluster_leases`` bucket, beside the controller lease.

Why beside the lease
    NATS checks ``Nats-Expected-Last-Subject-Sequence-Subject`` only within one stream, so
    the decisions live in the lease's stream (``KV_cluster_leases``).  ``publish_decision``
    writes with the lease subject and *my* lease revision as the expected last sequence
    (``Lease.publish_fenced``): once another controller has taken the lease, or it expired
    or was given up, the server answers error 10071 and nothing is written, even if the
    writer was paused for a minute and still believes it leads.  The lease key expires by a
    per-message TTL; the bucket's max age (``controller_decision_max_age``) is how long
    decisions are kept.

The API (for the controller, ownership steals and storage-layout moves)
    ``seq = await publish_decision(lease, decision)``
        ``lease`` is the controller's ``colony.cluster.lease.Lease`` (made with ``js`` and
        ``bucket``); ``decision`` is one of the models below with ``epoch`` and ``by`` filled
        in (``lease.epoch``, the controller's node id).  Returns the stream sequence (the
        key's new revision).  Raises ``LeaseLost`` (``FencedWriteRefused`` when it was the
        server that said no): the caller must not apply the decision and must stop acting as
        controller; the lease object is already dropped.  A NATS time-out leaves the outcome
        unknown; ``read_decision`` tells.
    Apply only what was accepted: publish the decision first, then make the change it
    authorises (the FAILED marking is then a CAS on the node record revision the decision
    names, so an instance that heartbeat meanwhile is still not marked).  Whoever carries a
    decision out (the new owner of an account, a layout mover) watches
    ``names.decision_filter(kind)`` on ``cluster_leases`` and trusts what it finds there:
    the server let only the lease holder of the time write it.
    Renewals and fenced writes share one lock in ``Lease``, so a renewal never invalidates a
    decision in flight.

Wire format: the key's value is the model's JSON, e.g. for ``decision.node-failed.edge-1``::

    {"kind": "node-failed", "epoch": 7, "by": "controller-2", "at": "2026-01-01T03:12:00Z",
     "node_id": "edge-1", "role": "edge", "judged_revision": 412, "reason": "no heartbeat for 5s"}
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel, Field, ValidationError

from colony.bus import names
from colony.cluster.lease import Lease
from colony.events import utcnow


class Decision(BaseModel):
    """Common fields: which kind, under which epoch, by whom, when."""

    kind: str
    epoch: int = Field(gt=0)
    by: str
    at: datetime = Field(default_factory=utcnow)

    KIND: ClassVar[str] = ""

    def target(self) -> str:
        """What the decision is about: the last part of its key."""
        raise NotImplementedError

    def key(self) -> str:
        return names.decision_key(self.kind, self.target())

    def encode(self) -> bytes:
        return self.model_dump_json().encode()


class NodeFailed(Decision):
    """The controller judged ``node_id`` dead at record revision ``judged_revision``.

    Key ``decision.node-failed.<node>``.  The node record is then marked FAILED by a CAS on
    that revision (it stays READY if the instance heartbeat meanwhile).
    """

    KIND: ClassVar[str] = names.DECISION_NODE_FAILED
    kind: str = names.DECISION_NODE_FAILED
    node_id: str
    role: str
    judged_revision: int
    reason: str

    def target(self) -> str:
        return self.node_id


# Every kind this version knows; a new kind is a subclass above with its name in colony.bus.names.
KINDS: tuple[type[Decision], ...] = (NodeFailed,)


async def publish_decision(lease: Lease, decision: Decision) -> int:
    """Write ``decision`` if and only if ``lease`` is still the controller lease; see the module docstring."""
    return await lease.publish_fenced(names.kv_subject(names.BUCKET_LEASES, decision.key()), decision.encode())


def decode_decision(data: bytes) -> Decision | None:
    """The typed decision, or None for a kind this version does not know or a malformed value."""
    try:
        kind = Decision.model_validate_json(data).kind
        model = next((k for k in KINDS if k.KIND == kind), None)
        return model.model_validate_json(data) if model else None
    except ValidationError:
        return None


async def read_decision(kv: KeyValue, kind: str, target: str) -> tuple[Decision, int] | None:
    """The last decision of ``kind`` about ``target`` with its revision, if there is one."""
    try:
        entry = await kv.get(names.decision_key(kind, target))
    except KeyNotFoundError:
        return None
    decision = decode_decision(entry.value or b"")
    return (decision, entry.revision) if decision else None
