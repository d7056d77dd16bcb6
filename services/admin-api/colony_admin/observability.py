"""RED metrics for every admin API request (an ASGI middleware).

Metrics (on the node runtime's registry, so the instance's ``/metrics`` shows them):

- ``colony_api_requests_total{method, route, status}``: requests answered;
- ``colony_api_request_duration_seconds{method, route}``: time to the last body byte;
- ``colony_api_requests_in_flight``.

``route`` is the route's template (``/v1/domains/{domain}``), never the raw path: a domain
or account never becomes a label value, and unmatched paths count as ``unmatched``.
``method`` is one of RFC 9110's methods or PATCH, else ``other``: the client chooses the
method token, and every new one made a counter and a histogram of its own (20,000 requests
with made-up methods, no token needed, grew the process by 77 MB and ``/metrics`` to 36 MB).

Spans are FastAPI's own (its built-in OpenTelemetry support: a SERVER span ``<method>
<route>`` per request, continuing an incoming ``traceparent``); it is the parent of
everything the request does, so its context flows into the bus headers of the events the
request appends.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("colony_api_requests", "Admin API requests answered.",
                                ["method", "route", "status"], registry=registry)
        self.duration = Histogram("colony_api_request_duration_seconds", "Admin API request time, to the last byte.",
                                  ["method", "route"], registry=registry,
                                  buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.in_flight = Gauge("colony_api_requests_in_flight", "Admin API requests being answered.", registry=registry)


METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


def _method(scope) -> str:
    method = scope.get("method", "GET")
    return method if method in METHODS else "other"


def _route(scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path:
        return path
    root = scope.get("root_path", "")
    if scope.get("path", "").startswith(root + "/monitor/static/"):
        return "/monitor/static"
    return "unmatched"


class ObservedApi:
    """ASGI middleware: RED metrics per HTTP request."""

    def __init__(self, app, metrics: ApiMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}
        started = time.perf_counter()

        async def observed_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        method = _method(scope)
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, observed_send)
        finally:
            route = _route(scope)
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(method, route, str(status["code"])).inc()
            self.metrics.duration.labels(method, route).observe(time.perf_counter() - started)
