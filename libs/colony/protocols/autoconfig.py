"""Mail client autoconfiguration: what an account wizard asks, answered from the directory.

Theory of operation
-------------------
A subscriber types an address and a password; the client then asks for the server settings:

* Thunderbird (and Evolution, K-9 / Thunderbird for Android, which read the same format)
  fetches Mozilla's ``clientConfig`` 1.1 document: ``GET /mail/config-v1.1.xml?emailaddress=A``
  at ``autoconfig.<domain>``, then ``GET /.well-known/autoconfig/mail/config-v1.1.xml`` at
  ``<domain>`` (the address in the query if there is one, else only the Host names the domain).
* Outlook (and others that speak it) ``POST``s a "POX" Autodiscover request,
  ``<Autodiscover><Request><EMailAddress>A</EMailAddress><AcceptableResponseSchema>…``
  (requestschema/2006), to ``/autodiscover/autodiscover.xml`` at ``autodiscover.<domain>``
  or ``<domain>``, and reads the ``Protocol`` entries of the outlook responseschema/2006a.

This module is the pure part: which domain a request is about (``domain_of``,
``hosted_domain``), the settings a client gets (``ClientSettings``), the two documents
(``thunderbird_config``, ``autodiscover_response``), Autodiscover's error document
(``autodiscover_error``), and the reading of an Autodiscover request
(``parse_autodiscover_request``).  The HTTP shell is ``colony_edge.autoconfig``.

Rules:

* Only a hosted domain (or a domain alias) gets settings; the answer depends on the domain
  alone, never on whether the local part exists, so the endpoint tells nobody which
  accounts there are.  The username is always the address the client typed.
* An Autodiscover request is read from a bounded body (``AUTODISCOVER_MAX_BODY``) with the
  stdlib expat parser and **no document type declaration allowed**: without a DTD there
  are no entity declarations, so no entity expansion (billion laughs, quadratic blowup) and
  no external entity (XXE) can happen; an undeclared entity reference is a parse error.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol as TypingProtocol
from xml.parsers import expat

from colony.contracts.directory import DomainInfo

AUTODISCOVER_MAX_BODY = 4096   # octets; a real request is about 350
REQUEST_SCHEMA = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
RESPONSE_SCHEMA = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
AUTODISCOVER_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"

# Autodiscover's own error codes (MS-OXDSCLI 2.2.4.2.1.2 / Exchange's POX answers).
ERROR_ADDRESS_NOT_FOUND = 500      # "The e-mail address cannot be found."
ERROR_INVALID_REQUEST = 600        # "Invalid Request"
ERROR_SCHEMA_NOT_AVAILABLE = 601   # "The requested schema version is not supported."

# The listener names of the edge (``open_listeners``'s keys), in the order clients should
# prefer them: implicit TLS first (RFC 8314 3), then STARTTLS on the plain port.
LISTENERS = (("imaps", "imap", True), ("imap", "imap", False), ("pop3s", "pop3", True), ("pop3", "pop3", False),
             ("submissions", "smtp", True), ("submission", "smtp", False))
STANDARD_PORTS = {"imaps": 993, "imap": 143, "pop3s": 995, "pop3": 110, "submissions": 465, "submission": 587}

_DOMAIN = re.compile(r"(?=.{1,253}\Z)[^\s@/\\?#:\[\]\"'<>]+")
MAX_ADDRESS = 320   # RFC 3696 errata: 64 + 1 + 255


class DirectoryView(TypingProtocol):
    def domain(self, name: str) -> DomainInfo | None: ...
    def domain_alias(self, name: str) -> str | None: ...


@dataclass(frozen=True)
class Server:
    protocol: str        # "imap", "pop3" or "smtp"
    port: int
    implicit_tls: bool   # TLS from the first byte (993/995/465); else STARTTLS on the plain port


@dataclass(frozen=True)
class ClientSettings:
    """Where a client should connect: one host name and, per protocol, the servers in the
    order it should prefer them."""

    host: str
    servers: tuple[Server, ...]

    @classmethod
    def from_ports(cls, host: str, ports: Mapping[str, int]) -> ClientSettings:
        """``ports``: listener name (``imaps``, ``submission``, ...) -> port, for the
        listeners this edge has open; the others are not offered."""
        return cls(host, tuple(Server(protocol, ports[name], implicit)
                               for name, protocol, implicit in LISTENERS if name in ports))

    def of(self, protocol: str) -> list[Server]:
        return [s for s in self.servers if s.protocol == protocol]


@dataclass(frozen=True)
class HostedDomain:
    name: str           # the domain asked about (a domain alias stays the alias)
    primary: str        # the hosted domain it is, or is an alias of
    display_name: str   # the domain's branding display name, else its name


class AutodiscoverRefused(ValueError):
    """An Autodiscover request answered with the protocol's error document."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class AutodiscoverRequest:
    """``<Autodiscover xmlns="…/outlook/requestschema/2006"><Request>
    <EMailAddress>alice@acme.example</EMailAddress>
    <AcceptableResponseSchema>…/outlook/responseschema/2006a</AcceptableResponseSchema>
    </Request></Autodiscover>``"""

    email_address: str
    response_schema: str

    @property
    def domain(self) -> str:
        return self.email_address.rpartition("@")[2]


