"""Colony's MX against the most common client an MX has: another MTA.  Debian's Postfix runs
as a private sending instance (bench/peers.py's ``Postfix``: its own config, queue and log
under the test's directory, loopback only), routes three hosted domains to the edge's MX
port with a transport map (STARTTLS required, ``smtp_tls_security_level = encrypt``, the
cluster's CA trusted) and keeps a local mailbox for its own users at sender.test, where
bounces and delivery reports for them land.  Mail goes in through ``sendmail`` and through
Postfix's own SMTP listener; what it did and which replies it got is read from its log
(``maillog_file``), what landed from the INBOX over IMAP.

The cluster's edge is told that the test's loopback client is not trusted (so SPF is
checked and written into Authentication-Results) and asks a loopback DNS server, which
publishes sender.test's SPF record and its MX (Postfix's SMTP port: the cluster delivers
its delivery reports for sender.test there)."""

from __future__ import annotations

import email
import email.policy
import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from dnsserver import LoopbackDNS
from test_colony_up import free_base_port, ready_nodes, start_up, stop_up, wait_deliverable, wait_for
from test_mail_clients import DOMAIN, PASSWORD, Edge, arrived, colony, unique
from tools import free_ports, need_tool

sys.path.append(str(Path(__file__).resolve().parents[2] / "bench"))
from peers import Postfix  # noqa: E402  (the private Postfix the benchmarks run too)

pytestmark = pytest.mark.slow

SENDER_DOMAIN = "sender.test"
SENDER = f"sender@{SENDER_DOMAIN}"
UTF8_SENDER = f"müller@{SENDER_DOMAIN}"
BETA, GAMMA, DELTA = "beta.example", "gamma.example", "delta.example"
# Ten recipients in three domains, for one transaction.
TEN = ([f"{u}@{DOMAIN}" for u in ("alice", "bob", "carol", "dave", "erin")]
       + [f"{u}@{BETA}" for u in ("frank", "gina", "hank")] + [f"{u}@{GAMMA}" for u in ("ivan", "judy")])
SUSPENDED = f"kim@{DELTA}"   # its domain is suspended and resumed by one test only
SMALL = f"lena@{DOMAIN}"     # a mailbox of QUOTA octets
QUOTA = 100_000
EIGHT_BIT = "Grüße aus Köln, 10 € für Bär und Öl"


@dataclass
class World:
    edge: Edge
    postfix: Postfix
    mailboxes: Path


def _postfix_port(base: int) -> int:
    """A port for Postfix's SMTP listener outside the span `colony up` plans from ``base``."""
    while True:
        [port] = free_ports(1)
        if not base <= port <= base + 1300:
            return port


