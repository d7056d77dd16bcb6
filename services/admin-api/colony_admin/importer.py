"""Bulk import: parse CSV or JSON rows into domain and account commands (pure).

One row per account, or a row with only a domain to create an empty domain.  Columns (CSV
header or JSON object keys; only ``domain`` is required)::

    domain, domain_cos, display_name,                      -> the domain (created if missing)
    account, real_name, password | password_hash, cos, quota_bytes, services, forwarding

``account`` is a local part or a full address in ``domain``.  ``services`` and ``forwarding``
are lists (JSON) or space/semicolon separated (CSV).  ``password_hash`` takes an argon2 PHC
string (``$argon2id$…``) from a migration: no plaintext is needed, but SIP digest credentials
appear only once a password is set.  JSON is a list of such objects (or {"rows": [...]}).
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from colony_admin.models import AccountCreate, Branding, DomainCreate

_SPLIT = re.compile(r"[;\s]+")
KNOWN = {"domain", "domain_cos", "display_name", "account", "real_name", "password", "password_hash", "cos",
         "quota_bytes", "services", "forwarding"}


class ImportFormatError(ValueError):
    pass


@dataclass
class AccountRow:
    row: int
    domain: str
    account: AccountCreate
    password_hash: str | None = None


@dataclass
class Plan:
    domains: dict[str, DomainCreate] = field(default_factory=dict)  # first row of each domain wins
    accounts: list[AccountRow] = field(default_factory=list)
    domain_only_rows: dict[str, int] = field(default_factory=dict)  # rows that only name a domain
    errors: list[str] = field(default_factory=list)
    rows: int = 0


def parse(body: bytes, fmt: str) -> list[dict[str, Any]]:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ImportFormatError("the file is not UTF-8") from None
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "domain" not in [f.strip() for f in reader.fieldnames]:
            raise ImportFormatError("the CSV needs a header row with at least a 'domain' column")
        return [{(k or "").strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ImportFormatError(f"not JSON: {exc}") from None
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


def plan(rows: list[dict[str, Any]]) -> Plan:
    out = Plan(rows=len(rows))
    seen: dict[tuple[Any, Any, Any], DomainCreate] = {}
    for n, raw in enumerate(rows, start=1):
        unknown = set(raw) - KNOWN
        if unknown:
            out.errors.append(f"row {n}: unknown column(s) {sorted(unknown)}")
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
        password_hash = _blank(raw.get("password_hash"))
        if password_hash is not None and not str(password_hash).startswith("$argon2"):
            out.errors.append(f"row {n}: password_hash must be an argon2 PHC string")
            continue
        try:
            account = AccountCreate(
                name=local, real_name=str(raw.get("real_name") or ""), password=_blank(raw.get("password")),
                cos=_blank(raw.get("cos")), quota_bytes=_blank(raw.get("quota_bytes")),
                services=_list(raw.get("services")), forwarding=_list(raw.get("forwarding")) or [])
        except ValidationError as exc:
            out.errors.append(f"row {n}: {_first(exc)}")
            continue
        out.accounts.append(AccountRow(n, domain, account, password_hash))
    return out


def _first(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()))
    return f"{where}: {err.get('msg')}" if where else str(err.get("msg"))
