"""The Edge-Gate: the checks an edge makes at each step of an inbound SMTP session.

The SMTP server asks the gate at connect, MAIL, RCPT and end of data; each answer is either
``None`` (go on) or a ``Refusal`` carrying the reply to send.  Order at connect: the deny
list, then trusted networks (which skip everything else), then the cluster-wide session and
connection-rate limits, then the block lists (last: they cost DNS round trips).

Every refusal is counted on ``/metrics`` (``colony_edge_refusals_total{stage,reason}``) and
logged with the client and the reason; reasons are a small fixed vocabulary so the metric's
cardinality stays bounded whatever clients do.

Limits are counted by ``networks.counting_unit`` (IPv4 address, IPv6 /64) in the shared
counters, so they hold across every edge instance.  A client that is refused is not
counted again for the refusal itself: a flood of refused connections still counts as
connections (that is what the connection rate limits), but not as messages.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import dns.asyncresolver
from prometheus_client import CollectorRegistry, Counter

from colony.counters import SharedCounters
from colony.settings import Settings
from colony_edge.security import dnsbl
from colony_edge.security.authentication import MAX_AUTHOR_DOMAINS, AuthOutcome, authenticate_async
from colony_edge.security.networks import NetworkList, counting_unit

log = logging.getLogger("colony.edge.gate")

SESSIONS = "sessions"
ACCOUNT_SESSIONS = "account-sessions"


@dataclass(frozen=True)
class Refusal:
    """A reply to send instead of going on: ``code`` + enhanced ``status`` + ``text``;
    ``reason`` is the metric label.  ``close``: end the session after the reply (421/554 at
    connect)."""

    code: int
    status: str
    text: str
    reason: str
    close: bool = False

    @property
    def permanent(self) -> bool:
        return self.code >= 500


@dataclass(frozen=True)
class DataVerdict:
    """What the gate decided at end of data: the header to add, and whether the message is
    refused or goes to the recipients' Junk folder (DMARC quarantine)."""

    auth: AuthOutcome
    refusal: Refusal | None = None
    quarantine: bool = False


class GateMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.refusals = Counter("colony_edge_refusals_total", "Inbound SMTP refusals by the edge gate.",
                                ["stage", "reason"], registry=registry)
        self.dnsbl_failures = Counter("colony_edge_dnsbl_failures_total",
                                      "Block-list lookups that did not answer in time (counted as not listed).",
                                      ["zone"], registry=registry)
        self.auth_results = Counter("colony_edge_auth_results_total", "SPF/DKIM/DMARC results of inbound mail.",
                                    ["method", "result"], registry=registry)
        self.forged_results = Counter("colony_edge_forged_auth_results_total",
                                      "Authentication-Results fields under our authserv-id from untrusted "
                                      "clients, deleted (RFC 8601 section 5).", registry=registry)


_STRICTNESS = {"none": 0, "quarantine": 1, "enforce": 2}