def _main_cf(edge: Edge, mailboxes: Path) -> str:
    mx = f"smtp:[127.0.0.1]:{edge.ports['smtp']}"
    routes = ", ".join(f"{{{domain} = {mx}}}" for domain in (DOMAIN, BETA, GAMMA, DELTA))
    users = ", ".join(f"{{{address} = {address.split('@')[0]}/}}" for address in (SENDER, UTF8_SENDER))
    return f"""
myhostname = mta.{SENDER_DOMAIN}
mydomain = {SENDER_DOMAIN}
myorigin = {SENDER_DOMAIN}
transport_maps = inline:{{ {routes} }}
virtual_mailbox_domains = {SENDER_DOMAIN}
virtual_mailbox_base = {mailboxes}
virtual_mailbox_maps = inline:{{ {users} }}
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
smtp_tls_security_level = encrypt
smtp_tls_CAfile = {edge.ca}
smtp_tls_loglevel = 1
# Every command Postfix's SMTP client sends and every reply it reads, in its log.
debug_peer_list = 127.0.0.1
smtp_connection_cache_on_demand = yes
# A TLS session is cached only through tlsproxy (Postfix 3.4+); without it every message
# has a connection of its own.
smtp_tls_connection_reuse = yes
smtp_destination_concurrency_limit = 2
message_size_limit = 52428800
virtual_mailbox_limit = 0
# Deferred mail waits for the test's `postqueue -f`, not for a queue run of its own.
queue_run_delay = 1h
minimal_backoff_time = 1h
maximal_backoff_time = 2h
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    need_tool("postfix")
    if os.geteuid() != 0:
        pytest.skip("a private Postfix instance is started as root (its daemons drop to their own users)")
    root = tmp_path_factory.mktemp("mta")
    dns = LoopbackDNS().start()
    dns.add(f'{SENDER_DOMAIN}. 60 IN TXT "v=spf1 ip4:127.0.0.1 -all"',
            f"{SENDER_DOMAIN}. 60 IN MX 10 mta.{SENDER_DOMAIN}.", f"mta.{SENDER_DOMAIN}. 60 IN A 127.0.0.1",
            f'mta.{SENDER_DOMAIN}. 60 IN TXT "v=spf1 a -all"')
    base = free_base_port()
    port = _postfix_port(base)
    env = {"COLONY_DNS_SERVERS": dns.address, "COLONY_EDGE_ALLOW_NETWORKS": "",
           "COLONY_EDGE_MESSAGES_PER_MINUTE_PER_IP": "100000", "COLONY_EDGE_RECIPIENTS_PER_MINUTE_PER_IP": "100000",
           "COLONY_EDGE_CONNECTIONS_PER_MINUTE_PER_IP": "100000",
           "COLONY_OUTBOUND_SMTP_PORT": str(port)}       # sender.test's MX is Postfix
    data_dir = root / "colony"
    proc = start_up(data_dir, base, "--controllers", "1", "--mailstores", "1", "--sipfarms", "0", env=env)
    postfix = None
    try:
        wait_for(lambda: ready_nodes(data_dir, 5), 180, "every instance READY", up=proc)
        wait_for(lambda: (data_dir / "admin.token").exists(), 60, "the bootstrap token", up=proc)
        for domain in (DOMAIN, BETA, GAMMA, DELTA):
            colony(data_dir, "domain", "add", domain)
        for address in (*TEN, SUSPENDED):
            colony(data_dir, "account", "add", address, "--password", PASSWORD)
        colony(data_dir, "account", "add", SMALL, "--password", PASSWORD, "--quota", str(QUOTA))
        edge = Edge(data_dir)
        for address in (*TEN, SUSPENDED, SMALL):
            wait_deliverable(edge.ports["smtp"], address, 120)
        mailboxes = root / "mailboxes"
        mailboxes.mkdir()
        subprocess.run(["chown", "nobody:nogroup", str(mailboxes)], check=True)
        postfix = Postfix(root, smtp_port=port, domain=SENDER_DOMAIN, extra=_main_cf(edge, mailboxes))
        postfix.start()
        yield World(edge, postfix, mailboxes)
    finally:
        if postfix is not None:
            postfix.stop()
        stop_up(proc)
        dns.stop()


# --- reading Postfix's log and mailboxes ---------------------------------------------------------

def queue_id(postfix: Postfix, message_id: str) -> str:
    """The queue id Postfix gave the message with ``message_id`` (its cleanup logs it)."""
    pattern = re.compile(rf"\]: ([0-9A-Za-z]+): message-id=<{re.escape(message_id)}>")
    return wait_for(lambda: (m := pattern.search(postfix.log())) and m.group(1), 60, f"{message_id} in Postfix's log")


def deliveries(postfix: Postfix, qid: str, count: int, status: str = "") -> list[str]:
    """Postfix's delivery lines of queue entry ``qid`` (``to=<...>, relay=..., status=...``),
    once there are ``count`` of them (with ``status``: of that status)."""
    def look() -> list[str] | None:
        lines = [line for line in postfix.log().splitlines()
                 if f": {qid}: to=<" in line and f"status={status}" in line]
        return lines if len(lines) >= count else None
    return wait_for(look, 180, f"{count} delivery line(s) {status or ''} of {qid} in Postfix's log:\n"
                    + postfix.log()[-3000:])


def conversation(postfix: Postfix, delivery: str, port: int) -> list[str]:
    """What the SMTP client process that logged ``delivery`` (one of ``deliveries``) sent to
    and read from 127.0.0.1:``port`` (``debug_peer_list``), in order: "> COMMAND" and
    "< reply line", TLS and all, up to that delivery line."""
    pid = re.search(r"postfix/smtp\[(\d+)\]", delivery).group(1)
    log = postfix.log()
    peer = f"postfix/smtp[{pid}]: "
    said = []
    for line in log[: log.index(delivery)].splitlines():
        _, found, rest = line.partition(peer)
        for way in ("> ", "< "):
            if found and rest.startswith(f"{way}127.0.0.1[127.0.0.1]:{port}: "):
                said.append(way + rest.split(": ", 1)[1])
    # The session of this delivery: from its (last) greeting on.
    greetings = [i for i, line in enumerate(said) if line.startswith("< 220 ") and "ESMTP" in line]
    return said[greetings[-1]:] if greetings else said


def mailbox(world: World, user: str, needle: str, count: int = 1) -> list[bytes]:
    """The messages in Postfix's local maildir of ``user`` that contain ``needle``."""
    def look() -> list[bytes] | None:
        found = [p.read_bytes() for p in sorted((world.mailboxes / user).glob("*/*")) if p.is_file()]
        found = [m for m in found if needle.encode() in m]
        return found if len(found) >= count else None
    found = wait_for(look, 180, f"{count} message(s) with {needle!r} in {user}'s local mailbox")
    assert len(found) == count
    return found


