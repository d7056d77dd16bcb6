"""`colony up --regions eu,us` as an operator runs it: provisioning on the primary (eu) reaches
us; mail for a domain homed in eu, sent to the us edge, is stored once in eu; with the link
between the regions frozen (the hub stopped with SIGSTOP), us still answers 250 for eu mail
and delivers its own domains' mail, and every message it accepted reaches eu once the link is back.
The eu user then reads that mail over IMAP and POP3 through the us edge (proxied to eu's
mail store), and eu's admin API lists both regions' instances."""

from __future__ import annotations

import contextlib
import imaplib
import json
import os
import poplib
import ssl
import urllib.request
import signal
import smtplib
import subprocess
from email.message import EmailMessage
from pathlib import Path

import pytest

import test_colony_up as colony_up
from test_colony_up import UP_LOGS, UpExited, COLONY, ready_nodes, start_up, stop_up, wait_for
from colony.ports import port_is_free
from colony.supercluster import HUB_PORT_OFFSET
from tools import port_band

pytestmark = pytest.mark.slow

COUNTS = ["--controllers", "1", "--edges", "1", "--mailstores", "1", "--sipfarms", "1", "--admin-apis", "1"]
PER_REGION = 6  # controller, edge, mail store, SIP farm member, projector, admin API
ROLES = ("admin-api", "controller", "edge", "mailstore", "projector", "sipfarm")


def free_base() -> int:
    import random

    band = port_band(2000)  # this pytest-xdist worker's slice: regions at base + 200*n, second instances 1000 up
    for _ in range(200):
        base = random.randrange(band.start, band.stop, 1000)
        if all(port_is_free("127.0.0.1", base + off) for off in (0, 1, 2, 3, 25, 70, 100, 200, 201, 225, 270, 300)):
            return base
    raise RuntimeError("no free port range")


