"""Header bombs against the edge's SPF/DKIM/DMARC check: a message made to cost the verifying
libraries time out of proportion to its size must be checked in time linear in its size."""

from __future__ import annotations

import time

import authheaders
import dkim
import pytest

from colony_edge.security import authentication
from colony_edge.security.authentication import _LIBRARY_RFC822_PARSE, _rfc822_parse_linear

SAMPLES = [
    b"From: a@b.test\r\nSubject: x\r\n\r\nbody\r\n",
    b"From: a@b.test\nSubject: folded\n\tmore\n  and more\n\nbody\nlines\n",
    b"From a@b.test Thu Nov 26 00:00:00 2026\r\nTo: c@d.test\r\n continued\r\n\r\n",
    b"X-Empty:\r\nX-Colon::\r\nDKIM-Signature: v=1; h=from:to;\r\n\tb=abc\r\n\r\n",
    b"Subject: no body",
    b"",
    b"\r\nbody only\r\n",
]


@pytest.mark.parametrize("message", SAMPLES)
def test_the_linear_header_parser_answers_as_the_library(message):
    assert _rfc822_parse_linear(message) == _LIBRARY_RFC822_PARSE(message)


@pytest.mark.parametrize("message", [b" continuation first\r\n\r\n", b"no colon here\r\n\r\n", b"\x00bad: x\r\n\r\n"])
def test_the_linear_header_parser_fails_as_the_library(message):
    with pytest.raises(Exception) as ours:
        _rfc822_parse_linear(message)
    with pytest.raises(Exception) as theirs:
        _LIBRARY_RFC822_PARSE(message)
    assert type(ours.value) is type(theirs.value)


def test_dkimpy_and_authheaders_use_the_linear_parser():
    assert dkim.rfc822_parse is authentication._rfc822_parse_linear
    assert authheaders.rfc822_parse is authentication._rfc822_parse_linear


def test_one_field_folded_over_half_a_million_lines_is_checked_in_linear_time():
    # 2 MB in one field: the library's parser (bytes += per line) took ~12 s of CPU per parse
    # here, and a 16 MiB one (edge_dkim_max_bytes) ~13 minutes; the linear one takes ~0.2 s.
    lines = 500_000
    bomb = b"From: a@b.test\r\nX-Long: a\r\n" + b" a\r\n" * lines + b"\r\nbody\r\n"
    started = time.process_time()
    headers, body = _rfc822_parse_linear(bomb)
    assert len(headers) == 2 and len(headers[1][1]) == 4 + 4 * lines and body == b"body\r\n"
    # Where the checks parse it: DKIM verification and DMARC's From lookup (DNS answered here).
    assert dkim.DKIM(bomb).verify(dnsfunc=lambda name, timeout=5: None) is False
    spf = authheaders.SPFAuthenticationResult(result="none", smtp_mailfrom="a@b.test")
    none = authheaders.DKIMAuthenticationResult(result="none")
    dmarc = authheaders.check_dmarc(bomb, spf, none, dnsfunc=lambda name, timeout=5: None)
    assert dmarc.result == "none"
    assert time.process_time() - started < 5
