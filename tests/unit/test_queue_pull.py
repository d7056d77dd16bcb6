"""The queue runner's pull-request ledger (``colony.queue.pull.PullLedger``): no I/O, time is
an argument.  What it must hold: never more asked for than free slots, a lone job fetched at
once, a busy runner kept a batch ahead, stale statuses ignored, refusals not retried in a
tight loop, silent requests given up."""

from __future__ import annotations

from colony.queue.pull import PullLedger, _request_number


def test_an_idle_runner_asks_for_all_its_free_slots_in_one_long_poll():
    ledger = PullLedger(expires=5.0, refill=4)
    assert ledger.plan(free=8, now=0.0) == 8
    request = ledger.sent(8, now=0.0)
    assert ledger.owed() == 8
    assert ledger.plan(free=8, now=1.0) == 0, "the outstanding request already covers every slot"
    assert request.deadline == 6.0, "expires plus one second of grace"


def test_what_is_owed_and_in_flight_never_exceeds_the_free_slots():
    ledger = PullLedger(expires=5.0, refill=4)
    ledger.sent(ledger.plan(free=8, now=0.0), now=0.0)
    for _ in range(3):                     # three jobs arrive: three slots taken, three fewer owed
        ledger.delivered()
    assert ledger.owed() == 5
    assert ledger.plan(free=5, now=0.1) == 0
    # two jobs end: 7 free, 5 owed -> 2 wanted, under the refill of 4: wait for more to free up
    assert ledger.plan(free=7, now=0.2) == 0
    # four end: 9 free (a larger budget), 5 owed -> 4 wanted: a second request, keeping the server ahead
    assert ledger.plan(free=9, now=0.3) == 4
    ledger.sent(4, now=0.3)
    assert ledger.owed() == 9


def test_a_request_that_got_all_it_asked_for_is_over_without_a_status():
    ledger = PullLedger(expires=5.0)
    ledger.sent(2, now=0.0)
    assert ledger.delivered() is False
    assert ledger.delivered() is True
    assert ledger.outstanding == {} and ledger.plan(free=1, now=0.1) == 1


def test_a_status_left_over_from_a_request_given_up_ends_nothing():
    """The tail stall of nats-py's fetch: a stale 408 taken as the answer to a new request."""
    ledger = PullLedger(expires=1.0, grace=1.0)
    old = ledger.sent(1, now=0.0)
    assert ledger.expire(now=2.5) == [old]           # never answered: given up
    new = ledger.sent(1, now=2.5)
    assert ledger.ended(old.number, "408", now=2.6) is False
    assert new.number in ledger.outstanding
    assert ledger.ended(new.number, "408", now=3.5) is True


def test_jobs_fill_the_oldest_open_request_first_as_the_server_does():
    """A job names no request (it comes under its own subject): the server fills its waiting
    requests in order, so the ledger counts a job against the oldest open one."""
    ledger = PullLedger(expires=5.0, refill=2)
    first = ledger.sent(2, now=0.0)
    second = ledger.sent(2, now=0.1)
    assert ledger.delivered() is False and ledger.delivered() is True   # the first is complete
    assert first.number not in ledger.outstanding
    assert ledger.delivered() is False
    assert ledger.outstanding[second.number].remaining == 1
    assert ledger.ended(second.number, "408", now=5.1) is True


def test_a_job_with_no_request_open_changes_nothing():
    ledger = PullLedger(expires=1.0)
    ledger.sent(3, now=0.0)
    ledger.expire(now=5.0)                 # given up; a late job for it still arrives
    assert ledger.delivered() is False and ledger.outstanding == {}


def test_a_refusal_holds_new_requests_for_a_moment_instead_of_a_tight_loop():
    ledger = PullLedger(expires=5.0, hold=0.5)
    request = ledger.sent(4, now=10.0)
    assert ledger.ended(request.number, "409", now=10.0) is True   # e.g. "Exceeded MaxWaiting"
    assert ledger.plan(free=4, now=10.2) == 0
    assert ledger.next_deadline() == 10.5
    assert ledger.plan(free=4, now=10.5) == 4
    assert ledger.next_deadline() is None, "the hold is over: nothing to wake up for"


def test_an_expired_long_poll_with_something_delivered_is_not_a_missing_consumer():
    ledger = PullLedger(expires=1.0, grace=1.0)
    answered = ledger.sent(2, now=0.0)
    ledger.delivered()
    silent = ledger.sent(1, now=0.5)
    assert ledger.next_deadline() == 2.0
    given_up = ledger.expire(now=2.6)
    assert {r.number: r.answered for r in given_up} == {answered.number: True, silent.number: False}


def test_request_numbers_come_from_the_last_token_of_the_reply_subject():
    assert _request_number("_INBOX_abc.Xy7.12") == 12
    assert _request_number("_INBOX.noise") == 0


def test_wants_says_whether_plan_would_ask_without_changing_anything():
    ledger = PullLedger(expires=5.0, refill=4, hold=0.5)
    assert ledger.wants(free=1, now=0.0) is True, "a lone job is fetched at once"
    ledger.sent(8, now=0.0)
    for free in (0, 8, 11):                # covered by the outstanding request, or under the refill
        assert ledger.wants(free=free, now=0.1) is False
        assert ledger.plan(free=free, now=0.1) == 0
    assert ledger.wants(free=12, now=0.1) is True and ledger.plan(free=12, now=0.1) == 4
    request = ledger.sent(4, now=0.1)
    ledger.ended(request.number, "409", now=0.2)
    ledger.outstanding.clear()
    assert ledger.wants(free=4, now=0.3) is False, "held after a refusal"
    assert ledger.wants(free=4, now=0.3) is False, "and asking did not end the hold"
    assert ledger.plan(free=4, now=0.3) == 0
    assert ledger.wants(free=4, now=0.7) is True and ledger.plan(free=4, now=0.7) == 4


class _FakeBus:
    """What JobPuller uses of a nats client: an inbox, a subscription, publish."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, bytes, str]] = []

    def new_inbox(self) -> str:
        return "_INBOX.t"

    async def subscribe(self, subject, cb, pending_msgs_limit):
        return None

    async def publish(self, subject, body, reply=""):
        self.requests.append((subject, body, reply))


async def test_a_freed_slot_wakes_the_puller_only_when_it_would_ask_for_more():
    """Every runner sharing a JobBudget hears of every freed slot: one whose outstanding
    request still owes at least that much, or that is not fetching, keeps sleeping."""
    import asyncio
    import json

    from colony.queue.pull import JobPuller

    bus, free = _FakeBus(), [8]
    puller = JobPuller(bus, "MAIL", "c", on_job=lambda msg: None, free=lambda: free[0], expires=5.0,
                       concurrency=8, consumer_exists=lambda: asyncio.sleep(0))
    await puller.open()
    task = asyncio.create_task(puller.run())
    try:
        for _ in range(20):
            await asyncio.sleep(0)
        assert [json.loads(b)["batch"] for _, b, _ in bus.requests] == [8], "one long poll for every free slot"
        for _ in range(3):                  # three jobs came and went: the long poll still owes 5 of 8
            puller.ledger.delivered()
        for _ in range(5):
            puller.wake()
        free[0] = 0                          # a runner that stopped fetching is told too
        puller.wake()
        assert puller.wakeups == 0
        free[0] = 12                         # a larger budget: 12 free, 5 owed -> worth a request of 7
        puller.wake()
        assert puller.wakeups == 1
        for _ in range(20):
            await asyncio.sleep(0)
        assert [json.loads(b)["batch"] for _, b, _ in bus.requests] == [8, 7]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
