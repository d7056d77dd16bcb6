"""Small pieces the routers share."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Query, Response

from colony import events as ev
from colony_admin import aggregates
from colony_admin.models import TokenOut

Cursor = Annotated[str | None, Query(description="next_cursor of the previous page", max_length=2000)]
Limit = Annotated[int, Query(ge=1, le=1000, description="Page size")]
# No NUL: PostgreSQL refuses it in a text parameter (a 500 instead of an empty page).
Prefix = Annotated[str | None, Query(description="Only names that start with this", max_length=320,
                                     pattern=r"^[^\x00]*$")]


def apply_all(state: aggregates.State, events: list[ev.Event]) -> dict[str, Any]:
    for event in events:
        state = aggregates.apply(state, event)
    assert state is not None
    return state


def set_etag(response: Response, version: int) -> None:
    response.headers["ETag"] = f'"{version}"'


def as_utc(value: datetime | str | None) -> datetime | None:
    """SQLite returns stored UTC times without their offset; put it back."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def token_out(row: dict[str, Any]) -> TokenOut:
    created = as_utc(row.get("created_at"))
    return TokenOut(id=row["id"], name=row["name"], role=row["role"], domain=row["domain"], revoked=row["revoked"],
                    created_by=row.get("created_by") or "", created_at=created)
