"""OpenTelemetry set-up: OTLP/HTTP export when an endpoint is configured, otherwise off.

Trace context crosses the bus in NATS headers (W3C ``traceparent``), injected with
``inject_headers`` and read back with ``extract_context``.
"""

from __future__ import annotations

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from colony import __version__
from colony.settings import Settings


def setup_tracing(settings: Settings, service_name: str) -> TracerProvider | None:
    if not settings.otlp_endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({
        "service.name": f"colony-{service_name}",
        "service.version": __version__,
        "service.instance.id": settings.node_id or service_name,
    }))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint.rstrip("/") + "/v1/traces")))
    trace.set_tracer_provider(provider)
    return provider


def inject_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    headers = dict(headers or {})
    propagate.inject(headers)
    return headers


def extract_context(headers: dict[str, str] | None):
    return propagate.extract(headers or {})
