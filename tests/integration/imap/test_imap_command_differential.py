"""IMAP command handling, table-driven: raw command sequences sent to a mail store's IMAP
(``imap-direct``) and every answer checked against what RFC 3501 / RFC 9051 and the extension
RFCs call for, judged by hand (``CASES``): tagged OK/NO/BAD (RFC 9051 §7.1: BAD for what is not
a valid command in this state, NO for a valid one that fails), response codes, the untagged
data that must (or must not) come, and that the session stays usable afterwards (a NOOP after
every case that does not end the connection).

``test_command_table_through_the_edge`` runs the same table through an edge's IMAPS: before
login the edge's own front (``colony.protocols.imap.preauth``) answers, after it the store's
answers cross the edge's splice.

``test_command_table_against_dovecot`` replays the same sessions against a private Dovecot
(Debian's dovecot-imapd, run by ``bench/peers.py``) and compares the tagged answers step by
step (OK/NO/BAD and the response code); a difference must be one judged in ``DOVECOT_DIFFERS``
(with the RFC text that decides it), so a new one fails until somebody has judged it.

Each case runs as an account of its own holding ``SEED`` (three messages APPENDed to INBOX
first), so cases cannot disturb each other.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import ssl
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from test_imap_mailstore import PASSWORD, world  # noqa: F401  (fixture)
from tools import free_ports, need_tool

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

from peers import Dovecot  # noqa: E402

from test_imapclient_livetest import _edge_imaps  # noqa: E402

from colony.contracts import handoff  # noqa: E402

TIMEOUT = 30.0
DOMAIN = "example.com"

SEED = [
    b"From: a@example.org\r\nTo: b@example.org\r\nSubject: one\r\nMessage-Id: <1@x>\r\n\r\nfirst\r\n",
    b"From: c@example.org\r\nTo: b@example.org\r\nSubject: two\r\nMessage-Id: <2@x>\r\n\r\nsecond\r\n",
    b"From: a@example.org\r\nTo: d@example.org\r\nSubject: three\r\nMessage-Id: <3@x>\r\n\r\nthird\r\n",
]


@dataclass
class Step:
    """Octets sent, then the answer read up to the line ``until`` names: ``"+"`` (a
    continuation request), ``"EOF"`` (the server closes), a tag (its tagged answer) or ``"*"``
    (where the tag is in question: an untagged BAD/NO or a tagged answer with any tag).
    ``expect`` must match that last line (from its start, after the tag); each of ``untagged``
    must match some untagged line of the answer, none of ``absent`` any."""
    send: bytes
    until: str
    expect: str
    untagged: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()


def c(line: str, expect: str, untagged: tuple[str, ...] = (), absent: tuple[str, ...] = ()) -> Step:
    """A command line; its tag is its first word."""
    return Step(line.encode() + b"\r\n", line.split(" ", 1)[0], expect, untagged, absent)


@dataclass
class Case:
    name: str
    steps: list[Step]
    usable: bool = True          # a NOOP afterwards is answered OK
    login: bool = True           # False: the steps run before login (and nothing is seeded)
    why: str = ""
    extra: dict = field(default_factory=dict)


CASES: list[Case] = [
    # --- state and arguments: BAD for what is not a valid command here, NO for a failure ------
    Case("fetch-before-select", [c("a FETCH 1 FLAGS", "BAD")],
         why="RFC 9051 §6.4: FETCH only in the selected state; a command invalid in the state is BAD (§7.1.3)"),
    Case("store-before-select", [c("a STORE 1 +FLAGS (\\Seen)", "BAD")]),
    Case("close-before-select", [c("a CLOSE", "BAD")]),
    Case("unselect-before-select", [c("a UNSELECT", "BAD")]),
    Case("expunge-before-select", [c("a EXPUNGE", "BAD")]),
    Case("login-again", [c(f'a LOGIN x "{PASSWORD}"', "BAD")],
         why="RFC 9051 §6.2.3: LOGIN only in the not-authenticated state"),
    Case("unknown-command", [c("a FROB", "BAD")]),
    Case("select-no-argument", [c("a SELECT", "BAD")]),
    Case("select-two-arguments", [c("a SELECT INBOX Extra", "BAD")]),
    Case("fetch-no-items", [c("s SELECT INBOX", "OK"), c("a FETCH 1", "BAD")]),
    Case("fetch-bad-item", [c("s SELECT INBOX", "OK"), c("a FETCH 1 (FLAGS BOGUS)", "BAD")]),
    Case("fetch-zero", [c("s SELECT INBOX", "OK"), c("a FETCH 0 FLAGS", "BAD")],
         why="RFC 9051 §9: seq-number is nz-number; 0 is a syntax error"),
    Case("fetch-beyond-exists", [c("s SELECT INBOX", "OK"), c("a FETCH 9 FLAGS", "(BAD|NO)")],
         why="RFC 9051 §6.4.5 / RFC 3501 §6.4.8 leave a number over EXISTS to the server (BAD or NO)"),
    Case("fetch-star", [c("s SELECT INBOX", "OK"),
                        c("a FETCH * UID", "OK", untagged=(r"\* 3 FETCH \(UID 3\)",))]),
    Case("fetch-star-range-reversed", [c("s SELECT INBOX", "OK"),
                                       c("a FETCH *:2 UID", "OK", untagged=(r"\* 2 FETCH", r"\* 3 FETCH"))],
         why="RFC 9051 §9 seq-range: 'a:b' and 'b:a' are the same set"),
    Case("uid-range-beyond-uidnext", [c("s SELECT INBOX", "OK"),
                                      c("a UID FETCH 10:20 FLAGS", "OK", absent=(r"\* \d+ FETCH",))],
         why="RFC 9051 §6.4.9: UIDs that do not exist are ignored, OK with no data"),
    Case("uid-range-star-beyond", [c("s SELECT INBOX", "OK"),
                                   c("a UID FETCH 10:* UID", "OK", untagged=(r"\* 3 FETCH \(UID 3\)",))],
         why="RFC 9051 §6.4.9: 'n:*' always includes the highest UID, even if n is larger"),
    Case("empty-mailbox-fetch-all", [c("k CREATE Empty", "OK"), c("s SELECT Empty", "OK"),
                                     c("a FETCH 1:* FLAGS", "(OK|NO|BAD)", absent=(r"\* \d+ FETCH",)),
                                     c("b UID FETCH 1:* FLAGS", "OK", absent=(r"\* \d+ FETCH",))],
         why="RFC 9051 §6.4.9: UID FETCH 1:* of an empty mailbox is OK with nothing; a message "
             "number range in an empty mailbox is invalid (RFC 9051 §9 seq-number: '*' is the "
             "largest number in use; with none, the set is empty) -- BAD or NO or OK all seen"),
    Case("search-dollar-without-searchres", [c("s SELECT INBOX", "OK"),
                                             c("a FETCH $ FLAGS", "(OK|NO|BAD)", absent=(r"\* \d+ FETCH",))],
         why="RFC 5182 §2.1: '$' before any SEARCH SAVE is the empty set (OK, nothing fetched)"),
    Case("searchres-dollar", [c("s SELECT INBOX", "OK"),
                              c("a SEARCH RETURN (SAVE) FROM c@example.org", "OK"),
                              c("b FETCH $ UID", "OK", untagged=(r"\* 2 FETCH \(UID 2\)",),
                                absent=(r"\* [13] FETCH",))]),
    # --- tags -----------------------------------------------------------------------------------
    Case("tag-missing", [Step(b"\r\n", "*", r"BAD"), c("b NOOP", "OK")],
         why="an empty line: RFC 9051 §7.1.3 untagged BAD for a line whose tag cannot be read"),
    Case("tag-with-plus", [Step(b"a+ NOOP\r\n", "*", r"BAD")],
         why="RFC 9051 §9: tag = 1*<any ASTRING-CHAR except '+'>; an untagged BAD"),
    Case("tag-odd-chars", [c("a.b-c_d!#&'`|~ NOOP", "OK")],
         why="all of these are ASTRING-CHARs, so a valid tag (RFC 9051 §9)"),
    Case("tag-only", [Step(b"abc\r\n", "abc", "BAD")],
         why="a tag without a command is BAD with that tag (RFC 9051 §7.1.3)"),
    # --- literals ---------------------------------------------------------------------------------
    Case("literal-synchronizing", [Step(b"a SELECT {5}\r\n", "+", ""),
                                   Step(b"INBOX\r\n", "a", "OK", untagged=(r"\* 3 EXISTS",))]),
    Case("literal-plus", [Step(b"a SELECT {5+}\r\nINBOX\r\n", "a", "OK", untagged=(r"\* 3 EXISTS",))],
         why="RFC 7888: LITERAL+ advertised, no continuation request"),
    Case("literal-over-limit", [Step(b"a APPEND INBOX {999999999}\r\n", "a", r"NO \[TOOBIG\]"),
                                c("b NOOP", "OK")],
         why="RFC 9051 §7.1.2 / RFC 7889 §4: a synchronizing literal too large: NO [TOOBIG] instead "
             "of the continuation request; the client sends no octets and the session goes on"),
    Case("literal-then-close", [Step(b"a APPEND INBOX {500}\r\n", "+", ""),
                                Step(b"partial", "", "")], usable=False,
         why="a literal announced and the connection closed midway: nothing stored (checked by a new "
             "session)"),
    # --- SEARCH -------------------------------------------------------------------------------------
    Case("search-unknown-charset", [c("s SELECT INBOX", "OK"),
                                    c("a SEARCH CHARSET X-UNKNOWN FROM a", r"NO \[BADCHARSET")],
         why="RFC 9051 §6.4.4: an unsupported charset is NO [BADCHARSET]"),
    Case("search-nested-or-not", [c("s SELECT INBOX", "OK"),
                                  c("a SEARCH OR (FROM c NOT SUBJECT two) NOT OR FROM a FROM c", "OK",
                                    untagged=(r"\* SEARCH$",))]),
    Case("search-or-not", [c("s SELECT INBOX", "OK"),
                           c("a SEARCH NOT OR SUBJECT one SUBJECT two", "OK", untagged=(r"\* SEARCH 3$",))]),
    Case("search-bad-key", [c("s SELECT INBOX", "OK"), c("a SEARCH FROBNICATE", "BAD")]),
    Case("search-or-one-argument", [c("s SELECT INBOX", "OK"), c("a SEARCH OR FROM a", "BAD")]),
    Case("search-unbalanced", [c("s SELECT INBOX", "OK"), c("a SEARCH (FROM a", "BAD")]),
    # --- APPEND/COPY/MOVE to a missing mailbox --------------------------------------------------------
    Case("append-missing", [Step(b"a APPEND Nope {5+}\r\nhello\r\n", "a", r"NO \[TRYCREATE\]")],
         why="RFC 9051 §6.3.12: the destination does not exist: NO [TRYCREATE]"),
    Case("copy-missing", [c("s SELECT INBOX", "OK"), c("a COPY 1 Nope", r"NO \[TRYCREATE\]")]),
    Case("move-missing", [c("s SELECT INBOX", "OK"), c("a MOVE 1 Nope", r"NO \[TRYCREATE\]"),
                          c("b FETCH 1 UID", "OK", untagged=(r"\* 1 FETCH \(UID 1\)",))]),
    # --- CREATE / RENAME / DELETE ------------------------------------------------------------------------
    Case("create-inbox", [c("a CREATE INBOX", r"NO"), c("b CREATE inbox", r"NO")],
         why="RFC 9051 §6.3.4: CREATE INBOX is an error (INBOX is case-insensitive, §5.1)"),
    Case("create-existing", [c("a CREATE Box", "OK"), c("b CREATE Box", r"NO \[ALREADYEXISTS\]")],
         why="RFC 9051 §6.3.4, RFC 5530 §3 ALREADYEXISTS"),
    Case("create-trailing-separator", [c("a CREATE Parent/", "OK"),
                                       c("b LIST \"\" Parent", "OK", untagged=(r"\* LIST \([^)]*\) / Parent$",)),
                                       c("d CREATE Parent/Child", "OK")],
         why="RFC 9051 §6.3.4: a trailing separator means the client wants inferiors; the "
             "mailbox is created without it"),
    Case("rename-inbox", [c("a CREATE Keep", "OK"), c("b RENAME INBOX Old", "OK"),
                          c("d STATUS INBOX (MESSAGES)", "OK", untagged=(r"\* STATUS INBOX \(MESSAGES 0\)",)),
                          c("e STATUS Old (MESSAGES)", "OK", untagged=(r"\* STATUS Old \(MESSAGES 3\)",))],
         why="RFC 9051 §6.3.6: RENAME INBOX moves its messages to the new name and leaves INBOX empty"),
    Case("rename-onto-existing", [c("a CREATE A1", "OK"), c("b CREATE B1", "OK"),
                                  c("d RENAME A1 B1", r"NO \[ALREADYEXISTS\]")],
         why="RFC 9051 §6.3.6: renaming to an existing name is an error; RFC 5530 ALREADYEXISTS"),
    Case("rename-missing", [c("a RENAME Nope Other", r"NO \[NONEXISTENT\]")],
         why="RFC 5530 §3 NONEXISTENT: the operation's source does not exist"),
    Case("delete-inbox", [c("a DELETE INBOX", "NO"),
                          c("b STATUS INBOX (MESSAGES)", "OK", untagged=(r"\* STATUS INBOX \(MESSAGES 3\)",))],
         why="RFC 9051 §6.3.5: deleting INBOX is an error"),
    Case("delete-missing", [c("a DELETE Nope", r"NO \[NONEXISTENT\]")]),
    Case("delete-with-children", [c("a CREATE P2/C2", "OK"), c("b DELETE P2", "OK"),
                                  c("d LIST \"\" P2", "OK", untagged=(r"\* LIST \([^)]*\\Noselect[^)]*\) / P2$",)),
                                  c("e SELECT P2", "NO"),
                                  c("f DELETE P2", "NO"),
                                  c("g DELETE P2/C2", "OK")],
         why="RFC 9051 §6.3.5: a mailbox with inferiors is deleted to \\Noselect; deleting a "
             "\\Noselect mailbox that has inferiors is an error"),
    # --- LIST / LSUB / STATUS / NAMESPACE ---------------------------------------------------------------------
    Case("list-empty-pattern", [c('a LIST "" ""', "OK", untagged=(r"\* LIST \(\\Noselect\) / $",))],
         why="RFC 9051 §6.3.9: an empty pattern asks for the hierarchy delimiter and root"),
    Case("list-percent", [c("a CREATE L1/L2/L3", "OK"),
                          c('b LIST "" %', "OK", untagged=(r"\* LIST .* L1$", r"\* LIST .* INBOX$"),
                            absent=(r"\* LIST .* L1/L2$",)),
                          c('d LIST "" L1/*', "OK", untagged=(r"\* LIST .* L1/L2$", r"\* LIST .* L1/L2/L3$")),
                          c('e LIST L1/ %', "OK", untagged=(r"\* LIST .* L1/L2$",), absent=(r"\* LIST .* L3$",))]),
    Case("lsub-empty-pattern", [c('a LSUB "" ""', "OK")]),
    Case("status-selected", [c("s SELECT INBOX", "OK"),
                             c("a STATUS INBOX (MESSAGES UIDNEXT)", "OK",
                               untagged=(r"\* STATUS INBOX \(MESSAGES 3 UIDNEXT 4\)",))],
         why="RFC 9051 §6.3.11 allows STATUS of the selected mailbox (SHOULD NOT), and it must be right"),
    Case("status-missing", [c("a STATUS Nope (MESSAGES)", r"NO \[NONEXISTENT\]")]),
    Case("status-no-items", [c("a STATUS INBOX ()", "BAD")],
         why="RFC 9051 §9: status-att-list has at least one item"),
    Case("namespace", [c("a NAMESPACE", "OK", untagged=(r"\* NAMESPACE \(\( /\)\)",))]),
    Case("id", [c('a ID ("name" "x")', "OK", untagged=(r"\* ID ",)), c("b ID NIL", "OK")]),
    # --- SELECT / EXAMINE / CLOSE / UNSELECT / EXPUNGE -----------------------------------------------------------
    Case("select-missing-deselects", [c("s SELECT INBOX", "OK"), c("a SELECT Nope", "NO"),
                                      c("b FETCH 1 FLAGS", "BAD")],
         why="RFC 9051 §6.3.2: a failed SELECT leaves the authenticated state"),
    Case("select-missing-closed", [c("e ENABLE CONDSTORE", "OK"), c("s SELECT INBOX", "OK"),
                                   c("a SELECT Nope", "NO", untagged=(r"\* OK \[CLOSED\]",)),
                                   c("b FETCH 1 FLAGS", "BAD")],
         why="RFC 7162 §3.2.11: with CONDSTORE/QRESYNC the deselect is announced as OK [CLOSED]"),
    Case("select-reselect-closed", [c("e ENABLE QRESYNC", "OK"), c("s SELECT INBOX", "OK"),
                                    c("a SELECT INBOX", "OK", untagged=(r"\* OK \[CLOSED\]", r"\* OK \[HIGHESTMODSEQ \d+\]"))]),
    Case("select-codes", [c("s SELECT INBOX", r"OK \[READ-WRITE\]",
                            untagged=(r"\* 3 EXISTS", r"\* OK \[UIDVALIDITY \d+\]", r"\* OK \[UIDNEXT 4\]",
                                      r"\* FLAGS \(", r"\* OK \[PERMANENTFLAGS \("))]),
    Case("examine-then-store", [c("s EXAMINE INBOX", r"OK \[READ-ONLY\]"),
                                c("a STORE 1 +FLAGS (\\Seen)", "NO"),
                                c("b EXPUNGE", "NO"),
                                c("d FETCH 1 FLAGS", "OK", absent=(r"Seen",))],
         why="RFC 9051 §6.3.3: EXAMINE is read-only; STORE and EXPUNGE fail (NO)"),
    Case("close-expunges-silently", [c("s SELECT INBOX", "OK"), c("a STORE 1 +FLAGS.SILENT (\\Deleted)", "OK"),
                                     c("b CLOSE", "OK", absent=(r"EXPUNGE",)),
                                     c("d STATUS INBOX (MESSAGES)", "OK", untagged=(r"\* STATUS INBOX \(MESSAGES 2\)",))],
         why="RFC 9051 §6.4.1: CLOSE expunges with no untagged EXPUNGE"),
    Case("unselect-keeps", [c("s SELECT INBOX", "OK"), c("a STORE 1 +FLAGS.SILENT (\\Deleted)", "OK"),
                            c("b UNSELECT", "OK", absent=(r"EXPUNGE",)),
                            c("d STATUS INBOX (MESSAGES)", "OK", untagged=(r"\* STATUS INBOX \(MESSAGES 3\)",))],
         why="RFC 3691: UNSELECT expunges nothing"),
    Case("expunge-reports", [c("s SELECT INBOX", "OK"), c("a STORE 2 +FLAGS.SILENT (\\Deleted)", "OK"),
                             c("b EXPUNGE", "OK", untagged=(r"\* 2 EXPUNGE",))]),
    Case("close-examine-keeps", [c("s EXAMINE INBOX", "OK"), c("b CLOSE", "OK"), c("d FETCH 1 UID", "BAD")]),
    # --- ENABLE / IDLE / QUOTA / UTF8 --------------------------------------------------------------------------------
    Case("enable-twice", [c("a ENABLE CONDSTORE", "OK", untagged=(r"\* ENABLED CONDSTORE",)),
                          c("b ENABLE CONDSTORE", "OK", absent=(r"\* ENABLED CONDSTORE",))],
         why="RFC 5161 §3.1: ENABLED lists only extensions newly enabled"),
    Case("enable-unknown", [c("a ENABLE X-NOPE", "OK", absent=(r"X-NOPE",))],
         why="RFC 5161 §3.1: unknown extensions are ignored"),
    Case("enable-no-argument", [c("a ENABLE", "BAD")]),
    Case("enable-after-select", [c("s SELECT INBOX", "OK"), c("a ENABLE CONDSTORE", "(OK|BAD)")],
         why="RFC 5161 §3.1: clients MUST NOT ENABLE after SELECT, but servers need not check"),
    Case("idle-then-other-line", [Step(b"a IDLE\r\n", "+", ""), Step(b"NOOP\r\n", "a", "BAD"),
                                  c("b NOOP", "OK")],
         why="RFC 2177 §3: anything but DONE ends IDLE; the command fails BAD"),
    Case("idle-done", [Step(b"a IDLE\r\n", "+", ""), Step(b"DONE\r\n", "a", "OK")]),
    Case("getquotaroot", [c("a GETQUOTAROOT INBOX", "OK", untagged=(r"\* QUOTAROOT INBOX",))]),
    Case("getquotaroot-missing", [c("a GETQUOTAROOT Nope", "NO")]),
    Case("utf8-accept-create", [c("e ENABLE UTF8=ACCEPT", "OK"), c("a CREATE Ünïcode", "OK"),
                                c('b LIST "" *', "OK", untagged=(r"\* LIST .* Ünïcode$",))],
         why="RFC 6855 §3: after ENABLE UTF8=ACCEPT mailbox names are UTF-8"),
    Case("utf8-before-enable-8bit", [c("a CREATE Ünïcode", "(BAD|NO)")],
         why="RFC 3501 §5.1.3: 8-bit mailbox names are not valid before UTF8=ACCEPT"),
    # --- more arguments and states ---------------------------------------------------------------------
    Case("noop-with-argument", [c("a NOOP extra", "BAD")], why="RFC 9051 §9: command-any has no arguments"),
    Case("double-space", [c("a  NOOP", "BAD")], why="RFC 9051 §9: exactly one SP between tag and command"),
    Case("star-tag", [Step(b"* NOOP\r\n", "*", "BAD")], why="'*' is not an ASTRING-CHAR"),
    Case("percent-tag", [Step(b"a% NOOP\r\n", "*", "BAD")], why="'%' is a list-wildcard, not in a tag"),
    Case("lowercase-command", [c("a select inbox", "OK", untagged=(r"\* 3 EXISTS",))],
         why="RFC 9051 §9: commands are case-insensitive, and so is INBOX (§5.1)"),
    Case("check-before-select", [c("a CHECK", "BAD")]),
    Case("starttls-after-login", [c("a STARTTLS", "BAD")],
         why="RFC 9051 §6.2.1: STARTTLS only in the not-authenticated state"),
    Case("authenticate-after-login", [c("a AUTHENTICATE PLAIN", "BAD")]),
    Case("uid-alone", [c("s SELECT INBOX", "OK"), c("a UID", "BAD"), c("b UID FROB 1", "BAD")]),
    Case("uid-expunge-no-set", [c("s SELECT INBOX", "OK"), c("a UID EXPUNGE", "BAD")]),
    Case("store-no-flags", [c("s SELECT INBOX", "OK"), c("a STORE 1 FLAGS", "BAD"),
                            c("b STORE 1 BOGUS (\\Seen)", "BAD")]),
    Case("store-recent", [c("s SELECT INBOX", "OK"), c("a STORE 1 +FLAGS (\\Recent)", "(BAD|NO|OK)")],
         why="RFC 3501 §2.3.2: \\Recent cannot be altered by the client"),
    Case("status-unknown-item", [c("a STATUS INBOX (MESSAGES BOGUS)", "BAD")]),
    Case("append-bad-date", [Step(b'a APPEND INBOX "31-Foo-2020 00:00:00 +0000" {5+}\r\nhello\r\n', "a", "BAD")],
         why="RFC 9051 §9 date-time; an unknown month is a syntax error"),
    Case("append-recent-flag", [Step(b"a APPEND INBOX (\\Recent) {5+}\r\nhello\r\n", "a", "(BAD|NO|OK)")]),
    Case("append-empty", [Step(b"a APPEND INBOX {0+}\r\n\r\n", "a", "(NO|BAD|OK)")],
         why="an empty message: RFC 9051 §6.3.12 does not forbid it; Colony stores it"),
    Case("search-charset-missing", [c("s SELECT INBOX", "OK"), c("a SEARCH CHARSET", "BAD")]),
    Case("search-uid-star", [c("s SELECT INBOX", "OK"), c("a SEARCH UID 3:*", "OK", untagged=(r"\* SEARCH 3$",))]),
    Case("search-literal-utf8", [c("s SELECT INBOX", "OK"),
                                 Step(b"a SEARCH CHARSET UTF-8 SUBJECT {3}\r\n", "+", ""),
                                 Step(b"two\r\n", "a", "OK", untagged=(r"\* SEARCH 2$",))]),
    Case("search-empty-mailbox-star", [c("k CREATE E2", "OK"), c("s SELECT E2", "OK"),
                                       c("a SEARCH 1:*", "(OK|BAD|NO)", absent=(r"\* SEARCH \d",)),
                                       c("b UID SEARCH UID 1:*", "OK", absent=(r"\* SEARCH \d",))]),
    Case("copy-beyond-exists", [c("s SELECT INBOX", "OK"), c("a COPY 7 Archive", "(NO|BAD)")]),
    Case("copy-uid-beyond", [c("s SELECT INBOX", "OK"), c("a UID COPY 70:80 Archive", "OK", absent=(r"COPYUID",))],
         why="RFC 4315 §3: no COPYUID when nothing was copied; RFC 9051 §6.4.8 UIDs not there are ignored"),
    Case("move-same-mailbox", [c("s SELECT INBOX", "OK"), c("a MOVE 1 INBOX", "(OK|NO)")]),
    Case("create-wildcard", [c("a CREATE Bad*Name", "BAD"), c('b CREATE "Bad%Name"', "(NO|OK)")],
         why="RFC 9051 §9: list-wildcards are atom-specials, so unquoted they are a syntax error; "
             "quoted, §5.1 leaves the name to the server"),
    Case("rename-to-inbox", [c("a CREATE R1", "OK"), c("b RENAME R1 INBOX", r"NO \[ALREADYEXISTS\]")],
         why="RFC 9051 §6.3.6: renaming to an existing name (INBOX always exists) is an error"),
    Case("rename-under-itself", [c("a CREATE R2", "OK"), c("b RENAME R2 R2/Sub", "NO")]),
    Case("delete-selected", [c("a CREATE D1", "OK"), c("s SELECT D1", "OK"), c("b DELETE D1", "(OK|NO)"),
                             c("d NOOP", "(OK|BYE)")]),
    Case("list-inbox-children", [c("a CREATE INBOX/Sub", "OK"),
                                 c('b LIST "" INBOX/%', "OK", untagged=(r"\* LIST .* / INBOX/Sub$",))]),
    Case("lsub-percent", [c("a CREATE S1/S2", "OK"), c("b SUBSCRIBE S1/S2", "OK"),
                          c('d LSUB "" %', "OK", untagged=(r"\* LSUB \(\\Noselect\) / S1$",))],
         why="RFC 3501 §6.3.9: with % a subscribed inferior's unsubscribed parent is listed \\Noselect"),
    Case("select-condstore-param", [c("s SELECT INBOX (CONDSTORE)", "OK",
                                      untagged=(r"\* OK \[HIGHESTMODSEQ \d+\]",))]),
    Case("examine-missing-qresync", [c("e ENABLE QRESYNC", "OK"), c("s EXAMINE INBOX", "OK"),
                                     c("a EXAMINE Nope", "NO", untagged=(r"\* OK \[CLOSED\]",))]),
    Case("setquota", [c('a SETQUOTA "" (STORAGE 1)', "NO")]),
    Case("getquota-missing-root", [c("a GETQUOTA nope", "NO")]),
    Case("logout", [c("a LOGOUT", "OK", untagged=(r"\* BYE",))], usable=False),
    Case("idle-before-done-data", [Step(b"a IDLE\r\n", "+", ""), Step(b"DONE extra\r\n", "a", "(BAD|OK)"),
                                   c("b NOOP", "OK")]),
    Case("literal-as-tag", [Step(b"{3}\r\n", "*", "BAD"), c("b NOOP", "OK"),
                            Step(b"d {3}\r\n", "*", "BAD"), c("e NOOP", "OK")],
         why="a tag and a command name are atoms (RFC 9051 §9): a literal there is BAD, with no "
             "continuation request (which would make the next command's octets its literal)"),
    Case("literal-plus-then-close", [Step(b"a APPEND INBOX {500+}\r\nFrom: x\r\n", "", "")], usable=False),
    # --- sequence sets, extension parameters --------------------------------------------------------
    Case("seq-set-malformed", [c("s SELECT INBOX", "OK"), c("a FETCH 1,,2 UID", "BAD"), c("b FETCH 1: UID", "BAD"),
                               c("d FETCH 1:2: UID", "BAD"), c("e UID FETCH 4294967296 UID", "BAD"),
                               c("f UID FETCH 4294967295 UID", "OK", absent=(r"FETCH",))],
         why="RFC 9051 §9 sequence-set; nz-number < 4,294,967,296 (§9 number, nz-number)"),
    Case("select-unknown-param", [c("a SELECT INBOX (X-BOGUS)", "BAD")],
         why="RFC 4466 §2.1: a server MUST reject an unknown SELECT parameter with BAD"),
    Case("select-qresync-not-enabled", [c("a SELECT INBOX (QRESYNC (1 1))", "BAD")],
         why="RFC 7162 §3.2.5: QRESYNC parameter without ENABLE QRESYNC MUST be BAD"),
    Case("vanished-without-changedsince", [c("e ENABLE QRESYNC", "OK"), c("s SELECT INBOX", "OK"),
                                           c("a UID FETCH 1:* FLAGS (VANISHED)", "BAD")],
         why="RFC 7162 §3.2.6: VANISHED without CHANGEDSINCE MUST be BAD"),
    Case("vanished-not-enabled", [c("s SELECT INBOX", "OK"),
                                  c("a UID FETCH 1:* FLAGS (CHANGEDSINCE 1 VANISHED)", "BAD")],
         why="RFC 7162 §3.2.6: VANISHED without ENABLE QRESYNC MUST be BAD"),
    Case("vanished-by-number", [c("e ENABLE QRESYNC", "OK"), c("s SELECT INBOX", "OK"),
                                c("a FETCH 1:* FLAGS (CHANGEDSINCE 1 VANISHED)", "BAD")],
         why="RFC 7162 §3.2.6: VANISHED in a FETCH that is not UID FETCH MUST be BAD"),
    Case("unchangedsince-zero", [c("s SELECT INBOX", "OK"),
                                 c("a STORE 1 (UNCHANGEDSINCE 0) +FLAGS (\\Seen)", r"OK \[MODIFIED 1\]")],
         why="RFC 7162 §3.1.3: UNCHANGEDSINCE 0 always fails for an existing message: OK [MODIFIED 1]"),
    Case("store-bad-keyword", [c("s SELECT INBOX", "OK"), c("a STORE 1 +FLAGS (a]b)", "BAD")],
         why="RFC 9051 §9 flag-keyword is an atom; ']' is a resp-special, not an ATOM-CHAR"),
    Case("store-unknown-system-flag", [c("s SELECT INBOX", "OK"), c("a STORE 1 +FLAGS (\\Bogus)", "(BAD|NO|OK)")]),
    Case("expunge-argument", [c("s SELECT INBOX", "OK"), c("a EXPUNGE 1", "BAD"), c("b CLOSE now", "BAD")]),
    Case("list-missing-arguments", [c("a LIST", "BAD"), c('b LIST ""', "BAD"), c("d STATUS", "BAD"),
                                    c("e SUBSCRIBE", "BAD"), c("f GETQUOTAROOT", "BAD")]),
    Case("list-bad-return", [c('a LIST "" * RETURN (X-BOGUS)', "BAD")],
         why="RFC 5258 §3: an unknown return option is BAD"),
    Case("enable-two", [c("a ENABLE CONDSTORE QRESYNC", "OK", untagged=(r"\* ENABLED( CONDSTORE| QRESYNC){2}$",))]),
    Case("copy-same-mailbox", [c("s SELECT INBOX", "OK"), c("a COPY 1 INBOX", r"OK \[COPYUID \d+ 1 4\]",
                                                             untagged=(r"\* 4 EXISTS",))]),
    Case("myrights", [c("a MYRIGHTS INBOX", "OK", untagged=(r"\* MYRIGHTS INBOX ",))]),
    Case("id-odd-list", [c('a ID ("name")', "BAD")], why="RFC 2971 §3.3: id-params-list holds pairs"),
    Case("search-charset-literal", [c("s SELECT INBOX", "OK"),
                                    Step(b"a SEARCH CHARSET {5}\r\n", "+", ""),
                                    Step(b"UTF-8 SUBJECT one\r\n", "a", "OK", untagged=(r"\* SEARCH 1$",))]),
    Case("search-modseq", [c("s SELECT INBOX", "OK"), c("a SEARCH MODSEQ 1", "OK", untagged=(r"\* SEARCH 1 2 3 \(MODSEQ \d+\)$",))],
         why="RFC 7162 §3.1.5: SEARCH MODSEQ adds (MODSEQ n) to the answer"),
    Case("append-over-quota", [Step(b"a APPEND INBOX {2000+}\r\n" + b"Subject: big\r\n\r\n" + b"x" * 1983 + b"\r\n",
                                    "a", r"NO \[OVERQUOTA\]"),
                               c("b STATUS INBOX (MESSAGES)", "OK", untagged=(r"\* STATUS INBOX \(MESSAGES 3\)",))],
         extra={"quota_bytes": 1000},
         why="RFC 9208 §4.3 / RFC 5530 §3: an APPEND that would pass the quota is NO [OVERQUOTA], nothing stored"),
    Case("deleted-while-selected", [c("a CREATE D2", "OK"), Step(b"b APPEND D2 {5+}\r\nhello\r\n", "b", "OK"),
                                    c("s SELECT D2", "OK"), c("d DELETE D2", "(OK|NO)"),
                                    c("e FETCH 1 UID", r"(OK|NO|BAD)(?! \[SERVERBUG\])"),
                                    c("f STORE 1 +FLAGS (\\Seen)", r"(OK|NO|BAD)(?! \[SERVERBUG\])"),
                                    c("g SELECT INBOX", "OK", untagged=(r"\* 3 EXISTS",))]),
    Case("renamed-while-selected", [c("a CREATE R3", "OK"), c("s SELECT R3", "OK"), c("b RENAME R3 R4", "OK"),
                                    c("d NOOP", "OK"), c("e SELECT R4", "OK")]),
    Case("select-empty-name", [c('a SELECT ""', "NO")]),
    Case("examine-move-copy", [c("k CREATE Arch", "OK"), c("s EXAMINE INBOX", "OK"), c("a MOVE 1 Arch", "NO"),
                               c("b COPY 1 Arch", "OK"), c("d UID EXPUNGE 1", "NO"),
                               c("e STATUS INBOX (MESSAGES)", "OK", untagged=(r"\* STATUS INBOX \(MESSAGES 3\)",))],
         why="RFC 9051 §6.3.3: nothing may change in an EXAMINEd mailbox; COPY reads it only"),
    Case("examine-then-select", [c("e ENABLE CONDSTORE", "OK"), c("s EXAMINE INBOX", r"OK \[READ-ONLY\]"),
                                 c("a SELECT INBOX", r"OK \[READ-WRITE\]", untagged=(r"\* OK \[CLOSED\]",))]),
    Case("append-to-selected", [c("s SELECT INBOX", "OK"),
                                Step(b"a APPEND INBOX {5+}\r\nhello\r\n", "a", r"OK \[APPENDUID \d+ 4\]"),
                                c("b NOOP", "OK")],
         why="RFC 4315 §3 APPENDUID; the new message is announced (EXISTS) at the APPEND or the next command"),
    Case("search-return-bogus", [c("s SELECT INBOX", "OK"), c("a SEARCH RETURN (X-BOGUS) ALL", "BAD")],
         why="RFC 4731 §3 / RFC 4466: an unknown RETURN option is BAD"),
    Case("sort-charset", [c("s SELECT INBOX", "OK"), c("a SORT (SUBJECT) X-UNKNOWN ALL", r"NO \[BADCHARSET"),
                          c("b SORT (SUBJECT) ALL", "BAD"), c("d SORT (BOGUS) UTF-8 ALL", "BAD"),
                          c("e SORT (SUBJECT) UTF-8 ALL", "OK", untagged=(r"\* SORT 1 3 2$",))],
         why="RFC 5256 §3: SORT's charset is mandatory; an unknown one is NO [BADCHARSET]"),
    Case("thread-unknown", [c("s SELECT INBOX", "OK"), c("a THREAD X-BOGUS UTF-8 ALL", "(BAD|NO)")]),
    Case("utf8-search-charset-after-enable", [c("e ENABLE UTF8=ACCEPT", "OK"), c("s SELECT INBOX", "OK"),
                                              c("a SEARCH CHARSET UTF-8 SUBJECT one", "(BAD|OK)")],
         why="RFC 6855 §3 (errata 4029; RFC 9755): after UTF8=ACCEPT the client MUST NOT give a "
             "charset and a server SHOULD answer BAD; Colony accepts CHARSET UTF-8 (no conflict: "
             "its strings are UTF-8 either way), which the SHOULD permits"),
    Case("literal-minus-form", [Step(b"a SELECT {5-}\r\n", "a", "BAD"), Step(b"INBOX\r\n", "INBOX", "BAD")],
         why="RFC 7888 §8: a literal is {n} or {n+} (LITERAL- limits the '+' form to 4096 octets); "
             "'{5-}' is no literal, so the line is a SELECT of a bad name (BAD) and 'INBOX' a line of its own"),
    Case("literal-plus-over-limit-then-close", [Step(b"a APPEND INBOX {99999999+}\r\nFrom: x\r\n", "", "")],
         usable=False, why="a non-synchronizing literal over the limit, cut off: nothing stored"),
]


# Before login: the store's own LOGIN (imap-direct) and the edge's front (colony.protocols.imap.preauth).
PREAUTH_CASES: list[Case] = [
    Case("pre-select", [c("a SELECT INBOX", "BAD")], login=False,
         why="RFC 9051 §6.3.2: SELECT only in the authenticated state; invalid in this state is BAD"),
    Case("pre-enable", [c("a ENABLE CONDSTORE", "BAD")], login=False),
    Case("pre-idle", [c("a IDLE", "BAD")], login=False),
    Case("pre-namespace", [c("a NAMESPACE", "BAD")], login=False),
    Case("pre-capability-argument", [c("a CAPABILITY x", "BAD")], login=False),
    Case("pre-login-no-arguments", [c("a LOGIN", "BAD"), c("b LOGIN onlyuser", "BAD")], login=False),
    Case("pre-login-extra", [c('a LOGIN u p extra', "BAD")], login=False),
    Case("pre-tag-plus", [Step(b"a+ NOOP\r\n", "*", "BAD")], login=False),
    Case("pre-literal-as-tag", [Step(b"{3}\r\n", "*", "BAD"), c("b NOOP", "OK")], login=False),
    Case("pre-authenticate-unknown", [c("a AUTHENTICATE X-NOPE", "(NO|BAD)")], login=False,
         why="RFC 9051 §6.2.2: an unsupported mechanism is 'NO - unsupported authentication mechanism'"),
    Case("pre-authenticate-cancel", [Step(b"a AUTHENTICATE PLAIN\r\n", "+", ""), Step(b"*\r\n", "a", "BAD")],
         login=False, why="RFC 9051 §6.2.2: a '*' response cancels; the server MUST answer tagged BAD"),
    Case("pre-authenticate-bad-base64", [Step(b"a AUTHENTICATE PLAIN\r\n", "+", ""),
                                         Step(b"!!!notbase64\r\n", "a", "(BAD|NO)")], login=False,
         why="RFC 9051 §6.2.2: an undecodable response is BAD (NO also seen)"),
    Case("pre-id", [c("a ID NIL", "OK", untagged=(r"\* ID ",))], login=False),
    Case("pre-id-odd-list", [c('a ID ("name")', "BAD"), c("b ID", "BAD")], login=False,
         why="RFC 2971 §4: ID takes NIL or a list of string/nstring pairs"),
    Case("pre-uid-fetch", [c("a UID FETCH 1 UID", "BAD")], login=False),
    Case("pre-login-literal-plus", [Step(b"a LOGIN {18+}\r\nnobody@example.com {5+}\r\nwrong\r\n", "a", "NO")],
         login=False, why="RFC 7888 LITERAL+ before login too; a wrong password is NO"),
    Case("pre-authenticate-empty-response", [Step(b"a AUTHENTICATE PLAIN\r\n", "+", ""),
                                             Step(b"\r\n", "a", "(NO|BAD)")], login=False,
         why="an empty PLAIN response holds no credentials: the exchange fails"),
    Case("pre-logout", [c("a LOGOUT", "OK", untagged=(r"\* BYE",))], usable=False, login=False),
    Case("pre-login-wrong-password", [c('a LOGIN "nobody@example.com" "wrong"', r"NO( \[AUTHENTICATIONFAILED\])?"),
                                      c("b NOOP", "OK")], login=False,
         why="RFC 9051 §6.2.3: a failed LOGIN is NO; RFC 5530 AUTHENTICATIONFAILED"),
]


# --- the raw client -----------------------------------------------------------------------------

_LITERAL_AT_END = re.compile(rb"~?\{(\d+)\+?\}\r\n$")


class Raw:
    def __init__(self, port: int, tls: ssl.SSLContext | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), TIMEOUT)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname="127.0.0.1")
        self.buf = b""
        self.greeting = self.line()

    def line(self) -> bytes:
        """One response, literals folded in; b"" at the end of the connection."""
        out = b""
        deadline = time.monotonic() + TIMEOUT
        while True:
            while b"\r\n" not in self.buf:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no answer; so far {out + self.buf!r}")
                chunk = self.sock.recv(65536)
                if not chunk:
                    return b""
                self.buf += chunk
            end = self.buf.index(b"\r\n") + 2
            piece, self.buf = self.buf[:end], self.buf[end:]
            m = _LITERAL_AT_END.search(piece)
            if m:
                size = int(m.group(1))
                while len(self.buf) < size:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        return b""
                    self.buf += chunk
                out += piece[:m.start()] + b"{literal}" + self.buf[:size].replace(b"\r\n", b" ")
                self.buf = self.buf[size:]
                continue
            return out + piece[:-2]

    def step(self, step: Step) -> tuple[str, list[str]]:
        """(the last line, the untagged lines) of ``step``'s answer."""
        try:
            return self._step(step)
        except (ConnectionResetError, BrokenPipeError):
            return "EOF", []

    def _step(self, step: Step) -> tuple[str, list[str]]:
        self.sock.sendall(step.send)
        if not step.until:
            return "", []
        untagged: list[str] = []
        while True:
            line = self.line().decode("utf-8", "replace")
            if not line:
                return "EOF", untagged
            if line.startswith("+"):        # wanted, or a literal's go-ahead
                return "+", untagged
            if step.until == "*" and re.match(r"\S+ (BAD|NO) |[^*]\S* OK ", line):
                return line.split(" ", 1)[1], untagged      # whatever tag the server read
            if line.startswith(step.until + " ") and step.until not in "+*":
                return line[len(step.until) + 1:], untagged
            untagged.append(line)

    def close(self) -> None:
        self.sock.close()


