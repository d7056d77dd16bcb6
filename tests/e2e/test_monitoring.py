"""A real Prometheus (Debian's ``prometheus``) started by `colony up --monitoring` scrapes
every instance it finds through file-based discovery, and every expression of every
service dashboard (infra/grafana/generate.py) returns data from it."""

from __future__ import annotations

import importlib.util
import imaplib
import json
import os
import poplib
import smtplib
import socket
import ssl
import threading
import time
import uuid
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest

from test_colony_up import all_ready, free_base_port, start_up, stop_up, wait_for
from test_mail_flow import colony, wait_deliverable
from tools import need_tool

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
INSTANCES = 8  # colony up's defaults: 2 controllers, an edge, 2 mail stores, a SIP farm member, an admin API, a projector


def dashboards() -> dict[str, dict]:
    spec = importlib.util.spec_from_file_location("generate", ROOT / "infra/grafana/generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {name: d for name, d in module.dashboards().items() if module.SERVICES in d["tags"]}


class Sink:
    """The remote MX of ``remote.test`` (aiosmtpd): what the edges deliver outbound."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.received: list[str] = []
        self.lock = threading.Lock()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        with self.lock:
            self.received.extend(envelope.rcpt_tos)
        return "250 2.0.0 Queued"


@pytest.fixture
def sink():
    s = Sink()
    s.controller.start()
    yield s
    s.controller.stop()


def sip_register(address: str, domain: str, user: str) -> int:
    """One unauthenticated REGISTER over UDP: the member's own answer's status (401, a challenge)."""
    host, port = address.rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(2)
        local = udp.getsockname()[1]
        request = (f"REGISTER sip:{domain} SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP 127.0.0.1:{local};rport;branch=z9hG4bK{uuid.uuid4().hex}\r\n"
                   f"Max-Forwards: 70\r\nFrom: <sip:{user}@{domain}>;tag=m1\r\nTo: <sip:{user}@{domain}>\r\n"
                   f"Call-ID: {uuid.uuid4().hex}\r\nCSeq: 1 REGISTER\r\n"
                   f"Contact: <sip:{user}@127.0.0.1:{local}>\r\nExpires: 60\r\nContent-Length: 0\r\n\r\n").encode()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # UDP: send again until answered (as a phone's Timer E would)
            udp.sendto(request, (host, int(port)))
            try:
                answer = udp.recv(65536)
            except TimeoutError:
                continue
            return int(answer.split(b" ", 2)[1])
    raise AssertionError(f"no answer to REGISTER from {address}")


def query(prometheus: str, expr: str) -> list:
    try:
        answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=30).json()
    except (httpx.HTTPError, ValueError):
        return []
    assert answer["status"] == "success", f"{expr}: {answer}"
    return answer["data"]["result"]


def test_prometheus_scrapes_colony_up_and_every_dashboard_query_has_data(tmp_path, dns_server, sink):
    need_tool("prometheus")
    data_dir, base = tmp_path / "colony", free_base_port()
    # Inherited by every instance: the loopback DNS server, the test's loopback client
    # untrusted, remote MX hosts contacted on the sink's port.
    env = {"COLONY_DNS_SERVERS": dns_server.address, "COLONY_EDGE_ALLOW_NETWORKS": "",
           "COLONY_OUTBOUND_SMTP_PORT": str(sink.port)}
    dns_server.add("remote.test. 60 IN MX 10 mx.remote.test.", "mx.remote.test. 60 IN A 127.0.0.1")
    os.environ.update(env)
    try:
        proc = start_up(data_dir, base, "--monitoring")
    finally:
        for key in env:
            del os.environ[key]
    prometheus = f"http://127.0.0.1:{base + 90}"
    try:
        nodes = wait_for(lambda: all_ready(data_dir, INSTANCES), 240, f"{INSTANCES} READY instances")
        wanted = sorted(n["addresses"]["ops"] for n in nodes)

        def targets_written():
            # colony up rewrites the file every 2 s: wait for the rewrite after the last READY.
            try:
                found = json.loads((data_dir / "prometheus" / "targets.json").read_text())
            except (OSError, ValueError):
                return None
            return found if sorted(t["targets"][0] for t in found) == wanted else None
        targets = wait_for(targets_written, 120, "colony up to list every instance for Prometheus")
        assert {t["labels"]["job"] for t in targets} == {f"colony-{n['role']}" for n in nodes}
        wait_for(lambda: len([r for r in query(prometheus, 'up{job=~"colony-.*"} == 1')]) == INSTANCES, 120,
                 "Prometheus scraping every instance")

        # Some admin API traffic, so its RED metrics have samples (a labelled counter has none before).
        token = (data_dir / "admin.token").read_text().strip()
        api = next(n["addresses"]["http"] for n in nodes if n["role"] == "admin-api")
        with httpx.Client(base_url=f"http://{api}", headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
            for _ in range(5):
                assert http.get("/v1/domains").status_code == 200
            assert http.get("/v1/cluster/nodes").status_code == 200
        # One message in: recipients asked over the bus, SMTP, the mail queue, the mail store.
        colony(data_dir, "domain", "add", "metrics.example")
        colony(data_dir, "account", "add", "alice@metrics.example", "--password", "a long passphrase")
        smtp = int(next(n for n in nodes if n["role"] == "edge")["addresses"]["smtp"].rsplit(":", 1)[1])
        wait_deliverable(smtp, "alice@metrics.example")
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "bob@remote.test", "alice@metrics.example", "metrics"
        msg.set_content("counted\n")
        with smtplib.SMTP("127.0.0.1", smtp, timeout=60) as s:
            s.send_message(msg)
            # An unknown recipient is refused (SMTP in: refusals by stage).
            s.rset()
            s.mail("bob@remote.test")
            assert s.rcpt("nobody@metrics.example")[0] == 550
        edge = next(n for n in nodes if n["role"] == "edge")["addresses"]
        tls = ssl.create_default_context(cafile=str(data_dir / "tls" / "ca.pem"))
        tls.check_hostname = False  # the test's concern is the metrics, not the name on the certificate
        # Log-ins through the edge: the password is checked over the bus (auth.check).
        imap = edge["imap"].rsplit(":", 1)
        client = imaplib.IMAP4(imap[0], int(imap[1]), timeout=60)
        client.starttls(tls)
        client.login("alice@metrics.example", "a long passphrase")
        client.logout()
        pop = edge["pop3"].rsplit(":", 1)
        pop3 = poplib.POP3(pop[0], int(pop[1]), timeout=60)
        pop3.stls(tls)
        pop3.user("alice@metrics.example")
        pop3.pass_("a long passphrase")
        pop3.quit()
        # SMTP out: submitted with AUTH, delivered by an edge to remote.test's MX (the sink).
        out = EmailMessage()
        out["From"], out["To"], out["Subject"] = "alice@metrics.example", "carol@remote.test", "out"
        out.set_content("delivered\n")
        submission = edge["submission"].rsplit(":", 1)
        with smtplib.SMTP(submission[0], int(submission[1]), timeout=60) as s:
            s.starttls(context=tls)
            s.login("alice@metrics.example", "a long passphrase")
            s.send_message(out)
        wait_for(lambda: "carol@remote.test" in sink.received, 120, "the edge to deliver to remote.test's MX")
        # SIP: a REGISTER without credentials is challenged by the member that takes it.
        sip = next(n for n in nodes if n["role"] == "sipfarm")["addresses"]["sip"]
        assert 400 <= sip_register(sip, "metrics.example", "alice") < 500

        exprs = [(name, panel["title"], target["expr"].replace("$role", ".*"))
                 for name, d in dashboards().items() for panel in d["panels"] for target in panel.get("targets", [])]
        assert len(exprs) > 20
        deadline = time.monotonic() + 120  # rate() needs two scrapes (5 s apart) after the traffic
        empty = exprs
        while empty and time.monotonic() < deadline:
            empty = [e for e in empty if not query(prometheus, e[2])]
            if empty:
                time.sleep(2)
        assert not empty, "dashboard queries without data:\n" + "\n".join(f"{n} / {t}: {e}" for n, t, e in empty)
        # The projector applied the provisioning commands above (domain, account) and says so.
        applied = query(prometheus, 'sum(colony_projection_events_total{projection="readmodel"})')
        assert float(applied[0]["value"][1]) >= 2
        assert float(query(prometheus, 'max(colony_projection_position{projection="readmodel"})')[0]["value"][1]) >= 2
        # The cluster gauges count every instance once (only the active controller exports them).
        total = query(prometheus, 'sum(colony_cluster_nodes{state="READY"})')
        assert float(total[0]["value"][1]) == INSTANCES
    finally:
        stop_up(proc)
