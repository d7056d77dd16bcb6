"""Typed, versioned events: every message Colony writes to a stream is one of these.

Wire form: a JSON object ``{"type": "...", "v": N, ...fields}``.  ``decode`` finds the model
by type; a version this code does not know raises ``UnknownEventVersion`` instead of guessing
(a newer producer may have changed the meaning of a field).  To change an event, add a new
model with the same ``type`` and a higher ``version`` and keep the old one readable.
"""

from __future__ import annotations

import orjson
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator


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
        # One pass through pydantic-core's serializer, the head spliced in front: events are
        # encoded on every hot path (bulk imports, projections), and this is ~4x cheaper
        # than model_dump + json.dumps.  Compact JSON, UTF-8 (not \uXXXX escapes).
        body = self.__pydantic_serializer__.to_json(self)
        cls = type(self)
        head = _ENCODE_HEAD.get(cls)
        if head is None:  # built once per class: it was a third of encoding a small event
            head = _ENCODE_HEAD[cls] = b'{"type":' + orjson.dumps(cls.type) + b',"v":' + str(cls.version).encode()
        return head + (b"," + body[1:] if len(body) > 2 else b"}")


_ENCODE_HEAD: dict[type[Event], bytes] = {}  # class -> b'{"type":"…","v":N' (what ``encode`` writes first)


_BY_HEAD: dict[bytes, type[Event]] = {}  # b'{"type":"…","v":N,' -> model, built lazily


def _head(kind: str, version: int) -> bytes:
    return b'{"type":' + orjson.dumps(kind) + b',"v":' + str(version).encode() + b","


def decode(data: bytes) -> Event:
    # Fast path (projections decode every event of the stream): what ``Event.encode`` wrote
    # starts with its type and version, and the rest is exactly the model's fields, which
    # pydantic-core validates straight from the JSON bytes.
    end = data.find(b",", data.find(b',"v":') + 5)
    if end > 0:
        if len(_BY_HEAD) != len(_REGISTRY):
            _BY_HEAD.clear()
            _BY_HEAD.update({_head(k, v): c for (k, v), c in _REGISTRY.items()})
        cls = _BY_HEAD.get(data[: end + 1])
        if cls is not None:
            try:
                return cls.__pydantic_validator__.validate_json(b"{" + data[end + 1 :])
            except ValueError:
                pass  # the general path below decides, and raises the same errors
    try:
        raw = orjson.loads(data)
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


class AccountAcquired(Event):
    """A mailstore became the single writer of an account.  Subject ``colony.cluster.owner``.

    ``epoch`` is the revision of the winning write in ``account_owners``; ``how`` is
    ``vacant`` (nobody held it), ``taken-over`` (the holder was proven gone: its delivery
    subject had no responders) or ``expired`` (the same lease revision was seen unrenewed for
    a whole lease length), with ``previous`` the holder it replaced; or ``rotated``: the
    holder itself moved to a new epoch to start a fresh journal segment.
    """

    type: ClassVar[str] = "cluster.account_acquired"
    address: str
    node_id: str
    epoch: int
    how: str = "vacant"
    previous: str | None = None


class AccountReleased(Event):
    """A mailstore gave an account up (``reason``: ``idle``, ``drain``, ``stopping``, or
    ``lost``: its renewal failed and it stopped writing).  Subject ``colony.cluster.owner``."""

    type: ClassVar[str] = "cluster.account_released"
    address: str
    node_id: str
    epoch: int
    reason: str


class DrainFailed(Event):
    """A requested drain could not finish (``error``); the instance stays NOT_READY and not
    drained until ``colony drain`` is asked again or ``colony ready``.  Subject ``colony.cluster.drain``."""

    type: ClassVar[str] = "cluster.drain_failed"
    node_id: str
    role: str
    error: str


class TaskFailed(Event):
    """An owned background task of an instance raised (``colony.tasks.TaskOwner``).

    Subject ``colony.cluster.task``.  ``restarting``: a loop that is started again after a
    back-off; otherwise the task is gone.  ``count``: failures of this task since the process started.
    """

    type: ClassVar[str] = "cluster.task_failed"
    node_id: str
    role: str
    task: str
    error: str
    context: str = ""
    count: int = 1
    restarting: bool = False


