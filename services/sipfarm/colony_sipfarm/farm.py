"""What one SIP farm member does with each packet: registrar and proxy.

Theory of operation
-------------------
*Any member takes any packet.*  The proxy is transaction-stateless (RFC 3261 §16.11): what
it needs to route a packet is in the packet or on the bus, never only in one member's memory.

* A **REGISTER** is authenticated (digest, HA1 from ``colony.auth.sip``), and the account's
  contacts are changed with one compare-and-set on ``sip_bindings`` (``bindings.py``), so a
  phone registered through one member is reachable through all of them.
* A **new request** (INVITE, MESSAGE, ...) for ``user@domain`` is authenticated (INVITE: 407,
  the caller must have SIP credentials) and forwarded to the account's best live contact,
  with -- when it creates a dialog (INVITE, SUBSCRIBE, REFER: ``DIALOG_CREATING``) -- a
  Record-Route naming this member (``;cf=<member>``) so the dialog's later requests come
  back through the farm, and a Via of ours whose branch is a hash of the incoming one
  (``z9hG4bK-cf...``): a retransmission, its CANCEL and the ACK of a failure get the same
  branch whichever member forwards them, so the callee sees one transaction.
* A **response** whose top Via is a farm Via is popped and sent on to the next Via -- by
  whichever member it reaches.  The Via carries ``;m=<member>``: the member that holds the
  caller's TCP connection, to which a response for a connection-oriented hop is relayed.
* A failed INVITE branch is **ACKed by the farm** hop by hop (§17.1.1.3), from the INVITE the
  member sent and to where it went (``sent_invites.py``): an initial INVITE's answers come to
  the member that forked it, a re-INVITE's to the member that routed it (our Via's ``dlg``
  and ``m``, ``handler_of``).  The caller's own ACK of that failure ends at the farm.
* An **in-dialog request** whose top Route is a farm Record-Route is loose-routed (§16.4) --
  only when the Route carries the farm's MAC for the request's Call-ID and From- or To-tag
  (``route_signature.py``): anyone can write the farm's address into a Route, and a dialog's
  requests cannot be challenged.  Others get 404 and go nowhere.  A UDP caller's copy of one
  is answered from its server transaction (``server_transactions.py``), not forwarded again.
  A strict router's request (our Record-Route as the Request-URI, the target last in Route,
  §16.4) is turned into the loose router's form first and checked the same way.
* A phone's TCP flow lives on one member: its binding records ``member``; a request to it from
  another member is relayed over ``colony.sip.relay.<member>``.  When that member dies while
  the phone rings, the member that sent the INVITE fails the branch as if it answered 430
  (``flows_lost_with``), and the fork goes on with the others.  A 430 is a word between
  proxies (RFC 5626 §11.5: an endpoint takes it for 400); the caller hears 480 for it.

Answers that this member makes itself (401/407/4xx/200 to REGISTER/OPTIONS) are kept for a
transaction's lifetime (bounded), so a UDP retransmission gets the same answer, never a new
digest check (which would see a replayed nonce count).

Abuse: scanners (``sip_refused_user_agents``) get no answer; every source has a request rate
and a failed-authentication rate shared by all members (``colony.counters``); unknown users and
wrong passwords get the same challenge; a message larger than ``sip_max_message_size`` gets 513
(or is dropped if unanswerable).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections import OrderedDict
from contextvars import ContextVar
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from prometheus_client import CollectorRegistry, Counter

from colony.bus import names
from colony.contracts.auth import AuthClient, AuthUnavailable
from colony.counters import SharedCounters
from colony.netaddr import counting_unit
from colony.netaddr import NetworkList
from colony.protocols.sip.digest import DigestAuthenticator, parse_credentials
from colony.protocols.sip.message import (REASONS, Headers, SipRequest, SipResponse, Via, encode_response,
                                          make_response, parse_via)
from colony.protocols.sip.parser import SipParseError, parse_message
from colony.protocols.sip.stun import binding_response
from colony.protocols.sip.transaction import Destination, build_ack, response_destination, stamp_via
from colony.protocols.sip.uri import Address, SipURI, URIError, parse_address, parse_uri, uri_equivalent
from colony.settings import Settings

from colony_sipfarm.bindings import Binding, BindingStore
from colony_sipfarm.credentials import CredentialCache
from colony_sipfarm.entrusted_branches import EntrustedBranches
from colony_sipfarm.route_signature import PARAM as ROUTE_MAC, RouteSigner
from colony_sipfarm.sent_invites import SentInvites, cancel_of
from colony_sipfarm.server_transactions import ProxyServerTransactions

log = logging.getLogger("colony.sipfarm")

FARM_BRANCH = "z9hG4bK-cf"
# Our Via's flag on a request routed in a dialog: its answers are handled by the member that
# routed it (its ``m``), which kept what the ACK of a failure copies (sent_invites.py).
IN_DIALOG = "dlg"
FORKER = "o"          # our Via's parameter naming the member whose fork an answer is for (forker_of)
LOCAL_TAG = "cf-"
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, INFO, UPDATE, REFER, NOTIFY, SUBSCRIBE, PRACK"
METHODS = frozenset(m.strip() for m in ALLOW.split(","))
# Requests that create a dialog, which the farm record-routes to stay on its path (RFC 3261
# §16.6 step 4): a call, a subscription (RFC 6665 §4.3: a proxy that wants its NOTIFYs and
# refreshes Record-Routes the SUBSCRIBE) and the implicit subscription of a REFER (RFC 3515
# §2.4.4).  Without it a phone's NOTIFYs went straight to the subscriber's Contact, which a
# phone behind NAT cannot be reached at, and the subscriber's in-dialog refresh or
# un-SUBSCRIBE sent to the farm got 481.
DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER"})


def method_label(method: str) -> str:
    """A method as a metric label or span name: one we know, else "other" (a phone chooses
    the method token; a substring test of ALLOW let "VITE" or "E" through as labels of their own)."""
    return method if method in METHODS else "other"
ANSWER_CACHE = 20_000        # remembered local answers (retransmissions get the same one)
ANSWER_LIFETIME = 32.0       # seconds: 64*T1, a transaction's longest life
MAX_PENDING = 10_000         # requests worked on at once (each waits on the bus)
HA1_CACHE = 50_000           # accounts whose credentials are remembered
MAX_CONTACT = 1024           # longest contact URI stored (Binding.contact)
# RFC 5626 outbound: the only option tag the registrar supports (a REGISTER requiring it is
# no 420).  A member answers every keep-alive of it: a CRLF ping on a TCP or TLS flow gets
# its pong (StreamFramer), one in a WebSocket message too (websocket.py), a STUN Binding
# request over UDP its answer (stun.py).
OUTBOUND = "outbound"
REGISTRAR_OPTIONS = frozenset({OUTBOUND})
ENDED_MARKER_TTL = 5         # seconds the purge marker of an ended call's record lives
OVERLOAD_RETRY_AFTER = 5    # seconds a refused sender should wait (Retry-After of an overload 503)
MAX_SPREAD_SIZE = 65_535     # spread_key reads anything; handle() applies sip_max_message_size
TRUSTED_KEPT = 10_000        # source addresses whose sip_allow_networks verdict is remembered

# The member holding the connection the packet being handled came in on (it may have
# handed the packet to us): what bindings and our Vias must name.  Per task, not per farm.
_flow_member: ContextVar[str | None] = ContextVar("sip_flow_member", default=None)
# ... and its SIP address: our Vias and Record-Routes name it, so what comes back for the
# phone arrives where the phone's packets went (its NAT expects answers from there).
_flow_address: ContextVar[tuple[str, int] | None] = ContextVar("sip_flow_address", default=None)


class UsageCount(NamedTuple):
    """One metered amount for the shell to sum (``sip_registrations``, ``sip_call_seconds``):
    the shell publishes each interval's sums (``UsageSummed``), so a typed event per REGISTER
    would be built only to be taken apart (a pydantic event cost ~14 us, 3 % of a REGISTER)."""

    domain: str
    account: str | None
    metric: str
    amount: float


@dataclass(frozen=True)
class Outbound:
    """Bytes for the shell to send: over UDP, or on the TCP connection to ``destination``
    that member ``member`` holds (None: this member).  ``forker``: for an INVITE another
    member made (answers to a hand-over), that member's node key -- its fork lives there."""

    data: bytes
    destination: Destination
    member: str | None = None
    forker: str | None = None


class FarmMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registrations = Counter("colony_sip_registrations", "Successful REGISTER requests (incl. refreshes and removals).", registry=registry)
        self.stun = Counter("colony_sip_stun_keepalives", "STUN Binding requests over UDP answered (RFC 5626 keep-alives of phones registered with outbound).", registry=registry)
        self.unwritten = Counter("colony_sip_refreshes_unwritten", "REGISTER refreshes answered from the stored bindings without a write (sip_refresh_write_slack).", registry=registry)
        self.requests = Counter("colony_sip_requests", "SIP requests received, by method.", ["method"], registry=registry)
        self.answers = Counter("colony_sip_answers", "Final answers this member made itself, by method and code.", ["method", "code"], registry=registry)
        self.forwarded = Counter("colony_sip_forwarded", "Requests and responses proxied on, by kind and method.", ["kind", "method"], registry=registry)
        self.responses = Counter("colony_sip_responses", "Responses proxied, by method and final code.", ["method", "code"], registry=registry)
        self.relays = Counter("colony_sip_relays", "Packets handed to another member: new transactions to their Call-ID's owner, messages to the member holding a TCP flow.", registry=registry)
        self.retransmissions = Counter("colony_sip_retransmissions", "Retransmitted requests answered from the answer cache or absorbed by a server transaction.", registry=registry)
        self.proxy_retransmissions = Counter("colony_sip_proxy_retransmissions", "Requests this member forwarded over UDP and sent again (Timer A/E), by method.", ["method"], registry=registry)
        self.proxy_timeouts = Counter("colony_sip_proxy_timeouts", "Requests forwarded over UDP that got no answer within 64*T1 (Timer B/F; the branch counts as 408), by method.", ["method"], registry=registry)
        self.overloaded = Counter("colony_sip_overloaded", "New requests answered 503 + Retry-After because they waited too long for this member's turn (overload).", registry=registry)
        self.dropped = Counter("colony_sip_dropped", "Packets dropped without an answer, by reason.", ["reason"], registry=registry)
        # The children of the per-packet counters, found once: labels() takes a lock and
        # builds its key each time.  Bounded: methods are method_label's, codes 100-699.
        self._requests: dict[str, Counter] = {}
        self._answers: dict[tuple[str, int], Counter] = {}

    def request(self, method: str) -> Counter:
        child = self._requests.get(method)
        if child is None:
            child = self.requests.labels(method=method_label(method))
            if method in METHODS:
                self._requests[method] = child
        return child

    def answer(self, method: str, code: int) -> Counter:
        child = self._answers.get((method, code))
        if child is None:
            child = self.answers.labels(method=method_label(method), code=str(code))
            if method in METHODS:
                self._answers[(method, code)] = child
        return child


DENIED_TEXT = "the address requests for this contact would go to is in a network this farm does not send to"


def _warning(agent: str, text: str) -> str:
    """A Warning value (RFC 3261 §20.43): 399 miscellaneous, this member as the agent."""
    return f'399 {agent} "{text}"'


