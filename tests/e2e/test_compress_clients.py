"""COMPRESS=DEFLATE (RFC 4978) with a real client against `colony up`: mbsync (isync), which
turns compression on whenever the server offers it, syncs a Maildir through the edge's IMAPS
listener to the mail store that compresses -- messages down, a new one and a flag change up,
then a run that finds nothing to do.  That compression was negotiated is read from mbsync's
own protocol dump (``-Dn``) and from the store's metric."""

from __future__ import annotations

import os
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest

from test_colony_up import status_json, wait_for
from test_mail_clients import DOMAIN, PASSWORD, Edge, edge  # noqa: F401 (edge: the fixture)
from tools import need_tool

pytestmark = pytest.mark.slow

USER = "bob"
MESSAGES = 40


def _append(edge: Edge, count: int) -> None:
    client = edge.imaps(USER)
    try:
        for n in range(count):
            body = (f"From: alice@{DOMAIN}\r\nTo: {USER}@{DOMAIN}\r\nSubject: compressed sync {n}\r\n\r\n"
                    + f"line {n} of a text that compresses well\r\n" * 50)
            assert client.append("INBOX", None, None, body.encode())[0] == "OK"
    finally:
        client.logout()


def _mbsync(tmp_path: Path, rc: Path) -> subprocess.CompletedProcess:
    return subprocess.run([need_tool("mbsync", "isync"), "-c", str(rc), "-Dn", "-V", "inbox"], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, HOME=str(tmp_path)))   # its state stays here


def _compression_started(data_dir: Path) -> float:
    store = next(n for n in status_json(data_dir) if n["role"] == "mailstore")
    with urllib.request.urlopen(f"http://{store['addresses']['ops']}/metrics", timeout=30) as r:
        text = r.read().decode()
    found = re.search(r'^colony_mailstore_imap_compression_total\{event="started"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.timeout(900)
def test_mbsync_syncs_both_ways_with_compression(edge, tmp_path):
    mbsync = need_tool("mbsync", "isync")
    assert mbsync
    _append(edge, MESSAGES)
    before = _compression_started(edge.data_dir)
    maildir = tmp_path / "mail"
    maildir.mkdir()
    rc = tmp_path / "mbsyncrc"
    rc.write_text(
        f"IMAPAccount colony\nHost 127.0.0.1\nPort {edge.ports['imaps']}\nUser {USER}@{DOMAIN}\n"
        f"Pass \"{PASSWORD}\"\nSSLType IMAPS\nCertificateFile {edge.ca}\n\n"
        "IMAPStore remote\nAccount colony\n\n"
        f"MaildirStore local\nPath {maildir}/\nInbox {maildir}/INBOX\n\n"
        "Channel inbox\nFar :remote:INBOX\nNear :local:INBOX\nSync All\nCreate Near\nExpunge None\nSyncState *\n")

    first = _mbsync(tmp_path, rc)
    said = first.stdout + first.stderr
    assert first.returncode == 0, said[-4000:]
    # mbsync's dump: the command after login, and the answer in the clear before compression.
    assert re.search(r"^>>> \d+ COMPRESS DEFLATE$", said, re.M), said[:4000]
    assert re.search(r"^\d+ OK DEFLATE active$", said, re.M), said[:4000]
    files = sorted((maildir / "INBOX").glob("*/*"))
    assert len(files) == MESSAGES
    assert all(b"of a text that compresses well" in f.read_bytes() for f in files)

    # Up: a message written into the Maildir (an APPEND with a literal) and a flag (STORE).
    (maildir / "INBOX" / "new" / "1790000000.compress.test").write_bytes(
        f"From: {USER}@{DOMAIN}\nSubject: written locally\n\nuploaded through COMPRESS\n".encode())
    seen = files[0]
    seen.rename(seen.with_name(seen.name.split(":2,")[0] + ":2,FS"))
    second = _mbsync(tmp_path, rc)
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    client = edge.imaps(USER)
    try:
        client.select("INBOX", readonly=True)
        uploaded = client.uid("SEARCH", "SUBJECT", '"written locally"')[1][0].split()
        assert len(uploaded) == 1
        body = client.uid("FETCH", uploaded[0], "(BODY.PEEK[TEXT])")[1][0][1]
        assert body == b"uploaded through COMPRESS\r\n", body
        flagged = client.uid("SEARCH", "FLAGGED", "SEEN")[1][0].split()
        assert len(flagged) == 1, flagged
    finally:
        client.logout()

    third = _mbsync(tmp_path, rc)
    assert third.returncode == 0, (third.stdout + third.stderr)[-4000:]
    assert len(list((maildir / "INBOX").glob("*/*"))) == MESSAGES + 1     # nothing new either way
    # The store counts a session per run that turned compression on.
    wait_for(lambda: _compression_started(edge.data_dir) >= before + 3, 30, "three compressed sessions counted")
