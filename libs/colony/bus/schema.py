"""Create (or bring up to date) every stream and KV bucket of the bus contract.

Every process calls ``ensure_schema`` at start; it is idempotent, so the first one to start
creates the schema and the rest find it.  A config change that JetStream cannot apply in
place (for example a different retention) fails with a message that names the stream.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

from colony.bus import names
from colony.bus.connection import BUS_UNAVAILABLE, jetstream_not_enabled, while_unavailable
from colony.settings import Settings

log = logging.getLogger("colony.bus.schema")

DAY = 86400.0


class SchemaError(RuntimeError):
    pass


@dataclass(frozen=True)
class Buckets:
    nodes: KeyValueConfig
    leases: KeyValueConfig
    account_owners: KeyValueConfig
    sip_bindings: KeyValueConfig
    directory: KeyValueConfig
    rate_counters: KeyValueConfig
    secret_keys: KeyValueConfig
    outbound_delivered: KeyValueConfig
    mta_sts: KeyValueConfig
    dkim_keys: KeyValueConfig
    acl_grants: KeyValueConfig
    login_familiar: KeyValueConfig


def bucket_configs(settings: Settings) -> Buckets:
    r = settings.stream_replicas
    return Buckets(
        nodes=KeyValueConfig(
            bucket=names.BUCKET_NODES, history=5, ttl=settings.node_record_max_age,
            storage=StorageType.FILE, replicas=r,
            description="one record per running instance, refreshed by heartbeat",
        ),
        # The lease key expires by a per-message TTL on every lease write (a holder that stops
        # renewing loses it without anyone deleting it); the bucket's max age is how long the
        # controller's decisions, fenced by that lease in the same stream, are kept.
        leases=KeyValueConfig(
            bucket=names.BUCKET_LEASES, history=10, ttl=settings.controller_decision_max_age,
            storage=StorageType.FILE, replicas=r,
            description="the controller lease (its acquisition revision is the fencing epoch) and its fenced decisions",
        ),
        # As the controller lease once was: the max age *is* the account lease length, every
        # renewal restarts it, and a mailstore that stops renewing loses its accounts.
        account_owners=KeyValueConfig(
            bucket=names.BUCKET_ACCOUNT_OWNERS, history=5, ttl=settings.account_lease_ttl,
            storage=StorageType.FILE, replicas=r,
            description="per-account single-writer leases",
        ),
        sip_bindings=KeyValueConfig(
            bucket=names.BUCKET_SIP_BINDINGS, history=1, storage=StorageType.FILE, replicas=r,
            description="SIP registrations",
        ),
        directory=KeyValueConfig(
            bucket=names.BUCKET_DIRECTORY, history=1, storage=StorageType.FILE, replicas=r,
            description="domains, accounts and aliases as the edges need them",
        ),
        # Windows are a minute long; a key lives two windows (the sliding estimate reads the
        # previous one) and a concurrency share that its instance stops refreshing disappears.
        rate_counters=KeyValueConfig(
            bucket=names.BUCKET_RATE_COUNTERS, history=1, ttl=settings.rate_counter_max_age,
            storage=StorageType.FILE, replicas=r,
            description="flow-control counters shared by every edge and SIP farm member",
        ),
        # History 1 and purged on replacement: a shredded key must not survive as an old
        # revision (colony_admin/auth/sealing.py).
        secret_keys=KeyValueConfig(
            bucket=names.BUCKET_SECRET_KEYS, history=1, storage=StorageType.FILE, replicas=r,
            description="data keys of the secrets sealed in PROVISIONING (admin API only)",
        ),
        # Written after a remote 250, before the OUTBOUND job is acked: a job redelivered
        # after its edge died skips the recipients already delivered.  Outlives any retry.
        outbound_delivered=KeyValueConfig(
            bucket=names.BUCKET_OUTBOUND_DELIVERED, history=1, ttl=settings.outbound_max_age + DAY,
            storage=StorageType.FILE, replicas=r,
            description="outbound recipients delivered by a job not yet acked (exactly-once after a crash)",
        ),
        # MTA-STS policies the edges fetched (RFC 8461 §5.1: cached for max_age, at most a
        # year), so a policy outlives an edge's restart and an edge that never delivered to a
        # domain starts with the policy another edge learnt.
        mta_sts=KeyValueConfig(
            bucket=names.BUCKET_MTA_STS, history=1, ttl=366 * DAY, storage=StorageType.FILE, replicas=r,
            description="MTA-STS policies of destination domains (edges write and read)",
        ),
        # History 1: a rotated-out private key is gone, not kept as an old revision; never
        # in PROVISIONING (an event log keeps everything forever).
        dkim_keys=KeyValueConfig(
            bucket=names.BUCKET_DKIM_KEYS, history=1, storage=StorageType.FILE, replicas=r,
            description="DKIM signing keys per domain (admin API writes, edges read)",
        ),
        # Edges write a pair at most once a day per edge; the max age forgets a network that
        # stopped logging in (colony_edge.familiar).  Off (login_familiar_days 0): a day's
        # bucket nobody writes.
        login_familiar=KeyValueConfig(
            bucket=names.BUCKET_LOGIN_FAMILIAR, history=1, ttl=max(settings.login_familiar_days, 1.0) * DAY,
            storage=StorageType.FILE, replicas=r,
            description="client networks that logged in to an account (digests): exempt from its failed-login limit",
        ),
        # Owners' mail stores write (CAS), grantees' read: a hint, the ACL is in the journal.
        acl_grants=KeyValueConfig(
            bucket=names.BUCKET_ACL_GRANTS, history=1, storage=StorageType.FILE, replicas=r,
            description="shared folders: per grantee, the accounts granting it rights",
        ),
    )


def stream_configs(settings: Settings) -> list[StreamConfig]:
    """The streams of this instance's region (with the cross-region sources and mirror of
    ``colony.regions`` when ``settings.regions`` names a super cluster)."""
    from colony.regions import regional_stream_configs

    return regional_stream_configs(_stream_configs(settings), settings.region, settings.region_list, settings.primary)


def _stream_configs(settings: Settings) -> list[StreamConfig]:
    r = settings.stream_replicas
    base = StreamConfig(storage=StorageType.FILE, num_replicas=r, allow_direct=True, duplicate_window=120.0)
    return [
        replace(base, name=names.STREAM_PROVISIONING, subjects=[names.SUBJECTS_PROVISIONING],
                description="domain and account events: the source of truth for configuration"),
        # Bodies over mail_inline_max_bytes (at most 4 MiB, base64 in the JSON) go through
        # the mail_bodies object store, so 8 MiB holds any inline message with its envelope.
        replace(base, name=names.STREAM_MAIL, subjects=[names.SUBJECTS_MAIL],
                retention=RetentionPolicy.WORK_QUEUE, max_msg_size=8 * 1024 * 1024,
                description="inbound messages accepted by an edge and not yet stored"),
        replace(base, name=names.STREAM_OUTBOUND, subjects=[names.SUBJECTS_OUTBOUND],
                retention=RetentionPolicy.WORK_QUEUE, max_msg_size=64 * 1024 * 1024,
                description="mail waiting for remote delivery"),
        replace(base, name=names.STREAM_USAGE, subjects=[names.SUBJECTS_USAGE], max_age=800 * DAY,
                description="metering events that billing sums"),
        replace(base, name=names.STREAM_AUDIT, subjects=[names.SUBJECTS_AUDIT], max_age=800 * DAY,
                description="who did what through the admin API"),
        replace(base, name=names.STREAM_CLUSTER, subjects=[names.SUBJECTS_CLUSTER], max_age=30 * DAY,
                discard=DiscardPolicy.OLD,
                description="node state transitions, elections and drains"),
        # Limits retention, not a work queue: listing and showing must not consume; replay and
        # purge delete entries explicitly.  Same size limit as the queues whose jobs land here.
        replace(base, name=names.STREAM_DEAD_LETTERS, subjects=[names.SUBJECTS_DEAD_LETTERS],
                max_age=90 * DAY, max_msg_size=64 * 1024 * 1024,
                description="work-queue jobs that failed max_deliver times or were rejected; see colony dlq"),
    ]


async def ensure_schema(js: JetStreamContext, settings: Settings, deadline: float = 60.0, manage: bool = True) -> None:
    """Create or update the schema; with ``manage=False`` (a role whose bus identity may not
    create streams, see ``names.GRANTS``) wait until whoever may has created it."""
    if not manage:
        await _wait_for_schema(js, settings, deadline)
        return
    for config in stream_configs(settings):
        await _retrying(lambda c=config: _ensure_stream(js, c), config.name, deadline)
    from colony.regions import bucket_mirror, mirrored_buckets

    # A region other than the primary mirrors the primary's key buckets (colony.regions).
    mirrored = mirrored_buckets(settings)
    buckets = bucket_configs(settings)
    for kv in (getattr(buckets, f) for f in Buckets.__dataclass_fields__):  # every one: a list here missed a new one
        if kv.bucket in mirrored:
            config = bucket_mirror(kv.bucket, settings.primary, settings.stream_replicas)
            await _retrying(lambda c=config: _ensure_stream(js, c), config.name, deadline)
        else:
            await _retrying(lambda k=kv: _ensure_bucket(js, k), kv.bucket, deadline)
    for obj in object_store_configs(settings):
        await _retrying(lambda o=obj: _ensure_object_store(js, o), obj.bucket, deadline)


def object_store_configs(settings: Settings) -> list[ObjectStoreConfig]:
    # Bodies are shared by the per-domain MAIL messages of one transaction, so no single
    # consumer may delete one: the age limit does, long after any redelivery.
    return [ObjectStoreConfig(
        bucket=names.OBJECT_MAIL_BODIES, ttl=settings.mail_body_max_age, storage=StorageType.FILE,
        replicas=settings.stream_replicas,
        description="bodies of accepted inbound mail too large to travel inline in MAIL",
    )]


async def _ensure_object_store(js: JetStreamContext, config: ObjectStoreConfig) -> None:
    try:
        await js.create_object_store(config.bucket, config=config)
    except BadRequestError as exc:
        if exc.err_code != 10058:
            raise SchemaError(f"object store {config.bucket}: {exc.description}") from exc


def manages_schema(settings: Settings, role: str) -> bool:
    """On an authenticated bus only roles granted it create streams; on an open bus (no
    identity configured) every process creates what it needs, as it always did."""
    grant = names.GRANTS.get(str(role))
    return settings.nats_nkey_seed_file is None or (grant is not None and (grant.manage_schema or grant.everything))


def schema_streams(settings: Settings) -> dict[str, str]:
    """The JetStream stream behind every stream, bucket and object store of the schema, each
    with one subject it holds."""
    from colony.bus.permissions import kv_stream, object_stream

    from colony.regions import mirrored_buckets

    found = {c.name: c.subjects[0] for c in stream_configs(settings) if c.subjects}  # a mirror has none
    for f in Buckets.__dataclass_fields__:
        bucket = getattr(bucket_configs(settings), f).bucket
        if bucket not in mirrored_buckets(settings):  # likewise
            found[kv_stream(bucket)] = f"$KV.{bucket}.>"
    for store in object_store_configs(settings):
        found[object_stream(store.bucket)] = f"$O.{store.bucket}.C.>"
    return found


async def _wait_for_schema(js: JetStreamContext, settings: Settings, deadline: float) -> None:
    # By subject through STREAM.NAMES, which every identity may ask: STREAM.INFO of a stream
    # is granted only to the roles that use it.
    loop = asyncio.get_running_loop()
    until = loop.time() + deadline
    for stream, subject in schema_streams(settings).items():
        while True:
            unanswered: Exception | None = None   # the last ask got no answer: existence unknown
            try:
                if await js.find_stream_name_by_subject(subject) == stream:
                    break
            except NotFoundError:
                pass
            except BUS_UNAVAILABLE as exc:
                if jetstream_not_enabled(exc):   # not a schema still to come: say so now
                    raise SchemaError(f"stream {stream}: {exc}; enable JetStream for this role's account "
                                      "in the NATS servers' configuration") from None
                unanswered = exc
            if loop.time() >= until and unanswered is not None:
                raise SchemaError(f"stream {stream}: JetStream did not answer within {deadline:g}s "
                                  f"({str(unanswered) or type(unanswered).__name__}); is JetStream enabled on "
                                  "the NATS servers, and the cluster healthy?")
            if loop.time() >= until:
                raise SchemaError(f"stream {stream} does not exist after {deadline:g}s; this role may not create it: "
                                  f"start a controller first (it creates the schema)")
            await asyncio.sleep(0.5)


async def _retrying(step, what: str, deadline: float) -> None:
    """On a fresh replicated cluster, instances starting together make the meta leader busy
    and some stream creations time out (or get 503 while a group elects its leader); every
    step is idempotent, so try again."""
    try:
        return await while_unavailable(step, what, deadline, also=(_PeerOffline,), logger=log)
    except NatsTimeoutError:
        raise SchemaError(f"{what}: JetStream did not answer within {deadline:g}s; is the NATS cluster healthy?") from None
    except (*BUS_UNAVAILABLE, _PeerOffline) as exc:
        raise SchemaError(f"{what}: {exc}; is the NATS cluster healthy?") from None


class _PeerOffline(Exception):
    """Seen right after a server of a replicated cluster died: the server asked had not yet
    learnt of a stream that exists ("stream not found"), and creating it again found too few
    peers.  Both pass once the cluster has settled, so the step is tried again."""


PEER_OFFLINE = 10005  # "no suitable peers for placement"


_COMPARED = ("subjects", "retention", "max_age", "max_msg_size", "num_replicas", "discard", "description",
             "allow_direct", "duplicate_window", "max_msgs_per_subject")


def _differs(have: StreamConfig, want: StreamConfig) -> bool:
    from colony.regions import sources_differ

    if sources_differ(have, want):
        return True
    if want.subject_transform is not None and (
            have.subject_transform is None
            or (have.subject_transform.src, have.subject_transform.dest)
            != (want.subject_transform.src, want.subject_transform.dest)):
        return True
    for name in _COMPARED:
        a, b = getattr(have, name), getattr(want, name)
        if b is None:  # not ours to set: the server's default stands
            continue
        if isinstance(a, float) or isinstance(b, float):
            if abs((a or 0) - (b or 0)) > 1e-6:
                return True
        elif (a or None) != (b or None):
            return True
    return False


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            return
        except BadRequestError as exc:
            if exc.err_code == PEER_OFFLINE:
                raise _PeerOffline(f"stream {config.name}: {exc.description}") from exc
            if exc.err_code != 10058:  # created by a concurrent starter: fall through to update
                raise SchemaError(f"stream {config.name}: {exc.description}") from exc
        info = await js.stream_info(config.name)
    # Only change what differs: N instances starting together must not each send a
    # replicated stream update (on an R3 cluster that queues them all behind the meta leader).
    if not _differs(info.config, config):
        return
    try:
        await js.update_stream(config)
    except BadRequestError as exc:
        raise SchemaError(
            f"stream {config.name} exists with a configuration that cannot be changed in place "
            f"({exc.description}); migrate or delete it"
        ) from exc


async def _ensure_bucket(js: JetStreamContext, config: KeyValueConfig) -> None:
    try:
        await js.create_key_value(config)
    except BadRequestError as exc:
        if exc.err_code != 10058:
            raise SchemaError(f"bucket {config.bucket}: {exc.description}") from exc
        # Exists with another config (e.g. a changed TTL): apply ours to the backing stream.
        info = await js.stream_info(f"KV_{config.bucket}")
        stream = info.config
        stream.max_age = config.ttl or 0
        stream.max_msgs_per_subject = config.history
        stream.description = config.description
        try:
            await js.update_stream(stream)
        except BadRequestError as exc2:
            raise SchemaError(f"bucket {config.bucket}: {exc2.description}") from exc2


def sourcing_stream_configs(settings: Settings) -> list[StreamConfig]:
    """The streams of this region that source other regions' (MAIL everywhere, USAGE and AUDIT
    in the primary; none outside a super cluster)."""
    return [c for c in stream_configs(settings) if c.sources]


async def restart_source(js: JetStreamContext, config: StreamConfig, api: str) -> None:
    """Have the server set up afresh the source of ``config`` that reads ``api``.

    The server sets a source up again only when a stream update adds it (an update that leaves
    it as it was changes nothing, whatever its state), so this is two updates: without the
    source, then with it.  The re-added source finds its position as after any restart
    (``colony.regions``: MAIL from ``opt_start_seq``, USAGE and AUDIT from what they hold).
    Should the second update fail, the stream lacks that source until ``_ensure_stream`` puts
    it back (the controller does on its next look)."""
    without = replace(config, sources=[s for s in config.sources or []
                                       if not (s.external and s.external.api == api)])
    await js.update_stream(without)
    await js.update_stream(config)
