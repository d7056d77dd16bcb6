"""Every port `colony up` opens is derived from one base port, so two clusters can run side
by side on one machine (``--base-port``).  With the default base 2500::

    2500  NATS clients             2501  NATS monitoring (HTTP)
    2525  SMTP (edge #1; edge #n: 2525 + 1000*(n-1), and so for every edge port)
    2587  submission (edge)        2565  SMTPS (edge)
    2543  IMAP (edge)              2593  IMAPS (edge)
    2510  POP3 (edge)              2595  POP3S (edge)
    2580  autoconfig HTTP (edge: Thunderbird autoconfig, Outlook Autodiscover)
    2560  SIP UDP+TCP (sipfarm member #1; member #n: 2560 + 1000*(n-1), and so for every SIP port)
    2561  SIP over TLS            2562  SIP over WebSocket (ws)   2563  SIP over WSS
    2564  SIP inner relay (UDP, between farm members only)
    2544  inner IMAP (mail store #1; store #n: 2544 + 1000*(n-1): sessions edges hand over)
    2511  inner POP3 (mail store #1, likewise)
    2570+ admin API (one per admin-api instance, up to 10)
    2600+ ops listeners (health/metrics), one per instance
    2590  Prometheus (`colony up --monitoring`)
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

DEFAULT_BASE_PORT = 2500
EDGE_PORT_STRIDE = 1000  # edge #n listens on its ports + 1000*(n-1)


@dataclass(frozen=True)
class PortPlan:
    base: int = DEFAULT_BASE_PORT

    @property
    def nats(self) -> int:
        return self.base

    @property
    def nats_monitor(self) -> int:
        return self.base + 1

    @property
    def prometheus(self) -> int:
        """`colony up --monitoring`'s Prometheus (web UI and query API)."""
        return self.base + 90

    def admin_api(self, index: int) -> int:
        return self.base + 70 + index

    def ops(self, index: int) -> int:
        return self.base + 100 + index

    def smtp(self, edge_index: int) -> int:
        """The SMTP MX of edge #edge_index+1: each edge gets its own block of 1000 ports."""
        return self.base + 25 + EDGE_PORT_STRIDE * edge_index

    def imap(self, edge_index: int) -> int:
        return self.base + 43 + EDGE_PORT_STRIDE * edge_index

    def imaps(self, edge_index: int) -> int:
        return self.base + 93 + EDGE_PORT_STRIDE * edge_index

    def pop3(self, edge_index: int) -> int:
        return self.base + 10 + EDGE_PORT_STRIDE * edge_index

    def pop3s(self, edge_index: int) -> int:
        return self.base + 95 + EDGE_PORT_STRIDE * edge_index

    def submission(self, edge_index: int) -> int:
        return self.base + 87 + EDGE_PORT_STRIDE * edge_index

    def submissions(self, edge_index: int) -> int:
        return self.base + 65 + EDGE_PORT_STRIDE * edge_index

    def autoconfig(self, edge_index: int) -> int:
        """The edge's HTTP listener for mail clients' autoconfiguration."""
        return self.base + 80 + EDGE_PORT_STRIDE * edge_index

    def sip(self, member_index: int) -> int:
        """UDP and TCP SIP port of farm member #member_index+1 (its own block, as the edges)."""
        return self.base + 60 + EDGE_PORT_STRIDE * member_index

    def sip_tls(self, member_index: int) -> int:
        return self.base + 61 + EDGE_PORT_STRIDE * member_index

    def sip_ws(self, member_index: int) -> int:
        return self.base + 62 + EDGE_PORT_STRIDE * member_index

    def sip_wss(self, member_index: int) -> int:
        return self.base + 63 + EDGE_PORT_STRIDE * member_index

    def sip_inner(self, member_index: int) -> int:
        """The inner relay (UDP) of farm member #member_index+1: packets handed over between members."""
        return self.base + 64 + EDGE_PORT_STRIDE * member_index

    def imap_inner(self, store_index: int) -> int:
        """The inner IMAP listener of mail store #store_index+1 (edges hand sessions to it)."""
        return self.base + 44 + EDGE_PORT_STRIDE * store_index

    def pop3_inner(self, store_index: int) -> int:
        return self.base + 11 + EDGE_PORT_STRIDE * store_index

    def all_ports(self, instances: int, admin_apis: int, edges: int = 0, sipfarms: int = 0,
                  mailstores: int = 0) -> list[tuple[str, int]]:
        ports = [("NATS", self.nats), ("NATS monitoring", self.nats_monitor)]
        ports += [(f"SMTP edge #{i + 1}", self.smtp(i)) for i in range(edges)]
        ports += [(f"{what} edge #{i + 1}", port(i)) for i in range(edges)
                  for what, port in (("IMAP", self.imap), ("IMAPS", self.imaps), ("POP3", self.pop3),
                                     ("POP3S", self.pop3s), ("submission", self.submission),
                                     ("submissions", self.submissions), ("autoconfig", self.autoconfig))]
        ports += [(f"{what} farm member #{i + 1}", port(i)) for i in range(sipfarms)
                  for what, port in (("SIP", self.sip), ("SIP TLS", self.sip_tls), ("SIP WS", self.sip_ws),
                                     ("SIP WSS", self.sip_wss), ("SIP inner relay", self.sip_inner))]
        ports += [(f"{what} mail store #{i + 1}", port(i)) for i in range(mailstores)
                  for what, port in (("inner IMAP", self.imap_inner), ("inner POP3", self.pop3_inner))]
        ports += [(f"admin API #{i + 1}", self.admin_api(i)) for i in range(admin_apis)]
        ports += [(f"ops listener #{i + 1}", self.ops(i)) for i in range(instances)]
        return ports


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen there now.  SO_REUSEADDR as every real listener here
    (nats-server, uvicorn) sets it, so connections left in TIME_WAIT do not count as taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def ephemeral_overlap(ports: list[int]) -> list[int]:
    """Planned ports inside the kernel's ephemeral range: any outgoing connection (the
    instances' own, to NATS) may be given one of them first, and the listener then fails."""
    try:
        low, high = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    except (OSError, ValueError):
        return []
    return [p for p in ports if low <= p <= high]
