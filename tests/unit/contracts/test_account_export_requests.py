"""The export conversation's request lines: a body is named, never a path."""

import pytest

from colony.contracts import account_export as X
from colony.contracts import handoff


def test_requests_parse():
    assert X.parse_request(b"BODY 3-17-2\r\n") == ("BODY", "3-17-2")
    assert X.parse_request(b"DONE\r\n") == ("DONE", None)


@pytest.mark.parametrize("line", [b"BODY ../../etc/passwd\r\n", b"BODY a/b\r\n", b"BODY .hidden\r\n", b"BODY \r\n",
                                  b"DONE now\r\n", b"FETCH 1\r\n", b"BODY " + b"x" * 300 + b"\r\n", b"\r\n"])
def test_bad_requests_are_refused(line):
    with pytest.raises(ValueError):
        X.parse_request(line)


def test_an_export_line_verifies_only_as_an_export():
    secret = b"s" * 32
    line = handoff.sign(secret, X.PROTO, "bob@example.com", "-", 1_000)
    verifier = handoff.Verifier(secret, lambda: 1_000)
    with pytest.raises(handoff.HandoffError, match="export hand-off on the imap listener"):
        verifier.verify(line, "imap")      # an export line never opens an IMAP session
    assert handoff.Verifier(secret, lambda: 1_000).verify(line, X.PROTO).account == "bob@example.com"
