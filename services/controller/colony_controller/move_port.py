"""``MovePort`` over the bus: the primary's controller asks the regions' mail stores.

The questions and their contract are ``colony.contracts.move_requests``; the subjects cross
the leafnode link (``names.domain_move_subject``).  The accounts of a domain are read by the
caller's ``accounts`` function (the directory the controller may read), not asked of a store.
Each request carries trace context (``colony.telemetry.inject_headers``).  A timeout or
"no responders" (the asked region cut off, or no store there yet) becomes
``MoveRequestError``: the driver's step fails and is simply taken again later.  A pull is
answered within ``mr.PULL_ANSWER_WITHIN`` (a long copy says "still under way" and goes on),
so its timeout is short: a target store SIGKILLed with the question in hand is noticed
after ``mr.PULL_ASK_TIMEOUT``, and the question asked again reaches a live store.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import nats.errors

from colony import domain_move as dm
from colony.bus import names
from colony.contracts import move_requests as mr
from colony.telemetry import inject_headers

from colony_controller.domain_mover import CopyReport


class BusMovePort:
    def __init__(self, nc, accounts: Callable[[str], Awaitable[list[str]]], *, epoch: Callable[[], int],
                 timeout: float = 30.0, pull_timeout: float = mr.PULL_ASK_TIMEOUT) -> None:
        self.nc, self._accounts, self.epoch = nc, accounts, epoch
        self.timeout, self.pull_timeout = timeout, pull_timeout

    def _asked(self, move: dm.Move) -> dict:
        return {"domain": move.domain, "move_id": move.move_id, "source": move.source, "target": move.target,
                "epoch": self.epoch()}

    async def _ask(self, region: str, verb: str, request: mr.BaseModel, kind: type[mr.Reply],
                   timeout: float) -> mr.Reply:
        subject = names.domain_move_subject(region, verb)
        try:
            msg = await self.nc.request(subject, request.model_dump_json().encode(), timeout=timeout,
                                        headers=inject_headers())
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            raise mr.MoveRequestError(f"{subject}: {type(exc).__name__}") from exc
        return mr.decode_reply(msg.data, kind)

    async def accounts(self, domain: str) -> list[str]:
        return await self._accounts(domain)

    async def copy_account(self, move: dm.Move, address: str, copy_pass: int, from_position: int) -> CopyReport:
        request = mr.PullRequest(**self._asked(move), address=address, copy_pass=copy_pass,
                                 from_position=from_position)
        reply = await self._ask(move.target, names.MOVE_PULL, request, mr.PullReply, self.pull_timeout)
        return CopyReport(reply.source_messages, reply.target_messages, reply.source_digest, reply.target_digest,
                          reply.source_position)

    async def source_sessions(self, move: dm.Move) -> int:
        reply = await self._ask(move.source, names.MOVE_SESSIONS, mr.SessionsRequest(**self._asked(move)),
                                mr.SessionsReply, self.timeout)
        return reply.sessions

    async def source_cleaned(self, move: dm.Move) -> bool:
        reply = await self._ask(move.source, names.MOVE_SESSIONS, mr.SessionsRequest(**self._asked(move)),
                                mr.SessionsReply, self.timeout)
        return reply.accounts_held == 0

    async def clean_up_source(self, move: dm.Move, accounts: tuple[str, ...]) -> None:
        await self._ask(move.source, names.MOVE_REMOVE, mr.RemoveRequest(**self._asked(move), accounts=accounts),
                        mr.RemoveReply, self.timeout)
