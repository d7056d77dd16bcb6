"""A queue runner's start (``colony.queue.runner.QueueRunner.start``) on a bus that is not
answering yet."""

from __future__ import annotations

from colony.queue.runner import QueueRunner


async def test_a_start_waits_out_a_bus_that_does_not_answer_yet(monkeypatch):
    """A service starting on a busy cluster met a 503 (the stream electing its leader) or a
    time-out creating its consumer and exited; the creation is tried again instead."""
    import asyncio

    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.errors import ServiceUnavailableError

    from colony.queue import runner as runner_module

    answers = [ServiceUnavailableError(code=503, err_code=10008, description="JetStream system temporarily unavailable"),
               NatsTimeout()]

    class _JetStream:
        created = 0

        async def add_consumer(self, stream, config):
            if answers:
                raise answers.pop(0)
            self.created += 1

    class _FlakyBus:
        js = _JetStream()

        def jetstream(self):
            return self.js

    class _OpenPuller:
        def __init__(self, *args, **kwargs) -> None:
            pass

        async def open(self) -> None:
            pass

    monkeypatch.setattr(runner_module, "JobPuller", _OpenPuller)
    bus = _FlakyBus()
    runner = QueueRunner(bus, stream="MAIL", durable="d", filter_subject="s", handler=None, name="mail")
    spawned = []
    await asyncio.wait_for(runner.start(lambda name, fn, **kw: spawned.append(name)), 30)
    assert bus.js.created == 1 and not answers
    assert spawned == ["queue mail"]
