"""MTA-STS (RFC 8461) in the outbound queue, end to end on loopback: the loopback DNS server
publishes ``_mta-sts.remote.test`` and the MX, an HTTPS server with a trustme certificate
serves the policy (``mta_sts_port``), and the remote MX is aiosmtpd with STARTTLS.

Enforce: delivered only to MX hosts the policy lists, over TLS verified for the MX name;
otherwise deferred (kept in the queue).  Testing: delivered anyway.  The fetch follows no
redirect, takes only text/plain, bounds the body, and a cached policy outlives its record."""

from __future__ import annotations

import logging
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import trustme
from aiosmtpd.controller import Controller

from cluster_harness import wait_until
from colony.bus import names
from colony.dns import make_resolver
from colony_edge.mta_sts import MtaSts
from test_outbound_delivery import free_port, owner, queued, settings_for, start_queue, submit  # noqa: F401

pytestmark = pytest.mark.slow

ENFORCE = "version: STSv1\r\nmode: enforce\r\nmx: mx.remote.test\r\nmax_age: 86400\r\n"


class PolicyServer:
    """https://mta-sts.remote.test/.well-known/mta-sts.txt on loopback; what it answers is
    ``status``, ``content_type``, ``body`` (and ``location`` for a redirect)."""

    def __init__(self, ca: trustme.CA) -> None:
        self.status, self.content_type, self.body, self.location = 200, "text/plain", ENFORCE.encode(), ""
        self.fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.fetches += 1
                if self.path != "/.well-known/mta-sts.txt":
                    self.send_error(404)
                    return
                self.send_response(server.status)
                self.send_header("Content-Type", server.content_type)
                if server.location:
                    self.send_header("Location", server.location)
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("mta-sts.remote.test").configure_cert(context)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> PolicyServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class TlsSink:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[tuple[bytes, bool]] = []   # (content, arrived over TLS)
        self.ehlos = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        with self.lock:
            self.ehlos += 1
        session.host_name = hostname
        return responses

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append((envelope.original_content, session.ssl is not None))
        return "250 2.0.0 Queued"


@pytest.fixture
def ca():
    return trustme.CA()


@pytest.fixture
def policy_server(ca):
    server = PolicyServer(ca).start()
    yield server
    server.stop()


def start_mx(cert: trustme.LeafCert) -> tuple[TlsSink, Controller]:
    handler = TlsSink()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), tls_context=context)
    controller.start()
    handler.port = controller.port
    return handler, controller


@pytest.fixture
def mx_good(ca):
    handler, controller = start_mx(ca.issue_cert("mx.remote.test"))
    yield handler
    controller.stop()


@pytest.fixture
def mx_wrong_name(ca):
    handler, controller = start_mx(ca.issue_cert("somewhere-else.test"))
    yield handler
    controller.stop()


def mta_sts_settings(nats_server, dns_server, mx, tmp_path, ca, policy_server, record_id="p1", **more):
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    dns_server.add(f'_mta-sts.remote.test. 60 IN TXT "v=STSv1; id={record_id};"',
                   "mta-sts.remote.test. 60 IN A 127.0.0.1")
    return settings_for(nats_server, dns_server, mx, tmp_path, outbound_tls_ca_file=ca_file,
                        mta_sts_port=policy_server.port, mta_sts_fetch_timeout=5.0, **more)


async def _count(value) -> int:
    return value


async def _attempts_at_least(js, n: int) -> bool:
    """The OUTBOUND consumer has handed out ``n`` deliveries (first tries and retries)."""
    info = await js.consumer_info(names.STREAM_OUTBOUND, names.OUTBOUND_CONSUMER)
    return info.delivered.consumer_seq >= n


async def test_enforce_delivers_over_tls_verified_for_the_mx_name(nc, js, owner, nats_server, dns_server, mx_good,
                                                                   tmp_path, ca, policy_server):
    settings = mta_sts_settings(nats_server, dns_server, mx_good, tmp_path, ca, policy_server)
    await start_queue(nc, owner, settings)
    await submit(js, "sts-ok", "bob@remote.test")
    await wait_until(lambda: _count(mx_good.messages), 30, "the message at the MX")
    [(content, over_tls)] = mx_good.messages
    assert over_tls and b"<sts-ok@example.com>" in content
    assert policy_server.fetches == 1


async def test_enforce_refuses_a_certificate_not_valid_for_the_mx_and_keeps_the_message(
        nc, js, owner, nats_server, dns_server, mx_wrong_name, tmp_path, ca, policy_server, caplog):
    settings = mta_sts_settings(nats_server, dns_server, mx_wrong_name, tmp_path, ca, policy_server)
    dns_server.add('_smtp._tls.remote.test. 60 IN TXT "v=TLSRPTv1; rua=mailto:tls-reports@remote.test"')
    caplog.set_level(logging.WARNING, logger="colony.edge.outbound")
    await start_queue(nc, owner, settings)
    await submit(js, "sts-badcert", "bob@remote.test")
    # Each attempt greets with EHLO, then STARTTLS fails verification; three attempts = retried.
    await wait_until(lambda: _count(mx_wrong_name.ehlos >= 3), 30, "three refused attempts")
    assert not mx_wrong_name.messages
    assert await queued(js) == 1, "a policy failure is temporary: the message stays queued"
    [line, *_] = [r.getMessage() for r in caplog.records if "no verified TLS with mx.remote.test" in r.getMessage()]
    assert "not delivering there" in line and "mailto:tls-reports@remote.test" in line


