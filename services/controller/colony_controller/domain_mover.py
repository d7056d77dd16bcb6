"""The controller's driver of domain moves: a thin asyncio shell over ``colony.domain_move``.

One call of ``DomainMover.step(domain)`` reads the domain's events and its move's progress
subject from PROVISIONING, folds them, asks the rules for the next step and carries it out:
an append (expecting the subject's version, stamped with this controller's epoch), one
account's copy pass (recorded as ``DomainMoveAccountCopied``), the source clean-up, or
nothing (wait, stuck, stand down, finished).  ``drive`` repeats steps until the move is
finished, stuck or driven by a newer epoch.  Nothing is remembered between steps: a
controller that takes over simply calls ``step`` and continues from the last event, and a
step done but not recorded (the process died in between) is done again, which the copy
(merged by merge keys) and the clean-up (idempotent) allow.

What touches the mail stores is behind ``MovePort`` (the accounts of a domain, one account's
copy pass, the source's open sessions and its clean-up), so the rules and the shell are
tested here with a port in memory.  The port over the bus is ``colony_controller.move_port``
(answered by the regions' mail stores, ``colony_mailstore.moves``); the primary region's
active controller runs ``drive`` for every move under way (``colony_controller.controller``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from colony import domain_move as dm
from colony import events as ev
from colony.bus import names
from colony.eventstore import ConcurrencyConflict, EventStore
from colony.events import utcnow

log = logging.getLogger("colony.controller.domain_move")


@dataclass(frozen=True)
class CopyReport:
    """What one copy pass of one account found, both sides counted after the merge."""

    source_messages: int
    target_messages: int
    source_digest: str
    target_digest: str
    source_position: int


class MovePort(Protocol):
    async def accounts(self, domain: str) -> list[str]: ...

    async def copy_account(self, move: dm.Move, address: str, copy_pass: int, from_position: int) -> CopyReport: ...

    async def source_sessions(self, move: dm.Move) -> int: ...

    async def source_cleaned(self, move: dm.Move) -> bool: ...

    async def clean_up_source(self, move: dm.Move, accounts: tuple[str, ...]) -> None: ...


@dataclass
class _Loaded:
    move: dm.Move | None
    domain_version: int
    progress_version: int


class DomainMover:
    def __init__(self, store: EventStore, port: MovePort, *, epoch: Callable[[], int], settle: timedelta,
                 clock: Callable[[], datetime] = utcnow, max_attempts: int = 3) -> None:
        self.store, self.port, self.epoch, self.settle = store, port, epoch, settle
        self.clock, self.max_attempts = clock, max_attempts

    async def _load(self, domain: str) -> _Loaded:
        own = await self.store.read(names.provisioning_subject(names.AGG_DOMAIN, domain))
        progress = await self.store.read(names.provisioning_subject(names.AGG_DOMAIN_MOVE, domain))
        # stream order: a copy result counts only after the event that fixed the accounts
        stored = sorted([*own, *progress], key=lambda s: s.seq)
        move = dm.fold(ev.decode(s.data) for s in stored)
        return _Loaded(move, own[-1].seq if own else 0, progress[-1].seq if progress else 0)

    async def _observe(self, move: dm.Move) -> dm.Observations:
        """Only what the phase's rule looks at (each is a question to the stores)."""
        match move.phase:
            case dm.Phase.ROUTING:
                return dm.Observations(accounts=tuple(await self.port.accounts(move.domain)))
            case dm.Phase.SEALING:
                return dm.Observations(source_sessions=await self.port.source_sessions(move))
            case dm.Phase.FLIPPED:
                return dm.Observations(source_cleaned=await self.port.source_cleaned(move))
        return dm.Observations()

    async def step(self, domain: str) -> dm.Step | None:
        """One step of the domain's move; None if the domain has never been asked to move."""
        loaded = await self._load(domain)
        move = loaded.move
        if move is None:
            return None
        now = self.clock()
        epoch = self.epoch()
        # The observations are read only when the timing allows the step they serve.
        step = dm.next_step(move, dm.Observations(), now=now, epoch=epoch, settle=self.settle,
                            max_attempts=self.max_attempts)
        if not isinstance(step, (dm.WaitUntil, dm.StandDown, dm.Finished)):
            step = dm.next_step(move, await self._observe(move), now=now, epoch=epoch, settle=self.settle,
                                max_attempts=self.max_attempts)
        match step:
            case dm.Append(event=event):
                await self._append(names.AGG_DOMAIN, move.domain, event.model_copy(update={"at": now}),
                                   loaded.domain_version)
            case dm.CopyAccount(address=address, copy_pass=copy_pass, from_position=start):
                report = await self.port.copy_account(move, address, copy_pass, start)
                event = ev.DomainMoveAccountCopied(
                    domain=move.domain, move_id=move.move_id, address=address, copy_pass=copy_pass,
                    source_messages=report.source_messages, target_messages=report.target_messages,
                    source_digest=report.source_digest, target_digest=report.target_digest,
                    source_position=report.source_position, epoch=epoch, at=self.clock())
                await self._append(names.AGG_DOMAIN_MOVE, move.domain, event, loaded.progress_version)
            case dm.CleanUpSource(accounts=accounts):
                await self.port.clean_up_source(move, accounts)
            case dm.Stuck(why=why):
                log.error("the move of %s to %s is stuck: %s", move.domain, move.target, why)
            case dm.StandDown(epoch=newer):
                log.warning("the move of %s is driven by epoch %d; standing down (ours: %d)", move.domain, newer,
                            epoch)
        return step

    async def _append(self, kind: str, domain: str, event: ev.Event, version: int) -> None:
        try:
            await self.store.append(names.provisioning_subject(kind, domain), [event.encode()], version)
        except ConcurrencyConflict:
            # Another writer recorded something meanwhile (a newer controller, an operator's
            # change of the domain): the next step re-reads and decides again.
            log.info("move of %s: %s lost a race; re-reading", domain, event.type)

    async def drive(self, domain: str, *, sleep: Callable[[float], object] = asyncio.sleep,
                    poll: float = 1.0) -> dm.Step | None:
        """Steps until the move is finished, stuck or someone else's; returns that last step."""
        while True:
            step = await self.step(domain)
            match step:
                case None | dm.Finished() | dm.Stuck() | dm.StandDown():
                    return step
                case dm.WaitUntil(when=when):
                    await sleep(max(0.0, min(poll, (when - self.clock()).total_seconds())))
