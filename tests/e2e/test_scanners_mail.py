"""The scanners an operator's security team points at a mail cluster, against `colony up`:
nmap's NSE scripts (ssl-enum-ciphers, smtp-open-relay, smtp-enum-users, the SMTP CVE checks,
imap-brute) and sslscan, on every mail and SIP TLS listener.  What must hold:

* every TLS listener (implicit TLS and STARTTLS) grades A in ssl-enum-ciphers, offers TLS 1.2
  and 1.3 only and, in TLS 1.2, only ECDHE with AEAD (RFC 9325 §4.2), no heartbleed;
* the MX is no open relay and the audit's 16 relay tricks run to a verdict; VRFY and EXPN
  name nobody (RFC 5321 §3.5.3: 252 for all, EXPN not offered);  RCPT on the MX does tell
  a known recipient from an unknown one (550 5.1.1), as an MX must, so it is not asked;
* password guessing (imap-brute) is locked: the right password at the end of the list is
  refused to the guesser, then over IMAP, POP3 and submission alike, while the account's
  owner, from an address it logged in from before, still gets in (nobody can lock the owner
  out);
* afterwards every listener still answers, no session is left open, no log has a traceback.

smtp-brute is not run: it sends AUTH without EHLO, which any MX refuses (503), so it guesses
nothing; nor is pop3-brute beside imap-brute: one lock holds both (and submission), which
Python's own clients check after imap-brute's run.  The scanner runs
from 127.0.0.1, the owner from 127.0.0.2 (both loopback, different addresses)."""

from __future__ import annotations

import imaplib
import poplib
import socket
import smtplib
import ssl
import subprocess
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from test_colony_up import COLONY, free_base_port, ready_nodes, start_up, status_json, stop_up, wait_deliverable, wait_for
from tools import need_tool

pytestmark = pytest.mark.slow

DOMAIN = "acme.example"
OWNER = f"alice@{DOMAIN}"
PASSWORD = "a long passphrase"
OWNER_ADDRESS = "127.0.0.2"     # where the owner's client connects from; the scanner is 127.0.0.1
SCAN_DEADLINE = 150             # seconds any one scanner run may take
IMPLICIT_TLS = ("submissions", "imaps", "pop3s", "sip_tls", "sip_wss")
STARTTLS = {"smtp": "smtp", "submission": "smtp", "imap": "imap", "pop3": "pop3"}   # listener: sslscan's --starttls-


