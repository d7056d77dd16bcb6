"""Real SMTP clients (smtplib with STARTTLS, swaks) deliver through `colony up` to an account
provisioned with the `colony` CLI; the edge answers 250 only once the message is durable."""

from __future__ import annotations

import json
import os
import shutil
import smtplib
import ssl
import subprocess
from email.message import EmailMessage

import pytest

from test_colony_up import COLONY, free_base_port, start_up, status_json, stop_up, wait_for

pytestmark = pytest.mark.slow


def _cli(data_dir, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([COLONY, *args, "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=60)


def _all_ready(data_dir) -> bool:
    nodes = status_json(data_dir)
    return len(nodes) >= 7 and all(n["state"] == "READY" for n in nodes) and any(n["role"] == "edge" for n in nodes)


def test_smtplib_and_swaks_deliver_through_colony_up(tmp_path):
    swaks = shutil.which("swaks")
    if swaks is None and os.environ.get("CI") == "true":
        pytest.fail("swaks is required in CI (apt-get install swaks)")
    data_dir, base = tmp_path / "smtp", free_base_port()
    proc = start_up(data_dir, base)
    try:
        wait_for(lambda: _all_ready(data_dir), 180, "every instance READY, an edge among them")
        info = json.loads((data_dir / "cluster.json").read_text())
        host, port = info["smtp"][0].rsplit(":", 1)
        assert int(port) == base + 25
        wait_for(lambda: (data_dir / "admin.token").exists(), 60, "the bootstrap token")
        made = _cli(data_dir, "domain", "add", "acme.test")
        assert made.returncode == 0, made.stderr
        made = _cli(data_dir, "account", "add", "amy@acme.test", "--password", "a-Long-pass-phrase-9")
        assert made.returncode == 0, made.stderr

        context = ssl.create_default_context(cafile=info["tls_ca"])

        def rcpt_accepted() -> bool:
            with smtplib.SMTP(host, int(port), local_hostname="client.test", timeout=30) as client:
                client.starttls(context=context)
                client.ehlo()
                client.mail("alice@remote.test")
                return client.rcpt("amy@acme.test")[0] == 250
        wait_for(rcpt_accepted, 60, "the new account to reach the edge's directory")

        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "alice@remote.test", "amy@acme.test", "through colony up"
        msg.set_content("Hello Amy")
        with smtplib.SMTP(host, int(port), local_hostname="client.test", timeout=30) as client:
            client.starttls(context=context)
            client.ehlo()
            assert client.send_message(msg) == {}
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                client.sendmail("alice@remote.test", ["nobody@acme.test"], b"Subject: x\r\n\r\nx\r\n")
            assert refused.value.recipients["nobody@acme.test"][0] == 550
        if swaks is not None:
            out = subprocess.run([swaks, "--server", host, "--port", port, "--helo", "swaks.test", "--tls",
                                  "--tls-verify", "--tls-ca-path", info["tls_ca"], "--from", "bob@remote.test",
                                  "--to", "amy@acme.test", "--body", "via swaks"],
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 0 and "250 2.0.0 OK queued as" in out.stdout, out.stdout + out.stderr
        edge_log = (data_dir / "logs" / "edge-1.log").read_text()
        assert edge_log.count("accepted ") >= (2 if swaks else 1)
    finally:
        out = stop_up(proc)
    assert "SMTP MX:" in out and info["tls_ca"] in out
    if not os.environ.get("COLONY_POSTMASTER_ADDRESS"):   # no mailbox for <Postmaster>: said where the MX is
        assert "postmaster: none set" in out and "COLONY_POSTMASTER_ADDRESS" in out, out
