"""MTA-STS (RFC 8461): the record, the policy, which MX hosts a policy allows, and when a
cached policy is used or fetched again -- the whole decision, with no I/O.

Theory of operation
-------------------
A domain that publishes MTA-STS has a TXT record ``_mta-sts.<domain>`` (``v=STSv1;
id=<1-32 alphanumerics>``, §3.1) and a policy file at
``https://mta-sts.<domain>/.well-known/mta-sts.txt`` (§3.2)::

    version: STSv1
    mode: enforce            (enforce | testing | none)
    mx: mail.example.com     (one line per pattern; "*.example.net" matches one label)
    max_age: 604800          (seconds, at most 31557600)

Before a delivery the sender (``colony_edge.mta_sts`` does the I/O):

1. looks up the TXT record: ``parse_record`` gives its id, or None when there is no valid
   record (none, several ``v=STSv1`` records, or a malformed one -- §3.1: then the domain
   has no record);
2. asks ``PolicyCache.needs_fetch(domain, id, now)``: only a record whose id differs from
   the cached policy's (or no unexpired cached policy at all) means a fetch (§5.1);
3. fetches over HTTPS (certificate validated for ``mta-sts.<domain>``, no redirects, a
   size limit, a timeout; the I/O side) and parses with ``parse_policy``; a good policy is
   ``PolicyCache.store``-d for its ``max_age``; a failure is noted (``fetch_failed``) so the
   same record id is not fetched again for ``retry_after`` seconds;
4. uses ``PolicyCache.current(domain, now)``: the unexpired cached policy, whether or not
   the TXT lookup or the fetch just failed -- a cached policy outlives the loss of its
   record, which is what stops an attacker who strips the TXT record from downgrading
   delivery (§5.1, §10.2).  No policy at all: deliver as if the domain had no MTA-STS.

With a policy in ``enforce`` mode only MX hosts that ``Policy.allows`` may be used, and
only over TLS whose certificate is valid for the MX host name (RFC 6125 DNS-ID); a host
that fails either is not used, and no usable host is a temporary failure (the queue
retries).  ``testing`` delivers as without a policy and reports what enforce would have
refused; ``none`` is a policy that says "no MTA-STS" (how a domain withdraws one).

Time is an argument (``now``, seconds on any monotonic-enough clock).
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass

MAX_AGE_LIMIT = 31_557_600          # §3.2: one year
POLICY_MAX_BYTES = 64 * 1024        # §3.3 lets senders bound the body; real policies are < 1 KiB
WELL_KNOWN_PATH = "/.well-known/mta-sts.txt"
MODES = ("enforce", "testing", "none")

_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")
_MX_PATTERN = re.compile(r"^(\*\.)?([A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?\.)+"
                         r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.?$")


class PolicyError(ValueError):
    """A policy file that does not parse (the domain is then treated as having none)."""


def tlsrpt_name(domain: str) -> str:
    return f"_smtp._tls.{domain.rstrip('.').lower()}"


def parse_tlsrpt(txt_records: list[str]) -> tuple[str, ...]:
    """The report addresses (``rua``: mailto: or https: URIs) of the domain's TLSRPT record
    (RFC 8460 §3: exactly one record starting ``v=TLSRPTv1``, else none)."""
    candidates = [t for t in txt_records if t.startswith("v=TLSRPTv1")]
    if len(candidates) != 1:
        return ()
    for part in candidates[0].split(";")[1:]:
        key, sep, value = part.strip(" \t").partition("=")
        if sep and key.strip() == "rua":
            uris = tuple(u.strip() for u in value.split(",") if u.strip())
            return tuple(u for u in uris if u.lower().startswith(("mailto:", "https:")))
    return ()


def record_name(domain: str) -> str:
    return f"_mta-sts.{domain.rstrip('.').lower()}"


def policy_host(domain: str) -> str:
    return f"mta-sts.{domain.rstrip('.').lower()}"


def parse_record(txt_records: list[str]) -> str | None:
    """The id of the domain's STS record, from the TXT strings at ``_mta-sts.<domain>``
    (each record's strings already joined).  None: no valid record (§3.1: records not
    starting with ``v=STSv1`` are ignored; more than one that does means no record)."""
    candidates = [t for t in txt_records if t.startswith("v=STSv1")]
    if len(candidates) != 1:
        return None
    fields: dict[str, str] = {}
    for part in candidates[0].split(";"):
        part = part.strip(" \t")
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            return None
        fields.setdefault(key.strip(), value.strip())
    if fields.get("v") != "STSv1" or not _ID.match(fields.get("id", "")):
        return None
    return fields["id"]


@dataclass(frozen=True)
class Policy:
    id: str
    mode: str
    mx: tuple[str, ...]
    max_age: int

    @property
    def enforced(self) -> bool:
        return self.mode == "enforce"

    def allows(self, host: str) -> bool:
        """Whether ``host`` (an MX host name) matches one of the policy's mx patterns (§4.1):
        exact, or "*.example.com" for exactly one extra leftmost label; case-insensitive."""
        host = host.rstrip(".").lower()
        for pattern in self.mx:
            if pattern.startswith("*."):
                label, dot, rest = host.partition(".")
                if dot and label and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False


def policy_to_json(policy: Policy, expires: float) -> bytes:
    return json.dumps({"id": policy.id, "mode": policy.mode, "mx": list(policy.mx), "max_age": policy.max_age,
                       "expires": expires}).encode()


def policy_from_json(data: bytes) -> tuple[Policy, float]:
    """A shared cache entry: the policy and when it runs out (seconds since the epoch)."""
    raw = json.loads(data)
    if raw.get("mode") not in MODES:
        raise PolicyError(f"cached mode {raw.get('mode')!r}")
    return (Policy(id=str(raw["id"]), mode=raw["mode"], mx=tuple(str(m) for m in raw["mx"]),
                   max_age=int(raw["max_age"])), float(raw["expires"]))


def parse_policy(text: str, record_id: str) -> Policy:
    """The policy file (§3.2: ``key: value`` lines ended by CRLF or LF; unknown keys are
    ignored; ``mx`` may repeat, other keys count the first time).  Raises PolicyError."""
    fields: dict[str, str] = {}
    mx: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise PolicyError(f"not a 'key: value' line: {line[:80]!r}")
        key, value = key.strip(), value.strip(" \t")
        if key == "mx":
            if not _MX_PATTERN.match(value):
                raise PolicyError(f"mx {value[:80]!r} is not a host name or *.pattern")
            mx.append(value.rstrip(".").lower())
        else:
            fields.setdefault(key, value)
    if fields.get("version") != "STSv1":
        raise PolicyError("version is not STSv1")
    mode = fields.get("mode")
    if mode not in MODES:
        raise PolicyError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    age = fields.get("max_age", "")
    if not (age.isascii() and age.isdigit() and len(age) <= 10) or int(age) > MAX_AGE_LIMIT:
        raise PolicyError(f"max_age {age[:20]!r} is not a number of seconds up to {MAX_AGE_LIMIT}")
    if mode != "none" and not mx:
        raise PolicyError(f"a {mode} policy without mx lines")
    return Policy(id=record_id, mode=mode, mx=tuple(dict.fromkeys(mx)), max_age=int(age))


class PolicyCache:
    """Policies by domain until their max_age runs out; at most ``limit`` domains (the
    least recently used goes first), so memory stays bounded whatever the queue holds.

    A fetch that failed is not tried again for the same record id for ``retry_after``
    seconds: every queued message to a domain whose policy server is down would otherwise
    cost an HTTPS attempt (and its timeout)."""

    def __init__(self, limit: int = 10_000, retry_after: float = 300.0) -> None:
        self.limit, self.retry_after = limit, retry_after
        self._entries: OrderedDict[str, tuple[float, Policy]] = OrderedDict()
        self._failed: OrderedDict[str, tuple[str, float]] = OrderedDict()   # domain -> (record id, until)

    def expiry(self, domain: str) -> float | None:
        entry = self._entries.get(domain)
        return entry[0] if entry is not None else None

    def current(self, domain: str, now: float) -> Policy | None:
        entry = self._entries.get(domain)
        if entry is None:
            return None
        if entry[0] <= now:
            del self._entries[domain]
            return None
        self._entries.move_to_end(domain)
        return entry[1]

    def needs_fetch(self, domain: str, record_id: str | None, now: float) -> bool:
        """§5.1: fetch when there is a record and no unexpired policy with that id."""
        if record_id is None:
            return False
        failed = self._failed.get(domain)
        if failed is not None and failed[0] == record_id and failed[1] > now:
            return False
        cached = self.current(domain, now)
        return cached is None or cached.id != record_id

    def fetch_failed(self, domain: str, record_id: str, now: float) -> None:
        self._failed[domain] = (record_id, now + self.retry_after)
        self._failed.move_to_end(domain)
        while len(self._failed) > self.limit:
            self._failed.popitem(last=False)

    def store(self, domain: str, policy: Policy, now: float, expires: float | None = None) -> None:
        """``expires``: when a policy learnt elsewhere (another edge) runs out; default
        ``now + max_age`` for one fetched now."""
        self._failed.pop(domain, None)
        self._entries[domain] = (now + policy.max_age if expires is None else expires, policy)
        self._entries.move_to_end(domain)
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)


__all__ = ["MAX_AGE_LIMIT", "POLICY_MAX_BYTES", "WELL_KNOWN_PATH", "Policy", "PolicyCache", "PolicyError",
           "parse_policy", "parse_record", "policy_from_json", "policy_to_json", "parse_tlsrpt", "policy_host", "record_name", "tlsrpt_name"]
