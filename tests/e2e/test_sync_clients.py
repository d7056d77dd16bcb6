"""Two more of Debian's mail clients against `colony up`'s edge, for real: offlineimap3 (two-way
IMAP sync of a Maildir: UIDVALIDITY, UIDPLUS, flags and deletes both ways, folders made on
either side, non-ASCII folder names, IDLE) and getmail6 (POP3 and IMAP retrieval into a
Maildir, "new only" by UIDL across runs, delete after retrieving).  What a client did is
judged by reading both sides: the local Maildir, and the server with Python's imaplib and
poplib.  offlineimap uses neither CONDSTORE nor QRESYNC (it compares the whole UID list and
flags on every run); the HIGHESTMODSEQ of every mailbox is what shows that a second sync
changed nothing on the server.  getmail speaks no STARTTLS (POP3S and IMAPS only);
offlineimap is run both ways."""

from __future__ import annotations

import imaplib
import os
import poplib
import re
import signal
import smtplib
import ssl
import subprocess
import tempfile
from email.header import decode_header, make_header
from pathlib import Path

import pytest

from test_colony_up import ready_nodes, status_json, wait_deliverable, wait_for
from test_mail_clients import DOMAIN, PASSWORD, Edge, arrived, colony, edge, run, said, unique  # noqa: F401 (edge: the fixture)
from tools import need_tool

pytestmark = pytest.mark.slow

# Maildir info flags (https://cr.yp.to/proto/maildir.html), as offlineimap maps them
MAILDIR_FLAGS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted"}
# Octets a script mails without MIME's help: Latin-1 (no valid UTF-8), C0 controls, DEL, 0x80-0xFF
EIGHT_BIT_BODY = (b"Gr\xfc\xdfe \xe9t\xe9 \x80\x81\xfe\xff raw octets\r\n\x01\x02\x1b[0m \x7f control\r\n"
                  + bytes(range(0x80, 0x100)) + b"\r\nend\r\n")


def add_account(edge: Edge, user: str) -> None:
    colony(edge.data_dir, "account", "add", f"{user}@{DOMAIN}", "--password", PASSWORD)

    def logs_in() -> bool:
        try:
            edge.imaps(user).logout()
        except (imaplib.IMAP4.error, OSError):
            return False
        return True
    wait_for(logs_in, 120, f"{user}'s login at the edge")
    wait_deliverable(edge.ports["smtp"], f"{user}@{DOMAIN}", timeout=120)


def mail(edge: Edge, user: str, messages: list[bytes]) -> None:
    """Into the MX, as a remote sender (8BITMIME, which the edge offers)."""
    with smtplib.SMTP("127.0.0.1", edge.ports["smtp"], timeout=120) as smtp:
        smtp.ehlo("sender.test")
        for message in messages:
            smtp.sendmail("sender@remote.test", [f"{user}@{DOMAIN}"], message, mail_options=["BODY=8BITMIME"])


def message(subject: str, body: bytes = b"hello\r\n", headers: bytes = b"") -> bytes:
    return f"From: sender@remote.test\r\nSubject: {subject}\r\n".encode() + headers + b"\r\n" + body


# --- reading the two sides -------------------------------------------------------------------------

State = dict[str, dict[int, tuple[frozenset[str], bytes]]]   # mailbox -> UID -> (flags, octets)


def server_state(edge: Edge, user: str) -> tuple[State, dict[str, tuple[int, int]]]:
    """Every mailbox of ``user`` as the server has it, names in UTF-8 (ENABLE UTF8=ACCEPT),
    and each mailbox's (UIDVALIDITY, HIGHESTMODSEQ)."""
    client = edge.imaps(user)
    try:
        assert client.enable("UTF8=ACCEPT")[0] == "OK"
        names = []
        for line in client.list()[1]:
            match = re.fullmatch(rb'\((.*?)\) "/" "?(.*?)"?', line)
            assert match, line
            if b"\\Noselect" not in match[1] and b"\\NonExistent" not in match[1]:
                names.append(match[2].decode())
        state: State = {}
        marks: dict[str, tuple[int, int]] = {}
        for name in names:
            quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
            status = client.status(quoted, "(UIDVALIDITY HIGHESTMODSEQ)")[1][0]
            marks[name] = (int(re.search(rb"UIDVALIDITY (\d+)", status)[1]),
                           int(re.search(rb"HIGHESTMODSEQ (\d+)", status)[1]))
            typ, data = client.select(quoted, readonly=True)
            assert typ == "OK", (name, data)
            state[name] = {}
            if int(data[0]) == 0:
                continue
            typ, data = client.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[])")
            assert typ == "OK", data
            for n, item in enumerate(data):
                if not isinstance(item, tuple):
                    continue
                # UID and FLAGS may come before or after the literal (data[n + 1] then)
                rest = item[0] + (data[n + 1] if n + 1 < len(data) and isinstance(data[n + 1], bytes) else b"")
                uid = int(re.search(rb"UID (\d+)", rest)[1])
                flags = re.search(rb"FLAGS \(([^)]*)\)", rest)[1].decode().split()
                state[name][uid] = (frozenset(flags), item[1])
        return state, marks
    finally:
        client.logout()