# --- usage (stream USAGE) ---------------------------------------------------------------

class UsageRecorded(Event):
    """One metering fact.  Subject ``colony.usage.<domain token>``.

    ``metric`` is one of ``storage_bytes`` (a gauge: the latest value counts), ``messages_in``,
    ``messages_out``, ``sip_call_seconds``, ``sip_registrations``, ``pop3_sessions``,
    ``pop3_session_seconds``, ``imap_sessions``, ``imap_session_seconds`` (counters: summed).
    """

    type: ClassVar[str] = "usage.recorded"
    domain: str
    account: str | None = None
    metric: str
    amount: float
    source: str = ""  # node id of the producer


USAGE_GAUGES = frozenset({"storage_bytes"})
USAGE_SUMS_PER_EVENT = 2_000   # a producer splits larger intervals: ~60 bytes each, well under max_payload


class UsageSummed(Event):
    """Many accounts' counter sums of one domain, from one producer over one interval.

    Subject ``colony.usage.<domain token>``, beside ``UsageRecorded``: one event where a
    ``UsageRecorded`` per account and metric cost a synced JetStream write and a projected
    row lookup each (at one REGISTER per account per interval, one write per REGISTER).
    ``sums`` is ``[[account or null, metric, amount], ...]`` -- counters only (a gauge's
    "latest value" is per event, so gauges stay ``UsageRecorded``), at most
    ``USAGE_SUMS_PER_EVENT`` of them.  Wire form::

        {"type":"usage.summed","v":1,"at":"2026-11-26T04:00:00Z","domain":"acme.example",
         "sums":[["alice@acme.example","sip_registrations",3.0],[null,"sip_call_seconds",61.5]],
         "source":"sipfarm-1"}

    The read model stores each entry as one usage row (``item`` = its index), so reports
    read both events alike and a cluster with producers of both versions meters correctly.
    """

    type: ClassVar[str] = "usage.summed"
    domain: str
    sums: list[tuple[str | None, str, float]] = Field(max_length=USAGE_SUMS_PER_EVENT)
    source: str = ""

    def records(self) -> list[UsageRecorded]:
        """The same facts as ``UsageRecorded`` events (same time, producer and domain)."""
        return [UsageRecorded(at=self.at, domain=self.domain, account=account, metric=metric, amount=amount,
                              source=self.source) for account, metric, amount in self.sums]

    @field_validator("sums")
    @classmethod
    def _counters_only(cls, sums: list[tuple[str | None, str, float]]) -> list[tuple[str | None, str, float]]:
        if any(metric in USAGE_GAUGES for _, metric, _ in sums):
            raise ValueError(f"gauges ({', '.join(sorted(USAGE_GAUGES))}) are sent as UsageRecorded, not summed")
        return sums


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


# --- provisioning (stream PROVISIONING) -------------------------------------------------
# One subject per aggregate (``names.provisioning_subject(kind, id)``): ``domain`` (name),
# ``address`` (``local@domain``: an account or an alias, so the two cannot collide),
# ``domain_alias`` (alias domain name), ``cos`` (class-of-service name), ``token`` (token id).
# Creation events carry the whole initial state; ``*Updated`` events carry only the
# changed fields in ``changes`` (already validated by the admin API's aggregate rules).


class DomainCreated(Event):
    """A domain (a tenant company) was provisioned.  Subject ``colony.prov.domain.<domain>``.

    ``branding`` and ``storage`` are the admin API's ``Branding`` and ``StorageLayout`` as dicts.
    """

    type: ClassVar[str] = "prov.domain_created"
    domain: str
    state: str = "active"
    home_region: str = ""
    cos: str | None = None
    branding: dict[str, Any] = Field(default_factory=dict)
    storage: dict[str, Any] = Field(default_factory=dict)
    dmarc_enforcement: str | None = None   # enforce / quarantine / none; None: the cluster's default


class DomainUpdated(Event):
    """Settings of a domain changed (``changes``: field -> new value).  Subject as DomainCreated."""

    type: ClassVar[str] = "prov.domain_updated"
    domain: str
    changes: dict[str, Any]


