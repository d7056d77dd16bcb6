"""The admin API's RED metrics label by route template, never by the raw path."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from colony_admin.observability import ApiMetrics, ObservedApi


async def test_requests_are_counted_by_route_template_and_status():
    app = FastAPI()

    @app.get("/v1/domains/{domain}")
    async def one(domain: str):
        return {"domain": domain}

    @app.get("/boom")
    async def boom():
        raise RuntimeError("handler failed")

    registry = CollectorRegistry()
    app.add_middleware(ObservedApi, metrics=ApiMetrics(registry))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        for name in ("a.example", "b.example"):
            assert (await http.get(f"/v1/domains/{name}")).status_code == 200
        assert (await http.get("/no/such/path")).status_code == 404
        assert (await http.get("/boom")).status_code == 500

    def value(name, **labels):
        return registry.get_sample_value(name, labels)

    assert value("colony_api_requests_total", method="GET", route="/v1/domains/{domain}", status="200") == 2
    assert value("colony_api_requests_total", method="GET", route="unmatched", status="404") == 1
    assert value("colony_api_requests_total", method="GET", route="/boom", status="500") == 1
    assert value("colony_api_request_duration_seconds_count", method="GET", route="/v1/domains/{domain}") == 2
    assert value("colony_api_requests_in_flight") == 0


async def test_a_method_the_client_made_up_is_counted_as_other():
    """Methods are the client's choice: each new one must not make new series."""
    app = FastAPI()

    @app.get("/v1/domains")
    async def domains():
        return []

    registry = CollectorRegistry()
    app.add_middleware(ObservedApi, metrics=ApiMetrics(registry))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        for i in range(50):
            assert (await http.request(f"M{i:04d}", "/v1/domains")).status_code == 405
        assert (await http.request("PATCH", "/v1/domains")).status_code == 405

    def value(name, **labels):
        return registry.get_sample_value(name, labels)

    assert value("colony_api_requests_total", method="other", route="/v1/domains", status="405") == 50
    assert value("colony_api_requests_total", method="PATCH", route="/v1/domains", status="405") == 1
    methods = {s.labels["method"] for m in registry.collect() for s in m.samples if "method" in s.labels}
    assert methods == {"other", "PATCH"}
