"""Reading SIP messages from bytes: datagrams (UDP) and byte streams (TCP, TLS).

Theory of operation
-------------------
``parse_message(data)`` turns one whole message into a ``SipRequest`` or ``SipResponse`` or
raises ``SipParseError``.  The error carries the status a server answers a *request* with
(400, 416, 505, 513...) and, when enough of the request was readable to address a response
to it (Via, From, To, Call-ID, CSeq), the partly parsed request, so the transport can send
that answer; otherwise (a broken response, or garbage) the message is dropped silently, as
RFC 3261 §16.3/§18 want for what cannot be answered.

What we tolerate (RFC 3261 §7.3.1 and the RFC 4475 "valid" torture cases): any case in
header names and compact forms, white space around the colon and inside values, folded
header lines (a line that starts with SP/HT continues the previous one), bare LF line ends,
unknown header fields and methods, escaped characters in URIs, Content-Length shorter than
a datagram (the rest is ignored, §18.3); and the RFC 5118 IPv6 cases: IPv6 references in
any URI and Via, IPv4-mapped addresses, ``received`` with or without brackets, the
three-colon reference RFC 3261's grammar allows (read as the address it means, ``uri.py``).

What we refuse (the RFC 4475 "invalid" ones): a start line that is not exactly three
SP-separated parts, white space or ``<>`` in the Request-URI, a version other than SIP/2.0
(505), a status code outside 100..699, a header line without a colon or with an invalid
name, a missing mandatory header (Via, From, To, Call-ID, CSeq), a CSeq whose method is not
the request's, a non-numeric or negative Content-Length, a Content-Length longer than the
datagram, Max-Forwards outside 0..255, an IPv6 address without brackets or brackets around
anything but an IPv6 address (RFC 5118 §4.2), an unknown URI scheme in a request (416), and any
message larger than ``max_size`` (513 Message Too Large, RFC 3261 §21.5.14; 413 is a body
the server will not take).

Nearly every message is CRLF throughout and not folded: ``parse_message`` reads those with
one search and one split, and hands anything else (a bare LF, a folded or bad line, too many
fields, a head that is not UTF-8) to the general path, which gives the answers described
above; the two must agree on any bytes (tests/unit/protocols/sip/test_parser.py).

``StreamFramer`` cuts a byte stream into messages: it skips the CRLFs a client sends as
keep-alive between messages (answering a CRLFCRLF "ping" with a CRLF "pong", RFC 5626 §4.4.1),
needs Content-Length on a stream (§18.3), and never holds more than ``max_size`` bytes of
one message: a larger one is an error that ends the connection.  When the request's head was
read whole (a missing or bad Content-Length, or one that makes the message too large), the
error carries the partly parsed request like ``parse_message``'s, so the shell can answer it
(400, 513) before it closes the connection.
"""

from __future__ import annotations

import re

from colony.protocols.sip.message import Headers, SipRequest, SipResponse, canonical_name, parse_cseq, split_list, LIST_FIELDS, parse_via
from colony.protocols.sip.uri import OtherURI, URIError, parse_address, parse_uri

MAX_SIZE = 65_535
MAX_HEADERS = 256
MANDATORY = ("Via", "From", "To", "Call-ID", "CSeq")

_KEEPALIVES = re.compile(rb"[\r\n]+")
_CONTENT_LENGTH = re.compile(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\S*)[ \t]*\r?$")
_TOKEN = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")
# Header names as they came on the wire (before the colon, spacing included) -> canonical name,
# for names already found valid: the same few dozen names arrive in every message.  Bounded.
_NAMES: dict[str, str] = {}
_NAMES_KEPT = 1024
_VERSION = re.compile(r"^SIP/2\.0$", re.IGNORECASE)
# Methods compared before the token regex is asked (any other token is as good, RFC 3261 §25.1).
_METHODS = frozenset({"REGISTER", "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "MESSAGE", "INFO", "UPDATE",
                      "REFER", "NOTIFY", "SUBSCRIBE", "PRACK", "PUBLISH"})


