"""FETCH sections, SEARCH, SORT and THREAD details that IMAP conformance suites check and
that are easy to get subtly wrong: each case names the RFC rule it holds the server to."""

from __future__ import annotations

import re

from colony.protocols.imap.mime import analyze, find_part, section_bytes

# A forwarded message whose body is itself a forwarded message (message/rfc822 twice).
FORWARD_OF_FORWARD = (b"From: desk@shop.example\r\nSubject: fwd fwd\r\nMIME-Version: 1.0\r\n"
                      b"Content-Type: message/rfc822\r\n\r\n"
                      b"From: clerk@shop.example\r\nSubject: fwd\r\nMIME-Version: 1.0\r\n"
                      b"Content-Type: message/rfc822\r\n\r\n"
                      b"From: buyer@home.example\r\nSubject: order 17\r\n\r\n"
                      b"two lamps, please\r\n")
CLERK = FORWARD_OF_FORWARD.index(b"From: clerk")
BUYER = FORWARD_OF_FORWARD.index(b"From: buyer")


def test_part_one_of_a_message_rfc822_message_is_the_whole_encapsulated_message():
    """RFC 9051 §6.4.5: a non-multipart message's part 1 is its body, and the body of a
    message/rfc822 message is the encapsulated message, header included; n.HEADER and n.TEXT
    are then that message's header and text, and n.1 its own part 1."""
    data = FORWARD_OF_FORWARD
    root = analyze(data)
    assert section_bytes(data, root, [1], None) == data[CLERK:]
    assert section_bytes(data, root, [1], "HEADER") == (b"From: clerk@shop.example\r\nSubject: fwd\r\n"
                                                        b"MIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n")
    assert section_bytes(data, root, [1], "TEXT") == data[BUYER:]
    assert section_bytes(data, root, [1], "HEADER.FIELDS", ["subject"]) == b"Subject: fwd\r\n\r\n"
    assert section_bytes(data, root, [1, 1], None) == data[BUYER:]
    assert section_bytes(data, root, [1, 1], "HEADER") == b"From: buyer@home.example\r\nSubject: order 17\r\n\r\n"
    assert section_bytes(data, root, [1, 1, 1], None) == b"two lamps, please\r\n"
    assert section_bytes(data, root, [1, 1], "TEXT") == b"two lamps, please\r\n"
    assert find_part(root, [1, 1, 1]).subtype == "plain"


def test_a_boundary_folded_across_header_lines_is_unfolded():
    """RFC 5322 §2.2.3: unfolding removes the CRLF before the whitespace, so the boundary
    of ``boundary="cut<CRLF> here"`` is ``cut here`` and its parts are found."""
    data = (b"From: a@example.org\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="cut\r\n here"\r\n\r\n'
            b"preamble\r\n--cut here\r\nContent-Type: text/plain\r\n\r\nfirst\r\n"
            b"--cut here\r\nContent-Type: text/html\r\n\r\n<b>second</b>\r\n--cut here--\r\n")
    root = analyze(data)
    assert [c.subtype for c in root.children] == ["plain", "html"]
    assert ("boundary", "cut here") in root.params
    assert section_bytes(data, root, [1], None) == b"first"
    assert section_bytes(data, root, [2], "MIME") == b"Content-Type: text/html\r\n\r\n"


# --- BINARY (RFC 3516) ---------------------------------------------------------------------

NESTED = (b"From: a@example.org\r\nSubject: nested\r\nMIME-Version: 1.0\r\n"
          b'Content-Type: multipart/mixed; boundary="out"\r\n\r\n'
          b"--out\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\naGk=\r\n"
          b"--out\r\nContent-Type: message/rfc822\r\n\r\n"
          b"From: b@example.org\r\nSubject: inner\r\n\r\ninner text\r\n"
          b"--out\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n"
          b"begin 644 x\r\n--out--\r\n")


def _session_with(tmp_path, *messages):
    from test_session import Client
    from colony.storage.mailbox import AccountMail

    mail = AccountMail(tmp_path / "mail", 1, clock=lambda: 1_700_000_000.0)
    mail.open()
    for m in messages:
        mail.append("INBOX", m)
    mail.commit()
    c = Client(mail)
    assert "OK" in c.cmd("l LOGIN bob secret")
    assert "OK" in c.cmd("s SELECT INBOX")
    return c, mail