def normalise_domain(name: str) -> str | None:
    """The domain as the directory keys it (lower case, no trailing dot, an IDN in A-labels:
    a wizard sends the address as typed, ``alice@bücher.example``), or None when it cannot
    be a domain name at all."""
    name = name.strip().rstrip(".").lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if not _DOMAIN.fullmatch(name) or any(not label for label in name.split(".")):
        return None
    return name


def address_domain(address: str) -> str | None:
    """The domain of ``local@domain`` (any local part), or None when it is no such address."""
    if len(address) > MAX_ADDRESS:
        return None
    local, at, domain = address.rpartition("@")
    if not at or not local or any(c.isspace() or ord(c) < 32 for c in local):
        return None
    return normalise_domain(domain)


def domain_of(emailaddress: str | None, host_header: str | None) -> list[str]:
    """The domains a Thunderbird request may be about, most likely first: the address's
    domain when the query names one, else the Host without its port, as ``<domain>`` and as
    ``autoconfig.<domain>``.  Empty when neither names a domain."""
    if emailaddress:
        domain = address_domain(emailaddress)
        return [domain] if domain else []
    host = (host_header or "").strip()
    if host.startswith("["):      # an IPv6 literal is never a mail domain
        return []
    host = normalise_domain(host.rpartition(":")[0] if host.count(":") == 1 else host) or ""
    if not host:
        return []
    candidates = [host]
    if host.startswith("autoconfig.") or host.startswith("autodiscover."):
        candidates.insert(0, host.partition(".")[2])
    return candidates


def hosted_domain(directory: DirectoryView, domain: str) -> HostedDomain | None:
    """The hosted domain ``domain`` is (itself or through a domain alias), or None."""
    info = directory.domain(domain)
    if info is None:
        primary = directory.domain_alias(domain)
        info = directory.domain(primary) if primary else None
    if info is None:
        return None
    return HostedDomain(domain, info.name, info.display_name or info.name)


def _xml(root: ET.Element) -> bytes:
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


# What XML 1.0 cannot carry even escaped (C0 controls but tab and line ends, U+FFFE/U+FFFF):
# ElementTree writes them as they are, and the client's parser refuses the whole document.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _text(parent: ET.Element, tag: str, text: str) -> ET.Element:
    element = ET.SubElement(parent, tag)
    element.text = _NOT_XML.sub("", text)   # a display name is the domain admin's free text
    return element


def thunderbird_config(domain: HostedDomain, settings: ClientSettings) -> bytes:
    """Mozilla's clientConfig 1.1 for ``domain``: every incoming server (IMAP before POP3,
    implicit TLS before STARTTLS) and every outgoing one; the username is whatever address
    the user typed (``%EMAILADDRESS%``), the password sent inside TLS."""
    root = ET.Element("clientConfig", version="1.1")
    provider = ET.SubElement(root, "emailProvider", id=domain.primary)
    for name in dict.fromkeys((domain.name, domain.primary)):
        _text(provider, "domain", name)
    _text(provider, "displayName", domain.display_name)
    _text(provider, "displayShortName", domain.display_name)
    for server in settings.servers:
        element = ET.SubElement(provider, "outgoingServer" if server.protocol == "smtp" else "incomingServer",
                                type=server.protocol)
        _text(element, "hostname", settings.host)
        _text(element, "port", str(server.port))
        _text(element, "socketType", "SSL" if server.implicit_tls else "STARTTLS")
        _text(element, "username", "%EMAILADDRESS%")
        _text(element, "authentication", "password-cleartext")
    return _xml(root)


