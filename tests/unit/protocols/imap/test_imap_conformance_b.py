"""APPEND, COPY/MOVE, EXPUNGE, STORE and LIST details that IMAP conformance suites check
and that are easy to get subtly wrong: each case names the RFC rule it holds the server to.
Sessions run against a real journal-backed mailbox (``test_session``'s client), no sockets."""

from __future__ import annotations

import base64
import re

import pytest

from colony.protocols.imap.binary_append import NotServable, servable
from colony.protocols.imap.mime import analyze
from colony.storage import mailbox
from colony.storage.mailbox import AccountMail
from test_session import MSG, MULTI, logged_in, selected

# A spreadsheet-ish attachment with NULs and a high octet, sent without any encoding.
SHEET = b"PK\x03\x04\x00\x00\x08\x00\xfe\r\ncells\x00\x00"
WITH_ATTACHMENT = (b"From: ann@tools.example\r\nSubject: the sheet\r\nMIME-Version: 1.0\r\n"
                   b'Content-Type: multipart/mixed; boundary="cut"\r\n\r\n'
                   b"--cut\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
                   b"--cut\r\nContent-Type: application/vnd.sheet\r\nContent-Transfer-Encoding: Binary\r\n\r\n"
                   + SHEET + b"\r\n--cut--\r\n")


def _literal_after(out: bytes, label: bytes) -> bytes:
    """The octets of the (literal or literal8) value that follows ``label`` in a FETCH."""
    m = re.search(re.escape(label) + rb" ~?\{(\d+)\}\r\n", out)
    assert m, out
    return out[m.end():m.end() + int(m.group(1))]


@pytest.fixture
def mail(tmp_path):
    """An account whose INBOX holds two messages, as ``test_session`` starts them."""
    m = AccountMail(tmp_path / "mail", 1, clock=lambda: 1_700_000_000.0)
    m.open()
    m.append("INBOX", MSG)
    m.append("INBOX", MULTI, flags=["\\Seen"])
    m.commit()
    yield m
    m.close()


# --- APPEND of binary content (RFC 3516) -----------------------------------------------------

def test_binary_parts_are_base64_encoded_and_the_rest_kept():
    """RFC 3516 §4.4: the server may change the encoding of appended data, losing nothing;
    §6: BODYSTRUCTURE must describe it in an encoding the base protocol can carry."""
    stored = servable(WITH_ATTACHMENT, binary_literal=True)
    assert b"\x00" not in stored
    root = analyze(stored)
    text, sheet = root.children
    assert stored[text.body_start:text.body_end] == b"see attached"
    assert sheet.header("Content-Transfer-Encoding") == "base64"
    assert base64.b64decode(stored[sheet.body_start:sheet.body_end]) == SHEET
    assert stored.startswith(b"From: ann@tools.example\r\n") and stored.endswith(b"\r\n--cut--\r\n")


def test_a_message_without_binary_content_is_stored_as_sent():
    """§6: gratuitous encoding changes break signatures; nothing changes without a reason."""
    plain = b"Subject: hi\r\n\r\n8-bit \xe9t\xe9 text\r\n"
    assert servable(plain, binary_literal=False) is plain
    assert servable(plain, binary_literal=True) is plain


def test_a_nul_in_a_single_part_message_makes_it_a_mime_base64_message():
    data = b"Subject: raw\r\n\r\nab\x00cd\r\n"
    stored = servable(data, binary_literal=False)
    root = analyze(stored)
    assert root.header("MIME-Version") == "1.0"
    assert root.header("Content-Transfer-Encoding") == "base64"
    assert base64.b64decode(stored[root.body_start:]) == b"ab\x00cd\r\n"


