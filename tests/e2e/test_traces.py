"""One provisioning command is one trace: exported over OTLP/HTTP by a `colony up` cluster to
a receiver this test runs, its spans go from the admin API's HTTP request through the
event append (context in the NATS headers) into the projector process's projection.
One message is one trace too: from the edge's SMTP transaction through the MAIL stream
(context in the message's headers) into the mail store's delivery job; and one SIP
request, from the farm member it reaches into the admin API's credential lookup."""

from __future__ import annotations

import gzip
import os
import smtplib
import socket
import threading
import time
import uuid
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from test_colony_up import free_base_port, ready_nodes, start_up, stop_up, wait_for
from test_mail_flow import colony, wait_deliverable

pytestmark = pytest.mark.slow

MAX_BODY = 16 << 20


class OtlpReceiver:
    """A minimal OTLP/HTTP trace receiver: every span it was sent, with its service."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(min(length, MAX_BODY))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest.FromString(body)
                with receiver.lock:
                    for rs in request.resource_spans:
                        service = next((a.value.string_value for a in rs.resource.attributes
                                        if a.key == "service.name"), "")
                        for ss in rs.scope_spans:
                            for span in ss.spans:
                                receiver.spans.append({"trace": span.trace_id.hex(), "id": span.span_id.hex(),
                                                       "parent": span.parent_span_id.hex(), "name": span.name,
                                                       "service": service})
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def chain(self, spans: list[dict], name: str) -> list[str]:
        """``(service, name)`` of the span called ``name`` and of each of its ancestors, innermost first."""
        by_id = {s["id"]: s for s in spans}
        span, out = next(s for s in spans if s["name"] == name), []
        while span is not None:
            out.append((span["service"], span["name"]))
            span = by_id.get(span["parent"])
        return out

    def trace_of(self, name: str, service: str) -> list[dict]:
        with self.lock:
            roots = [s for s in self.spans if s["name"] == name and s["service"] == service]
            return [s for s in self.spans if roots and s["trace"] == roots[-1]["trace"]]


@pytest.fixture
def receiver():
    r = OtlpReceiver()
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


def test_a_provisioning_command_is_one_trace_into_the_projection(tmp_path, receiver):
    data_dir, base = tmp_path / "colony", free_base_port()
    os.environ["COLONY_OTLP_ENDPOINT"] = receiver.url  # inherited by every instance
    try:
        proc = start_up(data_dir, base, "--controllers", "1", "--edges", "0", "--mailstores", "0", "--sipfarms", "0")
    finally:
        del os.environ["COLONY_OTLP_ENDPOINT"]
    try:
        nodes = wait_for(lambda: ready_nodes(data_dir, 3), 180, "controller, admin API and projector READY")
        wait_for((data_dir / "admin.token").exists, 60, "the bootstrap token")
        token = (data_dir / "admin.token").read_text().strip()
        api = next(n["addresses"]["http"] for n in nodes if n["role"] == "admin-api")
        with httpx.Client(base_url=f"http://{api}", headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
            made = http.post("/v1/domains", json={"name": "traced.example"})
            assert made.status_code == 201, made.text

        def whole_trace():
            spans = receiver.trace_of("POST /v1/domains", "colony-admin-api")
            names = {(s["service"], s["name"]) for s in spans}
            wanted = {("colony-admin-api", "POST /v1/domains"), ("colony-admin-api", "append PROVISIONING"),
                      ("colony-projector", "project readmodel")}
            return spans if wanted <= names else None

        spans = wait_for(whole_trace, 90, "the request's trace to reach the projection")  # batches export every 5 s
        by_id = {s["id"]: s for s in spans}
        projection = next(s for s in spans if s["name"] == "project readmodel")
        # The projection's parent is the append, whose ancestor is the HTTP request: one chain.
        chain, span = [], projection
        while span is not None:
            chain.append(span["name"])
            span = by_id.get(span["parent"])
        assert chain[0] == "project readmodel" and chain[1] == "append PROVISIONING"
        assert chain[-1] == "POST /v1/domains", chain
    finally:
        stop_up(proc)


def test_a_message_is_one_trace_from_smtp_into_the_mail_store(tmp_path, receiver, dns_server):
    data_dir, base = tmp_path / "colony", free_base_port()
    # Inherited by every instance: the trace receiver, the loopback DNS server, the test's
    # loopback client treated as a stranger on the internet.
    env = {"COLONY_OTLP_ENDPOINT": receiver.url, "COLONY_DNS_SERVERS": dns_server.address,
           "COLONY_EDGE_ALLOW_NETWORKS": ""}
    os.environ.update(env)
    try:
        proc = start_up(data_dir, base, "--controllers", "1", "--edges", "1", "--mailstores", "1", "--sipfarms", "0")
    finally:
        for key in env:
            del os.environ[key]
    try:
        nodes = wait_for(lambda: ready_nodes(data_dir, 5), 180, "controller, edge, mail store, admin API, projector READY")
        wait_for((data_dir / "admin.token").exists, 60, "the bootstrap token")
        colony(data_dir, "domain", "add", "traced.example")
        colony(data_dir, "account", "add", "dora@traced.example", "--password", "a long passphrase")
        smtp = int(next(n for n in nodes if n["role"] == "edge")["addresses"]["smtp"].rsplit(":", 1)[1])
        wait_deliverable(smtp, "dora@traced.example")
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "bob@remote.test", "dora@traced.example", "traced"
        msg.set_content("one trace\n")
        with smtplib.SMTP("127.0.0.1", smtp, timeout=60) as s:
            s.send_message(msg)

        def whole_trace():
            spans = receiver.trace_of("smtp.accept", "colony-edge")
            names = {(s["service"], s["name"]) for s in spans}
            return spans if ("colony-mailstore", "mail job") in names else None

        spans = wait_for(whole_trace, 90, "the message's trace to reach the mail store")  # batches export every 5 s
        chain = receiver.chain(spans, "mail job")
        # The store's delivery job is a child of the edge's acceptance, which belongs to the
        # SMTP transaction's message span: one chain across the bus.
        assert chain[0] == ("colony-mailstore", "mail job")
        assert ("colony-edge", "smtp.accept") in chain and chain[-1] == ("colony-edge", "smtp.message"), chain
    finally:
        stop_up(proc)


def register_until_ok(address: str, domain: str, user: str, password: str, deadline: float) -> None:
    """REGISTER over UDP, answering the digest challenge, until the member says 200 (the
    account reaches the credential service through the projection a moment after it is made)."""
    from colony.protocols.sip.digest import h, ha1, parse_credentials
    from colony.protocols.sip.parser import parse_message

    host, port = address.rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(2)
        local, call_id = udp.getsockname()[1], uuid.uuid4().hex

        def ask(cseq: int, auth: str = ""):
            request = (f"REGISTER sip:{domain} SIP/2.0\r\n"
                       f"Via: SIP/2.0/UDP 127.0.0.1:{local};rport;branch=z9hG4bK{uuid.uuid4().hex}\r\n"
                       f"Max-Forwards: 70\r\nFrom: <sip:{user}@{domain}>;tag=t1\r\nTo: <sip:{user}@{domain}>\r\n"
                       f"Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{user}@127.0.0.1:{local}>\r\n"
                       f"Expires: 60\r\n{auth}Content-Length: 0\r\n\r\n").encode()
            for _ in range(5):  # UDP: send again until answered
                udp.sendto(request, (host, int(port)))
                try:
                    return parse_message(udp.recv(65536))
                except TimeoutError:
                    continue
            raise AssertionError(f"no answer to REGISTER from {address}")

        cseq, status = 0, None
        while time.monotonic() < deadline:
            cseq += 1
            challenge = ask(cseq)
            assert challenge.status == 401, challenge.status
            params = parse_credentials(challenge.headers.get("WWW-Authenticate"))
            algorithm, uri = params.get("algorithm", "MD5"), f"sip:{domain}"
            key = ha1(algorithm, user, params["realm"], password)
            response = h(algorithm, f"{key}:{params['nonce']}:00000001:c0ffee:auth:{h(algorithm, f'REGISTER:{uri}')}")
            cseq += 1
            status = ask(cseq, f'Authorization: Digest username="{user}", realm="{params["realm"]}", '
                               f'nonce="{params["nonce"]}", uri="{uri}", response="{response}", algorithm={algorithm}, '
                               f'qop=auth, nc=00000001, cnonce="c0ffee"\r\n').status
            if status == 200:
                return
            time.sleep(0.5)
        raise AssertionError(f"REGISTER never answered 200 (last: {status})")


def test_a_sip_request_is_one_trace_from_the_farm_into_the_credential_lookup(tmp_path, receiver):
    data_dir, base = tmp_path / "colony", free_base_port()
    os.environ["COLONY_OTLP_ENDPOINT"] = receiver.url  # inherited by every instance
    try:
        proc = start_up(data_dir, base, "--controllers", "1", "--edges", "0", "--mailstores", "0", "--sipfarms", "1")
    finally:
        del os.environ["COLONY_OTLP_ENDPOINT"]
    try:
        nodes = wait_for(lambda: ready_nodes(data_dir, 4), 180, "controller, SIP farm member, admin API, projector READY")
        wait_for((data_dir / "admin.token").exists, 60, "the bootstrap token")
        colony(data_dir, "domain", "add", "sip.example")
        colony(data_dir, "account", "add", "erin@sip.example", "--password", "a long passphrase")
        sip = next(n for n in nodes if n["role"] == "sipfarm")["addresses"]["sip"]
        register_until_ok(sip, "sip.example", "erin", "a long passphrase", time.monotonic() + 60)

        def whole_trace():
            spans = receiver.trace_of("sip REGISTER", "colony-sipfarm")
            return spans if any(s["service"] == "colony-admin-api" for s in spans) else None

        spans = wait_for(whole_trace, 90, "the REGISTER's trace to reach the credential lookup")  # batches every 5 s
        lookup = next(s for s in spans if s["service"] == "colony-admin-api")
        chain = receiver.chain(spans, lookup["name"])
        assert chain[-1] == ("colony-sipfarm", "sip REGISTER"), chain
    finally:
        stop_up(proc)