def colony(data_dir: Path, *args: str) -> str:
    out = subprocess.run([COLONY, *args, "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def bodies(region_dir: Path, domain: str) -> list[Path]:
    # Not the ".tmp-" files of a body being written, or left by a killed store until the
    # account's next owner removes them.
    return sorted(p for p in (region_dir / "storage" / "SharedDomains" / domain).glob("**/*.macnt/mail/bodies/*")
                  if not p.name.startswith("."))


def send(port: int, rcpt: str, subject: str) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "bob@remote.test", rcpt, subject
    msg.set_content(subject)
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.send_message(msg)  # raises unless every recipient got 250


def register(aor: str, call_id: str) -> bytes:
    domain = aor.split("@")[1]
    return (f"REGISTER sip:{domain} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5999;rport;branch=z9hG4bK-{call_id}\r\n"
            "Max-Forwards: 70\r\n"
            f"To: <sip:{aor}>\r\nFrom: <sip:{aor}>;tag={call_id}\r\n"
            f"Call-ID: {call_id}@regions.test\r\nCSeq: 1 REGISTER\r\n"
            "Contact: <sip:phone@127.0.0.1:5999>\r\nExpires: 60\r\nContent-Length: 0\r\n\r\n").encode()


def sip_over_udp(address: str, request: bytes) -> str:
    """The final answer to one request, sent again (as a UDP client does) until it comes
    (the Via's rport asks for the answer at this socket, RFC 3581)."""
    import socket

    host, port = address.rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        for _ in range(30):
            s.sendto(request, (host, int(port)))
            try:
                while True:
                    answer = s.recv(65535).decode()
                    if not answer.startswith("SIP/2.0 1"):
                        return answer
            except socket.timeout:
                continue
    raise AssertionError(f"no SIP answer from {address}")


def wait_deliverable(port: int, rcpt: str) -> None:
    # A region's edge hears of provisioning later than a lone cluster's: the primary's mirror first.
    colony_up.wait_deliverable(port, rcpt, timeout=90)


@contextlib.contextmanager
def regions_up(data_dir: Path, counts: list[str], per_region: int, **extra_env: str):
    """``colony up --regions eu,us`` with the edges' abuse limits lifted for one test client,
    until every instance of both regions is READY and the primary's token exists; stopped
    (its output printed) on the way out."""
    base = free_base()
    env = {"COLONY_EDGE_ALLOW_NETWORKS": "", "COLONY_EDGE_MESSAGES_PER_MINUTE_PER_IP": "100000",
           "COLONY_EDGE_RECIPIENTS_PER_MINUTE_PER_IP": "100000", "COLONY_EDGE_CONNECTIONS_PER_MINUTE_PER_IP": "100000",
           "COLONY_DNSBL_ZONES": "", **extra_env}
    os.environ.update(env)
    try:
        for attempt in range(3):
            proc = start_up(data_dir, base, "--regions", "eu,us", *counts)
            try:
                wait_for(lambda: ready_nodes(data_dir / "eu", per_region), 240, "every eu instance READY", up=proc)
                break
            except UpExited as exc:
                # Another program on the machine (a benchmark) took one of the free ports we
                # picked before `colony up` bound it: it refused at once, so pick again.
                if "is taken" not in exc.output or attempt == 2:
                    raise
                UP_LOGS.pop(proc.pid, None)
                base = free_base()
    finally:
        for key in env:
            del os.environ[key]
    try:
        for region in ("eu", "us"):
            wait_for(lambda r=region: ready_nodes(data_dir / r, per_region), 240, f"every {region} instance READY", up=proc)
        wait_for(lambda: (data_dir / "eu" / "admin.token").exists(), 60, "the primary's bootstrap token")
        yield data_dir, base
    finally:
        print(stop_up(proc))


@pytest.fixture
def regions(tmp_path):
    with regions_up(tmp_path / "sc", COUNTS, PER_REGION) as up:
        yield up


def test_mail_for_eu_accepted_in_us_lands_in_eu_also_across_a_cut(regions):
    data_dir, base = regions
    eu, us = data_dir / "eu", data_dir / "us"
    us_smtp = base + 200 + 25
    info = json.loads((data_dir / "supercluster.json").read_text())
    assert info["regions"]["us"]["smtp"] == [f"127.0.0.1:{us_smtp}"]
    # `colony status` on the super cluster's data directory: every region's instances.
    nodes = json.loads(subprocess.run([COLONY, "status", "--json", "--data-dir", str(data_dir)],
                                      capture_output=True, text=True, timeout=120).stdout)
    assert sorted((n["region"], n["role"]) for n in nodes) == sorted((r, role) for r in ("eu", "us") for role in ROLES)
    colony(eu, "domain", "add", "eu.example", "--region", "eu")
    colony(eu, "account", "add", "kim@eu.example", "--password", "Kim-secret-123")
    colony(eu, "domain", "add", "us.example", "--region", "us")
    colony(eu, "account", "add", "lee@us.example", "--password", "Lee-secret-123")
    wait_deliverable(us_smtp, "kim@eu.example")  # provisioning made on eu reached us's mirror
    wait_deliverable(us_smtp, "lee@us.example")

    for i in range(5):
        send(us_smtp, "kim@eu.example", f"before {i}")
    wait_for(lambda: len(bodies(eu, "eu.example")) >= 5, 120, "5 messages in eu's store")

    hub = info["hub"]["pid"]
    os.kill(hub, signal.SIGSTOP)  # the link between the regions hangs
    try:
        for i in range(5):
            send(us_smtp, "kim@eu.example", f"during {i}")  # still 250: stored in us's MAIL
        send(us_smtp, "lee@us.example", "own domain during the cut")
        wait_for(lambda: len(bodies(us, "us.example")) == 1, 120, "us to deliver its own domain's mail meanwhile")
    finally:
        os.kill(hub, signal.SIGCONT)
    wait_for(lambda: len(bodies(eu, "eu.example")) >= 10, 180, "every message accepted in us during the cut in eu")
    assert len(bodies(eu, "eu.example")) == 10  # once each
    assert not bodies(us, "eu.example")  # stored only in its home region

    # The eu user reads it through the us edge: the session is proxied to eu's mail store.
    us_tls = ssl.create_default_context(cafile=str(us / "tls" / "ca.pem"))
    imap = imaplib.IMAP4_SSL("127.0.0.1", base + 200 + 93, ssl_context=us_tls, timeout=60)
    imap.login("kim@eu.example", "Kim-secret-123")
    status, data = imap.select("INBOX", readonly=True)
    assert status == "OK" and int(data[0]) == 10
    status, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    subjects = sorted(part[1].decode().strip() for part in data if isinstance(part, tuple))
    assert subjects == sorted([f"Subject: before {i}" for i in range(5)] + [f"Subject: during {i}" for i in range(5)])
    imap.logout()
    pop = poplib.POP3_SSL("127.0.0.1", base + 200 + 95, context=us_tls, timeout=60)
    pop.user("kim@eu.example")
    pop.pass_("Kim-secret-123")
    assert pop.stat()[0] == 10
    pop.quit()
    assert not list((us / "storage" / "SharedDomains" / "eu.example").glob("**/*.macnt"))  # none made in us

    # One admin view: eu's admin API lists every region's instances with their region.
    token = (eu / "admin.token").read_text().strip()
    request = urllib.request.Request(info["regions"]["eu"]["admin_api"][0] + "/v1/cluster/nodes",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        listed = json.loads(response.read())
        assert "Colony-Unreachable-Regions" not in response.headers
    assert sorted((n["region"], n["role"]) for n in listed) == sorted((r, role) for r in ("eu", "us") for role in ROLES)
    # ... and so does its monitor page, each instance with its region.
    import httpx
    api = info["regions"]["eu"]["admin_api"][0]
    with httpx.Client(base_url=api, timeout=60) as http:
        cookie = http.post("/monitor/login", data={"token": token}).cookies.get("colony_monitor")
    assert cookie
    with httpx.Client(base_url=api, timeout=60, cookies={"colony_monitor": cookie}) as http:
        page = http.get("/monitor").text  # the cookie is Secure: httpx would not send it back on http
    for region in ("eu", "us"):
        for role in ("controller", "edge", "mailstore"):
            assert f"{role}-1 ({region})" in page, (role, region)

    # SIP: a REGISTER for a us subscriber reaching the eu farm is redirected to the us farm,
    # which challenges it as its own; an eu subscriber is challenged in eu.
    eu_sip, us_sip = info["regions"]["eu"]["sip"][0], info["regions"]["us"]["sip"][0]
    moved = sip_over_udp(eu_sip, register("lee@us.example", "r1"))
    assert moved.startswith("SIP/2.0 302") and f"Contact: <sip:lee@{us_sip}>" in moved, moved
    assert sip_over_udp(us_sip, register("lee@us.example", "r2")).startswith("SIP/2.0 401")
    assert sip_over_udp(eu_sip, register("kim@eu.example", "r3")).startswith("SIP/2.0 401")

    # A message too large to travel inline in MAIL (over mail_inline_max_bytes) still reaches
    # eu: object stores do not cross regions, so the us edge carries the body in the job.
    big = EmailMessage()
    big["From"], big["To"], big["Subject"] = "bob@remote.test", "kim@eu.example", "large"
    big.set_content("large")
    big.add_attachment(os.urandom(1024 * 1024), maintype="application", subtype="octet-stream")
    with smtplib.SMTP("127.0.0.1", us_smtp, timeout=120) as s:
        s.send_message(big)
    wait_for(lambda: len(bodies(eu, "eu.example")) >= 11, 180, "the large message in eu's store")
    assert max(p.stat().st_size for p in bodies(eu, "eu.example")) > 1024 * 1024
    # One larger than a MAIL job can carry gets a clear permanent refusal, not a 250 eu cannot read.
    huge = EmailMessage()
    huge["From"], huge["To"], huge["Subject"] = "bob@remote.test", "kim@eu.example", "huge"
    huge.set_content("huge")
    huge.add_attachment(os.urandom(5 * 1024 * 1024), maintype="application", subtype="octet-stream")
    with smtplib.SMTP("127.0.0.1", us_smtp, timeout=120) as s:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            s.send_message(huge)
    assert refused.value.smtp_code == 552 and b"another region" in refused.value.smtp_error
    assert len(bodies(eu, "eu.example")) == 11


def test_controller_failover_in_one_region_leaves_the_other_alone(regions):
    from test_colony_up import status_json

    data_dir, base = regions
    eu, us = data_dir / "eu", data_dir / "us"
    us_smtp = base + 200 + 25
    colony(eu, "domain", "add", "us.example", "--region", "us")
    colony(eu, "account", "add", "lee@us.example", "--password", "Lee-secret-123")
    wait_deliverable(us_smtp, "lee@us.example")
    us_before = {n["id"]: (n["pid"], n["epoch"], n["controller"]) for n in status_json(us)}
    eu_controller = next(n for n in status_json(eu) if n["controller"])

    os.kill(eu_controller["pid"], signal.SIGKILL)  # `colony up` starts it again: a new election in eu

    def eu_reelected():
        nodes = status_json(eu)
        return any(n["controller"] and n["epoch"] > eu_controller["epoch"] for n in nodes) and nodes
    wait_for(eu_reelected, 180, "eu to elect a controller with a newer epoch")
    send(us_smtp, "lee@us.example", "during eu's failover")
    wait_for(lambda: len(bodies(us, "us.example")) == 1, 120, "us to deliver its own mail")
    us_after = {n["id"]: (n["pid"], n["epoch"], n["controller"]) for n in status_json(us)}
    assert us_after == us_before  # same processes, same controller, same epoch


def test_a_taken_port_in_any_region_refuses_before_anything_starts(tmp_path):
    """`colony up --regions` checks every region's ports first: a port taken in the second
    region must not leave the hub and the first region started (and a data directory in use)."""
    import socket

    base = free_base()
    us_smtp = base + 200 + 25
    with socket.socket() as taken:
        # SO_REUSEADDR as the real listeners (and free_base's check): a connection of an
        # earlier test left in TIME_WAIT on this port made a plain bind fail.
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", us_smtp))
        taken.listen()
        out = subprocess.run([COLONY, "up", "--data-dir", str(tmp_path / "sc"), "--base-port", str(base),
                              "--no-live", "--regions", "eu,us"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    # (Another program may hold another of the range's ports by now: any one refused will do.)
    assert "is taken" in out.stdout + out.stderr, out.stdout + out.stderr
    assert not (tmp_path / "sc" / "hub").exists(), "the hub started although a region could not"
    assert port_is_free("127.0.0.1", base + HUB_PORT_OFFSET)
