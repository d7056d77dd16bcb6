"""The ``directory`` KV bucket and the directory lookup, typed.

The admin API's directory projection writes one key per provisioning aggregate
(``names.directory_key``); every value is JSON with the aggregate's current state minus its
secrets, plus ``seq`` (the PROVISIONING sequence it reflects).  Wire formats::

    domain.<token>        {"kind": "domain", "name": "acme.example", "state": "active" | "suspended",
                           "home_region": "eu", "cos": "gold" | null, "branding": {...},
                           "storage": {"account_foldering": "none" | "1" | "1-1" | "2-1" | "2-2",
                                       "domain_foldering": false, "fast_storage_index": null},
                           "move": {"move_id": "...", "source": "eu", "target": "us",
                                    "phase": "requested" | "routing" | "copying" | "sealing" | "flipped" | "done"
                                             | "cancelled",
                                    "since": "<ISO 8601>"} (absent: never moved),
                           "seq": 17}
    address.<token>       {"kind": "account", "address": "amy@acme.example", "domain": "acme.example",
                           "name": "amy", "real_name": "Amy", "cos": null, "quota_bytes": null,
                           "services": ["mail", "imap"] | null, "forwarding": ["amy@else.example"],
                           "forward_keep_copy": false, "state": "active" | "disabled",
                           "vacation": {"enabled": true, "subject": "Away" | null, "body": "Back on the 3rd.",
                                        "start": "<ISO 8601, UTC>" | null, "end": ... | null, "days": 7,
                                        "addresses": ["sales@acme.example"]} | null (absent: none),
                           "seq": 18}
                       or {"kind": "alias", "address": "team@acme.example", "domain": "acme.example",
                           "name": "team", "targets": ["amy@acme.example", "bob@else.example"], "seq": 19}
    domain_alias.<token>  {"kind": "domain_alias", "name": "acme-mail.example", "domain": "acme.example", "seq": 20}
    cos.<token>           {"kind": "cos", "name": "gold", "description": "",
                           "limits": {"services": [...], "quota_bytes": ..., "max_message_bytes": ...,
                                      "max_recipients_per_message": ..., "sending_rate_per_hour": ...},
                           "seq": 21}
    any key, deleted      {"deleted": true, "seq": 22}   (a KV delete or purge means the same)
    position.provisioning {"seq": 1234}   (``POSITION_KEY``: every PROVISIONING event up to this
                                           sequence is in the bucket; the projection's checkpoint)

Readers ignore fields they do not know (a newer writer may add some), so these models use
``extra="ignore"``; ``forward_keep_copy`` is optional (absent: false, forwarding replaces
local delivery), and so is ``vacation`` (absent or null: no automatic reply).

Besides the wire models, this module defines the small immutable *views* the recipient
resolver and ``DirectoryCache`` work with (``DomainInfo``, ``AccountInfo``, ``AliasInfo``):
tuples, because an edge holds a million of them.

``colony.dir.lookup`` (``names.DIRECTORY_LOOKUP``, served by the admin API)::

    request  {"kind": "domain" | "address" | "domain_alias" | "cos", "name": "amy@acme.example"}
    reply    {"found": true, "entry": {<the value above>}}
          or {"found": false}
          or {"found": false, "error": "bad request: ..."}

``colony.dir.accounts`` (``names.DIRECTORY_DOMAIN_ACCOUNTS``, served by the admin API from its
read model): one page of a domain's account addresses, in order of their local part, read as
a range of the read model's (domain, name) index -- bounded by the domain and the page, never
by the cluster (the directory's ``address.<token>`` keys end in the domain, so no key filter
selects a domain's)::

    request  {"domain": "acme.example", "after": "amy" | null, "limit": 1000}
    reply    {"accounts": ["bob@acme.example", ...], "next_after": "zed" | null}
          or {"accounts": [], "error": "bad request: ..."}

``next_after`` (the last local part of a full page) is the next request's ``after``; null
when the page was the last.  ``DirectoryClient.domain_accounts`` pages through them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, NamedTuple

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from colony.bus import names

POSITION_KEY = "position.provisioning"  # not an entry: readers of entries skip its kind


class EntryKind(StrEnum):
    """What a key of the directory names (the first token of the key)."""

    DOMAIN = names.AGG_DOMAIN
    ADDRESS = names.AGG_ADDRESS
    DOMAIN_ALIAS = names.AGG_DOMAIN_ALIAS
    COS = names.AGG_COS


ACTIVE = "active"  # the one state of a domain or account in which it receives and logs in


class _Entry(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    seq: int = Field(0, description="PROVISIONING sequence this state reflects")


class StorageSettings(BaseModel):
    """Where a domain's accounts live on shared storage (see the storage layout)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    account_foldering: Literal["none", "1", "1-1", "2-1", "2-2"] = "none"
    domain_foldering: bool = False
    fast_storage_index: int | None = None


