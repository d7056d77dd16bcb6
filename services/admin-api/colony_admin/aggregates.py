"""The provisioning aggregates, pure: ``fold(events) -> state`` and ``decide(state, command) -> events``.

No I/O here.  The command shell (``commands.py``) reads an aggregate's events from
PROVISIONING, folds them, calls a decide function, and appends what it returns expecting the
version it read.  A state is a plain dict (the same shape the read model and the directory
store), or ``None`` when the aggregate does not exist (never created, or deleted).

Aggregates: ``domain``, ``address`` (account or alias, so they share one namespace),
``domain_alias``, ``cos``, ``token``.

A name is a domain or a domain alias, never both, although the two are separate aggregates
(separate subjects, so no single append can check both).  The rule is kept by a *fence*:
whoever creates name N as one kind first reads its own aggregate's version, then appends a
``…Deleted`` event to the *other* kind's aggregate N, expecting the version at which it saw
that aggregate not exist (``fence_name``), and only then appends its creation, expecting the
version it read first.  Two creations of N as different kinds cannot both succeed: each
one's fence changes the version the other's creation or fence expects, so at least one of
them gets a concurrency conflict (409).  A crash between fence and creation leaves only a
fence, which folds to "does not exist": a retry simply fences again, and nothing needs
releasing when a domain or domain alias is deleted.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from colony import domain_move
from colony import events as ev
from colony.bus import names
from colony_admin.models import (
    AccountCreate,
    AccountState,
    AliasCreate,
    CosCreate,
    DomainCreate,
    DomainState,
    Role,
    TokenCreate,
)
from colony_admin.problems import AlreadyExists, Conflict, Invalid, MoveInProgress, MoveRequired, NotFound

State = dict[str, Any] | None


# --- fold --------------------------------------------------------------------------------------

def apply(state: State, event: ev.Event) -> State:
    """One event on top of a state: the single definition of what each event means."""
    # Cases in the order a bulk import meets them (the projector folds every account): each
    # case is an isinstance check, and on a pydantic model (ABCMeta) a miss costs ~0.1 us --
    # a dozen misses before an account was as much as building its state.  No event class
    # subclasses another, so the order does not change which case matches.
    match event:
        case ev.AccountCreated():
            return {"kind": "account", "address": event.address, "domain": event.domain, "name": event.name,
                    "real_name": event.real_name, "password_hash": event.password_hash,
                    "sip_ha1": dict(event.sip_ha1), "cos": event.cos, "quota_bytes": event.quota,
                    "services": event.services, "forwarding": list(event.forwarding),
                    "forward_keep_copy": event.forward_keep_copy, "state": event.state}
        case ev.DomainCreated():
            return {"kind": "domain", "name": event.domain, "state": event.state, "home_region": event.home_region,
                    "cos": event.cos, "branding": dict(event.branding), "storage": dict(event.storage),
                    "dmarc_enforcement": event.dmarc_enforcement}
        case ev.DomainUpdated():
            return {**_existing(state), **event.changes}
        case ev.DomainStateChanged():
            return {**_existing(state), "state": event.state}
        case ev.DomainMoveRequested() | ev.DomainMoveRouting() | ev.DomainMoveCopying() | ev.DomainMoveSealing() \
                | ev.DomainMoveFlipped() | ev.DomainMoveDone() | ev.DomainMoveCancelled():
            return apply_move(_existing(state), event)
        case ev.DomainMoveAccountCopied():
            # Progress of a move, on its own subject (``names.AGG_DOMAIN_MOVE``): only the
            # controller's move rules fold these; the aggregate just says whose they are.
            return {"kind": names.AGG_DOMAIN_MOVE, "domain": event.domain, "move_id": event.move_id}
        case ev.DomainAliasCreated():
            return {"kind": "domain_alias", "name": event.alias, "domain": event.domain}
        case ev.AccountUpdated():
            return {**_existing(state), **event.changes}
        case ev.AccountPasswordSet():
            return {**_existing(state), "password_hash": event.password_hash, "sip_ha1": dict(event.sip_ha1)}
        case ev.AliasCreated():
            return {"kind": "alias", "address": event.address, "domain": event.domain, "name": event.name,
                    "targets": list(event.targets)}
        case ev.AliasUpdated():
            return {**_existing(state), "targets": list(event.targets)}
        case ev.CosCreated():
            return {"kind": "cos", "name": event.name, "description": event.description, "limits": dict(event.limits)}
        case ev.CosUpdated():
            return {**_existing(state), **event.changes}
        case ev.ApiTokenCreated():
            return {"kind": "token", "id": event.token_id, "name": event.name, "role": event.role,
                    "domain": event.domain, "secret_sha256": event.secret_sha256, "revoked": False,
                    "created_by": event.created_by, "created_at": event.at.isoformat()}
        case ev.ApiTokenRevoked():
            return {**_existing(state), "revoked": True}
        case ev.DomainDeleted() | ev.DomainAliasDeleted() | ev.AccountDeleted() | ev.AliasDeleted() | ev.CosDeleted():
            return None
    raise ValueError(f"{event.type} is not a provisioning event")


# The phases in order (``colony.domain_move.Phase``; the admin API does not import
# the controller).  The domain's state keeps only the phase: the accounts and copy passes are
# the controller's business (``domain_move.fold`` over the same events).
MOVE_PHASES = tuple(p.value for p in domain_move.Phase if p != domain_move.Phase.CANCELLED)
MOVE_ENDED = ("done", "cancelled")
MOVE_PHASE_OF = {ev.DomainMoveRouting: "routing", ev.DomainMoveCopying: "copying", ev.DomainMoveSealing: "sealing",
                  ev.DomainMoveFlipped: "flipped", ev.DomainMoveDone: "done"}


def apply_move(domain: dict[str, Any], event: ev.Event) -> dict[str, Any]:
    """A domain's ``move``: ``{"move_id", "source", "target", "phase", "since"}`` of its latest
    move (kept after ``done``, so the domain shows where it came from).  As in the controller's
    rules, a repeated or out-of-order phase, or an event of another move, changes nothing."""
    move = domain.get("move")
    if isinstance(event, ev.DomainMoveRequested):
        if move is not None and move["phase"] not in MOVE_ENDED:
            return domain
        return {**domain, "move": {"move_id": event.move_id, "source": event.source, "target": event.target,
                                   "phase": "requested", "since": event.at.isoformat()}}
    if move is None or move["move_id"] != getattr(event, "move_id", None):
        return domain
    if isinstance(event, ev.DomainMoveCancelled):
        if move["phase"] != "requested":
            return domain
        return {**domain, "move": {**move, "phase": "cancelled", "since": event.at.isoformat()}}
    phase = MOVE_PHASE_OF[type(event)]
    if MOVE_PHASES.index(phase) != MOVE_PHASES.index(move["phase"]) + 1:
        return domain
    changed = {**domain, "move": {**move, "phase": phase, "since": event.at.isoformat()}}
    if isinstance(event, ev.DomainMoveFlipped):
        changed["home_region"] = event.target
    return changed


def moving_phase(domain: State) -> str | None:
    """The phase of the domain's move under way, None if it is not moving."""
    move = (domain or {}).get("move")
    return move["phase"] if move is not None and move["phase"] not in MOVE_ENDED else None


