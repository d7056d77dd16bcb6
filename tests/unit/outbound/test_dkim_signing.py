"""The cryptography-backed DKIM signer against dkimpy's own ``dkim.sign`` and ``dkim.verify``.

RSA PKCS#1 v1.5 is deterministic, so for the same ``t=`` the whole DKIM-Signature field
(b= included) must be byte-identical to what ``dkim.sign`` makes.
"""

from __future__ import annotations

from unittest import mock

import dkim
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from colony.outbound import signing
from colony.outbound.signing import DkimKey, generate_key, sign

KEY = generate_key("example.com", "s2026", 1024)
RECORD = KEY.dns_record().encode()
NOW = 1_790_000_000
SINGLETONS = {"from", "to", "cc", "date", "message-id", "references", "subject"}


def reference(message: bytes, key: DkimKey, now: float) -> bytes:
    """``dkim.sign`` exactly as the signer called it before, its clock read pinned."""
    with mock.patch("time.time", return_value=now):
        signature = dkim.sign(message, key.selector.encode(), key.domain.encode(), key.private_pem,
                              canonicalize=(b"relaxed", b"relaxed"),
                              include_headers=signing.headers_to_sign(message))
    return signature.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def verifies(signed: bytes, key: DkimKey = KEY, record: bytes = RECORD) -> bool:
    name = f"{key.selector}._domainkey.{key.domain}.".encode()
    return dkim.verify(signed, dnsfunc=lambda n, timeout=5: record if n == name else None)


