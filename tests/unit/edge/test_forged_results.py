"""Authentication-Results under our own authserv-id from a stranger are deleted (RFC 8601 §5):
which fields count as ours, and the deletion from a message in memory or in a spool file."""

from __future__ import annotations

import time

from colony_edge.security.authentication import claimed_results
from colony_edge.security.policy import read_for_authentication
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


def test_millions_of_short_fields_cost_no_list_of_their_starts():
    """Up to edge_dkim_max_bytes of header section: each field's start kept in a list was
    ~12 times the section's size in memory (and seconds of CPU) per message."""
    import tracemalloc

    head = b"Authentication-Results: mx.test; none\r\n" + b"X:\r\n" * 2_000_000 + b"Subject: s"
    tracemalloc.start()
    try:
        assert claimed_results(head, "mx.test", last_terminated=True) == [(0, 39)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < len(head) // 4, peak


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


def test_a_cr_or_lf_alone_ends_a_line_as_a_mail_client_reads_it():
    """BDAT takes octets as they come; Python's email package (and a mail client) starts a
    field after a lone LF or CR, so a forged field hidden behind one is still ours to delete."""
    head = (b"X-A: a\nAuthentication-Results: mx.test; dkim=pass\r\n"
            b"X-B: b\rAuthentication-Results: mx.test; spf=pass\r\n"
            b"X-C: c\r\n mx.test\r\nSubject: s")
    assert _fields(head, claimed_results(head, "mx.test", last_terminated=True)) == [
        b"Authentication-Results: mx.test; dkim=pass\r\n", b"Authentication-Results: mx.test; spf=pass\r\n"]


def test_a_field_the_limit_cut_right_after_a_line_is_left_alone():
    """Its continuation lines may lie past the cut: deleting its first line only would glue
    them to the field before."""
    head = b"Subject: s\r\nAuthentication-Results: mx.test;\r\n"
    assert claimed_results(head, "mx.test", last_terminated=False) == []


def _spooled(tmp_path, octets: bytes) -> IncomingMessage:
    spool = tmp_path / "m.spool"
    spool.write_bytes(octets)
    return IncomingMessage(size=len(octets), spool=spool)


def _delete_ours(message: IncomingMessage) -> bytes:
    _, head, terminated = read_for_authentication(message, 1 << 20)
    message.leave_out(claimed_results(head, "mx.test", terminated))
    octets = message.read_bytes()
    assert message.size == len(octets)
    return octets


def test_the_header_section_of_a_message_without_body_or_without_fields(tmp_path):
    # No body, and (BDAT) no CRLF at its end: the message's end ends the forged field.
    assert _delete_ours(_spooled(tmp_path, b"Subject: s\r\nAuthentication-Results: mx.test; dkim=pass")) \
        == b"Subject: s\r\n"
    bodiless = b"Subject: s\r\nAuthentication-Results: mx.test;\r\n"
    assert _delete_ours(IncomingMessage(size=len(bodiless), data=bodiless)) == b"Subject: s\r\n"
    # No header fields at all: what follows the empty line is body, not to be touched.
    body = b"\r\nAuthentication-Results: mx.test; dkim=pass\r\n\r\nbody\r\n"
    assert _delete_ours(_spooled(tmp_path, body)) == body


def test_a_signature_identity_with_spaces_is_not_written_into_our_results(monkeypatch):
    """authres writes a value with an "@" as it is: a forged signature's i= of
    "@x dmarc=pass" became words of our own Authentication-Results."""
    import authheaders
    import spf

    from colony_edge.security import authentication

    monkeypatch.setattr(spf, "check2", lambda *args, **kwargs: ("fail", "not permitted"))
    monkeypatch.setattr(authentication, "_bounded_dkim_key", lambda *args, **kwargs: None)
    monkeypatch.setattr(authheaders, "check_dmarc",
                        lambda *args, **kwargs: authheaders.DMARCAuthenticationResult(result="fail",
                                                                                      header_from="victim.test"))
    head = (b"DKIM-Signature: v=1; a=rsa-sha256; d=victim.test; i=@x dmarc=pass header.d=victim.test; s=s;"
            b" h=from; bh=x; b=y\r\nFrom: a@victim.test")
    outcome = authentication.authenticate(head + b"\r\n\r\nbody\r\n", head, "mx.test", "192.0.2.1",
                                          "a@victim.test", "client.test")
    assert outcome.dkim == "fail" and "dmarc=pass" not in outcome.header, outcome.header
    assert "header.d=victim.test" in outcome.header
    plain = head.replace(b"i=@x dmarc=pass header.d=victim.test", b"i=news@victim.test")
    assert "header.i=news@victim.test" in authentication.authenticate(
        plain + b"\r\n\r\nbody\r\n", plain, "mx.test", "192.0.2.1", "a@victim.test", "client.test").header


def test_a_header_section_past_the_first_read_is_read_on_and_one_past_any_scan_refused(tmp_path):
    """A message too large for DKIM had only its first HEADER_SECTION_LIMIT octets scanned:
    a forged field behind 256 KiB of padding fields was stored.  Now the header section is
    read on as far as DKIM's memory (at least HEADER_SECTION_MAX); a longer one is refused."""
    import asyncio
    from types import SimpleNamespace

    from colony_edge.security import policy

    padding = b"X-Pad: " + b"p" * 70 + b"\r\n"
    forged = b"Authentication-Results: mx.test; dkim=pass\r\n"
    body = b"\r\n" + b"body line\r\n" * 200_000
    head = padding * (policy.HEADER_SECTION_LIMIT // len(padding) + 10) + forged + b"Subject: s\r\n"
    message = _spooled(tmp_path, head + body)
    _, section, terminated = read_for_authentication(message, 1024)         # too large for DKIM
    assert terminated and section == head[:-2]
    assert _delete_ours(message) == head.replace(forged, b"") + body

    huge = padding * (policy.HEADER_SECTION_MAX // len(padding) + 10) + forged + body
    message = _spooled(tmp_path, huge)
    assert read_for_authentication(message, 1024)[2] is False

    gate = SimpleNamespace(settings=SimpleNamespace(edge_dkim_max_bytes=1024), trusted=lambda ip: False)
    session = SimpleNamespace(peer_ip="192.0.2.1")
    verdict = asyncio.run(policy.EdgeSecurityPolicy(gate, lambda d: None).data_complete(session, message))
    assert not verdict.accept and verdict.reply == policy.HEADER_TOO_LARGE


def test_the_senders_words_stay_inside_the_comment_or_quoted_string_they_came_in(monkeypatch):
    """authres writes a comment as it is and a text with an "@" unquoted: a DMARC record's
    words in DMARC's comment, or an SPF explanation as reason, went on as verdicts of ours --
    and a line break in them would have started a field of the sender's making."""
    import authheaders
    import spf
    from authres import AuthenticationResultsHeader

    from colony_edge.security import authentication

    monkeypatch.setattr(spf, "check2", lambda *args, **kwargs: ("fail", "Go away a@b dkim=pass header.d=bank.test"))
    monkeypatch.setattr(authheaders, "check_dmarc", lambda *args, **kwargs: authheaders.DMARCAuthenticationResult(
        result="permerror", result_comment="missing tag or value: v=DMARC1; x) dmarc=pass header.from=bank.test (y"
        "\r\nAuthentication-Results: mx.test; dkim=pass", header_from="attacker.test", policy="reject"))
    head = b"From: a@attacker.test"
    outcome = authentication.authenticate(head + b"\r\n\r\nbody\r\n", head, "mx.test", "192.0.2.1",
                                          "a@attacker.test", "client.test")
    assert "\r" not in outcome.header and "\n" not in outcome.header, outcome.header
    assert outcome.dmarc_policy == "reject" and outcome.from_domain == "attacker.test"
    results = {r.method: r for r in AuthenticationResultsHeader.parse(outcome.header).results}
    assert set(results) == {"spf", "dkim", "dmarc"}, outcome.header
    assert results["spf"].reason == "Go away a@b dkim=pass header.d=bank.test"
    assert [(p.type, p.name, p.value) for p in results["dmarc"].properties] == [
        ("header", "from", "attacker.test"), ("policy", "dmarc", "reject")], outcome.header
