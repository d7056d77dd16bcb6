"""What an account may use: its class of service (the account's, else its domain's) capped
by the account's own settings.  Pure; the auth service and the directory both use it."""

from __future__ import annotations

from typing import Any

from colony_admin.models import Service

UNLIMITED_COS: dict[str, Any] = {"services": [s.value for s in Service], "quota_bytes": None,
                                 "max_message_bytes": None, "max_recipients_per_message": None,
                                 "sending_rate_per_hour": None}


def effective(account: dict[str, Any], cos_limits: dict[str, Any] | None) -> dict[str, Any]:
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
