"""Forwarding with SRS through a real edge process: mail for an account that forwards to an
outside address leaves through the outbound queue with an SRS0 envelope sender in the
forwarding domain (so SPF at the destination checks us), reaching an aiosmtpd MX found
through the loopback DNS server; a bounce to that SRS address, arriving at our MX, goes on
to the original sender; a forged SRS address is refused 550."""

from __future__ import annotations

import json
import secrets
import smtplib
import threading

import pytest

from cluster_harness import ClusterHarness, wait_until
from colony.bus import names
from edge_harness import Edge, provision

pytestmark = pytest.mark.slow


class Remote:
    """Every remote MX (remote.test and origin.test both point here)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.envelopes: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 Queued"


@pytest.fixture
def remote(smtp_mx):
    return smtp_mx(Remote())


@pytest.fixture
async def forwarding_edge(cluster: ClusterHarness, tmp_path, dns_server, remote) -> Edge:
    await cluster.ensure_schema()
    await provision(cluster)
    kv = await (await cluster.client()).jetstream().key_value(names.BUCKET_DIRECTORY)
    await kv.put(names.directory_key(names.AGG_ADDRESS, "fwd@example.com"), json.dumps({
        "kind": "account", "address": "fwd@example.com", "domain": "example.com", "name": "fwd",
        "forwarding": ["out@remote.test"], "seq": 1000}).encode())
    dns_server.add("remote.test. 60 IN MX 10 mx.remote.test.", "mx.remote.test. 60 IN A 127.0.0.1",
                   "origin.test. 60 IN MX 10 mx.origin.test.", "mx.origin.test. 60 IN A 127.0.0.1")
    secret = tmp_path / "srs.secret"
    secret.write_text(secrets.token_hex(32))
    cluster.start("edge", "edge-1", COLONY_SMTP_PORT="0", COLONY_SMTP_HOSTNAME="mx.test",
                  COLONY_SRS_SECRET_FILE=str(secret), COLONY_DNS_SERVERS=dns_server.address,
                  COLONY_OUTBOUND_SMTP_PORT=str(remote.port), COLONY_MTA_STS="false")
    view = await cluster.wait_state("edge-1", "READY", timeout=180)
    host, _, port = view.addresses["smtp"].rpartition(":")
    edge = Edge(cluster, "edge-1", host, int(port), tmp_path)

    async def forwarding_known():
        with edge.smtp() as client:
            client.ehlo()
            client.mail("probe@origin.test")
            code, _ = client.rcpt("fwd@example.com")
            return code == 250
    await wait_until(forwarding_known, 180, "the edge's directory cache to know the forwarding account")
    return edge


MESSAGE = (b"From: Alice <alice@origin.test>\r\nTo: fwd@example.com\r\nSubject: forward me\r\n"
           b"Message-ID: <fwd-1@origin.test>\r\n\r\nPlease pass this on.\r\n")


async def _envelopes(remote: Remote, count: int):
    return remote.envelopes if len(remote.envelopes) >= count else None


async def test_forwarded_mail_leaves_with_an_srs_sender_and_its_bounce_returns_to_the_original_sender(
        forwarding_edge, remote):
    with forwarding_edge.smtp() as client:
        client.sendmail("alice@origin.test", ["fwd@example.com"], MESSAGE)
    [(mail_from, rcpts, content)] = await wait_until(lambda: _envelopes(remote, 1), 60, "the forwarded copy")
    assert rcpts == ["out@remote.test"]
    assert mail_from.startswith("SRS0=") and mail_from.endswith("=origin.test=alice@example.com"), mail_from
    assert b"<fwd-1@origin.test>" in content and b"for forwarding" in content

    # The destination bounces to the SRS address; our MX takes it and passes it on.
    bounce = (b"From: MAILER-DAEMON@remote.test\r\nTo: " + mail_from.encode() + b"\r\nSubject: Undelivered\r\n"
              b"Message-ID: <bounce-1@remote.test>\r\n\r\nout@remote.test: no such user\r\n")
    with forwarding_edge.smtp() as client:
        client.sendmail("", [mail_from], bounce)
    envelopes = await wait_until(lambda: _envelopes(remote, 2), 60, "the bounce at the original sender's MX")
    back_from, back_rcpts, back_content = envelopes[1]
    assert back_rcpts == ["alice@origin.test"] and back_from == "<>" and b"<bounce-1@remote.test>" in back_content


async def test_a_forged_srs_address_is_refused(forwarding_edge, remote):
    with forwarding_edge.smtp() as client:
        client.ehlo()
        client.mail("")
        code, text = client.rcpt("SRS0=AbCd=JO=victim.test=someone@example.com")
        assert code == 550 and b"5.1.1" in text
        code, _ = client.rcpt("SRS0=x=JO=victim.test=someone@example.com")   # a one-character hash
        assert code == 550
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        with forwarding_edge.smtp() as client:
            client.sendmail("", ["SRS0=AbCd=JO=victim.test=someone@example.com"], b"Subject: x\r\n\r\nx\r\n")
    assert not remote.envelopes