def test_binary_of_a_composite_part_is_its_octets_and_an_unknown_encoding_fails(tmp_path):
    """RFC 3516 §4.2: BINARY[] is the whole message, and a multipart or message/rfc822 part
    has an identity encoding (RFC 2045 §6.4), so it is served as it is, not refused; an
    encoding the server cannot decode is a NO with UNKNOWN-CTE (§4.3), not encoded octets."""
    c, mail = _session_with(tmp_path, NESTED)
    try:
        out = c.cmd("b1 FETCH 1 (BINARY.SIZE[] BINARY.PEEK[1] BINARY.SIZE[2])")
        assert "b1 OK" in out
        assert f"BINARY.SIZE[] {len(NESTED)}" in out
        assert "BINARY[1] {2}\r\nhi" in out
        inner = "From: b@example.org\r\nSubject: inner\r\n\r\ninner text"
        assert f"BINARY.SIZE[2] {len(inner)}" in out
        assert f"BINARY[2] {{{len(inner)}}}\r\n{inner})" in c.cmd("b2 FETCH 1 BINARY.PEEK[2]")
        assert "b3 NO [UNKNOWN-CTE]" in c.cmd("b3 FETCH 1 BINARY.PEEK[3]")
        assert "* SEARCH 1" in c.cmd("b4 SEARCH BODY begin")     # searched as it is
    finally:
        mail.close()


# --- SEARCH (RFC 9051 §6.4.4) ----------------------------------------------------------------

def test_address_search_looks_at_the_envelope_address_not_only_the_written_field(tmp_path):
    """FROM/TO/CC/BCC match "the envelope structure's" field: an address written with
    comments inside it is found by its plain ``mailbox@host``, and a name given as a comment
    (``addr (Name)``, ENVELOPE's name) by that name; substrings of either still match, but
    not a comment ENVELOPE leaves out."""
    c, mail = _session_with(
        tmp_path,
        b"From: <ann.lee (sales) @ (eu) parts.example>\r\nTo: desk@parts.example\r\n\r\n1\r\n",
        b"From: ann.lee@parts.example (Ann Lee)\r\nCc: <ops@parts.example>\r\n\r\n2\r\n",
        b"From: Bo <bo@parts.example>\r\nBcc: Mail Room <room@parts.example>\r\n\r\n3\r\n")
    try:
        assert "* SEARCH 1 2\r\n" in c.cmd("a SEARCH FROM ann.lee@parts.example")
        assert "* SEARCH 2\r\n" in c.cmd("b SEARCH FROM \"ann lee\"")
        assert "* SEARCH\r\n" in c.cmd("c SEARCH FROM sales")       # a comment, not in the envelope
        assert "* SEARCH 2\r\n" in c.cmd("d SEARCH CC ops@parts.example")
        assert "* SEARCH 3\r\n" in c.cmd("e SEARCH BCC \"room <room@\"")
        assert "* SEARCH\r\n" in c.cmd("f SEARCH TO ann")
    finally:
        mail.close()


def test_an_appended_internal_date_keeps_its_zone_and_date_searches_use_its_day(tmp_path):
    """RFC 9051 §6.3.12: APPEND's date-time becomes the internal date; INTERNALDATE gives
    it back in the zone it was written in, and BEFORE/ON/SINCE ("disregarding time and
    timezone", §6.4.4) compare the day of that date-time: 00:30 +0200 on the 25th is the
    25th, though it is the 24th in UTC."""
    from test_session import Client
    from colony.storage.mailbox import AccountMail

    mail = AccountMail(tmp_path / "mail", 1, clock=lambda: 1_700_000_000.0)
    mail.open()
    try:
        c = Client(mail)
        c.cmd("l LOGIN bob secret")
        for stamp in ("24-Mar-2007 23:30:00 +0000", "25-Mar-2007 00:30:00 +0200", "25-Mar-2007 23:30:00 -0500"):
            assert "OK" in c.cmd(f'a APPEND INBOX "{stamp}" {{3+}}\r\nx\r\n')
        c.cmd("s SELECT INBOX")
        out = c.cmd("f FETCH 1:3 INTERNALDATE")
        assert '* 2 FETCH (INTERNALDATE "25-Mar-2007 00:30:00 +0200")' in out
        assert '* 3 FETCH (INTERNALDATE "25-Mar-2007 23:30:00 -0500")' in out
        assert "* SEARCH 2 3\r\n" in c.cmd("o SEARCH ON 25-Mar-2007")
        assert "* SEARCH 1\r\n" in c.cmd("b SEARCH BEFORE 25-Mar-2007")
        assert "* SEARCH 2 3\r\n" in c.cmd("n SEARCH SINCE 25-Mar-2007")
        mail.close()
        mail = AccountMail(tmp_path / "mail", 1, clock=lambda: 1_700_000_000.0)   # read back from disk
        mail.open()
        c = Client(mail)
        c.cmd("l LOGIN bob secret")
        c.cmd("s SELECT INBOX")
        assert '* 2 FETCH (INTERNALDATE "25-Mar-2007 00:30:00 +0200")' in c.cmd("f FETCH 2 INTERNALDATE")
    finally:
        mail.close()