class SipParseError(ValueError):
    def __init__(self, status: int, reason: str, request: SipRequest | None = None) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.request = request     # set when a response can be addressed to it


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    """Header section and body, split at the first empty line whatever its line ends."""
    i = data.find(b"\r\n\r\n")
    # CRLF throughout (nearly every message): no bare-LF blank line ends the head earlier.
    # A "\n\r\n" ending at i + 1 would (a bare LF line, then CRLF).
    if i >= 0 and data.find(b"\n\n", 0, i) < 0 and data.find(b"\n\r\n", 0, i + 2) < 0:
        return data[:i], data[i + 4:]
    found = [(i, len(sep)) for sep in (b"\r\n\r\n", b"\n\n", b"\n\r\n") if (i := data.find(sep)) >= 0]
    if not found:
        return data, b""
    i, n = min(found)
    return data[:i], data[i + n:]


def _lines(head: str) -> list[str]:
    raw = head.rstrip("\r").replace("\r\n", "\n").split("\n")
    if "\n " not in head and "\n\t" not in head:
        return raw      # no folded line (nearly every message): nothing to join
    lines: list[str] = []
    for line in raw:
        if line[:1] in (" ", "\t") and lines:
            lines[-1] = lines[-1].rstrip() + " " + line.strip()   # folded continuation
        else:
            lines.append(line)
    return lines


def parse_message(data: bytes, max_size: int = MAX_SIZE) -> SipRequest | SipResponse:
    if len(data) > max_size:
        raise SipParseError(513, "Message Too Large")
    data = data.lstrip(b"\r\n")
    headers = None
    # CRLF throughout, nothing folded (nearly every message): one search, one split.  With no
    # bare LF, the general path's split of the head and of its lines finds these same lines;
    # anything else -- a bare LF, a folded or bad line, too many fields, bytes that are not
    # UTF-8 -- is left to the general path, which answers it as it always did.
    end = data.find(b"\r\n\r\n")
    if end > 0:
        try:
            head = data[:end].decode("utf-8")
        except UnicodeDecodeError:
            head = ""
        lines = head.split("\r\n")
        if len(lines) == head.count("\n") + 1 and lines[0] and not head.endswith("\r"):
            headers = _fields(lines[1:], fast=True)
            body = data[end + 4:]
    if headers is None:
        head_bytes, body = _split_head(data)
        try:
            head = head_bytes.decode("utf-8")
        except UnicodeDecodeError:
            raise SipParseError(400, "Header Section Is Not UTF-8") from None
        lines = _lines(head)
        if not lines[0]:
            raise SipParseError(400, "Empty Start Line")
        headers = _fields(lines[1:], fast=False)
    start = lines[0]

    parts = start.split(" ")
    if start.startswith("SIP/") or start[:4].upper() == "SIP/":
        return _response(parts, headers, body, start)
    return _request(parts, headers, body)


def _fields(header_lines: list[str], fast: bool) -> Headers | None:
    """The header fields of ``header_lines``, names canonical, list fields split.  ``fast``
    (lines split at CRLF, not unfolded): None for a line only the general path reads right --
    folded or malformed -- or too many fields; that path then raises what it must."""
    headers = Headers()
    items = headers._items          # filled here directly: every name is made canonical below
    names = _NAMES
    for line in header_lines:
        name, colon, value = line.partition(":")
        # A name seen before (with its spacing) before a colon: valid, canonical -- and the
        # line neither blank nor folded (no name kept starts with white space), so those
        # tests are paid only by lines of a new name.
        canonical = names.get(name) if colon else None
        if canonical is None:
            if fast and line[:1] in (" ", "\t"):
                return None
            if not line.strip():
                continue
            stripped = name.strip()
            if not colon or not _TOKEN.match(stripped):
                if fast:
                    return None
                raise SipParseError(400, "Malformed Header Line")
            canonical = canonical_name(stripped)
            if len(names) >= _NAMES_KEPT:
                names.clear()
            names[name] = canonical
        value = value.strip()
        if canonical not in LIST_FIELDS:
            items.append((canonical, value))
        elif "," not in value:      # one Via, one Contact: split_list's answer without the call
            if value:
                items.append((canonical, value))
        else:
            for part in split_list(value):
                items.append((canonical, part))
        if len(items) > MAX_HEADERS:
            if fast:
                return None
            raise SipParseError(400, "Too Many Header Fields")
    return headers