CORPUS = {
    "plain": b"From: a@example.com\r\nTo: b@remote.test\r\nSubject: hi\r\n\r\nbody\r\n",
    "folded": (b"From: Alice\r\n <a@example.com>\r\nTo: b@remote.test,\r\n\tc@remote.test\r\n"
               b"Subject: a long\r\n   folded   subject\r\n\r\nbody\r\n"),
    "trailing whitespace": b"From: a@example.com  \r\nSubject:  x \t\r\n\r\nline  \r\n \t\r\nend\t\r\n\r\n\r\n",
    "empty body": b"From: a@example.com\r\nTo: b@remote.test\r\n\r\n",
    "no body separator": b"From: a@example.com\r\nTo: b@remote.test\r\n",
    "LF only": b"From: a@example.com\nTo: b@remote.test\nSubject: lf\n\nline one\nline two\n",
    "8-bit": ("From: Jörg <j@example.com>\r\nSubject: Grüße\r\nContent-Type: text/plain; charset=utf-8\r\n"
              "Content-Transfer-Encoding: 8bit\r\n\r\nÄÖÜ ß €\r\n").encode(),
    "long lines": b"From: a@example.com\r\nSubject: " + b"s" * 900 + b"\r\n\r\n" + b"x" * 5000 + b"\r\n",
    "multiple From and To": (b"From: a@example.com\r\nFrom: b@example.com\r\nTo: c@remote.test\r\n"
                             b"To: d@remote.test\r\nCc: e@remote.test\r\n\r\nbody\r\n"),
    "all signed headers": (b"From: a@example.com\r\nTo: b@r.test\r\nCc: c@r.test\r\nSubject: s\r\n"
                           b"Date: Mon, 2 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n"
                           b"Reply-To: r@example.com\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n"
                           b"Content-Transfer-Encoding: 7bit\r\nIn-Reply-To: <0@r.test>\r\n"
                           b"References: <0@r.test>\r\nX-Other: not signed\r\nReceived: not signed\r\n\r\nb\r\n"),
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_signature_is_dkimpys_byte_for_byte_and_verifies(name):
    message = CORPUS[name]
    ours = sign(message, KEY, now=NOW)
    assert ours == reference(message, KEY, NOW)
    assert ours.startswith(b"DKIM-Signature: ") and ours.endswith(b"\r\n")
    if b"From:" in message and name != "multiple From and To":
        # dkimpy's verifier refuses repeated RFC 5322 singletons (From, To) whatever the
        # signature; that one is covered by the byte-for-byte equality above
        assert verifies(ours + message)


def test_a_changed_body_or_signed_header_fails_verification():
    message = CORPUS["plain"]
    signed = sign(message, KEY) + message
    assert verifies(signed)
    assert not verifies(signed.replace(b"body", b"b0dy"))
    assert not verifies(signed.replace(b"Subject: hi", b"Subject: ho"))


def test_key_is_parsed_once_and_again_when_it_changes_under_the_same_selector():
    key = generate_key("cache.test", "sel", 1024)
    with mock.patch.object(signing.serialization, "load_pem_private_key",
                           wraps=signing.serialization.load_pem_private_key) as load:
        for _ in range(3):
            sign(CORPUS["plain"], key)
        assert load.call_count == 1
        rewritten = DkimKey("cache.test", "sel", generate_key("cache.test", "sel", 1024).private_pem)
        signed = sign(CORPUS["plain"], rewritten) + CORPUS["plain"]
        assert load.call_count == 2
    assert verifies(signed, rewritten, rewritten.dns_record().encode())
    assert not verifies(signed, key, key.dns_record().encode())


def test_key_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(signing, "_KEY_CACHE_SIZE", 2)
    for i in range(4):
        sign(CORPUS["plain"], DkimKey(f"d{i}.test", "s", KEY.private_pem))
    assert len(signing._keys) <= 2


def test_a_message_without_from_gets_dkimpys_error():
    message = b"Subject: only\r\n\r\nbody\r\n"
    with pytest.raises(dkim.ParameterError):
        reference(message, KEY, NOW)
    with pytest.raises(dkim.ParameterError):
        sign(message, KEY)


def test_a_header_block_dkimpy_cannot_parse_gets_dkimpys_error():
    with pytest.raises(dkim.MessageFormatError):
        sign(b"From: a@example.com\r\nbad header line\r\n\r\nbody\r\n", KEY)


_header_value = st.text(st.characters(min_codepoint=32, max_codepoint=0x2fff, blacklist_characters="\r\n"),
                        max_size=120)
_folded = st.lists(_header_value, min_size=1, max_size=3).map(lambda parts: "\r\n\t".join(parts))
_names = st.sampled_from(["From", "To", "Cc", "Subject", "Date", "Message-ID", "X-Mailer", "References",
                          "content-type", "SUBJECT"])
_body_line = st.text(st.characters(min_codepoint=9, max_codepoint=0x2fff, blacklist_characters="\r\n"),
                     max_size=200)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers=st.lists(st.tuples(_names, _folded), max_size=8), body=st.lists(_body_line, max_size=12),
       eol=st.sampled_from(["\r\n", "\n"]), now=st.integers(0, NOW))   # dkim.verify refuses a t= in the future
def test_any_message_shape_matches_dkimpy_and_verifies(headers, body, eol, now):
    head = "".join(f"{n}: {v}\r\n" for n, v in [("From", "a@example.com")] + headers)
    message = (head + "\r\n" + "\r\n".join(body)).replace("\r\n", eol).encode()
    ours = sign(message, KEY, now=now)
    assert ours == reference(message, KEY, now)
    names = [n.lower() for n, _ in headers]
    repeated = "from" in names or any(names.count(n) > 1 for n in SINGLETONS)   # see above
    if not repeated:
        assert verifies(ours + message)


_wsp_body = st.lists(st.sampled_from([" ", "  ", "\t", " \t ", "a", "é", ".", "\r\n", "\n", "\r"]), max_size=40)


@settings(max_examples=300, deadline=None)
@given(parts=_wsp_body)
def test_relaxed_body_is_dkimpys_for_any_whitespace(parts):
    """Our body canonicalisation skips dkimpy's regex passes where they change nothing and
    matches only the runs that change; the bytes must stay dkimpy's for runs of spaces and
    tabs anywhere, at line ends, and in bodies with bare CR or LF."""
    body = "".join(parts).encode()
    assert signing.relaxed_body(body) == signing._RELAXED.canonicalize_body(body)
