"""Client access through `colony up`: POP3 (and IMAP when the store serves it) through the edge
over TLS to the account's mail store, with Python's own clients and Debian's fetchmail and
mbsync; and drains of the owning mail store under a connected client (POP3, and IMAP in IDLE):
a clean goodbye, a reconnect that lands on the new owner, nothing lost."""

from __future__ import annotations

import imaplib
import os
import poplib
import shutil
import signal
import smtplib
import ssl
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from pathlib import Path

import pytest

from test_colony_up import (COLONY, free_base_port, ready_nodes, start_up, status_json, stop_up,
                           wait_deliverable, wait_for)

pytestmark = pytest.mark.slow

PASSWORD = "a long passphrase"


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is required in CI (apt-get install {name}; listed in .ci/apt-packages)")
        pytest.skip(f"{name} is not installed (apt-get install {name})")
    return path


def colony(data_dir: Path, *args: str) -> str:
    out = subprocess.run([COLONY, *args, "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`colony up` with 2 edges and 2 mail stores; alice@acme.example provisioned."""
    data_dir = tmp_path_factory.mktemp("access") / "colony"
    base = free_base_port()
    proc = start_up(data_dir, base, "--mailstores", "2", "--edges", "2", "--sipfarms", "0")
    try:
        nodes = wait_for(lambda: ready_nodes(data_dir, 8), 180, "every instance READY")
        wait_for(lambda: (data_dir / "admin.token").exists(), 60, "the bootstrap token")
        colony(data_dir, "domain", "add", "acme.example")
        colony(data_dir, "account", "add", "alice@acme.example", "--password", PASSWORD)
        yield data_dir, nodes
    finally:
        stop_up(proc)


def status(data_dir: Path) -> list[dict]:
    """`colony status --json`; on a loaded machine one call can time out or find the bus busy, so
    ask again (with a deadline) rather than read an empty answer as "no instances"."""
    return wait_for(lambda: status_json(data_dir), 120, "an answer from `colony status`")


def holder(data_dir: Path) -> str:
    """The mail store that has alice's account open now: alice is the only account, and only the
    lease holder opens an account (its `colony_mailstore_open_accounts` gauge), so this names the
    owner exactly, whatever stores served her before."""
    def probe() -> str | None:
        owners = []
        for node in status(data_dir):
            if node["role"] != "mailstore":
                continue
            try:
                with urllib.request.urlopen(f"http://{node['addresses']['ops']}/metrics", timeout=30) as r:
                    text = r.read().decode()
            except OSError:
                return None
            gauge = [line for line in text.splitlines() if line.startswith("colony_mailstore_open_accounts ")]
            if gauge and float(gauge[0].split()[1]) >= 1:
                owners.append(node["id"])
        return owners[0] if len(owners) == 1 else None
    return wait_for(probe, 60, "exactly one mail store holding alice's account")


def edge_port(data_dir: Path, listener: str, index: int = 0) -> int:
    edges = sorted((n for n in status(data_dir) if n["role"] == "edge"), key=lambda n: n["id"])
    return int(edges[index]["addresses"][listener].rsplit(":", 1)[1])


def tls_context(data_dir: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(data_dir / "tls" / "ca.pem"))


def deliver(data_dir: Path, count: int, subject: str) -> None:
    port = edge_port(data_dir, "smtp")
    wait_deliverable(port, "alice@acme.example")

    def send(numbers: range) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=120) as s:
            for i in numbers:
                msg = EmailMessage()
                msg["From"], msg["To"], msg["Subject"] = "bob@remote.test", "alice@acme.example", f"{subject} {i}"
                msg.set_content(f"message {i}\n.\nwith a lone dot\n")
                s.send_message(msg)

    connections = min(8, count)     # a bulk load over several connections, as real senders do
    with ThreadPoolExecutor(connections) as pool:
        list(pool.map(send, [range(k, count, connections) for k in range(connections)]))


def pop3s(data_dir: Path, edge: int = 0) -> poplib.POP3_SSL:
    client = poplib.POP3_SSL("127.0.0.1", edge_port(data_dir, "pop3s", edge), context=tls_context(data_dir), timeout=60)
    client.user("alice@acme.example")
    client.pass_(PASSWORD)
    return client


def count_messages(data_dir: Path, at_least: int) -> int:
    def probe() -> tuple[int] | None:
        try:
            client = pop3s(data_dir)
        except (poplib.error_proto, OSError):
            return None
        try:
            n = client.stat()[0]
        finally:
            client.quit()
        return (n,) if n >= at_least else None
    return wait_for(probe, 180, f"{at_least} messages in alice's INBOX")[0]


def test_pop3_over_tls_through_either_edge_deletes_only_at_quit(cluster):
    data_dir, _ = cluster
    deliver(data_dir, 3, "pop")
    assert count_messages(data_dir, 3) >= 3

    client = pop3s(data_dir, edge=1)
    n, _ = client.stat()
    uidls = [line.split()[1] for line in client.uidl()[1]]
    assert len(set(uidls)) == n
    lines = client.retr(1)[1]
    assert any(line.startswith(b"Subject: pop") for line in lines)
    assert b"." in lines                       # the lone dot came back un-stuffed
    client.dele(1)
    client.close()                             # dropped without QUIT: nothing deleted
    client = pop3s(data_dir)
    assert client.stat()[0] == n
    assert [line.split()[1] for line in client.uidl()[1]] == uidls   # UIDL stable
    client.dele(1)
    client.quit()
    client = pop3s(data_dir, edge=1)
    assert [line.split()[1] for line in client.uidl()[1]] == uidls[1:]
    client.quit()


def test_pop3_plaintext_needs_stls_and_wrong_passwords_are_refused(cluster):
    data_dir, _ = cluster
    client = poplib.POP3("127.0.0.1", edge_port(data_dir, "pop3"), timeout=60)
    assert "STLS" in client.capa()
    with pytest.raises(poplib.error_proto, match="TLS"):
        client.user("alice@acme.example")
    client.stls(tls_context(data_dir))
    client.user("alice@acme.example")
    with pytest.raises(poplib.error_proto, match="AUTH"):
        client.pass_("wrong")
    client.user("alice@acme.example")
    client.pass_(PASSWORD)
    assert client.stat()[0] >= 0
    client.quit()
    with pytest.raises(ssl.SSLError):          # TLS 1.2+ only
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.minimum_version = ssl.TLSVersion.TLSv1
        poplib.POP3_SSL("127.0.0.1", edge_port(data_dir, "pop3s"), context=old, timeout=30)


def test_drain_the_owner_under_a_connected_client(cluster):
    data_dir, _ = cluster
    # Count first: the earlier tests left messages, so "at least 2" would be true before these
    # two are stored (SMTP's 250 is acceptance, storing follows through the queue).
    before = count_messages(data_dir, 0) + 2
    deliver(data_dir, 2, "drain")
    assert count_messages(data_dir, before) == before
    client = pop3s(data_dir)
    assert client.stat()[0] == before
    uidls = [line.split()[1] for line in client.uidl()[1]]
    owner = holder(data_dir)            # the session holds the account open on its owner
    started = time.monotonic()
    colony(data_dir, "drain", owner)
    with pytest.raises((poplib.error_proto, EOFError, OSError)):
        while time.monotonic() - started < 60:   # the next command meets the goodbye (or the closed connection)
            client.noop()
            time.sleep(0.1)
    assert time.monotonic() - started < 60
    client.close()
    again = wait_for(lambda: _try(pop3s, data_dir), 60, "a reconnect to the new owner")
    assert again.stat()[0] == before
    assert [line.split()[1] for line in again.uidl()[1]] == uidls
    again.quit()
    colony(data_dir, "ready", owner)


def _try(fn, *args):
    try:
        return fn(*args)
    except (poplib.error_proto, OSError):
        return None


@pytest.mark.timeout(1200)
def test_fetchmail_syncs_1000_messages_over_tls_twice(cluster, tmp_path):
    fetchmail = need_tool("fetchmail")
    data_dir, _ = cluster
    before = count_messages(data_dir, 0)
    deliver(data_dir, 1000, "bulk")
    count_messages(data_dir, before + 1000)
    mda_out = tmp_path / "fetched"
    mda_out.mkdir()
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        # the local CA's certificate names localhost (fetchmail checks the name it was given)
        f'poll localhost via 127.0.0.1 with proto POP3 port {edge_port(data_dir, "pop3s")} uidl\n'
        f'  user "alice@acme.example" there with password "{PASSWORD}" is "me" here\n'
        f'  ssl sslcertck sslcertfile "{data_dir / "tls" / "ca.pem"}" sslcommonname "localhost" keep\n'
        f'  mda "/bin/sh -c \'cat > {mda_out}/$$.$(date +%s%N)\'"\n')
    rc.chmod(0o600)
    env = dict(os.environ, HOME=str(tmp_path), FETCHMAILHOME=str(tmp_path))

    def run() -> subprocess.CompletedProcess:
        # a lock of its own: as root fetchmail locks /var/run/fetchmail.pid, shared with any other run
        return subprocess.run([fetchmail, "-f", str(rc), "-v", "--nodetach", "--idfile", str(tmp_path / "ids"),
                               "--pidfile", str(tmp_path / "fetchmail.pid")],
                              capture_output=True, text=True, timeout=600, env=env)

    first = run()
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    fetched = len(list(mda_out.iterdir()))
    assert fetched >= before + 1000
    second = run()
    # fetchmail exits 1 for "no new mail"
    assert second.returncode == 1, second.stdout[-3000:] + second.stderr[-3000:]
    assert len(list(mda_out.iterdir())) == fetched