def _reached_at(contact: str, transport: str, source_host: str, nat: bool) -> str:
    """The host requests for a contact registered from ``source_host`` go to: the source for
    a connection or a phone behind NAT (``_binding_destination``), else the Contact's
    ``maddr`` or host.  "" for a contact that is no SIP URI (never sent to)."""
    if transport != "UDP" or nat:
        return source_host
    try:
        uri = parse_uri(contact)
    except URIError:
        return ""
    if not isinstance(uri, SipURI):
        return ""
    return uri.params.get("maddr") or uri.host


def _transaction_key(via: Via, call_id: str, method: str, cseq: int) -> tuple:
    """What a request's copies, and its server transaction's responses, share (§17.2.3): the
    top Via's branch and sent-by, the method (an ACK is its INVITE's) and the CSeq number --
    and the Call-ID.  §17.2.3 trusts a branch to be unique, but senders reuse one: RFC 4475's
    escnull and regescrt are two REGISTERs with one branch, sent-by and CSeq, and the second
    was taken for the first's copy and got its answer, at the first's address."""
    return (via.branch or call_id, via.host, via.port, "INVITE" if method == "ACK" else method, cseq, call_id)


def _hops_left(request: SipRequest) -> int:
    max_forwards = request.headers.get("Max-Forwards")
    return int(max_forwards) if max_forwards and max_forwards.isdigit() else 70


def _hash(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:24]


class NetworkVerdicts:
    """A network list asked per packet, its verdicts remembered: ``sip_allow_networks`` (sources
    exempt from the rate limits) and ``sip_contact_deny_networks``, where the farm sends
    nothing a phone's message named.

    A phone chooses its Contact, and a caller the targets of its in-dialog requests (Route,
    Request-URI): without this a subscriber could register ``127.0.0.1:5432``, an inner
    address or the cloud metadata service and have the farm carry INVITEs there -- the farm
    as a reflector into the provider's own network.  What is asked is the address the farm
    would *send to*: for a phone behind NAT or on a connection that is where its packets come
    from, not its (private) Contact.  An IPv4-mapped IPv6 address is the IPv4 address it
    carries.  A host name is not in it: the shell asks again with the address the name
    resolves to, at each lookup (``workload._UdpSocket``), so a name cannot rebind past it."""

    def __init__(self, text: str) -> None:
        self.networks = NetworkList.parse(text)
        # Verdicts remembered per host (bounded): asked two or three times per packet, and
        # parsing the address each time was 7 % of a REGISTER's CPU.
        self._verdicts: dict[str, bool] = {}

    def __contains__(self, host: str) -> bool:
        if not self.networks:
            return False
        verdict = self._verdicts.get(host)
        if verdict is None:
            verdict = host in self.networks          # a name is in no network
            if len(self._verdicts) >= TRUSTED_KEPT:
                self._verdicts.clear()
            self._verdicts[host] = verdict
        return verdict


