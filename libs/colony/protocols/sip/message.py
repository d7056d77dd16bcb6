"""SIP messages (RFC 3261 §7): requests, responses and their header fields.

``Headers`` keeps every field in arrival order under its canonical name (compact forms
expanded: ``v`` is ``Via``), because order matters for Via, Route and Record-Route and a
proxy must forward what it does not understand unchanged.  Fields that the grammar allows
as comma-separated lists (Via, Contact, Route, ...) are split into one entry per value on
parsing, respecting quotes and angle brackets; others (Authorization, Date, ...) are kept
whole.  Typed readers (``via()``, ``cseq()``, ``address()``) parse on demand.

``encode()`` always writes ``Content-Length`` from the body it sends, so a message can never
announce more or less than it carries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from colony.protocols.sip.uri import URI, Address, URIError, _split_params, parse_address, parse_host

COMPACT = {
    "i": "Call-ID", "m": "Contact", "e": "Content-Encoding", "l": "Content-Length", "c": "Content-Type",
    "f": "From", "s": "Subject", "k": "Supported", "t": "To", "v": "Via", "o": "Event", "r": "Refer-To",
    "b": "Referred-By", "u": "Allow-Events", "x": "Session-Expires", "a": "Accept-Contact",
    "j": "Reject-Contact", "d": "Request-Disposition", "y": "Identity", "n": "Identity-Info",
}
_CANONICAL = {name.lower(): name for name in (
    "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Max-Forwards", "Content-Length", "Content-Type",
    "Content-Encoding", "Route", "Record-Route", "Expires", "Min-Expires", "Allow", "Supported", "Require",
    "Proxy-Require", "Unsupported", "User-Agent", "Server", "Authorization", "Proxy-Authorization",
    "WWW-Authenticate", "Proxy-Authenticate", "Authentication-Info", "Accept", "Accept-Encoding",
    "Accept-Language", "Subject", "Event", "Allow-Events", "Refer-To", "Referred-By", "Session-Expires",
    "Date", "Timestamp", "Warning", "Retry-After", "Organization", "Priority", "Reply-To", "Path",
    "In-Reply-To", "Call-Info", "Alert-Info", "Error-Info", "MIME-Version", "Content-Disposition",
    "Content-Language", "Accept-Contact", "Reject-Contact", "Request-Disposition", "Identity",
    "Identity-Info", "Flow-Timer", "Min-SE", "RSeq", "RAck", "P-Asserted-Identity", "Privacy",
)}
# Fields whose grammar is a comma-separated list (RFC 3261 §7.3.1): split into one value each.
LIST_FIELDS = frozenset({
    "Via", "Contact", "Route", "Record-Route", "Allow", "Supported", "Require", "Proxy-Require",
    "Unsupported", "Accept", "Accept-Encoding", "Accept-Language", "Content-Encoding", "Allow-Events",
    "Path", "In-Reply-To", "Call-Info", "Alert-Info", "Error-Info", "Warning", "Content-Language",
    "P-Asserted-Identity",
})


@lru_cache(maxsize=1024)      # every add and lookup asks; names from the wire are few (bounded)
def canonical_name(name: str) -> str:
    lower = name.lower()
    if lower in COMPACT:
        return COMPACT[lower]
    return _CANONICAL.get(lower) or "-".join(part.capitalize() for part in name.split("-"))


def split_list(value: str) -> list[str]:
    """Split a comma-separated field value, not inside quotes or <...>."""
    if "," not in value:     # the common case (one Via, one Contact): no character loop
        value = value.strip()
        return [value] if value else []
    parts, depth, quoted, escaped, start = [], 0, False, False, 0
    for i, c in enumerate(value):
        if escaped:
            escaped = False
        elif quoted:
            if c == "\\":
                escaped = True
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "<":
            depth += 1
        elif c == ">":
            depth = max(0, depth - 1)
        elif c == "," and depth == 0:
            parts.append(value[start:i].strip())
            start = i + 1
    parts.append(value[start:].strip())
    return [p for p in parts if p]


class Headers:
    """Header fields in order; names canonical; lookups case-insensitive.

    Lookups go through an index (name -> values in order) built on the first lookup after a
    change: handling one message asks for its Via, To, From, Call-ID and CSeq some thirty
    times, and a scan of the list each time was a tenth of a REGISTER's CPU."""

    def __init__(self, items: list[tuple[str, str]] | None = None) -> None:
        self._items: list[tuple[str, str]] = []
        self._index: dict[str, list[str]] | None = None
        for name, value in items or ():
            self.add(name, value)

    def _build(self) -> dict[str, list[str]]:
        index: dict[str, list[str]] = {}
        for n, v in self._items:
            found = index.get(n)
            if found is None:
                index[n] = [v]
            else:
                found.append(v)
        self._index = index
        return index

    def _values(self, name: str) -> list[str] | None:
        index = self._index
        if index is None:
            index = self._build()
        found = index.get(name)          # callers mostly name a field canonically already
        if found is None:
            found = index.get(canonical_name(name))
        return found

    def add(self, name: str, value: str) -> None:
        self._items.append((canonical_name(name), value))
        self._index = None

    def add_first(self, name: str, value: str) -> None:
        self._items.insert(0, (canonical_name(name), value))
        self._index = None

    def insert_before_first(self, name: str, value: str) -> None:
        """Put a value before the first existing one of its name (a new top Via or Record-Route)."""
        name = canonical_name(name)
        self._index = None
        for i, (n, _) in enumerate(self._items):
            if n == name:
                self._items.insert(i, (name, value))
                return
        self._items.append((name, value))

    def get(self, name: str, default: str | None = None) -> str | None:
        # _values inlined: handling a REGISTER asks some thirty times, and the extra call
        # was a tenth of what a lookup cost.
        index = self._index
        if index is None:
            index = self._build()
        found = index.get(name)
        if found is None:
            found = index.get(canonical_name(name))
        return found[0] if found else default

    def get_all(self, name: str) -> list[str]:
        found = self._values(name)
        return list(found) if found else []

    def set(self, name: str, value: str) -> None:
        self.remove(name)
        self.add(name, value)

    def remove(self, name: str) -> None:
        name = canonical_name(name)
        self._items = [(n, v) for n, v in self._items if n != name]
        self._index = None

    def replace_first(self, name: str, value: str) -> None:
        """Change the first value of ``name`` in place (the stamped top Via), or add it."""
        name = canonical_name(name)
        for i, (n, _) in enumerate(self._items):
            if n == name:
                self._items[i] = (name, value)
                if self._index is not None:
                    self._index[name][0] = value     # the index stays right: no rebuild
                return
        self.add(name, value)

    def remove_first(self, name: str) -> str | None:
        name = canonical_name(name)
        for i, (n, v) in enumerate(self._items):
            if n == name:
                del self._items[i]
                self._index = None
                return v
        return None

    def __contains__(self, name: str) -> bool:
        return bool(self._values(name))

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def copy(self) -> Headers:
        h = Headers()
        h._items = list(self._items)
        return h


