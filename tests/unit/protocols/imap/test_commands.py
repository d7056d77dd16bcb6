"""The IMAP command grammar: every command Colony serves, its extensions' syntax, and BAD
(with the command's own tag) for what does not parse."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from colony.protocols.imap import commands as C
from colony.protocols.imap.reader import CommandReader, Command
from colony.protocols.imap.syntax import ParseError, SequenceSet


def parse(text: bytes | str):
    data = text.encode() if isinstance(text, str) else text
    reader = CommandReader()
    reader.receive_data(data + b"\r\n")
    out = []
    while (e := reader.next_event()) is not None:
        out.append(e)
    commands = [e for e in out if isinstance(e, Command)]
    assert len(commands) == 1, out
    return C.parse_command(commands[0])


def bad(text: str) -> C.CommandError:
    with pytest.raises(C.CommandError) as err:
        parse(text)
    return err.value


def test_simple_and_login():
    assert parse("a1 capability") == C.Simple("a1", "CAPABILITY")
    assert parse("a2 IDLE") == C.Simple("a2", "IDLE")
    assert parse('a3 LOGIN "bob@acme.example" "p w\\"d"') == C.Login("a3", b"bob@acme.example", b'p w"d')
    assert parse("a4 LOGIN bob {3+}\r\npwd") == C.Login("a4", b"bob", b"pwd")
    assert parse("a5 AUTHENTICATE PLAIN AGJvYgBwd2Q=") == C.Authenticate("a5", "PLAIN", b"AGJvYgBwd2Q=")
    assert parse("a6 AUTHENTICATE PLAIN") == C.Authenticate("a6", "PLAIN", None)
    assert parse("a7 ENABLE CONDSTORE IMAP4rev2") == C.Enable("a7", ("CONDSTORE", "IMAP4REV2"))
    assert parse('a8 ID ("name" "mbsync" "version" NIL)') == C.Id("a8", ((b"name", b"mbsync"), (b"version", None)))
    assert parse("a9 ID NIL") == C.Id("a9", None)


def test_select_with_condstore_and_qresync():
    assert parse("s1 SELECT inbox") == C.Select("s1", "SELECT", b"INBOX")
    assert parse("s2 EXAMINE Archive (CONDSTORE)").condstore
    q = parse("s3 SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541))")
    assert q.qresync[:2] == (67890007, 20050715194045000) and str(q.qresync[2]) == "41,43:211,214:541"
    q2 = parse("s4 SELECT INBOX (QRESYNC (67890007 90060115194045000 41:211,214:541 (1:10 1:20)))")
    assert str(q2.qresync[3][0]) == "1:10" and str(q2.qresync[3][1]) == "1:20"
    assert parse("s5 SELECT INBOX (QRESYNC (1 2))").qresync == (1, 2, None, None)


def test_mailbox_commands_list_status_append():
    assert parse('m1 CREATE "Sent Items" (USE (\\Sent))') == C.MailboxCommand("m1", "CREATE", b"Sent Items", ("\\Sent",))
    assert parse("m2 RENAME Old New") == C.Rename("m2", b"Old", b"New")
    lst = parse('l1 LIST "" "*"')
    assert (lst.reference, lst.patterns, lst.extended) == (b"", (b"*",), False)
    ext = parse('l2 LIST (SUBSCRIBED RECURSIVEMATCH) "" ("%" "Work/*") RETURN (CHILDREN SPECIAL-USE STATUS (MESSAGES UNSEEN SIZE))')
    assert ext.selection == ("SUBSCRIBED", "RECURSIVEMATCH") and ext.patterns == (b"%", b"Work/*")
    assert ext.returns == ("CHILDREN", "SPECIAL-USE", "STATUS") and ext.status_items == ("MESSAGES", "UNSEEN", "SIZE")
    assert parse("l3 LSUB \"\" Work/%").patterns == (b"Work/%",)
    assert parse("st STATUS INBOX (MESSAGES UIDNEXT HIGHESTMODSEQ)").items == ("MESSAGES", "UIDNEXT", "HIGHESTMODSEQ")
    app = parse('ap APPEND Drafts (\\Draft \\Seen) "05-Mar-2024 10:00:00 +0100" {5+}\r\nhello {3+}\r\nbye')
    assert [m.data for m in app.messages] == [b"hello", b"bye"] and app.messages[0].flags == ("\\Draft", "\\Seen")
    assert app.messages[0].date.utcoffset().total_seconds() == 3600


def test_fetch_items_and_modifiers():
    f = parse("f1 FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (From Subject)] BODY[1.2.MIME] BINARY[2]<0.1024> RFC822.SIZE)")
    assert f.sequence == SequenceSet(((1, None),))
    names = [i.name for i in f.items]
    assert names == ["FLAGS", "BODY.PEEK", "BODY", "BINARY", "RFC822.SIZE"]
    assert f.items[1].section == ((), "HEADER.FIELDS", ("From", "Subject"))
    assert f.items[2].section == ((1, 2), "MIME", ())
    assert f.items[3].partial == (0, 1024)
    assert [i.name for i in parse("f2 FETCH 1 ALL").items] == ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"]
    assert parse("f3 FETCH 2 BODY[]").items[0] == C.FetchItem("BODY", ((), None, ()), None)
    u = parse("f4 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345 VANISHED)")
    assert u.uid and u.changed_since == 12345 and u.vanished and u.items[-1].name == "UID"
    assert "VANISHED needs" in str(bad("f5 FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)"))


def test_store_copy_move_expunge():
    s = parse("t1 STORE 2:4 +FLAGS.SILENT (\\Deleted $Junk)")
    assert (s.mode, s.silent, s.flags) == ("+", True, ("\\Deleted", "$Junk"))
    assert parse("t2 UID STORE 5 (UNCHANGEDSINCE 320162338) FLAGS \\Seen").unchanged_since == 320162338
    assert parse("t3 UID MOVE 1:3 Trash") == C.CopyMove("t3", "MOVE", True, SequenceSet(((1, 3),)), b"Trash")
    assert parse("t4 UID EXPUNGE 3000:3002") == C.UidExpunge("t4", SequenceSet(((3000, 3002),)))
    assert "Recent" in str(bad("t5 STORE 1 FLAGS (\\Recent)"))


def test_search_sort_thread():
    s = parse('q1 SEARCH CHARSET UTF-8 OR FROM "smith" (SUBJECT hi NOT SEEN) LARGER 1000 SINCE 1-Feb-1994 HEADER X-Spam yes 2:4')
    assert s.charset == "UTF-8"
    kind, keys = s.criteria
    assert kind == "AND" and keys[0][0] == "OR" and keys[1] == ("LARGER", 1000)
    assert keys[3] == ("HEADER", "X-Spam", b"yes") and keys[4] == ("SEQ", SequenceSet(((2, 4),)))
    e = parse("q2 UID SEARCH RETURN (MIN MAX COUNT SAVE) UNDELETED")
    assert e.returns == ("MIN", "MAX", "COUNT", "SAVE") and e.criteria == ("UNDELETED",)
    assert parse("q3 SEARCH $").criteria == ("SEQ", SequenceSet(saved=True))
    assert parse('q4 SEARCH MODSEQ "/flags/\\\\draft" all 620162338').criteria[1] == 620162338
    srt = parse("q5 UID SORT (REVERSE DATE SUBJECT) UTF-8 ALL")
    assert srt.criteria == ((True, "DATE"), (False, "SUBJECT")) and srt.uid
    th = parse("q6 THREAD REFERENCES US-ASCII SINCE 5-MAR-2000")
    assert th.algorithm == "REFERENCES" and th.search[0] == "SINCE"
    deep = "q7 SEARCH " + "NOT " * 200 + "ALL"
    assert "nested" in str(bad(deep))


def test_bad_commands_keep_their_tag():
    err = bad("x1 FETCH")
    assert err.tag == "x1"
    assert bad("x2 BOGUS").tag == "x2" and "unknown command" in str(bad("x2 BOGUS"))
    assert bad("x+3 NOOP").tag == "*"
    assert bad("").tag == "*"
    assert "unexpected text" in str(bad("x4 NOOP extra"))
    assert bad("x5 SELECT").tag == "x5"
    assert bad("x6 FETCH 0 FLAGS").tag == "x6"
    assert bad("x7 STATUS INBOX (NOTANITEM)").tag == "x7"


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(["a1", " ", "FETCH", "UID", "SEARCH", "STORE", "1:*", "(", ")", "[", "]", "BODY",
                                 "HEADER.FIELDS", "<0.10>", '"x"', "NOT", "OR", "ALL", "FLAGS", "\\Seen", "+", "{3+}\r\nabc",
                                 "SELECT", "INBOX", "QRESYNC", "1", "CHARSET", "$", "*", ",", "LIST", "RETURN", "STATUS"]),
                max_size=25))
def test_any_token_soup_parses_or_is_bad(tokens):
    try:
        parse("".join(tokens))
    except (C.CommandError, ParseError, AssertionError):
        pass


@pytest.mark.parametrize("line", [b"a STORE 1 \xff (x)", b"a UID SEARCH RETURN (\xff) ALL",
                                  b'a LIST "" x RETURN (STATUS (\xff))', b'a SEARCH MODSEQ "\xff" all 1'])
def test_octets_that_are_not_utf8_are_a_bad_command_not_an_exception(line):
    # The session parses before it checks the state: an exception here ended the connection
    # with a traceback in the store's log, in any state.
    try:
        parse(line)
    except C.CommandError as exc:
        assert exc.tag == "a"


@pytest.mark.parametrize("when", ['"01-Jan-0001 00:00:00 +0100"', '"31-Dec-9999 23:59:59 -0100"'])
def test_an_append_date_without_a_utc_time_is_bad(when):
    # APPEND stores the date in UTC: one that has none raised OverflowError under the
    # account's lock (a traceback, and the account closed and reopened).
    assert bad(f"a APPEND INBOX {when} {{1+}}\r\nx").tag == "a"
    assert parse('a APPEND INBOX "01-Jan-0001 00:00:00 +0000" {1+}\r\nx').messages[0].date.year == 1
