"""Who may do what, as pure checks on a ``Principal`` (the token's holder).

- system admin: everything.
- domain admin: their own domain's accounts, aliases, domain aliases, branding and audit
  trail; never a class of service, never an account's CoS, never another domain.  Quota and
  services they set are capped by the CoS anyway (effective = min / intersection).
- billing reader: usage reports only.

Refusals raise ``Forbidden`` (403): the caller is known, the action is not theirs.
"""

from __future__ import annotations

from dataclasses import dataclass

from colony_admin.models import Role
from colony_admin.problems import Forbidden


@dataclass(frozen=True)
class Principal:
    token_id: str
    name: str
    role: Role
    domain: str | None = None

    @property
    def actor(self) -> str:
        return f"{self.name} (token {self.token_id})"


def require_system(p: Principal, what: str) -> None:
    if p.role != Role.SYSTEM_ADMIN:
        raise Forbidden(f"only a system administrator may {what}")


def require_domain(p: Principal, domain: str) -> None:
    """Manage ``domain``'s accounts, aliases and branding."""
    if p.role == Role.SYSTEM_ADMIN:
        return
    if p.role == Role.DOMAIN_ADMIN and p.domain == domain:
        return
    raise Forbidden(f"this token may not manage domain {domain}")


def require_usage(p: Principal, domain: str | None) -> None:
    if p.role in (Role.SYSTEM_ADMIN, Role.BILLING_READER):
        return
    if p.role == Role.DOMAIN_ADMIN and domain is not None and domain == p.domain:
        return
    raise Forbidden("this token may not read usage" + (f" of {domain}" if domain else " of all domains"))


def require_audit(p: Principal, domain: str | None) -> None:
    if p.role == Role.SYSTEM_ADMIN:
        return
    if p.role == Role.DOMAIN_ADMIN and domain is not None and domain == p.domain:
        return
    raise Forbidden("this token may not read the audit trail" + (f" of {domain}" if domain else ""))


def visible_domain_filter(p: Principal) -> str | None:
    """Listing domains: a domain admin sees only their own; billing sees none."""
    if p.role == Role.SYSTEM_ADMIN:
        return None
    if p.role == Role.DOMAIN_ADMIN and p.domain:
        return p.domain
    raise Forbidden("this token may not list domains")
