"""Bodies that are not what a JSON route takes: 400 when they do not parse, 415 when they
are another format, 422 only for JSON whose values are wrong -- each a problem+json."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from pydantic import BaseModel

from colony_admin.problems import install_problem_handlers


class Thing(BaseModel):
    name: str


def _app() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)

    @app.post("/things")
    async def create(thing: Thing):
        return thing

    return app


async def test_malformed_json_is_400_another_format_415_wrong_values_422():
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        async def post(body: bytes, content_type: str | None):
            headers = {"content-type": content_type} if content_type else {}
            r = await http.post("/things", content=body, headers=headers)
            assert r.headers["content-type"] == "application/problem+json", r.text
            return r.status_code, r.json()

        status, problem = await post(b'{"name": ', "application/json")
        assert status == 400 and problem["status"] == 400 and "not valid JSON" in problem["detail"]
        status, problem = await post(b'{"name": "x"}', "text/plain")
        assert status == 415 and "text/plain" in problem["detail"]
        status, _ = await post(b"name=x", "application/x-www-form-urlencoded")
        assert status == 415
        status, _ = await post(b'{"name": "x"}', None)
        assert status == 415
        status, problem = await post(b'{"name": 1}', "application/json")
        assert status == 422 and problem["errors"][0]["loc"] == ["body", "name"]
        status, _ = await post(b"", "application/json")
        assert status == 422  # no body at all: the field is missing
        assert (await http.post("/things", json={"name": "x"})).status_code == 200
        assert (await http.post("/things", content=b'{"name":"x"}',
                                headers={"content-type": "application/merge-patch+json"})).status_code == 200
