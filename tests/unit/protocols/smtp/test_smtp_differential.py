"""Command sequences of a differential test against Postfix's smtpd, kept as a table.

Each case is a session: what the client writes, one write per step (one command, or a
message's text, or a BDAT chunk), and the replies the core must give to it (code and
enhanced status, as ``smtp_driver.codes`` reads them), whether the session is closed at
its end and which messages were accepted.  The answers are RFC 5321 (and errata), 1870,
2920, 3030, 3207, 3461, 4954, 6152, 6531, 2034 as read for each case, not Postfix's: where
Postfix chooses otherwise (a policy of its own that the RFCs allow), ``postfix`` says how
and why.

``test_edge_agrees`` replays them over a socket against the edge's asyncio shell (an MX with
a policy that takes every recipient and a stand-in for the bus): the same replies, octets
accepted and session state as the core's.

``test_postfix_agrees`` replays the MX's sessions over a socket against a private Postfix
(Debian's postfix, started on loopback as bench/smtp_inbound.py starts it) and checks the
class of each reply (2, 3, 4, 5) and that the session is still usable (or closed) alike,
except where a case names Postfix's own policy.  Cases with a ``config`` of their own (the
submission listener, STARTTLS offered) need TLS or SASL that instance lacks: core only.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from colony.protocols.smtp import events as E, replies as R
from smtp_driver import Driver, codes
from tools import free_ports, need_tool

EHLO = (b"EHLO client.test\r\n", ["250"])
MAIL = (b"MAIL FROM:<a@remote.test>\r\n", ["250 2.1.0"])
RCPT = (b"RCPT TO:<b@example.com>\r\n", ["250 2.1.5"])
DATA = (b"DATA\r\n", ["354"])
TX = [EHLO, MAIL, RCPT]
QUEUED = ["250 2.0.0"]
NOOP = (b"NOOP\r\n", ["250 2.0.0"])   # the session is still usable

# The submission listener after STARTTLS (or on the implicit-TLS port): AUTH offered and required.
SUBMISSION = dict(auth_mechanisms=("PLAIN", "LOGIN"), auth_required=True, tls_available=True, tls_active=True)
AUTH_PLAIN = (b"AUTH PLAIN AHVzZXIAcHc=\r\n", ["235 2.7.0"])   # \0user\0pw
AUTH_OK = {E.Auth: R.AUTH_OK}

LONG_LOCAL = "l" * 65                                   # RFC 5321 §4.5.3.1.1: 64 octets
LONG_DOMAIN = ".".join(["d" * 63] * 4) + ".test"        # 261 octets: over §4.5.3.1.2's 255


@dataclass
class Case:
    id: str
    steps: list[tuple[bytes, list[str]]]
    closed: bool = False
    messages: list[bytes] = field(default_factory=list)
    # Where Postfix's answer differs in class, and why that is its policy, not a fault here:
    # {step index: "why"}: its replies from that step on are not compared (its state may
    # differ from then on), its session must still be usable at the end.
    postfix: dict = field(default_factory=dict)
    probe: bool = True   # end with a NOOP to Postfix to see the session usable (not inside DATA)
    config: dict = field(default_factory=dict)    # ServerConfig beyond the MX's (submission)
    answers: dict = field(default_factory=dict)   # the policy's answers beyond smtp_driver's


CASES = [
    # --- address syntax (RFC 5321 §4.1.2) ---------------------------------------------------
    Case("quoted-local-part-with-escapes",
         [EHLO, (b'MAIL FROM:<"a\\"b\\\\c d"@remote.test>\r\n', ["250 2.1.0"]),
          (b'RCPT TO:<"x y>z"@example.com>\r\n', ["250 2.1.5"]), NOOP]),
    Case("quoted-local-part-unterminated",
         [EHLO, (b'MAIL FROM:<"ab@remote.test>\r\n', ["501 5.5.4"]), NOOP]),
    Case("source-route-is-accepted-and-ignored",
         [EHLO, (b"MAIL FROM:<@a.test,@b.test:u@remote.test>\r\n", ["250 2.1.0"]),
          (b"RCPT TO:<@relay.test:b@example.com>\r\n", ["250 2.1.5"])]),
    Case("address-literal-ipv4",
         [EHLO, MAIL, (b"RCPT TO:<b@[192.0.2.1]>\r\n", ["250 2.1.5"])]),
    Case("address-literal-ipv6",
         [EHLO, MAIL, (b"RCPT TO:<b@[IPv6:2001:db8::1]>\r\n", ["250 2.1.5"])]),
    Case("address-literal-ipv4-out-of-range",
         [EHLO, MAIL, (b"RCPT TO:<b@[192.0.2.300]>\r\n", ["501 5.1.3"]), NOOP]),
    Case("address-literal-ipv6-malformed",
         [EHLO, MAIL, (b"RCPT TO:<b@[IPv6:2001:db8:::1:2:3:4:5:6]>\r\n", ["501 5.1.3"]), NOOP]),
    Case("null-reverse-path",
         [EHLO, (b"MAIL FROM:<>\r\n", ["250 2.1.0"]), RCPT]),
    Case("null-forward-path",
         [EHLO, MAIL, (b"RCPT TO:<>\r\n", ["501 5.1.3"]), NOOP]),
    Case("postmaster-without-domain",
         [EHLO, MAIL, (b"RCPT TO:<Postmaster>\r\n", ["250 2.1.5"])],
         postfix={2: "postfix: a bare Postmaster goes to its local domain, and this private instance has none"}),
    Case("postmaster-without-domain-as-sender",
         [EHLO, (b"MAIL FROM:<postmaster>\r\n", ["501 5.1.7"]), NOOP],
         postfix={1: "Postfix appends its own domain to an unqualified sender (append_at_myorigin)"}),
    Case("domain-with-trailing-dot",
         [EHLO, MAIL, (b"RCPT TO:<b@example.com.>\r\n", ["501 5.1.3"]), NOOP],
         postfix={2: "Postfix strips the trailing dot (RFC 5321's Domain has none: a syntax error)"}),
    Case("local-part-over-64-octets",
         # §4.5.3.1: limits a server must accept at least; accepting more is allowed.
         [EHLO, (f"MAIL FROM:<{LONG_LOCAL}@remote.test>\r\n".encode(), ["250 2.1.0"])]),
    Case("domain-over-255-octets",
         [EHLO, MAIL, (f"RCPT TO:<b@{LONG_DOMAIN}>\r\n".encode(), ["501 5.1.3"]), NOOP]),
    Case("label-over-63-octets",
         [EHLO, MAIL, (f"RCPT TO:<b@{'x' * 64}.test>\r\n".encode(), ["501 5.1.3"]), NOOP]),
    Case("path-without-angle-brackets",
         [EHLO, (b"MAIL FROM:a@remote.test\r\n", ["501 5.5.4"]), NOOP],
         postfix={1: "strict_rfc821_envelopes=no: Postfix takes an address without <>"}),
    Case("space-after-colon-tolerated",
         [EHLO, (b"MAIL FROM: <a@remote.test>\r\n", ["250 2.1.0"])]),
    Case("non-ascii-address-without-smtputf8",
         # RFC 6531 §3.4: a non-ASCII envelope only with SMTPUTF8 (553 5.6.7: RFC 6531 §3.7.4.1).
         [EHLO, ("MAIL FROM:<j\u00f6rg@remote.test>\r\n".encode(), ["553 5.6.7"]), NOOP],
         postfix={1: "Postfix takes UTF-8 without SMTPUTF8 and decides at delivery"}),
    Case("non-ascii-address-with-smtputf8",
         [EHLO, ("MAIL FROM:<j\u00f6rg@remote.test> SMTPUTF8\r\n".encode(), ["250 2.1.0"]),
          ("RCPT TO:<\u00fc@example.com>\r\n".encode(), ["250 2.1.5"])]),

    # --- HELO / EHLO (RFC 5321 §4.1.1.1) ------------------------------------------------------
    # RFC 2034 §4 exempts replies to HELO/EHLO from enhanced codes (Postfix gives none): a
    # code there is allowed all the same.
    Case("ehlo-without-argument", [(b"EHLO\r\n", ["501 5.5.4"]), EHLO, MAIL]),
    Case("helo-without-argument", [(b"HELO\r\n", ["501 5.5.4"]), EHLO]),
    Case("ehlo-bad-address-literal", [(b"EHLO [192.0.2.256]\r\n", ["501 5.5.4"]), EHLO],
         postfix={0: "smtpd_helo_restrictions is empty by default: Postfix takes any HELO name"}),
    Case("ehlo-address-literal", [(b"EHLO [192.0.2.7]\r\n", ["250"]), MAIL]),
    Case("ehlo-ipv6-literal", [(b"EHLO [IPv6:2001:db8::7]\r\n", ["250"]), MAIL]),
    Case("ehlo-junk", [(b"EHLO !!bad!!\r\n", ["501 5.5.4"]), EHLO],
         postfix={0: "smtpd_helo_restrictions is empty by default: Postfix takes any HELO name"}),
    Case("helo-then-transaction", [(b"HELO client.test\r\n", ["250"]), MAIL, RCPT]),

    # --- command order (RFC 5321 §3.3, §4.1.4) ----------------------------------------------
    Case("mail-before-helo", [MAIL[:1] + (["503 5.5.1"],), EHLO, MAIL],
         postfix={0: "Postfix accepts MAIL without HELO (smtpd_helo_required=no)"}),
    Case("rcpt-before-mail", [EHLO, (RCPT[0], ["503 5.5.1"]), MAIL, RCPT]),
    Case("data-before-mail", [EHLO, (b"DATA\r\n", ["503 5.5.1"]), NOOP]),
    Case("data-before-rcpt", [EHLO, MAIL, (b"DATA\r\n", ["554 5.5.1"]), RCPT]),
    Case("mail-twice", [EHLO, MAIL, (MAIL[0], ["503 5.5.1"]), RCPT]),
    Case("rset-mid-transaction", [EHLO, MAIL, RCPT, (b"RSET\r\n", ["250 2.0.0"]),
                                  (b"DATA\r\n", ["503 5.5.1"]), MAIL]),
    Case("helo-after-ehlo-resets", [EHLO, MAIL, RCPT, (b"HELO client.test\r\n", ["250"]),
                                    (RCPT[0], ["503 5.5.1"]), MAIL]),
    Case("ehlo-twice-resets", [EHLO, MAIL, EHLO, (RCPT[0], ["503 5.5.1"]), MAIL]),
    Case("noop-rset-vrfy-help-before-helo",   # RFC 5321 §4.1.4: at any time
         [NOOP, (b"RSET\r\n", ["250 2.0.0"]), (b"VRFY b@example.com\r\n", ["252 2.1.5"]),
          (b"HELP\r\n", ["214 2.0.0"]), EHLO],
         postfix={2: "Postfix's VRFY answers 252 only after HELO; it has no HELP (500)"}),

    # --- MAIL/RCPT parameters (RFC 1869, 1870, 3461, 6152, 6531) ------------------------------
    Case("unknown-parameter", [EHLO, (b"MAIL FROM:<a@remote.test> X-FOO=1\r\n", ["555 5.5.4"]), MAIL]),
    Case("unknown-rcpt-parameter", [EHLO, MAIL, (b"RCPT TO:<b@example.com> X-FOO\r\n", ["555 5.5.4"]), RCPT]),
    Case("duplicate-parameter",
         [EHLO, (b"MAIL FROM:<a@remote.test> SIZE=1 SIZE=2\r\n", ["501 5.5.4"]), MAIL],
         postfix={1: "Postfix takes the last of a repeated parameter"}),
    Case("size-empty", [EHLO, (b"MAIL FROM:<a@remote.test> SIZE=\r\n", ["501 5.5.4"]), MAIL]),
    Case("size-not-a-number", [EHLO, (b"MAIL FROM:<a@remote.test> SIZE=12k\r\n", ["501 5.5.4"]), MAIL]),
    Case("size-negative", [EHLO, (b"MAIL FROM:<a@remote.test> SIZE=-1\r\n", ["501 5.5.4"]), MAIL]),
    Case("size-too-big", [EHLO, (b"MAIL FROM:<a@remote.test> SIZE=999999999999\r\n", ["552 5.3.4"]), MAIL],
         postfix={2: "Postfix keeps the refused MAIL's SIZE for the next MAIL without one (552 again)"}),
    Case("size-without-value", [EHLO, (b"MAIL FROM:<a@remote.test> SIZE\r\n", ["501 5.5.4"]), MAIL],
         postfix={1: "Postfix ignores a SIZE without a value"}),
    Case("body-8bitmime", [EHLO, (b"MAIL FROM:<a@remote.test> BODY=8BITMIME\r\n", ["250 2.1.0"])]),
    Case("body-junk", [EHLO, (b"MAIL FROM:<a@remote.test> BODY=9BIT\r\n", ["501 5.5.4"]), MAIL]),
    Case("body-lowercase", [EHLO, (b"MAIL FROM:<a@remote.test> body=8bitmime\r\n", ["250 2.1.0"])]),
    Case("binarymime-then-data", [EHLO, (b"MAIL FROM:<a@remote.test> BODY=BINARYMIME\r\n", ["250 2.1.0"]),
                                  RCPT, (b"DATA\r\n", ["503 5.5.1"]), NOOP],
         postfix={1: "Postfix 3.7 does not offer BINARYMIME"}),
    Case("notify-never-with-success",
         [EHLO, MAIL, (b"RCPT TO:<b@example.com> NOTIFY=NEVER,SUCCESS\r\n", ["501 5.5.4"]), RCPT]),
    Case("notify-success-failure", [EHLO, MAIL, (b"RCPT TO:<b@example.com> NOTIFY=SUCCESS,FAILURE\r\n",
                                                 ["250 2.1.5"])]),
    Case("notify-unknown-word", [EHLO, MAIL, (b"RCPT TO:<b@example.com> NOTIFY=ALWAYS\r\n", ["501 5.5.4"]), RCPT]),
    Case("orcpt-without-type", [EHLO, MAIL, (b"RCPT TO:<b@example.com> ORCPT=b@example.com\r\n",
                                             ["501 5.5.4"]), RCPT]),
    Case("orcpt-rfc822", [EHLO, MAIL, (b"RCPT TO:<b@example.com> ORCPT=rfc822;b+40example.com\r\n",
                                       ["250 2.1.5"])]),
    Case("envid-too-long", [EHLO, (b"MAIL FROM:<a@remote.test> ENVID=" + b"x" * 101 + b"\r\n", ["501 5.5.4"]), MAIL],
         postfix={1: "Postfix does not check the length of ENVID"}),
    Case("envid-100", [EHLO, (b"MAIL FROM:<a@remote.test> ENVID=" + b"x" * 100 + b"\r\n", ["250 2.1.0"])]),
    Case("xtext-bad-hex", [EHLO, (b"MAIL FROM:<a@remote.test> ENVID=a+zz\r\n", ["501 5.5.4"]), MAIL]),
    Case("xtext-plus-at-end", [EHLO, (b"MAIL FROM:<a@remote.test> ENVID=a+\r\n", ["501 5.5.4"]), MAIL]),
    Case("ret-junk", [EHLO, (b"MAIL FROM:<a@remote.test> RET=ALL\r\n", ["501 5.5.4"]), MAIL]),
    Case("smtputf8-with-ascii-address", [EHLO, (b"MAIL FROM:<a@remote.test> SMTPUTF8\r\n", ["250 2.1.0"])]),
    Case("smtputf8-with-value", [EHLO, (b"MAIL FROM:<a@remote.test> SMTPUTF8=yes\r\n", ["501 5.5.4"]), MAIL],
         postfix={1: "Postfix ignores a value given to SMTPUTF8"}),
    Case("rcpt-with-smtputf8", [EHLO, MAIL, (b"RCPT TO:<b@example.com> SMTPUTF8\r\n", ["555 5.5.4"]), RCPT]),

    # --- DATA (RFC 5321 §4.1.1.4, §4.5.2) -----------------------------------------------------
    Case("dot-stuffing", [*TX, DATA, (b"Subject: s\r\n\r\n..one\r\n.two\r\n...\r\n.\r\n", QUEUED)],
         messages=[b"Subject: s\r\n\r\n.one\r\ntwo\r\n..\r\n"]),
    Case("empty-message", [*TX, DATA, (b".\r\n", QUEUED)], messages=[b""]),
    Case("no-header-body-separator", [*TX, DATA, (b"just text\r\n.\r\n", QUEUED)],
         messages=[b"just text\r\n"]),
    Case("space-dot-is-not-the-end", [*TX, DATA, (b"a\r\n .\r\n", []), (b".\r\n", QUEUED)],
         messages=[b"a\r\n .\r\n"]),
    Case("nul-in-text", [*TX, DATA, (b"a\x00b\r\n.\r\n", QUEUED)], messages=[b"a\x00b\r\n"]),
    Case("line-of-1000-octets", [*TX, DATA, (b"x" * 998 + b"\r\n.\r\n", QUEUED)],
         messages=[b"x" * 998 + b"\r\n"]),
    Case("stuffed-line-of-1000-octets",
         # §4.5.3.1.6: 1000 octets "not counting the leading dot duplicated for transparency".
         [*TX, DATA, (b"." + b"." + b"y" * 997 + b"\r\n.\r\n", QUEUED)],
         messages=[b"." + b"y" * 997 + b"\r\n"]),
    Case("line-over-1000-octets", [*TX, DATA, (b"x" * 999 + b"\r\n.\r\n", ["552 5.5.2"]), MAIL],
         postfix={4: "Postfix splits long lines and takes the message"}),
    Case("data-with-argument", [*TX, (b"DATA now\r\n", ["501 5.5.4"]), DATA, (b"x\r\n.\r\n", QUEUED)],
         messages=[b"x\r\n"]),
    Case("quit-inside-data-is-text", [*TX, DATA, (b"Subject: x\r\n\r\nQUIT\r\n", [])], probe=False),
    Case("rset-inside-data-is-text", [*TX, DATA, (b"RSET\r\n.\r\n", QUEUED)], messages=[b"RSET\r\n"]),

    # --- BDAT (RFC 3030) ----------------------------------------------------------------------
    Case("bdat-0-last", [*TX, (b"BDAT 0 LAST\r\n", QUEUED)], messages=[b""]),
    Case("bdat-chunks", [*TX, (b"BDAT 3\r\nabc", ["250 2.0.0"]), (b"BDAT 2 LAST\r\nde", QUEUED)],
         messages=[b"abcde"]),
    Case("bdat-pipelined-chunks", [*TX, (b"BDAT 3\r\nabcBDAT 0\r\nBDAT 2 LAST\r\nde",
                                         ["250 2.0.0", "250 2.0.0", *QUEUED])],
         messages=[b"abcde"],
         postfix={3: "Postfix refuses an empty chunk without LAST (RFC 3030's chunk-size may be 0)"}),
    Case("bdat-pipelined-with-commands", [*TX, (b"BDAT 3\r\nabcBDAT 2 LAST\r\ndeRSET\r\n",
                                                ["250 2.0.0", *QUEUED, "250 2.0.0"]), MAIL],
         messages=[b"abcde"]),
    Case("bdat-last-lowercase", [*TX, (b"bdat 1 last\r\nz", QUEUED)], messages=[b"z"]),
    Case("bdat-bare-lf-and-dot-are-data", [*TX, (b"BDAT 7 LAST\r\na\n.\r\n.\n", QUEUED)],
         messages=[b"a\n.\r\n.\n"]),
    Case("bdat-before-mail", [EHLO, (b"BDAT 3 LAST\r\nabc", ["503 5.5.1"]), MAIL]),
    Case("bdat-before-rcpt", [EHLO, MAIL, (b"BDAT 3 LAST\r\nabc", ["554 5.5.1"]), NOOP]),
    Case("bdat-after-data", [*TX, DATA, (b"x\r\n.\r\n", QUEUED), (b"BDAT 3 LAST\r\nabc", ["503 5.5.1"]), MAIL],
         messages=[b"x\r\n"]),
    Case("data-after-bdat", [*TX, (b"BDAT 3\r\nabc", ["250 2.0.0"]), (b"DATA\r\n", ["503 5.5.1"]),
                             (b"BDAT 0 LAST\r\n", QUEUED)], messages=[b"abc"]),
    # Without a valid size the chunk's end is unknown: nothing after it can be trusted.
    Case("bdat-bad-size", [*TX, (b"BDAT x\r\n", ["501 5.5.4"])], closed=True),
    Case("bdat-negative-size", [*TX, (b"BDAT -1 LAST\r\n", ["501 5.5.4"])], closed=True),
    Case("bdat-extra-argument", [*TX, (b"BDAT 1 LAST NOW\r\nx", ["501 5.5.4"])], closed=True),
    Case("rcpt-between-chunks", [*TX, (b"BDAT 3\r\nabc", ["250 2.0.0"]), (RCPT[0], ["503 5.5.1"]),
                                 (b"BDAT 0 LAST\r\n", QUEUED)], messages=[b"abc"]),
    Case("mail-between-chunks", [*TX, (b"BDAT 3\r\nabc", ["250 2.0.0"]), (MAIL[0], ["503 5.5.1"]),
                                 (b"BDAT 1 LAST\r\nd", QUEUED)], messages=[b"abcd"]),
    Case("rset-after-bdat-chunk", [*TX, (b"BDAT 3\r\nabc", ["250 2.0.0"]), (b"RSET\r\n", ["250 2.0.0"]),
                                   (b"BDAT 1 LAST\r\nx", ["503 5.5.1"]), MAIL]),

    # --- the other commands (RFC 5321 §4.1.1.5-10) --------------------------------------------
    Case("noop-with-argument", [EHLO, (b"NOOP whatever\r\n", ["250 2.0.0"])]),
    Case("help-with-argument", [EHLO, (b"HELP MAIL\r\n", ["214 2.0.0"]), NOOP],
         postfix={1: "Postfix has no HELP (500; RFC 5321 §4.5.1 does not require it)"}),
    Case("vrfy-without-argument", [EHLO, (b"VRFY\r\n", ["501 5.5.4"]), NOOP]),
    Case("vrfy-user", [EHLO, (b"VRFY b@example.com\r\n", ["252 2.1.5"])]),
    Case("expn", [EHLO, (b"EXPN list\r\n", ["502 5.5.1"]), NOOP]),
    Case("rset-with-argument", [EHLO, (b"RSET now\r\n", ["501 5.5.4"]), NOOP],
         postfix={1: "Postfix ignores RSET's argument"}),
    Case("quit-with-argument", [EHLO, (b"QUIT now\r\n", ["221 2.0.0"])], closed=True),
    Case("unknown-verb", [EHLO, (b"FROB\r\n", ["500 5.5.1"]), NOOP]),
    Case("auth-on-the-mx", [EHLO, (b"AUTH PLAIN\r\n", ["502 5.5.1"]), NOOP]),
    Case("starttls-not-offered", [EHLO, (b"STARTTLS\r\n", ["454 4.7.0"]), NOOP],
         postfix={1: "Postfix answers 502 to a STARTTLS it did not offer"}),

    # --- lexical: case, spaces, line length (RFC 5321 §2.4, §4.5.3.1.4) -----------------------
    Case("lowercase-verbs", [(b"ehlo client.test\r\n", ["250"]), (b"mail from:<a@remote.test>\r\n", ["250 2.1.0"]),
                             (b"rcpt to:<b@example.com>\r\n", ["250 2.1.5"]), (b"data\r\n", ["354"]),
                             (b"x\r\n.\r\n", QUEUED)], messages=[b"x\r\n"]),
    Case("mixed-case-verbs", [(b"EhLo client.test\r\n", ["250"]), (b"MaIl FrOm:<a@remote.test>\r\n", ["250 2.1.0"]),
                              (b"RcPt To:<b@example.com>\r\n", ["250 2.1.5"])]),
    Case("trailing-spaces", [(b"EHLO client.test \r\n", ["250"]), (b"MAIL FROM:<a@remote.test> \r\n", ["250 2.1.0"]),
                             (b"RCPT TO:<b@example.com>  \r\n", ["250 2.1.5"]), (b"DATA \r\n", ["354"]),
                             (b"x\r\n.\r\n", QUEUED), (b"RSET \r\n", ["250 2.0.0"]), (b"NOOP \r\n", ["250 2.0.0"])],
         messages=[b"x\r\n"]),
    Case("command-line-of-512-octets", [EHLO, (b"NOOP " + b"n" * 505 + b"\r\n", ["250 2.0.0"])]),
    Case("command-line-over-512-octets", [EHLO, (b"NOOP " + b"n" * 506 + b"\r\n", ["500 5.5.2"]), NOOP],
         postfix={1: "Postfix reads lines up to line_length_limit (2048)"}),
    Case("command-line-over-512-octets-then-more", [EHLO, (b"NOOP " + b"n" * 700 + b"\r\nNOOP\r\n",
                                                          ["500 5.5.2", "250 2.0.0"])],
         postfix={1: "Postfix reads lines up to line_length_limit (2048)"}),
    Case("command-line-over-512-octets-in-pieces", [EHLO, (b"NOOP " + b"n" * 300, []), (b"n" * 300, ["500 5.5.2"]),
                                                   (b"n\r\nNOOP\r\n", ["250 2.0.0"])],
         postfix={2: "Postfix reads lines up to line_length_limit (2048)"}),
    Case("quit", [EHLO, (b"QUIT\r\n", ["221 2.0.0"])], closed=True),
    Case("quit-with-more-after-it", [EHLO, (b"QUIT\r\nNOOP\r\n", ["221 2.0.0"])], closed=True),

    # --- STARTTLS (RFC 3207) where TLS is offered: the core only (the private Postfix has none)
    Case("starttls-before-ehlo", [(b"STARTTLS\r\n", ["503 5.5.1"]), EHLO], config={"tls_available": True}),
    Case("starttls-with-argument", [EHLO, (b"STARTTLS now\r\n", ["501 5.5.4"]), NOOP],
         config={"tls_available": True}),
    Case("starttls-when-tls-is-active", [EHLO, (b"STARTTLS\r\n", ["503 5.5.1"]), NOOP],
         config={"tls_available": True, "tls_active": True}),
    Case("starttls-mid-transaction", [EHLO, MAIL, (b"STARTTLS\r\nRCPT TO:<b@example.com>\r\n", ["220 2.0.0"])],
         # RFC 3207 §4.2 / CVE-2011-0411: what follows STARTTLS before the handshake is dropped
         config={"tls_available": True}),
    Case("two-spaces-after-the-verb", [EHLO, (b"MAIL  FROM:<a@remote.test>\r\n", ["501 5.5.4"]), MAIL],
         postfix={1: "Postfix splits commands at any run of white space (RFC 5321: one SP)"}),
    Case("empty-line", [EHLO, (b"\r\n", ["500 5.5.1"]), NOOP]),
    Case("tab-is-not-a-parameter-separator",
         [EHLO, (b"MAIL FROM:<a@remote.test> SIZE=1\tBODY=8BITMIME\r\n", ["501 5.5.4"]), MAIL],
         postfix={1: "Postfix splits parameters at any white space"}),
    Case("dot-string-with-empty-atom",   # RFC 5321 §4.1.2: Dot-string = Atom *("." Atom)
         [EHLO, (b"MAIL FROM:<a..b@remote.test>\r\n", ["501 5.1.7"]), (b"MAIL FROM:<.a@remote.test>\r\n", ["501 5.1.7"]),
          (b"MAIL FROM:<a.@remote.test>\r\n", ["501 5.1.7"]), MAIL],
         postfix={1: "Postfix takes such local parts (they exist in the wild)"}),
    Case("empty-quoted-local-part", [EHLO, (b'MAIL FROM:<""@remote.test>\r\n', ["250 2.1.0"])]),
    Case("pipelined-transaction-with-a-refused-recipient",
         [EHLO, (b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n",
                 ["250 2.1.0", "501 5.1.3", "250 2.1.5", "354"]), (b"x\r\n.\r\n", QUEUED)],
         messages=[b"x\r\n"]),
    Case("commands-pipelined-after-the-end-of-data",
         [*TX, DATA, (b"a\r\n.\r\nMAIL FROM:<a@remote.test>\r\n", [*QUEUED, "250 2.1.0"])], messages=[b"a\r\n"]),

    # --- the submission listener (RFC 4954, RFC 6409) -----------------------------------------
    # Postfix here has neither TLS nor SASL: these run against the core only.
    Case("sub-mail-before-auth", [EHLO, (MAIL[0], ["530 5.7.0"]), AUTH_PLAIN, MAIL, RCPT],
         config=SUBMISSION, answers=AUTH_OK),
    Case("sub-auth-before-ehlo", [(AUTH_PLAIN[0], ["503 5.5.1"]), EHLO, AUTH_PLAIN],
         config=SUBMISSION, answers=AUTH_OK),
    Case("sub-auth-unknown-mechanism", [EHLO, (b"AUTH CRAM-MD5\r\n", ["504 5.5.4"]), AUTH_PLAIN],
         config=SUBMISSION, answers=AUTH_OK),
    Case("sub-auth-cancelled", [EHLO, (b"AUTH PLAIN\r\n", ["334"]), (b"*\r\n", ["501 5.0.0"]), AUTH_PLAIN],
         config=SUBMISSION, answers=AUTH_OK),
    Case("sub-auth-not-base64", [EHLO, (b"AUTH PLAIN !!!!\r\n", ["501 5.5.2"]), AUTH_PLAIN],
         config=SUBMISSION, answers=AUTH_OK),
    Case("sub-auth-empty-initial-response", [EHLO, (b"AUTH PLAIN =\r\n", ["501 5.5.2"]), AUTH_PLAIN],
         config=SUBMISSION, answers=AUTH_OK),
    Case("sub-auth-login", [EHLO, (b"AUTH LOGIN\r\n", ["334"]), (b"dXNlcg==\r\n", ["334"]),
                            (b"cHc=\r\n", ["235 2.7.0"]), MAIL], config=SUBMISSION, answers=AUTH_OK),
    Case("sub-auth-twice", [EHLO, AUTH_PLAIN, (AUTH_PLAIN[0], ["503 5.5.1"]), MAIL],
         config=SUBMISSION, answers=AUTH_OK),
    Case("sub-auth-failed", [EHLO, (AUTH_PLAIN[0], ["535 5.7.8"]), (MAIL[0], ["530 5.7.0"])],
         config=SUBMISSION, answers={E.Auth: R.AUTH_FAILED}),
    Case("sub-auth-in-the-clear", [EHLO, (AUTH_PLAIN[0], ["538 5.7.11"]), (MAIL[0], ["530 5.7.0"])],
         config={**SUBMISSION, "tls_active": False}, answers=AUTH_OK),
    Case("sub-auth-parameter-of-mail", [EHLO, AUTH_PLAIN, (b"MAIL FROM:<a@remote.test> AUTH=<>\r\n", ["250 2.1.0"])],
         config=SUBMISSION, answers=AUTH_OK),
    Case("sub-ehlo-keeps-authentication", [EHLO, AUTH_PLAIN, EHLO, MAIL], config=SUBMISSION, answers=AUTH_OK),
]


def run_core(case: Case) -> Driver:
    d = Driver(max_message_size=10 * 1024 * 1024, answers=case.answers, **case.config)
    for i, (data, expected) in enumerate(case.steps):
        assert codes(d.feed(data)) == expected, f"step {i}: {data[:60]!r}"
    return d


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_core(case):
    d = run_core(case)
    assert d.conn.closed == case.closed
    assert d.messages == case.messages


def test_quit_inside_data_stores_nothing():
    d = run_core(next(c for c in CASES if c.id == "quit-inside-data-is-text"))
    d.feed(b"")
    assert not d.messages and not d.of(E.DataComplete)
    assert d.of(E.MessageAborted) and d.conn.closed


@pytest.mark.parametrize("split", [1, 500, 999, 1000, 1001])
def test_a_stuffed_line_of_1000_octets_split_across_reads(split):
    # The transparency dot is not counted in the line's limit, whether the line arrives whole
    # (_take_lines) or its start waits for its end (_partial_line).
    d = run_core(Case("x", [*TX, DATA]))
    wire = b".." + b"y" * 997 + b"\r\n.\r\n"
    d.feed(wire[:split])
    assert codes(d.feed(wire[split:])) == QUEUED
    assert d.messages == [b"." + b"y" * 997 + b"\r\n"]


@pytest.mark.parametrize("split", [None, 1000])
def test_a_stuffed_line_of_1001_octets_fails_the_message(split):
    d = run_core(Case("x", [*TX, DATA]))
    wire = b".." + b"y" * 998 + b"\r\n.\r\n"
    if split:
        d.feed(wire[:split])
        wire = wire[split:]
    assert codes(d.feed(wire)) == ["552 5.5.2"] and not d.messages


@pytest.mark.parametrize("literal", ["[0.0.0.0]", "[255.255.255.255]", "[010.1.1.1]", "[IPv6:::1]",
                                     "[ipv6:2001:db8::1]", "[IPv6:::ffff:192.0.2.1]"])
def test_valid_address_literals(literal):
    d = run_core(Case("x", [EHLO, MAIL]))
    assert codes(d.feed(f"RCPT TO:<b@{literal}>\r\n".encode())) == ["250 2.1.5"]
    assert codes(d.feed(f"EHLO {literal}\r\n".encode())) == ["250"]


@pytest.mark.parametrize("literal", ["[256.1.1.1]", "[1.2.3]", "[1.2.3.4.5]", "[1..2.3]", "[1234.1.1.1]",
                                     "[IPv6:1::2::3]", "[IPv6:12345::1]", "[IPv6:1:2:3:4:5:6:7:8:9]",
                                     "[IPv6:::1.2.3.256]"])
def test_invalid_address_literals(literal):
    d = run_core(Case("x", [EHLO, MAIL]))
    assert codes(d.feed(f"RCPT TO:<b@{literal}>\r\n".encode())) == ["501 5.1.3"]
    assert codes(d.feed(f"EHLO {literal}\r\n".encode())) == ["501 5.5.4"]



# --- the same sessions against Postfix -------------------------------------------------------------

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "bench"))


@pytest.fixture(scope="module")
def postfix(tmp_path_factory):
    need_tool("postfix")
    if os.geteuid() != 0:
        pytest.skip("Postfix's daemons start as root and drop to the postfix user")
    from peers import Postfix

    smtp_port, sink_port = free_ports(2)
    # Every recipient is relayed (mynetworks) to a sink nobody listens on: accepted mail stays
    # queued.  No sleeping after errors: a differential run makes many on purpose.
    server = Postfix(tmp_path_factory.mktemp("postfix"), smtp_port=smtp_port, domain="example.com",
                     relay_to=f"127.0.0.1:{sink_port}",
                     extra="smtpd_error_sleep_time = 0\nsmtpd_soft_error_limit = 100\n"
                           "smtpd_hard_error_limit = 200\n")
    server.start()
    yield server
    server.stop()


class _Peer:
    """A raw socket to the peer: write a step, read the complete replies it gives."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.buf = b""
        self.eof = False
        assert self.replies(1)[0].startswith("220")

    def replies(self, count: int, quiet: float = 0.0, patience: float = 20.0) -> list[str]:
        """``count`` replies (first line's code and status), and any more that follow within
        ``quiet``.  A reply more than expected still shows: it comes before the next step's."""
        out: list[str] = []
        deadline = time.monotonic() + patience
        while not self.eof:
            while b"\r\n" in self.buf:
                line, _, self.buf = self.buf.partition(b"\r\n")
                if line[3:4] == b" ":
                    out.append(codes(line + b"\r\n")[0])
            wait = quiet if len(out) >= count else deadline - time.monotonic()
            if wait <= 0:
                break
            self.sock.settimeout(wait)
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, socket.timeout):
                break
            except ConnectionResetError:
                data = b""
            self.eof = not data
            self.buf += data
        return out

    def step(self, data: bytes, count: int, patience: float = 20.0) -> list[str]:
        try:
            self.sock.settimeout(20)   # replies() leaves a short one
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            self.eof = True
        return self.replies(count, patience=patience)


