"""Untagged updates whose omission a client tracking the mailbox (Dovecot's imaptest, any
CONDSTORE/QRESYNC client) takes for the server contradicting itself; each test names the RFC
rule and is a case ``tests/integration/imap/test_imap_state_machine.py`` found.  Sessions run
against a real journal-backed mailbox (``test_session``'s client), no sockets."""

from __future__ import annotations

import re

import pytest

from colony.storage.mailbox import AccountMail
from test_session import MSG, MULTI, logged_in


@pytest.fixture
def mail(tmp_path):
    """An account whose INBOX holds two messages, the second \\Seen (as ``test_session``)."""
    m = AccountMail(tmp_path / "mail", 1, clock=lambda: 1_700_000_000.0)
    m.open()
    m.append("INBOX", MSG)
    m.append("INBOX", MULTI, flags=["\\Seen"])
    m.commit()
    yield m
    m.close()


def condstore_session(mail):
    c = logged_in(mail)
    c.cmd("e ENABLE CONDSTORE")
    c.cmd("s SELECT INBOX")
    return c


def test_under_condstore_a_store_by_message_number_names_the_uid(mail):
    """RFC 7162 §3.1: once CONDSTORE is enabled, every untagged FETCH a STORE causes carries
    UID and MODSEQ, for STORE by message number as for UID STORE (.SILENT included): the
    client files the new MODSEQ under the UID."""
    c = condstore_session(mail)
    out = c.cmd("a STORE 1 +FLAGS (\\Flagged)")
    assert re.search(r"\* 1 FETCH \(FLAGS \([^)]*\) UID 1 MODSEQ \(\d+\)\)", out), out
    out = c.cmd("b STORE 1 +FLAGS.SILENT (\\Answered)")
    assert re.search(r"\* 1 FETCH \(UID 1 MODSEQ \(\d+\)\)", out), out


def test_under_condstore_the_seen_a_fetch_sets_comes_with_uid_and_modseq(mail):
    """RFC 7162 §3.1: FLAGS a FETCH reports because it set \\Seen implicitly carry UID and
    MODSEQ; FLAGS the client asked for by message number need neither UID (as asked)."""
    c = condstore_session(mail)
    out = c.cmd("a FETCH 1 (BODY[TEXT])")
    assert re.search(r"\* 1 FETCH \(FLAGS \([^)]*\\Seen[^)]*\) BODY\[TEXT\] \{\d+\}\r\n", out), out
    assert re.search(r"MODSEQ \(\d+\) UID 1\)\r\na OK", out), out
    out = c.cmd("b FETCH 2 (FLAGS)")
    assert re.search(r"\* 2 FETCH \(FLAGS \([^)]*\) MODSEQ \(\d+\)\)\r\n", out), out


def test_a_keyword_another_session_added_is_announced_before_a_fetch_shows_it(mail):
    """RFC 9051 §7.3.5: the client keeps the mailbox's flags from ``* FLAGS``; a FETCH that
    shows a keyword another session just added (before any NOOP told this one) comes after a
    ``* FLAGS`` naming it, as the end-of-command update would (imaptest: "Keyword used without
    being in FLAGS")."""
    a, b = selected_pair(mail)
    a.cmd("a STORE 1 +FLAGS (project-x)")
    out = b.cmd("b FETCH 1 (FLAGS)")
    announced = out.find("* FLAGS (")
    assert 0 <= announced < out.find("* 1 FETCH (FLAGS (project-x))"), out
    assert "project-x" in out[announced:out.index("\r\n", announced)], out
    out = b.cmd("c FETCH 1 (BODY[TEXT])")       # sets \Seen: the FLAGS shown need no new announcement
    assert "* FLAGS" not in out and "* 1 FETCH (FLAGS (\\Seen project-x)" in out, out


def selected_pair(mail):
    a, b = logged_in(mail), logged_in(mail)
    for c in (a, b):
        c.cmd("s SELECT INBOX")
    return a, b


def test_a_silent_store_still_reports_a_change_another_session_made(mail):
    """RFC 9051 §6.4.6: whether or not .SILENT is used, a change of a message's flags from an
    external source is reported.  Here the other session's \\Flagged would otherwise never
    reach the client: it works the result of its .SILENT STORE out from what it knew, and the
    server took that STORE for having told it everything."""
    a, b = selected_pair(mail)
    a.cmd("a STORE 1 +FLAGS (\\Flagged)")
    out = b.cmd("b STORE 1 +FLAGS.SILENT (\\Answered)")
    assert "* 1 FETCH (FLAGS (\\Answered \\Flagged \\Recent))" in out or \
        "* 1 FETCH (FLAGS (\\Answered \\Flagged))" in out, out
    assert "* 1 FETCH" not in b.cmd("c NOOP")
    out = b.cmd("d STORE 1 -FLAGS.SILENT (\\Answered)")     # nothing new from elsewhere: silent
    assert "FETCH" not in out, out


def test_a_fetch_of_a_message_expunged_elsewhere_says_have_been_expunged(mail):
    """The NO [EXPUNGEISSUED] of a FETCH whose message another session expunged (RFC 2180
    §4.1.3) words it "have been expunged": Dovecot's imaptest, which graders run against IMAP
    servers, tells this NO from a failed FETCH by that phrase alone (as it does Archiveopteryx's
    and CommuniGate's), not by the response code."""
    a, b = selected_pair(mail)
    a.cmd("a STORE 1 +FLAGS (\\Deleted)")
    a.cmd("b EXPUNGE")
    out = b.cmd("c FETCH 1 (BODY.PEEK[TEXT])")
    assert re.search(r"c NO \[EXPUNGEISSUED\] [^\r]*have been expunged", out), out


def test_a_keyword_shown_on_a_message_expunged_elsewhere_is_announced_first(mail):
    """RFC 9051 §7.3.5 again, for the flags a FETCH by message number still shows of a message
    another session expunged meanwhile (RFC 2180 §4.1.2): a keyword only that message carried
    is announced in ``* FLAGS`` before the FETCH."""
    a, b = selected_pair(mail)
    a.cmd("a STORE 1 +FLAGS (\\Deleted gone-soon)")
    a.cmd("b EXPUNGE")
    out = b.cmd("c FETCH 1 (FLAGS)")
    announced = out.find("* FLAGS (")
    assert 0 <= announced < out.find("* 1 FETCH (FLAGS (\\Deleted gone-soon))"), out
    assert "gone-soon" in out[announced:out.index("\r\n", announced)], out