class SipFarm:
    def __init__(self, settings: Settings, node_id: str, *, store: BindingStore, dialogs: KeyValue, auth: AuthClient,
                 counters: SharedCounters | None, secret: bytes, address: tuple[str, int],
                 registry: CollectorRegistry, meter: Callable[[UsageCount], None],
                 clock: Callable[[], float] = time.time, home_regions=None,
                 listeners: Callable[[str], Mapping[str, str]] | None = None) -> None:
        self.settings, self.node_id = settings, node_id
        # A member's listeners by its node key, as its node record names them ("sip",
        # "sip_tls"): a Record-Route for a party on TLS names the TLS listener (_facing).
        self.listeners = listeners or (lambda member: {})
        self.home_regions = home_regions  # colony_sipfarm.home_region.HomeRegions in a super cluster
        self.store, self.dialogs, self.auth, self.counters = store, dialogs, auth, counters
        self.digest = DigestAuthenticator(secret, nonce_ttl=settings.sip_nonce_ttl)
        # Our Via branches are MACs under the farm secret (every member has it) of where the
        # next hop's response goes: a response is passed on only under a branch this farm
        # made for that very next Via (§16.11 wants the top Via checked as ours).  Checking
        # only the branch's prefix let a forged "response" have a member send its bytes to
        # any address the forger named -- a UDP reflector, or a TCP connection dialled to any
        # host:port of the inner network carrying the forger's text.
        self._branch_key = hashlib.sha256(b"colony sip branch\x00" + secret).digest()
        # Our Record-Routes are signed the same way (route_signature.py).  Routes of dialogs
        # made before the farm signed them are followed while their call record lives, and
        # only for as long as such a record can live after this member started: later, no
        # unsigned Route costs a bus read.
        self.routes = RouteSigner(secret)
        # Names phones may give as their outbound proxy (host or host:port), lower case.
        self.route_aliases = frozenset(a.strip().lower() for a in settings.sip_route_aliases.split(",") if a.strip())
        # The farm's public name for its Record-Routes ("": this member's address), _facing:
        # its host, and the ports for UDP and TCP and for TLS (0: none written).
        self.public_host, self.public_port = _split_hostport(settings.sip_record_route_host)
        self.public_tls_port = settings.sip_record_route_tls_port
        self._unsigned_until = clock() + settings.sip_dialog_record_ttl
        self.host, self.port = address
        self.metrics = FarmMetrics(registry)
        self.meter = meter
        self.clock = clock
        self.algorithms = tuple(a.strip().upper() for a in settings.sip_digest_algorithms.split(",") if a.strip()) or ("MD5",)
        self.scanners = [s.strip().lower() for s in settings.sip_refused_user_agents.split(",") if s.strip()]
        self.allowed = NetworkVerdicts(settings.sip_allow_networks)   # the same lookup: exempt sources
        self.denied = NetworkVerdicts(settings.sip_contact_deny_networks)
        self._answers: OrderedDict[tuple, tuple[float, list[Outbound]]] = OrderedDict()
        self._forks: OrderedDict[str, _Fork] = OrderedDict()
        # The server transactions of in-dialog requests forwarded here from a UDP caller: its
        # copies are answered from them, not forwarded again (server_transactions.py).
        self.server_transactions: ProxyServerTransactions[Outbound] = ProxyServerTransactions(
            max(ANSWER_LIFETIME, 64 * settings.sip_timer_t1), ANSWER_CACHE)
        # The INVITEs this member forwarded, by our branch: their failures are ACKed from
        # them, where they went (sent_invites.py, RFC 3261 §17.1.1.3).
        # Kept a while past Timer C, which cancels the branches still ringing (expire_forks).
        self.sent_invites = SentInvites(FORK_LIFETIME + 64 * settings.sip_timer_t1,
                                        max(ANSWER_LIFETIME, 64 * settings.sip_timer_t1), FORK_CACHE)
        # The UDP branches other members forked and put on the wire themselves, entrusted to
        # this one to cancel should their forker die (entrusted_branches.py).
        self.entrusted = EntrustedBranches(FORK_LIFETIME + 64 * settings.sip_timer_t1, FORK_CACHE)
        self._pending: set[tuple] = set()           # answer keys of requests being worked on
        self._cancelled: set[tuple] = set()         # ... of INVITEs among them a CANCEL came for
        self._last_key: tuple = (None, None, None)   # (request, its top Via value, answer key)
        self._date: tuple[int, str] = (-1, "")       # (second, its Date header value)
        # The HA1s looked up lately (credentials.py): a phone's refresh needs no round trip
        # to the auth service.  Kept current by the shell's watch of the directory.
        self.credentials = CredentialCache(HA1_CACHE, settings.sip_credentials_cache_seconds)

    # --- entry point ----------------------------------------------------------------------

    def parse(self, data: bytes) -> SipRequest | SipResponse | SipParseError:
        """``data`` read once, for the shell to look at (``spread_key_of``) and then hand to
        ``handle`` -- parsing was the largest single cost of a packet, paid twice before."""
        try:
            return parse_message(data, self.settings.sip_max_message_size)
        except SipParseError as exc:
            return exc

    async def handle(self, data: bytes, source: Destination, flow_member: str | None = None,
                     flow_address: tuple[str, int] | None = None,
                     parsed: SipRequest | SipResponse | SipParseError | None = None) -> list[Outbound]:
        """One message from ``source`` (that arrived at ``flow_member`` on ``flow_address``,
        default: this member); returns what to send.  ``Outbound.member`` None: the member it
        arrived at.  ``parsed``: what ``parse(data)`` gave, unchanged since."""
        _flow_member.set(flow_member)
        _flow_address.set(flow_address)
        try:
            if parsed is None:
                parsed = self.parse(data)
            if isinstance(parsed, SipParseError):
                raise parsed
            message = parsed
        except SipParseError as exc:
            if exc.request is None:
                # An RFC 5626 keep-alive over UDP: a STUN Binding request (stun.py), answered
                # where it came from; unanswered, the phone takes its flow for failed.
                if source[0] == "UDP" and (stun := binding_response(data, source[1], source[2])) is not None:
                    self.metrics.stun.inc()
                    return [Outbound(stun, source)]
                # A datagram of nothing but CRLFs is a phone's keep-alive (linphone sends one
                # every keepalive_period over UDP; RFC 3261 §7.5 has a stream's ignored), not
                # garbage: counted "unparsable", every such phone added one every 30 s to the
                # count an operator watches for malformed traffic.
                if data.strip(b"\r\n"):
                    self.metrics.dropped.labels(reason="unparsable").inc()
                return []
            try:
                stamp_via(exc.request, source)
            except URIError:
                return []
            return self._local(exc.request, source, exc.status, exc.reason, remember=False)
        message.source = source
        if isinstance(message, SipResponse):
            return await self._on_response(message)
        return await self._on_request(message, source)

    def refuse_overloaded(self, parsed: SipRequest | SipResponse | SipParseError, source: Destination,
                          draining: bool = False) -> list[Outbound]:
        """503 + Retry-After for a request that starts new work while this member is behind
        (RFC 3261 §21.5.4), with no bus work; kept for retransmissions like any answer, so a
        copy costs a lookup.  What a request already answered gets is that answer again.
        ``draining``: the same for a new call at a member that drains (not counted overloaded)."""
        if not isinstance(parsed, SipRequest) or parsed.method == "ACK":
            return []
        try:
            stamp_via(parsed, source)
            key = self._answer_key(parsed)
        except URIError:
            return []
        cached = self._answers.get(key)
        if cached is not None and cached[0] > self.clock():
            self.metrics.retransmissions.inc()
            return cached[1]
        if self.server_transactions and (copy := self.server_transactions.copy(key, self.clock())) is not None:
            # Forwarded already (an initial MESSAGE, OPTIONS ... from a UDP caller): its
            # transaction's.  A 503 here was the caller's final answer, kept for its later
            # copies, while the callee had the request.
            self.metrics.retransmissions.inc()
            return copy
        if key in self._pending:       # the first copy is being worked on: its answer comes
            self.metrics.retransmissions.inc()
            return []
        if not draining:
            self.metrics.overloaded.inc()
        return self._local(parsed, source, 503, extra=[("Retry-After", str(OVERLOAD_RETRY_AFTER))])

    @staticmethod
    def spread_key(data: bytes) -> str | None:
        """The Call-ID of a request that starts new work (REGISTER, or a request outside a
        dialog, CANCEL included) or of a response to a farm INVITE (the member that forked it
        keeps the branches' state), which goes to the READY member it hashes to; None for
        everything any member handles alike (other responses, ACK, in-dialog requests, what
        does not parse)."""
        try:
            message = parse_message(data, MAX_SPREAD_SIZE)
        except SipParseError:
            return None
        return SipFarm.spread_key_of(message)

    @staticmethod
    def spread_key_of(message: SipRequest | SipResponse | SipParseError) -> str | None:
        """``spread_key`` of a message already parsed (``parse``)."""
        if isinstance(message, SipParseError):
            return None
        if isinstance(message, SipResponse):
            try:
                via = message.top_via()
                invite = message.cseq().method == "INVITE" and (via.branch or "").startswith(FARM_BRANCH)
            except URIError:
                return None
            # A re-INVITE's answers go to the member that routed it (handler_of), not the owner.
            return message.call_id or None if invite and IN_DIALOG not in via.params else None
        if message.method == "ACK":
            return None
        if "tag" in (message.headers.get("To") or ""):
            return None
        # A Route of ours (cf) is a dialog's; an initial request may carry only a Route its
        # phone preloaded naming the farm as outbound proxy (the owner judges it: _preloaded).
        if any(";cf=" in route for route in message.headers.get_all("Route")):
            return None
        return message.call_id or None

    @staticmethod
    def handler_of(message: SipRequest | SipResponse | SipParseError) -> str | None:
        """The node key of the member that must handle ``message`` whatever its Call-ID: for an
        answer to an INVITE routed in a dialog (our Via's ``dlg``), the member that routed it
        (its ``m``), which kept the INVITE its failure is ACKed from (sent_invites.py).  A
        TCP, TLS or WebSocket callee answers on its connection, which another member may
        hold.  None for everything else (``spread_key_of`` says where it goes)."""
        if not isinstance(message, SipResponse):
            return None
        try:
            via = message.top_via()
            if message.cseq().method != "INVITE" or not (via.branch or "").startswith(FARM_BRANCH):
                return None
        except URIError:
            return None
        return via.params.get("m") or None if IN_DIALOG in via.params else None

    @staticmethod
    def forker_of(message: SipRequest | SipResponse | SipParseError) -> str | None:
        """The node key of the member that forwarded the initial request ``message`` answers
        (our Via's ``o``), or None.  Its fork gathers an INVITE's branches' answers, its server
        transaction answers a MESSAGE's copies: the shell sends the answer there while that
        member lives -- a draining one too, which keeps its ringing forks until they end --
        and otherwise by the Call-ID (an INVITE's: the member it hashes to now is the one a
        dead forker's branches are cancelled from) or wherever it arrived."""
        if not isinstance(message, SipResponse):
            return None
        try:
            via = message.top_via()
        except URIError:
            return None
        return via.params.get(FORKER) or None if (via.branch or "").startswith(FARM_BRANCH) else None

    def ringing(self) -> int:
        """Forks here still waiting for a final answer for their caller (a draining member
        waits for them: its work until they are answered, failed or Timer C ends them)."""
        now = self.clock()
        return sum(1 for fork in self._forks.values() if not fork.answered and fork.expires_at >= now)

    # --- requests -------------------------------------------------------------------------

    async def _on_request(self, request: SipRequest, source: Destination) -> list[Outbound]:
        self.metrics.request(request.method).inc()
        agent = (request.headers.get("User-Agent") or "").lower()
        if agent and any(s in agent for s in self.scanners):
            self.metrics.dropped.labels(reason="scanner").inc()
            return []
        try:
            stamp_via(request, source)
        except URIError:
            return []
        if isinstance(request.uri, SipURI) and "cf" in request.uri.params:
            self._strict_routed(request)
        if request.method == "ACK":
            return await self._on_ack(request, source)
        key = self._answer_key(request)
        cached = self._answers.get(key)
        if cached is not None and cached[0] > self.clock():
            self.metrics.retransmissions.inc()
            return cached[1]
        if self.server_transactions and (copy := self.server_transactions.copy(key, self.clock())) is not None:
            # A copy of an in-dialog request this member forwarded: answered with what its
            # transaction has (or absorbed), never a second request at the callee.
            self.metrics.retransmissions.inc()
            return copy
        if key in self._pending:
            # A retransmission of a request still being worked on: its answer is coming
            # (checking its credentials again would see a replayed nonce count).
            self.metrics.retransmissions.inc()
            return []
        if request.method == "CANCEL" and (invite := (*key[:3], "INVITE", *key[4:])) in self._pending:
            # §16.10: the INVITE it cancels is still being worked on here (the caller's
            # credentials, the callee's bindings): answered 200 now, and the INVITE ends 487
            # instead of being forwarded.  Passed on at once, the CANCEL reached phones that
            # had no INVITE yet (481), and the INVITE after it rang until Timer C.
            self._cancelled.add(invite)
            return self._local(request, source, 200)
        if len(self._pending) >= MAX_PENDING:
            return self._local(request, source, 503, extra=[("Retry-After", "5")], remember=False)
        self._pending.add(key)
        try:
            return await self._on_new_request(request, source)
        finally:
            self._pending.discard(key)
            self._cancelled.discard(key)

    async def _on_new_request(self, request: SipRequest, source: Destination) -> list[Outbound]:
        if not self._trusted(source) and self.counters is not None:
            rate = await self.counters.hit("sip-req", counting_unit(source[1]))
            if rate > self.settings.sip_requests_per_minute_per_ip:
                return self._local(request, source, 503, extra=[("Retry-After", "60")], remember=False)
        if self.home_regions is not None:  # a subscriber of another region: sent there (home_region.py)
            moved = await self.home_regions.answer(request, source[0])
            if moved is not None:
                return self._local(request, source, moved[0], extra=moved[1], remember=moved[0] != 503)
        if request.method == "REGISTER":
            return self._unsupported(request, source, "Require", REGISTRAR_OPTIONS) or await self._register(request, source)
        routes = request.headers.get_all("Route")
        while routes and self._preloaded(routes[0], request):
            # RFC 3261 §16.4: a first Route naming this proxy is removed -- a phone set up
            # with the farm (or its own domain) as outbound proxy puts one before every
            # initial request (§8.1.2).
            request.headers.remove_first("Route")
            routes = routes[1:]
        uri = request.uri
        if not routes and request.method == "OPTIONS" and (not isinstance(uri, SipURI) or uri.user is None):
            # For the farm itself: answered as a UAS (§11), whatever its Max-Forwards (§16.3 step 3).
            return (self._unsupported(request, source, "Require")
                    or self._local(request, source, 200, extra=[("Allow", ALLOW), ("Accept", "application/sdp")]))
        # §16.3 steps 3 and 5 before step 6 (the proxy's authentication): a request that has
        # no hops left, or needs of the proxy an extension it has not, is refused for that --
        # a challenge first (RFC 4475 §3.3.5, §3.3.11) had its sender answer one in vain.
        if _hops_left(request) <= 0:
            return self._local(request, source, 483)
        if refused := self._unsupported(request, source, "Proxy-Require"):
            return refused
        if routes and self._is_ours(routes[0]):
            return await self._loose_route(request, source)
        if routes:
            return self._local(request, source, 403, "Not A Relay")
        if parse_address(request.headers.get("To") or "").tag is not None:
            # In-dialog but without our Route: not a dialog we are on.
            return self._local(request, source, 481)
        return await self._new_request(request, source)

    def _unsupported(self, request: SipRequest, source: Destination, header: str,
                     known: frozenset[str] = frozenset()) -> list[Outbound]:
        """420 naming the option tags of ``header`` (Require of a request the farm answers as a
        UAS, Proxy-Require of one it proxies) that are not ``known`` -- the registrar knows
        ``outbound``, the rest of the farm none (RFC 3261 §8.2.2.3, §16.3 step 5); nothing
        when there are none."""
        tags = [tag for tag in request.headers.get_all(header) if tag.strip().lower() not in known]
        if not tags:
            return []
        return self._local(request, source, 420, extra=[("Unsupported", ", ".join(tags))])

    def _answer_key(self, request: SipRequest) -> tuple:
        # Asked twice for a request this member answers (on arrival, then to remember the
        # answer): the last key is kept while its request and top Via are the same objects.
        value = request.headers.get("Via")
        last = self._last_key
        if last[0] is request and last[1] is value and value is not None:
            return last[2]
        key = _transaction_key(request.top_via(), request.call_id, request.method, request.cseq().number)
        self._last_key = (request, value, key)
        return key

    def _trusted(self, source: Destination) -> bool:
        return source[1] in self.allowed

    def _local(self, request: SipRequest, source: Destination, status: int, reason: str | None = None, *,
               extra: list[tuple[str, str]] | None = None, remember: bool = True) -> list[Outbound]:
        """An answer this member makes itself (kept for retransmissions when ``remember``)."""
        if request.method == "ACK":
            return []
        tag = LOCAL_TAG + _hash(request.call_id, request.headers.get("From") or "")[:10]
        data = encode_response(request, status, reason, to_tag=tag,
                               extra=[*(extra or []), ("Server", "Colony SIP farm")])
        try:
            # The answer's top Via is the request's (encode_response copies it): read from
            # the request, whose header index exists already.
            destination = response_destination(request.top_via(), source)
        except URIError:
            return []
        out = [Outbound(data, destination)]
        self.metrics.answer(request.method, status).inc()
        if remember:
            try:
                key = self._answer_key(request)
            except URIError:
                return out
            now = self.clock()
            answers = self._answers
            answers[key] = (now + ANSWER_LIFETIME, out)
            answers.move_to_end(key)
            # Every answer lives ANSWER_LIFETIME, so the oldest expire first: dropped as they
            # expire, the cache holds the last 32 s of answers, not ANSWER_CACHE of them (with
            # each its encoded message) for as long as the member runs after a busy hour.
            while len(answers) > ANSWER_CACHE or (answers and next(iter(answers.values()))[0] <= now):
                answers.popitem(last=False)
        return out

    # --- authentication -------------------------------------------------------------------

    async def _authenticate(self, request: SipRequest, source: Destination, account: str, realm: str,
                            header: str, status: int) -> tuple[bool, list[Outbound]]:
        """(True, []) when the request carries good credentials for ``account``; otherwise
        (False, the answer): a challenge, 403 when the source failed too often, 503 when the
        credentials service is away.  Unknown user and wrong password look the same."""
        if not self._trusted(source) and self.counters is not None:
            failures = await self.counters.rate("sip-authfail", counting_unit(source[1]))
            if failures >= self.settings.sip_auth_failures_per_minute_per_ip:
                return False, self._local(request, source, 403, "Too Many Failed Authentications")
        credentials = None
        for value in request.headers.get_all(header):
            parsed = parse_credentials(value)
            if parsed is not None and parsed.get("realm") == realm:
                credentials = parsed
                break
        challenge = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
        if credentials is None:
            return False, self._challenge(request, source, realm, status, challenge, stale=False)
        if not _same_resource(credentials.get("uri", ""), request.uri) and not (
                request.method == "REGISTER" and _same_resource(credentials.get("uri", ""), _to_uri(request))):
            # RFC 2617 §3.2.2.5: credentials computed for another Request-URI (an INVITE to
            # someone else, taken off the wire, cannot call this callee) -- 400, not a challenge.
            # A REGISTER's may name its address of record (the To) instead, as some phones write.
            return False, self._local(request, source, 400, "Digest URI Mismatch")
        username = credentials.get("username", "")
        algorithm = credentials.get("algorithm", "MD5").upper().removesuffix("-SESS")
        user_part = account.rpartition("@")[0]
        # Whose credentials these are: the account's own, or another user's of the realm --
        # checked all the same, and if they are good the request is refused 403, not
        # challenged (§10.3 step 4, §22.3: the user is authenticated, but not authorized to
        # act for this address; a challenge again would only have it resend them).
        claimed = account if username in (user_part, account) else (
            username if "@" in username else f"{username}@{realm}").lower()
        ha1 = None
        if algorithm in ("MD5", "SHA-256") and claimed.partition("@")[0]:
            try:
                ha1 = await self._credentials(claimed, realm, algorithm)
            except AuthUnavailable:
                # Kept for the transaction's copies like any final answer (RFC 3261 §17.2.1):
                # a copy asking a struggling auth service again is more load on it, and the
                # copy of a REGISTER whose hand-over answer came late (workload.py) gets the
                # 503 + Retry-After only from here.  A new REGISTER asks again.
                return False, self._local(request, source, 503, extra=[("Retry-After", "5")])
        # Unknown users are checked against a random HA1: the same answer, the same work.
        verdict = self.digest.verify(credentials, request.method, realm, ha1 or _hash("nobody", realm, str(self.clock())),
                                     self.clock())
        if verdict.ok and ha1 is not None:
            if claimed != account:
                return False, self._local(request, source, 403, "Credentials Of Another User")
            return True, []
        if verdict.stale:
            return False, self._challenge(request, source, realm, status, challenge, stale=True)
        if self.counters is not None and not self._trusted(source):
            await self.counters.hit("sip-authfail", counting_unit(source[1]))
        return False, self._challenge(request, source, realm, status, challenge, stale=False)

    async def _credentials(self, account: str, realm: str, algorithm: str) -> str | None:
        cached = self.credentials.get(account, realm, algorithm)
        if cached is not None:
            return cached
        begun = self.credentials.begin()
        reply = await self.auth.sip_credentials(account, realm, algorithm)
        ha1 = reply.ha1 if reply.ok and reply.ha1 else None
        self.credentials.put(account, realm, algorithm, ha1, begun)
        return ha1

    async def _exists(self, account: str, realm: str) -> bool:
        """Whether ``account`` is one of ours (it has SIP credentials); True when that cannot
        be told now (the auth service away): then the caller hears 480, not a false 404."""
        try:
            return await self._credentials(account, realm, self.algorithms[-1]) is not None
        except AuthUnavailable:
            return True

    def _challenge(self, request, source, realm, status, header, stale) -> list[Outbound]:
        values = self.digest.challenges(realm, self.clock(), stale=stale, algorithms=self.algorithms)
        return self._local(request, source, status, extra=[(header, v) for v in values])

    # --- registrar ------------------------------------------------------------------------

    async def _register(self, request: SipRequest, source: Destination) -> list[Outbound]:
        try:
            to = parse_address(request.headers.get("To") or "").uri
            contacts = request.addresses("Contact")
        except URIError:
            return self._local(request, source, 400, "Bad Contact")
        if not isinstance(to, SipURI):
            # The To of a REGISTER is the address of record, a SIP or SIPS URI (§10.2; RFC 4475
            # §3.3.4: "a registrar would reject this request with a 400").
            return self._local(request, source, 400, "To Is Not A SIP URI")
        if not to.user:
            return self._local(request, source, 404)
        account, realm = f"{to.user}@{to.host}".lower(), to.host.lower()
        ok, answer = await self._authenticate(request, source, account, realm, "Authorization", 401)
        if not ok:
            return answer
        now = self.clock()
        header_expires = request.headers.get("Expires")
        default = int(header_expires) if header_expires and header_expires.isdigit() else self.settings.sip_default_expires
        call_id, cseq = request.call_id[:256], request.cseq().number   # Binding.call_id keeps 256
        wildcard = any(c.wildcard for c in contacts)
        if wildcard and (len(contacts) > 1 or default != 0):
            return self._local(request, source, 400, "Wildcard Needs Expires 0")
        changes: list[tuple[str, float, int, str, str]] = []    # (contact URI, q, expires, instance, reg-id)
        # RFC 5626 §6: outbound is applied to a REGISTER whose Contact has +sip.instance and
        # reg-id when the farm is its first hop (one Via).  Behind another proxy it would need
        # that proxy's Path with "ob" (RFC 3327), which this registrar does not keep: reg-id
        # is ignored -- or 439 when the phone asked for outbound, so that it learns its first
        # hop lacks it instead of believing its flows are kept apart.
        options = {tag.strip().lower() for name in ("Supported", "Require") for tag in request.headers.get_all(name)}
        first_hop = len(request.headers.get_all("Via")) == 1
        flows = False
        for contact in contacts:
            if contact.wildcard:
                continue
            raw = contact.params.get("expires")
            expires = int(raw) if raw and raw.isdigit() else default
            # §10.3 step 7: 423 "if and only if" the interval is above zero, below one hour
            # and below the configured minimum -- an hour or more is never too brief.
            if 0 < expires < min(self.settings.sip_min_expires, 3600):
                return self._local(request, source, 423, extra=[("Min-Expires", str(self.settings.sip_min_expires))])
            try:
                q = float(contact.params.get("q") or 1.0)
            except ValueError:
                q = float("nan")
            if not 0.0 <= q <= 1.0:     # also NaN
                return self._local(request, source, 400, "Bad q")
            uri = str(contact.uri)
            if len(uri) > MAX_CONTACT:
                return self._local(request, source, 400, "Contact Too Long")
            instance = (contact.params.get("+sip.instance") or "").strip('"').strip()
            reg_id = (contact.params.get("reg-id") or "").strip() if instance else ""
            if len(instance) > 256 or len(reg_id) > 16:
                return self._local(request, source, 400, "Bad Instance")
            if reg_id and not first_hop:
                if OUTBOUND in options:
                    return self._local(request, source, 439, "First Hop Lacks Outbound Support")
                reg_id = ""
            flows = flows or bool(reg_id)
            changes.append((uri, q, min(expires, self.settings.sip_max_expires), instance, reg_id))
        transport, host, port = source
        agent = (request.headers.get("User-Agent") or "")[:256]
        via = request.top_via()
        # Behind NAT (RFC 3581 asked for, or the packet came from elsewhere than the Via
        # says): requests to the phone go where its packets came from, not to its Contact.
        nat = "rport" in via.params or "received" in via.params or (via.port or 5060) != port
        for uri, _, expires, _, _ in changes:
            if expires and _reached_at(uri, transport, host, nat) in self.denied:
                # As Asterisk's contact_deny ACL answers (403), with the reason in a Warning
                # (RFC 3261 §20.43) -- but judged by the address requests would go to.
                return self._local(request, source, 403, extra=[("Warning", _warning(self._hostport(), DENIED_TEXT))])

        unwritten = False

        def edit(current: list[Binding]) -> list[Binding] | None:
            nonlocal unwritten
            # §10.3 steps 6 and 7: a binding made by a later REGISTER of this Call-ID (a
            # higher CSeq) aborts the whole update and the request fails -- a late copy of an
            # older REGISTER must neither change the bindings nor be told 200.  An equal CSeq
            # is this very request again (§8.1.1.5), answered as before: 200, nothing changed.
            if wildcard:
                if any(b.call_id == call_id and b.cseq >= cseq for b in current):
                    raise _OutOfOrder()
                return []
            result = {b.contact: b for b in current}
            for i, (uri, *rest) in enumerate(changes):
                # §10.3 step 7 finds a Contact's binding by URI comparison (§19.1.4), not by
                # its text: the same device written in another parameter order or case.
                changes[i] = (_bound_as(result, uri), *rest)

            def same_device(uri: str, instance: str, reg_id: str) -> list[Binding]:
                """RFC 5626 §6: a Contact with ``+sip.instance`` binds the AOR to that instance
                (and its ``reg-id``), not to its URI -- what else this device registered
                (an older Contact: another port, a connection since lost)."""
                return [b for b in result.values() if instance and b.contact != uri
                        and b.instance.lower() == instance.lower() and b.reg_id == reg_id]
            if any((old := result.get(uri)) is not None and old.call_id == call_id and old.cseq > cseq
                   or any(b.call_id == call_id and b.cseq > cseq for b in same_device(uri, instance, reg_id))
                   for uri, _, _, instance, reg_id in changes):
                raise _OutOfOrder()
            if all(not same_device(uri, instance, reg_id)
                   and self._fresh_enough(result.get(uri), q, now + expires, expires, host, port, transport, nat, agent,
                                          instance, reg_id)
                   for uri, q, expires, instance, reg_id in changes):
                unwritten = True
                return None
            unwritten = False
            for uri, q, expires, instance, reg_id in changes:
                old = result.get(uri)
                if old is not None and old.call_id == call_id and old.cseq >= cseq:
                    continue   # a copy of the REGISTER that made it (above)
                for replaced in same_device(uri, instance, reg_id):
                    result.pop(replaced.contact, None)
                if expires == 0:
                    result.pop(uri, None)
                    continue
                result[uri] = Binding(contact=uri, q=q, expires_at=now + expires, call_id=call_id, cseq=cseq,
                                      registered_at=now, member=self._flow(), transport=transport,
                                      source=f"{host}:{port}", nat=nat, user_agent=agent, instance=instance,
                                      reg_id=reg_id)
            if len(result) > self.settings.sip_max_bindings:
                raise _TooMany()
            return list(result.values())

        if changes or wildcard:
            try:
                stored = await self.store.change(account, edit)
            except _TooMany:
                return self._local(request, source, 403, "Too Many Registered Devices")
            except _OutOfOrder:
                # RFC 3261 names no code: 500 (§21.5.1: the client may retry, and a retry has
                # a higher CSeq, which succeeds).
                return self._local(request, source, 500, "Out Of Order CSeq")
            self.meter(UsageCount(realm, account, "sip_registrations", 1))
            if unwritten:
                self.metrics.unwritten.inc()
        else:
            stored = await self.store.lookup(account)    # a query (§10.2.3)
        self.metrics.registrations.inc()
        extra = [("Contact", f"<{b.contact}>;expires={max(1, int(b.expires_at - now))};q={b.q:g}"
                             + (f';+sip.instance="{b.instance}"' if b.instance else "")
                             + (f";reg-id={b.reg_id}" if b.reg_id else "")) for b in stored]
        extra.append(("Date", self._date_of(now)))
        if flows and OUTBOUND in options:
            # RFC 5626 §6: the phone asked (Supported, RFC 3261 §20.32: never Require of one
            # that did not) and its flows are bound by reg-id; on a connection (TCP, TLS,
            # WebSocket), how often its CRLF keep-alives must come (§4.4.1, §5.4).
            extra.append(("Require", OUTBOUND))
            if transport != "UDP" and self.settings.sip_flow_timer:
                extra.append(("Flow-Timer", str(self.settings.sip_flow_timer)))
        return self._local(request, source, 200, extra=extra)

    def _date_of(self, now: float) -> str:
        """The Date header value for ``now``, printed once per second (strftime was 1 % of a REGISTER)."""
        second = int(now)
        if self._date[0] != second:
            self._date = (second, time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(second)))
        return self._date[1]

    def _fresh_enough(self, old: Binding | None, q: float, expires_at: float, expires: int, host: str, port: int,
                      transport: str, nat: bool, agent: str, instance: str = "", reg_id: str = "") -> bool:
        """A refresh of ``old`` that would change only its expiry, by little: answered from the
        stored binding without a write.  Phones refreshing every minute (a common NAT keep-alive)
        would otherwise cost one synced write each.  The 200 names the stored, slightly
        shorter expiry (RFC 3261 10.2.4: the phone refreshes by it); the slack is at most a
        tenth of the asked lifetime, so a phone refreshing by its own timer at 90 % of it still
        lands before the binding lapses."""
        if old is None or expires == 0:
            return False
        slack = min(self.settings.sip_refresh_write_slack, expires / 10)
        return (old.q == q and old.member == self._flow() and old.transport == transport
                and old.source == f"{host}:{port}" and old.nat == nat and old.user_agent == agent
                and old.instance == instance and old.reg_id == reg_id
                and expires_at - slack <= old.expires_at <= expires_at)

    # --- proxy ----------------------------------------------------------------------------

    def _hostport(self) -> str:
        host, port = _flow_address.get() or (self.host, self.port)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _record_route(self, request: SipRequest, source: Destination, destination: Destination,
                      member: str | None) -> list[str]:
        """Our Record-Route; when the caller (``fc``) or the callee (``fe``) is on a
        connection, it names that flow and the member holding it (RFC 5626's flow token, in
        the spirit of RFC 7118 §5): in-dialog requests reach a phone on TCP, TLS or WebSocket
        through its connection, which its Contact (an .invalid host, or a port nobody
        listens on) cannot name.  So for a phone behind NAT over UDP, whose Contact (a private
        address) is not where its packets come from: its flow is that source address, as
        Kamailio's nathelper aliases such a Contact to it -- else the ACK of the 200, a BYE or
        a re-INVITE went to the private address, and a call to a NAT'd phone dropped when it
        gave up resending its unacknowledged 200 (§13.3.1.4).  Signed (``dm``) for the
        request's Call-ID and From-tag.

        Each party is given the farm on the transport it uses (``_facing``): when the caller's
        and the callee's differ, two Record-Routes, the callee's on top (RFC 5658 §3.1,
        "double Record-Routing"; the loose router drops both).  One URI naming the UDP/TCP
        port without a transport had a TLS phone send its dialog's ACK, BYE and re-INVITEs
        (its digest answers, its SDP with any SRTP keys) as plain UDP datagrams, and a TCP
        phone its requests over UDP (RFC 3263 §4.1: a numeric host with a port and no
        transport is UDP).  Returned top first."""
        mine = names.node_key(self._flow())
        params = {"cf": mine}
        if source[0] != "UDP":
            params["fc"] = _flow_token(source, mine)
        elif not _contact_reaches(request.headers.get("Contact"), source) and source[1] not in self.denied:
            params["fc"] = _flow_token(source, mine)
        if destination[0] != "UDP":
            params["fe"] = _flow_token(destination, member or mine)
        elif not _uri_reaches(request.uri, destination):
            params["fe"] = _flow_token(destination, mine)      # a NAT'd binding's source
        try:
            tag = parse_address(request.headers.get("From") or "").tag or ""
        except URIError:
            tag = ""
        params[ROUTE_MAC] = self.routes.sign(request.call_id, tag, params)
        signed = "".join(f";{k}={v}" for k, v in params.items())
        callee, caller = self._facing(destination[0], member or mine), self._facing(source[0], mine)
        return [f"<sip:{uri};lr{signed}>" for uri in ((callee,) if callee == caller else (callee, caller))]

    def _facing(self, transport: str, member: str) -> str:
        """Host:port (and transport) of the farm for a party on ``transport`` whose flow
        ``member`` holds: its TLS listener with ``transport=tls``, its TCP (the SIP port) with
        ``transport=tcp``; over UDP and WebSocket (a browser sends every request on its
        WebSocket, RFC 7118 §5) our SIP address as the packet reached it.

        With ``sip_record_route_host`` the farm's public name instead, with the party's
        transport, UDP included, and the port configured for it -- the name's own for UDP and
        TCP, ``sip_record_route_tls_port`` for TLS (a balancer's TLS listener is on another port
        than its UDP and TCP one, so one port for all would send a TLS phone's requests to a
        port speaking no TLS).  Without a port the phone finds a live member by RFC 3263 (SRV
        ``_sip._udp``, ``_sip._tcp``, ``_sips._tcp``, else the name's address at 5060/5061);
        with one it reaches the balancer there (§4.2: no SRV lookup).  Either way the dialog
        outlives the member that routed it.  Without a
        transport a phone may pick any the name's SRV records offer (RFC 3263 §4.1; libre,
        baresip's stack, asks for ``_sips._tcp`` first), and a UDP phone's BYE would go over
        TLS.  A WebSocket party keeps our address: a browser sends its requests on its own
        connection whatever the Route names."""
        if self.public_host and transport in ("UDP", "TCP", "TLS"):
            port = self.public_tls_port if transport == "TLS" else self.public_port
            return f"{self.public_host}{f':{port}' if port else ''};transport={transport.lower()}"
        if transport in ("TCP", "TLS"):
            found = self.listeners(member).get("sip_tls" if transport == "TLS" else "sip")
            if found is None and member == names.node_key(self._flow()) and transport == "TCP":
                found = self._hostport()
            if found is not None:
                host, _, port = found.rpartition(":")     # a node record's host:port, IPv6 unbracketed
                host = f"[{host}]" if ":" in host and not host.startswith("[") else host
                return f"{host}:{port};transport={transport.lower()}"
        return self._hostport()

    def _preloaded(self, route: str, request: SipRequest) -> bool:
        """``route`` names the farm as an outbound proxy, not a dialog's Record-Route (no
        ``cf``, no user part): its host is this member's, the farm's public name
        (``sip_record_route_host``), one of ``sip_route_aliases`` (the name phones are given, a
        balancer's), or the caller's own SIP domain (From), which the farm authenticates the
        caller against -- so a Route naming it relays nothing the caller could not send
        without it."""
        try:
            uri = parse_address(route).uri
            caller = parse_address(request.headers.get("From") or "").uri
        except URIError:
            return False
        if not isinstance(uri, SipURI) or "cf" in uri.params or uri.user is not None:
            return False
        host = uri.host.lower().strip("[]")
        if host == self.host.lower().strip("[]") or isinstance(caller, SipURI) and host == caller.host.lower():
            return True
        if self.public_host and host == self.public_host.strip("[]"):
            return True
        return host in self.route_aliases or f"{host}:{uri.port or 5060}" in self.route_aliases

    def _strict_routed(self, request: SipRequest) -> None:
        """RFC 3261 §16.4: a Request-URI that is our Record-Route (``cf``) came from a strict
        router (an RFC 2543 phone or proxy that ignores ``lr``, §12.2.1.1): the dialog's
        remote target is the last Route.  It becomes the Request-URI again, and our URI the
        top Route -- the request as a loose router sends it -- so it is proven (``dm``) and
        routed like any in-dialog request, and a forged one is refused the same way.  With
        no Route there is no target to restore: left as it came."""
        routes = request.headers.get_all("Route")
        if not routes:
            return
        try:
            target = parse_address(routes[-1]).uri
        except URIError:
            return
        ours = f"<{request.uri}>"
        request.headers.remove("Route")
        for value in (ours, *routes[:-1]):
            request.headers.add("Route", value)
        request.uri = target

    def _is_ours(self, route: str) -> bool:
        try:
            uri = parse_address(route).uri
        except URIError:
            return False
        return isinstance(uri, SipURI) and "cf" in uri.params

    def _via(self, request: SipRequest, transport: str, index: int = 0, in_dialog: bool = False,
             member: str | None = None, initial: bool = False) -> str:
        """Our Via for branch ``index`` of a request: the branch is a MAC of the incoming Via
        (and the branch number), the same on every member (``_branch_base``); ``in_dialog``:
        an INVITE routed in a dialog, whose answers this member handles (``handler_of``).

        Its sent-by is where the phone's answers go on ``transport`` (RFC 3261 §18.2.2): over
        TCP and TLS the listener of the member holding the connection the request goes out on
        (``member``, None: this one) -- its TLS listener for TLS.  A phone that looks for its
        connection by the Via's address (linphone's belle-sip does) finds the one it has; the
        SIP port under ``SIP/2.0/TLS`` had linphone open a TLS connection to a port that
        speaks no TLS, and every answer it gave to a call through another member was lost.
        And ``rport`` (RFC 3581 §3, proxies too): the phone answers where the request came
        from (§4) -- through a balancer, its own connection to it; the member's address behind
        it may be unreachable, or (over TLS) a name its certificate check refuses."""
        flow = self._caller_flow(request)
        sent_by = self._hostport()
        if transport in ("TCP", "TLS"):
            found = self.listeners(member or names.node_key(self._flow())).get("sip_tls" if transport == "TLS" else "sip")
            if found is not None:
                host, _, port = found.rpartition(":")     # a node record's host:port, IPv6 unbracketed
                sent_by = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
        # ``o`` on an ``initial`` request (not routed in a dialog): the member whose fork or
        # server transaction the answers are for; they go to it while it lives, draining too,
        # not to whichever member the Call-ID hashes to now or the answer happens to reach.
        forker = f";{FORKER}={names.node_key(self.node_id)}" if initial else ""
        return (f"SIP/2.0/{transport} {sent_by};rport;branch={self._our_branch(request, index, flow)}"
                f";m={names.node_key(self._flow())}{f';fl={flow}' if flow else ''}{f';{IN_DIALOG}' if in_dialog else ''}"
                f"{forker}")

    def _our_branch(self, request: SipRequest, index: int = 0, flow: str | None = None) -> str:
        flow = self._caller_flow(request) if flow is None else flow
        return f"{FARM_BRANCH}{self._branch_base(request.top_via(), request.call_id, request.cseq().number, flow)}-{index}"

    def _caller_flow(self, request: SipRequest) -> str:
        """The caller's connection as our Via's ``fl`` (§18.2.2: a response goes back on it),
        which its Via cannot name: a WebSocket client's sent-by is an .invalid host (RFC 7118),
        a TCP client's is its listening port, not the connection's.  Empty over UDP."""
        if request.source is None or request.source[0] == "UDP":
            return ""
        return _flow_token(request.source, names.node_key(self._flow()))

    def _branch_base(self, incoming: Via, call_id: str, cseq: int, flow: str) -> str:
        """The transaction part of our branch: a MAC of the incoming branch, where its
        response goes (the stamped Via's received/rport, or the caller's flow), Call-ID
        and CSeq number -- what a retransmission, its CANCEL and the ACK of a failure share,
        so they get the same branch on every member; and what ``_on_response`` recomputes
        from the response's next Via to know the response is to a request we forwarded."""
        where = response_destination(incoming, None)
        text = "\x00".join((incoming.branch or "", *map(str, where), call_id, str(cseq), flow))
        return hmac.digest(self._branch_key, text.encode(), "sha256").hex()[:24]

    def _flow(self) -> str:
        return _flow_member.get() or self.node_id

    def _forward(self, request: SipRequest, source: Destination, destination: Destination,
                 member: str | None, record_route: bool, index: int = 0, in_dialog: bool = False) -> list[Outbound]:
        hops = _hops_left(request)
        if hops <= 0:
            return self._local(request, source, 483)
        # §16.6 step 3: decremented, or added as 70 when the request had none.
        request.headers.set("Max-Forwards", str(hops - 1) if request.headers.get("Max-Forwards") else "70")
        if record_route:
            for route in reversed(self._record_route(request, source, destination, member)):
                request.headers.insert_before_first("Record-Route", route)
        invite = request.method == "INVITE"
        via = self._via(request, destination[0], index, in_dialog=invite and in_dialog, member=member,
                        initial=not in_dialog)
        if len(self.entrusted) and request.method in ("INVITE", "CANCEL") and not in_dialog:
            via = self._entrusted_via(via, request.method, destination)
        request.headers.add_first("Via", via)
        if invite:
            # Kept for the ACK of its failure, which copies it and goes where it went
            # (§17.1.1.3); ``member`` None is the member the request arrived at.
            self.sent_invites.sent(parse_via(via).branch or "", request, destination,
                                   member or names.node_key(self._flow()), self.clock())
        self.metrics.forwarded.labels(kind="request", method=method_label(request.method)).inc()
        return [Outbound(request.encode(), destination, member)]

    def _entrusted_via(self, via: str, method: str, destination: Destination) -> str:
        """Our Via for a branch another member forked and put on the wire itself, entrusted
        here (its forker died, or is out of the spread): the caller's copy of the INVITE, or
        its CANCEL, forked here again has the same branch, and goes out under the top Via that
        INVITE had -- the phone matches by branch and sent-by (§17.2.3, §9.2).  Under ours, an
        INVITE was a merged request to it (§8.2.2.2: 482, or a second ringing) and a CANCEL
        matched nothing (481).  An INVITE so sent is this member's branch from now on
        (``EntrustedBranches.adopt``)."""
        branch = via.partition(";branch=")[2].partition(";")[0]
        now = self.clock()
        found = (self.entrusted.adopt(branch, destination, now) if method == "INVITE"
                 else self.entrusted.get(branch, now))
        if found is None or (method == "CANCEL" and found.destination != destination):
            return via
        return found.invite.headers.get("Via") or via

    def entrust(self, forker: str, invite: bytes, destination: Destination) -> bool:
        """Member ``forker`` (a node key) forked the INVITE ``invite`` (as kept for a CANCEL,
        ``sent_invites.kept_of``) and put it on the wire itself, to ``destination`` over UDP:
        kept, to be cancelled should it die (``entrusted_by``).  False for anything else."""
        try:
            request = parse_message(invite, len(invite))
            if (not isinstance(request, SipRequest) or request.method != "INVITE" or destination[0] != "UDP"
                    or not (request.top_via().branch or "").startswith(FARM_BRANCH)):
                return False
        except (SipParseError, URIError):
            return False
        self.entrusted.entrust(forker, request, destination, self.clock())
        return True

    def entrusted_by(self, forker: str) -> list[tuple[SipRequest, Destination]]:
        """Member ``forker`` (a node key) is gone, with the forks it kept: the UDP branches it
        put on the wire itself and entrusted here, without a final answer it told of and not
        older than a fork lives -- each once, the INVITE as kept and where it went, for the
        shell to cancel (§9.1; the phone stops ringing) and to fail with 430 made from it (its
        Vias lead the answer back to the caller, who hears 480).  Before, the phone rang until
        its user gave up and the caller heard no final answer from the farm."""
        return [(entry.invite, entry.destination) for entry in self.entrusted.orphaned_by(forker, self.clock())]

    def _binding_destination(self, binding: Binding) -> tuple[Destination, str | None]:
        """Where requests for ``binding`` go; URIError for none (not a SIP contact, or an
        address in ``sip_contact_deny_networks``: a binding made before the network was
        added to it)."""
        host, _, port = binding.source.rpartition(":")
        if binding.transport != "UDP":
            destination: Destination = (binding.transport, host, int(port))
            member = names.node_key(binding.member) if binding.member != self._flow() else None
        elif binding.nat:
            destination, member = ("UDP", host, int(port)), None
        else:
            contact = parse_uri(binding.contact)
            if not isinstance(contact, SipURI):
                raise URIError("not a SIP contact")
            destination, member = ("UDP", contact.params.get("maddr") or contact.host, contact.port or 5060), None
        if destination[1] in self.denied:
            self.metrics.dropped.labels(reason="denied destination").inc()
            raise URIError("a contact in sip_contact_deny_networks")
        return destination, member

    async def _new_request(self, request: SipRequest, source: Destination) -> list[Outbound]:
        uri = request.uri
        if not isinstance(uri, SipURI) or not uri.user:
            return self._local(request, source, 404)
        if request.method != "CANCEL":
            # Every request the farm forwards to a subscriber's phone comes from a subscriber
            # who proved it (407, the From user's HA1) -- not only an INVITE.  An unchallenged
            # MESSAGE, NOTIFY, REFER, OPTIONS ... let anyone reach any registered phone
            # through the farm (past the phone's NAT, which only the farm's flow opens) under
            # any of our users' names, and told a stranger whether a user was registered (an
            # answer from the phone against our 480).  A CANCEL cannot be challenged (RFC 3261
            # §22.1: it cannot be sent again); it only ends what an authenticated INVITE
            # started, and reaches its branches by the INVITE's own Via branch.
            try:
                caller = parse_address(request.headers.get("From") or "").uri
            except URIError:
                return self._local(request, source, 400, "Bad From")
            if not isinstance(caller, SipURI) or not caller.user:
                return self._local(request, source, 403)
            ok, answer = await self._authenticate(request, source, f"{caller.user}@{caller.host}".lower(),
                                                  caller.host.lower(), "Proxy-Authorization", 407)
            if not ok:
                return answer
            request.headers.remove("Proxy-Authorization")
        account = f"{uri.user}@{uri.host}".lower()
        bindings = await self.store.lookup(account)
        if self._cancelled and request.method == "INVITE" and self._answer_key(request) in self._cancelled:
            return self._local(request, source, 487)     # cancelled while we looked (_on_request)
        if not bindings:
            if request.method == "CANCEL":
                return self._local(request, source, 481)
            # §21.4.5: 404 when there is definitively no such user, 480 for one who is not
            # registered now (§21.4.18).  Only said to an authenticated caller (above).
            return self._local(request, source, 480 if await self._exists(account, uri.host.lower()) else 404)
        # INVITE and CANCEL go to every contact at once (parallel forking; branch j to contact
        # j, so a CANCEL finds the branches its INVITE made); anything else to the best one.
        targets = bindings if request.method in ("INVITE", "CANCEL") else bindings[:1]
        out: list[Outbound] = []
        unsent = 0
        for index, target in enumerate(targets):
            try:
                destination, member = self._binding_destination(target)
                branch = SipRequest(headers=request.headers.copy(), body=request.body, method=request.method,
                                    uri=parse_uri(target.contact))
            except URIError:
                unsent += 1
                continue
            branch.source = request.source
            out += self._forward(branch, source, destination, member, record_route=request.method in DIALOG_CREATING,
                                 index=index)
        if not out:
            return self._local(request, source, 480)
        if request.method not in ("INVITE", "CANCEL") and source[0] == "UDP":
            # A server transaction (server_transactions.py) for a MESSAGE, OPTIONS, SUBSCRIBE ...
            # from a UDP caller, which sends it again every T1 until it hears an answer (§17.1.2.2).
            # Without one a copy started over and met its own credentials again: a replayed
            # nonce count, so the caller was challenged (407) while its request was still on its
            # way, sent it once more with fresh credentials, and the callee got it twice.  Its
            # answer comes back to this member wherever it arrives (our Via's ``o``, forker_of):
            # copies are absorbed until it does, then get it (§17.2.2).  Handed over by the
            # member the caller sent it to, which puts it on the wire: a copy goes that way
            # again until the answer comes, as the stateless fallback would (that member's
            # client transaction starts no second time, the callee's absorbs the copy or
            # repeats its lost answer) -- absorbed, a frame lost inside the farm lost the
            # request for good and the caller heard 408.
            handed_over = self._flow() != self.node_id
            self.server_transactions.forwarded(self._answer_key(request), False, self.clock(),
                                               trying=out if handed_over else None)
        if request.method == "INVITE":
            # Kept for one branch too: Timer C (expire_forks) answers the caller 408 when
            # no branch ever gave a final answer.
            self._forks[self._fork_key(request)] = _Fork(self.clock() + FORK_LIFETIME, len(targets),
                                                         request=request, source=source, unsent=unsent)
            self._forks.move_to_end(self._fork_key(request))
            while len(self._forks) > FORK_CACHE:
                self._forks.popitem(last=False)
            # 100 Trying (§16.2, §17.2.1): the caller stops retransmitting, and a retransmission
            # that still comes gets the 100 again from the answer cache instead of a second
            # forwarding -- downstream, the sending member's client transactions retransmit
            # (retransmission.py).  Forwarding the caller's copies too doubled the traffic
            # to the callee, and under overload every copy was work again.
            out = [*self._local(request, source, 100), *out]
        return out

    def expire_forks(self) -> list[Outbound]:
        """Timer C (RFC 3261 16.6 step 11, 16.8): an INVITE none of whose branches gave a
        final answer within FORK_LIFETIME gets 408 to the caller (the branches' own best
        failure if some failed), and each branch still without a final answer is cancelled
        (§16.8: the phone stops ringing; its 487 is ACKed and goes no further).  The shell
        calls this every second."""
        now, out = self.clock(), []
        while self._forks:
            key, fork = next(iter(self._forks.items()))
            if fork.expires_at >= now:
                break
            del self._forks[key]
            if fork.answered or fork.request is None or fork.source is None:
                continue
            for index in range(fork.branches):
                sent = self.sent_invites.end(f"{FARM_BRANCH}{key}-{index}", now)
                if sent is not None:
                    member = sent.member if sent.member != names.node_key(self._flow()) else None
                    out.append(Outbound(cancel_of(sent.request).encode(), sent.destination, member))
            if fork.finals:
                best = _for_the_caller(min(fork.finals.values(), key=_preference))
                out += self._local(fork.request, fork.source, best.status, best.reason, remember=False)
            else:
                out += self._local(fork.request, fork.source, 408, remember=False)
        return out

    def flows_lost_with(self, member: str) -> list[tuple[bytes, Destination]]:
        """The member whose node key is ``member`` is gone (SIGKILLed: its heartbeat stale, its
        record FAILED or deleted), and every connection it held: each INVITE this member sent
        to a phone on a connection there that has no final answer yet is lost.  Nothing
        answered for it, and its caller heard nothing until Timer C (200 s).  Returned: a 430 Flow Failed
        for each (RFC 5626 §5.3: the flow is gone), untagged as made here and never ACKed, with
        the Vias of the INVITE as sent and where it went, for the shell to hand to ``handle``
        as the branch's answer -- the fork passes on the best answer once every branch has
        one, so the others still ring (§16.7).  Once per branch."""
        return [(make_response(sent.request, 430, to_tag=None).encode(), sent.destination)
                for sent in self.sent_invites.lost_with(member, self.clock())]

    def _fork_key(self, request: SipRequest) -> str:
        """The branch base of the INVITE's branches (``_branch_base``): their responses find
        the fork by it."""
        return self._branch_base(request.top_via(), request.call_id, request.cseq().number, self._caller_flow(request))

    async def _loose_route(self, request: SipRequest, source: Destination) -> list[Outbound]:
        if not await self._route_proven(request):
            # As Kamailio's default script answers an in-dialog request its loose_route()
            # does not take; an ACK gets nothing (_local).
            self.metrics.dropped.labels(reason="forged route").inc()
            return self._local(request, source, 404, "Not Here", remember=False)
        flow = self._other_party_flow(request, source)
        request.headers.remove_first("Route")
        while (route := request.headers.get("Route")) and self._is_ours(route):
            request.headers.remove_first("Route")   # spiralled through several members
        route = request.headers.get("Route")
        try:
            uri = parse_address(route).uri if route else request.uri
        except URIError:
            return self._local(request, source, 400, "Bad Route")
        if not isinstance(uri, SipURI):
            return self._local(request, source, 416)
        if route and "lr" not in uri.params:
            # §16.6 step 6: the next hop is a strict router (no lr), which routes by the
            # Request-URI: it gets its own URI there, and the Request-URI goes last in Route.
            request.headers.remove_first("Route")
            request.headers.add("Route", f"<{request.uri}>")
            request.uri = uri
        if request.method == "BYE":
            await self._call_ended(request)
        transport = (uri.transport or "udp").upper()
        destination: Destination = (transport, uri.host, uri.port or 5060)
        member = None
        # The other party's flow, when the Record-Route names one (a connection, or the source
        # of a phone behind NAT): the request goes out on it.
        if flow is not None and not route:
            destination = flow[0]
            if destination[0] != "UDP" and flow[1] != names.node_key(self._flow()):
                member = flow[1]
        else:
            # The target is what a phone wrote (the other party's Contact, or a Route or
            # Request-URI a caller chose): no farm Record-Route of a real dialog is needed to
            # write one, so any stranger could otherwise aim the farm anywhere with it.
            if destination[1] in self.denied:
                self.metrics.dropped.labels(reason="denied destination").inc()
                return self._local(request, source, 403, extra=[("Warning", _warning(self._hostport(), DENIED_TEXT))],
                                   remember=False)
        if source[0] != "UDP" or request.method == "ACK" or member is not None or _hops_left(request) <= 0:
            # Nothing to keep: a caller on a connection sends no copies; an ACK is answered
            # by nobody; a request another member puts on a connection has its responses
            # come back there; a 483 is an answer of our own, kept as such.
            return self._forward(request, source, destination, member, record_route=False, in_dialog=True)
        # A server transaction (server_transactions.py): the caller's copies get its last
        # answer.  Keyed and answered before _forward puts our Via on top.
        key = self._answer_key(request)
        trying = self._local(request, source, 100, remember=False) if request.method == "INVITE" else []
        self.server_transactions.forwarded(key, request.method == "INVITE", self.clock(), trying)
        return [*trying, *self._forward(request, source, destination, member, record_route=False, in_dialog=True)]

    async def _route_proven(self, request: SipRequest) -> bool:
        """The top Route (ours) was put there by the farm for this request's dialog: its MAC
        is good for the Call-ID and the From- or To-tag.  A Route without one (a dialog made
        before the farm signed) only while that call's record is on the bus, which bounds it
        to ``sip_dialog_record_ttl`` -- and to dialogs that were answered; a Call-ID is not
        guessable, so a stranger cannot name one."""
        try:
            uri = parse_address(request.headers.get("Route") or "").uri
            tags = [parse_address(request.headers.get(name) or "").tag or "" for name in ("From", "To")]
        except URIError:
            return False
        if not isinstance(uri, SipURI):
            return False
        if ROUTE_MAC in uri.params:
            return self.routes.verify(uri.params, request.call_id, tags)
        if self.clock() > self._unsigned_until:
            return False
        try:
            entry = await self.dialogs.get(names.sip_dialog_key(_hash(request.call_id)))
        except KeyNotFoundError:
            return False
        except Exception as exc:     # the bus away: not provable now
            log.info("an unsigned Route's dialog record could not be read: %s", exc)
            return False
        return bool(entry.value)

    def _other_party_flow(self, request: SipRequest, source: Destination) -> tuple[Destination, str] | None:
        """The flow of the party an in-dialog request goes to, from the top Route (ours): the
        callee's (``fe``) for a request of the caller -- its From-tag is the one the Route
        was signed for -- the caller's (``fc``) for one of the callee.  By tag, not by where
        the request came from: a NAT that gave the phone a new port mid-call must not have
        its BYE sent back to it.  An unsigned Route (before the farm signed): the flow the
        request did not come on."""
        try:
            uri = parse_address(request.headers.get("Route") or "").uri
            tag = parse_address(request.headers.get("From") or "").tag or ""
        except URIError:
            return None
        if not isinstance(uri, SipURI):
            return None
        flows = {name: _from_flow_token(uri.params.get(name) or "") for name in ("fc", "fe")}
        if ROUTE_MAC in uri.params:
            from_caller = self.routes.verify(uri.params, request.call_id, [tag])
            return flows["fe" if from_caller else "fc"]
        for found in flows.values():
            if found is not None and found[0] != source:
                return found
        return None

    async def _on_ack(self, request: SipRequest, source: Destination) -> list[Outbound]:
        tag = parse_address(request.headers.get("To") or "").tag or ""
        if tag.startswith(LOCAL_TAG) or self._answer_key(request) in self._answers:
            return []     # the ACK of a failure we answered ourselves
        routes = request.headers.get_all("Route")
        if routes and self._is_ours(routes[0]):
            if self.sent_invites and self.sent_invites.acked(self._our_branch(request), self.clock()):
                # The caller's ACK of a re-INVITE's failure (its INVITE's branch, §17.1.1.3):
                # the farm ACKed that failure itself, so this one ends here (§17.2.1, as tm's
                # t_relay absorbs it).  An ACK of a 2xx has a branch of its own and goes on.
                return []
            return await self._loose_route(request, source)
        # Without our Route it is the caller's ACK of a failure we passed on: the farm ACKed
        # that failure to the callee itself (hop by hop), so this one ends here.
        return []

    # --- responses ------------------------------------------------------------------------

    async def _on_response(self, response: SipResponse) -> list[Outbound]:
        vias = response.headers.get_all("Via")
        try:
            ours = parse_via(vias[0])
        except (URIError, IndexError):
            return []
        if not (ours.branch or "").startswith(FARM_BRANCH) or len(vias) < 2:
            if len(vias) == 1 and _answers_cancel(response):
                # The answer to a CANCEL the farm sent a branch itself (_cancel_others, §16.7
                # step 10): it ends here, as at a proxy's own client transaction (the shell's
                # has seen it), and is nothing stray -- one was counted per forked call answered.
                return []
            self.metrics.dropped.labels(reason="stray response").inc()
            return []
        response.headers.remove_first("Via")
        try:
            cseq = response.cseq()
            nxt: Via = response.top_via()
        except URIError:
            return []
        base, _, index_text = (ours.branch or "")[len(FARM_BRANCH):].partition("-")
        expected = self._branch_base(nxt, response.call_id, cseq.number, ours.params.get("fl") or "")
        if not hmac.compare_digest(base.encode(), expected.encode()):
            # Not to a request we forwarded to that next hop (or its Via was changed on the
            # way): discarded, as §16.11 has a response whose top Via is not ours.
            self.metrics.dropped.labels(reason="forged response").inc()
            return []
        method = method_label(cseq.method)
        if response.status >= 200:
            self.metrics.responses.labels(method=method, code=str(response.status)).inc()
        out: list[Outbound] = []
        index = int(index_text) if index_text.isdigit() else 0
        fork = self._forks.get(base) if cseq.method == "INVITE" else None
        if fork is not None and fork.expires_at < self.clock():
            fork = None
        if cseq.method == "INVITE" and response.status >= 300 and not _made_for_timeout(response):
            out += await self._ack_failure(response, ours, index)
        if fork is None and cseq.method == "INVITE" and response.status >= 300 and self.sent_invites.ended(ours.branch or "", self.clock()):
            return out      # a branch Timer C cancelled (expire_forks): the caller had its answer
        if cseq.method == "INVITE" and 200 <= response.status < 300:
            self.sent_invites.answered(ours.branch or "")
            await self.call_answered(response)
            if fork is not None and not fork.answered:
                fork.answered = True
                out += await self._cancel_others(response, ours, index, fork)
        elif fork is not None and response.status >= 300:
            # Keep the failure until every branch has one; then pass on the best (§16.7).
            fork.finals[index] = response
            if fork.answered or len(fork.finals) + fork.unsent < fork.branches:
                if response.status >= 600 and not fork.answered and not fork.declined:
                    # A global failure (a user declining on one device): §16.7 step 5 has the
                    # other branches cancelled rather than ringing on until Timer C, and the
                    # 6xx goes to the caller once they have answered (step 6, _preference).
                    fork.declined = True
                    out += await self._cancel_others(response, ours, index, fork)
                return out
            response = min(fork.finals.values(), key=_preference)
            del self._forks[base]
        elif fork is not None and fork.answered and response.status < 200:
            return out   # ringing of a branch being cancelled
        response = _for_the_caller(response)
        self.metrics.forwarded.labels(kind="response", method=method).inc()
        destination = response_destination(nxt, None)
        flow = _from_flow_token(ours.params.get("fl") or "")
        if flow is not None:
            # The request came on a connection: its answer goes back on it (§18.2.2), whatever
            # transport its Via names -- a TCP caller whose Via said UDP got the callee's
            # answers as datagrams to its Via's port, where nothing listened.
            destination = flow[0]
        elif destination[0] != "UDP":
            # No fl=: the request came over UDP, whatever its Via claims.  Its answer goes back
            # as a datagram; dialling the Via's (maddr) host:port let a subscriber have a member
            # open a connection to any address of the inner network, carrying what its other
            # phone answered.
            destination = ("UDP", destination[1], destination[2])
        member = ours.params.get("m")
        if destination[0] == "UDP" or member in (None, names.node_key(self._flow())):
            member = None
        passed = Outbound(response.encode(), destination, member)
        if self.server_transactions:
            # The caller's copies of the request from now on get this answer.
            key = _transaction_key(nxt, response.call_id, cseq.method, cseq.number)
            self.server_transactions.answered(key, response.status, [passed], self.clock())
        return [*out, passed]

    async def _branch_target(self, response: SipResponse, index: int) -> tuple[Binding, Destination, str | None] | None:
        """The contact branch ``index`` of the request went to, found again from the bindings --
        only when its member kept nothing of that branch (sent_invites.py): they may have
        changed since (a device registered or went, and the indexes moved)."""
        try:
            to = parse_address(response.headers.get("To") or "").uri
        except URIError:
            return None
        if not isinstance(to, SipURI) or not to.user:
            return None
        bindings = await self.store.lookup(f"{to.user}@{to.host}".lower())
        if index >= len(bindings):
            return None
        try:
            destination, member = self._binding_destination(bindings[index])
        except URIError:
            return None
        return bindings[index], destination, member

    def _hop_request(self, method: str, response: SipResponse, ours: Via, target: Binding, to: str) -> SipRequest:
        headers = Headers()
        headers.add("Via", str(ours))
        headers.add("From", response.headers.get("From") or "")
        headers.add("To", to)
        headers.add("Call-ID", response.call_id)
        headers.add("CSeq", f"{response.cseq().number} {method}")
        headers.add("Max-Forwards", "70")
        return SipRequest(headers=headers, method=method, uri=parse_uri(target.contact))

    async def _ack_failure(self, response: SipResponse, ours: Via, index: int) -> list[Outbound]:
        """ACK a branch's failure ourselves (§16.7 step 3: the proxy's client transaction does),
        as §17.1.1.3 builds it: from the INVITE we sent, to where it went (sent_invites.py)."""
        sent = self.sent_invites.failed(ours.branch or "", self.clock())
        if sent is not None:
            member = sent.member if sent.member != names.node_key(self._flow()) else None
            return [Outbound(build_ack(sent.request, response).encode(), sent.destination, member)]
        if IN_DIALOG in ours.params:
            # A re-INVITE this member did not send (another routed it, or it restarted): the
            # callee's registrations say nothing of where it went -- the To user's first
            # device is not the one in the call.  The caller's ACK goes on instead (_on_ack).
            return []
        # An initial INVITE's branch whose record is gone (its member restarted): its contact
        # found again from the bindings, as before the records were kept.
        found = await self._branch_target(response, index)
        if found is None:
            return []
        target, destination, member = found
        ack = self._hop_request("ACK", response, ours, target, response.headers.get("To") or "")
        return [Outbound(ack.encode(), destination, member)]

    async def _cancel_others(self, response: SipResponse, ours: Via, index: int, fork: _Fork) -> list[Outbound]:
        """A branch answered (§16.7 step 10), or declined for all with a 6xx (step 5): CANCEL
        the others still ringing, each built from the INVITE it got (§9.1), where that went."""
        out = []
        to = response.headers.get("To") or ""
        try:
            to_address = parse_address(to)
            to = str(Address(uri=to_address.uri, display_name=to_address.display_name,
                             params={k: v for k, v in to_address.params.items() if k != "tag"}))
        except URIError:
            return []
        base = (ours.branch or "").rpartition("-")[0]
        for other in range(fork.branches):
            if other == index or other in fork.finals:
                continue
            sent = self.sent_invites.get(f"{base}-{other}", self.clock())
            if sent is not None:     # built from the INVITE that branch got, where it went
                member = sent.member if sent.member != names.node_key(self._flow()) else None
                out.append(Outbound(cancel_of(sent.request).encode(), sent.destination, member))
                continue
            found = await self._branch_target(response, other)
            if found is None:
                continue
            target, destination, member = found
            via = Via(ours.transport, ours.host, ours.port, {**ours.params, "branch": f"{base}-{other}"})
            cancel = self._hop_request("CANCEL", response, via, target, to)
            out.append(Outbound(cancel.encode(), destination, member))
        return out

    # --- call-duration metering -----------------------------------------------------------

    async def call_answered(self, response: SipResponse) -> None:
        """An INVITE's 2xx passed through: remember when the call began (on the bus, so the
        member that sees the BYE can meter it)."""
        try:
            caller = parse_address(response.headers.get("From") or "").uri
        except URIError:
            return
        if not isinstance(caller, SipURI) or not caller.user:
            return
        value = {"started": self.clock(), "account": f"{caller.user}@{caller.host}".lower(), "domain": caller.host.lower()}
        try:
            # A TTL: a call whose BYE never comes (both phones lost) must not stay forever;
            # one that outlives it is metered by nobody.
            await self.dialogs.create(names.sip_dialog_key(_hash(response.call_id)), json.dumps(value).encode(),
                                      msg_ttl=self.settings.sip_dialog_record_ttl)
        except Exception:   # already recorded (a retransmitted 2xx) or the bus is away: no metering
            pass

    async def _call_ended(self, request: SipRequest) -> None:
        key = names.sip_dialog_key(_hash(request.call_id))
        try:
            entry = await self.dialogs.get(key)
        except KeyNotFoundError:
            return
        if not entry.value:
            return
        record = json.loads(entry.value)
        try:
            # The compare-and-set decides which BYE meters the call (both parties may send one).
            await self.dialogs.delete(key, last=entry.revision)
        except Exception:    # the other party's BYE metered it already
            return
        try:
            # A delete leaves a marker that no limit removes (history 1 keeps it, and it has no
            # age): one per call, forever.  A purge with a TTL replaces it by a marker that
            # expires, so an ended call leaves nothing on the bus after ENDED_MARKER_TTL.
            await self.dialogs.purge(key, msg_ttl=ENDED_MARKER_TTL)
        except Exception as exc:
            log.info("the ended call's record %s keeps its delete marker: %s", key, exc)
        seconds = max(0.0, self.clock() - float(record["started"]))
        self.meter(UsageCount(record["domain"], record["account"], "sip_call_seconds", round(seconds, 3)))