@dataclass(frozen=True)
class Via:
    transport: str                     # UDP, TCP, TLS, WS, WSS (upper case)
    host: str
    port: int | None
    params: dict[str, str | None]
    # The sent-protocol's version, a token by the grammar (RFC 3261 §25.1): kept, so the 505
    # that answers a request of another version (RFC 4475 §3.1.2.16) repeats its Via as sent.
    version: str = "2.0"

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        hostport = f"{host}:{self.port}" if self.port else host
        params = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in self.params.items())
        return f"SIP/{self.version}/{self.transport} {hostport}{params}"


_VIA = re.compile(r"^\s*SIP\s*/\s*([A-Za-z0-9.!%*_+`'~\-]+)\s*/\s*([A-Za-z]+)\s+([^;\s]+(?:\s*:\s*\d+)?)\s*(;.*)?$",
                  re.IGNORECASE)


_VIAS: dict[str, Via] = {}
_VIAS_KEPT = 4096


def parse_via(value: str) -> Via:
    """One Via value.  Remembered (bounded): handling one message reads its top Via several
    times.  The Via returned is shared, so its ``params`` are never changed in place."""
    via = _VIAS.get(value)
    if via is None:
        via = _parse_via(value)
        remember_via(value, via)
    return via


def remember_via(value: str, via: Via) -> None:
    """``parse_via(value)`` is ``via`` (a Via we made and printed: the stamped top Via of a
    request is read again at once, and parsing it back cost as much as making it)."""
    if len(_VIAS) >= _VIAS_KEPT:
        _VIAS.clear()        # cheaper than keeping an LRU order on every hit; refilled at once
    _VIAS[value] = via