def _login(raw: Raw, user: str, password: str) -> None:
    raw.sock.sendall(f'l1 LOGIN "{user}" "{password}"\r\n'.encode())
    while True:
        line = raw.line()
        if line.startswith(b"l1 "):
            assert line.startswith(b"l1 OK"), line
            return


def _seed(raw: Raw) -> None:
    for n, message in enumerate(SEED):
        raw.sock.sendall(b"l2 APPEND INBOX {%d+}\r\n" % len(message) + message + b"\r\n")
        while True:
            line = raw.line()
            if line.startswith(b"l2 "):
                assert line.startswith(b"l2 OK"), line
                break


def run_case(port: int, user: str, password: str, case: Case,
             tls: ssl.SSLContext | None = None) -> list[tuple[str, list[str]]]:
    """Every step's (last line, untagged lines); a last step of ("NOOP", ...) when usable."""
    raw = Raw(port, tls)
    try:
        if case.login:
            _login(raw, user, password)
            _seed(raw)
        answers = []
        for s in case.steps:
            answers.append(raw.step(s))
            if answers[-1][0] == "+" and s.until != "+":
                return answers      # the server waits for a literal the case does not send
        if case.usable:
            answers.append(raw.step(c("zz NOOP", "OK")))
        if case.name.startswith("literal") and case.name.endswith("then-close"):
            raw.close()
            raw = Raw(port, tls)
            _login(raw, user, password)
            answers.append(raw.step(c("zz STATUS INBOX (MESSAGES)", "OK",
                                      untagged=(r"\* STATUS INBOX \(MESSAGES 3\)",))))
        return answers
    except (TimeoutError, OSError) as exc:
        raise AssertionError(f"{case.name} on port {port}: {exc}") from exc
    finally:
        raw.close()


