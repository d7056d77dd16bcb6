"""SIP URIs (RFC 3261 §19.1, §25.1) and name-addr / addr-spec values (§20.10, §25.1).

Parsed into small frozen objects that print back to a canonical form.  Tolerant where the
grammar lets senders vary (case of the scheme and of parameter names, escaped characters in
the user part, IPv6 references), strict where a wrong guess would route a call wrongly (a
missing host, an unbalanced ``<``, a port that is not a number).

``SipURI.user`` is *unescaped* (``%41`` -> ``A``, RFC 3261 §19.1.4 compares URIs after
unescaping); ``__str__`` escapes it again where the grammar requires.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from urllib.parse import quote, unquote_to_bytes


class URIError(ValueError):
    """The text is not a URI we can route by; the message names what is wrong."""


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
# RFC 3261 user unreserved + unreserved + escaped; anything else must be %-escaped on output.
_USER_SAFE = "-_.!~*'()&=+$,;?/"
_TOKEN = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")
# Compiled once: every packet's Via and URIs pass parse_host, and re's own cache lookup for
# a pattern given as text cost as much as the match.
_IPV6 = re.compile(r"[0-9A-Fa-f:.]+")
# RFC 3261's IPv6address (copied from RFC 2373) also derives a third colon before an embedded
# IPv4 address; RFC 5954 corrected the grammar, RFC 5118 §4.10 asks that it be tolerated.
_ABNF_BUG = re.compile(r"^([0-9A-Fa-f:]*?):::(\d+\.\d+\.\d+\.\d+)$")
_HOSTNAME = re.compile(r"[A-Za-z0-9\-._]+")


def _split_params(text: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for part in text.split(";"):
        if not part.strip():
            continue  # ";;" and folded white space between parameters
        name, eq, value = part.partition("=")
        name = name.strip().lower()
        if not name:
            raise URIError(f"empty parameter name in {text!r}")
        params[name] = value.strip() if eq else None
    return params


def _format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


@dataclass(frozen=True)
class SipURI:
    scheme: str                      # "sip" or "sips" (lower case)
    host: str                        # lower case; IPv6 without brackets
    user: str | None = None          # unescaped
    password: str | None = None
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict, compare=False, hash=False)
    headers: str | None = field(default=None, compare=False, hash=False)

    @property
    def hostport(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}" if self.port else host

    @property
    def aor(self) -> str:
        """Address of record: ``user@host`` (what a registrar keys bindings by)."""
        return f"{self.user}@{self.host}" if self.user is not None else self.host

    @property
    def transport(self) -> str | None:
        value = self.params.get("transport")
        return value.lower() if value else None

    def with_params(self, **params: str | None) -> SipURI:
        return replace(self, params={**self.params, **params})

    def without_params(self, *names: str) -> SipURI:
        return replace(self, params={k: v for k, v in self.params.items() if k not in names})

    def __str__(self) -> str:
        userinfo = ""
        if self.user is not None:
            userinfo = quote(self.user, safe=_USER_SAFE)
            if self.password is not None:
                userinfo += ":" + quote(self.password, safe="-_.!~*'()&=+$,")
            userinfo += "@"
        headers = f"?{self.headers}" if self.headers else ""
        return f"{self.scheme}:{userinfo}{self.hostport}{_format_params(self.params)}{headers}"


# uri-parameters that make two URIs differ when only one has them (§19.1.4; transport:
# its examples, "can resolve to different transports").
_NEVER_IGNORED = frozenset({"user", "ttl", "method", "maddr", "transport"})


def uri_equivalent(a: SipURI, b: SipURI) -> bool:
    """RFC 3261 §19.1.4: the same scheme, userinfo (case-sensitive, after unescaping), host
    and port (an explicit port is not the same as none); every parameter both have equal (case
    aside); one that only one has ignored, unless it is user, ttl, method, maddr or transport;
    the header components equal.  A registrar matches a Contact to a binding so (§10.3 step 7)."""
    if (a.scheme, a.user, a.password, a.host, a.port) != (b.scheme, b.user, b.password, b.host, b.port):
        return False
    pa = {k: v.lower() if v else v for k, v in a.params.items()}
    pb = {k: v.lower() if v else v for k, v in b.params.items()}
    if any(pa[k] != pb[k] for k in pa.keys() & pb.keys()):
        return False
    if (pa.keys() ^ pb.keys()) & _NEVER_IGNORED:
        return False
    return sorted((a.headers or "").split("&")) == sorted((b.headers or "").split("&"))


@dataclass(frozen=True)
class OtherURI:
    """A URI of another scheme (tel:, urn:, ...): kept as text, compared case-insensitively
    in its scheme.  A proxy can still forward to it; a registrar refuses it (416)."""

    scheme: str
    rest: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.rest}"


URI = SipURI | OtherURI


def _unescape(text: str, what: str) -> str:
    try:
        return unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        raise URIError(f"{what} {text!r} is not UTF-8 once unescaped") from None


def parse_host(text: str) -> tuple[str, int | None]:
    """``host[:port]`` with IPv6 references in brackets -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise URIError(f"unterminated IPv6 reference in {text!r}")
        host, rest = _ipv6_reference(text[1:end]), text[end + 1:]
    else:
        host, sep, port_text = text.partition(":")
        rest = sep + port_text
        if not host or not _HOSTNAME.fullmatch(host):
            raise URIError(f"bad host {host!r}")
    port = None
    if rest:
        if not rest.startswith(":") or not rest[1:].isdigit():
            raise URIError(f"bad port in {text!r}")
        port = int(rest[1:])
        if not 0 < port < 65536:
            raise URIError(f"port {port} out of range")
    return host.lower(), port


