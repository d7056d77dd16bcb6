"""The harness's waits take a bus that does not answer yet for "not yet", whichever way it
says so: a time-out, or 503 "JetStream system temporarily unavailable" while a stream of a
3-server cluster elects its leader (seen reading the lease while a server was starved)."""

from __future__ import annotations

from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

from cluster_harness import wait_progress, wait_until

NOT_YET = [NatsTimeout(), NoStreamResponseError(),
           ServiceUnavailableError(code=503, err_code=10008, description="JetStream system temporarily unavailable")]


def answering(*answers):
    pending = list(answers)

    async def probe():
        answer = pending.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer
    return probe


async def test_wait_until_waits_through_a_bus_that_does_not_answer_yet():
    assert await wait_until(answering(*NOT_YET, None, "there"), 30, "an answer", interval=0) == "there"


async def test_wait_progress_waits_through_a_bus_that_does_not_answer_yet():
    await wait_progress(answering((2, "two left"), *NOT_YET, (0, "done")), 30, "the work", interval=0)