def wrong_answers(case: Case, answers: list[tuple[str, list[str]]]) -> list[str]:
    steps = list(case.steps)
    if case.usable:
        steps.append(c("zz NOOP", "OK"))
    if case.name.startswith("literal") and case.name.endswith("then-close"):
        steps.append(c("zz STATUS INBOX (MESSAGES)", "OK", untagged=(r"\* STATUS INBOX \(MESSAGES 3\)",)))
    wrong = []
    for step, (last, untagged) in zip(steps, answers):
        if not step.until:
            continue
        shown = f"{case.name}: {step.send[:60]!r} -> {last!r} {untagged[:6]!r}"
        if not re.match(step.expect, last):
            wrong.append(f"{shown}\n   expected {step.expect!r}")
        untagged = [u.replace('"', "") for u in untagged]    # patterns are written without quotes
        for pattern in step.untagged:
            if not any(re.match(pattern, u) for u in untagged):
                wrong.append(f"{shown}\n   missing untagged {pattern!r}")
        for pattern in step.absent:
            if any(re.search(pattern, u) for u in untagged):
                wrong.append(f"{shown}\n   unexpected untagged {pattern!r}")
    return wrong


def verdict(last: str) -> str:
    """OK/NO/BAD and the response code, or '+' / 'EOF'."""
    m = re.match(r"(OK|NO|BAD|BYE)( \[[A-Z0-9-]+)?", last)
    return m.group(0) + ("]" if m.group(2) else "") if m else last[:10]


