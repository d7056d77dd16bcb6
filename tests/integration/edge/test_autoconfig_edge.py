"""Mail client autoconfiguration through a real edge process: Thunderbird's clientConfig
(both paths) and Outlook's Autodiscover fetched over HTTP and read with a real XML parser,
then the settings they name used exactly as a client would -- imaplib logs in over IMAPS
(through the edge to a mail store process) and smtplib submits over 587 -- at those host
names, ports and user names; an unknown domain is 404 on both."""

from __future__ import annotations

import asyncio
import http.client
import imaplib
import smtplib
import ssl
import urllib.parse
import xml.etree.ElementTree as ET
from email.message import EmailMessage

import pytest

from cluster_harness import ClusterHarness, wait_until
from colony.contracts import handoff
from colony.protocols.autoconfig import REQUEST_SCHEMA, RESPONSE_SCHEMA
from colony.tlsfiles import ensure_local_ca

from edge_harness import provision
from test_submission import PASSWORD, serve_auth

pytestmark = pytest.mark.slow

MS = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"
USER = "erin@example.com"


def fetch(address: str, method: str, path: str, body: bytes | None = None, host: str | None = None):
    hostname, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(hostname, int(port), timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Host": host or address,
                                                       **({"Content-Type": "text/xml"} if body else {})})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        conn.close()


@pytest.fixture
async def edge(cluster: ClusterHarness, tmp_path):
    await cluster.ensure_schema()
    await provision(cluster)
    await serve_auth(cluster, None)
    secret = handoff.ensure_secret(tmp_path / "cluster.secret")
    files = ensure_local_ca(tmp_path / "tls", ["127.0.0.1"])
    cluster.start("mailstore", "mailstore-1", COLONY_STORAGE_DIR=str(tmp_path / "storage"),
                  COLONY_CLUSTER_SECRET_FILE=str(secret), COLONY_OUTBOUND_SMTP_PORT="25")
    cluster.start("edge", "edge-1", COLONY_HOST="127.0.0.1", COLONY_TLS_CERT_FILE=str(files.cert),
                  COLONY_TLS_KEY_FILE=str(files.key), COLONY_CLUSTER_SECRET_FILE=str(secret),
                  COLONY_AUTOCONFIG_PORTS="listeners")
    await cluster.wait_state("mailstore-1", "READY", timeout=180)
    view = await cluster.wait_state("edge-1", "READY", timeout=180)
    address = view.addresses["autoconfig"]

    async def served() -> bool:
        status, _, _ = await asyncio.to_thread(fetch, address, "GET", "/mail/config-v1.1.xml?emailaddress=x%40example.com")
        return status == 200
    await wait_until(served, 180, "the edge's directory cache to load")
    return address, view.addresses, ssl.create_default_context(cafile=str(files.ca))


def thunderbird_servers(document: bytes) -> dict[tuple[str, str], dict[str, str]]:
    config = ET.fromstring(document)
    assert config.tag == "clientConfig" and config.get("version") == "1.1"
    found = {}
    for server in [*config.iter("incomingServer"), *config.iter("outgoingServer")]:
        fields = {child.tag: child.text for child in server}
        found.setdefault((server.get("type"), fields["socketType"]), fields)
    return found


def imaps_login(host: str, port: int, user: str, context: ssl.SSLContext) -> list[bytes]:
    with imaplib.IMAP4_SSL(host, port, ssl_context=context, timeout=60) as imap:
        assert imap.login(user, PASSWORD)[0] == "OK"
        status, data = imap.select("INBOX")
        assert status == "OK"
        return data


def submit(host: str, port: int, user: str, context: ssl.SSLContext) -> None:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = USER, "carol@example.com", "configured by autoconfig"
    message.set_content("hello\n")
    with smtplib.SMTP(host, port, timeout=60) as smtp:
        smtp.starttls(context=context)
        smtp.login(user, PASSWORD)
        assert smtp.send_message(message) == {}


