"""The edge's autoconfiguration listener: the HTTP shell around ``colony.protocols.autoconfig``.

One small HTTP server per edge (``autoconfig_port``; uvicorn through
``colony.http_server``, with its request deadlines) answers, for hosted domains only:

* ``GET /mail/config-v1.1.xml?emailaddress=A`` and
  ``GET /.well-known/autoconfig/mail/config-v1.1.xml``: Thunderbird's clientConfig;
* ``POST /autodiscover/autodiscover.xml`` (any case): Outlook's POX Autodiscover;
* ``GET`` of that path at ``autodiscover.<domain>``: a 302 to
  ``https://<autoconfig_host>/autodiscover/autodiscover.xml``, Outlook's "HTTP redirect
  method" (MS-OXDISCO 3.1.5.3).  Outlook POSTs only over HTTPS, and no certificate of ours
  names ``autodiscover.<a subscriber's domain>``: the unauthenticated GET over plain HTTP,
  which Outlook sends when both HTTPS tries fail, is how it reaches a name that has one.

The answers name ``autoconfig_host`` (else advertised_host) and either the standard ports or
this edge's own listener ports (``autoconfig_ports``), for the listeners this edge has open.
A request about a domain not hosted here is 404; before the directory cache has loaded,
503 with Retry-After (a domain may merely not be in yet); on an edge without a TLS
certificate, 503 (nothing may be offered: passwords would cross in the clear).  Thunderbird's paths and anything
else answer errors as RFC 7807 problem+json (clientConfig has no error document);
Autodiscover answers its own error document.  Every answer is ``Cache-Control: no-store``.
An Autodiscover body is read up to
``AUTODISCOVER_MAX_BODY`` octets and refused (413) past it, by its Content-Length before
any of it is read, or as it streams in.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from prometheus_client import CollectorRegistry, Counter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.applications import Starlette

from colony.contracts.cache import DirectoryCache
from colony.http_server import EmbeddedHttpServer
from colony.protocols.autoconfig import (
    AUTODISCOVER_MAX_BODY, ERROR_ADDRESS_NOT_FOUND, ERROR_INVALID_REQUEST, ERROR_SCHEMA_NOT_AVAILABLE,
    STANDARD_PORTS, AutodiscoverRefused, ClientSettings, autodiscover_error, autodiscover_response, domain_of,
    hosted_domain, parse_autodiscover_request, thunderbird_config,
)
from colony.settings import Settings

log = logging.getLogger("colony.edge.autoconfig")

THUNDERBIRD_PATHS = frozenset({"/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml"})
AUTODISCOVER_PATH = "/autodiscover/autodiscover.xml"
XML = "application/xml; charset=utf-8"
AUTODISCOVER_XML = "text/xml; charset=utf-8"   # what Exchange answers with
PROBLEM_JSON = "application/problem+json"
NOT_LOADED_RETRY = "5"   # seconds; the directory cache loads in seconds


class AutoconfigMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "colony_edge_autoconfig_requests",
            "Mail client autoconfiguration requests, by kind (thunderbird, autodiscover, other) and result "
            "(served, redirect, unknown_domain, bad_request, schema, too_large, not_loaded, no_tls, method, "
            "not_found).",
            ["kind", "result"], registry=registry)


class _BodyTooLarge(Exception):
    pass


def advertised_settings(settings: Settings, listeners: dict[str, str], tls: bool = True) -> ClientSettings:
    """What answers name: ``listeners`` is the edge's open listeners (name -> host:port).
    Without TLS nothing: IMAP and POP3 then listen without STARTTLS, and a client told to
    send its password in the clear would have been told wrong."""
    if not tls:
        listeners = {}
    host = settings.autoconfig_host or settings.advertised_host
    if settings.autoconfig_ports == "listeners":
        ports = {name: int(address.rpartition(":")[2]) for name, address in listeners.items()}
    else:
        ports = {name: port for name, port in STANDARD_PORTS.items() if name in listeners}
    return ClientSettings.from_ports(host, ports)


def _problem(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status,
                         "detail": detail}, status_code=status, media_type=PROBLEM_JSON, headers=headers)


async def _bounded_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _BodyTooLarge
    return bytes(body)


class AutoconfigApp:
    """The ASGI application; ``client_settings`` is fixed once the edge's listeners are open."""

    def __init__(self, directory: DirectoryCache, client_settings: ClientSettings, metrics: AutoconfigMetrics) -> None:
        self.directory, self.client_settings, self.metrics = directory, client_settings, metrics

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.dispatch, methods=["GET", "HEAD", "POST", "PUT",
                                                                                "DELETE", "PATCH", "OPTIONS"])])

    def _count(self, kind: str, result: str, detail: str = "") -> None:
        self.metrics.requests.labels(kind, result).inc()
        if result != "served":
            log.debug("autoconfig %s request refused: %s%s", kind, result, f" ({detail})" if detail else "")

    async def dispatch(self, request: Request) -> Response:
        response = await self._answer(request)
        # No cache keeps an answer: each is the directory's and this edge's state of the moment
        # (a 404 is heuristically cacheable, RFC 9110 §15.1, and on port 80 a proxy would serve
        # it past the domain's creation), and Autodiscover's names the user's address.
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    async def _answer(self, request: Request) -> Response:
        path = request.url.path
        if path in THUNDERBIRD_PATHS:
            return await self.thunderbird(request)
        if path.lower() == AUTODISCOVER_PATH:
            return await self.autodiscover(request)
        self._count("other", "not_found", path[:100])
        return _problem(404, "nothing is served at this path")

    async def thunderbird(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            self._count("thunderbird", "method", request.method)
            return _problem(405, "GET only", {"Allow": "GET, HEAD"})
        if not self.client_settings.servers:
            self._count("thunderbird", "no_tls")
            return _problem(503, "this edge has no TLS certificate: no client settings to offer")
        candidates = domain_of(request.query_params.get("emailaddress"), request.headers.get("host"))
        if not candidates:
            self._count("thunderbird", "bad_request")
            return _problem(400, "no domain: give emailaddress=<address>, or ask at autoconfig.<domain>")
        for candidate in candidates:
            domain = hosted_domain(self.directory, candidate)
            if domain is not None:
                self._count("thunderbird", "served")
                return Response(thunderbird_config(domain, self.client_settings), media_type=XML)
        if not self.directory.loaded.is_set():
            self._count("thunderbird", "not_loaded", candidates[0])
            return _problem(503, "the directory is still loading", {"Retry-After": NOT_LOADED_RETRY})
        self._count("thunderbird", "unknown_domain", candidates[0])
        return _problem(404, "this domain is not hosted here")

    def _hosted_host(self, host_header: str | None) -> bool:
        """Whether the Host is ``autodiscover.<a hosted domain>``, where Outlook's redirect
        method asks (never our own name: a GET there would be sent to itself), on an edge
        that has settings to offer."""
        candidates = domain_of(None, host_header)
        if len(candidates) != 2 or not candidates[1].startswith("autodiscover.") or not self.client_settings.servers:
            return False
        return candidates[1] != self.client_settings.host.lower() and hosted_domain(self.directory, candidates[0]) is not None

    async def autodiscover(self, request: Request) -> Response:
        def error(status: int, result: str, code: int, message: str, headers: dict[str, str] | None = None) -> Response:
            self._count("autodiscover", result, message)
            return Response(autodiscover_error(code, message), status_code=status, media_type=AUTODISCOVER_XML,
                            headers=headers)

        if request.method in ("GET", "HEAD") and self._hosted_host(request.headers.get("host")):
            self._count("autodiscover", "redirect")
            return Response(status_code=302, headers={
                "Location": f"https://{self.client_settings.host}{AUTODISCOVER_PATH}"})
        if request.method != "POST":
            return error(405, "method", ERROR_INVALID_REQUEST, "POST an Autodiscover request", {"Allow": "POST"})
        try:
            body = await _bounded_body(request, AUTODISCOVER_MAX_BODY)
        except _BodyTooLarge:
            return error(413, "too_large", ERROR_INVALID_REQUEST, f"request body over {AUTODISCOVER_MAX_BODY} octets",
                         {"Connection": "close"})
        try:
            parsed = parse_autodiscover_request(body)
        except AutodiscoverRefused as refused:
            if refused.code == ERROR_SCHEMA_NOT_AVAILABLE:
                # As Exchange: the request was understood; the schema it wants is not served.
                return error(200, "schema", refused.code, refused.message)
            return error(400, "bad_request", refused.code, refused.message)
        if not self.client_settings.servers:
            return error(503, "no_tls", ERROR_INVALID_REQUEST, "this edge has no TLS certificate: no client settings to offer")
        if hosted_domain(self.directory, parsed.domain) is None:
            if not self.directory.loaded.is_set():
                return error(503, "not_loaded", ERROR_INVALID_REQUEST, "the directory is still loading",
                             {"Retry-After": NOT_LOADED_RETRY})
            # The domain alone decides (never the local part): nobody learns which accounts exist.
            return error(404, "unknown_domain", ERROR_ADDRESS_NOT_FOUND, "The e-mail address cannot be found.")
        self._count("autodiscover", "served")
        return Response(autodiscover_response(parsed, self.client_settings), media_type=AUTODISCOVER_XML)


async def open_autoconfig(settings: Settings, directory: DirectoryCache, registry: CollectorRegistry,
                          listeners: dict[str, str], tls: bool) -> tuple[EmbeddedHttpServer, str]:
    """Start the listener; returns the server (the workload stops it) and its address."""
    client_settings = advertised_settings(settings, listeners, tls)
    if not client_settings.servers:
        log.warning("no TLS certificate: autoconfiguration has no client settings to offer (answers 503)")
    app = AutoconfigApp(directory, client_settings, AutoconfigMetrics(registry))
    server = EmbeddedHttpServer(app.app(), settings.host, settings.autoconfig_port)
    port = await server.start()
    return server, f"{settings.advertised_host}:{port}"
