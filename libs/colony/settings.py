"""The one settings object of a Colony process.

Every key can come from the environment (``COLONY_<KEY>``, upper case) or from a TOML file
named by ``COLONY_CONFIG``; the environment wins.  ``colony settings`` prints every key with
its description, so this file is the documentation of the configuration.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class Role(StrEnum):
    CONTROLLER = "controller"
    EDGE = "edge"
    MAILSTORE = "mailstore"
    SIPFARM = "sipfarm"
    ADMIN_API = "admin-api"
    PROJECTOR = "projector"  # the admin API's projections (colony_admin.projector)


# Where a SIP farm member never sends what a phone's message named (its Contact, an in-dialog
# target): this host, "this network", link-local (cloud metadata at 169.254.169.254 among
# them), multicast and the reserved/broadcast block.  Private networks are not in it: phones
# on a LAN register their private addresses.  `colony up` on loopback serves phones on this
# host, so it drops the loopback networks from it (supervisor.py).
SIP_CONTACT_DENY_DEFAULT = "127.0.0.0/8, ::1/128, 0.0.0.0/8, ::/128, 169.254.0.0/16, fe80::/10, 224.0.0.0/4, ff00::/8, 240.0.0.0/4"
SIP_CONTACT_DENY_LOOPBACK_SERVED = "0.0.0.0/8, ::/128, 169.254.0.0/16, fe80::/10, 224.0.0.0/4, ff00::/8, 240.0.0.0/4"
# Where the outbound queue never delivers, whatever a destination's MX or A records say:
# "this network" (0.0.0.0 reaches this host), link-local (cloud metadata among them),
# multicast and the reserved/broadcast block -- addresses no mail server has.  Loopback is
# not in it (a smarthost or test MX may be there); mail that reaches one of our own edges
# is caught by its greeting instead (a loop, 5.4.6).
OUTBOUND_DENY_DEFAULT = "0.0.0.0/8, ::/128, 169.254.0.0/16, fe80::/10, 224.0.0.0/4, ff00::/8, 240.0.0.0/4"


class ConfigError(Exception):
    """A configuration value is wrong; the message names the key and the fix."""


# A service stops with this code on a ConfigError, its message the last lines of its output
# (``service_main.run_service``; ``colony up`` shows it beside the restart notice).
CONFIG_ERROR_EXIT = 2


class _TomlFileSource(PydanticBaseSettingsSource):
    """Reads the TOML file named by COLONY_CONFIG (flat keys, same names as the fields)."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        path = os.environ.get("COLONY_CONFIG")
        self._data: dict[str, Any] = {}
        if path:
            try:
                self._data = tomllib.loads(Path(path).read_text())
            except FileNotFoundError as exc:
                raise ConfigError(f"COLONY_CONFIG={path}: no such file; point it at a TOML file or unset it") from exc
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"COLONY_CONFIG={path}: not valid TOML ({exc}); fix the file") from exc
            unknown = set(self._data) - set(settings_cls.model_fields)
            if unknown:
                raise ConfigError(
                    f"COLONY_CONFIG={path}: unknown key(s) {sorted(unknown)}; "
                    f"valid keys are listed by `colony settings`"
                )

    def get_field_value(self, field, field_name):  # pragma: no cover - required by the ABC
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COLONY_", extra="ignore")

    # --- identity of this process -------------------------------------------------------
    node_id: str = Field("", description="Unique id of this instance in the cluster, e.g. mailstore-2. Empty: <role>-<host>-<pid>.")
    role: Role | None = Field(None, description="Which service this process runs (controller, edge, mailstore, sipfarm, admin-api, projector).")
    host: str = Field("127.0.0.1", description="Address this instance binds its listeners to.")
    region: str = Field("local", pattern=r"^[a-z0-9-]{1,32}$", description="Region (super cluster) this instance belongs to; work for domains homed elsewhere travels over the bus to their region.")
    regions: str = Field("", description="Every region of the super cluster, comma separated (e.g. eu,us); must include region. Empty: one region, no federation. Each region is its own NATS server/cluster and JetStream domain joined to a hub through leafnodes.")
    primary_region: str = Field("", description="The region whose PROVISIONING is the source of truth; the others mirror it and refuse provisioning writes while cut off. Empty: the first of regions.")
    advertise_host: str = Field("", description="Address other members use to reach this instance. Empty: COLONY_HOST, or this machine's host name when COLONY_HOST is a wildcard (0.0.0.0, ::).")

    # --- bus ---------------------------------------------------------------------------
    nats_url: str = Field("nats://127.0.0.1:2500", description="NATS server(s), comma separated. `colony up` sets this to the embedded server.")
    nats_connect_timeout: float = Field(5.0, gt=0, description="Seconds to wait for the first connection to NATS.")
    stream_replicas: int = Field(1, ge=1, le=5, description="JetStream replicas for every stream and bucket (3 on a 3-node NATS cluster).")
    nats_nkey_seed_file: Path | None = Field(None, description="File holding this process's NATS nkey seed (its role's bus identity, mode 0600), as written by `colony up` or `colony bus init`. Empty: connect without credentials, which only a bus without authorization accepts.")
    nats_tls_ca_file: Path | None = Field(None, description="CA certificate(s) that signed the NATS servers' certificates; set with tls:// URLs. Empty: the system's trust store.")

    # --- cluster mechanics -------------------------------------------------------------
    heartbeat_interval: float = Field(1.0, gt=0, description="Seconds between membership heartbeats.")
    node_ttl: float = Field(5.0, gt=0, description="An instance whose heartbeats stop for this long is marked FAILED by the controller.")
    node_record_max_age: float = Field(3600.0, gt=0, description="Seconds a STOPPED or FAILED node record stays visible before the bus forgets it.")
    controller_lease_ttl: float = Field(3.0, ge=1.0, description="Seconds a controller lease lives without renewal (a per-message TTL on every lease write, rounded up to whole seconds).")
    controller_decision_max_age: float = Field(30 * 86400.0, ge=60.0, description="Seconds fenced controller decisions (FAILED markings, ownership steals, storage-layout moves) stay in the cluster_leases bucket (its max age).")
    controller_renew_interval: float = Field(0.5, gt=0, description="Seconds between controller lease renewals.")
    controller_safety_margin: float = Field(1.0, gt=0, description="A controller stops acting this long before its lease could expire.")
    controller_probe_interval: float = Field(0.2, gt=0, description="Seconds between standby checks of the controller's liveness.")
    controller_rank_delay: float = Field(1.0, gt=0, description="Seconds each live standby ranked ahead of a controller gets to take over first (the Backup Controller moves at once, the n-th standby after n of these).")
    drain_timeout: float = Field(300.0, gt=0, description="Seconds a draining instance waits for its sessions to finish before it hands them over.")
    stop_timeout: float = Field(15.0, ge=3.0, le=3600.0, description="Seconds an instance takes at most to stop on SIGTERM: up to 10 s of it for open sessions to finish, the rest to close its listeners and the bus; a process still running 5 s after it exits by itself. `colony up` kills an instance 20 s after SIGTERM; give containers a stop grace period above this.")
    domain_move_settle: float = Field(10.0, ge=0.5, description="Seconds a domain move waits after each of its phases (routing, sealing, flipped) before the next step, so every edge's and mail store's directory copy in every region has seen it (the PROVISIONING mirror's lag plus the mail stores' 2 s cache).")

    # --- work queues (colony.queue) -----------------------------------------------------
    queue_max_deliver: int = Field(5, ge=1, le=1000, description="Deliveries of a work-queue job before it goes to the DEAD_LETTERS stream (see `colony dlq`).")
    queue_ack_wait: float = Field(30.0, ge=1, description="Seconds a job may go without an ack or progress heartbeat before JetStream redelivers it (a worker that died).")
    queue_retry_backoff: str = Field("1,5,30,120,600", description="Seconds before the 1st, 2nd, ... retry of a failed job, comma separated; the last repeats.")
    queue_concurrency: int = Field(8, ge=1, le=1024, description="Jobs one queue runner handles at once.")
    queue_job_timeout: float = Field(600.0, gt=0, description="Seconds a job handler may run before it is cancelled and the job retried (a hung handler would otherwise hold its job forever: the runner keeps it alive).")

    # --- storage -----------------------------------------------------------------------
    data_dir: Path = Field(Path("colony-data"), description="Directory for everything this cluster writes locally (embedded NATS, SQLite, shared storage).")
    storage_dir: Path | None = Field(None, description="Shared storage root (NFS in production). Empty: <data_dir>/storage.")
    database_url: str = Field("", description="SQLAlchemy URL of the admin read model. Empty: SQLite in <data_dir>/admin.sqlite3.")
    database_url_file: Path | None = Field(None, description="File holding the SQLAlchemy URL of the admin read model (it carries the database password, so production keeps it out of the environment: a Docker secret written by `colony deploy init`). Overrides database_url.")
    default_cos: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="Class of service of every domain created without one (so a domain administrator cannot hand out unlimited quota). The admin API creates it, with default_cos_quota_bytes, when the first domain needs it; change its limits with `colony cos update`.")
    default_cos_quota_bytes: int = Field(10 * 1024**3, ge=0, description="Mailbox quota of the default class of service when the admin API creates it (later changes go through the CoS API).")
    auth_max_queued_checks: int = Field(64, ge=0, description="Password checks (colony.auth.check) an admin API keeps waiting for an argon2 thread; one more is answered `temporarily unavailable` at once (the edges' temporary failure), so a password spray or a crowd of retrying clients cannot queue minutes of hashing. Checks whose requester stopped waiting are dropped unhashed.")

    # --- listeners ---------------------------------------------------------------------
    ops_port: int = Field(0, ge=0, le=65535, description="Port of this instance's health/metrics HTTP listener (0: any free port).")
    api_port: int = Field(8080, ge=0, le=65535, description="Port of the admin API (admin-api role).")
    api_tls_cert_file: Path | None = Field(None, description="PEM certificate chain the admin API serves HTTPS with (compose: the management network's certificate of `colony deploy init`). Empty: plain HTTP (`colony up`, loopback).")
    api_tls_key_file: Path | None = Field(None, description="PEM private key for api_tls_cert_file.")
    api_max_import_bytes: int = Field(100 * 1024**2, ge=1024, description="Largest bulk import body (POST /v1/imports, CSV or JSON) the admin API accepts; a larger one is answered 413 (split the file). Every other request body is limited to 1 MiB: FastAPI reads a body before it checks the token.")

    # --- inbound SMTP (edge) ------------------------------------------------------------
    smtp_port: int = Field(25, ge=0, le=65535, description="Port of the edge's SMTP MX listener (0: any free port). `colony up` derives it from --base-port.")
    smtp_hostname: str = Field("", description="Name the SMTP server gives in its greeting and Received: fields. Empty: the advertised host.")
    smtp_max_message_size: int = Field(64 * 1024 * 1024, ge=1024, description="Largest message (octets) the edge accepts from anyone (advertised as SIZE); classes of service may allow less.")
    smtp_max_recipients: int = Field(100, ge=1, description="Most RCPT TO per transaction a class of service may never exceed (RFC 5321 asks for at least 100).")
    smtp_max_errors: int = Field(20, ge=1, description="Negative replies (refused commands and recipients included) after which a session is answered 421 and closed. 20, as Postfix's smtpd_hard_error_limit: a security audit's relay test (nmap smtp-open-relay, 16 refused attempts on one session) runs to its verdict instead of being cut off.")
    smtp_timeout: float = Field(300.0, gt=0, description="Seconds an SMTP session may wait for the client's next command or data (RFC 5321 4.5.3.2: at least 5 minutes).")
    smtp_greeting_delay: float = Field(0.0, ge=0, description="Seconds the edge waits before its greeting; a client that talks first is an early talker and is refused.")

    # --- submission and outbound mail (edge) ---------------------------------------------
    submission_port: int = Field(587, ge=0, le=65535, description="Edge submission port (STARTTLS, AUTH required; 0: any free port). `colony up` derives it from --base-port.")
    submissions_port: int = Field(465, ge=0, le=65535, description="Edge submission port with implicit TLS (RFC 8314).")
    submission_domain_rate_per_hour: int = Field(0, ge=0, description="Messages one domain's accounts may submit per hour, counted across all edges (0: no domain limit; each account also has its class of service's sending_rate_per_hour).")
    outbound_smtp_port: int = Field(25, ge=1, le=65535, description="Port remote MX hosts are contacted on (25; tests and relays through a smarthost on another port set it).")
    outbound_concurrency: int = Field(32, ge=1, description="Outbound deliveries one edge runs at once.")
    outbound_destination_concurrency: int = Field(4, ge=1, description="Outbound connections one edge opens at once to one destination domain.")
    outbound_connect_timeout: float = Field(30.0, gt=0, description="Seconds to connect to a remote MX and for each of its replies (RFC 5321 4.5.3.2 asks up to 5 minutes for some; 30 keeps a dead MX from holding a slot).")
    outbound_retry_initial: float = Field(60.0, gt=0, description="Seconds before the first retry of a temporarily failed delivery; each retry doubles it up to outbound_retry_max.")
    outbound_retry_max: float = Field(3600.0, gt=0, description="Longest wait between two delivery attempts.")
    outbound_max_age: float = Field(5 * 86400.0, gt=0, description="Seconds a message is retried before it expires and its sender gets a DSN (RFC 5321 4.5.4.1: 4-5 days).")
    outbound_delay_warning: float = Field(4 * 3600.0, gt=0, description="Seconds after which a sender whose message is still queued gets one delay DSN.")
    outbound_connection_idle: float = Field(5.0, ge=0, description="Seconds an outbound SMTP connection stays open after a delivery, for the next message to the same destination (0: a connection per message).")
    outbound_messages_per_connection: int = Field(100, ge=1, description="Most messages one outbound SMTP connection carries before it is closed and a new one opened.")
    outbound_deny_networks: str = Field(OUTBOUND_DENY_DEFAULT, description="Networks the outbound queue never connects to, comma separated CIDRs: an MX host (or a domain's own address) there is skipped, and a destination all of whose addresses are there fails 5.4.4. A domain's owner chooses its MX records, so without this one could aim the edges at 169.254.169.254 or 0.0.0.0 (this host). The default: 0.0.0.0/8 and ::, link-local, multicast, 240.0.0.0/4. Add loopback and the cluster's inner networks where no mail server of the outside world is (not the default: a smarthost or a test MX may listen on loopback). Empty: connect anywhere.")
    outbound_tls_ca_file: Path | None = Field(None, description="CA bundle that MTA-STS policy servers and MX hosts under an enforced MTA-STS policy are verified against. Empty: the system's trust store.")
    mta_sts: bool = Field(True, description="Honour MTA-STS (RFC 8461) policies of destination domains: in enforce mode deliver only to the policy's MX hosts over verified TLS.")
    mta_sts_port: int = Field(443, ge=1, le=65535, description="HTTPS port of mta-sts.<domain> policy servers (443; tests set another).")
    srs_secret_file: Path | None = Field(None, description="File of random bytes (>= 16) keying SRS, the rewriting of the envelope sender of mail forwarded to outside addresses. Empty: a key derived from cluster_secret_file; with neither, mail for accounts that forward outside the cluster is not forwarded there (the MX answers 451 when that was the only target).")
    srs_max_age_days: int = Field(21, ge=1, le=1000, description="Days a bounce to an SRS address is accepted and sent on to the original sender; older ones are refused 550.")
    mta_sts_fetch_timeout: float = Field(20.0, gt=0, description="Seconds an MTA-STS policy fetch (connect, TLS, HTTP) may take before it counts as failed.")
    dkim_key_dir: Path | None = Field(None, description="Directory of DKIM signing keys: <dir>/<domain>/<selector>.pem, the newest file per domain signs. Empty: <data_dir>/dkim. Readable by the edges only (never in the event log).")
    tls_cert_file: Path | None = Field(None, description="PEM certificate chain for STARTTLS and TLS listeners. Empty: `colony up` makes a local CA and certificate in <data_dir>/tls.")
    tls_key_file: Path | None = Field(None, description="PEM private key for tls_cert_file.")
    tls_sni_dir: Path | None = Field(None, description="Directory of per-domain certificates for IMAP/POP3/SMTP TLS, chosen by SNI: <domain>.pem holding the chain and the key (or <domain>.pem + <domain>.key); a name without its own file gets tls_cert_file. Empty: one certificate for all.")

    # --- client access (IMAP/POP3 at the edge, proxied to the account's mail store) -----
    imap_port: int = Field(143, ge=0, le=65535, description="Edge IMAP port (STARTTLS). `colony up` derives it from --base-port.")
    imaps_port: int = Field(993, ge=0, le=65535, description="Edge IMAP port with implicit TLS.")
    pop3_port: int = Field(110, ge=0, le=65535, description="Edge POP3 port (STLS).")
    pop3s_port: int = Field(995, ge=0, le=65535, description="Edge POP3 port with implicit TLS.")
    autoconfig_port: int = Field(80, ge=0, le=65535, description="Edge HTTP port answering mail clients' autoconfiguration (Thunderbird's /mail/config-v1.1.xml and /.well-known/autoconfig/..., Outlook's POST /autodiscover/autodiscover.xml) for hosted domains (0: any free port). `colony up` derives it from --base-port; compose publishes it on 80 and, through haproxy's TLS, on 443.")
    autoconfig_host: str = Field("", description="Host name autoconfiguration answers tell mail clients to connect to for IMAP, POP3 and submission (the name the balancer and the TLS certificate have, e.g. mail.colony.example). Empty: advertised_host.")
    autoconfig_ports: Literal["standard", "listeners"] = Field("standard", description="Ports autoconfiguration answers name: `standard` (993, 143, 995, 110, 465, 587: what the balancer publishes) or `listeners` (this edge's own listener ports, for edges reached without a balancer; `colony up` sets it). Either way only protocols this edge serves are named.")
    imap_inner_port: int = Field(0, ge=0, le=65535, description="Mail store's inner IMAP listener for sessions handed over by edges (0: any free port; edges find it in the node record). `colony up`: 2544 for the first store, +1000 for each further one.")
    pop3_inner_port: int = Field(0, ge=0, le=65535, description="Mail store's inner POP3 listener for sessions handed over by edges (0: any free port). `colony up`: 2511 for the first store, +1000 for each further one.")
    cluster_secret_file: Path | None = Field(None, description="File of random bytes (>= 16) shared by every edge and mail store: it signs the hand-off of an authenticated IMAP/POP3 session to a mail store, and keys the admin API's monitor cookies (so every admin API accepts them). `colony up` makes one. Empty: client access (IMAP/POP3) is off, and each admin API has a monitor key of its own.")
    access_plaintext_auth: bool = Field(False, description="Allow IMAP LOGIN / POP3 USER+PASS / AUTH PLAIN before TLS (only for networks where the link is protected otherwise).")
    imap_max_mailboxes: int = Field(10_000, ge=10, le=1_000_000, description="Most mailboxes (folders) one account may have; a CREATE or RENAME past it is answered NO [LIMIT] (RFC 5530). Names are also limited: 1024 octets, 32 levels of 255 octets.")
    imap_idle_timeout: float = Field(1800.0, gt=0, description="Seconds an IMAP session may stay silent outside IDLE before the server says BYE (RFC 9051: at least 30 minutes).")
    imap_idle_notify: float = Field(120.0, gt=0, description="Seconds a client in IDLE may go without a word from the server before it is told '* OK Still here' (keeps NAT and firewall state; finds peers gone without a FIN).")
    imap_direct_login: bool = Field(False, description="Also open a mail store IMAP listener (`imap-direct` in the node record, any free port) that takes LOGIN / AUTHENTICATE PLAIN itself, checked through the auth contract: for tools and tests on a trusted network. Clients normally reach IMAP through an edge.")
    pop3_idle_timeout: float = Field(600.0, gt=0, description="Seconds a POP3 session may stay silent before it is closed (RFC 1939: at least 10 minutes).")
    access_login_timeout: float = Field(60.0, gt=0, description="Seconds a client has to log in at the edge after connecting.")
    access_max_command_bytes: int = Field(8192, ge=1024, le=1024 * 1024, description="Longest IMAP command line (and literal) the edge reads before login; longer gets BAD (a POP3 line: 255 octets, RFC 2449).")
    access_login_failures_per_ip: int = Field(20, ge=1, description="Failed IMAP/POP3 logins and submission AUTHs one client address may have across all edges in the last minute (the shared counters' sliding one-minute rate); past it its logins are refused without a check.")
    access_login_failures_per_account: int = Field(10, ge=1, description="Failed IMAP/POP3 logins and submission AUTHs (one budget) on one account across all edges in the last minute (the shared counters' sliding one-minute rate); past it logins to it from clients that are strangers to it are refused without a check until the rate falls below it again (trusted networks included); a client familiar to the account (login_familiar_days) is held only by the per-address limit, so strangers cannot lock the owner out.")
    login_familiar_days: float = Field(30.0, ge=0, le=366, description="Days a client network (its address; IPv6: its /64) stays familiar to an account after a successful IMAP, POP3 or SMTP AUTH login to it on any edge: the per-account failed-login limits (the edges' and the auth service's) do not hold familiar clients. 0: off, every client is held by the per-account limits.")
    access_auth_cache_size: int = Field(100_000, ge=0, le=10_000_000, description="Logins (user, password, service) an edge remembers as checked, least recently used dropped first, so a client that logs in again needs no argon2 check in the auth service (like Dovecot's auth_cache_size; ~300 bytes each). Kept as an HMAC under a per-process random key, never the password; dropped at once when the directory says the account, its domain or a class of service changed. 0: every login is checked.")
    access_auth_cache_ttl: float = Field(3600.0, gt=0, le=86400, description="Seconds a successful login stays in the edge's login cache (like Dovecot's auth_cache_ttl); a password change, disable or service change drops it sooner.")
    access_auth_cache_negative_ttl: float = Field(60.0, ge=0, le=3600, description="Seconds an 'invalid credentials' answer stays in the edge's login cache (a client retrying a stale saved password costs no argon2 check; every such retry still counts as a failed login). 0: never kept.")
    mail_inline_max_bytes: int = Field(512 * 1024, ge=1024, le=4 * 1024 * 1024, description="Messages up to this size travel inline in the MAIL stream; larger ones go through the mail_bodies object store. Keep it well under the NATS max_payload (base64 adds a third).")
    mail_body_max_age: float = Field(14 * 86400.0, gt=0, description="Seconds a large message body stays in the mail_bodies object store (must outlive any redelivery of its MAIL message).")
    mail_publish_timeout: float = Field(30.0, gt=0, description="Seconds the edge waits for JetStream to acknowledge accepted mail before it answers 451 (temporary failure).")
    mail_home_ack_timeout: float = Field(2.0, gt=0, le=30, description="In a super cluster: seconds the edge waits for the home region's MAIL to acknowledge mail for one of its domains, published across the link, before it stores the mail in its own region's MAIL instead (sourced to the home region later, the same message id keeping it to one copy). The SMTP client waits this long at most once per link failure: then that region's mail is stored locally at once for a while (colony.regions.HomeLinks). Above a healthy link's round trip, well under mail_publish_timeout.")

    # --- mail store (account ownership, delivery) ---------------------------------------
    account_lease_ttl: float = Field(10.0, ge=3.0, description="Seconds an account-ownership lease lives without renewal (the account_owners bucket's max age); a killed or paused mailstore's accounts move after this long.")
    account_renew_interval: float = Field(2.0, gt=0, description="Seconds between a mailstore's renewals of the account leases it holds (well under COLONY_ACCOUNT_LEASE_TTL).")
    account_lease_safety_margin: float = Field(3.0, gt=0, description="A mailstore stops writing an account this long before its lease could expire (must be below COLONY_ACCOUNT_LEASE_TTL).")
    account_idle_release: float = Field(300.0, gt=0, description="Seconds without deliveries or sessions after which a mailstore closes an account and releases its lease.")
    account_max_open: int = Field(2000, ge=10, description="Most accounts a mailstore keeps open at once (each holds its journal's descriptors, its state in memory and a lease it renews on the bus); past it the least recently used idle ones are closed and released early, as after COLONY_ACCOUNT_IDLE_RELEASE.")
    mailstore_forward_timeout: float = Field(15.0, gt=0, description="Seconds a mailstore waits for the account's owner to store a forwarded delivery before retrying it later.")
    mailstore_delivery_concurrency: int = Field(64, ge=1, le=1024, description="MAIL messages a mailstore works on at once (deliveries to one account share one fsync; 64 was 2x the throughput of 16 on 2 cores). Large bodies are further limited to a few at a time.")
    usage_flush_interval: float = Field(1.0, gt=0, le=60, description="Seconds a mailstore (messages in, storage bytes) or an edge (messages out) sums its USAGE counts per account before publishing them; a crash loses at most this much metering, never mail.")
    mail_segment_max_bytes: int = Field(64 * 1024 * 1024, ge=4096, description="Size past which an account's owner moves to a new epoch and journal segment (the old one is dropped), so a long tenure does not grow one file without bound.")

    # --- flow control (shared by every edge / farm member, on the bus) ------------------
    rate_counter_flush_interval: float = Field(1.0, ge=0, le=5, description="Seconds an instance batches its flow-control increments before they reach the shared counters: it writes each busy counter at most every half interval (a synced bus write, instead of one per SMTP connection, RCPT or SIP request), its own decisions always include its unflushed increments, and other instances see them at most this long later; failed writes are retried, pending increments are flushed at stop. 0: every counted event is one compare-and-set at once (exact across instances, one synced bus write each).")
    rate_counter_max_age: float = Field(150.0, ge=130, description="Seconds a shared counter key lives without an update (more than two one-minute windows).")

    postmaster_address: str = Field("", description="The operator's mailbox for RCPT TO:<Postmaster> and for postmaster@ of every hosted domain that has none of its own (RFC 5321 §4.5.1), e.g. postmaster@provider.example. Empty: <Postmaster> is refused.")

    # --- edge security (the seed's Edge-Gate) ------------------------------------------
    edge_deny_networks: str = Field("", description="Client networks refused at connect (554 5.7.1), comma separated CIDRs, IPv4 and IPv6, e.g. 192.0.2.0/24, 2001:db8::/32.")
    edge_allow_networks: str = Field("127.0.0.0/8, ::1/128", description="Trusted client networks: exempt from block lists and flow-control limits (this host's own tools by default; add your relays and monitoring; empty: trust no one).")
    dnsbl_zones: str = Field("", description="DNS block lists with weights, zone[:weight] comma separated, e.g. zen.example:3, bl.example:1. Empty: no block lists.")
    dnsbl_threshold: float = Field(1.0, gt=0, description="A client whose summed block-list weights reach this is refused (554 5.7.1).")
    proxy_protocol_from: str = Field("", description="Balancers allowed to send the PROXY protocol header (HAProxy's send-proxy / send-proxy-v2, nginx stream's proxy_protocol on), comma separated CIDRs. A connection to the edge's SMTP, submission, IMAP(S) and POP3(S) listeners or the SIP farm's TCP, TLS, WS and WSS listeners from one of these networks must begin with a v1 or v2 header within proxy_protocol_timeout (before TLS on the implicit-TLS ports), and the client address it carries is the connection's address for every per-address rule (allow/deny lists, DNSBL, rate and connection limits, SPF, Received:, SIP Via received=); without a valid header it is closed. Connections from elsewhere are served as without a balancer: a header they send is protocol garbage. Empty: off. List only the balancers' own addresses: any host listed can claim any client address.")
    proxy_protocol_timeout: float = Field(5.0, gt=0, le=60, description="Seconds a connection from proxy_protocol_from has to deliver its whole PROXY header; then it is closed.")
    edge_max_sessions_per_ip: int = Field(20, ge=1, description="Concurrent sessions one client address (IPv6: one /64) may hold across all edges: SMTP (from other servers and submission alike) for the whole session, IMAP and POP3 until they log in.")
    edge_max_sessions_per_account_ip: int = Field(20, ge=1, description="Concurrent IMAP and POP3 sessions one account may hold from one client address (IPv6: one /64) across all edges once logged in (Dovecot's mail_max_userip_connections). A desktop client keeps up to five.")
    edge_connections_per_minute_per_ip: int = Field(120, ge=1, description="New connections per minute one client address may open across all edges.")
    edge_messages_per_minute_per_ip: int = Field(300, ge=1, description="Messages per minute one client address may send across all edges.")
    edge_recipients_per_minute_per_ip: int = Field(1000, ge=1, description="Recipients per minute one client address may name across all edges.")
    edge_recipients_per_minute_per_domain: int = Field(6000, ge=1, description="Recipients per minute all clients together may name in one recipient domain across all edges.")
    edge_authserv_id: str = Field("", description="Name in Authentication-Results headers (RFC 8601 authserv-id), one for the whole cluster: edges delete forged results under it and mail stores trust results under it. Empty: the advertised host name, which differs per host -- set it when instances run on several hosts.")
    edge_dkim_max_bytes: int = Field(16 * 1024 * 1024, ge=0, description="Largest message whose DKIM signatures the edge verifies (it must hold it in memory); larger ones get SPF and DMARC only.")
    dmarc_enforcement: str = Field("enforce", pattern="^(enforce|quarantine|none)$", description="Default DMARC choice of a recipient domain: enforce (a failing sender's p=reject refuses, p=quarantine files in Junk), quarantine (never refuse; file in Junk), none (only mark). A domain's own setting wins.")

    # --- SIP farm ----------------------------------------------------------------------
    sip_port: int = Field(5060, ge=0, le=65535, description="UDP and TCP port of this SIP farm member (0: any free port). `colony up` derives it from --base-port (2560 for the first member, +1000 for each further one).")
    sip_tls_port: int = Field(5061, ge=0, le=65535, description="SIP over TLS port of this farm member (RFC 3261 §26; 0: any free port). `colony up` derives it from --base-port (2561 for the first member, +1000 for each further one).")
    sip_ws_port: int = Field(5062, ge=0, le=65535, description="SIP over WebSocket port (RFC 7118, plain ws://) of this farm member. `colony up`: 2562 for the first member, +1000 for each further one.")
    sip_wss_port: int = Field(5063, ge=0, le=65535, description="SIP over secure WebSocket port (wss://) of this farm member. `colony up`: 2563 for the first member, +1000 for each further one.")
    sip_inner_port: int = Field(0, ge=0, le=65535, description="UDP port of this farm member's inner relay: packets that arrived over UDP at another member and belong to a transaction this member owns come here, and its answers go back to the asker's (authenticated datagrams, member to member; 0: any free port, shown in `colony status`). `colony up`: 2564 for the first member, +1000 for each further one. Only the farm members need to reach it.")
    sip_tls: bool = Field(True, description="Whether farm members listen for SIP over TLS and WSS (needs tls_cert_file/tls_key_file; without them these listeners are off and a warning says so).")
    sip_ws: bool = Field(True, description="Whether farm members listen for SIP over plain WebSocket (ws://); browsers on https pages need WSS.")
    sip_timer_t1: float = Field(0.5, ge=0.05, le=10, description="RFC 3261 T1 (seconds): first retransmission interval of requests the farm forwards over UDP; an unanswered branch fails after 64*T1.")
    sip_timer_t2: float = Field(4.0, ge=0.1, le=60, description="RFC 3261 T2 (seconds): the cap of non-INVITE retransmission intervals.")
    sip_max_message_size: int = Field(16384, ge=1024, le=65535, description="Largest SIP message (octets) a farm member reads; a larger datagram is dropped unread, a larger stream message closes the connection.")
    sip_digest_algorithms: str = Field("MD5", description="Digest algorithms offered in SIP challenges, most preferred first, comma separated: SHA-256, MD5 (RFC 8760). Many phones (and sipp) know MD5 only and take the first challenge.")
    sip_nonce_ttl: float = Field(300.0, ge=5, description="Seconds a digest nonce is good for; an older one gets a fresh challenge with stale=true.")
    sip_min_expires: int = Field(60, ge=1, description="Shortest registration (seconds) the registrar accepts; shorter gets 423 Interval Too Brief.")
    sip_max_expires: int = Field(3600, ge=60, description="Longest registration (seconds); a longer request is cut to this.")
    sip_default_expires: int = Field(3600, ge=60, description="Registration length when the phone names none.")
    sip_refresh_write_slack: float = Field(60.0, ge=0, description="Seconds by which a REGISTER refresh that changes nothing but a contact's expiry may move it later and still be answered from the stored binding without a write to sip_bindings (at most a tenth of the asked lifetime; the 200 names the stored expiry). 0: write every refresh.")
    sip_dialog_record_ttl: float = Field(43200.0, ge=3, description="Seconds a call's metering record (d.<hash> in sip_bindings, written at the INVITE 2xx) lives if no BYE ends it: a call longer than this is not metered; one whose BYE never comes is forgotten after it.")
    sip_flow_timer: int = Field(120, ge=0, le=3600, description="Seconds named in the Flow-Timer header of the 200 to a REGISTER the registrar applied RFC 5626 outbound to (Contact with +sip.instance and reg-id, Supported: outbound, the farm the first hop), over TCP, TLS, WS or WSS: the phone sends a CRLF keep-alive at least that often (§4.4.1), which the member answers, so a dead flow or a lapsed NAT binding is noticed and the phone registers again. 0: no Flow-Timer (the phone's default, 95-120 s).")
    sip_max_bindings: int = Field(10, ge=1, le=100, description="Most contacts (devices) one account may have registered at once; more gets 403.")
    sip_refused_user_agents: str = Field("friendly-scanner, sipvicious, sipcli, sip-scan, sundayddr, iWar, VaxSIPUserAgent, pplsip", description="User-Agent substrings (case-insensitive, comma separated) of SIP scanners: their requests are dropped without an answer. Empty: refuse none.")
    sip_requests_per_minute_per_ip: int = Field(6000, ge=1, description="SIP requests per minute one source address (IPv6: one /64) may send across all farm members; more are answered 503 with Retry-After.")
    sip_max_connections_per_ip: int = Field(100, ge=1, description="TCP, TLS, WS and WSS connections one client address (IPv6: one /64) may hold open to one farm member; more are closed as they come. sip_allow_networks are exempt; raise it for an office of phones behind one NAT address.")
    sip_connections_per_minute_per_ip: int = Field(600, ge=1, description="New TCP, TLS, WS and WSS connections per minute one client address (IPv6: one /64) may open across all farm members; more are closed as they come, before a TLS handshake (each costs a member ~0.8 ms of CPU). sip_allow_networks are exempt. The default lets an office of a few hundred phones behind one NAT address reconnect, with retries, after a network outage.")
    sip_auth_failures_per_minute_per_ip: int = Field(30, ge=1, description="Failed digest authentications per minute one source address (IPv6: one /64) may have across all farm members before its requests get 403 for the rest of the window.")
    sip_credentials_cache_seconds: float = Field(3600.0, ge=0, le=86400, description="Seconds a farm member remembers an account's SIP digest credentials (HA1) from colony.auth.sip, in memory only (like access_auth_cache_ttl for logins): a phone's refresh then needs no round trip. A new password, a disabled or deleted account or a changed domain, class of service or alias drops it at once (the member watches the directory bucket; nothing is remembered while that watch is not running); this bounds what a stalled watch could hide. 0: ask every time.")
    sip_bindings_cache_seconds: float = Field(30.0, ge=0, description="Seconds a farm member answers from an account's registered contacts it read, wrote or saw change (its watch of sip_bindings keeps them current) before reading them again: a refresh or a call then needs no bus read. Bounds what a stalled watch could hide. 0: read every time.")
    sip_contact_deny_networks: str = Field(SIP_CONTACT_DENY_DEFAULT, description="Networks a SIP farm member never sends a request to when the address came from a phone's message, comma separated CIDRs: a REGISTER whose contact would be reached there -- the Contact's address, or for a phone behind NAT (rport, or packets from elsewhere than its Via) or on a connection the address its packets come from -- is refused 403 with a Warning, and a binding, in-dialog target (Route or Request-URI) or host name that leads there is not sent to. Otherwise any subscriber could register 127.0.0.1:5432 or an inner address and have the farm carry INVITEs into the provider's own network. The default: loopback, 0.0.0.0/8 and ::, link-local (169.254.169.254, the cloud metadata service), multicast, 240.0.0.0/4; add the networks of the farm's inner relay, the bus and other back-end hosts. `colony up` on a loopback host leaves loopback out (its phones are on this host). Empty: send anywhere.")
    sip_route_aliases: str = Field("", description="Names phones may be given as their outbound proxy, comma separated host or host:port (the balancer's public name, e.g. sip.example.net): a first Route header naming one of them, this member's own address or the caller's own SIP domain is the phone's preloaded route to the farm and is removed (RFC 3261 §16.4), not refused as a relay.")
    sip_record_route_host: str = Field("", description="The SIP farm's public name, written in its Record-Route instead of the member's own address (advertise_host and its SIP port): the balancer's name, or a DNS name with SRV records for every member (_sip._udp, _sip._tcp, _sips._tcp; RFC 3263). A dialog's later requests (ACK, re-INVITE, BYE) then go to any live member, so a call can still be ended after the member that routed it died; with the member's address they went to that member only, and in compose to a container name no phone can resolve. host, or host:port ([v6]:port) for a balancer on another port than 5060: each party is given it with its own transport (transport=udp, tcp or tls), so it must reach the farm on each of them, and a TLS certificate of the members must name it. The port is the UDP and TCP one; a TLS party gets sip_record_route_tls_port (a TLS listener is on another port than UDP and TCP). Without a port a phone takes the port from SRV, else 5060, 5061 for TLS. A WebSocket party keeps the member's address (a browser sends every request on its own connection). A Route naming it is the farm's own (removed, as sip_route_aliases). Empty: the member's address. `colony up` leaves it empty: members on one loopback host have no common name.")
    sip_record_route_tls_port: int = Field(0, ge=0, le=65535, description="Port written with sip_record_route_host in the Record-Route a party on TLS is given (with transport=tls): the balancer's TLS port. 0: none, the phone takes it from SRV (_sips._tcp), else 5061 -- also when sip_record_route_host names a port, which is the UDP and TCP one.")
    sip_allow_networks: str = Field("127.0.0.0/8, ::1/128", description="Sources exempt from the SIP rate limits, comma separated CIDRs: this host's own tools by default (as edge_allow_networks); add trunks and load testers. Empty: none.")

    # --- recipient resolution (colony.contracts.recipients) ----------------------------
    recipient_max_depth: int = Field(10, ge=1, le=100, description="Most alias/forwarding hops from a recipient to a final mailbox; deeper counts as a routing loop (550 5.4.6).")
    recipient_max_results: int = Field(1000, ge=1, description="Most final mailboxes and remote addresses one recipient may expand to; more is refused (550 5.5.3).")

    # --- DNS ---------------------------------------------------------------------------
    dns_servers: str = Field("", description="DNS servers for every lookup Colony makes (verification, DNSBL, SPF/DKIM/DMARC, MX), comma separated host[:port]. Empty: the system resolver.")
    dns_timeout: float = Field(3.0, gt=0, description="Seconds a DNS lookup may take before it counts as a temporary failure.")

    # --- telemetry ---------------------------------------------------------------------
    otlp_endpoint: str = Field("", description="OTLP/HTTP endpoint of an OpenTelemetry collector, e.g. http://otel:4318. Empty: tracing off.")
    log_level: str = Field("INFO", description="Python log level: DEBUG, INFO, WARNING, ERROR.")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        return (init_settings, env_settings, _TomlFileSource(settings_cls), file_secret_settings)

    @field_validator("*", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, value: Any, info: ValidationInfo) -> Any:
        """``COLONY_TLS_SNI_DIR=`` (any optional path) means what the key's description calls
        "Empty": not set.  Read as a path it would be ``.``, the working directory, used in its place."""
        if isinstance(value, str) and not value.strip() and cls.model_fields[info.field_name].annotation == Path | None:
            return None
        return value

    @field_validator("nats_url")
    @classmethod
    def _check_nats_url(cls, value: str) -> str:
        for url in value.split(","):
            if not url.strip().startswith(("nats://", "tls://", "ws://", "wss://")):
                raise ValueError(f"{url!r} is not a NATS URL; use nats://host:port")
        return value

    @field_validator("sip_digest_algorithms")
    @classmethod
    def _check_digest_algorithms(cls, value: str) -> str:
        names = [part.strip().upper() for part in value.split(",") if part.strip()]
        if not names or any(name not in ("MD5", "SHA-256") for name in names):
            raise ValueError(f"{value!r}: name MD5 and/or SHA-256, comma separated, most preferred first")
        return value

    @field_validator("edge_deny_networks", "edge_allow_networks", "sip_allow_networks", "proxy_protocol_from",
                     "sip_contact_deny_networks", "outbound_deny_networks")
    @classmethod
    def _check_networks(cls, value: str, info: ValidationInfo) -> str:
        from colony.netaddr import NetworkList

        NetworkList.parse(value, f"COLONY_{info.field_name.upper()}")   # the error names the key and the entry
        return value

    @field_validator("sip_record_route_host")
    @classmethod
    def _check_record_route_host(cls, value: str) -> str:
        """A SIP URI's hostport (RFC 3261 §25.1): a host name or address (IPv6 bracketed,
        written so here), and optionally ``:port``."""
        import ipaddress

        text = value.strip().lower()
        if not text:
            return ""
        fix = (f"COLONY_SIP_RECORD_ROUTE_HOST={value!r}: write host or host:port, an IPv6 address as [v6]:port, "
               "no sip: and no parameters, e.g. sip.example.net or sip.example.net:5080 (the TLS port is "
               "sip_record_route_tls_port)")
        host, port = text, ""
        try:
            ipaddress.IPv6Address(text)          # bare IPv6: every colon is the address's own
        except ValueError:
            if text.startswith("["):
                host, bracket, rest = text[1:].partition("]")
                if not bracket or (rest and not rest.startswith(":")):
                    raise ValueError(fix) from None
                port = rest[1:] if rest else ""
                if rest and not port:
                    raise ValueError(fix) from None
                try:
                    ipaddress.IPv6Address(host)
                except ValueError:
                    raise ValueError(fix) from None
            elif ":" in text:
                host, _, port = text.rpartition(":")
                if not port:
                    raise ValueError(fix)
        if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise ValueError(fix)
        suffix = f":{int(port)}" if port else ""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            if not re.fullmatch(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?", host):
                raise ValueError(fix) from None
            return host.rstrip(".") + suffix
        return (f"[{address}]" if address.version == 6 else str(address)) + suffix

    @field_validator("dnsbl_zones")
    @classmethod
    def _check_zones(cls, value: str) -> str:
        for item in filter(None, (part.strip() for part in value.split(","))):
            zone, _, weight = item.partition(":")
            try:
                if not zone.strip() or (weight and float(weight) <= 0):
                    raise ValueError
            except ValueError:
                raise ValueError(f"{item!r}: write zone[:weight] with a positive weight, e.g. zen.example:3") from None
        return value

    @field_validator("queue_retry_backoff")
    @classmethod
    def _check_backoff(cls, value: str) -> str:
        try:
            delays = [float(x) for x in value.split(",")]
        except ValueError:
            delays = []
        if not delays or any(d < 0 for d in delays):
            raise ValueError("use seconds separated by commas, e.g. 1,5,30,120,600")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        if value.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("use one of DEBUG, INFO, WARNING, ERROR")
        return value.upper()

    @model_validator(mode="after")
    def _check_together(self) -> "Settings":
        """Keys that must agree with each other: checked here, so a service stops at start with
        the configuration error rather than a traceback when it first uses them."""
        from colony.cluster.election import check_margin
        from colony.regions import check_layout

        check_margin(self.controller_lease_ttl, self.controller_safety_margin)
        if self.account_lease_safety_margin >= self.account_lease_ttl:
            raise ValueError(f"COLONY_ACCOUNT_LEASE_SAFETY_MARGIN ({self.account_lease_safety_margin:g}s) must be "
                             f"shorter than COLONY_ACCOUNT_LEASE_TTL ({self.account_lease_ttl:g}s): lower the margin "
                             "or raise the TTL")
        check_layout(self.region, self.region_list, self.primary)
        return self

    @property
    def advertised_host(self) -> str:
        if self.advertise_host:
            return self.advertise_host
        if self.host in ("0.0.0.0", "::", ""):
            return socket.gethostname()
        return self.host

    @property
    def authserv_id(self) -> str:
        """The name of our Authentication-Results (RFC 8601): the edge writes and deletes under
        it, the mail store trusts it (``edge_authserv_id``, else the advertised host)."""
        return self.edge_authserv_id or self.advertised_host

    @property
    def region_list(self) -> list[str]:
        """The regions of the super cluster ([] for a single region)."""
        return [r.strip() for r in self.regions.split(",") if r.strip()]

    @property
    def primary(self) -> str:
        """The primary region (this one when there are no regions)."""
        return self.primary_region or (self.region_list[0] if self.region_list else self.region)

    @property
    def nats_servers(self) -> list[str]:
        return [u.strip() for u in self.nats_url.split(",")]

    @property
    def shared_storage(self) -> Path:
        return self.storage_dir or self.data_dir / "storage"

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url_file is not None:
            try:
                url = self.database_url_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"COLONY_DATABASE_URL_FILE: cannot read {self.database_url_file} ({exc.strerror}); "
                                  "point it at the file `colony deploy init` wrote") from None
            if not url:
                raise ConfigError(f"COLONY_DATABASE_URL_FILE: {self.database_url_file} is empty; write the URL into it")
            from sqlalchemy.engine import make_url
            from sqlalchemy.exc import ArgumentError, NoSuchModuleError

            try:
                make_url(url).get_dialect()
            except (ArgumentError, NoSuchModuleError, ValueError):
                # the message leaves the file's content out: it holds the database password
                raise ConfigError(f"COLONY_DATABASE_URL_FILE: {self.database_url_file} does not hold a SQLAlchemy URL; "
                                  "write one such as postgresql+psycopg://user:password@host:5432/db into it, "
                                  "and nothing else") from None
            return url
        return self.database_url or f"sqlite:///{(self.data_dir / 'admin.sqlite3').resolve()}"


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, turning validation errors into one message per bad key."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if key:
                lines.append(f"COLONY_{key.upper()}: {err['msg']} (got {err.get('input')!r})")
            else:   # a rule over several keys: its message names them
                lines.append(str(err["ctx"]["error"]) if "error" in err.get("ctx", {}) else err["msg"])
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