def message(subject: str, body: str, *, sender: str = SENDER, to: str = f"alice@{DOMAIN}",
            headers: str = "") -> tuple[str, bytes]:
    """(Message-ID, the message as a user's program gives it to sendmail: LF line ends)."""
    mid = f"{uuid.uuid4().hex}@{SENDER_DOMAIN}"
    text = (f"From: {sender}\nTo: {to}\nSubject: {subject}\nMessage-ID: <{mid}>\n{headers}\n{body}")
    return mid, text.encode()


def text_of(edge: Edge, user: str, subject: str) -> tuple[email.message.EmailMessage, bytes]:
    """The one message ``subject`` in ``user``'s INBOX: parsed, and its text (BODY[TEXT]) as stored."""
    [got] = arrived(edge, user, subject)
    client = edge.imaps(user)
    try:
        client.select("INBOX", readonly=True)
        [uid] = client.uid("SEARCH", "SUBJECT", f'"{subject}"')[1][0].split()
        data = client.uid("FETCH", uid, "(BODY.PEEK[TEXT])")[1]
    finally:
        client.logout()
    return got, data[0][1]


# --- the tests -----------------------------------------------------------------------------------

def test_sendmail_with_dsn_options_over_required_tls_lands_once_intact(world):
    """``sendmail -N success,delay,failure -V envid -f sender``: Postfix takes it from its
    pickup, sends it over STARTTLS (encrypt: no TLS, no delivery) with NOTIFY, ORCPT and
    ENVID, since the MX advertises DSN (RFC 3461 §5.2.1); the message is stored once with
    Postfix's Received line under the edge's, the Return-Path of the envelope, SPF checked,
    the text octet for octet; the mail store reports "delivered" to the sender's MTA, which
    files it in the sender's local mailbox, ENVID and ORCPT echoed."""
    subject = unique("sendmail dsn")
    envid = f"env-{uuid.uuid4().hex[:10]}"
    body = f"{EIGHT_BIT}\n.\n..two dots\nlast line\n"
    mid, msg = message(subject, body, headers="MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
                                              "Content-Transfer-Encoding: 8bit\n")
    # -oi: a line of a lone dot is text, not the end of the input (as mail programs call it).
    out = world.postfix.sendmail("-oi", "-N", "success,delay,failure", "-V", envid, "-R", "hdrs", "-B", "8BITMIME",
                                 "-f", SENDER, f"alice@{DOMAIN}", message=msg)
    assert out.returncode == 0, out.stderr
    qid = queue_id(world.postfix, mid)
    [line] = deliveries(world.postfix, qid, 1, "sent")
    assert "dsn=2.0.0" in line and "(250 2.0.0 OK queued as " in line, line
    assert f"relay=127.0.0.1[127.0.0.1]:{world.edge.ports['smtp']}" in line, line
    log = world.postfix.log()
    assert re.search(rf"TLS connection established to 127\.0\.0\.1\[127\.0\.0\.1\]:{world.edge.ports['smtp']}: TLSv1\.[23]",
                     log), log[-2000:]
    said = conversation(world.postfix, line, world.edge.ports["smtp"])
    assert "> STARTTLS" in said and any(s.startswith("< 220 2.0.0") for s in said), said
    [mail_from] = [s for s in said if s.startswith("> MAIL FROM:")]
    for parameter in (r"SIZE=\d+", "BODY=8BITMIME", "RET=HDRS", f"ENVID={envid}"):
        assert re.search(rf" {parameter}( |$)", mail_from), mail_from
    assert f"> RCPT TO:<alice@{DOMAIN}> ORCPT=rfc822;alice@{DOMAIN} NOTIFY=SUCCESS,FAILURE,DELAY" in said, said

    got, text = text_of(world.edge, "alice", subject)
    assert text == body.replace("\n", "\r\n").encode(), text
    assert got["Return-Path"] == f"<{SENDER}>"
    received = [" ".join(r.split()) for r in got.get_all("Received")]
    assert len(received) >= 2, received
    assert received[0].startswith(f"from mta.{SENDER_DOMAIN} ") and "[127.0.0.1]" in received[0], received
    assert " with ESMTPS " in received[0] and f"for <alice@{DOMAIN}>" in received[0], received
    assert f"by mta.{SENDER_DOMAIN} (Postfix" in received[1], received
    results = " ".join(got["Authentication-Results"].split())
    assert re.search(rf"; spf=pass [^;]*smtp\.mailfrom={re.escape(SENDER)};", results), results
    assert got["Message-ID"] == f"<{mid}>"

    # Postfix sent no "relayed" report of its own: the MX took the DSN parameters.
    [report] = mailbox(world, "sender", f"Original-Envelope-Id: {envid}")
    report_text = report.decode("utf-8", "replace")
    for field in ("Action: delivered", f"Final-Recipient: rfc822; alice@{DOMAIN}", "Status: 2.0.0",
                  f"Original-Recipient: rfc822;alice@{DOMAIN}",     # Postfix's ORCPT, echoed
                  "Content-Type: text/rfc822-headers", f"Subject: {subject}"):
        assert field in report_text, report_text
    assert "last line" not in report_text                   # RET=HDRS
    assert "Action: relayed" not in world.postfix.log()


