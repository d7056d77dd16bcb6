"""The dead-letter stream: jobs that failed ``max_deliver`` times or were rejected as poison.

Wire format of one entry (stream ``DEAD_LETTERS``, subject ``names.dead_letter_subject(stream)``)::

    subject: colony.dlq.mail
    headers:
      Nats-Msg-Id:           dlq.MAIL.42            (a copy retried after a crash is deduplicated)
      Colony-Dlq-Stream:     MAIL                   (the work queue it came from, exactly)
      Colony-Dlq-Subject:    colony.mail.example_2ecom
      Colony-Dlq-Sequence:   42                     (its sequence in that stream)
      Colony-Dlq-Consumer:   mailstore              (the durable consumer that gave up)
      Colony-Dlq-Deliveries: 5
      Colony-Dlq-Reason:     failed 5 deliveries; last: OSError: disk full
      Colony-Dlq-At:         2026-11-25T13:00:00+00:00
      Colony-Dlq-Headers:    {"Nats-Msg-Id":"edge-1.17","traceparent":"00-..."}   (the job's headers, JSON)
    body: the job's data, byte for byte (no re-encoding: mail bodies are large)

``DeadLetters`` is what operators (``colony dlq``) and the queue runner use: ``add`` (the
runner, before it removes the job from its queue), ``list``, ``get``, ``replay`` (publish
back on the original subject with the original headers plus ``Colony-Replayed`` and
``Colony-Job-Id``, wait for JetStream's ack, then delete the entry) and ``purge``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import BaseModel, Field

from colony.bus import names
from colony.events import utcnow
from colony.tasks import describe

H_STREAM = "Colony-Dlq-Stream"
H_SUBJECT = "Colony-Dlq-Subject"
H_SEQUENCE = "Colony-Dlq-Sequence"
H_CONSUMER = "Colony-Dlq-Consumer"
H_DELIVERIES = "Colony-Dlq-Deliveries"
H_REASON = "Colony-Dlq-Reason"
H_AT = "Colony-Dlq-At"
H_HEADERS = "Colony-Dlq-Headers"
H_REPLAYED = "Colony-Replayed"   # on a replayed job: "<dead-letter sequence> <time>"
H_JOB_ID = "Colony-Job-Id"       # on a replayed job: the id it had before (idempotent handlers key on it)
MSG_ID = "Nats-Msg-Id"

# Headers that steer the server on publish; a replay must not carry the original's.
_NOT_REPLAYED = ("nats-msg-id", "nats-expected-", "nats-ttl", "nats-rollup")


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


def _one_line(text: str, limit: int = 500) -> str:
    return " ".join(text.split())[:limit]


class DeadLetter(BaseModel):
    """One dead job (wire format in the module docstring)."""

    stream: str
    subject: str
    sequence: int
    consumer: str = ""
    deliveries: int = 0
    reason: str = ""
    at: datetime = Field(default_factory=utcnow)
    headers: dict[str, str] = Field(default_factory=dict)
    data: bytes = b""
    dlq_sequence: int = 0  # its sequence in DEAD_LETTERS, once stored

    @property
    def job_id(self) -> str:
        return self.headers.get(H_JOB_ID) or self.headers.get(MSG_ID) or f"{self.stream}.{self.sequence}"

    def to_message(self) -> tuple[str, dict[str, str], bytes]:
        headers = {
            MSG_ID: f"dlq.{self.stream}.{self.sequence}",
            H_STREAM: self.stream, H_SUBJECT: self.subject, H_SEQUENCE: str(self.sequence),
            H_CONSUMER: self.consumer, H_DELIVERIES: str(self.deliveries), H_REASON: _one_line(self.reason),
            H_AT: self.at.isoformat(), H_HEADERS: json.dumps(self.headers, separators=(",", ":")),
        }
        return names.dead_letter_subject(self.stream), headers, self.data

    @classmethod
    def from_stored(cls, seq: int, headers: dict[str, str] | None, data: bytes | None) -> DeadLetter:
        h = headers or {}
        # Read leniently: anyone allowed to publish on colony.dlq.> could have put it there.
        try:
            original = json.loads(h.get(H_HEADERS) or "{}")
        except ValueError:
            original = {}
        if not isinstance(original, dict):
            original = {}
        try:
            at = datetime.fromisoformat(h.get(H_AT, ""))
        except ValueError:
            at = datetime.fromtimestamp(0, UTC)
        return cls(
            stream=h.get(H_STREAM, "?"), subject=h.get(H_SUBJECT, "?"), sequence=_int(h.get(H_SEQUENCE)),
            consumer=h.get(H_CONSUMER, ""), deliveries=_int(h.get(H_DELIVERIES)), reason=h.get(H_REASON, ""),
            at=at, headers={str(k): str(v) for k, v in original.items()}, data=data or b"", dlq_sequence=seq,
        )

    def replay_headers(self, now: datetime | None = None) -> dict[str, str]:
        kept = {k: v for k, v in self.headers.items() if not k.lower().startswith(_NOT_REPLAYED)}
        kept[H_JOB_ID] = self.job_id
        kept[H_REPLAYED] = f"{self.dlq_sequence} {(now or utcnow()).isoformat()}"
        # A replay retried after a crash (published, not yet deleted) is deduplicated.
        kept[MSG_ID] = f"replay.{self.dlq_sequence}.{self.job_id}"[:200]
        return kept


class DeadLetterError(Exception):
    """An operator's request about a dead letter that cannot be done (the message says why)."""


