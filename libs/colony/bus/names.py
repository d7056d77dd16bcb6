"""Every stream, KV bucket and subject Colony uses: the bus contract, in one place.

Nothing else in the code base spells a subject or bucket name as a literal.  Variable parts
(node ids, domains, accounts) always go through ``colony.bus.tokens.to_token``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from colony.bus.tokens import to_token

# --- KV buckets (DESIGN §3) -----------------------------------------------------------
BUCKET_NODES = "cluster_nodes"          # one key per instance: its NodeRecord
BUCKET_LEASES = "cluster_leases"        # the controller lease and its fenced decisions
BUCKET_ACCOUNT_OWNERS = "account_owners"  # per-account single-writer leases
BUCKET_SIP_BINDINGS = "sip_bindings"    # SIP registrations
BUCKET_DIRECTORY = "directory"          # what edges need to route without a round trip
BUCKET_RATE_COUNTERS = "rate_counters"  # flow-control counters shared by every edge and farm member
BUCKET_DKIM_KEYS = "dkim_keys"            # DKIM signing keys per domain (history 1): admin API writes, edges sign
BUCKET_OUTBOUND_DELIVERED = "outbound_delivered"  # recipients an edge delivered, until the job is acked
BUCKET_MTA_STS = "mta_sts"                # MTA-STS policies edges fetched (RFC 8461 cache that outlives a restart)
BUCKET_SECRET_KEYS = "secret_keys"      # data keys sealing PROVISIONING's secrets: the admin API's only
BUCKET_ACL_GRANTS = "acl_grants"        # shared folders: per grantee, the owners granting it something
BUCKET_LOGIN_FAMILIAR = "login_familiar"  # (account, client network) pairs that logged in: exempt from the account lock

CONTROLLER_LEASE_KEY = "controller"

# Controller decisions: keys of BUCKET_LEASES, fenced by the controller lease (colony.cluster.decisions).
DECISION_NODE_FAILED = "node-failed"  # an instance declared FAILED


def decision_key(kind: str, target: str) -> str:
    """``decision.<kind>.<token of target>`` in ``cluster_leases``: the last decision of one kind about one thing."""
    return f"decision.{to_token(kind)}.{to_token(target)}"


def decision_filter(kind: str) -> str:
    """Every decision of one kind, for ``kv.watch``."""
    return f"decision.{to_token(kind)}.>"


def kv_subject(bucket: str, key: str) -> str:
    """The stream subject of a KV key, for writes that need headers nats-py's KV API cannot send."""
    return f"$KV.{bucket}.{key}"


# --- object stores -----------------------------------------------------------------------
OBJECT_MAIL_BODIES = "mail_bodies"      # bodies of accepted mail too large to travel inline

# --- Streams ----------------------------------------------------------------------------
STREAM_PROVISIONING = "PROVISIONING"
STREAM_MAIL = "MAIL"
STREAM_OUTBOUND = "OUTBOUND"
STREAM_USAGE = "USAGE"
STREAM_AUDIT = "AUDIT"
STREAM_CLUSTER = "CLUSTER"  # cluster events: node transitions, elections, drains
STREAM_DEAD_LETTERS = "DEAD_LETTERS"  # work-queue jobs that failed max_deliver times or were rejected

SUBJECTS_PROVISIONING = "colony.prov.>"
SUBJECTS_MAIL = "colony.mail.>"
SUBJECTS_OUTBOUND = "colony.outbound.>"
SUBJECTS_USAGE = "colony.usage.>"
SUBJECTS_AUDIT = "colony.audit.>"
SUBJECTS_CLUSTER = "colony.cluster.>"
SUBJECTS_DEAD_LETTERS = "colony.dlq.>"

# --- Regions (super cluster over leafnodes, colony.regions) ------------------------------
HUB_JS_DOMAIN = "hub"  # JetStream domain of the hub server the regions' leafnodes join