class DomainMoveEntry(BaseModel):
    """The domain's latest move to another region (``colony.domain_move``)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    move_id: str
    source: str = ""
    target: str
    phase: Literal["requested", "routing", "copying", "sealing", "flipped", "done", "cancelled"]
    since: str = ""


class DomainEntry(_Entry):
    kind: Literal["domain"] = "domain"
    name: str
    state: str = ACTIVE
    home_region: str = ""
    cos: str | None = None
    branding: dict[str, Any] = Field(default_factory=dict)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    dmarc_enforcement: Literal["enforce", "quarantine", "none"] | None = None
    move: DomainMoveEntry | None = None

    def info(self) -> DomainInfo:
        moving = self.move is not None and self.move.phase not in ("done", "cancelled")
        return DomainInfo(self.name, self.state, self.home_region, self.cos, self.dmarc_enforcement,
                          self.move.phase if moving else None, self.move.target if moving else "",
                          str(self.branding.get("display_name") or ""))


def _utc_if_naive(value: datetime | None) -> datetime | None:
    # The admin API writes UTC offsets; a bare time compared with the store's aware clock
    # would raise at every message instead of meaning UTC, as the wire says.
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class VacationEntry(BaseModel):
    """An account's automatic reply (the admin API's ``Vacation``, validated there)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    enabled: bool = True
    subject: str | None = None
    body: str = ""
    start: Annotated[datetime | None, AfterValidator(_utc_if_naive)] = None
    end: Annotated[datetime | None, AfterValidator(_utc_if_naive)] = None
    days: int = Field(7, ge=1)
    addresses: tuple[str, ...] = ()


class AccountEntry(_Entry):
    kind: Literal["account"] = "account"
    address: str
    domain: str
    name: str
    real_name: str = ""
    cos: str | None = None
    quota_bytes: int | None = None
    services: list[str] | None = None
    forwarding: list[str] = Field(default_factory=list)
    forward_keep_copy: bool = False
    vacation: VacationEntry | None = None
    state: str = ACTIVE

    @field_validator("vacation", mode="wrap")
    @classmethod
    def _vacation_or_none(cls, value: Any, handler) -> VacationEntry | None:
        """A vacation that does not parse (another writer's) is none, not a lost account: the
        mail store reads this entry to store every message and to let every session in."""
        try:
            return handler(value)
        except ValidationError:
            return None

    def info(self) -> AccountInfo:
        return AccountInfo(self.address, self.state, self.cos, self.quota_bytes,
                           tuple(self.services) if self.services is not None else None,
                           tuple(self.forwarding), self.forward_keep_copy, self.vacation)


class AliasEntry(_Entry):
    kind: Literal["alias"] = "alias"
    address: str
    domain: str
    name: str
    targets: list[str]

    def info(self) -> AliasInfo:
        return AliasInfo(self.address, tuple(self.targets))


class DomainAliasEntry(_Entry):
    kind: Literal["domain_alias"] = "domain_alias"
    name: str
    domain: str


class CosEntry(_Entry):
    kind: Literal["cos"] = "cos"
    name: str
    description: str = ""
    limits: dict[str, Any] = Field(default_factory=dict)