class DomainStateChanged(Event):
    """A domain was suspended or re-activated.  Subject as DomainCreated."""

    type: ClassVar[str] = "prov.domain_state_changed"
    domain: str
    state: str
    reason: str = ""


class DomainDeleted(Event):
    """A domain was removed (it had no accounts or aliases left).  Subject as DomainCreated.

    Also appended where no domain exists, as a *fence*, by whoever creates the same name as a
    domain alias (a name is one or the other; see the admin API's ``aggregates``).  Either way
    the domain does not exist afterwards.
    """

    type: ClassVar[str] = "prov.domain_deleted"
    domain: str


# A domain moving to another region (``colony.domain_move`` is the state machine
# and its theory of operation).  ``DomainMoveRequested`` is appended by the admin API
# (``POST /v1/domains/{d}/move``); the others are the controller driver's to append.
# One event per phase on the domain's own subject, so the directory's domain entry carries
# the phase to every edge and mail store, the flip changes ``home_region`` in the same
# append, and a move and a settings change of the domain conflict on its version.  ``epoch``
# is the lease revision of the controller that wrote the event.


class DomainMoveRequested(Event):
    """A system administrator asked for the domain to move.  Subject as DomainCreated."""

    type: ClassVar[str] = "prov.domain_move_requested"
    domain: str
    move_id: str
    source: str      # the home region when asked ("" for a domain that had none)
    target: str
    requested_by: str = ""


class DomainMoveRouting(Event):
    """New mail for the domain goes to the target region's MAIL; the source region's mail
    stores store none of it any more and send it on.  Subject as DomainCreated."""

    type: ClassVar[str] = "prov.domain_move_routing"
    domain: str
    move_id: str
    epoch: int


class DomainMoveCopying(Event):
    """The accounts whose storage is copied from the source region (those that existed when
    routing had settled).  Subject as DomainCreated."""

    type: ClassVar[str] = "prov.domain_move_copying"
    domain: str
    move_id: str
    accounts: list[str]
    epoch: int


class DomainMoveSealing(Event):
    """Logins for the domain get a temporary failure in every region and the source region's
    sessions are closed, so what users changed since the first copy is copied once more,
    with nobody changing it.  Subject as DomainCreated."""

    type: ClassVar[str] = "prov.domain_move_sealing"
    domain: str
    move_id: str
    epoch: int


class DomainMoveFlipped(Event):
    """``home_region`` is the target: logins and mail go there.  Subject as DomainCreated."""

    type: ClassVar[str] = "prov.domain_move_flipped"
    domain: str
    move_id: str
    target: str
    epoch: int


class DomainMoveDone(Event):
    """The source region's copy of the domain's storage is removed.  Subject as DomainCreated."""

    type: ClassVar[str] = "prov.domain_move_done"
    domain: str
    move_id: str
    epoch: int


class DomainMoveCancelled(Event):
    """A move still ``requested`` was withdrawn (nothing had been routed or copied).  Subject
    as DomainCreated."""

    type: ClassVar[str] = "prov.domain_move_cancelled"
    domain: str
    move_id: str
    cancelled_by: str = ""


class DomainMoveAccountCopied(Event):
    """One pass of one account's copy, as verified after it.  Subject
    ``colony.prov.domain_move.<domain>`` (progress, kept off the domain's own subject so a
    domain of many accounts does not fold thousands of events on every read).

    ``copy_pass`` 1 is the bulk copy while users still work in the source region, 2 the
    catch-up while sealed; ``source_position`` is the journal position the pass copied up
    to, where the next pass starts.  Verified when both sides count the same messages and
    their digests (over the sorted dedupe keys and body checksums) agree."""

    type: ClassVar[str] = "prov.domain_move_account_copied"
    domain: str
    move_id: str
    address: str
    copy_pass: int
    source_messages: int
    target_messages: int
    source_digest: str
    target_digest: str
    source_position: int = 0
    epoch: int


class DomainAliasCreated(Event):
    """``alias`` is another name of ``domain``.  Subject ``colony.prov.domain_alias.<alias>``."""

    type: ClassVar[str] = "prov.domain_alias_created"
    alias: str
    domain: str