def test_a_folded_encoding_field_is_replaced_whole():
    data = (b"Subject: folded\r\nContent-Transfer-Encoding:\r\n binary\r\nX-After: kept\r\n\r\n"
            b"\x00\x01\r\n")
    stored = servable(data, binary_literal=True)
    header = stored[:stored.index(b"\r\n\r\n") + 4]
    assert header.count(b"Content-Transfer-Encoding") == 1
    assert b" binary" not in header and b"X-After: kept\r\n" in header


def test_a_nul_where_no_encoding_can_hold_it_is_refused():
    with pytest.raises(NotServable):
        servable(b"Subject: a\x00b\r\n\r\nbody\r\n", binary_literal=True)
    with pytest.raises(NotServable):      # base64 text cannot hold a NUL; it is not re-encoded
        servable(b"Content-Transfer-Encoding: base64\r\n\r\nAA\x00A\r\n", binary_literal=True)


def test_append_literal8_then_body_binary_and_bodystructure(mail):
    """RFC 9051 §9: a literal is CHAR8, never NUL; BINARY[2] (RFC 3516 §4.3) returns what the
    client appended, BODY[2] the base64 that BODYSTRUCTURE describes (§6)."""
    c = logged_in(mail)
    out = c.send(b"a APPEND INBOX ~{%d}\r\n" % len(WITH_ATTACHMENT))
    assert out.startswith("+")
    out = c.send(WITH_ATTACHMENT + b"\r\n")
    assert "a OK [APPENDUID" in out
    c.cmd("s SELECT INBOX")
    c.session.receive_data(b"f FETCH 3 (BODYSTRUCTURE BINARY.PEEK[2] BODY.PEEK[2] BINARY.SIZE[2] BODY.PEEK[])\r\n")
    raw = c.pump()
    assert b"f OK" in raw
    assert b'"APPLICATION" "VND.SHEET" NIL NIL NIL "BASE64"' in raw
    assert _literal_after(raw, b"BINARY[2]") == SHEET
    assert b"BINARY[2] ~{" in raw                      # literal8: the decoded data has NULs
    assert base64.b64decode(_literal_after(raw, b"BODY[2]")) == SHEET
    assert b"BINARY.SIZE[2] %d" % len(SHEET) in raw
    assert b"\x00" not in _literal_after(raw, b"BODY[]")


def test_append_with_a_nul_outside_any_part_is_no_unknown_cte(mail):
    c = logged_in(mail)
    data = b"Subject: a\x00b\r\n\r\nbody\r\n"
    out = c.send(b"a APPEND INBOX ~{%d+}\r\n" % len(data) + data + b"\r\n")
    assert "a NO [UNKNOWN-CTE]" in out
    assert "(MESSAGES 2)" in c.cmd("s STATUS INBOX (MESSAGES)")


# --- a message another session expunged (RFC 2180 §4.1) --------------------------------------

