"""SIP for a subscriber of another region: a redirect to a farm member of the domain's home region.

Theory of operation
-------------------
In a super cluster (``colony.regions``) every region runs its own SIP farm with its own
``sip_bindings``: registrations, NAT keep-alives, nonces and call records stay in one region.
A dialog-creating request (REGISTER, INVITE, MESSAGE, SUBSCRIBE, OPTIONS to a user, ...) whose
target domain is homed in *another* region is answered ``302 Moved Temporarily`` with a
``Contact`` naming a READY farm member of that region (RFC 3261 §8.1.3.4: the client retries
there).  The target is the To URI for a REGISTER (the address of record) and the Request-URI
otherwise (the callee), so

* a phone of a ``us`` domain that reaches an ``eu`` member registers in ``us``, where every
  ``us`` farm member finds its binding;
* a caller anywhere calling a ``us`` subscriber sends its INVITE to a ``us`` member, which
  authenticates the caller (credentials come from the PROVISIONING mirror every region has)
  and forks to the callee's contacts as for a local call: a phone registered in one region is
  called from another.

Why a redirect rather than relaying every packet over the bus: after it the phone and the
home region talk directly, so a foreign subscriber costs no per-packet hop through two
regions, and nothing of the farm's region-local state (bindings, the member holding a TCP
flow, nonce counts, Timer C forks) has to be shared across a link that may be cut.  The cost:
a client must follow 3xx.  SIP phones do for INVITE, most do for REGISTER; browser (WebSocket)
clients usually do not, so they should be configured with their home region's address.

The home region comes from the ``directory`` bucket (``domain.<token>``, a domain alias
followed to its domain), cached for ``ttl`` seconds; the home region's members from its node
records, read through its JetStream domain (``$JS.<region>.API``) like the edges' IMAP/POP
routing, refreshed every few seconds; the member for an account is the rendezvous choice, so
one subscriber keeps going to the same one.  A home region out of reach gets ``503`` with
``Retry-After``: registering the phone here would hide it from its own region.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import orjson

from colony.bus import names
from colony.cluster.membership import NodeState
from colony.cluster.view import read_nodes
from colony.hashing import choose
from colony.protocols.sip.message import SipRequest
from colony.protocols.sip.uri import SipURI, URIError, parse_address
from colony.settings import Role, Settings

# Requests that start something new; anything else belongs to a dialog or transaction that
# is already where it is (CANCEL follows its INVITE, ACK its answer).
_STARTING = frozenset({"REGISTER", "INVITE", "MESSAGE", "SUBSCRIBE", "OPTIONS", "REFER", "PUBLISH", "NOTIFY", "INFO"})
_DOMAINS_CACHED = 10_000
_FARMS_REFRESH = 5.0     # seconds between reads of a region's farm members
_REMOTE_TIMEOUT = 3.0    # seconds another region's JetStream has to answer
RETRY_AFTER = "30"       # seconds, for a home region out of reach

# The listener of a member that serves each transport, and how a Contact names it.
_LISTENER = {"UDP": "sip", "TCP": "sip", "TLS": "sip_tls", "WS": "sip_ws", "WSS": "sip_wss"}


class HomeRegions:
    def __init__(self, settings: Settings, nc, directory_get: Callable[[str], Awaitable[bytes | None]],
                 clock: Callable[[], float] = time.monotonic, ttl: float = 30.0) -> None:
        self.settings, self.nc, self.directory_get, self.clock, self.ttl = settings, nc, directory_get, clock, ttl
        self._homes: OrderedDict[str, tuple[float, str]] = OrderedDict()     # domain -> (until, region)
        self._farms: dict[str, tuple[float, dict[str, dict[str, str]]]] = {}  # region -> (read at, members)
        self._lock = asyncio.Lock()

    @property
    def active(self) -> bool:
        return len(self.settings.region_list) > 1

    async def answer(self, request: SipRequest, transport: str) -> tuple[int, list[tuple[str, str]]] | None:
        """``(302, [Contact])`` or ``(503, [Retry-After])`` for a request that belongs to
        another region; None to handle it here."""
        if not self.active or request.method not in _STARTING or request.headers.get_all("Route"):
            return None
        try:
            to = parse_address(request.headers.get("To") or "")
        except URIError:
            return None
        if to.tag is not None:
            return None  # in a dialog
        target = to.uri if request.method == "REGISTER" else request.uri
        if not isinstance(target, SipURI) or not target.host:
            return None
        home = await self.home_of(target.host.lower())
        if not home or home == self.settings.region or home not in self.settings.region_list:
            return None
        account = f"{target.user or ''}@{target.host}".lower()
        try:
            member = await self.member(home, account, transport)
        except Exception:  # noqa: BLE001 - no responders, timeouts: the link to the home region is cut
            member = None
        if member is None:
            return 503, [("Retry-After", RETRY_AFTER)]
        return 302, [("Contact", contact(target, member, transport))]

    async def home_of(self, domain: str) -> str:
        """The domain's home region ('' for none, unknown domains included)."""
        now = self.clock()
        cached = self._homes.get(domain)
        if cached is not None and cached[0] > now:
            return cached[1]
        home = ""
        raw = await self.directory_get(names.directory_key("domain", domain))
        if raw is None:
            alias = await self.directory_get(names.directory_key("domain_alias", domain))
            if alias is not None:
                canonical = orjson.loads(alias).get("domain", "")
                raw = await self.directory_get(names.directory_key("domain", canonical)) if canonical else None
        if raw is not None:
            home = orjson.loads(raw).get("home_region") or ""
        self._homes[domain] = (now + self.ttl, home)
        self._homes.move_to_end(domain)
        while len(self._homes) > _DOMAINS_CACHED:
            self._homes.popitem(last=False)
        return home

    async def member(self, region: str, account: str, transport: str) -> str | None:
        """The listener address of the home region's farm member for ``account`` on ``transport``."""
        listener = _LISTENER.get(transport, "sip")
        async with self._lock:
            seen = self._farms.get(region)
            if seen is None or self.clock() - seen[0] >= _FARMS_REFRESH:
                records = await read_nodes(self.nc, names.js_domain(region), _REMOTE_TIMEOUT)
                members = {r.id: r.addresses for r in records if r.role == Role.SIPFARM and r.state == NodeState.READY}
                seen = self._farms[region] = (self.clock(), members)
        serving = {node: addr[listener] for node, addr in seen[1].items() if listener in addr}
        if not serving:
            return None
        return serving[choose(account, serving)]


def contact(target: SipURI, member: str, transport: str) -> str:
    """The Contact of the redirect: the same user at the home region's member, on the transport
    the request came over."""
    hostport = member.split("://", 1)[-1]
    user = f"{target.user}@" if target.user else ""
    if transport == "TLS":
        return f"<sips:{user}{hostport}>"
    if transport == "WSS":
        # RFC 7118 §5.2 defines only transport=ws; secure WebSocket is the sips: scheme over it.
        return f"<sips:{user}{hostport};transport=ws>"
    params = {"TCP": ";transport=tcp", "WS": ";transport=ws"}.get(transport, "")
    return f"<sip:{user}{hostport}{params}>"
