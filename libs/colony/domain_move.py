"""Moving a domain to another region: the rules, pure (no I/O, time is an argument).

Theory of operation
-------------------
A domain's mail is stored in its home region.  Moving it must lose nothing and store nothing
twice while mail keeps arriving and users keep reading, and it must survive the controller
that drives it dying at any point.  So the move is a state machine whose state is nothing but
events on PROVISIONING (``colony.events.DomainMove*``): the primary region's active
controller reads them, asks ``next_step`` what to do, does it, and appends the event that
records it.  A controller that takes over folds the same events and carries on from the last
one.  Every step is safe to repeat (copies are merged by the mailboxes' dedupe keys), so a
step done but not recorded is simply done again.

Phases, one event each, on the domain's own subject::

    requested -> routing -> copying -> sealing -> flipped -> done

``requested``
    A system administrator asked (``request_move``: the target is a known region other
    than the home, the domain exists, no other move of it is under way).
``routing``
    New mail for the domain is accepted into the *target* region's MAIL (the edges read the
    phase from the directory's domain entry); the source region's mail stores store none
    of it any more and publish what still reaches them into their own MAIL under the
    target's subject, which the target sources: in order, once.  Users still log in to the
    source region.  The phase has *settled* once every directory cache has had time to see
    it (``settle`` after the event, by the event's own timestamp): from then on nothing new
    is stored in the source region.
``copying``
    The accounts that exist at that moment are fixed in the event.  Each is copied from the
    source region's storage to the target's (pass 1) and verified: message counts and a
    digest over the sorted dedupe keys and body checksums agree on both sides.  A pass that
    does not verify is repeated, at most ``max_attempts`` times; then the move is *stuck*
    and says which account, and an operator looks (nothing is lost: the source still holds
    everything and still serves logins).  Mail routed to the target meanwhile is already
    there: the copy merges with it by dedupe key, so nothing is stored twice.
``sealing``
    Users changed flags, expunged and appended in the source region during pass 1.  Logins
    for the domain now get a temporary failure everywhere (``[UNAVAILABLE]`` /
    ``-ERR [SYS/TEMP]``: a clean reconnect) and the source's sessions are closed; after
    ``settle`` each account is copied again from the journal position pass 1 reached
    (pass 2, short) and verified.  Sealing is what makes the flip lose nothing: no session
    can change the source copy between its last pass and the flip.
``flipped``
    ``home_region`` is the target (the same event): logins open again, now to the target.
``done``
    The source region's copy is removed, after ``settle`` so no straggler reads it.

Fencing.  Every event carries the epoch (lease revision) of the controller that wrote it.
A controller that sees an event of a newer epoch than its own stands down: a newer
controller drives the move.  Appends are made expecting the subject's version, so two
controllers that decide at once cannot both record a step; the loser re-reads.

A move still ``requested`` may be withdrawn (``cancel_move``, ``DomainMoveCancelled``); from
``routing`` on it runs to its end.

The admin API uses ``request_move``, ``cancel_move`` and ``Move.progress``
(``POST|GET|DELETE /v1/domains/{d}/move``); the controller's driver
(``colony_controller.domain_mover``) uses ``next_step``.  Shared by both, the module
lives in ``colony`` rather than in either service.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from colony import events as ev


class Phase(StrEnum):
    REQUESTED = "requested"
    ROUTING = "routing"
    COPYING = "copying"
    SEALING = "sealing"
    FLIPPED = "flipped"
    DONE = "done"
    CANCELLED = "cancelled"   # withdrawn while still ``requested`` (outside the order above)


class MoveRefused(ValueError):
    """A move that cannot be asked for; the message says why, ``reason`` says which rule
    (the admin API's problem type): ``unknown-domain``, ``unknown-region`` (also a cluster of
    one region), ``already-in-region``, ``domain-move-in-progress``, ``no-move-in-progress``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class CopyResult:
    """The latest recorded pass of one account."""

    copy_pass: int
    verified: bool
    attempts: int               # passes of this number recorded so far
    source_position: int


