"""colony.queue.deadletter.DeadLetter: the wire format round-trips; a replay carries what it must."""

from datetime import UTC, datetime

from colony.queue import DeadLetter


def test_a_dead_letter_round_trips_through_its_message():
    at = datetime(2026, 11, 25, 13, 0, tzinfo=UTC)
    letter = DeadLetter(stream="MAIL", subject="colony.mail.local.x", sequence=42, consumer="mailstore-local",
                        deliveries=5, reason="failed 5 deliveries;\r\nlast: OSError: disk full", at=at,
                        headers={"Nats-Msg-Id": "edge-1.17", "traceparent": "00-abc-def-01"}, data=b"\x00body\xff")
    subject, headers, data = letter.to_message()
    assert subject == "colony.dlq.mail"
    assert headers["Nats-Msg-Id"] == "dlq.MAIL.42", "a copy retried after a crash is deduplicated"
    assert all("\r" not in v and "\n" not in v for v in headers.values()), "header values stay on one line"
    back = DeadLetter.from_stored(7, headers, data)
    assert back.model_dump(exclude={"dlq_sequence", "reason"}) == letter.model_dump(exclude={"dlq_sequence", "reason"})
    assert back.reason == "failed 5 deliveries; last: OSError: disk full"
    assert back.dlq_sequence == 7 and back.job_id == "edge-1.17"


def test_a_replay_keeps_the_job_id_drops_server_steering_headers_and_says_it_was_replayed():
    letter = DeadLetter(stream="OUTBOUND", subject="colony.outbound.x", sequence=3, dlq_sequence=9,
                        headers={"Nats-Msg-Id": "sub-1", "Nats-Expected-Last-Subject-Sequence": "2", "Nats-TTL": "5",
                                 "X-Colony-Recipient": "bob@example.com"})
    headers = letter.replay_headers(now=datetime(2026, 11, 25, tzinfo=UTC))
    assert headers["Colony-Job-Id"] == "sub-1"
    assert headers["Colony-Replayed"] == "9 2026-11-25T00:00:00+00:00"
    assert headers["Nats-Msg-Id"] == "replay.9.sub-1"
    assert "Nats-Expected-Last-Subject-Sequence" not in headers and "Nats-TTL" not in headers
    assert headers["X-Colony-Recipient"] == "bob@example.com"
    again = DeadLetter(stream="OUTBOUND", subject="colony.outbound.x", sequence=4, dlq_sequence=11, headers=headers)
    assert again.job_id == "sub-1", "a job dead twice keeps its first id"


def test_an_entry_without_our_headers_is_still_readable():
    odd = DeadLetter.from_stored(3, {"Colony-Dlq-Headers": "not json", "Colony-Dlq-Sequence": "x",
                                     "Colony-Dlq-At": "yesterday"}, None)
    assert (odd.stream, odd.sequence, odd.headers, odd.data, odd.at.year) == ("?", 0, {}, b"", 1970)
    assert DeadLetter.from_stored(4, {"Colony-Dlq-Headers": "[1, 2]"}, b"x").headers == {}