def test_ten_recipients_in_three_domains_go_in_one_pipelined_transaction(world):
    """Postfix's SMTP listener takes the message for ten recipients; its transport map sends
    all three domains to one next hop, so it delivers them in one transaction (MAIL, ten
    RCPTs and DATA pipelined, RFC 2920): ten "sent" lines with one and the same queue id of
    ours, and each mailbox gets the message once."""
    import smtplib

    with smtplib.SMTP("127.0.0.1", world.edge.ports["smtp"], local_hostname="client.test", timeout=60) as mx:
        mx.ehlo()
        assert mx.has_extn("pipelining") and mx.has_extn("dsn") and mx.has_extn("smtputf8"), mx.esmtp_features
    subject = unique("ten recipients")
    mid, msg = message(subject, "one message, ten mailboxes\n", to=", ".join(TEN))
    with smtplib.SMTP("127.0.0.1", world.postfix.smtp_port, local_hostname="client.test", timeout=60) as client:
        client.ehlo()
        refused = client.sendmail(SENDER, TEN, msg.replace(b"\n", b"\r\n"))
    assert refused == {}
    qid = queue_id(world.postfix, mid)
    lines = deliveries(world.postfix, qid, len(TEN), "sent")
    ours = {re.search(r"queued as ([^)\s]+)\)", line).group(1) for line in lines}
    assert len(ours) == 1, lines                        # one transaction at the MX
    said = conversation(world.postfix, lines[0], world.edge.ports["smtp"])
    rcpts = [i for i, s in enumerate(said) if s.startswith("> RCPT TO:")]
    accepted = [i for i, s in enumerate(said) if s.startswith("< 250 2.1.5")]
    assert len(rcpts) == len(accepted) == len(TEN), said
    mail_from = next(i for i, s in enumerate(said) if s.startswith("> MAIL FROM:"))
    body = said.index("> DATA")          # (Postfix's client sends DATA, never BDAT)
    # Pipelined: MAIL, every RCPT and the body's command written before the first reply to them.
    assert mail_from < rcpts[-1] < body < min(i for i, s in enumerate(said) if i > mail_from and s.startswith("< ")), said
    assert {re.search(r"to=<([^>]+)>", line).group(1) for line in lines} == set(TEN)
    for address in TEN:
        arrived(world.edge, address, subject)