def fold(events: Iterable[ev.Event]) -> State:
    state: State = None
    for event in events:
        state = apply(state, event)
    return state


def fold_with_incarnation(stored: Iterable[tuple[int, ev.Event]]) -> tuple[State, int]:
    """The state, and the stream sequence of its latest creation (0 if it does not exist):
    what tells a re-created aggregate of the same name from its predecessor."""
    state: State = None
    incarnation = 0
    for seq, event in stored:
        state, was = apply(state, event), state
        if was is None and state is not None:
            incarnation = seq
    return state, incarnation if state is not None else 0


def _existing(state: State) -> dict[str, Any]:
    if state is None:
        # An update after a delete would be a bug in decide(): events are only appended after
        # checking the state, under optimistic concurrency.
        raise ValueError("update event for an aggregate that does not exist")
    return state


# --- decide: domains --------------------------------------------------------------------------

def create_domain(state: State, cmd: DomainCreate) -> list[ev.Event]:
    if state is not None:
        raise AlreadyExists(f"domain {cmd.name} exists")
    return [ev.DomainCreated(domain=cmd.name, home_region=cmd.home_region, cos=cmd.cos,
                             branding=cmd.branding.model_dump(mode="json"), storage=cmd.storage.model_dump(mode="json"),
                             dmarc_enforcement=cmd.dmarc_enforcement)]


