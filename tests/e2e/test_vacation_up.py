"""An out-of-office reply through `colony up` as a hosting panel sets it: the vacation set
through the admin API (the CLI), two messages from one sender and one from a list sent with
swaks and smtplib, and exactly one reply at the sender's loopback MX -- from the null sender,
to the envelope sender, threaded to the first message, DKIM-signed for the account's domain."""

from __future__ import annotations

import email
import email.policy
import json
import os
import smtplib
import subprocess
import threading
import urllib.request
from email.message import EmailMessage

import dkim
import httpx
import pytest

from test_colony_up import COLONY, free_base_port, ready_nodes, start_up, stop_up, wait_deliverable, wait_for
from test_mail_flow import colony, smtp_port
from tools import need_tool

pytestmark = pytest.mark.slow


class RemoteMX:
    """remote.test's MX (aiosmtpd): every envelope and message the edges deliver to it."""

    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        with self.lock:
            self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 Queued"


@pytest.fixture
def cluster(tmp_path, dns_server, smtp_mx):
    mx = smtp_mx(RemoteMX())
    dns_server.add("remote.test. 60 IN MX 10 mx.remote.test.", "mx.remote.test. 60 IN A 127.0.0.1",
                   'remote.test. IN TXT "v=spf1 ip4:127.0.0.1 -all"')
    data_dir = tmp_path / "colony"
    env = {"COLONY_DNS_SERVERS": dns_server.address, "COLONY_EDGE_ALLOW_NETWORKS": "",
           "COLONY_OUTBOUND_SMTP_PORT": str(mx.port)}
    os.environ.update(env)
    try:
        proc = start_up(data_dir, free_base_port(), "--mailstores", "1", "--sipfarms", "0")
    finally:
        for key in env:
            del os.environ[key]
    try:
        wait_for(lambda: ready_nodes(data_dir, 6), 180, "every instance READY")
        wait_for(lambda: (data_dir / "admin.token").exists(), 60, "the bootstrap token")
        yield data_dir, mx
    finally:
        stop_up(proc)


def nodes(data_dir) -> list[dict]:
    return json.loads(subprocess.run([COLONY, "status", "--json", "--data-dir", str(data_dir)],
                                     capture_output=True, text=True, timeout=60).stdout)


def store_metrics(data_dir) -> dict[str, float]:
    ops = next(n for n in nodes(data_dir) if n["role"] == "mailstore")["addresses"]["ops"]
    text = urllib.request.urlopen(f"http://{ops}/metrics", timeout=10).read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("colony_mailstore_auto_replies_")}


def test_one_reply_per_sender_at_the_senders_mx_and_none_to_a_list(cluster, dns_server, tmp_path):
    swaks = need_tool("swaks")
    data_dir, mx = cluster
    colony(data_dir, "domain", "add", "acme.example")
    colony(data_dir, "account", "add", "alice@acme.example", "--real-name", "Alice Liddell")
    token = (data_dir / "admin.token").read_text().strip()
    api = next(n for n in nodes(data_dir) if n["role"] == "admin-api")["addresses"]["http"]
    with httpx.Client(base_url=f"http://{api}", headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        key = http.post("/v1/domains/acme.example/dkim")
        assert key.status_code == 201, key.text
        record = key.json()
        (tmp_path / "away.txt").write_text("Back on the 4th — écrivez à bob@acme.example.\n", encoding="utf-8")
        colony(data_dir, "account", "vacation", "alice@acme.example", "--body-file", str(tmp_path / "away.txt"),
               "--days", "7")
        shown = http.get("/v1/domains/acme.example/accounts/alice").json()["vacation"]
        assert shown["days"] == 7 and shown["body"].startswith("Back on the 4th")
    port = smtp_port(data_dir)
    wait_deliverable(port, "alice@acme.example")

    # The vacation reaches the mail store through the directory (the projector, then the
    # store's 2 s cache): probes from senders of their own until one is answered, so the three
    # messages below are judged with it.  A probe judged before it is never answered later.
    sent = "colony_mailstore_auto_replies_sent_total"
    for n in range(20):
        probe = EmailMessage()
        probe["From"], probe["To"], probe["Subject"] = f"probe{n}@remote.test", "alice@acme.example", "probe"
        probe.set_content("probe\n")
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
            s.send_message(probe)
        try:
            wait_for(lambda: store_metrics(data_dir).get(sent, 0) >= 1, 5, "a probe answered")
            break
        except AssertionError:
            continue
    answered = store_metrics(data_dir)[sent]
    wait_for(lambda: len(mx.received) >= answered, 120, "the probes' replies at remote.test's MX")
    before = store_metrics(data_dir)

    out = subprocess.run([swaks, "--to", "alice@acme.example", "--from", "bob@remote.test", "--server",
                          f"127.0.0.1:{port}", "--header", "Subject: Réunion demain", "--header",
                          "Message-Id: <first@remote.test>", "--helo", "mail.remote.test"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "250 2.0.0" in out.stdout, out.stdout + out.stderr
    second = EmailMessage()
    second["From"], second["To"], second["Subject"] = "Bob <bob@remote.test>", "alice@acme.example", "again"
    second["Message-ID"] = "<second@remote.test>"
    second.set_content("me again\n")
    listed = EmailMessage()
    listed["From"], listed["To"], listed["Subject"] = "news@remote.test", "news@remote.test", "weekly news"
    listed["List-Id"] = "Weekly <news.remote.test>"
    listed.set_content("news\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.send_message(second)
        s.send_message(listed, to_addrs=["alice@acme.example"])

    def judged():
        now = store_metrics(data_dir)
        done = {k: now.get(k, 0) - before.get(k, 0) for k in now}
        return done if sum(done.values()) >= 3 else None
    done = wait_for(judged, 120, "the mail store to judge the three messages")
    assert done["colony_mailstore_auto_replies_sent_total"] == 1
    assert done['colony_mailstore_auto_replies_suppressed_total{reason="already_replied"}'] == 1
    assert done['colony_mailstore_auto_replies_suppressed_total{reason="list"}'] == 1
    def replies() -> list[tuple[str, list[str], bytes]]:
        return [r for r in mx.received if not r[1][0].startswith("probe")]   # a late probe's reply aside
    wait_for(replies, 120, "the reply at remote.test's MX")

    [(mail_from, rcpts, raw)] = replies()
    assert mail_from == "<>" and rcpts == ["bob@remote.test"]     # MAIL FROM:<> (aiosmtpd's spelling), to the envelope sender
    reply = email.message_from_bytes(raw, policy=email.policy.default)
    assert reply["Auto-Submitted"] == "auto-replied"
    assert reply["In-Reply-To"] == "<first@remote.test>" and reply["References"] == "<first@remote.test>"
    assert reply["Subject"] == "Auto: Réunion demain" and raw.split(b"\r\n\r\n")[0].isascii()
    assert reply["From"].addresses[0].addr_spec == "alice@acme.example"
    assert reply["From"].addresses[0].display_name == "Alice Liddell"
    assert reply["To"] == "bob@remote.test" and reply["Message-ID"].endswith("@acme.example>")
    assert reply.get_content_type() == "text/plain" and "écrivez" in reply.get_content()
    signature = reply["DKIM-Signature"]
    assert signature is not None and "d=acme.example" in signature.replace(" ", "")
    assert dkim.verify(raw, dnsfunc=lambda name, timeout=5: record["record_value"].encode())
