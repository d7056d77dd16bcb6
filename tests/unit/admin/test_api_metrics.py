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
