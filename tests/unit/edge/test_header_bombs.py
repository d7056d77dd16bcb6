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


def _records(name: str) -> str | None:
    """A DNS stand-in for authheaders (its test hook: a TXT string or None)."""
    return {"_dmarc.strict.test": "v=DMARC1; p=reject", "_dmarc.soft.test": "v=DMARC1; p=quarantine",
            "_dmarc.open.test": "v=DMARC1; p=none"}.get(name)


FROMS = [
    b"From: a@strict.test\r\n",
    b"From: a@soft.test, b@soft.test\r\n",
    b"From: a@open.test\r\nFrom: b@strict.test\r\nFrom: c@STRICT.test\r\n",
    b"From: nobody\r\nFrom: a@strict.test\r\n",
    b"From: a@open.test\r\nFrom: a@soft.test\r\nFrom: b@open.test\r\n",
    b"From: \"Name, with comma\" <a@none.test>\r\n",
    b"To: x@y.test\r\n",
]


@pytest.mark.parametrize("head", FROMS)
def test_dmarc_on_one_address_per_author_domain_answers_as_on_the_message(head):
    message = head + b"Subject: s\r\n\r\nbody\r\n"
    spf = authheaders.SPFAuthenticationResult(result="fail", smtp_mailfrom="a@elsewhere.test")
    none = authheaders.DKIMAuthenticationResult(result="none")
    keys, count = authentication.authors(message)

    def answer(text: bytes) -> str:
        try:
            return str(authheaders.check_dmarc(text, spf, none, dnsfunc=_records))
        except Exception as exc:   # no From at all: the library fails (authenticate: temperror)
            return type(exc).__name__
    assert answer(authentication._dmarc_input(keys, count)) == answer(message)


def test_a_thousand_from_fields_of_one_domain_are_one_author_domain():
    head = b"".join(b"From: a%d@Strict.test\r\n" % i for i in range(1000))
    assert authentication.authors(head + b"\r\n") == ([(True, "strict.test")], 1000)
    many = b"From: " + b", ".join(b"a@d%d.test" % i for i in range(50_000)) + b"\r\n\r\n"
    keys, count = authentication.authors(many)
    assert len(keys) == count == 50_000


def test_more_author_domains_than_the_limit_are_not_looked_up(monkeypatch):
    import spf

    monkeypatch.setattr(spf, "check2", lambda *args, **kwargs: ("none", "no SPF here"))

    def no_dmarc(*args, **kwargs):
        raise AssertionError("DMARC evaluated for every author domain")
    monkeypatch.setattr(authheaders, "check_dmarc", no_dmarc)
    limit = authentication.MAX_AUTHOR_DOMAINS
    head = b"From: " + b", ".join(b"a@d%d.test" % i for i in range(limit + 1)) + b"\r\n"
    outcome = authentication.authenticate(head + b"\r\nbody\r\n", head, "mx.test", "192.0.2.1", "a@d0.test",
                                          "client.test")
    assert outcome.author_domains == limit + 1 and outcome.dmarc == "permerror"
