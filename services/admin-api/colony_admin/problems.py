"""RFC 7807 problem details: every error the admin API returns is one of these.

The pure core raises ``Problem`` subclasses; the exception handlers installed by
``install_problem_handlers`` turn them (and FastAPI's own validation and HTTP errors) into
``application/problem+json`` responses.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from colony.events import UnknownEvent

log = logging.getLogger("colony.admin")

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://colony.example/problems/"


class ProblemDetail(BaseModel):
    """RFC 7807 body."""

    type: str = Field("about:blank", description="URI naming the kind of problem")
    title: str
    status: int
    detail: str = ""
    instance: str | None = None
    errors: list[dict[str, Any]] | None = Field(None, description="Per-field validation errors (422)")


class Problem(Exception):
    status = 500
    kind = "internal"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra

    @property
    def title(self) -> str:
        return HTTPStatus(self.status).phrase

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body = {"type": TYPE_BASE + self.kind, "title": self.title, "status": self.status,
                "detail": self.detail, "instance": instance}
        body.update(self.extra)
        return body


class BadRequest(Problem):
    status, kind = 400, "bad-request"


class Unauthorized(Problem):
    status, kind = 401, "unauthorized"

    def __init__(self, detail: str, **kw: Any) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"}, **kw)


class Forbidden(Problem):
    status, kind = 403, "forbidden"


class NotFound(Problem):
    status, kind = 404, "not-found"


class AlreadyExists(Problem):
    status, kind = 409, "already-exists"


class Conflict(Problem):
    """Optimistic concurrency: the aggregate changed since the client (or we) read it."""

    status, kind = 409, "conflict"


class Invalid(Problem):
    status, kind = 422, "invalid"


class MoveRequired(Problem):
    """A change that would leave stored data behind in another region: it takes the domain
    move operation (which copies the mailboxes first), not a settings change."""

    status, kind = 409, "domain-move-required"


class MoveInProgress(Problem):
    """The domain is moving to another region; what was asked waits for the move to end."""

    status, kind = 409, "domain-move-in-progress"


class NoMoveInProgress(Problem):
    status, kind = 409, "no-move-in-progress"


class AlreadyInRegion(Problem):
    status, kind = 409, "already-in-region"


class UnknownRegion(Problem):
    """Not one of the super cluster's regions (settings: regions)."""

    status, kind = 422, "unknown-region"


class TooManyRequests(Problem):
    status, kind = 429, "too-many-requests"

    def __init__(self, detail: str, retry_after: float, **kw: Any) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, int(retry_after + 0.999)))}, **kw)


def problem_response(status: int, title: str, detail: str, *, kind: str = "", instance: str | None = None,
                     headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body = {"type": TYPE_BASE + kind if kind else "about:blank", "title": title, "status": status,
            "detail": detail, "instance": instance, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return JSONResponse(exc.body(request.url.path), status_code=exc.status,
                            media_type=PROBLEM_JSON, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI reports both of these as 422, which RFC 9110 keeps for content that parses:
        # a body that is not JSON at all is 400 (15.5.1), one in another format 415 (15.5.16).
        broken = next((e for e in exc.errors() if e.get("type") == "json_invalid"), None)
        if broken is not None:
            why = (broken.get("ctx") or {}).get("error", "")
            return problem_response(400, "Bad Request", f"the body is not valid JSON: {why}".rstrip(": "),
                                    kind="bad-request", instance=request.url.path)
        if isinstance(getattr(exc, "body", None), bytes | bytearray) and exc.body:
            # FastAPI hands over the raw bytes only when the Content-Type was not JSON.
            return problem_response(415, "Unsupported Media Type",
                                    f"send the body as application/json, not {request.headers.get('content-type') or 'untyped'}",
                                    kind="unsupported-media-type", instance=request.url.path,
                                    headers={"Accept-Post": "application/json"} if request.method == "POST" else None)
        errors = [{"loc": list(map(str, e.get("loc", ()))), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                  for e in exc.errors()]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        return problem_response(422, "Unprocessable Content", f"{'.'.join(first['loc'])}: {first['msg']}",
                                kind="invalid", instance=request.url.path, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(exc.status_code, HTTPStatus(exc.status_code).phrase, str(exc.detail),
                                instance=request.url.path, headers=getattr(exc, "headers", None))

    @app.exception_handler(UnknownEvent)
    async def _newer_event(request: Request, exc: UnknownEvent) -> JSONResponse:
        log.error("cannot read an aggregate on %s: %s", request.url.path, exc)
        return problem_response(500, "Internal Server Error",
                                f"this object has an event this instance cannot read ({exc}); "
                                "it was written by a newer Colony: upgrade this instance",
                                kind="unknown-event-version", instance=request.url.path)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(500, "Internal Server Error", "unexpected error; see the server log",
                                instance=request.url.path)


def _doc(status: int, what: str) -> dict[str, Any]:
    return {"model": ProblemDetail, "description": what, "content": {PROBLEM_JSON: {}}}


# Documented on every authenticated route, so OpenAPI (and schemathesis) know every answer.
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _doc(400, "Malformed request"),
    401: _doc(401, "Missing or unknown bearer token"),
    403: _doc(403, "The token's role may not do this"),
    404: _doc(404, "No such object"),
    409: _doc(409, "Already exists, or changed concurrently: re-read and retry"),
    413: _doc(413, "The request body is larger than the endpoint accepts"),
    415: _doc(415, "The body is not application/json"),
    422: _doc(422, "Invalid field values"),
    429: _doc(429, "Too many failed authentications; see Retry-After"),
}
