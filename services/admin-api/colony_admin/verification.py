"""DNS proof that whoever claims a name controls it, as hosted mail providers ask.

A domain administrator may add a domain alias only for a name whose DNS they control, so no
tenant can claim a future customer's domain or a public provider's and intercept its mail
once it flows.  System administrators skip the proof.

The record: a TXT record **at the name itself** (like other providers' site verification)::

    other-name.example.  IN TXT  "colony-verification=<token>"

The token binds the claimant domain, its incarnation (the PROVISIONING sequence of its
creation, so a deleted and re-created domain of the same name — perhaps another customer —
does not inherit its predecessor's proofs) and the claimed name.  It is derived, not stored:
every admin-api instance computes the same one, and it proves nothing by itself (only its
presence in the name's DNS does), so it need not be secret.  The record may stay published;
removing it later does not remove the alias.
"""

from __future__ import annotations

import hashlib

import dns.asyncresolver
import dns.exception
import dns.resolver

RECORD_PREFIX = "colony-verification="


class LookupFailed(Exception):
    """DNS did not answer (timeout, SERVFAIL): neither proof nor disproof; try again later."""


def token(claimant: str, incarnation: int, name: str) -> str:
    material = f"colony-verification\0{claimant}\0{incarnation}\0{name}".encode()
    return hashlib.sha256(material).hexdigest()[:32]


def record_value(tok: str) -> str:
    return f"{RECORD_PREFIX}{tok}"


async def published(resolver: dns.asyncresolver.Resolver, name: str, tok: str) -> bool:
    """Whether ``name`` has the TXT record ``colony-verification=<tok>``."""
    try:
        answer = await resolver.resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return False
    except dns.exception.DNSException as exc:  # timeout, SERVFAIL from every server, a bad answer
        raise LookupFailed(f"DNS lookup of {name} TXT failed ({type(exc).__name__}); try again") from None
    wanted = record_value(tok).encode()
    # A TXT record may arrive split in several character-strings: they form one value.
    return any(b"".join(rdata.strings).strip() == wanted for rdata in answer)
