"""Mail client autoconfiguration's pure core: the documents Thunderbird and Outlook get for a
hosted domain (read back with a real XML parser), which domain a request is about, and the
Autodiscover request reader under hostile input."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from colony.bus import names
from colony.contracts.cache import DirectoryIndex
from colony.protocols.autoconfig import (
    AUTODISCOVER_MAX_BODY, ERROR_INVALID_REQUEST, ERROR_SCHEMA_NOT_AVAILABLE, REQUEST_SCHEMA, RESPONSE_SCHEMA,
    STANDARD_PORTS, AutodiscoverRefused, ClientSettings, HostedDomain, autodiscover_error, autodiscover_response, domain_of,
    hosted_domain, parse_autodiscover_request, thunderbird_config,
)

MS = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"
AD = "{http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006}"


def directory() -> DirectoryIndex:
    index = DirectoryIndex()
    index.apply(names.directory_key(names.AGG_DOMAIN, "acme.example"), json.dumps(
        {"kind": "domain", "name": "acme.example", "branding": {"display_name": "Acme & Sons <Mail>"}}).encode())
    index.apply(names.directory_key(names.AGG_DOMAIN, "plain.example"), json.dumps(
        {"kind": "domain", "name": "plain.example"}).encode())
    index.apply(names.directory_key(names.AGG_DOMAIN_ALIAS, "acme-mail.example"), json.dumps(
        {"kind": "domain_alias", "name": "acme-mail.example", "domain": "acme.example"}).encode())
    return index


SETTINGS = ClientSettings.from_ports("mail.colony.example", STANDARD_PORTS)


def request(address: str = "alice@acme.example", schema: str = RESPONSE_SCHEMA, namespace: str = REQUEST_SCHEMA) -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<Autodiscover xmlns="{namespace}"><Request>'
            f"<EMailAddress>{address}</EMailAddress>"
            f"<AcceptableResponseSchema>{schema}</AcceptableResponseSchema></Request></Autodiscover>").encode()


def servers(config: ET.Element, tag: str) -> list[dict[str, str]]:
    return [{"type": s.get("type"), **{c.tag: c.text for c in s}} for s in config.iter(tag)]


def test_thunderbird_gets_imap_and_pop3_over_tls_then_starttls_and_smtp_465_then_587():
    config = ET.fromstring(thunderbird_config(hosted_domain(directory(), "acme.example"), SETTINGS))
    assert config.tag == "clientConfig" and config.get("version") == "1.1"
    provider = config.find("emailProvider")
    assert provider.get("id") == "acme.example"
    assert [d.text for d in provider.findall("domain")] == ["acme.example"]
    assert provider.findtext("displayName") == "Acme & Sons <Mail>"      # escaped, read back whole
    common = {"hostname": "mail.colony.example", "username": "%EMAILADDRESS%", "authentication": "password-cleartext"}
    assert servers(config, "incomingServer") == [
        {"type": "imap", "port": "993", "socketType": "SSL", **common},
        {"type": "imap", "port": "143", "socketType": "STARTTLS", **common},
        {"type": "pop3", "port": "995", "socketType": "SSL", **common},
        {"type": "pop3", "port": "110", "socketType": "STARTTLS", **common}]
    assert servers(config, "outgoingServer") == [
        {"type": "smtp", "port": "465", "socketType": "SSL", **common},
        {"type": "smtp", "port": "587", "socketType": "STARTTLS", **common}]


def test_a_domain_alias_is_answered_as_its_domain_and_a_domain_without_branding_by_its_name():
    alias = hosted_domain(directory(), "acme-mail.example")
    assert (alias.name, alias.primary, alias.display_name) == ("acme-mail.example", "acme.example", "Acme & Sons <Mail>")
    config = ET.fromstring(thunderbird_config(alias, SETTINGS))
    assert [d.text for d in config.iter("domain")] == ["acme-mail.example", "acme.example"]
    assert hosted_domain(directory(), "plain.example").display_name == "plain.example"
    assert hosted_domain(directory(), "unknown.example") is None


def test_only_the_listeners_the_edge_has_are_offered_at_their_own_ports():
    settings = ClientSettings.from_ports("127.0.0.1", {"imaps": 18093, "submission": 18087, "smtp": 18025})
    config = ET.fromstring(thunderbird_config(hosted_domain(directory(), "acme.example"), settings))
    assert [(s["type"], s["port"], s["socketType"]) for s in servers(config, "incomingServer")] == [("imap", "18093", "SSL")]
    assert [(s["type"], s["port"], s["socketType"]) for s in servers(config, "outgoingServer")] == \
        [("smtp", "18087", "STARTTLS")]


@pytest.mark.parametrize("address, host, want", [
    ("alice@Acme.Example.", None, ["acme.example"]),
    ('"odd@local"@acme.example', "ignored.example", ["acme.example"]),
    (None, "autoconfig.acme.example", ["acme.example", "autoconfig.acme.example"]),
    ("jörg@Bücher.Example", None, ["xn--bcher-kva.example"]),           # as typed; the directory keys A-labels
    (None, "autoconfig.xn--bcher-kva.example.", ["xn--bcher-kva.example", "autoconfig.xn--bcher-kva.example"]),
    ("alice@\udcff.example", None, []),
    (None, "acme.example:8080", ["acme.example"]),
    (None, "[2001:db8::1]:80", []),
    ("no-at-sign", None, []),
    ("alice@", None, []),
    ("alice@bad/domain", None, []),
    ("alice@a..example", None, []),
    ("a" * 400 + "@acme.example", None, []),
    (None, None, []),
])
def test_the_domain_comes_from_the_address_else_from_the_host(address, host, want):
    assert domain_of(address, host) == want


def test_outlook_gets_one_protocol_each_with_the_typed_address_as_login():
    parsed = parse_autodiscover_request(request("Alice.Smith@ACME-Mail.example"))
    assert parsed.email_address == "Alice.Smith@acme-mail.example" and parsed.domain == "acme-mail.example"
    root = ET.fromstring(autodiscover_response(parsed, SETTINGS))
    assert root.tag == f"{AD}Autodiscover"
    account = root.find(f"{MS}Response/{MS}Account")
    assert account.findtext(f"{MS}AccountType") == "email" and account.findtext(f"{MS}Action") == "settings"
    protocols = [{c.tag.removeprefix(MS): c.text for c in p} for p in account.findall(f"{MS}Protocol")]
    common = {"Server": "mail.colony.example", "DomainRequired": "off", "LoginName": "Alice.Smith@acme-mail.example",
              "SPA": "off", "SSL": "on", "Encryption": "SSL", "AuthRequired": "on"}
    assert protocols == [{"Type": "IMAP", "Port": "993", **common}, {"Type": "SMTP", "Port": "465", **common},
                         {"Type": "POP3", "Port": "995", **common}]


def test_outlook_is_told_starttls_where_only_the_plain_port_is_open():
    settings = ClientSettings.from_ports("h", {"imap": 143, "submission": 587})
    root = ET.fromstring(autodiscover_response(parse_autodiscover_request(request()), settings))
    assert [(p.findtext(f"{MS}Type"), p.findtext(f"{MS}Port"), p.findtext(f"{MS}Encryption"))
            for p in root.iter(f"{MS}Protocol")] == [("IMAP", "143", "TLS"), ("SMTP", "587", "TLS")]


def test_the_error_document_is_autodiscovers_own():
    root = ET.fromstring(autodiscover_error(600, "Invalid Request"))
    assert root.tag == f"{AD}Autodiscover"
    assert root.findtext(f"{AD}Response/{AD}Error/{AD}ErrorCode") == "600"
    assert root.findtext(f"{AD}Response/{AD}Error/{AD}Message") == "Invalid Request"


BILLION_LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                  + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
                             for i in range(1, 10))
                  + b']><Autodiscover xmlns="' + REQUEST_SCHEMA.encode() + b'"><Request><EMailAddress>&lol9;'
                  b"</EMailAddress></Request></Autodiscover>")
XXE = (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>' + request(b"&x;".decode()))


@pytest.mark.parametrize("body, code", [
    (BILLION_LAUGHS, ERROR_INVALID_REQUEST),
    (XXE, ERROR_INVALID_REQUEST),
    (request("&undeclared;"), ERROR_INVALID_REQUEST),                     # no DTD: not expanded, an error
    (b"<Autodiscover", ERROR_INVALID_REQUEST),                            # malformed
    (b"", ERROR_INVALID_REQUEST),
    (b"\xff\xfe garbage", ERROR_INVALID_REQUEST),
    (request().replace(b"</Request>", b"<EMailAddress>b@acme.example</EMailAddress></Request>"), ERROR_INVALID_REQUEST),
    (request("no-domain"), ERROR_INVALID_REQUEST),
    (request().replace(b"Autodiscover", b"Other"), ERROR_INVALID_REQUEST),
    (request(namespace=""), ERROR_INVALID_REQUEST),
    (request(schema="http://schemas.microsoft.com/exchange/autodiscover/mobilesync/responseschema/2006"),
     ERROR_SCHEMA_NOT_AVAILABLE),
    (request(namespace="http://schemas.microsoft.com/exchange/autodiscover/mobilesync/requestschema/2006"),
     ERROR_SCHEMA_NOT_AVAILABLE),
    (request() + b" " * AUTODISCOVER_MAX_BODY, ERROR_INVALID_REQUEST),   # over the bound, even if well-formed
])
def test_hostile_or_foreign_requests_get_autodiscover_errors(body, code):
    with pytest.raises(AutodiscoverRefused) as refused:
        parse_autodiscover_request(body)
    assert refused.value.code == code


def test_a_display_name_with_characters_xml_cannot_carry_still_makes_a_well_formed_document():
    domain = HostedDomain("acme.example", "acme.example", "Acme\x0b \x1b[31mMail\ufffe & <Co>")
    root = ET.fromstring(thunderbird_config(domain, ClientSettings.from_ports("mail.colony.example", {"imaps": 993})))
    assert root.find("emailProvider").findtext("displayName") == "Acme [31mMail & <Co>"