def test_unknown_recipient_is_bounced_by_postfix_to_the_sender(world):
    """550 5.1.1 at RCPT: Postfix delivers to the known recipient, bounces the unknown one
    with our reply text, and files the bounce in the sender's local mailbox."""
    subject = unique("half unknown")
    mid, msg = message(subject, "one of two exists\n")
    out = world.postfix.sendmail("-f", SENDER, f"bob@{DOMAIN}", f"nobody@{DOMAIN}", message=msg)
    assert out.returncode == 0, out.stderr
    qid = queue_id(world.postfix, mid)
    [bounced] = deliveries(world.postfix, qid, 1, "bounced")
    assert f"to=<nobody@{DOMAIN}>" in bounced and "dsn=5.1.1" in bounced, bounced
    assert "said: 550 5.1.1 " in bounced and "(in reply to RCPT TO command)" in bounced, bounced
    deliveries(world.postfix, qid, 1, "sent")
    arrived(world.edge, "bob", subject)
    [bounce] = mailbox(world, "sender", f"Message-ID: <{mid}>")
    bounce_text = bounce.decode("utf-8", "replace")
    assert f"Final-Recipient: rfc822; nobody@{DOMAIN}" in bounce_text and "Status: 5.1.1" in bounce_text
    assert "Action: failed" in bounce_text and "Diagnostic-Code: smtp; 550 5.1.1" in bounce_text, bounce_text


def test_a_suspended_domain_is_deferred_and_delivered_once_after_it_resumes(world):
    """450 4.2.1 at RCPT for a suspended domain: Postfix keeps the message and retries; after
    the domain is resumed, a queue flush delivers it, once."""
    data_dir = world.edge.data_dir
    colony(data_dir, "domain", "suspend", DELTA, "--reason", "unpaid")
    try:
        def refused() -> bool:
            import smtplib
            with smtplib.SMTP("127.0.0.1", world.edge.ports["smtp"], timeout=30) as s:
                s.ehlo("probe.test")
                s.mail("probe@remote.test")
                return s.rcpt(SUSPENDED)[0] == 450
        wait_for(refused, 120, "the edge to see the suspension")
        subject = unique("suspended")
        mid, msg = message(subject, "wait for me\n", to=SUSPENDED)
        out = world.postfix.sendmail("-f", SENDER, SUSPENDED, message=msg)
        assert out.returncode == 0, out.stderr
        qid = queue_id(world.postfix, mid)
        [deferred] = deliveries(world.postfix, qid, 1, "deferred")
        assert "said: 450 4.2.1 " in deferred and "(in reply to RCPT TO command)" in deferred, deferred
    finally:
        colony(data_dir, "domain", "resume", DELTA)
    wait_deliverable(world.edge.ports["smtp"], SUSPENDED, 120)
    flushed = world.postfix.postqueue("-f")
    assert flushed.returncode == 0, flushed.stderr
    [sent] = deliveries(world.postfix, qid, 1, "sent")
    assert "(250 2.0.0 OK queued as " in sent, sent
    arrived(world.edge, SUSPENDED, subject)
    assert len([line for line in world.postfix.log().splitlines() if f": {qid}: to=<" in line]) == 2