def _content(headers: Headers, body: bytes, request: SipRequest | None) -> bytes:
    values = headers._values("Content-Length")
    if not values:
        return body
    if len(values) > 1 and len(set(values)) > 1:
        raise SipParseError(400, "Conflicting Content-Length", request)
    text = values[0]
    if not text.isdigit() or len(text) > 9:
        raise SipParseError(400, "Bad Content-Length", request)
    length = int(text)
    if length > len(body):
        raise SipParseError(400, "Content-Length Larger Than Message", request)
    return body[:length]


def _addressable(headers: Headers) -> bool:
    """A response can be made for the request (§8.2.6.2 copies Via, From, To, Call-ID and
    CSeq) and reach its sender: every one is there and its top Via reads.  A CSeq number out
    of range is copied as it came: it is what the 400 is about (RFC 4475 §3.1.2.4), and the
    sender matches its answer by the Via's branch and the CSeq's method (§17.1.3)."""
    if any(headers.get(name) is None for name in MANDATORY):
        return False
    via, cseq = headers.get("Via") or "", (headers.get("CSeq") or "").split()
    if len(cseq) != 2 or not cseq[0].isdigit():
        return False
    try:
        parse_via(via)
    except URIError:
        return False
    return True


def _refused(status: int, reason: str, parts: list[str], headers: Headers) -> SipParseError:
    """The error for a bad request, with the partly parsed request when an answer can be
    addressed to it -- worked out only for a request that is refused."""
    partial = SipRequest(headers=headers, method=parts[0] if parts else "", uri=None)
    return SipParseError(status, reason, partial if _addressable(headers) else None)


def _request(parts: list[str], headers: Headers, body: bytes) -> SipRequest:
    if len(parts) != 3:
        raise _refused(400, "Malformed Request Line", parts, headers)
    method, uri_text, version = parts
    # The usual method and version compared, not matched: a regex each was a tenth of a parse.
    if method not in _METHODS and not _TOKEN.match(method):
        raise _refused(400, "Bad Method", parts, headers)
    if version != "SIP/2.0" and not _VERSION.match(version):
        raise _refused(505, "Version Not Supported", parts, headers)
    # The mandatory fields read once from the index (every name in it is canonical), not
    # looked up again for each check below.
    index = headers._build()
    found = [index.get(name) for name in MANDATORY]
    if None in found:
        raise _refused(400, f"Missing {MANDATORY[found.index(None)]}", parts, headers)
    vias, froms, tos, call_ids, cseqs = found
    for name, values in (("From", froms), ("To", tos), ("Call-ID", call_ids), ("CSeq", cseqs)):
        if len(values) > 1:      # one value each (§20): which one counts is anyone's guess
            raise _refused(400, f"Multiple {name} Values", parts, headers)
    try:
        cseq = parse_cseq(cseqs[0])
        for value in vias:
            parse_via(value)
        parse_address(froms[0])
        parse_address(tos[0])
    except URIError as exc:
        raise _refused(400, f"Bad Header: {str(exc)[:60]}", parts, headers) from None
    if cseq.method != method:
        raise _refused(400, "CSeq Method Does Not Match", parts, headers)
    max_forwards = index.get("Max-Forwards")
    if max_forwards is not None and (len(max_forwards) > 1 or not max_forwards[0].isdigit()
                                     or int(max_forwards[0]) > 255):
        raise _refused(400, "Bad Max-Forwards", parts, headers)
    if uri_text.startswith("<"):
        raise _refused(400, "Request-URI In Angle Brackets", parts, headers)
    try:
        uri = parse_uri(uri_text)
    except URIError as exc:
        raise _refused(400, f"Bad Request-URI: {str(exc)[:60]}", parts, headers) from None
    if isinstance(uri, OtherURI) and uri.scheme not in ("tel",):
        raise _refused(416, "Unsupported URI Scheme", parts, headers)
    if getattr(uri, "headers", None):
        raise _refused(400, "Headers In Request-URI", parts, headers)  # RFC 3261 §19.1.5
    request = SipRequest(headers=headers, method=method, uri=uri, version="SIP/2.0")
    request.body = _content(headers, body, request)
    return request