def _ipv6_reference(host: str) -> str:
    """The address inside ``[...]``, as written (lower case), once it is one (RFC 4291): a
    host the farm may send to is an address, never a name to look up.  Everything inside the
    brackets is the address -- ``[2001:db8::10:5070]`` has no port (RFC 5118 §4.3) -- and the
    three-colon form RFC 3261's grammar allows before an embedded IPv4 address
    (``2001:db8:::192.0.2.1``, RFC 5118 §4.10) is read as the two-colon address it means."""
    if not _IPV6.fullmatch(host):
        raise URIError(f"{host!r} is not an IPv6 address")
    if ":::" in host:
        match = _ABNF_BUG.match(host)
        if match:
            host = f"{match.group(1)}::{match.group(2)}"
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise URIError(f"{host!r} is not an IPv6 address") from None
    return host


# Remembered (bounded): handling one message reads its To, From and URIs several times.  The
# objects returned are shared, so their ``params`` are never changed in place.
@lru_cache(maxsize=4096)
def parse_uri(text: str) -> URI:
    text = text.strip()
    match = _SCHEME.match(text)
    if not match:
        raise URIError(f"{text!r} has no URI scheme")
    scheme = match.group(1).lower()
    rest = text[match.end():]
    if scheme not in ("sip", "sips"):
        if not rest:
            raise URIError(f"empty {scheme}: URI")
        return OtherURI(scheme, rest)
    if any(c in rest for c in " \t\r\n<>"):
        raise URIError(f"white space or angle brackets inside the URI {text!r}")
    # The user part may hold '?', ';' and '/' (user-unreserved); '@' appears nowhere after it
    # unescaped, so the last '@' ends the userinfo (RFC 3261 §25.1).
    user = password = None
    userinfo = None
    if "@" in rest:
        userinfo, _, rest = rest.rpartition("@")
    rest, _, headers = rest.partition("?")
    if userinfo is not None:
        user_text, colon, password_text = userinfo.partition(":")
        user = _unescape(user_text, "user")
        if colon:
            password = _unescape(password_text, "password")
    hostport, _, param_text = rest.partition(";")
    host, port = parse_host(hostport)
    return SipURI(scheme, host, user, password, port, _split_params(param_text), headers or None)


@dataclass(frozen=True)
class Address:
    """A name-addr or addr-spec with header parameters (From, To, Contact, Route...)."""

    uri: URI
    display_name: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    wildcard: bool = False            # Contact: *

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def with_params(self, **params: str | None) -> Address:
        return replace(self, params={**self.params, **params})

    def __str__(self) -> str:
        if self.wildcard:
            return "*"
        name = ""
        if self.display_name is not None:
            escaped = self.display_name.replace("\\", "\\\\").replace('"', '\\"')
            name = f'"{escaped}" '
        return f"{name}<{self.uri}>{_format_params(self.params)}"


def _read_quoted(text: str, start: int) -> tuple[str, int]:
    """A quoted-string starting at ``text[start] == '"'`` -> (unquoted, index after it)."""
    out = []
    i = start + 1
    while i < len(text):
        c = text[i]
        if c == "\\":
            if i + 1 >= len(text):
                break
            out.append(text[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise URIError("unbalanced quotes")


@lru_cache(maxsize=4096)
def parse_address(text: str) -> Address:
    text = text.strip()
    if text == "*":
        return Address(uri=OtherURI("*", ""), wildcard=True)
    display: str | None = None
    i = 0
    if text.startswith('"'):
        display, i = _read_quoted(text, 0)
        text_rest = text[i:].lstrip()
    else:
        lt = text.find("<")
        if lt >= 0:
            name = text[:lt].strip()
            if name and not all(is_token(word) for word in name.split()):
                raise URIError(f"an unquoted display name must be tokens: {name!r}")
            display = name or None
            text_rest = text[lt:]
        else:
            text_rest = text
    if text_rest.startswith("<"):
        gt = text_rest.find(">")
        if gt < 0:
            raise URIError(f"unbalanced '<' in {text!r}")
        uri = parse_uri(text_rest[1:gt])
        params = _split_params(text_rest[gt + 1:].strip())
    else:
        if display is not None:
            raise URIError(f"a display name needs its URI in <>: {text!r}")
        # addr-spec: parameters after ';' belong to the header, not the URI (§20.10).
        uri_text, _, param_text = text_rest.partition(";")
        if "?" in uri_text or "," in uri_text:
            raise URIError(f"an addr-spec with '?' or ',' must be in <>: {text!r}")
        uri = parse_uri(uri_text)
        params = _split_params(param_text)
    return Address(uri=uri, display_name=display, params=params)


def is_token(text: str) -> bool:
    return bool(_TOKEN.match(text))