def _parse_via(value: str) -> Via:
    # What nearly every phone sends -- "SIP/2.0/UDP host:port;params", one space, no other
    # white space -- read with splits: the general regex and its groups cost half of a
    # Via's parse, and every packet's top Via is new (its branch).  Anything else (case,
    # spacing, a missing host) takes the general path, whose answer this one always equals.
    if value.startswith("SIP/2.0/"):
        transport, space, rest = value[8:].partition(" ")
        if space and transport.isalpha() and transport.isascii() and not rest.startswith(";") \
                and rest.split() == [rest]:          # not empty, no white space (any \s)
            hostport = rest.partition(";")[0]
            host, port = parse_host(hostport)
            return Via(transport.upper(), host, port, _split_params(rest[len(hostport):]))
    return _parse_via_general(value)


def _parse_via_general(value: str) -> Via:
    match = _VIA.match(value)
    if not match:
        raise URIError(f"bad Via {value!r}")
    # "host : port" (spacing RFC 4475 allows) without a regex substitution per packet
    host, port = parse_host("".join(match.group(3).split()))
    params = _split_params(match.group(4) or "")
    return Via(match.group(2).upper(), host, port, params, match.group(1))


@dataclass(frozen=True)
class CSeq:
    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


_CSEQS: dict[str, CSeq] = {}
_CSEQS_KEPT = 4096


def parse_cseq(value: str) -> CSeq:
    """A CSeq value; remembered (bounded, shared like ``parse_via``'s): one message's CSeq is
    read four or five times (parser, answer key, registrar), and values repeat across calls."""
    cseq = _CSEQS.get(value)
    if cseq is None:
        cseq = _parse_cseq(value)
        if len(_CSEQS) >= _CSEQS_KEPT:
            _CSEQS.clear()
        _CSEQS[value] = cseq
    return cseq


def _parse_cseq(value: str) -> CSeq:
    parts = value.split()
    if len(parts) != 2 or not parts[0].isdigit() or len(parts[0]) > 10:
        raise URIError(f"bad CSeq {value!r}")
    number = int(parts[0])
    if number >= 2 ** 31:
        raise URIError(f"CSeq number {number} is not below 2**31")
    return CSeq(number, parts[1])


@dataclass
class _Message:
    headers: Headers
    body: bytes = b""
    version: str = "SIP/2.0"
    # Where it came from, set by the transport: (transport, host, port) of the peer.
    source: tuple[str, str, int] | None = field(default=None, compare=False)

    # --- typed readers ----------------------------------------------------------------------

    def vias(self) -> list[Via]:
        return [parse_via(v) for v in self.headers.get_all("Via")]

    def top_via(self) -> Via:
        value = self.headers.get("Via")
        if value is None:
            raise URIError("no Via")
        return parse_via(value)

    def cseq(self) -> CSeq:
        return parse_cseq(self.headers.get("CSeq") or "")

    def address(self, name: str) -> Address:
        value = self.headers.get(name)
        if value is None:
            raise URIError(f"no {name}")
        return parse_address(value)

    def addresses(self, name: str) -> list[Address]:
        return [parse_address(v) for v in self.headers.get_all(name)]

    @property
    def call_id(self) -> str:
        return self.headers.get("Call-ID") or ""

    def _encode(self, start_line: str) -> bytes:
        lines = [start_line]
        for name, value in self.headers:
            if name != "Content-Length":
                lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body


