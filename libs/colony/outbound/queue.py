"""The outbound queue for operators: list, show, retry and delete messages waiting in OUTBOUND,
and the status per destination.  Used by ``colony queue`` (and usable by the admin API).

OUTBOUND is a work queue: a message stays in the stream until an edge acks it (delivered,
bounced or expired), so reading the stream by sequence (``get_msg``, direct gets) shows the
queue without consuming it.  ``retry`` republishes a message as its next generation with no
back-off left (``not_before`` cleared) and then deletes the old one, so the next free edge
tries it now; ``delete`` removes it without a DSN (the operator's decision).  An entry an
edge is working on at that moment may still be delivered once by that edge.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError

from colony.bus import names
from colony.contracts.outbound import OutboundMail
from colony.events import UnknownEvent


class QueueEntryNotFound(LookupError):
    pass


@dataclass(frozen=True)
class QueueEntry:
    sequence: int
    mail: OutboundMail

    def summary(self) -> dict:
        m = self.mail
        return {"seq": self.sequence, "message_id": m.message_id, "destination": m.destination,
                "from": m.mail_from, "recipients": [r.address for r in m.recipients], "size": m.size,
                "queued_at": m.queued_at.isoformat(), "attempts": m.attempts, "generation": m.generation,
                "next_attempt": m.not_before.isoformat() if m.not_before else None,
                "delay_notified": m.delay_notified}


class OutboundQueue:
    def __init__(self, js: JetStreamContext, timeout: float = 5.0) -> None:
        self.js, self.timeout = js, timeout

    async def list(self, destination: str | None = None, limit: int = 1000) -> list[QueueEntry]:
        info = await self.js.stream_info(names.STREAM_OUTBOUND)
        state = info.state
        out: list[QueueEntry] = []
        if not state.messages:
            return out
        subject = names.outbound_subject(destination) if destination else names.SUBJECTS_OUTBOUND
        seq = state.first_seq
        while len(out) < limit:
            try:
                msg = await self.js.get_msg(names.STREAM_OUTBOUND, seq=seq, next=True, subject=subject)
            except NotFoundError:
                break
            seq = msg.seq + 1
            try:
                out.append(QueueEntry(msg.seq, OutboundMail.from_bytes(msg.data)))
            except (UnknownEvent, ValueError):
                continue   # not ours to show; the runner dead-letters it
        return out

    async def show(self, sequence: int) -> QueueEntry:
        try:
            msg = await self.js.get_msg(names.STREAM_OUTBOUND, seq=sequence)
        except (NotFoundError, BadRequestError) as exc:  # BadRequest: not a sequence at all
            raise QueueEntryNotFound(f"no message {sequence} in the outbound queue") from exc
        return QueueEntry(sequence, OutboundMail.from_bytes(msg.data))

    async def destinations(self) -> dict[str, dict]:
        """Per destination: messages, recipients, the oldest queued_at, the most attempts."""
        status: dict[str, dict] = {}
        for entry in await self.list(limit=100_000):
            m = entry.mail
            row = status.setdefault(m.destination, {"messages": 0, "recipients": 0, "oldest": m.queued_at.isoformat(),
                                                    "max_attempts": 0})
            row["messages"] += 1
            row["recipients"] += len(m.recipients)
            row["oldest"] = min(row["oldest"], m.queued_at.isoformat())
            row["max_attempts"] = max(row["max_attempts"], m.attempts)
        return status

    async def retry(self, sequence: int) -> QueueEntry:
        entry = await self.show(sequence)
        mail = entry.mail.next_generation(not_before=None)
        ack = await self.js.publish(names.outbound_subject(mail.destination), mail.encode(),
                                    headers={"Nats-Msg-Id": mail.msg_id()}, timeout=self.timeout)
        await self.delete(sequence)
        return QueueEntry(ack.seq, mail)

    async def delete(self, sequence: int) -> None:
        try:
            await self.js.delete_msg(names.STREAM_OUTBOUND, sequence)
        except (NotFoundError, BadRequestError) as exc:
            raise QueueEntryNotFound(f"no message {sequence} in the outbound queue") from exc
