"""Submission through a real edge process: smtplib and swaks with AUTH over TLS (587
STARTTLS, 465 implicit), a local recipient into MAIL, a remote one through OUTBOUND to a
loopback MX found through the loopback DNS server and DKIM-signed; AUTH before TLS, sender
spoofing (envelope and From:) refused; the sending rate held across two edges.

The password check is the auth contract's responder (``colony.auth.check``) answered by the
test, so the class of service's sending rate is whatever the test says."""

from __future__ import annotations

import asyncio
import base64
import json
import smtplib
import ssl
import subprocess
import threading

import dkim
import dns.resolver
import pytest

from cluster_harness import ClusterHarness, wait_until
from colony.bus import names
from colony.contracts.auth import AuthCheckReply, AuthCheckRequest
from colony.contracts.mail import InboundMail
from colony.outbound.signing import generate_key, write_key
from colony.tlsfiles import ensure_local_ca

from edge_harness import provision
from tools import need_tool

PASSWORD = "correct horse"


class Sink:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 Queued"


@pytest.fixture
def sink(smtp_mx):
    return smtp_mx(Sink())


class Submission:
    def __init__(self, cluster: ClusterHarness, ca, addresses: dict[str, str]) -> None:
        self.cluster, self.ca, self.addresses = cluster, ca, addresses

    def port(self, edge: int, kind: str = "submission") -> int:
        return int(self.addresses[edge][kind].rpartition(":")[2])

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.check_hostname = False
        return ctx

    def client(self, edge: int = 0, source: str | None = None) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", self.port(edge), local_hostname="client.test", timeout=60,
                              source_address=(source, 0) if source else None)
        client.starttls(context=self.context())
        client.ehlo()
        return client


async def serve_auth(cluster: ClusterHarness, rate_per_hour: int | None, locked: set[str] = frozenset()):
    """The auth service; accounts in ``locked`` as under its failed-login lock: throttled,
    unless the edge says the client is familiar to the account."""
    nc = await cluster.client()

    async def check(msg):
        req = AuthCheckRequest.from_bytes(msg.data)
        if req.user in locked and not req.familiar:
            reply = AuthCheckReply.refused("throttled", retry_after=60)
        elif req.password == PASSWORD and req.user.endswith("@example.com"):
            reply = AuthCheckReply.granted(req.user, "example.com", {"sending_rate_per_hour": rate_per_hour})
        else:
            reply = AuthCheckReply.refused("invalid credentials")
        await msg.respond(reply.to_bytes())

    return await nc.subscribe(names.AUTH_CHECK, queue=names.QUEUE_ADMIN, cb=check)


async def start_edges(cluster, tmp_path, dns_server, sink, count: int = 1, rate_per_hour: int | None = None,
                      locked: set[str] = frozenset(), **env: str):
    await cluster.ensure_schema()
    await provision(cluster)
    await serve_auth(cluster, rate_per_hour, locked)
    files = ensure_local_ca(tmp_path / "tls", ["mx.test"])
    dns_server.add("remote.test. 60 IN MX 10 mx.remote.test.", "mx.remote.test. 60 IN A 127.0.0.1")
    key = generate_key("example.com", "sel1", 1024)
    write_key(tmp_path / "dkim", key)
    dns_server.add_txt("sel1._domainkey.example.com.", key.dns_record())
    addresses = []
    for i in range(count):
        node_id = f"edge-{i + 1}"
        cluster.start("edge", node_id, COLONY_SMTP_HOSTNAME=f"edge{i + 1}.example.com",
                      COLONY_TLS_CERT_FILE=str(files.cert), COLONY_TLS_KEY_FILE=str(files.key),
                      COLONY_DNS_SERVERS=dns_server.address, COLONY_OUTBOUND_SMTP_PORT=str(sink.port),
                      COLONY_DKIM_KEY_DIR=str(tmp_path / "dkim"), **env)
    for i in range(count):
        view = await cluster.wait_state(f"edge-{i + 1}", "READY", timeout=180)
        addresses.append(view.addresses)
    sub = Submission(cluster, files.ca, addresses)

    def probe():
        try:
            with sub.client(0) as c:
                c.login("erin@example.com", PASSWORD)
                c.mail("erin@example.com")
                return c.rcpt("carol@example.com")[0] == 250
        except (smtplib.SMTPException, OSError):
            return False

    async def loaded():
        return await asyncio.to_thread(probe)
    await wait_until(loaded, 180, "the edge's directory loaded and submission answering")
    return sub


def message(sender: str, to: str, message_id: str) -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: submitted\r\nDate: Wed, 25 Nov 2026 12:00:00 +0000\r\n"
            f"Message-ID: <{message_id}@example.com>\r\n\r\nHello from submission.\r\n").encode()


async def mail_messages(cluster) -> list[InboundMail]:
    js = (await cluster.client()).jetstream()
    info = await js.stream_info(names.STREAM_MAIL)
    out = []
    if info.state.messages:
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                out.append(InboundMail.from_bytes((await js.get_msg(names.STREAM_MAIL, seq)).data))
            except Exception:
                continue
    return out


