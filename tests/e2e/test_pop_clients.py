"""Two more of Debian's POP3 clients against `colony up`'s edge, for real: mpop (the strict
POP3 client by msmtp's author: CA-checked TLS, STLS, SASL, CAPA, pipelining, UIDL-based "only
new", TOP for its header filter) and mailutils' movemail (pops://, pop://, imaps://, imap://
URLs: moves the mail into a local mbox and deletes it on the server).  What a client did is
judged by reading both sides: the files it wrote, and the server with Python's poplib and
imaplib.  mpop hands its deliveries over with LF line ends (maildir, mbox and MDA alike) and,
with ``received_header off``, adds nothing; movemail writes mboxrd (RFC 4155) and adds its
X-IMAPbase / X-UID fields.  movemail has no way to be told a CA and checks no certificate."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from test_mail_clients import DOMAIN, PASSWORD, Edge, arrived, edge, run, said, unique  # noqa: F401 (edge: the fixture)
from test_sync_clients import EIGHT_BIT_BODY, add_account, mail, message, pop3_uidls
from tools import need_tool

pytestmark = pytest.mark.slow

EX_NOPERM = 77          # sysexits.h: mpop's "authentication failed"
# A body with what POP3 must dot-stuff and mbox must quote
AWKWARD_BODY = b".\r\n..two dots\r\n.leading\r\nFrom the start of a line\r\n>From quoted already\r\nend\r\n"


def mpop_rc(edge: Edge, home: Path, user: str, *, stls: bool, password: str = PASSWORD, extra: str = "") -> Path:
    """An mpop account as a user writes one: the server's certificate checked against the local
    CA, STLS on the POP3 port or TLS from the first octet on POP3S; a maildir under ``home``."""
    maildir = home / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    rc = home / f"mpoprc-{'stls' if stls else 'pop3s'}"
    port = edge.ports["pop3" if stls else "pop3s"]
    rc.write_text(f"account default\nhost 127.0.0.1\nport {port}\ntls on\ntls_starttls {'on' if stls else 'off'}\n"
                  f"tls_trust_file {edge.ca}\nuser {user}@{DOMAIN}\npassword {password}\n"
                  f"delivery maildir {maildir}\nuidls_file {home / 'uidls'}\nreceived_header off\n{extra}")
    rc.chmod(0o600)        # mpop refuses a password in a file others may read
    return rc


def mpop(rc: Path, *args: str) -> subprocess.CompletedProcess:
    """mpop's protocol log (``--debug``) shows each line as received, CRLF and all: in LF here."""
    out = run([need_tool("mpop"), "-C", str(rc), "--debug", *args])
    out.stdout, out.stderr = out.stdout.replace(b"\r\n", b"\n"), out.stderr.replace(b"\r\n", b"\n")
    return out


def delivered(home: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((home / "Maildir" / "new").iterdir())]


def as_mpop_writes(octets: bytes) -> bytes:
    return octets.replace(b"\r\n", b"\n")


@pytest.mark.parametrize("stls", [False, True], ids=["pop3s", "stls"])
def test_mpop_serverinfo_shows_the_capabilities(edge, tmp_path, stls):
    """``--serverinfo`` logs in and prints what it parsed from CAPA (RFC 2449): after STLS it
    asks again (RFC 2595 §4), and only then are USER and SASL PLAIN LOGIN offered -- never in the
    clear."""
    user = f"ida{'stls' if stls else 'pop3s'}"
    add_account(edge, user)
    out = mpop(mpop_rc(edge, tmp_path, user, stls=stls), "--serverinfo")
    text = said(out)
    assert out.returncode == 0, text
    assert "Issuer:\n        CN=Colony local CA" in text
    info = text[text.index("POP3 capabilities:"):]
    for capability in ("PIPELINING:", "TOP:", "UIDL:", "RESP-CODES:", "AUTH-RESP-CODE:",
                       "IMPLEMENTATION:\n        Colony", "EXPIRE NEVER:\n        this POP3 server will never delete mails",
                       "LOGIN-DELAY 0:", "Supported authentication methods:\n        USER PLAIN"):
        assert capability in info, info
    assert ("STLS:" in info) == stls, info
    capas = re.findall(r"--> CAPA\n<-- \+OK[^\n]*\n((?:<-- [^\n]*\n)*?)<-- \.\n", text)
    assert capas, text
    if stls:
        assert "--> STLS\n<-- +OK" in text
        before, after = capas[0], capas[1]
        assert "<-- STLS" in before and "<-- USER" not in before and "SASL" not in before, before
        assert "<-- STLS" not in after and "<-- USER\n" in after and "<-- SASL PLAIN LOGIN\n" in after, after
    else:
        assert "--> STLS" not in text and "<-- SASL PLAIN LOGIN\n" in capas[0], text
    assert "--> AUTH PLAIN" in text

    # mpop checks the certificate: without the local CA the handshake is refused
    untrusted = mpop(mpop_rc(edge, tmp_path, user, stls=stls, extra="tls_trust_file system\n"), "--serverinfo")
    assert untrusted.returncode != 0 and "certificate" in said(untrusted).lower(), said(untrusted)


