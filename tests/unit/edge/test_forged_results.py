"""Authentication-Results under our own authserv-id from a stranger are deleted (RFC 8601 §5):
which fields count as ours, and the deletion from a message in memory or in a spool file."""

from __future__ import annotations

import time

from colony_edge.security.authentication import claimed_results
from colony_edge.smtp_policy import IncomingMessage

HEAD = (b"Received: from x\r\n"
        b"authentication-results : \"Mx.Test\"; spf=pass\r\n"
        b"Authentication-Results: mx.test.evil; dkim=pass\r\n"
        b"Subject: Authentication-Results: mx.test; none\r\n"
        b"Authentication-Results: ((nested) \\) comment)\r\n\tmx.test; dkim=pass\r\n"
        b"Authentication-Results: other.example (mx.test); spf=fail\r\n"
        b"Authentication-Results: mx.test")


def _fields(head: bytes, ranges: list[tuple[int, int]]) -> list[bytes]:
    padded = head + b"\r\n"
    return [padded[start:end] for start, end in ranges]


def test_only_fields_naming_our_authserv_id_first_are_claimed():
    ranges = claimed_results(HEAD, "mx.test", last_terminated=True)
    assert _fields(HEAD, ranges) == [
        b"authentication-results : \"Mx.Test\"; spf=pass\r\n",
        b"Authentication-Results: ((nested) \\) comment)\r\n\tmx.test; dkim=pass\r\n",
        b"Authentication-Results: mx.test\r\n",
    ]


def test_a_last_field_that_may_be_cut_off_is_left_alone_and_no_id_claims_nothing():
    assert len(claimed_results(HEAD, "mx.test", last_terminated=False)) == 2
    assert claimed_results(HEAD, "", last_terminated=True) == []
    assert claimed_results(b"Subject: hi\r\nFrom: a@b", "mx.test", last_terminated=True) == []


def test_a_deeply_nested_comment_is_one_pass():
    head = b"Authentication-Results: " + b"(" * 100_000 + b")" * 100_000 + b" mx.test; none"
    started = time.process_time()
    assert len(claimed_results(head, "mx.test", last_terminated=True)) == 1
    assert time.process_time() - started < 5     # quadratic would be minutes


def _message() -> bytes:
    return HEAD + b"\r\n\r\n" + b"body line\r\n" * 300_000     # ~3 MB: several moves of a spool file


def test_leave_out_in_memory_and_in_a_spool_file_give_the_same_octets(tmp_path):
    message = _message()
    ranges = claimed_results(HEAD, "mx.test", last_terminated=True)
    expected = message
    for start, end in reversed(ranges):
        expected = expected[:start] + expected[end:]
    held = IncomingMessage(size=len(message), data=message)
    held.leave_out(ranges)
    assert held.data == expected and held.size == len(expected)
    spool = tmp_path / "m.spool"
    spool.write_bytes(message)
    spooled = IncomingMessage(size=len(message), spool=spool)
    spooled.leave_out(ranges)
    assert spool.read_bytes() == expected and spooled.size == len(expected)
    assert b"mx.test; dkim=pass" not in expected and b"mx.test.evil; dkim=pass" in expected