# --- IMAP through the edge (the mail store's IMAP server behind the same hand-off) -------------

def need_store_imap(data_dir: Path) -> None:
    if not any("imap-inner" in n["addresses"] for n in status(data_dir) if n["role"] == "mailstore"):
        pytest.skip("the mail stores open no imap-inner listener (IMAP server not built in)")


def imaps(data_dir: Path, edge: int = 0) -> imaplib.IMAP4_SSL:
    client = imaplib.IMAP4_SSL("127.0.0.1", edge_port(data_dir, "imaps", edge), ssl_context=tls_context(data_dir),
                               timeout=60)
    client.login("alice@acme.example", PASSWORD)
    return client


def test_imap_over_tls_through_two_edges_sees_the_same_mailbox(cluster):
    data_dir, _ = cluster
    need_store_imap(data_dir)
    deliver(data_dir, 2, "imap")
    count_messages(data_dir, 2)
    plain = imaplib.IMAP4("127.0.0.1", edge_port(data_dir, "imap"), timeout=60)
    assert "STARTTLS" in plain.capabilities and "LOGINDISABLED" in plain.capabilities
    with pytest.raises(imaplib.IMAP4.error):
        plain.login("alice@acme.example", PASSWORD)
    plain.starttls(tls_context(data_dir))
    typ, _ = plain.login("alice@acme.example", PASSWORD)
    assert typ == "OK"
    plain.logout()
    with pytest.raises(imaplib.IMAP4.error):
        imaplib.IMAP4_SSL("127.0.0.1", edge_port(data_dir, "imaps"), ssl_context=tls_context(data_dir),
                          timeout=60).login("alice@acme.example", "wrong")

    one, two = imaps(data_dir, 0), imaps(data_dir, 1)
    assert one.select("INBOX")[0] == "OK" and two.select("INBOX")[0] == "OK"
    uid = one.uid("SEARCH", "ALL")[1][0].split()[-1]
    assert one.uid("STORE", uid, "+FLAGS", r"(\Flagged)")[0] == "OK"
    flags = two.uid("FETCH", uid, "(FLAGS)")[1][0]
    assert b"\\Flagged" in flags
    one.logout()
    two.logout()


