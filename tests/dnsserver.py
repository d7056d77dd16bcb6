"""A small authoritative DNS server on loopback for tests (dnslib), so code under test uses
its real resolver (dnspython) against real UDP/TCP DNS instead of a mocked one.

Records are zone-file lines, added and removed while the server runs::

    dns = LoopbackDNS(); dns.start()
    dns.add("acme.example. 300 IN TXT \\"colony-verify=abc\\"")
    dns.add("2.0.0.127.zen.example. IN A 127.0.0.2")
    settings = Settings(dns_servers=dns.address)      # "127.0.0.1:<port>"

A name with no records answers NXDOMAIN; a name with records of another type answers
NOERROR with no answer (as a real authoritative server does).
"""

from __future__ import annotations

import threading

from dnslib import QTYPE, RCODE, RR, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer


class _ZoneResolver(BaseResolver):
    def __init__(self) -> None:
        self.records: list[RR] = []
        self.lock = threading.Lock()
        self.queries: list[tuple[str, str]] = []

    def resolve(self, request: DNSRecord, handler) -> DNSRecord:
        reply = request.reply()
        qname = request.q.qname
        qtype = QTYPE[request.q.qtype]
        self.queries.append((str(qname).rstrip(".").lower(), qtype))
        with self.lock:
            same_name = [rr for rr in self.records if rr.rname == qname]
        for rr in same_name:
            if qtype in ("ANY", QTYPE[rr.rtype]) or QTYPE[rr.rtype] == "CNAME":
                reply.add_answer(rr)
        if not same_name:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


class LoopbackDNS:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.resolver = _ZoneResolver()
        self._udp: DNSServer | None = None
        self._tcp: DNSServer | None = None
        self.port = 0

    def start(self) -> LoopbackDNS:
        # UDP on a free port, then TCP on the same number (large TXT answers fall back to TCP).
        for _ in range(20):
            quiet = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
            udp = DNSServer(self.resolver, port=0, address=self.host, logger=quiet)
            port = udp.server.server_address[1]
            try:
                tcp = DNSServer(self.resolver, port=port, address=self.host, tcp=True, logger=quiet)
            except OSError:
                udp.server.server_close()
                continue
            self._udp, self._tcp, self.port = udp, tcp, port
            udp.start_thread()
            tcp.start_thread()
            return self
        raise RuntimeError("no free port pair for the loopback DNS server")

    def stop(self) -> None:
        for server in (self._udp, self._tcp):
            if server is not None:
                server.stop()
                server.server.server_close()

    @property
    def address(self) -> str:
        """The value for ``Settings.dns_servers``."""
        return f"{self.host}:{self.port}"

    def add(self, *zone_lines: str) -> None:
        rrs = [rr for line in zone_lines for rr in RR.fromZone(line)]
        with self.resolver.lock:
            self.resolver.records.extend(rrs)

    def add_txt(self, name: str, text: str, ttl: int = 60) -> None:
        """A TXT record of any length, split into 255-octet strings as zone files do (DKIM keys)."""
        chunks = [text[i:i + 255] for i in range(0, len(text), 255)] or [""]
        quoted = " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)
        self.add(f"{name.rstrip('.')}. {ttl} IN TXT {quoted}")

    def remove(self, name: str, rtype: str | None = None) -> None:
        name = name.rstrip(".").lower()
        with self.resolver.lock:
            self.resolver.records = [
                rr for rr in self.resolver.records
                if not (str(rr.rname).rstrip(".").lower() == name and (rtype is None or QTYPE[rr.rtype] == rtype))]

    @property
    def queries(self) -> list[tuple[str, str]]:
        return list(self.resolver.queries)