async def test_enforce_never_uses_an_mx_the_policy_does_not_list(nc, js, owner, nats_server, dns_server, mx_good,
                                                                  tmp_path, ca, policy_server):
    policy_server.body = ENFORCE.replace("mx.remote.test", "*.elsewhere.test").encode()
    settings = mta_sts_settings(nats_server, dns_server, mx_good, tmp_path, ca, policy_server)
    await start_queue(nc, owner, settings)
    await submit(js, "sts-notlisted", "bob@remote.test")
    await wait_until(lambda: _attempts_at_least(js, 3), 30, "three delivery attempts")
    assert mx_good.ehlos == 0 and not mx_good.messages
    assert await queued(js) == 1


async def test_testing_mode_delivers_despite_a_bad_certificate(nc, js, owner, nats_server, dns_server, mx_wrong_name,
                                                                tmp_path, ca, policy_server):
    policy_server.body = ENFORCE.replace("enforce", "testing").encode()
    settings = mta_sts_settings(nats_server, dns_server, mx_wrong_name, tmp_path, ca, policy_server)
    await start_queue(nc, owner, settings)
    await submit(js, "sts-testing", "bob@remote.test")
    await wait_until(lambda: _count(mx_wrong_name.messages), 30, "the message at the MX")
    assert len(mx_wrong_name.messages) == 1


@pytest.mark.parametrize("status, content_type, body, location", [
    (301, "text/plain", b"", "https://mta-sts.remote.test/elsewhere"),     # §3.3: no redirects
    (200, "text/html", ENFORCE.encode(), ""),                              # not text/plain
    (200, "text/plain", ENFORCE.encode() + b"x" * 70_000, ""),             # over 64 KiB
    (404, "text/plain", b"", ""),
    (200, "text/plain", b"version: STSv1\nmode: enforce\n", ""),           # not a valid policy
])
async def test_a_policy_that_cannot_be_fetched_means_no_policy(dns_server, tmp_path, ca, policy_server, status,
                                                                content_type, body, location, nats_server):
    policy_server.status, policy_server.content_type = status, content_type
    policy_server.body, policy_server.location = body, location
    settings = mta_sts_settings(nats_server, dns_server, policy_server, tmp_path, ca, policy_server)
    sts = MtaSts(settings, make_resolver(settings))
    assert await sts.policy("remote.test") is None
    assert await sts.policy("remote.test") is None
    assert policy_server.fetches == 1, "a failed fetch is not repeated for every message"


async def test_an_untrusted_policy_server_certificate_means_no_policy(dns_server, tmp_path, ca, nats_server):
    other = PolicyServer(trustme.CA()).start()   # a CA the edge does not trust
    try:
        settings = mta_sts_settings(nats_server, dns_server, other, tmp_path, ca, other)
        assert await MtaSts(settings, make_resolver(settings)).policy("remote.test") is None
    finally:
        other.stop()


async def test_the_cached_policy_outlives_its_record_and_a_new_id_is_fetched(dns_server, tmp_path, ca,
                                                                            policy_server, nats_server):
    settings = mta_sts_settings(nats_server, dns_server, policy_server, tmp_path, ca, policy_server)
    sts = MtaSts(settings, make_resolver(settings))
    sts.resolver.cache = None   # this test changes DNS under the resolver's feet
    first = await sts.policy("remote.test")
    assert first is not None and first.enforced and first.id == "p1"
    assert await sts.policy("remote.test") == first and policy_server.fetches == 1   # same id: no fetch
    dns_server.remove("_mta-sts.remote.test", "TXT")          # stripped by an attacker, or withdrawn
    assert await sts.policy("remote.test") == first and policy_server.fetches == 1
    dns_server.add('_mta-sts.remote.test. 60 IN TXT "v=STSv1; id=p2;"')
    policy_server.body = ENFORCE.replace("enforce", "testing").encode()
    second = await sts.policy("remote.test")
    assert second.id == "p2" and second.mode == "testing" and policy_server.fetches == 2


async def test_a_policy_outlives_an_edge_restart_through_the_bus(js, dns_server, tmp_path, ca, policy_server,
                                                                 nats_server):
    settings = mta_sts_settings(nats_server, dns_server, policy_server, tmp_path, ca, policy_server)
    first_edge = MtaSts(settings, make_resolver(settings), js)
    fetched = await first_edge.policy("remote.test")
    assert fetched is not None and fetched.enforced and policy_server.fetches == 1
    # An attacker strips the record; an edge that starts now (or never delivered there)
    # still finds the policy another edge learnt, without fetching it.
    dns_server.remove("_mta-sts.remote.test", "TXT")
    later_edge = MtaSts(settings, make_resolver(settings), js)
    assert await later_edge.policy("remote.test") == fetched
    assert policy_server.fetches == 1
    # A domain without MTA-STS is not a bus round trip per message: the miss is remembered.
    assert await later_edge.policy("plain.test") is None
    assert "plain.test" in later_edge._shared_miss
