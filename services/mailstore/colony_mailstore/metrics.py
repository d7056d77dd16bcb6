"""The mailstore's metrics on the instance registry (``runtime.metrics.registry``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class MailstoreMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.stored = Counter("colony_mailstore_messages_stored", "Messages stored into a mailbox (one per recipient).",
                              registry=registry)
        self.duplicates = Counter("colony_mailstore_duplicates",
                                  "Redelivered messages recognised as already stored.", registry=registry)
        self.forwarded = Counter("colony_mailstore_forwarded", "Recipients handed to the account's owner, by result.",
                                 ["result"], registry=registry)
        self.sent_on = Counter("colony_mailstore_sent_on",
                               "MAIL jobs for a domain moving to another region sent on to that region's MAIL.",
                               registry=registry)
        self.remote_bodies = Counter("colony_mailstore_remote_bodies_fetched",
                                     "Large bodies of jobs sent on from another region, fetched from that region.",
                                     registry=registry)
        self.dsns = Counter("colony_mailstore_dsns",
                            "Delivery reports (NOTIFY=SUCCESS, Action: delivered) published to senders.",
                            registry=registry)
        self.auto_replies = Counter("colony_mailstore_auto_replies_sent",
                                    "Vacation auto-replies published (RFC 3834), one per answered message.",
                                    registry=registry)
        self.auto_replies_suppressed = Counter(
            "colony_mailstore_auto_replies_suppressed",
            "Messages to an account with a vacation reply that got none, by the rule (colony.outbound.vacation) "
            "or failure (unsent, error) that withheld it.", ["reason"], registry=registry)
        self.over_quota = Counter("colony_mailstore_over_quota", "Deliveries refused because the account is full.",
                                  registry=registry)
        self.commits = Counter("colony_mailstore_commits", "Journal fsyncs (group commits).", registry=registry)
        self.takeovers = Counter("colony_mailstore_account_acquired", "Accounts this instance took, by how.",
                                 ["how"], registry=registry)
        self.fenced = Counter("colony_mailstore_fenced", "Writes refused because a newer owner claimed the account.",
                              registry=registry)
        self.storage_unavailable = Gauge(
            "colony_mailstore_storage_unavailable",
            "1 while the shared storage refuses this instance's writes (full, read-only) and MAIL delivery is held.",
            registry=registry)
        self.open_accounts = Gauge("colony_mailstore_open_accounts", "Accounts this instance owns and has open.",
                                   registry=registry)
        self.latency = Histogram("colony_mailstore_delivery_seconds",
                                 "From the edge's acceptance to the fsync of the mailbox.", registry=registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