def update_domain(state: State, name: str, changes: dict[str, Any], *, has_accounts: bool) -> list[ev.Event]:
    """``has_accounts``: whether the domain has accounts (their mailboxes are stored in its home
    region).  Re-homing such a domain by a settings change would route new mail and logins to
    the new region at once and leave every stored message behind in the old one, so it is
    refused; an empty domain has nothing to leave behind and may be re-homed freely."""
    current = require(state, f"domain {name}")
    effective = {k: v for k, v in changes.items() if current.get(k) != v}
    if "home_region" in effective and (phase := moving_phase(current)) is not None:
        raise MoveInProgress(f"domain {name} is moving to {current['move']['target']} (phase {phase}); its home "
                             f"region changes when the move flips (GET /v1/domains/{name}/move)")
    if "home_region" in effective and has_accounts:
        old, new = current.get("home_region") or "(none)", effective["home_region"] or "(none)"
        raise MoveRequired(
            f"domain {name} has accounts whose mailboxes are stored in its home region {old}; changing "
            f"home_region to {new} would leave them behind. Moving a domain with accounts is the domain move "
            f"operation (POST /v1/domains/{name}/move, colony domain move {name} <region>), which copies "
            "the mailboxes before it switches the home region",
            operation=f"/v1/domains/{name}/move", home_region=current.get("home_region") or "")
    return [ev.DomainUpdated(domain=name, changes=effective)] if effective else []


def set_domain_state(state: State, name: str, new: DomainState, reason: str = "") -> list[ev.Event]:
    current = require(state, f"domain {name}")
    if current["state"] == new:
        return []
    return [ev.DomainStateChanged(domain=name, state=new.value, reason=reason)]


def delete_domain(state: State, name: str, *, has_addresses: bool) -> list[ev.Event]:
    current = require(state, f"domain {name}")
    if (phase := moving_phase(current)) is not None:
        raise MoveInProgress(f"domain {name} is moving to {current['move']['target']} (phase {phase}); "
                             "it can be deleted once the move is done")
    if has_addresses:
        raise Conflict(f"domain {name} still has accounts or aliases; delete them first")
    return [ev.DomainDeleted(domain=name)]


def fence_name(other: State, name: str, other_kind: str) -> list[ev.Event]:
    """Before creating ``name`` as one kind: close the other kind's aggregate of that name
    (see the module docstring).  Refused if the name exists as the other kind."""
    if other_kind == names.AGG_DOMAIN:
        if other is not None:
            raise AlreadyExists(f"{name} is a domain; a name is a domain or a domain alias, never both")
        return [ev.DomainDeleted(domain=name)]
    if other is not None:
        raise AlreadyExists(f"{name} is a domain alias of {other['domain']}; a name is a domain or a domain alias, "
                            "never both")
    return [ev.DomainAliasDeleted(alias=name, domain=name)]


def create_domain_alias(state: State, domain_state: State, alias: str, domain: str) -> list[ev.Event]:
    require(domain_state, f"domain {domain}")
    if state is not None:
        raise AlreadyExists(f"domain alias {alias} exists (for {state['domain']})")
    if alias == domain:
        raise Invalid("a domain cannot be an alias of itself")
    return [ev.DomainAliasCreated(alias=alias, domain=domain)]


def delete_domain_alias(state: State, alias: str, domain: str) -> list[ev.Event]:
    current = require(state, f"domain alias {alias}")
    if current["domain"] != domain:
        raise NotFound(f"domain alias {alias} does not belong to {domain}")
    return [ev.DomainAliasDeleted(alias=alias, domain=domain)]


# --- decide: accounts and aliases -----------------------------------------------------------------

def create_account(state: State, domain_state: State, domain: str, cmd: AccountCreate, *,
                   password_hash: str | None, sip_ha1: dict[str, str], cos_exists: bool) -> list[ev.Event]:
    require(domain_state, f"domain {domain}")
    address = f"{cmd.name}@{domain}"
    if state is not None:
        raise AlreadyExists(f"{address} exists (as an {state['kind']})")
    if cmd.cos is not None and not cos_exists:
        raise Invalid(f"class of service {cmd.cos} does not exist")
    return [ev.AccountCreated(
        address=address, domain=domain, name=cmd.name, real_name=cmd.real_name, password_hash=password_hash,
        sip_ha1=sip_ha1, cos=cmd.cos, quota=cmd.quota_bytes,
        services=[s.value for s in cmd.services] if cmd.services is not None else None,
        forwarding=list(cmd.forwarding), forward_keep_copy=cmd.forward_keep_copy, state=cmd.state.value)]


def update_account(state: State, address: str, changes: dict[str, Any], *,
                   password_hash: str | None = None, sip_ha1: dict[str, str] | None = None) -> list[ev.Event]:
    current = require_kind(state, "account", address)
    effective = {k: v for k, v in changes.items() if current.get(k) != v}
    out: list[ev.Event] = []
    if effective:
        out.append(ev.AccountUpdated(address=address, changes=effective))
    if password_hash is not None:
        out.append(ev.AccountPasswordSet(address=address, password_hash=password_hash, sip_ha1=sip_ha1 or {}))
    return out