# Subjects a region's own streams and buckets capture: they stay in their region (the leafnode
# links deny them both ways), or one publish would be stored by every region listening.  So do
# the subjects addressed to one instance or to "the" controller: instance ids repeat between
# regions (each has its edge-1, controller-1), so `drain edge-1` or a standby's liveness
# question would otherwise also reach, and be answered by, the namesake in another region.
# What crosses is JetStream API traffic of other domains (sources, mirrors, reads) and the
# cluster-wide request/reply services (auth, directory), whose queue groups prefer local members.
REGION_LOCAL_SUBJECTS = (SUBJECTS_PROVISIONING, SUBJECTS_MAIL, SUBJECTS_OUTBOUND, SUBJECTS_USAGE,
                         SUBJECTS_AUDIT, SUBJECTS_CLUSTER, SUBJECTS_DEAD_LETTERS, "$KV.>", "$O.>",
                         "colony.ctl.>", "colony.node.>", "colony.mailstore.>", "colony.sip.>",
                         "colony.admin.>")


def js_domain(region: str) -> str:
    """The JetStream domain of a region (each region is its own JetStream)."""
    return to_token(region)


def js_api_prefix(region: str) -> str:
    """Where another region's JetStream API answers: ``external.api`` of sources and mirrors."""
    return f"$JS.{js_domain(region)}.API"


def provisioning_subject(aggregate_type: str, aggregate_id: str) -> str:
    """One subject per aggregate, so optimistic concurrency can check its last sequence."""
    return f"colony.prov.{aggregate_type}.{to_token(aggregate_id)}"


# Inbound mail of a region is split into this many partitions by final mailbox; a mail store
# consumes the partitions rendezvous hashing gives it and owns their accounts, so most mail is
# stored where it is fetched instead of being forwarded to the owner.  A cluster constant:
# edges and mail stores must agree (changing it moves accounts, as a membership change does).
MAIL_PARTITIONS = 8