class EdgeGate:
    def __init__(self, settings: Settings, counters: SharedCounters | None,
                 resolver: dns.asyncresolver.Resolver, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.counters = counters
        self.resolver = resolver
        self.deny = NetworkList.parse(settings.edge_deny_networks, "COLONY_EDGE_DENY_NETWORKS")
        self.allow = NetworkList.parse(settings.edge_allow_networks, "COLONY_EDGE_ALLOW_NETWORKS")
        self.zones = dnsbl.parse_zones(settings.dnsbl_zones, "COLONY_DNSBL_ZONES")
        self.authserv_id = settings.authserv_id
        self.metrics = GateMetrics(registry)

    def _refuse(self, stage: str, ip: str, refusal: Refusal) -> Refusal:
        self.metrics.refusals.labels(stage, refusal.reason).inc()
        log.info("refused %s at %s: %s (%d %s)", ip, stage, refusal.reason, refusal.code, refusal.status)
        return refusal

    def trusted(self, ip: str) -> bool:
        return ip in self.allow

    # --- connection ----------------------------------------------------------------------

    async def on_connect(self, ip: str, *, block_lists: bool = True) -> Refusal | None:
        """Call once per accepted connection; if it returns ``None`` call ``on_disconnect``
        when the session ends (the session counts against the client's concurrency).
        ``block_lists``: ask the DNS block lists -- for the MX only.  They list the networks
        that should not send mail to MX hosts directly (Spamhaus ZEN includes the PBL: every
        dynamic and residential range), which is where mail users read and submit their mail
        from; Postfix's submission service and Dovecot ask no block list either."""
        if ip in self.deny:
            return self._refuse("connect", ip, Refusal(554, "5.7.1", "Access denied: your network is not allowed here",
                                                       "denied-network", close=True))
        if self.trusted(ip):
            return None
        unit = counting_unit(ip)
        if self.counters is not None:
            rate = await self.counters.hit("connections", unit)
            if rate > self.settings.edge_connections_per_minute_per_ip:
                return self._refuse("connect", ip, Refusal(
                    421, "4.7.0", "Too many connections from your address; try again later", "connection-rate", close=True))
            if self.counters.open(SESSIONS, unit) > self.settings.edge_max_sessions_per_ip:
                self.counters.close(SESSIONS, unit)
                return self._refuse("connect", ip, Refusal(
                    421, "4.7.0", "Too many concurrent sessions from your address", "concurrent-sessions", close=True))
        if self.zones and block_lists:
            listed = await dnsbl.check(self.resolver, ip, self.zones)
            for zone in listed.failed:
                self.metrics.dnsbl_failures.labels(zone).inc()
            if listed.score >= self.settings.dnsbl_threshold:
                if self.counters is not None:
                    self.counters.close(SESSIONS, unit)
                return self._refuse("connect", ip, Refusal(
                    554, "5.7.1", f"Service unavailable; client host [{ip}] blocked using {listed.describe()}",
                    "dnsbl", close=True))
        return None

    def on_disconnect(self, ip: str) -> None:
        if ip in self.deny or self.trusted(ip) or self.counters is None:
            return
        self.counters.close(SESSIONS, counting_unit(ip))

    def for_clients(self) -> ClientGate:
        """This gate as mail users' listeners ask it at connect (no block lists)."""
        return ClientGate(self)

    # --- login (IMAP, POP3) ----------------------------------------------------------------

    def on_login(self, ip: str, account: str) -> Refusal | None:
        """A client at ``ip`` logged in to ``account``.  Its session stops counting against
        its address (the caller ends that share with ``on_disconnect``) and counts against the
        account at that address instead (``edge_max_sessions_per_account_ip``); if it returns
        ``None`` call ``on_logout`` when the session ends.  Why: the address limit bounds
        what strangers can hold open, but a small company's mail users share one NAT address,
        and each desktop client keeps several sessions (Thunderbird up to five, one per
        folder it watches): ten people would have hit a limit of twenty by mid-morning.  Once
        logged in, a session has an owner, which is what Dovecot limits
        (``mail_max_userip_connections``)."""
        if self.trusted(ip) or self.counters is None:
            return None
        subject = f"{account.lower()} {counting_unit(ip)}"
        if self.counters.open(ACCOUNT_SESSIONS, subject) > self.settings.edge_max_sessions_per_account_ip:
            self.counters.close(ACCOUNT_SESSIONS, subject)
            return self._refuse("login", ip, Refusal(
                421, "4.7.0", "Too many sessions of this account from your address", "account-sessions", close=True))
        return None

    async def refund_connection(self, ip: str) -> None:
        """A connection from ``ip`` logged in: it no longer counts toward the address's
        connection rate (``edge_connections_per_minute_per_ip``).  The rate is there for
        connections nobody logs in on -- scanners, password guessers, floods; a company's
        mail users behind one NAT address (and a mobile carrier's users behind one CGNAT
        address) open a connection per folder check and per phone, and counted they would
        turn each other away on a busy morning.  Failed logins have their own limits."""
        if self.trusted(ip) or self.counters is None:
            return
        await self.counters.hit("connections", counting_unit(ip), -1)

    def on_logout(self, ip: str, account: str) -> None:
        if self.trusted(ip) or self.counters is None:
            return
        self.counters.close(ACCOUNT_SESSIONS, f"{account.lower()} {counting_unit(ip)}")

    # --- envelope ------------------------------------------------------------------------

    async def on_mail(self, ip: str) -> Refusal | None:
        if self.trusted(ip) or self.counters is None:
            return None
        if await self.counters.hit("messages", counting_unit(ip)) > self.settings.edge_messages_per_minute_per_ip:
            return self._refuse("mail", ip, Refusal(450, "4.7.1", "Too many messages from your address; slow down",
                                                    "message-rate"))
        return None

    async def on_rcpt(self, ip: str, recipient_domain: str) -> Refusal | None:
        if self.trusted(ip) or self.counters is None:
            return None
        if await self.counters.hit("recipients", counting_unit(ip)) > self.settings.edge_recipients_per_minute_per_ip:
            return self._refuse("rcpt", ip, Refusal(452, "4.5.3", "Too many recipients from your address; slow down",
                                                    "recipient-rate"))
        if await self.counters.hit("domain-recipients", recipient_domain.lower()) > \
                self.settings.edge_recipients_per_minute_per_domain:
            return self._refuse("rcpt", ip, Refusal(450, "4.7.1", "Too much mail for this domain right now; try again later",
                                                    "domain-rate"))
        return None

    # --- content -------------------------------------------------------------------------

    async def on_data(self, ip: str, helo: str, mail_from: str, message: bytes | None, header_section: bytes,
                      dmarc_choices: list[str | None]) -> DataVerdict:
        """``message``: the whole message if it is at most ``edge_dkim_max_bytes``, else None;
        ``dmarc_choices``: each recipient domain's DMARC setting (None: the cluster default).
        The strictest choice among the recipients' domains applies to the message.

        A trusted client (``edge_allow_networks``: this host's tools, the operator's relays) is
        not checked: its mail is marked ``none`` with the reason, at no DNS cost."""
        if self.trusted(ip):
            return DataVerdict(AuthOutcome(
                header=f"Authentication-Results: {self.authserv_id}; none (trusted client [{ip}], not checked)",
                spf="none", dkim="none", dmarc="none", dmarc_policy=None, from_domain=None))
        auth = await authenticate_async(message, header_section, self.authserv_id, ip, mail_from, helo,
                                        self.settings.dns_timeout)
        for method, result in (("spf", auth.spf), ("dkim", auth.dkim), ("dmarc", auth.dmarc)):
            self.metrics.auth_results.labels(method, result).inc()
        choice = max((c or self.settings.dmarc_enforcement for c in dmarc_choices),
                     key=lambda c: _STRICTNESS.get(c, 2), default=self.settings.dmarc_enforcement)
        if auth.author_domains > MAX_AUTHOR_DOMAINS:
            # Not evaluated (each author domain costs DNS queries): handled as the strictest
            # policy would be, or naming one domain more than the limit would be a way around
            # any domain's p=reject -- but within what the recipients' domains chose: with
            # "quarantine" (never refuse) it is filed in Junk, with "none" (only mark) accepted.
            if choice == "enforce":
                return DataVerdict(auth, refusal=self._refuse("data", ip, Refusal(
                    550, "5.7.1", f"Message refused: From: names {auth.author_domains} domains, "
                    f"at most {MAX_AUTHOR_DOMAINS} are checked (DMARC)", "from-domains")))
            if choice == "quarantine":
                self.metrics.refusals.labels("data", "dmarc-quarantine").inc()
                return DataVerdict(auth, quarantine=True)
            return DataVerdict(auth)
        if auth.dmarc != "fail" or self.trusted(ip):
            return DataVerdict(auth)
        if choice == "enforce" and auth.dmarc_policy == "reject":
            return DataVerdict(auth, refusal=self._refuse("data", ip, Refusal(
                550, "5.7.1", f"Message refused: DMARC policy of {auth.from_domain} (unauthenticated sender)",
                "dmarc-reject")))
        if choice in ("enforce", "quarantine") and auth.dmarc_policy in ("quarantine", "reject"):
            self.metrics.refusals.labels("data", "dmarc-quarantine").inc()
            log.info("quarantined mail from %s (%s): DMARC %s of %s", ip, mail_from, auth.dmarc_policy, auth.from_domain)
            return DataVerdict(auth, quarantine=True)
        return DataVerdict(auth)


class ClientGate:
    """``EdgeGate`` at connect for the listeners of mail users (IMAP, POP3, submission): the
    deny list and the address's connection rate and sessions, without the block lists."""

    def __init__(self, gate: EdgeGate) -> None:
        self.gate = gate

    async def on_connect(self, ip: str) -> Refusal | None:
        return await self.gate.on_connect(ip, block_lists=False)

    def on_disconnect(self, ip: str) -> None:
        self.gate.on_disconnect(ip)
