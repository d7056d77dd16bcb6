"""Schemathesis against the app's own OpenAPI, on a live server: no 5xx, every response
matches the documented schema, status code and content type.  Runs on SQLite and PostgreSQL.

Examples are few per operation (the suite must stay short); half the cases are aimed at a
domain, account, alias and class of service that exist, so generated requests reach the
handlers rather than stopping at 404.
"""

from __future__ import annotations

import uuid
import zlib

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance, status_code_conformance


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_openapi_documents_every_route_and_model(live_server):
    spec = httpx.get(f"{live_server.url}/openapi.json").json()
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            assert op.get("summary"), f"{method.upper()} {path} has no summary"
            assert "200" in op["responses"] or "201" in op["responses"] or "202" in op["responses"] or "204" in op["responses"]
            if path.startswith("/v1/") and path != "/v1/whoami":
                for code in ("401", "403", "422"):
                    assert code in op["responses"], f"{method.upper()} {path} does not document {code}"
    for name in ("DomainOut", "AccountOut", "AliasOut", "CosOut", "TokenCreated", "UsageReport", "AuditEntry",
                 "ImportJob", "ProblemDetail"):
        assert name in spec["components"]["schemas"], name


def test_api_conforms_to_its_schema(live_server):
    # Driven by hand rather than with schemathesis' pytest plugin (whose lazy loader does not
    # work with this pytest): every operation, a few generated cases each, on a live server.
    schema = schemathesis.openapi.from_url(f"{live_server.url}/openapi.json")
    auth = {"Authorization": f"Bearer {live_server.sys_token}"}
    # Real objects to aim at: generated names alone would nearly always end in a 404.
    known = {"domain": f"st-{uuid.uuid4().hex[:8]}.example", "cos": f"st-{uuid.uuid4().hex[:8]}"}
    with httpx.Client(base_url=live_server.url, headers=auth) as http:
        assert http.post("/v1/cos", json={"name": known["cos"]}).status_code == 201
        assert http.post("/v1/domains", json={"name": known["domain"], "cos": known["cos"]}).status_code == 201
        for body in ({"name": "alice", "password": "alice-password"}, {"name": "bob"}):
            assert http.post(f"/v1/domains/{known['domain']}/accounts", json=body).status_code == 201
        assert http.post(f"/v1/domains/{known['domain']}/aliases",
                         json={"name": "team", "targets": [f"alice@{known['domain']}"]}).status_code == 201
    failures: list[str] = []
    succeeded: set[str] = set()
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def check(case):
            params = case.path_parameters or {}
            # Half the cases (chosen by the generated data, so runs repeat) aim at real objects.
            if params and zlib.crc32(repr(sorted(params.items())).encode()) % 2 == 0:
                if "domain" in params:
                    params["domain"] = known["domain"]
                if "name" in params:
                    params["name"] = known["cos"] if "/cos/" in case.path else (
                        "team" if "/aliases/" in case.path else "alice")
            response = case.call_and_validate(base_url=live_server.url, headers=auth, checks=CHECKS)
            if response.status_code < 300:
                succeeded.add(operation.label)

        try:
            check()
        except Exception as exc:  # collect them all, report at once
            failures.append(f"{operation.label}: {str(exc)[:1500]}")
    assert operations >= 30
    assert not failures, "\n\n".join(failures)
    assert len(succeeded) >= 20, f"too few operations reached a handler: {sorted(succeeded)}"