def _response(parts: list[str], headers: Headers, body: bytes, start: str) -> SipResponse:
    if len(parts) < 2 or not _VERSION.match(parts[0]):
        raise SipParseError(505 if parts and parts[0].upper().startswith("SIP/") else 400, "Bad Status Line")
    code = parts[1]
    if len(code) != 3 or not code.isdigit() or not 100 <= int(code) <= 699:
        raise SipParseError(400, "Bad Status Code")
    missing = [name for name in MANDATORY if headers.get(name) is None]
    if missing:
        raise SipParseError(400, f"Missing {missing[0]}")
    try:
        parse_cseq(headers.get("CSeq") or "")
        parse_via(headers.get("Via") or "")
    except URIError:
        raise SipParseError(400, "Bad Header") from None
    response = SipResponse(headers=headers, status=int(code), reason=start.split(" ", 2)[2] if len(parts) > 2 else "")
    response.body = _content(headers, body, None)
    return response


class StreamFramer:
    """Cut a TCP/TLS byte stream into messages (sans-IO: feed bytes, take messages)."""

    PONG = b"\r\n"

    def __init__(self, max_size: int = MAX_SIZE) -> None:
        self.max_size = max_size
        self._buffer = bytearray()
        self.pings = 0            # CRLFCRLF keep-alives seen (each wants a CRLF pong)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def pending(self) -> bool:
        """Part of a message is held (CRs and LFs between messages are keep-alives, not one):
        the shell gives such a connection a deadline to finish it."""
        return bool(self._buffer) and bool(self._buffer.strip(b"\r\n"))

    def next_message(self) -> bytes | None:
        """The next whole message's bytes, or None until more data arrives.  Raises
        ``SipParseError`` when the stream cannot continue (the connection must close)."""
        buf = self._buffer
        while True:  # CRLFs before a start line are keep-alives (RFC 3261 §7.5, RFC 5626)
            if buf.startswith(b"\r\n\r\n"):
                self.pings += 1
                del buf[:4]
                if buf.startswith(b"\r\n\r\n"):      # pings back to back: perhaps a flood
                    self._drop_keepalives(buf)
            elif buf.startswith(b"\r\n"):
                if len(buf) < 4 and b"\r\n\r\n".startswith(bytes(buf)):
                    return None  # perhaps the first half of a ping
                del buf[:2]
            elif buf.startswith(b"\n"):
                del buf[:1]
            else:
                break
        end = buf.find(b"\r\n\r\n")
        sep = 4
        if end < 0:
            end, sep = buf.find(b"\n\n"), 2
        if end < 0:
            if len(buf) > self.max_size:
                raise SipParseError(513, "Message Too Large")   # no head to address an answer
            return None
        head = bytes(buf[:end])
        lengths = {m.group(1) for m in _CONTENT_LENGTH.finditer(head)}
        if not lengths:
            raise self._refused(head, 400, "Missing Content-Length On A Stream")
        if len(lengths) > 1:
            # Where this message ends is anyone's guess (RFC 4475 §3.3.9): the stream cannot
            # go on -- read by one of them, the rest of the body became the next "message".
            raise self._refused(head, 400, "Conflicting Content-Length")
        length = lengths.pop()
        if not length.isdigit() or len(length) > 9:
            raise self._refused(head, 400, "Bad Content-Length")
        total = end + sep + int(length)
        if total > self.max_size:
            raise self._refused(head, 513, "Message Too Large")
        if len(buf) < total:
            return None
        message = bytes(buf[:total])
        del buf[:total]
        return message

    def _drop_keepalives(self, buf: bytearray) -> None:
        """A run of keep-alives dropped at C speed: a flood (16,384 pings per 64 KiB read) cost
        one Python turn per ping, ~30 us of CPU per KiB, so one client kept a member's loop
        ~40 % busy.  The last bytes are left to ``next_message``'s loop (they may be half a
        ping, and are counted again): the count only decides whether a pong is due, so
        counting the whole run cannot miss a ping the cut splits."""
        run = _KEEPALIVES.match(buf)
        if run is not None and run.end() > 8:
            self.pings += buf.count(b"\r\n\r\n", 0, run.end())
            del buf[:run.end() - 4]

    def _refused(self, head: bytes, status: int, reason: str) -> SipParseError:
        """The error that ends the stream, with the request when its head can address an answer."""
        try:
            message = parse_message(head + b"\r\n\r\n", max(self.max_size, len(head) + 4))
        except SipParseError as exc:
            message = exc.request
        return SipParseError(status, reason, message if isinstance(message, SipRequest) else None)