async def test_a_client_configured_from_thunderbirds_document_logs_in_and_submits(edge):
    address, listeners, context = edge
    query = urllib.parse.urlencode({"emailaddress": USER})
    status, content_type, document = await asyncio.to_thread(fetch, address, "GET", f"/mail/config-v1.1.xml?{query}",
                                                             None, "autoconfig.example.com")
    assert status == 200 and content_type.startswith("application/xml")
    servers = thunderbird_servers(document)
    assert {key for key in servers} == {("imap", "SSL"), ("imap", "STARTTLS"), ("pop3", "SSL"), ("pop3", "STARTTLS"),
                                        ("smtp", "SSL"), ("smtp", "STARTTLS")}
    # The well-known path at <domain> (no query) is the same document.
    status, _, well_known = await asyncio.to_thread(fetch, address, "GET", "/.well-known/autoconfig/mail/config-v1.1.xml",
                                                    None, "example.com")
    assert status == 200 and thunderbird_servers(well_known) == servers
    # The ports named are this edge's real listeners ...
    assert int(servers[("imap", "SSL")]["port"]) == int(listeners["imaps"].rpartition(":")[2])
    assert int(servers[("smtp", "STARTTLS")]["port"]) == int(listeners["submission"].rpartition(":")[2])
    # ... and a client using exactly what it was told (the %EMAILADDRESS% username) gets in.
    imap, smtp = servers[("imap", "SSL")], servers[("smtp", "STARTTLS")]
    assert imap["username"] == smtp["username"] == "%EMAILADDRESS%"
    assert imap["authentication"] == smtp["authentication"] == "password-cleartext"
    await asyncio.to_thread(imaps_login, imap["hostname"], int(imap["port"]), USER, context)
    await asyncio.to_thread(submit, smtp["hostname"], int(smtp["port"]), USER, context)


async def test_a_client_configured_from_outlooks_autodiscover_logs_in_and_submits(edge):
    address, listeners, context = edge
    body = (f'<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="{REQUEST_SCHEMA}"><Request>'
            f"<EMailAddress>{USER}</EMailAddress><AcceptableResponseSchema>{RESPONSE_SCHEMA}"
            "</AcceptableResponseSchema></Request></Autodiscover>").encode()
    status, content_type, document = await asyncio.to_thread(fetch, address, "POST", "/Autodiscover/Autodiscover.xml",
                                                             body, "autodiscover.example.com")
    assert status == 200 and content_type.startswith("text/xml")
    protocols = {p.findtext(f"{MS}Type"): {c.tag.removeprefix(MS): c.text for c in p}
                 for p in ET.fromstring(document).iter(f"{MS}Protocol")}
    assert set(protocols) == {"IMAP", "SMTP", "POP3"}
    imap, smtp = protocols["IMAP"], protocols["SMTP"]
    assert imap["LoginName"] == smtp["LoginName"] == USER and imap["SSL"] == "on" and imap["SPA"] == "off"
    assert int(imap["Port"]) == int(listeners["imaps"].rpartition(":")[2])
    await asyncio.to_thread(imaps_login, imap["Server"], int(imap["Port"]), imap["LoginName"], context)
    # Outlook's SMTP entry is 465 (implicit TLS); submit there as Outlook would.
    assert int(smtp["Port"]) == int(listeners["submissions"].rpartition(":")[2]) and smtp["Encryption"] == "SSL"

    def submit_implicit():
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = USER, "carol@example.com", "via autodiscover"
        message.set_content("hello\n")
        with smtplib.SMTP_SSL(smtp["Server"], int(smtp["Port"]), context=context, timeout=60) as client:
            client.login(smtp["LoginName"], PASSWORD)
            assert client.send_message(message) == {}
    await asyncio.to_thread(submit_implicit)


async def test_an_unknown_domain_is_404_on_both_and_a_domain_alias_is_served(edge):
    address, _, _ = edge
    status, content_type, _ = await asyncio.to_thread(
        fetch, address, "GET", "/mail/config-v1.1.xml?emailaddress=a%40not-hosted.example")
    assert (status, content_type) == (404, "application/problem+json")
    body = (f'<Autodiscover xmlns="{REQUEST_SCHEMA}"><Request><EMailAddress>a@not-hosted.example</EMailAddress>'
            f"<AcceptableResponseSchema>{RESPONSE_SCHEMA}</AcceptableResponseSchema></Request></Autodiscover>").encode()
    status, _, document = await asyncio.to_thread(fetch, address, "POST", "/autodiscover/autodiscover.xml", body)
    assert status == 404 and b"<ErrorCode>500</ErrorCode>" in document
    status, _, document = await asyncio.to_thread(fetch, address, "GET", "/mail/config-v1.1.xml", None,
                                                  "autoconfig.example-mail.com")
    assert status == 200 and ET.fromstring(document).find("emailProvider").get("id") == "example.com"