def local_state(root: Path) -> State:
    """offlineimap's Maildir: folder ``a.b`` is the server's ``a/b``; a file's UID is its
    ``U=`` and its flags the info after ``:2,``; lines are stored with LF, sent as CRLF."""
    state: State = {}
    for folder in sorted(p for p in root.iterdir() if (p / "cur").is_dir()):
        name = folder.name.replace(".", "/")
        state[name] = {}
        for file in (*(folder / "cur").iterdir(), *(folder / "new").iterdir()):
            uid = re.search(r",U=(\d+),", file.name)
            assert uid, f"{file} was never given a UID"
            info = file.name.rpartition(":2,")[2]
            flags = frozenset(MAILDIR_FLAGS[f] for f in info if f in MAILDIR_FLAGS)
            state[name][int(uid[1])] = (flags, file.read_bytes().replace(b"\n", b"\r\n"))
    return state


def local_files(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*") if p.is_file()}


def maildir_file(root: Path, folder: str, uid: int) -> Path:
    [found] = [p for sub in ("cur", "new") for p in (root / folder / sub).iterdir() if f",U={uid}," in p.name]
    return found


def set_local_flags(file: Path, flags: str) -> Path:
    """What a mail reader does to mark a message: move it to cur/ with the new info."""
    target = file.parent.parent / "cur" / (file.name.rpartition(":2,")[0] + ":2," + "".join(sorted(flags)))
    file.rename(target)
    return target


def new_local_message(root: Path, folder: str, content: bytes) -> None:
    """A message a local program drops into the Maildir (no UID yet; LF line ends)."""
    for sub in ("cur", "new", "tmp"):
        (root / folder / sub).mkdir(parents=True, exist_ok=True)
    name = f"{os.getpid()}.{len(list((root / folder / 'new').iterdir()))}.localhost"
    (root / folder / "tmp" / name).write_bytes(content.replace(b"\r\n", b"\n"))
    (root / folder / "tmp" / name).rename(root / folder / "new" / name)


# --- offlineimap ---------------------------------------------------------------------------------

def offlineimap_rc(edge: Edge, home: Path, user: str, *, starttls: bool = False, account: str = "",
                   remote: str = "") -> Path:
    """offlineimap's configuration as a user writes one: the server's certificate checked against
    the local CA, TLS 1.2 or later, a Maildir under ``home``."""
    tls = (f"port = {edge.ports['imap']}\nssl = no\nstarttls = yes\n" if starttls
           else f"port = {edge.ports['imaps']}\nssl = yes\n")
    rc = home / "offlineimaprc"
    rc.write_text(
        f"[general]\naccounts = colony\nmetadata = {home / 'state'}\nui = basic\n\n"
        f"[Account colony]\nlocalrepository = local\nremoterepository = remote\n{account}\n"
        f"[Repository local]\ntype = Maildir\nlocalfolders = {home / 'mail'}\n\n"
        f"[Repository remote]\ntype = IMAP\nremotehost = 127.0.0.1\nremote{tls}"
        f"sslcacertfile = {edge.ca}\nssl_version = tls1_2\ntls_level = tls_secure\n"
        f"remoteuser = {user}@{DOMAIN}\nremotepass = {PASSWORD}\n{remote}\n")
    return rc


def offlineimap(rc: Path) -> str:
    """One sync (``-o``) of every folder; a run that reports any error fails the test."""
    out = run([need_tool("offlineimap", "offlineimap3"), "-c", str(rc), "-o", "-u", "basic"],
              env={"HOME": str(rc.parent)})
    assert out.returncode == 0 and "ERROR" not in said(out), said(out)
    return said(out)


def assert_in_sync(edge: Edge, user: str, root: Path) -> tuple[State, dict[str, tuple[int, int]]]:
    server, marks = server_state(edge, user)
    local = local_state(root)
    assert sorted(local) == sorted(server)
    for name in server:
        assert local[name].keys() == server[name].keys(), name
        for uid, (flags, octets) in server[name].items():
            assert local[name][uid][0] == flags - {"\\Recent"}, (name, uid, local[name][uid][0], flags)
            assert local[name][uid][1] == octets, (name, uid)
    return server, marks


def test_offlineimap_syncs_both_ways_and_a_second_sync_changes_nothing(edge, tmp_path):
    """Delivered mail down, flags and deletions both ways, a folder made on each side, a message
    written into the local Maildir up (APPEND, its UID from APPENDUID): afterwards both sides
    hold the same UIDs, flags and octets, and another sync moves nothing on either."""
    user, count = "olivia", 12
    add_account(edge, user)
    subject = unique("offlineimap")
    mail(edge, user, [message(f"{subject} {n}", f"message {n}\r\n.\r\n..dots\r\n".encode()) for n in range(count)])
    arrived(edge, user, subject, count=count)
    rc = offlineimap_rc(edge, tmp_path, user)
    root = tmp_path / "mail"
    offlineimap(rc)
    server, _ = assert_in_sync(edge, user, root)
    uids = sorted(server["INBOX"])
    assert len(uids) == count and {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"} <= set(server)

    # Local changes: read, flagged, answered + draft, two deleted, a new folder with two messages
    # and a new message in INBOX.
    set_local_flags(maildir_file(root, "INBOX", uids[0]), "S")
    set_local_flags(maildir_file(root, "INBOX", uids[1]), "FS")
    set_local_flags(maildir_file(root, "INBOX", uids[2]), "DR")
    maildir_file(root, "INBOX", uids[3]).unlink()
    maildir_file(root, "INBOX", uids[4]).unlink()
    new_local_message(root, "Lokal", message(f"{subject} local 1"))
    new_local_message(root, "Lokal", message(f"{subject} local 2", b"second\r\n"))
    new_local_message(root, "INBOX", message(f"{subject} local inbox"))
    # Remote changes, at the same time: flags set and cleared, one deleted, a folder made with a
    # read message, new mail delivered.
    client = edge.imaps(user)
    client.select("INBOX")
    assert client.uid("STORE", str(uids[5]), "+FLAGS", "(\\Seen \\Flagged)")[0] == "OK"
    assert client.uid("STORE", str(uids[6]), "+FLAGS", "(\\Answered)")[0] == "OK"
    assert client.uid("STORE", str(uids[1]), "+FLAGS", "(\\Seen)")[0] == "OK"    # the same on both sides
    assert client.uid("STORE", str(uids[7]), "+FLAGS", "(\\Deleted)")[0] == "OK"
    assert client.expunge()[0] == "OK"
    assert client.create("Fern")[0] == "OK"
    assert client.append("Fern", "(\\Seen)", None, message(f"{subject} remote"))[0] == "OK"
    client.logout()
    mail(edge, user, [message(f"{subject} late")])
    arrived(edge, user, f"{subject} late")

    offlineimap(rc)
    server, marks = assert_in_sync(edge, user, root)
    inbox = server["INBOX"]
    assert uids[3] not in inbox and uids[4] not in inbox and uids[7] not in inbox     # deleted on either side
    assert inbox[uids[0]][0] == {"\\Seen"} and inbox[uids[1]][0] == {"\\Seen", "\\Flagged"}
    assert inbox[uids[2]][0] == {"\\Draft", "\\Answered"}
    assert inbox[uids[5]][0] == {"\\Seen", "\\Flagged"} and inbox[uids[6]][0] == {"\\Answered"}
    assert len(inbox) == count - 3 + 2                        # + the local one and the late one
    subjects = {octets.split(b"Subject: ")[1].split(b"\r\n")[0].decode(): uid for uid, (_, octets) in inbox.items()}
    assert subjects[f"{subject} local inbox"] > uids[-1] and f"{subject} late" in subjects
    assert sorted(m[1] for m in server["Lokal"].values()) == [message(f"{subject} local 1"),
                                                               message(f"{subject} local 2", b"second\r\n")]
    assert [f for f, _ in server["Fern"].values()] == [{"\\Seen"}]

    # A second sync changes nothing: no file touched, no mailbox's HIGHESTMODSEQ moved.
    files = local_files(root)
    offlineimap(rc)
    assert local_files(root) == files
    again, marks_again = assert_in_sync(edge, user, root)
    assert again == server and marks_again == marks

    # Flags cleared on either side travel too; a message marked deleted locally (T) is marked
    # \\Deleted on the server (offlineimap expunges only what it deletes itself), and once
    # another client expunges it the local file goes too.
    set_local_flags(maildir_file(root, "INBOX", uids[1]), "")
    set_local_flags(maildir_file(root, "INBOX", uids[8]), "T")
    client = edge.imaps(user)
    client.select("INBOX")
    assert client.uid("STORE", str(uids[5]), "-FLAGS", "(\\Flagged)")[0] == "OK"
    client.logout()
    offlineimap(rc)
    server, _ = assert_in_sync(edge, user, root)
    assert server["INBOX"][uids[1]][0] == set() and server["INBOX"][uids[5]][0] == {"\\Seen"}
    assert server["INBOX"][uids[8]][0] == {"\\Deleted"}
    client = edge.imaps(user)
    client.select("INBOX")
    assert client.expunge()[0] == "OK"
    client.logout()
    offlineimap(rc)
    server, _ = assert_in_sync(edge, user, root)
    assert uids[8] not in server["INBOX"]


def test_offlineimap_over_starttls_keeps_non_ascii_names_and_8bit_octets(edge, tmp_path):
    """utf8foldernames: offlineimap names local folders in UTF-8 and the server's in modified
    UTF-7 (RFC 3501 §5.1.3).  Folders made on each side under non-ASCII names, nested, arrive
    on the other under the same name; the server lists them in modified UTF-7, and in UTF-8
    after ENABLE UTF8=ACCEPT (RFC 6855).  A message of raw 8-bit octets, delivered and written
    locally, is the same octets on both sides."""
    user = "paula"
    add_account(edge, user)
    client = edge.imaps(user)
    assert client.create('"&AMQ-rger/Stra&AN8-e"')[0] == "OK"            # Ärger/Straße
    assert client.append('"&AMQ-rger/Stra&AN8-e"', None, None, message("in der Straße"))[0] == "OK"
    client.logout()
    subject = unique("8bit")
    delivered = message(subject, EIGHT_BIT_BODY, b"Content-Type: text/plain; charset=iso-8859-1\r\n"
                                                 b"Content-Transfer-Encoding: 8bit\r\n")
    mail(edge, user, [delivered])
    arrived(edge, user, subject)
    rc = offlineimap_rc(edge, tmp_path, user, starttls=True, account="utf8foldernames = yes\n")
    root = tmp_path / "mail"
    offlineimap(rc)
    assert (root / "Ärger.Straße").is_dir()
    server, _ = assert_in_sync(edge, user, root)
    [(_, octets)] = [m for m in server["INBOX"].values()]
    assert octets.endswith(delivered)                    # the edge adds trace fields in front only

    written = message("local 8bit", EIGHT_BIT_BODY, b"Content-Transfer-Encoding: 8bit\r\n")
    new_local_message(root, "Größe", written)
    new_local_message(root, "Ärger.Neu€", message("neu"))
    offlineimap(rc)
    server, _ = assert_in_sync(edge, user, root)
    assert [m[1] for m in server["Größe"].values()] == [written]
    assert len(server["Ärger/Neu€"]) == 1 and len(server["Ärger/Straße"]) == 1
    client = edge.imaps(user)
    names = client.list()[1]
    client.logout()
    for encoded in (b'"Gr&APYA3w-e"', b'"&AMQ-rger"', b'"&AMQ-rger/Neu&IKw-"', b'"&AMQ-rger/Stra&AN8-e"'):
        assert any(line.endswith(encoded) for line in names), names
    files = local_files(root)
    offlineimap(rc)
    assert local_files(root) == files


# imaplib2 (offlineimap's and getmail's IMAP library) from Debian's python3-imaplib2, run by
# Debian's Python: STARTTLS as offlineimap does it (TLS 1.3), then CAPABILITY, in four threads.
IMAPLIB2_STARTTLS = """
import sys, threading
import imaplib2
port, rounds = int(sys.argv[1]), int(sys.argv[2])
failures = []
def sessions():
    for _ in range(rounds):
        try:
            client = imaplib2.IMAP4("127.0.0.1", port, timeout=15)
            client.starttls()
            assert client.capability()[0] == "OK"
            client.logout()
        except Exception as exc:
            failures.append(repr(exc))
threads = [threading.Thread(target=sessions) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
print(len(failures), failures[:3])
"""


def test_imaplib2_starttls_sessions_all_answer(edge):
    """imaplib2 reads in one thread and writes in another.  The TLS 1.3 session tickets a
    server sends after the handshake arrive while its writer sends the first command after
    STARTTLS; with them, about one session in six hung there (the server never got the
    command) or the client crashed.  The edge sends no tickets (colony.tlsfiles)."""
    need_tool("offlineimap", "offlineimap3")   # brings python3-imaplib2
    out = subprocess.run(["/usr/bin/python3", "-c", IMAPLIB2_STARTTLS, str(edge.ports["imap"]), "10"],
                         capture_output=True, timeout=300)
    assert out.returncode == 0 and out.stdout.startswith(b"0 "), said(out)


def test_offlineimap_idle_brings_new_mail_and_remote_flags_at_once(edge, tmp_path):
    """With ``idlefolders`` offlineimap waits in IDLE between syncs (autorefresh here 30
    minutes): new mail and a flag set by another client reach the Maildir while it waits."""
    user = "rita"
    add_account(edge, user)
    subject = unique("idle")
    mail(edge, user, [message(f"{subject} 1")])
    arrived(edge, user, f"{subject} 1")
    rc = offlineimap_rc(edge, tmp_path, user, account="autorefresh = 30\n",
                        remote="idlefolders = ['INBOX']\nholdconnectionopen = yes\nkeepalive = 60\n")
    root = tmp_path / "mail"
    log_path = tmp_path / "offlineimap.log"
    # -d imap: the protocol log shows when it has sent IDLE (after the SELECT that gave it the
    # mailbox's state; anything later must reach it in IDLE).  offlineimap itself does not
    # look again after that SELECT, so news between its sync and the SELECT would wait.
    with log_path.open("wb") as log:
        proc = subprocess.Popen([need_tool("offlineimap", "offlineimap3"), "-c", str(rc), "-u", "basic", "-d", "imap"],
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HOME": str(tmp_path)})
    try:
        def inbox() -> State | None:
            try:
                return local_state(root).get("INBOX")
            except (FileNotFoundError, AssertionError):      # a file mid-rename
                return None

        def idling(times: int) -> bool:
            assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
            return log_path.read_bytes().count(b" IDLE\\r\\n'") >= times
        wait_for(lambda: inbox() and len(inbox()) == 1, 120, "the first sync")
        [uid] = inbox()
        wait_for(lambda: idling(1), 120, "offlineimap in IDLE")
        mail(edge, user, [message(f"{subject} 2")])
        wait_for(lambda: len(inbox() or ()) == 2, 120, "the new message, through IDLE")
        wait_for(lambda: idling(2), 120, "offlineimap in IDLE again")
        client = edge.imaps(user)
        client.select("INBOX")
        assert client.uid("STORE", str(uid), "+FLAGS", "(\\Flagged)")[0] == "OK"
        client.logout()
        wait_for(lambda: (inbox() or {}).get(uid, ((),))[0] == {"\\Flagged"}, 120, "the flag, through IDLE")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert b"ERROR" not in log_path.read_bytes()


def test_offlineimap_notices_a_folder_made_again_under_its_name(edge, tmp_path):
    """A mailbox deleted and created again under the same name is another mailbox: a new
    UIDVALIDITY (RFC 3501 §2.3.1.1), so offlineimap refuses to match its UIDs to the local ones
    rather than pairing the new UID 1 with the old message."""
    user = "sara"
    add_account(edge, user)
    client = edge.imaps(user)
    assert client.create("Kurz")[0] == "OK"
    assert client.append("Kurz", None, None, message("first life"))[0] == "OK"
    client.logout()
    rc = offlineimap_rc(edge, tmp_path, user)
    offlineimap(rc)
    _, marks = server_state(edge, user)
    client = edge.imaps(user)
    assert client.delete("Kurz")[0] == "OK"
    assert client.create("Kurz")[0] == "OK"
    assert client.append("Kurz", None, None, message("second life"))[0] == "OK"
    client.logout()
    _, marks_again = server_state(edge, user)
    assert marks_again["Kurz"][0] != marks["Kurz"][0]
    out = run([need_tool("offlineimap", "offlineimap3"), "-c", str(rc), "-o", "-u", "basic"],
              env={"HOME": str(tmp_path)})
    assert "UID validity problem for folder Kurz" in said(out), said(out)
    [(_, octets)] = local_state(tmp_path / "mail")["Kurz"].values()
    assert b"first life" in octets


# --- getmail -------------------------------------------------------------------------------------

@pytest.fixture
def getmail_maildir():
    """A Maildir getmail may deliver into.  getmail refuses to deliver as root; run as root
    (CI), it delivers as ``nobody``, who must reach the directory (pytest's are 0700)."""
    root = Path(tempfile.mkdtemp(prefix="getmail-"))
    try:
        for sub in ("cur", "new", "tmp"):
            (root / "Maildir" / sub).mkdir(parents=True)
        if os.geteuid() == 0:
            root.chmod(0o755)
            for path in (root / "Maildir", *(root / "Maildir").iterdir()):
                os.chown(path, 65534, 65534)
        yield root / "Maildir"
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=True)


def getmail_rc(edge: Edge, home: Path, maildir: Path, user: str, *, imap: bool = False, delete: bool = False) -> Path:
    retriever = (f"type = SimpleIMAPSSLRetriever\nport = {edge.ports['imaps']}\nmailboxes = ALL\n" if imap
                 else f"type = SimplePOP3SSLRetriever\nport = {edge.ports['pop3s']}\n")
    rc = home / f"getmailrc-{'imap' if imap else 'pop3'}-{delete}"
    rc.write_text(
        f"[retriever]\n{retriever}server = 127.0.0.1\nusername = {user}@{DOMAIN}\npassword = {PASSWORD}\n"
        f"ca_certs = {edge.ca}\nssl_cert_hostname = localhost\n\n"
        f"[destination]\ntype = Maildir\npath = {maildir}/\n{'user = nobody' if os.geteuid() == 0 else ''}\n\n"
        f"[options]\nverbose = 2\nread_all = false\ndelete = {str(delete).lower()}\n")
    return rc


def getmail(rc: Path) -> str:
    out = run([need_tool("getmail", "getmail6"), "--getmaildir", str(rc.parent), "--rcfile", str(rc)])
    assert out.returncode == 0 and "error" not in said(out).lower(), said(out)
    return said(out)


def retrieved(output: str) -> int:
    return sum(int(n) for n in re.findall(r"^\s+(\d+) messages \(\d+ bytes\) retrieved", output, re.M))


def as_getmail_writes(octets: bytes) -> bytes:
    """getmail puts its own Return-Path (from the old one), Delivered-To and Received in front,
    and stores LF line ends."""
    return re.sub(rb"^Return-Path: [^\r]*\r\n", b"", octets).replace(b"\r\n", b"\n")


def pop3_uidls(edge: Edge, user: str) -> dict[str, bytes]:
    """UIDL -> the message RETR sends, one session."""
    client = poplib.POP3_SSL("127.0.0.1", edge.ports["pop3s"], timeout=60,
                             context=ssl.create_default_context(cafile=str(edge.ca)))
    try:
        client.user(f"{user}@{DOMAIN}")
        client.pass_(PASSWORD)
        found = {}
        for line in client.uidl()[1]:
            number, uidl = line.decode().split()
            found[uidl] = b"\r\n".join(client.retr(int(number))[1]) + b"\r\n"
        return found
    finally:
        client.quit()


def restart_mailstore(edge: Edge) -> None:
    """SIGKILL the cluster's mail store; `colony up` starts it again, which opens the account
    from its journal."""
    [store] = [n for n in status_json(edge.data_dir) if n["role"] == "mailstore"]
    os.kill(store["pid"], signal.SIGKILL)
    wait_for(lambda: (nodes := ready_nodes(edge.data_dir, 5))
             and any(n["role"] == "mailstore" and n["pid"] != store["pid"] for n in nodes), 180,
             "the mail store started again")


def test_getmail_pop3_fetches_new_mail_only_and_deletes_after_retrieving(edge, tmp_path, getmail_maildir):
    """read_all = false: getmail keeps the UIDLs it has seen (its oldmail file) and fetches only
    the others, so UIDL must name a message for good -- across sessions, new mail, other
    messages' deletion, and a restart of the mail store.  Then delete = true removes what it
    retrieves, and nothing is fetched twice."""
    user = "tina"
    add_account(edge, user)
    subject = unique("getmail pop3")
    eight_bit = message(f"{subject} 8bit", EIGHT_BIT_BODY, b"Content-Transfer-Encoding: 8bit\r\n")
    mail(edge, user, [message(f"{subject} {n}", b".\r\n..\r\nbody\r\n") for n in range(4)] + [eight_bit])
    arrived(edge, user, subject, count=5)
    rc = getmail_rc(edge, tmp_path, getmail_maildir, user)
    before = pop3_uidls(edge, user)
    assert len(before) == 5

    assert retrieved(getmail(rc)) == 5
    files = sorted((getmail_maildir / "new").iterdir())
    assert len(files) == 5
    contents = [f.read_bytes() for f in files]
    for octets in before.values():
        assert sum(c.endswith(as_getmail_writes(octets)) for c in contents) == 1
    assert any(c.endswith(eight_bit.replace(b"\r\n", b"\n")) for c in contents)

    assert retrieved(getmail(rc)) == 0                  # nothing new
    mail(edge, user, [message(f"{subject} late")])
    arrived(edge, user, f"{subject} late")
    assert retrieved(getmail(rc)) == 1                  # only the new one
    # Another client deletes a message in the middle: the others keep their UIDLs.
    client = edge.imaps(user)
    client.select("INBOX")
    middle = client.uid("SEARCH", "SUBJECT", f'"{subject} 2"')[1][0].split()
    assert client.uid("STORE", middle[0], "+FLAGS", "(\\Deleted)")[0] == "OK" and client.expunge()[0] == "OK"
    client.logout()
    after = pop3_uidls(edge, user)
    assert len(after) == 5 and len(set(before) - set(after)) == 1     # the late one in, the deleted one out
    assert retrieved(getmail(rc)) == 0

    restart_mailstore(edge)
    assert wait_for(lambda: _try(pop3_uidls, edge, user), 180, "POP3 after the restart") == after
    assert retrieved(getmail(rc)) == 0                  # UIDLs survived the restart

    mail(edge, user, [message(f"{subject} last")])
    arrived(edge, user, f"{subject} last")
    deleting = getmail_rc(edge, tmp_path, getmail_maildir, user, delete=True)
    out = getmail(deleting)
    assert retrieved(out) == 1, out
    # delete = true deletes what it retrieves, and what it has seen on an earlier run too
    assert pop3_uidls(edge, user) == {}
    assert len(list((getmail_maildir / "new").iterdir())) == 7
    assert retrieved(getmail(deleting)) == 0
    assert len(list((getmail_maildir / "new").iterdir())) == 7


def _try(fn, *args):
    try:
        return fn(*args)
    except (poplib.error_proto, OSError):
        return None


def test_getmail_imap_fetches_every_folder_then_deletes(edge, tmp_path, getmail_maildir):
    """``mailboxes = ALL``: every mailbox, non-ASCII names too (getmail decodes modified UTF-7
    itself); ``delete = true`` marks \\Deleted and expunges; a second run finds nothing."""
    user = "ulla"
    add_account(edge, user)
    subject = unique("getmail imap")
    mail(edge, user, [message(f"{subject} {n}") for n in range(3)])
    arrived(edge, user, subject, count=3)
    client = edge.imaps(user)
    assert client.create('"&AMQ-rger"')[0] == "OK"
    assert client.append('"&AMQ-rger"', "(\\Seen)", None, message(f"{subject} folder", EIGHT_BIT_BODY))[0] == "OK"
    client.logout()

    rc = getmail_rc(edge, tmp_path, getmail_maildir, user, imap=True)
    assert retrieved(getmail(rc)) == 4
    assert retrieved(getmail(rc)) == 0
    server, _ = server_state(edge, user)
    assert len(server["INBOX"]) == 3 and len(server["Ärger"]) == 1
    # getmail names the mailbox a message came from in a header field of its own (RFC 2047)
    contents, folders = [], []
    for file in (getmail_maildir / "new").iterdir():
        octets = file.read_bytes()
        folder = re.search(rb"\nX-getmail-retrieved-from-mailbox: (.*)\n", octets)
        folders.append(str(make_header(decode_header(folder[1].decode()))) if folder else "INBOX")
        contents.append(octets.replace(folder[0], b"\n") if folder else octets)
    assert sorted(folders) == ["INBOX"] * 3 + ["Ärger"]
    for mailbox in ("INBOX", "Ärger"):
        for _, octets in server[mailbox].values():
            assert sum(c.endswith(as_getmail_writes(octets)) for c in contents) == 1
    # BODY.PEEK and EXAMINE: still unseen, and still \Recent (RFC 3501 §6.3.2)
    assert all(flags == {"\\Recent"} for flags, _ in server["INBOX"].values()), server

    mail(edge, user, [message(f"{subject} late")])
    arrived(edge, user, f"{subject} late")
    deleting = getmail_rc(edge, tmp_path, getmail_maildir, user, imap=True, delete=True)
    out = getmail(deleting)
    assert retrieved(out) == 1, out
    server, _ = server_state(edge, user)
    # delete = true deletes what it has seen before as well (getmail's "will delete" for an
    # old UID): every mailbox empty, each message fetched once
    assert all(not messages for messages in server.values()), server
    assert len(list((getmail_maildir / "new").iterdir())) == 5
    assert retrieved(getmail(deleting)) == 0


def test_getmail_idle_fetches_mail_as_it_arrives(edge, tmp_path, getmail_maildir):
    """``getmail --idle INBOX``: after a run it waits in IDLE and runs again when the server
    reports new mail."""
    user = "vera"
    add_account(edge, user)
    subject = unique("getmail idle")
    mail(edge, user, [message(f"{subject} 1")])
    arrived(edge, user, f"{subject} 1")
    rc = getmail_rc(edge, tmp_path, getmail_maildir, user, imap=True)
    rc.write_text(rc.read_text().replace("mailboxes = ALL", "mailboxes = ('INBOX',)"))
    log_path = tmp_path / "getmail.log"
    # --trace: the log says when getmail has sent IDLE.  Mail that lands between a run and the
    # SELECT before its IDLE waits for the next news (getmail does not look at EXISTS there).
    with log_path.open("wb") as log:
        proc = subprocess.Popen([need_tool("getmail", "getmail6"), "--getmaildir", str(tmp_path), "--rcfile", str(rc),
                                 "--idle", "INBOX", "--trace"], stdout=log, stderr=subprocess.STDOUT)
    try:
        def idling(times: int) -> bool:
            assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
            return log_path.read_text(errors="replace").count("Entering IDLE mode") >= times

        def files() -> int:
            return len(list((getmail_maildir / "new").iterdir()))
        for n in (1, 2):
            wait_for(lambda: idling(n), 120, f"getmail in IDLE ({n})")
            assert files() == n
            mail(edge, user, [message(f"{subject} {n + 1}")])
            wait_for(lambda: files() == n + 1, 120, f"message {n + 1}, through IDLE")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert files() == 3
    assert "IDLE message received" in log_path.read_text(errors="replace")


def test_idle_answers_with_the_continuation_before_news_from_before_it(edge):
    """getmail's IDLE (getmailcore's ``go_idle``, after the patch of bugs.python.org/issue11245)
    SELECTs, sends IDLE and reads exactly one response, which must be the continuation
    ("server refused IDLE request" otherwise, and getmail --idle ends).  Mail that arrives
    between its SELECT and its IDLE is news the server owes it: after the "+" (RFC 2177:
    updates come while the IDLE command is active)."""
    user = "wanda"
    add_account(edge, user)
    imaplib.Commands.setdefault("IDLE", ("AUTH", "SELECTED"))    # as getmail registers it
    idler, other = edge.imaps(user), edge.imaps(user)
    try:
        idler.select("INBOX")
        other.select("INBOX")
        assert other.append("INBOX", None, None, message("between SELECT and IDLE"))[0] == "OK"
        idler.untagged_responses = {}
        tag = idler._command("IDLE")
        assert idler._get_response() is None, idler.untagged_responses   # None: the continuation
        idler.send(b"DONE\r\n")
        assert idler._command_complete("IDLE", tag)[0] == "OK"
        assert idler.untagged_responses.get("EXISTS") == [b"1"], idler.untagged_responses
    finally:
        idler.logout()
        other.logout()