def test_mpop_fetches_only_new_mail_keeps_it_or_deletes_it(edge, tmp_path):
    """``--keep`` over POP3S, then again over STLS (the UIDLs file names the server and user, not
    the port: nothing is new), then new mail and a run without ``--keep``: only the new message
    is delivered, and every message -- old and new -- is deleted on the server.  What mpop
    delivers is the octets RETR sent (in LF), the sender's message at its end."""
    user = "jana"
    add_account(edge, user)
    subject = unique("mpop")
    sent = [message(f"{subject} {n}", AWKWARD_BODY) for n in range(3)]
    sent.append(message(f"{subject} 8bit", EIGHT_BIT_BODY, b"Content-Transfer-Encoding: 8bit\r\n"))
    mail(edge, user, sent)
    arrived(edge, user, subject, count=4)
    on_server = pop3_uidls(edge, user)
    assert len(on_server) == 4

    out = mpop(mpop_rc(edge, tmp_path, user, stls=False), "--keep")
    assert out.returncode == 0, said(out)
    assert said(out).count("--> RETR ") == 4 and "--> DELE" not in said(out)
    files = delivered(tmp_path)
    assert sorted(files) == sorted(as_mpop_writes(octets) for octets in on_server.values())
    for octets in sent:
        assert sum(f.endswith(as_mpop_writes(octets)) for f in files) == 1
    assert pop3_uidls(edge, user) == on_server                    # kept
    assert set(on_server) <= set((tmp_path / "uidls").read_text().split())

    stls = mpop_rc(edge, tmp_path, user, stls=True)
    out = mpop(stls, "--keep", "--only-new")
    assert out.returncode == 0 and "--> RETR" not in said(out) and "new: no messages" in said(out), said(out)
    assert len(delivered(tmp_path)) == 4

    mail(edge, user, [message(f"{subject} late")])
    arrived(edge, user, f"{subject} late")
    late = {uidl: octets for uidl, octets in pop3_uidls(edge, user).items() if uidl not in on_server}
    assert len(late) == 1
    out = mpop(stls)
    assert out.returncode == 0, said(out)
    assert said(out).count("--> RETR ") == 1 and said(out).count("--> DELE ") == 5, said(out)
    files = delivered(tmp_path)
    assert len(files) == 5 and as_mpop_writes(next(iter(late.values()))) in files
    assert pop3_uidls(edge, user) == {}
    out = mpop(stls)
    assert out.returncode == 0 and "no messages" in said(out), said(out)
    assert len(delivered(tmp_path)) == 5


