"""MIME structure with offsets, sections, ENVELOPE and BODYSTRUCTURE against RFC 9051's
rules and messages as they come (broken ones included)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from colony.protocols.imap.encode import address_list, bodystructure, envelope, parse_addresses, string
from colony.protocols.imap.mime import MAX_DEPTH, analyze, find_part, section_bytes

SIMPLE = (b"Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\r\n"
          b"From: Terry Gray <gray@cac.washington.edu>\r\n"
          b"Subject: IMAP4rev1 WG mtg summary and minutes\r\n"
          b"To: imap@cac.washington.edu\r\n"
          b"cc: minutes@CNRI.Reston.VA.US,\r\n John Klensin <KLENSIN@MIT.EDU>\r\n"
          b"Message-Id: <B27397-0100000@cac.washington.edu>\r\n"
          b"\r\n"
          b"Hello\r\nworld\r\n")

MULTI = (b"From: a@example.com\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
         b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'
         b"preamble\r\n--outer\r\n"
         b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
         b"first part\r\n"
         b"--outer\r\n"
         b'Content-Type: multipart/alternative; boundary="inner"\r\n\r\n'
         b"--inner\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
         b"--inner\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<p>html</p>\r\n"
         b"--inner--\r\n"
         b"--outer\r\n"
         b"Content-Type: message/rfc822\r\n\r\n"
         b"From: b@example.org\r\nSubject: inner message\r\n\r\ninner body\r\n"
         b"--outer\r\n"
         b'Content-Type: application/pdf; name="r.pdf"\r\nContent-Disposition: attachment; filename="r.pdf"\r\n'
         b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n"
         b"--outer--\r\nepilogue\r\n")


def test_simple_message_structure_and_sections():
    root = analyze(SIMPLE)
    assert (root.maintype, root.subtype) == ("text", "plain") and root.lines == 2
    assert section_bytes(SIMPLE, root, [], None) == SIMPLE
    assert section_bytes(SIMPLE, root, [], "TEXT") == b"Hello\r\nworld\r\n"
    assert section_bytes(SIMPLE, root, [1], None) == b"Hello\r\nworld\r\n"   # body of a single part is part 1
    assert section_bytes(SIMPLE, root, [], "HEADER").endswith(b"\r\n\r\n")
    fields = section_bytes(SIMPLE, root, [], "HEADER.FIELDS", ["subject", "CC"])
    assert fields == (b"Subject: IMAP4rev1 WG mtg summary and minutes\r\n"
                      b"cc: minutes@CNRI.Reston.VA.US,\r\n John Klensin <KLENSIN@MIT.EDU>\r\n\r\n")
    not_fields = section_bytes(SIMPLE, root, [], "HEADER.FIELDS.NOT", ["subject", "cc", "date", "message-id"])
    assert not_fields == b"From: Terry Gray <gray@cac.washington.edu>\r\nTo: imap@cac.washington.edu\r\n\r\n"


def test_envelope_of_rfc_example():
    env = envelope(analyze(SIMPLE))
    assert env == (b'("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes" '
                   b'(("Terry Gray" NIL "gray" "cac.washington.edu")) (("Terry Gray" NIL "gray" "cac.washington.edu")) '
                   b'(("Terry Gray" NIL "gray" "cac.washington.edu")) ((NIL NIL "imap" "cac.washington.edu")) '
                   b'((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU")) NIL NIL '
                   b'"<B27397-0100000@cac.washington.edu>")')


def test_bodystructure_of_the_rfc_example():
    assert bodystructure(analyze(SIMPLE), SIMPLE, extensible=False) == b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 14 2)'


def test_nested_multipart_numbering_and_sections():
    root = analyze(MULTI)
    assert root.multipart and [c.subtype for c in root.children] == ["plain", "alternative", "rfc822", "pdf"]
    assert section_bytes(MULTI, root, [1], None) == b"first part"
    assert section_bytes(MULTI, root, [2, 2], None) == b"<p>html</p>"
    assert section_bytes(MULTI, root, [2, 1, ], "MIME") == b"Content-Type: text/plain\r\n\r\n"
    assert section_bytes(MULTI, root, [3], "HEADER") == b"From: b@example.org\r\nSubject: inner message\r\n\r\n"
    assert section_bytes(MULTI, root, [3], "TEXT") == b"inner body"   # the CRLF before a delimiter is the delimiter's
    assert section_bytes(MULTI, root, [3, 1], None) == b"inner body"
    assert section_bytes(MULTI, root, [4], None) == b"JVBERi0="
    assert find_part(root, [2]).subtype == "alternative"
    structure = bodystructure(root, MULTI)
    assert structure.startswith(b'(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 10 1 NIL NIL NIL NIL)'
                                b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 5 1')
    assert b'"MESSAGE" "RFC822" NIL NIL NIL "7BIT" 57 (NIL "inner message" ((NIL NIL "b" "example.org"))' in structure
    assert b'"APPLICATION" "PDF" ("NAME" "r.pdf") NIL NIL "BASE64" 8 NIL ("ATTACHMENT" ("FILENAME" "r.pdf")) NIL NIL)' in structure
    assert structure.endswith(b' "MIXED" ("BOUNDARY" "outer") NIL NIL NIL)')


def test_broken_messages_still_have_a_structure():
    cases = [
        b"",
        b"no header separator at all",
        b"\r\nbody without headers",
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\nno delimiters here",
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nunterminated",
        b"Content-Type: multipart/mixed\r\n\r\n--\r\nmissing boundary parameter",
        b"Content-Type: text/plain\nSubject: lf only\n\nbody\n",
        b"Content-Type: message/rfc822\r\n\r\n",
        b"From: \x00weird\xff <x@y>\r\n\r\n\x00\x01",
    ]
    for data in cases:
        root = analyze(data)
        bodystructure(root, data)
        envelope(root)
        section_bytes(data, root, [], None)
        section_bytes(data, root, [1], None)


def test_nesting_is_cut_at_max_depth():
    data = b""
    for i in range(200):
        data = f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode() + data + f"\r\n--b{i}--\r\n".encode()
    root = analyze(data)
    depth, part = 0, root
    while part.children:
        part, depth = part.children[0], depth + 1
    assert depth <= MAX_DEPTH
    assert len(bodystructure(root, data)) < 200_000


def test_addresses_groups_and_odd_forms():
    assert parse_addresses('undisclosed-recipients:;') == [(None, None, "undisclosed-recipients", None), (None, None, None, None)]
    assert parse_addresses('team: a@x.test, "B, Person" <b@y.test>;, c@z.test') == [
        (None, None, "team", None), (None, None, "a", "x.test"), ("B, Person", None, "b", "y.test"),
        (None, None, None, None), (None, None, "c", "z.test")]
    assert parse_addresses("jdoe@example.com (John Doe)") == [("John Doe", None, "jdoe", "example.com")]
    assert parse_addresses("<@relay.test:user@example.com>") == [(None, "@relay.test", "user", "example.com")]
    assert parse_addresses("local-only") == [(None, None, "local-only", "MISSING_DOMAIN")]
    assert address_list("=?utf-8?q?J=C3=B6rg?= <j@example.de>") == b'(("=?utf-8?q?J=C3=B6rg?=" NIL "j" "example.de"))'


def test_strings_are_quoted_only_when_safe():
    assert string("plain") == b'"plain"'
    assert string('with "quotes" and \\') == b'"with \\"quotes\\" and \\\\"'
    assert string("line\r\nbreak") == b"{11}\r\nline\r\nbreak"
    assert string("Jörg") == b"{5}\r\nJ\xc3\xb6rg"
    assert string("Jörg", utf8=True) == '"Jörg"'.encode()
    assert string(None) == b"NIL"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"Content-Type: multipart/mixed; boundary=b\r\n", b"\r\n", b"--b\r\n", b"--b--\r\n",
                                 b"Content-Type: message/rfc822\r\n", b"text\r\n", b"From: <a@b>\r\n", b"\n",
                                 b"Subject: =?x?q?y?=\r\n", b"Content-Type: text/plain; charset*=utf-8''a\r\n"]),
                max_size=40))
def test_any_message_analyzes(pieces):
    data = b"".join(pieces)
    root = analyze(data)
    bodystructure(root, data)
    envelope(root)
    for part in root.walk():
        assert 0 <= part.header_start <= part.body_start <= part.body_end <= len(data)


def test_a_message_of_header_fields_is_parsed_within_a_bound():
    # The email parser's objects cost ~20x the header octets: a 12 MB header block peaked at
    # 328 MB (a 64 MB one, the largest message accepted, at ~1.7 GB) at every FETCH ENVELOPE.
    from colony.protocols.imap import mime
    from colony.protocols.imap.mime import MAX_HEADER_MESSAGE, MAX_HEADER_PART
    block = b"Subject: hi\r\n" + b"X-Filler: y\r\n" * 200_000 + b"X-Late: z\r\n"
    msg = block + b"\r\nbody\r\n"
    root = mime.analyze(msg)
    assert root.header("Subject") == "hi" and root.header("X-Late") is None
    assert len(root.headers.keys()) <= MAX_HEADER_PART // len(b"X-Filler: y\r\n") + 1
    assert mime.section_bytes(msg, root, [], "HEADER") == block + b"\r\n"     # served whole
    assert mime.section_bytes(msg, root, [], "TEXT") == b"body\r\n"
    # Across parts the message's budget holds: 40 parts of 200 KiB of fields each.
    part = b"Content-Type: text/plain\r\n" + b"X-Filler: y\r\n" * 16_000 + b"\r\nx\r\n"
    multi = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
             + b"".join(b"--b\r\n" + part for _ in range(40)) + b"--b--\r\n")
    root = mime.analyze(multi)
    assert len(root.children) == 40
    parsed = sum(len(p.headers.keys()) for p in root.walk() if p.headers is not None)
    assert parsed * len(b"X-Filler: y\r\n") <= MAX_HEADER_MESSAGE + 40 * 100


def test_attachment_names_in_utf8_and_in_rfc2231_are_given_as_their_text():
    """What mail clients write for a non-ASCII attachment name: RFC 2231's
    ``filename*=utf-8''%C3%BC...`` (mutt, s-nail, Thunderbird) or the name as raw UTF-8 (RFC
    6532).  BODYSTRUCTURE gives the name's text: it gave the RFC 2231 one as "Ã¼ber.pdf"
    (UTF-8 octets read as Latin-1) and the raw one with a U+FFFD per octet."""
    data = ("From: a@example.com\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
            "--B\r\nContent-Type: application/pdf; name=\"Größe.pdf\"\r\n"
            "Content-Disposition: attachment; filename=\"Größe.pdf\"\r\n\r\nx\r\n"
            "--B\r\nContent-Type: application/pdf; name*=utf-8''%C3%BCber.pdf\r\n"
            "Content-Disposition: attachment; filename*=utf-8''%C3%BCber.pdf\r\n\r\nx\r\n--B--\r\n").encode()
    root = analyze(data)
    assert [dict(p.params)["name"] for p in root.children] == ["Größe.pdf", "über.pdf"]
    out = bodystructure(root, data, utf8=True).decode()
    assert out.count('"Größe.pdf"') == 2 and out.count('"über.pdf"') == 2, out
    assert "\ufffd" not in out and "Ã" not in out