@dataclass
class SipRequest(_Message):
    method: str = ""
    uri: URI | None = None

    def encode(self) -> bytes:
        return self._encode(f"{self.method} {self.uri} {self.version}")


@dataclass
class SipResponse(_Message):
    status: int = 0
    reason: str = ""

    def encode(self) -> bytes:
        return self._encode(f"{self.version} {self.status} {self.reason}")


SipMessage = SipRequest | SipResponse

REASONS = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued", 183: "Session Progress",
    200: "OK", 202: "Accepted", 300: "Multiple Choices", 301: "Moved Permanently", 302: "Moved Temporarily",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    407: "Proxy Authentication Required", 408: "Request Timeout", 410: "Gone", 413: "Request Entity Too Large",
    414: "Request-URI Too Long", 415: "Unsupported Media Type", 416: "Unsupported URI Scheme",
    420: "Bad Extension", 421: "Extension Required", 423: "Interval Too Brief", 429: "Too Many Requests",
    430: "Flow Failed",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist", 482: "Loop Detected",
    483: "Too Many Hops", 484: "Address Incomplete", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 491: "Request Pending", 500: "Server Internal Error", 501: "Not Implemented",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}

# Copied from a request into every response to it (RFC 3261 §8.2.6.2).
_RESPONSE_COPIED = ("Via", "From", "To", "Call-ID", "CSeq")


def _copied(request: SipRequest, status: int, to_tag: str | None):
    """The request's fields a response to it repeats, in order, the To tagged ``to_tag`` if
    it has no tag yet (not in a 100)."""
    values = request.headers._values
    for name in _RESPONSE_COPIED:
        found = values(name) or ()
        # One each of the fields that have one value: a request refused for repeating them
        # (RFC 4475 §3.3.8) is answered with the first, not with a response as broken.
        for value in (found if name == "Via" else found[:1]):
            if name == "To" and to_tag and status != 100:
                try:
                    to = parse_address(value)
                except URIError:
                    pass
                else:
                    if to.tag is None:
                        value = f"{value};tag={to_tag}"
            yield name, value


def make_response(request: SipRequest, status: int, reason: str | None = None, *, to_tag: str | None = None,
                  extra: list[tuple[str, str]] | None = None, body: bytes = b"") -> SipResponse:
    headers = Headers()
    headers._items.extend(_copied(request, status, to_tag))   # the copied names are canonical already
    if status == 100 and "Timestamp" in request.headers:
        headers.add("Timestamp", request.headers.get("Timestamp") or "")
    for name, value in extra or ():
        headers.add(name, value)
    return SipResponse(headers=headers, body=body, status=status, reason=reason or REASONS.get(status, "Unknown"))


def encode_response(request: SipRequest, status: int, reason: str | None = None, *, to_tag: str | None = None,
                    extra: list[tuple[str, str]] | None = None, body: bytes = b"") -> bytes:
    """``make_response(...).encode()``, byte for byte, without the response's ``Headers`` and
    message objects: an answer a server makes itself is only sent, and building those
    objects to print them at once was a tenth of a REGISTER's Python."""
    lines = [f"SIP/2.0 {status} {reason or REASONS.get(status, 'Unknown')}"]
    for name, value in _copied(request, status, to_tag):
        lines.append(f"{name}: {value}")
    if status == 100 and "Timestamp" in request.headers:
        lines.append(f"Timestamp: {request.headers.get('Timestamp') or ''}")
    for name, value in extra or ():
        name = canonical_name(name)
        if name != "Content-Length":      # encode() writes the body's own, last
            lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body
