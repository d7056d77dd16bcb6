"""The admin API over a real socket against what an attacker or a careless client sends:
the answer is a problem+json, memory stays bounded, and nothing is read that need not be."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import io
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from colony.bus import names
from colony.events import UsageRecorded
from colony.http_server import EmbeddedHttpServer
from colony_admin.auth import secrets
from colony_admin.models import Role
from colony_admin.bodylimit import MAX_JSON_BODY


@pytest.fixture
async def served(make_stack) -> AsyncIterator[tuple]:
    stack = await make_stack(api_max_import_bytes=64 * 1024)
    server = EmbeddedHttpServer(stack.app, "127.0.0.1", 0, linger=1.0)  # the closes below: no 5 s each
    port = await server.start()
    try:
        yield stack, port
    finally:
        await server.stop()


async def _exchange(port: int, head: bytes, body_chunks, timeout: float = 20.0) -> tuple[bytes, bool]:
    """Send ``head`` and then the body chunks while reading the answer, as a real client
    does; returns what was answered and whether the server closed the connection (a
    server that goes on reading the body leaves it open until ``timeout``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = b""

    async def read() -> bool:
        nonlocal answer
        try:
            while data := await reader.read(65536):
                answer += data
        except ConnectionError:
            pass
        return True

    async def write() -> None:
        writer.write(head)
        for chunk in body_chunks:
            if answer or reading.done():  # answered: writing on would only draw a reset
                break
            writer.write(chunk)
            await writer.drain()

    reading = asyncio.create_task(read())
    try:
        with contextlib.suppress(ConnectionError):
            await write()
        closed = await asyncio.wait_for(reading, timeout)
    except TimeoutError:
        closed = False
    finally:
        reading.cancel()
        writer.close()
    return answer, closed


def _problem(answer: bytes) -> tuple[int, dict[str, str], dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


async def test_an_unauthenticated_oversized_json_body_is_refused_unread(served):
    stack, port = served
    size = 8 * MAX_JSON_BODY
    head = (f"POST /v1/domains HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\n\r\n").encode()
    # Only the first 64 KiB: the answer must come before the body does.
    answer, closed = await _exchange(port, head, [b"[" * 65536])
    status, headers, problem = _problem(answer)
    assert status == 413 and headers["content-type"] == "application/problem+json", answer[:300]
    assert problem["status"] == 413 and str(MAX_JSON_BODY) in problem["detail"]
    assert headers.get("connection") == "close" and closed


async def test_a_chunked_body_is_cut_off_at_the_ceiling(served):
    stack, port = served
    head = (b"PATCH /v1/domains/acme.example HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nAuthorization: Bearer " + stack.sys_token.encode() + b"\r\n\r\n")
    piece = b" " * 65536
    chunk = b"%x\r\n" % len(piece) + piece + b"\r\n"
    # Just past the ceiling, then nothing: all of it is read, so the close is clean.
    answer, closed = await _exchange(port, head, [chunk] * (MAX_JSON_BODY // len(piece) + 2))
    status, headers, problem = _problem(answer)
    assert status == 413 and headers["content-type"] == "application/problem+json", answer[:300]
    assert problem["status"] == 413 and headers.get("connection") == "close" and closed


async def test_a_bulk_import_has_its_own_ceiling(served):
    stack, port = served
    auth = b"Authorization: Bearer " + stack.sys_token.encode() + b"\r\n"
    small = b"domain\r\nsmall-import.example\r\n"
    head = (b"POST /v1/imports HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\nConnection: close\r\n" + auth
            + b"Content-Length: %d\r\n\r\n" % len(small))
    answer, _ = await _exchange(port, head, [small])
    assert answer.startswith(b"HTTP/1.1 202"), answer[:300]

    big = b"domain\r\n" + b"".join(b"d%06d.example\r\n" % i for i in range(10_000))  # 150 kB > 64 kB
    head = (b"POST /v1/imports HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n" + auth
            + b"Content-Length: %d\r\n\r\n" % len(big))
    answer, _ = await _exchange(port, head, [big])
    status, headers, problem = _problem(answer)
    assert status == 413 and str(64 * 1024) in problem["detail"], answer[:300]


async def test_text_postgresql_cannot_store_is_refused_at_the_door(make_stack):
    """A NUL in a name, a search prefix or a cursor: on PostgreSQL the account was created
    (event log, directory) yet never listed -- the projection skipped its event -- and a
    prefix or a cursor holding one was a 500.  On both databases: refused, as a problem."""
    stack = await make_stack()
    c, h = stack.client, stack.as_(stack.sys_token)
    domain = f"nul-{uuid.uuid4().hex[:8]}.example"
    assert (await c.post("/v1/domains", json={"name": domain}, headers=h)).status_code == 201

    r = await c.post(f"/v1/domains/{domain}/accounts", json={"name": "bob", "real_name": "B\x00b"}, headers=h)
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "real_name"], r.text
    r = await c.put(f"/v1/domains/{domain}/branding", json={"display_name": "x\x00"}, headers=h)
    assert r.status_code == 422, r.text
    r = await c.post("/v1/tokens", json={"name": "t\x00", "role": "billing-reader"}, headers=h)
    assert r.status_code == 422, r.text

    r = await c.get("/v1/domains", params={"prefix": "\x00"}, headers=h)
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json", r.text
    nul_cursor = base64.urlsafe_b64encode(b"a\x00").decode()
    r = await c.get(f"/v1/domains/{domain}/accounts", params={"cursor": nul_cursor}, headers=h)
    assert r.status_code == 400, r.text
    assert (await c.get("/v1/tokens/%00", headers=h)).status_code == 404

    # "gold\n" passed the class-of-service name rule ($ matches before a final newline).
    r = await c.post("/v1/cos", json={"name": "gold\n"}, headers=h)
    assert r.status_code == 422, r.text

    r = await c.post(f"/v1/domains/{domain}/accounts", json={"name": "bob", "real_name": "Bob"}, headers=h)
    assert r.status_code == 201
    listed = (await c.get(f"/v1/domains/{domain}/accounts", headers=h)).json()["items"]
    assert [a["name"] for a in listed] == ["bob"]


async def test_wrong_secrets_sent_with_a_token_id_do_not_lock_its_holder_out(make_stack):
    """Ten wrong secrets for the system admin's token id, from ten addresses, then the real
    token from an eleventh: it works (the addresses that guessed are the ones refused)."""
    stack = await make_stack()
    token_id, _ = secrets.split_token(stack.sys_token)

    def from_address(host: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=stack.app, client=(host, 40000)),
                                 base_url="http://admin.test")

    for i in range(12):
        async with from_address(f"192.0.2.{i + 1}") as attacker:
            r = await attacker.get("/v1/whoami", headers=stack.as_(f"col_{token_id}_wrong{i}"))
            assert r.status_code == 401, r.text
    async with from_address("198.51.100.7") as holder:
        r = await holder.get("/v1/whoami", headers=stack.as_(stack.sys_token))
        assert r.status_code == 200 and r.json()["token_id"] == token_id, r.text

    async with from_address("203.0.113.9") as guesser:  # one address guessing is still slowed down
        codes = [(await guesser.get("/v1/whoami", headers=stack.as_(f"col_{token_id}_x{i}"))).status_code
                 for i in range(12)]
        assert codes[:10] == [401] * 10 and codes[10:] == [429, 429]


async def test_the_billing_csv_does_not_carry_formulas(make_stack):
    """Account names may begin with = + or - (RFC 5322 atext) and domain administrators
    choose them; the usage CSV is opened in spreadsheets, which would run such a cell."""
    stack = await make_stack()
    domain = f"csv-{uuid.uuid4().hex[:8]}.example"
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    for account in ("=1+2", "-2+3", "+cmd|'/c'!a0", "plain"):
        event = UsageRecorded(domain=domain, account=f"{account}@{domain}", metric="messages_in", amount=1,
                              at=at, source="mailstore-1")
        last = (await stack.nc.jetstream().publish(names.usage_subject(domain), event.encode())).seq
    assert await stack.ctx.usage_projection.wait_for(last, timeout=30)
    r = await stack.client.get("/v1/usage", headers=stack.as_(stack.sys_token), params={
        "from": (at - timedelta(hours=1)).isoformat(), "to": (at + timedelta(hours=1)).isoformat(),
        "domain": domain, "per_account": "true", "format": "csv"})
    assert r.status_code == 200, r.text
    accounts = sorted(row["account"] for row in csv.DictReader(io.StringIO(r.text)) if row["account"])
    assert accounts == sorted([f"'=1+2@{domain}", f"'-2+3@{domain}", f"'+cmd|'/c'!a0@{domain}", f"plain@{domain}"])


async def test_numbers_beyond_64_bits_are_refused_and_the_read_model_goes_on(make_stack):
    """quota_bytes=10**30 was accepted (a domain administrator may set it): on SQLite the
    projection then failed on that event for ever, so nothing created after it was listed."""
    stack = await make_stack()
    c, h = stack.client, stack.as_(stack.sys_token)
    domain = f"big-{uuid.uuid4().hex[:8]}.example"
    assert (await c.post("/v1/domains", json={"name": domain}, headers=h)).status_code == 201
    admin = stack.as_(await stack.token(Role.DOMAIN_ADMIN, domain))
    r = await c.post(f"/v1/domains/{domain}/accounts", json={"name": "huge", "quota_bytes": 10**30}, headers=admin)
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "quota_bytes"], r.text
    r = await c.post("/v1/cos", json={"name": f"c{uuid.uuid4().hex[:6]}", "limits": {"max_message_bytes": 2**64}},
                     headers=h)
    assert r.status_code == 422, r.text
    r = await c.post("/v1/imports", json=[{"domain": domain, "account": "huge2", "quota_bytes": 10**30}], headers=h)
    assert r.status_code == 202 and r.json()["failed"] == 1, r.text

    r = await c.post(f"/v1/domains/{domain}/accounts", json={"name": "fine", "quota_bytes": 2**63 - 1}, headers=admin)
    assert r.status_code == 201, r.text
    listed = (await c.get(f"/v1/domains/{domain}/accounts", headers=admin)).json()["items"]
    assert [a["name"] for a in listed] == ["fine"]


async def test_a_period_at_the_ends_of_the_calendar_is_400(stack):
    """9999-12-31 west of UTC and 0001-01-01 east of it have no UTC datetime: was a 500."""
    h = stack.as_(stack.sys_token)
    for start, end in (("9999-12-31T23:59:59-14:00", "9999-12-31T23:59:59+00:00"),
                       ("0001-01-01T00:00:00+14:00", "2020-01-01T00:00:00Z")):
        r = await stack.client.get("/v1/usage", params={"from": start, "to": end}, headers=h)
        assert r.status_code == 400 and "out of range" in r.json()["detail"], r.text


async def test_failed_token_checks_from_one_ipv6_64_count_together(stack):
    """Each address of a /64 used to get its own budget of ten failures."""
    codes = []
    for i in range(12):
        transport = httpx.ASGITransport(app=stack.app, client=(f"2001:db8:1:2::{i + 1:x}", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as http:
            codes.append((await http.get("/v1/whoami", headers=stack.as_(f"col_{i:016x}_wrong"))).status_code)
    assert codes[:10] == [401] * 10 and codes[10:] == [429, 429], codes
    transport = httpx.ASGITransport(app=stack.app, client=("2001:db8:1:3::1", 40000))  # the next /64
    async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as http:
        assert (await http.get("/v1/whoami", headers=stack.as_(stack.sys_token))).status_code == 200