MX_CASES = [c for c in CASES if not c.config]


@pytest.mark.slow
@pytest.mark.parametrize("case", MX_CASES, ids=[c.id for c in MX_CASES])
def test_postfix_agrees(postfix, case):
    """Reply classes and the session's state match, where the case names no policy of Postfix's."""
    own_from = min(case.postfix, default=len(case.steps))
    peer = _Peer(postfix.smtp_port)
    try:
        for i, (data, expected) in enumerate(case.steps):
            # An extra reply shows before the next step's.  Where Postfix's own policy may
            # answer fewer, it is not waited for long.
            got = peer.step(data, len(expected), patience=20.0 if i < own_from else 1.0)
            if i < own_from:
                assert [c[0] for c in got] == [c[0] for c in expected], f"step {i}: {data[:60]!r}: {got}"
        if case.closed:
            assert peer.replies(0, quiet=5) == [] and peer.eof
        elif case.probe:
            assert peer.step(NOOP[0], 1) == ["250 2.0.0"]
    finally:
        peer.sock.close()


# --- the same sessions against the edge's shell -----------------------------------------------


class _TakeAll:
    """The edge's policy, taking every recipient, and its acceptor, keeping what it is given."""

    def __init__(self) -> None:
        from opentelemetry import trace

        self.messages: list[bytes] = []
        self.tracer = trace.get_tracer("test")   # the shell opens a span per message

    def policy(self):
        from colony.contracts.recipients import Mailbox
        from colony_edge.smtp_policy import ACCEPT, AcceptedRecipient, BasePolicy

        class Policy(BasePolicy):
            async def rcpt_to(self, session, rcpt):
                session.recipients.append(AcceptedRecipient(rcpt, (Mailbox(rcpt.address, "x.test", "local"),)))
                return ACCEPT
        return Policy()

    async def accept(self, session, message) -> str:
        self.messages.append(message.read_bytes())
        return f"id{len(self.messages)}"


