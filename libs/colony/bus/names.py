"""Every stream, KV bucket and subject Colony uses: the bus contract, in one place.

Nothing else in the code base spells a subject or bucket name as a literal.  Variable parts
(node ids, domains, accounts) always go through ``colony.bus.tokens.to_token``.
"""

from __future__ import annotations

from colony.bus.tokens import to_token

# --- KV buckets (DESIGN §3) -----------------------------------------------------------
BUCKET_NODES = "cluster_nodes"          # one key per instance: its NodeRecord
BUCKET_LEASES = "cluster_leases"        # the controller lease and its fenced decisions
BUCKET_ACCOUNT_OWNERS = "account_owners"  # per-account single-writer leases
BUCKET_SIP_BINDINGS = "sip_bindings"    # SIP registrations
BUCKET_DIRECTORY = "directory"          # what edges need to route without a round trip
BUCKET_RATE_COUNTERS = "rate_counters"  # flow-control counters shared by every edge and farm member

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


def provisioning_subject(aggregate_type: str, aggregate_id: str) -> str:
    """One subject per aggregate, so optimistic concurrency can check its last sequence."""
    return f"colony.prov.{aggregate_type}.{to_token(aggregate_id)}"


def mail_subject(region: str, domain: str) -> str:
    """Accepted inbound mail for one recipient domain (``colony.contracts.mail.InboundMail``)."""
    return f"colony.mail.{to_token(region)}.{to_token(domain)}"


def mail_region_filter(region: str) -> str:
    """All inbound mail of one region: what that region's mailstores consume."""
    return f"colony.mail.{to_token(region)}.*"


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
MAILSTORE_CONSUMER = "mailstore"  # durable pull consumer of a region's MAIL, shared by its mailstores
OWNER_EVENTS = "owner"            # cluster_event_subject kind of account-ownership events


def account_owner_key(address: str) -> str:
    """Key of an account's single-writer lease in ``account_owners`` (address = local@domain)."""
    return to_token(address)


AUTH_CHECK = "colony.auth.check"          # password check for the cluster (queue group)
AUTH_SIP_CREDENTIALS = "colony.auth.sip"  # SIP digest credentials (HA1) for the farm
DIRECTORY_LOOKUP = "colony.dir.lookup"          # one directory entry (colony.contracts.directory)
DIRECTORY_RECIPIENTS = "colony.dir.recipients"  # recipient resolution (colony.contracts.recipients)

QUEUE_ADMIN = "admin-api"


def consumer_next_subject(stream: str, consumer: str) -> str:
    """JetStream's pull request subject for one consumer (JSON body ``{"batch", "expires",
    "no_wait"}``; the messages and a final status go to the request's reply subject)."""
    return f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"


def node_key(node_id: str) -> str:
    return to_token(node_id)


# --- provisioning aggregates (one subject each, see colony.events) -------------------------
AGG_DOMAIN = "domain"
AGG_ADDRESS = "address"            # an account or an alias: one namespace per domain
AGG_DOMAIN_ALIAS = "domain_alias"
AGG_COS = "cos"
AGG_TOKEN = "token"


def provisioning_filter(aggregate_type: str) -> str:
    """Every aggregate of one kind, e.g. all tokens."""
    return f"colony.prov.{aggregate_type}.*"


def directory_key(kind: str, name: str) -> str:
    """Key in the ``directory`` bucket: ``domain.<token>``, ``address.<token>``, ``cos.<token>``,
    ``domain_alias.<token>``; the value is the JSON the edges need (see colony_admin.projections)."""
    return f"{kind}.{to_token(name)}"


def rate_counter_key(kind: str, subject: str, window: int) -> str:
    """A windowed rate counter: ``rate.<kind>.<token of ip/domain/account>.<window index>``."""
    return f"rate.{kind}.{to_token(subject)}.{window}"


def concurrency_key(kind: str, subject: str, node_id: str) -> str:
    """One instance's share of a concurrency gauge (e.g. sessions from one IP)."""
    return f"conc.{kind}.{to_token(subject)}.{to_token(node_id)}"