class _TooMany(Exception):
    pass


def _bound_as(bound: Mapping[str, Binding], contact: str) -> str:
    """The contact as ``bound`` holds it, if a binding's URI is equivalent to it (RFC 3261
    §19.1.4); else itself."""
    if contact in bound:
        return contact
    try:
        uri = parse_uri(contact)
        for stored in bound:
            other = parse_uri(stored)
            if isinstance(uri, SipURI) and isinstance(other, SipURI) and uri_equivalent(uri, other):
                return stored
    except URIError:
        pass
    return contact


class _OutOfOrder(Exception):
    """A REGISTER older (lower CSeq, same Call-ID) than the one that made a binding it names."""


FORK_CACHE = 20_000
FORK_LIFETIME = 200.0        # seconds: longer than an INVITE rings (Timer C is > 3 minutes)


@dataclass
class _Fork:
    """A forked INVITE at the member its Call-ID hashes to: which branches failed, whether one answered."""

    expires_at: float
    branches: int                        # contacts forked to, branch j to contact j
    answered: bool = False
    declined: bool = False               # a branch answered 6xx: the others were cancelled
    request: SipRequest | None = None    # the caller's INVITE as received, for Timer C's 408
    source: Destination | None = None
    finals: dict[int, SipResponse] = field(default_factory=dict)
    # Contacts that got no branch (no SIP URI, or in sip_contact_deny_networks): no answer
    # will come for them, so the caller hears the others' best failure, not Timer C's 408.
    unsent: int = 0