def colony(data_dir: Path, *args: str) -> str:
    out = subprocess.run([COLONY, *args, "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


class Cluster:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.nodes = status_json(data_dir)
        self.ports: dict[str, int] = {}
        for node in self.nodes:
            for name, address in node["addresses"].items():
                if name != "ops":
                    self.ports[name] = int(address.rsplit(":", 1)[1])
        self.ops = [node["addresses"]["ops"] for node in self.nodes if "ops" in node["addresses"]]
        self.tls = ssl.create_default_context(cafile=str(data_dir / "tls" / "ca.pem"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`colony up` with one edge, one mail store and one SIP farm member; alice provisioned,
    and logged in once from OWNER_ADDRESS, which makes that address familiar to her account."""
    need_tool("nmap")
    need_tool("sslscan")
    data_dir = tmp_path_factory.mktemp("scanners") / "colony"
    proc = start_up(data_dir, free_base_port(), "--controllers", "1", "--mailstores", "1")
    try:
        wait_for(lambda: ready_nodes(data_dir, 6), 180, "every instance READY", up=proc)
        wait_for(lambda: (data_dir / "admin.token").exists(), 60, "the bootstrap token", up=proc)
        colony(data_dir, "domain", "add", DOMAIN)
        colony(data_dir, "account", "add", OWNER, "--password", PASSWORD)
        at = Cluster(data_dir)
        wait_deliverable(at.ports["smtp"], OWNER, timeout=120)
        wait_for(lambda: _owner_submits(at), 120, "the owner's first login from her own address")
        yield at
    finally:
        stop_up(proc)


def _owner_submits(at: Cluster) -> bool:
    try:
        with smtplib.SMTP_SSL("127.0.0.1", at.ports["submissions"], context=at.tls, timeout=30,
                              source_address=(OWNER_ADDRESS, 0)) as client:
            client.login(OWNER, PASSWORD)
    except (smtplib.SMTPException, OSError):
        return False
    return True


class _ImapFrom(imaplib.IMAP4_SSL):
    """IMAPS from a chosen local address (imaplib has no source_address)."""

    def __init__(self, source: str, *args, **kwargs) -> None:
        self._source = source
        super().__init__(*args, **kwargs)

    def _create_socket(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout, source_address=(self._source, 0))
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def imap_login(at: Cluster, source: str, password: str) -> str:
    """OK, or the server's refusal."""
    client = _ImapFrom(source, "127.0.0.1", at.ports["imaps"], ssl_context=at.tls, timeout=30)
    try:
        return client.login(OWNER, password)[0]
    except imaplib.IMAP4.error as refused:
        return str(refused)
    finally:
        client.shutdown()


def nmap(*args: str) -> ET.Element:
    """nmap over TCP connect, no ping, no DNS; its XML report."""
    out = subprocess.run([need_tool("nmap"), "-Pn", "-n", "-sT", "-oX", "-", *args, "127.0.0.1"],
                         capture_output=True, text=True, timeout=SCAN_DEADLINE)
    assert out.returncode == 0, out.stdout + out.stderr
    return ET.fromstring(out.stdout)


def script_results(report: ET.Element, script: str) -> dict[int, ET.Element]:
    return {int(port.get("portid")): found for port in report.iter("port")
            for found in port.findall(f"script[@id='{script}']")}


def in_parallel(*calls):
    with ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(call) for call in calls]]


# --- TLS ---------------------------------------------------------------------------------------

def sslscan(port: int, name: str) -> ET.Element | None:
    """sslscan's XML report of one listener (STARTTLS first where the listener needs it)."""
    starttls = [f"--starttls-{STARTTLS[name]}"] if name in STARTTLS else []
    out = subprocess.run([need_tool("sslscan"), "--no-colour", "--xml=-", *starttls, f"127.0.0.1:{port}"],
                         capture_output=True, text=True, timeout=SCAN_DEADLINE)
    assert out.returncode == 0, out.stdout + out.stderr
    return ET.fromstring(out.stdout).find("ssltest")


def test_every_tls_listener_grades_a_with_only_aead_suites(cluster):
    implicit = {cluster.ports[name]: name for name in IMPLICIT_TLS}
    starttls = {cluster.ports[name]: name for name in STARTTLS}
    # Implicit TLS: "+" runs the script whatever nmap thinks the port is.  STARTTLS: nmap must
    # know the service to say STARTTLS/STLS first, hence -sV on those ports.
    listeners = {**implicit, **starttls}
    implicit_report, starttls_report, *sslscans = in_parallel(
        lambda: nmap("-p", ",".join(map(str, implicit)), "--script", "+ssl-enum-ciphers,+ssl-heartbleed,+sslv2"),
        lambda: nmap("-sV", "--version-intensity", "0", "-p", ",".join(map(str, starttls)), "--script", "ssl-enum-ciphers"),
        *(lambda port=port, name=name: (name, sslscan(port, name)) for port, name in listeners.items()))
    graded = {**script_results(implicit_report, "ssl-enum-ciphers"), **script_results(starttls_report, "ssl-enum-ciphers")}
    assert set(graded) == set(listeners), f"not graded: {[listeners[p] for p in set(listeners) - set(graded)]}"
    for port, result in graded.items():
        name = listeners[port]
        assert result.findtext("elem[@key='least strength']") == "A", (name, result.get("output"))
        versions = {table.get("key") for table in result.findall("table")}
        assert versions == {"TLSv1.2", "TLSv1.3"}, (name, versions)
        tls12 = [c.findtext("elem[@key='name']") for c in result.findall("table[@key='TLSv1.2']/table[@key='ciphers']/table")]
        assert tls12 and all(s.startswith("TLS_ECDHE_") and ("_GCM_" in s or "CHACHA20" in s) for s in tls12), (name, tls12)
        compressors = [e.text for e in result.findall("table[@key='TLSv1.2']/table[@key='compressors']/elem")]
        assert compressors in ([], ["NULL"]), (name, compressors)      # no TLS compression (CRIME)
    for script in ("ssl-heartbleed", "sslv2"):
        for port, result in script_results(implicit_report, script).items():
            assert "VULNERABLE" not in result.get("output", "") and "SSLv2 supported" not in result.get("output", ""), \
                (listeners[port], script, result.get("output"))

    for name, test in sslscans:
        assert test is not None, name
        enabled = {f"{p.get('type')}{p.get('version')}" for p in test.findall("protocol") if p.get("enabled") == "1"}
        assert enabled == {"tls1.2", "tls1.3"}, (name, enabled)
        assert all(h.get("vulnerable") == "0" for h in test.findall("heartbleed")), name
        renegotiation = test.find("renegotiation")
        assert renegotiation is None or renegotiation.get("supported") == "0" or renegotiation.get("secure") == "1", name
        weak = [c.get("cipher") for c in test.findall("cipher")
                if c.get("sslversion") == "TLSv1.2" and not ("GCM" in c.get("cipher") or "CHACHA20" in c.get("cipher"))]
        assert not weak, (name, weak)
        assert all(c.get("strength") in ("strong", "acceptable") for c in test.findall("cipher")), name


# --- SMTP --------------------------------------------------------------------------------------

def test_no_open_relay_and_vrfy_expn_enumerate_nobody(cluster):
    mx, submission = cluster.ports["smtp"], cluster.ports["submission"]
    users = cluster.data_dir.parent / "users.lst"
    users.write_text("alice\nalice@acme.example\nroot\npostmaster\nadmin\n")
    report = nmap("-p", f"{mx},{submission}",
                  "--script", "+smtp-open-relay,+smtp-enum-users,+smtp-vuln-cve2011-1720,+smtp-vuln-cve2011-1764,"
                              "+smtp-vuln-cve2010-4344,+smtp-ntlm-info",
                  "--script-args", f"smtp-enum-users.methods={{VRFY,EXPN}},smtp-enum-users.domain={DOMAIN},"
                                   f"userdb={users},smtp.domain=scanner.test")
    relay = {port: r.get("output") for port, r in script_results(report, "smtp-open-relay").items()}
    assert "doesn't seem to be an open relay" in relay[mx], relay[mx]       # every trick refused, a verdict
    assert "isn't an open relay, authentication needed" in relay[submission], relay[submission]
    for port, result in script_results(report, "smtp-enum-users").items():
        found = result.get("output", "")
        assert "alice" not in found and "root" not in found, (port, found)
    for script in ("smtp-vuln-cve2011-1720", "smtp-vuln-cve2011-1764", "smtp-vuln-cve2010-4344"):
        for port, result in script_results(report, script).items():
            assert "State: VULNERABLE" not in result.get("output", ""), (port, script, result.get("output"))
    assert not script_results(report, "smtp-ntlm-info"), "an NTLM challenge leaked host information"


# --- password guessing -------------------------------------------------------------------------

def test_password_guessing_is_locked_and_the_owner_still_gets_in(cluster, tmp_path):
    users = tmp_path / "users.lst"
    users.write_text(f"{OWNER}\n")
    passwords = tmp_path / "passwords.lst"
    # eleven wrong guesses, then the right one: found only if nothing stopped the guesser.  One
    # guess at a time (brute.threads=1, brute.start=1), in the list's order: the right password
    # comes after the lock, not raced ahead of it by a parallel worker.
    passwords.write_text("".join(f"guess-{i}\n" for i in range(11)) + f"{PASSWORD}\n")
    args = (f"userdb={users},passdb={passwords},unpwdb.timelimit={SCAN_DEADLINE - 30}s,brute.firstonly=true,"
            "brute.threads=1,brute.start=1")
    [result] = script_results(nmap("-p", str(cluster.ports["imaps"]), "--script", "+imap-brute",
                                   "--script-args", args), "imap-brute").values()
    assert "No valid accounts found" in result.get("output", ""), result.get("output")

    # The guesser holds the right password now, and is still refused, over every protocol
    # (one lock per account); another guess over submission is not even checked.
    assert "[UNAVAILABLE] Too many failed logins" in imap_login(cluster, "127.0.0.1", PASSWORD)
    pop3 = poplib.POP3_SSL("127.0.0.1", cluster.ports["pop3s"], context=cluster.tls, timeout=30)
    try:
        pop3.user(OWNER)
        with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\] Too many failed logins"):
            pop3.pass_(PASSWORD)
    finally:
        pop3.close()
    with smtplib.SMTP_SSL("127.0.0.1", cluster.ports["submissions"], context=cluster.tls, timeout=30) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login(OWNER, "guess-over-smtp")
    assert refused.value.smtp_code == 454, refused.value       # 4.7.0 try again later, not 535
    # ... while the owner, from the address she used before, gets in over IMAP and SMTP.
    assert imap_login(cluster, OWNER_ADDRESS, PASSWORD) == "OK"
    assert _owner_submits(cluster)


# --- afterwards --------------------------------------------------------------------------------

def _answers(cluster: Cluster, name: str, port: int) -> bool:
    greeting = {"smtp": b"220 ", "submission": b"220 ", "submissions": b"220 ", "imap": b"* OK", "imaps": b"* OK",
                "pop3": b"+OK", "pop3s": b"+OK"}
    try:
        if name in ("sip", "sip_inner"):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.settimeout(10)
                udp.bind(("127.0.0.1", 0))
                me = udp.getsockname()[1]
                udp.sendto((f"OPTIONS sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{me};rport;branch=z9hG4bK"
                            f"{uuid.uuid4().hex}\r\nMax-Forwards: 70\r\nFrom: <sip:probe@scanner.test>;tag=1\r\n"
                            f"To: <sip:{DOMAIN}>\r\nCall-ID: {uuid.uuid4().hex}\r\nCSeq: 1 OPTIONS\r\n"
                            f"Content-Length: 0\r\n\r\n").encode(), ("127.0.0.1", port))
                return name == "sip_inner" or udp.recv(65535).startswith(b"SIP/2.0 ")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            if name in ("http",):
                sock.sendall(b"GET /docs HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                return sock.recv(100).startswith(b"HTTP/1.1 ")
            if name in ("sip_tls", "sip_wss", *IMPLICIT_TLS):
                with cluster.tls.wrap_socket(sock, server_hostname="localhost") as tls:
                    return name.startswith("sip") or tls.recv(100).startswith(greeting[name])
            if name in greeting:
                return sock.recv(100).startswith(greeting[name])
            return True     # sip over TCP, sip_ws, the stores' inner hand-off ports: they take connections
    except OSError:
        return False


def test_every_listener_still_answers_and_nothing_was_left_open(cluster):
    for name, port in cluster.ports.items():
        assert wait_for(lambda: _answers(cluster, name, port), 60, f"{name} on {port} to answer"), name

    def sessions_closed() -> bool:
        for address in cluster.ops:
            with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as answer:
                text = answer.read().decode()
            if any(line.startswith("colony_sessions{") and float(line.rsplit(" ", 1)[1]) > 0 for line in text.splitlines()):
                return False
        return True
    wait_for(sessions_closed, 60, "every session the scanners opened to be closed")

    tracebacks = [log.name for log in (cluster.data_dir / "logs").glob("*.log") if "Traceback" in log.read_text(errors="replace")]
    assert not tracebacks, f"a probe left a traceback in {tracebacks}"