@pytest.fixture
async def colony_imap(world, tmp_path):
    """A mail store with ``imap_direct_login``; every account of DOMAIN logs in with PASSWORD."""
    secret = tmp_path / "cluster.secret"
    handoff.ensure_secret(secret)
    await world.domain()
    accounts = [f"cmd{n}@{DOMAIN}" for n in range(2 * len(CASES + PREAUTH_CASES))]
    for a, case in zip(accounts, (CASES + PREAUTH_CASES) * 2):
        await world.account(a, **case.extra)

    async def answer(msg):
        from colony.contracts.auth import AuthCheckReply, AuthCheckRequest, AuthFailure
        req = AuthCheckRequest.from_bytes(msg.data)
        if req.user.lower() in accounts and req.password == PASSWORD:
            reply = AuthCheckReply.granted(req.user.lower(), DOMAIN, {})
        else:
            reply = AuthCheckReply.refused(AuthFailure.INVALID)
        await msg.respond(reply.to_bytes())

    from colony.bus import names
    sub = await world.nc.subscribe(names.AUTH_CHECK, cb=answer)
    world.start("mailstore-1", COLONY_IMAP_DIRECT_LOGIN="true", COLONY_CLUSTER_SECRET_FILE=str(secret),
                COLONY_OUTBOUND_SMTP_PORT="25")
    view = await world.cluster.wait_state("mailstore-1", "READY", timeout=60)
    _host, _, port = view.addresses["imap-direct"].rpartition(":")
    yield int(port), accounts, world, secret
    await sub.unsubscribe()