@dataclass(frozen=True)
class Move:
    domain: str
    move_id: str
    source: str
    target: str
    phase: Phase
    since: datetime             # when the current phase was recorded
    epoch: int = 0              # the newest epoch among its events
    accounts: tuple[str, ...] = ()
    copies: Mapping[str, CopyResult] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.phase not in (Phase.DONE, Phase.CANCELLED)

    def progress(self) -> dict[str, Any]:
        """What ``GET /v1/domains/{d}/move`` shows."""
        wanted = 2 if self.phase in (Phase.SEALING, Phase.FLIPPED, Phase.DONE) else 1
        verified = sum(1 for a in self.accounts
                       if (c := self.copies.get(a)) is not None and c.copy_pass >= wanted and c.verified)
        return {"domain": self.domain, "move_id": self.move_id, "source": self.source, "target": self.target,
                "phase": self.phase.value, "since": self.since.isoformat(), "accounts": len(self.accounts),
                "accounts_verified": verified, "copy_pass": wanted if self.accounts else 0}


# --- fold ------------------------------------------------------------------------------------

_PHASE_OF = {ev.DomainMoveRouting: Phase.ROUTING, ev.DomainMoveCopying: Phase.COPYING,
             ev.DomainMoveSealing: Phase.SEALING, ev.DomainMoveFlipped: Phase.FLIPPED,
             ev.DomainMoveDone: Phase.DONE}
_ORDER = [p for p in Phase if p != Phase.CANCELLED]


def apply(move: Move | None, event: ev.Event) -> Move | None:
    """One event on top of the state.  Events of another move, or a phase that is not the
    next one (a duplicate append after a lost ack), change nothing: the log may repeat a
    step, the state never goes back."""
    if isinstance(event, ev.DomainMoveRequested):
        if move is not None and move.active:
            return move  # refused by request_move; ignored if it got in anyway
        return Move(domain=event.domain, move_id=event.move_id, source=event.source, target=event.target,
                    phase=Phase.REQUESTED, since=event.at)
    if move is None or getattr(event, "move_id", None) != move.move_id:
        return move
    epoch = max(move.epoch, getattr(event, "epoch", 0))
    if isinstance(event, ev.DomainMoveCancelled):
        # Only a move nobody has started: from routing on, mail already goes to the target.
        return replace(move, phase=Phase.CANCELLED, since=event.at) if move.phase == Phase.REQUESTED else move
    phase = _PHASE_OF.get(type(event))
    if phase is not None:
        if _ORDER.index(phase) != _ORDER.index(move.phase) + 1:
            return replace(move, epoch=epoch)
        accounts = tuple(sorted(set(event.accounts))) if isinstance(event, ev.DomainMoveCopying) else move.accounts
        return replace(move, phase=phase, since=event.at, epoch=epoch, accounts=accounts)
    if isinstance(event, ev.DomainMoveAccountCopied):
        if event.address not in move.accounts:
            return replace(move, epoch=epoch)
        before = move.copies.get(event.address)
        attempts = before.attempts + 1 if before is not None and before.copy_pass == event.copy_pass else 1
        if before is not None and before.copy_pass > event.copy_pass:
            return replace(move, epoch=epoch)  # a late pass-1 report after pass 2 began
        verified = (event.source_messages == event.target_messages and event.source_digest == event.target_digest)
        result = CopyResult(copy_pass=event.copy_pass, verified=verified, attempts=attempts,
                            source_position=event.source_position if verified else
                            (before.source_position if before is not None else 0))
        return replace(move, epoch=epoch, copies={**move.copies, event.address: result})
    return move


def fold(events: Iterable[ev.Event]) -> Move | None:
    move: Move | None = None
    for event in events:
        move = apply(move, event)
    return move


# --- asking for a move -----------------------------------------------------------------------

def request_move(move: Move | None, domain_state: Mapping[str, Any] | None, domain: str, target: str,
                 regions: Iterable[str], move_id: str, requested_by: str = "") -> list[ev.Event]:
    known = [r for r in regions if r]
    if domain_state is None:
        raise MoveRefused("unknown-domain", f"domain {domain} does not exist")
    if not known:
        raise MoveRefused("unknown-region",
                          "this cluster has one region (settings: regions); there is nowhere to move to")
    if target not in known:
        raise MoveRefused("unknown-region",
                          f"region {target!r} is not one of this super cluster's regions ({', '.join(known)})")
    if move is not None and move.active:
        raise MoveRefused("domain-move-in-progress",
                          f"domain {domain} is already moving from {move.source or '(none)'} to {move.target} "
                          f"(phase {move.phase.value}); GET /v1/domains/{domain}/move shows its progress")
    source = domain_state.get("home_region") or ""
    if source == target:
        raise MoveRefused("already-in-region", f"domain {domain} is already homed in {target}")
    return [ev.DomainMoveRequested(domain=domain, move_id=move_id, source=source, target=target,
                                   requested_by=requested_by)]


