"""A ceiling on request bodies (an ASGI middleware), answered 413 problem+json.

FastAPI reads and parses a JSON body before it runs the route's dependencies, the bearer
token check included, so without a ceiling anyone who reaches the port makes the API hold
whatever they send: four unauthenticated 50 MB POSTs took an admin API from 110 MB to
790 MB RSS, and most of it stayed.  No JSON body of this API comes near ``MAX_JSON_BODY``;
a bulk import (``POST /v1/imports``, read only after its token is checked) may be as large
as ``Settings.api_max_import_bytes``.

A declared ``Content-Length`` over the ceiling is refused before the app runs; a body sent
without one (chunked) is counted as it arrives and refused once past it.  Either answer
closes the connection, so the server does not go on reading (and discarding) the rest for
more than the close's linger (``colony.http_server``: a client still sending reads the 413
rather than a reset).
"""

from __future__ import annotations

from starlette.exceptions import HTTPException

from colony_admin.problems import problem_response

MAX_JSON_BODY = 1024 * 1024


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes its ceiling: FastAPI passes
    HTTPExceptions raised while it reads a body on to the problem handlers."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _detail(limit), headers={"Connection": "close"})
        self.limit = limit


def _detail(limit: int) -> str:
    return f"the request body is larger than this endpoint accepts ({limit} bytes)"


class BodyLimit:
    def __init__(self, app, default: int = MAX_JSON_BODY, by_path: dict[str, int] | None = None) -> None:
        self.app, self.default, self.by_path = app, default, by_path or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.by_path.get(scope["path"].rstrip("/") or "/", self.default)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            return await _refuse(scope, receive, send, limit)
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watched_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except BodyTooLarge:
            if started:  # a handler that answered while still reading: nothing left to say
                raise
            await _refuse(scope, receive, send, limit)


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP server refuses it before it gets here
    return None


async def _refuse(scope, receive, send, limit: int) -> None:
    response = problem_response(413, "Content Too Large", _detail(limit), kind="too-large",
                                instance=scope.get("path"), headers={"Connection": "close"})
    await response(scope, receive, send)
