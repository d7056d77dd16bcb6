"""Debian's everyday mail clients against `colony up`'s edge, for real: msmtp (the submission
client of scripts, cron and mutt), curl (SMTP, IMAP and POP3 URLs) and s-nail (mailx with
IMAP and SMTP), each over STARTTLS and implicit TLS with the cluster's local CA, each mail
checked where it lands (IMAP, with Python's own client).  The other clients -- swaks,
fetchmail, mbsync, imapclient -- have their own tests (test_smtp_up, test_client_access,
tests/integration/imap)."""

from __future__ import annotations

import base64
import email
import email.policy
import imaplib
import os
import ssl
import subprocess
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

from test_colony_up import COLONY, free_base_port, ready_nodes, start_up, status_json, stop_up, wait_for
from tools import need_tool

pytestmark = pytest.mark.slow

PASSWORD = "a long passphrase"
DOMAIN = "acme.example"
USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace")  # each test reads its own INBOX or POP3 drop
# Text a script mails without a thought for MIME: 8-bit UTF-8 in an unlabelled body.
EIGHT_BIT = "Grüße aus Köln, 10 € für Bär und Öl"

# sysexits.h, which msmtp's exit codes are
EX_DATAERR, EX_UNAVAILABLE, EX_NOPERM = 65, 69, 77
# curl's exit codes (man curl, "EXIT CODES")
CURLE_SEND_ERROR, CURLE_LOGIN_DENIED, CURLE_REMOTE_FILE_NOT_FOUND = 55, 67, 78


