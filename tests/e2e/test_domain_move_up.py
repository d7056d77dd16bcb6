"""Moving a domain between regions as an operator does it, under `colony up --regions eu,us`:
a domain homed in eu with stored mail, flags and a folder is moved to us through the admin API
(`colony domain move`) while mail keeps arriving at both regions' edges and a user keeps
reading her INBOX (at worst a clean reconnect) -- steadily, with eu's active controller
SIGKILLed mid-move, and with the link between the regions hung mid-move; the move reaches
`done`, us's IMAP shows every message once with its flags, new mail sent to either edge lands
in us, and eu's copy is gone."""

from __future__ import annotations

import imaplib
import json
import os
import re
import signal
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from test_colony_up import COLONY, status_json, wait_for
from test_regions_up import bodies, colony, regions_up, send, wait_deliverable

pytestmark = pytest.mark.slow

COUNTS = ["--controllers", "1", "--edges", "1", "--mailstores", "1", "--sipfarms", "1", "--admin-apis", "1"]
PER_REGION = 6
DOMAIN = "move.example"
PASSWORD = "Move-secret-123"


@pytest.fixture
def regions(tmp_path, request):
    """The super cluster; ``request.param``: the move's settle time in seconds."""
    settle = str(getattr(request, "param", 3))
    with regions_up(tmp_path / "sc", COUNTS, PER_REGION, COLONY_DOMAIN_MOVE_SETTLE=settle) as up:
        yield up


def imap_login(region_dir: Path, port: int, user: str) -> imaplib.IMAP4_SSL:
    tls = ssl.create_default_context(cafile=str(region_dir / "tls" / "ca.pem"))
    imap = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=tls, timeout=60)
    imap.login(user, PASSWORD)
    return imap


def mailbox(imap: imaplib.IMAP4_SSL, name: str) -> dict[str, set[str]]:
    """Subject -> flags of every message in the mailbox (a subject seen twice fails: a duplicate)."""
    status, _ = imap.select(name, readonly=True)
    assert status == "OK", name
    status, data = imap.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    if data == [None]:
        return {}
    out: dict[str, set[str]] = {}
    for part in data:
        if not isinstance(part, tuple):
            continue
        flags = set(re.search(rb"FLAGS \(([^)]*)\)", part[0]).group(1).decode().split()) - {"\\Recent"}
        subject = part[1].decode().strip().removeprefix("Subject: ")
        assert subject not in out, f"{subject!r} twice in {name}"
        out[subject] = flags
    return out


class Reader:
    """A user reading her INBOX over IMAP through eu's edge while her domain moves: every
    answer shows her whole INBOX; the only interruptions allowed are a clean reconnect --
    the session ended (``BYE [UNAVAILABLE]`` when the move seals) or a login refused with
    ``NO [UNAVAILABLE]`` until the flip."""

    def __init__(self, region_dir: Path, port: int, user: str, messages: int) -> None:
        self.region_dir, self.port, self.user, self.messages = region_dir, port, user, messages
        self.imap: imaplib.IMAP4_SSL | None = None
        self.read = self.ended = self.refused = 0

    def poke(self) -> bool:
        try:
            if self.imap is None:
                self.imap = imap_login(self.region_dir, self.port, self.user)
            status, data = self.imap.select("INBOX", readonly=True)
            assert status == "OK" and int(data[0]) == self.messages, (status, data)
            self.read += 1
            return True
        except imaplib.IMAP4.abort:     # BYE, or the connection closed: reconnect
            self.ended += 1
        except imaplib.IMAP4.error as exc:
            assert "UNAVAILABLE" in str(exc), exc
            self.refused += 1
        except OSError:
            self.ended += 1
        self.imap = None
        return False