def test_fetch_of_a_message_expunged_elsewhere_is_no_expungeissued_and_the_rest_is_sent(mail):
    """The expunge is not told during FETCH (RFC 9051 §7.5.1), and the body is gone: the
    other messages are sent and the tagged NO says not everything was (RFC 2180 §4.1.3,
    EXPUNGEISSUED of RFC 9051 §7.1).  By UID, a UID that is gone is simply not there
    (§6.4.9), and the EXPUNGE may be told then (§7.5.1)."""
    a, b = selected(mail), selected(mail)
    a.cmd("1 STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert "2 OK" in a.cmd("2 EXPUNGE")
    out = b.cmd("3 FETCH 1:2 (UID BODY.PEEK[HEADER])")
    assert "* 2 FETCH (UID 2 " in out and "* 1 FETCH" not in out and "* 1 EXPUNGE" not in out
    assert "3 NO [EXPUNGEISSUED]" in out
    out = b.cmd("4 UID FETCH 1:2 (UID)")
    assert "4 OK" in out and "* 1 EXPUNGE" in out
    out = b.cmd("5 FETCH 1 (UID)")
    assert "* 1 FETCH (UID 2)" in out and "5 OK" in out


def test_a_message_expunged_elsewhere_keeps_its_uid_flags_date_and_size_until_told(mail):
    """RFC 2180 §4.1.2: what the store still knows of a message another session expunged is
    served for the message number this session holds: UID, FLAGS, INTERNALDATE, RFC822.SIZE."""
    a, b = selected(mail), selected(mail)
    a.cmd("1 STORE 2 +FLAGS.SILENT (\\Deleted)")
    assert "2 OK" in a.cmd("2 EXPUNGE")
    out = b.cmd("3 FETCH 2 (UID FLAGS RFC822.SIZE INTERNALDATE)")
    assert "* 2 FETCH (FLAGS (\\Deleted \\Seen) UID 2 RFC822.SIZE %d INTERNALDATE " % len(MULTI) in out
    assert "3 OK" in out and "EXPUNGE" not in out
    out = b.cmd("4 NOOP")
    assert "* 2 EXPUNGE" in out
    assert "5 BAD" in b.cmd("5 FETCH 2 (UID)")          # now it is gone from the view too


def test_the_store_keeps_a_bounded_number_of_expunged_messages(mail, monkeypatch):
    monkeypatch.setattr(mailbox, "EXPUNGED_KEPT", 1)
    mail.expunge("INBOX", [1])
    mail.commit()
    assert mail.expunged_message("INBOX", 1).uid == 1
    assert mail.expunged_message("Trash", 1) is None and mail.expunged_message("No such", 1) is None
    mail.expunge("INBOX", [2])
    mail.commit()
    assert mail.expunged_message("INBOX", 1) is None          # the oldest made room
    assert mail.expunged_message("INBOX", 2).size == len(MULTI)


# --- MULTIAPPEND is all or nothing (RFC 3502) ------------------------------------------------

@pytest.mark.parametrize("second", [b"(\\*) {6+}\r\nB: c\r\n", b"{0+}\r\n"], ids=["bad flag", "empty message"])
def test_a_multiappend_refused_for_its_second_message_appends_none(mail, second):
    """RFC 3502 §6.3.11: when any message of a MULTIAPPEND cannot be appended, none is; the
    first one must not turn up later either (with the next command's commit)."""
    c = logged_in(mail)
    out = c.send(b"a APPEND INBOX {6+}\r\nA: b\r\n " + second + b"\r\n")
    assert "a BAD" in out or "a NO" in out
    assert "(MESSAGES 2)" in c.cmd("s STATUS INBOX (MESSAGES)")
    assert "b OK [APPENDUID" in c.send(b"b APPEND INBOX {6+}\r\nC: d\r\n\r\n")
    assert "(MESSAGES 3)" in c.cmd("t STATUS INBOX (MESSAGES)")


# --- flags (RFC 9051 §2.3.2, §9) -------------------------------------------------------------

def test_a_backslash_flag_no_standard_defines_is_bad_in_store_and_append(mail):
    """flag-extension (``\\`` atom) is for future standards: servers MUST NOT generate ones
    not defined (RFC 9051 §9), so one is never stored to come back in FETCH FLAGS; keywords
    (no backslash) and the system flags in any case are taken."""
    c = selected(mail)
    out = c.cmd("a STORE 1 +FLAGS (\\Seen \\Urgent)")
    assert "a BAD" in out and "FETCH" not in out
    data = b"Subject: x\r\n\r\ny\r\n"
    assert "b BAD" in c.send(b"b APPEND INBOX (\\Urgent) {%d+}\r\n" % len(data) + data + b"\r\n")
    assert "(MESSAGES 2)" in c.cmd("s STATUS INBOX (MESSAGES)")
    out = c.cmd("d STORE 1 +FLAGS (\\FLAGGED urgent)")
    assert "* 1 FETCH (FLAGS (\\Flagged \\Recent urgent))" in out and "d OK" in out
    assert "\\Urgent" not in c.cmd("f FETCH 1:* FLAGS")
