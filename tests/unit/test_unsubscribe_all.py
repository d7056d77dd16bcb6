"""unsubscribe_all: every subscription of a stopping service is let go, even when the
connection has gone and one of them fails."""

import asyncio

from nats.errors import ConnectionClosedError

from colony.bus.connection import unsubscribe_all


class _Sub:
    def __init__(self, subject: str, fails: bool = False) -> None:
        self.subject = subject
        self.fails = fails
        self.unsubscribed = False

    async def unsubscribe(self) -> None:
        if self.fails:
            raise ConnectionClosedError
        self.unsubscribed = True


def test_a_failure_does_not_stop_the_rest():
    subs = [_Sub("a", fails=True), _Sub("b"), _Sub("c")]
    asyncio.run(unsubscribe_all(subs))
    assert [s.unsubscribed for s in subs] == [False, True, True]


def test_none_stands_for_a_subscription_never_made():
    sub = _Sub("a")
    asyncio.run(unsubscribe_all([None, sub, None]))
    assert sub.unsubscribed
