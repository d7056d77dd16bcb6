"""What a job handler answers, and the pure rules that turn it into an action on the queue.

Theory of operation
-------------------
A handler gets one ``Job`` and either returns (the durable effect is done: *ack*), returns an
outcome, or raises:

* ``None`` or ``Done()``: ack - the job leaves the work queue.
* ``Retry(delay, reason)``: not now; redeliver after ``delay`` seconds (``None``: the
  back-off schedule's delay for this delivery).  Counts towards ``max_deliver``.
* ``Retry(..., held=True)``: not now, and not the job's fault -- what it needs is unavailable
  (the mail store's disk is full or read-only).  Redelivered after ``delay`` however often:
  such a job is never dead-lettered for it, since it would succeed the moment the resource
  is back and dead-lettering it would only hand an operator a replay.  The runner counts
  these deliveries (``held``) and leaves them out of the "redelivered past ``max_deliver``"
  rule below.
* ``Reject(reason)``: poison - it will never succeed (malformed, refers to nothing): straight
  to the dead-letter stream, without using up the remaining deliveries.
* an exception: a ``Retry`` on the schedule, its reason the exception (logged with traceback).

``decide(outcome, delivered, policy)`` is the whole rule, with no I/O: a failure on the
``max_deliver``-th delivery dead-letters instead of retrying (a held retry never does), and
a job delivered *more* than ``max_deliver`` times besides the deliveries it was held (its
workers died or hung each time, so no outcome was ever reported) is dead-lettered before the
handler sees it again.  The consumer itself has no
``max_deliver``: JetStream would just stop delivering such a job and leave it in the stream
(NATS-NOTES), where nobody would ever see it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from colony.settings import Settings


@dataclass(frozen=True)
class Done:
    """The job's durable effect is in place: ack it."""


@dataclass(frozen=True)
class Retry:
    """Try again later; ``delay`` None = the policy's back-off for this delivery."""

    reason: str = ""
    delay: float | None = None
    held: bool = False   # a resource the job needs is unavailable: never dead-lettered for it


@dataclass(frozen=True)
class Reject:
    """Poison: never retry; dead-letter now with ``reason``."""

    reason: str


Outcome = Done | Retry | Reject


@dataclass(frozen=True)
class QueuePolicy:
    max_deliver: int = 5
    ack_wait: float = 30.0                 # no ack or progress for this long: JetStream redelivers
    backoff: tuple[float, ...] = (1.0, 5.0, 30.0, 120.0, 600.0)  # delay before retry n; the last repeats
    concurrency: int = 8
    job_timeout: float = 600.0             # a handler running longer is cancelled; the job is retried

    def __post_init__(self) -> None:
        if (self.max_deliver < 1 or self.concurrency < 1 or self.ack_wait <= 0 or not self.backoff
                or self.job_timeout <= 0):
            raise ValueError(f"invalid queue policy: {self}")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides) -> QueuePolicy:
        values = dict(
            max_deliver=settings.queue_max_deliver, ack_wait=settings.queue_ack_wait,
            backoff=tuple(float(x) for x in settings.queue_retry_backoff.split(",")),
            concurrency=settings.queue_concurrency, job_timeout=settings.queue_job_timeout,
        )
        values.update(overrides)
        return cls(**values)

    @property
    def progress_interval(self) -> float:
        """How often a running job tells JetStream it is alive (well inside ``ack_wait``)."""
        return max(self.ack_wait / 3, 0.1)

    def retry_delay(self, delivered: int) -> float:
        """Delay after the ``delivered``-th delivery failed (1-based)."""
        return self.backoff[min(max(delivered, 1), len(self.backoff)) - 1]


class Action(StrEnum):
    ACK = "ack"
    NAK = "nak"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True)
class Decision:
    action: Action
    delay: float = 0.0
    reason: str = ""


def before_handling(delivered: int, policy: QueuePolicy, held: int = 0) -> Decision | None:
    """A job redelivered past ``max_deliver`` (no outcome was ever reported): dead-letter it.
    ``held``: how many of its deliveries ended in a held retry (those had an outcome)."""
    if delivered - held > policy.max_deliver:
        return Decision(Action.DEAD_LETTER, reason=(
            f"delivered {delivered} times without an outcome (its workers died or timed out each time)"))
    return None


def decide(outcome: Outcome | None, delivered: int, policy: QueuePolicy) -> Decision:
    if outcome is None or isinstance(outcome, Done):
        return Decision(Action.ACK)
    if isinstance(outcome, Reject):
        return Decision(Action.DEAD_LETTER, reason=f"rejected: {outcome.reason}")
    if isinstance(outcome, Retry):
        if delivered >= policy.max_deliver and not outcome.held:
            return Decision(Action.DEAD_LETTER, reason=f"failed {delivered} deliveries; last: {outcome.reason}")
        delay = outcome.delay if outcome.delay is not None else policy.retry_delay(delivered)
        return Decision(Action.NAK, delay=max(delay, 0.0), reason=outcome.reason)
    raise TypeError(f"a job handler returned {outcome!r}; return None, Done(), Retry(...) or Reject(...)")
