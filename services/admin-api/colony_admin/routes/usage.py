"""/v1/usage: metering summed per domain (and account) for a billing period, as JSON or CSV."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response

from colony_admin import queries
from colony_admin.auth import roles
from colony_admin.deps import Admin, Caller
from colony_admin.models import UsageReport, UsageRow
from colony_admin.problems import COMMON_RESPONSES, BadRequest
from colony_admin.routes.domains import domain_name

router = APIRouter(prefix="/v1", tags=["usage"], responses=COMMON_RESPONSES)

CSV_COLUMNS = ("domain", "account", *queries.USAGE_METRICS)


def spreadsheet_safe(value):
    """A text cell a spreadsheet would run as a formula (=, +, -, @, tab, CR first: OWASP's
    CSV injection) gets a leading apostrophe.  Account names may start with = + or - (RFC
    5322 atext), and a domain administrator chooses them; this file is opened by billing."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _utc(value: datetime) -> datetime:
    # Stored times are UTC (SQLite keeps no offset), so compare in UTC.
    try:
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    except OverflowError:  # 9999-12-31T23:59-14:00 is past the last datetime in UTC (was a 500)
        raise BadRequest(f"{value.isoformat()} is out of range in UTC") from None


@router.get(
    "/usage", response_model=UsageReport, summary="Usage per domain (and account) in [from, to)",
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}},
                     "description": "JSON report, or CSV with columns " + ", ".join(CSV_COLUMNS)}},
)
async def usage(
    ctx: Admin, who: Caller,
    start: Annotated[datetime, Query(alias="from", description="Start of the period (inclusive), ISO 8601")],
    end: Annotated[datetime, Query(alias="to", description="End of the period (exclusive), ISO 8601")],
    domain: Annotated[str | None, Query(max_length=320, description="One domain; omit for all")] = None,
    per_account: Annotated[bool, Query(description="Add one row per account")] = False,
    format: Annotated[Literal["json", "csv"], Query(description="json or csv")] = "json",
):
    dom = domain_name(domain) if domain else None
    roles.require_usage(who, dom)
    start, end = _utc(start), _utc(end)
    if end <= start:
        raise BadRequest("'to' must be after 'from'")
    rows = await ctx.db(queries.usage_report, start, end, dom, per_account)
    if format == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: spreadsheet_safe(v) for k, v in {**row, "account": row["account"] or ""}.items()})
        return Response(buf.getvalue(), media_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="usage.csv"'})
    return UsageReport(start=start, end=end, domain=dom, rows=[UsageRow(**r) for r in rows])
