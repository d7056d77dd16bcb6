"""Mail client autoconfiguration under `colony up`: the edge's autoconfig listener at the port
`colony ports` plans, announced by `colony up` and shown by `colony status`; the settings it
hands out are this cluster's real listener ports, so a client that takes them as they are
logs in over IMAPS and submits over 587."""

from __future__ import annotations

import imaplib
import smtplib
import ssl
import subprocess
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from email.message import EmailMessage
from pathlib import Path

import pytest

from colony.ports import PortPlan
from test_colony_up import COLONY, all_ready, free_base_port, start_up, status_json, stop_up, wait_for

pytestmark = pytest.mark.slow

PASSWORD = "a long passphrase"
USER = "alice@acme.example"


def colony(data_dir: Path, *args: str) -> str:
    out = subprocess.run([COLONY, *args, "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_a_client_configured_from_the_edges_answer_logs_in_and_submits(tmp_path):
    data_dir, base = tmp_path / "colony", free_base_port()
    plan_port = PortPlan(base).autoconfig(0)
    ports = subprocess.run([COLONY, "ports", "--base-port", str(base)], capture_output=True, text=True, timeout=60)
    assert "autoconfig edge #1" in ports.stdout and str(plan_port) in ports.stdout
    proc = start_up(data_dir, base, "--sipfarms", "0")   # no phones here
    try:
        nodes = wait_for(lambda: all_ready(data_dir, 7), 180, "every instance READY")
        edge = next(n for n in nodes if n["role"] == "edge")
        assert edge["addresses"]["autoconfig"] == f"127.0.0.1:{plan_port}"       # `colony status`
        wait_for(lambda: (data_dir / "admin.token").exists(), 60, "the bootstrap token")
        colony(data_dir, "domain", "add", "acme.example")
        colony(data_dir, "account", "add", USER, "--password", PASSWORD)
        context = ssl.create_default_context(cafile=str(data_dir / "tls" / "ca.pem"))
        query = urllib.parse.urlencode({"emailaddress": USER})

        def document() -> bytes | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{plan_port}/mail/config-v1.1.xml?{query}",
                                            timeout=30) as answer:
                    return answer.read()
            except OSError:   # 404 until the edge's directory has the new domain
                return None
        config = ET.fromstring(wait_for(document, 60, "the edge to answer for acme.example"))
        servers = {(s.get("type"), s.findtext("socketType")): {c.tag: c.text for c in s}
                   for s in [*config.iter("incomingServer"), *config.iter("outgoingServer")]}
        imap, smtp = servers[("imap", "SSL")], servers[("smtp", "STARTTLS")]
        assert int(imap["port"]) == PortPlan(base).imaps(0) and int(smtp["port"]) == PortPlan(base).submission(0)
        user = imap["username"].replace("%EMAILADDRESS%", USER)

        def logs_in() -> bool:
            try:
                with imaplib.IMAP4_SSL(imap["hostname"], int(imap["port"]), ssl_context=context, timeout=60) as client:
                    return client.login(user, PASSWORD)[0] == "OK" and client.select("INBOX")[0] == "OK"
            except (imaplib.IMAP4.error, OSError):   # the account may not have reached every cache yet
                return False
        wait_for(logs_in, 60, "an IMAPS login with the settings autoconfig named")
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = USER, USER, "configured by autoconfig"
        message.set_content("hello\n")
        with smtplib.SMTP(smtp["hostname"], int(smtp["port"]), timeout=60) as client:
            client.starttls(context=context)
            client.login(smtp["username"].replace("%EMAILADDRESS%", USER), PASSWORD)
            assert client.send_message(message) == {}
    finally:
        printed = stop_up(proc)
    assert f"autoconfig: http://127.0.0.1:{plan_port}" in printed