class DeadLetterNotFound(DeadLetterError, LookupError):
    pass


class DeadLetters:
    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def add(self, letter: DeadLetter) -> int:
        subject, headers, data = letter.to_message()
        ack = await self.js.publish(subject, data, headers=headers, stream=names.STREAM_DEAD_LETTERS)
        return ack.seq

    async def list(self, stream: str | None = None, limit: int = 100, after: int = 0) -> list[DeadLetter]:
        """Oldest first; ``stream`` narrows to one work queue's dead jobs."""
        subject = names.dead_letter_subject(stream) if stream else names.SUBJECTS_DEAD_LETTERS
        found: list[DeadLetter] = []
        seq = after + 1
        while len(found) < limit:
            try:
                raw = await self.js.get_msg(names.STREAM_DEAD_LETTERS, seq=seq, subject=subject, next=True)
            except NotFoundError:
                break
            found.append(DeadLetter.from_stored(raw.seq, raw.headers, raw.data))
            seq = raw.seq + 1
        return found

    async def get(self, seq: int) -> DeadLetter:
        try:
            raw = await self.js.get_msg(names.STREAM_DEAD_LETTERS, seq=seq)
        except NotFoundError:
            raise DeadLetterNotFound(f"no dead letter {seq} (see `colony dlq list`)") from None
        return DeadLetter.from_stored(raw.seq, raw.headers, raw.data)

    async def replay(self, seq: int) -> int:
        """Put job ``seq`` back on its original subject; returns its new sequence there."""
        letter = await self.get(seq)
        try:
            ack = await self.js.publish(letter.subject, letter.data, headers=letter.replay_headers(), stream=letter.stream)
        except Exception as exc:  # e.g. the stream is gone or no longer takes that subject
            raise DeadLetterError(f"dead letter {seq} could not be queued again on {letter.subject} "
                                  f"(stream {letter.stream}): {describe(exc)}; it stays a dead letter") from exc
        await self.delete(seq)
        return ack.seq

    async def delete(self, seq: int) -> None:
        try:
            await self.js.delete_msg(names.STREAM_DEAD_LETTERS, seq)
        except NotFoundError:
            raise DeadLetterNotFound(f"no dead letter {seq}") from None

    async def count(self, stream: str | None = None) -> int:
        subject = names.dead_letter_subject(stream) if stream else names.SUBJECTS_DEAD_LETTERS
        info = await self.js.stream_info(names.STREAM_DEAD_LETTERS, subjects_filter=subject)
        return sum((info.state.subjects or {}).values())

    async def purge(self, stream: str | None = None) -> int:
        """Drop every dead letter (of one work queue); returns how many went."""
        n = await self.count(stream)
        await self.js.purge_stream(names.STREAM_DEAD_LETTERS,
                                   subject=names.dead_letter_subject(stream) if stream else None)
        return n
