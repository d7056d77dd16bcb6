"""``colony.bus.pipelined.publish_pipelined`` on a real nats-server: one answer per message,
in order -- the ack of each stored message, the error of each refused one, no ack for one no
stream takes -- and a batch of a thousand answered in full."""

from __future__ import annotations

from nats.js.api import StreamConfig

from colony.bus.pipelined import landed, publish_pipelined
from colony.eventstore import EXPECTED_LAST_SUBJECT_SEQUENCE

NEW = {EXPECTED_LAST_SUBJECT_SEQUENCE: "0"}


async def test_each_message_gets_its_own_answer_in_order(nc, js):
    await js.add_stream(StreamConfig(name="PIPE", subjects=["pipe.>"]))
    await js.publish("pipe.taken", b"first")
    answers = await publish_pipelined(nc, [("pipe.a", b"1", NEW), ("pipe.taken", b"2", NEW), ("pipe.b", b"3", None),
                                           ("elsewhere.x", b"4", None)], timeout=1.0)
    assert [landed(a) for a in answers] == [True, False, True, False]
    assert answers[0]["seq"] < answers[2]["seq"] and answers[0]["stream"] == "PIPE"
    assert answers[1]["error"]["err_code"] == 10071  # refused: the subject has a message already
    assert not landed(answers[3])  # no stream takes it: at most a "no responders" status, no ack
    assert await publish_pipelined(nc, [], timeout=1.0) == []


async def test_a_bulk_batch_is_answered_in_full(nc, js):
    await js.add_stream(StreamConfig(name="BULK", subjects=["bulk.>"]))
    answers = await publish_pipelined(nc, [(f"bulk.{i}", b"x" * 200, NEW) for i in range(1000)], timeout=10.0)
    assert all(landed(a) for a in answers)
    assert [a["seq"] for a in answers] == sorted(a["seq"] for a in answers)
    assert len({a["seq"] for a in answers}) == 1000
    assert (await js.stream_info("BULK")).state.messages == 1000