def test_esearch_min_or_max_alone_reports_the_modseq_of_the_messages_returned(tmp_path):
    """RFC 4731 §3.2: with MODSEQ in the criteria, ESEARCH's MODSEQ is the highest
    mod-sequence of the messages returned -- with MIN and/or MAX alone, just those, not
    every match; with ALL or COUNT, every match."""
    c, mail = _session_with(tmp_path, *(f"Subject: {i}\r\n\r\n{i}\r\n".encode() for i in range(1, 5)))
    try:
        modseq = {}
        for seq in (1, 3, 2):                 # message 2 changes last: the highest MODSEQ
            c.cmd(f"s{seq} STORE {seq} +FLAGS (\\Seen)")
            out = c.cmd(f"f{seq} FETCH {seq} MODSEQ")
            modseq[seq] = int(re.search(rf"\* {seq} FETCH \(MODSEQ \((\d+)\)\)", out).group(1))
        assert modseq[1] < modseq[3] < modseq[2]
        assert f"MIN 1 MODSEQ {modseq[1]}\r\n" in c.cmd("a SEARCH RETURN (MIN) 1:3 MODSEQ 1")
        assert f"MAX 3 MODSEQ {modseq[3]}\r\n" in c.cmd("b SEARCH RETURN (MAX) 1:3 MODSEQ 1")
        assert f"MIN 1 MAX 3 MODSEQ {modseq[3]}\r\n" in c.cmd("c SEARCH RETURN (MIN MAX) 1:3 MODSEQ 1")
        assert f"MIN 1 COUNT 3 MODSEQ {modseq[2]}\r\n" in c.cmd("d SEARCH RETURN (MIN COUNT) 1:3 MODSEQ 1")
        assert f"ALL 1:3 MODSEQ {modseq[2]}\r\n" in c.cmd("e SEARCH RETURN () 1:3 MODSEQ 1")
    finally:
        mail.close()


# --- SORT (RFC 5256) ---------------------------------------------------------------------------

def test_sort_compares_letters_as_capitals_like_the_casemap_collations(tmp_path):
    """RFC 5256 §3 sorts strings with i;ascii-casemap (RFC 4790 §9.2: a-z compare as A-Z),
    so letters come before "[" and "_"; ties keep sequence order even when reversed."""
    c, mail = _session_with(
        tmp_path,
        b"From: b_x@example.org\r\nSubject: _under\r\n\r\n1\r\n",
        b"From: bx@example.org\r\nSubject: [tag]\r\n\r\n2\r\n",
        b"From: BX@example.org\r\nSubject: Re: apple\r\n\r\n3\r\n",
        b"From: a@example.org\r\nSubject: Zoo\r\n\r\n4\r\n")
    try:
        assert "* SORT 3 4 2 1\r\n" in c.cmd("a SORT (SUBJECT) US-ASCII ALL")
        assert "* SORT 1 2 4 3\r\n" in c.cmd("b SORT (REVERSE SUBJECT) US-ASCII ALL")
        assert "* SORT 4 2 3 1\r\n" in c.cmd("c SORT (FROM) US-ASCII ALL")
        assert "* SORT 1 2 3 4\r\n" in c.cmd("d SORT (REVERSE FROM) US-ASCII ALL")
    finally:
        mail.close()


def test_binary_undoes_base64_and_quoted_printable_as_mail_carries_them(tmp_path):
    """RFC 2045 §6.8: characters outside the base64 alphabet are ignored (and a body that
    lost its padding still has its octets); §6.7 rule 3: blanks at line ends were added in
    transport and go before decoding, so "= " is still a soft line break. BINARY (RFC 3516)
    serves and partially serves the decoded octets."""
    message = (b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
               b"--b\r\nContent-Transfer-Encoding: base64\r\n\r\nc2F5IGhp\r\nIHRv IGFsbA\r\n"
               b"--b\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
               b"tab=09and  \r\nsoft= \r\nbreak=3dyes=3D\r\n"
               b"--b--\r\n")
    c, mail = _session_with(tmp_path, message)
    try:
        out = c.cmd("a FETCH 1 (BINARY.SIZE[1] BINARY.PEEK[1] BINARY.PEEK[1]<4.5>)")
        assert "BINARY.SIZE[1] 13" in out and "BINARY[1] {13}\r\nsay hi to all" in out
        assert "BINARY[1]<4> {5}\r\nhi to" in out
        out = c.cmd("b FETCH 1 (BINARY.SIZE[2] BINARY.PEEK[2])")
        assert "BINARY[2] {23}\r\ntab\tand\r\nsoftbreak=yes=)" in out and "BINARY.SIZE[2] 23" in out
        assert "* SEARCH 1\r\n" in c.cmd('s SEARCH BODY "softbreak"')
    finally:
        mail.close()


