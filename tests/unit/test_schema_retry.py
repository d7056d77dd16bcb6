"""``ensure_schema`` against a JetStream that is not answering yet, without sockets.

On a fresh 3-server cluster whose servers are starved of CPU, and for seconds after one of
them dies, a request may time out or be answered 503 "JetStream system temporarily
unavailable" (err_code 10008) while a stream's group elects its leader.  Every step of the
schema is idempotent: each is tried again until its deadline, whichever of the two it got.
An instance that gave up at the first one would exit before it registered.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import NotFoundError, ServiceUnavailableError

from colony.bus.schema import SchemaError, ensure_schema, schema_streams
from colony.settings import Settings


def unavailable() -> ServiceUnavailableError:
    return ServiceUnavailableError(code=503, err_code=10008, description="JetStream system temporarily unavailable")


@dataclass
class Info:
    config: object


class FlakyJetStream:
    """Creates whatever it is asked to; each kind of request first fails as ``refusals`` say."""

    def __init__(self, refusals: dict[str, list[Exception]]) -> None:
        self.refusals = refusals
        self.streams: dict[str, object] = {}
        self.buckets: set[str] = set()
        self.stores: set[str] = set()

    def _maybe_refuse(self, kind: str) -> None:
        pending = self.refusals.get(kind)
        if pending:
            raise pending.pop(0)

    async def stream_info(self, name):
        self._maybe_refuse("stream_info")
        if name not in self.streams:
            raise NotFoundError(code=404, err_code=10059, description="stream not found")
        return Info(self.streams[name])

    async def add_stream(self, config):
        self._maybe_refuse("add_stream")
        self.streams[config.name] = config
        return Info(config)

    async def create_key_value(self, config):
        self._maybe_refuse("create_key_value")
        self.buckets.add(config.bucket)

    async def create_object_store(self, bucket, config=None):
        self._maybe_refuse("create_object_store")
        self.stores.add(bucket)

    async def find_stream_name_by_subject(self, subject):
        self._maybe_refuse("find_stream_name_by_subject")
        return next(name for name, s in schema_streams(Settings()).items() if s == subject)


@pytest.mark.parametrize("kind", ["stream_info", "add_stream", "create_key_value", "create_object_store"])
async def test_every_step_is_tried_again_while_jetstream_answers_503_or_times_out(kind):
    js = FlakyJetStream({kind: [unavailable(), NatsTimeout(), unavailable()]})
    await ensure_schema(js, Settings(), deadline=30)
    assert js.refusals[kind] == [], "each refusal was met and passed"
    assert js.streams and js.buckets and js.stores, "and the whole schema was made"


async def test_a_role_that_waits_for_the_schema_waits_through_503():
    js = FlakyJetStream({"find_stream_name_by_subject": [unavailable(), NatsTimeout()]})
    await ensure_schema(js, Settings(), deadline=30, manage=False)
    assert js.refusals["find_stream_name_by_subject"] == []


async def test_past_the_deadline_the_start_fails_naming_the_step():
    js = FlakyJetStream({"add_stream": [unavailable()] * 1000})
    with pytest.raises(SchemaError, match="PROVISIONING: .*temporarily unavailable.*healthy"):
        await ensure_schema(js, Settings(), deadline=0.2)


def not_enabled() -> ServiceUnavailableError:
    return ServiceUnavailableError(code=503, err_code=10039, description="JetStream not enabled for account")


async def test_jetstream_not_enabled_for_the_account_is_not_waited_out():
    # Also a 503, but the bus's configuration: the step is not tried again (it would pass
    # here, as the fake answers once) and the error says what is wrong at once.
    js = FlakyJetStream({"add_stream": [not_enabled()]})
    with pytest.raises(SchemaError, match="not enabled for account"):
        await ensure_schema(js, Settings(), deadline=30)


async def test_a_role_that_waits_for_the_schema_is_told_jetstream_is_not_enabled():
    # Waited out, it ended as "stream ... does not exist; start a controller first".
    js = FlakyJetStream({"find_stream_name_by_subject": [not_enabled()]})
    with pytest.raises(SchemaError, match="not enabled for account"):
        await ensure_schema(js, Settings(), deadline=30, manage=False)


async def test_a_role_that_waits_for_a_bus_that_never_answers_is_not_told_the_schema_is_missing():
    # No responders (a server without JetStream) or 503 until the deadline: whether the
    # streams exist is unknown, and "start a controller first" would send the operator astray.
    js = FlakyJetStream({"find_stream_name_by_subject": [unavailable()] * 1000})
    with pytest.raises(SchemaError, match="did not answer") as caught:
        await ensure_schema(js, Settings(), deadline=0.2, manage=False)
    assert "does not exist" not in str(caught.value)
