from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from colony.settings import Settings
from colony.telemetry import extract_context, inject_headers, setup_tracing


def test_trace_context_crosses_in_headers():
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("edge.accept") as span:
        headers = inject_headers({"Nats-Msg-Id": "x"})
    assert headers["Nats-Msg-Id"] == "x"
    assert headers["traceparent"].split("-")[1] == format(span.get_span_context().trace_id, "032x")
    remote = trace.get_current_span(extract_context(headers)).get_span_context()
    assert remote.trace_id == span.get_span_context().trace_id and remote.is_remote


def test_no_span_no_header_and_tracing_off_without_endpoint():
    assert "traceparent" not in inject_headers()
    assert setup_tracing(Settings(otlp_endpoint=""), "edge") is None
