"""/v1/domains/{domain}/dkim: a domain's DKIM signing key (RFC 6376).

``POST`` makes a new key (a rotation, if there was one) under a new selector and returns
the TXT record to publish; ``GET`` shows the current record and whether DNS publishes it.
The private key goes to the ``dkim_keys`` bucket (history 1: a rotated-out key is gone) and
never into PROVISIONING or AUDIT; the edges sign with it at delivery.  Until the record is
published, receivers see a signature they cannot verify (DKIM "temperror"/"permerror"),
which DMARC treats as unsigned: publish first, or rotate on a quiet day.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import dns.exception
import dns.resolver
from fastapi import APIRouter, Request
from nats.js.errors import KeyNotFoundError
from pydantic import BaseModel

from colony.bus import names
from colony.bus.tokens import to_token
from colony.dns import make_resolver
from colony.outbound.signing import DkimKey, from_json, generate_key, to_json
from colony_admin import aggregates
from colony_admin.auth import roles
from colony_admin.deps import Admin, Caller, client_addr
from colony_admin.problems import COMMON_RESPONSES, NotFound
from colony_admin.routes.domains import domain_name

router = APIRouter(prefix="/v1/domains/{domain}", tags=["dkim"], responses=COMMON_RESPONSES)


class DkimRecord(BaseModel):
    """``{"domain": "acme.example", "selector": "c2026112514", "record_name":
    "c2026112514._domainkey.acme.example", "record_value": "v=DKIM1; k=rsa; p=MIIB…",
    "published": false, "lookup_error": null}``"""

    domain: str
    selector: str
    record_name: str
    record_value: str
    published: bool
    lookup_error: str | None = None


async def _published(ctx, key: DkimKey) -> tuple[bool, str | None]:
    wanted = key.dns_record().replace(" ", "")
    try:
        answer = await make_resolver(ctx.settings).resolve(key.dns_name(), "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return False, None
    except dns.exception.DNSException as exc:
        return False, f"DNS lookup of {key.dns_name()} TXT failed ({type(exc).__name__}); try again"
    # A long record arrives split in several character-strings: together they are one value.
    return any(b"".join(r.strings).decode(errors="replace").replace(" ", "") == wanted for r in answer), None


async def _record(ctx, key: DkimKey) -> DkimRecord:
    published, error = await _published(ctx, key)
    return DkimRecord(domain=key.domain, selector=key.selector, record_name=key.dns_name(),
                      record_value=key.dns_record(), published=published, lookup_error=error)


async def _bucket(ctx):
    return await ctx.js.key_value(names.BUCKET_DKIM_KEYS)


@router.post("/dkim", response_model=DkimRecord, status_code=201,
             summary="Make (or rotate) the domain's DKIM key; shows the DNS record to publish")
async def create_dkim_key(domain: str, request: Request, ctx: Admin, who: Caller) -> DkimRecord:
    domain = domain_name(domain)
    roles.require_domain(who, domain)
    loaded = await ctx.provisioning.load(names.AGG_DOMAIN, domain)
    aggregates.require(loaded.state, f"domain {domain}")
    selector = "c" + datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    key = await asyncio.to_thread(generate_key, domain, selector)   # RSA generation is CPU work
    await (await _bucket(ctx)).put(to_token(domain), to_json(key))
    await ctx.provisioning.audit(who, "domain.dkim_rotate", domain, domain=domain, remote_addr=client_addr(request),
                                 detail={"selector": selector})
    return await _record(ctx, key)


@router.get("/dkim", response_model=DkimRecord, summary="The domain's DKIM record and whether DNS publishes it")
async def get_dkim_key(domain: str, ctx: Admin, who: Caller) -> DkimRecord:
    domain = domain_name(domain)
    roles.require_domain(who, domain)
    try:
        entry = await (await _bucket(ctx)).get(to_token(domain))
    except KeyNotFoundError:
        raise NotFound(f"domain {domain} has no DKIM key; POST /v1/domains/{domain}/dkim makes one") from None
    return await _record(ctx, from_json(entry.value))