async def _table(port: int, accounts: list[str], tls: ssl.SSLContext | None = None) -> list[str]:
    assert len(accounts) >= len(CASES + PREAUTH_CASES)
    wrong = []
    for case, user in zip(CASES + PREAUTH_CASES, accounts):
        answers = await asyncio.to_thread(run_case, port, user, PASSWORD, case, tls)
        if os.environ.get("IMAPCMD_SHOW"):
            print(case.name, answers)
        wrong += wrong_answers(case, answers)
    return wrong


async def test_command_table(colony_imap):
    port, accounts, _world, _secret = colony_imap
    wrong = await _table(port, accounts)
    assert not wrong, f"{len(wrong)} answers are not the RFC's:\n" + "\n".join(wrong)


async def test_command_table_through_the_edge(colony_imap, tmp_path):
    """The same table through an edge's IMAPS: before login the edge's own front answers
    (``preauth``), after it the store's answers cross the edge's splice."""
    _port, accounts, world, secret = colony_imap
    async with _edge_imaps(world, secret, tmp_path) as (imaps_port, client):
        wrong = await _table(imaps_port, accounts[len(CASES) + len(PREAUTH_CASES):], client)
    assert not wrong, f"{len(wrong)} answers are not the RFC's:\n" + "\n".join(wrong)


