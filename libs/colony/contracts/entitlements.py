"""What an account may use: its class of service (the account's, else its domain's, else
the cluster's default class) capped by the account's own settings.  Pure; the auth service,
the recipient resolver, the edges and the mail stores all use it, so every door applies the
same rules."""

from __future__ import annotations

from typing import Any

# The services a class of service can grant (``colony_admin.models.Service`` spells the same
# values for the API; a unit test keeps the two equal).
SERVICES: tuple[str, ...] = ("mail", "imap", "pop", "sip")

UNLIMITED_COS: dict[str, Any] = {"services": list(SERVICES), "quota_bytes": None,
                                 "max_message_bytes": None, "max_recipients_per_message": None,
                                 "sending_rate_per_hour": None}


DEFAULT_COS = "default"   # Settings.default_cos's default; pass the setting where there is one


def cos_name(account_cos: str | None, domain_cos: str | None, default_cos: str | None = DEFAULT_COS) -> str | None:
    """The class of service whose limits apply: the account's, else its domain's, else the
    cluster's default.  Domains created before every domain got a class have none in the
    directory; without the fallback they would be unlimited.  (A default class that does
    not exist yet limits nothing: the admin API creates it once a domain needs it.)"""
    return account_cos or domain_cos or default_cos


def effective(account: dict[str, Any], cos_limits: dict[str, Any] | None) -> dict[str, Any]:
    """The limits that apply to ``account`` (a dict with ``services`` and ``quota_bytes``)
    under the class of service ``cos_limits`` (None: no class, nothing limited)."""
    limits = {**UNLIMITED_COS, **(cos_limits or {})}
    services = [s for s in limits["services"] if account.get("services") is None or s in account["services"]]
    quota = _min(account.get("quota_bytes"), limits["quota_bytes"])
    return {"services": services, "quota_bytes": quota, "max_message_bytes": limits["max_message_bytes"],
            "max_recipients_per_message": limits["max_recipients_per_message"],
            "sending_rate_per_hour": limits["sending_rate_per_hour"]}


def _min(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)
