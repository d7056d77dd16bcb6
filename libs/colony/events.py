"""Typed, versioned events: every message Colony writes to a stream is one of these.

Wire form: a JSON object ``{"type": "...", "v": N, ...fields}``.  ``decode`` finds the model
by type; a version this code does not know raises ``UnknownEventVersion`` instead of guessing
(a newer producer may have changed the meaning of a field).  To change an event, add a new
model with the same ``type`` and a higher ``version`` and keep the old one readable.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field


class UnknownEvent(ValueError):
    pass


class UnknownEventVersion(UnknownEvent):
    pass


def utcnow() -> datetime:
    return datetime.now(UTC)


_REGISTRY: dict[tuple[str, int], type[Event]] = {}


class Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    type: ClassVar[str]
    version: ClassVar[int] = 1
    at: datetime = Field(default_factory=utcnow)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "type" in cls.__dict__:
            key = (cls.type, cls.version)
            if key in _REGISTRY:
                raise TypeError(f"event {key} defined twice")
            _REGISTRY[key] = cls

    def encode(self) -> bytes:
        body = self.model_dump(mode="json")
        return json.dumps({"type": self.type, "v": self.version, **body}, separators=(",", ":")).encode()


def decode(data: bytes) -> Event:
    try:
        raw = json.loads(data)
        kind, version = raw.pop("type"), raw.pop("v")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UnknownEvent(f"not a Colony event: {data[:80]!r}") from exc
    cls = _REGISTRY.get((kind, version))
    if cls is None:
        known = sorted(v for (t, v) in _REGISTRY if t == kind)
        if known:
            raise UnknownEventVersion(f"event {kind!r} version {version} is unknown here (known: {known})")
        raise UnknownEvent(f"unknown event type {kind!r}")
    return cls.model_validate(raw)


# --- cluster (stream CLUSTER) ----------------------------------------------------------

class NodeStateChanged(Event):
    """An instance moved between STARTING, READY, NOT_READY, STOPPED and FAILED.

    Subject ``colony.cluster.node``.  ``by`` is who decided: the node itself, or the
    controller (with its epoch) when it declares a silent node FAILED.
    """

    type: ClassVar[str] = "cluster.node_state"
    node_id: str
    role: str
    old: str | None
    new: str
    reason: str = ""
    by: str = ""
    epoch: int = 0


class ControllerElected(Event):
    """A controller took the lease.  Subject ``colony.cluster.controller``."""

    type: ClassVar[str] = "cluster.controller_elected"
    node_id: str
    epoch: int
    previous: str | None = None
    how: str = ""  # "vacant", "expired", "taken-over" (previous holder proven gone)


class NodeDrained(Event):
    """A NOT_READY instance has no work left and may be stopped.  Subject ``colony.cluster.drain``."""

    type: ClassVar[str] = "cluster.node_drained"
    node_id: str
    role: str


# --- usage (stream USAGE) ---------------------------------------------------------------

class UsageRecorded(Event):
    """One metering fact.  Subject ``colony.usage.<domain token>``.

    ``metric`` is one of ``storage_bytes`` (a gauge: the latest value counts), ``messages_in``,
    ``messages_out``, ``sip_call_seconds``, ``sip_registrations`` (counters: summed).
    """

    type: ClassVar[str] = "usage.recorded"
    domain: str
    account: str | None = None
    metric: str
    amount: float
    source: str = ""  # node id of the producer


# --- audit (stream AUDIT) ---------------------------------------------------------------

class AuditRecorded(Event):
    """Who did what through the admin API.  Subject ``colony.audit.<domain token|_system>``."""

    type: ClassVar[str] = "audit.recorded"
    actor: str
    role: str
    action: str
    target: str
    domain: str | None = None
    remote_addr: str | None = None
    outcome: str = "ok"
    detail: dict[str, Any] = Field(default_factory=dict)