def _preference(response: SipResponse) -> tuple:
    """Which failure the caller hears when every branch failed (§16.7 step 6): 6xx, then the
    lowest class, preferring busy over unavailable over not found."""
    status = response.status
    return (0 if status >= 600 else 1, status // 100, {486: 0, 487: 1, 480: 2, 430: 2}.get(status, 3), status)


def _for_the_caller(response: SipResponse) -> SipResponse:
    """A 430 Flow Failed is said between proxies (RFC 5626 §11.5: an endpoint that sees one
    takes it for 400 Bad Request): the callee's flow is gone until its phone registers again,
    which the caller hears as 480 Temporarily Unavailable.  Anything else as it is.  One a
    member made (untagged: nobody downstream to ACK) gets the farm's own To tag, as a final
    answer must carry one (§8.2.6.2): the caller's ACK of it ends at the farm (``_on_ack``)."""
    if _made_for_timeout(response):
        to = response.headers.get("To") or ""
        response.headers.set("To", f"{to};tag={LOCAL_TAG}{_hash(response.call_id, response.headers.get('From') or '')[:10]}")
    if response.status == 430:
        response.status, response.reason = 480, REASONS[480]
    return response


def _to_uri(request: SipRequest):
    try:
        return parse_address(request.headers.get("To") or "").uri
    except URIError:
        return None


def _same_resource(text: str, uri) -> bool:
    """Whether a digest ``uri`` may stand for the Request-URI ``uri`` (RFC 2617 §3.2.2.5):
    one that names a user must name the Request-URI's (scheme, user, host and port, default
    ports filled in, parameters aside -- a phone may write it its own way).  One that names
    only a host is taken: sipp writes the address it sends to there (``sip:host:port``),
    whatever the request, and credentials made so were never tied to a callee anyway."""
    if text == str(uri):
        return True
    try:
        other = parse_uri(text)
    except URIError:
        return True
    if not isinstance(other, SipURI) or other.user is None:
        return True
    if not isinstance(uri, SipURI):
        return False

    def key(u: SipURI) -> tuple:
        return u.scheme, u.user, u.host, u.port or (5061 if u.scheme == "sips" else 5060)
    return key(other) == key(uri)


def _uri_reaches(uri, flow: Destination) -> bool:
    """Requests to ``uri`` (a phone's Contact) go where ``flow`` (its packets) came from."""
    if not isinstance(uri, SipURI):
        return False
    host = (uri.params.get("maddr") or uri.host).strip("[]").lower()
    return host == flow[1].strip("[]").lower() and (uri.port or 5060) == flow[2]


def _split_hostport(value: str) -> tuple[str, int]:
    """``sip_record_route_host`` as the settings leave it -- host, host:port or [v6]:port,
    IPv6 bracketed -- as (host, port); port 0 when none is named."""
    host, colon, port = value.rpartition(":")
    if not colon or not port.isdigit() or (":" in host and not (host.startswith("[") and host.endswith("]"))):
        return value, 0
    return host, int(port)


def _contact_reaches(contact: str | None, flow: Destination) -> bool:
    if not contact:
        return True          # nothing that would be sent to instead
    try:
        return _uri_reaches(parse_address(contact or "").uri, flow)
    except URIError:
        return False


def _answers_cancel(response: SipResponse) -> bool:
    try:
        return response.cseq().method == "CANCEL"
    except URIError:
        return False


def _made_for_timeout(response: SipResponse) -> bool:
    """The 408 a member's client transaction made when a branch never answered
    (``retransmission.py``), or the 430 a member made when a branch's flow was gone
    (``workload.py``; ``flows_lost_with`` when its member died): untagged, while a UAS tags
    every final answer (§8.2.6.2), so there is nobody downstream to ACK."""
    if response.status not in (408, 430):
        return False
    try:
        return parse_address(response.headers.get("To") or "").tag is None
    except URIError:
        return False


def _flow_token(flow: Destination, member: str) -> str:
    """A connection (transport, host, port) and the member holding it, as a URI or Via
    parameter value (a token: hex, so IPv6 colons need no escaping)."""
    return f"{flow[0]}|{flow[1]}|{flow[2]}|{member}".encode().hex()


def _from_flow_token(token: str) -> tuple[Destination, str] | None:
    try:
        transport, host, port, member = bytes.fromhex(token).decode().split("|")
        return ((transport, host, int(port)), member) if host else None
    except ValueError:
        return None