@pytest.fixture(scope="module")
def edge_mx(tmp_path_factory):
    """The edge's SmtpServer on loopback, its loop in a thread of its own (the test talks to
    it with blocking sockets, as to Postfix)."""
    from prometheus_client import CollectorRegistry

    from colony.cluster.sessions import SessionTracker
    from colony_edge.acceptance import SmtpMetrics
    from colony_edge.smtp_server import SmtpServer, SmtpServerConfig

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    taker = _TakeAll()
    config = SmtpServerConfig(hostname="mx.test", spool_dir=tmp_path_factory.mktemp("spool"),
                              max_message_size=10 * 1024 * 1024, max_recipients=100, max_errors=20, timeout=60.0)

    async def start():
        server = SmtpServer(config, taker.policy(), taker, SmtpMetrics(CollectorRegistry()), SessionTracker())
        return await asyncio.start_server(server.handle, "127.0.0.1", 0)
    listener = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield listener.sockets[0].getsockname()[1], taker
    finally:
        async def stop():
            listener.close()
            await listener.wait_closed()
        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


@pytest.mark.parametrize("case", MX_CASES, ids=[c.id for c in MX_CASES])
def test_edge_agrees(edge_mx, case):
    port, taker = edge_mx
    taker.messages.clear()
    peer = _Peer(port)
    try:
        for i, (data, expected) in enumerate(case.steps):
            assert peer.step(data, len(expected)) == expected, f"step {i}: {data[:60]!r}"
        if case.closed:
            assert peer.replies(0, quiet=5) == [] and peer.eof
        elif case.probe:
            assert peer.step(NOOP[0], 1) == ["250 2.0.0"]
    finally:
        peer.sock.close()
    assert taker.messages == case.messages
