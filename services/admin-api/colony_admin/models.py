"""The provisioning model as the API shows it: domains, accounts, aliases, classes of service, tokens.

These pydantic models are both the API's request/response schemas (so OpenAPI documents
them) and the validated shapes the aggregates store in events (``model_dump``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from colony.bus.tokens import normalise_domain
from colony_admin.auth import passwords

_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$")
# Local parts: the dot-atom of RFC 5322 (lower-cased); enough for real mailboxes, and no
# characters that need quoting anywhere we print them.
_LOCAL_RE = re.compile(r"^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_COS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_COLOUR_RE = re.compile(r"^#[0-9a-fA-F]{6}$")


def check_domain(value: str) -> str:
    domain = normalise_domain(value)
    if not _DOMAIN_RE.match(domain):
        raise ValueError(f"{value!r} is not a domain name (e.g. acme.example)")
    return domain


def check_local(value: str) -> str:
    local = value.strip().lower()
    if len(local) > 64 or not _LOCAL_RE.match(local):
        raise ValueError(f"{value!r} is not a mailbox name (letters, digits, . _ - + and the like)")
    return local


def check_address(value: str) -> str:
    local, sep, domain = value.strip().rpartition("@")
    if not sep:
        raise ValueError(f"{value!r} is not an address (local@domain)")
    return f"{check_local(local)}@{check_domain(domain)}"


def check_cos_name(value: str) -> str:
    if not _COS_RE.fullmatch(value):  # match() let "gold\n" through: $ also matches before a final newline
        raise ValueError(f"{value!r} is not a class-of-service name (letters, digits, _ . -; max 64)")
    return value


def check_password_hash(value: str) -> str:
    try:
        return passwords.normalise(value)[0]
    except passwords.UnsupportedHash as exc:
        raise ValueError(str(exc)) from None


DomainName = Annotated[str, AfterValidator(check_domain)]
PasswordHash = Annotated[str, AfterValidator(check_password_hash)]
LocalPart = Annotated[str, AfterValidator(check_local)]
Address = Annotated[str, AfterValidator(check_address)]
CosName = Annotated[str, AfterValidator(check_cos_name)]


MAX_INT = 2**63 - 1  # a 64-bit SQL integer (BIGINT, SQLite INTEGER)


def storable(value: Any) -> Any:
    """Only what the read model can store: no NUL in text (PostgreSQL refuses it), no
    integer beyond 64 bits (both databases refuse it).  An event the read model refuses is
    skipped by its projection (PostgreSQL) or stalls it (SQLite's OverflowError): the object
    would be in the event log and the directory but never in lists, deletion checks would
    miss it, and on SQLite nothing after it would be projected at all."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("NUL characters are not allowed")
    elif isinstance(value, int):
        if not -MAX_INT - 1 <= value <= MAX_INT:
            raise ValueError(f"numbers must lie within ±{MAX_INT}")
    elif isinstance(value, (list, tuple, set)):
        for item in value:
            storable(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            storable(key)
            storable(item)
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        return storable(value)

    @field_validator("*", mode="after")
    @classmethod
    def _storable_parsed(cls, value: Any) -> Any:
        # A number sent as text -- "1000000000000000000000000000000" in JSON, or any CSV cell of
        # a bulk import -- is a str before parsing and an int only after it, past the check above.
        return storable(value)


class _Patch(_Strict):
    """A partial update: only the fields sent change.  ``null`` clears a field that may be
    empty (listed in ``clearable``) and means "no change" for any other."""

    clearable: ClassVar[frozenset[str]] = frozenset()

    def changes(self) -> dict[str, Any]:
        sent = self.model_dump(mode="json", exclude_unset=True)
        return {k: v for k, v in sent.items() if v is not None or k in self.clearable}


# --- enums -------------------------------------------------------------------------------

class Service(StrEnum):
    MAIL = "mail"
    IMAP = "imap"
    POP = "pop"
    SIP = "sip"


class DomainState(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


class AccountState(StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"


class AccountFoldering(StrEnum):
    """Seed's account-level foldering under the domain directory.

    ``none``: ``jsmith.macnt``; ``1``: ``j.sub/jsmith.macnt``; ``1-1``:
    ``j.sub/s.sub/jsmith.macnt``; ``2-1``: ``js.sub/m.sub/jsmith.macnt`` (the seed's third
    example); ``2-2``: ``js.sub/mi.sub/jsmith.macnt``.
    """

    NONE = "none"
    ONE = "1"
    ONE_ONE = "1-1"
    TWO_ONE = "2-1"
    TWO_TWO = "2-2"


class Role(StrEnum):
    SYSTEM_ADMIN = "system-admin"
    DOMAIN_ADMIN = "domain-admin"
    BILLING_READER = "billing-reader"


# --- domain ------------------------------------------------------------------------------

class Branding(_Strict):
    """What the domain's users see: web login page and client branding."""

    display_name: str = Field("", max_length=200)
    logo_url: str = Field("", max_length=2000, pattern=r"^(https?://\S+)?$")
    primary_colour: str | None = Field(None, description="#rrggbb", pattern=_COLOUR_RE.pattern)
    secondary_colour: str | None = Field(None, description="#rrggbb", pattern=_COLOUR_RE.pattern)
    login_text: str = Field("", max_length=4000)


class StorageLayout(_Strict):
    """Where the domain's accounts live on shared storage (DESIGN §5)."""

    account_foldering: AccountFoldering = AccountFoldering.NONE
    domain_foldering: bool = Field(False, description="c.sub/company.com/ instead of company.com/")
    fast_storage_index: int | None = Field(None, ge=0, le=1000, description="Fast-storage element; none: off")


class DmarcEnforcement(StrEnum):
    """What the edges do with inbound mail that fails its sender's DMARC check, for this
    recipient domain: ``enforce`` (refuse p=reject, file p=quarantine in Junk),
    ``quarantine`` (never refuse, file in Junk), ``none`` (only mark it)."""

    ENFORCE = "enforce"
    QUARANTINE = "quarantine"
    NONE = "none"


_DMARC_DESCRIPTION = "DMARC choice for inbound mail to this domain; null: the cluster default (dmarc_enforcement)"


class DomainCreate(_Strict):
    name: DomainName
    home_region: str = Field("", max_length=64, pattern=r"^[A-Za-z0-9_-]*$")
    cos: CosName | None = None
    branding: Branding = Field(default_factory=Branding)
    storage: StorageLayout = Field(default_factory=StorageLayout)
    dmarc_enforcement: DmarcEnforcement | None = Field(None, description=_DMARC_DESCRIPTION)


class DomainPatch(_Patch):
    """System administrators only (domain administrators change branding with PUT …/branding)."""

    clearable: ClassVar[frozenset[str]] = frozenset({"cos", "dmarc_enforcement"})

    home_region: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_-]*$")
    cos: CosName | None = None
    branding: Branding | None = None
    storage: StorageLayout | None = None
    dmarc_enforcement: DmarcEnforcement | None = Field(None, description=_DMARC_DESCRIPTION)


class DomainMoveSummary(BaseModel):
    move_id: str
    source: str
    target: str
    phase: str = Field(description="requested, routing, copying, sealing, flipped, done, or cancelled (withdrawn before it started)")


class DomainOut(BaseModel):
    name: str
    state: DomainState
    home_region: str
    cos: str | None
    branding: Branding
    storage: StorageLayout
    dmarc_enforcement: DmarcEnforcement | None = None
    move: DomainMoveSummary | None = Field(None, description="The domain's latest move to another region; "
                                           "null: never moved (GET /v1/domains/{d}/move shows its progress)")
    version: int = Field(description="Aggregate version; send it back in If-Match to update safely")


class DomainMoveRequest(_Strict):
    region: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
                        description="The region to move the domain to (one of the super cluster's regions)")


class DomainMoveOut(BaseModel):
    domain: str
    move_id: str
    source: str = Field(description="The home region when the move was asked for ('' for a domain that had none)")
    target: str
    phase: str = Field(description="requested, routing, copying, sealing, flipped, done, or cancelled (withdrawn before it started)")
    since: datetime = Field(description="When the current phase was recorded")
    accounts: int = Field(description="Accounts being copied (fixed when copying begins; 0 before)")
    accounts_verified: int = Field(description="Accounts whose current copy pass is verified")
    copy_pass: int = Field(description="1: the bulk copy while users work; 2: the catch-up while sealed; 0: none yet")
    stuck: str | None = Field(None, description="Set when an account's copy did not verify after repeated "
                              "attempts: the account and the mismatch; an operator looks")


class SuspendRequest(_Strict):
    reason: str = Field("", max_length=500)


# --- class of service ----------------------------------------------------------------------

class CosLimits(_Strict):
    services: list[Service] = Field(default_factory=lambda: list(Service))
    quota_bytes: int | None = Field(None, ge=0, description="Mailbox quota; none: unlimited")
    max_message_bytes: int | None = Field(None, ge=0)
    max_recipients_per_message: int | None = Field(None, ge=1)
    sending_rate_per_hour: int | None = Field(None, ge=0)


class CosCreate(_Strict):
    name: CosName
    description: str = Field("", max_length=500)
    limits: CosLimits = Field(default_factory=CosLimits)


class CosPatch(_Patch):
    description: str | None = Field(None, max_length=500)
    limits: CosLimits | None = None


class CosOut(BaseModel):
    name: str
    description: str
    limits: CosLimits
    version: int


# --- accounts and aliases --------------------------------------------------------------------

class SipCredentials(_Strict):
    """SIP digest credentials brought from another system: HA1 = H(user:realm:password) per
    algorithm, so phones keep working after a migration without anyone knowing the password.
    A Colony domain is its own SIP realm, so the HA1 must have been made for that realm."""

    md5: str | None = Field(None, pattern=r"^[0-9a-fA-F]{32}$", description="HA1 for MD5 digest (32 hex)")
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$", description="HA1 for SHA-256 digest (64 hex)")
    realm: DomainName | None = Field(None, description="The realm they were made for; must be the domain")

    def ha1(self) -> dict[str, str]:
        out = {"MD5": self.md5, "SHA-256": self.sha256}
        return {k: v.lower() for k, v in out.items() if v}


def _one_password(model: Any) -> Any:
    if model.password is not None and model.password_hash is not None:
        raise ValueError("give password or password_hash, not both")
    return model


VACATION_BODY_MAX = 16 * 1024   # bytes of UTF-8: the reply's text, sent once per sender and `days`
VACATION_SUBJECT_MAX = 200


def _one_line(value: str | None) -> str | None:
    if value is not None and any(not c.isprintable() for c in value):
        raise ValueError("must be one line of printable characters")
    return value


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("must carry its UTC offset (e.g. 2026-12-24T00:00:00Z)")
    return value.astimezone(UTC)


class Vacation(_Strict):
    """An automatic reply ("out of office", RFC 3834 / RFC 5230 vacation) to mail this account
    receives: at most one per sender every ``days``, never to lists, robots or auto-replies."""

    enabled: bool = True
    subject: Annotated[str | None, AfterValidator(_one_line)] = Field(
        None, min_length=1, max_length=VACATION_SUBJECT_MAX,
        description='The reply\'s Subject; none: "Auto: <the original subject>"')
    body: str = Field(min_length=1, description=f"The reply's text (UTF-8, at most {VACATION_BODY_MAX} bytes)")
    start: Annotated[datetime | None, AfterValidator(_utc)] = Field(
        None, description="UTC; before it, nothing is answered")
    end: Annotated[datetime | None, AfterValidator(_utc)] = Field(
        None, description="UTC; from it on, nothing is answered")
    days: int = Field(7, ge=1, le=365, description="Days before the same sender is answered again (RFC 5230 :days)")
    addresses: list[Address] = Field(default_factory=list, max_length=20,
                                     description="The user's other addresses (aliases): mail that names one of "
                                                 "them, or the account, in To/Cc/Bcc is answered")

    @field_validator("body")
    @classmethod
    def _bounded(cls, value: str) -> str:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValueError("must be UTF-8 text") from None
        if size > VACATION_BODY_MAX:
            raise ValueError(f"is {size} bytes as UTF-8; at most {VACATION_BODY_MAX}")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> Vacation:
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError("end must come after start")
        return self


class AccountCreate(_Strict):
    name: LocalPart = Field(description="Local part; the address is name@domain")
    real_name: str = Field("", max_length=200)
    password: str | None = Field(None, min_length=8, max_length=1024, description="Write-only; stored as argon2")
    password_hash: PasswordHash | None = Field(
        None, max_length=passwords.MAX_HASH_LENGTH,
        description="Write-only, instead of password: a hash from another mail system in Dovecot's notation "
                    "({SHA512-CRYPT}, {SHA256-CRYPT}, {BLF-CRYPT}, {ARGON2ID}, {ARGON2I}, {SSHA512}, {SSHA256}, "
                    "{SSHA}, {CRYPT}, {MD5-CRYPT}); re-hashed to argon2id at the next login")
    sip_ha1: SipCredentials | None = Field(None, description="Write-only: imported SIP digest credentials")
    cos: CosName | None = Field(None, description="System administrators only; none: the domain's")
    quota_bytes: int | None = Field(None, ge=0, description="Capped by the class of service")
    services: list[Service] | None = Field(None, description="Subset of the class of service's; none: all of them")
    forwarding: list[Address] = Field(default_factory=list, max_length=20)
    forward_keep_copy: bool = Field(False, description="With forwarding: also keep a copy in this mailbox "
                                                       "(false: forwarding replaces delivery here)")
    state: AccountState = AccountState.ACTIVE

    _check = model_validator(mode="after")(_one_password)


class AccountPatch(_Patch):
    clearable: ClassVar[frozenset[str]] = frozenset({"cos", "quota_bytes", "services", "vacation"})

    real_name: str | None = Field(None, max_length=200)
    password: str | None = Field(None, min_length=8, max_length=1024)
    password_hash: PasswordHash | None = Field(None, max_length=passwords.MAX_HASH_LENGTH,
                                               description="Instead of password: see AccountCreate")
    sip_ha1: SipCredentials | None = Field(None, description="Replace the SIP digest credentials")
    cos: CosName | None = None
    quota_bytes: int | None = Field(None, ge=0)
    services: list[Service] | None = None
    forwarding: list[Address] | None = Field(None, max_length=20)
    forward_keep_copy: bool | None = None
    vacation: Vacation | None = Field(None, description="The automatic reply; null: none")
    state: AccountState | None = None

    _check = model_validator(mode="after")(_one_password)


class AccountOut(BaseModel):
    address: str
    domain: str
    name: str
    real_name: str
    cos: str | None
    quota_bytes: int | None
    services: list[Service] | None
    forwarding: list[str]
    forward_keep_copy: bool
    vacation: Vacation | None = None
    state: AccountState
    has_password: bool
    version: int


class AliasCreate(_Strict):
    name: LocalPart
    targets: list[Address] = Field(min_length=1, max_length=100)


class AliasPatch(_Strict):
    targets: list[Address] = Field(min_length=1, max_length=100)


class AliasOut(BaseModel):
    address: str
    domain: str
    name: str
    targets: list[str]
    version: int


class DomainAliasCreate(_Strict):
    name: DomainName


class DomainAliasOut(BaseModel):
    name: str
    domain: str
    version: int


class NameVerification(BaseModel):
    """The DNS record that proves control of a name a domain administrator wants as a domain
    alias (system administrators need none)."""

    name: str = Field(description="The name to be claimed")
    domain: str = Field(description="The domain claiming it")
    record_name: str = Field(description="Where to publish the record: the name itself")
    record_type: str = "TXT"
    record_value: str = Field(description="colony-verification=<token>")
    verified: bool = Field(description="Whether DNS shows the record right now")
    lookup_error: str | None = Field(None, description="Set when DNS did not answer (neither proof nor disproof)")


# --- tokens ------------------------------------------------------------------------------------

class TokenCreate(_Strict):
    name: str = Field(min_length=1, max_length=200, description="Who or what holds it, e.g. admin@acme.example")
    role: Role
    domain: DomainName | None = Field(None, description="Required for domain-admin, forbidden otherwise")


class TokenOut(BaseModel):
    id: str
    name: str
    role: Role
    domain: str | None
    revoked: bool
    created_by: str
    created_at: datetime | None


class TokenCreated(TokenOut):
    token: str = Field(description="The bearer token. Shown once; only its hash is stored")


class WhoAmI(BaseModel):
    token_id: str
    name: str
    role: Role
    domain: str | None


# --- pages, usage, audit, imports ------------------------------------------------------------------

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null at the end")


class UsageRow(BaseModel):
    domain: str
    account: str | None = Field(description="null: the domain's total")
    storage_bytes: float = Field(description="Latest reported value in the period (a gauge)")
    messages_in: float
    messages_out: float
    sip_call_seconds: float
    sip_registrations: float


class UsageReport(BaseModel):
    start: datetime = Field(alias="from")
    end: datetime = Field(alias="to")
    domain: str | None
    rows: list[UsageRow]

    model_config = ConfigDict(populate_by_name=True)


class AuditEntry(BaseModel):
    seq: int
    at: datetime
    actor: str
    role: str
    action: str
    target: str
    domain: str | None
    remote_addr: str | None
    outcome: str
    detail: dict[str, Any]


class ImportJob(BaseModel):
    id: str
    state: str = Field(description="running, done or failed")
    total: int
    done: int
    failed: int
    domains_created: int
    accounts_created: int
    unchanged: int = Field(0, description="Rows already present and equal (a re-run changes nothing)")
    updated: int = Field(0, description="Accounts that differed and were changed (with ?update=true)")
    errors: list[str] = Field(description="First 100 row errors: 'row N: reason'")
    warnings: list[str] = Field(default_factory=list,
                                description="First 100 warnings, e.g. a weak password scheme: 'row N: …'")
    tokens: list[dict[str, str]] = Field(
        default_factory=list,
        description="With ?admin_tokens=true: one domain-admin token per created domain (shown once)",
    )