def test_a_10_mb_message_with_size_declared_arrives_octet_for_octet(world):
    subject = unique("ten megabytes")
    line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-+=/0123456789\n"
    body = line * (10 * 1024 * 1024 // len(line) + 1)
    mid, msg = message(subject, body, to=f"carol@{DOMAIN}")
    out = world.postfix.sendmail("-f", SENDER, f"carol@{DOMAIN}", message=msg)
    assert out.returncode == 0, out.stderr
    [sent] = deliveries(world.postfix, queue_id(world.postfix, mid), 1, "sent")
    assert "(250 2.0.0 OK queued as " in sent, sent
    _, text = text_of(world.edge, "carol", subject)
    assert text == body.replace("\n", "\r\n").encode()


def test_smtputf8_sender_and_8bit_headers(world):
    """A UTF-8 local part in the envelope (RFC 6531): Postfix sends MAIL FROM with SMTPUTF8
    (it bounces such mail to an MX that does not offer it); the edge records UTF8SMTPS and
    the headers arrive as UTF-8, unchanged."""
    subject = unique("smtputf8 Grüße")
    mid, msg = message(subject, f"{EIGHT_BIT}\n", sender=UTF8_SENDER, to=f"dave@{DOMAIN}",
                       headers="MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
                               "Content-Transfer-Encoding: 8bit\n")
    out = world.postfix.sendmail("-N", "success", "-f", UTF8_SENDER, f"dave@{DOMAIN}", message=msg)
    assert out.returncode == 0, out.stderr
    [sent] = deliveries(world.postfix, queue_id(world.postfix, mid), 1, "sent")
    assert "(250 2.0.0 OK queued as " in sent, sent
    said = conversation(world.postfix, sent, world.edge.ports["smtp"])
    [mail_from] = [s for s in said if s.startswith("> MAIL FROM:")]
    assert mail_from.startswith(f"> MAIL FROM:<{UTF8_SENDER}> ") and " SMTPUTF8" in mail_from, mail_from
    got, text = text_of(world.edge, "dave", subject.split(" Grüße")[0])
    assert text == f"{EIGHT_BIT}\r\n".encode()
    assert got["Return-Path"] == f"<{UTF8_SENDER}>"
    assert got["Subject"] == subject and got["From"] == UTF8_SENDER
    assert " with UTF8SMTPS " in " ".join(got.get_all("Received")[0].split()), got.get_all("Received")
    # The delivery report goes back to the UTF-8 address: the cluster's outbound queue must
    # send it with SMTPUTF8 to sender.test's MX (Postfix), which files it for müller.
    [report] = mailbox(world, "müller", f"Message-ID: <{mid}>")
    assert b"Action: delivered" in report and f"Final-Recipient: rfc822; dave@{DOMAIN}".encode() in report
    # What Postfix's SMTP server read from the cluster (RFC 6531 §3.4: a UTF-8 address needs
    # SMTPUTF8 on MAIL; Postfix takes it without, a stricter server would not).
    log = world.postfix.log().splitlines()
    heard = re.compile(r"postfix/smtpd\[(\d+)\]: < [^ ]*\[127\.0\.0\.1\]: (.*)$")
    said = [(m.group(1), m.group(2)) for m in map(heard.search, log) if m]
    rcpt = next(i for i, (_, text) in enumerate(said) if text.startswith(f"RCPT TO:<{UTF8_SENDER}>"))
    pid = said[rcpt][0]
    [*_, mail] = [text for p, text in said[:rcpt] if p == pid and text.startswith("MAIL FROM:<>")]
    assert " SMTPUTF8" in mail, mail


def test_connection_reuse_when_mail_queues_up(world):
    """Messages held while ``defer_transports`` names smtp and then flushed together form a
    backlog: Postfix's on-demand connection cache carries several over one session (the
    log's ``conn_use=``), and the edge serves each of them once."""
    world.postfix.postconf("defer_transports = smtp")
    subject = unique("reuse")
    ids = []
    try:
        for n in range(6):
            mid, msg = message(f"{subject} {n}", f"message {n}\n", to=f"erin@{DOMAIN}")
            out = world.postfix.sendmail("-f", SENDER, f"erin@{DOMAIN}", message=msg)
            assert out.returncode == 0, out.stderr
            ids.append(queue_id(world.postfix, mid))
        for qid in ids:
            deliveries(world.postfix, qid, 1, "deferred")
    finally:
        world.postfix.postconf("defer_transports =")
    assert world.postfix.postqueue("-f").returncode == 0
    lines = [deliveries(world.postfix, qid, 1, "sent")[0] for qid in ids]
    assert any(re.search(r"conn_use=[2-9]", line) for line in lines), lines
    arrived(world.edge, "erin", subject, count=6)


def test_size_is_declared_and_mail_over_the_quota_comes_back_to_the_sender(world):
    """Postfix declares SIZE in MAIL FROM (RFC 1870): a message larger than the recipient's
    whole quota is refused at RCPT (552 5.2.2), before its octets are sent, and Postfix
    bounces it.  One that fits the quota but not what is left of it is taken (the edge does
    not know the mailbox's usage) and fails at the mail store: the sender is told so in a
    DSN (RFC 5321 §6.1: a message accepted and then not delivered MUST be reported), which
    reaches Postfix and the sender's local mailbox."""
    line = "x" * 76 + "\n"
    subject = unique("too large for the quota")
    mid, msg = message(subject, line * (2 * QUOTA // len(line)), to=SMALL)
    assert world.postfix.sendmail("-f", SENDER, SMALL, message=msg).returncode == 0
    [bounced] = deliveries(world.postfix, queue_id(world.postfix, mid), 1, "bounced")
    assert "said: 552 5.2.2 " in bounced and "(in reply to RCPT TO command)" in bounced, bounced
    mailbox(world, "sender", f"Message-ID: <{mid}>")

    subject = unique("over quota")
    sent = []
    for n in range(2):      # each 60 % of the quota: the first is stored, the second is over
        mid, msg = message(f"{subject} {n}", line * (6 * QUOTA // 10 // len(line)), to=SMALL)
        assert world.postfix.sendmail("-f", SENDER, SMALL, message=msg).returncode == 0
        qid = queue_id(world.postfix, mid)
        [ok] = deliveries(world.postfix, qid, 1, "sent")
        assert "(250 2.0.0 OK queued as " in ok, ok
        sent.append(mid)
        if n == 0:
            arrived(world.edge, SMALL, f"{subject} 0")
    [report] = mailbox(world, "sender", f"Message-ID: <{sent[1]}>")
    report_text = report.decode("utf-8", "replace")
    for field in (f"Final-Recipient: rfc822; {SMALL}", "Action: failed", "Status: 5.2.2",
                  "Undelivered Mail Returned to Sender"):
        assert field in report_text, report_text
    arrived(world.edge, SMALL, subject)                       # the first one only


def test_dot_stuffed_text_and_a_last_line_without_its_end(world):
    """Postfix dot-stuffs the text it sends after DATA: lines of dots and a leading dot come
    back as written, 8-bit octets untouched, and the last line, which the program gave
    without a line end, ends with CRLF (sendmail completes it)."""
    subject = unique("dots")
    body = f"{EIGHT_BIT}\n.\n..\n.leading dot\n...\nlast line without a newline"
    mid, msg = message(subject, body, to=f"bob@{DOMAIN}", headers="MIME-Version: 1.0\n"
                       "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n")
    out = world.postfix.sendmail("-oi", "-f", SENDER, f"bob@{DOMAIN}", f"carol@{DOMAIN}", message=msg)
    assert out.returncode == 0, out.stderr
    lines = deliveries(world.postfix, queue_id(world.postfix, mid), 2, "sent")
    said = conversation(world.postfix, lines[0], world.edge.ports["smtp"])
    data = said.index("> DATA")
    assert said[data - 1].startswith("> RCPT TO:") and said[data + 1].startswith("< 250 2.1.0"), said  # pipelined
    go_ahead = next(i for i, s in enumerate(said) if s.startswith("< 354 "))
    assert go_ahead > data and said[go_ahead + 1] == "> .", said
    for user in ("bob", "carol"):
        _, text = text_of(world.edge, user, subject)
        assert text == (body + "\n").replace("\n", "\r\n").encode(), text