def upgrade_password(state: State, address: str, verified_hash: str, new_hash: str,
                     sip_ha1: dict[str, str]) -> list[ev.Event]:
    """Re-hash a password that was just verified against ``verified_hash`` (a migrated scheme).

    Nothing if the account changed its password since (or is gone): the upgrade is of that
    hash only.  Imported SIP credentials stay as they are — the phone may use another secret
    than the mailbox — and are derived from the password only where there were none.
    """
    if state is None or state.get("kind") != "account" or state.get("password_hash") != verified_hash:
        return []
    kept = dict(state.get("sip_ha1") or {}) or sip_ha1
    return [ev.AccountPasswordSet(address=address, password_hash=new_hash, sip_ha1=kept)]


_COMPARED_FIELDS = ("real_name", "cos", "quota_bytes", "services", "forwarding", "forward_keep_copy", "state")


def account_differences(state: State, address: str, cmd: AccountCreate) -> dict[str, Any]:
    """An import row against the existing account: the settings the row fills that differ
    (field -> the row's value).  Passwords and SIP credentials are compared by the caller."""
    if state is not None and state.get("kind") != "account":
        raise AlreadyExists(f"{address} exists (as an {state['kind']})")
    current = require_kind(state, "account", address)
    wanted = cmd.model_dump(mode="json", include=set(_COMPARED_FIELDS) & cmd.model_fields_set)
    return {k: v for k, v in wanted.items() if current.get(k) != v}


def delete_account(state: State, address: str) -> list[ev.Event]:
    require_kind(state, "account", address)
    return [ev.AccountDeleted(address=address)]


def create_alias(state: State, domain_state: State, domain: str, cmd: AliasCreate) -> list[ev.Event]:
    require(domain_state, f"domain {domain}")
    address = f"{cmd.name}@{domain}"
    if state is not None:
        raise AlreadyExists(f"{address} exists (as an {state['kind']})")
    if address in cmd.targets:
        raise Invalid("an alias cannot point at itself")
    return [ev.AliasCreated(address=address, domain=domain, name=cmd.name, targets=list(cmd.targets))]


def update_alias(state: State, address: str, targets: list[str]) -> list[ev.Event]:
    current = require_kind(state, "alias", address)
    if address in targets:
        raise Invalid("an alias cannot point at itself")
    return [] if current["targets"] == targets else [ev.AliasUpdated(address=address, targets=list(targets))]


def delete_alias(state: State, address: str) -> list[ev.Event]:
    require_kind(state, "alias", address)
    return [ev.AliasDeleted(address=address)]


# --- decide: classes of service and tokens -----------------------------------------------------------

def create_cos(state: State, cmd: CosCreate) -> list[ev.Event]:
    if state is not None:
        raise AlreadyExists(f"class of service {cmd.name} exists")
    return [ev.CosCreated(name=cmd.name, description=cmd.description, limits=cmd.limits.model_dump(mode="json"))]


def update_cos(state: State, name: str, changes: dict[str, Any]) -> list[ev.Event]:
    current = require(state, f"class of service {name}")
    effective = {k: v for k, v in changes.items() if current.get(k) != v}
    return [ev.CosUpdated(name=name, changes=effective)] if effective else []


def delete_cos(state: State, name: str, *, in_use: bool) -> list[ev.Event]:
    require(state, f"class of service {name}")
    if in_use:
        raise Conflict(f"class of service {name} is used by domains or accounts")
    return [ev.CosDeleted(name=name)]


def create_token(state: State, token_id: str, cmd: TokenCreate, secret_sha256: str, created_by: str) -> list[ev.Event]:
    if state is not None:
        raise AlreadyExists(f"token {token_id} exists")
    if (cmd.role == Role.DOMAIN_ADMIN) != (cmd.domain is not None):
        raise Invalid("a domain-admin token needs a domain; other roles must not have one")
    return [ev.ApiTokenCreated(token_id=token_id, name=cmd.name, role=cmd.role.value, domain=cmd.domain,
                               secret_sha256=secret_sha256, created_by=created_by)]


def revoke_token(state: State, token_id: str) -> list[ev.Event]:
    current = require(state, f"token {token_id}")
    return [] if current["revoked"] else [ev.ApiTokenRevoked(token_id=token_id)]


# --- helpers ------------------------------------------------------------------------------------------

def require(state: State, what: str) -> dict[str, Any]:
    if state is None:
        raise NotFound(f"{what} does not exist")
    return state


def require_kind(state: State, kind: str, address: str) -> dict[str, Any]:
    if state is None or state.get("kind") != kind:
        raise NotFound(f"{kind} {address} does not exist")
    return state


def account_is_usable(account: State, domain: State) -> bool:
    return (account is not None and account.get("kind") == "account" and account["state"] == AccountState.ACTIVE
            and domain is not None and domain["state"] == DomainState.ACTIVE)
