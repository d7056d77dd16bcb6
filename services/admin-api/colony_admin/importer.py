"""Bulk import: parse CSV or JSON rows into domain and account commands (pure).

One row per account, or a row with only a domain to create an empty domain.  Columns (CSV
header or JSON object keys; only ``domain`` is required)::

    domain        the domain (created if missing)
    domain_cos    its class of service (new domains only; empty: the cluster's default_cos)
    display_name  its branding display name (new domains only)
    account       local part, or a full address in ``domain``
    real_name     the account holder's name
    password      a plaintext password (hashed to argon2id here), or instead
    password_hash a hash from the old system in Dovecot's notation: {SHA512-CRYPT}, {SHA256-CRYPT},
                  {BLF-CRYPT}, {ARGON2ID}, {ARGON2I}, {SSHA512}, {SSHA256}, {SSHA}, {CRYPT},
                  {MD5-CRYPT} (.b64/.hex for SSHA*), or a bare $argon2id$/$2y$/$6$/$5$/$1$ string;
                  verified by the auth check and re-hashed to argon2id at the next login; a weak
                  scheme (SSHA*, MD5/DES crypt) is accepted with a warning in the report
    sip_ha1_md5, sip_ha1_sha256
                  SIP digest HA1 = H(user:realm:password) from the old system (32 / 64 hex), so
                  phones keep working; without them, HA1 is derived from a plaintext password
    sip_realm     the realm those HA1 were made for; must be the domain (its SIP realm)
    cos, quota_bytes, services, forwarding
                  the account's class of service, quota, enabled services and forwarding
    forward_keep_copy
                  true: forwarded mail is also kept in the account (default false: forwarding
                  replaces delivery); true/false, yes/no or 1/0

``services`` and ``forwarding`` are lists (JSON) or space/semicolon separated (CSV).  JSON is
a list of such objects (or {"rows": [...]}).  An empty cell is the same as a missing column:
it sets nothing, and a re-run compares only the columns a row fills.

Running an import again is safe: an account that exists and equals its row is counted
``unchanged``; one that differs is a row error unless the import runs with ``update``, which
changes it (``colony domain import --update``).
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from colony_admin.auth import passwords
from colony_admin.models import AccountCreate, Branding, DomainCreate

_SPLIT = re.compile(r"[;\s]+")
KNOWN = {"domain", "domain_cos", "display_name", "account", "real_name", "password", "password_hash", "cos",
         "quota_bytes", "services", "forwarding", "forward_keep_copy", "sip_ha1_md5", "sip_ha1_sha256", "sip_realm"}
COLUMNS = __doc__.split("::", 1)[1].split("``services`` and", 1)[0].strip("\n")  # for the CLI's --help


MAX_WARNINGS = 100  # the report shows the first ones; a million weak rows must not mean a million strings


class ImportFormatError(ValueError):
    pass


@dataclass
class AccountRow:
    row: int
    domain: str
    account: AccountCreate

    @property
    def password_hash(self) -> str | None:
        return self.account.password_hash


@dataclass
class Plan:
    domains: dict[str, DomainCreate] = field(default_factory=dict)  # first row of each domain wins
    accounts: list[AccountRow] = field(default_factory=list)
    domain_only_rows: dict[str, int] = field(default_factory=dict)  # rows that only name a domain
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rows: int = 0


def parse(body: bytes, fmt: str) -> list[dict[str, Any]]:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ImportFormatError("the file is not UTF-8") from None
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        try:  # csv.Error: a cell over the module's field limit (128 KiB), a stray quote in strict mode
            if not reader.fieldnames or "domain" not in [f.strip() for f in reader.fieldnames]:
                raise ImportFormatError("the CSV needs a header row with at least a 'domain' column")
            return [{(k or "").strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
        except csv.Error as exc:
            raise ImportFormatError(f"not CSV after line {reader.line_num}: {exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ImportFormatError(f"not JSON: {exc}") from None
    except RecursionError:  # the decoder recurses per nesting level; no import nests deeper than 3
        raise ImportFormatError("not an import: JSON nested too deeply") from None
    if isinstance(data, dict):
        data = data.get("rows")
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ImportFormatError("JSON must be a list of objects (or {\"rows\": [...]})")
    return data


def _list(value: Any) -> list[str] | None:
    if value in (None, ""):
        return None
    if isinstance(value, list):
        return [str(v) for v in value]
    return [v for v in _SPLIT.split(str(value)) if v]


def _blank(value: Any) -> Any:
    return None if value == "" else value


# The account's columns, by what a filled cell becomes: an AccountCreate field as it is, a
# list (``_list``), or a key of its SIP credentials.
_FIELD, _LIST = "field", "list"
_ACCOUNT_COLUMNS: dict[str, str] = {
    "real_name": _FIELD, "password": _FIELD, "password_hash": _FIELD, "cos": _FIELD, "quota_bytes": _FIELD,
    "forward_keep_copy": _FIELD, "services": _LIST, "forwarding": _LIST,
    "sip_ha1_md5": "md5", "sip_ha1_sha256": "sha256", "sip_realm": "realm"}


def plan(rows: list[dict[str, Any]]) -> Plan:
    out = Plan(rows=len(rows))
    seen: dict[tuple[Any, Any, Any], DomainCreate] = {}
    for n, raw in enumerate(rows, start=1):
        if not KNOWN.issuperset(raw):
            out.errors.append(f"row {n}: unknown column(s) {sorted(set(raw) - KNOWN)}")
            continue
        # Validated once per distinct domain spelling: an import is mostly many account rows
        # repeating their company's domain.
        key = (str(raw.get("domain", "")), raw.get("domain_cos"), raw.get("display_name"))
        domain_cmd = seen.get(key)
        if domain_cmd is None:
            try:
                domain_cmd = DomainCreate(name=key[0], cos=_blank(key[1]),
                                          branding=Branding(display_name=str(key[2] or "")))
            except ValidationError as exc:
                out.errors.append(f"row {n}: {_first(exc)}")
                continue
            seen[key] = domain_cmd
        domain = domain_cmd.name
        out.domains.setdefault(domain, domain_cmd)
        local = str(raw.get("account") or "")
        if not local:
            out.domain_only_rows[domain] = out.domain_only_rows.get(domain, 0) + 1
            continue
        if "@" in local:
            local, _, in_domain = local.rpartition("@")
            if in_domain.lower().rstrip(".") != domain:
                out.errors.append(f"row {n}: account {raw['account']} is not in domain {domain}")
                continue
        # Only the cells the row has (a migration's row fills a few of the columns): what a
        # loop over every known column cost per row was more than validating the row.
        fields: dict[str, Any] = {"name": local}
        sip: dict[str, Any] = {}
        for column, value in raw.items():
            if value is None or value == "":
                continue  # an empty cell sets nothing
            how = _ACCOUNT_COLUMNS.get(column)
            if how is None:
                continue  # the domain's columns and the account itself
            if how == _FIELD:
                fields[column] = value
            elif how == _LIST:
                fields[column] = _list(value)
            else:
                sip[how] = value
        if sip:
            fields["sip_ha1"] = sip
        try:
            account = AccountCreate(**fields)
        except ValidationError as exc:
            out.errors.append(f"row {n}: {_first(exc)}")
            continue
        if account.sip_ha1 is not None and account.sip_ha1.realm not in (None, domain):
            out.errors.append(f"row {n}: SIP credentials for realm {account.sip_ha1.realm} do not work in "
                              f"{domain} (its realm is {domain})")
            continue
        if account.password_hash is not None:  # validated and normalised by AccountCreate
            scheme = passwords.stored_scheme(account.password_hash)
            if scheme in passwords.WEAK and len(out.warnings) < MAX_WARNINGS:
                out.warnings.append(f"row {n}: {scheme} is a weak password scheme; "
                                    "re-hashed to argon2id at the account's next login")
        out.accounts.append(AccountRow(n, domain, account))
    return out


def _first(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()))
    return f"{where}: {err.get('msg')}" if where else str(err.get("msg"))