def test_mpop_filter_reads_headers_with_top(edge, tmp_path):
    """mpop's ``filter`` is given each message's header section (``TOP n 0``, RFC 1939 §7) and
    says deliver (0), delete unread (1) or skip (2): the skipped message stays on the server,
    the deleted one is gone without being fetched."""
    user = "kira"
    add_account(edge, user)
    subject = unique("filter")
    mail(edge, user, [message(f"{subject} keep", b"wanted\r\n"), message(f"{subject} junk", b"unwanted\r\n"),
                      message(f"{subject} later", b"for another day\r\n")])
    arrived(edge, user, subject, count=3)
    script = tmp_path / "filter.sh"
    script.write_text("#!/bin/sh\ncase \"$(cat)\" in *'Subject: '*junk*) exit 1;; *'Subject: '*later*) exit 2;; esac\n"
                      "exit 0\n")
    script.chmod(0o755)
    out = mpop(mpop_rc(edge, tmp_path, user, stls=True, extra=f"filter {script}\n"))
    assert out.returncode == 0, said(out)
    assert len(re.findall(r"--> TOP \d+ 0\n", said(out))) == 3, said(out)
    assert said(out).count("--> RETR ") == 1
    [file] = delivered(tmp_path)
    assert f"Subject: {subject} keep".encode() in file and file.endswith(b"\nwanted\n")
    [left] = pop3_uidls(edge, user).values()
    assert f"Subject: {subject} later".encode() in left