# --- THREAD=REFERENCES (RFC 5256 §4 step 5) ---------------------------------------------------

def _dated(minute: int, headers: str) -> bytes:
    return f"Date: Mon, 6 Jan 2025 09:{minute:02d}:00 +0000\r\n{headers}\r\n\r\nx\r\n".encode()


def test_thread_roots_of_one_subject_merge_as_step_5_says(tmp_path):
    """Step 5.B keeps per subject a dummy if any, else a message that is no reply; 5.C puts
    the other roots of the subject under it: a reply under the original even when the reply
    came first, two dummies' children together as siblings, a message under a dummy. A
    reply or forward is any subject whose base subject lost a "re:"/"fwd:" leader (behind a
    [blob] too), a "(fwd)" trailer or a "[fwd: ...]" wrapper."""
    c, mail = _session_with(
        tmp_path,
        _dated(1, "Subject: Re: budget"),                                   # 1: the reply came first
        _dated(2, "Subject: budget"),                                       # 2
        _dated(3, "Subject: trip\r\nReferences: <lost-1@x>"),              # 3,4: under one missing parent
        _dated(4, "Subject: Re: trip\r\nReferences: <lost-1@x>"),
        _dated(5, "Subject: Re: trip\r\nReferences: <lost-2@x>"),          # 5,6: under another
        _dated(6, "Subject: Re: trip\r\nReferences: <lost-2@x>"),
        _dated(7, "Subject: news"),                                         # 7
        _dated(8, "Subject: [staff] Re: news"),                             # 8: a reply behind a blob
        _dated(9, "Subject: news (fwd)"),                                   # 9: a forward
        _dated(10, "Subject: menu"),                                        # 10
        _dated(11, "Subject: Re: menu\r\nReferences: <lost-3@x>"),         # 11,12: a dummy of "menu"
        _dated(12, "Subject: Re: menu\r\nReferences: <lost-3@x>"))
    try:
        out = c.cmd("t THREAD REFERENCES US-ASCII ALL")
        assert "* THREAD (2 1)((3)(4)(5)(6))(7 (8)(9))((10)(11)(12))\r\n" in out
    finally:
        mail.close()


def test_esort_answers_in_sort_order_and_sort_display_uses_the_display_name(tmp_path):
    """ESORT (RFC 5267 §3.2): SORT RETURN answers ESEARCH whose MIN/MAX are the first and
    last in the sort order and whose ALL keeps that order. SORT=DISPLAY (RFC 5957 §3): the
    decoded display name, or mailbox@host when there is none."""
    c, mail = _session_with(
        tmp_path,
        _dated(5, "From: =?utf-8?q?Zo=C3=AB?= <a@example.org>"),       # 1: "Zoë"
        _dated(4, "From: b@example.org"),                               # 2: "b@example.org"
        _dated(3, "From: Carl <z@example.org>"),                        # 3: "Carl"
        _dated(2, "From: \"\" <c@example.org>"),                         # 4: empty name: "c@example.org"
        _dated(1, "From: Adam <y@example.org>"))                        # 5: "Adam"
    try:
        caps = c.cmd("c CAPABILITY")
        assert " SORT=DISPLAY" in caps and " ESORT" in caps
        assert "* SORT 5 2 4 3 1\r\n" in c.cmd("a SORT (DISPLAYFROM) UTF-8 ALL")
        assert "* SORT 1 3 4 2 5\r\n" in c.cmd("b SORT (REVERSE DISPLAYFROM) UTF-8 ALL")
        out = c.cmd("e SORT RETURN (MIN MAX ALL COUNT) (DATE) US-ASCII ALL")
        assert '* ESEARCH (TAG "e") MIN 5 MAX 1 ALL 5,4,3,2,1 COUNT 5\r\n' in out
        out = c.cmd("f SORT RETURN () (REVERSE DATE) US-ASCII 2:5")
        assert '* ESEARCH (TAG "f") ALL 2:5\r\n' in out
        out = c.cmd("g UID SORT RETURN (COUNT) (ARRIVAL) US-ASCII 9")
        assert '* ESEARCH (TAG "g") UID COUNT 0\r\n' in out
        assert "h BAD" in c.cmd("h SORT RETURN (PARTIAL 1:2) (DATE) US-ASCII ALL")
    finally:
        mail.close()