class DomainAliasDeleted(Event):
    """Subject as DomainAliasCreated.

    Also the fence appended where no alias exists by whoever creates the same name as a domain
    (then ``domain`` equals ``alias``); see DomainDeleted.
    """

    type: ClassVar[str] = "prov.domain_alias_deleted"
    alias: str
    domain: str


class AccountCreated(Event):
    """An account (mailbox and SIP user) was created.  Subject ``colony.prov.address.<local@domain>``.

    Never a plaintext password: ``password_hash`` is argon2 (PHC string) or an imported hash,
    ``sip_ha1`` maps a digest algorithm (``MD5``, ``SHA-256``) to H(local:realm:password) with
    realm = domain; both sealed on the wire as ``sealed:1:<key id>:<base64url>`` (AES-256-GCM,
    key in the ``secret_keys`` bucket, colony_admin/auth/sealing.py).  Events from before
    sealing carry them in the clear.
    """

    type: ClassVar[str] = "prov.account_created"
    address: str
    domain: str
    name: str
    real_name: str = ""
    password_hash: str | None = None
    sip_ha1: dict[str, str] = Field(default_factory=dict)
    cos: str | None = None
    quota: int | None = None
    services: list[str] | None = None
    forwarding: list[str] = Field(default_factory=list)
    forward_keep_copy: bool = False   # forwarding also delivers to this mailbox (absent in older events: false)
    state: str = "active"


class AccountUpdated(Event):
    """Account settings changed (``changes``: field -> new value).  Subject as AccountCreated."""

    type: ClassVar[str] = "prov.account_updated"
    address: str
    changes: dict[str, Any]


class AccountPasswordSet(Event):
    """The account's password changed (hashes only, see AccountCreated).  Subject as AccountCreated."""

    type: ClassVar[str] = "prov.account_password_set"
    address: str
    password_hash: str
    sip_ha1: dict[str, str] = Field(default_factory=dict)


class AccountDeleted(Event):
    """Subject as AccountCreated."""

    type: ClassVar[str] = "prov.account_deleted"
    address: str


class AliasCreated(Event):
    """Mail to ``address`` goes to ``targets``.  Subject ``colony.prov.address.<local@domain>``."""

    type: ClassVar[str] = "prov.alias_created"
    address: str
    domain: str
    name: str
    targets: list[str]


class AliasUpdated(Event):
    """Subject as AliasCreated."""

    type: ClassVar[str] = "prov.alias_updated"
    address: str
    targets: list[str]


class AliasDeleted(Event):
    """Subject as AliasCreated."""

    type: ClassVar[str] = "prov.alias_deleted"
    address: str


class CosCreated(Event):
    """A Class of Service: limits and enabled services accounts inherit.  Subject ``colony.prov.cos.<name>``.

    ``limits`` is the admin API's ``CosLimits`` as a dict (services, quota, max message
    size, max recipients per message, sending rate).
    """

    type: ClassVar[str] = "prov.cos_created"
    name: str
    description: str = ""
    limits: dict[str, Any]


class CosUpdated(Event):
    """Subject as CosCreated."""

    type: ClassVar[str] = "prov.cos_updated"
    name: str
    changes: dict[str, Any]


class CosDeleted(Event):
    """Subject as CosCreated."""

    type: ClassVar[str] = "prov.cos_deleted"
    name: str


class ApiTokenCreated(Event):
    """An admin API token.  Subject ``colony.prov.token.<token id>``.

    Only ``secret_sha256`` is stored: hex HMAC-SHA256, keyed with the token's key in the
    ``secret_keys`` bucket, of the SHA-256 of the random secret (plain SHA-256 in events from
    before sealing); the token itself is shown once to whoever created it.  ``domain`` is set
    for domain administrators.
    """

    type: ClassVar[str] = "prov.token_created"
    token_id: str
    name: str
    role: str
    domain: str | None = None
    secret_sha256: str
    created_by: str = ""


class ApiTokenRevoked(Event):
    """Subject as ApiTokenCreated."""

    type: ClassVar[str] = "prov.token_revoked"
    token_id: str
