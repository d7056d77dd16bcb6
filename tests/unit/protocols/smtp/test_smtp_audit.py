"""The MX's error limit against a security audit's relay test: nmap's smtp-open-relay tries
16 relay tricks on one session (RSET, MAIL, RCPT each), every one refused.  With the edge's
default ``smtp_max_errors`` the session lasts to the end, so the audit reaches its verdict
("doesn't seem to be an open relay") instead of an inconclusive "connection closed"; a client
that keeps failing past the limit is still told 421 and closed."""

from __future__ import annotations

from colony.protocols.smtp import events as E
from colony.protocols.smtp.replies import Reply
from colony.settings import Settings

from smtp_driver import Driver, codes

NOT_HOSTED = Reply(550, "5.7.1", "relaying denied: domain not hosted here", "not_local")

# smtp-open-relay's (nmap 7.93) sender and recipient pairs, with its defaults: domain
# nmap.scanme.org, the server's name mx.test, its address 127.0.0.1.
IP, DOMAIN, SERVER = "127.0.0.1", "nmap.scanme.org", "mx.test"
RELAY_TRICKS = [
    ("", f"relaytest@{DOMAIN}"),
    (f"antispam@{DOMAIN}", f"relaytest@{DOMAIN}"),
    (f"antispam@{SERVER}", f"relaytest@{DOMAIN}"),
    (f"antispam@[{IP}]", f"relaytest@{DOMAIN}"),
    (f"antispam@[{IP}]", f"relaytest%{DOMAIN}@[{IP}]"),
    (f"antispam@[{IP}]", f"relaytest%{DOMAIN}@{SERVER}"),
    (f"antispam@[{IP}]", f'"relaytest@{DOMAIN}"'),
    (f"antispam@[{IP}]", f'"relaytest%{DOMAIN}"'),
    (f"antispam@[{IP}]", f"relaytest@{DOMAIN}@[{IP}]"),
    (f"antispam@[{IP}]", f'"relaytest@{DOMAIN}"@[{IP}]'),
    (f"antispam@[{IP}]", f"relaytest@{DOMAIN}@{SERVER}"),
    (f"antispam@[{IP}]", f"@[{IP}]:relaytest@{DOMAIN}"),
    (f"antispam@[{IP}]", f"@{SERVER}:relaytest@{DOMAIN}"),
    (f"antispam@[{IP}]", f"{DOMAIN}!relaytest"),
    (f"antispam@[{IP}]", f"{DOMAIN}!relaytest@[{IP}]"),
    (f"antispam@[{IP}]", f"{DOMAIN}!relaytest@{SERVER}"),
]


def mx() -> Driver:
    driver = Driver(answers={E.RcptTo: NOT_HOSTED}, max_errors=Settings().smtp_max_errors)
    driver.feed(b"EHLO scanner.test\r\n")
    return driver


def test_the_audit_relay_test_runs_to_its_end_every_trick_refused():
    d = mx()
    for sender, recipient in RELAY_TRICKS:
        out = d.feed(b"RSET\r\n") + d.feed(f"MAIL FROM:<{sender}>\r\n".encode()) \
            + d.feed(f"RCPT TO:<{recipient}>\r\n".encode())
        replies = codes(out)
        assert replies[0] == "250 2.0.0" and not d.conn.closed, (sender, recipient, replies)
        assert not any(r.startswith("250") for r in replies[2:]), (recipient, replies)   # never relayed
        assert replies[-1][0] == "5", (recipient, replies)
    assert codes(d.feed(b"QUIT\r\n")) == ["221 2.0.0"]


def test_a_client_that_keeps_failing_is_still_cut_off():
    d = mx()
    d.feed(b"MAIL FROM:<a@remote.test>\r\n")
    out = b"".join(d.feed(f"RCPT TO:<x{i}@elsewhere.test>\r\n".encode()) for i in range(Settings().smtp_max_errors))
    assert codes(out)[-1] == "421 4.7.0" and d.conn.closed