def colony(data_dir: Path, *args: str) -> str:
    out = subprocess.run([COLONY, *args, "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


class Edge:
    """Where the edge listens, and the CA its certificate comes from."""

    def __init__(self, data_dir: Path) -> None:
        edge = next(n for n in status_json(data_dir) if n["role"] == "edge")
        self.ports = {name: int(address.rsplit(":", 1)[1]) for name, address in edge["addresses"].items()}
        self.ca = data_dir / "tls" / "ca.pem"
        self.data_dir = data_dir

    def imaps(self, user: str) -> imaplib.IMAP4_SSL:
        """Logged in as ``user`` of DOMAIN, or as ``user`` itself when it is a whole address."""
        client = imaplib.IMAP4_SSL("127.0.0.1", self.ports["imaps"], timeout=60,
                                   ssl_context=ssl.create_default_context(cafile=str(self.ca)))
        address = user if "@" in user else f"{user}@{DOMAIN}"
        client.login(address, PASSWORD)
        return client


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    """`colony up` with one edge and one mail store, and the accounts of USERS."""
    data_dir = tmp_path_factory.mktemp("clients") / "colony"
    proc = start_up(data_dir, free_base_port(), "--controllers", "1", "--mailstores", "1", "--sipfarms", "0")
    try:
        wait_for(lambda: ready_nodes(data_dir, 5), 180, "every instance READY", up=proc)
        wait_for(lambda: (data_dir / "admin.token").exists(), 60, "the bootstrap token", up=proc)
        colony(data_dir, "domain", "add", DOMAIN)
        for user in USERS:
            colony(data_dir, "account", "add", f"{user}@{DOMAIN}", "--password", PASSWORD)
        at = Edge(data_dir)
        # The edge's directory cache has heard of the last account once IMAP takes its login.
        wait_for(lambda: _logs_in(at, USERS[-1]), 120, "the accounts to reach the edge")
        yield at
    finally:
        stop_up(proc)


def _logs_in(edge: Edge, user: str) -> bool:
    try:
        edge.imaps(user).logout()
    except (imaplib.IMAP4.error, OSError):
        return False
    return True


def arrived(edge: Edge, user: str, subject: str, count: int = 1, mailbox: str = "INBOX") -> list[email.message.Message]:
    """The messages with ``subject`` in ``user``'s ``mailbox`` once there are ``count`` of them
    (a 250 is acceptance; storing follows through the queue)."""
    def look() -> list[email.message.Message] | None:
        try:
            client = edge.imaps(user)
        except (imaplib.IMAP4.error, OSError):      # a busy machine: not an answer yet
            return None
        try:
            client.select(mailbox, readonly=True)
            uids = client.uid("SEARCH", "SUBJECT", f'"{subject}"')[1][0].split()
            if len(uids) < count:
                return None
            found = []
            for uid in uids:
                data = client.uid("FETCH", uid, "(BODY.PEEK[])")[1]
                found.append(email.message_from_bytes(data[0][1], policy=email.policy.default))
            return found
        finally:
            client.logout()
    found = wait_for(look, 120, f"{count} message(s) {subject!r} in {user}'s {mailbox}")
    assert len(found) == count, [m["Subject"] for m in found]
    return found


def unique(what: str) -> str:
    return f"{what} {uuid.uuid4().hex[:8]}"


def run(argv: list[str], *, stdin: bytes = b"", env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    # Every client gets a deadline: one that waits for an answer the server never sends is a
    # failure, not a hung suite.
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=120,
                          env=None if env is None else {**os.environ, **env})


def said(out: subprocess.CompletedProcess) -> str:
    return (out.stdout + out.stderr).decode("utf-8", "replace")


# --- msmtp ---------------------------------------------------------------------------------------

def msmtp_config(edge: Edge, tmp_path: Path, user: str, *, implicit: bool, auth: str = "on",
                 password: str = PASSWORD) -> Path:
    """An msmtp account as a user writes one: STARTTLS on submission, or TLS from the first
    octet on the SMTPS port; the server's certificate checked against the local CA."""
    rc = tmp_path / f"msmtprc-{uuid.uuid4().hex[:6]}"
    port = edge.ports["submissions" if implicit else "submission"]
    rc.write_text(f"account default\nhost 127.0.0.1\nport {port}\ntls on\ntls_starttls {'off' if implicit else 'on'}\n"
                  f"tls_trust_file {edge.ca}\nauth {auth}\nuser {user}@{DOMAIN}\npassword {password}\n"
                  f"from {user}@{DOMAIN}\nlogfile {tmp_path / 'msmtp.log'}\n")
    rc.chmod(0o600)        # msmtp refuses a password in a file others may read
    return rc


def msmtp(rc: Path, *args: str, message: bytes) -> subprocess.CompletedProcess:
    return run([need_tool("msmtp"), "-C", str(rc), "-v", *args], stdin=message)


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit-tls"])
@pytest.mark.parametrize("auth", ["on", "plain", "login"])
def test_msmtp_submits_an_8bit_message_with_each_mechanism(edge, tmp_path, implicit, auth):
    """``auth on`` is msmtp's default: it picks the best mechanism the server advertises
    after TLS (PLAIN of our PLAIN and LOGIN); the two named ones are asked for explicitly."""
    subject = unique(f"msmtp {auth}")
    rc = msmtp_config(edge, tmp_path, "alice", implicit=implicit, auth=auth)
    message = f"From: alice@{DOMAIN}\nTo: bob@{DOMAIN}\nSubject: {subject}\n\n{EIGHT_BIT}\n.\n..two dots\n"
    out = msmtp(rc, f"bob@{DOMAIN}", message=message.encode())
    assert out.returncode == 0, said(out)
    mechanism = "LOGIN" if auth == "login" else "PLAIN"
    assert f"--> AUTH {mechanism}" in said(out) and "<-- 235 2.7.0" in said(out), said(out)
    if not implicit:
        assert "--> STARTTLS" in said(out)
    got = arrived(edge, "bob", subject)[0]
    body = got.get_payload(decode=True)
    assert body == f"{EIGHT_BIT}\n.\n..two dots\n".replace("\n", "\r\n").encode(), body   # octets untouched
    received = got.get_all("Received")[0]
    assert "ESMTPSA" in " ".join(received.split()), received     # RFC 3848: TLS and AUTH


def test_msmtp_several_recipients_from_the_command_line_and_from_the_headers(edge, tmp_path):
    rc = msmtp_config(edge, tmp_path, "alice", implicit=False)
    subject = unique("msmtp many")
    message = f"From: alice@{DOMAIN}\nTo: bob@{DOMAIN}, carol@{DOMAIN}\nSubject: {subject}\n\nto three\n"
    out = msmtp(rc, f"bob@{DOMAIN}", f"carol@{DOMAIN}", f"dave@{DOMAIN}", message=message.encode())
    assert out.returncode == 0, said(out)
    assert said(out).count("<-- 250 2.1.5") == 3
    for user in ("bob", "carol", "dave"):
        arrived(edge, user, subject)

    # -t: the recipients are read from To, Cc and Bcc, and Bcc is removed before sending.
    subject = unique("msmtp -t")
    message = (f"From: alice@{DOMAIN}\nTo: bob@{DOMAIN}\nCc: carol@{DOMAIN}\nBcc: dave@{DOMAIN}\n"
               f"Subject: {subject}\n\nread from the headers\n")
    out = msmtp(rc, "-t", message=message.encode())
    assert out.returncode == 0, said(out)
    for user in ("bob", "carol", "dave"):
        got = arrived(edge, user, subject)[0]
        assert got["Bcc"] is None


def test_msmtp_refusals_are_msmtps_own_errors(edge, tmp_path):
    message = f"From: alice@{DOMAIN}\nSubject: {unique('refused')}\n\nx\n".encode()
    for implicit in (False, True):
        for mechanism in ("plain", "login"):
            wrong = msmtp_config(edge, tmp_path, "alice", implicit=implicit, auth=mechanism, password="not the password")
            out = msmtp(wrong, f"bob@{DOMAIN}", message=message)
            assert out.returncode == EX_NOPERM, said(out)        # msmtp's "authentication failed"
            assert "535 5.7.8" in said(out) and "authentication failed" in said(out)

    # In the clear the server offers no AUTH (RFC 4954 §4: not before TLS), so msmtp cannot log in.
    plain = msmtp_config(edge, tmp_path, "alice", implicit=False)
    out = run([need_tool("msmtp"), "-C", str(plain), "--tls=off", f"bob@{DOMAIN}"], stdin=message)
    assert out.returncode == EX_UNAVAILABLE and "does not support authentication" in said(out), said(out)

    good = msmtp_config(edge, tmp_path, "alice", implicit=True)
    out = msmtp(good, f"nobody@{DOMAIN}", message=message)           # unknown recipient: 550 at RCPT
    assert out.returncode == EX_DATAERR and "550 5.1.1" in said(out), said(out)
    forged = f"From: bob@{DOMAIN}\nSubject: forged\n\nx\n".encode()    # a From: that is not alice's
    out = msmtp(good, f"bob@{DOMAIN}", message=forged)
    assert out.returncode == EX_UNAVAILABLE and "550 5.7.1" in said(out), said(out)

    # --serverinfo shows what the server offers once TLS is up.
    info = run([need_tool("msmtp"), "-C", str(good), "--serverinfo"])
    assert info.returncode == 0, said(info)
    assert "PLAIN LOGIN" in said(info) and "Colony" in said(info)


def test_msmtp_asks_for_a_delivery_report_and_finds_it_in_its_own_inbox(edge, tmp_path):
    """NOTIFY=SUCCESS (``msmtp -N success``, RFC 3461): the mail store that stores the message
    reports it "delivered" (RFC 3464) to the sender -- a hosted account, so into its INBOX --
    once; RET=HDRS (``-R hdrs``) returns the header section without the text."""
    rc = msmtp_config(edge, tmp_path, "grace", implicit=True)
    subject = unique("please confirm")
    message = f"From: grace@{DOMAIN}\nTo: grace@{DOMAIN}\nSubject: {subject}\n\nthe text itself\n"
    out = msmtp(rc, "-N", "success", "-R", "hdrs", f"grace@{DOMAIN}", message=message.encode())
    assert out.returncode == 0, said(out)
    assert f"RCPT TO:<grace@{DOMAIN}> NOTIFY=SUCCESS" in said(out), said(out)
    arrived(edge, "grace", subject)
    [report] = arrived(edge, "grace", "Successful Mail Delivery Report")
    assert report.get_content_type() == "multipart/report" and report["To"].addresses[0].addr_spec == f"grace@{DOMAIN}"
    raw = report.as_bytes()
    for field in (b"Action: delivered", f"Final-Recipient: rfc822; grace@{DOMAIN}".encode(), b"Status: 2.0.0",
                  b"Content-Type: text/rfc822-headers", f"Subject: {subject}".encode()):
        assert field in raw, raw
    assert b"the text itself" not in raw


# --- curl ----------------------------------------------------------------------------------------

def curl(edge: Edge, url: str, *args: str, user: str = "alice", password: str = PASSWORD,
         stdin: bytes = b"") -> subprocess.CompletedProcess:
    # -m: curl treats a custom POP3 command as multi-line; a wrong guess would wait for ever.
    return run([need_tool("curl"), "-sS", "-m", "60", "--cacert", str(edge.ca), "--url", url,
                "--user", f"{user}@{DOMAIN}:{password}", *args], stdin=stdin)


def text(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 0, said(out)
    return out.stdout.decode("utf-8", "replace")


def test_curl_submits_an_uploaded_file(edge, tmp_path):
    subject = unique("curl upload")
    upload = tmp_path / "message.eml"
    upload.write_bytes(f"From: alice@{DOMAIN}\r\nTo: carol@{DOMAIN}\r\nSubject: {subject}\r\n\r\n"
                       f"{EIGHT_BIT}\r\n.leading dot\r\n".encode())
    starttls = f"smtp://127.0.0.1:{edge.ports['submission']}/client.test"
    implicit = f"smtps://127.0.0.1:{edge.ports['submissions']}/client.test"
    for url, options in ((starttls, ["--ssl-reqd"]),
                         (implicit, ["--login-options", "AUTH=LOGIN"]),
                         (implicit, ["--login-options", "AUTH=PLAIN", "--mail-auth", f"alice@{DOMAIN}"])):
        out = curl(edge, url, *options, "--mail-from", f"alice@{DOMAIN}", "--mail-rcpt", f"carol@{DOMAIN}",
                   "--mail-rcpt", f"dave@{DOMAIN}", "-T", str(upload))
        assert out.returncode == 0, said(out)
    for user in ("carol", "dave"):
        for got in arrived(edge, user, subject, count=3):
            assert got.get_payload(decode=True) == f"{EIGHT_BIT}\r\n.leading dot\r\n".encode()

    # A file with Unix line ends goes with --crlf: the edge takes CRLF only (RFC 5321 §2.3.8).
    subject = unique("curl crlf")
    unix = tmp_path / "unix.eml"
    unix.write_text(f"From: alice@{DOMAIN}\nSubject: {subject}\n\nline one\nline two\n")
    out = curl(edge, implicit, "--crlf", "--mail-from", f"alice@{DOMAIN}", "--mail-rcpt", f"carol@{DOMAIN}",
               "-T", str(unix))
    assert out.returncode == 0, said(out)
    assert arrived(edge, "carol", subject)[0].get_payload(decode=True) == b"line one\r\nline two\r\n"

    # --mail-rcpt-allowfails: an unknown recipient is refused at RCPT, the others get it.
    subject = unique("curl allowfails")
    upload.write_bytes(f"From: alice@{DOMAIN}\r\nSubject: {subject}\r\n\r\nx\r\n".encode())
    out = curl(edge, implicit, "--mail-from", f"alice@{DOMAIN}", "--mail-rcpt", f"nobody@{DOMAIN}",
               "--mail-rcpt", f"carol@{DOMAIN}", "--mail-rcpt-allowfails", "-T", str(upload))
    assert out.returncode == 0, said(out)
    arrived(edge, "carol", subject)

    out = curl(edge, implicit, "--mail-from", f"alice@{DOMAIN}", "--mail-rcpt", f"carol@{DOMAIN}",
               "-T", str(upload), password="wrong")
    assert out.returncode == CURLE_LOGIN_DENIED, said(out)
    vrfy = curl(edge, implicit, "--mail-rcpt", f"carol@{DOMAIN}", "-v")     # no upload: VRFY
    assert vrfy.returncode == 0 and "< 252 " in said(vrfy), said(vrfy)


def test_curl_imap_lists_examines_searches_and_fetches(edge, tmp_path):
    subject = unique("curl imap")
    rc = msmtp_config(edge, tmp_path, "alice", implicit=True)
    for n in (1, 2):
        # A raw UTF-8 Subject (RFC 6532), as scripts write one, beside the 8-bit body.
        out = msmtp(rc, f"erin@{DOMAIN}",
                    message=f"From: alice@{DOMAIN}\nSubject: {subject} {n} Grüße\n\n{EIGHT_BIT} {n}\n".encode())
        assert out.returncode == 0, said(out)
    arrived(edge, "erin", subject, count=2)
    imaps = f"imaps://127.0.0.1:{edge.ports['imaps']}"
    imap = f"imap://127.0.0.1:{edge.ports['imap']}"

    for base, options in ((imaps, []), (imap, ["--ssl-reqd"])):
        listing = text(curl(edge, f"{base}/", *options, user="erin"))
        assert '"INBOX"' in listing and '\\Sent) "/" "Sent"' in listing, listing
    # SASL LOGIN (Outlook's, printers'): curl sends the user name as the initial response
    # (SASL-IR) and answers the "Password:" prompt.
    for base, options in ((imaps, ["--login-options", "AUTH=LOGIN"]),
                          (imap, ["--ssl-reqd", "--login-options", "AUTH=LOGIN"])):
        out = curl(edge, f"{base}/", *options, "-v", user="erin")
        assert out.returncode == 0 and '"INBOX"' in out.stdout.decode(), said(out)
        assert " AUTHENTICATE LOGIN " in said(out) and "< + UGFzc3dvcmQ6" in said(out), said(out)
    examined = text(curl(edge, f"{imaps}/", "-X", "EXAMINE INBOX", user="erin"))
    assert " EXISTS\r\n" in examined and "[PERMANENTFLAGS ()]" in examined, examined     # read-only
    uidvalidity = examined.split("[UIDVALIDITY ")[1].split("]")[0]

    found = text(curl(edge, f"{imaps}/INBOX", "-X", f'UID SEARCH SUBJECT "{subject} 2"', user="erin"))
    assert found.startswith("* SEARCH ") and len(found.split()) == 3, found
    uid = found.split()[2]
    # Searching the 8-bit body the script sent, as curl sends the text (8-bit, in a quoted string).
    by_body = text(curl(edge, f"{imaps}/INBOX", "-X", 'UID SEARCH CHARSET UTF-8 BODY "Bär und Öl 2"',
                        user="erin"))
    assert by_body.split() == ["*", "SEARCH", uid], by_body
    by_subject = text(curl(edge, f"{imaps}/INBOX", "-X", 'UID SEARCH CHARSET UTF-8 SUBJECT "2 grüße"', user="erin"))
    assert by_subject.split() == ["*", "SEARCH", uid], by_subject
    # (curl prints a custom command's untagged lines but not the literals in them: ENVELOPE
    # is read with Python's client.)
    client = edge.imaps("erin")
    client.select("INBOX", readonly=True)
    envelope = client.uid("FETCH", uid, "(ENVELOPE)")[1]
    client.logout()
    assert f"{subject} 2 Grüße".encode() in b"".join(p if isinstance(p, bytes) else b"".join(p) for p in envelope)
    everything = text(curl(edge, f"{imaps}/INBOX?ALL", user="erin"))       # a search in the URL (RFC 5092)
    assert everything.split()[:2] == ["*", "SEARCH"] and uid in everything.split()

    fetched = curl(edge, f"{imaps}/INBOX;UIDVALIDITY={uidvalidity};UID={uid}", user="erin")
    assert fetched.returncode == 0, said(fetched)
    assert f"Subject: {subject} 2".encode() in fetched.stdout and f"{EIGHT_BIT} 2".encode() in fetched.stdout
    header = text(curl(edge, f"{imaps}/INBOX/;UID={uid}/;SECTION=HEADER.FIELDS%20(SUBJECT)", user="erin"))
    assert header == f"Subject: {subject} 2 Grüße\r\n\r\n", header
    stale = curl(edge, f"{imaps}/INBOX;UIDVALIDITY=1;UID={uid}", user="erin")
    assert stale.returncode == CURLE_REMOTE_FILE_NOT_FOUND, said(stale)    # "UIDVALIDITY has changed"

    # An upload is an APPEND; it comes back by its UID.
    draft = tmp_path / "draft.eml"
    draft.write_bytes(f"From: erin@{DOMAIN}\r\nSubject: {subject} draft\r\n\r\nnot sent yet\r\n".encode())
    out = curl(edge, f"{imaps}/Drafts", "-T", str(draft), user="erin")
    assert out.returncode == 0, said(out)
    arrived(edge, "erin", f"{subject} draft", mailbox="Drafts")
    status = text(curl(edge, f"{imaps}/", "-X", "STATUS Drafts (MESSAGES)", user="erin"))
    assert "MESSAGES 1" in status, status
    stored = text(curl(edge, f"{imaps}/INBOX", "-X", f"UID STORE {uid} +FLAGS (\\Flagged)", user="erin"))
    assert "\\Flagged" in stored, stored
    assert uid in text(curl(edge, f"{imaps}/INBOX", "-X", "UID SEARCH FLAGGED", user="erin")).split()

    wrong = curl(edge, f"{imaps}/", user="erin", password="wrong")
    assert wrong.returncode == CURLE_LOGIN_DENIED, said(wrong)
    wrong = curl(edge, f"{imaps}/", "--login-options", "AUTH=LOGIN", user="erin", password="wrong")
    assert wrong.returncode == CURLE_LOGIN_DENIED, said(wrong)


def test_curl_pop3_lists_retrieves_and_deletes(edge, tmp_path):
    subject = unique("curl pop3")
    rc = msmtp_config(edge, tmp_path, "alice", implicit=True)
    for n in (1, 2, 3):
        out = msmtp(rc, f"frank@{DOMAIN}", message=f"From: alice@{DOMAIN}\nSubject: {subject} {n}\n\n.\n{EIGHT_BIT}\n".encode())
        assert out.returncode == 0, said(out)
    arrived(edge, "frank", subject, count=3)
    pop3s = f"pop3s://127.0.0.1:{edge.ports['pop3s']}"
    pop3 = f"pop3://127.0.0.1:{edge.ports['pop3']}"

    def listing(base: str, *options: str) -> dict[int, int]:
        lines = text(curl(edge, f"{base}/", *options, user="frank")).split("\r\n")
        return {int(n): int(size) for n, size in (line.split() for line in lines if line)}

    sizes = listing(pop3s)
    assert listing(pop3, "--ssl-reqd") == sizes and len(sizes) == 3, sizes
    uidls = text(curl(edge, f"{pop3s}/", "-X", "UIDL", user="frank")).split()
    for number, size in sizes.items():
        retrieved = curl(edge, f"{pop3s}/{number}", user="frank")
        assert retrieved.returncode == 0, said(retrieved)
        assert len(retrieved.stdout) == size                  # LIST's size is the octets RETR gives
        assert b"\r\n.\r\n" in retrieved.stdout and EIGHT_BIT.encode() in retrieved.stdout   # un-stuffed
    top = text(curl(edge, f"{pop3s}/", "-X", "TOP 1 0", user="frank"))
    assert "Subject: " in top and EIGHT_BIT not in top

    # DELE is a single-line answer: -I (no body) tells curl so; the deletion happens at QUIT.
    out = curl(edge, f"{pop3s}/1", "-X", "DELE", "-I", user="frank")
    assert out.returncode == 0, said(out)
    assert sorted(listing(pop3s)) == [1, 2]
    assert text(curl(edge, f"{pop3s}/", "-X", "UIDL", user="frank")).split() == ["1", uidls[3], "2", uidls[5]]
    out = curl(edge, f"{pop3s}/", "--login-options", "AUTH=PLAIN", "-X", "STAT", "-I", "-v", user="frank")
    assert out.returncode == 0 and "< +OK 2 " in said(out), said(out)
    # AUTH LOGIN: both prompts, or (--sasl-ir) the user name with the command.
    for base, options in ((pop3s, []), (pop3, ["--ssl-reqd", "--sasl-ir"])):
        out = curl(edge, f"{base}/", *options, "--login-options", "AUTH=LOGIN", "-X", "STAT", "-I", "-v",
                   user="frank")
        assert out.returncode == 0 and "< +OK 2 " in said(out), said(out)
        assert "> AUTH LOGIN" in said(out) and "< + UGFzc3dvcmQ6" in said(out), said(out)
        assert ("< + VXNlcm5hbWU6" in said(out)) == (not options), said(out)

    wrong = curl(edge, f"{pop3s}/", user="frank", password="wrong")
    assert wrong.returncode == CURLE_LOGIN_DENIED, said(wrong)
    wrong = curl(edge, f"{pop3s}/", "--login-options", "AUTH=LOGIN", user="frank", password="wrong")
    assert wrong.returncode == CURLE_LOGIN_DENIED, said(wrong)


def test_a_unix_file_uploaded_over_imap_is_listed_by_pop3_at_the_size_retr_sends(edge, tmp_path):
    """curl -T of a file with LF line ends into the INBOX (an APPEND): POP3's LIST counts what
    RETR then sends (RFC 1939 §11), as IMAP's RFC822.SIZE does."""
    colony(edge.data_dir, "account", "add", f"hank@{DOMAIN}", "--password", PASSWORD)
    imaps, pop3s = f"imaps://127.0.0.1:{edge.ports['imaps']}", f"pop3s://127.0.0.1:{edge.ports['pop3s']}"
    wait_for(lambda: curl(edge, f"{imaps}/", user="hank").returncode == 0, 120, "hank's login at the edge")
    unix = tmp_path / "unix.eml"
    unix.write_bytes(f"From: hank@{DOMAIN}\nSubject: a Unix file\n\nline one\n.\nline three\n".encode())
    out = curl(edge, f"{imaps}/INBOX", "-T", str(unix), user="hank")
    assert out.returncode == 0, said(out)
    [(number, size)] = [line.split() for line in text(curl(edge, f"{pop3s}/", user="hank")).splitlines()]
    retrieved = curl(edge, f"{pop3s}/{number}", user="hank")
    assert retrieved.returncode == 0, said(retrieved)
    assert retrieved.stdout == unix.read_bytes().replace(b"\n", b"\r\n") and len(retrieved.stdout) == int(size)
    imap_size = text(curl(edge, f"{imaps}/INBOX", "-X", "FETCH 1 RFC822.SIZE", user="hank"))
    assert f"RFC822.SIZE {size})" in imap_size, imap_size


def test_curl_in_the_clear_is_never_asked_for_the_password(edge):
    """Without --ssl-reqd curl stays in the clear; the edge offers no way to log in there
    (IMAP LOGINDISABLED and no AUTH=, POP3 neither USER nor SASL, SMTP no AUTH before
    STARTTLS: RFC 9051 §6.2.3, RFC 2595 §4, RFC 4954 §4), so no password crosses the wire --
    nor with AUTH=LOGIN asked for."""
    secret = base64.b64encode(f"\0alice@{DOMAIN}\0{PASSWORD}".encode()).decode()
    login_secret = base64.b64encode(PASSWORD.encode()).decode()
    for url in (f"imap://127.0.0.1:{edge.ports['imap']}/", f"pop3://127.0.0.1:{edge.ports['pop3']}/"):
        out = curl(edge, url, "--login-options", "AUTH=LOGIN", "-v")
        assert out.returncode == CURLE_LOGIN_DENIED, said(out)
        assert PASSWORD not in said(out) and login_secret not in said(out), said(out)
    imap = curl(edge, f"imap://127.0.0.1:{edge.ports['imap']}/", "-v")
    pop3 = curl(edge, f"pop3://127.0.0.1:{edge.ports['pop3']}/", "-v")
    smtp = curl(edge, f"smtp://127.0.0.1:{edge.ports['submission']}/client.test", "-v", "--mail-from",
                f"alice@{DOMAIN}", "--mail-rcpt", f"bob@{DOMAIN}", "-T", "/dev/null")
    assert imap.returncode == CURLE_LOGIN_DENIED and pop3.returncode == CURLE_LOGIN_DENIED, said(imap) + said(pop3)
    assert smtp.returncode == CURLE_SEND_ERROR and "< 530 5.7.0" in said(smtp), said(smtp)
    for out in (imap, pop3, smtp):
        assert PASSWORD not in said(out) and secret not in said(out), said(out)


# --- s-nail --------------------------------------------------------------------------------------

def s_nail(edge: Edge, tmp_path: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    """s-nail in batch mode (``-#``), no configuration but the options given: the test CA only,
    v15 URLs (user and password in the URL, percent-encoded)."""
    env = {"HOME": str(tmp_path), "MAILRC": "/dev/null", "LC_ALL": "C.UTF-8"}
    return run([need_tool("s-nail"), "-n", "-#", "-Sv15-compat", "-Sttycharset=utf-8", f"-Stls-ca-file={edge.ca}",
                "-Stls-ca-no-defaults", *args], stdin=stdin, env=env)


def url(scheme: str, user: str, port: int) -> str:
    return f"{scheme}://{quote(f'{user}@{DOMAIN}', safe='')}:{quote(PASSWORD, safe='')}@127.0.0.1:{port}"


def test_s_nail_sends_over_submission_and_reads_the_inbox_over_imap(edge, tmp_path):
    subject = unique("s-nail")
    for mta, extra in ((url("smtp", "carol", edge.ports["submission"]), ["-Ssmtp-use-starttls"]),
                       (url("smtps", "carol", edge.ports["submissions"]), ["-Ssmtp-auth=login"])):
        out = s_nail(edge, tmp_path, f"-Smta={mta}", *extra, f"-Sfrom=carol@{DOMAIN}", "-s", subject,
                     f"bob@{DOMAIN}", f"erin@{DOMAIN}", stdin=f"{EIGHT_BIT}\n".encode())
        assert out.returncode == 0, said(out)
    for user in ("bob", "erin"):
        for got in arrived(edge, user, subject, count=2):
            assert got.get_content().strip() == EIGHT_BIT        # s-nail's quoted-printable, decoded

    # The headers listing of the INBOX, over IMAPS and over IMAP with STARTTLS.
    imaps = url("imaps", "erin", edge.ports["imaps"])
    for folder, extra in ((imaps, []), (url("imap", "erin", edge.ports["imap"]), ["-Simap-use-starttls"])):
        out = s_nail(edge, tmp_path, *extra, "-Y", "headers", "-Y", "quit", "-f", folder)
        assert out.returncode == 0, said(out)
        assert said(out).count(subject) == 2, said(out)

    # With `folder` set, `+name` is a mailbox of the account: list them, read one message, flag
    # it, copy it to Archive, delete the other; quit writes it all back (STORE, APPEND, CLOSE).
    listed = s_nail(edge, tmp_path, f"-Sfolder={imaps}", "-Y", "folders @", "-Y", "quit", "-f", "+INBOX")
    assert listed.returncode == 0, said(listed)
    assert {"INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash"} <= set(said(listed).split()), said(listed)
    client = edge.imaps("erin")
    client.select("INBOX")
    mine = [int(n) for n in client.search(None, "SUBJECT", f'"{subject}"')[1][0].split()]
    client.logout()
    assert len(mine) == 2
    out = s_nail(edge, tmp_path, f"-Sfolder={imaps}", "-Y", f"type {mine[0]}", "-Y", f"flag {mine[0]}",
                 "-Y", f"copy {mine[0]} +Archive", "-Y", f"delete {mine[1]}", "-Y", "quit", "-f", "+INBOX")
    assert out.returncode == 0, said(out)
    assert EIGHT_BIT in said(out), said(out)                      # `type` showed the decoded text
    archived = arrived(edge, "erin", subject, mailbox="Archive")
    assert archived[0].get_content().strip() == EIGHT_BIT
    client = edge.imaps("erin")
    client.select("INBOX", readonly=True)
    left = client.search(None, "SUBJECT", f'"{subject}"')[1][0].split()
    flagged = client.search(None, "FLAGGED", "SUBJECT", f'"{subject}"')[1][0].split()
    client.logout()
    assert len(left) == 1 and flagged == left                    # the deleted one expunged at quit

    # And POP3, which s-nail reads too.
    out = s_nail(edge, tmp_path, "-Y", "headers", "-Y", "x", "-f", url("pop3s", "erin", edge.ports["pop3s"]))
    assert out.returncode == 0 and subject in said(out), said(out)


# --- a password every client must quote ----------------------------------------------------------

HARD_PASSWORD = 'Pässwört "q" \\ x%y:z'


def test_a_password_with_quotes_backslash_and_utf8_works_in_every_client(edge, tmp_path):
    """Each client carries it its own way: msmtp and curl in AUTH PLAIN / LOGIN (base64 of
    UTF-8), curl in IMAP AUTHENTICATE PLAIN / LOGIN and POP3 AUTH PLAIN / LOGIN, s-nail in
    IMAP LOGIN as a quoted string with \\" and \\\\ (8-bit in it, which the edge takes)."""
    colony(edge.data_dir, "account", "add", f"gina@{DOMAIN}", "--password", HARD_PASSWORD)
    imaps, pop3s = f"imaps://127.0.0.1:{edge.ports['imaps']}", f"pop3s://127.0.0.1:{edge.ports['pop3s']}"
    wait_for(lambda: curl(edge, f"{imaps}/", user="gina", password=HARD_PASSWORD).returncode == 0, 120,
             "gina's login at the edge")
    subject = unique("hard password")
    secret = tmp_path / "secret"
    secret.write_text(HARD_PASSWORD + "\n")
    for auth in ("plain", "login"):
        rc = msmtp_config(edge, tmp_path, "gina", implicit=False, auth=auth)
        # passwordeval: the config file's own quoting is not what this test is about
        rc.write_text(rc.read_text().replace(f"password {PASSWORD}\n", f"passwordeval cat {secret}\n"))
        out = msmtp(rc, f"bob@{DOMAIN}", message=f"From: gina@{DOMAIN}\nSubject: {subject}\n\nmsmtp\n".encode())
        assert out.returncode == 0, said(out)
    upload = tmp_path / "m.eml"
    upload.write_bytes(f"From: gina@{DOMAIN}\r\nSubject: {subject}\r\n\r\ncurl\r\n".encode())
    for mechanism in ("PLAIN", "LOGIN"):
        out = curl(edge, f"smtps://127.0.0.1:{edge.ports['submissions']}/client.test", "--login-options",
                   f"AUTH={mechanism}", "--mail-from", f"gina@{DOMAIN}", "--mail-rcpt", f"bob@{DOMAIN}",
                   "-T", str(upload), user="gina", password=HARD_PASSWORD)
        assert out.returncode == 0, said(out)
    arrived(edge, "bob", subject, count=4)
    for login in ([], ["--login-options", "AUTH=LOGIN"]):
        assert '"INBOX"' in text(curl(edge, f"{imaps}/", *login, user="gina", password=HARD_PASSWORD))
        assert curl(edge, f"{pop3s}/", *login, user="gina", password=HARD_PASSWORD).returncode == 0
    out = s_nail(edge, tmp_path, "-Sverbose", "-Sverbose", "-Y", "headers", "-Y", "quit", "-f",
                 f"imaps://{quote(f'gina@{DOMAIN}', safe='')}:{quote(HARD_PASSWORD, safe='')}@127.0.0.1:{edge.ports['imaps']}")
    assert out.returncode == 0 and " OK [CAPABILITY " in said(out), said(out)
    assert 'LOGIN "gina@acme.example" "Pässwört \\"q\\" \\\\ x%y:z"' in said(out), said(out)


def test_s_nail_attachment_name_comes_back_in_bodystructure(edge, tmp_path):
    """s-nail names a non-ASCII attachment the RFC 2231 way (filename*=utf-8''Gr%C3%B6...);
    an IMAP client that lists attachments reads the name from BODYSTRUCTURE."""
    attachment = tmp_path / "Größe.txt"
    attachment.write_text("hallo\n")
    subject = unique("s-nail attachment")
    out = s_nail(edge, tmp_path, f"-Smta={url('smtps', 'carol', edge.ports['submissions'])}",
                 f"-Sfrom=carol@{DOMAIN}", "-a", str(attachment), "-s", subject, f"dave@{DOMAIN}",
                 stdin=b"see attached\n")
    assert out.returncode == 0, said(out)
    got = arrived(edge, "dave", subject)[0]
    assert "filename*=utf-8''Gr%C3%B6%C3%9Fe.txt" in str(got), str(got)[-600:]
    client = edge.imaps("dave")
    client.select("INBOX", readonly=True)
    uid = client.uid("SEARCH", "SUBJECT", f'"{subject}"')[1][0].split()[-1]
    answer = client.uid("FETCH", uid, "(BODYSTRUCTURE)")[1]
    client.logout()
    octets = b"".join(p if isinstance(p, bytes) else b"".join(p) for p in answer)
    assert "Größe.txt".encode() in octets and "Ã".encode() not in octets, octets


def test_s_nail_account_from_a_mailrc_sends_records_and_reads(edge, tmp_path):
    """As a user sets s-nail up: an ``account`` block in the resource file (``-A``) with the
    IMAP folder, the SMTPS submission and ``record=+Sent``, which APPENDs each sent message
    to the Sent mailbox over IMAP."""
    mailrc = tmp_path / "mailrc"
    mailrc.write_text(f"set v15-compat\nset tls-ca-file={edge.ca} tls-ca-no-defaults\n"
                      "account colony {\n"
                      f"  set folder={url('imaps', 'dave', edge.ports['imaps'])}\n"
                      f"  set mta={url('smtps', 'dave', edge.ports['submissions'])}\n"
                      f"  set from=dave@{DOMAIN}\n  set record=+Sent\n}}\n")
    mailrc.chmod(0o600)
    env = {"HOME": str(tmp_path), "MAILRC": str(mailrc), "LC_ALL": "C.UTF-8"}
    snail = need_tool("s-nail")
    subject = unique("s-nail account")
    out = run([snail, "-n", "-#", "-A", "colony", "-s", subject, f"erin@{DOMAIN}"], stdin=b"from the account\n", env=env)
    assert out.returncode == 0, said(out)
    arrived(edge, "erin", subject)
    arrived(edge, "dave", subject, mailbox="Sent")
    for folder in ("+Sent", "+INBOX"):
        out = run([snail, "-n", "-#", "-A", "colony", "-Y", "headers", "-Y", "quit", "-f", folder], env=env)
        assert out.returncode == 0, said(out)
        assert (subject in said(out)) == (folder == "+Sent"), said(out)