def move_status(eu: Path) -> dict:
    """GET /v1/domains/{d}/move on eu's admin API (not the CLI: a process start takes seconds
    on a loaded machine, longer than the phase the test waits for may last)."""
    api = json.loads((eu.parent / "supercluster.json").read_text())["regions"]["eu"]["admin_api"][0]
    request = urllib.request.Request(f"{api}/v1/domains/{DOMAIN}/move",
                                     headers={"Authorization": f"Bearer {(eu / 'admin.token').read_text().strip()}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except OSError:
        return {}


def active_controller(region_dir: Path) -> dict | None:
    return next((n for n in status_json(region_dir) if n["role"] == "controller" and n["controller"]), None)


# With a fault the phases last longer (15 s settle), so it lands mid-move on a loaded
# machine too.
@pytest.mark.parametrize(("regions", "fault"), [(3, None), (15, "controller"), (15, "link")], indirect=["regions"],
                         ids=["steady", "controller-sigkilled", "link-cut"])
def test_a_domain_moves_from_eu_to_us_with_its_mail_flags_and_folders(regions, fault):
    data_dir, base = regions
    eu, us = data_dir / "eu", data_dir / "us"
    eu_smtp, us_smtp, eu_imap, us_imap = base + 25, base + 200 + 25, base + 93, base + 200 + 93
    colony(eu, "domain", "add", DOMAIN, "--region", "eu")
    for user in ("amy", "ben", "cid"):   # cid never gets mail: nothing stored to copy
        colony(eu, "account", "add", f"{user}@{DOMAIN}", "--password", PASSWORD)
    wait_deliverable(eu_smtp, f"amy@{DOMAIN}")
    wait_deliverable(us_smtp, f"ben@{DOMAIN}")

    sent = {"amy": [f"amy before {i}" for i in range(3)], "ben": [f"ben before {i}" for i in range(2)]}
    for user, subjects in sent.items():
        for subject in subjects:
            send(eu_smtp, f"{user}@{DOMAIN}", subject)
    wait_for(lambda: len(bodies(eu, DOMAIN)) >= 5, 120, "5 messages in eu's store")

    # flags and a folder of the user's own, made over IMAP in eu
    imap = imap_login(eu, eu_imap, f"amy@{DOMAIN}")
    assert imap.create("Projects")[0] == "OK"
    imap.select("INBOX")
    status, data = imap.search(None, "SUBJECT", '"amy before 0"')
    first = data[0].split()[0]
    assert imap.store(first, "+FLAGS", "(\\Flagged \\Seen)")[0] == "OK"
    assert imap.copy(first, "Projects")[0] == "OK"
    imap.logout()
    before = {"INBOX": {s: set() for s in sent["amy"]}, "Projects": {"amy before 0": {"\\Flagged", "\\Seen"}}}
    before["INBOX"]["amy before 0"] = {"\\Flagged", "\\Seen"}

    mover = subprocess.Popen([COLONY, "domain", "move", DOMAIN, "us", "--timeout", "400", "--data-dir", str(eu)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = None
    if fault == "controller":
        # the primary's active controller dies mid-move; the supervisor starts it again, and
        # it (a new process, a new epoch) carries the move on from its last event
        victim = wait_for(lambda: active_controller(eu), 60, "eu's active controller")
        wait_for(lambda: move_status(eu).get("phase") in ("copying", "sealing"), 120, "the move to copy")
        os.kill(victim["pid"], signal.SIGKILL)
        killed = victim["pid"]
        assert move_status(eu)["phase"] in ("copying", "sealing"), "killed too late"
    elif fault == "link":
        # the link between the regions hangs mid-move while mail arrives at both edges: the
        # controller's questions to us wait or fail and are asked again once it is back
        hub = json.loads((data_dir / "supercluster.json").read_text())["hub"]["pid"]
        wait_for(lambda: move_status(eu).get("phase") in ("copying", "sealing"), 120, "the move to copy")
        os.kill(hub, signal.SIGSTOP)
        try:
            for i in range(6):
                subject = f"ben during the cut {i}"
                send(eu_smtp if i % 2 == 0 else us_smtp, f"ben@{DOMAIN}", subject)   # 250 in either region
                sent["ben"].append(subject)
        finally:
            os.kill(hub, signal.SIGCONT)
    # mail keeps arriving at both regions' edges while the domain moves, and amy keeps reading
    reader = Reader(eu, eu_imap, f"amy@{DOMAIN}", len(sent["amy"]))
    during = 0
    while mover.poll() is None and during < 40:
        edge = eu_smtp if during % 2 == 0 else us_smtp
        send(edge, f"ben@{DOMAIN}", f"ben during {during}")
        sent["ben"].append(f"ben during {during}")
        during += 1
        reader.poke()
        time.sleep(0.5)
    out, _ = mover.communicate(timeout=420)
    assert mover.returncode == 0, out
    wait_for(reader.poke, 60, "amy reading her INBOX again after the move")   # now proxied to us
    assert reader.read >= 2, vars(reader)
    reader.imap.logout()
    if killed is not None:
        wait_for(lambda: (c := active_controller(eu)) is not None and c["pid"] != killed, 120,
                 "eu's controller started again and active")
    progress = move_status(eu)
    assert progress["phase"] == "done" and progress["accounts"] == 3 and progress["accounts_verified"] == 3, progress

    # after the move: mail sent to either edge lands in us
    for edge in (eu_smtp, us_smtp):
        subject = f"ben after via {edge}"
        send(edge, f"ben@{DOMAIN}", subject)
        sent["ben"].append(subject)

    def ben_has_all():
        imap = imap_login(us, us_imap, f"ben@{DOMAIN}")
        try:
            return set(mailbox(imap, "INBOX")) == set(sent["ben"])
        finally:
            imap.logout()
    wait_for(ben_has_all, 120, "every message to ben, once, in us")

    imap = imap_login(us, us_imap, f"amy@{DOMAIN}")
    try:
        assert mailbox(imap, "INBOX") == before["INBOX"]
        assert mailbox(imap, "Projects") == before["Projects"]
    finally:
        imap.logout()
    ben = imap_login(eu, eu_imap, f"ben@{DOMAIN}")   # eu's edge proxies the login to us now
    try:
        assert set(mailbox(ben, "INBOX")) == set(sent["ben"])
    finally:
        ben.logout()
    # the source's copy is gone
    assert not list((eu / "storage" / "SharedDomains").glob(f"**/{DOMAIN}/**/*.macnt"))