class _Dovecot(Dovecot):
    """bench's Dovecot with Colony's hierarchy delimiter ("/": Maildir++ would make it ".")
    and the quota plugin (GETQUOTAROOT), so the two answer the same questions."""

    def config(self) -> str:
        return super().config() + """
namespace inbox {
  inbox = yes
  separator = /
}
mail_plugins = $mail_plugins quota
protocol imap {
  mail_plugins = $mail_plugins imap_quota
}
plugin {
  quota = maildir:User quota
  quota_rule = *:storage=1G
}
"""


# Where Dovecot 2.3 answers otherwise, and why Colony's answer stands: (case, step index) -> why.
_NONEXISTENT = "Colony adds RFC 5530 §3's [NONEXISTENT] to a NO for a mailbox that is not there; Dovecot a bare NO"
DOVECOT_DIFFERS: dict[tuple[str, int], str] = {
    ("select-two-arguments", 0):
        "RFC 9051 §9 select = \"SELECT\" SP mailbox [select-params]; a second atom is a syntax error (BAD); "
        "Dovecot ignores it",
    ("noop-with-argument", 0): "RFC 9051 §9 command-any: NOOP takes no argument (BAD); Dovecot ignores it",
    ("store-no-flags", 1): "RFC 9051 §9 store-att-flags needs SP and flags after FLAGS (BAD); Dovecot says OK",
    ("enable-no-argument", 0): "RFC 5161 §4 enable = \"ENABLE\" 1*(SP capability): BAD; Dovecot says OK",
    ("create-wildcard", 0):
        "RFC 9051 §9: '*' is a list-wildcard, an atom-special: an unquoted Bad*Name is no astring (BAD); "
        "Dovecot creates it",
    ("literal-over-limit", 0):
        "RFC 9051 §7.1 / RFC 7889 TOOBIG: Colony refuses a 1 GB literal before the client sends it; "
        "Dovecot asks for it (and would refuse it later)",
    ("rename-inbox", 1):
        "RFC 9051 §6.3.6: renaming INBOX is permitted (its messages move); Dovecot's Maildir does not support it",
    ("rename-inbox", 3): "follows from the RENAME above: in Dovecot Old was never made",
    ("delete-inbox", 0): "both NO; Colony adds RFC 5530's [CANNOT]",
    ("delete-with-children", 1):
        "RFC 9051 §6.3.4: CREATE SHOULD create the superior names, so P2 exists in Colony and is "
        "deleted to \\Noselect (§6.3.5); Dovecot's Maildir++ leaves P2 nonexistent",
    ("delete-with-children", 3): _NONEXISTENT,
    ("status-selected", 1):
        "both OK; Dovecot adds RFC 5530 [CLIENTBUG] (RFC 9051 §6.3.11: a client SHOULD NOT STATUS the "
        "selected mailbox); the code is optional",
    ("status-missing", 0): _NONEXISTENT,
    ("select-missing-deselects", 1): _NONEXISTENT,
    ("select-missing-closed", 2): _NONEXISTENT,
    ("examine-missing-qresync", 2): _NONEXISTENT,
    ("examine-then-store", 1):
        "RFC 9051 §6.3.3: no change to the mailbox in EXAMINE; Colony refuses the STORE (NO), Dovecot "
        "ignores it with OK: the RFC names neither, and a NO tells the client nothing was stored",
    ("examine-then-store", 2): "as the STORE: EXPUNGE in a read-only mailbox removes nothing; Colony says so with NO",
    ("getquotaroot-missing", 0):
        "RFC 9208 §4.3.2: GETQUOTAROOT of a mailbox that does not exist is NO; Dovecot answers a root",
    ("getquota-missing-root", 0): "both NO; Colony adds [NONEXISTENT]",
    ("setquota", 0): "both NO; Colony adds RFC 5530 [NOPERM]",
    ("utf8-accept-create", 1):
        "Dovecot 2.3 does not advertise UTF8=ACCEPT, so its ENABLE enables nothing and raw UTF-8 is BAD "
        "there; Colony takes a UTF-8 name after the ENABLE (RFC 6855 §3)",
    ("utf8-before-enable-8bit", 0):
        "NOT FIXED, both refuse: RFC 3501 §9's ATOM-CHAR is 7-bit, so Dovecot's BAD is the grammar's "
        "word; Colony reads the name and refuses it NO [CANNOT] (not modified UTF-7)",
    ("append-recent-flag", 0):
        "RFC 3501 §9: \\Recent is a syntactically valid flag-extension; §2.3.2 says the client cannot "
        "alter it: Colony stores the message without it, Dovecot refuses the APPEND BAD; both defensible",
    ("rename-under-itself", 1): "both NO; Colony adds [CANNOT]",
    ("delete-selected", 3):
        "RFC 2180 §3.1 leaves a deleted selected mailbox to the server: Dovecot ends the session "
        "(BYE), Colony keeps it (the mailbox is gone, the session stays usable)",
    ("delete-selected", 4): "as above",
    ("store-bad-keyword", 1):
        "RFC 9051 §9: 'a]b' is no flag-keyword (']' is not an ATOM-CHAR), a syntax error: BAD; Dovecot "
        "reads it and refuses it NO [CANNOT]",
    ("expunge-argument", 1): "RFC 9051 §9: EXPUNGE takes no argument (BAD); Dovecot ignores it",
    ("expunge-argument", 2): "RFC 9051 §9: CLOSE takes no argument (BAD); Dovecot ignores it",
    ("myrights", 0): "the private Dovecot runs without its acl plugin, so MYRIGHTS is unknown there",
    ("id-odd-list", 0):
        "RFC 2971 §4: id-params-list is pairs of string SP nstring; an odd list is a syntax error (BAD); "
        "Dovecot ignores it",
    ("append-over-quota", 0): "the private Dovecot gives every user 1 GB; Colony's account here has 1000 octets",
    ("pre-id-odd-list", 0): "RFC 2971 §4: a field without its value is a syntax error (BAD); Dovecot ignores it",
    ("pre-id-odd-list", 1): "RFC 2971 §4: ID needs its argument, NIL or a list (BAD); Dovecot ignores it",
    ("pre-authenticate-empty-response", 1):
        "both fail the exchange (RFC 9051 §6.2.2): Colony BAD (the response is no PLAIN message), "
        "Dovecot NO [AUTHENTICATIONFAILED]",
    ("deleted-while-selected", 4):
        "RFC 2180 §3.1 leaves it to the server: after DELETE of the selected mailbox Dovecot ends the "
        "session (BYE), Colony deselects it (commands of the selected state are BAD, the session goes on)",
    ("deleted-while-selected", 5): "as above",
    ("deleted-while-selected", 6): "as above",
    ("deleted-while-selected", 7): "as above",
    ("renamed-while-selected", 3):
        "RFC 2180 §3.1: Dovecot ends the session when the selected mailbox is renamed; Colony's session "
        "keeps the mailbox under its new name",
    ("renamed-while-selected", 4): "as above",
    ("renamed-while-selected", 5): "as above",
    ("examine-move-copy", 2):
        "RFC 9051 §6.3.3: no change to the permanent state of an EXAMINEd mailbox is permitted, and MOVE "
        "expunges from it (RFC 6851 §3.3); Dovecot 2.3 moves the message out anyway",
    ("examine-move-copy", 4): "as examine-then-store: Colony refuses UID EXPUNGE read-only (NO), Dovecot says OK",
    ("examine-move-copy", 5): "follows from Dovecot's MOVE above (and its optional [CLIENTBUG])",
    ("pre-enable", 0):
        "RFC 5161 §3.1 / RFC 9051 §6.3.1: ENABLE is valid only in the authenticated state, so before "
        "login it is BAD; Dovecot answers OK and enables nothing",
    ("pre-capability-argument", 0): "RFC 9051 §9 command-any: CAPABILITY takes no argument (BAD); Dovecot ignores it",
    ("pre-authenticate-unknown", 0): "both NO; Dovecot adds [ALERT]",
    ("pre-authenticate-bad-base64", 1):
        "RFC 9051 §6.2.2: a response that cannot be decoded fails the exchange: Colony answers BAD "
        "(arguments invalid, exchange cancelled), Dovecot NO; the RFC's list of results allows both",
}