@pytest.mark.timeout(1200)
def test_mbsync_syncs_1000_messages_over_tls_twice(cluster, tmp_path):
    mbsync = need_tool("mbsync")
    data_dir, _ = cluster
    need_store_imap(data_dir)
    have = count_messages(data_dir, 0)
    if have < 1000:
        deliver(data_dir, 1000 - have, "sync")
        have = count_messages(data_dir, 1000)
    maildir = tmp_path / "mail"
    maildir.mkdir()
    rc = tmp_path / "mbsyncrc"
    rc.write_text(
        "IMAPAccount colony\nHost 127.0.0.1\n"
        f"Port {edge_port(data_dir, 'imaps')}\nUser alice@acme.example\nPass \"{PASSWORD}\"\n"
        f"SSLType IMAPS\nCertificateFile {data_dir / 'tls' / 'ca.pem'}\n\n"
        "IMAPStore remote\nAccount colony\n\n"
        f"MaildirStore local\nPath {maildir}/\nInbox {maildir}/INBOX\n\n"
        "Channel inbox\nFar :remote:INBOX\nNear :local:INBOX\nSync Pull\nCreate Near\nSyncState *\n")

    def run() -> subprocess.CompletedProcess:
        return subprocess.run([mbsync, "-c", str(rc), "-V", "inbox"], capture_output=True, text=True, timeout=900,
                              env=dict(os.environ, HOME=str(tmp_path)))   # its state stays in this test

    first = run()
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    files = sorted((maildir / "INBOX").glob("*/*"))
    assert len(files) == have
    second = run()
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert sorted((maildir / "INBOX").glob("*/*")) == files      # nothing transferred again