async def test_smtplib_submits_over_starttls_local_to_mail_remote_signed_to_the_mx(cluster, tmp_path, dns_server, sink):
    sub = await start_edges(cluster, tmp_path, dns_server, sink, COLONY_EDGE_AUTHSERV_ID="mx.example.com")
    # A logged-in user's message claiming our verdicts (RFC 8601 §5): deleted, as on the MX;
    # another receiver's results stay.
    forged = (b"Authentication-Results: MX.example.com; dkim=pass header.d=bank.example\r\n"
              b"Authentication-Results: other.example; spf=pass smtp.mailfrom=bank.example\r\n")

    def send():
        with sub.client() as c:
            assert "auth" in c.esmtp_features and "PLAIN" in c.esmtp_features["auth"].upper()
            c.login("bob@example.com", PASSWORD)
            return c.sendmail("team@example.com", ["carol@example.com", "dave@remote.test"],
                              forged + message("Team <team@example.com>", "carol@example.com, dave@remote.test",
                                               "sub-1"))
    assert await asyncio.to_thread(send) == {}

    async def at_carol():
        return [m for m in await mail_messages(cluster) if any(r.mailbox == "carol@example.com" for r in m.recipients)]
    [local] = await wait_until(at_carol, 60, "the local copy in MAIL")
    assert b"<sub-1@example.com>" in local.body
    assert b"bank.example" in local.body and b"header.d=bank.example" not in local.body, local.body
    # RFC 3848: the local copy's trace says the client logged in over TLS, as the remote one's does
    head = local.body.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ")      # unfolded
    assert b") with ESMTPSA id " in head.split(b"\r\nReceived: ", 1)[1].split(b"\r\n", 1)[0], head

    async def at_sink():
        return sink.messages
    [(mail_from, rcpts, content)] = await wait_until(at_sink, 120, "the remote copy at the loopback MX")
    assert mail_from == "team@example.com" and rcpts == ["dave@remote.test"]
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = int(dns_server.address.rpartition(":")[2])

    def lookup(name, timeout=5):
        return b"".join(b"".join(r.strings) for r in resolver.resolve(name.decode().rstrip("."), "TXT"))

    assert content.startswith(b"DKIM-Signature:") and dkim.verify(content, dnsfunc=lookup)
    assert b"other.example; spf=pass" in content and b"header.d=bank.example" not in content


async def test_an_account_locked_by_strangers_still_takes_its_owners_usual_client_on_every_edge(
        cluster, tmp_path, dns_server, sink):
    """The auth service's failed-login lock on an account holds strangers only: a client
    network that logged in to the account on one edge (remembered in the login_familiar
    bucket, through the edge's own bus credentials) is let in on the other edge while the
    account is locked, another network is not.  No login cache, so every AUTH asks."""
    locked: set[str] = set()
    sub = await start_edges(cluster, tmp_path, dns_server, sink, count=2, locked=locked,
                            COLONY_ACCESS_AUTH_CACHE_SIZE="0")

    def login(edge: int, source: str) -> tuple[int, bytes]:
        with sub.client(edge, source) as c:
            try:
                return c.login("erin@example.com", PASSWORD)
            except smtplib.SMTPAuthenticationError as exc:
                return exc.smtp_code, exc.smtp_error

    assert (await asyncio.to_thread(login, 0, "127.0.0.5"))[0] == 235   # the owner's usual client
    locked.add("erin@example.com")                                       # strangers' guesses lock it
    owner = await asyncio.to_thread(login, 1, "127.0.0.5")
    stranger = await asyncio.to_thread(login, 1, "127.0.0.6")
    assert owner[0] == 235, owner
    assert stranger[0] == 454, stranger                               # throttled: try later
    kv = await (await cluster.client()).jetstream().key_value(names.BUCKET_LOGIN_FAMILIAR)
    from colony_edge.familiar import familiar_key
    # the pairs, as digests: the start's probe (127.0.0.1) and the owner's; never the stranger's
    assert set(await kv.keys()) == {familiar_key("erin@example.com", ip) for ip in ("127.0.0.1", "127.0.0.5")}


async def test_auth_before_tls_and_spoofing_are_refused(cluster, tmp_path, dns_server, sink):
    sub = await start_edges(cluster, tmp_path, dns_server, sink)
    await asyncio.to_thread(refusals, sub)


def refusals(sub) -> None:
    with smtplib.SMTP("127.0.0.1", sub.port(0), local_hostname="client.test", timeout=60) as plain:
        plain.ehlo()
        assert "auth" not in plain.esmtp_features
        creds = base64.b64encode(f"\0bob@example.com\0{PASSWORD}".encode()).decode()
        code, text = plain.docmd("AUTH", f"PLAIN {creds}")
        assert code == 538
        assert plain.docmd("MAIL", "FROM:<bob@example.com>")[0] == 530
    with sub.client() as c:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            c.login("bob@example.com", "wrong")
    with sub.client() as c:
        c.login("bob@example.com", PASSWORD)
        assert c.mail("carol@example.com")[0] == 553          # another account's address
        c.rset()
        assert c.mail("someone@example.org")[0] == 553        # another domain
        c.rset()
        with pytest.raises(smtplib.SMTPDataError) as refused:
            c.sendmail("bob@example.com", ["carol@example.com"],
                       message("carol@example.com", "carol@example.com", "spoof"))
        assert refused.value.smtp_code == 550


