"""The one way Colony makes a DNS resolver (dnspython), so every lookup -- domain
verification, DNSBL, SPF/DKIM/DMARC, MX -- obeys ``Settings.dns_servers``.

Empty ``dns_servers`` means the system's resolver (/etc/resolv.conf); tests and closed
networks name servers explicitly, e.g. ``127.0.0.1:5353`` or ``10.0.0.53, 10.0.0.54``.
"""

from __future__ import annotations

import dns.asyncresolver
import dns.resolver

from colony.settings import Settings


def parse_servers(value: str) -> list[tuple[str, int]]:
    """``"127.0.0.1:5353, [::1]:53, 10.0.0.1"`` -> [(host, port), ...]."""
    servers = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") else 53
        elif item.count(":") == 1:
            host, port_text = item.split(":")
            port = int(port_text)
        else:
            host, port = item, 53
        servers.append((host, port))
    return servers


def _configure(resolver: dns.resolver.Resolver, settings: Settings) -> None:
    servers = parse_servers(settings.dns_servers)
    if servers:
        resolver.nameservers = [host for host, _ in servers]
        resolver.nameserver_ports = {host: port for host, port in servers}
        resolver.port = servers[0][1]
    resolver.lifetime = settings.dns_timeout
    resolver.timeout = settings.dns_timeout


def make_resolver(settings: Settings) -> dns.asyncresolver.Resolver:
    resolver = dns.asyncresolver.Resolver(configure=not parse_servers(settings.dns_servers))
    _configure(resolver, settings)
    return resolver


def make_sync_resolver(settings: Settings) -> dns.resolver.Resolver:
    """For libraries that only take a blocking resolver (e.g. pyspf/dkimpy via their DNS hooks)."""
    resolver = dns.resolver.Resolver(configure=not parse_servers(settings.dns_servers))
    _configure(resolver, settings)
    return resolver
