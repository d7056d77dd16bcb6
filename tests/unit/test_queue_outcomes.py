"""colony.queue.outcomes: the pure rules of the queue runner."""

import pytest

from colony.queue import Action, Done, QueuePolicy, Reject, Retry, before_handling, decide
from colony.settings import Settings

POLICY = QueuePolicy(max_deliver=3, backoff=(1.0, 10.0))


def test_success_acks():
    assert decide(None, 1, POLICY).action == Action.ACK
    assert decide(Done(), 3, POLICY).action == Action.ACK


def test_failures_back_off_on_the_schedule_then_dead_letter_on_the_last_delivery():
    assert decide(Retry("busy"), 1, POLICY) == decide(Retry("busy"), 1, POLICY)
    first, second = decide(Retry("busy"), 1, POLICY), decide(Retry("busy"), 2, POLICY)
    assert (first.action, first.delay) == (Action.NAK, 1.0)
    assert (second.action, second.delay) == (Action.NAK, 10.0)  # the last step repeats
    last = decide(Retry("disk full"), 3, POLICY)
    assert last.action == Action.DEAD_LETTER
    assert last.reason == "failed 3 deliveries; last: disk full"


def test_an_explicit_delay_wins_and_reject_dead_letters_at_once():
    assert decide(Retry("greylisted", delay=300), 1, POLICY).delay == 300
    poison = decide(Reject("not a message"), 1, POLICY)
    assert (poison.action, poison.reason) == (Action.DEAD_LETTER, "rejected: not a message")


def test_a_job_redelivered_past_max_deliver_is_dead_lettered_before_it_runs_again():
    assert before_handling(3, POLICY) is None
    dead = before_handling(4, POLICY)
    assert dead.action == Action.DEAD_LETTER and "without an outcome" in dead.reason


def test_a_held_job_is_retried_past_max_deliver_and_its_held_deliveries_do_not_count():
    # The store's disk is full: the job waits for it however long that takes.
    for delivered in (1, 3, 40):
        held = decide(Retry("storage unavailable", delay=10, held=True), delivered, POLICY)
        assert (held.action, held.delay) == (Action.NAK, 10)
    assert decide(Retry("storage unavailable", held=True), 7, POLICY).delay == 10.0   # the schedule's last step
    # 40 deliveries of which 38 were held: 2 without an outcome, not "past max_deliver" ...
    assert before_handling(40, POLICY, held=38) is None
    # ... while one whose workers kept dying beyond the held ones still goes.
    assert before_handling(40, POLICY, held=36).action == Action.DEAD_LETTER


def test_a_handler_returning_something_else_is_a_bug_named_clearly():
    with pytest.raises(TypeError, match="return None, Done"):
        decide("ok", 1, POLICY)


def test_policy_from_settings():
    s = Settings(queue_max_deliver=7, queue_ack_wait=9, queue_retry_backoff="2, 4,8", queue_concurrency=3)
    p = QueuePolicy.from_settings(s)
    assert (p.max_deliver, p.ack_wait, p.backoff, p.concurrency) == (7, 9.0, (2.0, 4.0, 8.0), 3)
    assert p.progress_interval == 3.0
    with pytest.raises(ValueError):
        QueuePolicy(max_deliver=0)


def test_two_runners_in_one_process_share_one_set_of_queue_metrics():
    from colony.metrics import Metrics
    from colony.queue import QueueMetrics

    metrics = Metrics(with_process=False)
    first = metrics.once(QueueMetrics)
    assert metrics.once(QueueMetrics) is first
    first.jobs.labels("mail", "done").inc()
    assert b'colony_queue_jobs_total{outcome="done",queue="mail"} 1.0' in metrics.render()


async def test_a_job_budget_caps_what_several_runners_fetch_together():
    """Runners sharing a JobBudget fetch at most what it has free and are all woken when a
    slot is given back (the mail store's partitions share one)."""
    from colony.queue import JobBudget

    budget = JobBudget(3)
    woken: list[str] = []
    budget.on_free(lambda: woken.append("a"))
    budget.on_free(lambda: woken.append("b"))
    assert budget.free() == 3
    budget.take(3)
    assert budget.free() == 0 and woken == []
    budget.give(1)
    assert woken == ["a", "b"], "every runner sharing it is woken"
    assert budget.free() == 1