async def test_swaks_submits_over_implicit_tls(cluster, tmp_path, dns_server, sink):
    swaks = need_tool("swaks")
    sub = await start_edges(cluster, tmp_path, dns_server, sink)
    result = await asyncio.to_thread(subprocess.run, [swaks, "--server", "127.0.0.1", "--port", str(sub.port(0, "submissions")), "--tlsc",
                             "--auth", "LOGIN", "--auth-user", "bob@example.com", "--auth-password", PASSWORD,
                             "--from", "bob@example.com", "--to", "erin@remote.test",
                             "--header", "Message-Id: <swaks-1@example.com>", "--helo", "client.test"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "235 2.7.0" in result.stdout and "250 2.0.0" in result.stdout

    async def at_sink():
        return sink.messages
    [(_, rcpts, content)] = await wait_until(at_sink, 120, "the message at the loopback MX")
    assert rcpts == ["erin@remote.test"] and b"<swaks-1@example.com>" in content


async def test_the_sending_rate_holds_across_two_edges(cluster, tmp_path, dns_server, sink):
    # 120 per hour = 2 per minute: the third message in a minute is refused, whichever edge.
    # Exact counters (0): the attempts alternate edges faster than a batch interval.
    sub = await start_edges(cluster, tmp_path, dns_server, sink, count=2, rate_per_hour=120,
                            COLONY_RATE_COUNTER_FLUSH_INTERVAL="0")
    def attempts():
        results = []
        for i in range(4):
            with sub.client(i % 2) as c:
                c.login("dave@example.com", PASSWORD)
                results.append(c.mail("dave@example.com")[0])
        return results
    results = await asyncio.to_thread(attempts)
    # the start-up probe used erin's allowance, not dave's
    assert results[:2] == [250, 250] and results[2:] == [450, 450]
    js = (await cluster.client()).jetstream()
    info = await js.stream_info(names.STREAM_AUDIT)
    events = [json.loads((await js.get_msg(names.STREAM_AUDIT, s)).data)
              for s in range(info.state.first_seq, info.state.last_seq + 1)] if info.state.messages else []
    assert any(e.get("action") == "submission.throttled" and e.get("actor") == "dave@example.com" for e in events)


async def test_the_gate_holds_at_connect_on_587_without_the_mxs_block_lists(cluster, tmp_path, dns_server, sink):
    # 587 had no gate at connect at all: a denied network was greeted, and one address could
    # hold any number of sessions for the SMTP timeout.  The block lists stay the MX's: they
    # list the dynamic ranges mail users send from (Spamhaus's PBL), as Postfix's submission
    # service, which asks none, knows.
    dns_server.add("77.0.0.127.pbl.test. IN A 127.0.0.10")
    sub = await start_edges(cluster, tmp_path, dns_server, sink, COLONY_EDGE_ALLOW_NETWORKS="",
                            COLONY_EDGE_DENY_NETWORKS="127.0.0.66/32", COLONY_DNSBL_ZONES="pbl.test",
                            COLONY_DNSBL_THRESHOLD="1", COLONY_EDGE_MAX_SESSIONS_PER_IP="3")

    def greeting(port: int, source: str) -> int:
        try:
            with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30,
                              source_address=(source, 0)) as client:
                return client.noop()[0]
        except smtplib.SMTPConnectError as exc:
            return exc.smtp_code

    mx = int(sub.addresses[0]["smtp"].rpartition(":")[2])
    assert await asyncio.to_thread(greeting, sub.port(0), "127.0.0.66") == 554
    assert await asyncio.to_thread(greeting, mx, "127.0.0.77") == 554          # the MX asks the lists

    def submit_from_listed_address():
        with sub.client(0, source="127.0.0.77") as c:
            c.login("bob@example.com", PASSWORD)
            return c.sendmail("bob@example.com", ["carol@example.com"],
                              message("Bob <bob@example.com>", "carol@example.com", "sub-pbl"))
    assert await asyncio.to_thread(submit_from_listed_address) == {}

    def sessions_from_one_address() -> list[int]:
        held, codes = [], []
        try:
            for _ in range(4):
                try:
                    client = smtplib.SMTP("127.0.0.1", sub.port(0), local_hostname="client.test", timeout=30,
                                          source_address=("127.0.0.78", 0))
                    held.append(client)
                    codes.append(220)
                except smtplib.SMTPConnectError as exc:
                    codes.append(exc.smtp_code)
        finally:
            for client in held:
                client.close()
        return codes
    assert await asyncio.to_thread(sessions_from_one_address) == [220, 220, 220, 421]