async def test_command_table_against_dovecot(colony_imap, tmp_path):
    need_tool("dovecot", "dovecot-core")
    need_tool("/usr/lib/dovecot/imap", "dovecot-imapd")          # and its imap_quota plugin
    need_tool("/usr/lib/dovecot/lmtp", "dovecot-lmtpd")          # bench/peers.py's instance listens for LMTP too
    if os.geteuid() != 0:
        pytest.skip("Dovecot is started as root and drops to its own users (as bench/peers.py runs it)")
    port, accounts, _world, _secret = colony_imap
    lmtp_port, imap_port = free_ports(2)
    dovecot = _Dovecot(tmp_path, lmtp_port, imap_port)
    await asyncio.to_thread(dovecot.start)
    unjudged = []
    try:
        for n, (case, user) in enumerate(zip(CASES + PREAUTH_CASES, accounts)):
            ours = await asyncio.to_thread(run_case, port, user, PASSWORD, case)
            theirs = await asyncio.to_thread(run_case, imap_port, f"cmd{n}@example.org", dovecot.password, case)
            for i, ((a, ua), (b, ub)) in enumerate(zip(ours, theirs)):
                if verdict(a) != verdict(b) and (case.name, i) not in DOVECOT_DIFFERS:
                    unjudged.append(f"{case.name}[{i}] {case.steps[i].send[:50] if i < len(case.steps) else 'after'!r}:\n"
                                    f"  colony  {a!r} {ua[:4]!r}\n  dovecot {b!r} {ub[:4]!r}")
    finally:
        await asyncio.to_thread(dovecot.stop)
    assert not unjudged, (f"{len(unjudged)} differences from Dovecot nobody has judged (DOVECOT_DIFFERS):\n"
                          + "\n".join(unjudged))