def cancel_move(move: Move | None, domain: str, cancelled_by: str = "") -> list[ev.Event]:
    """Withdraw a move that is still ``requested``; from ``routing`` on it runs to its end."""
    if move is None or not move.active:
        raise MoveRefused("no-move-in-progress", f"domain {domain} is not moving")
    if move.phase != Phase.REQUESTED:
        raise MoveRefused("domain-move-in-progress",
                          f"the move of {domain} to {move.target} is under way (phase {move.phase.value}); "
                          "only a move still requested can be cancelled")
    return [ev.DomainMoveCancelled(domain=domain, move_id=move.move_id, cancelled_by=cancelled_by)]


# --- what to do next -------------------------------------------------------------------------

@dataclass(frozen=True)
class Observations:
    """What the driver saw just before asking."""

    accounts: tuple[str, ...] = ()      # the domain's accounts now (read at the start of copying)
    source_sessions: int = 0            # the domain's sessions still open in the source region
    source_cleaned: bool = False        # the source region's storage of the domain is gone


@dataclass(frozen=True)
class Append:
    """Record this event (expecting the version the move was folded at)."""

    event: ev.Event


@dataclass(frozen=True)
class CopyAccount:
    """Copy one account's storage from the source region to the target from ``from_position``
    of the source's journal, merge by dedupe key, verify, and record the result as a
    ``DomainMoveAccountCopied`` of this ``copy_pass``."""

    address: str
    copy_pass: int
    from_position: int


@dataclass(frozen=True)
class CleanUpSource:
    """Remove the domain's storage from the source region (idempotent)."""

    accounts: tuple[str, ...]


@dataclass(frozen=True)
class WaitUntil:
    when: datetime
    why: str


@dataclass(frozen=True)
class Stuck:
    """Nothing the driver can do alone; ``why`` names the account and the mismatch."""

    why: str


@dataclass(frozen=True)
class StandDown:
    """A controller of a newer epoch drives this move."""

    epoch: int


@dataclass(frozen=True)
class Finished:
    pass


Step = Append | CopyAccount | CleanUpSource | WaitUntil | Stuck | StandDown | Finished


def next_step(move: Move, obs: Observations, *, now: datetime, epoch: int, settle: timedelta,
              max_attempts: int = 3) -> Step:
    """The one thing to do next.  ``epoch``: the asking controller's; ``settle``: how long
    every edge's and mail store's directory cache needs to see a new phase."""
    if move.phase == Phase.CANCELLED:
        return Finished()
    if move.epoch > epoch:
        return StandDown(move.epoch)
    ids = {"domain": move.domain, "move_id": move.move_id, "epoch": epoch}
    settled = move.since + settle
    match move.phase:
        case Phase.REQUESTED:
            return Append(ev.DomainMoveRouting(**ids))
        case Phase.ROUTING:
            if now < settled:
                return WaitUntil(settled, "every edge and mail store sees the routing")
            return Append(ev.DomainMoveCopying(**ids, accounts=sorted(set(obs.accounts))))
        case Phase.COPYING:
            step = _copy_pass(move, 1, max_attempts)
            return step if step is not None else Append(ev.DomainMoveSealing(**ids))
        case Phase.SEALING:
            if now < settled:
                return WaitUntil(settled, "every edge sees the seal and the source's sessions are told to close")
            if obs.source_sessions:
                return WaitUntil(now + timedelta(seconds=1),
                                 f"the source region's sessions close ({obs.source_sessions} open)")
            step = _copy_pass(move, 2, max_attempts)
            return step if step is not None else Append(ev.DomainMoveFlipped(**ids, target=move.target))
        case Phase.FLIPPED:
            if now < settled:
                return WaitUntil(settled, "every edge and mail store sees the new home")
            if not obs.source_cleaned:
                return CleanUpSource(move.accounts)
            return Append(ev.DomainMoveDone(**ids))
    return Finished()


def _copy_pass(move: Move, copy_pass: int, max_attempts: int) -> Step | None:
    """The next account of this pass to copy, Stuck, or None when every one is verified."""
    for address in move.accounts:
        done = move.copies.get(address)
        if done is not None and done.copy_pass == copy_pass and done.verified:
            continue
        if done is not None and done.copy_pass == copy_pass and done.attempts >= max_attempts:
            return Stuck(f"{address}: pass {copy_pass} did not verify after {done.attempts} attempts "
                         "(message counts or digests differ between the regions)")
        start = done.source_position if done is not None and copy_pass > 1 else 0
        return CopyAccount(address, copy_pass, start)
    return None
