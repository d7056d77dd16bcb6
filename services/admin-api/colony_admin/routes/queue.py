"""/v1/queue: the outbound queue for operators (system admin), as ``colony queue`` shows it:
waiting messages, the status per destination, one message, retry now, delete (no DSN)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel

from colony.outbound.queue import OutboundQueue, QueueEntry, QueueEntryNotFound
from colony_admin.auth import roles
from colony_admin.deps import Admin, Caller, client_addr
from colony_admin.problems import COMMON_RESPONSES, NotFound

router = APIRouter(prefix="/v1/queue", tags=["queue"], responses=COMMON_RESPONSES)

Seq = Annotated[int, Path(ge=1, le=2**63 - 1, description="The message's sequence in OUTBOUND")]


class QueuedMessage(BaseModel):
    """One message waiting for remote delivery (``OutboundMail`` by its stream sequence)."""

    seq: int
    message_id: str
    destination: str
    sender: str
    recipients: list[str]
    size: int
    queued_at: str
    attempts: int
    generation: int
    next_attempt: str | None
    delay_notified: bool


class DestinationStatus(BaseModel):
    destination: str
    messages: int
    recipients: int
    oldest: str
    max_attempts: int


def _out(entry: QueueEntry) -> QueuedMessage:
    s = entry.summary()
    return QueuedMessage(sender=s.pop("from"), **s)


@router.get("", response_model=list[QueuedMessage], summary="Messages waiting for remote delivery, oldest first")
async def list_queue(ctx: Admin, who: Caller, destination: Annotated[str | None, Query(max_length=253)] = None,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[QueuedMessage]:
    roles.require_system(who, "the outbound queue")
    return [_out(e) for e in await OutboundQueue(ctx.js).list(destination.lower() if destination else None, limit)]


@router.get("/destinations", response_model=list[DestinationStatus], summary="Per destination: what waits and since when")
async def queue_destinations(ctx: Admin, who: Caller) -> list[DestinationStatus]:
    roles.require_system(who, "the outbound queue")
    rows = await OutboundQueue(ctx.js).destinations()
    return [DestinationStatus(destination=name, **row) for name, row in sorted(rows.items())]


@router.get("/{seq}", response_model=QueuedMessage, summary="One waiting message")
async def show_queued(seq: Seq, ctx: Admin, who: Caller) -> QueuedMessage:
    roles.require_system(who, "the outbound queue")
    try:
        return _out(await OutboundQueue(ctx.js).show(seq))
    except QueueEntryNotFound as exc:
        raise NotFound(str(exc)) from None


@router.post("/{seq}/retry", response_model=QueuedMessage, summary="Try a message now (its back-off dropped)")
async def retry_queued(seq: Seq, request: Request, ctx: Admin, who: Caller) -> QueuedMessage:
    roles.require_system(who, "the outbound queue")
    try:
        entry = await OutboundQueue(ctx.js).retry(seq)
    except QueueEntryNotFound as exc:
        raise NotFound(str(exc)) from None
    await ctx.provisioning.audit(who, "queue.retry", entry.mail.message_id, domain=None,
                                 remote_addr=client_addr(request), detail={"destination": entry.mail.destination})
    return _out(entry)


@router.delete("/{seq}", status_code=204, summary="Remove a message from the queue without a DSN")
async def delete_queued(seq: Seq, request: Request, ctx: Admin, who: Caller) -> Response:
    roles.require_system(who, "the outbound queue")
    queue = OutboundQueue(ctx.js)
    try:
        entry = await queue.show(seq)
        await queue.delete(seq)
    except QueueEntryNotFound as exc:
        raise NotFound(str(exc)) from None
    await ctx.provisioning.audit(who, "queue.delete", entry.mail.message_id, domain=None,
                                 remote_addr=client_addr(request), detail={"destination": entry.mail.destination})
    return Response(status_code=204)
