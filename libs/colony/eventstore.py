"""A small event store on a JetStream stream: one subject per aggregate, optimistic concurrency.

Theory of operation
-------------------
An aggregate's events are the messages of its subject, in stream order.  Its *version* is the
stream sequence of its last event (0: it has none yet).  ``append`` publishes with
``Nats-Expected-Last-Subject-Sequence: <version the caller decided on>``, so the server
refuses (error 10071) an append made from a stale view: that is the concurrency check, done
by the server and therefore correct across any number of API instances.

Bulk creation (``create_many``): many new aggregates, each expecting version 0, published
back to back on one reply subscription and acknowledged as the acks stream in — a round
trip per batch instead of per aggregate (nats-py's publish_async cannot be used: it hangs
the future of a publish the server rejects).

Retries: a publish whose ack was lost is retried with the same ``Nats-Msg-Id``.  Because the
first attempt may have landed, the retry can meet 10071 although nothing conflicted
(NATS-NOTES: the expected-sequence check runs before duplicate detection).  So on 10071 we
read the subject's last message: if it carries our Msg-Id, our append is in and we return its
sequence; otherwise someone else wrote first and the caller gets ``ConcurrencyConflict``.
Those recovery reads go to the stream leader (``STREAM.MSG.GET``), never a direct get: a
direct get may be answered by a replica that has not applied the append whose ack was lost,
and it fails outright on a stream created without ``allow_direct``.  Plain reads (``read``,
``version``) use direct gets where the stream allows them.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.trace import SpanKind
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from colony.bus.pipelined import publish_pipelined
from colony.telemetry import inject_headers

log = logging.getLogger("colony.eventstore")
_tracer = trace.get_tracer("colony.eventstore")  # a proxy: follows the provider setup_tracing installs

WRONG_LAST_SEQUENCE = 10071
EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
MSG_ID = "Nats-Msg-Id"


class ConcurrencyConflict(Exception):
    """The aggregate moved on since the caller read it; re-read and decide again."""

    def __init__(self, subject: str, expected: int, actual: int | None) -> None:
        super().__init__(f"{subject}: expected version {expected}, found {actual}")
        self.subject = subject
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True)
class StoredEvent:
    subject: str
    seq: int
    data: bytes
    headers: dict[str, str]


class EventStore:
    """Append to and read aggregates of one stream."""

    def __init__(self, js: JetStreamContext, stream: str, *, nc: Client | None = None, publish_attempts: int = 3,
                 timeout: float = 5.0) -> None:
        # ``nc``: the connection ``js`` was made from, needed by ``create_many`` only (it publishes
        # on the connection directly; a JetStream context exposes its own only as a private).
        self._js = js
        self.nc = nc
        self._stream = stream
        self._attempts = publish_attempts
        self._timeout = timeout
        self._allow_direct: bool | None = None   # learnt from the stream's config on the first read

    @property
    def stream(self) -> str:
        return self._stream

    async def version(self, subject: str) -> int:
        """Stream sequence of the subject's last event, 0 when it has none."""
        last = await self._last(subject)
        return last.seq if last else 0

    async def append(
        self,
        subject: str,
        payloads: Sequence[bytes],
        expected_version: int,
        headers: dict[str, str] | None = None,
    ) -> int:
        """Append events in order; returns the new version.  Raises ``ConcurrencyConflict``.

        Several events are appended one by one, each expecting the previous one: a conflict
        can only hit the first (nobody else can slip in between without failing ours).
        """
        version = expected_version
        # A PRODUCER span whose W3C context travels in the events' headers, so the projections
        # that apply them continue the caller's trace (``colony.telemetry``).  Without a
        # configured tracer the span is a no-op and no header is added.
        with _tracer.start_as_current_span(f"append {self._stream}", kind=SpanKind.PRODUCER,
                                           attributes={"messaging.destination.name": subject,
                                                       "colony.events": len(payloads)}):
            traced = inject_headers(headers)
            for payload in payloads:
                version = await self._append_one(subject, payload, version, traced)
        return version

    async def create_many(self, items: Sequence[tuple[str, bytes]], timeout: float | None = None) -> list[int | ConcurrencyConflict]:
        """Append one event to each of many subjects, each expecting version 0 (a new aggregate).

        Returns, per item in order, the stream sequence or a ``ConcurrencyConflict`` (the
        subject has events already).  An item whose ack does not come in time is retried
        alone through the careful path of ``append``.
        """
        if self.nc is None:
            raise RuntimeError("EventStore.create_many needs the connection: EventStore(js, stream, nc=nc)")
        # One header only: every consumer of the stream parses the stored headers of every
        # message, and at bulk rates that parsing is a large share of the CPU.
        acks = await publish_pipelined(self.nc, [(subject, payload, {EXPECTED_LAST_SUBJECT_SEQUENCE: "0"})
                                                 for subject, payload in items], timeout or self._timeout)
        results: list[int | ConcurrencyConflict] = []
        for (subject, payload), ack in zip(items, acks, strict=True):
            if ack is None:
                results.append(await self._careful(subject, payload))
                continue
            error = ack.get("error")
            if error is None:
                results.append(int(ack["seq"]))
            elif error.get("err_code") == WRONG_LAST_SEQUENCE:
                results.append(await self._careful(subject, payload))
            else:
                raise APIError.from_error(error)
        return results

    async def _careful(self, subject: str, payload: bytes) -> int | ConcurrencyConflict:
        """Settle one item of ``create_many`` whose ack was lost or that met a conflict.

        Without a Msg-Id, "did our first attempt land?" is answered by content: an event
        payload carries its creation time in microseconds, so an identical first event on the
        subject is ours.
        """
        try:
            return await self._append_one(subject, payload, 0, {})
        except ConcurrencyConflict as exc:
            first = await self._first(subject)
            if first is not None and first.data == payload:
                return first.seq
            return exc

    async def _append_one(self, subject: str, payload: bytes, expected: int, extra: dict[str, str]) -> int:
        msg_id = uuid.uuid4().hex
        hdrs = {**extra, EXPECTED_LAST_SUBJECT_SEQUENCE: str(expected), MSG_ID: msg_id}
        for attempt in range(1, self._attempts + 1):
            try:
                ack = await self._js.publish(subject, payload, headers=hdrs, timeout=self._timeout, stream=self._stream)
                return ack.seq
            except APIError as exc:
                if exc.err_code != WRONG_LAST_SEQUENCE:
                    raise
                last = await self._last(subject, direct=False)
                if last is not None and last.headers.get(MSG_ID) == msg_id:
                    return last.seq  # an earlier attempt of ours landed; its ack was lost
                raise ConcurrencyConflict(subject, expected, last.seq if last else 0) from None
            except (NatsTimeoutError, asyncio.TimeoutError):
                if attempt == self._attempts:
                    raise
                log.warning("append to %s timed out (attempt %d), retrying with the same Msg-Id", subject, attempt)
        raise AssertionError("unreachable")

    async def read(self, subject: str, after: int = 0) -> list[StoredEvent]:
        """Every event of the aggregate with a sequence above ``after``, in order."""
        events: list[StoredEvent] = []
        seq = after + 1
        direct = await self._direct()
        while True:
            try:
                raw = await self._js.get_msg(self._stream, seq=seq, subject=subject, next=True, direct=direct)
            except NotFoundError:
                return events
            events.append(StoredEvent(raw.subject or subject, raw.seq or 0, raw.data or b"", _headers(raw.headers)))
            seq = (raw.seq or 0) + 1

    async def _first(self, subject: str) -> StoredEvent | None:
        """The aggregate's first event, read from the leader (a recovery read)."""
        try:
            raw = await self._js.get_msg(self._stream, seq=1, subject=subject, next=True)
        except NotFoundError:
            return None
        return StoredEvent(raw.subject or subject, raw.seq or 0, raw.data or b"", _headers(raw.headers))

    async def _last(self, subject: str, *, direct: bool = True) -> StoredEvent | None:
        """The aggregate's last event; ``direct=False`` reads it from the leader (a recovery read)."""
        try:
            raw = await self._js.get_msg(self._stream, subject=subject, direct=direct and await self._direct())
        except NotFoundError:
            return None
        return StoredEvent(raw.subject or subject, raw.seq or 0, raw.data or b"", _headers(raw.headers))

    async def _direct(self) -> bool:
        """Whether the stream answers direct gets (``allow_direct``), asked once: a direct get on
        a stream without it has no responder (NoRespondersError)."""
        if self._allow_direct is None:
            info = await self._js.stream_info(self._stream)
            self._allow_direct = bool(info.config.allow_direct)
        return self._allow_direct


def _headers(raw: object) -> dict[str, str]:
    if not raw:
        return {}
    return {str(k): str(v) for k, v in dict(raw).items()}  # type: ignore[call-overload]
