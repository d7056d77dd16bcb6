"""MTA-STS on the edge: the I/O around ``colony.outbound.mta_sts`` (the TXT lookup, the
HTTPS fetch of the policy, the per-edge cache) and the TLS context deliveries under an
enforced policy use.

The fetch is HTTP/1.1 with h11 over an asyncio TLS connection rather than an HTTP client
library, because the policy host's address must come from ``colony.dns`` (the cluster's
resolvers, ``Settings.dns_servers``) while the certificate is checked for the host *name*
``mta-sts.<domain>``; h11 keeps the HTTP rules (framing, chunked bodies) out of our code.
RFC 8461 §3.3: the certificate must be valid (system store, or ``outbound_tls_ca_file``),
3xx redirects are not followed, only ``200`` with ``text/plain`` counts, the body is
bounded (``POLICY_MAX_BYTES``) and the whole fetch has a deadline (``mta_sts_fetch_timeout``).

The cache has two levels: in memory per edge (every lookup), and the ``mta_sts`` bucket
on the bus, shared by the edges, which a fetched policy is written to.  An edge asks the
bucket when its memory has nothing for a domain (and remembers a miss for five minutes, so
domains without MTA-STS cost no bus round trip per message).  So a policy outlives an
edge's restart, and an edge that never delivered to a domain starts with what another edge
learnt: an attacker who strips the TXT record cannot downgrade delivery by waiting for a
restart (RFC 8461 §10.2).  Expiry is wall-clock time (``expires`` in the entry), as edges
compare it with each other's.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import OrderedDict

import dns.asyncresolver
import dns.exception
import dns.resolver
import h11

from nats.js.errors import KeyNotFoundError

from colony.bus import names
from colony.bus.tokens import to_token
from colony.outbound.mta_sts import (POLICY_MAX_BYTES, WELL_KNOWN_PATH, Policy, PolicyCache, PolicyError,
                                     parse_policy, parse_record, parse_tlsrpt, policy_from_json, policy_host,
                                     policy_to_json, record_name, tlsrpt_name)
from colony.settings import ConfigError, Settings

log = logging.getLogger("colony.edge.mta_sts")


class FetchError(Exception):
    """The policy could not be fetched (the reason is the message)."""


def verified_tls_context(settings: Settings) -> ssl.SSLContext:
    """TLS 1.2+ with certificate and host name checks: the system store, or the CA bundle
    in ``outbound_tls_ca_file`` (a private CA; tests use trustme's)."""
    ca_file = settings.outbound_tls_ca_file
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        if not ca_file:
            raise
        raise ConfigError(f"COLONY_OUTBOUND_TLS_CA_FILE={ca_file}: cannot load it ({exc}); point it at a PEM "
                          "bundle of CA certificates, or unset it to use the system's trust store") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class MtaSts:
    """``await policy(domain)``: the policy to deliver under, or None (no MTA-STS)."""

    SHARED_MISS_SECONDS = 300.0
    # A domain's TXT record (or its absence) is taken from the last lookup for this long,
    # when the resolver caches answers at all: through dnspython's cache every message
    # still cost a lookup (the cache key, a raised and caught NXDOMAIN for the many
    # domains without a record), ~6% of the edge's CPU in the outbound benchmark.  A second
    # adds nothing to how long a changed record goes unseen next to the answers' TTLs.
    RECORD_MEMO_SECONDS = 1.0
    RECORD_MEMO_MAX = 10_000

    def __init__(self, settings: Settings, resolver: dns.asyncresolver.Resolver, js=None, clock=time.time) -> None:
        self.settings, self.resolver, self.js, self.clock = settings, resolver, js, clock
        self.cache = PolicyCache()
        self.tls = verified_tls_context(settings)
        self._fetching: dict[str, asyncio.Future] = {}   # one fetch per domain at a time
        self._bucket = None
        self._shared_miss: OrderedDict[str, float] = OrderedDict()   # domain -> don't ask the bucket until
        self._records: dict[str, tuple[float, str | None]] = {}       # domain -> (until, record id)

    async def policy(self, domain: str) -> Policy | None:
        domain = domain.rstrip(".").lower()
        await self._load_shared(domain)
        try:
            record_id = await self._record_id(domain)
        except dns.exception.DNSException as exc:
            # A failed lookup is not "no record": keep using what the cache has (§5.1).
            log.info("MTA-STS record of %s not looked up (%s); using the cached policy if any", domain, exc)
            return self.cache.current(domain, self.clock())
        if self.cache.needs_fetch(domain, record_id, self.clock()):
            running = self._fetching.get(domain)
            if running is not None:
                await asyncio.shield(running)
            else:
                future = asyncio.get_running_loop().create_future()
                self._fetching[domain] = future
                try:
                    policy = await self._fetch(domain, record_id)
                    self.cache.store(domain, policy, self.clock())
                    await self._save_shared(domain)
                    log.info("MTA-STS policy of %s: id %s, mode %s, mx %s, max_age %d", domain, policy.id,
                             policy.mode, ",".join(policy.mx), policy.max_age)
                except (FetchError, PolicyError) as exc:
                    self.cache.fetch_failed(domain, record_id, self.clock())
                    log.warning("MTA-STS policy of %s (id %s) not fetched: %s; not tried again for %.0f s", domain,
                                record_id, exc, self.cache.retry_after)
                finally:
                    future.set_result(None)
                    del self._fetching[domain]
        return self.cache.current(domain, self.clock())

    # --- the shared cache (the mta_sts bucket) ----------------------------------------------

    async def _open_bucket(self):
        if self._bucket is None and self.js is not None:
            self._bucket = await self.js.key_value(names.BUCKET_MTA_STS)
        return self._bucket

    async def _load_shared(self, domain: str) -> None:
        now = self.clock()
        if self.js is None or self.cache.current(domain, now) is not None or self._shared_miss.get(domain, 0) > now:
            return
        try:
            bucket = await self._open_bucket()
            policy, expires = policy_from_json((await bucket.get(to_token(domain))).value)
        except KeyNotFoundError:
            policy, expires = None, 0.0
        except Exception as exc:   # the bus unreachable, or an entry we cannot read: as if none
            log.info("MTA-STS policy of %s not read from the bus: %r", domain, exc)
            policy, expires = None, 0.0
        if policy is not None and expires > now:
            self.cache.store(domain, policy, now, expires=expires)
            return
        self._shared_miss[domain] = now + self.SHARED_MISS_SECONDS
        self._shared_miss.move_to_end(domain)
        while len(self._shared_miss) > self.cache.limit:
            self._shared_miss.popitem(last=False)

    async def _save_shared(self, domain: str) -> None:
        policy, expires = self.cache.current(domain, self.clock()), self.cache.expiry(domain)
        if self.js is None or policy is None or expires is None:
            return
        self._shared_miss.pop(domain, None)
        try:
            await (await self._open_bucket()).put(to_token(domain), policy_to_json(policy, expires))
        except Exception as exc:   # the policy still holds on this edge
            log.warning("MTA-STS policy of %s not shared on the bus: %r", domain, exc)

    async def report_addresses(self, domain: str) -> tuple[str, ...]:
        """Where the domain wants TLS failures reported (TLSRPT, RFC 8460), for the log line
        of a failure; () when it publishes nothing or the lookup fails.  Reports themselves
        are not sent."""
        try:
            answer = await self.resolver.resolve(tlsrpt_name(domain), "TXT")
        except dns.exception.DNSException:
            return ()
        return parse_tlsrpt([b"".join(r.strings).decode("ascii", "replace") for r in answer])

    async def _record_id(self, domain: str) -> str | None:
        now = self.clock()
        memo = self._records.get(domain)
        if memo is not None and memo[0] > now:
            return memo[1]
        ttl = None
        try:
            answer = await self.resolver.resolve(record_name(domain), "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            record_id = None
        else:
            record_id = parse_record([b"".join(r.strings).decode("ascii", "replace") for r in answer])
            ttl = answer.rrset.ttl if answer.rrset is not None else None
        # Failed lookups raise and are not remembered; neither is anything when the resolver
        # caches nothing (a test changing DNS under it) or the record says not to (TTL 0).
        if self.resolver.cache is not None and ttl != 0:
            if len(self._records) >= self.RECORD_MEMO_MAX:
                self._records.clear()
            self._records[domain] = (now + self.RECORD_MEMO_SECONDS, record_id)
        return record_id

    async def _fetch(self, domain: str, record_id: str) -> Policy:
        host = policy_host(domain)
        try:
            return await asyncio.wait_for(self._get(host, record_id), self.settings.mta_sts_fetch_timeout)
        except asyncio.TimeoutError:
            raise FetchError(f"https://{host}{WELL_KNOWN_PATH} took longer than "
                             f"{self.settings.mta_sts_fetch_timeout:g}s")

    async def _addresses(self, host: str) -> list[str]:
        ips: list[str] = []
        for kind in ("A", "AAAA"):
            try:
                ips += [r.to_text() for r in await self.resolver.resolve(host, kind)]
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                continue
            except dns.exception.DNSException as exc:
                raise FetchError(f"{host}: {exc}")
        if not ips:
            raise FetchError(f"{host} has no address")
        return ips

    async def _get(self, host: str, record_id: str) -> Policy:
        last = "no address"
        for ip in await self._addresses(host):
            try:
                reader, writer = await asyncio.open_connection(ip, self.settings.mta_sts_port, ssl=self.tls,
                                                               server_hostname=host)
            except (OSError, ssl.SSLError) as exc:
                last = f"{host} [{ip}]: {exc}"
                continue
            try:
                text = await self._exchange(reader, writer, host)
            except OSError as exc:   # a reset or a TLS alert mid-answer (ssl.SSLError is one)
                # Not a FetchError, this escaped policy() and failed the delivery instead
                # of meaning "no policy", and the next message fetched again.
                raise FetchError(f"{host} [{ip}]: {exc!r}") from exc
            finally:
                writer.close()
            return parse_policy(text, record_id)
        raise FetchError(last)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> str:
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=16 * 1024)
        writer.write(conn.send(h11.Request(method="GET", target=WELL_KNOWN_PATH, headers=[
            ("Host", host), ("User-Agent", "colony-mta-sts"), ("Accept", "text/plain"), ("Connection", "close")])))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
        body = bytearray()
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise FetchError(f"bad HTTP from {host}: {exc}")
            if event is h11.NEED_DATA:
                data = await reader.read(16 * 1024)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                if event.status_code != 200:   # 3xx included: §3.3 forbids following redirects
                    raise FetchError(f"{host} answered HTTP {event.status_code}")
                ctype = dict(event.headers).get(b"content-type", b"").split(b";")[0].strip().lower()
                if ctype != b"text/plain":
                    raise FetchError(f"{host} served {ctype.decode('latin-1')!r}, not text/plain")
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > POLICY_MAX_BYTES:
                    raise FetchError(f"policy of {host} is larger than {POLICY_MAX_BYTES} bytes")
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        try:
            return body.decode("ascii")
        except UnicodeDecodeError:
            raise FetchError(f"policy of {host} is not ASCII text")


__all__ = ["FetchError", "MtaSts", "verified_tls_context"]