def test_mpop_retrieves_a_5_mb_message_byte_exact(edge, tmp_path):
    """A 5 MB message (lines that start with a dot among them) and a small one after it, RETR
    pipelined, handed to an MDA: the octets the server holds, in LF, the sender's at the end."""
    user = "lena"
    add_account(edge, user)
    subject = unique("big")
    line = b"0123456789abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ !#$%&*+-/=?^_`{|}~\r\n"
    body = b"".join((b"." if n % 9 == 0 else b"") + line for n in range(5 * 1024 * 1024 // len(line)))
    big = message(f"{subject} 5MB", body)
    mail(edge, user, [big, message(f"{subject} small")])
    arrived(edge, user, subject, count=2)
    on_server = pop3_uidls(edge, user)
    out_dir = tmp_path / "mda"
    out_dir.mkdir()
    rc = mpop_rc(edge, tmp_path, user, stls=False,
                 extra=f"delivery mda \"cat > {out_dir}/$$\"\n")       # a file per message, one process each
    out = run([need_tool("mpop"), "-C", str(rc), "--keep"])
    assert out.returncode == 0, said(out)
    files = [p.read_bytes() for p in out_dir.iterdir()]
    assert sorted(files) == sorted(as_mpop_writes(octets) for octets in on_server.values())
    [got] = [f for f in files if len(f) > 5_000_000]
    assert got.endswith(as_mpop_writes(big))


def test_mpop_shows_the_servers_refusal_of_a_wrong_password(edge, tmp_path):
    """A wrong password is ``-ERR [AUTH]`` (RFC 3206 §4: the credentials, not the server):
    mpop's exit code is "no permission" (EX_NOPERM), and with USER/PASS it shows the server's
    line itself; with SASL PLAIN it names the mechanism (mpop shows no server text there)."""
    user = "mona"
    add_account(edge, user)
    for stls in (False, True):
        wrong = mpop_rc(edge, tmp_path, user, stls=stls, password="not the password")
        out = mpop(wrong, "--auth=user")
        assert out.returncode == EX_NOPERM, said(out)
        assert "POP3 server message: -ERR [AUTH] Authentication failed" in said(out), said(out)
        out = mpop(wrong, "--auth=plain")
        assert out.returncode == EX_NOPERM, said(out)
        assert "authentication failed (method PLAIN)" in said(out) and "<-- -ERR [AUTH]" in said(out), said(out)
    out = mpop(mpop_rc(edge, tmp_path, user, stls=True), "--serverinfo")
    assert out.returncode == 0, said(out)          # four failures are no lock for the right password


# --- movemail ------------------------------------------------------------------------------------

def mbox_messages(path: Path) -> list[bytes]:
    """The messages of an mboxrd file (RFC 4155) as the server sent them: the From_ line and the
    blank line after each message dropped, one '>' taken off quoted From_ lines, mailutils'
    X-IMAPbase and X-UID fields removed, CRLF line ends."""
    data = path.read_bytes()
    assert data.startswith(b"From ")
    found = []
    for chunk in re.split(rb"(?m)^From [^\n]*\n", data)[1:]:
        assert chunk.endswith(b"\n\n"), chunk[-200:]
        header, _, body = chunk[:-1].partition(b"\n\n")
        header = re.sub(rb"(?m)^X-(IMAPbase|UID):[^\n]*\n", b"", header + b"\n")
        body = re.sub(rb"(?m)^>(>*From )", rb"\1", body)
        found.append((header + b"\n" + body).replace(b"\n", b"\r\n"))
    return found


@pytest.mark.parametrize("scheme", ["pops", "pop", "imaps", "imap"])
def test_movemail_moves_every_message_once_and_empties_the_server(edge, tmp_path, scheme):
    """``movemail URL mbox``: pop:// and imap:// go through STLS / STARTTLS (the edge takes no
    password in the clear), pops:// and imaps:// through implicit TLS.  Each message is in the
    mbox exactly once, as the server has it (POP3 RETR's octets; IMAP's BODY[] is the same
    octets), the server is empty afterwards, and a second run moves nothing."""
    user = f"mm{scheme}"
    add_account(edge, user)
    subject = unique(f"movemail {scheme}")
    mail(edge, user, [message(f"{subject} {n}", AWKWARD_BODY) for n in range(4)]
         + [message(f"{subject} 8bit", EIGHT_BIT_BODY, b"Content-Transfer-Encoding: 8bit\r\n")])
    arrived(edge, user, subject, count=5)
    on_server = pop3_uidls(edge, user)
    assert len(on_server) == 5
    port = edge.ports[{"pops": "pop3s", "pop": "pop3", "imaps": "imaps", "imap": "imap"}[scheme]]
    url = f"{scheme}://{user}%40{DOMAIN}:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{port}"
    mbox = tmp_path / "mbox"
    movemail = need_tool("movemail", "mailutils")
    out = run([movemail, "--no-config", "--debug-level=mailbox.prot", "-v", url, str(mbox)])
    assert out.returncode == 0 and "number of errors: 0" in said(out), said(out)
    if not scheme.endswith("s"):
        assert re.search(r"C: (\d+ )?(STLS|STARTTLS)\n", said(out)), said(out)
    moved = mbox_messages(mbox)
    assert sorted(moved) == sorted(on_server.values())
    assert pop3_uidls(edge, user) == {}
    client = edge.imaps(user)
    try:
        assert client.select("INBOX", readonly=True)[1] == [b"0"]
    finally:
        client.logout()
    before = mbox.read_bytes()
    out = run([movemail, "--no-config", "-v", url, str(mbox)])
    assert out.returncode == 0 and "number of processed messages: 0" in said(out), said(out)
    assert mbox.read_bytes() == before


def test_movemail_preserve_with_uidls_copies_only_new_mail(edge, tmp_path):
    """``--preserve --uidl``: the server keeps its mail and movemail skips what it copied before
    -- it knows it by the UIDL it wrote into the mbox (X-UIDL), so UIDL must name a message for
    good across sessions."""
    user = "mmuidl"
    add_account(edge, user)
    subject = unique("movemail uidl")
    mail(edge, user, [message(f"{subject} {n}") for n in range(3)])
    arrived(edge, user, subject, count=3)
    url = f"pops://{user}%40{DOMAIN}:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{edge.ports['pop3s']}"
    mbox = tmp_path / "mbox"
    movemail = need_tool("movemail", "mailutils")

    def copy() -> int:
        out = run([movemail, "--no-config", "-v", "--preserve", "--uidl", url, str(mbox)])
        assert out.returncode == 0 and "number of errors: 0" in said(out), said(out)
        return int(re.search(r"number of processed messages: (\d+)", said(out))[1])
    assert copy() == 3
    on_server = pop3_uidls(edge, user)
    assert len(on_server) == 3
    assert copy() == 0
    mail(edge, user, [message(f"{subject} late")])
    arrived(edge, user, f"{subject} late")
    assert copy() == 1
    uidls = pop3_uidls(edge, user)
    assert len(uidls) == 4
    assert mbox.read_bytes().count(b"\nFrom ") + 1 == 4
    assert sorted(re.findall(rb"(?m)^X-UIDL: (\S+)$", mbox.read_bytes())) == sorted(u.encode() for u in uidls)