def autodiscover_response(request: AutodiscoverRequest, settings: ClientSettings) -> bytes:
    """The outlook responseschema/2006a answer: one ``Protocol`` per protocol (IMAP, SMTP,
    POP3; Outlook takes the first of each type), implicit TLS where this edge offers it."""
    root = ET.Element("Autodiscover", xmlns=AUTODISCOVER_NS)
    response = ET.SubElement(root, "Response", xmlns=RESPONSE_SCHEMA)
    account = ET.SubElement(response, "Account")
    _text(account, "AccountType", "email")
    _text(account, "Action", "settings")
    for protocol in ("imap", "smtp", "pop3"):
        servers = settings.of(protocol)
        if not servers:
            continue
        server = servers[0]
        element = ET.SubElement(account, "Protocol")
        _text(element, "Type", protocol.upper())
        _text(element, "Server", settings.host)
        _text(element, "Port", str(server.port))
        _text(element, "DomainRequired", "off")
        _text(element, "LoginName", request.email_address)
        _text(element, "SPA", "off")
        _text(element, "SSL", "on")
        _text(element, "Encryption", "SSL" if server.implicit_tls else "TLS")
        _text(element, "AuthRequired", "on")
    return _xml(root)


def autodiscover_error(code: int, message: str) -> bytes:
    """Autodiscover's own error document (as Exchange answers a POX request it refuses)."""
    root = ET.Element("Autodiscover", xmlns=AUTODISCOVER_NS)
    error = ET.SubElement(ET.SubElement(root, "Response"), "Error", Id="0")
    _text(error, "ErrorCode", str(code))
    _text(error, "Message", message)
    ET.SubElement(error, "DebugData")
    return _xml(root)


def parse_autodiscover_request(body: bytes) -> AutodiscoverRequest:
    """The request's address and wanted response schema; ``AutodiscoverRefused`` (600) for
    anything else: too long, not well-formed, a DTD, not an Autodiscover request, no or
    two addresses, an address that is none; (601) a response schema other than Outlook's."""
    if len(body) > AUTODISCOVER_MAX_BODY:
        raise AutodiscoverRefused(ERROR_INVALID_REQUEST, f"request body over {AUTODISCOVER_MAX_BODY} octets")
    path: list[str] = []
    found: dict[str, list[str]] = {"EMailAddress": [], "AcceptableResponseSchema": []}
    text: list[str] = []

    def refuse_dtd(*_):
        raise AutodiscoverRefused(ERROR_INVALID_REQUEST, "document type declarations are not accepted")

    def start(name: str, _attrs) -> None:
        namespace, _, local = name.rpartition(" ")
        if not path and local != "Autodiscover":
            raise AutodiscoverRefused(ERROR_INVALID_REQUEST, "not an Autodiscover request")
        if not path and namespace != REQUEST_SCHEMA:
            if "autodiscover" in namespace.lower():   # e.g. ActiveSync's mobilesync request schema
                raise AutodiscoverRefused(ERROR_SCHEMA_NOT_AVAILABLE, "only the outlook request schema is served")
            raise AutodiscoverRefused(ERROR_INVALID_REQUEST, "not an Autodiscover request")
        path.append(local)
        text.clear()

    def end(_name: str) -> None:
        local = path.pop()
        if path == ["Autodiscover", "Request"] and local in found:
            found[local].append("".join(text).strip())
        text.clear()

    def data(chunk: str) -> None:
        text.append(chunk)

    parser = expat.ParserCreate(namespace_separator=" ")
    parser.StartDoctypeDeclHandler = refuse_dtd
    parser.EntityDeclHandler = refuse_dtd   # unreachable without a DTD; said for the reader
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler, parser.EndElementHandler, parser.CharacterDataHandler = start, end, data
    try:
        parser.Parse(body, True)
    except expat.ExpatError as exc:
        raise AutodiscoverRefused(ERROR_INVALID_REQUEST, f"not well-formed XML ({expat.ErrorString(exc.code)})") from None
    addresses, schemas = found["EMailAddress"], found["AcceptableResponseSchema"]
    if len(addresses) != 1 or address_domain(addresses[0]) is None:
        raise AutodiscoverRefused(ERROR_INVALID_REQUEST, "one EMailAddress with a local part and a domain is needed")
    if len(schemas) != 1 or schemas[0] != RESPONSE_SCHEMA:
        raise AutodiscoverRefused(ERROR_SCHEMA_NOT_AVAILABLE, "only the outlook responseschema/2006a is served")
    local, _, domain = addresses[0].rpartition("@")
    return AutodiscoverRequest(f"{local}@{address_domain(addresses[0])}", schemas[0])