class Deleted(_Entry):
    """A tombstone: the aggregate was deleted (edges treat it as a missing key)."""

    deleted: Literal[True] = True


Entry = Annotated[DomainEntry | AccountEntry | AliasEntry | DomainAliasEntry | CosEntry,
                  Field(discriminator="kind")]
_ENTRY = TypeAdapter(Entry)


class BadEntry(ValueError):
    """A directory value that is not one of the shapes above."""


def parse_entry(data: bytes | str) -> DomainEntry | AccountEntry | AliasEntry | DomainAliasEntry | CosEntry | None:
    """One directory value -> its model, or None for a tombstone or an empty value."""
    if not data:
        return None
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadEntry(f"not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise BadEntry("not a JSON object")
    if raw.get("deleted"):
        return None
    try:
        return _ENTRY.validate_python(raw)
    except ValidationError as exc:
        raise BadEntry(str(exc).splitlines()[0]) from exc


def split_key(key: str) -> tuple[str, str]:
    """``address.amy_40acme_2eexample`` -> (``address``, token)."""
    kind, _, token = key.partition(".")
    return kind, token


# --- views: what the resolver reads (tuples: an edge keeps a million of them) -----------------

_ROUTED_PHASES = frozenset({"routing", "copying", "sealing", "flipped"})


class DomainInfo(NamedTuple):
    name: str
    state: str
    home_region: str
    cos: str | None
    dmarc: str | None = None        # the domain's DMARC choice (enforce/quarantine/none); None: cluster default
    move_phase: str | None = None   # a move to another region under way: its phase (never "done"); None: not moving
    move_target: str = ""           # ... and the region it moves to
    display_name: str = ""          # its branding's display name (mail clients' account wizards show it)

    @property
    def mail_region(self) -> str:
        """Where new mail for the domain goes: the move's target from ``routing`` on (the
        target's stores take it while the old mail is copied over), else the home region."""
        return self.move_target if self.move_phase in _ROUTED_PHASES else self.home_region


class AccountInfo(NamedTuple):
    address: str
    state: str
    cos: str | None
    quota_bytes: int | None
    services: tuple[str, ...] | None  # None: whatever the class of service grants
    forwarding: tuple[str, ...]
    keep_copy: bool                   # forwarding also keeps a copy in this mailbox
    vacation: VacationEntry | None = None   # the automatic reply (the owning mail store sends it)


class AliasInfo(NamedTuple):
    address: str
    targets: tuple[str, ...]


# --- colony.dir.lookup --------------------------------------------------------------------------

class DirectoryLookupRequest(BaseModel):
    """``{"kind": "address", "name": "amy@acme.example"}``"""

    model_config = ConfigDict(extra="forbid")

    kind: EntryKind
    name: str = Field(min_length=1, max_length=320)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> DirectoryLookupRequest:
        return cls.model_validate_json(data)


class DirectoryLookupReply(BaseModel):
    """``{"found": true, "entry": {...}}``, ``{"found": false}`` or ``{"found": false, "error": "..."}``"""

    found: bool
    entry: Entry | None = None
    error: str | None = None

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> DirectoryLookupReply:
        return cls.model_validate_json(data)


MAX_ACCOUNTS_PAGE = 1000   # addresses in one reply: ~100 KiB, well under the bus's max payload


class DomainAccountsRequest(BaseModel):
    """``{"domain": "acme.example", "after": "amy", "limit": 1000}``"""

    model_config = ConfigDict(extra="forbid")

    domain: str = Field(min_length=1, max_length=255)
    after: str | None = Field(None, max_length=320)
    limit: int = Field(MAX_ACCOUNTS_PAGE, ge=1, le=MAX_ACCOUNTS_PAGE)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class DomainAccountsReply(BaseModel):
    """``{"accounts": [...], "next_after": "zed" | null}`` or ``{"accounts": [], "error": "..."}``"""

    accounts: list[str]
    next_after: str | None = None
    error: str | None = None

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> DomainAccountsReply:
        return cls.model_validate_json(data)