def mail_partition(mailbox: str) -> int:
    """The partition of a final mailbox: the same in every process (unlike ``hash``) and
    evenly spread over similar names (unlike crc32, whose low bits follow the last letters)."""
    digest = hashlib.blake2s(mailbox.lower().encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % MAIL_PARTITIONS


def mail_partition_key(partition: int) -> str:
    """What rendezvous hashing places, for a partition and for each account in it."""
    return f"mail-partition-{partition}"


def mail_subject(region: str, domain: str, partition: int | None = None) -> str:
    """Accepted inbound mail for one recipient domain (``colony.contracts.mail.InboundMail``),
    in the partition of its first recipient (``mail_partition``); without one, the
    unpartitioned subject that older edges used (still consumed)."""
    base = f"colony.mail.{to_token(region)}.{to_token(domain)}"
    return base if partition is None else f"{base}.{partition}"


# Mail an edge publishes straight into another region's MAIL across the link (the recipient's
# home region; ``colony.regions``).  ``colony.mail.>`` never crosses (REGION_LOCAL_SUBJECTS),
# so the home MAIL also takes ``colony.mailhome.<its region>.>`` and stores it, by a subject
# transform, as ``colony.mail.<region>...``: its stores, filters and sources see the one
# subject scheme.  Only the home region's MAIL takes a region's mailhome subjects, so the
# publish is stored once, and its JetStream ack comes from the home region.
SUBJECTS_MAIL_HOME = "colony.mailhome.>"


def mail_home_subject(region: str, domain: str, partition: int) -> str:
    """``mail_subject(region, domain, partition)`` as published from another region into
    ``region``'s MAIL directly."""
    return f"colony.mailhome.{to_token(region)}.{to_token(domain)}.{partition}"


def mail_home_filter(region: str) -> str:
    """What ``region``'s MAIL takes from other regions' edges (and transforms into its mail subjects)."""
    return f"colony.mailhome.{to_token(region)}.>"


def mail_region_filter(region: str) -> str:
    """All inbound mail of one region (partitioned or not): what other regions source."""
    return f"colony.mail.{to_token(region)}.>"


def mail_unpartitioned_filter(region: str) -> str:
    """A region's inbound mail without a partition (``mail_subject(region, domain)``)."""
    return f"colony.mail.{to_token(region)}.*"


def mail_partition_filter(region: str, partition: int) -> str:
    """One partition of a region's inbound mail: one work-queue consumer each (filters of a
    work-queue stream may not overlap, and these do not: they differ in the last token, and
    in token count from the unpartitioned filter)."""
    return f"colony.mail.{to_token(region)}.*.{partition}"


def outbound_subject(destination: str) -> str:
    """Mail waiting for remote delivery to one destination domain
    (``colony.contracts.outbound.OutboundMail``); a filter per destination lists its queue."""
    return f"colony.outbound.{to_token(destination)}"


OUTBOUND_CONSUMER = "outbound"  # durable pull consumer of OUTBOUND, shared by every edge


def usage_subject(domain: str) -> str:
    return f"colony.usage.{to_token(domain)}"


def audit_subject(domain: str | None) -> str:
    return f"colony.audit.{to_token(domain) if domain else '_system'}"


def cluster_event_subject(kind: str) -> str:
    return f"colony.cluster.{kind}"


def dead_letter_subject(stream: str) -> str:
    """Where a dead job of work-queue ``stream`` is kept, e.g. ``colony.dlq.mail`` (stream names
    are upper case by convention and folded here; the exact name travels in the entry)."""
    return f"colony.dlq.{to_token(stream.lower())}"


# --- Request/reply ----------------------------------------------------------------------
CONTROLLER_API = "colony.ctl.api"  # served by the active controller only


def controller_alive_subject(node_id: str) -> str:
    """The active controller answers here; 'no responders' proves its connection is gone."""
    return f"colony.ctl.alive.{to_token(node_id)}"


def node_command_subject(node_id: str) -> str:
    """Epoch-stamped commands from the controller to one instance."""
    return f"colony.node.cmd.{to_token(node_id)}"


def mailstore_deliver_subject(node_id: str) -> str:
    """Deliveries another mailstore forwards to the owner of the accounts (request/reply,
    ``colony_mailstore.forward``); 'no responders' proves the owner's connection is gone."""
    return f"colony.mailstore.deliver.{to_token(node_id)}"


MAILSTORE_DELIVER = "colony.mailstore.deliver.*"  # pattern of the above, for permissions


def mailstore_shared_subject(node_id: str) -> str:
    """A grantee's IMAP call on a shared folder, sent to the mail store owning the folder's
    account (request/reply, ``colony_mailstore.sharing``)."""
    return f"colony.mailstore.shared.{to_token(node_id)}"


MAILSTORE_SHARED = "colony.mailstore.shared.*"  # pattern of the above, for permissions


# A domain move's questions from the primary region's controller to another region's mail
# stores (colony_controller.domain_mover.MovePort).  They must cross the leafnode link, so they
# live under their own prefix: ``colony.mailstore.>`` is region-local (REGION_LOCAL_SUBJECTS).
# The region is a token of the subject, so a request reaches only that region's stores (a
# queue group there: one store answers, asking its region's peers itself when it needs them).
MOVE_PULL = "pull"          # (a) pull one account from the source region, holding its lock
MOVE_SESSIONS = "sessions"  # (b) the source region's open sessions of a domain
MOVE_REMOVE = "remove"      # (c) remove the domain's copy from the source region after `flipped`
MOVE_VERBS = (MOVE_PULL, MOVE_SESSIONS, MOVE_REMOVE)


def domain_move_subject(region: str, verb: str) -> str:
    """Where ``region``'s mail stores answer one of a domain move's questions (request/reply)."""
    if verb not in MOVE_VERBS:
        raise ValueError(f"unknown domain-move request {verb!r}; one of {', '.join(MOVE_VERBS)}")
    return f"colony.move.{to_token(region)}.{verb}"


def domain_move_requests_of(region: str) -> str:
    """What one region's mail stores subscribe to: only their own region's questions (the
    permissions' pattern below would also hear every other region's)."""
    return f"colony.move.{to_token(region)}.*"


DOMAIN_MOVE_REQUESTS = "colony.move.*.*"  # pattern of the above, for permissions
QUEUE_DOMAIN_MOVE = "domain-move"          # the queue group a region's mail stores serve them in


def mailstore_move_subject(node_id: str, verb: str) -> str:
    """A domain move's question passed on by the region's store that took it (queue group
    ``QUEUE_DOMAIN_MOVE``) to one peer of its region: ``pull`` to the account's owner,
    ``sessions``/``remove`` to every store (``colony_mailstore.moves``).  Region-local."""
    if verb not in MOVE_VERBS:
        raise ValueError(f"unknown domain-move request {verb!r}; one of {', '.join(MOVE_VERBS)}")
    return f"colony.mailstore.move.{to_token(node_id)}.{verb}"


MAILSTORE_MOVE = "colony.mailstore.move.*.*"  # pattern of the above, for permissions


def acl_grant_key(grantee: str, domain: str | None = None) -> str:
    """Key of ``BUCKET_ACL_GRANTS`` for a grantee address, or for ``anyone`` of ``domain``
    (upper case: ``to_token`` never makes it, so no address can collide)."""
    if grantee == "anyone":
        return f"ANYONE.{to_token(domain or '')}"
    return f"USER.{to_token(grantee.lower())}"
MAILSTORE_CONSUMER = "mailstore"  # durable pull consumer of a region's MAIL, shared by its mailstores
OWNER_EVENTS = "owner"            # cluster_event_subject kind of account-ownership events


def account_owner_key(address: str) -> str:
    """Key of an account's single-writer lease in ``account_owners`` (address = local@domain)."""
    return to_token(address)


AUTH_CHECK = "colony.auth.check"          # password check for the cluster (queue group)
AUTH_SIP_CREDENTIALS = "colony.auth.sip"  # SIP digest credentials (HA1) for the farm
DIRECTORY_LOOKUP = "colony.dir.lookup"          # one directory entry (colony.contracts.directory)
DIRECTORY_RECIPIENTS = "colony.dir.recipients"  # recipient resolution (colony.contracts.recipients)
DIRECTORY_DOMAIN_ACCOUNTS = "colony.dir.accounts"  # a domain's accounts, a page at a time (colony.contracts.directory)

QUEUE_ADMIN = "admin-api"

# Core NATS, fire and forget: projectors announce how far the admin read model is
# (colony_admin.projections.position.ReadModelPosition), admin APIs wait on it.
ADMIN_READMODEL_POSITIONS = "colony.admin.readmodel.position"


def consumer_next_subject(stream: str, consumer: str) -> str:
    """JetStream's pull request subject for one consumer (JSON body ``{"batch", "expires",
    "no_wait"}``; the messages and a final status go to the request's reply subject)."""
    return f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"


def node_key(node_id: str) -> str:
    return to_token(node_id)


def sip_binding_key(account: str) -> str:
    """Every registered contact of one account in ``sip_bindings``: ``b.<token of local@domain>``
    (one key per account, updated by compare-and-set, so one read finds all its devices)."""
    return f"b.{to_token(account)}"


SIP_BINDING_KEYS = "b.>"    # every sip_binding_key, for a farm member's watch of binding changes


def sip_dialog_key(dialog_id: str) -> str:
    """A call in progress in ``sip_bindings`` (for its duration metering): ``d.<hex id>``."""
    return f"d.{dialog_id}"


SIP_RELAY = "colony.sip.relay.*"     # pattern of sip_relay_subject, for permissions


def sip_relay_subject(node_id: str) -> str:
    """Core NATS: SIP bytes another farm member must put on a connection it holds."""
    return f"colony.sip.relay.{to_token(node_id)}"


SIP_SPREAD = "colony.sip.spread.*"   # pattern of sip_spread_subject, for permissions


def sip_spread_subject(node_id: str) -> str:
    """Core NATS request/reply: a new SIP transaction for the member its Call-ID hashes to
    (binary frames, ``colony_sipfarm.spread_frames``)."""
    return f"colony.sip.spread.{to_token(node_id)}"


# The previous version's hand-over (JSON + base64 frames on ``colony.sip.handle.<member>``),
# still granted so that members of that version go on handing new work to each other while a
# farm is upgraded member by member.  Nothing of this version sends or serves there: a member
# of the new version asking an old one gets no responders and handles the packet itself.
SIP_HANDLE = "colony.sip.handle.*"


SIP_NONCE_SECRET_KEY = "farm.nonce-secret"  # in sip_bindings: the farm-wide digest nonce secret


# --- provisioning aggregates (one subject each, see colony.events) -------------------------
AGG_DOMAIN = "domain"
AGG_ADDRESS = "address"            # an account or an alias: one namespace per domain
AGG_DOMAIN_ALIAS = "domain_alias"
AGG_COS = "cos"
AGG_TOKEN = "token"
AGG_DOMAIN_MOVE = "domain_move"      # a domain move's per-account progress (not in the directory)


def provisioning_filter(aggregate_type: str) -> str:
    """Every aggregate of one kind, e.g. all tokens."""
    return f"colony.prov.{aggregate_type}.*"


def directory_key(kind: str, name: str) -> str:
    """Key in the ``directory`` bucket: ``domain.<token>``, ``address.<token>``, ``cos.<token>``,
    ``domain_alias.<token>``; the value is the JSON the edges need (``colony.contracts.directory`` documents it)."""
    return f"{kind}.{to_token(name)}"


def rate_counter_key(kind: str, subject: str, window: int) -> str:
    """A windowed rate counter: ``rate.<kind>.<token of ip/domain/account>.<window index>``."""
    return f"rate.{kind}.{to_token(subject)}.{window}"


def concurrency_key(kind: str, subject: str, node_id: str) -> str:
    """One instance's share of a concurrency gauge (e.g. sessions from one IP)."""
    return f"conc.{kind}.{to_token(subject)}.{to_token(node_id)}"


# --- who may do what on the bus --------------------------------------------------------------
# Patterns of the per-instance subjects above, for permissions (a ``*`` is never a token).
NODE_COMMANDS = "colony.node.cmd.*"
CONTROLLER_ALIVE = "colony.ctl.alive.*"

ROLE_OPERATOR = "operator"  # `colony up`, the `colony` CLI, tests: every right, schema included


@dataclass(frozen=True)
class Grant:
    """What one role may do on the bus, in the contract's own names.

    ``colony.bus.permissions`` turns a grant into the NATS server's publish/subscribe
    permissions (JetStream API subjects, ``$KV``/``$O`` subjects, acks, flow control, the
    identity's private inbox); the server enforces them, so a role cannot do what is not
    written here.  Everything not granted is refused: deleting a stream or purging one is
    granted to nobody but the operator.

    To give a role something new, add the name above and one entry to its grant below:
    ``append`` for a stream subject it publishes into, ``read`` for a stream it reads or
    follows with a consumer, ``consume`` for a work queue it takes jobs from (read,
    deleting a dead job, copying one to DEAD_LETTERS), ``kv_write``/``kv_read`` for
    buckets, ``obj_write``/``obj_read``
    for object stores, ``call`` for a core subject it sends to (a request or an announcement),
    ``serve`` for a request subject it answers, ``listen`` for announcements it follows,
    ``info`` for a stream whose state (``STREAM.INFO``) it may read and nothing more.
    ``tests/integration/test_bus_auth.py`` runs the real server against this table.
    """

    append: tuple[str, ...] = ()
    read: tuple[str, ...] = ()
    consume: tuple[str, ...] = ()
    kv_write: tuple[str, ...] = ()
    kv_read: tuple[str, ...] = ()
    obj_write: tuple[str, ...] = ()
    obj_read: tuple[str, ...] = ()
    call: tuple[str, ...] = ()
    serve: tuple[str, ...] = ()
    listen: tuple[str, ...] = ()
    info: tuple[str, ...] = ()
    manage_schema: bool = False  # may create and update streams and buckets (never delete)
    everything: bool = False     # no restriction at all: the operator only


# Every instance runs colony.cluster.node.NodeRuntime: its record, the lease watch, cluster
# events and the controller's commands.
_INSTANCE = Grant(
    append=(SUBJECTS_CLUSTER,),
    kv_write=(BUCKET_NODES,),
    kv_read=(BUCKET_LEASES,),
    serve=(NODE_COMMANDS,),
)


def _with(base: Grant, **more: tuple[str, ...] | bool) -> Grant:
    merged = {}
    for name, value in more.items():
        merged[name] = value if isinstance(value, bool) else tuple(dict.fromkeys(getattr(base, name) + value))
    return replace(base, **merged)


GRANTS: dict[str, Grant] = {
    ROLE_OPERATOR: Grant(everything=True),
    # Only controllers write the lease bucket (the lease and the decisions it fences) and
    # mark other instances FAILED; they keep the schema up to date.
    "controller": _with(
        _INSTANCE, manage_schema=True,
        # Domain moves (colony_controller.domain_mover): it reads a domain's events and appends
        # the move's phases to the domain's subject and its progress to the move's; no other
        # provisioning subject (accounts, tokens, ...) is writable by it.
        append=(provisioning_filter(AGG_DOMAIN), provisioning_filter(AGG_DOMAIN_MOVE)),
        read=(STREAM_CLUSTER, STREAM_PROVISIONING),
        kv_write=(BUCKET_LEASES, BUCKET_ACCOUNT_OWNERS),
        kv_read=(BUCKET_DIRECTORY,),
        # CONTROLLER_API: `docker compose run controller colony drain ...` asks as a controller
        # DOMAIN_MOVE_REQUESTS: the primary's controller asks a region's mail stores to pull an
        # account, count a domain's sessions or remove its copy (colony_controller.domain_mover);
        # DIRECTORY_DOMAIN_ACCOUNTS: the accounts a move copies, from the admin API's read model
        call=(NODE_COMMANDS, CONTROLLER_ALIVE, CONTROLLER_API, DOMAIN_MOVE_REQUESTS, DIRECTORY_DOMAIN_ACCOUNTS),
        serve=(CONTROLLER_API, CONTROLLER_ALIVE),
    ),
    # An edge sees the world through the directory and the password check; it cannot read
    # PROVISIONING (password hashes), ask for SIP credentials or touch any stream's config.
    "edge": _with(
        _INSTANCE,
        # OUTBOUND: submission and DSNs; USAGE: messages out; DEAD_LETTERS: the outbound runner.
        # AUDIT: a submitting account throttled for its sending rate.
        # MAIL_HOME: mail for a domain homed in another region, into that region's MAIL
        # across the link (colony_edge.acceptance); the only role that publishes there.
        append=(SUBJECTS_MAIL, SUBJECTS_MAIL_HOME, SUBJECTS_OUTBOUND, SUBJECTS_USAGE, SUBJECTS_DEAD_LETTERS,
                SUBJECTS_AUDIT),
        consume=(STREAM_OUTBOUND,),
        # MAIL's state: whether mail it stored here for another region is still waiting for
        # that region's source before it sends that region's mail across again
        info=(STREAM_MAIL,),
        kv_write=(BUCKET_RATE_COUNTERS, BUCKET_OUTBOUND_DELIVERED, BUCKET_MTA_STS, BUCKET_LOGIN_FAMILIAR),
        kv_read=(BUCKET_DIRECTORY, BUCKET_ACCOUNT_OWNERS, BUCKET_DKIM_KEYS),
        obj_write=(OBJECT_MAIL_BODIES,),
        call=(AUTH_CHECK, DIRECTORY_LOOKUP, DIRECTORY_RECIPIENTS),
    ),
    "mailstore": _with(
        _INSTANCE,
        # MAIL: mail for a domain moving away, still reaching this region, is sent on to the
        # move's target region (colony_mailstore.delivery)
        append=(SUBJECTS_OUTBOUND, SUBJECTS_USAGE, SUBJECTS_DEAD_LETTERS, SUBJECTS_MAIL),
        consume=(STREAM_MAIL,),
        kv_write=(BUCKET_ACCOUNT_OWNERS, BUCKET_ACL_GRANTS),
        kv_read=(BUCKET_DIRECTORY,),
        obj_write=(OBJECT_MAIL_BODIES,),  # deletes a body once the message is stored
        # MAILSTORE_MOVE: a domain move's question passed on to the region's peers
        call=(AUTH_CHECK, DIRECTORY_LOOKUP, DIRECTORY_RECIPIENTS, MAILSTORE_DELIVER, MAILSTORE_SHARED,
              MAILSTORE_MOVE),
        # deliveries forwarded to the account's owner; grantees' calls on its shared folders;
        # a domain move's questions to its region (it never asks them itself) and their
        # parts passed on by a peer
        serve=(MAILSTORE_DELIVER, MAILSTORE_SHARED, DOMAIN_MOVE_REQUESTS, MAILSTORE_MOVE),
    ),
    "sipfarm": _with(
        _INSTANCE,
        append=(SUBJECTS_USAGE,),
        kv_write=(BUCKET_SIP_BINDINGS, BUCKET_RATE_COUNTERS),
        kv_read=(BUCKET_DIRECTORY,),
        call=(AUTH_SIP_CREDENTIALS, DIRECTORY_LOOKUP, DIRECTORY_RECIPIENTS, SIP_RELAY, SIP_SPREAD, SIP_HANDLE),
        listen=(SIP_RELAY,),
        serve=(SIP_SPREAD, SIP_HANDLE),
    ),
    # Only the admin API writes PROVISIONING (and its audit trail) and the directory it projects.
    "admin-api": _with(
        _INSTANCE,
        # OUTBOUND: /v1/queue reads it, retries (a republish) and deletes entries ("consume"
        # is what grants deleting a message; the admin API never creates a consumer on it).
        append=(SUBJECTS_PROVISIONING, SUBJECTS_AUDIT, SUBJECTS_OUTBOUND),
        read=(STREAM_PROVISIONING, STREAM_AUDIT, STREAM_USAGE, STREAM_CLUSTER, STREAM_DEAD_LETTERS),
        consume=(STREAM_OUTBOUND,),
        # secret_keys: nobody else may read it, so PROVISIONING's sealed secrets open only here.
        kv_write=(BUCKET_DIRECTORY, BUCKET_SECRET_KEYS, BUCKET_DKIM_KEYS),
        kv_read=(BUCKET_NODES, BUCKET_ACCOUNT_OWNERS, BUCKET_SIP_BINDINGS),
        call=(CONTROLLER_API, ADMIN_READMODEL_POSITIONS),
        serve=(AUTH_CHECK, AUTH_SIP_CREDENTIALS, DIRECTORY_LOOKUP, DIRECTORY_RECIPIENTS, DIRECTORY_DOMAIN_ACCOUNTS),
        listen=(ADMIN_READMODEL_POSITIONS,),
    ),
    # The admin API's projections as their own member (colony_admin.projector): reads what
    # the admin API writes, writes only the directory and its position announcements.
    "projector": _with(
        _INSTANCE,
        read=(STREAM_PROVISIONING, STREAM_AUDIT, STREAM_USAGE),
        kv_write=(BUCKET_DIRECTORY,),
        call=(ADMIN_READMODEL_POSITIONS,),
    ),
}
