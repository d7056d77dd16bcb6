"""DNS block lists (RFC 5782) with weights and a score threshold.

Each configured zone has a weight (``"zen.example:3, bl.example:1.5"``; default 1).  A
client address is looked up in every zone at once; a zone that lists it adds its weight,
and the client is refused when the sum reaches the threshold -- so one aggressive list
alone need not decide, as with SpamAssassin-style scoring.

A listing is an A record in 127.0.0.0/8 other than 127.0.0.1 (RFC 5782 §5: 127.0.0.2 and up
are listings).  Answers of 127.255.255.0/24 are the big lists' error codes ("query refused",
"over quota") and answers outside 127/8 are misconfiguration: neither counts.  A list that
does not answer in time does not count either (fail open: a slow list must not stop mail),
but the miss is reported, so the operator sees it on ``/metrics``.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.exception
import dns.resolver

from colony_edge.security.networks import IPAddress, parse_address


@dataclass(frozen=True)
class DnsblZone:
    zone: str
    weight: float = 1.0


def parse_zones(text: str, key: str = "dnsbl_zones") -> list[DnsblZone]:
    zones = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, weight = item.partition(":")
        try:
            zones.append(DnsblZone(name.strip().strip(".").lower(), float(weight) if weight else 1.0))
        except ValueError:
            raise ValueError(f"{key}: {item!r}: write zone[:weight], e.g. zen.example:3") from None
    return zones


def query_name(address: IPAddress, zone: str) -> str:
    """``192.0.2.1`` in ``bl.example`` -> ``1.2.0.192.bl.example``; IPv6 by reversed nibbles."""
    if address.version == 4:
        reversed_part = ".".join(reversed(str(address).split(".")))
    else:
        reversed_part = ".".join(reversed(address.exploded.replace(":", "")))
    return f"{reversed_part}.{zone}"


@dataclass
class DnsblResult:
    score: float = 0.0
    listed: list[tuple[str, str]] = field(default_factory=list)   # (zone, answer)
    failed: list[str] = field(default_factory=list)               # zones that did not answer

    def describe(self) -> str:
        return ", ".join(f"{zone} ({answer})" for zone, answer in self.listed)


def _is_listing(answer: str) -> bool:
    ip = ipaddress.IPv4Address(answer)
    return ip in ipaddress.IPv4Network("127.0.0.0/8") and ip != ipaddress.IPv4Address("127.0.0.1") \
        and ip not in ipaddress.IPv4Network("127.255.255.0/24")


async def check(resolver: dns.asyncresolver.Resolver, address: IPAddress | str, zones: list[DnsblZone]) -> DnsblResult:
    if isinstance(address, str):
        address = parse_address(address)
    result = DnsblResult()

    async def one(zone: DnsblZone) -> None:
        try:
            answer = await resolver.resolve(query_name(address, zone.zone), "A")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return
        except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.exception.DNSException):
            result.failed.append(zone.zone)
            return
        codes = [r.address for r in answer if _is_listing(r.address)]
        if codes:
            result.score += zone.weight
            result.listed.append((zone.zone, codes[0]))

    await asyncio.gather(*(one(z) for z in zones))
    return result