def _try_imaps(data_dir: Path) -> imaplib.IMAP4_SSL | None:
    try:
        return imaps(data_dir)
    except (imaplib.IMAP4.error, OSError):
        return None


def test_idle_through_a_drain_of_the_owner(cluster):
    """A client IDLEs through the edge; its mail store is drained while a message arrives: the
    client reads an untagged BYE and then a clean end of stream (no reset, no hang), reconnects
    through the edge to the other store and finds every message and flag, the new one too."""
    data_dir, _ = cluster
    need_store_imap(data_dir)
    have = count_messages(data_dir, 0)
    if have == 0:
        deliver(data_dir, 1, "before idle")
        have = count_messages(data_dir, 1)
    idler = imaps(data_dir)
    assert int(idler.select("INBOX")[1][0]) == have
    uids = idler.uid("SEARCH", "ALL")[1][0].split()
    assert idler.uid("STORE", uids[0], "+FLAGS", "(\\Flagged $Drained)")[0] == "OK"
    owner = holder(data_dir)
    idler.send(b"I1 IDLE\r\n")
    assert idler.readline().startswith(b"+ ")
    try:
        with ThreadPoolExecutor(2) as pool:
            drained = pool.submit(colony, data_dir, "drain", owner)
            delivered = pool.submit(deliver, data_dir, 1, "during the drain")
            heard = []
            while True:       # the socket's 60 s timeout turns a hang into a failure
                line = idler.readline()
                if not line:
                    break
                heard.append(line)
            byes = [line for line in heard if line.startswith(b"* BYE")]
            assert byes and byes[0].startswith(b"* BYE [UNAVAILABLE]"), heard
            assert heard[-1] == byes[0], heard      # BYE is the last thing said, then the close
            drained.result(timeout=120)
            delivered.result(timeout=300)
        idler.shutdown()

        again = wait_for(lambda: _try_imaps(data_dir), 120, "an IMAP reconnect through the edge")
        assert again.select("INBOX")[0] == "OK"

        def all_there() -> list[bytes] | None:
            again.noop()
            now = again.uid("SEARCH", "ALL")[1][0].split()
            return now if len(now) == have + 1 else None
        now = wait_for(all_there, 180, "the message delivered during the drain")
        assert set(uids) < set(now)
        assert len(again.uid("SEARCH", "SUBJECT", '"during the drain"')[1][0].split()) == 1
        flags = again.uid("FETCH", uids[0], "(FLAGS)")[1][0]
        assert b"\\Flagged" in flags and b"$Drained" in flags
        new_owner = holder(data_dir)
        assert new_owner != owner
        again.logout()
    finally:
        colony(data_dir, "ready", owner)


def test_a_cached_login_needs_no_auth_service_and_a_password_change_ends_it_at_once(cluster):
    """The edge's login cache: a second login with the same password is answered by the edge
    alone (the admin API, home of the auth service, is stopped meanwhile), and a password change
    through the admin API makes the old password fail on the very next login.  Last in the
    module: its account stays open on a store, and ``holder`` counts on alice's being the only one."""
    data_dir, _ = cluster
    need_store_imap(data_dir)
    user, first, second = "cached@acme.example", "first passphrase", "second passphrase"
    colony(data_dir, "account", "add", user, "--password", first)
    port = edge_port(data_dir, "imaps", 0)

    def login(password: str) -> str:
        client = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=tls_context(data_dir), timeout=60)
        try:
            return client.login(user, password)[0]
        except imaplib.IMAP4.error as exc:
            return str(exc)
        finally:
            try:
                client.logout()
            except (imaplib.IMAP4.error, OSError):
                pass

    wait_for(lambda: login(first) == "OK", 120, "the first login (checked by the auth service)")
    admin = next(n for n in status(data_dir) if n["role"] == "admin-api")
    os.kill(admin["pid"], signal.SIGSTOP)
    try:
        assert login(first) == "OK"        # no auth service to ask: the edge's cache answered
    finally:
        os.kill(admin["pid"], signal.SIGCONT)
    colony(data_dir, "account", "passwd", user, "--password", second)
    assert login(first) != "OK"            # the directory's rewrite of the account dropped it
    wait_for(lambda: login(second) == "OK", 120, "a login with the new password")
