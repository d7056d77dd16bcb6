"""Work queues with dead letters: a small runner for JetStream work-queue pull consumers.

Public API (import from ``colony.queue``)::

    from colony.queue import Job, QueueRunner, QueuePolicy, QueueMetrics, Done, Retry, Reject

    async def deliver(job: Job) -> Retry | Reject | None:
        if already_stored(job.id):             # idempotent: a redelivery after a crash
            return None
        try:
            message = parse(job.data)
        except ValueError as exc:
            return Reject(f"unparseable: {exc}")  # poison: straight to DEAD_LETTERS
        await store(message)                    # the durable effect ...
        return None                             # ... then the runner acks

    runner = QueueRunner(nc, stream=names.STREAM_MAIL, durable="mailstore",
                         filter_subject=names.SUBJECTS_MAIL, handler=deliver,
                         policy=QueuePolicy.from_settings(settings),
                         metrics=runtime.metrics.once(QueueMetrics), name="mail")
    await runner.start(runtime.spawn)          # in Workload.start
    runner.set_accepting(False)                # in Workload.set_accepting (drain: fetch no more)
    runner.active_work()                       # in Workload.active_work (jobs in flight)
    await runner.stop()                        # in Workload.stop

Rules (``colony.queue.outcomes``): return ``None``/``Done()`` = ack after your durable effect;
``Retry(reason, delay=None)`` = nak on the back-off schedule (``queue_retry_backoff``); raise =
the same as ``Retry``; ``Reject(reason)`` = poison, dead-letter now.  A job that fails its
``queue_max_deliver``-th delivery, or is delivered more often than that because its workers
died, is copied to the ``DEAD_LETTERS`` stream with the reason and removed from the queue.
Handlers must be idempotent by ``job.id`` (``Nats-Msg-Id`` of the publisher, kept across
replays).  Long jobs are kept alive with ``in_progress()`` automatically, for at most
``queue_job_timeout`` seconds (then the handler is cancelled and the job retried).

Operators: ``colony dlq list|show|replay|purge`` (``colony.queue.deadletter.DeadLetters``).
"""

from colony.queue.deadletter import DeadLetter, DeadLetterError, DeadLetterNotFound, DeadLetters
from colony.queue.outcomes import Action, Decision, Done, QueuePolicy, Reject, Retry, before_handling, decide
from colony.queue.runner import Job, JobBudget, QueueMetrics, QueueRunner

__all__ = [
    "Action", "DeadLetter", "DeadLetterError", "DeadLetterNotFound", "DeadLetters", "Decision", "Done", "Job", "JobBudget", "QueueMetrics",
    "QueuePolicy", "QueueRunner", "Reject", "Retry", "before_handling", "decide",
]
